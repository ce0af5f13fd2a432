package lifecycle

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dkmsd/dkmsd/tree"
)

// PostTransactionLog is the file, in the DKMS tree, that holds the output
// of the last post_transaction command.
const PostTransactionLog = "post_transaction.log"

// PostTransaction runs framework.conf's post_transaction, as dkms 3.4
// does once at the end of a command that changed the install tree: a
// successful install, uninstall, unbuild or remove, and an autoinstall
// that installed at least one module (see Summary.InstalledKernel). The
// caller decides when; this runs it, if set.
//
// framework.conf is read again with $kernelver set to t's kernel, and bash
// evaluates the command with the shell variables kernelver and arch, and
// for one module's commands module and module_version, set (not exported,
// as in dkms). Its output goes to <dkms_tree>/post_transaction.log,
// emptied first, in make.log's format; the terminal shows one line. A
// failure is shown, never returned: it does not change the command's exit
// status.
func PostTransaction(ctx context.Context, e *Env, t Target) {
	if e.Framework.PostTransaction == "" {
		return
	}
	warnings := &lineWriter{sink: e.Sink, typ: Warning}
	defer warnings.Flush()
	fw, err := tree.ReadFramework(ctx, e.Layout.ConfDir, t.Kernel, e.Environ, warnings)
	if err != nil {
		e.warn("Warning: post_transaction: %v", err)
		return
	}
	command := fw.PostTransaction
	if command == "" {
		return
	}
	logPath := filepath.Join(e.Layout.DKMSTree, PostTransactionLog)
	log, err := os.Create(logPath)
	if err != nil {
		e.warn("Warning: post_transaction: %v", diskError(logPath, err))
		return
	}
	defer log.Close()
	if e.Verbose {
		e.info("%s", command)
	}
	fmt.Fprintln(log)
	blk := startLogBlock(log, "Executing post-transaction command", command)
	err = runShell(ctx, "", dkmsShellVars(t)+command+"\n", e.buildEnviron(), log)
	blk.end(err)
	switch {
	case err == nil && e.Verbose:
		e.info(" done.")
	case err == nil:
		e.info("Executing post-transaction command... done.")
	case e.Verbose:
		e.info("(bad exit status: %d)", exitCode(err))
	default:
		e.info("Executing post-transaction command...(bad exit status: %d)", exitCode(err))
		e.info("Failed command:")
		e.info("%s", command)
	}
}

// dkmsShellVars is bash text that sets, as shell variables, dkms's
// variables for t: kernelver, arch, module, module_version (those known).
func dkmsShellVars(t Target) string {
	var b strings.Builder
	for _, v := range [][2]string{{"kernelver", t.Kernel}, {"arch", t.Arch}, {"module", t.Module}, {"module_version", t.Version}} {
		if v[1] != "" {
			fmt.Fprintf(&b, "%s=%s\n", v[0], shellQuote(v[1]))
		}
	}
	return b.String()
}

// shellQuote quotes s for bash with single quotes.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// InstalledKernel is the first kernel a module was installed on by the
// batch (ok false when nothing was installed): an autoinstall's
// post_transaction runs for it, and only then.
func (s *Summary) InstalledKernel() (kernel string, ok bool) {
	for _, r := range s.Results {
		if r.Outcome == OutcomeInstalled {
			return r.Kernel, true
		}
	}
	return "", false
}
