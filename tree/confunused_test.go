package tree

import (
	"context"
	"reflect"
	"testing"
)

// TestReadConfUnusedDirectives: the signing directives dkms 3.0.10 reads
// from a dkms.conf and never uses are reported, so that a warning can
// name them; the directives dkmsd acts on are not.
func TestReadConfUnusedDirectives(t *testing.T) {
	body := "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=foo\nDEST_MODULE_LOCATION=/extra\nAUTOINSTALL=yes\nMOK_CERTIFICATE=/x.pub\nSIGN_FILE=/x/sign-file\n"
	c, err := ReadConf(context.Background(), writeConf(t, body), testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"SIGN_FILE", "MOK_CERTIFICATE"}; !reflect.DeepEqual(c.Unused, want) {
		t.Errorf("Unused = %q, want %q", c.Unused, want)
	}
}
