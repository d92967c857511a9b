# Midcom: the two commands a newcomer needs are `sudo make demo` and `sudo make test`.
SWIFT ?= swift
BUILD := .build/debug

.PHONY: all deps build demo test unit netfilter-tests scenarios wire-tests qemu-test fuzz install uninstall deb clean check-root bench bench-qemu diagrams

all: build

check-root:
	@[ "$$(id -u)" = 0 ] || { echo "make: this target needs root (namespaces, nftables, NFQUEUE): use sudo make $(MAKECMDGOALS)" >&2; exit 1; }

deps: check-root
	@scripts/install-deps.sh

build: deps
	$(SWIFT) build --build-tests
	$(SWIFT) build -c release --product midcomd

## demo: build, then run the gateway lab step by step (client — gateway — server)
demo: build
	@echo "== Midcom demo: a gateway admits a signaled flow and drops an unsignaled one =="
	@bash Tests/integration/foundation.sh

## test: every test: unit, kernel adapter, end-to-end scenarios, wire tools, scenarios on a stock kernel (QEMU)
# The package is built first (scenario package-install installs it into a clean root; qemu-test
# runs its static binaries in the guest).
test: build deb unit scenarios wire-tests qemu-test
	@echo "make test: all suites passed"

# Unit tests and kernel-adapter tests. The whole XCTest run happens in a private, empty network
# namespace (unshare -n): the netfilter tests create tables and queues there, and the namespace
# disappears with the process, even if a test crashes.
unit: check-root
	unshare -n $(SWIFT) test --skip-build

# trust-flood.sh runs the release midcomd: how many spoofed requests a gateway absorbs is a
# property of the build that is deployed, not of a debug build.
scenarios: check-root
	bash Tests/integration/run-all.sh

wire-tests: check-root
	@if [ -x Tests/wire/tshark.sh ]; then bash Tests/wire/tshark.sh; fi
	@if [ -x Tests/wire/fuzz.sh ]; then bash Tests/wire/fuzz.sh $${FUZZ_SECONDS:-30}; fi
	@# The Noise vectors the Swift tests check were made by an independent implementation over
	@# Python's cryptography: it must still produce them (docs/PROTOCOL.md 14.13).
	@python3 Tests/crypto/noise_xx_crosscheck.py --check Tests/CSPTrustTests/Vectors/noise-xx-crosscheck.json

## qemu-test: foundation and signaling scenarios on Debian's stock kernel under QEMU (tcg), where
# midcomd uses the native nft queue expression (this VM's kernel has only the compat target), and
# the flowtable option (this VM's kernel has no flowtables).
# Runs the static binaries `make deb` built last (builds them only if missing): after changing
# the sources, `make deb qemu-test`. Tests/qemu/run.sh explains the harness and its knobs.
qemu-test: check-root
	@bash Tests/qemu/run.sh

