package initrd

import (
	"fmt"
	"path"
	"regexp"
	"strings"
)

// ProbeMarker starts every console line the probe prints: "<marker>
// module <a line of /proc/modules>" for each module asked for that the
// kernel holds, "<marker> modprobe <name>: exit <n>" for a load that
// failed, and "<marker> end" once it is done.
const ProbeMarker = "dkmsd-verify:"

// probeName is a module name the probe script may hold unquoted.
var probeName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Probe is data, an image whose index is idx, with one segment appended
// for a verification boot: a shell fragment the initramfs sources before
// udev starts (initramfs-tools' conf/conf.d, dracut's cmdline hook),
// which loads mods with the image's own modprobe and modules, prints
// what /proc/modules then says of them, and powers the machine off. The
// boot needs no udev, no other module and no root device to get there.
func Probe(idx *Index, data []byte, mods []string) (Output, error) {
	if len(mods) == 0 {
		return Output{data}, nil
	}
	var names []string
	for _, m := range mods {
		if !probeName.MatchString(m) {
			return nil, fmt.Errorf("module name %q cannot be probed", m)
		}
		names = append(names, strings.ReplaceAll(m, "-", "_"))
	}
	// initramfs-tools sources conf/conf.d/* right after mounting /proc,
	// /sys and /dev; dracut sources its cmdline hooks (the shell init and
	// dracut-cmdline.service alike) first of all, before it checks root=.
	// Both source the file: it must not exit.
	name := "conf/conf.d/zz-dkmsd-verify"
	if !idx.InitramfsTools {
		name = "lib/dracut/hooks/cmdline/00-dkmsd-verify.sh"
		if strings.HasPrefix(idx.ModulesDir, "usr/") {
			name = path.Join("usr", name) // lib is a symlink to usr/lib
		}
	}
	return appendSegment(&Base{Data: data, Index: idx}, writable(idx.Main), nil, map[string][]byte{name: probeScript(names)})
}

// probeScript uses shell built-ins and modprobe only: the images hold
// different tools (klibc's, busybox's, coreutils). /proc/modules lists a
// module whose init succeeded as Live; one whose init failed is gone.
func probeScript(names []string) []byte {
	list := strings.Join(names, " ")
	return []byte(`# dkmsd: dkms verify's probe (only in the copy of the image it boots)
dkmsd_verify="` + list + `"
for dkmsd_m in $dkmsd_verify; do
	modprobe "$dkmsd_m" || echo "` + ProbeMarker + ` modprobe $dkmsd_m: exit $?"
done
while read -r dkmsd_m dkmsd_rest; do
	case " $dkmsd_verify " in *" $dkmsd_m "*) echo "` + ProbeMarker + ` module $dkmsd_m $dkmsd_rest" ;; esac
done < /proc/modules
echo "` + ProbeMarker + ` end"
echo o > /proc/sysrq-trigger
`)
}
