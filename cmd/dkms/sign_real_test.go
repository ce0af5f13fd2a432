package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// TestSignResignsInstalledRealHeaders: after the key changes, `dkms sign`
// signs the installed module and its built copy again with the new key —
// one signature, not two — keeps modules.dep, and, the new certificate
// being in none of the kernel's keyrings with Secure Boot off, says so in
// one line.
func TestSignResignsInstalledRealHeaders(t *testing.T) {
	b := newBatchRoot(t)
	k := b.kernels[0]
	b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
	b.mustRun(t, "add", "dkmsd_hello/1.0")
	b.mustRun(t, "install", "dkmsd_hello/1.0", "-k", k, "--no-initrd")
	installed := onlyKo(t, b.path("lib/modules", k, "updates", "dkms"))
	built := onlyKo(t, b.path("var/lib/dkms/dkmsd_hello/1.0", k, tree.MachineArch(), "module"))

	key, cert := b.path("newkey/mok.key"), b.path("newkey/mok.der")
	writeRootFile(t, b.root, "newkey/.keep", "", 0o644)
	testkit.MustRun(t, "openssl", "req", "-new", "-x509", "-nodes", "-days", "365", "-subj", "/CN=dkmsd new key",
		"-newkey", "rsa:2048", "-keyout", key, "-outform", "DER", "-out", cert)
	writeFramework(t, b, "mok_signing_key="+key, "mok_certificate="+cert)
	writeRootFile(t, b.root, "proc/keys", "11923611 I------     1 perm 1f0b0000     0     0 keyring   .builtin_trusted_keys: empty\n", 0o644)

	r := b.mustRun(t, "sign", "dkmsd_hello/1.0", "-k", k)
	for _, ko := range []string{installed, built} {
		if signer := strings.TrimSpace(testkit.MustRun(t, "modinfo", "-F", "signer", ko)); signer != "dkmsd new key" {
			t.Errorf("%s signed by %q, want the new key", ko, signer)
		}
		data, err := tree.ReadModuleFile(ko)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.HasSuffix(lifecycle.StripSignature(data), []byte("~Module signature appended~\n")) {
			t.Errorf("%s carries two signatures", ko)
		}
		if !strings.Contains(r.Stdout, "Signing module "+ko+"\n") {
			t.Errorf("stdout does not name %s:\n%s", ko, r.Stdout)
		}
	}
	if dep := string(mustReadFile(t, b.path("lib/modules", k, "modules.dep"))); !strings.Contains(dep, "updates/dkms/"+filepath.Base(installed)+":") {
		t.Errorf("modules.dep lacks the module:\n%s", dep)
	}
	if want := lifecycle.EnrollmentAdvice(cert, false) + "\n"; !strings.HasSuffix(r.Stdout, want) {
		t.Errorf("stdout does not end with the enrolment line %q:\n%s", want, r.Stdout)
	}
}
