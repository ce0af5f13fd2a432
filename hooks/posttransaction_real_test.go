package hooks_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// TestHooksPostTransactionRealHeaders runs the hook binaries as processes
// on a relocated root (DKMSD_ROOT) over the real headers of two kernels,
// with framework.conf's post_transaction recording $kernelver: a
// kernel-install add that installs a module runs it once, at its end; a
// Debian header_postinst inside dpkg leaves it to the apt Post-Invoke
// that ends the transaction, which runs it once; a Post-Invoke with
// nothing done, or a second add of a kernel already done, does not.
func TestHooksPostTransactionRealHeaders(t *testing.T) {
	testkit.RequireRoot(t)
	for tool, pkg := range map[string]string{"depmod": "kmod", "openssl": "openssl", "make": "make", "gcc": "gcc"} {
		testkit.RequireTool(t, tool, pkg)
	}
	ks := testkit.Kernels(t, 2)
	bin := testkit.Binaries(t)
	root := testkit.NewRoot(t, ks...)
	testkit.WriteModule(t, filepath.Join(root, "usr/src/dkmsd_hooked-1.0"), testkit.HelloFiles(t, "dkmsd_hooked", "1.0"))
	testkit.MustRun(t, filepath.Join(bin, "dkms"), "--root", root, "add", "dkmsd_hooked/1.0")
	calls := filepath.Join(root, "calls")
	recorder := filepath.Join(root, "record.sh")
	if err := os.WriteFile(recorder, []byte("#!/bin/sh\necho \"$*\" >> "+calls+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/dkms/framework.conf"), []byte(`post_transaction="`+recorder+` kernel=$kernelver"`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var want []string
	hook := func(step string, env []string, argv ...string) {
		t.Helper()
		r := testkit.Cmd{Argv: argv, Env: append([]string{"DKMSD_ROOT=" + root}, env...)}.Run(t)
		if r.Code != 0 {
			t.Fatalf("%s: exit %d\n%s", step, r.Code, r.Out)
		}
		data, _ := os.ReadFile(calls)
		got := strings.Fields(string(data))
		if !slices.Equal(got, want) {
			t.Errorf("%s: post_transaction calls %q, want %q\n%s", step, got, want, r.Out)
		}
	}

	want = append(want, "kernel="+ks[0])
	hook("kernel-install add", nil, filepath.Join(bin, "dkmsd-kernel-install"), "add", ks[0])
	hook("kernel-install add again", nil, filepath.Join(bin, "dkmsd-kernel-install"), "add", ks[0])

	dpkg := []string{"DPKG_MAINTSCRIPT_PACKAGE=linux-headers-" + ks[1], "DEB_MAINT_PARAMS=configure"}
	hook("header_postinst inside dpkg", dpkg, filepath.Join(bin, "dkmsd-apt"), "header_postinst", ks[1])
	want = append(want, "kernel="+ks[1])
	hook("apt Post-Invoke", nil, filepath.Join(bin, "dkmsd-apt"), "post-invoke")
	hook("apt Post-Invoke with nothing done", nil, filepath.Join(bin, "dkmsd-apt"), "post-invoke")
}
