package testkit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// WriteModule writes a module's source into dir, made if missing: each of
// files (name → text) with mode 0644, or 0755 for a name ending in .sh —
// the scripts a dkms.conf runs (PRE_BUILD, POST_INSTALL, …) must be
// executable.
func WriteModule(tb testing.TB, dir string, files map[string]string) {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	for name, text := range files {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), mode); err != nil {
			tb.Fatal(err)
		}
	}
}

// HelloFiles is the source of testdata's dkmsd_hello-1.0 (file name →
// text) made into module name at version: "dkmsd_hello" becomes name and
// "1.0" version, in the file names and the texts. Its dkms.conf ends with
// AUTOINSTALL="yes"; tests change it or add files before WriteModule.
func HelloFiles(tb testing.TB, name, version string) map[string]string {
	tb.Helper()
	from := filepath.Join(ModulesDir(), "dkmsd_hello-1.0")
	entries, err := os.ReadDir(from)
	if err != nil {
		tb.Fatal(err)
	}
	files := map[string]string{}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			tb.Fatal(err)
		}
		text := strings.ReplaceAll(strings.ReplaceAll(string(data), "dkmsd_hello", name), "1.0", version)
		files[strings.ReplaceAll(e.Name(), "dkmsd_hello", name)] = text
	}
	return files
}
