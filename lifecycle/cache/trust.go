package cache

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// Trust is the set of publisher keys whose signatures this machine
// accepts.
type Trust struct {
	keys map[string]ed25519.PublicKey // by Fingerprint
}

// Fingerprint names a public key: the first 16 bytes of its sha256, in
// hex.
func Fingerprint(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:16])
}

// Has reports whether pub is trusted.
func (t Trust) Has(pub ed25519.PublicKey) bool {
	k, ok := t.keys[Fingerprint(pub)]
	return ok && k.Equal(pub)
}

// Len is the number of trusted keys.
func (t Trust) Len() int { return len(t.keys) }

// LoadTrust reads the trusted publisher keys from a file, or from every
// file of a dir: PEM ed25519 public keys ("PUBLIC KEY") or X.509
// certificates whose key is ed25519. A file with no such key is an error:
// a typo must not turn into "trust nothing" silently.
func LoadTrust(path string) (Trust, error) {
	t := Trust{keys: map[string]ed25519.PublicKey{}}
	if path == "" {
		return t, nil
	}
	files := []string{path}
	if fi, err := os.Stat(path); err != nil {
		return t, fmt.Errorf("module_cache_trust: %w", err)
	} else if fi.IsDir() {
		entries, err := os.ReadDir(path)
		if err != nil {
			return t, fmt.Errorf("module_cache_trust: %w", err)
		}
		files = files[:0]
		for _, e := range entries {
			if e.Type().IsRegular() {
				files = append(files, filepath.Join(path, e.Name()))
			}
		}
		sort.Strings(files)
	}
	for _, f := range files {
		keys, err := publicKeys(f)
		if err != nil {
			return t, err
		}
		for _, k := range keys {
			t.keys[Fingerprint(k)] = k
		}
	}
	return t, nil
}

// publicKeys are the ed25519 keys of one PEM file.
func publicKeys(file string) ([]ed25519.PublicKey, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("module_cache_trust: %w", err)
	}
	var keys []ed25519.PublicKey
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		var pub any
		switch b.Type {
		case "PUBLIC KEY":
			pub, err = x509.ParsePKIXPublicKey(b.Bytes)
		case "CERTIFICATE":
			var c *x509.Certificate
			if c, err = x509.ParseCertificate(b.Bytes); err == nil {
				pub = c.PublicKey
			}
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("module_cache_trust: %s: %w", file, err)
		}
		if k, ok := pub.(ed25519.PublicKey); ok {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("module_cache_trust: %s holds no ed25519 public key or certificate", file)
	}
	return keys, nil
}

// LoadPrivateKey reads the publishing key: a PEM PKCS#8 ed25519 private
// key (openssl genpkey -algorithm ed25519).
func LoadPrivateKey(file string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("module_cache_key: %w", err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("module_cache_key: %s is not a PEM private key", file)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("module_cache_key: %s: %w", file, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("module_cache_key: %s is not an ed25519 key", file)
	}
	return priv, nil
}
