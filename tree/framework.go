package tree

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"
)

// frameworkNames are the settings read from framework.conf and
// framework.conf.d/*.conf.
var frameworkNames = []string{
	"source_tree", "dkms_tree", "install_tree", "tmp_location",
	"verbose", "symlink_modules", "autoinstall_all_kernels", "modprobe_on_install",
	"parallel_jobs", "compress_gzip_opts", "compress_xz_opts", "compress_zstd_opts",
	"post_transaction", "sign_file", "mok_signing_key", "mok_certificate",
	"try_sign_modules", "build_environment",
	"initrd_strategy", "initrd_tool", "tarball_max_size", "hook_fail_on_error",
	"hook_lock_timeout", "build_timeout", "build_memory_per_job",
	"module_cache", "module_cache_publish", "module_cache_trust", "module_cache_key",
	"module_cache_timeout", "module_cache_signatures",
	"distribution",
	"verify_initrd",
	"build_sandbox", "build_user",
}

// envFrameworkNames may also come from the environment, as with dkms
// (its test suite exports parallel_jobs).
var envFrameworkNames = []string{
	"parallel_jobs", "modprobe_on_install", "post_transaction", "sign_file",
	"mok_signing_key", "mok_certificate", "autoinstall_all_kernels",
	"try_sign_modules", "build_environment",
}

// compressDefaults are dkms 3.4.3's compress_*_opts, set before
// framework.conf is read (so the environment cannot give them, and a file
// may extend them: compress_xz_opts="$compress_xz_opts -9"). xz's CRC32
// and 1 MiB dictionary are what the kernel's own decompressor reads.
var compressDefaults = map[string]string{
	"compress_gzip_opts": "",
	"compress_xz_opts":   "--check=crc32 --lzma2=dict=1MiB",
	"compress_zstd_opts": "-q --rm -T0",
}

// DefaultBuildTimeout bounds a build when framework.conf does not: long
// enough for zfs or nvidia on a slow machine, short enough that a build
// hanging under a package manager ends.
const DefaultBuildTimeout = 2 * time.Hour

// Framework is the evaluated framework configuration. Empty means unset.
type Framework struct {
	SourceTree, DKMSTree, InstallTree, TmpLocation string

	Verbose               bool
	SymlinkModules        bool
	AutoinstallAllKernels bool
	ModprobeOnInstall     bool
	// ParallelJobs is 0 when unset (then: the number of CPUs).
	ParallelJobs int

	// CompressGzipOpts, CompressXzOpts and CompressZstdOpts are the
	// options gzip, xz and zstd compress modules with (compressDefaults
	// unless framework.conf says otherwise).
	CompressGzipOpts, CompressXzOpts, CompressZstdOpts string
	// PostTransaction is the command run after a command that changed
	// the install tree (see lifecycle.PostTransaction).
	PostTransaction                         string
	SignFile, MOKSigningKey, MOKCertificate string
	// TrySignModules is "true", "false" or "not_in_chroot" (also what any
	// other value means).
	TrySignModules string
	// BuildEnvironment is a file whose exported variables builds run
	// with.
	BuildEnvironment string
	// InitrdStrategy is "append" (default) or "rewrite"; InitrdTool is
	// "dkmsd" (default), "update-initramfs", "dracut" or "none".
	InitrdStrategy, InitrdTool string
	// TarballLimit is tarball_max_size: how many bytes a tarball may
	// expand to (0: dkmsd's default).
	TarballLimit int64
	// HookFailOnError is hook_fail_on_error: "yes" makes a module that
	// fails to build fail the package manager's transaction.
	HookFailOnError string
	// HookLockTimeout is hook_lock_timeout: how long a package-manager
	// hook waits for the tree lock before it leaves its kernel pending
	// (0: dkmsd's default).
	HookLockTimeout time.Duration
	// BuildTimeout is build_timeout: how long one module's build for one
	// kernel may take before its processes are killed (0: no limit;
	// DefaultBuildTimeout when unset).
	BuildTimeout time.Duration
	// BuildMemoryPerJob is build_memory_per_job: the memory one build job
	// (one compiler) needs, in MiB, when framework.conf gives a size; 0
	// for "auto" (unset): learned from the builds dkmsd has seen.
	// NoMemoryBudget is build_memory_per_job=0: the job budget counts
	// CPUs only.
	BuildMemoryPerJob int
	NoMemoryBudget    bool
	// Cache is the fleet module cache's settings (module_cache*).
	Cache CacheSettings
	// Distribution replaces the family read from os-release (a row of
	// the distribution defaults: "ubuntu", "arch", "fedora", …).
	Distribution string
	// VerifyInitrd is verify_initrd: "yes" ends a hook's kernel
	// transaction with dkms verify of the kernels it installed modules
	// for.
	VerifyInitrd bool
	// BuildSandbox is build_sandbox: auto (""), bwrap, user or none;
	// BuildUser is build_user, the user builds run as.
	BuildSandbox, BuildUser string

	// Files are the files read, in order.
	Files []string
	// Unused are the settings given that have no effect, for a warning.
	Unused []UnusedSetting
}

