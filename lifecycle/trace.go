package lifecycle

import (
	"context"
	"strings"
)

// A Tracer hears of every external command an operation runs (make,
// patch, the dkms.conf scripts, strip, signing, depmod, the initrd tools)
// before it starts: dkms --debug shows them, as dkms 3.0.10 showed its
// bash trace.
type Tracer func(dir string, argv []string)

type tracerKey struct{}

// WithTracer returns a context whose commands are reported to t.
func WithTracer(ctx context.Context, t Tracer) context.Context {
	return context.WithValue(ctx, tracerKey{}, t)
}

// trace reports a command about to run to the context's Tracer.
func trace(ctx context.Context, dir string, argv ...string) {
	if t, ok := ctx.Value(tracerKey{}).(Tracer); ok && t != nil {
		t(dir, argv)
	}
}

// TraceLine is a command as --debug prints it: "+ " and the words, with
// the directory it runs in when there is one.
func TraceLine(dir string, argv []string) string {
	line := "+ " + strings.Join(argv, " ")
	if dir != "" {
		line += "  (in " + dir + ")"
	}
	return line
}
