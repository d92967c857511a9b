#!/usr/bin/env bash
# Builds the QEMU guest for `make qemu-test`: Debian's stock cloud kernel and an initramfs that
# runs Midcom's own namespace scenarios inside it (Tests/qemu/run.sh boots it).
#
# Why: this machine's kernel lacks the native nft `queue` expression (nft_queue), so on the host
# midcomd always falls back to the xtables NFQUEUE target through nft_compat. Every stock
# distribution kernel has nft_queue; the guest is where the native encoding carries packets.
#
# What goes into the image (nothing is installed into the host system):
#   kernel    linux-image-<abi>-cloud-amd64 (what the metapackage linux-image-cloud-amd64 points
#             at; MIDCOM_QEMU_KERNEL=linux-image-6.1.0-57-cloud-amd64 pins one), fetched with
#             `apt-get download` and unpacked with `dpkg-deb -x` into the cache
#   modules   every netfilter module of that kernel, veth, and what they depend on (depmod
#             order; modules.dep and modules.alias, so the guest's modprobe can also autoload)
#   userland  busybox-static for the small tools; the host's bash, python3 (only the stdlib
#             modules the traffic helpers import), nft, ip, conntrack and GNU date, each with
#             the libraries `ldd` names; no xtables plugins, so nft prints a compat rule as
#             `xt target "NFQUEUE"` instead of translating it to look native
#   midcom    the release binaries with the Swift runtime linked statically, as `make deb`
#             builds them (scripts/make-deb.sh, scratch .build-deb; built here, niced, only when
#             missing; MIDCOM_QEMU_BIN=DIR takes them from elsewhere), nft-rules/midcom.nft,
#             Tests/integration (lib.sh and the scenarios, unchanged) and Tests/qemu
#   bench     only with MIDCOM_QEMU_BENCH_BIN=DIR (the bench's figure 1q sets it): the C programs
#             nfqref and udpblast from DIR (Benchmarks/bench.sh builds them there, linked against the
#             host's libraries, which go in as for nft) and Benchmarks/lib.sh; a separate cached image
#
# Cache: MIDCOM_QEMU_CACHE (default /var/cache/midcom-qemu) keeps the kernel package, its unpacked
# tree and the last initramfs (one for the tests, one with the bench's programs), named after the
# SHA-256 of everything that went into it: an unchanged tree reuses it, any changed input (a binary,
# a script, a host library) builds a new one and removes the old. Needs root (the cache, /dev/console
# in the image).
#
# Output: the last two lines on stdout are `KERNEL=path` and `INITRD=path`; progress on stderr.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${MIDCOM_QEMU_CACHE:-/var/cache/midcom-qemu}
QEMU_DIR="$ROOT/Tests/qemu"

