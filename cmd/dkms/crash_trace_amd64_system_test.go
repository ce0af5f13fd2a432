//go:build systemtest && amd64

package main

import "golang.org/x/sys/unix"

// legacyStepCalls are the step calls amd64 keeps from before the *at
// calls; glibc programs (depmod) still use some of them.
var legacyStepCalls = map[uint64]stepCall{
	unix.SYS_OPEN:     {"open", []stepArg{stepAt(cwdRelative, 0)}, 1},
	unix.SYS_CREAT:    {"creat", []stepArg{stepAt(cwdRelative, 0)}, -1},
	unix.SYS_UNLINK:   {"unlink", []stepArg{stepAt(cwdRelative, 0)}, -1},
	unix.SYS_RMDIR:    {"rmdir", []stepArg{stepAt(cwdRelative, 0)}, -1},
	unix.SYS_RENAME:   {"rename", []stepArg{stepAt(cwdRelative, 0), stepAt(cwdRelative, 1)}, -1},
	unix.SYS_LINK:     {"link", []stepArg{stepAt(cwdRelative, 1)}, -1},
	unix.SYS_SYMLINK:  {"symlink", []stepArg{stepAt(cwdRelative, 1)}, -1},
	unix.SYS_MKDIR:    {"mkdir", []stepArg{stepAt(cwdRelative, 0)}, -1},
	unix.SYS_CHMOD:    {"chmod", []stepArg{stepAt(cwdRelative, 0)}, -1},
	unix.SYS_CHOWN:    {"chown", []stepArg{stepAt(cwdRelative, 0)}, -1},
	unix.SYS_LCHOWN:   {"lchown", []stepArg{stepAt(cwdRelative, 0)}, -1},
	unix.SYS_SENDFILE: {"sendfile", []stepArg{stepFd(0)}, -1},
}
