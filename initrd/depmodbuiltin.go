package initrd

import "strings"

// writeBuiltin writes modules.builtin.bin (from modules.builtin) and
// modules.builtin.alias.bin (from modules.builtin.modinfo). depmod opens
// each output before it looks for the input: without the input the
// output is an empty file.
func writeBuiltin(out map[string][]byte, files map[string][]byte) error {
	out["modules.builtin.bin"], out["modules.builtin.alias.bin"] = []byte{}, []byte{}
	if b, ok := files["modules.builtin"]; ok {
		trie := &kmodTrie{}
		lines := strings.SplitAfter(string(b), "\n")
		for _, l := range lines {
			if l == "" {
				continue
			}
			c := l[0]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
				continue // depmod reports the line and skips it
			}
			base := l[strings.LastIndexByte(l, '/')+1:]
			if len(l) >= kmodPathMax-1 || strings.IndexByte(l, 0) >= 0 || !strings.Contains(base, ".") {
				return unsure("modules.builtin line %q", l)
			}
			if err := trie.insert(modnameOf(strings.TrimSuffix(l, "\n")), "", 0); err != nil {
				return err
			}
		}
		out["modules.builtin.bin"] = trie.bytes()
	}
	if b, ok := files["modules.builtin.modinfo"]; ok {
		data, err := builtinAliases(b)
		if err != nil {
			return err
		}
		out["modules.builtin.alias.bin"] = data
	}
	return nil
}

// kmodStream reads bytes as depmod reads modules.builtin.modinfo with
// fgetc: -1 at the end, which sets eof.
type kmodStream struct {
	b   []byte
	pos int
	eof bool
}

func (s *kmodStream) get() int {
	if s.pos >= len(s.b) {
		s.eof = true
		return -1
	}
	s.pos++
	return int(s.b[s.pos-1])
}

// until is flush_stream_to: the bytes before end, or "" when the read
// stopped at a NUL or the end of the file instead. A field longer than
// depmod's buffer is refused.
func (s *kmodStream) until(end int) (string, error) {
	start := s.pos
	c := s.get()
	for c != -1 && c != end && c != 0 {
		c = s.get()
	}
	n := s.pos - start
	if c != -1 {
		n-- // the byte that ended the field
	}
	if n >= kmodPathMax-1 {
		return "", unsure("a modules.builtin.modinfo field longer than depmod's buffer")
	}
	if c != end {
		return "", nil
	}
	return string(s.b[start : s.pos-1]), nil
}

// skip is flush_stream: past the next end byte, NUL or the end.
func (s *kmodStream) skip(end int) {
	for c := s.get(); c != -1 && c != end && c != 0; c = s.get() {
	}
}

// builtinAliases is output_builtin_alias_bin: modname.alias=value
// records of modules.builtin.modinfo, indexed by the normalised alias.
func builtinAliases(b []byte) ([]byte, error) {
	trie := &kmodTrie{}
	s := &kmodStream{b: b}
	for !s.eof {
		mod, err := s.until('.')
		if err != nil {
			return nil, err
		}
		if mod == "" {
			continue
		}
		key, err := s.until('=')
		if err != nil {
			return nil, err
		}
		if key != "alias" {
			s.skip(0)
			continue
		}
		value, err := s.until(0)
		if err != nil {
			return nil, err
		}
		if value == "" {
			continue
		}
		alias, err := aliasNormalize(value)
		if err == errBadAlias {
			continue // depmod warns and skips it
		}
		if err != nil {
			return nil, err
		}
		if err := trie.insert(alias, mod, 0); err != nil {
			return nil, err
		}
	}
	return trie.bytes(), nil
}
