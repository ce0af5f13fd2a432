package tree

import (
	"fmt"
	"regexp"
	"strings"
)

// deprecations are the warnings for directives dkms no longer acts on.
func deprecations(vals map[string]Value, file string) []string {
	var w []string
	for _, n := range deprecatedNames {
		if vals[n].Set() {
			w = append(w, fmt.Sprintf("Deprecated feature: %s (%s)", n, file))
		}
	}
	// CLEAN is not run either (docs/compatibility.md), but dkms 3.0.10
	// says nothing about it, and neither does dkmsd.
	return w
}

// fill validates vals and sets the fields of c; it returns every problem,
// worded as dkms words them, in the order dkms reports them.
func (c *Conf) fill(vals map[string]Value, ctx ConfContext) []string {
	k := &confCheck{c: c}
	c.fillScalars(vals)
	k.checkScripts(vals)
	k.fillFlags(vals)
	k.fillModules(vals, ctx)
	k.checkIdentity() // dkms tells the records' problems first
	k.fillMake(vals, ctx)
	k.fillPatches(vals, ctx)
	k.fillExclusions(vals, ctx)
	for _, n := range unusedConfNames {
		if vals[n].Set() {
			c.Unused = append(c.Unused, n)
		}
	}
	return k.problems
}

// confCheck collects the problems of the dkms.conf being filled in.
type confCheck struct {
	c        *Conf
	problems []string
}

// at is " (<file> line <n>)" for the directive's assignment, when known.
func (k *confCheck) at(name string) string {
	if l, ok := k.c.Lines[name]; ok {
		return fmt.Sprintf(" (%s line %d)", k.c.File, l)
	}
	return ""
}

func (k *confCheck) bad(format string, args ...any) {
	k.problems = append(k.problems, "dkms.conf: Error! "+fmt.Sprintf(format, args...))
}

// fillScalars takes the single-valued directives as written.
func (c *Conf) fillScalars(vals map[string]Value) {
	c.PackageName = vals["PACKAGE_NAME"].Scalar()
	c.PackageVersion = vals["PACKAGE_VERSION"].Scalar()
	c.Clean = vals["CLEAN"].Scalar()
	c.PreBuild = vals["PRE_BUILD"].Scalar()
	c.PostBuild = vals["POST_BUILD"].Scalar()
	c.PostAdd = vals["POST_ADD"].Scalar()
	c.PreInstall = vals["PRE_INSTALL"].Scalar()
	c.PostInstall = vals["POST_INSTALL"].Scalar()
	c.PostRemove = vals["POST_REMOVE"].Scalar()
	c.ObsoleteBy = vals["OBSOLETE_BY"].Scalar()
}

// checkScripts refuses script paths that leave the module's directory.
func (k *confCheck) checkScripts(vals map[string]Value) {
	for _, name := range []string{"PRE_BUILD", "POST_BUILD", "POST_ADD", "PRE_INSTALL", "POST_INSTALL", "POST_REMOVE"} {
		script := strings.Fields(vals[name].Scalar())
		if len(script) > 0 && escapes(strings.TrimLeft(script[0], "/")) {
			k.bad("'%s' script path '%s' escapes the module's directory%s.", name, script[0], k.at(name))
		}
	}
}

// checkIdentity: PACKAGE_NAME and PACKAGE_VERSION name directories.
func (k *confCheck) checkIdentity() {
	c := k.c
	switch {
	case c.PackageName == "":
		k.bad("No 'PACKAGE_NAME' directive specified.")
	case badComponent(c.PackageName) != "":
		k.bad("'PACKAGE_NAME' %s%s.", badComponent(c.PackageName), k.at("PACKAGE_NAME"))
	}
	switch {
	case c.PackageVersion == "":
		k.bad("No 'PACKAGE_VERSION' directive specified.")
	case badComponent(c.PackageVersion) != "":
		k.bad("'PACKAGE_VERSION' %s%s.", badComponent(c.PackageVersion), k.at("PACKAGE_VERSION"))
	}
}

