package tree

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// writeConf writes a dkms.conf into a fresh dir and returns its path.
func writeConf(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "dkms.conf")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func testContext(t *testing.T) ConfContext {
	l := NewLayout(t.TempDir())
	return ConfContext{
		Module: "foo", Version: "1.0", Kernel: "6.1.0-56-amd64", Arch: "x86_64",
		Layout: l, KernelSourceDir: "/lib/modules/6.1.0-56-amd64/build",
		ParallelJobs: 4, Distro: "debian", Env: []string{"PATH=/usr/bin:/bin"},
		Timeout: 2 * time.Second,
	}
}

// confShape is a dkms.conf written the way real packages write them, and
// what ReadConf must make of it.
type confShape struct {
	name   string
	body   string
	kernel string // the kernel to read it for; "" for testContext's
	check  func(t *testing.T, c *Conf)
}

// realWorldShapes are the shapes of TestReadConfRealWorldShapes: sparse
// arrays, shell (substitutions, conditions, functions), MAKE_MATCH and
// PATCH_MATCH, line endings, defaults, warnings and BUILD_EXCLUSIVE.
var realWorldShapes = []confShape{{
	name: "sparse arrays keep their indexes",
	body: `PACKAGE_NAME=foo
PACKAGE_VERSION=1.0
BUILT_MODULE_NAME[0]=a
DEST_MODULE_LOCATION[0]=/extra
BUILT_MODULE_NAME[2]=c
DEST_MODULE_LOCATION[2]=/kernel/drivers/c
BUILT_MODULE_NAME[1]=b
DEST_MODULE_LOCATION[1]=/updates
`,
	check: func(t *testing.T, c *Conf) {
		var names []string
		for _, m := range c.Modules {
			names = append(names, m.BuiltName+"@"+m.RawDestLocation+"->"+m.DestLocation)
		}
		want := []string{"a@/extra->/updates/dkms", "b@/updates->/updates/dkms", "c@/kernel/drivers/c->/updates/dkms"}
		if !reflect.DeepEqual(names, want) {
			t.Errorf("modules = %q, want %q", names, want)
		}
	},
}, {
	name: "command substitution and kernelver in MAKE",
	body: `PACKAGE_NAME=foo
PACKAGE_VERSION=$(echo 1.0)
MAKE[0]="make -C ${kernel_source_dir} M=${dkms_tree}/foo/1.0/build KVER=$kernelver ARCH_=$arch J=$parallel_jobs"
BUILT_MODULE_NAME[0]=foo
DEST_MODULE_LOCATION[0]=/extra
`,
	check: func(t *testing.T, c *Conf) {
		if c.PackageVersion != "1.0" {
			t.Errorf("PACKAGE_VERSION = %q", c.PackageVersion)
		}
		if !strings.Contains(c.MakeCommand, "-C /lib/modules/6.1.0-56-amd64/build ") ||
			!strings.Contains(c.MakeCommand, "KVER=6.1.0-56-amd64 ARCH_=x86_64 J=4") ||
			!strings.Contains(c.MakeCommand, "/var/lib/dkms/foo/1.0/build") {
			t.Errorf("MAKE = %q", c.MakeCommand)
		}
	},
}, {
	name: "if on kernelver and a function",
	body: `PACKAGE_NAME=foo
PACKAGE_VERSION=2
pick() { echo "mod_$1"; }
if [ "${kernelver%%.*}" -ge 6 ]; then
  BUILT_MODULE_NAME[0]=$(pick new)
else
  BUILT_MODULE_NAME[0]=$(pick old)
fi
DEST_MODULE_LOCATION[0]=/updates
AUTOINSTALL=YES
`,
	check: func(t *testing.T, c *Conf) {
		if c.Modules[0].BuiltName != "mod_new" || c.Modules[0].DestName != "mod_new" {
			t.Errorf("module = %+v", c.Modules[0])
		}
		if !c.AutoInstall {
			t.Error("AUTOINSTALL=YES not read as yes")
		}
	},
}, {
	name: "MAKE_MATCH picks the last matching line, PATCH_MATCH filters",
	body: `PACKAGE_NAME=foo
PACKAGE_VERSION=1
BUILT_MODULE_NAME=foo
DEST_MODULE_LOCATION=/extra
MAKE[0]="make generic"
MAKE_MATCH[0]="^5\."
MAKE[1]="make six"
MAKE_MATCH[1]="^6\."
MAKE[2]="make amd64"
MAKE_MATCH[2]="amd64$"
PATCH[0]=all.patch
PATCH[1]=five.patch
PATCH_MATCH[1]="^5\."
PATCH[2]=six.patch
PATCH_MATCH[2]="^6\.1"
`,
	check: func(t *testing.T, c *Conf) {
		if c.MakeCommand != "make amd64" {
			t.Errorf("MAKE = %q", c.MakeCommand)
		}
		if !reflect.DeepEqual(c.Patches, []string{"all.patch", "six.patch"}) {
			t.Errorf("patches = %q", c.Patches)
		}
	},
}, {
	name:   "unmatched MAKE_MATCH falls back to the default make",
	kernel: "4.19.0-1-amd64",
	body:   "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=foo\nDEST_MODULE_LOCATION=/extra\nMAKE[0]='make six'\nMAKE_MATCH[0]='^6'\n",
	check: func(t *testing.T, c *Conf) {
		if c.MakeCommand != "" {
			t.Errorf("MAKE = %q, want the default", c.MakeCommand)
		}
	},
}, {
	name: "CRLF line endings",
	body: "PACKAGE_NAME=\"foo\"\r\nPACKAGE_VERSION=\"1.0\"\r\nBUILT_MODULE_NAME[0]=\"foo\"\r\nDEST_MODULE_LOCATION[0]=\"/extra\"\r\nAUTOINSTALL=\"yes\"\r\n",
	check: func(t *testing.T, c *Conf) {
		if c.PackageName != "foo" || c.PackageVersion != "1.0" || c.Modules[0].BuiltName != "foo" || !c.AutoInstall {
			t.Errorf("CRLF conf read as %+v", c)
		}
	},
}, {
	name: "zero modules is a warning, not an error",
	body: "PACKAGE_NAME=meta\nPACKAGE_VERSION=1\n",
	check: func(t *testing.T, c *Conf) {
		if len(c.Modules) != 0 || !reflect.DeepEqual(c.Warnings, []string{"dkms.conf: Warning! Zero modules specified."}) {
			t.Errorf("modules %v warnings %q", c.Modules, c.Warnings)
		}
	},
}, {
	name: "defaults: one module takes PACKAGE_NAME, strip follows STRIP[0]",
	body: "PACKAGE_NAME=solo\nPACKAGE_VERSION=1\nDEST_MODULE_LOCATION=/extra\nSTRIP[0]=no\n",
	check: func(t *testing.T, c *Conf) {
		m := c.Modules[0]
		if m.BuiltName != "solo" || m.DestName != "solo" || m.Strip {
			t.Errorf("module = %+v", m)
		}
	},
}, {
	name: "functions and other variables do not leak; deprecated directives warn, CLEAN silently (as dkms 3.0.10)",
	body: "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=foo\nDEST_MODULE_LOCATION=/extra\nMODULES_CONF[0]='alias x foo'\nCLEAN='make clean'\nREMAKE_INITRD=yes\nOTHER=1\n",
	check: func(t *testing.T, c *Conf) {
		if len(c.Warnings) != 1 || !strings.HasPrefix(c.Warnings[0], "Deprecated feature: MODULES_CONF (") {
			t.Errorf("warnings = %q", c.Warnings)
		}
		if !c.RemakeInitrd {
			t.Error("REMAKE_INITRD=yes not read")
		}
	},
}, {
	name: "BUILD_EXCLUSIVE_ARCH rules out x86_64",
	body: "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=foo\nDEST_MODULE_LOCATION=/extra\nBUILD_EXCLUSIVE_ARCH=aarch64\n",
	check: func(t *testing.T, c *Conf) {
		if c.Excluded != "BUILD_EXCLUSIVE_ARCH" {
			t.Errorf("Excluded = %q", c.Excluded)
		}
	},
}, {
	name: "BUILD_EXCLUSIVE_KERNEL_MIN and MAX compare like dkms's VER",
	body: "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=foo\nDEST_MODULE_LOCATION=/extra\nBUILD_EXCLUSIVE_KERNEL_MIN=5.10\nBUILD_EXCLUSIVE_KERNEL_MAX=6.0.99\n",
	check: func(t *testing.T, c *Conf) {
		if c.Excluded != "BUILD_EXCLUSIVE_KERNEL_MAX" {
			t.Errorf("Excluded = %q", c.Excluded)
		}
	},
}}

