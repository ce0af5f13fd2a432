package initrd

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// DepmodFiles are the files `depmod -a` writes, in its order.
var DepmodFiles = []string{
	"modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin",
	"modules.softdep", "modules.symbols", "modules.symbols.bin",
	"modules.builtin.bin", "modules.builtin.alias.bin", "modules.devname",
}

// DepmodInput is what `depmod -a -b ROOT K` reads from
// ROOT/lib/modules/K, and its configuration.
type DepmodInput struct {
	// Modules are the module files under lib/modules/K that depmod
	// would find (Searched tells which paths it looks at).
	Modules []*DepmodModule
	// Files holds depmod's own inputs that exist (modules.order,
	// modules.builtin, modules.builtin.modinfo), by name.
	Files  map[string][]byte
	Config *DepmodConfig
}

// depMod is struct mod: a module in depmod's array.
type depMod struct {
	*DepmodModule
	idx, sortIdx, depSortIdx int
	users                    int
	deps                     []*depMod
}

// Searched reports whether depmod's search of lib/modules/K looks at the
// file rel: no component of its path is ".", "..", "build", "source" or
// an excluded directory.
func (cfg *DepmodConfig) Searched(rel string) bool {
	for _, c := range strings.Split(rel, "/") {
		if cfg.excluded(c) {
			return false
		}
	}
	return true
}

// Depmod computes the files `depmod -a` (kmod 30) writes for in, byte
// for byte. It returns an error wrapping errDepmodUnsure where it cannot
// be sure of depmod's answer — two modules with the same name that only
// the order of a directory listing tells apart, a dependency cycle, a
// string kmod's index does not hold — and the caller runs depmod then.
func Depmod(in *DepmodInput) (map[string][]byte, error) {
	if in.Config.External {
		return nil, unsure("depmod.d names an external module directory")
	}
	mods, err := in.chosen()
	if err != nil {
		return nil, err
	}
	if err := sortByOrder(mods, in.Files); err != nil {
		return nil, err
	}
	syms, symOrder := symbolOwners(mods)
	for _, m := range mods {
		for _, need := range m.Needs {
			name := strings.TrimPrefix(need, ".")
			if name == "" {
				return nil, unsure("%s needs the symbol %q", m.Rel, need)
			}
			owner := syms[name]
			if owner == nil || containsMod(m.deps, owner) {
				continue
			}
			m.deps = append(m.deps, owner)
			owner.users++
		}
	}
	if err := topoSort(mods); err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	if err := writeDeps(out, mods); err != nil {
		return nil, err
	}
	if err := writeModinfo(out, mods); err != nil {
		return nil, err
	}
	if err := writeSymbols(out, syms, symOrder); err != nil {
		return nil, err
	}
	if err := writeBuiltin(out, in.Files); err != nil {
		return nil, err
	}
	return out, nil
}

// chosen returns the modules depmod keeps, one per name, in the order of
// its hash of module names, with their idx.
func (in *DepmodInput) chosen() ([]*depMod, error) {
	builtin := builtinNames(in.Files["modules.builtin"])
	byName := map[string][]*DepmodModule{}
	for _, m := range in.Modules {
		if !in.Config.Searched(m.Rel) {
			continue
		}
		if builtin[m.Name] {
			// libkmod reads the modinfo of a module whose name the
			// builtin index lists from modules.builtin.modinfo.
			return nil, unsure("%s has the name of a built-in module", m.Rel)
		}
		byName[m.Name] = append(byName[m.Name], m)
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	kmodHashOrder(names, 512)
	mods := make([]*depMod, len(names))
	for i, n := range names {
		m, err := in.Config.winner(byName[n])
		if err != nil {
			return nil, err
		}
		mods[i] = &depMod{DepmodModule: m, idx: i, sortIdx: 1, depSortIdx: 1<<31 - 1}
	}
	return mods, nil
}

// winner is the module of a same-name group that depmod keeps whatever
// order its directory walk finds them in: the one that stays when found
// first and replaces any other found first.
func (cfg *DepmodConfig) winner(group []*DepmodModule) (*DepmodModule, error) {
	if len(group) == 1 {
		return group[0], nil
	}
	for _, w := range group {
		wins := true
		for _, x := range group {
			if x != w && (!cfg.keepsOld(w.Rel, x.Rel, w.Name) || cfg.keepsOld(x.Rel, w.Rel, w.Name)) {
				wins = false
				break
			}
		}
		if wins {
			return w, nil
		}
	}
	return nil, unsure("modules named %s of equal priority", group[0].Name)
}

// builtinNames are the module names modules.builtin lists.
func builtinNames(b []byte) map[string]bool {
	out := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" {
			out[modnameOf(l)] = true
		}
	}
	return out
}