// fillFlags reads the yes/no directives and BUILD_DEPENDS.
func (k *confCheck) fillFlags(vals map[string]Value) {
	c := k.c
	switch v := strings.ToLower(vals["AUTOINSTALL"].Scalar()); v {
	case "yes":
		c.AutoInstall = true
	case "", "no":
	default:
		k.bad("Unsupported AUTOINSTALL value '%s'%s.", vals["AUTOINSTALL"].Scalar(), k.at("AUTOINSTALL"))
	}
	c.BuildDependsRebuild = strings.EqualFold(vals["BUILD_DEPENDS_REBUILD"].Scalar(), "yes")
	c.NoWeakModules = strings.EqualFold(vals["NO_WEAK_MODULES"].Scalar(), "yes")
	c.RemakeInitrd = strings.EqualFold(vals["REMAKE_INITRD"].Scalar(), "yes")
	for _, i := range vals["BUILD_DEPENDS"].Indexes() {
		c.BuildDepends = append(c.BuildDepends, strings.Fields(vals["BUILD_DEPENDS"].Get(i))...)
	}
}

// fillModules reads the BUILT_/DEST_MODULE_* records.
func (k *confCheck) fillModules(vals map[string]Value, ctx ConfContext) {
	c := k.c
	// The module records: 1 + the highest index of any of the four arrays
	// (upstream's fix for sparse arrays; 3.0.10 counted elements).
	bn, bl, dn, dl, st := vals["BUILT_MODULE_NAME"], vals["BUILT_MODULE_LOCATION"], vals["DEST_MODULE_NAME"], vals["DEST_MODULE_LOCATION"], vals["STRIP"]
	n := max(bn.Len(), bl.Len(), dn.Len(), dl.Len())
	stripDefault := true
	for i := 0; i < n; i++ {
		m := ModuleSpec{BuiltName: bn.Get(i), BuiltLocation: bl.Get(i), DestName: dn.Get(i), RawDestLocation: dl.Get(i)}
		switch s := st.Get(i); {
		case strings.HasPrefix(s, "n"), strings.HasPrefix(s, "N"):
			m.Strip = false
		case s == "":
			m.Strip = stripDefault
		default:
			m.Strip = true
		}
		if i == 0 {
			stripDefault = m.Strip
		}
		if m.BuiltName == "" && n == 1 {
			m.BuiltName = c.PackageName
		}
		if m.DestName == "" {
			m.DestName = m.BuiltName
		}
		if m.BuiltLocation != "" && !strings.HasSuffix(m.BuiltLocation, "/") {
			m.BuiltLocation += "/"
		}
		if m.BuiltName == "" {
			k.bad("No 'BUILT_MODULE_NAME' directive specified for record #%d.", i)
		} else if strings.HasSuffix(m.BuiltName, ".o") || strings.HasSuffix(m.BuiltName, ".ko") {
			k.bad("'BUILT_MODULE_NAME' directive ends in '.o' or '.ko' in record #%d.", i)
		} else if msg := badComponent(m.BuiltName); msg != "" {
			k.bad("'BUILT_MODULE_NAME' %s in record #%d%s.", msg, i, k.at("BUILT_MODULE_NAME"))
		}
		if strings.HasSuffix(m.DestName, ".o") || strings.HasSuffix(m.DestName, ".ko") {
			k.bad("'DEST_MODULE_NAME' directive ends in '.o' or '.ko' in record #%d.", i)
		} else if msg := badComponent(m.DestName); dn.Get(i) != "" && msg != "" {
			k.bad("'DEST_MODULE_NAME' %s in record #%d%s.", msg, i, k.at("DEST_MODULE_NAME"))
		}
		if m.BuiltLocation != "" && escapes(m.BuiltLocation) {
			k.bad("'BUILT_MODULE_LOCATION' '%s' escapes the build directory in record #%d%s.", m.BuiltLocation, i, k.at("BUILT_MODULE_LOCATION"))
		}
		// The texts of dkms 3.0.10's own checks are its own: without the
		// line dkmsd's further checks name.
		if m.RawDestLocation == "" {
			k.bad("No 'DEST_MODULE_LOCATION' directive specified for record #%d.", i)
		}
		switch {
		case !strings.HasPrefix(m.RawDestLocation, "/kernel") && !strings.HasPrefix(m.RawDestLocation, "/updates") && !strings.HasPrefix(m.RawDestLocation, "/extra"):
			k.bad("Directive 'DEST_MODULE_LOCATION' does not begin with\n'/kernel', '/updates', or '/extra' in record #%d.", i)
		case escapes(strings.TrimPrefix(m.RawDestLocation, "/")):
			k.bad("'DEST_MODULE_LOCATION' '%s' escapes the kernel's module directory in record #%d%s.", m.RawDestLocation, i, k.at("DEST_MODULE_LOCATION"))
		}
		m.DestLocation = ctx.Distro.DestLocation(m.RawDestLocation)
		c.Modules = append(c.Modules, m)
	}
	if n == 0 {
		c.Warnings = append(c.Warnings, "dkms.conf: Warning! Zero modules specified.")
	}
	seenBuilt, seenDest := map[string]bool{}, map[string]bool{}
	for i, m := range c.Modules {
		if m.BuiltName != "" && seenBuilt[m.BuiltLocation+m.BuiltName] {
			k.bad("Duplicate module '%s%s' in 'BUILT_MODULE_NAME[%d]'.", m.BuiltLocation, m.BuiltName, i)
		}
		if m.DestName != "" && seenDest[m.DestName] {
			k.bad("Duplicate module '%s' in 'DEST_MODULE_NAME[%d]'.", m.DestName, i)
		}
		seenBuilt[m.BuiltLocation+m.BuiltName], seenDest[m.DestName] = true, true
	}
}

