// Package secureboot finds out whether the running kernel trusts a module
// signing certificate, and whether it refuses modules it does not trust:
//
//	st, err := secureboot.Probe{Root: ""}.Check(ctx, "/var/lib/dkms/mok.pub")
//	if err == nil && st.Known && !st.Enrolled && st.Enforced {
//		// modules signed with that key will not load: mokutil --import it
//	}
//
// Trust is read from the keys the kernel lists in /proc/keys (the
// .builtin_trusted_keys, .secondary_trusted_keys, .machine and .platform
// keyrings' X.509 keys, each described as "<subject>: <key id>"), or asked
// of `mokutil --test-key` on an EFI machine. Enforcement is the firmware's
// SecureBoot variable (what `mokutil --sb-state` reads) or the kernel's
// module.sig_enforce.
package secureboot

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// SecureBootVar is the EFI global variable holding the Secure Boot state
// (4 bytes of attributes, then 1 when on).
const SecureBootVar = "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-e0a9e5b9d08e"

// State is what the kernel makes of a certificate.
type State struct {
	// Known: the keyrings could be read (or mokutil answered); Enrolled
	// means nothing otherwise.
	Known, Enrolled bool
	// Enforced: Secure Boot is on or module.sig_enforce=Y, so a module
	// signed by an untrusted key is refused.
	Enforced bool
	// How names what answered ("/proc/keys", "mokutil --test-key").
	How string
}

// Probe reads the machine under Root ("" for this one: only then is
// mokutil, which asks the firmware, run).
type Probe struct {
	Root string
	// Mokutil is mokutil's path ("" when it is not installed).
	Mokutil string
}

// Check reports the state of the certificate at cert (DER or PEM).
func (p Probe) Check(ctx context.Context, cert string) (State, error) {
	ids, err := CertIDs(cert)
	if err != nil {
		return State{}, err
	}
	st := State{Enforced: p.enforced()}
	if data, err := os.ReadFile(filepath.Join(p.Root, "/proc/keys")); err == nil {
		st.Known, st.How = true, "/proc/keys"
		st.Enrolled = Trusted(string(data), ids)
	}
	if !st.Enrolled && p.Root == "" && p.Mokutil != "" && exists("/sys/firmware/efi") {
		out, _ := exec.CommandContext(ctx, p.Mokutil, "--test-key", cert).CombinedOutput()
		switch {
		case bytes.Contains(out, []byte("is already enrolled")):
			st.Known, st.Enrolled, st.How = true, true, "mokutil --test-key"
		case bytes.Contains(out, []byte("is not enrolled")):
			st.Known, st.How = true, "mokutil --test-key"
		}
	}
	return st, nil
}

// enforced reads the SecureBoot variable and module.sig_enforce.
func (p Probe) enforced() bool {
	if v, err := os.ReadFile(filepath.Join(p.Root, SecureBootVar)); err == nil && len(v) >= 5 && v[4] == 1 {
		return true
	}
	v, _ := os.ReadFile(filepath.Join(p.Root, "sys/module/module/parameters/sig_enforce"))
	return strings.TrimSpace(string(v)) == "Y"
}

// CertIDs are the key ids the kernel may describe a certificate's key by,
// in lower-case hex: its subject key identifier, and its serial number
// (what the kernel uses when the certificate has no SKID), with and
// without DER's leading zero byte.
func CertIDs(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if b, _ := pem.Decode(data); b != nil {
		data = b.Bytes
	}
	c, err := x509.ParseCertificate(data)
	if err != nil {
		return nil, fmt.Errorf("read certificate %s: %w", path, err)
	}
	var ids []string
	if len(c.SubjectKeyId) > 0 {
		ids = append(ids, hex.EncodeToString(c.SubjectKeyId))
	}
	serial := c.SerialNumber.Bytes()
	ids = append(ids, hex.EncodeToString(serial))
	if len(serial) > 0 && serial[0]&0x80 != 0 {
		ids = append(ids, "00"+hex.EncodeToString(serial))
	}
	return ids, nil
}

// Trusted reports whether /proc/keys (its text) lists an X.509 key with
// one of ids. Each such line's description is "<subject>: <id>" followed
// by ": X509.<algo> …"; the keys the kernel trusts for modules are the
// only asymmetric keys on a machine that has not added its own.
func Trusted(procKeys string, ids []string) bool {
	for _, line := range strings.Split(procKeys, "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || !strings.HasPrefix(f[7], "asymmetri") {
			continue
		}
		desc := strings.ToLower(strings.Join(f[8:], " "))
		for _, id := range ids {
			if strings.Contains(desc, ": "+id+":") || strings.HasSuffix(desc, ": "+id) {
				return true
			}
		}
	}
	return false
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
