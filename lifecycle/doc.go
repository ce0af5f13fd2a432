// Package lifecycle carries out the dkms operations — add, build, install,
// uninstall, unbuild, remove, status, generate_mok, autoinstall, match,
// mktarball, ldtarball, mkdriverdisk — on the trees a tree.Layout names;
// RegenerateInitrd puts the installed modules that belong in a kernel's
// initrd into it, through package initrd. It decides and
// acts; it never prints: progress and results leave as Events to a Sink,
// failures as *Error values whose Kind ExitCode maps to dkms's exit status.
//
//	env, err := lifecycle.NewEnv(ctx, tree.NewLayout(root), sink)
//	unlock, err := lifecycle.LockTree(ctx, env)
//	defer unlock()
//	err = lifecycle.Install(ctx, env, lifecycle.Target{Module: "foo", Version: "1.0", Kernel: k, Arch: "x86_64"})
//	os.Exit(lifecycle.ExitCode(err))
//
// A kernel arrived: build and install what it needs, update its initrd,
// show and record the summary (what dkms autoinstall and every hook do):
//
//	sum, err := lifecycle.KernelArrived(ctx, env, lifecycle.KernelArrival{Name: "dkms autoinstall", Kernels: []string{k}, Arch: "x86_64"})
package lifecycle
