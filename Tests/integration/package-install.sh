#!/usr/bin/env bash
# Packages (issue 13): the .deb an operator installs (scripts/make-deb.sh) goes with apt into a
# clean Debian root made by debootstrap, where there is no Swift toolchain by construction, and
# runs from there: midcomd --check on the shipped conffile, --version of the three tools, no
# libswift, the manual pages; then the root's own midcomd, midctl, csp and nft (the package's
# nftables dependency) run a gateway in namespaces: an unsignaled UDP flow is dropped, one
# signaled with the root's csp passes. apt-get remove stops nothing (no systemd there) and warns
# about the include left in nftables.conf; apt-get purge leaves no /var/lib/midcom, no
# /etc/midcom and no enable link.
#
#   client 10.200.1.2 ── gw: chroot's midcomd, strict profile as shipped ── server 10.200.2.2
#
# The .deb: $MIDCOM_DEB, else dist/midcom_<version>_<arch>.deb (built by make-deb.sh if absent;
# `make test` builds it before the scenarios). The root: `debootstrap --variant=minbase` of this
# host's release from the Debian mirror apt uses here ($MIDCOM_DEBIAN_MIRROR overrides), cached
# once built as a tarball in /var/cache/midcom-tests (MIDCOM_ROOT_CACHE=DIR elsewhere, 0: none;
# refreshed after 30 days). The root, its mounts and the namespaces are removed on exit.
source "$(dirname "$0")/lib.sh"

version=$(sed -n 's/^public let midcomVersion = "\([^"]*\)".*/\1/p' "$ROOT/Sources/CommandLineSupport/CommandLineConventions.swift")
arch=$(dpkg --print-architecture)
deb=${MIDCOM_DEB:-$ROOT/dist/midcom_${version}_${arch}.deb}
if [ -z "${MIDCOM_DEB:-}" ] && [ ! -f "$deb" ] && [ "$(id -u)" = 0 ]; then
  echo "  - no $deb: building it (scripts/make-deb.sh)"
  MIDCOM_LINTIAN=0 timeout 1800 bash "$ROOT/scripts/make-deb.sh" >"/tmp/midcom-package-build.$$.log" 2>&1 \
    || { tail -n 30 "/tmp/midcom-package-build.$$.log" >&2; rm -f "/tmp/midcom-package-build.$$.log"; echo "FAIL: make-deb.sh failed" >&2; exit 1; }
  rm -f "/tmp/midcom-package-build.$$.log"
fi

# lab_init without its check of $BIN: this test runs the package's binaries, not a build's.
[ "$(id -u)" = 0 ] || { echo "FAIL: integration tests need root (debootstrap, chroot, namespaces): run 'sudo make test'" >&2; exit 1; }
LAB_NAME=package
LAB_TAG="mc$$${LAB_NAME:0:6}"
LAB_DIR=$(mktemp -d "/tmp/midcom-$LAB_NAME.XXXXXX")
PKGROOT=""
PKG_MOUNTS=()

