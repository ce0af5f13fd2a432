package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/godbus/dbus/v5"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/content/oci"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/dkmsd/dkmsd/hooks/report"
	"github.com/dkmsd/dkmsd/lifecycle/cache"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// repo is a repository of the fleet's registry, spoken to over plain
// HTTP as dkmsd does on loopback.
func (f *cacheFleet) repo(t *testing.T, path string) *remote.Repository {
	t.Helper()
	r, err := remote.NewRepository(f.registry + "/" + path)
	if err != nil {
		t.Fatal(err)
	}
	r.PlainHTTP = true
	return r
}

// onlyTag is the one tag the build host published.
func onlyTag(t *testing.T, r *remote.Repository) string {
	t.Helper()
	var tags []string
	if err := r.Tags(t.Context(), "", func(ts []string) error { tags = append(tags, ts...); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(tags) != 1 {
		t.Fatalf("want one published tag, have %q", tags)
	}
	return tags[0]
}

// artifact is the published module (unsigned) as the cache package
// pulls and verifies it.
func (f *cacheFleet) artifact(t *testing.T, url string) []byte {
	t.Helper()
	s, err := cache.Open(t.Context(), url, cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	entries, err := s.List(t.Context())
	if err != nil || len(entries) != 1 {
		t.Fatalf("list %s: %v %v", url, entries, err)
	}
	trust, err := cache.LoadTrust(f.trust)
	if err != nil {
		t.Fatal(err)
	}
	r := f.repo(t, "fleet/modules")
	desc, err := r.Resolve(t.Context(), entries[0].Tag)
	if err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	raw, err := content.FetchAll(t.Context(), r, desc)
	if err != nil || json.Unmarshal(raw, &m) != nil {
		t.Fatalf("manifest: %v", err)
	}
	cfgRaw, err := content.FetchAll(t.Context(), r, m.Config)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct{ Key cache.Key }
	if err := json.Unmarshal(cfgRaw, &cfg); err != nil {
		t.Fatal(err)
	}
	a, err := s.Pull(t.Context(), cfg.Key, trust)
	if err != nil {
		t.Fatalf("pull the published artifact: %v", err)
	}
	for _, file := range a.Files {
		if file.Name == cacheModule+".ko" {
			return file.Data
		}
	}
	t.Fatalf("the artifact has no %s.ko", cacheModule)
	return nil
}

// copyArtifact copies the published artifact into fleet/<to> under the
// same tag, its manifest changed by mutate.
func (f *cacheFleet) copyArtifact(t *testing.T, url, to string, mutate func(*ocispec.Manifest)) {
	t.Helper()
	ctx := t.Context()
	src, dst := f.repo(t, "fleet/modules"), f.repo(t, "fleet/"+to)
	tag := onlyTag(t, src)
	desc, err := oras.Copy(ctx, src, tag, dst, tag, oras.DefaultCopyOptions)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := content.FetchAll(ctx, dst, desc)
	if err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	mutate(&m)
	raw, err = json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	nd := content.NewDescriptorFromBytes(ocispec.MediaTypeImageManifest, raw)
	if err := dst.PushReference(ctx, nd, bytes.NewReader(raw), tag); err != nil {
		t.Fatal(err)
	}
}

func stripSignature(m *ocispec.Manifest) {
	delete(m.Annotations, cache.AnnotationSignature)
	delete(m.Annotations, cache.AnnotationPublisher)
}

// resignWith signs the manifest with a fresh key nobody trusts.
func resignWith(t *testing.T) func(*ocispec.Manifest) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return func(m *ocispec.Manifest) {
		m.Annotations[cache.AnnotationPublisher] = base64.StdEncoding.EncodeToString(pub)
		m.Annotations[cache.AnnotationSignature] = base64.StdEncoding.EncodeToString(ed25519.Sign(priv, []byte(m.Config.Digest.String())))
	}
}

// tamper flips one byte of the module's blob in the registry's storage
// (same size, other digest) and returns what puts it back.
func (f *cacheFleet) tamper(t *testing.T, module []byte) func() {
	t.Helper()
	sum := sha256.Sum256(module)
	h := hex.EncodeToString(sum[:])
	blob := filepath.Join(f.storage, "docker/registry/v2/blobs/sha256", h[:2], h, "data")
	orig, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(orig)
	bad[len(bad)/2] ^= 0xff
	if err := os.WriteFile(blob, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := os.WriteFile(blob, orig, 0o644); err != nil {
			t.Error(err)
		}
	}
}

// exportLayout copies the published artifact into an OCI image layout
// dir: what an air-gapped site carries over.
func (f *cacheFleet) exportLayout(t *testing.T, url, dir string) {
	t.Helper()
	src := f.repo(t, "fleet/modules")
	tag := onlyTag(t, src)
	dst, err := oci.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oras.Copy(context.Background(), src, tag, dst, tag, oras.DefaultCopyOptions); err != nil {
		t.Fatal(err)
	}
}

// changedHeaders gives root's kernel a copy of its headers whose
// Module.symvers has one CRC changed (a kernel rebuilt under the same
// release), and returns the copy's path.
func changedHeaders(t *testing.T, root, kernel string) string {
	t.Helper()
	link := filepath.Join(root, "lib/modules", kernel, "build")
	orig, err := filepath.EvalSymlinks(link)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), filepath.Base(orig))
	if out, err := exec.Command("cp", "-a", orig, dst).CombinedOutput(); err != nil {
		t.Fatalf("copy the headers: %v: %s", err, out)
	}
	// Relative links (scripts, tools) must still reach the originals.
	_ = filepath.WalkDir(dst, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink == 0 {
			return err
		}
		target, _ := os.Readlink(p)
		if !filepath.IsAbs(target) {
			rel, _ := filepath.Rel(dst, p)
			abs := filepath.Join(filepath.Dir(filepath.Join(orig, rel)), target)
			os.Remove(p)
			return os.Symlink(abs, p)
		}
		return nil
	})
	sym := filepath.Join(dst, "Module.symvers")
	data, err := os.ReadFile(sym)
	if err != nil {
		t.Fatal(err)
	}
	// module_layout is the CRC every module records.
	re := regexp.MustCompile(`(?m)^0x([0-9a-f]{8})\tmodule_layout\t`)
	m := re.FindSubmatch(data)
	if m == nil {
		t.Fatal("Module.symvers has no module_layout")
	}
	changed := fmt.Sprintf("0x%08x\tmodule_layout\t", ^mustHex(t, string(m[1])))
	data = re.ReplaceAll(data, []byte(changed))
	if err := os.WriteFile(sym, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dst, link); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), changed) {
		t.Fatal("the CRC was not changed")
	}
	return dst
}

