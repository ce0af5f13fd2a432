package lifecycle

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/dkmsd/dkmsd/lifecycle/cache"
	"github.com/dkmsd/dkmsd/tree"
)

// The build step's use of the fleet module cache (framework.conf's
// module_cache*): after the build dir is made and before kbuild runs, the
// build's key is looked up; a verified artifact is put in the build dir
// and stored as if built here; a miss, or any failure, builds here and
// says why, and a publishing machine pushes what it built.

// CacheMode is how a command's builds use the module cache.
type CacheMode int

const (
	// CacheUse looks every build up and publishes when
	// module_cache_publish=yes: builds from the CLI and the hooks.
	CacheUse CacheMode = iota
	// CachePullOnly (dkms cache pull) fails where CacheUse would build.
	CachePullOnly
	// CachePushOnly (dkms cache push) builds here without a look-up and
	// publishes whatever module_cache_publish says.
	CachePushOnly
)

// cacheState is the cache as the copies of one Env share it: opened
// once, and left alone for the rest of the run once it proved
// unreachable (a batch of modules costs one timeout, not one each).
type cacheState struct {
	mu     sync.Mutex
	opened bool
	store  *cache.Store
	trust  cache.Trust
	key    ed25519.PrivateKey
	// openErr, trustErr and keyErr are the settings that could not be
	// used; down is the reason the cache stopped being asked.
	openErr, trustErr, keyErr error
	down                      error
	// abis are the kernels' ABIs, read once per command however many
	// modules are built for a kernel.
	abis map[string]*kernelABI
}

// kernelABI is one kernel's ABI digest and, parsed on the first hit,
// its Module.symvers.
type kernelABI struct {
	read    sync.Once
	abi     cache.KernelABI
	err     error
	parse   sync.Once
	symvers cache.Symvers
}

// kernelABI reads the headers in buildDir once.
func (c *cacheState) kernelABI(buildDir string) (*kernelABI, error) {
	c.mu.Lock()
	if c.abis == nil {
		c.abis = map[string]*kernelABI{}
	}
	k, ok := c.abis[buildDir]
	if !ok {
		k = &kernelABI{}
		c.abis[buildDir] = k
	}
	c.mu.Unlock()
	k.read.Do(func() { k.abi, k.err = cache.ReadKernelABI(buildDir) })
	return k, k.err
}

// Symvers is the kernel's Module.symvers, parsed once.
func (k *kernelABI) Symvers() cache.Symvers {
	k.parse.Do(func() { k.symvers = k.abi.Symvers() })
	return k.symvers
}

// openCache opens framework.conf's cache, its trusted keys and its
// publishing key, once.
func (e *Env) openCache(ctx context.Context) *cacheState {
	c := e.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.opened {
		return c
	}
	c.opened = true
	s := e.Framework.Cache
	// The credentials are the calling user's, --root or not: the
	// operator's, not a relocated root's /root.
	c.store, c.openErr = cache.Open(ctx, s.URL, cache.Options{Timeout: s.Timeout, CredentialsFile: cache.DockerConfigFile(e.Environ)})
	c.trust, c.trustErr = cache.LoadTrust(s.Trust)
	if s.Key != "" {
		c.key, c.keyErr = cache.LoadPrivateKey(s.Key)
	} else {
		c.keyErr = errors.New("module_cache_key is not set")
	}
	return c
}

func (c *cacheState) isDown() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.down
}

func (c *cacheState) markDown(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.down == nil {
		c.down = err
	}
}

// cachedBuild is the verified artifact a hit put in the build dir.
type cachedBuild struct {
	artifact cache.Artifact
	// signed: the modules in the build dir carry the publisher's
	// Secure Boot signature (module_cache_signatures=publisher).
	signed bool
}

// cacheLookup is what the look-up decided for one build.
type cacheLookup struct {
	hit     bool
	key     cache.Key
	publish bool
	// err is a CachePullOnly build's miss.
	err error
	c   *cacheState
	// signed: the hit's modules keep the publisher's signature.
	signed bool
}

// signer is the signer a hit's modules are staged with: none when they
// keep the publisher's signature.
func (l cacheLookup) signer(local *signer) *signer {
	if l.signed {
		return nil
	}
	return local
}

