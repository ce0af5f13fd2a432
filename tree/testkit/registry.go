package testkit

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Registry starts Debian's docker-registry (the CNCF distribution
// registry) on 127.0.0.1 at a free port, its storage in a temp dir, and
// stops it when the test ends. It returns host:port and the storage dir
// (blobs are under docker/registry/v2/blobs/sha256/).
func Registry(tb testing.TB) (addr, storage string) {
	tb.Helper()
	return startRegistry(tb, "", "")
}

// RegistryWithAuth starts docker-registry as Registry does, refusing
// every request without user's password: HTTP basic auth checked against
// an htpasswd file (bcrypt, the only hash the registry takes), over plain
// HTTP on loopback. Put the credentials where a client looks with
// DockerConfig.
func RegistryWithAuth(tb testing.TB, user, password string) (addr, storage string) {
	tb.Helper()
	return startRegistry(tb, user, password)
}

// DockerConfig writes dir/config.json, a docker config file holding user
// and password for the registry at host:port (the "auths" entry docker
// login writes), and returns its path.
func DockerConfig(tb testing.TB, dir, host, user, password string) string {
	tb.Helper()
	cfg := map[string]any{"auths": map[string]any{host: map[string]string{
		"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + password))}}}
	data, err := json.Marshal(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	file := filepath.Join(dir, "config.json")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		tb.Fatal(err)
	}
	return file
}

// startRegistry starts the registry; a user means basic auth.
func startRegistry(tb testing.TB, user, password string) (addr, storage string) {
	tb.Helper()
	bin := RequireTool(tb, "docker-registry", "docker-registry")
	dir := tb.TempDir()
	storage = filepath.Join(dir, "storage")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr = l.Addr().String()
	l.Close()
	cfg := filepath.Join(dir, "config.yml")
	text := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n", storage, addr)
	if user != "" {
		// The lowest cost bcrypt allows: the registry checks the hash on
		// every request.
		hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
		if err != nil {
			tb.Fatal(err)
		}
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(user+":"+string(hash)+"\n"), 0o600); err != nil {
			tb.Fatal(err)
		}
		text += fmt.Sprintf("auth:\n  htpasswd:\n    realm: dkmsd-test\n    path: %s\n", htpasswd)
	}
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", cfg)
	logFile, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		tb.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start docker-registry: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	// Ready when /v2/ answers (with the credentials, when it wants
	// them); the registry binds within a second.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v2/", nil)
		if user != "" {
			req.SetBasicAuth(user, password)
		}
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return addr, storage
			}
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(logFile.Name())
			tb.Fatalf("docker-registry exited: %v\n%s", err, log)
		case <-ctx.Done():
			tb.Fatalf("docker-registry did not answer on %s within 20s", addr)
		case <-tick.C:
		}
	}
}

// SilentListener accepts connections on 127.0.0.1 and never answers
// them: a registry that hangs. It returns host:port; it closes at the
// test's end.
func SilentListener(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	tb.Cleanup(func() {
		l.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// ClosedPort is a 127.0.0.1 address nothing listens on: a registry that
// is down.
func ClosedPort(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