## install: binaries to $(PREFIX)/sbin (default /usr/local), ruleset, unit, docs, completions, example configuration
# DESTDIR=DIR stages everything below DIR (no root needed then). The unit's ExecStart/ExecReload
# and Documentation= name the PREFIX used. Manual pages are installed when `make deb` made them.
PREFIX ?= /usr/local
DESTDIR ?=
RELEASE ?= .build/release
PROGRAMS := midcomd midctl csp midrelayd
DOCDIR = $(PREFIX)/share/doc/midcom
MANPAGES = $(wildcard .build-deb/deb/manual/midcomd.8 .build-deb/deb/manual/midctl.8 .build-deb/deb/manual/midrelayd.8 .build-deb/deb/manual/csp.1)
ZSHDIR = $(if $(filter /usr,$(PREFIX)),$(PREFIX)/share/zsh/vendor-completions,$(PREFIX)/share/zsh/site-functions)
DOCS = README.md $(wildcard docs/*.md) $(wildcard docs/diagrams/*.svg) docs/examples/midcomd.conf docs/examples/home-gateway.conf docs/examples/home-gateway.nft
INSTALLED_FILES = $(PREFIX)/sbin/midcomd $(PREFIX)/sbin/midctl $(PREFIX)/sbin/midrelayd $(PREFIX)/bin/csp /etc/nftables.d/midcom.nft \
  /etc/systemd/system/midcomd.service /etc/systemd/system/midrelayd.service $(addprefix $(DOCDIR)/,$(patsubst docs/examples/%,examples/%,$(DOCS))) \
  $(PROGRAMS:%=$(PREFIX)/share/bash-completion/completions/%) $(PROGRAMS:%=$(ZSHDIR)/_%) \
  $(PROGRAMS:%=$(PREFIX)/share/fish/vendor_completions.d/%.fish) \
  $(foreach m,midcomd.8 midctl.8 midrelayd.8 csp.1 midcomd.conf.5,$(PREFIX)/share/man/man$(subst .,,$(suffix $(m)))/$(m).gz)

install: $(if $(DESTDIR),,check-root)
	@for p in $(PROGRAMS); do echo "$(SWIFT) build -c release --product $$p"; $(SWIFT) build -c release --product $$p || exit 1; done
	install -D -m 0755 $(RELEASE)/midcomd $(DESTDIR)$(PREFIX)/sbin/midcomd
	install -D -m 0755 $(RELEASE)/midctl $(DESTDIR)$(PREFIX)/sbin/midctl
	install -D -m 0755 $(RELEASE)/csp $(DESTDIR)$(PREFIX)/bin/csp
	install -D -m 0755 $(RELEASE)/midrelayd $(DESTDIR)$(PREFIX)/sbin/midrelayd
	install -D -m 0644 nft-rules/midcom.nft $(DESTDIR)/etc/nftables.d/midcom.nft
	install -d $(DESTDIR)/etc/systemd/system
	sed -e 's|/usr/local/sbin/|$(PREFIX)/sbin/|g' -e 's|file:///usr/share/doc/midcom/|file://$(DOCDIR)/|' \
	  systemd/midcomd.service >$(DESTDIR)/etc/systemd/system/midcomd.service
	chmod 0644 $(DESTDIR)/etc/systemd/system/midcomd.service
	sed -e 's|/usr/local/sbin/|$(PREFIX)/sbin/|g' -e 's|file:///usr/share/doc/midcom/|file://$(DOCDIR)/|' \
	  systemd/midrelayd.service >$(DESTDIR)/etc/systemd/system/midrelayd.service
	chmod 0644 $(DESTDIR)/etc/systemd/system/midrelayd.service
	@for f in $(DOCS); do case $$f in docs/examples/*) d=examples/$${f#docs/examples/} ;; *) d=$$f ;; esac; \
	  install -D -m 0644 "$$f" "$(DESTDIR)$(DOCDIR)/$$d" || exit 1; done
	@echo "install: documentation in $(DESTDIR)$(DOCDIR)"
	@for p in $(PROGRAMS); do \
	  $(RELEASE)/$$p --generate-completion-script=bash | sed '1{/^#!/d}' | install -D -m 0644 /dev/stdin $(DESTDIR)$(PREFIX)/share/bash-completion/completions/$$p && \
	  $(RELEASE)/$$p --generate-completion-script=zsh | install -D -m 0644 /dev/stdin $(DESTDIR)$(ZSHDIR)/_$$p && \
	  $(RELEASE)/$$p --generate-completion-script=fish | install -D -m 0644 /dev/stdin $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/$$p.fish || exit 1; done
	@echo "install: bash, zsh and fish completions"
	@for m in $(MANPAGES); do n=$$(basename $$m); gzip -9n -c $$m | install -D -m 0644 /dev/stdin $(DESTDIR)$(PREFIX)/share/man/man$${n##*.}/$$n.gz || exit 1; done
	@sed "s/@VERSION@/$$($(RELEASE)/midcomd --version)/" packaging/midcomd.conf.5 | gzip -9n | install -D -m 0644 /dev/stdin $(DESTDIR)$(PREFIX)/share/man/man5/midcomd.conf.5.gz
	@echo "install: manual pages $(if $(MANPAGES),$(notdir $(MANPAGES)) ,)midcomd.conf.5$(if $(MANPAGES),, (midcomd, midctl, midrelayd and csp pages: run make deb first))"
	@if [ -f $(DESTDIR)/etc/midcom/midcomd.conf ]; then echo "install: keeping /etc/midcom/midcomd.conf"; \
	  else install -D -m 0644 docs/examples/midcomd.conf $(DESTDIR)/etc/midcom/midcomd.conf && echo "install: /etc/midcom/midcomd.conf from docs/examples/midcomd.conf"; fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

## uninstall: removes what `make install` put there (same PREFIX and DESTDIR); keeps a changed /etc/midcom/midcomd.conf
uninstall: $(if $(DESTDIR),,check-root)
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ] && { systemctl -q is-active midcomd.service || systemctl -q is-enabled midcomd.service; } 2>/dev/null; then \
	  echo "make uninstall: midcomd.service is running or enabled: 'systemctl disable --now midcomd' first" >&2; exit 1; fi
	@for f in $(INSTALLED_FILES); do if [ -e "$(DESTDIR)$$f" ]; then rm -f "$(DESTDIR)$$f" && echo "removed $(DESTDIR)$$f"; fi; done
	@for d in $(DOCDIR)/docs/diagrams $(DOCDIR)/docs $(DOCDIR)/examples $(DOCDIR) /etc/nftables.d; do rmdir "$(DESTDIR)$$d" 2>/dev/null || true; done
	@c=$(DESTDIR)/etc/midcom/midcomd.conf; if [ -f $$c ]; then \
	  if cmp -s $$c docs/examples/midcomd.conf; then rm -f $$c && echo "removed $$c (as shipped)"; rmdir $(DESTDIR)/etc/midcom 2>/dev/null || true; \
	  else echo "uninstall: kept $$c: it differs from docs/examples/midcomd.conf (your configuration; remove it yourself if you want)"; fi; fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

## deb: the Debian package dist/midcom_<version>_amd64.deb (scripts/make-deb.sh; static Swift runtime, man pages, lintian)
deb:
	@scripts/make-deb.sh

## diagrams: the SVG pictures in docs/diagrams from their text sources (graphviz .dot, mscgen .msc)
diagrams:
	@for f in docs/diagrams/*.dot; do dot -Tsvg "$$f" -o "$${f%.dot}.svg"; done
	@for f in docs/diagrams/*.msc; do mscgen -T svg -i "$$f" -o "$${f%.msc}.svg"; done
	@echo "diagrams: docs/diagrams/*.svg regenerated"

## bench: benchmark suite (≈ 20 min; BENCH_QUICK=1 ≈ 5 min): prints the table, writes Benchmarks/results/latest.json
bench: check-root
	@scripts/install-deps.sh bench
	@bash Benchmarks/bench.sh

## bench-qemu: figures 1 and 5 on Debian's stock kernel under QEMU (≈ 6 min): figure 1 with the native nft
# queue expression (midcomd ÷ the C reference in the same guest, and the same with the compat target as the
# control) and figure 5 with the flowtable option (bulk TCP through the gateway ÷ no table, ÷ a stateful
# firewall); per-run ratios only (emulated CPUs). The static binaries of `make deb`, as qemu-test;
# BENCH_RUNS=N (default 3). Benchmarks/bench.sh's figures 1q and 5q; docs/PERFORMANCE.md, "Figure 1q", "Figure 5q".
bench-qemu: check-root
	@BENCH_FIGURES="1q 5q" bash Benchmarks/bench.sh

clean:
	rm -rf .build
