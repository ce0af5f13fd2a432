package cache

import (
	"os/user"
	"path/filepath"
	"testing"
)

// TestDockerConfigFile: the file docker itself reads, with the password
// database's home when there is no $HOME (a systemd service without
// User=), so a boot-time autoinstall still finds root's credentials.
func TestDockerConfigFile(t *testing.T) {
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		env  []string
		want string
	}{
		{[]string{"HOME=/home/op", "DOCKER_CONFIG=/etc/fleet"}, "/etc/fleet/config.json"},
		{[]string{"HOME=/home/op", "DOCKER_CONFIG="}, "/home/op/.docker/config.json"},
		{[]string{"HOME=/a", "HOME=/home/op"}, "/home/op/.docker/config.json"}, // the last wins, as exec.Cmd passes an environment on
		{[]string{"PATH=/usr/bin"}, filepath.Join(u.HomeDir, ".docker/config.json")},
	}
	for _, c := range cases {
		if got := DockerConfigFile(c.env); got != c.want {
			t.Errorf("DockerConfigFile(%q) = %q, want %q", c.env, got, c.want)
		}
	}
}