// consultCache looks the build up before kbuild runs. On a hit the
// artifact's modules are in the build dir and r.cached is set.
func (e *Env) consultCache(ctx context.Context, r *buildRun, conf *tree.Conf, k buildKernel) cacheLookup {
	if e.Framework.Cache.URL == "" || e.cache == nil {
		if e.CacheMode != CacheUse {
			return cacheLookup{err: fail(KindCache, "No module cache is set (module_cache in framework.conf).")}
		}
		return cacheLookup{}
	}
	t := r.t
	c := e.openCache(ctx)
	l := cacheLookup{c: c}
	if c.openErr != nil {
		return e.cacheMissed(r, l, c.openErr)
	}
	key, err := e.cacheKey(r, c)
	if err != nil {
		return e.cacheMissed(r, l, err)
	}
	l.key = key
	l.publish = e.Framework.Cache.Publish || e.CacheMode == CachePushOnly
	if l.publish {
		r.capture = &cacheCapture{}
	}
	if e.CacheMode == CachePushOnly {
		return l
	}
	if down := c.isDown(); down != nil {
		return e.cacheMissed(r, l, fmt.Errorf("not asked again in this run: %w", down))
	}
	if c.trustErr != nil {
		return e.cacheMissed(r, l, c.trustErr)
	}
	start := time.Now()
	keep := e.Framework.Cache.KeepPublisherSignature
	a, err := c.store.PullFiles(ctx, key, c.trust, func(name string) bool { return keep || !strings.HasSuffix(name, cache.SignedSuffix) })
	if err == nil {
		err = e.useArtifact(r, conf, k, a, c)
	}
	if err != nil {
		if cache.Unreachable(err) && ctx.Err() == nil {
			c.markDown(err)
		}
		return e.cacheMissed(r, l, err)
	}
	l.hit, l.publish, l.signed = true, false, r.cached.signed
	r.capture = nil
	from := fmt.Sprintf("%s (key %s, published %s by key %s, fetched and verified in %.1fs)", c.store.URL, key.Digest(), a.Created, a.Publisher, time.Since(start).Seconds())
	e.Sink.Emit(Event{Type: CacheHit, Module: t.Module, Version: t.Version, Kernel: t.Kernel, Arch: t.Arch, Text: from})
	return l
}

// cacheMissed reports why the build does not come from the cache: a
// plain miss to the journal only; a refusal or a failing cache on stderr
// too, since a machine that should be pulling is compiling.
func (e *Env) cacheMissed(r *buildRun, l cacheLookup, err error) cacheLookup {
	t := r.t
	ev := Event{Type: CacheMiss, Module: t.Module, Version: t.Version, Kernel: t.Kernel, Arch: t.Arch}
	reason := "the module cache has no build for this key"
	if !errors.Is(err, cache.ErrMiss) {
		reason = err.Error()
		ev.Err = err
		if e.CacheMode == CacheUse {
			e.warn("dkmsd: module cache: not using it for %s: %s; building here.", t, reason)
		}
	}
	ev.Text = reason
	e.Sink.Emit(ev)
	fmt.Fprintf(r.log, "# dkmsd: not from the module cache %s: %s.\n\n", e.Framework.Cache.URL, reason)
	if e.CacheMode == CachePullOnly {
		l.err = fail(KindCache, fmt.Sprintf("Module %s was not pulled from the module cache %s:", t, e.Framework.Cache.URL), reason+".")
	}
	return l
}

// cacheKey is the build's key: the build dir as copied (source and
// /etc/dkms patch overrides), the dkms.conf in effect, the override
// scripts, directives and build environment; the kernel's ABI.
func (e *Env) cacheKey(r *buildRun, c *cacheState) (cache.Key, error) {
	t := r.t
	var d cache.Digester
	if err := d.AddTree("build", r.dir, "make.log"); err != nil {
		return cache.Key{}, err
	}
	if err := d.AddTree("etc", e.moduleConfDir(t.Module)); err != nil {
		return cache.Key{}, err
	}
	if err := d.AddFile("dkms.conf", e.confFile(t.Module, t.Version)); err != nil {
		return cache.Key{}, err
	}
	if f := e.Framework.BuildEnvironment; f != "" {
		if err := d.AddFile("build_environment", f); err != nil {
			return cache.Key{}, err
		}
	}
	d.Add("directives", []byte(strings.Join(e.Directives, "\n")))
	abi, err := c.kernelABI(e.Layout.KernelBuildDir(r.t.Kernel))
	if err != nil {
		return cache.Key{}, err
	}
	return cache.Key{Module: t.Module, Version: t.Version, Kernel: t.Kernel, Arch: t.Arch,
		Source: d.Sum(), ABI: abi.abi.Digest, Recipe: cache.Recipe}, nil
}