func mustHex(t *testing.T, s string) uint32 {
	var v uint32
	if _, err := fmt.Sscanf(s, "%x", &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// busPull runs `dkms dbus-service` for root on a private system bus with
// the repository's policy and calls CacheList and CachePull as root:
// what a dashboard does.
func (f *cacheFleet) busPull(t *testing.T, root string) (listed [][]string) {
	t.Helper()
	testkit.RequireTool(t, "dbus-daemon", "dbus")
	bus := startSystemBus(t, sharedDir(t), true)
	svc := exec.Command(f.bin, "--root", root, "dbus-service")
	svc.Env = []string{"PATH=" + f.wrappers + ":/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "HOME=" + root, "DBUS_SYSTEM_BUS_ADDRESS=" + bus}
	service := startDaemon(t, "dkms dbus-service", svc)
	t.Cleanup(func() {
		_ = svc.Process.Signal(syscall.SIGTERM)
		<-service.done
	})
	conn, err := dbus.Connect(bus)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	waitForOwner(t, conn, report.BusName)
	obj := conn.Object(report.BusName, report.Path)
	call := obj.Call(report.Interface+".CacheList", 0)
	if call.Err != nil {
		t.Fatalf("CacheList: %v\n%s", call.Err, service.output())
	}
	for _, r := range call.Body[0].([][]any) {
		var row []string
		for _, v := range r {
			row = append(row, fmt.Sprint(v))
		}
		listed = append(listed, row)
	}
	if err := obj.Call(report.Interface+".CachePull", 0, cacheModule, cacheVersion, f.kernel).Err; err != nil {
		t.Fatalf("CachePull: %v\n%s", err, service.output())
	}
	return listed
}
