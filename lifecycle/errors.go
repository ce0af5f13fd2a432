package lifecycle

import (
	"errors"
	"strings"
)

// Kind classifies a failure; the command maps each kind to dkms's exit
// code in one place.
type Kind int

const (
	KindInternal        Kind = iota // an I/O or system error
	KindUsage                       // bad arguments
	KindNotRoot                     // needs root / write access
	KindMissingArgs                 // module/version not given
	KindAlreadyAdded                // add of a module/version in the tree
	KindNotAdded                    // module/version not in the tree
	KindNoSource                    // <source_tree>/<m>-<v> missing
	KindNoConf                      // dkms.conf missing
	KindBadConf                     // dkms.conf invalid
	KindBroken                      // source link dangling
	KindExcluded                    // BUILD_EXCLUSIVE_* rules the kernel out
	KindNoHeaders                   // kernel headers missing
	KindEmptySource                 // source dir without sources
	KindPatchMissing                // PATCH file not found
	KindPatchFailed                 // patch did not apply
	KindBuildFailed                 // make failed
	KindNoModuleBuilt               // make succeeded, a .ko is missing
	KindBuildTimeout                // the build reached build_timeout and was killed
	KindScriptFailed                // PRE_BUILD/POST_BUILD/POST_ADD failed (exit = script's status)
	KindNoKernelDir                 // install onto a kernel without <install_tree>/<k>
	KindMissingBuilt                // install: a built module file is missing
	KindInstallAborted              // install: no module could be installed
	KindDepmod                      // depmod failed, install rolled back
	KindPreInstall                  // PRE_INSTALL failed
	KindNoDirConf                   // add <dir>: no dkms.conf in it
	KindNotBuilt                    // mktarball etc. on an unbuilt module
	KindNotSupported                // an action dkmsd (or dkms 3.x) does not have
	KindBuildDepends                // BUILD_DEPENDS not installed
	KindOneKernel                   // several kernels where one is required
	KindBadArch                     // arch/kernel list mismatch
	KindDiskFull                    // ENOSPC while writing
	KindMOK                         // signing key could not be generated
	KindSignFailed                  // sign-file refused a module
	KindAutoinstall                 // autoinstall/match: one or more modules failed
	KindPrerm                       // kernel_prerm: one or more modules failed
	KindNoInitrd                    // dkms initrd: the kernel has no initrd
	KindInitrd                      // the initrd could not be read or written
	KindTarballDest                 // mktarball: destination not writable
	KindTarball                     // mktarball: the tarball could not be made
	KindNoArchive                   // ldtarball: the archive does not exist
	KindBadTarball                  // ldtarball: a hostile or broken archive
	KindNoConfInTarball             // ldtarball: no dkms.conf in it
	KindTarballAdded                // ldtarball: module already added
	KindVermagic                    // install: a module built for another kernel
	KindStillFailing                // a hook's build that failed before, inputs unchanged (exit = the recorded status)
	KindOOMKilled                   // make failed: the out-of-memory killer killed part of it
	KindInitrdMissing               // dkms verify: a module of the initrd did not load
	KindCannotVerify                // dkms verify: no qemu, no kernel image, or the boot did not get far enough

	// The command line's own mistakes, each with dkms's exit code.
	KindUnknownOption     // an option dkms does not have (the usage follows)
	KindTwoActions        // more than one action
	KindBinariesAndSource // --binaries-only with --source-only
	KindArchAndAll        // -a with --all
	KindNoAll             // --all on an action that takes one module
	KindEmptyTarget       // an empty kernel version or arch

	KindCache // dkms cache pull/push/ls: the module cache missed, refused or failed
)

// Error is a failure with the lines dkms would print after "Error! ".
type Error struct {
	Kind  Kind
	Lines []string
	// Code is the exit status of a failing script, for KindScriptFailed.
	Code int
	Err  error
	// Shown is how many of the first Lines were printed as they were
	// found (dkms prints a bad dkms.conf's problems, then "Error! Bad
	// conf file."); Unshown are the rest.
	Shown int
}

// Unshown are the lines still to print after "Error! ".
func (e *Error) Unshown() []string {
	if e.Shown >= len(e.Lines) {
		return nil
	}
	return e.Lines[e.Shown:]
}

func (e *Error) Error() string {
	msg := strings.Join(e.Lines, " ")
	if e.Err != nil && msg == "" {
		return e.Err.Error()
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

func fail(kind Kind, lines ...string) *Error { return &Error{Kind: kind, Lines: lines} }

// KindOf returns the Kind of err, KindInternal when it has none.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}
