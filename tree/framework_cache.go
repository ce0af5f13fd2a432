package tree

import (
	"strconv"
	"time"
)

// CacheSettings are framework.conf's module_cache* settings: the fleet
// module cache builds consult (lifecycle/cache).
type CacheSettings struct {
	// URL is module_cache: oci://host[:port]/repo or file:///dir; ""
	// means no cache.
	URL string
	// Publish is module_cache_publish=yes: this machine (a build host)
	// pushes what it builds.
	Publish bool
	// Trust is module_cache_trust: a file, or a dir of files, of the
	// publishers' ed25519 public keys or certificates.
	Trust string
	// Key is module_cache_key: the ed25519 private key a publishing
	// machine signs manifests with.
	Key string
	// Timeout is module_cache_timeout in seconds (0: the cache's
	// default).
	Timeout time.Duration
	// KeepPublisherSignature is module_cache_signatures=publisher: a
	// pulled module keeps the Secure Boot signature the build host gave
	// it (the fleet enrolled the build host's key); the default, "local",
	// installs the unsigned module and signs it as this machine signs
	// its own builds.
	KeepPublisherSignature bool
}

func readCacheSettings(get func(string) string) CacheSettings {
	c := CacheSettings{URL: get("module_cache"), Trust: get("module_cache_trust"), Key: get("module_cache_key")}
	c.Publish = get("module_cache_publish") == "yes"
	c.KeepPublisherSignature = get("module_cache_signatures") == "publisher"
	if n, err := strconv.Atoi(get("module_cache_timeout")); err == nil && n > 0 {
		c.Timeout = time.Duration(n) * time.Second
	}
	return c
}
