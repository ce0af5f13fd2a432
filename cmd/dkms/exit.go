package main

import (
	"bufio"
	"errors"
	"os"

	"github.com/dkmsd/dkmsd/lifecycle"
)

// exitCodes maps failure kinds to dkms's exit codes.
var exitCodes = map[lifecycle.Kind]int{
	lifecycle.KindInternal:        1,
	lifecycle.KindUsage:           2,
	lifecycle.KindNotRoot:         1,
	lifecycle.KindMissingArgs:     1,
	lifecycle.KindAlreadyAdded:    3,
	lifecycle.KindNotAdded:        3,
	lifecycle.KindNoSource:        2,
	lifecycle.KindNoConf:          4,
	lifecycle.KindBadConf:         8,
	lifecycle.KindBroken:          4,
	lifecycle.KindExcluded:        77,
	lifecycle.KindNoHeaders:       21,
	lifecycle.KindEmptySource:     8,
	lifecycle.KindPatchMissing:    5,
	lifecycle.KindPatchFailed:     6,
	lifecycle.KindBuildFailed:     10,
	lifecycle.KindNoModuleBuilt:   7,
	lifecycle.KindNoKernelDir:     6,
	lifecycle.KindMissingBuilt:    6,
	lifecycle.KindInstallAborted:  6,
	lifecycle.KindDepmod:          6,
	lifecycle.KindPreInstall:      101,
	lifecycle.KindNoDirConf:       9,
	lifecycle.KindNotBuilt:        6,
	lifecycle.KindNotSupported:    1,
	lifecycle.KindBuildDepends:    13,
	lifecycle.KindOneKernel:       4,
	lifecycle.KindBadArch:         1,
	lifecycle.KindDiskFull:        1,
	lifecycle.KindMOK:             1,
	lifecycle.KindAutoinstall:     11,
	lifecycle.KindPrerm:           14,
	lifecycle.KindNoInitrd:        1,
	lifecycle.KindInitrd:          1,
	lifecycle.KindTarballDest:     9,
	lifecycle.KindTarball:         6,
	lifecycle.KindNoArchive:       2,
	lifecycle.KindBadTarball:      7,
	lifecycle.KindNoConfInTarball: 3,
	lifecycle.KindTarballAdded:    8,
}

// exitCode is the process status for err.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ue *usageError
	if errors.As(err, &ue) {
		return ue.code
	}
	var le *lifecycle.Error
	if errors.As(err, &le) && le.Kind == lifecycle.KindScriptFailed && le.Code > 0 {
		return le.Code
	}
	if code, ok := exitCodes[lifecycle.KindOf(err)]; ok {
		return code
	}
	return 1
}

func bufferedStdout() *bufio.Writer { return bufio.NewWriterSize(os.Stdout, 64*1024) }
