package hooks

// The hook binaries' exit statuses, as package managers read them: the
// one table every hook main and Run take them from. Never 77, which would
// make kernel-install skip the initrd and boot-entry plugins after it.
const (
	// ExitOK: done, or nothing to do — also when modules failed, unless
	// framework.conf says hook_fail_on_error="yes": a broken third-party
	// module must not fail the kernel's installation.
	ExitOK = 0
	// ExitFailed: modules failed and hook_fail_on_error="yes".
	ExitFailed = 1
	// ExitUsage: the package manager called the hook with arguments its
	// protocol does not have.
	ExitUsage = 2
)
