package main

// Module compression for real: builds against a copy of the machine's
// headers whose configuration asks for compressed modules, checked with
// kmod's own tools and the compressors' listings.

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// compressedHeaders points <root>/lib/modules/<k>/build at a copy of k's
// headers (under <root>/usr/src) whose .config and auto.conf select
// CONFIG_MODULE_COMPRESS_<option> instead of no compression. The copy's
// Makefile and its links (scripts, tools) still lead to the machine's
// headers and kbuild.
func compressedHeaders(t *testing.T, root, k, option string) {
	t.Helper()
	orig, err := filepath.EvalSymlinks("/lib/modules/" + k + "/build")
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(root, "usr/src", filepath.Base(orig))
	if out, err := exec.Command("cp", "-a", orig, dst).CombinedOutput(); err != nil {
		t.Fatalf("copy the headers: %v: %s", err, out)
	}
	entries, err := os.ReadDir(orig)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Type()&os.ModeSymlink == 0 {
			continue
		}
		target, err := filepath.EvalSymlinks(filepath.Join(orig, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(dst, e.Name())
		if err := os.Remove(link); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{".config", "include/config/auto.conf"} {
		p := filepath.Join(dst, f)
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(data, []byte("\nCONFIG_MODULE_COMPRESS_NONE=y\n")) {
			t.Fatalf("%s does not say CONFIG_MODULE_COMPRESS_NONE=y", p)
		}
		data = bytes.Replace(data, []byte("\nCONFIG_MODULE_COMPRESS_NONE=y\n"), []byte("\nCONFIG_MODULE_COMPRESS_"+option+"=y\n"), 1)
		data = bytes.Replace(data, []byte("\n# CONFIG_MODULE_COMPRESS_"+option+" is not set\n"), []byte("\n# CONFIG_MODULE_COMPRESS_NONE is not set\n"), 1)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	build := filepath.Join(root, "lib/modules", k, "build")
	if err := os.Remove(build); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dst, build); err != nil {
		t.Fatal(err)
	}
}

// kmodReads reports whether the machine's kmod was built with the
// decompression for feature ("XZ", "ZSTD", "ZLIB"), as kmod --version
// lists it (+XZ or -XZ).
func kmodReads(t *testing.T, feature string) bool {
	t.Helper()
	out := testkit.MustRun(t, "kmod", "--version")
	return strings.Contains(out, "+"+feature)
}

// TestCompressionRealHeaders builds and installs dkmsd_hello for kernels
// configured for xz, zstd and gzip modules: the installed module has the
// kernel's suffix, is what the build stored, and kmod reads it (modinfo,
// modprobe --dump-modversions, depmod's index) wherever Debian's kmod
// can decompress it (kmod 30 here has no zlib: a .ko.gz is then read
// after gunzip). The default options are dkms 3.4.3's; compress_*_opts in
// framework.conf changes the file visibly: xz's integrity check, zstd's
// checksum, gzip's level (the header's XFL byte).
func TestCompressionRealHeaders(t *testing.T) {
	t.Parallel()
	testkit.RequireRoot(t)
	for tool, pkg := range map[string]string{"depmod": "kmod", "make": "make", "gcc": "gcc", "xz": "xz-utils", "zstd": "zstd", "gzip": "gzip", "modinfo": "kmod"} {
		testkit.RequireTool(t, tool, pkg)
	}
	k := testkit.Kernels(t, 1)[0]
	bin := testkit.Binary(t, "dkms")
	xzCheck := func(file string) string {
		out := testkit.MustRun(t, "xz", "--robot", "--list", file)
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Split(l, "\t"); f[0] == "file" && len(f) > 6 {
				return f[6]
			}
		}
		return "?"
	}
	zstdCheck := func(file string) string {
		for _, l := range strings.Split(testkit.MustRun(t, "zstd", "-lv", file), "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), "Check: "); ok {
				return strings.Fields(v)[0]
			}
		}
		return "?"
	}
	gzipXFL := func(file string) string {
		data, err := os.ReadFile(file)
		if err != nil || len(data) < 10 {
			t.Fatalf("%s: %v", file, err)
		}
		return map[byte]string{0: "default level", 2: "-9", 4: "-1"}[data[8]]
	}
	for _, c := range []struct {
		option, suffix, kmodFeature string
		opts                        string // the framework.conf line
		property                    func(string) string
		byDefault, withOpts         string
	}{
		{"XZ", ".ko.xz", "XZ", `compress_xz_opts="--check=sha256"`, xzCheck, "CRC32", "SHA-256"},
		{"ZSTD", ".ko.zst", "ZSTD", `compress_zstd_opts="$compress_zstd_opts --no-check"`, zstdCheck, "XXH64", "None"},
		{"GZIP", ".ko.gz", "ZLIB", `compress_gzip_opts="-1"`, gzipXFL, "default level", "-1"},
	} {
		t.Run(c.option, func(t *testing.T) {
			root, err := filepath.EvalSymlinks(testkit.NewRoot(t, k))
			if err != nil {
				t.Fatal(err)
			}
			compressedHeaders(t, root, k, c.option)
			testkit.CopyModule(t, root, "dkmsd_hello-1.0")
			installed := filepath.Join(root, "lib/modules", k, "updates/dkms/dkmsd_hello"+c.suffix)
			stored := filepath.Join(root, "var/lib/dkms/dkmsd_hello/1.0", k, machineArch(), "module/dkmsd_hello"+c.suffix)
			for _, step := range []struct {
				name, conf, want string
			}{{"default options", "", c.byDefault}, {c.opts, c.opts + "\n", c.withOpts}} {
				writeRootFile(t, root, "etc/dkms/framework.conf", step.conf, 0o644)
				dkmsOK(t, bin, "--root", root, "install", "dkmsd_hello/1.0", "-k", k)
				if got := moduleFiles(t, filepath.Join(root, "lib/modules", k)); len(got) != 1 || got[0] != "updates/dkms/dkmsd_hello"+c.suffix {
					t.Fatalf("%s: installed module files %q, want updates/dkms/dkmsd_hello%s", step.name, got, c.suffix)
				}
				a, _ := os.ReadFile(installed)
				b, _ := os.ReadFile(stored)
				if !bytes.Equal(a, b) {
					t.Errorf("%s: the installed %s differs from the build's %s", step.name, installed, stored)
				}
				if got := c.property(installed); got != step.want {
					t.Errorf("%s: %s: %q, want %q", step.name, installed, got, step.want)
				}
				readable := installed
				if !kmodReads(t, c.kmodFeature) {
					t.Logf("kmod has -%s: reading %s after decompressing it", c.kmodFeature, installed)
					readable = filepath.Join(t.TempDir(), "dkmsd_hello.ko")
					out, err := exec.Command("gzip", "-dc", installed).Output()
					if err != nil || os.WriteFile(readable, out, 0o644) != nil {
						t.Fatalf("gzip -dc %s: %v", installed, err)
					}
				} else {
					show := testkit.MustRun(t, "modprobe", "-d", root, "-S", k, "--show-depends", "dkmsd_hello")
					if !strings.Contains(show, "insmod "+installed) {
						t.Errorf("%s: modprobe --show-depends: %q, want insmod %s (depmod's index)", step.name, show, installed)
					}
				}
				if got := strings.TrimSpace(testkit.MustRun(t, "modinfo", "-F", "vermagic", readable)); !strings.HasPrefix(got, k+" ") {
					t.Errorf("%s: modinfo -F vermagic %s = %q, want %s …", step.name, readable, got, k)
				}
				if got := testkit.MustRun(t, "modprobe", "--dump-modversions", readable); !strings.Contains(got, "module_layout") {
					t.Errorf("%s: modprobe --dump-modversions %s lists no module_layout:\n%s", step.name, readable, got)
				}
				dkmsOK(t, bin, "--root", root, "unbuild", "dkmsd_hello/1.0", "-k", k)
			}
		})
	}
}

// moduleFiles lists the module files (.ko, .ko.*) under dir, relative to
// it, not following links (a kernel dir's build link is not entered).
func moduleFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.Contains(d.Name(), ".ko") {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return out
}
