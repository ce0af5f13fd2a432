package main

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// referenceDkms is Debian 12's dkms, the implementation dkmsd must match.
const referenceDkms = "/usr/sbin/dkms"

// side is one implementation working on its own relocated root.
type side struct {
	name string
	bin  string
	root string
	env  []string
}

// command is `dkms args…` with the tree options of this side's root, in
// its environment, killed when ctx ends.
func (s side) command(ctx context.Context, args ...string) *exec.Cmd {
	full := slices.Concat(args, []string{"--dkmstree", filepath.Join(s.root, "var/lib/dkms"),
		"--sourcetree", filepath.Join(s.root, "usr/src"),
		"--installtree", filepath.Join(s.root, "lib/modules")})
	cmd := exec.CommandContext(ctx, s.bin, full...)
	cmd.Env, cmd.Dir = s.env, s.root
	return cmd
}

// run runs `dkms args…` with the tree options of this side's root; an
// @ROOT@ in an argument is the side's root.
func (s side) run(t *testing.T, args ...string) testkit.Result {
	t.Helper()
	r, err := s.exec(args...)
	if err != nil {
		t.Fatalf("%s %v: %v", s.name, args, err)
	}
	return r
}

func (s side) exec(args ...string) (testkit.Result, error) {
	args = slices.Clone(args)
	for i, a := range args {
		args[i] = strings.ReplaceAll(a, "@ROOT@", s.root)
	}
	return testkit.Exec(s.command(context.Background(), args...))
}

// runBoth runs `dkms args…` on both sides at the same time (their roots
// are apart), which halves the time dkms 3.0.10's slow status takes.
func runBoth(t *testing.T, a, b side, args ...string) (ra, rb testkit.Result) {
	t.Helper()
	var errA, errB error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ra, errA = a.exec(args...)
	}()
	rb, errB = b.exec(args...)
	wg.Wait()
	if errA != nil || errB != nil {
		t.Fatalf("dkms %v: %v / %v", args, errA, errB)
	}
	return ra, rb
}

// differentialSetup prepares two roots over the same kernels, one for each
// implementation, both signing with one MOK key so built modules can be
// compared byte for byte.
func differentialSetup(t *testing.T) (dkmsd, ref side, kernels []string) {
	t.Helper()
	testkit.RequireRoot(t)
	if _, err := os.Stat(referenceDkms); err != nil {
		testkit.Missing(t, "Debian's dkms 3.0.10 at "+referenceDkms+" (apt-get install -y dkms)")
	}
	testkit.RequireTool(t, "openssl", "openssl")
	kernels = testkit.Kernels(t, 2)
	keys := t.TempDir()
	key, cert := filepath.Join(keys, "mok.key"), filepath.Join(keys, "mok.pub")
	if out, err := exec.Command("openssl", "req", "-new", "-x509", "-nodes", "-days", "365", "-subj", "/CN=dkmsd differential test",
		"-newkey", "rsa:2048", "-keyout", key, "-outform", "DER", "-out", cert).CombinedOutput(); err != nil {
		t.Fatalf("openssl: %v: %s", err, out)
	}
	env := []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "HOME=/root", "mok_signing_key=" + key, "mok_certificate=" + cert, "parallel_jobs=2", testkit.SignAnywhere}
	dkmsd = side{name: "dkmsd", bin: testkit.Binary(t, "dkms"), root: testkit.NewRoot(t, kernels...), env: env}
	ref = side{name: "dkms-3.0.10", bin: referenceDkms, root: testkit.NewRoot(t, kernels...), env: env}
	return dkmsd, ref, kernels
}

// normalize makes one side's output comparable with the other's: its
// root becomes ROOT, its own path (usage's $0) DKMS, and a run of
// progress dots "..." (dkms prints one every three seconds while a step
// runs, so their number is the step's time). dkmsd finds a kernel's
// headers in the install tree where dkms 3.0.10 names /lib/modules
// whatever --installtree says (docs/compatibility.md): the paths of the
// headers are the same once that is undone.
func (s side) normalize(text string) string {
	text = strings.ReplaceAll(text, s.root, "ROOT")
	text = strings.ReplaceAll(text, s.bin, "DKMS")
	text = progressDots.ReplaceAllString(text, "...")
	return headersInInstallTree.ReplaceAllString(text, "/lib/modules/$1/$2")
}

var (
	progressDots         = regexp.MustCompile(`\.\.\.\.+`)
	headersInInstallTree = regexp.MustCompile(`ROOT/lib/modules/([^/\s]+)/(build|source)\b`)
)

// fileSet maps every file under dir (relative path) to its contents; a
// symlink maps to "-> target".
func fileSet(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if filepath.Base(rel) == "build" || filepath.Base(rel) == "source" {
			return nil // the links to the headers
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			out[rel] = "-> " + target
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(rel, ".ko") {
			data = comparableModule(t, rel, data)
		}
		out[rel] = string(data)
		return nil
	})
	return out
}

// moduleSigMagic ends a signed module; the signature and a 12-byte
// descriptor whose last 4 bytes are its big-endian length precede it.
const moduleSigMagic = "~Module signature appended~\n"

