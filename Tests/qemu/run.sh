#!/usr/bin/env bash
# `make qemu-test`: midcomd on a stock Debian kernel, with the NATIVE nft queue expression.
#
# Why: the kernel of this project's development VM has no nft `queue` expression (nft_queue), so
# midcomd always falls back there to the xtables NFQUEUE target through nft_compat, and every
# host test exercises only that encoding. Stock distribution kernels have nft_queue; this boots
# one under QEMU and runs midcomd there.
#
# How:
#   1. Tests/qemu/build-image.sh: Debian's linux-image-*-cloud-amd64 (apt-get download once, cached
#      in /var/cache/midcom-qemu) and an initramfs with busybox, the host's bash, python3 (stdlib
#      subset), nft, ip and conntrack, the netfilter modules, the static release binaries of
#      `make deb` (.build-deb; built there, niced, if missing) and Tests/integration + Tests/qemu.
#      Cached by content: a rebuilt image only when an input changed.
#   2. QEMU boots it with software emulation (-accel tcg: KVM does not work on the development VM,
#      and CI need not have it), 2 vCPUs, no network device, the serial console into a file that
#      is printed as it grows. The guest's /init (Tests/qemu/init) loads the modules and runs
#      Tests/qemu/guest.sh, which prints one line per check (run-all.sh's format):
#        native-encoding   midcomd chooses the native queue expression, not compat, with both
#                          available (start-up log line, midctl status, nft's listing, netlink and
#                          JSON); forced compat is told apart by the same checks
#        foundation        Tests/integration/foundation.sh: signaled flow passes, unsignaled dropped
#        05-rejection, 06-nat-outgoing, 07-nat-incoming: signaling scenarios (REJECT with its
#                          reasons and no state; NAT both ways)
#        flowtable         Tests/qemu/flowtable.sh: flowtable-devices (the development VM's kernel
#                          has no flowtables): admitted flows offloaded, a revoked or pushed-back
#                          flow stopped although offloaded, flows of the default policy left alone
#        only-native       every midcomd those scenarios started logged the native encoding
#      The scenarios are the host's scripts, unchanged (lib.sh; namespaces inside the guest).
#   3. The guest reports `midcom-qemu: guest exit N` and powers off; this script exits with 0 only
#      when that line says 0. QEMU is killed and temporary files removed on any exit; the whole
#      run is bounded (MIDCOM_QEMU_TIMEOUT, default 1200 s; each check inside by its own timeout:
#      generous, since a host starved of CPU makes the emulated guest slower still).
#
# Emulated CPUs are ~15-20x slower than the host's; netlink and start-up are fast. Measured on the
# 2-core development VM: 4 s to find the cached image (6 s to build a new one; the first run also
# downloads 27 MB), a 4-5 s boot, then about 4 min of checks (foundation 98 s, flowtable 77 s: their
# lifetimes are scaled 4x here): 232-245 s in all. The binaries are the
# ones `make deb` built last (make test builds them first): after changing the sources, run
# `make deb qemu-test`. Knobs: MIDCOM_QEMU_SCENARIOS="foundation 06-nat-outgoing" (which scenarios),
# MIDCOM_QEMU_VERBOSE=1 (every check's whole output), MIDCOM_QEMU_KEEP=1 (keep the console log),
# MIDCOM_QEMU_SMP, MIDCOM_QEMU_MEM (MiB); build-image.sh's MIDCOM_QEMU_CACHE, MIDCOM_QEMU_KERNEL,
# MIDCOM_QEMU_BIN.
#
# The same guest also carries a benchmark (the bench's figure 1q, `sudo make bench-qemu`; Benchmarks/bench.sh
# sets these): MIDCOM_QEMU_BENCH="fig1 runs=3 seconds=3" runs Tests/qemu/bench-fig1.sh with those arguments
# instead of the checks, in an image that also holds the C programs of MIDCOM_QEMU_BENCH_BIN (build-image.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TIMEOUT=${MIDCOM_QEMU_TIMEOUT:-1200}
SMP=${MIDCOM_QEMU_SMP:-2}
MEM=${MIDCOM_QEMU_MEM:-1024}

