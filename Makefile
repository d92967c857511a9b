# Midcom: the two commands a newcomer needs are `sudo make demo` and `sudo make test`.
SWIFT ?= swift
BUILD := .build/debug

.PHONY: all deps build demo test unit netfilter-tests scenarios wire-tests fuzz install clean check-root bench diagrams

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

## test: every test: unit, kernel adapter, end-to-end scenarios, wire tools
test: build unit scenarios wire-tests
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

## install: binaries to /usr/local/sbin, ruleset, unit and example configuration
install: check-root
	$(SWIFT) build -c release
	install -m 0755 .build/release/midcomd /usr/local/sbin/midcomd
	install -m 0755 .build/release/midctl /usr/local/sbin/midctl
	install -m 0755 .build/release/csp /usr/local/bin/csp
	install -D -m 0644 nft-rules/midcom.nft /etc/nftables.d/midcom.nft
	install -D -m 0644 systemd/midcomd.service /etc/systemd/system/midcomd.service
	[ -f /etc/midcom/midcomd.conf ] || install -D -m 0644 docs/examples/midcomd.conf /etc/midcom/midcomd.conf

## diagrams: the SVG pictures in docs/diagrams from their text sources (graphviz .dot, mscgen .msc)
diagrams:
	@for f in docs/diagrams/*.dot; do dot -Tsvg "$$f" -o "$${f%.dot}.svg"; done
	@for f in docs/diagrams/*.msc; do mscgen -T svg -i "$$f" -o "$${f%.msc}.svg"; done
	@echo "diagrams: docs/diagrams/*.svg regenerated"

## bench: benchmark suite (≈ 20 min; BENCH_QUICK=1 ≈ 5 min): prints the table, writes Benchmarks/results/latest.json
bench: check-root
	@scripts/install-deps.sh bench
	@bash Benchmarks/bench.sh

clean:
	rm -rf .build
