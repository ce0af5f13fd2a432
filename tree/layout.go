package tree

import (
	"os"
	"path/filepath"
	"strings"
)

// Layout is where the trees are: the dkms tree (/var/lib/dkms), the module
// sources (/usr/src), the kernels' module dirs (/lib/modules), /boot and the
// configuration dir (/etc/dkms). Root relocates all of them for tests and
// the demo; dkms's --dkmstree, --sourcetree and --installtree move one each.
type Layout struct {
	Root        string
	DKMSTree    string
	SourceTree  string
	InstallTree string
	BootDir     string
	ConfDir     string
	TmpDir      string
	// KernelSourceDir, when set (--kernelsourcedir), is the kernel build
	// dir for every kernel instead of <InstallTree>/<kernel>/build.
	KernelSourceDir string
	// MOKKey and MOKCert are the default signing key and certificate
	// (dkms keeps them in /var/lib/dkms whatever --dkmstree says).
	MOKKey, MOKCert string
}

// NewLayout returns the default layout under root ("" or "/" for the
// machine's own).
func NewLayout(root string) Layout {
	if root == "/" {
		root = ""
	}
	tmp := os.Getenv("TMPDIR")
	if tmp == "" {
		tmp = "/tmp"
	}
	return Layout{
		Root:        root,
		DKMSTree:    root + "/var/lib/dkms",
		SourceTree:  root + "/usr/src",
		InstallTree: root + "/lib/modules",
		BootDir:     root + "/boot",
		ConfDir:     root + "/etc/dkms",
		TmpDir:      tmp,
		MOKKey:      root + "/var/lib/dkms/mok.key",
		MOKCert:     root + "/var/lib/dkms/mok.pub",
	}
}

// ModuleDir is <dkms_tree>/<module>.
func (l Layout) ModuleDir(module string) string { return filepath.Join(l.DKMSTree, module) }

// VersionDir is <dkms_tree>/<module>/<version>.
func (l Layout) VersionDir(module, version string) string {
	return filepath.Join(l.DKMSTree, module, version)
}

// BuiltDir is <dkms_tree>/<module>/<version>/<kernel>/<arch>, which holds
// module/ and log/ once built.
func (l Layout) BuiltDir(module, version, kernel, arch string) string {
	return filepath.Join(l.DKMSTree, module, version, kernel, arch)
}

// KernelLink is the symlink <dkms_tree>/<module>/kernel-<kernel>-<arch>
// that marks the installed version.
func (l Layout) KernelLink(module, kernel, arch string) string {
	return filepath.Join(l.DKMSTree, module, "kernel-"+kernel+"-"+arch)
}

// OriginalDir holds the modules an install displaced, to restore them.
func (l Layout) OriginalDir(module, kernel, arch string) string {
	return filepath.Join(l.DKMSTree, module, "original_module", kernel, arch)
}

// ConfFile is the tree's copy of a module version's dkms.conf:
// <dkms_tree>/<module>/<version>/source/dkms.conf.
func (l Layout) ConfFile(module, version string) string {
	return filepath.Join(l.VersionDir(module, version), "source", "dkms.conf")
}

// SourceDir is <source_tree>/<module>-<version>.
func (l Layout) SourceDir(module, version string) string {
	return filepath.Join(l.SourceTree, module+"-"+version)
}

// KernelDir is <install_tree>/<kernel>.
func (l Layout) KernelDir(kernel string) string { return filepath.Join(l.InstallTree, kernel) }

// KernelBuildDir is the kernel's headers (kbuild) dir.
func (l Layout) KernelBuildDir(kernel string) string {
	if l.KernelSourceDir != "" {
		return l.KernelSourceDir
	}
	return filepath.Join(l.InstallTree, kernel, "build")
}

// StateDir is <dkms_tree>/.dkmsd, where dkmsd keeps its own records
// beside dkms's tree: a dot dir, out of dkms's module globs. Every path in
// it comes from the methods below.
func (l Layout) StateDir() string { return filepath.Join(l.DKMSTree, ".dkmsd") }

// HookStateDir is what the hooks remember between runs.
func (l Layout) HookStateDir() string { return filepath.Join(l.StateDir(), "hooks") }

// TransactionFile keeps the last transaction, for D-Bus's
// GetLastTransaction.
func (l Layout) TransactionFile() string { return filepath.Join(l.StateDir(), "last-transaction.json") }

// InitrdStateFile records where a kernel's initrd ends when dkmsd appended
// a segment to it.
func (l Layout) InitrdStateFile(kernel string) string {
	return filepath.Join(l.StateDir(), "initrd", kernel+".json")
}

// InitrdCacheDir keeps what dkmsd read from a kernel's initrd (the
// module paths it holds, their depmod stubs), keyed by the image's
// digest, so the next append does not decompress it again.
func (l Layout) InitrdCacheDir(kernel string) string {
	return filepath.Join(l.StateDir(), "initrd", kernel+".cache")
}

// InitrdPendingFile marks a kernel whose initrd is not up to date yet;
// InitrdPendingFile("*") is the glob of them all.
func (l Layout) InitrdPendingFile(kernel string) string {
	return filepath.Join(l.StateDir(), "initrd", kernel+".pending")
}

// IntentDir holds the intents of installs and uninstalls under way.
func (l Layout) IntentDir() string { return filepath.Join(l.StateDir(), "intent") }

// MemoryFile records how much memory one job of a module's build took
// (see lifecycle's job budget).
func (l Layout) MemoryFile(module string) string {
	return filepath.Join(l.StateDir(), "memory", module)
}

// FailedLog keeps the log of a failed build until a later build or remove.
func (l Layout) FailedLog(module, version, kernel, arch string) string {
	return filepath.Join(l.StateDir(), "failed", module+"-"+version+"-"+kernel+"-"+arch+".log")
}

func hasAnyPrefix(s string, prefixes ...string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
