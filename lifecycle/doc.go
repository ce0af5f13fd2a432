// Package lifecycle carries out the dkms operations — add, build, install,
// uninstall, unbuild, remove, status, generate_mok — on the trees a
// tree.Layout names. It decides and acts; it never prints: progress and
// results leave as Events to a Sink, failures as *Error values whose Kind
// the command maps to an exit code.
//
//	env, err := lifecycle.NewEnv(ctx, tree.NewLayout(root), sink)
//	unlock, err := lifecycle.LockTree(ctx, env)
//	defer unlock()
//	err = lifecycle.Install(ctx, env, lifecycle.Target{Module: "foo", Version: "1.0", Kernel: k, Arch: "x86_64"})
//	// A kernel arrived: build and install what it needs, update its initrd.
//	sum, err := lifecycle.KernelArrived(ctx, env, lifecycle.KernelArrival{Name: "dkms autoinstall", Kernels: []string{k}, Arch: "x86_64"})
package lifecycle
