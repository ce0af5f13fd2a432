// Package tree is the on-disk model dkms and dkmsd share: where the trees
// are (Layout: /var/lib/dkms, /usr/src, /lib/modules, /boot, /etc/dkms, all
// movable under one root), what a dkms.conf says for one kernel and
// architecture (ReadConf, evaluated as the shell file it is with
// mvdan.cc/sh, under a time limit), framework.conf (ReadFramework), the
// kernels on disk and their headers, which module versions are added, built
// and installed, dkms's version ordering (VersionKey) and a module's
// .modinfo. It reads and names paths; it builds, installs and prints
// nothing.
//
//	layout := tree.NewLayout("")                  // the machine's own trees
//	conf, err := tree.ReadConf(ctx, layout.SourceDir("foo", "1.0")+"/dkms.conf",
//		tree.ConfContext{Module: "foo", Version: "1.0", Kernel: k, Arch: "x86_64",
//			Layout: layout, Distro: tree.ReadDistro("")})
//	for _, m := range conf.Modules {
//		fmt.Println(m.BuiltName, m.DestLocation) // foo /updates/dkms on Debian
//	}
//	installed := layout.InstalledVersion("foo", k, "x86_64")
package tree
