package initrd

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"path"
	"slices"
	"strings"
)

// This file holds the data structures whose layout decides the bytes of
// the files depmod writes (kmod 30, Debian 12's): its hash table (whose
// iteration order is the order of modules and symbols), its name
// normalisation, and the trie of the .bin indexes that modprobe reads.

// kmodHash is kmod's hash_superfast (Paul Hsieh's SuperFastHash) of key,
// as kmod computes it on x86: 16-bit loads are little-endian and single
// bytes are C's signed char.
func kmodHash(key string) uint32 {
	n := uint32(len(key))
	h, rem := n, n&3
	u16 := func(i int) uint32 { return uint32(key[i]) | uint32(key[i+1])<<8 }
	sc := func(i int) uint32 { return uint32(int32(int8(key[i]))) }
	i := 0
	for l := n / 4; l > 0; l-- {
		h += u16(i)
		tmp := (u16(i+2) << 11) ^ h
		h = (h << 16) ^ tmp
		i += 4
		h += h >> 11
	}
	switch rem {
	case 3:
		h += u16(i)
		h ^= h << 16
		h ^= sc(i+2) << 18
		h += h >> 11
	case 2:
		h += u16(i)
		h ^= h << 11
		h += h >> 17
	case 1:
		h += sc(i)
		h ^= h << 10
		h += h >> 1
	}
	h ^= h << 3
	h += h >> 5
	h ^= h << 4
	h += h >> 17
	h ^= h << 25
	h += h >> 6
	return h
}

// kmodHashOrder sorts unique keys in the order kmod's hash iterates a
// table of n buckets (a power of two) holding them: bucket by bucket,
// and by strcmp within a bucket (kmod keeps each bucket sorted).
func kmodHashOrder(keys []string, n uint32) {
	type entry struct {
		bucket uint32
		key    string
	}
	e := make([]entry, len(keys))
	for i, k := range keys {
		e[i] = entry{kmodHash(k) & (n - 1), k}
	}
	slices.SortFunc(e, func(a, b entry) int {
		if a.bucket != b.bucket {
			return cmp.Compare(a.bucket, b.bucket)
		}
		return strings.Compare(a.key, b.key) // bytewise, as strcmp
	})
	for i := range e {
		keys[i] = e[i].key
	}
}

// kmodPathMax is PATH_MAX, the size of kmod's name buffers: a name or
// alias that does not fit is one whose handling this package does not
// claim to know.
const kmodPathMax = 4096

// modnameOf is kmod's path_to_modname: the file's base name up to its
// first dot, with '-' made '_'.
func modnameOf(rel string) string {
	name, _, _ := strings.Cut(path.Base(rel), ".")
	return strings.ReplaceAll(name, "-", "_")
}

// aliasNormalize is kmod's alias_normalize: '-' becomes '_' except inside
// a [...] class; an unmatched bracket is an error (depmod skips that
// alias).
func aliasNormalize(alias string) (string, error) {
	if len(alias) >= kmodPathMax-1 {
		return "", fmt.Errorf("%w: alias of %d bytes", errDepmodUnsure, len(alias))
	}
	out := []byte(alias)
	for i := 0; i < len(out); i++ {
		switch out[i] {
		case '-':
			out[i] = '_'
		case ']':
			return "", errBadAlias
		case '[':
			for i < len(out) && out[i] != ']' {
				i++
			}
			if i == len(out) {
				return "", errBadAlias
			}
		}
	}
	return string(out), nil
}

// kmodTrie is depmod's in-memory index (index_node): a trie with
// path-compressed prefixes whose nodes hold values ordered by priority.
type kmodTrie struct {
	prefix string
	values []kmodValue
	// first is the byte of kids[0]; kids spans first..last, nil where a
	// byte has no child.
	first byte
	kids  []*kmodTrie
}

type kmodValue struct {
	value    string
	priority uint32
}

// checkASCII is index__checkstring: kmod's trie only holds 7-bit ASCII
// (a byte above 127 indexes outside its child array).
func checkASCII(s string) error {
	for i := 0; i < len(s); i++ {
		if s[i] >= 128 {
			return fmt.Errorf("%w: non-ASCII index string %q", errDepmodUnsure, s)
		}
	}
	return nil
}