log() { echo "qemu-image: $*" >&2; }
die() { echo "qemu-image: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (the cache in $CACHE, device nodes in the image): sudo make qemu-test"
for tool in apt-get apt-cache dpkg-deb depmod cpio ldd sha256sum strip; do
  command -v "$tool" >/dev/null || die "$tool is missing: run scripts/install-deps.sh"
done
[ -x /bin/busybox ] || die "/bin/busybox is missing: run scripts/install-deps.sh (busybox-static)"
mkdir -p "$CACHE/debs" "$CACHE/kernels"

# --- 1. The kernel package: the one the metapackage points at (Debian's current stock cloud
# kernel), downloaded once and unpacked once. Offline, or when apt cannot get it, the newest
# kernel already in the cache does.
resolve_kernel() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -1
}
fetch_kernel() {   # fetch_kernel PACKAGE: the .deb into $CACHE/debs, unpacked into $CACHE/kernels
  local pkg=$1 kdir="$CACHE/kernels/$1" deb
  [ -f "$kdir/.complete" ] && return 0
  deb=$(ls -1 "$CACHE/debs/${pkg}_"*.deb 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$deb" ]; then
    log "apt-get download $pkg (once; kept in $CACHE/debs)"
    # apt's sandbox user cannot write into a root-only directory: download as root on purpose.
    (cd "$CACHE/debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2) || return 1
    deb=$(ls -1 "$CACHE/debs/${pkg}_"*.deb | sort -V | tail -1)
  fi
  log "unpacking $(basename "$deb")"
  # (Called in a condition, where set -e does not apply: every step checks its own status.)
  rm -rf "$kdir" "$kdir.tmp"
  dpkg-deb -x "$deb" "$kdir.tmp" && touch "$kdir.tmp/.complete" && mv "$kdir.tmp" "$kdir" || return 1
  # One kernel in the cache: the others (older ABIs) go with their packages.
  for old in "$CACHE"/kernels/*; do [ "$old" = "$kdir" ] || rm -rf "$old"; done
  for old in "$CACHE"/debs/*.deb; do [ "$old" = "$deb" ] || rm -f "$old"; done
}
cached_kernel() { ls -1d "$CACHE"/kernels/*/.complete 2>/dev/null | sed 's|/.complete$||; s|.*/||' | sort -V | tail -1; }

pkg=${MIDCOM_QEMU_KERNEL:-}
if [ -z "$pkg" ]; then
  pkg=$(resolve_kernel)
  if [ -z "$pkg" ] && [ -z "$(cached_kernel)" ]; then
    log "apt does not know linux-image-cloud-amd64 yet: apt-get update"
    apt-get update -qq >&2 || true
    pkg=$(resolve_kernel)
  fi
fi
if [ -z "$pkg" ] || ! fetch_kernel "$pkg"; then
  cached=$(cached_kernel)
  [ -n "$cached" ] || die "cannot get ${pkg:-linux-image-cloud-amd64} (apt-get update? network?) and no kernel is cached in $CACHE/kernels"
  log "cannot get ${pkg:-the current cloud kernel}; using the cached $cached"
  pkg=$cached
fi
kdir="$CACHE/kernels/$pkg"
vmlinuz=$(ls -1 "$kdir"/boot/vmlinuz-* | head -1)
kver=${vmlinuz##*/vmlinuz-}
[ -d "$kdir/lib/modules/$kver" ] || die "$kdir has no lib/modules/$kver"
[ -f "$kdir/lib/modules/$kver/modules.dep" ] || depmod -b "$kdir" "$kver"

# --- 2. The midcom binaries: static Swift runtime, the flags of scripts/make-deb.sh.
bin=${MIDCOM_QEMU_BIN:-$ROOT/.build-deb/release}
missing=0
for p in midcomd midctl csp; do [ -x "$bin/$p" ] || missing=1; done
if [ $missing = 1 ]; then
  [ -z "${MIDCOM_QEMU_BIN:-}" ] || die "MIDCOM_QEMU_BIN=$bin lacks midcomd, midctl or csp"
  command -v "${SWIFT:-swift}" >/dev/null || die "no static midcom binaries in $bin and no Swift toolchain to build them"
  build=(build -c release --static-swift-stdlib --disable-local-rpath -Xlinker -z -Xlinker now --scratch-path "$ROOT/.build-deb")
  for p in midcomd midctl csp; do
    log "building the static $p (once; as scripts/make-deb.sh does): swift ${build[*]} --product $p"
    (cd "$ROOT" && nice -n 10 "${SWIFT:-swift}" "${build[@]}" --product "$p" >&2) || die "swift build --product $p failed"
  done
  bin=$(cd "$ROOT" && "${SWIFT:-swift}" "${build[@]}" --show-bin-path)
fi
if ldd "$bin/midcomd" | grep -Eq 'libswift|libFoundation|libdispatch|not found'; then
  die "$bin/midcomd loads the Swift runtime dynamically: the guest has no toolchain (build it with --static-swift-stdlib)"
fi

# --- 3. The list of files: "DEST<TAB>SOURCE" lines (SOURCE "-": an empty directory; symlinks and
# device nodes are made in the staging step). Their content hash names the image.
manifest=$(mktemp /tmp/midcom-qemu-manifest.XXXXXX)
stage=""
cleanup() { rm -f "$manifest"; [ -z "$stage" ] || rm -rf "$stage"; }
trap cleanup EXIT
add() { printf '%s\t%s\n' "$1" "$2" >>"$manifest"; }

# A program and the libraries it loads, at the same paths as on the host (ld.so's default
# search path covers them; no ld.so.cache is needed).
declare -A seen_libs=()
add_program() {
  local src=$1 dest=$2 lib
  add "$dest" "$src"
  while read -r lib; do
    [ -n "$lib" ] && [ -z "${seen_libs[$lib]:-}" ] || continue
    seen_libs[$lib]=1
    add "$lib" "$(readlink -f "$lib")"
  done < <(ldd "$src" 2>/dev/null | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (0x.*/\1/p')
}

for tool in bash python3.11 nft ip conntrack date; do
  src=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v "$tool") || die "$tool is missing on the host: run scripts/install-deps.sh"
  src=$(readlink -f "$src")
  case $tool in nft|ip|conntrack) dest=/usr/sbin/$tool ;; *) dest=/usr/bin/$tool ;; esac
  add_program "$src" "$dest"
done
add_program /bin/busybox /bin/busybox
for p in midcomd midctl csp; do add_program "$bin/$p" "/opt/midcom/bin/$p"; done

# Python (for the traffic helpers flows.py and udp.py, and lib.sh's inline JSON snippets): the
# whole top level of the stdlib with its compiled .pyc (compiling under emulation costs seconds
# per start), the packages that top level needs, and the C extension modules. Imports happen
# lazily (argparse -> gettext -> locale), so a list traced from import statements falls short;
# this is 15 MB instead of 54. Scapy and other dist-packages stay out: no scenario run here
# needs them.
py=/usr/lib/python3.11
for f in "$py"/*.py; do
  add "$f" "$f"
  c="$py/__pycache__/$(basename "$f" .py).cpython-311.pyc"
  if [ -f "$c" ]; then add "$c" "$c"; fi
done
for d in encodings json collections importlib re concurrent logging tomllib; do
  while read -r f; do add "$f" "$f"; done < <(find "$py/$d" -type f \( -name '*.py' -o -name '*.cpython-311.pyc' \))
done
for so in "$py"/lib-dynload/*.so; do
  case $(basename "$so") in _test*|xx*|_ctypes_test*|_tkinter*|_curses*|readline*|_dbm*|nis*|ossaudiodev*) continue ;; esac
  add_program "$so" "$so"
done

# Kernel modules: all of netfilter, veth, and their dependencies; modules.dep is made below.
moddir="lib/modules/$kver"
declare -A want=()
while read -r m; do want[$m]=1; done < <(cd "$kdir/$moddir" && find kernel/net/netfilter kernel/net/ipv4/netfilter \
  kernel/net/ipv6/netfilter kernel/drivers/net/veth.ko -name '*.ko*' | sort)
while read -r line; do
  m=${line%%:*}
  [ -n "${want[$m]:-}" ] || continue
  for d in ${line#*:}; do want[$d]=1; done
done <"$kdir/$moddir/modules.dep"
for m in "${!want[@]}"; do add "/$moddir/$m" "$kdir/$moddir/$m"; done
for f in modules.order modules.builtin modules.builtin.modinfo; do add "/$moddir/$f" "$kdir/$moddir/$f"; done

# Midcom: the static binaries (above), the ruleset, the scenarios as they are, the guest's side of
# this harness (run.sh and this script stay outside: changing them changes no guest).
add /opt/midcom/nft-rules/midcom.nft "$ROOT/nft-rules/midcom.nft"
while read -r f; do add "/opt/midcom/$f" "$ROOT/$f"; done < <(cd "$ROOT" && find Tests/integration Tests/qemu \
  -type f \( -name '*.sh' -o -name '*.py' -o -name init \) -not -path '*/__pycache__/*' \
  -not -name run.sh -not -name build-image.sh | sort)
add /etc/services /etc/services
add /etc/protocols /etc/protocols
# The bench's programs (figures 1q and 5q): the C references and the load, as the host's bench built them.
bench_bin=${MIDCOM_QEMU_BENCH_BIN:-}
flavour=""
if [ -n "$bench_bin" ]; then
  for p in nfqref udpblast; do
    [ -x "$bench_bin/$p" ] || die "MIDCOM_QEMU_BENCH_BIN=$bench_bin has no $p (Benchmarks/bench.sh builds it)"
    add_program "$bench_bin/$p" "/opt/midcom/bench/bin/$p"
  done
  # Figure 5q's load: the host's iperf3 (bulk TCP through the gateway).
  iperf=$(command -v iperf3) || die "iperf3 is missing on the host: run scripts/install-deps.sh"
  add_program "$(readlink -f "$iperf")" /opt/midcom/bench/bin/iperf3
  add /opt/midcom/Benchmarks/lib.sh "$ROOT/Benchmarks/lib.sh"
  flavour=bench-
fi

sort -u -o "$manifest" "$manifest"
# Content hash: what every file holds and where it goes, the kernel, and this script.
hash=$( {
  echo "$pkg $kver"
  sha256sum <"$0"
  cut -f1 "$manifest"
  cut -f2 "$manifest" | grep -vx -- - | tr '\n' '\0' | xargs -0 sha256sum
} | sha256sum | cut -c1-16)
initrd="$CACHE/initramfs-$kver-$flavour$hash.cpio"
if [ -f "$initrd" ]; then
  log "cached image $(basename "$initrd") (kernel $kver, $(du -h "$initrd" | cut -f1))"
else
  started=$(date +%s)
  stage=$(mktemp -d /tmp/midcom-qemu-stage.XXXXXX)
  while IFS=$'\t' read -r dest src; do
    if [ "$src" = - ]; then mkdir -p "$stage$dest"; continue; fi
    mkdir -p "$stage$(dirname "$dest")"
    cp -p "$src" "$stage$dest"   # -p: a .pyc is valid only next to a source of the same mtime
  done <"$manifest"
  # Stripped as the package ships them (scripts/make-deb.sh): 190 MB instead of 270 MB to unpack.
  for p in midcomd midctl csp; do strip "$stage/opt/midcom/bin/$p"; done
  depmod -b "$stage" "$kver"
  ln -s python3.11 "$stage/usr/bin/python3"
  mkdir -p "$stage/bin" "$stage/sbin"
  [ -e "$stage/lib64/ld-linux-x86-64.so.2" ] || die "the dynamic loader is missing from the image"
  # busybox for everything the host tools above do not provide (its own `ip` has no netns).
  for applet in $(/bin/busybox --list); do
    case $applet in ip|date|bash|busybox) continue ;; esac
    [ -e "$stage/bin/$applet" ] || ln -s busybox "$stage/bin/$applet"
  done
  ln -s ../bin/busybox "$stage/sbin/modprobe"      # /proc/sys/kernel/modprobe: module autoload
  ln -s ../../bin/busybox "$stage/usr/bin/env"     # #!/usr/bin/env bash
  ln -s ../usr/bin/bash "$stage/bin/bash"
  install -m 0755 "$QEMU_DIR/init" "$stage/init"
  mkdir -p "$stage/dev" "$stage/proc" "$stage/sys" "$stage/tmp" "$stage/run" "$stage/var" "$stage/etc" "$stage/root"
  ln -s ../run "$stage/var/run"
  mknod -m 600 "$stage/dev/console" c 5 1      # the kernel opens it for init's stdio before /init runs
  mknod -m 666 "$stage/dev/null" c 1 3
  printf 'root:x:0:0:root:/root:/usr/bin/bash\n' >"$stage/etc/passwd"
  printf 'root:x:0:\n' >"$stage/etc/group"
  printf '127.0.0.1 localhost\n::1 localhost\n' >"$stage/etc/hosts"
  printf 'passwd: files\ngroup: files\nhosts: files\nservices: files\nprotocols: files\n' >"$stage/etc/nsswitch.conf"
  # Not compressed: the emulated kernel copies 250 MB in ~3 s, but needs ~7 s to unpack the same
  # as zstd (77 MB) and longer as gzip. The disk space is the cache's.
  rm -f "$initrd.tmp"
  (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet >"$initrd.tmp")
  mv "$initrd.tmp" "$initrd"
  # One image of each flavour (the tests', the bench's): alternating between them rebuilds neither.
  for old in "$CACHE"/initramfs-*.cpio*; do
    [ "$old" = "$initrd" ] && continue
    case $old in *-bench-*) [ -n "$flavour" ] || continue ;; *) [ -z "$flavour" ] || continue ;; esac
    rm -f "$old"
  done
  log "built $(basename "$initrd") in $(( $(date +%s) - started ))s (kernel $kver, $(du -h "$initrd" | cut -f1), $(wc -l <"$manifest") files)"
fi
echo "KERNEL=$vmlinuz"
echo "INITRD=$initrd"
