package initrd_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/initrd"
)

// mappedImage writes data to a file and maps it.
func mappedImage(t *testing.T, data []byte) (string, *initrd.Mapped) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "initrd.img-"+testKernel)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := initrd.OpenMapped(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return p, m
}

// TestWriteImageFromMapping: the base part, the mapping's own memory, is
// copied file to file; the result is the base and the segment, with the
// image's mode kept, and the identity returned is the file now in place.
func TestWriteImageFromMapping(t *testing.T) {
	base := bytes.Repeat([]byte("generator's bytes "), 1<<16)
	p, m := mappedImage(t, base)
	seg := []byte("dkmsd's segment")
	id, err := initrd.WriteImage(p, m, initrd.Output{m.Data, seg})
	if err != nil {
		t.Fatalf("WriteImage: %v", err)
	}
	got, _ := os.ReadFile(p)
	if !bytes.Equal(got, append(bytes.Clone(base), seg...)) {
		t.Fatalf("the image is %d bytes, not the base (%d) and the segment (%d)", len(got), len(base), len(seg))
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want the old image's 0600", fi.Mode().Perm())
	}
	if want := initrd.IDOf(fi); id == nil || *id != *want {
		t.Errorf("WriteImage identity %+v, want the file in place %+v", id, want)
	}
	// A prefix of the mapping shorter than the file (an image cut back to
	// its base) is copied as far as asked.
	m2, err := initrd.OpenMapped(p)
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if _, err := initrd.WriteImage(p, m2, initrd.Output{m2.Data[:len(base)]}); err != nil {
		t.Fatalf("WriteImage of the base alone: %v", err)
	}
	if got, _ := os.ReadFile(p); !bytes.Equal(got, base) {
		t.Errorf("cut back: %d bytes, want the base's %d", len(got), len(base))
	}
}

// TestStateKnownOnlyForTheFileWritten: the recorded base is trusted
// without reading the image only while the image is the very file dkmsd
// wrote; any other program's change, even one that keeps the size and
// sets the modification time back, makes dkmsd read it again.
func TestStateKnownOnlyForTheFileWritten(t *testing.T) {
	base := []byte("the generator's image")
	full := append(bytes.Clone(base), "dkmsd segment"...)
	fresh := func(t *testing.T) (string, *initrd.State) {
		p, m := mappedImage(t, base)
		id, err := initrd.WriteImage(p, m, initrd.Output{m.Data, full[len(base):]})
		if err != nil {
			t.Fatal(err)
		}
		return p, &initrd.State{BaseLen: len(base), BaseSHA256: initrd.Digest(base), Len: len(full), File: id}
	}
	stat := func(t *testing.T, p string) os.FileInfo {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	p, s := fresh(t)
	if n, digest, ok := s.Known(stat(t, p)); !ok || n != len(base) || digest != initrd.Digest(base) {
		t.Fatalf("Known(the file written) = %d, %q, %v; want %d, its digest, true", n, digest, ok, len(base))
	}
	saved := filepath.Join(t.TempDir(), "state.json")
	if err := s.Save(saved); err != nil {
		t.Fatal(err)
	}
	if l := initrd.LoadState(saved); l == nil || l.File == nil || *l.File != *s.File {
		t.Errorf("the identity did not survive Save and LoadState: %+v", l)
	}

	for _, tc := range []struct {
		name   string
		change func(t *testing.T, p string)
	}{
		{"rewritten in place, same size, times set back", func(t *testing.T, p string) {
			fi := stat(t, p)
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt([]byte("THE"), 0)
			f.Close()
			if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
				t.Fatal(err)
			}
		}},
		{"replaced by a new file renamed over it, same size and time", func(t *testing.T, p string) {
			fi := stat(t, p)
			tmp := p + ".new"
			if err := os.WriteFile(tmp, bytes.ToUpper(full), 0o644); err != nil {
				t.Fatal(err)
			}
			os.Chtimes(tmp, fi.ModTime(), fi.ModTime())
			if err := os.Rename(tmp, p); err != nil {
				t.Fatal(err)
			}
		}},
		{"appended to", func(t *testing.T, p string) {
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write([]byte("x"))
			f.Close()
		}},
		{"touched", func(t *testing.T, p string) {
			later := time.Now().Add(time.Hour)
			os.Chtimes(p, later, later)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, s := fresh(t)
			tc.change(t, p)
			if n, _, ok := s.Known(stat(t, p)); ok {
				t.Errorf("Known after the change = %d, true; want the image read again", n)
			}
		})
	}
	legacy := *s
	legacy.File = nil
	if _, _, ok := legacy.Known(stat(t, p)); ok {
		t.Errorf("a state without the file's identity (written by an older dkmsd) is trusted without reading")
	}
}

// TestGuardTruncatedUnderfoot truncates a mapped image, for real, while it
// is mapped: reading past the new end raises SIGBUS, which Guard turns
// into ErrChangedUnderfoot, and copying the base from it fails the write
// and leaves the target as it was.
func TestGuardTruncatedUnderfoot(t *testing.T) {
	data := bytes.Repeat([]byte{0x5a}, 1<<20)
	p, m := mappedImage(t, data)
	if err := os.Truncate(p, 0); err != nil {
		t.Fatal(err)
	}
	var sum int
	err := initrd.Guard(func() error {
		for i := 0; i < len(m.Data); i += 4096 {
			sum += int(m.Data[i])
		}
		return nil
	})
	if !errors.Is(err, initrd.ErrChangedUnderfoot) {
		t.Fatalf("Guard over a read past the truncated end = %v (sum %d), want ErrChangedUnderfoot", err, sum)
	}
	target := filepath.Join(filepath.Dir(p), "target")
	os.WriteFile(target, []byte("old image"), 0o644)
	_, err = initrd.WriteImage(target, m, initrd.Output{m.Data, []byte("segment")})
	if err == nil || !strings.Contains(err.Error(), "truncated by another program") || !strings.Contains(err.Error(), "unchanged") {
		t.Errorf("WriteImage from a truncated mapping = %v, want an error saying so and that the image is unchanged", err)
	}
	if got, _ := os.ReadFile(target); string(got) != "old image" {
		t.Errorf("target = %q after the failed write, want the old image", got)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(p), ".target.dkmsd-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