// addValue is index_add_value: the value goes before the first one of
// equal or higher priority (so equal priorities come newest first);
// duplicates are kept.
func (n *kmodTrie) addValue(value string, prio uint32) {
	i := 0
	for i < len(n.values) && n.values[i].priority < prio {
		i++
	}
	n.values = append(n.values, kmodValue{})
	copy(n.values[i+1:], n.values[i:])
	n.values[i] = kmodValue{value, prio}
}

func (n *kmodTrie) child(c byte) *kmodTrie {
	if len(n.kids) == 0 || c < n.first || int(c-n.first) >= len(n.kids) {
		return nil
	}
	return n.kids[c-n.first]
}

func (n *kmodTrie) setChild(c byte, k *kmodTrie) {
	switch {
	case len(n.kids) == 0:
		n.first, n.kids = c, []*kmodTrie{k}
		return
	case c < n.first:
		kids := make([]*kmodTrie, int(n.first-c)+len(n.kids))
		copy(kids[n.first-c:], n.kids)
		n.first, n.kids = c, kids
	case int(c-n.first) >= len(n.kids):
		n.kids = append(n.kids, make([]*kmodTrie, int(c-n.first)+1-len(n.kids))...)
	}
	n.kids[c-n.first] = k
}

// insert is index_insert.
func (n *kmodTrie) insert(key, value string, prio uint32) error {
	if err := checkASCII(key); err != nil {
		return err
	}
	if err := checkASCII(value); err != nil {
		return err
	}
	node, i := n, 0
	for {
		j := 0
		for ; j < len(node.prefix); j++ {
			if i+j < len(key) && node.prefix[j] == key[i+j] {
				continue
			}
			// Split: the node keeps prefix[:j]; a copy of it with
			// prefix[j+1:] becomes its only child, at prefix[j].
			c := node.prefix[j]
			moved := &kmodTrie{prefix: node.prefix[j+1:], values: node.values, first: node.first, kids: node.kids}
			*node = kmodTrie{prefix: node.prefix[:j]}
			node.setChild(c, moved)
			break
		}
		i += j
		if i == len(key) {
			node.addValue(value, prio)
			return nil
		}
		c := key[i]
		next := node.child(c)
		if next == nil {
			k := &kmodTrie{prefix: key[i+1:]}
			k.addValue(value, prio)
			node.setChild(c, k)
			return nil
		}
		node, i = next, i+1
	}
}

// Flags of a node's offset in the file (libkmod-index.c).
const (
	kmodNodePrefix = 0x80000000
	kmodNodeValues = 0x40000000
	kmodNodeChilds = 0x20000000
)

// bytes is index_write: magic, version 2.1, the root's offset, then the
// nodes written children first (post-order), each as its prefix (NUL
// ended), its child range and the children's offsets, and its values
// (count, then priority and NUL-ended string each), all big-endian.
func (n *kmodTrie) bytes() []byte {
	out := make([]byte, 12, 4096)
	binary.BigEndian.PutUint32(out[0:], 0xB007F457)
	binary.BigEndian.PutUint32(out[4:], 0x00020001)
	out, root := n.write(out)
	binary.BigEndian.PutUint32(out[8:], root)
	return out
}

func (n *kmodTrie) write(out []byte) ([]byte, uint32) {
	if n == nil {
		return out, 0
	}
	offs := make([]uint32, len(n.kids))
	for i, k := range n.kids {
		out, offs[i] = k.write(out)
	}
	off := uint32(len(out))
	if n.prefix != "" {
		out = append(append(out, n.prefix...), 0)
		off |= kmodNodePrefix
	}
	if len(n.kids) > 0 {
		out = append(out, n.first, n.first+byte(len(n.kids)-1))
		for _, o := range offs {
			out = binary.BigEndian.AppendUint32(out, o)
		}
		off |= kmodNodeChilds
	}
	if len(n.values) > 0 {
		out = binary.BigEndian.AppendUint32(out, uint32(len(n.values)))
		for _, v := range n.values {
			out = binary.BigEndian.AppendUint32(out, v.priority)
			out = append(append(out, v.value...), 0)
		}
		off |= kmodNodeValues
	}
	return out, off
}
