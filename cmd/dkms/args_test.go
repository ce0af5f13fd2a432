package main

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/dkmsd/dkmsd/lifecycle"
)

func TestParseArgsForms(t *testing.T) {
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "dkms.conf"), []byte("PACKAGE_NAME=x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		argv []string
		want args
	}{
		{[]string{"build", "foo/1.0", "-k", "6.1.0-56-amd64"}, args{action: "build", module: "foo", version: "1.0", kernels: []string{"6.1.0-56-amd64"}}},
		{[]string{"-m", "foo", "-v", "1.0", "install"}, args{action: "install", module: "foo", version: "1.0"}},
		{[]string{"install", "-m", "foo/1.0", "--kernelver=6.1/aarch64", "-k", "6.2"}, args{action: "install", module: "foo", version: "1.0", kernels: []string{"6.1", "6.2"}, arches: []string{"aarch64"}}},
		{[]string{"status", "--kernelver", "6.1", "--arch=x86_64"}, args{action: "status", kernels: []string{"6.1"}, arches: []string{"x86_64"}}},
		{[]string{"remove", "--module=foo/1.0/extra", "--all"}, args{action: "remove", module: "foo", version: "1.0/extra", all: true}},
		{[]string{"add", src}, args{action: "add", sourceDir: src}},
		{[]string{"add", filepath.Join(src, "dkms.conf")}, args{action: "add", sourceDir: src}},
		{[]string{"build", "foo/1.0", "--dkmstree", "/d", "--sourcetree=/s", "--installtree", "/i", "--kernelsourcedir=/k", "-j", "3", "--directive=A=b", "--force"},
			args{action: "build", module: "foo", version: "1.0", dkmsTree: "/d", sourceTree: "/s", installTree: "/i", kernelSourceDir: "/k", jobs: "3", directives: []string{"A=b"}, force: true}},
		{[]string{"status", "foo", "bar"}, args{action: "status", module: "foo", warnings: []string{"Warning: I do not know how to handle bar."}}},
		{[]string{"--no-clean-kernel", "status"}, args{action: "status", warnings: []string{"Deprecated feature: --no-clean-kernel"}}},
	}
	for _, tc := range tests {
		got, err := parseArgs(tc.argv)
		if err != nil {
			t.Errorf("%q: %v", tc.argv, err)
			continue
		}
		got.firstWord = "" // recorded for ldtarball's message, not compared here
		if !reflect.DeepEqual(*got, tc.want) {
			t.Errorf("%q:\n got %+v\nwant %+v", tc.argv, *got, tc.want)
		}
	}
}

func TestParseArgsErrorsAndExitCodes(t *testing.T) {
	tests := []struct {
		argv []string
		code int
	}{
		{[]string{"status", "--frobnicate"}, 2},
		{[]string{"status", "-k=6.1"}, 2}, // dkms's short options take the next word only
		{[]string{"build", "install"}, 4},
		{[]string{"mktarball", "--binaries-only", "--source-only"}, 8},
		{[]string{"build", "-k", "a", "-a", "x", "-a", "y"}, 1},
		{[]string{"remove", "-k", "a", "--all"}, 2},
		{[]string{"remove", "-a", "x86_64", "--all"}, 3},
		{[]string{"build", "-j", "many"}, 2},
		{[]string{"status", "--kernel", "6.1"}, 2}, // long options are --kernelver*, not prefixes of it
	}
	for _, tc := range tests {
		_, err := parseArgs(tc.argv)
		var ue *lifecycle.Error
		if !errors.As(err, &ue) {
			t.Errorf("%q: err = %v, want a usage error", tc.argv, err)
			continue
		}
		if got := lifecycle.ExitCode(err); got != tc.code {
			t.Errorf("%q: exit %d, want %d (%v)", tc.argv, got, tc.code, err)
		}
	}
}
