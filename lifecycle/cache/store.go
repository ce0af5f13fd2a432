package cache

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content/oci"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
)

// DefaultTimeout bounds each exchange with the cache when framework.conf
// does not: a registry that is down or never answers costs at most this,
// never a hung package manager.
const DefaultTimeout = 3 * time.Second

// MaxTimeout is the most module_cache_timeout may ask for.
const MaxTimeout = 60 * time.Second

// backend is what a cache is kept in: an OCI registry repository or an
// OCI image layout dir, both oras targets that list their tags.
type backend interface {
	oras.Target
	registry.TagLister
}

// Store is one module cache.
type Store struct {
	URL     string
	b       backend
	timeout time.Duration
	// host and creds are a registry's address and credentials (nil for
	// a file:// cache).
	host  string
	creds *registryCredentials
}

// Options are how a Store talks to its backend.
type Options struct {
	// Timeout bounds each step (a lookup, one blob); 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// CredentialsFile is the docker/OCI config file with the registry's
	// credentials; "" means DockerConfigFile(os.Environ()).
	CredentialsFile string
}

// Open opens the cache a module_cache= URL names: oci://host[:port]/repo
// or file:///dir. A registry on a loopback address is spoken to over
// plain HTTP (as docker does), any other over HTTPS.
func Open(ctx context.Context, rawURL string, o Options) (*Store, error) {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	s := &Store{URL: rawURL, timeout: min(o.Timeout, MaxTimeout)}
	switch {
	case strings.HasPrefix(rawURL, "file://"):
		dir := strings.TrimPrefix(rawURL, "file://")
		if !strings.HasPrefix(dir, "/") {
			return nil, fmt.Errorf("module_cache=%s: a file:// cache needs an absolute path", rawURL)
		}
		st, err := oci.NewWithContext(ctx, dir)
		if err != nil {
			return nil, fmt.Errorf("open module cache %s: %w", rawURL, err)
		}
		s.b = st
	case strings.HasPrefix(rawURL, "oci://"):
		file := o.CredentialsFile
		if file == "" {
			file = DockerConfigFile(os.Environ())
		}
		creds, err := newRegistryCredentials(file)
		if err != nil {
			return nil, fmt.Errorf("module_cache=%s: %w", rawURL, err)
		}
		repo, err := remoteRepo(strings.TrimPrefix(rawURL, "oci://"), s.timeout, creds)
		if err != nil {
			return nil, fmt.Errorf("module_cache=%s: %w", rawURL, err)
		}
		s.b, s.host, s.creds = repo, repo.Reference.Registry, creds
	default:
		return nil, fmt.Errorf("module_cache=%s: not an oci:// or file:// URL", rawURL)
	}
	return s, nil
}

// remoteRepo is a registry repository whose HTTP exchanges are bounded:
// a dial, a TLS handshake and the wait for response headers each end
// after timeout, and nothing is retried.
func remoteRepo(ref string, timeout time.Duration, creds *registryCredentials) (*remote.Repository, error) {
	repo, err := remote.NewRepository(ref)
	if err != nil {
		return nil, err
	}
	host := repo.Reference.Host()
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		repo.PlainHTTP = true
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: timeout}).DialContext
	tr.TLSHandshakeTimeout = timeout
	tr.ResponseHeaderTimeout = timeout
	client := &auth.Client{Client: &http.Client{Transport: tr}, Cache: auth.NewCache()}
	client.SetUserAgent("dkmsd")
	client.Credential = creds.get
	// A plain transport, not oras's retry.Client: a registry that is down
	// must cost one timeout, not a retry policy's backoff.
	repo.Client = client
	return repo, nil
}

// step bounds one exchange with the backend.
func (s *Store) step(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, s.timeout, noAnswer{s.URL, s.timeout})
}

// noAnswer is a cache that did not answer in time: the step's deadline,
// or the transport's wait for response headers, whichever came first.
type noAnswer struct {
	url     string
	timeout time.Duration
}

func (n noAnswer) Error() string {
	return fmt.Sprintf("the module cache %s did not answer within %s", n.url, n.timeout)
}
func (noAnswer) Timeout() bool   { return true }
func (noAnswer) Temporary() bool { return true }

// failed words a step's failure: a timeout, of either kind, says the
// cache did not answer; a 401 or 403 says whose credentials, from which
// file, the registry refused.
func (s *Store) failed(ctx context.Context, what string, err error) error {
	if a := s.creds.accessRefused(s.host, err); a != nil {
		return fmt.Errorf("%s: %w", what, a)
	}
	var ne net.Error
	if ctx.Err() != nil || (errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Errorf("%s: %w (%v)", what, noAnswer{s.URL, s.timeout}, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Unreachable reports whether err means the cache could not be spoken to
// (down, refusing the connection or the credentials, never answering):
// the caller stops asking it for the rest of its run.
func Unreachable(err error) bool {
	var ne net.Error
	var oe *net.OpError
	var ue *url.Error
	var ar *AccessRefused
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ar) || errors.As(err, &oe) || (errors.As(err, &ne) && ne.Timeout()) ||
		(errors.As(err, &ue) && !errors.Is(err, context.Canceled))
}
