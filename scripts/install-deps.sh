#!/usr/bin/env bash
# Installs the Debian packages Midcom needs to build, run and test (idempotent; needs root).
set -euo pipefail
packages=(
  libnetfilter-queue-dev libnftnl-dev libmnl-dev pkg-config  # build: the CNetfilter system library
  nftables iptables iproute2 conntrack procps util-linux     # run: ruleset, lab namespaces, unshare
  python3 python3-scapy python3-cryptography socat tshark systemd  # test: traffic, captures, checks
  natpmpc                                                    # test: an unmodified NAT-PMP client
  curl python3-prometheus-client                             # test: scrape and parse the metrics endpoint
  graphviz mscgen                                            # docs: the diagrams (make diagrams; checked in make test)
  dpkg-dev binutils lintian                                  # package: make deb (dpkg-shlibdeps, strip, lintian)
  libcurl4-openssl-dev                                       # package: static FoundationNetworking links libcurl
  debootstrap man-db                                         # test: package-install.sh (clean root, man -w)
  qemu-system-x86 busybox-static kmod cpio                   # test: Tests/qemu (stock Debian kernel under QEMU: native queue)
  keepalived conntrackd                                      # test: ha-failover.sh (VRRP addresses, FTFW conntrack sync; docs/examples/ha)
)
# `install-deps.sh bench`: also what `make bench` needs (load generators, the miniupnpd reference; figure 10:
# libcrypto for cspload's Ed25519 signatures, the openssl tool for the verification reference; figure 15: the
# relay anchors, Dante's SOCKS5 server and coturn's TURN server, started by the bench in its own namespaces;
# figure 4: valgrind counts the engine's footprint, Benchmarks/footprint.sh).
if [ "${1:-}" = bench ]; then
  packages+=(gcc bc iperf3 miniupnpd-nftables libssl-dev openssl dante-server coturn valgrind)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing ${missing[*]}; run as root (sudo make ...)" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture; answer for it.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
