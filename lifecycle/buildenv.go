package lifecycle

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
)

// shellBookkeeping are variables bash itself sets: they say nothing about
// what a build_environment file asked for.
var shellBookkeeping = map[string]bool{"_": true, "SHLVL": true, "PWD": true, "OLDPWD": true}

// withBuildEnvironment is framework.conf's build_environment applied to
// env, the environment of one build (make, the build scripts, strip,
// sign-file, the compressor): as dkms 3.3 does, the file is sourced by
// bash — with the shell variables kernelver, arch, module, module_version
// and kernel_source_dir set, output discarded — and every variable it
// leaves exported that is new or changed is set for the build. No
// setting, or a file that does not exist, leaves env as it is, as in dkms.
func (e *Env) withBuildEnvironment(ctx context.Context, t Target, env []string) []string {
	file := e.Framework.BuildEnvironment
	if file == "" {
		return env
	}
	if fi, err := os.Stat(file); err != nil || !fi.Mode().IsRegular() {
		return env
	}
	// env itself by its path: the file may well change PATH.
	envTool, err := exec.LookPath("env")
	if err != nil {
		return env
	}
	script := dkmsShellVars(t) +
		"kernel_source_dir=" + shellQuote(e.Layout.KernelBuildDir(t.Kernel)) + "\n" +
		`. "$0" >/dev/null 2>&1` + "\nexec " + shellQuote(envTool) + " -0\n"
	cmd := exec.CommandContext(ctx, "bash", "-c", script, file)
	cmd.Env = env
	stopOnCancel(ctx, cmd)
	out, err := cmd.Output()
	if err != nil {
		// The file ended the shell (exit, a failed `set -e` command)
		// before its variables could be read: dkms imports none then.
		return env
	}
	before := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		before[k] = v
	}
	for _, kv := range bytes.Split(out, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok || shellBookkeeping[k] {
			continue
		}
		if old, had := before[k]; !had || old != v {
			env = append(env, k+"="+v)
		}
	}
	return env
}
