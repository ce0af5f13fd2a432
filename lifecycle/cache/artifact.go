package cache

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/errdef"
)

// Media types and annotations of a module artifact.
const (
	ArtifactType    = "application/vnd.dkmsd.module.v1"
	ConfigMediaType = "application/vnd.dkmsd.module.config.v1+json"
	FileMediaType   = "application/vnd.dkmsd.module.file.v1"
	// AnnotationSignature is the base64 ed25519 signature, by the
	// publisher, of the config blob's digest string; AnnotationPublisher
	// is the publisher's base64 public key.
	AnnotationSignature = "dev.dkmsd.signature"
	AnnotationPublisher = "dev.dkmsd.publisher"
	annotationKey       = "dev.dkmsd.key"
)

// File is one file of an artifact: a module (unsigned, uncompressed), its
// publisher-signed copy (Name + SignedSuffix), or the build's
// Module.symvers.
type File struct {
	Name string
	Data []byte
}

// maxManifest bounds the unsigned manifest a look-up reads.
const maxManifest = 1 << 20

// SignedSuffix marks the publisher's Secure Boot-signed copy of a module.
const SignedSuffix = ".signed"

// Artifact is one build in the cache.
type Artifact struct {
	Key   Key
	Files []File
	// Publisher is the fingerprint of the key that signed it (on Pull).
	Publisher string
	// Created is when it was published.
	Created string
}

// config is the artifact's config blob: what the signature covers.
type config struct {
	Key   Key               `json:"key"`
	Files map[string]string `json:"files"` // name -> digest
}

// Refusal is an artifact found but not used, with the reason.
type Refusal struct{ Reason string }

func (r *Refusal) Error() string { return r.Reason }

// ErrMiss: the cache holds nothing under the key.
var ErrMiss = errors.New("no artifact under this key")

// Push stores a, signed with priv, under its key's tag.
func (s *Store) Push(ctx context.Context, a Artifact, priv ed25519.PrivateKey) error {
	cfg := config{Key: a.Key, Files: map[string]string{}}
	var layers []ocispec.Descriptor
	for _, f := range a.Files {
		d := content.NewDescriptorFromBytes(FileMediaType, f.Data)
		d.Annotations = map[string]string{ocispec.AnnotationTitle: f.Name}
		if err := s.pushBlob(ctx, d, f.Data); err != nil {
			return err
		}
		cfg.Files[f.Name] = d.Digest.String()
		layers = append(layers, d)
	}
	cfgData, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	cfgDesc := content.NewDescriptorFromBytes(ConfigMediaType, cfgData)
	if err := s.pushBlob(ctx, cfgDesc, cfgData); err != nil {
		return err
	}
	ann := map[string]string{
		annotationKey:                 a.Key.String(),
		ocispec.AnnotationCreated:     time.Now().UTC().Format(time.RFC3339),
		AnnotationPublisher:           base64.StdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey)),
		AnnotationSignature:           base64.StdEncoding.EncodeToString(ed25519.Sign(priv, []byte(cfgDesc.Digest.String()))),
		"dev.dkmsd.module":            a.Key.Module,
		"dev.dkmsd.version":           a.Key.Version,
		"dev.dkmsd.kernel":            a.Key.Kernel,
		"dev.dkmsd.arch":              a.Key.Arch,
		ocispec.AnnotationDescription: "dkms module " + a.Key.String(),
	}
	ctx, cancel := s.step(ctx)
	defer cancel()
	desc, err := oras.PackManifest(ctx, s.b, oras.PackManifestVersion1_1, ArtifactType, oras.PackManifestOptions{
		Layers: layers, ConfigDescriptor: &cfgDesc, ManifestAnnotations: ann,
	})
	if err != nil {
		return s.failed(ctx, fmt.Sprintf("push the manifest of %s to %s", a.Key, s.URL), err)
	}
	if err := s.b.Tag(ctx, desc, a.Key.Tag()); err != nil {
		return s.failed(ctx, fmt.Sprintf("tag %s in %s", a.Key, s.URL), err)
	}
	return nil
}

