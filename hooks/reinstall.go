package hooks

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"strings"
	"time"

	"github.com/dkmsd/dkmsd/lifecycle"
)

// reinstall marks a kernel whose package is being upgraded in place (a
// new package revision at the same ABI, or apt's --reinstall): the next
// Add for it rebuilds its modules if the image it installs differs from
// the one there now.
func reinstall(env *lifecycle.Env, req Request) Result {
	built, err := env.Layout.ModuleVersions("", "")
	if err != nil {
		warn(env, "dkmsd: %v", err)
		return Result{}
	}
	hasBuild := false
	for _, mv := range built {
		if len(env.Layout.Builds(mv.Name, mv.Version, req.Kernel, req.Arch)) > 0 {
			hasBuild = true
			break
		}
	}
	if !hasBuild {
		return Result{Skipped: "nothing built for this kernel"}
	}
	st := newState(env)
	st.markReinstall(req.Kernel, req.Image)
	st.forgetDone(req.Kernel)
	info(env, "dkmsd: kernel %s is being reinstalled: its DKMS modules will be rebuilt when it is configured, if its image changed.", req.Kernel)
	return Result{}
}

// The reinstall record holds the time, the digest of the image being
// replaced and its path; a record without a digest (no image given, or
// unreadable) always rebuilds.
func (s state) markReinstall(kernel, image string) {
	digest := imageDigest(image)
	if digest == "" {
		image = ""
	}
	s.write(s.path("reinstall", kernel), []byte(strings.TrimSpace(time.Now().Format(time.RFC3339)+" "+digest+" "+image)+"\n"))
}

// replacedImage says whether kernel was reinstalled with an image other
// than the one it had, and forgets the record: a reinstall of the same
// package revision keeps what is built, as dkms's own hooks do. A hook
// that is given no image (the headers' header_postinst, which dpkg may
// configure before the image) looks at the path the preinst was given:
// the new image is unpacked by then.
func (s state) replacedImage(env *lifecycle.Env, kernel, image string) bool {
	data, err := os.ReadFile(s.path("reinstall", kernel))
	if err != nil {
		return false
	}
	s.clearReinstall(kernel)
	fields := strings.Fields(string(data))
	if len(fields) < 3 {
		return true
	}
	if image == "" {
		image = fields[2]
	}
	if fields[1] != imageDigest(image) {
		return true
	}
	info(env, "dkmsd: kernel %s was reinstalled with the same image: its DKMS modules are kept.", kernel)
	return false
}

func (s state) clearReinstall(kernel string) { os.Remove(s.path("reinstall", kernel)) }

// imageDigest is the SHA-256 of a kernel image, "" if it cannot be read.
func imageDigest(path string) string {
	if path == "" {
		return ""
	}
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}
