package tree

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestReadFrameworkOrderEnvAndKernelver(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("framework.conf", "dkms_tree=/srv/dkms\nparallel_jobs=3\nhelper() { echo x; }\nsign_file=\"/usr/lib/linux-kbuild-${kernelver%.*}/scripts/sign-file\"\n")
	write("framework.conf.d/10-a.conf", "parallel_jobs=5\nmok_signing_key=/a.key\n")
	write("framework.conf.d/20-b.conf", "mok_signing_key=/b.key\n")
	write("framework.conf.d/notes.txt", "parallel_jobs=99\n")
	t.Setenv("mok_certificate", "/env.pub")
	fw, err := ReadFramework(context.Background(), dir, "6.1.0-56-amd64", os.Environ(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if fw.DKMSTree != "/srv/dkms" || fw.ParallelJobs != 5 || fw.MOKSigningKey != "/b.key" || fw.MOKCertificate != "/env.pub" {
		t.Errorf("framework = %+v", fw)
	}
	if fw.SignFile != "/usr/lib/linux-kbuild-6.1/scripts/sign-file" {
		t.Errorf("sign_file = %q", fw.SignFile)
	}
	if len(fw.Files) != 3 {
		t.Errorf("files read = %q", fw.Files)
	}
	l := fw.Apply(NewLayout("/sandbox"))
	if l.DKMSTree != "/sandbox/srv/dkms" || l.SourceTree != "/sandbox/usr/src" {
		t.Errorf("layout = %+v", l)
	}
}

// TestReadFrameworkDkms34Settings reads the settings dkms 3.4 added: the
// compress_*_opts defaults, set before the files (which may extend them)
// and not taken from the environment; try_sign_modules and
// build_environment, which the environment may give.
func TestReadFrameworkDkms34Settings(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("compress_gzip_opts", "-9")
	t.Setenv("try_sign_modules", "false")
	t.Setenv("build_environment", "/opt/env")
	fw, err := ReadFramework(context.Background(), dir, "", os.Environ(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if fw.CompressGzipOpts != "" || fw.CompressXzOpts != "--check=crc32 --lzma2=dict=1MiB" || fw.CompressZstdOpts != "-q --rm -T0" {
		t.Errorf("defaults without framework.conf: gzip %q, xz %q, zstd %q", fw.CompressGzipOpts, fw.CompressXzOpts, fw.CompressZstdOpts)
	}
	if fw.TrySignModules != "false" || fw.BuildEnvironment != "/opt/env" {
		t.Errorf("from the environment: try_sign_modules %q, build_environment %q", fw.TrySignModules, fw.BuildEnvironment)
	}
	conf := `compress_xz_opts="$compress_xz_opts -9"
compress_zstd_opts=""
try_sign_modules=not_in_chroot
post_transaction="update-initramfs -u -k $kernelver"
`
	if err := os.WriteFile(filepath.Join(dir, "framework.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	fw, err = ReadFramework(context.Background(), dir, "6.1.0-56-amd64", os.Environ(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if fw.CompressXzOpts != "--check=crc32 --lzma2=dict=1MiB -9" || fw.CompressZstdOpts != "" || fw.TrySignModules != "not_in_chroot" {
		t.Errorf("from framework.conf: xz %q, zstd %q, try_sign_modules %q", fw.CompressXzOpts, fw.CompressZstdOpts, fw.TrySignModules)
	}
	if fw.PostTransaction != "update-initramfs -u -k 6.1.0-56-amd64" {
		t.Errorf("post_transaction = %q", fw.PostTransaction)
	}
}

// TestFrameworkSettingsDocumented checks that dist/framework.conf, the
// file installed as /etc/dkms/framework.conf, shows every setting read.
func TestFrameworkSettingsDocumented(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "dist", "framework.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range frameworkNames {
		if !strings.Contains(string(data), "\n# "+name+"=") {
			t.Errorf("dist/framework.conf has no commented example of %s", name)
		}
	}
}

// TestReadFrameworkUnusedSettings: a variable a framework file leaves set
// that is no setting (a typo, a setting of another dkms release), and a
// setting dkmsd reads but does not act on, are each reported once, with
// the file that set them; settings, environment variables, a function's
// locals and what a file unsets are not.
func TestReadFrameworkUnusedSettings(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"framework.conf": "parallel_job=3\nkver=${kernelver%.*}\nsign_file=/usr/lib/linux-kbuild-$kver/scripts/sign-file\nPATH=$PATH:/opt/bin\n" +
			"f() { local tmp=1; helper=$tmp; }\nf\nscratch=1\nunset scratch\nfor i in 1 2; do :; done\n",
		"framework.conf.d/10-x.conf": "export sign_tool=/etc/dkms/sign_helper.sh\ncompress_xz_opts='-9'\nparallel_jobs=2\n",
		"framework.conf.d/20-y.conf": "post_transaction=true\n",
	} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fw, err := ReadFramework(context.Background(), dir, "6.1.0-56-amd64", os.Environ(), nil)
	if err != nil {
		t.Fatal(err)
	}
	main, x := filepath.Join(dir, "framework.conf"), filepath.Join(dir, "framework.conf.d/10-x.conf")
	want := []UnusedSetting{{"helper", main}, {"kver", main}, {"parallel_job", main}, {"sign_tool", x}}
	if !reflect.DeepEqual(fw.Unused, want) {
		t.Errorf("Unused =\n %v\nwant\n %v", fw.Unused, want)
	}
	if fw.ParallelJobs != 2 || fw.CompressXzOpts != "-9" || fw.PostTransaction != "true" || fw.SignFile != "/usr/lib/linux-kbuild-6.1/scripts/sign-file" {
		t.Errorf("settings = %+v", fw)
	}
}

// TestReadFrameworkBuildTimeout: build_timeout is seconds, 0 is no limit,
// and unset or unreadable is the default.
func TestReadFrameworkBuildTimeout(t *testing.T) {
	for _, c := range []struct {
		conf string
		want time.Duration
	}{
		{"", DefaultBuildTimeout},
		{"build_timeout=0\n", 0},
		{"build_timeout=3\n", 3 * time.Second},
		{"build_timeout=soon\n", DefaultBuildTimeout},
		{"build_timeout=-5\n", DefaultBuildTimeout},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "framework.conf"), []byte(c.conf), 0o644); err != nil {
			t.Fatal(err)
		}
		fw, err := ReadFramework(context.Background(), dir, "", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if fw.BuildTimeout != c.want {
			t.Errorf("%q: BuildTimeout = %v, want %v", c.conf, fw.BuildTimeout, c.want)
		}
	}
}

// TestReadFrameworkBuildMemoryPerJob: build_memory_per_job is a size in
// MiB, 0 turns the memory budget off, and "auto", unset or anything else
// leaves it learned.
func TestReadFrameworkBuildMemoryPerJob(t *testing.T) {
	for _, c := range []struct {
		conf   string
		perJob int
		off    bool
	}{
		{"", 0, false},
		{"build_memory_per_job=auto\n", 0, false},
		{"build_memory_per_job=768\n", 768, false},
		{"build_memory_per_job=0\n", 0, true},
		{"build_memory_per_job=lots\n", 0, false},
		{"build_memory_per_job=-5\n", 0, false},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "framework.conf"), []byte(c.conf), 0o644); err != nil {
			t.Fatal(err)
		}
		fw, err := ReadFramework(context.Background(), dir, "", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if fw.BuildMemoryPerJob != c.perJob || fw.NoMemoryBudget != c.off || len(fw.Unused) != 0 {
			t.Errorf("%q: BuildMemoryPerJob %d, NoMemoryBudget %v, unused %v; want %d, %v, none", c.conf, fw.BuildMemoryPerJob, fw.NoMemoryBudget, fw.Unused, c.perJob, c.off)
		}
	}
}