func (s *Store) pushBlob(ctx context.Context, d ocispec.Descriptor, data []byte) error {
	ctx, cancel := s.step(ctx)
	defer cancel()
	if ok, err := s.b.Exists(ctx, d); err == nil && ok {
		return nil
	}
	if err := s.b.Push(ctx, d, bytes.NewReader(data)); err != nil && !errors.Is(err, errdef.ErrAlreadyExists) {
		return s.failed(ctx, fmt.Sprintf("push %s to %s", d.Digest, s.URL), err)
	}
	return nil
}

// fetch reads one blob, checking its size and digest.
func (s *Store) fetch(ctx context.Context, d ocispec.Descriptor) ([]byte, error) {
	ctx, cancel := s.step(ctx)
	defer cancel()
	data, err := content.FetchAll(ctx, s.b, d)
	if err != nil {
		if errors.Is(err, content.ErrMismatchedDigest) || errors.Is(err, content.ErrTrailingData) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, &Refusal{Reason: fmt.Sprintf("blob %s does not match its digest (tampered or damaged): %v", d.Digest, err)}
		}
		return nil, s.failed(ctx, fmt.Sprintf("fetch %s from %s", d.Digest, s.URL), err)
	}
	return data, nil
}

// Pull looks key up and returns its artifact once the manifest's
// signature is by a trusted key, the config is the key asked for, and
// every blob matches its digest. Not there is ErrMiss; there but not to
// be used is a *Refusal; anything else is the backend failing.
func (s *Store) Pull(ctx context.Context, key Key, trust Trust) (Artifact, error) {
	return s.PullFiles(ctx, key, trust, nil)
}

// PullFiles is Pull fetching only the files want names (all when want is
// nil): a machine that signs modules itself needs no publisher-signed
// copies. Every file's name and digest is still checked against the
// signed config.
func (s *Store) PullFiles(ctx context.Context, key Key, trust Trust, want func(name string) bool) (Artifact, error) {
	rctx, cancel := s.step(ctx)
	desc, err := s.b.Resolve(rctx, key.Tag())
	defer cancel()
	if errors.Is(err, errdef.ErrNotFound) {
		return Artifact{}, ErrMiss
	}
	if err != nil {
		return Artifact{}, s.failed(rctx, fmt.Sprintf("look %s up in %s", key, s.URL), err)
	}
	// The manifest is read before its signature can be checked: bound it.
	if desc.Size > maxManifest {
		return Artifact{}, &Refusal{Reason: fmt.Sprintf("the manifest of %s is %d bytes, more than a module artifact's", key, desc.Size)}
	}
	raw, err := s.fetch(ctx, desc)
	if err != nil {
		return Artifact{}, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return Artifact{}, &Refusal{Reason: fmt.Sprintf("the manifest of %s is not an OCI manifest: %v", key, err)}
	}
	pub, err := checkSignature(m, trust)
	if err != nil {
		return Artifact{}, err
	}
	cfgData, err := s.fetch(ctx, m.Config)
	if err != nil {
		return Artifact{}, err
	}
	var cfg config
	if err := json.Unmarshal(cfgData, &cfg); err != nil {
		return Artifact{}, &Refusal{Reason: fmt.Sprintf("the config of %s is not readable: %v", key, err)}
	}
	if cfg.Key != key {
		return Artifact{}, &Refusal{Reason: fmt.Sprintf("the artifact tagged for %s was published for another key (%s)", key, cfg.Key.Digest())}
	}
	a := Artifact{Key: key, Publisher: Fingerprint(pub), Created: m.Annotations[ocispec.AnnotationCreated]}
	listed := map[string]bool{}
	for _, l := range m.Layers {
		name := l.Annotations[ocispec.AnnotationTitle]
		if cfg.Files[name] != l.Digest.String() {
			return Artifact{}, &Refusal{Reason: fmt.Sprintf("file %q of %s is not the one its signed config names", name, key)}
		}
		listed[name] = true
		if want != nil && !want(name) {
			continue
		}
		data, err := s.fetch(ctx, l)
		if err != nil {
			return Artifact{}, err
		}
		a.Files = append(a.Files, File{Name: name, Data: data})
	}
	if len(listed) != len(cfg.Files) {
		return Artifact{}, &Refusal{Reason: fmt.Sprintf("the manifest of %s lacks files its signed config names", key)}
	}
	return a, nil
}

