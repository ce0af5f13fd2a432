package tree

import (
	"sort"
	"strings"

	"mvdan.cc/sh/v3/expand"
	"mvdan.cc/sh/v3/interp"
	"mvdan.cc/sh/v3/syntax"
)

// leftovers are the variables prog assigns (a plain, array, declare or
// export assignment anywhere in it) that are still set when it ends and
// are neither harvested names nor from the environment it was given: in a
// framework.conf, settings nobody reads. A function's locals and loop
// variables are not among them.
func leftovers(prog *syntax.File, runner *interp.Runner, want map[string]bool, env []string) []string {
	given := map[string]bool{}
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		given[name] = true
	}
	seen := map[string]bool{}
	var out []string
	syntax.Walk(prog, func(node syntax.Node) bool {
		a, ok := node.(*syntax.Assign)
		if !ok || a.Name == nil {
			return true
		}
		n := a.Name.Value
		if seen[n] || want[n] || given[n] {
			return true
		}
		seen[n] = true
		if vr, ok := runner.Vars[n]; ok && (vr.IsSet() || vr.Kind == expand.Indexed || vr.Kind == expand.Associative) {
			out = append(out, n)
		}
		return true
	})
	sort.Strings(out)
	return out
}
