package main

// The fleet module cache behind a registry that wants credentials (HTTP
// basic auth from an htpasswd file): dkmsd reads them from the calling
// user's docker config file ($DOCKER_CONFIG/config.json, else
// $HOME/.docker/config.json); without them, or with a wrong password, a
// root builds here and says the registry refused it and which file was
// read.

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

func TestCacheRegistryCredentials(t *testing.T) {
	const user, password = "fleet", "s3cret-fleet"
	f := newCacheFleetOn(t, func(tb testing.TB) (string, string) { return testkit.RegistryWithAuth(tb, user, password) })
	url := "oci://" + f.registry + "/fleet/modules"

	// The build host's credentials are where $DOCKER_CONFIG points.
	host := f.root(t, f.conf(url, f.trust, "module_cache_publish=yes", "module_cache_key="+f.key))
	f.withEnv(host, "DOCKER_CONFIG="+filepath.Dir(testkit.DockerConfig(t, t.TempDir(), f.registry, user, password)))
	r := f.mustDkms(t, host, "install", cacheModule+"/"+cacheVersion, "-k", f.kernel)
	if f.execs(t) == 0 {
		t.Fatalf("the build host ran no make or compiler through the wrappers: the count proves nothing\n%s", r.Out)
	}
	if strings.Contains(r.Stderr, "module cache") {
		t.Fatalf("the build host with the registry's credentials did not publish cleanly:\n%s", r.Stderr)
	}
	wantListed(t, f, host)

	t.Run("credentials in HOME/.docker pull", func(t *testing.T) {
		root := f.root(t, f.conf(url, f.trust))
		testkit.DockerConfig(t, filepath.Join(root, ".docker"), f.registry, user, password) // HOME=root
		before := f.execs(t)
		r := f.mustDkms(t, root, "install", cacheModule+"/"+cacheVersion, "-k", f.kernel)
		if n := f.execs(t) - before; n != 0 {
			t.Errorf("a root with the credentials ran make or a compiler %d times\n%s", n, r.Out)
		}
		if _, log := f.built(t, root); !strings.Contains(log, "not built here. The modules come from the module cache "+url) {
			t.Errorf("make.log does not say the modules came from the cache:\n%s", log)
		}
		wantListed(t, f, root)
	})

	refused := func(file string) string {
		return fmt.Sprintf("the registry %s refused access (unauthorized): %s has no credentials for %s", f.registry, file, f.registry)
	}
	rejected := func(file string) string {
		return fmt.Sprintf("the registry %s refused access (unauthorized): it does not accept the credentials for %s in %s", f.registry, f.registry, file)
	}
	t.Run("refused", func(t *testing.T) {
		t.Run("no credentials", func(t *testing.T) {
			t.Parallel()
			root := f.root(t, f.conf(url, f.trust))
			why := refused(filepath.Join(root, ".docker/config.json"))
			wantLsRefused(t, f, root, why)
			f.wantLocalBuild(t, root, why)
		})
		t.Run("wrong password", func(t *testing.T) {
			t.Parallel()
			root := f.root(t, f.conf(url, f.trust))
			file := testkit.DockerConfig(t, t.TempDir(), f.registry, user, "not-"+password)
			f.withEnv(root, "DOCKER_CONFIG="+filepath.Dir(file))
			why := rejected(file)
			wantLsRefused(t, f, root, why)
			f.wantLocalBuild(t, root, why)
		})
	})
}

// withEnv adds environment to the dkms commands run on root.
func (f *cacheFleet) withEnv(root string, kv ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rootEnv[root] = append(f.rootEnv[root], kv...)
}

// wantListed: dkms cache ls on root lists the one published build.
func wantListed(t *testing.T, f *cacheFleet, root string) {
	t.Helper()
	ls, _ := f.dkms(t, root, "cache", "ls")
	want := fmt.Sprintf("%s/%s, %s, x86_64: signed, published ", cacheModule, cacheVersion, f.kernel)
	if ls.Code != 0 || !strings.HasPrefix(ls.Stdout, want) || strings.Count(ls.Stdout, "\n") != 1 || ls.Stderr != "" {
		t.Errorf("dkms cache ls: exit %d\nstdout:\n%s\nstderr:\n%s\nwant exit 0 and one line starting %q", ls.Code, ls.Stdout, ls.Stderr, want)
	}
}

// wantLsRefused: dkms cache ls on root fails (exit 1), saying why, and
// lists nothing.
func wantLsRefused(t *testing.T, f *cacheFleet, root, why string) {
	t.Helper()
	ls, _ := f.dkms(t, root, "cache", "ls")
	if ls.Code != 1 || ls.Stdout != "" || !strings.Contains(ls.Stderr, why) {
		t.Errorf("dkms cache ls: exit %d\nstdout:\n%s\nstderr:\n%s\nwant exit 1 saying %q", ls.Code, ls.Stdout, ls.Stderr, why)
	}
	t.Logf("dkms cache ls without usable credentials: exit %d, stderr:\n%s", ls.Code, ls.Stderr)
}
