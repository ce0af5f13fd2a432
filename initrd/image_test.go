package initrd_test

// Tests of Parse and the last-wins view on initrds built here, record by
// record, with u-root's newc writer: a leading uncompressed microcode
// segment, then a usr-merged main archive (lib -> usr/lib) compressed with
// each format the package reads. The fixtures are shared with
// build_test.go; FuzzParse's seed corpus is in testdata/fuzz/FuzzParse.

import (
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/u-root/u-root/pkg/cpio"
	"github.com/ulikunitz/xz"

	"github.com/dkmsd/dkmsd/initrd"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// testKernel is the kernel the fixture images are made for.
const testKernel = "6.1.0-99-dkmsdtest"

// testModDir is where the fixtures keep their modules: usr-merged, reached
// from lib/modules/<k> through the lib -> usr/lib symlink.
const testModDir = "usr/lib/modules/" + testKernel

// testMTime is the modification time of the fixtures' records, so that a
// rewrite that loses it shows.
const testMTime = 1_700_000_000

func dirRec(name string) cpio.Record {
	r := cpio.Directory(name, 0o755)
	r.MTime, r.NLink = testMTime, 2
	return r
}

func fileRec(name string, perm uint64, data []byte) cpio.Record {
	return cpio.StaticRecord(data, cpio.Info{Name: name, Mode: cpio.S_IFREG | perm, NLink: 1, MTime: testMTime})
}

func linkRec(name, target string) cpio.Record {
	r := cpio.Symlink(name, target)
	r.MTime, r.NLink = testMTime, 1
	return r
}

// microcodeRecords is an early cpio as intel-microcode's hook makes it.
func microcodeRecords() []cpio.Record {
	return []cpio.Record{
		dirRec("kernel"), dirRec("kernel/x86"), dirRec("kernel/x86/microcode"),
		fileRec("kernel/x86/microcode/GenuineIntel.bin", 0o644, bytes.Repeat([]byte{0xa5, 0x5a, 0x01}, 700)),
	}
}

// mainSpec describes a fixture's main archive.
type mainSpec struct {
	// modules maps paths relative to the modules dir (kernel/lib/crc7.ko)
	// to their bytes; indexes maps modules.* names to theirs.
	modules, indexes map[string][]byte
	// initramfsTools adds scripts/functions, which makes the image an
	// initramfs-tools one (its boot list is conf/modules).
	initramfsTools bool
	// confModules, if not "", is the image's conf/modules.
	confModules string
}

// mainRecords is a usr-merged Debian-like main archive, in `find | sort`
// order, parents before children, with a device node, a setuid file owned
// by someone else and a dracut-style hard link pair (the data on the last
// link).
func mainRecords(s mainSpec) []cpio.Record {
	recs := []cpio.Record{
		dirRec("."),
		linkRec("bin", "usr/bin"),
		dirRec("conf"),
		fileRec("conf/initramfs.conf", 0o644, []byte("MODULES=most\nCOMPRESS=zstd\n")),
		dirRec("dev"),
		func() cpio.Record {
			r := cpio.CharDev("dev/console", 0o600, 5, 1)
			r.MTime, r.NLink = testMTime, 1
			return r
		}(),
		dirRec("etc"),
		cpio.StaticRecord(nil, cpio.Info{Name: "etc/ld.so.cache", Mode: cpio.S_IFREG | 0o644, NLink: 2, Ino: 4242, MTime: testMTime}),
		cpio.StaticRecord([]byte("hard-linked bytes\n"), cpio.Info{Name: "etc/ld.so.cache.hl", Mode: cpio.S_IFREG | 0o644, NLink: 2, Ino: 4242, MTime: testMTime}),
		fileRec("init", 0o755, []byte("#!/bin/sh\necho init\n")),
		linkRec("lib", "usr/lib"),
		linkRec("lib64", "usr/lib64"),
		linkRec("sbin", "usr/sbin"),
	}
	if s.confModules != "" {
		recs = append(recs, fileRec("conf/modules", 0o644, []byte(s.confModules)))
	}
	if s.initramfsTools {
		recs = append(recs, dirRec("scripts"), fileRec("scripts/functions", 0o644, []byte("load_modules() { :; }\n")))
	}
	recs = append(recs,
		dirRec("usr"), dirRec("usr/bin"),
		cpio.StaticRecord([]byte("\x7fELF kmod"), cpio.Info{Name: "usr/bin/kmod", Mode: cpio.S_IFREG | 0o4755, UID: 1000, GID: 100, NLink: 1, MTime: testMTime + 1}),
		dirRec("usr/lib"), dirRec("usr/lib/modules"), dirRec(testModDir),
		dirRec("usr/lib64"), dirRec("usr/sbin"), linkRec("usr/sbin/modprobe", "../bin/kmod"),
	)
	// The module tree: directories, then files, sorted.
	var names []string
	dirs := map[string]bool{}
	for rel := range s.modules {
		names = append(names, rel)
		for d := path.Dir(rel); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for d := range dirs {
		names = append(names, d+"/")
	}
	for n := range s.indexes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		switch {
		case strings.HasSuffix(n, "/"):
			recs = append(recs, dirRec(path.Join(testModDir, strings.TrimSuffix(n, "/"))))
		case s.modules[n] != nil:
			recs = append(recs, fileRec(path.Join(testModDir, n), 0o644, s.modules[n]))
		default:
			recs = append(recs, fileRec(path.Join(testModDir, n), 0o644, s.indexes[n]))
		}
	}
	return recs
}

// fakeModules are the module bytes of fixtures that never reach depmod.
func fakeModules() map[string][]byte {
	return map[string][]byte{
		"kernel/lib/crc7.ko":           []byte("\x7fELF not really crc7\n"),
		"kernel/drivers/block/loop.ko": []byte("\x7fELF not really loop\n"),
	}
}

func fakeIndexes() map[string][]byte {
	return map[string][]byte{
		"modules.dep":   []byte("kernel/drivers/block/loop.ko:\nkernel/lib/crc7.ko:\n"),
		"modules.order": []byte("kernel/lib/crc7.ko\nkernel/drivers/block/loop.ko\n"),
	}
}

// newcArchive writes records as one newc archive ending in a trailer.
func newcArchive(t testing.TB, recs []cpio.Record) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	for _, r := range recs {
		if err := w.WriteRecord(r); err != nil {
			t.Fatalf("write %s: %v", r.Name, err)
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// codec compresses a fixture segment the way an initrd generator would.
type codec struct {
	name string
	want initrd.Compression
	pack func(testing.TB, []byte) []byte
}

var codecs = []codec{
	{"none", initrd.None, func(_ testing.TB, b []byte) []byte { return b }},
	{"gzip", initrd.Gzip, func(t testing.TB, b []byte) []byte {
		var buf bytes.Buffer
		w := gzip.NewWriter(&buf)
		w.Write(b)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}},
	{"zstd", initrd.Zstd, func(t testing.TB, b []byte) []byte {
		w, err := zstd.NewWriter(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		return w.EncodeAll(b, nil)
	}},
	{"xz", initrd.Xz, func(t testing.TB, b []byte) []byte {
		var buf bytes.Buffer
		w, err := xz.WriterConfig{CheckSum: xz.CRC32}.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(b)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}},
	{"lz4", initrd.Lz4, func(t testing.TB, b []byte) []byte {
		var buf bytes.Buffer
		w := lz4.NewWriter(&buf)
		if err := w.Apply(lz4.LegacyOption(true)); err != nil {
			t.Fatal(err)
		}
		w.Write(b)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}},
}

func codecNamed(t testing.TB, name string) codec {
	for _, c := range codecs {
		if c.name == name {
			return c
		}
	}
	t.Fatalf("no codec %s", name)
	return codec{}
}

// debianCodecs are mkinitramfs's own compressor commands (COMPRESS=…).
var debianCodecs = []struct {
	name, pkg string
	want      initrd.Compression
	argv      []string
}{
	{"gzip -n", "gzip", initrd.Gzip, []string{"gzip", "-n"}},
	{"zstd -q -9 -T0", "zstd", initrd.Zstd, []string{"zstd", "-q", "-9", "-T0"}},
	{"xz --check=crc32", "xz-utils", initrd.Xz, []string{"xz", "--check=crc32", "--threads=0"}},
	{"lz4 -9 -l", "lz4", initrd.Lz4, []string{"lz4", "-9", "-l"}},
}

func runFilter(t testing.TB, argv []string, in []byte) []byte {
	t.Helper()
	r := testkit.Cmd{Argv: argv, Stdin: string(in)}.Run(t)
	if r.Code != 0 {
		t.Fatalf("%s: exit %d: %s", strings.Join(argv, " "), r.Code, r.Stderr)
	}
	return []byte(r.Stdout)
}

// part is one segment of a fixture image.
type part struct {
	recs []cpio.Record
	// raw, when set, is the segment's cpio data (several archives, say)
	// instead of recs as one archive.
	raw   []byte
	codec codec
	// padTo pads the image with zeros to a multiple of padTo after the
	// segment (GNU cpio pads the early archive to 512).
	padTo int
}

// wantSeg is what Parse must report for a segment.
type wantSeg struct {
	offset, length int
	compression    initrd.Compression
	early          bool
	names          []string
}

// assemble concatenates the parts into an image and returns what Parse
// must find in it.
func assemble(t testing.TB, parts ...part) ([]byte, []wantSeg) {
	t.Helper()
	var data []byte
	var want []wantSeg
	early := true
	for _, p := range parts {
		arch := p.raw
		if arch == nil {
			arch = newcArchive(t, p.recs)
		}
		packed := p.codec.pack(t, arch)
		if p.codec.want == initrd.None {
			for len(data)%4 != 0 {
				data = append(data, 0)
			}
		} else {
			early = false
		}
		names := namesOfArchives(t, arch)
		want = append(want, wantSeg{offset: len(data), length: len(packed), compression: p.codec.want, early: early && p.codec.want == initrd.None, names: names})
		data = append(data, packed...)
		if p.padTo > 0 {
			for len(data)%p.padTo != 0 {
				data = append(data, 0)
			}
		}
	}
	return data, want
}

// namesOfArchives lists the record names of several newc archives in a
// row, with zero padding between them, walking the headers itself.
func namesOfArchives(t testing.TB, data []byte) []string {
	t.Helper()
	var names []string
	pos := 0
	for pos < len(data) {
		if data[pos] == 0 {
			pos++
			continue
		}
		h := string(data[pos : pos+110])
		size, err1 := strconv.ParseUint(h[54:62], 16, 32)
		nameSize, err2 := strconv.ParseUint(h[94:102], 16, 32)
		if !strings.HasPrefix(h, "07070") || err1 != nil || err2 != nil {
			t.Fatalf("fixture archive: bad header at %d: %q", pos, h)
		}
		name := string(data[pos+110 : pos+110+int(nameSize)-1])
		pos = (pos + 110 + int(nameSize) + 3) &^ 3
		pos = (pos + int(size) + 3) &^ 3
		if name != cpio.Trailer {
			names = append(names, cpio.Normalize(name))
		}
	}
	return names
}

// lastWins is the view the kernel leaves after unpacking the segments in
// order: each name's last record.
func lastWins(segs []initrd.Segment) map[string]cpio.Record {
	view := map[string]cpio.Record{}
	for _, s := range segs {
		for _, r := range s.Records {
			view[r.Name] = r
		}
	}
	return view
}

func content(t testing.TB, r cpio.Record) []byte {
	t.Helper()
	if r.ReaderAt == nil || r.FileSize == 0 {
		return nil
	}
	buf := make([]byte, r.FileSize)
	if _, err := r.ReadAt(buf, 0); err != nil {
		t.Fatalf("read %s: %v", r.Name, err)
	}
	return buf
}

// checkSegments compares Parse's segments with the fixture's.
func checkSegments(t *testing.T, img *initrd.Image, want []wantSeg) {
	t.Helper()
	if len(img.Segments) != len(want) {
		t.Fatalf("Parse found %d segments, want %d: %s", len(img.Segments), len(want), describe(img))
	}
	for i, w := range want {
		s := img.Segments[i]
		got := wantSeg{offset: s.Offset, length: s.Length, compression: s.Compression, early: s.Early}
		for _, r := range s.Records {
			got.names = append(got.names, r.Name)
		}
		lenOK := got.length == w.length
		if w.compression == initrd.Lz4 {
			// A legacy lz4 stream has no end mark: the zero padding the
			// kernel needs after it may count as its end.
			lenOK = got.length >= w.length && got.length <= w.length+4
		}
		if got.offset != w.offset || !lenOK || got.compression != w.compression || got.early != w.early {
			t.Errorf("segment %d: offset %d length %d %s early=%v, want offset %d length %d %s early=%v",
				i, got.offset, got.length, got.compression, got.early, w.offset, w.length, w.compression, w.early)
		}
		if !slices.Equal(got.names, w.names) {
			t.Errorf("segment %d records:\n got %q\nwant %q", i, got.names, w.names)
		}
	}
}

func describe(img *initrd.Image) string {
	var parts []string
	for _, s := range img.Segments {
		parts = append(parts, fmt.Sprintf("[@%d+%d %s early=%v %d records]", s.Offset, s.Length, s.Compression, s.Early, len(s.Records)))
	}
	return strings.Join(parts, " ")
}

// TestParse reads images made of a microcode segment and a main archive in
// each format, and checks the segments, the main compression, the
// last-wins view and the resolution of lib/modules/<k> through lib ->
// usr/lib.
func TestParse(t *testing.T) {
	spec := mainSpec{modules: fakeModules(), indexes: fakeIndexes(), initramfsTools: true}
	for _, c := range codecs {
		for _, early := range []bool{true, false} {
			name := c.name
			if early {
				name = "microcode+" + name
			}
			t.Run(name, func(t *testing.T) {
				var parts []part
				if early {
					parts = append(parts, part{recs: microcodeRecords(), codec: codecNamed(t, "none"), padTo: 512})
				}
				parts = append(parts, part{recs: mainRecords(spec), codec: c})
				data, want := assemble(t, parts...)
				if c.want == initrd.None {
					// An uncompressed main archive (dracut --no-compress,
					// mkinitcpio COMPRESSION=cat) is not early, alone or
					// after microcode: only an archive holding nothing but
					// kernel/… (microcode, ACPI tables) is.
					want[len(want)-1].early = false
				}
				img, err := initrd.Parse(data)
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				checkSegments(t, img, want)
				if img.Main != c.want {
					t.Errorf("Main = %s, want %s", img.Main, c.want)
				}
				checkView(t, img)
				checkFixtureView(t, img, spec)
			})
		}
	}
}

// checkView checks Lookup against the last-wins view of the segments.
func checkView(t *testing.T, img *initrd.Image) {
	t.Helper()
	for name, want := range lastWins(img.Segments) {
		got, ok := img.Lookup(name)
		if !ok {
			t.Errorf("Lookup(%q): missing", name)
			continue
		}
		if got.Info != want.Info || !bytes.Equal(content(t, got), content(t, want)) {
			t.Errorf("Lookup(%q) = %v, want the last record %v", name, got.Info, want.Info)
		}
	}
}

// checkFixtureView checks what the fixture put in the main archive.
func checkFixtureView(t *testing.T, img *initrd.Image, s mainSpec) {
	t.Helper()
	for _, q := range []struct{ in, want string }{
		{"lib/modules/" + testKernel, testModDir},
		{"/lib/modules/" + testKernel + "/", testModDir},
		{"./lib/modules/" + testKernel + "/kernel/lib/crc7.ko", testModDir + "/kernel/lib/crc7.ko"},
		{"sbin/modprobe", "usr/bin/kmod"},
		{"usr/lib/modules", "usr/lib/modules"},
	} {
		got, err := img.Resolve(q.in)
		if err != nil || got != q.want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", q.in, got, err, q.want)
		}
	}
	if !img.IsDir(testModDir) {
		t.Errorf("IsDir(%q) = false", testModDir)
	}
	if img.IsDir("lib") {
		t.Errorf("IsDir(lib) = true: lib is a symlink")
	}
	for rel, want := range s.modules {
		got, err := img.Content(path.Join(testModDir, rel))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("Content(%s) = %q, %v; want %q", rel, got, err, want)
		}
	}
	if got, err := img.Content("usr/bin/kmod"); err != nil || string(got) != "\x7fELF kmod" {
		t.Errorf("Content(usr/bin/kmod) = %q, %v", got, err)
	}
	if _, err := img.Content("no/such/file"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Content(no/such/file): %v, want ErrNotExist", err)
	}
	var wantNames []string
	for rel := range s.modules {
		wantNames = append(wantNames, path.Join(testModDir, rel))
		for d := path.Dir(rel); d != "."; d = path.Dir(d) {
			wantNames = append(wantNames, path.Join(testModDir, d))
		}
	}
	for rel := range s.indexes {
		wantNames = append(wantNames, path.Join(testModDir, rel))
	}
	sort.Strings(wantNames)
	wantNames = slices.Compact(wantNames)
	if got := img.Names(testModDir); !slices.Equal(got, wantNames) {
		t.Errorf("Names(%s):\n got %q\nwant %q", testModDir, got, wantNames)
	}
	if r, ok := img.Lookup("dev/console"); !ok || r.Mode != cpio.S_IFCHR|0o600 || r.Rmajor != 5 || r.Rminor != 1 {
		t.Errorf("dev/console = %+v, %v; want a char device 5:1", r.Info, ok)
	}
}

// TestParseDebianCompressors reads main archives compressed by the
// commands mkinitramfs runs for each COMPRESS setting, behind a microcode
// segment padded to 512 bytes as GNU cpio pads it.
func TestParseDebianCompressors(t *testing.T) {
	spec := mainSpec{modules: fakeModules(), indexes: fakeIndexes(), initramfsTools: true}
	for _, dc := range debianCodecs {
		t.Run(dc.name, func(t *testing.T) {
			testkit.RequireTool(t, dc.argv[0], dc.pkg)
			c := codec{name: dc.name, want: dc.want, pack: func(t testing.TB, b []byte) []byte { return runFilter(t, dc.argv, b) }}
			data, want := assemble(t, part{recs: microcodeRecords(), codec: codecNamed(t, "none"), padTo: 512}, part{recs: mainRecords(spec), codec: c})
			img, err := initrd.Parse(data)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			checkSegments(t, img, want)
			checkFixtureView(t, img, spec)
		})
	}
}

// TestParseLastWins reads images whose later segments override earlier
// records, as Debian's tail segment (catenate_cpiogz) and dkmsd's own
// appended segments do, and a compressed segment holding two archives
// with zero padding between them.
func TestParseLastWins(t *testing.T) {
	spec := mainSpec{modules: fakeModules(), indexes: fakeIndexes(), initramfsTools: true}
	newConf := fileRec("conf/initramfs.conf", 0o600, []byte("MODULES=dep\n"))
	newConf.MTime = testMTime + 99
	// lib becomes a directory, then a symlink again: types change too.
	tail := []cpio.Record{newConf, dirRec("lib"), fileRec("etc/extra", 0o644, []byte("tail\n"))}
	tail2 := []cpio.Record{linkRec("lib", "usr/lib"), fileRec(testModDir+"/kernel/lib/crc7.ko", 0o644, []byte("crc7 v2"))}
	two := append(newcArchive(t, tail), make([]byte, 512)...)
	two = append(two, newcArchive(t, tail2)...)
	for _, c := range []string{"gzip", "zstd", "xz", "none"} {
		t.Run(c, func(t *testing.T) {
			parts := []part{
				{recs: microcodeRecords(), codec: codecNamed(t, "none"), padTo: 512},
				{recs: mainRecords(spec), codec: codecNamed(t, "zstd")},
				{raw: two, codec: codecNamed(t, c)},
			}
			if c == "none" {
				// Uncompressed, the two archives are two segments.
				parts[2] = part{recs: tail, codec: codecNamed(t, c), padTo: 512}
				parts = append(parts, part{recs: tail2, codec: codecNamed(t, c)})
			}
			data, want := assemble(t, parts...)
			img, err := initrd.Parse(data)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			checkSegments(t, img, want)
			checkView(t, img)
			if got, _ := img.Content("conf/initramfs.conf"); string(got) != "MODULES=dep\n" {
				t.Errorf("conf/initramfs.conf = %q, want the tail's", got)
			}
			if r, _ := img.Lookup("conf/initramfs.conf"); r.Mode != cpio.S_IFREG|0o600 || r.MTime != testMTime+99 {
				t.Errorf("conf/initramfs.conf info = %+v, want the tail's", r.Info)
			}
			if got, _ := img.Content(testModDir + "/kernel/lib/crc7.ko"); string(got) != "crc7 v2" {
				t.Errorf("crc7.ko = %q, want the tail's", got)
			}
			if got, err := img.Resolve("lib/modules/" + testKernel); err != nil || got != testModDir {
				t.Errorf("Resolve after lib dir then symlink = %q, %v", got, err)
			}
			if img.Main != initrd.Zstd {
				t.Errorf("Main = %s, want zstd (the first non-early segment)", img.Main)
			}
		})
	}
}

// TestResolve follows relative, absolute and chained symlinks and refuses
// loops.
func TestResolve(t *testing.T) {
	data := newcArchive(t, []cpio.Record{
		dirRec("."), dirRec("usr"), dirRec("usr/lib"), dirRec("usr/lib/modules"),
		linkRec("lib", "usr/lib"),
		linkRec("abs", "/usr/lib/modules"),
		linkRec("chain", "lib"),
		dirRec("usr/share"), linkRec("usr/share/up", "../lib"),
		linkRec("loop1", "loop2"), linkRec("loop2", "loop1"),
	})
	img, err := initrd.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []struct{ in, want string }{
		{"lib/modules/k", "usr/lib/modules/k"},
		{"abs/k", "usr/lib/modules/k"},
		{"chain/modules", "usr/lib/modules"},
		{"usr/share/up/modules", "usr/lib/modules"},
		{"usr/lib/modules", "usr/lib/modules"},
		{"nothing/here", "nothing/here"},
	} {
		got, err := img.Resolve(q.in)
		if err != nil || got != q.want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", q.in, got, err, q.want)
		}
	}
	if got, err := img.Resolve("loop1/x"); err == nil {
		t.Errorf("Resolve(loop1/x) = %q, want a symlink loop error", got)
	}
}

// TestParseBadInput checks that broken images fail with an error that
// names the format and the offset of the segment at fault.
func TestParseBadInput(t *testing.T) {
	spec := mainSpec{modules: fakeModules(), indexes: fakeIndexes(), initramfsTools: true}
	early, _ := assemble(t, part{recs: microcodeRecords(), codec: codecNamed(t, "none"), padTo: 512})
	image := func(c string) []byte {
		data, _ := assemble(t, part{recs: microcodeRecords(), codec: codecNamed(t, "none"), padTo: 512}, part{recs: mainRecords(spec), codec: codecNamed(t, c)})
		return data
	}
	off := strconv.Itoa(len(early))
	flip := func(data []byte, at int) []byte {
		out := slices.Clone(data)
		for i := at; i < at+16 && i < len(out); i++ {
			out[i] ^= 0x5a
		}
		return out
	}
	type tc struct {
		name string
		data []byte
		want []string // substrings of the error
	}
	var cases []tc
	for _, c := range []string{"gzip", "zstd", "xz", "lz4", "none"} {
		full := image(c)
		for _, cut := range []int{1, 4, 8, 64, (len(full) - len(early)) / 2} {
			want := []string{"offset " + off}
			if c != "none" && c != "lz4" {
				want = append(want, c)
			}
			cases = append(cases, tc{fmt.Sprintf("%s cut %d", c, cut), full[:len(full)-cut], want})
		}
	}
	zs, gz := image("zstd"), image("gzip")
	cases = append(cases,
		tc{"zstd corrupt", flip(zs, len(early)+(len(zs)-len(early))/2), []string{"zstd", "offset " + off}},
		tc{"zstd corrupt frame header", flip(zs, len(early)+4), []string{"zstd", "offset " + off}},
		tc{"gzip corrupt", flip(gz, len(early)+(len(gz)-len(early))/2), []string{"gzip", "offset " + off}},
		tc{"gzip corrupt crc", flip(gz, len(gz)-8), []string{"gzip", "offset " + off}},
		tc{"unknown magic", []byte("PK\x03\x04 not an initrd at all"), []string{"unknown", "offset 0", "50 4b 03 04"}},
		tc{"unknown magic after early", append(slices.Clone(early), []byte("\x89PNG\r\n\x1a\n")...), []string{"unknown", "offset " + off}},
		tc{"trailing junk", append(image("zstd"), "junk"...), []string{"unknown", "offset " + strconv.Itoa(len(zs))}},
		tc{"odc cpio", append([]byte("070707"), make([]byte, 200)...), []string{"offset 0"}},
		tc{"empty", nil, []string{"empty"}},
		tc{"only zeros", make([]byte, 4096), []string{"empty"}},
		tc{"header only", []byte("070701"), []string{"offset 0", "truncated"}},
		tc{"misaligned uncompressed", append([]byte{0, 0, 0, 0, 0}, newcArchive(t, microcodeRecords())...), []string{"offset 5", "aligned"}},
	)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img, err := initrd.Parse(c.data)
			if err == nil {
				t.Fatalf("Parse succeeded: %s", describe(img))
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestParseCRCNewc reads an archive in the newc-with-CRC format (magic
// 070702, `cpio -H crc`), which the kernel accepts: Parse must either read
// it or refuse it with an error naming the offset.
func TestParseCRCNewc(t *testing.T) {
	testkit.RequireTool(t, "cpio", "cpio")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := testkit.Cmd{Argv: []string{"cpio", "-o", "-H", "crc", "--quiet"}, Dir: dir, Stdin: "hello\n"}.Run(t)
	if r.Code != 0 {
		t.Fatalf("cpio -H crc: exit %d: %s", r.Code, r.Stderr)
	}
	data := []byte(r.Stdout)
	if !bytes.HasPrefix(data, []byte("070702")) {
		t.Fatalf("cpio -H crc wrote magic %q", data[:6])
	}
	img, err := initrd.Parse(data)
	if err != nil {
		if !strings.Contains(err.Error(), "offset 0") {
			t.Errorf("Parse(070702 archive): %v; the error does not name the offset", err)
		}
		t.Logf("Parse refuses 070702 archives, which the kernel accepts: %v", err)
		return
	}
	if got, err := img.Content("hello"); err != nil || string(got) != "hello\n" {
		t.Errorf("hello = %q, %v", got, err)
	}
}

// TestRead reads a fixture from a file and names the file in errors.
func TestRead(t *testing.T) {
	spec := mainSpec{modules: fakeModules(), indexes: fakeIndexes()}
	data, want := assemble(t, part{recs: microcodeRecords(), codec: codecNamed(t, "none"), padTo: 512}, part{recs: mainRecords(spec), codec: codecNamed(t, "gzip")})
	p := filepath.Join(t.TempDir(), "initrd.img-"+testKernel)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := initrd.Read(p)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	checkSegments(t, img, want)
	if !bytes.Equal(img.Data, data) {
		t.Errorf("Data is not the file's bytes")
	}
	if err := os.WriteFile(p, data[:len(data)-3], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := initrd.Read(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("Read(truncated) = %v, want an error naming %s", err, p)
	}
	if _, err := initrd.Read(p + ".missing"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Read(missing) = %v, want ErrNotExist", err)
	}
}

// fuzzSeeds are small valid images: each format with and without a
// microcode segment, and one with a tail segment.
func fuzzSeeds(t testing.TB) map[string][]byte {
	small := mainSpec{modules: map[string][]byte{"kernel/a.ko": []byte("a")}, indexes: map[string][]byte{"modules.dep": []byte("kernel/a.ko:\n")}, initramfsTools: true}
	seeds := map[string][]byte{}
	for _, c := range codecs {
		data, _ := assemble(t, part{recs: mainRecords(small), codec: c})
		seeds[c.name] = data
		data, _ = assemble(t, part{recs: microcodeRecords()[:3], codec: codecNamed(t, "none")}, part{recs: mainRecords(small), codec: c})
		seeds["early-"+c.name] = data
	}
	// lz4 needs zero bytes after it before the next segment.
	lz, _ := assemble(t, part{recs: mainRecords(small), codec: codecNamed(t, "lz4")})
	tail, _ := assemble(t, part{recs: []cpio.Record{fileRec("conf/modules", 0o644, []byte("a\n"))}, codec: codecNamed(t, "gzip")})
	seeds["lz4-gzip-tail"] = append(append(lz, 0, 0, 0, 0), tail...)
	data, _ := assemble(t, part{recs: mainRecords(small), codec: codecNamed(t, "zstd")}, part{recs: []cpio.Record{fileRec("conf/modules", 0o644, []byte("a\n"))}, codec: codecNamed(t, "gzip")})
	seeds["zstd-gzip-tail"] = data
	return seeds
}

var updateFuzzCorpus = flag.Bool("update-fuzz-corpus", false, "rewrite testdata/fuzz/FuzzParse from fuzzSeeds")

// TestFuzzParseCorpus keeps the checked-in seed corpus valid: every seed
// parses. With -update-fuzz-corpus it writes the corpus.
func TestFuzzParseCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzParse")
	if *updateFuzzCorpus {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, data := range fuzzSeeds(t) {
			text := "go test fuzz v1\n[]byte(" + strconv.Quote(string(data)) + ")\n"
			if err := os.WriteFile(filepath.Join(dir, "seed-"+name), []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	files, _ := filepath.Glob(filepath.Join(dir, "seed-*"))
	if len(files) < 8 {
		t.Fatalf("%s holds %d seeds; run go test -run TestFuzzParseCorpus -update-fuzz-corpus ./initrd", dir, len(files))
	}
	for _, f := range files {
		text, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.SplitN(string(text), "\n", 3)
		if len(lines) < 2 || lines[0] != "go test fuzz v1" || !strings.HasPrefix(lines[1], "[]byte(") {
			t.Fatalf("%s: not a go fuzz corpus file", f)
		}
		data, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if _, err := initrd.Parse([]byte(data)); err != nil {
			t.Errorf("%s: Parse: %v", f, err)
		}
	}
}

// FuzzParse checks that Parse never panics, and that what it accepts is
// consistent: segments in order, inside the data, not overlapping; Lookup
// agrees with the last record of each name; Resolve terminates.
func FuzzParse(f *testing.F) {
	for _, data := range fuzzSeeds(f) {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := initrd.Parse(data)
		if err != nil {
			if img != nil {
				t.Fatalf("Parse returned an image and an error: %v", err)
			}
			return
		}
		end := 0
		for i, s := range img.Segments {
			if s.Offset < end || s.Length <= 0 || s.Offset+s.Length > len(data) {
				t.Fatalf("segment %d at %d+%d: overlaps the previous one (ending %d) or leaves the data (%d bytes)", i, s.Offset, s.Length, end, len(data))
			}
			end = s.Offset + s.Length
		}
		for name, want := range lastWins(img.Segments) {
			got, ok := img.Lookup(name)
			if !ok || got.Info != want.Info {
				t.Fatalf("Lookup(%q) = %v, %v; want %v", name, got.Info, ok, want.Info)
			}
			img.Resolve(name)
			img.Content(name)
		}
		img.Resolve("lib/modules/" + testKernel)
	})
}

// TestParseLz4Incompressible reads a legacy lz4 main archive holding 9 MB
// that do not compress (firmware that is compressed already): its first
// 8 MiB block compresses to more than 8 MiB, up to LZ4_compressBound(8 MiB)
// = 8,421,520 bytes, which the kernel's unlz4 accepts.
func TestParseLz4Incompressible(t *testing.T) {
	noise := make([]byte, 9_000_000)
	rand.NewChaCha8([32]byte{'d', 'k', 'm', 's', 'd'}).Read(noise)
	recs := append(mainRecords(mainSpec{modules: fakeModules(), indexes: fakeIndexes()}), fileRec("usr/lib/firmware.bin", 0o644, noise))
	cs := []codec{codecNamed(t, "lz4")}
	if _, err := exec.LookPath("lz4"); err == nil {
		cs = append(cs, codec{name: "lz4 -9 -l", want: initrd.Lz4, pack: func(t testing.TB, b []byte) []byte { return runFilter(t, []string{"lz4", "-9", "-l"}, b) }})
	}
	for _, c := range cs {
		t.Run(c.name, func(t *testing.T) {
			data, want := assemble(t, part{recs: microcodeRecords(), codec: codecNamed(t, "none"), padTo: 512}, part{recs: recs, codec: c})
			img, err := initrd.Parse(data)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			checkSegments(t, img, want)
			if got, _ := img.Content("usr/lib/firmware.bin"); !bytes.Equal(got, noise) {
				t.Errorf("firmware.bin: %d bytes, want the %d written", len(got), len(noise))
			}
		})
	}
}