func TestReadConfRealWorldShapes(t *testing.T) {
	for _, tc := range realWorldShapes {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			if tc.kernel != "" {
				ctx.Kernel = tc.kernel
			}
			c, err := ReadConf(context.Background(), writeConf(t, tc.body), ctx)
			if err != nil {
				t.Fatalf("ReadConf: %v", err)
			}
			tc.check(t, c)
		})
	}
}

func TestReadConfErrors(t *testing.T) {
	tests := []struct {
		name string
		body string
		want []string // substrings of the problems, in order
	}{{
		name: "empty file",
		body: "",
		want: []string{"No 'PACKAGE_NAME' directive specified.", "No 'PACKAGE_VERSION' directive specified."},
	}, {
		name: "gap in sparse arrays",
		body: "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=a\nDEST_MODULE_LOCATION[0]=/extra\nBUILT_MODULE_NAME[2]=c\nDEST_MODULE_LOCATION[2]=/extra\n",
		want: []string{"No 'BUILT_MODULE_NAME' directive specified for record #1.", "No 'DEST_MODULE_LOCATION' directive specified for record #1."},
	}, {
		name: "module name ends in .ko",
		body: "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\n\nBUILT_MODULE_NAME[0]=foo.ko\nDEST_MODULE_LOCATION[0]=/extra\n",
		want: []string{"'BUILT_MODULE_NAME' directive ends in '.o' or '.ko' in record #0.\n"},
	}, {
		name: "destination outside the allowed trees",
		body: "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=foo\nDEST_MODULE_LOCATION=/lib/firmware\n",
		want: []string{"Directive 'DEST_MODULE_LOCATION' does not begin with\n'/kernel', '/updates', or '/extra' in record #0"},
	}, {
		name: "destination escaping the kernel's module dir",
		body: "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=foo\nDEST_MODULE_LOCATION=/kernel/../../../etc\n",
		want: []string{"'DEST_MODULE_LOCATION' '/kernel/../../../etc' escapes the kernel's module directory in record #0"},
	}, {
		name: "built module location escaping the build dir",
		body: "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=foo\nBUILT_MODULE_LOCATION=../../elsewhere\nDEST_MODULE_LOCATION=/extra\n",
		want: []string{"'BUILT_MODULE_LOCATION' '../../elsewhere/' escapes the build directory in record #0"},
	}, {
		name: "module name with a slash or spaces",
		body: "PACKAGE_NAME='my mod'\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=a/b\nDEST_MODULE_LOCATION[0]=/extra\n",
		want: []string{"'PACKAGE_NAME' 'my mod' contains white space", "'BUILT_MODULE_NAME' 'a/b' contains '/' in record #0"},
	}, {
		name: "patch escaping the patches dir",
		body: "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=foo\nDEST_MODULE_LOCATION=/extra\nPATCH[0]=../../../etc/evil.patch\n",
		want: []string{"'PATCH[0]' '../../../etc/evil.patch' escapes the patches directory"},
	}, {
		name: "bad AUTOINSTALL value",
		body: "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=foo\nDEST_MODULE_LOCATION=/extra\nAUTOINSTALL=sometimes\n",
		want: []string{"Unsupported AUTOINSTALL value 'sometimes'"},
	}, {
		name: "duplicate destination names",
		body: "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=a\nDEST_MODULE_NAME[0]=x\nDEST_MODULE_LOCATION[0]=/extra\nBUILT_MODULE_NAME[1]=b\nDEST_MODULE_NAME[1]=x\nDEST_MODULE_LOCATION[1]=/extra\n",
		want: []string{"Duplicate module 'x' in 'DEST_MODULE_NAME[1]'."},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadConf(context.Background(), writeConf(t, tc.body), testContext(t))
			var ce *ConfError
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want a ConfError", err)
			}
			all := strings.Join(ce.Problems, "\n")
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("problems:\n%s\nwant a problem containing %q", all, w)
				}
			}
			for _, p := range ce.Problems {
				if !strings.HasPrefix(p, "dkms.conf: Error! ") {
					t.Errorf("problem %q lacks dkms's prefix", p)
				}
			}
		})
	}
}