// sortByOrder is depmod_modules_sort: modules listed in modules.order
// come first, in its order, the others after in hash order (glibc's
// qsort is a stable merge sort); a last line without a newline makes
// depmod leave the order alone.
func sortByOrder(mods []*depMod, files map[string][]byte) error {
	order, ok := files["modules.order"]
	if !ok {
		return nil
	}
	if bytes.IndexByte(order, 0) >= 0 {
		return unsure("a NUL byte in modules.order")
	}
	lines := strings.SplitAfter(string(order), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	for _, l := range lines {
		if len(l) >= kmodPathMax-1 {
			return unsure("a modules.order line longer than depmod's buffer")
		}
	}
	if n := len(lines); n > 0 && !strings.HasSuffix(lines[n-1], "\n") {
		return nil
	}
	byUncrel := make(map[string]*depMod, len(mods))
	for _, m := range mods {
		n := strings.LastIndexByte(m.Rel, '/') + 1 + len(m.Name) + len(".ko")
		byUncrel[m.Rel[:n]] = m
	}
	total := len(lines) + 1
	for i, l := range lines {
		if m := byUncrel[strings.TrimSuffix(l, "\n")]; m != nil {
			m.sortIdx = i + 1 - total
		}
	}
	sort.SliceStable(mods, func(i, j int) bool { return mods[i].sortIdx < mods[j].sortIdx })
	for i, m := range mods {
		m.idx = i
	}
	return nil
}

// symbolOwners is depmod's symbol hash: each exported symbol's owner,
// the last module in array order that exports it, and the symbols in the
// hash's order.
func symbolOwners(mods []*depMod) (map[string]*depMod, []string) {
	n := 0
	for _, m := range mods {
		n += len(m.Exports)
	}
	syms := make(map[string]*depMod, n)
	for _, m := range mods {
		for _, s := range m.Exports {
			syms[s] = m
		}
	}
	order := make([]string, 0, len(syms))
	for s := range syms {
		order = append(order, s)
	}
	kmodHashOrder(order, 2048)
	return syms, order
}

func containsMod(list []*depMod, m *depMod) bool {
	for _, x := range list {
		if x == m {
			return true
		}
	}
	return false
}

// topoSort is depmod_calculate_dependencies: modules without users are
// the roots, taken last-in first-out; each gets the next dep_sort_idx and
// frees its dependencies; then each module's direct dependencies are
// sorted by it.
func topoSort(mods []*depMod) error {
	users := make([]int, len(mods))
	var roots []int
	for i, m := range mods {
		users[i] = m.users
		if m.users == 0 {
			roots = append(roots, i)
		}
	}
	sorted := 0
	for len(roots) > 0 {
		src := mods[roots[len(roots)-1]]
		roots = roots[:len(roots)-1]
		src.depSortIdx = sorted
		sorted++
		for _, d := range src.deps {
			users[d.idx]--
			if users[d.idx] == 0 {
				roots = append(roots, d.idx)
			}
		}
	}
	if sorted < len(mods) {
		return unsure("a dependency cycle")
	}
	for _, m := range mods {
		sort.Slice(m.deps, func(i, j int) bool { return m.deps[i].depSortIdx < m.deps[j].depSortIdx })
	}
	return nil
}

// allDeps is mod_get_all_sorted_dependencies: every module m needs,
// directly or not, by dep_sort_idx.
func allDeps(m *depMod) []*depMod {
	var out []*depMod
	seen := map[*depMod]bool{}
	var walk func(*depMod)
	walk = func(m *depMod) {
		for _, d := range m.deps {
			if !seen[d] {
				seen[d] = true
				out = append(out, d)
				walk(d)
			}
		}
	}
	walk(m)
	sort.Slice(out, func(i, j int) bool { return out[i].depSortIdx < out[j].depSortIdx })
	return out
}

// writeDeps writes modules.dep and modules.dep.bin.
func writeDeps(out map[string][]byte, mods []*depMod) error {
	var dep bytes.Buffer
	trie := &kmodTrie{}
	for _, m := range mods {
		var b strings.Builder
		b.WriteString(m.Rel + ":")
		for _, d := range allDeps(m) {
			b.WriteString(" " + d.Rel)
		}
		line := b.String()
		dep.WriteString(line + "\n")
		if err := trie.insert(m.Name, line, uint32(m.idx)); err != nil {
			return err
		}
	}
	out["modules.dep"], out["modules.dep.bin"] = dep.Bytes(), trie.bytes()
	return nil
}

// writeModinfo writes modules.alias, modules.alias.bin, modules.softdep
// and modules.devname from the modules' .modinfo.
func writeModinfo(out map[string][]byte, mods []*depMod) error {
	alias := bytes.NewBufferString("# Aliases extracted from modules themselves.\n")
	softdep := bytes.NewBufferString("# Soft dependencies extracted from modules themselves.\n")
	var devname bytes.Buffer
	trie := &kmodTrie{}
	for _, m := range mods {
		for _, kv := range m.Info {
			switch kv[0] {
			case "alias":
				alias.WriteString("alias " + kv[1] + " " + m.Name + "\n")
				a, err := aliasNormalize(kv[1])
				if err == errBadAlias {
					continue // depmod warns and skips it
				}
				if err != nil {
					return err
				}
				if err := trie.insert(a, m.Name, uint32(m.idx)); err != nil {
					return err
				}
			case "softdep":
				softdep.WriteString("softdep " + m.Name + " " + kv[1] + "\n")
			}
		}
		line, err := devnameLine(m)
		if err != nil {
			return err
		}
		if line != "" && devname.Len() == 0 {
			devname.WriteString("# Device nodes to trigger on-demand module loading.\n")
		}
		devname.WriteString(line)
	}
	out["modules.alias"], out["modules.alias.bin"] = alias.Bytes(), trie.bytes()
	out["modules.softdep"], out["modules.devname"] = softdep.Bytes(), devname.Bytes()
	return nil
}

// devnameLine is output_devname's line for m: its devname: alias with
// the last char-major-M-m or block-major-M-m alias before both are
// known; "" without both.
func devnameLine(m *depMod) (string, error) {
	var devname, numbers string
	var typ byte
	for _, kv := range m.Info {
		if kv[0] != "alias" {
			continue
		}
		v := kv[1]
		if strings.HasPrefix(v, "devname:") {
			devname = v[len("devname:"):]
		} else if t, maj, min, err := majorMinor(v); err != nil {
			return "", err
		} else if t != 0 {
			typ, numbers = t, maj+":"+min
		}
		if typ != 0 && devname != "" {
			break
		}
	}
	if devname == "" || typ == 0 {
		return "", nil // depmod reports a devname without numbers
	}
	return fmt.Sprintf("%s %s %c%s\n", m.Name, devname, typ, numbers), nil
}

// majorMinor is sscanf(v, "char-major-%u-%u") (and block-major): the
// type 'c' or 'b' with the two numbers, 0 when v is neither. Numbers
// scanf reads in its own way (blanks, signs, overflow) are refused.
func majorMinor(v string) (byte, string, string, error) {
	var t byte
	switch {
	case strings.HasPrefix(v, "char-major-"):
		t, v = 'c', v[len("char-major-"):]
	case strings.HasPrefix(v, "block-major-"):
		t, v = 'b', v[len("block-major-"):]
	default:
		return 0, "", "", nil
	}
	num := func(s string) (string, string, error) {
		n := 0
		for n < len(s) && s[n] >= '0' && s[n] <= '9' {
			n++
		}
		if n == 0 {
			if s != "" && strings.ContainsAny(s[:1], " \t\n\v\f\r+-") {
				return "", "", unsure("device number %q", s)
			}
			return "", s, nil
		}
		if n > 9 {
			return "", "", unsure("device number %q", s)
		}
		u, _ := strconv.Atoi(s[:n])
		return strconv.Itoa(u), s[n:], nil
	}
	maj, rest, err := num(v)
	if err != nil || maj == "" || !strings.HasPrefix(rest, "-") {
		return 0, "", "", err
	}
	min, _, err := num(rest[1:])
	if err != nil || min == "" {
		return 0, "", "", err
	}
	return t, maj, min, nil
}

// writeSymbols writes modules.symbols and modules.symbols.bin in the
// order of depmod's symbol hash.
func writeSymbols(out map[string][]byte, syms map[string]*depMod, order []string) error {
	text := bytes.NewBufferString("# Aliases for symbols, used by symbol_request().\n")
	trie := &kmodTrie{}
	for _, s := range order {
		m := syms[s]
		text.WriteString("alias symbol:" + s + " " + m.Name + "\n")
		if err := trie.insert("symbol:"+s, m.Name, uint32(m.idx)); err != nil {
			return err
		}
	}
	out["modules.symbols"], out["modules.symbols.bin"] = text.Bytes(), trie.bytes()
	return nil
}
