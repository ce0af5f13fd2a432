package lifecycle

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/u-root/u-root/pkg/cpio"

	"github.com/dkmsd/dkmsd/tree"
)

// DriverDiskOptions are mkdriverdisk's choices.
type DriverDiskOptions struct {
	Distro string // only "redhat"
	Media  string // "iso" (default) or "tar"
	// Archive, when set, is the output path.
	Archive string
}

// MakeDriverDisk writes a Red Hat driver update disk of module/version for
// the targets, as dkms 2.x made it: rhdd, modules.cgz holding
// <kernel>/<arch>/<module>.ko, modinfo, modules.dep, modules.alias and
// pcitable, plus the files the packager put in the source's
// redhat_driver_disk/ directory; as an ISO 9660 image (xorriso) or a
// tarball. It returns the file written.
func MakeDriverDisk(ctx context.Context, e *Env, module, version string, targets []Target, opts DriverDiskOptions) (string, error) {
	if err := opts.check(); err != nil {
		return "", err
	}
	if err := e.RequireAdded(module, version); err != nil {
		return "", err
	}
	if len(targets) == 0 {
		return "", fail(KindNotBuilt, fmt.Sprintf("%s/%s is not built for any kernel.", module, version), "Modules must already be in the built state before using mkdriverdisk.")
	}
	disk, err := os.MkdirTemp(e.Layout.TmpDir, "dkmsd-dd-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(disk)
	files, err := e.driverDiskFiles(ctx, module, version, targets)
	if err != nil {
		return "", err
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(disk, name), data, 0o644); err != nil {
			return "", err
		}
	}
	ext := ".iso"
	if opts.Media == "tar" {
		ext = ".tar.gz"
	}
	out := filepath.Join(e.Layout.VersionDir(module, version), "driver_disk", fmt.Sprintf("%s-%s-dd%s", module, version, ext))
	if opts.Archive != "" {
		out = opts.Archive
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", diskError(out, err)
	}
	var data []byte
	if opts.Media == "tar" {
		var entries []tarEntry
		for name := range files {
			entries = append(entries, tarEntry{name: name, src: filepath.Join(disk, name)})
		}
		data, err = writeTar(entries, out)
	} else {
		data, err = e.driverDiskISO(ctx, module, disk)
	}
	if err != nil {
		return "", err
	}
	if err := writeFileAtomic(out, data, 0o644); err != nil {
		return "", err
	}
	e.info("")
	e.info("Driver disk: %s", out)
	return out, nil
}

// check refuses what dkmsd cannot make; the media defaults to iso.
func (o *DriverDiskOptions) check() error {
	if o.Distro != "redhat" {
		return fail(KindNotSupported, fmt.Sprintf("Driver disks for distribution %q are not supported: only -d redhat.", o.Distro))
	}
	if o.Media == "" {
		o.Media = "iso"
	}
	if o.Media != "iso" && o.Media != "tar" {
		return fail(KindNotSupported, fmt.Sprintf("Driver disk media %q is not supported: use --media iso or tar.", o.Media))
	}
	return nil
}

// driverDiskFiles are the disk's files by name: the generated ones, then
// the packager's own from redhat_driver_disk/, which win.
func (e *Env) driverDiskFiles(ctx context.Context, module, version string, targets []Target) (map[string][]byte, error) {
	mods, err := e.driverDiskModules(ctx, module, version, targets)
	if err != nil {
		return nil, err
	}
	names, infos := mods.names, mods.infos
	files := map[string][]byte{
		"rhdd":          []byte(fmt.Sprintf("DKMS driver disk for %s-%s\n", module, version)),
		"modules.cgz":   mods.cgz,
		"modinfo":       []byte(ddModinfo(names, infos)),
		"modules.dep":   []byte(ddModulesDep(names, infos)),
		"modules.alias": []byte(ddModulesAlias(names, infos)),
		"pcitable":      []byte(ddPcitable(names, infos)),
	}
	extra := filepath.Join(e.Layout.VersionDir(module, version), "source", "redhat_driver_disk")
	if entries, err := os.ReadDir(extra); err == nil {
		for _, en := range entries {
			if en.Type().IsRegular() {
				data, err := os.ReadFile(filepath.Join(extra, en.Name()))
				if err != nil {
					return nil, err
				}
				files[en.Name()] = data
			}
		}
	}
	return files, nil
}

// ddModules is what the disk says about its modules: modules.cgz
// (<kernel>/<arch>/<module>.ko for every target) and each module's
// modinfo, by name.
type ddModules struct {
	cgz   []byte
	names []string
	infos map[string]tree.ModInfo
}