// TestReadConfErrorsInDkmsOrder: the problems of 3.0.10's own checks are
// its lines, in its order — each record's, then the package's name and
// version — since they are printed as they are found.
func TestReadConfErrorsInDkmsOrder(t *testing.T) {
	for body, want := range map[string][]string{
		"BUILT_MODULE_NAME=x\n": {
			"dkms.conf: Error! No 'DEST_MODULE_LOCATION' directive specified for record #0.",
			"dkms.conf: Error! Directive 'DEST_MODULE_LOCATION' does not begin with\n'/kernel', '/updates', or '/extra' in record #0.",
			"dkms.conf: Error! No 'PACKAGE_NAME' directive specified.",
			"dkms.conf: Error! No 'PACKAGE_VERSION' directive specified.",
		},
		"PACKAGE_NAME=bad\nPACKAGE_VERSION=1.0\nDEST_MODULE_LOCATION[0]=/lib\nBUILT_MODULE_NAME[1]=x.ko\nDEST_MODULE_LOCATION[1]=/extra\n": {
			"dkms.conf: Error! No 'BUILT_MODULE_NAME' directive specified for record #0.",
			"dkms.conf: Error! Directive 'DEST_MODULE_LOCATION' does not begin with\n'/kernel', '/updates', or '/extra' in record #0.",
			"dkms.conf: Error! 'BUILT_MODULE_NAME' directive ends in '.o' or '.ko' in record #1.",
			"dkms.conf: Error! 'DEST_MODULE_NAME' directive ends in '.o' or '.ko' in record #1.",
		},
	} {
		_, err := ReadConf(context.Background(), writeConf(t, body), testContext(t))
		var ce *ConfError
		if !errors.As(err, &ce) {
			t.Fatalf("%q: err = %v, want a ConfError", body, err)
		}
		if !reflect.DeepEqual(ce.Problems, want) {
			t.Errorf("%q: problems\n%s\nwant\n%s", body, strings.Join(ce.Problems, "\n"), strings.Join(want, "\n"))
		}
	}
}

