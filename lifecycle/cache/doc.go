// Package cache is the fleet module cache: built modules stored under a
// key that says exactly when a build can be reused, in an OCI registry
// (oci://host[:port]/repo, through oras-go) or an OCI image layout on disk
// (file:///dir), as one signed artifact per key.
//
//	s, _ := cache.Open(ctx, "oci://registry.example:5000/dkms", cache.Options{Timeout: 3 * time.Second})
//	key := cache.Key{Module: "hello", Version: "1.0", Kernel: kver, Arch: "x86_64",
//		Source: srcDigest, ABI: abiDigest, Recipe: cache.Recipe}
//	_ = s.Push(ctx, cache.Artifact{Key: key, Files: files}, privateKey)
//	a, err := s.Pull(ctx, key, trusted) // a *Refusal says why it was not used
//
// A pulled artifact has passed the manifest's signature (a trusted
// ed25519 key over the digest of its config, which names every file's
// digest and the key) and every blob's digest; CheckModule then holds a
// module against this machine's headers (vermagic, symbol CRCs).
package cache
