package report

import (
	"context"

	"github.com/godbus/dbus/v5"
)

// CacheSource answers the module cache methods (dkms cache ls|pull|push
// over the bus); a StatusSource that also implements it gets them. The
// bus policy lets anyone list and only root pull or push.
type CacheSource interface {
	// CacheList lists module, version, kernel, arch, published time and
	// tag for every artifact in framework.conf's module cache.
	CacheList(ctx context.Context) ([][6]string, error)
	// CachePull puts module/version for kernel into the tree from the
	// cache (status built); CachePush builds it here and publishes it.
	CachePull(ctx context.Context, module, version, kernel string) error
	CachePush(ctx context.Context, module, version, kernel string) error
}

// cacheRow is one (ssssss) row of CacheList.
type cacheRow struct{ Module, Version, Kernel, Arch, Published, Tag string }

// cacheMethods are the module cache's methods, when src answers them.
func cacheMethods(src StatusSource, calls chan struct{}) map[string]any {
	c, ok := src.(CacheSource)
	if !ok {
		return nil
	}
	ctx := context.Background()
	return map[string]any{
		"CacheList": func() ([]cacheRow, *dbus.Error) {
			notify(calls)
			rows, err := c.CacheList(ctx)
			if err != nil {
				return nil, dbus.MakeFailedError(err)
			}
			out := make([]cacheRow, 0, len(rows))
			for _, r := range rows {
				out = append(out, cacheRow{r[0], r[1], r[2], r[3], r[4], r[5]})
			}
			return out, nil
		},
		"CachePull": func(module, version, kernel string) *dbus.Error {
			notify(calls)
			if err := c.CachePull(ctx, module, version, kernel); err != nil {
				return dbus.MakeFailedError(err)
			}
			return nil
		},
		"CachePush": func(module, version, kernel string) *dbus.Error {
			notify(calls)
			if err := c.CachePush(ctx, module, version, kernel); err != nil {
				return dbus.MakeFailedError(err)
			}
			return nil
		},
	}
}

// cacheIntrospection declares cacheMethods.
const cacheIntrospection = `  <method name="CacheList"><arg name="artifacts" type="a(ssssss)" direction="out"/></method>
  <method name="CachePull"><arg name="module" type="s" direction="in"/><arg name="version" type="s" direction="in"/><arg name="kernel" type="s" direction="in"/></method>
  <method name="CachePush"><arg name="module" type="s" direction="in"/><arg name="version" type="s" direction="in"/><arg name="kernel" type="s" direction="in"/></method>
`