// checkSignature returns the publisher's key when the manifest's
// signature over its config digest is valid and by a trusted key.
func checkSignature(m ocispec.Manifest, trust Trust) (ed25519.PublicKey, error) {
	sig, pubText := m.Annotations[AnnotationSignature], m.Annotations[AnnotationPublisher]
	if sig == "" || pubText == "" {
		return nil, &Refusal{Reason: "the manifest is not signed"}
	}
	pubBytes, err1 := base64.StdEncoding.DecodeString(pubText)
	sigBytes, err2 := base64.StdEncoding.DecodeString(sig)
	if err1 != nil || err2 != nil || len(pubBytes) != ed25519.PublicKeySize {
		return nil, &Refusal{Reason: "the manifest's signature is malformed"}
	}
	pub := ed25519.PublicKey(pubBytes)
	if !trust.Has(pub) {
		return nil, &Refusal{Reason: fmt.Sprintf("the manifest is signed by key %s, which module_cache_trust does not list", Fingerprint(pub))}
	}
	if !ed25519.Verify(pub, []byte(m.Config.Digest.String()), sigBytes) {
		return nil, &Refusal{Reason: fmt.Sprintf("the manifest's signature by key %s does not verify", Fingerprint(pub))}
	}
	return pub, nil
}

// Entry is one artifact a cache lists.
type Entry struct {
	Tag                           string
	Module, Version, Kernel, Arch string
	Created                       string
	Signed                        bool
}

// List reads every artifact's manifest, sorted by module, version,
// kernel.
func (s *Store) List(ctx context.Context) ([]Entry, error) {
	var tags []string
	lctx, cancel := s.step(ctx)
	err := s.b.Tags(lctx, "", func(t []string) error { tags = append(tags, t...); return nil })
	defer cancel()
	if errors.Is(err, errdef.ErrNotFound) {
		return nil, nil // a repository nothing was pushed to yet
	}
	if err != nil {
		return nil, s.failed(lctx, "list "+s.URL, err)
	}
	var out []Entry
	for _, t := range tags {
		rctx, cancel := s.step(ctx)
		desc, err := s.b.Resolve(rctx, t)
		if err != nil {
			err = s.failed(rctx, fmt.Sprintf("resolve %s in %s", t, s.URL), err)
		}
		cancel()
		if err != nil {
			return nil, err
		}
		raw, err := s.fetch(ctx, desc)
		if err != nil {
			return nil, err
		}
		var m ocispec.Manifest
		if json.Unmarshal(raw, &m) != nil || m.ArtifactType != ArtifactType {
			continue
		}
		a := m.Annotations
		out = append(out, Entry{Tag: t, Module: a["dev.dkmsd.module"], Version: a["dev.dkmsd.version"], Kernel: a["dev.dkmsd.kernel"],
			Arch: a["dev.dkmsd.arch"], Created: a[ocispec.AnnotationCreated], Signed: a[AnnotationSignature] != ""})
	}
	sort.Slice(out, func(i, j int) bool {
		x, y := out[i], out[j]
		if x.Module != y.Module {
			return x.Module < y.Module
		}
		if x.Version != y.Version {
			return x.Version < y.Version
		}
		return x.Kernel < y.Kernel
	})
	return out, nil
}
