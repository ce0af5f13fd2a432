package lifecycle

import (
	"encoding/json"
	"os"
	"path/filepath"
)

// SaveTransaction records t as the last transaction and reports it.
func SaveTransaction(e *Env, t Transaction) error {
	e.Sink.Emit(t.Event())
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(e.Layout.TransactionFile()), 0o755); err != nil {
		return err
	}
	return writeFileAtomic(e.Layout.TransactionFile(), append(b, '\n'), 0o644)
}

// LastTransaction reads the last recorded transaction (zero if none).
func LastTransaction(e *Env) (Transaction, error) {
	var t Transaction
	b, err := os.ReadFile(e.Layout.TransactionFile())
	if os.IsNotExist(err) {
		return t, nil
	}
	if err != nil {
		return t, err
	}
	return t, json.Unmarshal(b, &t)
}
