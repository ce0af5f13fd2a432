package lifecycle

import "errors"

// exitCodes maps failure kinds to dkms's exit codes: the one table every
// binary (the dkms command and its usage errors, the hooks' summaries)
// takes them from.
var exitCodes = map[Kind]int{
	KindInternal:        1,
	KindUsage:           2,
	KindNotRoot:         1,
	KindMissingArgs:     1,
	KindAlreadyAdded:    3,
	KindNotAdded:        3,
	KindNoSource:        2,
	KindNoConf:          4,
	KindBadConf:         8,
	KindBroken:          4,
	KindExcluded:        77,
	KindNoHeaders:       21,
	KindEmptySource:     8,
	KindPatchMissing:    5,
	KindPatchFailed:     6,
	KindBuildFailed:     10,
	KindOOMKilled:       10,
	KindNoModuleBuilt:   7,
	KindBuildTimeout:    10,
	KindNoKernelDir:     6,
	KindMissingBuilt:    6,
	KindInstallAborted:  6,
	KindDepmod:          6,
	KindPreInstall:      101,
	KindNoDirConf:       9,
	KindNotBuilt:        6,
	KindNotSupported:    1,
	KindBuildDepends:    13,
	KindOneKernel:       4,
	KindBadArch:         1,
	KindDiskFull:        1,
	KindMOK:             1,
	KindSignFailed:      10,
	KindAutoinstall:     11,
	KindPrerm:           14,
	KindNoInitrd:        1,
	KindInitrd:          1,
	KindTarballDest:     9,
	KindTarball:         6,
	KindNoArchive:       2,
	KindBadTarball:      7,
	KindNoConfInTarball: 3,
	KindTarballAdded:    8,
	KindVermagic:        6,
	KindStillFailing:    10,
	KindInitrdMissing:   30,
	KindCannotVerify:    69,

	KindUnknownOption:     2,
	KindTwoActions:        4,
	KindBinariesAndSource: 8,
	KindArchAndAll:        3,
	KindNoAll:             5,
	KindEmptyTarget:       16,
	KindCache:             1,
}

// ExitCode is dkms's exit status for err (0 for nil): a failing script's
// own status, else the code of its Kind.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var le *Error
	if errors.As(err, &le) && (le.Kind == KindScriptFailed || le.Kind == KindStillFailing) && le.Code > 0 {
		return le.Code
	}
	if code, ok := exitCodes[KindOf(err)]; ok {
		return code
	}
	return 1
}
