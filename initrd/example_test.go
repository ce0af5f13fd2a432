package initrd_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/dkmsd/dkmsd/initrd"
)

// newc writes records as one newc cpio archive, as initrd generators do.
func newc(recs ...cpio.Record) []byte {
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	for _, r := range recs {
		if err := w.WriteRecord(r); err != nil {
			panic(err)
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

func gz(data []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(data)
	w.Close()
	return buf.Bytes()
}

func file(name, content string) cpio.Record {
	return cpio.StaticRecord([]byte(content), cpio.Info{Name: name, Mode: cpio.S_IFREG | 0o644, NLink: 1})
}

// An initrd as Debian's initramfs-tools makes it: an uncompressed early
// segment with CPU microcode, then the compressed main archive. Parse reads
// it the way the kernel unpacks it, and a later segment overrides an
// earlier one, which is how an appended segment adds or replaces files.
func ExampleParse() {
	early := newc(
		cpio.Directory("kernel", 0o755),
		file("kernel/x86/microcode/GenuineIntel.bin", "microcode"),
	)
	main := gz(newc(
		cpio.Directory("usr", 0o755),
		cpio.Directory("usr/lib", 0o755),
		cpio.Symlink("lib", "usr/lib"),
		file("usr/lib/modules/6.1.0-56-amd64/kernel/foo.ko", "old foo"),
	))
	appended := gz(newc(
		file("usr/lib/modules/6.1.0-56-amd64/kernel/foo.ko", "new foo"),
	))
	data := append(append(early, main...), appended...)

	img, err := initrd.Parse(data)
	if err != nil {
		panic(err)
	}
	for _, s := range img.Segments {
		fmt.Printf("%s, early %v, %d records\n", s.Compression, s.Early, len(s.Records))
	}
	name, err := img.Resolve("lib/modules/6.1.0-56-amd64/kernel/foo.ko")
	if err != nil {
		panic(err)
	}
	content, err := img.Content(name)
	if err != nil {
		panic(err)
	}
	fmt.Println(name)
	fmt.Println(string(content))
	// Output:
	// none, early true, 2 records
	// gzip, early false, 4 records
	// gzip, early false, 1 records
	// usr/lib/modules/6.1.0-56-amd64/kernel/foo.ko
	// new foo
}

// Build adds modules to an image. It runs the real depmod (kmod) on a
// staging copy of the image's module tree, so this example is compiled
// but not run.
func ExampleBuild() {
	const k = "6.1.0-56-amd64" // illustrative: any kernel with an initrd
	path := "/boot/initrd.img-" + k
	img, err := initrd.Read(path)
	if err != nil {
		fmt.Println(err)
		return
	}
	plan := initrd.Plan{
		Kernel: k,
		Add:    []initrd.File{{Src: "/var/lib/dkms/foo/1.0/" + k + "/x86_64/module/foo.ko", Rel: "updates/dkms/foo.ko"}},
		Load:   []string{"foo"}, // also load it early
	}
	out, report, err := initrd.Build(context.Background(), img, plan, initrd.Append)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(report.Strategy, strings.Join(report.Added, " "))
	if err := initrd.WriteAtomic(path, out); err != nil {
		fmt.Println(err)
	}
}
