package tree

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// DracutConf is what dracut's configuration says about kernel modules.
type DracutConf struct {
	// AddDrivers (add_drivers), Drivers (drivers) and Filesystems
	// (filesystems) go into the image; ForceDrivers (force_drivers) also
	// load early (rd.driver.pre).
	AddDrivers, ForceDrivers, Drivers, Filesystems []string
	// Omit (omit_drivers) are patterns, each matching a whole module
	// name, of modules kept out of the image whatever else asks for them.
	Omit []*regexp.Regexp
	// Files are the files read, in order.
	Files []string
}

// dracutNames are the settings that decide which modules dracut puts in an
// image.
var dracutNames = []string{"add_drivers", "force_drivers", "omit_drivers", "drivers", "filesystems"}

// ReadDracutConf evaluates dracut's configuration under root as dracut
// sources it: etc/dracut.conf, then the *.conf files of etc/dracut.conf.d
// and usr/lib/dracut/dracut.conf.d merged by name in version order (a
// file in etc masks the one of the same name in usr/lib), in one shell
// scope, so `add_drivers+=" foo "` adds to what earlier files set.
func ReadDracutConf(ctx context.Context, root string, env []string, stderr io.Writer) (DracutConf, error) {
	files := []string{filepath.Join(root, "etc", "dracut.conf")}
	dirs := []string{filepath.Join(root, "etc", "dracut.conf.d"), filepath.Join(root, "usr", "lib", "dracut", "dracut.conf.d")}
	byName := map[string]string{}
	for i := len(dirs) - 1; i >= 0; i-- {
		matches, _ := filepath.Glob(filepath.Join(dirs[i], "*.conf"))
		for _, m := range matches {
			byName[filepath.Base(m)] = m
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return CompareVersions(names[i], names[j]) < 0 })
	for _, n := range names {
		files = append(files, byName[n])
	}
	var dc DracutConf
	vals := map[string]Value{}
	// dkmsd's own drop-in (dist/dracut/50-dkmsd.conf) asks dkmsd for its
	// modules: not while dkmsd is the one reading.
	env = append(append([]string{}, env...), "DKMSD_DRACUT_CONF=1")
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		ev := shellEval{Env: env, Stderr: stderr, Timeout: 10 * time.Second, Prelude: vals}
		res, err := ev.run(ctx, f, src, dracutNames)
		if err != nil {
			return DracutConf{}, err
		}
		vals = res.Values
		dc.Files = append(dc.Files, f)
	}
	words := func(n string) []string {
		var out []string
		v := vals[n]
		for _, i := range v.Indexes() {
			out = append(out, strings.Fields(v.Get(i))...)
		}
		return out
	}
	dc.AddDrivers, dc.ForceDrivers, dc.Drivers, dc.Filesystems = words("add_drivers"), words("force_drivers"), words("drivers"), words("filesystems")
	for _, p := range words("omit_drivers") {
		// dracut turns each word into ^word$ with - read as _.
		if re, err := regexp.Compile("^(" + strings.ReplaceAll(p, "-", "_") + ")$"); err == nil {
			dc.Omit = append(dc.Omit, re)
		}
	}
	return dc, nil
}

// Omitted reports whether omit_drivers keeps module name (underscores)
// out of the image.
func (dc DracutConf) Omitted(name string) bool {
	for _, re := range dc.Omit {
		if re.MatchString(name) {
			return true
		}
	}
	return false
}
