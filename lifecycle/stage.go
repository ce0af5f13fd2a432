package lifecycle

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dkmsd/dkmsd/lifecycle/cache"
	"github.com/dkmsd/dkmsd/tree"
	"github.com/dkmsd/dkmsd/tree/atomicfile"
)

// replaceDir moves the complete dir src to dst; an existing dst (a forced
// rebuild) is moved aside first and deleted only once src is in place.
func replaceDir(src, dst string) error {
	old := ""
	if exists(dst) {
		old = fmt.Sprintf("%s.dkmsd-old-%d", dst, os.Getpid())
		if err := os.Rename(dst, old); err != nil {
			return fmt.Errorf("replace %s: %w", dst, err)
		}
	}
	if err := os.Rename(src, dst); err != nil {
		if old != "" {
			_ = os.Rename(old, dst)
		}
		return fmt.Errorf("replace %s: %w", dst, err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(dst)); err != nil {
		return err
	}
	if old != "" {
		return os.RemoveAll(old)
	}
	return nil
}

// stageModules strips (in sb), signs and compresses each built module
// (running the tools in env) into <stage>/module under its
// DEST_MODULE_NAME.
func (e *Env) stageModules(ctx context.Context, sb *buildSandbox, conf *tree.Conf, k buildKernel, buildDir, stage string, sign *signer, env []string, h stageHooks) error {
	modDir := filepath.Join(stage, "module")
	if err := os.MkdirAll(modDir, 0o755); err != nil {
		return diskError(modDir, err)
	}
	suffix := k.moduleSuffix()
	if sym := filepath.Join(buildDir, "Module.symvers"); exists(sym) {
		sym, err := sb.builtFile(buildDir, sym)
		if err != nil {
			return err
		}
		if err := copyFileAtomic(sym, filepath.Join(modDir, "Module.symvers")); err != nil {
			return err
		}
	}
	for _, m := range conf.Buildable() {
		ko := filepath.Join(buildDir, m.BuiltLocation, m.BuiltName+".ko")
		if m.Strip && !h.noStrip {
			var out strings.Builder
			if err := runArgvIn(ctx, sb, buildDir, env, &out, "strip", "-g", ko); err != nil {
				return fmt.Errorf("strip %s: %v: %s", ko, err, strings.TrimSpace(out.String()))
			}
		}
		if _, err := sb.builtFile(buildDir, ko); err != nil {
			return err
		}
		if err := h.keep(m.DestName+".ko", ko); err != nil {
			return err
		}
		if sign != nil {
			e.info("Signing module %s", ko)
			if err := sign.sign(ctx, env, ko); err != nil {
				return &signFailure{ko: ko, key: sign.key, cert: sign.cert, err: err}
			}
			if err := h.keep(m.DestName+".ko"+cache.SignedSuffix, ko); err != nil {
				return err
			}
		}
		file := e.compressModule(ctx, env, ko, suffix)
		ext := ".ko"
		if file != ko {
			ext = suffix
		}
		if err := copyFileAtomic(file, filepath.Join(modDir, m.DestName+ext)); err != nil {
			return err
		}
	}
	return nil
}

// signFailure is sign-file refusing a module (a key and certificate that
// are not a pair, an unreadable key).
type signFailure struct {
	ko, key, cert string
	err           error
}

func (f *signFailure) Error() string { return fmt.Sprintf("sign %s: %v", f.ko, f.err) }
