package lifecycle

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/dkmsd/dkmsd/tree"
)

// sysDevices is where the running kernel lists its devices; each device a
// driver may bind to has a modalias file there.
const sysDevices = "/sys/devices"

// modulesLoadUnit is systemd's service that loads what
// /etc/modules-load.d names.
const modulesLoadUnit = "/lib/systemd/system/systemd-modules-load.service"

// loadNewModules is modprobe_on_install (--modprobe-on-install), run once a
// kernel's installs are complete and depmod has run. As dkms does, it acts
// only when kernel is the running kernel, and loads what the machine asks
// for rather than the modules by name: every device's modalias goes to
// `modprobe -a -b -q`, so a newly installed module loads when a device
// present matches one of its aliases (and is not blacklisted); then
// systemd-modules-load is restarted for the modules /etc/modules-load.d
// names. Only what modprobe and systemctl print is shown; their failure
// does not fail the install.
func (e *Env) loadNewModules(ctx context.Context, kernel string) {
	if !e.ModprobeOnInstall || kernel != tree.RunningKernel() {
		return
	}
	out := &lineWriter{sink: e.Sink, typ: Warning}
	defer out.Flush()
	if aliases := deviceModaliases(sysDevices); len(aliases) > 0 {
		// A relocated install tree is where the module was installed:
		// modprobe looks there (-d), as depmod wrote its indexes there.
		base, cleanup, err := e.depmodBase()
		if err != nil {
			e.warn("%v", err)
			return
		}
		defer cleanup()
		argv := []string{"modprobe", "-a", "-b", "-q"}
		if base != "" {
			argv = append(argv, "-d", base)
		}
		_ = runArgv(ctx, "", e.buildEnviron(), out, append(argv, aliases...)...)
	}
	// The machine's own systemd only: a relocated root's modules-load.d
	// is not what that service reads.
	if e.Layout.Root == "" && exists(modulesLoadUnit) {
		_ = runArgv(ctx, "", e.buildEnviron(), out, "systemctl", "restart", filepath.Base(modulesLoadUnit))
	}
}

// deviceModaliases lists, sorted and without repeats, the words of every
// modalias file under dir (`find dir -name modalias | xargs cat | sort -u`).
// Symbolic links are not followed; unreadable files are passed over.
func deviceModaliases(dir string) []string {
	seen := map[string]bool{}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "modalias" {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		for _, w := range strings.Fields(string(data)) {
			seen[w] = true
		}
		return nil
	})
	out := make([]string, 0, len(seen))
	for w := range seen {
		out = append(out, w)
	}
	sort.Strings(out)
	return out
}
