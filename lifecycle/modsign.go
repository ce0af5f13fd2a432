package lifecycle

import (
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"syscall"
)

// inProcessSigner appends to a module what the kernel's scripts/sign-file
// appends, byte for byte, without a process per module: a sign-file run
// is some 20 ms of CPU, nearly all of it exec, dynamic linking and
// OpenSSL's start, and a module cache pull of 23 modules ran 23. It
// takes what sign-file takes by default: an unencrypted PEM RSA key and
// its X.509 certificate (DER or PEM); anything else (a PKCS#11 URI, an
// encrypted key, another key type, another tool) is left to the tool.
type inProcessSigner struct {
	key     *rsa.PrivateKey
	cert    *x509.Certificate
	hash    crypto.Hash
	hashOID asn1.ObjectIdentifier
}

// The digests sign-file is given by CONFIG_MODULE_SIG_HASH.
var signHashes = map[string]struct {
	h   crypto.Hash
	oid asn1.ObjectIdentifier
}{
	"sha1":   {crypto.SHA1, asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}},
	"sha224": {crypto.SHA224, asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 4}},
	"sha256": {crypto.SHA256, asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}},
	"sha384": {crypto.SHA384, asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}},
	"sha512": {crypto.SHA512, asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}},
}

// newInProcessSigner loads the pair, or says why the tool must run.
func newInProcessSigner(hash, keyFile, certFile string) (*inProcessSigner, error) {
	h, ok := signHashes[hash]
	if !ok || !h.h.Available() {
		return nil, fmt.Errorf("digest %q", hash)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	var key *rsa.PrivateKey
	for rest := keyPEM; key == nil; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return nil, fmt.Errorf("%s holds no unencrypted RSA private key", keyFile)
		}
		switch b.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, err
			}
			if key, ok = k.(*rsa.PrivateKey); !ok {
				return nil, fmt.Errorf("%s is not an RSA key", keyFile)
			}
		case "RSA PRIVATE KEY":
			if key, err = x509.ParsePKCS1PrivateKey(b.Bytes); err != nil {
				return nil, err
			}
		}
	}
	certData, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	// DER, or the first certificate of a PEM file (which may hold the
	// key too, as the kernel's signing_key.pem does).
	for rest := certData; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			certData = b.Bytes
			break
		}
	}
	cert, err := x509.ParseCertificate(certData)
	if err != nil {
		return nil, err
	}
	// sign-file refuses a certificate that is not the key's.
	if pub, ok := cert.PublicKey.(*rsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return nil, errors.New("the certificate is not the key's")
	}
	s := &inProcessSigner{key: key, cert: cert, hash: h.h, hashOID: h.oid}
	// A digest this build of Go refuses to sign with (a FIPS 140 mode
	// without sha1) is the tool's.
	if _, err := s.signature(nil); err != nil {
		return nil, err
	}
	return s, nil
}

// The CMS SignedData sign-file writes (CMS_NOCERTS, CMS_NOATTR, detached
// content, issuer and serial as the signer's id, the digest algorithm
// without parameters).
type (
	cmsAlgorithm struct {
		Algorithm  asn1.ObjectIdentifier
		Parameters asn1.RawValue `asn1:"optional"`
	}
	cmsIssuerAndSerial struct {
		Issuer asn1.RawValue
		Serial *big.Int
	}
	cmsSignerInfo struct {
		Version            int
		SignerID           cmsIssuerAndSerial
		DigestAlgorithm    cmsAlgorithm
		SignatureAlgorithm cmsAlgorithm
		Signature          []byte
	}
	cmsSignedData struct {
		Version          int
		DigestAlgorithms []cmsAlgorithm `asn1:"set"`
		ContentInfo      struct{ ContentType asn1.ObjectIdentifier }
		SignerInfos      []cmsSignerInfo `asn1:"set"`
	}
	cmsContentInfo struct {
		ContentType asn1.ObjectIdentifier
		Content     cmsSignedData `asn1:"explicit,tag:0"`
	}
)

var (
	oidSignedData    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidData          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidRSAEncryption = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
)

// moduleSigMagic ends a signed module; before it is struct
// module_signature (id_type PKEY_ID_PKCS7, the signature's length big
// endian).
const moduleSigMagic = "~Module signature appended~\n"

// signature is what sign-file appends to module.
func (s *inProcessSigner) signature(module []byte) ([]byte, error) {
	h := s.hash.New()
	h.Write(module)
	sig, err := rsa.SignPKCS1v15(nil, s.key, s.hash, h.Sum(nil))
	if err != nil {
		return nil, err
	}
	digestAlg := cmsAlgorithm{Algorithm: s.hashOID}
	ci := cmsContentInfo{ContentType: oidSignedData, Content: cmsSignedData{
		Version:          1,
		DigestAlgorithms: []cmsAlgorithm{digestAlg},
		SignerInfos: []cmsSignerInfo{{
			Version:            1,
			SignerID:           cmsIssuerAndSerial{asn1.RawValue{FullBytes: s.cert.RawIssuer}, s.cert.SerialNumber},
			DigestAlgorithm:    digestAlg,
			SignatureAlgorithm: cmsAlgorithm{Algorithm: oidRSAEncryption, Parameters: asn1.NullRawValue},
			Signature:          sig,
		}},
	}}
	ci.Content.ContentInfo.ContentType = oidData
	der, err := asn1.Marshal(ci)
	if err != nil {
		return nil, err
	}
	var info [12]byte
	info[2] = 2 // PKEY_ID_PKCS7
	binary.BigEndian.PutUint32(info[8:], uint32(len(der)))
	return append(append(der, info[:]...), moduleSigMagic...), nil
}

// sign appends the signature to the module file ko, as sign-file does.
// A link is not followed: the build dir may be a sandboxed build's.
func (s *inProcessSigner) sign(ko string) error {
	f, err := os.OpenFile(ko, os.O_RDWR|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	sig, err := s.signature(data)
	if err != nil {
		return fmt.Errorf("sign %s: %w", filepath.Base(ko), err)
	}
	if _, err := f.Write(sig); err != nil {
		return err
	}
	return f.Close()
}
