package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/dkmsd/dkmsd/lifecycle/secureboot"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// keysInit shows the booted kernel's /proc/keys between markers.
const keysInit = `#!/bin/sh
mount -t proc proc /proc
echo "@@dkmsd keys"
cat /proc/keys
echo "@@dkmsd end"
`

// TestBootQEMUKeyringEnrollment reads the keyrings of a real kernel: the
// cloud kernel boots under qemu and lists /proc/keys. dkmsd's probe, given
// that list, finds the kernel's own module signing key there (the key
// id `modinfo -F sig_key` shows on the kernel's modules) and not the MOK
// dkmsd signs with: "not enrolled", as on a machine where nobody ran
// mokutil --import. The guest has no EFI: Secure Boot is off.
func TestBootQEMUKeyringEnrollment(t *testing.T) {
	bootKernel := requireBootKernel(t)
	testkit.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	testkit.RequireTool(t, "modinfo", "kmod")
	var signer string
	_ = filepath.WalkDir("/lib/modules/"+bootKernel+"/kernel", func(p string, d os.DirEntry, err error) error {
		if err != nil || signer != "" || !strings.HasSuffix(p, ".ko") {
			return nil
		}
		out, _ := exec.Command("modinfo", "-F", "signer", p).Output()
		signer = strings.TrimSpace(string(out))
		return nil
	})
	if signer == "" {
		t.Fatalf("no signed module of %s to take the kernel's signer from", bootKernel)
	}
	_, cert := batchMOK(t)

	var seg bytes.Buffer
	w := cpio.Newc.Writer(&seg)
	recs := []cpio.Record{cpio.StaticFile("dkmsd-init", keysInit, 0o755), cpio.Directory("proc", 0o755)}
	if err := cpio.WriteRecordsAndDirs(w, recs); err != nil {
		t.Fatal(err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		t.Fatal(err)
	}
	log := bootWithInit(t, bootKernel, seg.Bytes())
	_, keys, ok := strings.Cut(log, "@@dkmsd keys\n")
	keys, _, ok2 := strings.Cut(keys, "@@dkmsd end")
	if !ok || !ok2 {
		t.Fatalf("the guest did not list /proc/keys:\n%s", consoleTail(log, 40))
	}
	m := regexp.MustCompile(`(?m) asymmetri ` + regexp.QuoteMeta(signer) + `: ([0-9a-f]+):`).FindStringSubmatch(keys)
	if m == nil {
		t.Fatalf("the guest's keyrings do not show the kernel's own key %q:\n%s", signer, keys)
	}
	if !secureboot.Trusted(keys, []string{m[1]}) {
		t.Errorf("the probe does not find the kernel's key %s in the guest's keyrings:\n%s", m[1], keys)
	}
	root := t.TempDir()
	writeRootFile(t, root, "proc/keys", keys, 0o644)
	st, err := secureboot.Probe{Root: root}.Check(t.Context(), cert)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Known || st.Enrolled || st.Enforced {
		t.Errorf("the MOK against the guest's keyrings: %+v; want known, not enrolled, not enforced\n%s", st, keys)
	}
}
