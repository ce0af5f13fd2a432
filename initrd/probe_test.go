package initrd_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/initrd"
)

// TestProbe appends the verification probe to a copy of an image: the
// image's bytes come first unchanged, and the one new file is where the
// image's initramfs sources it before udev (initramfs-tools' conf/conf.d,
// dracut's cmdline hook under usr/lib, lib being a symlink), holding the
// modules by their kernel names. A name the shell could misread is
// refused.
func TestProbe(t *testing.T) {
	requireBuildTools(t)
	mod := hostModules(t, 1, nil)[0]
	for _, tc := range []struct {
		name           string
		initramfsTools bool
		file           string
	}{
		{"initramfs-tools", true, "conf/conf.d/zz-dkmsd-verify"},
		{"dracut", false, "usr/lib/dracut/hooks/cmdline/00-dkmsd-verify.sh"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := buildFixture(t, codecNamed(t, "zstd"), mainSpec{modules: map[string][]byte{mod.rel: mod.data}, initramfsTools: tc.initramfsTools})
			before := parse(t, data)
			idx, err := initrd.WriteIndex(before, testKernel, initrd.Digest(data), t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			out, err := initrd.Probe(idx, data, []string{"dkmsd-hello", "zfs"})
			if err != nil {
				t.Fatalf("Probe: %v", err)
			}
			probe := bytes.Join(out, nil)
			if !bytes.HasPrefix(probe, data) {
				t.Fatalf("the probe image does not start with the image's %d bytes", len(data))
			}
			after := parse(t, probe)
			if len(after.Segments) != len(before.Segments)+1 {
				t.Errorf("%d segments, want %d + 1", len(after.Segments), len(before.Segments))
			}
			script, err := after.Content(tc.file)
			if err != nil {
				t.Fatalf("%s: %v", tc.file, err)
			}
			for _, want := range []string{`dkmsd_verify="dkmsd_hello zfs"`, `modprobe "$dkmsd_m"`, "< /proc/modules", initrd.ProbeMarker + " end", "/proc/sysrq-trigger"} {
				if !strings.Contains(string(script), want) {
					t.Errorf("%s lacks %q:\n%s", tc.file, want, script)
				}
			}
			if strings.Contains(string(script), "exit\n") {
				t.Errorf("%s exits the shell that sources it:\n%s", tc.file, script)
			}
			if _, err := initrd.Probe(idx, data, []string{"zfs; reboot"}); err == nil {
				t.Errorf("Probe took a module name with shell syntax in it")
			}
		})
	}
}
