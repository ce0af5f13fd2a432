package memory

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeFiles writes files (path under root → text) into root.
func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, text := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

const (
	mib = 1 << 20
	// v1NoLimit is what cgroup v1 shows for no limit.
	v1NoLimit = "9223372036854771712\n"
	meminfo   = "MemTotal:       24684264 kB\nMemFree:        22647488 kB\nMemAvailable:    8388608 kB\n" // 8 GiB available
	// mountinfo of a machine with v1 controllers and an empty v2 tree
	// beside them (this project's test machines).
	hybridMountinfo = `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	// mountinfo of a Debian 12 desktop: cgroup v2 only.
	unifiedMountinfo = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
)

func TestAvailableCgroupV1(t *testing.T) {
	root := t.TempDir()
	g := "sys/fs/cgroup/memory/process_api/abc/"
	writeFiles(t, root, map[string]string{
		"proc/meminfo":              meminfo,
		"proc/self/mountinfo":       hybridMountinfo,
		"proc/self/cgroup":          "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n",
		g + "memory.limit_in_bytes": "1073741824\n",                                              // 1 GiB
		g + "memory.usage_in_bytes": "402653184\n",                                               // 384 MiB, of which
		g + "memory.stat":           "cache 0\ninactive_file 1\ntotal_inactive_file 134217728\n", // 128 MiB can go
		"sys/fs/cgroup/memory/process_api/memory.limit_in_bytes": "2147483648\n",
		"sys/fs/cgroup/memory/process_api/memory.usage_in_bytes": "1610612736\n", // 1.5 GiB used: 512 MiB left
		"sys/fs/cgroup/memory/memory.limit_in_bytes":             v1NoLimit,
		"sys/fs/cgroup/memory/memory.usage_in_bytes":             "5000000000\n",
	})
	a, err := Host{Root: root}.Available()
	if err != nil {
		t.Fatal(err)
	}
	// Own group: 1024 - (384 - 128) = 768 MiB; its parent: 512 MiB, the
	// tightest.
	if a.Bytes != 512*mib || a.Limit != 2048*mib || a.From != "memory cgroup /process_api (limit 2048 MiB)" {
		t.Errorf("Available = %+v, want 512 MiB from /process_api's 2048 MiB limit", a)
	}

	// Without the parent's limit the own group decides.
	writeFiles(t, root, map[string]string{"sys/fs/cgroup/memory/process_api/memory.limit_in_bytes": v1NoLimit})
	if a, _ := (Host{Root: root}).Available(); a.Bytes != 768*mib || a.From != "memory cgroup /process_api/abc (limit 1024 MiB)" {
		t.Errorf("Available = %+v, want 768 MiB from /process_api/abc", a)
	}
}

func TestAvailableCgroupV2(t *testing.T) {
	root := t.TempDir()
	g := "sys/fs/cgroup/user.slice/user-1000.slice/session-2.scope/"
	writeFiles(t, root, map[string]string{
		"proc/meminfo":        meminfo,
		"proc/self/mountinfo": unifiedMountinfo,
		"proc/self/cgroup":    "0::/user.slice/user-1000.slice/session-2.scope\n",
		g + "memory.max":      "max\n",
		g + "memory.current":  "1000\n",
		"sys/fs/cgroup/user.slice/user-1000.slice/memory.max":     "3221225472\n", // 3 GiB
		"sys/fs/cgroup/user.slice/user-1000.slice/memory.high":    "max\n",
		"sys/fs/cgroup/user.slice/user-1000.slice/memory.current": "1073741824\n",
		"sys/fs/cgroup/user.slice/user-1000.slice/memory.stat":    "anon 1\nfile 2\ninactive_file 536870912\n",
		"sys/fs/cgroup/user.slice/memory.max":                     "max\n",
	})
	a, err := Host{Root: root}.Available()
	if err != nil {
		t.Fatal(err)
	}
	// 3072 - (1024 - 512) = 2560 MiB, under MemAvailable's 8 GiB.
	if a.Bytes != 2560*mib || a.From != "memory cgroup /user.slice/user-1000.slice (limit 3072 MiB)" {
		t.Errorf("Available = %+v, want 2560 MiB from user-1000.slice", a)
	}

	// memory.high below memory.max is the limit that counts.
	writeFiles(t, root, map[string]string{"sys/fs/cgroup/user.slice/user-1000.slice/memory.high": "2147483648\n"})
	if a, _ := (Host{Root: root}).Available(); a.Bytes != 1536*mib {
		t.Errorf("with memory.high at 2 GiB: Available = %+v, want 1536 MiB", a)
	}

	// No limit anywhere: MemAvailable.
	writeFiles(t, root, map[string]string{
		"sys/fs/cgroup/user.slice/user-1000.slice/memory.max":  "max\n",
		"sys/fs/cgroup/user.slice/user-1000.slice/memory.high": "max\n",
	})
	if a, _ := (Host{Root: root}).Available(); a.Bytes != 8192*mib || a.From != "MemAvailable" || a.Limit != 0 {
		t.Errorf("without limits: Available = %+v, want MemAvailable's 8192 MiB", a)
	}
}

// A container sees its part of the hierarchy: the mount's root is its
// own group, which /proc/self/cgroup names in full.
func TestAvailableCgroupMountedBelowRoot(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"proc/meminfo":        meminfo,
		"proc/self/mountinfo": "50 40 0:31 /docker/c1 /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n",
		"proc/self/cgroup":    "4:memory:/docker/c1/build\n",
		"sys/fs/cgroup/memory/build/memory.limit_in_bytes": v1NoLimit,
		"sys/fs/cgroup/memory/memory.limit_in_bytes":       "1048576000\n",
		"sys/fs/cgroup/memory/memory.usage_in_bytes":       "0\n",
	})
	a, err := Host{Root: root}.Available()
	if err != nil {
		t.Fatal(err)
	}
	if a.Bytes != 1000*mib || a.From != "memory cgroup /docker/c1 (limit 1000 MiB)" {
		t.Errorf("Available = %+v, want 1000 MiB from /docker/c1", a)
	}
}

// Without mountinfo the usual mount points are tried.
func TestAvailableCgroupWithoutMountinfo(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"proc/self/cgroup":                      "0::/build\n",
		"sys/fs/cgroup/cgroup.controllers":      "cpu memory\n",
		"sys/fs/cgroup/build/memory.max":        "629145600\n",
		"sys/fs/cgroup/build/memory.current":    "104857600\n",
		"sys/fs/cgroup/build/memory.events":     "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
		"sys/fs/cgroup/build/cgroup.procs":      "1\n",
		"sys/fs/cgroup/build/memory.swap.max":   "0\n",
		"sys/fs/cgroup/build/memory.stat":       "inactive_file 0\n",
		"sys/fs/cgroup/memory.stat":             "inactive_file 0\n",
		"sys/fs/cgroup/cgroup.subtree_control":  "memory\n",
		"sys/fs/cgroup/build/memory.swap.event": "",
	})
	a, err := Host{Root: root}.Available()
	if err != nil {
		t.Fatal(err)
	}
	if a.Bytes != 500*mib {
		t.Errorf("Available = %+v, want 500 MiB (no MemAvailable: the cgroup)", a)
	}
	if k := (Host{Root: root}).OOMKills(); k[filepath.Join(root, "sys/fs/cgroup/build/memory.events")] != 1 {
		t.Errorf("OOMKills = %v, want build's memory.events oom_kill 1", k)
	}
}

func TestAvailableNothingToRead(t *testing.T) {
	if _, err := (Host{Root: t.TempDir()}).Available(); err == nil || !strings.Contains(err.Error(), "MemAvailable") {
		t.Errorf("Available on an empty root: err %v, want one naming MemAvailable", err)
	}
}

func TestOOMKills(t *testing.T) {
	root := t.TempDir()
	g := "sys/fs/cgroup/memory/test/"
	writeFiles(t, root, map[string]string{
		"proc/vmstat":               "pgfault 1\noom_kill 7\n",
		"proc/self/mountinfo":       hybridMountinfo,
		"proc/self/cgroup":          "4:memory:/test\n0::/\n",
		g + "memory.oom_control":    "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
		g + "memory.limit_in_bytes": "1000\n",
	})
	h := Host{Root: root}
	before := h.OOMKills()
	if n, known := h.OOMKills().Since(before); n != 0 || !known {
		t.Errorf("Since with nothing new = %d, %v; want 0, true", n, known)
	}
	writeFiles(t, root, map[string]string{g + "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n"})
	if n, known := h.OOMKills().Since(before); n != 3 || !known {
		t.Errorf("Since after 3 kills in the group = %d, %v; want 3, true", n, known)
	}
	if n, known := (Kills{}).Since(before); n != 0 || known {
		t.Errorf("Since of no counters = %d, %v; want 0, false", n, known)
	}
}

// On the machine itself: a figure comes back, no larger than
// MemAvailable.
func TestAvailableRunningSystem(t *testing.T) {
	a, err := Host{}.Available()
	if err != nil {
		t.Fatal(err)
	}
	kb, ok := readKeyed("/proc/meminfo", "MemAvailable:")
	if !ok {
		t.Fatal("no MemAvailable in /proc/meminfo")
	}
	// MemAvailable moves between the two reads: allow 64 MiB.
	if a.Bytes == 0 || a.Bytes > kb*1024+64*mib {
		t.Errorf("Available = %+v; MemAvailable is %d MiB", a, kb>>10)
	}
	if _, known := (Host{}).OOMKills().Since(Kills{}); known {
		t.Errorf("Since against nothing read says known")
	}
	if len((Host{}).OOMKills()) == 0 {
		t.Errorf("no OOM kill counter on this machine (/proc/vmstat oom_kill)")
	}
	t.Logf("available: %d MiB (%s)", a.Bytes>>20, a.From)
}
