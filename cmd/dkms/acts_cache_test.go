package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// The module cache's framework.conf settings join keyCases here, so the
// scenario table stays one list without this feature growing its file.
func init() { keyCases = append(keyCases, cacheKeyCases...) }

// cacheKeyCases: what shows each module_cache* setting acting. Those
// that need a build publish to a file:// cache in the root.
var cacheKeyCases = []actsCase{{
	name: "module_cache",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b := s.root(t)
		if with {
			writeFramework(t, b, "module_cache=file://"+b.path("cache"))
		}
		r := b.run(t, "cache", "ls")
		return exitOf(r) + "\n" + r.Stdout + r.Stderr
	},
	want: "exit 0",
}, {
	name: "module_cache_timeout",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b := s.root(t)
		lines := []string{"module_cache=oci://" + testkit.SilentListener(t) + "/x"}
		if with {
			lines = append(lines, "module_cache_timeout=1")
		}
		writeFramework(t, b, lines...)
		r := b.run(t, "cache", "ls")
		return exitOf(r) + "\n" + r.Stderr
	},
	want: "did not answer within 1s",
}, {
	name: "module_cache_trust",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// A trust file without a key is refused, never read as "trust
		// nothing".
		b := s.root(t)
		b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
		lines := []string{"module_cache=file://" + b.path("cache")}
		if with {
			lines = append(lines, "module_cache_trust="+b.path("etc/dkms/framework.conf"))
		}
		writeFramework(t, b, lines...)
		r := b.run(t, "cache", "pull", "dkmsd_hello/1.0", "-k", b.kernels[0])
		return exitOf(r) + "\n" + r.Stderr
	},
	want: "holds no ed25519 public key",
}, {
	name: "module_cache_publish",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		b, _ := cacheBuildHost(t, s, with, true)
		r := b.run(t, "cache", "ls")
		return fmt.Sprintf("%d artifact(s)", strings.Count(r.Stdout, "\n"))
	},
	want: "1 artifact(s)",
}, {
	name: "module_cache_key",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		_, r := cacheBuildHost(t, s, true, with)
		return r.Stderr
	},
	want: "", // with it: nothing to say; without: why nothing was published
}, {
	name: "module_cache_signatures",
	run: func(t *testing.T, s *actsSetup, with bool) string {
		// A second machine pulls the build host's module: with
		// "publisher" it keeps the build host's Secure Boot signature,
		// else it is signed with the machine's own key.
		host, _ := cacheBuildHost(t, s, true, true)
		b := s.root(t)
		b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
		// This machine's own MOK, not the batch roots' shared one.
		key, cert := b.path("mok.key"), b.path("mok.pub")
		if out, err := exec.Command("openssl", "req", "-new", "-x509", "-nodes", "-days", "1", "-subj", "/CN=dkmsd fleet machine",
			"-newkey", "rsa:2048", "-keyout", key, "-outform", "DER", "-out", cert).CombinedOutput(); err != nil {
			t.Fatalf("openssl: %v: %s", err, out)
		}
		lines := []string{"module_cache=file://" + host.path("cache"), "module_cache_trust=" + host.path("publisher.pub"),
			"mok_signing_key=" + key, "mok_certificate=" + cert}
		if with {
			lines = append(lines, "module_cache_signatures=publisher")
		}
		writeFramework(t, b, lines...)
		if r := b.run(t, "build", "dkmsd_hello/1.0", "-k", b.kernels[0]); r.Code != 0 || !strings.Contains(r.Stdout, "from the module cache") {
			t.Fatalf("build from the cache: exit %d\n%s", r.Code, r.Out)
		}
		mine, theirs := builtHello(t, b), builtHello(t, host)
		if bytes.Equal(mine, theirs) {
			return "the build host's signature"
		}
		return "signed here"
	},
	want: "the build host's signature",
}}

// cacheBuildHost builds dkmsd_hello on a fresh root that publishes (or
// not) to a file:// cache in it, signing with publisher.key (if key).
func cacheBuildHost(t *testing.T, s *actsSetup, publish, key bool) (*batchRoot, testkit.Result) {
	t.Helper()
	b := s.root(t)
	b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
	pub, priv := writeKeyPair(t, b.root, "publisher")
	lines := []string{"module_cache=file://" + b.path("cache"), "module_cache_trust=" + pub}
	if publish {
		lines = append(lines, "module_cache_publish=yes")
	}
	if key {
		lines = append(lines, "module_cache_key="+priv)
	}
	writeFramework(t, b, lines...)
	r := b.run(t, "build", "dkmsd_hello/1.0", "-k", b.kernels[0])
	if r.Code != 0 {
		t.Fatalf("build: exit %d\n%s", r.Code, r.Out)
	}
	return b, r
}

// builtHello is dkmsd_hello's built module file in b's tree.
func builtHello(t *testing.T, b *batchRoot) []byte {
	t.Helper()
	files, _ := filepath.Glob(b.path("var/lib/dkms/dkmsd_hello/1.0", b.kernels[0], "*/module/dkmsd_hello.ko*"))
	if len(files) != 1 {
		t.Fatalf("built modules: %q", files)
	}
	data, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	return data
}
