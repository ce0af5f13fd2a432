package testkit

import (
	"sync"
	"testing"
)

// Once is a value made once per test process — a build that tests and
// benchmarks share — or the error that stopped it, which fails every test
// that asks.
type Once[T any] struct {
	once sync.Once
	v    T
	err  error
}

// Get makes the value with make the first time and returns it; it fails
// the test if making it failed.
func (o *Once[T]) Get(tb testing.TB, make func() (T, error)) T {
	tb.Helper()
	o.once.Do(func() { o.v, o.err = make() })
	if o.err != nil {
		tb.Fatal(o.err)
	}
	return o.v
}
