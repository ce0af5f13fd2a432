package tree

import (
	"context"
	"os"
	"path/filepath"
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
