package tree

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mvdan.cc/sh/v3/syntax"
)

// fuzzEvalTimeout is the evaluation limit under fuzzing: real dkms.conf
// files evaluate in well under a millisecond, and a looping input should
// cost little.
const fuzzEvalTimeout = 100 * time.Millisecond

// FuzzReadConf evaluates arbitrary dkms.conf files (seed corpus in
// testdata/fuzz/FuzzReadConf: real-world shapes, arrays, CRLF, $(…), if,
// functions, loops, syntax errors). ReadConf must never panic, must return
// within a small multiple of its time limit, must fail only with
// *SyntaxError, *EvalError or *ConfError, and a Conf it accepts must keep
// every path inside its tree: module names and versions are single path
// components, BUILT_MODULE_LOCATION, DEST_MODULE_LOCATION, PATCH and the
// scripts stay inside the dirs they are relative to.
//
// The files run as shell; as root, the target runs only inputs that cannot
// touch the machine: no command named by a path or an expansion, no eval,
// source, exec, trap or alias, no redirection but to /dev/null, no PATH
// assignment, and a PATH where no program is found. Fuzzing workers also
// drop root.
func FuzzReadConf(f *testing.F) {
	f.Fuzz(func(t *testing.T, conf []byte) {
		dropRootInFuzzWorker(t)
		if !harmlessShell(conf) {
			t.Skip("the input could run a program or write a file")
		}
		dir := t.TempDir()
		file := filepath.Join(dir, "dkms.conf")
		if err := os.WriteFile(file, conf, 0o644); err != nil {
			t.Fatal(err)
		}
		c := ConfContext{
			Module: "dkmsd_fuzz", Version: "1.0", Kernel: "6.1.0-56-amd64", Arch: "x86_64",
			Layout: NewLayout(dir), KernelSourceDir: filepath.Join(dir, "build"),
			ParallelJobs: 2, Distro: "debian",
			Env:     []string{"PATH=" + filepath.Join(dir, "no-programs"), "HOME=" + dir},
			Stderr:  io.Discard,
			Timeout: fuzzEvalTimeout,
		}
		start := time.Now()
		got, err := ReadConf(context.Background(), file, c)
		if took := time.Since(start); took > 50*fuzzEvalTimeout {
			t.Fatalf("ReadConf took %v with a %v limit", took, fuzzEvalTimeout)
		}
		if err != nil {
			var se *SyntaxError
			var ee *EvalError
			var ce *ConfError
			if !errors.As(err, &se) && !errors.As(err, &ee) && !errors.As(err, &ce) {
				t.Fatalf("ReadConf: %T %v: not a SyntaxError, EvalError or ConfError", err, err)
			}
			return
		}
		checkConfConfined(t, got)
	})
}

// checkConfConfined fails the test if an accepted Conf names a path that
// leaves its tree.
func checkConfConfined(t *testing.T, c *Conf) {
	t.Helper()
	inside := func(base, rel string) bool {
		p := filepath.Join(base, rel)
		return p == base || strings.HasPrefix(p, base+"/")
	}
	component := func(what, s string) {
		if s == "" || s == "." || s == ".." || strings.ContainsAny(s, "/ \t\n") {
			t.Errorf("accepted %s %q is not a single path component", what, s)
		}
	}
	component("PACKAGE_NAME", c.PackageName)
	component("PACKAGE_VERSION", c.PackageVersion)
	for i, m := range c.Modules {
		component("BUILT_MODULE_NAME", m.BuiltName)
		component("DEST_MODULE_NAME", m.DestName)
		if !inside("/build", filepath.Join(m.BuiltLocation, m.BuiltName+".ko")) || !inside("/build", m.BuiltLocation) {
			t.Errorf("record %d: BUILT_MODULE_LOCATION %q leaves the build dir", i, m.BuiltLocation)
		}
		for _, l := range []string{m.DestLocation, m.RawDestLocation} {
			if !inside("/lib/modules/k", l) || !inside("/lib/modules/k", filepath.Join(l, m.DestName+".ko")) {
				t.Errorf("record %d: DEST_MODULE_LOCATION %q leaves the kernel's module dir", i, l)
			}
		}
	}
	for _, p := range c.Patches {
		if !inside("/build/patches", p) {
			t.Errorf("PATCH %q leaves the patches dir", p)
		}
	}
	for name, s := range map[string]string{"PRE_BUILD": c.PreBuild, "POST_BUILD": c.PostBuild, "POST_ADD": c.PostAdd,
		"PRE_INSTALL": c.PreInstall, "POST_INSTALL": c.PostInstall, "POST_REMOVE": c.PostRemove} {
		if w := strings.Fields(s); len(w) > 0 && !inside("/src", w[0]) {
			t.Errorf("%s script %q leaves the module's dir", name, w[0])
		}
	}
}

// harmlessShell reports whether src, evaluated with a PATH that finds no
// program, can neither run a program nor write a file: every command is a
// literal name without "/" (a builtin, a function, or a name that is not
// found), none of the builtins that run strings or change name lookup,
// no redirection except to /dev/null or between descriptors, and nothing
// names PATH. A file that does not parse runs nothing.
func harmlessShell(src []byte) bool {
	src = bytes.ReplaceAll(src, []byte("\r\n"), []byte("\n"))
	if bytes.Contains(src, []byte("PATH")) {
		return false
	}
	prog, err := syntax.NewParser(syntax.Variant(syntax.LangBash)).Parse(bytes.NewReader(src), "dkms.conf")
	if err != nil {
		return true
	}
	banned := map[string]bool{"eval": true, "source": true, ".": true, "exec": true, "command": true, "builtin": true,
		"trap": true, "alias": true, "enable": true, "shopt": true, "coproc": true}
	ok := true
	syntax.Walk(prog, func(node syntax.Node) bool {
		switch n := node.(type) {
		case *syntax.CallExpr:
			if len(n.Args) > 0 {
				name := n.Args[0].Lit()
				if name == "" || strings.Contains(name, "/") || banned[name] {
					ok = false
				}
			}
		case *syntax.CoprocClause:
			ok = false
		case *syntax.Redirect:
			switch n.Op {
			case syntax.Hdoc, syntax.DashHdoc, syntax.WordHdoc, syntax.DplIn, syntax.DplOut:
				if (n.Op == syntax.DplIn || n.Op == syntax.DplOut) && n.Word != nil {
					if w := n.Word.Lit(); w == "" || (w != "-" && strings.Trim(w, "0123456789") != "") {
						ok = false
					}
				}
			case syntax.RdrOut, syntax.AppOut, syntax.RdrAll, syntax.AppAll, syntax.ClbOut:
				if n.Word == nil || n.Word.Lit() != "/dev/null" {
					ok = false
				}
			default:
				ok = false
			}
		}
		return ok
	})
	return ok
}

var dropRoot sync.Once

// dropRootInFuzzWorker makes a fuzzing worker process (never a plain test
// run) give up root for nobody, so that what the filter misses still
// cannot write the machine's files.
func dropRootInFuzzWorker(t *testing.T) {
	dropRoot.Do(func() {
		f := flag.Lookup("test.fuzzworker")
		if f == nil || f.Value.String() != "true" || os.Geteuid() != 0 {
			return
		}
		const nobody = 65534
		if err := syscall.Setgroups(nil); err != nil {
			panic(err)
		}
		if err := syscall.Setgid(nobody); err != nil {
			panic(err)
		}
		if err := syscall.Setuid(nobody); err != nil {
			panic(err)
		}
	})
}
