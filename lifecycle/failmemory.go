package lifecycle

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dkmsd/dkmsd/tree"
	"github.com/dkmsd/dkmsd/tree/atomicfile"
)

// A FailureRecord remembers a build that failed in a package-manager hook,
// with a digest of what the build depended on: the module's source and
// overrides, its dkms.conf, the kernel's headers, the compiler and the
// installed versions of its BUILD_DEPENDS. While that digest is the same,
// hooks do not rebuild it (a 20-minute build that fails at every kernel
// upgrade), and say it is still failing.
type FailureRecord struct {
	Target
	Since  time.Time `json:"since"`
	Inputs string    `json:"inputs"`
	Code   int       `json:"exit_code"`
	Reason string    `json:"reason"`
	Log    string    `json:"log"`
}

// Notice is how a still-failing module is reported: what, since when,
// where the log is and how to retry.
func (r FailureRecord) Notice() string {
	return fmt.Sprintf("dkmsd: %s/%s has failed to build for %s (%s) since %s and is not rebuilt until its source, dkms.conf, the kernel headers, the compiler or its BUILD_DEPENDS change; log: %s; to retry now: dkms install -m %s -v %s -k %s",
		r.Module, r.Version, r.Kernel, r.Arch, r.Since.UTC().Format("2006-01-02 15:04:05 UTC"), r.Log, r.Module, r.Version, r.Kernel)
}

// failureRecordPath is where the record of t lives, beside its kept log.
func (e *Env) failureRecordPath(t Target) string {
	return strings.TrimSuffix(e.failedLog(t), ".log") + ".failure"
}

// FailureRecords are the records under the tree for module/version (""
// for any) on kernel ("" for any).
func FailureRecords(e *Env, module, version, kernel string) []FailureRecord {
	files, _ := filepath.Glob(filepath.Join(e.Layout.StateDir(), "failed", "*.failure"))
	var out []FailureRecord
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var r FailureRecord
		if json.Unmarshal(data, &r) != nil {
			continue
		}
		if (module == "" || r.Module == module) && (version == "" || r.Version == version) && (kernel == "" || r.Kernel == kernel) {
			out = append(out, r)
		}
	}
	return out
}

// knownFailure returns t's record if it exists and nothing it depends on
// has changed since.
func (e *Env) knownFailure(t Target, deps []string) (FailureRecord, bool) {
	r, ok := e.failureRecord(t)
	if !ok || r.Inputs != e.failureInputs(t, deps) {
		return FailureRecord{}, false
	}
	return r, true
}

// recordFailure remembers a failed build of t. A record is a hint: a
// failed write only means the next hook builds again.
func (e *Env) recordFailure(t Target, deps []string, err error, log string) {
	if !isBuildFailure(err) {
		return
	}
	r := FailureRecord{Target: t, Since: time.Now(), Inputs: e.failureInputs(t, deps), Code: ExitCode(err), Reason: exitReason(err), Log: log}
	if old, ok := e.failureRecord(t); ok {
		r.Since = old.Since // failing since the first time, whatever changed
	}
	data, _ := json.MarshalIndent(r, "", "  ")
	p := e.failureRecordPath(t)
	if os.MkdirAll(filepath.Dir(p), 0o755) == nil {
		_ = atomicfile.Write(p, append(data, '\n'), 0o644, "")
	}
}

// failureRecord reads t's record, whatever has changed since.
func (e *Env) failureRecord(t Target) (FailureRecord, bool) {
	data, err := os.ReadFile(e.failureRecordPath(t))
	if err != nil {
		return FailureRecord{}, false
	}
	var r FailureRecord
	return r, json.Unmarshal(data, &r) == nil
}

// forgetFailure drops t's record: it built, was removed, or a user asked
// for the build.
func (e *Env) forgetFailure(t Target) { os.Remove(e.failureRecordPath(t)) }

// isBuildFailure: the failures worth remembering are the module's own —
// its patches, scripts, make (hung past build_timeout too), or the modules
// it should have made. Missing headers, a full disk or a signing key are
// the machine's, and retried.
func isBuildFailure(err error) bool {
	switch KindOf(err) {
	case KindPatchMissing, KindPatchFailed, KindBuildFailed, KindNoModuleBuilt, KindScriptFailed, KindBuildTimeout:
		return true
	}
	return false
}