func TestReadConfSyntaxErrorNamesTheLine(t *testing.T) {
	file := writeConf(t, "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nif [ x = x ]; then\n  BUILT_MODULE_NAME=foo\n")
	_, err := ReadConf(context.Background(), file, testContext(t))
	var se *SyntaxError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v, want a SyntaxError", err)
	}
	if se.File != file || se.Line == 0 || !strings.Contains(err.Error(), file+": line ") {
		t.Errorf("error %q does not name file and line", err)
	}
	file = writeConf(t, "PACKAGE_NAME=foo\nPACKAGE_VERSION=(1\n")
	_, err = ReadConf(context.Background(), file, testContext(t))
	if !errors.As(err, &se) || se.Line != 2 {
		t.Errorf("err = %v, want a syntax error on line 2", err)
	}
}

func TestReadConfTimeLimit(t *testing.T) {
	for name, body := range map[string]string{
		"endless loop":          "PACKAGE_NAME=foo\nwhile true; do :; done\n",
		"sleeping substitution": "PACKAGE_NAME=$(sleep 60)\n",
	} {
		t.Run(name, func(t *testing.T) {
			ctx := testContext(t)
			ctx.Timeout = 300 * time.Millisecond
			start := time.Now()
			_, err := ReadConf(context.Background(), writeConf(t, body), ctx)
			var ee *EvalError
			if !errors.As(err, &ee) || !strings.Contains(err.Error(), "gave up after 300ms") {
				t.Fatalf("err = %v, want a time-out EvalError", err)
			}
			if el := time.Since(start); el > 20*time.Second {
				t.Errorf("evaluation was not stopped (took %v)", el)
			}
		})
	}
}

