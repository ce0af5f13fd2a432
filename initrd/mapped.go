package initrd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"syscall"
)

// Mapped is an image file mapped read-only: its bytes are read from the
// page cache only where they are looked at. The append path never looks
// at the base's bytes when the image is one dkmsd recorded (State.Known):
// WriteFrom copies them file to file in the kernel. On this class of VM,
// reading and rewriting a 17 MB image from user space cost 130–250 ms
// where copy_file_range and fsync cost 25–40 ms.
type Mapped struct {
	Data []byte
	Info os.FileInfo
	file *os.File
}

// OpenMapped maps the file at path. Close unmaps it.
func OpenMapped(path string) (*Mapped, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	m := &Mapped{Info: fi, file: f}
	if fi.Size() > 0 {
		if fi.Size() != int64(int(fi.Size())) {
			f.Close()
			return nil, fmt.Errorf("%s: %d bytes is too large to map", path, fi.Size())
		}
		m.Data, err = syscall.Mmap(int(f.Fd()), 0, int(fi.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("map %s: %w", path, err)
		}
	}
	return m, nil
}

// Close unmaps the image and closes its file.
func (m *Mapped) Close() error {
	if m.Data != nil {
		syscall.Munmap(m.Data)
		m.Data = nil
	}
	return m.file.Close()
}

// ErrChangedUnderfoot is what Guard returns when the mapped file was cut
// short by another program while it was being read.
var ErrChangedUnderfoot = errors.New("the image was truncated by another program while dkmsd read it")

// Guard runs fn, turning the fault a read of a mapping past a file
// truncated meanwhile raises (SIGBUS) into ErrChangedUnderfoot instead of
// a crash. Tools that regenerate initrds write a new file and rename it;
// this is for the one that would not.
func Guard(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if re, ok := r.(interface{ Addr() uintptr }); ok && re != nil {
				err = ErrChangedUnderfoot
				return
			}
			panic(r)
		}
	}()
	return fn()
}

// holds says whether p is the start of the mapping (the same memory).
func (m *Mapped) holds(p []byte) bool {
	return m != nil && len(p) > 0 && len(m.Data) >= len(p) && &p[0] == &m.Data[0]
}

// copyPrefix writes the first n bytes of the mapped file to w, file to
// file (copy_file_range) when w is a file.
func (m *Mapped) copyPrefix(w io.Writer, n int) error {
	if _, err := m.file.Seek(0, io.SeekStart); err != nil {
		return err
	}
	got, err := io.Copy(w, &io.LimitedReader{R: m.file, N: int64(n)})
	if err == nil && got != int64(n) {
		err = fmt.Errorf("the image is %d bytes now, %d were expected: %w", got, n, ErrChangedUnderfoot)
	}
	return err
}
