package lifecycle_test

// Tests of the tarball loader against hostile archives built here with
// archive/tar: each is refused, naming the entry, and the relocated root
// (its trees and the temporary directory the loader unpacks into) is byte
// for byte what it was. FuzzCheckTarball feeds arbitrary bytes to
// CheckTarball and checks what it accepts against a model of unpacking.
// Nothing here needs root, kernel headers or external tools.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"math/rand"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// hostileLimit is the tarball_max_size the hostile-archive root's
// framework.conf sets.
const hostileLimit = 64 << 10

// tarMember is one entry of an archive made by a test.
type tarMember struct {
	hdr  tar.Header
	body []byte
}

func memberFile(name, body string) tarMember {
	return tarMember{tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body))}, []byte(body)}
}

func memberDir(name string) tarMember {
	return tarMember{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755}}
}

func memberSymlink(name, target string) tarMember {
	return tarMember{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

func memberHardlink(name, target string) tarMember {
	return tarMember{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644}}
}

func memberMode(m tarMember, mode int64) tarMember {
	m.hdr.Mode = mode
	return m
}

// tarOf writes the members as an uncompressed tar archive.
func tarOf(t testing.TB, members ...tarMember) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, m := range members {
		hdr := m.hdr
		if err := tw.WriteHeader(&hdr); err != nil {
			t.Fatalf("tar header %q: %v", hdr.Name, err)
		}
		if _, err := tw.Write(m.body); err != nil {
			t.Fatalf("tar body %q: %v", hdr.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func gzipOf(t testing.TB, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// hostileKernel is the kernel the prebuilt modules of the test archives
// claim to be for.
const hostileKernel = "6.1.0-tarball-test"

// helloConf is a valid dkms.conf for dkmsd_hello/1.0, the module the
// hostile-archive root already holds: archives that claim it, loaded with
// --force, would overwrite it if they got through.
const helloConf = "PACKAGE_NAME=\"dkmsd_hello\"\nPACKAGE_VERSION=\"1.0\"\nBUILT_MODULE_NAME[0]=\"dkmsd_hello\"\nDEST_MODULE_LOCATION[0]=\"/extra\"\nAUTOINSTALL=\"yes\"\n"

// prebuilt is a dkms_main_tree for dkmsd_hello on hostileKernel.
func prebuilt() []tarMember {
	base := "dkms_main_tree/" + hostileKernel + "/x86_64/"
	return []tarMember{
		memberDir("dkms_main_tree/"),
		memberDir("dkms_main_tree/" + hostileKernel + "/"),
		memberDir(base),
		memberDir(base + "module/"),
		memberFile(base+"module/dkmsd_hello.ko", "\x7fELF prebuilt dkmsd_hello from a tarball\n"),
		memberDir(base + "log/"),
		memberFile(base+"log/make.log", "make: built elsewhere\n"),
	}
}

// sourceTree is a dkms_source_tree with the given dkms.conf.
func sourceTree(conf string) []tarMember {
	return []tarMember{
		memberDir("dkms_source_tree/"),
		memberFile("dkms_source_tree/dkms.conf", conf),
		memberFile("dkms_source_tree/Makefile", "obj-m := dkmsd_hello.o\n"),
		memberFile("dkms_source_tree/dkmsd_hello.c", "/* replaced by a tarball */\n"),
	}
}

// binariesOnly is a dkms_binaries_only dir with the given identity files.
func binariesOnly(conf, name, version string) []tarMember {
	return []tarMember{
		memberDir("dkms_binaries_only/"),
		memberFile("dkms_binaries_only/dkms.conf", conf),
		memberFile("dkms_binaries_only/PACKAGE_NAME", name+"\n"),
		memberFile("dkms_binaries_only/PACKAGE_VERSION", version+"\n"),
	}
}

// dkmsTarball is a valid dkms tarball of dkmsd_hello/1.0 with extra
// members appended.
func dkmsTarball(extra ...tarMember) []tarMember {
	return slices.Concat(prebuilt(), sourceTree(helloConf), extra)
}

// noise is incompressible bytes, the same on every run.
func noise(n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(1)).Read(b)
	return b
}

// hostileRoot is a relocated root holding dkmsd_hello/1.0 (added), a
// framework.conf with tarball_max_size=hostileLimit, and its own tmp dir
// where the loader unpacks, so the snapshot covers that too. The Env has
// --force set: only the checks stand between an archive and the tree.
func hostileRoot(t *testing.T) (string, *lifecycle.Env) {
	t.Helper()
	root := testkit.NewRoot(t)
	testkit.CopyModule(t, root, "dkmsd_hello-1.0")
	if err := os.WriteFile(filepath.Join(root, "etc/dkms/framework.conf"), []byte("tarball_max_size="+strconv.Itoa(hostileLimit)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	env, err := lifecycle.NewEnv(t.Context(), tree.NewLayout(root), &lifecycle.Recorder{})
	if err != nil {
		t.Fatalf("NewEnv: %v", err)
	}
	env.Layout.TmpDir = filepath.Join(root, "tmp")
	if err := lifecycle.Add(t.Context(), env, "dkmsd_hello", "1.0", "", ""); err != nil {
		t.Fatalf("add dkmsd_hello/1.0: %v", err)
	}
	env.Force = true
	if env.Framework.TarballLimit != hostileLimit {
		t.Fatalf("framework.conf tarball_max_size: TarballLimit %d, want %d", env.Framework.TarballLimit, hostileLimit)
	}
	return root, env
}

// hostileArchive is an archive TestLoadTarballHostile feeds the loader
// and what its refusal must be.
type hostileArchive struct {
	name string
	// data is the archive file's bytes; members, when data is nil,
	// are written as a .tar.gz.
	members []tarMember
	data    []byte
	kind    lifecycle.Kind
	// want are substrings of the error, usually the quoted entry.
	want []string
	// tarLevel: CheckTarball itself must refuse the (decompressed)
	// archive.
	tarLevel bool
}

// escapingArchives write or link outside the unpack dir: at victim (a
// file of the hostile root) or at root itself.
func escapingArchives(root, victim string) []hostileArchive {
	return []hostileArchive{{
		name:    "dotdot component",
		members: dkmsTarball(memberFile("dkms_source_tree/../../victim", "pwned\n")),
		kind:    lifecycle.KindBadTarball, want: []string{`"dkms_source_tree/../../victim"`, "'..'"}, tarLevel: true,
	}, {
		name:    "dotdot inside dkms_main_tree",
		members: dkmsTarball(memberFile("dkms_main_tree/"+hostileKernel+"/../../../victim", "pwned\n")),
		kind:    lifecycle.KindBadTarball, want: []string{`"dkms_main_tree/` + hostileKernel + `/../../../victim"`}, tarLevel: true,
	}, {
		name:    "absolute path",
		members: dkmsTarball(memberFile(victim, "pwned\n")),
		kind:    lifecycle.KindBadTarball, want: []string{strconv.Quote(victim), "absolute"}, tarLevel: true,
	}, {
		name:    "symlink to an absolute path",
		members: dkmsTarball(memberSymlink("dkms_source_tree/evil", filepath.Join(root, "etc"))),
		kind:    lifecycle.KindBadTarball, want: []string{`"dkms_source_tree/evil"`, "symlink"}, tarLevel: true,
	}, {
		name:    "symlink up and out",
		members: dkmsTarball(memberSymlink("dkms_source_tree/evil", "../../victim")),
		kind:    lifecycle.KindBadTarball, want: []string{`"dkms_source_tree/evil"`, "symlink"}, tarLevel: true,
	}, {
		name: "entry under a symlink inside",
		members: dkmsTarball(
			memberDir("dkms_source_tree/dir/"),
			memberSymlink("dkms_source_tree/dir/link", ".."),
			memberFile("dkms_source_tree/dir/link/x", "through the link\n")),
		kind: lifecycle.KindBadTarball, want: []string{`"dkms_source_tree/dir/link/x"`, `"dkms_source_tree/dir/link"`}, tarLevel: true,
	}, {
		// x/c points at the archive root and f's target only looks inside
		// when c is taken for a directory: it really is <root>/victim
		// (the loader unpacks into <root>/tmp/dkms.*). Writing the second
		// f follows the first.
		name: "file written through a symlink that escapes via another",
		members: dkmsTarball(
			memberDir("x/"),
			memberSymlink("x/c", ".."),
			memberSymlink("f", "x/c/../../victim"),
			memberFile("f", "pwned\n")),
		kind: lifecycle.KindBadTarball, want: []string{`"f"`}, tarLevel: true,
	}, {
		name: "symlink that escapes via another",
		members: dkmsTarball(
			memberDir("x/"),
			memberSymlink("x/c", ".."),
			memberSymlink("dkms_source_tree/l", "../x/c/../..")),
		kind: lifecycle.KindBadTarball, want: []string{`"dkms_source_tree/l"`}, tarLevel: true,
	}, {
		// A hard link to a symlink is that symlink, moved: p/q/l's target
		// stays inside from p/q, but from the top it is <root>/victim.
		name: "file written through a hard link to a deeper symlink",
		members: dkmsTarball(
			memberDir("p/"),
			memberDir("p/q/"),
			memberSymlink("p/q/l", "../../victim"),
			memberHardlink("h", "p/q/l"),
			memberFile("h", "pwned\n")),
		kind: lifecycle.KindBadTarball, want: []string{`"h"`}, tarLevel: true,
	}, {
		name: "entry under a hard link to a deeper symlink",
		members: dkmsTarball(
			memberDir("p/"),
			memberDir("p/q/"),
			memberSymlink("p/q/l", "../.."),
			memberHardlink("h", "p/q/l"),
			memberFile("h/victim", "pwned\n")),
		kind: lifecycle.KindBadTarball, want: []string{`"h`}, tarLevel: true,
	}, {
		name:    "hard link to an absolute path",
		members: dkmsTarball(memberHardlink("dkms_source_tree/h", "/etc/passwd")),
		kind:    lifecycle.KindBadTarball, want: []string{`"dkms_source_tree/h"`, "hard link"}, tarLevel: true,
	}, {
		name:    "hard link up and out",
		members: dkmsTarball(memberHardlink("dkms_source_tree/h", "../../victim")),
		kind:    lifecycle.KindBadTarball, want: []string{`"dkms_source_tree/h"`, "hard link"}, tarLevel: true,
	}, {
		name: "hard link to a later entry",
		members: dkmsTarball(
			memberHardlink("dkms_source_tree/h", "dkms_source_tree/later"),
			memberFile("dkms_source_tree/later", "later\n")),
		kind: lifecycle.KindBadTarball, want: []string{`"dkms_source_tree/h"`, "hard link"}, tarLevel: true,
	}, {
		name:    "hard link to nothing",
		members: dkmsTarball(memberHardlink("dkms_source_tree/h", "dkms_source_tree/nonesuch")),
		kind:    lifecycle.KindBadTarball, want: []string{`"dkms_source_tree/h"`, "hard link"}, tarLevel: true,
	}}
}

// dangerousEntryArchives hold devices, fifos, setuid and setgid entries.
func dangerousEntryArchives() []hostileArchive {
	return []hostileArchive{{
		name:    "character device",
		members: dkmsTarball(tarMember{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dkms_source_tree/null", Mode: 0o666, Devmajor: 1, Devminor: 3}}),
		kind:    lifecycle.KindBadTarball, want: []string{`"dkms_source_tree/null"`, "device"}, tarLevel: true,
	}, {
		name:    "block device",
		members: dkmsTarball(tarMember{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dkms_source_tree/sda", Mode: 0o660, Devmajor: 8}}),
		kind:    lifecycle.KindBadTarball, want: []string{`"dkms_source_tree/sda"`, "device"}, tarLevel: true,
	}, {
		name:    "fifo",
		members: dkmsTarball(tarMember{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "dkms_source_tree/pipe", Mode: 0o644}}),
		kind:    lifecycle.KindBadTarball, want: []string{`"dkms_source_tree/pipe"`, "fifo"}, tarLevel: true,
	}, {
		name:    "setuid file",
		members: dkmsTarball(memberMode(memberFile("dkms_source_tree/suid", "#!/bin/sh\n"), 0o4755)),
		kind:    lifecycle.KindBadTarball, want: []string{`"dkms_source_tree/suid"`, "setuid"}, tarLevel: true,
	}, {
		name:    "setgid directory",
		members: dkmsTarball(memberMode(memberDir("dkms_source_tree/sgid/"), 0o2755)),
		kind:    lifecycle.KindBadTarball, want: []string{`"dkms_source_tree/sgid/"`, "setgid"}, tarLevel: true,
	}}
}

// badIdentityArchives smuggle a name or version that disagrees with
// their dkms.conf, or a dkms.conf that escapes its trees.
func badIdentityArchives() []hostileArchive {
	hostileConf := strings.Replace(helloConf, "/extra", "/kernel/../../etc", 1)
	return []hostileArchive{{
		name:    "binaries-only PACKAGE_NAME disagrees with dkms.conf",
		members: slices.Concat(prebuilt(), binariesOnly(helloConf, "dkmsd_other", "1.0")),
		kind:    lifecycle.KindBadTarball, want: []string{"dkms_binaries_only/PACKAGE_NAME", "dkmsd_other", "dkmsd_hello"},
	}, {
		name:    "binaries-only PACKAGE_VERSION disagrees with dkms.conf",
		members: slices.Concat(prebuilt(), binariesOnly(helloConf, "dkmsd_hello", "9.9")),
		kind:    lifecycle.KindBadTarball, want: []string{"dkms_binaries_only/PACKAGE_VERSION", "9.9"},
	}, {
		name:    "dkms.conf with DEST_MODULE_LOCATION escaping",
		members: slices.Concat(prebuilt(), sourceTree(hostileConf)),
		kind:    lifecycle.KindBadConf, want: []string{"dkms.conf", "DEST_MODULE_LOCATION", "/kernel/../../etc"},
	}, {
		name:    "binaries-only dkms.conf with DEST_MODULE_LOCATION escaping",
		members: slices.Concat(prebuilt(), binariesOnly(hostileConf, "dkmsd_hello", "1.0")),
		kind:    lifecycle.KindBadConf, want: []string{"dkms.conf", "DEST_MODULE_LOCATION"},
	}, {
		name:    "plain source tarball with DEST_MODULE_LOCATION escaping",
		members: sourceTree(hostileConf),
		kind:    lifecycle.KindBadConf, want: []string{"dkms.conf", "DEST_MODULE_LOCATION"},
	}, {
		name:    "dkms.conf with a PACKAGE_NAME that is a path",
		members: slices.Concat(prebuilt(), sourceTree(strings.Replace(helloConf, `"dkmsd_hello"`, `"../../victim"`, 1))),
		kind:    lifecycle.KindBadConf, want: []string{"dkms.conf", "PACKAGE_NAME"},
	}}
}

// brokenArchives are too big once decompressed, truncated, or not tar
// archives at all.
func brokenArchives(t *testing.T) []hostileArchive {
	return []hostileArchive{{
		name:    "bigger than tarball_max_size when decompressed",
		members: dkmsTarball(memberFile("dkms_source_tree/big", strings.Repeat("\x00", 4*hostileLimit))),
		kind:    lifecycle.KindBadTarball, want: []string{`"dkms_source_tree/big"`, strconv.Itoa(hostileLimit)}, tarLevel: true,
	}, {
		name: "truncated gzip",
		data: func() []byte {
			gz := gzipOf(t, tarOf(t, dkmsTarball(memberFile("dkms_source_tree/blob", string(noise(hostileLimit/2))))...))
			return gz[:len(gz)*3/4]
		}(),
		kind: lifecycle.KindBadTarball, want: []string{`"dkms_source_tree/blob"`}, tarLevel: true,
	}, {
		name: "truncated tar",
		data: func() []byte {
			raw := tarOf(t, dkmsTarball(memberFile("dkms_source_tree/blob", string(noise(8192))))...)
			i := bytes.Index(raw, noise(8192))
			return raw[:i+4096]
		}(),
		kind: lifecycle.KindBadTarball, want: []string{`"dkms_source_tree/blob"`}, tarLevel: true,
	}, {
		name: "not a tar at all",
		data: []byte(strings.Repeat("This is a README, not a tarball.\n", 64)),
		kind: lifecycle.KindBadTarball, want: []string{"not a readable tar archive"}, tarLevel: true,
	}, {
		name: "gzip of something not a tar",
		data: gzipOf(t, []byte(strings.Repeat("This is a README, not a tarball.\n", 64))),
		kind: lifecycle.KindBadTarball, want: []string{"not a readable tar archive"}, tarLevel: true,
	}}
}

// TestLoadTarballHostile loads archives that would write outside the
// unpack dir, create dangerous files, smuggle a bad identity or
// dkms.conf, or are too big or broken: each must be refused with a
// message naming the culprit, and nothing in the root may change.
func TestLoadTarballHostile(t *testing.T) {
	root, env := hostileRoot(t)
	victim := filepath.Join(root, "victim")
	cases := slices.Concat(escapingArchives(root, victim), dangerousEntryArchives(), badIdentityArchives(), brokenArchives(t))
	archives := t.TempDir()
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data := c.data
			if data == nil {
				data = gzipOf(t, tarOf(t, c.members...))
			}
			file := filepath.Join(archives, fmt.Sprintf("hostile-%02d.dkms.tar.gz", i))
			if err := os.WriteFile(file, data, 0o644); err != nil {
				t.Fatal(err)
			}
			wantLoadRefused(t, env, root, file, c)
			if b, err := os.ReadFile(victim); err == nil {
				t.Errorf("%s was written: %q", victim, b)
				os.Remove(victim)
			}
			if c.tarLevel {
				wantCheckRefused(t, data, c.want)
			}
		})
	}
}

// wantLoadRefused loads the archive file with LoadTarball: it must be
// refused with c's kind and words, and leave root as it was.
func wantLoadRefused(t *testing.T, env *lifecycle.Env, root, file string, c hostileArchive) {
	t.Helper()
	before := testkit.Snapshot(t, root)
	m, v, err := lifecycle.LoadTarball(t.Context(), env, file, env.Framework.TarballLimit)
	if err == nil {
		t.Errorf("LoadTarball accepted it, loading %s/%s", m, v)
	} else {
		msg := err.Error()
		t.Logf("refused: %s", msg)
		if got := lifecycle.KindOf(err); got != c.kind {
			t.Errorf("error kind %d, want %d: %s", got, c.kind, msg)
		}
		for _, w := range c.want {
			if !strings.Contains(msg, w) {
				t.Errorf("error does not name %s: %s", w, msg)
			}
		}
		if c.kind == lifecycle.KindBadTarball && !strings.Contains(msg, "Nothing was written.") {
			t.Errorf("error does not say nothing was written: %s", msg)
		}
	}
	gone, added := testkit.Changes(before, testkit.Snapshot(t, root))
	if len(gone) > 0 || len(added) > 0 {
		t.Errorf("the root changed:\n  gone/changed: %q\n  new/changed:  %q", gone, added)
	}
}

// wantCheckRefused feeds the archive, decompressed as far as it goes, to
// CheckTarball itself: it must refuse it, naming each of want.
func wantCheckRefused(t *testing.T, data []byte, want []string) {
	t.Helper()
	raw := data
	if zr, err := gzip.NewReader(bytes.NewReader(data)); err == nil {
		var b bytes.Buffer
		_, _ = b.ReadFrom(zr) // a truncated stream keeps what it had
		raw = b.Bytes()
	}
	err := lifecycle.CheckTarball(tar.NewReader(bytes.NewReader(raw)), hostileLimit)
	if err == nil {
		t.Errorf("CheckTarball accepted it")
		return
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("CheckTarball error does not name %s: %v", w, err)
		}
	}
}

// TestLoadTarballHostileControl loads archives with everything the hostile
// cases lack — a symlink and a hard link that stay inside, modes without
// special bits, a size just under the limit — to show the refusals above
// are the checks at work, not a loader that refuses everything.
func TestLoadTarballHostileControl(t *testing.T) {
	root, env := hostileRoot(t)
	env.Force = false
	okConf := strings.ReplaceAll(helloConf, "dkmsd_hello", "dkmsd_ok")
	base := "dkms_main_tree/" + hostileKernel + "/x86_64/"
	ko := "\x7fELF prebuilt dkmsd_ok\n"
	members := []tarMember{
		memberDir("./"),
		memberDir("./dkms_main_tree/"),
		memberDir("./dkms_main_tree/" + hostileKernel + "/"),
		memberDir("./" + base),
		memberDir("./" + base + "module/"),
		memberFile("./"+base+"module/dkmsd_ok.ko", ko),
		memberDir("./dkms_source_tree/"),
		memberFile("./dkms_source_tree/dkms.conf", okConf),
		memberFile("./dkms_source_tree/Makefile", "obj-m := dkmsd_ok.o\n"),
		memberFile("./dkms_source_tree/dkmsd_ok.c", "/* ok */\n"),
		memberFile("./dkms_source_tree/padding", string(noise(hostileLimit/2))),
		memberSymlink("./dkms_source_tree/Kbuild", "Makefile"),
		memberDir("./dkms_source_tree/sub/"),
		memberSymlink("./dkms_source_tree/sub/up", "../dkmsd_ok.c"),
		memberHardlink("./dkms_source_tree/dkmsd_ok_copy.c", "./dkms_source_tree/dkmsd_ok.c"),
	}
	raw := tarOf(t, members...)
	if err := lifecycle.CheckTarball(tar.NewReader(bytes.NewReader(raw)), hostileLimit); err != nil {
		t.Fatalf("CheckTarball refused a harmless archive: %v", err)
	}
	file := filepath.Join(t.TempDir(), "dkmsd_ok-1.0.dkms.tar.gz")
	if err := os.WriteFile(file, gzipOf(t, raw), 0o644); err != nil {
		t.Fatal(err)
	}
	m, v, err := lifecycle.LoadTarball(t.Context(), env, file, env.Framework.TarballLimit)
	if err != nil {
		t.Fatalf("LoadTarball refused a harmless archive: %v", err)
	}
	if m != "dkmsd_ok" || v != "1.0" {
		t.Errorf("loaded %s/%s, want dkmsd_ok/1.0", m, v)
	}
	if got, err := os.ReadFile(filepath.Join(root, "var/lib/dkms/dkmsd_ok/1.0", hostileKernel, "x86_64/module/dkmsd_ok.ko")); err != nil || string(got) != ko {
		t.Errorf("prebuilt module: %q, %v", got, err)
	}
	if got, err := os.Readlink(filepath.Join(root, "usr/src/dkmsd_ok-1.0/sub/up")); err != nil || got != "../dkmsd_ok.c" {
		t.Errorf("symlink in the source: %q, %v", got, err)
	}
	if got, err := os.ReadFile(filepath.Join(root, "usr/src/dkmsd_ok-1.0/dkmsd_ok_copy.c")); err != nil || string(got) != "/* ok */\n" {
		t.Errorf("hard-linked file in the source: %q, %v", got, err)
	}
	if entries, _ := os.ReadDir(filepath.Join(root, "tmp")); len(entries) != 0 {
		t.Errorf("the loader left %d entries in its tmp dir", len(entries))
	}
}

// FuzzCheckTarball feeds arbitrary bytes through tar.NewReader into
// CheckTarball. It must never panic, and whatever it accepts must be safe
// to unpack: no device, fifo or setuid/setgid entry, no more than the
// limit, and no write (or symlink) that an unpacker following the
// archive's own symlinks would put outside the unpack dir.
func FuzzCheckTarball(f *testing.F) {
	const limit = 1 << 16
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := lifecycle.CheckTarball(tar.NewReader(bytes.NewReader(data)), limit); err != nil {
			return
		}
		if why := unsafeToUnpack(data, limit); why != "" {
			t.Fatalf("CheckTarball accepted an archive where %s", why)
		}
	})
}

// unsafeToUnpack says what is unsafe about unpacking the archive in order
// the way the loader does (parents made with MkdirAll, regular files
// opened with O_CREATE|O_TRUNC, both following symlinks), or "".
func unsafeToUnpack(data []byte, limit int64) string {
	tr := tar.NewReader(bytes.NewReader(data))
	v := vfs{}
	var total int64
	var links []string
	stopped := false
	for {
		hdr, err := tr.Next()
		if err != nil {
			break
		}
		switch hdr.Typeflag {
		case tar.TypeChar, tar.TypeBlock:
			return fmt.Sprintf("entry %q is a device node", hdr.Name)
		case tar.TypeFifo:
			return fmt.Sprintf("entry %q is a fifo", hdr.Name)
		}
		if hdr.Mode&0o6000 != 0 {
			return fmt.Sprintf("entry %q has mode %o", hdr.Name, hdr.Mode)
		}
		if hdr.Typeflag == tar.TypeReg {
			if total += hdr.Size; total > limit {
				return fmt.Sprintf("the files add up to %d bytes, more than %d", total, limit)
			}
		}
		if stopped {
			continue // the unpack failed earlier; only the static checks apply
		}
		name := strings.TrimPrefix(hdr.Name, "./")
		if path.IsAbs(name) {
			return fmt.Sprintf("entry %q is absolute", hdr.Name)
		}
		name = path.Clean(name)
		if name == "." {
			continue
		}
		hops := 0
		parent, outside, ok := v.resolve(nil, path.Dir(name), true, true, &hops)
		if outside {
			return fmt.Sprintf("entry %q lies outside the unpack dir", hdr.Name)
		}
		if !ok {
			stopped = true
			continue
		}
		at := append(slices.Clone(parent), path.Base(name))
		_, exists := v[strings.Join(at, "/")]
		switch hdr.Typeflag {
		case tar.TypeDir:
			if !exists {
				v[strings.Join(at, "/")] = vnode{kind: 'd'}
			}
		case tar.TypeReg:
			res, outside, ok := v.resolve(parent, path.Base(name), true, false, &hops)
			if outside {
				return fmt.Sprintf("entry %q is written through a symlink to outside the unpack dir", hdr.Name)
			}
			if n, there := v[strings.Join(res, "/")]; !ok || (there && n.kind == 'd') {
				stopped = true
				continue
			}
			if _, there := v[strings.Join(res, "/")]; !there {
				v[strings.Join(res, "/")] = vnode{kind: 'f'}
			}
		case tar.TypeSymlink:
			if exists {
				stopped = true // EEXIST
				continue
			}
			v[strings.Join(at, "/")] = vnode{kind: 'l', target: hdr.Linkname}
			links = append(links, strings.Join(at, "/"))
		case tar.TypeLink:
			target := strings.TrimPrefix(hdr.Linkname, "./")
			if path.IsAbs(target) {
				return fmt.Sprintf("entry %q is a hard link to the absolute %q", hdr.Name, hdr.Linkname)
			}
			src, outside, ok := v.resolve(nil, path.Clean(target), false, false, &hops)
			if outside {
				return fmt.Sprintf("entry %q is a hard link to %q, outside the unpack dir", hdr.Name, hdr.Linkname)
			}
			n, there := v[strings.Join(src, "/")]
			if !ok || !there || n.kind == 'd' || exists {
				stopped = true
				continue
			}
			v[strings.Join(at, "/")] = n
			if n.kind == 'l' {
				links = append(links, strings.Join(at, "/"))
			}
		}
	}
	for _, l := range links {
		hops := 0
		if _, outside, _ := v.resolve(nil, l, true, false, &hops); outside {
			return fmt.Sprintf("the symlink %q -> %q resolves outside the unpack dir", l, v[l].target)
		}
	}
	return ""
}

// vfs is an unpack dir as the kernel sees it: each physical path (its
// components joined by "/"; "" is the dir itself) is a directory, a file
// or a symlink.
type vfs map[string]vnode

type vnode struct {
	kind   byte // 'd', 'f' or 'l'
	target string
}

// resolve walks rel from the physical directory cur as path resolution
// does: symlinks are substituted (a final one only if follow), ".." goes to
// the physical parent. It returns the physical path reached; outside when
// it leaves the unpack dir; ok false where the kernel would fail (ENOENT,
// ENOTDIR, ELOOP) and nothing would be written. mkdir makes missing
// directories on the way, as os.MkdirAll does.
func (v vfs) resolve(cur []string, rel string, follow, mkdir bool, hops *int) (_ []string, outside, ok bool) {
	if strings.HasPrefix(rel, "/") {
		return nil, true, true
	}
	cur = slices.Clone(cur)
	var parts []string
	for _, p := range strings.Split(rel, "/") {
		if p != "" && p != "." {
			parts = append(parts, p)
		}
	}
	for i, part := range parts {
		last := i == len(parts)-1
		if part == ".." {
			if len(cur) == 0 {
				return nil, true, true
			}
			cur = cur[:len(cur)-1]
			continue
		}
		next := append(slices.Clone(cur), part)
		key := strings.Join(next, "/")
		n, found := v[key]
		switch {
		case !found && last:
			cur = next
			if mkdir {
				v[key] = vnode{kind: 'd'}
			}
		case !found && mkdir:
			v[key] = vnode{kind: 'd'}
			cur = next
		case !found:
			return nil, false, false
		case n.kind == 'f' && last && mkdir:
			return nil, false, false // ENOTDIR: a file where a directory must be made
		case n.kind == 'l' && (!last || follow):
			if *hops++; *hops > 40 {
				return nil, false, false
			}
			res, outside, ok := v.resolve(cur, n.target, true, false, hops)
			if outside || !ok {
				return nil, outside, ok
			}
			if m, there := v[strings.Join(res, "/")]; !last && len(res) > 0 && (!there || m.kind != 'd') {
				return nil, false, false
			}
			cur = res
		case n.kind != 'd' && !last:
			return nil, false, false
		default:
			cur = next
		}
	}
	return cur, false, true
}

// TestUnsafeToUnpack checks the fuzz target's model on archives whose
// verdict is known, so a model that flags nothing cannot pass for a safe
// CheckTarball.
func TestUnsafeToUnpack(t *testing.T) {
	cases := []struct {
		name    string
		members []tarMember
		unsafe  bool
	}{
		{"plain files", []tarMember{memberDir("a/"), memberFile("a/b", "x"), memberFile("c", "y")}, false},
		{"symlink inside", []tarMember{memberDir("a/"), memberSymlink("a/l", "../c"), memberFile("c", "y")}, false},
		{"hard link inside", []tarMember{memberFile("c", "y"), memberHardlink("d", "c")}, false},
		{"dotdot", []tarMember{memberFile("a/../../x", "x")}, true},
		{"absolute", []tarMember{memberFile("/x", "x")}, true},
		{"symlink out", []tarMember{memberSymlink("l", "../x")}, true},
		{"symlink absolute", []tarMember{memberSymlink("l", "/etc")}, true},
		{"under a symlink out", []tarMember{memberDir("a/"), memberSymlink("a/l", "../.."), memberFile("a/l/x", "x")}, true},
		{"chain", []tarMember{memberDir("x/"), memberSymlink("x/c", ".."), memberSymlink("f", "x/c/../../v")}, true},
		{"write through chain", []tarMember{memberDir("x/"), memberSymlink("x/c", ".."), memberSymlink("f", "x/c/../v"), memberFile("f", "x")}, true},
		{"hard link moving a symlink up", []tarMember{memberDir("p/"), memberDir("p/q/"), memberSymlink("p/q/l", "../../v"), memberHardlink("h", "p/q/l")}, true},
		{"hard link to a symlink in the same dir", []tarMember{memberFile("c", "y"), memberSymlink("l", "c"), memberHardlink("h", "l")}, false},
		{"file under a file", []tarMember{memberFile("f", "y"), memberFile("f/x", "x")}, false},
		{"device", []tarMember{{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "d"}}}, true},
		{"setuid", []tarMember{memberMode(memberFile("s", "x"), 0o4755)}, true},
		{"too big", []tarMember{memberFile("big", strings.Repeat("x", 1<<16+1))}, true},
	}
	for _, c := range cases {
		if got := unsafeToUnpack(tarOf(t, c.members...), 1<<16) != ""; got != c.unsafe {
			t.Errorf("%s: unsafe %v, want %v (%s)", c.name, got, c.unsafe, unsafeToUnpack(tarOf(t, c.members...), 1<<16))
		}
	}
}

// TestCheckTarballSeedCorpus keeps the fuzz seeds meaningful: those named
// ok-* are accepted by CheckTarball (so the fuzz target's model runs on
// them and their mutants), those named bad-* refused; the others are
// corner cases either answer may fit.
func TestCheckTarballSeedCorpus(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzCheckTarball", "*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no seed corpus in testdata/fuzz/FuzzCheckTarball (%v)", err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lit, ok := strings.CutPrefix(strings.TrimSpace(string(src)), "go test fuzz v1\n[]byte(")
		lit, ok2 := strings.CutSuffix(lit, ")")
		data, err := strconv.Unquote(lit)
		if !ok || !ok2 || err != nil {
			t.Errorf("%s: not a go fuzz corpus file holding one []byte (%v)", name, err)
			continue
		}
		err = lifecycle.CheckTarball(tar.NewReader(strings.NewReader(data)), 1<<16)
		switch {
		case strings.HasPrefix(name, "ok-") && err != nil:
			t.Errorf("%s: refused: %v", name, err)
		case strings.HasPrefix(name, "bad-") && err == nil:
			t.Errorf("%s: accepted", name)
		}
	}
}
