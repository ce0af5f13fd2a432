package lifecycle

import "sync"

// warnOnce remembers the warnings a command has shown: one about a
// dkms.conf directive is said once per command, not once per kernel.
type warnOnce struct {
	mu   sync.Mutex
	seen map[string]bool
}

// first reports whether key is new, and marks it seen. A nil *warnOnce
// says every key is new.
func (w *warnOnce) first(key string) bool {
	if w == nil {
		return true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen[key] {
		return false
	}
	if w.seen == nil {
		w.seen = map[string]bool{}
	}
	w.seen[key] = true
	return true
}

// warnUnusedDirectives says, once per command, which directives
// of a dkms.conf have no effect.
func (e *Env) warnUnusedDirectives(file string, names []string) {
	for _, n := range names {
		if e.warned.first("dkms.conf " + n) {
			e.warn("dkms.conf: Warning! %s (%s) has no effect: modules are signed with framework.conf's sign_file, mok_signing_key and mok_certificate.", n, file)
		}
	}
}
