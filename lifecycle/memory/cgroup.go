package memory

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// group is one memory cgroup on this process's path to its hierarchy's
// root.
type group struct {
	dir  string // its directory, Root included
	path string // its cgroup path, as /proc/self/cgroup names it
	v2   bool
}

// mount is where a cgroup hierarchy is mounted: root is the hierarchy's
// path shown at point (not "/" in a container that sees only its part).
type mount struct{ root, point string }

// groups lists the memory cgroups this process is in, its own first, then
// each parent up to the root of the hierarchy: cgroup v1's memory
// controller ("N:memory:/path") and the v2 hierarchy ("0::/path"). A
// machine may have both (v1 controllers with an empty v2 tree beside).
func (h Host) groups() []group {
	data, err := os.ReadFile(h.path("/proc/self/cgroup"))
	if err != nil {
		return nil
	}
	v1, v2 := h.mounts()
	var out []group
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			out = append(out, h.chain(v2, parts[2], true)...)
		case slices.Contains(strings.Split(parts[1], ","), "memory"):
			out = append(out, h.chain(v1, parts[2], false)...)
		}
	}
	return out
}

// chain is the group at cgroup path p in the hierarchy mounted at m, then
// its ancestors up to the mount point.
func (h Host) chain(m mount, p string, v2 bool) []group {
	if m.point == "" {
		return nil
	}
	rel := p
	if m.root != "/" {
		// The mount shows the hierarchy from m.root down; a path outside
		// it (another namespace's view) is not reachable there.
		r, ok := strings.CutPrefix(p, m.root)
		if !ok || (r != "" && !strings.HasPrefix(r, "/")) {
			return nil
		}
		rel = r
	}
	rel = filepath.Clean("/" + rel)
	var out []group
	for {
		out = append(out, group{dir: h.path(filepath.Join(m.point, rel)), path: filepath.Join(m.root, rel), v2: v2})
		if rel == "/" {
			return out
		}
		rel = filepath.Dir(rel)
	}
}

// mounts finds the v1 memory controller's and the v2 hierarchy's mount
// points in /proc/self/mountinfo, else where systemd mounts them:
// /sys/fs/cgroup/memory, and /sys/fs/cgroup (unified) or
// /sys/fs/cgroup/unified (hybrid).
func (h Host) mounts() (v1, v2 mount) {
	if data, err := os.ReadFile(h.path("/proc/self/mountinfo")); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			// id parent major:minor root point options [optional…] - type source super-options
			pre, post, ok := strings.Cut(line, " - ")
			f, g := strings.Fields(pre), strings.Fields(post)
			if !ok || len(f) < 5 || len(g) < 3 {
				continue
			}
			m := mount{root: unescape(f[3]), point: unescape(f[4])}
			switch {
			case g[0] == "cgroup2" && v2.point == "":
				v2 = m
			case g[0] == "cgroup" && v1.point == "" && slices.Contains(strings.Split(g[2], ","), "memory"):
				v1 = m
			}
		}
	}
	if v1.point == "" && exists(h.path("/sys/fs/cgroup/memory/memory.limit_in_bytes")) {
		v1 = mount{root: "/", point: "/sys/fs/cgroup/memory"}
	}
	if v2.point == "" {
		for _, p := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
			if exists(h.path(filepath.Join(p, "cgroup.controllers"))) {
				v2 = mount{root: "/", point: p}
				break
			}
		}
	}
	return v1, v2
}

// unescape undoes mountinfo's octal escapes of space, tab, newline and
// backslash.
func unescape(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// usage is the group's limit and the memory it holds that it could not
// give back at once (usage less inactive page cache); ok is false when
// the group has no limit. For v2 memory.high counts as a limit too: past
// it the kernel throttles the group hard.
func (g group) usage() (limit, used uint64, ok bool) {
	var current uint64
	if g.v2 {
		limit, ok = readNumber(filepath.Join(g.dir, "memory.max"))
		if high, hok := readNumber(filepath.Join(g.dir, "memory.high")); hok && (!ok || high < limit) {
			limit, ok = high, true
		}
		current, _ = readNumber(filepath.Join(g.dir, "memory.current"))
	} else {
		limit, ok = readNumber(filepath.Join(g.dir, "memory.limit_in_bytes"))
		current, _ = readNumber(filepath.Join(g.dir, "memory.usage_in_bytes"))
	}
	if !ok || limit >= unlimited {
		return 0, 0, false
	}
	stat := filepath.Join(g.dir, "memory.stat")
	inactive, found := readKeyed(stat, "total_inactive_file") // v1, with the subgroups
	if !found {
		inactive, _ = readKeyed(stat, "inactive_file")
	}
	return limit, current - min(current, inactive), true
}
