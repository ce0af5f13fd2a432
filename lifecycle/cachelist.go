package lifecycle

import (
	"context"

	"github.com/dkmsd/dkmsd/lifecycle/cache"
)

// CacheList lists what framework.conf's module cache holds (dkms cache
// ls, and the D-Bus CacheList method).
func CacheList(ctx context.Context, e *Env) ([]cache.Entry, error) {
	if e.Framework.Cache.URL == "" {
		return nil, fail(KindCache, "No module cache is set (module_cache in framework.conf).")
	}
	c := e.openCache(ctx)
	if c.openErr != nil {
		return nil, fail(KindCache, c.openErr.Error())
	}
	entries, err := c.store.List(ctx)
	if err != nil {
		return nil, &Error{Kind: KindCache, Lines: []string{err.Error()}, Err: err}
	}
	return entries, nil
}
