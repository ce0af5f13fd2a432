package testkit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHelloFilesWritten clones the hello fixture under another name and
// version, adds a script, and writes it: names and texts carry the new
// identity, the script is executable, the rest is not.
func TestHelloFilesWritten(t *testing.T) {
	files := HelloFiles(t, "dkmsd_clone", "2.5")
	if conf := files["dkms.conf"]; !strings.Contains(conf, `PACKAGE_NAME="dkmsd_clone"`) || !strings.Contains(conf, `PACKAGE_VERSION="2.5"`) {
		t.Errorf("dkms.conf of the clone:\n%s", conf)
	}
	if c, ok := files["dkmsd_clone.c"]; !ok || strings.Contains(c, "dkmsd_hello") {
		t.Errorf("dkmsd_clone.c missing or still naming dkmsd_hello: %v", ok)
	}
	files["post_build.sh"] = "#!/bin/sh\n"
	dir := filepath.Join(t.TempDir(), "usr/src/dkmsd_clone-2.5")
	WriteModule(t, dir, files)
	for name, exec := range map[string]bool{"post_build.sh": true, "Makefile": false, "dkms.conf": false, "dkmsd_clone.c": false} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
		} else if got := fi.Mode().Perm()&0o111 != 0; got != exec {
			t.Errorf("%s: mode %v, executable %v, want %v", name, fi.Mode().Perm(), got, exec)
		}
	}
}
