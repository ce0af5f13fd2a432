package hooks

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/dkmsd/dkmsd/hooks/report"
	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree"
)

// NewEnv is the lifecycle environment of a hook binary: the machine's
// trees (or DKMSD_ROOT's, for tests), reporting to the terminal, the
// journal and the system bus. close releases the bus.
func NewEnv(ctx context.Context, hook string, stdout, stderr io.Writer) (env *lifecycle.Env, close func(), err error) {
	sinks := report.NewSinks(hook, stdout, stderr, false)
	env, err = lifecycle.NewEnv(ctx, tree.NewLayout(os.Getenv("DKMSD_ROOT")), sinks)
	if err != nil {
		sinks.Close()
		return nil, nil, err
	}
	return env, sinks.Close, nil
}

// Main runs req the way every hook binary does — on the machine's trees,
// interruptible, reporting to every sink — and returns the exit status. A
// failure to set up is reported and is not a failure of the package
// transaction.
func Main(req Request) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	env, closeEnv, err := NewEnv(ctx, req.Hook, os.Stdout, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dkmsd:", err)
		return ExitOK
	}
	defer closeEnv()
	return Run(ctx, env, req).ExitCode
}
