package cache

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/user"
	"path/filepath"
	"strings"
	"sync/atomic"

	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/errcode"
)

// DockerConfigFile is the docker config file a registry's credentials
// are read from, as docker finds it: $DOCKER_CONFIG/config.json, else
// $HOME/.docker/config.json, else the same under the user's home in the
// password database (a systemd service without User= has no $HOME).
// environ is the process's environment (KEY=VALUE).
func DockerConfigFile(environ []string) string {
	get := func(k string) string {
		for i := len(environ) - 1; i >= 0; i-- {
			if v, ok := strings.CutPrefix(environ[i], k+"="); ok {
				return v
			}
		}
		return ""
	}
	if d := get("DOCKER_CONFIG"); d != "" {
		return filepath.Join(d, "config.json")
	}
	home := get("HOME")
	if home == "" {
		if u, err := user.Current(); err == nil {
			home = u.HomeDir
		}
	}
	if home == "" {
		home = "/root" // no passwd entry: dkmsd runs as root
	}
	return filepath.Join(home, ".docker", "config.json")
}

// registryCredentials reads the credentials for a registry from file
// (its "auths" entries, or the credential helpers it names), remembering
// whether any were found: a refusal then says which of "none there" and
// "refused" it was.
type registryCredentials struct {
	file  string
	store credentials.Store
	// found: 0 not asked yet, 1 none for the host, 2 some.
	found atomic.Int32
}

func newRegistryCredentials(file string) (*registryCredentials, error) {
	store, err := credentials.NewStore(file, credentials.StoreOptions{})
	if err != nil {
		return nil, fmt.Errorf("read the registry credentials from %s: %w", file, err)
	}
	return &registryCredentials{file: file, store: store}, nil
}

// get is the auth.Client's credential function.
func (rc *registryCredentials) get(ctx context.Context, host string) (auth.Credential, error) {
	c, err := credentials.Credential(rc.store)(ctx, host)
	if err != nil {
		return c, fmt.Errorf("read the credentials for %s from %s: %w", host, rc.file, err)
	}
	if c == auth.EmptyCredential {
		rc.found.Store(1)
	} else {
		rc.found.Store(2)
	}
	return c, nil
}

// AccessRefused is a registry that answered 401 or 403: no credentials,
// wrong ones, or an account without the right to the repository.
type AccessRefused struct {
	Host, File string
	// Status is the HTTP status (0 when the client gave up for want of
	// credentials before sending any).
	Status int
	// Found: the config file had credentials for the host.
	Found bool
	Err   error
}

func (a *AccessRefused) Error() string {
	what := "refused access (unauthorized)"
	if a.Status == http.StatusForbidden {
		what = "denied access (forbidden)"
	}
	if !a.Found {
		return fmt.Sprintf("the registry %s %s: %s has no credentials for %s (docker login %s, or set DOCKER_CONFIG)", a.Host, what, a.File, a.Host, a.Host)
	}
	if a.Status == http.StatusForbidden {
		return fmt.Sprintf("the registry %s %s to the account whose credentials are in %s", a.Host, what, a.File)
	}
	return fmt.Sprintf("the registry %s %s: it does not accept the credentials for %s in %s", a.Host, what, a.Host, a.File)
}

func (a *AccessRefused) Unwrap() error { return a.Err }

// accessRefused words err when it is the registry refusing access, and
// is nil otherwise.
func (rc *registryCredentials) accessRefused(host string, err error) *AccessRefused {
	if rc == nil {
		return nil
	}
	var resp *errcode.ErrorResponse
	switch {
	case errors.Is(err, auth.ErrBasicCredentialNotFound):
		return &AccessRefused{Host: host, File: rc.file, Status: http.StatusUnauthorized, Err: err}
	case errors.As(err, &resp) && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden):
		return &AccessRefused{Host: host, File: rc.file, Status: resp.StatusCode, Found: rc.found.Load() == 2, Err: err}
	}
	return nil
}