// fillMake chooses the MAKE command for the kernel.
func (k *confCheck) fillMake(vals map[string]Value, ctx ConfContext) {
	c := k.c
	// MAKE: MAKE[0] unless MAKE_MATCH[0] is set; the last matching
	// MAKE_MATCH wins. An unmatched MAKE_MATCH falls back to the default
	// (upstream intent; dkms reused a stale command, quirk 21).
	mk, mm := vals["MAKE"], vals["MAKE_MATCH"]
	// A blank MAKE is no MAKE: bash would run nothing for it.
	if mm.Get(0) == "" {
		c.MakeCommand = strings.TrimSpace(mk.Get(0))
	}
	for _, i := range mk.Indexes() {
		if strings.TrimSpace(mk.Get(i)) == "" || mm.Get(i) == "" {
			continue
		}
		ok, err := matchERE(mm.Get(i), ctx.Kernel)
		if err != nil {
			k.bad("'MAKE_MATCH[%d]' is not a valid regular expression: %v%s.", i, err, k.at("MAKE_MATCH"))
		} else if ok {
			c.MakeCommand = strings.TrimSpace(mk.Get(i))
		}
	}
}

// fillPatches lists the patches that apply to the kernel.
func (k *confCheck) fillPatches(vals map[string]Value, ctx ConfContext) {
	c := k.c
	pt, pm := vals["PATCH"], vals["PATCH_MATCH"]
	for _, i := range pt.Indexes() {
		p := pt.Get(i)
		if p == "" {
			continue
		}
		if escapes(p) {
			k.bad("'PATCH[%d]' '%s' escapes the patches directory%s.", i, p, k.at("PATCH"))
			continue
		}
		if m := pm.Get(i); m != "" {
			ok, err := matchERE(m, ctx.Kernel)
			if err != nil {
				k.bad("'PATCH_MATCH[%d]' is not a valid regular expression: %v%s.", i, err, k.at("PATCH_MATCH"))
				continue
			}
			if !ok {
				continue
			}
		}
		c.Patches = append(c.Patches, p)
	}
}

// matchERE is bash's [[ s =~ re ]]: an unanchored POSIX extended regexp.
func matchERE(re, s string) (bool, error) {
	r, err := regexp.CompilePOSIX(re)
	if err != nil {
		return false, err
	}
	return r.MatchString(s), nil
}

// badComponent says what is wrong with a name used as one path component
// (module, version, module file name), or "".
func badComponent(s string) string {
	switch {
	case s == "." || s == "..":
		return fmt.Sprintf("'%s' is not a usable name", s)
	case strings.ContainsAny(s, "/"):
		return fmt.Sprintf("'%s' contains '/'", s)
	case strings.ContainsAny(s, " \t\n"):
		return fmt.Sprintf("'%s' contains white space", s)
	}
	return ""
}

// escapes reports whether a relative path leaves the directory it is
// relative to (an absolute path, or one with a ".." component).
func escapes(p string) bool {
	if strings.HasPrefix(p, "/") {
		return true
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return true
		}
	}
	return false
}