func TestReadConfOverridesAndDirectives(t *testing.T) {
	ctx := testContext(t)
	if err := os.MkdirAll(ctx.Layout.ConfDir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(ctx.Layout.ConfDir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The module-wide file sees the module's values; the kernel-specific
	// one overrides one element only.
	write("foo.conf", `BUILT_MODULE_NAME[1]="${PACKAGE_NAME}_extra"`+"\nDEST_MODULE_LOCATION[1]=/extra\n")
	write("foo-1.0-6.1.0-56-amd64.conf", "STRIP[1]=no\n")
	write("foo--6.1.0-56-amd64-x86_64.conf", "AUTOINSTALL=yes\n")
	write("foo-2.0.conf", "PACKAGE_NAME=wrong\n") // another version: not read
	ctx.Directives = []string{"PACKAGE_VERSION=1.0-cli"}
	c, err := ReadConf(context.Background(), writeConf(t, "PACKAGE_NAME=foo\nPACKAGE_VERSION=1.0\nBUILT_MODULE_NAME[0]=foo\nDEST_MODULE_LOCATION[0]=/extra\n"), ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Modules) != 2 || c.Modules[1].BuiltName != "foo_extra" || c.Modules[1].Strip || !c.Modules[0].Strip {
		t.Errorf("modules = %+v", c.Modules)
	}
	if !c.AutoInstall || c.PackageName != "foo" || c.PackageVersion != "1.0-cli" {
		t.Errorf("conf = %+v", c)
	}
}

func TestReadConfEnvironmentDoesNotLeakDirectives(t *testing.T) {
	ctx := testContext(t)
	ctx.Env = append(ctx.Env, "PACKAGE_VERSION=from-env", "BUILT_MODULE_NAME=evil")
	_, err := ReadConf(context.Background(), writeConf(t, "PACKAGE_NAME=foo\nDEST_MODULE_LOCATION=/extra\n"), ctx)
	var ce *ConfError
	if !errors.As(err, &ce) || !strings.Contains(strings.Join(ce.Problems, "\n"), "No 'PACKAGE_VERSION'") {
		t.Errorf("err = %v: a PACKAGE_VERSION from the environment must not count", err)
	}
}

func TestVersionKey(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"6.1.0-56-amd64", "006.001.000-056-amd064"},
		{"2.6.9-1cvs200409091247", "002.006.009-001cvs200409091247"},
	} {
		if got := VersionKey(tc.in); got != tc.want {
			t.Errorf("VersionKey(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if CompareVersions("4.12-rc1", "4.12") <= 0 || CompareVersions("6.1.0-9", "6.1.0-10") >= 0 {
		t.Error("CompareVersions does not order like dkms")
	}
}
