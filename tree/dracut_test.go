package tree

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestReadDracutConf: files are sourced as dracut sources them —
// etc/dracut.conf first, then the drop-ins of etc and usr/lib merged by
// name in version order, an etc file masking its usr/lib namesake, in one
// scope so += adds up — and dkmsd's own drop-in, which would ask dkmsd
// for its modules, is skipped while dkmsd reads.
func TestReadDracutConf(t *testing.T) {
	root := t.TempDir()
	files := map[string]string{
		"etc/dracut.conf":                            "add_drivers=\" first \"\n",
		"etc/dracut.conf.d/9-a.conf":                 "add_drivers+=\" nine \"\nfilesystems+=\" zfs \"\n",
		"etc/dracut.conf.d/10-b.conf":                "add_drivers+=\" ten \"\nforce_drivers+=\" early-one \"\nomit_drivers+=\" bad-mod nv.* \"\n",
		"usr/lib/dracut/dracut.conf.d/10-b.conf":     "add_drivers+=\" masked \"\n",
		"usr/lib/dracut/dracut.conf.d/20-c.conf":     "drivers=\"only\"\n",
		"usr/lib/dracut/dracut.conf.d/50-dkmsd.conf": "",
	}
	dropIn, err := os.ReadFile(filepath.Join("..", "dist", "dracut", "50-dkmsd.conf"))
	if err != nil {
		t.Fatal(err)
	}
	// The real drop-in, with a dkms that would record being run.
	marker := filepath.Join(root, "ran")
	fake := filepath.Join(root, "dkms")
	files["usr/lib/dracut/dracut.conf.d/50-dkmsd.conf"] = "kernel=6.1.0-1-amd64\n" +
		string(replaceAll(dropIn, "/usr/libexec/dkmsd/dkms", fake))
	for name, text := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(fake, []byte("#!/bin/sh\ntouch "+marker+"\necho hello early\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	dc, err := ReadDracutConf(t.Context(), root, []string{"PATH=/usr/bin:/bin"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"first", "nine", "ten"}; !slices.Equal(dc.AddDrivers, want) {
		t.Errorf("add_drivers = %q, want %q", dc.AddDrivers, want)
	}
	if !slices.Equal(dc.ForceDrivers, []string{"early-one"}) || !slices.Equal(dc.Drivers, []string{"only"}) || !slices.Equal(dc.Filesystems, []string{"zfs"}) {
		t.Errorf("force_drivers %q, drivers %q, filesystems %q", dc.ForceDrivers, dc.Drivers, dc.Filesystems)
	}
	for name, want := range map[string]bool{"bad_mod": true, "nvidia": true, "bad_mod2": false, "anv": false, "hello": false} {
		if dc.Omitted(name) != want {
			t.Errorf("Omitted(%s) = %v, want %v", name, !want, want)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("reading dracut's configuration ran dkms through dkmsd's own drop-in")
	}
	if len(dc.Files) != 5 || filepath.Base(dc.Files[1]) != "9-a.conf" || dc.Files[2] != filepath.Join(root, "etc/dracut.conf.d/10-b.conf") {
		t.Errorf("files read: %q", dc.Files)
	}
}

func replaceAll(b []byte, old, new string) []byte {
	return []byte(strings.ReplaceAll(string(b), old, new))
}
