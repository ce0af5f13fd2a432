# dkmsd — Dynamic Kernel Module Support in Go.
PREFIX ?= /usr
DESTDIR ?=
SBINDIR ?= $(PREFIX)/sbin
SYSTEMDDIR ?= $(PREFIX)/lib/systemd
GO ?= go
BIN := bin
VERSION ?= 0.1.0

.PHONY: fuzz all build test demo install install-files install-hooks bench prereqs vet clean deb rpm

all: build

build:
	$(GO) build -trimpath -ldflags "-X main.dkmsdVersion=$(VERSION)" -o $(BIN)/dkms ./cmd/dkms
	$(GO) build -trimpath -o $(BIN)/dkmsd-notify ./cmd/dkmsd-notify
	$(GO) build -trimpath -o $(BIN)/dkmsd-kernel-install ./cmd/dkmsd-kernel-install
	$(GO) build -trimpath -o $(BIN)/dkmsd-apt ./cmd/dkmsd-apt
	$(GO) build -trimpath -o $(BIN)/dkmsd-dnf ./cmd/dkmsd-dnf
	$(GO) build -trimpath -o $(BIN)/dkmsd-alpm ./cmd/dkmsd-alpm

prereqs:
	@sh .ci/prereqs.sh

vet:
	@test -z "$$(gofmt -l .)" || { echo "not gofmt-formatted:"; gofmt -l .; exit 1; }
	$(GO) vet ./...

# Unit, integration (real headers, real depmod) and differential (dkms
# 3.0.10) tests. Integration tests need root and fail under CI=true when a
# prerequisite is missing.
test: prereqs vet
	$(GO) test -count=1 -timeout 60m -run '$(LONG_TESTS)' ./cmd/dkms & long=$$!; \
	$(GO) test -count=1 -timeout 60m -skip '$(LONG_TESTS)|$(TIMING_TESTS)' ./...; rest=$$?; \
	wait $$long && test $$rest -eq 0
	$(GO) test -count=1 -p 1 -timeout 60m -tags systemtest -run '$(SYSTEM_TESTS)|$(TIMING_TESTS)' ./...
	$(MAKE) fuzz FUZZTIME=100000x

# The fuzz targets (the initrd reader, the tarball checker, the dkms.conf
# evaluator), each for a bounded number of inputs (a count, not a time: a
# slow input caught by the deadline makes go test report a failure that is
# none); their seed corpora are in testdata/.
FUZZTIME ?= 200000x
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./initrd
	$(GO) test -run '^$$' -fuzz '^FuzzCheckTarball$$' -fuzztime $(FUZZTIME) ./lifecycle
	$(GO) test -run '^$$' -fuzz '^FuzzReadConf$$' -fuzztime $(FUZZTIME) ./tree

# The longest test of the parallel step, in a go test process of its own
# started first: it then runs beside everything else instead of after
# cmd/dkms's other tests (go test runs a package's tests one after another,
# but for those that call t.Parallel).
LONG_TESTS := ^TestDifferentialDkms3010RealHeaders$$

# Tests bound by time (a build stopped a few seconds after its limit,
# kills timed from a first run, a deadline per QEMU boot under TCG, builds
# under a memory cgroup, a CPU budget measured, a registry that must be
# given up on within 5 s): not in the parallel step, where they would
# compete for the CPUs, but in the serial one, alone.
TIMING_TESTS := ^(TestBuildTimeout|TestMOKGenerationKilledNeverMismatched$$|TestBootQEMU|TestAutoinstallRealHeadersMemoryBudget$$|TestAutoinstallRealHeadersCPUBudget$$|TestCacheRealHeadersFleet$$)

# Tests that install kernel packages or dkmsd's own package on this machine
# (and put everything back), and the crash harness, long and timing-bound
# (`systemtest` build tag, so the parallel step does not compile it): after
# the others, one at a time, with TIMING_TESTS.
SYSTEM_TESTS := RealAptKernelImageAndHeaders|RealAptHeadersAfterImage|RealKernelInstall|RealHooksDoubleFiring|RealHeadersAptPendingFlush|SystemDebianPackage|CrashSafetyKillRealHeaders|CrashSafetyKillUninstallInitrdEveryStep

# The main job end to end on a sandboxed root: add, build and install the
# test modules for every kernel with headers, show status, uninstall, remove.
demo: prereqs build
	@sh dist/demo.sh $(BIN)/dkms

# dkmsd and the reference side by side on this machine: dkms status and
# autoinstall against dkms 3.0.10, initrd regeneration against
# update-initramfs, a no-op hook run against dkms's autoinstaller.
bench: prereqs
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 150m ./...

install: build install-files

