package tree

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestReadConfSourcedLikeBash evaluates a dkms.conf the way
// iptables-netflow's finds its own directory: `pushd $(dirname
// $BASH_SOURCE)`, a helper script run from there, popd. bash's `source`
// in dkms gives the file BASH_SOURCE, $0, the working directory and the
// variable names as positional parameters; with them nothing is printed
// and the version comes from the helper.
func TestReadConfSourcedLikeBash(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "dkms.conf")
	body := `PACKAGE_NAME="netflowish"
pushd ` + "`dirname $BASH_SOURCE`" + `
PACKAGE_VERSION=` + "`./version.sh`" + `
popd
BUILT_MODULE_NAME[0]=netflowish
DEST_MODULE_LOCATION[0]=/kernel/extra
# What bash's source gives: checked here, reported through the names.
[ "${BASH_SOURCE[0]}" = "$0" ] && POST_ADD="BASH_SOURCE[0] is \$0"
[ -n "${BASH_SOURCE[1]}" ] && [ "${BASH_SOURCE[1]}" = "$0" ] || PRE_BUILD="BASH_SOURCE[1]=${BASH_SOURCE[1]} \$0=$0"
[ "$1" = PACKAGE_NAME ] || POST_BUILD="\$1=$1"
[ "$PWD" = "$(pwd)" ] || POST_INSTALL="PWD=$PWD pwd=$(pwd)"
`
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "version.sh"), []byte("#!/bin/sh\necho 2.6\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The command's own working directory is elsewhere: pushd must move
	// the evaluation, popd must bring it back, and neither the process.
	cwd, _ := os.Getwd()
	var stderr bytes.Buffer
	c := testContext(t)
	c.Stderr = &stderr
	got, err := ReadConf(context.Background(), conf, c)
	if err != nil {
		t.Fatalf("ReadConf: %v (stderr %q)", err, stderr.String())
	}
	if stderr.Len() != 0 {
		t.Errorf("the file printed on stderr: %q", stderr.String())
	}
	if got.PackageVersion != "2.6" {
		t.Errorf("PACKAGE_VERSION = %q, want the helper's 2.6", got.PackageVersion)
	}
	if got.PostAdd != "" {
		t.Errorf("BASH_SOURCE[0] is $0 (%q), want the file", got.PostAdd)
	}
	for what, v := range map[string]string{"BASH_SOURCE[1] and $0 name dkms": got.PreBuild, "$1 is the first directive name": got.PostBuild, "PWD is the working directory": got.PostInstall} {
		if v != "" {
			t.Errorf("%s: %s", what, v)
		}
	}
	if now, _ := os.Getwd(); now != cwd {
		t.Errorf("the process's working directory moved to %s", now)
	}
}

// TestReadConfPopdWithoutPushd keeps bash's complaints: a popd with an
// empty stack says so on stderr (the file is still read).
func TestReadConfPopdWithoutPushd(t *testing.T) {
	conf := writeConf(t, "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=foo\nDEST_MODULE_LOCATION=/extra\npopd\n")
	var stderr bytes.Buffer
	c := testContext(t)
	c.Stderr = &stderr
	if _, err := ReadConf(context.Background(), conf, c); err != nil {
		t.Fatal(err)
	}
	if stderr.String() != "popd: directory stack empty\n" {
		t.Errorf("stderr = %q", stderr.String())
	}
}