// comparableModule makes two builds of one module from different build
// directories comparable: kbuild's build-id hashes the debug info (which
// names the build dir) before strip -g removes it, so the build-id note,
// and the signature over the whole file, differ between two roots. It
// checks the module is signed, drops the signature and zeroes the build-id;
// everything else must be identical.
func comparableModule(t *testing.T, name string, data []byte) []byte {
	t.Helper()
	if !bytes.HasSuffix(data, []byte(moduleSigMagic)) {
		t.Errorf("%s is not signed", name)
		return data
	}
	end := len(data) - len(moduleSigMagic)
	sigLen := int(binary.BigEndian.Uint32(data[end-4 : end]))
	data = append([]byte{}, data[:end-12-sigLen]...)
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if sec := f.Section(".note.gnu.build-id"); sec != nil {
		for i := sec.Offset; i < sec.Offset+sec.Size; i++ {
			data[i] = 0
		}
	}
	return data
}

func diffFileSets(a, b map[string]string) []string {
	var diffs []string
	for k, va := range a {
		vb, ok := b[k]
		switch {
		case !ok:
			diffs = append(diffs, "only in dkmsd: "+k)
		case va != vb:
			diffs = append(diffs, fmt.Sprintf("contents differ: %s (%d vs %d bytes)", k, len(va), len(vb)))
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			diffs = append(diffs, "only in dkms 3.0.10: "+k)
		}
	}
	return diffs
}

// TestDifferentialTreeInteropRealHeaders checks that a tree written by dkms
// 3.0.10 is read and managed by dkmsd, and the other way round.
func TestDifferentialTreeInteropRealHeaders(t *testing.T) {
	t.Parallel()
	dkmsd, ref, ks := differentialSetup(t)
	k1, k2 := ks[0], ks[1]
	testkit.CopyModule(t, ref.root, "dkmsd_twomods-2.1")
	testkit.CopyModule(t, ref.root, "dkmsd_hello-1.0")
	testkit.CopyModule(t, dkmsd.root, "dkmsd_hello-1.0")
	if r := ref.run(t, "install", "dkmsd_twomods/2.1", "-k", k1, "-k", k2, "--no-depmod"); r.Code != 0 {
		t.Fatalf("dkms 3.0.10 install: %d %s", r.Code, r.Stderr)
	}
	if r := ref.run(t, "build", "dkmsd_hello/1.0", "-k", k2); r.Code != 0 {
		t.Fatalf("dkms 3.0.10 build: %d %s", r.Code, r.Stderr)
	}
	if r := dkmsd.run(t, "install", "dkmsd_hello/1.0", "-k", k1, "--no-depmod"); r.Code != 0 {
		t.Fatalf("dkmsd install: %d %s", r.Code, r.Stderr)
	}
	// Each implementation reads the other's tree with identical status.
	for _, tr := range []side{ref, dkmsd} {
		a := side{name: "dkmsd", bin: dkmsd.bin, root: tr.root, env: dkmsd.env}.run(t, "status")
		b := side{name: "dkms", bin: ref.bin, root: tr.root, env: ref.env}.run(t, "status")
		if a.Stdout != b.Stdout || a.Stdout == "" {
			t.Errorf("status of the tree %s wrote:\n--- dkmsd:\n%s--- dkms 3.0.10:\n%s", tr.name, a.Stdout, b.Stdout)
		}
	}
	// dkmsd uninstalls and removes what dkms installed.
	onRef := side{name: "dkmsd-on-ref", bin: dkmsd.bin, root: ref.root, env: dkmsd.env}
	if r := onRef.run(t, "uninstall", "dkmsd_twomods/2.1", "-k", k1, "--no-depmod"); r.Code != 0 {
		t.Fatalf("dkmsd uninstall of dkms's install: %d %s", r.Code, r.Stderr)
	}
	if d := fileSet(t, filepath.Join(ref.root, "lib/modules", k1)); len(d) != 0 {
		t.Errorf("dkmsd left files of dkms's install on %s: %v", k1, d)
	}
	if r := onRef.run(t, "remove", "dkmsd_twomods/2.1", "--all", "--no-depmod"); r.Code != 0 {
		t.Fatalf("dkmsd remove: %d %s", r.Code, r.Stderr)
	}
	b := ref.run(t, "status")
	if b.Stdout != "dkmsd_hello/1.0, "+k2+", x86_64: built\n" {
		t.Errorf("dkms 3.0.10 status after dkmsd's remove:\n%s", b.Stdout)
	}
	// dkms 3.0.10 uninstalls what dkmsd installed.
	onOurs := side{name: "dkms-on-dkmsd", bin: ref.bin, root: dkmsd.root, env: ref.env}
	if r := onOurs.run(t, "remove", "dkmsd_hello/1.0", "--all", "--no-depmod"); r.Code != 0 {
		t.Fatalf("dkms 3.0.10 remove of dkmsd's install: %d %s", r.Code, r.Stderr)
	}
	if d := fileSet(t, filepath.Join(dkmsd.root, "lib/modules", k1)); len(d) != 0 {
		t.Errorf("dkms 3.0.10 left files of dkmsd's install: %v", d)
	}
	if a := dkmsd.run(t, "status"); a.Stdout != "" {
		t.Errorf("dkmsd status after dkms's remove: %q", a.Stdout)
	}
}
