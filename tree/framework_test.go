package tree

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"
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

// TestReadFrameworkUnusedSettings: a variable a framework file leaves set
// that is no setting (a typo, a setting of another dkms release), and a
// setting dkmsd reads but does not act on, are each reported once, with
// the file that set them; settings, environment variables, a function's
// locals and what a file unsets are not.
func TestReadFrameworkUnusedSettings(t *testing.T) {
	dir := t.TempDir()
	// A setting dkmsd does not act on yet, if any is left.
	inert := ""
	if len(inertFrameworkNames) > 0 {
		inert = inertFrameworkNames[0]
		t.Setenv(inert, "")
		os.Unsetenv(inert)
	}
	set := func(name string) string {
		if name == "" {
			return ""
		}
		return name + "='-9'\n"
	}
	for name, body := range map[string]string{
		"framework.conf": "parallel_job=3\nkver=${kernelver%.*}\nsign_file=/usr/lib/linux-kbuild-$kver/scripts/sign-file\nPATH=$PATH:/opt/bin\n" +
			"f() { local tmp=1; helper=$tmp; }\nf\nscratch=1\nunset scratch\nfor i in 1 2; do :; done\n",
		"framework.conf.d/10-x.conf": "export sign_tool=/etc/dkms/sign_helper.sh\n" + set(inert) + "parallel_jobs=2\n",
		"framework.conf.d/20-y.conf": set(inert),
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
	if inert != "" {
		// Reported where it was set, not again where it was set to the
		// same value.
		want = append(want, UnusedSetting{inert, x})
	}
	if !reflect.DeepEqual(fw.Unused, want) {
		t.Errorf("Unused =\n %v\nwant\n %v", fw.Unused, want)
	}
	if fw.ParallelJobs != 2 || fw.SignFile != "/usr/lib/linux-kbuild-6.1/scripts/sign-file" {
		t.Errorf("settings = %+v", fw)
	}
}