# The root's mounts go before anything is deleted: processes running in the root are ended,
# the mounts are undone (lazily if busy), and the root is removed only when nothing is mounted
# under it any more, and then without crossing into another file system.
pkg_cleanup() {
  local rc=$? i pid
  trap '' PIPE
  set +e
  for pid in "${LAB_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  if [ -n "$PKGROOT" ]; then
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
      [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$PKGROOT" ] && kill -9 "$pid" 2>/dev/null
    done
    sleep 0.2
  fi
  for ((i = ${#PKG_MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${PKG_MOUNTS[i]}" 2>/dev/null || umount -l "${PKG_MOUNTS[i]}" 2>/dev/null
  done
  if [ -n "$PKGROOT" ] && [ -d "$PKGROOT" ]; then
    if awk -v r="$PKGROOT" '$2 == r || index($2, r "/") == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
      echo "FAIL: still mounted under $PKGROOT; left in place:" >&2
      awk -v r="$PKGROOT" 'index($2, r) == 1' /proc/self/mounts >&2
      rc=1
    else
      rm -rf --one-file-system "$PKGROOT"
    fi
  fi
  (exit $rc)
  lab_cleanup
}
trap pkg_cleanup EXIT
# A timeout's SIGTERM (run-all.sh) or ^C ends the test through the same clean-up.
trap 'exit 143' TERM; trap 'exit 130' INT; trap 'exit 129' HUP

# in_root CMD...: a command inside the root (host network namespace).
in_root() { chroot "$PKGROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }
# in_ns_root NS CMD...: a command inside the root, in a lab namespace.
in_ns_root() { local n=$1; shift; in_ns "$n" chroot "$PKGROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }
run() { set +e; out=$("$@" 2>&1); rc=$?; set -e; }
root_midctl() { in_ns_root gw /usr/sbin/midctl "$@"; }
root_counter() { root_midctl status --json | $PY -c "import json,sys; print(json.load(sys.stdin)['counters'].get('$1', 0))"; }

step "package: $deb"
[ -f "$deb" ] || fail "no package at $deb (MIDCOM_DEB, or run make deb)"
expect_eq "$(dpkg-deb -f "$deb" Package Version Architecture | tr '\n' ' ')" "Package: midcom Version: $version Architecture: $arch " "control fields"
step "Depends: $(dpkg-deb -f "$deb" Depends)"

# ---------------------------------------------------------------------------------------------
step "a clean root: debootstrap --variant=minbase (cached once built)"
. /etc/os-release
suite=${VERSION_CODENAME:-bookworm}
# The mirror apt uses here: the first Debian archive (not -security) in its sources.
apt_uris() {
  awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
  sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true
}
mirror=${MIDCOM_DEBIAN_MIRROR:-$(apt_uris | grep -E '/debian/?$' | head -1 || true)}
mirror=${mirror:-http://deb.debian.org/debian}
cache_dir=${MIDCOM_ROOT_CACHE:-/var/cache/midcom-tests}
cache="$cache_dir/debootstrap-$suite-minbase-$arch.tar.gz"
PKGROOT=$(mktemp -d /var/tmp/midcom-package-root.XXXXXX)
chmod 0755 "$PKGROOT"
t0=$(date +%s)
if [ "$cache_dir" != 0 ] && [ -f "$cache" ] && [ -n "$(find "$cache" -mtime -30)" ]; then
  tar -xzf "$cache" -C "$PKGROOT" --numeric-owner || fail "unpacking $cache"
  step "root unpacked from $cache in $(( $(date +%s) - t0 ))s"
else
  command -v debootstrap >/dev/null || fail "debootstrap is missing: run scripts/install-deps.sh"
  timeout 300 debootstrap --variant=minbase "$suite" "$PKGROOT" "$mirror" >"$LAB_DIR/debootstrap.log" 2>&1 \
    || { tail -n 20 "$LAB_DIR/debootstrap.log" >&2; fail "debootstrap $suite from $mirror"; }
  step "debootstrap --variant=minbase $suite $mirror: $(( $(date +%s) - t0 ))s"
  if [ "$cache_dir" != 0 ]; then
    mkdir -p "$cache_dir"
    # Without the downloaded .debs and package lists (apt-get update runs anyway): ~40 MB.
    tar -czf "$cache.$$" -C "$PKGROOT" --numeric-owner --exclude='./var/cache/apt/archives/*.deb' \
      --exclude='./var/lib/apt/lists/*_*' . && mv "$cache.$$" "$cache" || rm -f "$cache.$$"
  fi
fi
[ -x "$PKGROOT/usr/bin/apt-get" ] || fail "the root has no apt-get"
cp /etc/resolv.conf "$PKGROOT/etc/resolv.conf"
# As in any chroot: services are never started by package scripts.
printf '#!/bin/sh\nexit 101\n' >"$PKGROOT/usr/sbin/policy-rc.d"; chmod 0755 "$PKGROOT/usr/sbin/policy-rc.d"
for dir in /proc /dev /dev/pts /sys; do
  mount --bind "$dir" "$PKGROOT$dir"
  PKG_MOUNTS+=("$PKGROOT$dir")
done
# No /run from the host: the root must not see (or stop) the host's systemd.
[ ! -e "$PKGROOT/run/systemd/system" ] || fail "the root sees a running systemd"
run in_root sh -c 'command -v swift swiftc; ls -d /opt/swift /usr/lib/swift 2>/dev/null; find / -xdev -name "libswift*" -print -quit'
expect_eq "$out" "" "a Swift toolchain or runtime in the clean root"

# ---------------------------------------------------------------------------------------------
step "apt-get install ./$(basename "$deb") in the root"
cp "$deb" "$PKGROOT/tmp/"
t0=$(date +%s)
timeout 120 chroot "$PKGROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin apt-get update -q >"$LAB_DIR/apt-update.log" 2>&1 \
  || { tail -n 20 "$LAB_DIR/apt-update.log" >&2; fail "apt-get update in the root"; }
set +e
timeout 180 chroot "$PKGROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q "/tmp/$(basename "$deb")" >"$LAB_DIR/apt-install.log" 2>&1
rc=$?; set -e
[ $rc -eq 0 ] || { tail -n 30 "$LAB_DIR/apt-install.log" >&2; fail "apt-get install exited $rc"; }
step "installed in $(( $(date +%s) - t0 ))s, with: $(sed -n 's/^Setting up \([^ :]*\).*/\1/p' "$LAB_DIR/apt-install.log" | tr '\n' ' ')"
install_log=$(cat "$LAB_DIR/apt-install.log")
expect_match "$install_log" "^Setting up midcom \($version\)" "midcom configured"
expect_match "$install_log" "^Setting up nftables " "nftables installed as a dependency"
expect_match "$install_log" "midcom: to run the gateway, add 'include \"/usr/share/midcom/midcom.nft\"' to /etc/nftables.conf, then 'systemctl enable --now nftables midcomd'" "postinst tells the two steps"
expect_no_match "$install_log" "(^E: |^dpkg: error|Failed to)" "apt-get install output"
expect_eq "$(in_root dpkg-query -W -f '${Status}' midcom)" "install ok installed" "dpkg status"
[ ! -e "$PKGROOT/etc/systemd/system/multi-user.target.wants/midcomd.service" ] || fail "installing enabled the service"

step "the installed files"
for f in /usr/sbin/midcomd /usr/sbin/midctl /usr/bin/csp /usr/sbin/midrelayd /lib/systemd/system/midcomd.service /lib/systemd/system/midrelayd.service /usr/share/midcom/midcom.nft \
  /etc/midcom/midcomd.conf /usr/share/doc/midcom/README.md /usr/share/doc/midcom/copyright \
  /usr/share/doc/midcom/examples/home-gateway.conf /usr/share/doc/midcom/examples/home-gateway.nft \
  /usr/share/bash-completion/completions/midctl /usr/share/zsh/vendor-completions/_csp /usr/share/fish/vendor_completions.d/midcomd.fish; do
  [ -s "$PKGROOT$f" ] || fail "$f is missing or empty"
done
expect_eq "$(in_root cat /var/lib/dpkg/info/midcom.conffiles)" "/etc/midcom/midcomd.conf" "conffiles"
cmp -s "$PKGROOT/etc/midcom/midcomd.conf" "$PKGROOT/usr/share/doc/midcom/examples/midcomd.conf" \
  || fail "/etc/midcom/midcomd.conf is not the strict profile (examples/midcomd.conf)"
unit=$(cat "$PKGROOT/lib/systemd/system/midcomd.service")
expect_match "$unit" "^ExecStart=/usr/sbin/midcomd --config /etc/midcom/midcomd.conf$" "the unit's ExecStart"
expect_match "$unit" "^ExecReload=/usr/sbin/midctl " "the unit's ExecReload"
expect_no_match "$unit" "/usr/local" "the unit"
expect_match "$(grep '^Documentation=' <<<"$unit")" "file:///usr/share/doc/midcom/README.md" "Documentation="
if command -v systemd-analyze >/dev/null; then
  # As systemd-unit.sh does for the repo's unit: verify checks that ExecStart names an executable.
  mkdir -p "$LAB_DIR/units"
  sed "s|=/usr/sbin/|=$PKGROOT/usr/sbin/|g" <<<"$unit" >"$LAB_DIR/units/midcomd.service"
  out=$(systemd-analyze verify "$LAB_DIR/units/midcomd.service" 2>&1) || fail "systemd-analyze verify of the packaged unit: $out"
  expect_eq "$out" "" "systemd-analyze verify of the packaged unit"
fi

step "midcomd --check on the shipped configuration; --version; no Swift library"
run in_root /usr/sbin/midcomd --check --config /etc/midcom/midcomd.conf
indent <<<"$out"
expect_eq "$rc" 0 "midcomd --check --config /etc/midcom/midcomd.conf"
for tool in /usr/sbin/midcomd /usr/sbin/midctl /usr/bin/csp; do
  expect_eq "$(in_root "$tool" --version)" "$version" "$tool --version"
done
libs=$(in_root ldd /usr/sbin/midcomd)
expect_no_match "$libs" "libswift|libFoundation|libdispatch|/opt/swift|not found" "ldd /usr/sbin/midcomd"
owners=""
for lib in $(awk '$2 == "=>" && $3 ~ /^\// { print $3 }' <<<"$libs"); do
  owner=$(in_root dpkg -S "$lib" 2>/dev/null || in_root dpkg -S "/usr$lib" 2>/dev/null) || fail "no package of the root owns $lib"
  owners+="${owner%%:*} "
done
step "ldd /usr/sbin/midcomd: $(grep -c '=>' <<<"$libs") libraries, from $(tr ' ' '\n' <<<"$owners" | sort -u | grep -c .) of the root's packages"
expect_match "$libs" "libnetfilter_queue\.so\.1 => /" "libnetfilter_queue from the root"

step "manual pages: midcomd(8), midctl(8), csp(1), midcomd.conf(5)"
for page in midcomd.8 midctl.8 csp.1 midcomd.conf.5; do
  f="$PKGROOT/usr/share/man/man${page##*.}/$page.gz"
  [ -s "$f" ] || fail "no manual page $page"
  if command -v man >/dev/null; then
    expect_eq "$(man -M "$PKGROOT/usr/share/man" -w "${page##*.}" "${page%.*}")" "$f" "man -w ${page%.*}"
    text=$(MANWIDTH=80 man -l "$f" 2>&1 | col -b 2>/dev/null || true)
    expect_match "$text" "${page%.*}" "man page $page renders"
  fi
done

# ---------------------------------------------------------------------------------------------
step "the root's binaries as a gateway: client — gw — server, the shipped strict profile"
lab_basic
in_ns_root gw nft -f /usr/share/midcom/midcom.nft || fail "the root's nft could not load /usr/share/midcom/midcom.nft"
expect_match "$(in_ns gw nft list table inet midcom | head -3)" "midcom ruleset revision" "table inet midcom from the packaged ruleset"
mkdir -p "$PKGROOT/run/midcom"   # systemd's RuntimeDirectory=midcom
lab_bg gw "$LAB_DIR/gw-midcomd.log" chroot "$PKGROOT" /usr/sbin/midcomd --config /etc/midcom/midcomd.conf
daemon=$LAB_LAST_PID
for i in $(seq 1 100); do
  root_midctl status >/dev/null 2>&1 && break
  kill -0 "$daemon" 2>/dev/null || { cat "$LAB_DIR/gw-midcomd.log" >&2; fail "the root's midcomd exited at start"; }
  [ "$i" -lt 100 ] || fail "the root's midcomd did not answer on /run/midcom/control.sock within 10 s"
  sleep 0.1
done
status=$(root_midctl status)
indent <<<"$(head -n 6 <<<"$status")"
expect_match "$status" "$version" "midctl status shows the version"
[ -s "$PKGROOT/var/lib/midcom/identity.key" ] || fail "midcomd kept no key in the root's /var/lib/midcom"
lab_bg server "$LAB_DIR/listen.log" chroot "$PKGROOT" /usr/bin/csp listen --duration 60
lab_serve server "$LAB_DIR/udp.log" $FLOWS udp-echo 5000 --duration 60
sleep 0.3

step "unsignaled UDP 10.200.1.2:4001 -> 10.200.2.2:5000: dropped"
dropped=$(root_counter unsignaled_dropped)
out=$(in_ns client $FLOWS udp-ping 10.200.2.2 5000 --sport 4001 --count 5 --interval 0.05 --wait 0.5)
indent <<<"$out"
expect_match "$out" "sent 5 replies 0" "unsignaled flow"
[ "$(root_counter unsignaled_dropped)" -gt "$dropped" ] || fail "midcomd counted no unsignaled drop"

step "the root's csp setup udp 10.200.2.2:5000 --sport 4000: ACCEPT, then the flow passes"
run in_ns_root client /usr/bin/csp setup udp 10.200.2.2:5000 --sport 4000 --lifetime 30
indent <<<"$out"
expect_eq "$rc" 0 "csp setup exit status"
expect_match "$out" "ACCEPT from .*:7227" "ACCEPT from the server's csp listen"
expect_match "$out" "middlebox gw1 id [0-9a-f]{16} epoch [0-9]+: admitted" "the gateway's record"
out=$(in_ns client $FLOWS udp-ping 10.200.2.2 5000 --sport 4000 --count 20 --interval 0.01 --wait 0.5)
indent <<<"$out"
expect_match "$out" "sent 20 replies 20 from 10\.200\.2\.2:5000" "signaled flow"
expect_match "$(root_midctl sessions)" "udp +10\.200\.1\.2:4000 +10\.200\.2\.2:5000 +admitted" "midctl sessions"
kill -TERM "$daemon"
for _ in $(seq 1 50); do kill -0 "$daemon" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$daemon" 2>/dev/null || fail "midcomd did not stop on SIGTERM within 5 s"

step "reinstall (as an upgrade does): the operator's edit of the conffile survives, the postinst says what to restart"
echo "# the operator's edit" >>"$PKGROOT/etc/midcom/midcomd.conf"
set +e
out=$(timeout 120 chroot "$PKGROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --reinstall "/tmp/$(basename "$deb")" 2>&1)
rc=$?; set -e
indent <<<"$(grep -E '^midcom:' <<<"$out")"
expect_eq "$rc" 0 "apt-get install --reinstall"
expect_match "$out" "^midcom: upgraded from $version; .*systemctl reload nftables && systemctl restart midcomd" "postinst on upgrade"
expect_match "$(tail -n 1 "$PKGROOT/etc/midcom/midcomd.conf")" "^# the operator's edit$" "the edited conffile after the upgrade"

# ---------------------------------------------------------------------------------------------
step "apt-get remove: nothing to stop without systemd; the include left in nftables.conf is named"
echo 'include "/usr/share/midcom/midcom.nft"' >>"$PKGROOT/etc/nftables.conf"
set +e
out=$(timeout 120 chroot "$PKGROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive apt-get remove -y -q midcom 2>&1)
rc=$?; set -e
indent <<<"$(grep -E '^(Removing|midcom:)' <<<"$out")"
expect_eq "$rc" 0 "apt-get remove"
expect_no_match "$out" "(^E: |^dpkg: error|Failed to|System has not been booted|midcomd\.service)" "apt-get remove output"
expect_match "$out" "midcom: /etc/nftables.conf still includes /usr/share/midcom/midcom.nft" "warning about the include"
expect_eq "$(in_root dpkg-query -W -f '${Status}' midcom)" "deinstall ok config-files" "dpkg status after remove"
[ ! -e "$PKGROOT/usr/sbin/midcomd" ] || fail "remove left /usr/sbin/midcomd"
[ -f "$PKGROOT/etc/midcom/midcomd.conf" ] || fail "remove deleted the conffile (only purge may)"
[ -d "$PKGROOT/var/lib/midcom" ] || fail "remove deleted the middlebox's key (only purge may)"

step "apt-get purge: no /var/lib/midcom, no /etc/midcom, no enable link"
mkdir -p "$PKGROOT/etc/systemd/system/multi-user.target.wants"
ln -s /lib/systemd/system/midcomd.service "$PKGROOT/etc/systemd/system/multi-user.target.wants/midcomd.service"
echo "# the operator's notes" >"$PKGROOT/etc/midcom/notes"
set +e
out=$(timeout 120 chroot "$PKGROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive apt-get purge -y -q midcom 2>&1)
rc=$?; set -e
expect_eq "$rc" 0 "apt-get purge"
expect_no_match "$out" "(^E: |^dpkg: error|Failed to)" "apt-get purge output"
for gone in /var/lib/midcom /etc/midcom /etc/systemd/system/multi-user.target.wants/midcomd.service /usr/share/midcom /usr/share/doc/midcom; do
  [ ! -e "$PKGROOT$gone" ] && [ ! -L "$PKGROOT$gone" ] || fail "purge left $gone"
done
expect_eq "$(in_root dpkg-query -W -f '${Status}' midcom 2>/dev/null || echo none)" "none" "dpkg status after purge"
echo "package-install: all checks passed"