// useArtifact checks a pulled artifact against this machine's headers
// and the dkms.conf, then writes its modules where kbuild would have
// left them, and says in make.log where they came from.
func (e *Env) useArtifact(r *buildRun, conf *tree.Conf, k buildKernel, a cache.Artifact, c *cacheState) error {
	files := map[string][]byte{}
	for _, f := range a.Files {
		files[f.Name] = f.Data
	}
	// The Module.symvers the key's ABI digest was taken of.
	abi, err := c.kernelABI(e.Layout.KernelBuildDir(r.t.Kernel))
	if err != nil {
		return fmt.Errorf("read this kernel's Module.symvers: %w", err)
	}
	symvers := abi.Symvers()
	keep := e.Framework.Cache.KeepPublisherSignature
	cb := &cachedBuild{artifact: a, signed: keep}
	type placed struct {
		path string
		data []byte
	}
	var out []placed
	for _, m := range conf.Buildable() {
		name := m.DestName + ".ko"
		ko, ok := files[name]
		if !ok {
			return &cache.Refusal{Reason: fmt.Sprintf("the artifact has no %s", name)}
		}
		if err := cache.CheckModule(name, ko, r.t.Kernel, symvers); err != nil {
			return err
		}
		if keep {
			signed, ok := files[name+cache.SignedSuffix]
			if !ok {
				return &cache.Refusal{Reason: fmt.Sprintf("module_cache_signatures=publisher, but the artifact has no signed %s", name)}
			}
			// The signed copy must be the checked module plus an
			// appended signature, nothing else.
			if len(signed) <= len(ko) || string(signed[:len(ko)]) != string(ko) {
				return &cache.Refusal{Reason: fmt.Sprintf("the signed %s is not the unsigned module with a signature appended", name)}
			}
			ko = signed
		}
		out = append(out, placed{filepath.Join(r.dir, m.BuiltLocation, m.BuiltName+".ko"), ko})
	}
	if sym, ok := files["Module.symvers"]; ok {
		out = append(out, placed{filepath.Join(r.dir, "Module.symvers"), sym})
	}
	for _, p := range out {
		if err := os.MkdirAll(filepath.Dir(p.path), 0o755); err != nil {
			return diskError(p.path, err)
		}
		if err := os.WriteFile(p.path, p.data, 0o644); err != nil {
			return diskError(p.path, err)
		}
	}
	r.cached = cb
	e.info("")
	e.info("Building module:")
	e.info("Using the build of %s from the module cache %s; nothing is compiled.", r.t, e.Framework.Cache.URL)
	fmt.Fprintf(r.log, "# dkmsd: not built here. The modules come from the module cache %s:\n#   key %s\n#   published %s, manifest signed by trusted key %s\n#   verified: signature, blob digests, vermagic and symbol CRCs against %s\n",
		e.Framework.Cache.URL, a.Key.Digest(), a.Created, a.Publisher, e.Layout.KernelBuildDir(r.t.Kernel))
	return nil
}

// cacheCapture collects the files a publishing build pushes: each
// module as stripped, before signing and compression, and its signed
// copy.
type cacheCapture struct{ files []cache.File }

// stageHooks adjust stageModules for the cache: a hit's modules are not
// stripped again (the publisher did; it would break a kept signature),
// and a publishing build keeps copies.
type stageHooks struct {
	noStrip bool
	capture *cacheCapture
}

func (r *buildRun) hooks() stageHooks {
	return stageHooks{noStrip: r.cached != nil, capture: r.capture}
}

func (h stageHooks) keep(name, file string) error {
	if h.capture == nil {
		return nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("keep %s for the module cache: %w", file, err)
	}
	h.capture.files = append(h.capture.files, cache.File{Name: name, Data: data})
	return nil
}

// publish pushes a build that was made here, when this machine
// publishes. A failure is reported and fails only dkms cache push, not
// a build.
func (e *Env) publish(ctx context.Context, r *buildRun, l cacheLookup) error {
	if !l.publish || l.c == nil || r.capture == nil {
		return nil
	}
	t := r.t
	ev := Event{Type: CachePublished, Module: t.Module, Version: t.Version, Kernel: t.Kernel, Arch: t.Arch}
	err := l.c.keyErr
	if err == nil {
		files := r.capture.files
		sym := filepath.Join(e.Layout.BuiltDir(t.Module, t.Version, t.Kernel, t.Arch), "module", "Module.symvers")
		if data, rerr := os.ReadFile(sym); rerr == nil {
			files = append(files, cache.File{Name: "Module.symvers", Data: data})
		}
		err = l.c.store.Push(ctx, cache.Artifact{Key: l.key, Files: files}, l.c.key)
	}
	if err != nil {
		ev.Err = err
		ev.Text = err.Error()
		e.warn("dkmsd: module cache: %s was not published to %s: %v", t, e.Framework.Cache.URL, err)
	} else {
		ev.Text = fmt.Sprintf("%s (key %s)", e.Framework.Cache.URL, l.key.Digest())
	}
	e.Sink.Emit(ev)
	if err != nil && e.CacheMode == CachePushOnly {
		return fail(KindCache, fmt.Sprintf("Module %s was built but not published to the module cache %s:", t, e.Framework.Cache.URL), err.Error())
	}
	return nil
}
