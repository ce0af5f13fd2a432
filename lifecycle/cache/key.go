package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Recipe is the version of the way dkmsd builds and stores a module: a
// change in how the build step runs kbuild or stages modules bumps it,
// and every earlier artifact misses.
const Recipe = "dkmsd-1"

// Key says exactly when a build can be reused: the same module source as
// built, for the same kernel ABI, by the same recipe.
type Key struct {
	Module  string `json:"module"`
	Version string `json:"version"`
	Kernel  string `json:"kernel"`
	Arch    string `json:"arch"`
	// Source is the digest of the build dir before make: the source with
	// /etc/dkms patch overrides laid over it, the dkms.conf in effect and
	// the administrator's override scripts.
	Source string `json:"source"`
	// ABI is the digest of the kernel's Module.symvers, its
	// include/config/auto.conf and the compiler its headers name: a
	// kernel rebuilt under the same release string gets another one.
	ABI    string `json:"abi"`
	Recipe string `json:"recipe"`
}

// Digest is the hex sha256 of the key's canonical JSON.
func (k Key) Digest() string {
	b, _ := json.Marshal(k)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Tag is the key's tag in a repository: its hex digest, which every OCI
// registry accepts as a tag.
func (k Key) Tag() string { return k.Digest() }

func (k Key) String() string {
	return fmt.Sprintf("%s/%s for %s (%s)", k.Module, k.Version, k.Kernel, k.Arch)
}

// Digester folds named parts into one sha256 digest; each part is
// framed by its name and length so that no two inputs collide.
type Digester struct{ b bytes.Buffer }

// Add adds a named part.
func (d *Digester) Add(name string, data []byte) {
	fmt.Fprintf(&d.b, "%s\x00%d\x00", name, len(data))
	d.b.Write(data)
}

// AddFile adds a file's content under its name; a missing file is a part
// of its own ("absent"), so adding one later changes the digest.
func (d *Digester) AddFile(name, path string) error {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		d.Add(name+"\x00absent", nil)
		return nil
	}
	if err != nil {
		return fmt.Errorf("digest %s: %w", path, err)
	}
	d.Add(name, data)
	return nil
}

// AddTree adds every file and symlink under dir (names relative to it,
// in order, with the executable bit), skipping the names in skip.
func (d *Digester) AddTree(prefix, dir string, skip ...string) error {
	var names []string
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) && p == dir {
				return filepath.SkipDir
			}
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		for _, s := range skip {
			if rel == s {
				if e.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
		}
		if !e.IsDir() {
			names = append(names, rel)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("digest %s: %w", dir, err)
	}
	sort.Strings(names)
	for _, rel := range names {
		p := filepath.Join(dir, rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("digest %s: %w", p, err)
		}
		name := prefix + "/" + rel
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("digest %s: %w", p, err)
			}
			d.Add(name+"\x00link", []byte(l))
		case fi.Mode().IsRegular():
			if fi.Mode()&0o111 != 0 {
				name += "\x00x"
			}
			if err := d.AddFile(name, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// Sum is the digest, "sha256:<hex>".
func (d *Digester) Sum() string {
	sum := sha256.Sum256(d.b.Bytes())
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ABIDigest is the digest of the kernel ABI modules are built against:
// the headers' Module.symvers and include/config/auto.conf, and the
// compiler they name (CONFIG_CC_VERSION_TEXT).
func ABIDigest(buildDir string) (string, error) {
	var d Digester
	if err := d.AddFile("Module.symvers", filepath.Join(buildDir, "Module.symvers")); err != nil {
		return "", err
	}
	auto := filepath.Join(buildDir, "include", "config", "auto.conf")
	if err := d.AddFile("auto.conf", auto); err != nil {
		return "", err
	}
	d.Add("cc", []byte(compilerText(auto)))
	return d.Sum(), nil
}

// compilerText is CONFIG_CC_VERSION_TEXT from an auto.conf.
func compilerText(auto string) string {
	data, _ := os.ReadFile(auto)
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CONFIG_CC_VERSION_TEXT="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}