# Lays out what `build` made, without building (the RPM spec uses it).
install-files:
	install -D -m 0755 $(BIN)/dkms $(DESTDIR)$(SBINDIR)/dkms
	install -D -m 0755 $(BIN)/dkmsd-notify $(DESTDIR)$(PREFIX)/bin/dkmsd-notify
	install -d -m 0755 $(DESTDIR)/var/lib/dkms $(DESTDIR)/etc/dkms/framework.conf.d
	install -D -m 0644 dist/framework.conf $(DESTDIR)/etc/dkms/framework.conf
	install -D -m 0644 dist/dbus/org.dkmsd.Manager1.conf $(DESTDIR)$(PREFIX)/share/dbus-1/system.d/org.dkmsd.Manager1.conf
	install -D -m 0644 dist/dbus/org.dkmsd.Manager1.service $(DESTDIR)$(PREFIX)/share/dbus-1/system-services/org.dkmsd.Manager1.service
	install -D -m 0644 dist/systemd/dkmsd-dbus.service $(DESTDIR)$(SYSTEMDDIR)/system/dkmsd-dbus.service
	install -D -m 0644 dist/systemd/dkmsd.service $(DESTDIR)$(SYSTEMDDIR)/system/dkmsd.service
	install -D -m 0644 dist/systemd/user/dkmsd-notify.service $(DESTDIR)$(PREFIX)/lib/systemd/user/dkmsd-notify.service
	install -D -m 0644 dist/xdg/dkmsd-notify.desktop $(DESTDIR)/etc/xdg/autostart/dkmsd-notify.desktop
	install -D -m 0644 dist/journal/dkmsd.catalog $(DESTDIR)$(PREFIX)/lib/systemd/catalog/dkmsd.catalog
	install -D -m 0755 dist/dkms/common.postinst $(DESTDIR)$(PREFIX)/lib/dkms/common.postinst
	install -D -m 0644 dist/man/dkms.8 $(DESTDIR)$(PREFIX)/share/man/man8/dkms.8
	install -D -m 0644 dist/man/dkmsd-notify.1 $(DESTDIR)$(PREFIX)/share/man/man1/dkmsd-notify.1
	install -D -m 0644 dist/completion/dkms.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/dkms
	install -D -m 0644 dist/completion/_dkms $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_dkms
	$(MAKE) install-hooks

# The hook binaries and the files that make each package manager run them.
install-hooks:
	install -D -m 0755 $(BIN)/dkms $(DESTDIR)$(PREFIX)/libexec/dkmsd/dkms
	install -D -m 0755 $(BIN)/dkmsd-kernel-install $(DESTDIR)$(PREFIX)/libexec/dkmsd/dkmsd-kernel-install
	install -D -m 0755 $(BIN)/dkmsd-apt $(DESTDIR)$(PREFIX)/libexec/dkmsd/dkmsd-apt
	install -D -m 0755 $(BIN)/dkmsd-dnf $(DESTDIR)$(PREFIX)/libexec/dkmsd/dkmsd-dnf
	install -D -m 0755 $(BIN)/dkmsd-alpm $(DESTDIR)$(PREFIX)/libexec/dkmsd/dkmsd-alpm
	install -D -m 0755 dist/kernel-install/40-dkmsd.install $(DESTDIR)$(PREFIX)/lib/kernel/install.d/40-dkmsd.install
	install -D -m 0755 dist/kernel/postinst.d/dkmsd $(DESTDIR)/etc/kernel/postinst.d/dkmsd
	install -D -m 0755 dist/kernel/header_postinst.d/dkmsd $(DESTDIR)/etc/kernel/header_postinst.d/dkmsd
	install -D -m 0755 dist/kernel/prerm.d/dkmsd $(DESTDIR)/etc/kernel/prerm.d/dkmsd
	install -D -m 0755 dist/kernel/preinst.d/dkmsd $(DESTDIR)/etc/kernel/preinst.d/dkmsd
	install -D -m 0644 dist/apt/95dkmsd $(DESTDIR)/etc/apt/apt.conf.d/95dkmsd
	install -D -m 0644 dist/dnf/dkmsd.action $(DESTDIR)/etc/dnf/plugins/post-transaction-actions.d/dkmsd.action
	install -D -m 0644 dist/dnf5/dkmsd.actions $(DESTDIR)/etc/dnf/libdnf5-plugins/actions.d/dkmsd.actions
	install -D -m 0644 dist/alpm/dkmsd-install.hook $(DESTDIR)$(PREFIX)/share/libalpm/hooks/70-dkmsd-install.hook
	install -D -m 0644 dist/alpm/dkmsd-remove.hook $(DESTDIR)$(PREFIX)/share/libalpm/hooks/70-dkmsd-remove.hook
	install -D -m 0755 dist/initramfs-tools/hooks/dkmsd $(DESTDIR)$(PREFIX)/share/initramfs-tools/hooks/dkmsd
	install -D -m 0644 dist/dracut/50-dkmsd.conf $(DESTDIR)$(PREFIX)/lib/dracut/dracut.conf.d/50-dkmsd.conf

# The Debian package (debian/, built with dpkg-buildpackage in a copy of the
# tree), into $(BIN)/.
deb:
	rm -rf $(BIN)/debbuild && mkdir -p $(BIN)/debbuild/dkmsd-$(VERSION)
	tar --exclude=./bin --exclude=./.git -cf - . | tar -C $(BIN)/debbuild/dkmsd-$(VERSION) -xf -
	cd $(BIN)/debbuild/dkmsd-$(VERSION) && dpkg-buildpackage -b -us -uc -d
	cp $(BIN)/debbuild/dkmsd_$(VERSION)_amd64.deb $(BIN)/
	@echo "built $(BIN)/dkmsd_$(VERSION)_amd64.deb"

# The RPM (dist/rpm/dkmsd.spec) for Fedora-style systems, into $(BIN)/.
rpm:
	rm -rf $(BIN)/rpmbuild && mkdir -p $(BIN)/rpmbuild/SOURCES
	tar --exclude=./bin --exclude=./.git --transform 's,^\.,dkmsd-$(VERSION),' -czf $(BIN)/rpmbuild/SOURCES/dkmsd-$(VERSION).tar.gz .
	rpmbuild -bb --define "_topdir $(CURDIR)/$(BIN)/rpmbuild" --define "version $(VERSION)" --nodeps dist/rpm/dkmsd.spec
	cp $(BIN)/rpmbuild/RPMS/x86_64/dkmsd-$(VERSION)-*.rpm $(BIN)/
	@echo "built $$(ls $(BIN)/dkmsd-$(VERSION)-*.rpm)"

clean:
	rm -rf $(BIN)
