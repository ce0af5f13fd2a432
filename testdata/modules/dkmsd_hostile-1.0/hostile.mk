# dkmsd test fixture: each recipe line tries one thing a hostile build
# would, says TRIED, and says ESCAPED only if it worked. The environment
# names the test's secrets (DKMSD_HOSTILE_KEY, DKMSD_HOSTILE_SECRET) and
# its TCP listener (DKMSD_HOSTILE_PORT). The "module" made at the end
# records what the build could read.
all:
	@echo TRIED write-etc; if echo pwned > /etc/dkmsd-pwned; then echo ESCAPED write-etc; fi
	@echo TRIED read-root-ssh; if ls /root/.ssh; then echo ESCAPED read-root-ssh; fi
	@echo TRIED read-secret; if cat "$(DKMSD_HOSTILE_SECRET)" > got-secret; then echo ESCAPED read-secret; fi
	@echo TRIED read-mok-key; if cat "$(DKMSD_HOSTILE_KEY)" > got-key && [ -s got-key ]; then echo ESCAPED read-mok-key; fi
	@echo TRIED tcp; if bash -c 'echo hello > /dev/tcp/127.0.0.1/$(DKMSD_HOSTILE_PORT)'; then echo ESCAPED tcp; fi
	@echo TRIED daemon; setsid sh -c 'exec sleep $(DKMSD_HOSTILE_SLEEP)' < /dev/null > /dev/null 2>&1 &
	@echo TRIED rm-home; rm -rf "$(HOME)"; if [ ! -e "$(HOME)" ]; then echo ESCAPED rm-home; fi
	@echo TRIED write-source; if touch "$(SRC)/pwned"; then echo ESCAPED write-source; fi
	@echo TRIED write-headers; if touch "$(KDIR)/pwned"; then echo ESCAPED write-headers; fi
	@cat got-secret got-key > dkmsd_hostile.ko 2>/dev/null || true
	@echo built >> dkmsd_hostile.ko

clean:
