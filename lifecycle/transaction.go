package lifecycle

import (
	"encoding/json"
	"os"
	"path/filepath"
)

// transactionFile keeps the last transaction for D-Bus's
// GetLastTransaction.
func (e *Env) transactionFile() string {
	return filepath.Join(e.Layout.DKMSTree, ".dkmsd", "last-transaction.json")
}

// SaveTransaction records t as the last transaction and reports it.
func SaveTransaction(e *Env, t Transaction) error {
	e.Sink.Emit(t.Event())
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(e.transactionFile()), 0o755); err != nil {
		return err
	}
	return writeFileAtomic(e.transactionFile(), append(b, '\n'), 0o644)
}

// LastTransaction reads the last recorded transaction (zero if none).
func LastTransaction(e *Env) (Transaction, error) {
	var t Transaction
	b, err := os.ReadFile(e.transactionFile())
	if os.IsNotExist(err) {
		return t, nil
	}
	if err != nil {
		return t, err
	}
	return t, json.Unmarshal(b, &t)
}
