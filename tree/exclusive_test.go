package tree

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestReadConfPerModuleBuildExclusive reads the shapes of upstream dkms
// 3.3's per-module fixtures: element 0 of BUILD_EXCLUSIVE_* rules on the
// whole package, element # on module # alone, and OBSOLETE_BY stands in
// for a package-wide maximum only when no module has one.
func TestReadConfPerModuleBuildExclusive(t *testing.T) {
	const two = "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=a\nBUILT_MODULE_NAME[1]=b\nDEST_MODULE_LOCATION[0]=/extra\nDEST_MODULE_LOCATION[1]=/extra\n"
	config := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(config, []byte("CONFIG_MODULES=y\nCONFIG_OTHER=m\n# CONFIG_NOT_SET is not set\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, body string
		// package is the Conf's Excluded, modules each module's.
		pkg     string
		modules []string
	}{
		{"element 1 leaves module 1 out", two + "BUILD_EXCLUSIVE_ARCH[1]=nonexistent\n",
			"", []string{"", "BUILD_EXCLUSIVE_ARCH"}},
		{"a plain value is element 0: the whole package", two + "BUILD_EXCLUSIVE_ARCH=nonexistent\n",
			"BUILD_EXCLUSIVE_ARCH", []string{"BUILD_EXCLUSIVE_ARCH", "BUILD_EXCLUSIVE_ARCH"}},
		{"element 0 rules on module 1 too (upstream's per_module_config_test)", two + "BUILD_EXCLUSIVE_KERNEL[0]='^99\\..*'\nBUILD_EXCLUSIVE_KERNEL[1]='.*'\nBUILD_EXCLUSIVE_ARCH[1]=none\n",
			"BUILD_EXCLUSIVE_KERNEL", []string{"BUILD_EXCLUSIVE_KERNEL", "BUILD_EXCLUSIVE_KERNEL"}},
		{"per-module MIN and MAX (upstream's per_module_kernel_version_test)", two + "BUILD_EXCLUSIVE_KERNEL_MAX[0]=3.99\nBUILD_EXCLUSIVE_KERNEL_MIN[1]=5.0\n",
			"BUILD_EXCLUSIVE_KERNEL_MAX", []string{"BUILD_EXCLUSIVE_KERNEL_MAX", "BUILD_EXCLUSIVE_KERNEL_MAX"}},
		{"per-module MIN on module 1 only", two + "BUILD_EXCLUSIVE_KERNEL_MIN[1]=99.0\n",
			"", []string{"", "BUILD_EXCLUSIVE_KERNEL_MIN"}},
		{"per-module CONFIG (upstream's per_module_config_exclusive_test)", two + "BUILD_EXCLUSIVE_CONFIG[0]='CONFIG_MODULES !CONFIG_NOT_SET'\nBUILD_EXCLUSIVE_CONFIG[1]='!CONFIG_MODULES CONFIG_NOT_SET'\n",
			"", []string{"", "BUILD_EXCLUSIVE_CONFIG"}},
		{"OBSOLETE_BY is the package's maximum", two + "OBSOLETE_BY=5.0\n",
			"BUILD_EXCLUSIVE_KERNEL_MAX", []string{"BUILD_EXCLUSIVE_KERNEL_MAX", "BUILD_EXCLUSIVE_KERNEL_MAX"}},
		{"OBSOLETE_BY yields to a module's own maximum", two + "OBSOLETE_BY=5.0\nBUILD_EXCLUSIVE_KERNEL_MAX[1]=5.0\n",
			"", []string{"", "BUILD_EXCLUSIVE_KERNEL_MAX"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			ctx.KernelConfig = config
			c, err := ReadConf(context.Background(), writeConf(t, tc.body), ctx)
			if err != nil {
				t.Fatal(err)
			}
			if c.Excluded != tc.pkg {
				t.Errorf("package Excluded = %q, want %q", c.Excluded, tc.pkg)
			}
			var got []string
			for _, m := range c.Modules {
				got = append(got, m.Excluded)
			}
			if len(got) != len(tc.modules) || got[0] != tc.modules[0] || got[1] != tc.modules[1] {
				t.Errorf("modules' Excluded = %q, want %q", got, tc.modules)
			}
			var buildable []string
			for _, m := range c.Buildable() {
				buildable = append(buildable, m.BuiltName)
			}
			want := 0
			for _, e := range tc.modules {
				if e == "" {
					want++
				}
			}
			if len(buildable) != want {
				t.Errorf("Buildable = %q, want %d module(s)", buildable, want)
			}
		})
	}
}

// TestReadConfBuildExclusiveConfigWithoutKernelConfig: a kernel whose
// .config cannot be read rules nothing out, as in dkms; an empty one
// lacks every option.
func TestReadConfBuildExclusiveConfigWithoutKernelConfig(t *testing.T) {
	body := "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=foo\nDEST_MODULE_LOCATION=/extra\nBUILD_EXCLUSIVE_CONFIG=CONFIG_MODULES\n"
	empty := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for config, want := range map[string]string{
		filepath.Join(t.TempDir(), "missing"): "",
		empty:                                 "BUILD_EXCLUSIVE_CONFIG",
	} {
		ctx := testContext(t)
		ctx.KernelConfig = config
		c, err := ReadConf(context.Background(), writeConf(t, body), ctx)
		if err != nil {
			t.Fatal(err)
		}
		if c.Excluded != want {
			t.Errorf("config %s: Excluded = %q, want %q", config, c.Excluded, want)
		}
	}
}
