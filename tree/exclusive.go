package tree

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// Buildable are the modules that BUILD_EXCLUSIVE_*[#] leaves in for the
// kernel and arch the Conf was read for: the ones built, installed and
// compared. Uninstall still walks every module, in case the kernel's
// configuration changed since the install.
func (c *Conf) Buildable() []ModuleSpec {
	var out []ModuleSpec
	for _, m := range c.Modules {
		if m.Excluded == "" {
			out = append(out, m)
		}
	}
	return out
}

// exclusion decides BUILD_EXCLUSIVE_* for one kernel and arch, as dkms
// 3.3 does: element 0 (what a plain BUILD_EXCLUSIVE_ARCH= sets) rules on
// the whole package, element # on module # alone.
type exclusion struct {
	vals map[string]Value
	ctx  ConfContext
	// kconfig is the kernel configuration, read on first use; a kernel
	// without a readable .config (kconfigRead, kconfig nil) rules nothing
	// out, as in dkms ([[ -e $kernel_config ]]).
	kconfig     map[string]bool
	kconfigRead bool
}

// fillExclusions sets the Conf's Excluded from element 0 and each
// module's from it and the module's own element. Module 0's element is
// element 0, so the package is excluded exactly when element 0 rules the
// kernel out.
func (k *confCheck) fillExclusions(vals map[string]Value, ctx ConfContext) {
	c := k.c
	x := &exclusion{vals: vals, ctx: ctx}
	by, err := x.excludedBy(0, c.globalMax(vals))
	if err != nil {
		k.bad("%v.", err)
		return
	}
	c.Excluded = by
	for i := range c.Modules {
		if by == "" && i > 0 {
			if c.Modules[i].Excluded, err = x.excludedBy(i, ""); err != nil {
				k.bad("%v.", err)
				return
			}
			continue
		}
		c.Modules[i].Excluded = by
	}
}

// globalMax is the package-wide upper kernel bound: BUILD_EXCLUSIVE_KERNEL_MAX,
// else the deprecated OBSOLETE_BY unless a module has a maximum of its own
// (dkms 3.3 keeps OBSOLETE_BY only where it cannot conflict).
func (c *Conf) globalMax(vals map[string]Value) string {
	if m := vals["BUILD_EXCLUSIVE_KERNEL_MAX"].Get(0); m != "" {
		return m
	}
	for i := range c.Modules {
		if vals["BUILD_EXCLUSIVE_KERNEL_MAX"].Get(i) != "" {
			return ""
		}
	}
	return vals["OBSOLETE_BY"].Scalar()
}

// excludedBy names the directive whose element i rules the kernel out
// (max, when set, stands for element i of BUILD_EXCLUSIVE_KERNEL_MAX).
func (x *exclusion) excludedBy(i int, max string) (string, error) {
	kernel, arch := x.ctx.Kernel, x.ctx.Arch
	if by, err := x.re("BUILD_EXCLUSIVE_KERNEL", i, kernel); by != "" || err != nil {
		return by, err
	}
	if min := x.vals["BUILD_EXCLUSIVE_KERNEL_MIN"].Get(i); min != "" && CompareVersions(kernel, min) < 0 {
		return "BUILD_EXCLUSIVE_KERNEL_MIN", nil
	}
	if max == "" {
		max = x.vals["BUILD_EXCLUSIVE_KERNEL_MAX"].Get(i)
	}
	if max != "" && CompareVersions(kernel, max) > 0 {
		return "BUILD_EXCLUSIVE_KERNEL_MAX", nil
	}
	if by, err := x.re("BUILD_EXCLUSIVE_ARCH", i, arch); by != "" || err != nil {
		return by, err
	}
	cfgs := strings.Fields(x.vals["BUILD_EXCLUSIVE_CONFIG"].Get(i))
	if len(cfgs) == 0 || x.ctx.KernelConfig == "" {
		return "", nil
	}
	if !x.kconfigRead {
		x.kconfig, _ = readKconfig(x.ctx.KernelConfig)
		x.kconfigRead = true
	}
	if x.kconfig == nil {
		return "", nil
	}
	for _, want := range cfgs {
		name, negate := strings.CutPrefix(want, "!")
		if x.kconfig[name] == negate {
			return "BUILD_EXCLUSIVE_CONFIG", nil
		}
	}
	return "", nil
}

// re names the directive when s does not match the regexp in its element
// i (an unset element rules nothing out).
func (x *exclusion) re(name string, i int, s string) (string, error) {
	re := x.vals[name].Get(i)
	if re == "" {
		return "", nil
	}
	ok, err := matchERE(re, s)
	if err != nil {
		if i == 0 {
			return "", fmt.Errorf("'%s' is not a valid regular expression: %v", name, err)
		}
		return "", fmt.Errorf("'%s[%d]' is not a valid regular expression: %v", name, i, err)
	}
	if !ok {
		return name, nil
	}
	return "", nil
}

// readKconfig returns the options set to y or m in a kernel .config.
func readKconfig(file string) (map[string]bool, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	set := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), "=")
		if ok && (val == "y" || val == "m") {
			set[name] = true
		}
	}
	return set, sc.Err()
}