// failureInputs digests what a build of t depends on. File identity is
// path, size, mode and modification time: a package upgrade or an edit
// changes them, and reading them costs no more than a directory walk.
func (e *Env) failureInputs(t Target, deps []string) string {
	h := sha256.New()
	fmt.Fprintf(h, "target %s/%s/%s/%s\n", t.Module, t.Version, t.Kernel, t.Arch)
	vdir := e.Layout.VersionDir(t.Module, t.Version)
	hashTree(h, "source", filepath.Join(vdir, "source"))
	hashTree(h, "overrides", e.moduleConfDir(t.Module))
	hashFile(h, "dkms.conf", e.confFile(t.Module, t.Version))
	k := e.buildKernel(t.Kernel)
	for _, f := range []string{"Module.symvers", ".config", "include/generated/utsrelease.h"} {
		hashFile(h, "headers "+f, filepath.Join(e.Layout.KernelBuildDir(t.Kernel), f))
	}
	fmt.Fprintf(h, "compiler %s\n", e.compilerIdentity(k))
	for _, d := range deps {
		fmt.Fprintf(h, "build-depends %s=%s\n", d, e.Layout.InstalledVersion(d, t.Kernel, t.Arch))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// compilerIdentity is the compiler a build of k runs, as found in the
// build's PATH: the kernel's own (CONFIG_CC_VERSION_TEXT) or kbuild's
// default gcc, with its resolved path, size and time.
func (e *Env) compilerIdentity(k buildKernel) string {
	cc, _, _ := strings.Cut(k.Config["CONFIG_CC_VERSION_TEXT"], " ")
	if cc == "" {
		cc = "gcc"
	}
	path := lookPathIn(cc, e.buildEnviron())
	if !strings.Contains(path, "/") {
		return cc + " (not found)"
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return cc + " " + path + " (unreadable)"
	}
	fi, err := os.Stat(real)
	if err != nil {
		return cc + " " + real + " (unreadable)"
	}
	return fmt.Sprintf("%s %s -> %s %d %d", cc, path, real, fi.Size(), fi.ModTime().UnixNano())
}

func hashTree(h interface{ Write([]byte) (int, error) }, label, root string) {
	// The source dir is a link into the source tree: follow it.
	if real, err := filepath.EvalSymlinks(root); err == nil {
		root = real
	}
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			fmt.Fprintf(h, "%s %s error\n", label, p)
			return nil
		}
		if p == root {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		fmt.Fprintf(h, "%s %s %o %d %d\n", label, rel, fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		return nil
	})
}

func hashFile(h interface{ Write([]byte) (int, error) }, label, path string) {
	fi, err := os.Stat(path)
	if err != nil {
		fmt.Fprintf(h, "%s absent\n", label)
		return
	}
	fmt.Fprintf(h, "%s %d %d\n", label, fi.Size(), fi.ModTime().UnixNano())
}

// failureStatusNotices are the stderr notices `dkms status` adds for mv:
// the hook-recorded failures on the kernels it lists.
func (e *Env) failureStatusNotices(mv tree.ModuleVersion, kernelGlob, archGlob string) []string {
	var out []string
	for _, r := range FailureRecords(e, mv.Name, mv.Version, "") {
		if ok, _ := filepath.Match(orStar(kernelGlob), r.Kernel); !ok {
			continue
		}
		if ok, _ := filepath.Match(orStar(archGlob), r.Arch); !ok {
			continue
		}
		out = append(out, r.Notice())
	}
	return out
}

func orStar(glob string) string {
	if glob == "" {
		return "*"
	}
	return glob
}

// settleKnownFailures settles the jobs whose last build failed in a hook
// with the same inputs: failed again, without building, with a notice.
func (e *Env) settleKnownFailures(jobs []*job) {
	for _, j := range jobs {
		if j.settled != nil {
			continue
		}
		r, ok := e.knownFailure(j.Target, j.deps)
		if !ok {
			continue
		}
		e.warn("%s", r.Notice())
		err := &Error{Kind: KindStillFailing, Code: r.Code, Lines: []string{"still failing since " + r.Since.UTC().Format("2006-01-02 15:04:05 UTC")}}
		j.settled = &JobResult{Target: j.Target, Outcome: OutcomeFailed, Err: err, Reason: r.Reason, Log: r.Log}
	}
}

// recordFailures remembers the builds of jobs that failed.
func (e *Env) recordFailures(jobs []*job, sum *Summary) {
	deps := map[Target][]string{}
	for _, j := range jobs {
		deps[j.Target] = j.deps
	}
	for _, r := range sum.Results {
		if r.Outcome == OutcomeFailed && isBuildFailure(r.Err) {
			e.recordFailure(r.Target, deps[r.Target], r.Err, r.Log)
		}
	}
}
