package lifecycle

import (
	"context"
	"path/filepath"
	"strings"
)

// compressTools are the programs that make each compressed module suffix.
var compressTools = map[string]string{".ko.gz": "gzip", ".ko.xz": "xz", ".ko.zst": "zstd"}

// compressOpts are framework.conf's options for tool.
func (e *Env) compressOpts(tool string) string {
	switch tool {
	case "gzip":
		return e.Framework.CompressGzipOpts
	case "xz":
		return e.Framework.CompressXzOpts
	}
	return e.Framework.CompressZstdOpts
}

// compressModule compresses the built module ko for a kernel whose modules
// end in suffix, as dkms does: `gzip|xz|zstd <compress_*_opts> -f ko`,
// word-split, in env, leaving ko.gz, ko.xz or ko.zst beside it, which it
// returns. When the program fails or is missing, ko is returned as it is
// (dkms then installs the module uncompressed) and what went wrong is
// shown as a warning.
func (e *Env) compressModule(ctx context.Context, env []string, ko, suffix string) string {
	tool, ok := compressTools[suffix]
	if !ok {
		return ko
	}
	argv := append(append([]string{tool}, strings.Fields(e.compressOpts(tool))...), "-f", ko)
	out := &lineWriter{sink: e.Sink, typ: Warning}
	defer out.Flush()
	if err := runArgv(ctx, filepath.Dir(ko), env, out, argv...); err != nil {
		if exitCode(err) < 0 {
			e.warn("Warning: %s: %v", tool, err)
		}
		return ko
	}
	packed := ko + strings.TrimPrefix(suffix, ".ko")
	if !exists(packed) {
		return ko
	}
	return packed
}