// ReadFramework evaluates <confDir>/framework.conf and then
// <confDir>/framework.conf.d/*.conf in name order, later files winning.
// kernel is $kernelver for settings such as sign_file that use it ("" when
// no kernel is in play).
func ReadFramework(ctx context.Context, confDir, kernel string, env []string, stderr io.Writer) (Framework, error) {
	files := []string{filepath.Join(confDir, "framework.conf")}
	extra, _ := filepath.Glob(filepath.Join(confDir, "framework.conf.d", "*.conf"))
	sort.Strings(extra)
	files = append(files, extra...)

	vals := map[string]Value{}
	for _, name := range envFrameworkNames {
		if v, ok := os.LookupEnv(name); ok {
			vals[name] = Value{Elems: map[int]string{0: v}}
		}
	}
	for name, v := range compressDefaults {
		vals[name] = Value{Elems: map[int]string{0: v}}
	}
	var fw Framework
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		ev := shellEval{
			Vars:    map[string]string{"kernelver": kernel},
			Env:     env,
			Stderr:  stderr,
			Timeout: 10 * time.Second,
			Prelude: vals,
		}
		res, err := ev.run(ctx, f, src, frameworkNames)
		if err != nil {
			return Framework{}, err
		}
		fw.Unused = append(fw.Unused, unusedIn(f, res)...)
		vals = res.Values
		fw.Files = append(fw.Files, f)
	}
	get := func(n string) string { return vals[n].Scalar() }
	fw.SourceTree, fw.DKMSTree, fw.InstallTree, fw.TmpLocation = get("source_tree"), get("dkms_tree"), get("install_tree"), get("tmp_location")
	fw.Verbose = get("verbose") != ""
	fw.SymlinkModules = get("symlink_modules") != ""
	fw.AutoinstallAllKernels = get("autoinstall_all_kernels") != ""
	fw.ModprobeOnInstall = get("modprobe_on_install") != ""
	if n, err := strconv.Atoi(get("parallel_jobs")); err == nil && n > 0 {
		fw.ParallelJobs = n
	}
	fw.CompressGzipOpts, fw.CompressXzOpts, fw.CompressZstdOpts = get("compress_gzip_opts"), get("compress_xz_opts"), get("compress_zstd_opts")
	fw.PostTransaction = get("post_transaction")
	fw.SignFile, fw.MOKSigningKey, fw.MOKCertificate = get("sign_file"), get("mok_signing_key"), get("mok_certificate")
	fw.TrySignModules, fw.BuildEnvironment = get("try_sign_modules"), get("build_environment")
	fw.InitrdStrategy, fw.InitrdTool = get("initrd_strategy"), get("initrd_tool")
	fw.HookFailOnError = get("hook_fail_on_error")
	if n, err := strconv.ParseInt(get("tarball_max_size"), 10, 64); err == nil && n > 0 {
		fw.TarballLimit = n
	}
	if n, err := strconv.Atoi(get("hook_lock_timeout")); err == nil && n > 0 {
		fw.HookLockTimeout = time.Duration(n) * time.Second
	}
	fw.BuildTimeout = DefaultBuildTimeout
	if n, err := strconv.Atoi(get("build_timeout")); err == nil && n >= 0 {
		fw.BuildTimeout = time.Duration(n) * time.Second
	}
	fw.VerifyInitrd = get("verify_initrd") == "yes"
	switch n, err := strconv.Atoi(get("build_memory_per_job")); {
	case err == nil && n == 0:
		fw.NoMemoryBudget = true
	case err == nil && n > 0:
		fw.BuildMemoryPerJob = n
	}
	fw.Cache = readCacheSettings(get)
	fw.Distribution = get("distribution")
	fw.BuildSandbox, fw.BuildUser = get("build_sandbox"), get("build_user")
	return fw, nil
}

// Apply moves the layout's trees where the framework configuration says,
// under the layout's root.
func (fw Framework) Apply(l Layout) Layout {
	if fw.DKMSTree != "" {
		l.DKMSTree = l.Root + fw.DKMSTree
	}
	if fw.SourceTree != "" {
		l.SourceTree = l.Root + fw.SourceTree
	}
	if fw.InstallTree != "" {
		l.InstallTree = l.Root + fw.InstallTree
	}
	if fw.TmpLocation != "" {
		l.TmpDir = fw.TmpLocation
	}
	return l
}
