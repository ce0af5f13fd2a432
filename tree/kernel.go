package tree

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Kernel is one kernel known to the install tree.
type Kernel struct {
	Version string
	// Dir is <install_tree>/<version>; BuildDir the kbuild headers.
	Dir, BuildDir string
}

// Kernel describes the kernel version under this layout.
func (l Layout) Kernel(version string) Kernel {
	return Kernel{Version: version, Dir: l.KernelDir(version), BuildDir: l.KernelBuildDir(version)}
}

// Kernels lists the kernels with a directory in the install tree, in
// version order.
func (l Layout) Kernels() ([]Kernel, error) {
	names, err := readDirNames(l.InstallTree)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var out []Kernel
	for _, n := range names {
		if fi, err := os.Stat(filepath.Join(l.InstallTree, n)); err == nil && fi.IsDir() {
			out = append(out, l.Kernel(n))
		}
	}
	sortVersions(out)
	return out, nil
}

func sortVersions(ks []Kernel) {
	for i := 1; i < len(ks); i++ {
		for j := i; j > 0 && CompareVersions(ks[j-1].Version, ks[j].Version) > 0; j-- {
			ks[j-1], ks[j] = ks[j], ks[j-1]
		}
	}
}

// Exists reports whether <install_tree>/<version> exists.
func (k Kernel) Exists() bool {
	_, err := os.Stat(k.Dir)
	return err == nil
}

// HasHeaders reports whether the kernel's build dir has headers
// (<build>/include), the test dkms uses.
func (k Kernel) HasHeaders() bool {
	fi, err := os.Stat(k.HeadersDir())
	return err == nil && fi.IsDir()
}

// HeadersDir is <build>/include, which a headers package brings.
func (k Kernel) HeadersDir() string { return filepath.Join(k.BuildDir, "include") }

// ConfigFile is the kernel configuration in the build dir ("" if none):
// include/config/auto.conf as kbuild wrote it, else .config.
func (k Kernel) ConfigFile() string {
	for _, f := range []string{".config", "include/config/auto.conf"} {
		p := filepath.Join(k.BuildDir, f)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// KernelConfig holds the options of a kernel .config that dkms acts on.
type KernelConfig map[string]string

// ReadKernelConfig parses a kernel .config; a missing file is an empty
// config.
func ReadKernelConfig(file string) KernelConfig {
	cfg := KernelConfig{}
	if file == "" {
		return cfg
	}
	f, err := os.Open(file)
	if err != nil {
		return cfg
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "CONFIG_") {
			continue
		}
		if name, val, ok := strings.Cut(line, "="); ok {
			cfg[name] = strings.Trim(val, `"`)
		}
	}
	return cfg
}

// ModuleSuffix is the file suffix modules get for this kernel: ".ko", or
// ".ko.gz", ".ko.xz", ".ko.zst" when the kernel compresses its modules
// (CONFIG_MODULE_COMPRESS_*).
func (c KernelConfig) ModuleSuffix() string {
	switch {
	case c["CONFIG_MODULE_COMPRESS_ZSTD"] == "y":
		return ".ko.zst"
	case c["CONFIG_MODULE_COMPRESS_XZ"] == "y":
		return ".ko.xz"
	case c["CONFIG_MODULE_COMPRESS_GZIP"] == "y":
		return ".ko.gz"
	}
	return ".ko"
}

// Release is the kernel release the headers build modules for (UTS_RELEASE
// in include/generated/utsrelease.h), which a module's vermagic starts
// with; without headers it is the version the directory is named after.
func (k Kernel) Release() string {
	data, err := os.ReadFile(filepath.Join(k.BuildDir, "include", "generated", "utsrelease.h"))
	if err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "#define UTS_RELEASE "); ok {
				return strings.Trim(strings.TrimSpace(rest), `"`)
			}
		}
	}
	return k.Version
}

// RunningKernel is the release of the kernel this machine runs ("" if
// uname fails): the template a new kernel's modules are matched from, and
// dkms's default -k.
func RunningKernel() string {
	return uname(func(u *unix.Utsname) []byte { return u.Release[:] })
}

// MachineArch is this machine's arch as uname says it (dkms's default -a).
func MachineArch() string {
	return uname(func(u *unix.Utsname) []byte { return u.Machine[:] })
}

func uname(field func(*unix.Utsname) []byte) string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(field(&u))
}
