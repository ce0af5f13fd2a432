package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
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
// framed by its name and length so that no two inputs collide. The parts
// go straight into the hash: a source tree is not held in memory.
type Digester struct{ h hash.Hash }

// Add adds a named part.
func (d *Digester) Add(name string, data []byte) {
	if d.h == nil {
		d.h = sha256.New()
	}
	fmt.Fprintf(d.h, "%s\x00%d\x00", name, len(data))
	d.h.Write(data)
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
	if d.h == nil {
		d.h = sha256.New()
	}
	return "sha256:" + hex.EncodeToString(d.h.Sum(nil))
}

// ABIDigest is the digest of the kernel ABI modules are built against:
// the headers' Module.symvers and include/config/auto.conf, and the
// compiler they name (CONFIG_CC_VERSION_TEXT).
func ABIDigest(buildDir string) (string, error) {
	k, err := ReadKernelABI(buildDir)
	return k.Digest, err
}

// KernelABI is a kernel's ABI as the cache checks it: its digest, and
// its Module.symvers, read once for both the key and the CRC check.
type KernelABI struct {
	Digest  string
	symvers []byte
}

// ReadKernelABI reads the headers in buildDir once.
func ReadKernelABI(buildDir string) (KernelABI, error) {
	var d Digester
	sym := filepath.Join(buildDir, "Module.symvers")
	data, err := os.ReadFile(sym)
	switch {
	case os.IsNotExist(err):
		d.Add("Module.symvers\x00absent", nil)
	case err != nil:
		return KernelABI{}, fmt.Errorf("digest %s: %w", sym, err)
	default:
		d.Add("Module.symvers", data)
	}
	auto := filepath.Join(buildDir, "include", "config", "auto.conf")
	autoData, err := os.ReadFile(auto)
	switch {
	case os.IsNotExist(err):
		d.Add("auto.conf\x00absent", nil)
	case err != nil:
		return KernelABI{}, fmt.Errorf("digest %s: %w", auto, err)
	default:
		d.Add("auto.conf", autoData)
	}
	d.Add("cc", []byte(compilerText(autoData)))
	return KernelABI{Digest: d.Sum(), symvers: data}, nil
}

// Symvers parses the Module.symvers read.
func (k KernelABI) Symvers() Symvers { return parseSymvers(k.symvers) }

// compilerText is CONFIG_CC_VERSION_TEXT from an auto.conf.
func compilerText(auto []byte) string {
	for _, line := range strings.Split(string(auto), "\n") {
		if v, ok := strings.CutPrefix(line, "CONFIG_CC_VERSION_TEXT="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}
