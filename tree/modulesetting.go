package tree

import (
	"context"
	"os"
	"path/filepath"
)

// ModuleSetting is the value the administrator's /etc/dkms/<module>.conf
// gives name ("" when the file or the setting is absent). It is read from
// that file alone, never from the package's dkms.conf: a setting such as
// BUILD_SANDBOX=no is the administrator's to give, not the package's.
func ModuleSetting(ctx context.Context, l Layout, module, name string, env []string) (string, error) {
	file := filepath.Join(l.ConfDir, module+".conf")
	src, err := os.ReadFile(file)
	if err != nil {
		return "", nil
	}
	ev := shellEval{Env: env}
	res, err := ev.run(ctx, file, src, []string{name})
	if err != nil {
		return "", err
	}
	return res.Values[name].Scalar(), nil
}
