// Package memory reads how much memory new work may take on this machine
// — /proc/meminfo's MemAvailable and the limits of the memory cgroups this
// process is in, cgroup v1 (memory.limit_in_bytes) and v2 (memory.max),
// its own group and every ancestor — and the kernel's out-of-memory kill
// counters, so that builds can be budgeted and an OOM kill recognised.
//
//	h := memory.Host{} // the running system; tests set Root to a directory
//	avail, err := h.Available()
//	fmt.Println(avail.Bytes>>20, "MiB, from", avail.From)
//	before := h.OOMKills()
//	// … run a build …
//	if n, _ := h.OOMKills().Since(before); n > 0 { /* something was killed */ }
package memory

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Host is a machine's /proc and /sys.
type Host struct {
	// Root is put before every /proc and /sys path: "" reads the running
	// system.
	Root string
}

func (h Host) path(p string) string { return filepath.Join(h.Root, p) }

// Available is how much memory new work may take now.
type Available struct {
	Bytes uint64
	// From says which figure is the tightest: "MemAvailable", or
	// "memory cgroup /x (limit N MiB)".
	From string
	// Limit is that cgroup's limit in bytes (0 when MemAvailable decides).
	Limit uint64
}

// unlimited: cgroup v1 writes "no limit" as the largest page-aligned
// counter (9223372036854771712); anything this large is no limit.
const unlimited = 1 << 62

// Available is the smaller of MemAvailable and, for each memory cgroup
// from this process's own up to its hierarchy's root, the group's limit
// less what it uses (less the page cache it could drop at once).
func (h Host) Available() (Available, error) {
	var best Available
	found := false
	if kb, ok := readKeyed(h.path("/proc/meminfo"), "MemAvailable:"); ok {
		best, found = Available{Bytes: kb * 1024, From: "MemAvailable"}, true
	}
	for _, g := range h.groups() {
		limit, used, ok := g.usage()
		if !ok {
			continue
		}
		free := limit - min(limit, used)
		if !found || free < best.Bytes {
			best, found = Available{Bytes: free, Limit: limit,
				From: fmt.Sprintf("memory cgroup %s (limit %d MiB)", g.path, limit>>20)}, true
		}
	}
	if !found {
		return Available{}, fmt.Errorf("no MemAvailable in %s and no memory cgroup limit", h.path("/proc/meminfo"))
	}
	return best, nil
}

// Kills are out-of-memory kill counts, by the file each was read from.
type Kills map[string]uint64

// OOMKills reads the kernel's OOM kill counters: the system's
// (/proc/vmstat) and those of this process's memory cgroups (v1
// memory.oom_control, v2 memory.events).
func (h Host) OOMKills() Kills {
	k := Kills{}
	if n, ok := readKeyed(h.path("/proc/vmstat"), "oom_kill"); ok {
		k["/proc/vmstat"] = n
	}
	for _, g := range h.groups() {
		file := filepath.Join(g.dir, "memory.events")
		if !g.v2 {
			file = filepath.Join(g.dir, "memory.oom_control")
		}
		if n, ok := readKeyed(file, "oom_kill"); ok {
			k[file] = n
		}
	}
	return k
}

// Since is how many OOM kills happened after before was read: the largest
// rise of any counter. known is false when no counter was read both times.
func (k Kills) Since(before Kills) (n uint64, known bool) {
	for file, now := range k {
		then, ok := before[file]
		if !ok {
			continue
		}
		known = true
		if now > then {
			n = max(n, now-then)
		}
	}
	return n, known
}

// readKeyed reads the number after key in a file of "key value" lines
// (meminfo's "MemAvailable:  123 kB", vmstat's "oom_kill 0").
func readKeyed(file, key string) (uint64, bool) {
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == key {
			n, err := strconv.ParseUint(f[1], 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// readNumber reads a file holding one number; "max" (cgroup v2's no
// limit) reads as unlimited.
func readNumber(file string) (uint64, bool) {
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	s := strings.TrimSpace(string(data))
	if s == "max" {
		return unlimited, true
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}