func (e *Env) driverDiskModules(ctx context.Context, module, version string, targets []Target) (*ddModules, error) {
	var cpioRecs []cpio.Record
	dirs := map[string]bool{}
	mods := &ddModules{infos: map[string]tree.ModInfo{}}
	for _, t := range targets {
		conf, err := e.readConf(ctx, e.confFile(module, version), t, false)
		if err != nil {
			return nil, err
		}
		modDir := filepath.Join(e.Layout.BuiltDir(module, version, t.Kernel, t.Arch), "module")
		if !isDir(modDir) {
			return nil, fail(KindNotBuilt, fmt.Sprintf("No modules built for %s (%s).", t.Kernel, t.Arch), "Modules must already be in the built state before using mkdriverdisk.")
		}
		e.info("Marking %s (%s) for the driver disk...", t.Kernel, t.Arch)
		for _, d := range []string{t.Kernel, t.Kernel + "/" + t.Arch} {
			if !dirs[d] {
				dirs[d] = true
				cpioRecs = append(cpioRecs, cpio.Directory(d, 0o755))
			}
		}
		for _, m := range conf.Buildable() {
			f := tree.FindModuleFile(modDir, m.DestName)
			if f == "" {
				return nil, fail(KindMissingBuilt, fmt.Sprintf("Missing module %s in %s", m.DestName, modDir))
			}
			data, err := tree.ReadModuleFile(f)
			if err != nil {
				return nil, err
			}
			name := path.Join(t.Kernel, t.Arch, m.DestName+".ko")
			cpioRecs = append(cpioRecs, cpio.StaticRecord(data, cpio.Info{Name: name, Mode: cpio.S_IFREG | 0o644, NLink: 1}))
			if _, seen := mods.infos[m.DestName]; !seen {
				info, err := tree.ParseModInfo(data)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", f, err)
				}
				mods.infos[m.DestName] = info
				mods.names = append(mods.names, m.DestName)
			}
		}
	}
	sort.Strings(mods.names)
	cgz, err := cgzArchive(cpioRecs)
	if err != nil {
		return nil, err
	}
	mods.cgz = cgz
	return mods, nil
}

// cgzArchive is a reproducible gzipped newc archive of recs.
func cgzArchive(recs []cpio.Record) ([]byte, error) {
	var arch bytes.Buffer
	w := cpio.Newc.Writer(&arch)
	for i, r := range recs {
		r.Ino = uint64(i + 1)
		if err := w.WriteRecord(cpio.MakeReproducible(r)); err != nil {
			return nil, err
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return nil, err
	}
	var cgz bytes.Buffer
	zw := gzip.NewWriter(&cgz)
	if _, err := zw.Write(arch.Bytes()); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return cgz.Bytes(), nil
}

// driverDiskISO is the ISO 9660 image of the disk dir, made by xorriso.
func (e *Env) driverDiskISO(ctx context.Context, module, disk string) ([]byte, error) {
	isoDir, err := os.MkdirTemp(e.Layout.TmpDir, "dkmsd-iso-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(isoDir)
	iso := filepath.Join(isoDir, "dd.iso")
	label := strings.ToUpper(strings.ReplaceAll(module, "-", "_"))
	if len(label) > 32 {
		label = label[:32]
	}
	var msg strings.Builder
	cmd := exec.CommandContext(ctx, "xorriso", "-as", "mkisofs", "-quiet", "-V", label, "-R", "-J", "-o", iso, disk)
	trace(ctx, "", cmd.Args...)
	cmd.Stdout, cmd.Stderr = &msg, &msg
	if err := cmd.Run(); err != nil {
		return nil, &Error{Kind: KindTarball, Lines: []string{"Could not write the ISO image with xorriso (apt-get install xorriso): " + strings.TrimSpace(msg.String())}, Err: err}
	}
	return os.ReadFile(iso)
}

// ddModinfo is anaconda's modinfo file (version 0): each module, its kind
// and its description.
func ddModinfo(names []string, infos map[string]tree.ModInfo) string {
	var b strings.Builder
	b.WriteString("Version 0\n")
	for _, n := range names {
		desc := infos[n].Get("description")
		if desc == "" {
			desc = n
		}
		fmt.Fprintf(&b, "%s\n\tscsi\n\t\"%s\"\n", n, strings.ReplaceAll(desc, `"`, `'`))
	}
	return b.String()
}

func ddModulesDep(names []string, infos map[string]tree.ModInfo) string {
	var b strings.Builder
	for _, n := range names {
		var deps []string
		for _, d := range strings.Split(infos[n].Get("depends"), ",") {
			if d != "" {
				deps = append(deps, d)
			}
		}
		fmt.Fprintf(&b, "%s: %s\n", n, strings.Join(deps, " "))
	}
	return b.String()
}

func ddModulesAlias(names []string, infos map[string]tree.ModInfo) string {
	var b strings.Builder
	for _, n := range names {
		for _, a := range infos[n]["alias"] {
			fmt.Fprintf(&b, "alias %s %s\n", a, n)
		}
	}
	return b.String()
}

// ddPcitable lists the PCI vendor and device ids the modules claim.
func ddPcitable(names []string, infos map[string]tree.ModInfo) string {
	var b strings.Builder
	for _, n := range names {
		for _, a := range infos[n]["alias"] {
			var vendor, device string
			if _, err := fmt.Sscanf(a, "pci:v%8sd%8s", &vendor, &device); err != nil || strings.Contains(vendor, "*") || strings.Contains(device, "*") {
				continue
			}
			fmt.Fprintf(&b, "0x%s\t0x%s\t\"%s\"\t\"%s\"\n", strings.ToLower(vendor[4:]), strings.ToLower(device[4:]), n, infos[n].Get("description"))
		}
	}
	return b.String()
}
