package tree

import "strings"

// VersionKey is dkms's VER(): digit runs are left-padded to three digits so
// that a byte-wise comparison orders versions (6.1.0-56 → 006.001.000-056).
func VersionKey(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); {
		j := i
		digits := v[i] >= '0' && v[i] <= '9'
		for j < len(v) && (v[j] >= '0' && v[j] <= '9') == digits {
			j++
		}
		run := v[i:j]
		if digits && len(run) < 3 {
			run = strings.Repeat("0", 3-len(run)) + run
		}
		b.WriteString(run)
		i = j
	}
	return b.String()
}

// CompareVersions orders two versions by VersionKey: -1, 0 or 1.
func CompareVersions(a, b string) int {
	return strings.Compare(VersionKey(a), VersionKey(b))
}