say() { echo "qemu-test: $*"; }
die() { echo "qemu-test: FAIL: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (the image cache, device nodes): sudo make qemu-test"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing: run scripts/install-deps.sh"
if [ -n "${MIDCOM_QEMU_BENCH:-}" ] && [ -z "${MIDCOM_QEMU_BENCH_BIN:-}" ]; then
  die "MIDCOM_QEMU_BENCH needs MIDCOM_QEMU_BENCH_BIN (the directory of the C programs to put into the image)"
fi
started=$(date +%s%N)
elapsed() { local t=$(( ($(date +%s%N) - started) / 100000000 )); echo "$((t / 10)).$((t % 10))"; }

image=$("$ROOT/Tests/qemu/build-image.sh") || die "building the guest image failed (above)"
kernel=$(sed -n 's/^KERNEL=//p' <<<"$image")
initrd=$(sed -n 's/^INITRD=//p' <<<"$image")
[ -f "$kernel" ] && [ -f "$initrd" ] || die "build-image.sh named no kernel or initramfs: $image"

TMP=$(mktemp -d /tmp/midcom-qemu.XXXXXX)
QPID=""; SHOWPID=""
cleanup() {
  local rc=$?
  set +e
  if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then
    kill "$QPID" 2>/dev/null      # timeout(1) passes the TERM on to QEMU
    for _ in $(seq 1 50); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$QPID" 2>/dev/null
  fi
  # The console printer ends with QEMU (tail --pid); its last lines are still worth showing.
  [ -z "$SHOWPID" ] || wait "$SHOWPID" 2>/dev/null
  if [ "${MIDCOM_QEMU_KEEP:-0}" = 1 ]; then echo "qemu-test: console log kept in $TMP/console.log"; else rm -rf "$TMP"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# no_timer_check: the kernel's early check that the IO-APIC timer ticks gives up when emulation
# runs slowly (a host starved of CPU) and panics with "IO-APIC + timer doesn't work!"; a virtual
# timer needs no check.
append="console=ttyS0 quiet loglevel=3 panic=1 rdinit=/init no_timer_check"
if [ -n "${MIDCOM_QEMU_SCENARIOS:-}" ]; then append+=" midcom.scenarios=$(tr ' ' ',' <<<"$MIDCOM_QEMU_SCENARIOS")"; fi
if [ "${MIDCOM_QEMU_VERBOSE:-0}" = 1 ]; then append+=" midcom.verbose=1"; fi
if [ -n "${MIDCOM_QEMU_BENCH:-}" ]; then
  append+=" midcom.bench=$(tr -s ' ' ',' <<<"$MIDCOM_QEMU_BENCH")"
fi

say "booting $(basename "$kernel") under QEMU (tcg, $SMP vCPUs, $MEM MiB; at most ${TIMEOUT}s)"
: >"$TMP/console.log"
# -no-reboot with panic=1: a guest that panics ends QEMU instead of booting again. -cpu qemu64,
# not max: measured on the development VM, the guest boots 2 s sooner and a Python loop runs
# ~20% faster (with max, the guest's kernel and glibc pick instructions TCG emulates slowly).
timeout -k 5 "$TIMEOUT" nice -n 10 qemu-system-x86_64 \
  -accel tcg,thread=multi -cpu qemu64 -smp "$SMP" -m "$MEM" \
  -nodefaults -no-reboot -display none -monitor none \
  -chardev "file,id=console,path=$TMP/console.log,append=on" -serial chardev:console \
  -kernel "$kernel" -initrd "$initrd" -append "$append" \
  </dev/null >"$TMP/qemu.out" 2>&1 &
QPID=$!
# The console as it grows (unbuffered, so each check's line shows when it ends), without the
# serial line's carriage returns and the kernel's last word; ends with QEMU. In the background,
# so that a signal to this script is handled at once (bash runs traps only between commands, and
# `wait` is one it interrupts), not when the guest is done.
tail -n +1 -s 0.2 -f --pid="$QPID" "$TMP/console.log" | sed -u 's/\r$//; /\] reboot: Power down$/d' &
SHOWPID=$!
set +e; wait "$QPID"; qemu_rc=$?; wait "$SHOWPID"; set -e
QPID=""; SHOWPID=""

result=$(tr -d '\r' <"$TMP/console.log" | sed -n 's/^midcom-qemu: guest exit \([0-9]*\)$/\1/p' | tail -1)
if [ -z "$result" ]; then
  [ $qemu_rc = 124 ] && why="QEMU was stopped after ${TIMEOUT}s" || why="QEMU exited with status $qemu_rc"
  [ -s "$TMP/qemu.out" ] && sed 's/^/     | qemu: /' "$TMP/qemu.out" >&2
  die "the guest did not report a result ($why) after $(elapsed)s"
fi
if [ "$result" != 0 ] && [ -n "${MIDCOM_QEMU_BENCH:-}" ]; then die "the benchmark failed in the guest (status $result, above) after $(elapsed)s"; fi
[ "$result" = 0 ] || die "$result check(s) failed in the guest (above) after $(elapsed)s"
if [ -n "${MIDCOM_QEMU_BENCH:-}" ]; then
  say "benchmark ${MIDCOM_QEMU_BENCH%% *} done on $(basename "$kernel" | sed 's/^vmlinuz-//') in $(elapsed)s"
else
  say "all checks passed on $(basename "$kernel" | sed 's/^vmlinuz-//') with the native queue expression in $(elapsed)s"
fi
