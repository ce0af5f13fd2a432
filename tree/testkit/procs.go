package testkit

import (
	"bytes"
	"os"
	"path/filepath"
)

// ProcessesWith lists the running processes (not zombies) whose command
// line holds marker, each as "pid: command line": what a test that must
// leave no process behind looks for.
func ProcessesWith(marker string) []string {
	var out []string
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		raw, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || !bytes.Contains(raw, []byte(marker)) {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join(d, "stat"))
		if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' {
			continue
		}
		out = append(out, filepath.Base(d)+": "+string(bytes.ReplaceAll(raw, []byte{0}, []byte{' '})))
	}
	return out
}
