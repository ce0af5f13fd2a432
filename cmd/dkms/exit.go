package main

import (
	"bufio"
	"errors"
	"os"

	"github.com/dkmsd/dkmsd/lifecycle"
)

// exitCode is the process status for err.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ue *usageError
	if errors.As(err, &ue) {
		return ue.code
	}
	return lifecycle.ExitCode(err)
}

func bufferedStdout() *bufio.Writer { return bufio.NewWriterSize(os.Stdout, 64*1024) }
