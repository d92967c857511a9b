#!/usr/bin/env bash
# Runs inside the QEMU guest: the bench's figure 1 (queue throughput and reader CPU per packet) where
# midcomd and the C reference both use the NATIVE nft `queue` expression; the development VM's kernel has
# only the compat target. Benchmarks/bench.sh's figure 1q boots the guest for it (`sudo make bench-qemu`);
# guest.sh hands over to this script when the kernel command line says midcom.bench=fig1,... (run.sh's
# MIDCOM_QEMU_BENCH).
#
# What, as the host's fig1 measures it (Benchmarks/bench.sh, docs/PERFORMANCE.md "The figures", 1), 64 B
# only, in the guest's own client — gw — server namespaces (Benchmarks/lib.sh, unchanged):
#   max load    one UDP flow offered as fast as vCPU 0 sends it (udpblast), packets/s at the receiver,
#               through gw with the ruleset and no daemon (kernel only), `nfqref batch` (the best C loop),
#               `nfqref perpkt` and midcomd (`unsignaled = "default-policy"`: every packet is queued)
#   fixed load  the reader's CPU time (all threads, schedstat) per packet received at RATE packets/s:
#               half the slowest reader's rate in the first run unless rate= gives it
# Reader on vCPU 1, load on vCPU 0, cases interleaved in each run as on the host. The CPUs are emulated
# (tcg), so absolute numbers mean nothing: every result that counts is a ratio of two readers in the
# same run (the raw values are printed too, for diagnosis). With encodings=native+compat both readers
# are measured a second time with the xtables NFQUEUE target (midcomd `nfqueue-encoding = "compat"`,
# `nfqref rule ... compat`) in the same run: the control that tells what the encoding changes from
# what emulation and the older kernel change (the host measures compat only).
#
# Never a silent fallback: every reader start must report the encoding asked for (`nfqref rule`'s
# choice, midctl status) AND the kernel must hold it in chain enqueue (native: `[ queue num 0 ...]` in
# nft's netlink listing and no `[ target name NFQUEUE ...]`; compat: the converse); every queued case
# must have queued at least as many packets as the receiver counted (the queue's id sequence), so that
# a reader not yet bound (the rule has `bypass`) cannot pass for a fast one. Any failure ends the script
# with a non-zero status; lib.sh's EXIT trap removes the namespaces and processes either way.
#
# Console output: progress lines, then one `midcom-bench: {json}` line per value (lib.sh's record format,
# figure "1q"; compat cases end in -compat) and `midcom-bench-kernel: RELEASE`. Arguments (key=value):
# runs=N (3), seconds=S (3, whole seconds per case), rate=PPS (the fixed load; 0 = derived as above),
# encodings=native or native+compat (native).
set -euo pipefail
RUNS=3; SECS=3; RATE=0; ENCODINGS=native
for a in "$@"; do
  case $a in
    runs=*) RUNS=${a#*=} ;;
    seconds=*) SECS=${a#*=} ;;
    rate=*) RATE=${a#*=} ;;
    encodings=native|encodings=native+compat) ENCODINGS=${a#*=} ;;
    *) echo "bench-fig1: unknown argument $a" >&2; exit 2 ;;
  esac
done
for v in "$RUNS" "$SECS" "$RATE"; do [[ $v =~ ^[0-9]+$ ]] || { echo "bench-fig1: not a whole number: $v" >&2; exit 2; }; done
[ "$RUNS" -ge 1 ] && [ "$SECS" -ge 1 ] || { echo "bench-fig1: runs and seconds must be at least 1" >&2; exit 2; }

export BENCH_RESULTS=/tmp/bench BENCH_BIN=/opt/midcom/bench/bin BENCH_SWIFT_BIN=/opt/midcom/bin
source /opt/midcom/Benchmarks/lib.sh
mkdir -p "$RESULTS"
RAW="$RESULTS/raw.jsonl"
: >"$RAW"

say() { echo "bench-fig1 $(awk '{printf "%6.1f", $1}' /proc/uptime)s: $*"; }
fail() { echo "bench-fig1: FAIL: $*" >&2; exit 1; }
# jnum KEY JSON: a number from one of udpblast's JSON lines.
jnum() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2"; }

[ "$(nproc)" -ge 2 ] || fail "the guest has $(nproc) CPU; the reader and the load need one each (MIDCOM_QEMU_SMP=2)"
[ -r /proc/self/schedstat ] || fail "this kernel has no /proc/PID/schedstat: no CPU time per thread in ns"
for p in "$BIN/nfqref" "$BIN/udpblast" "$SWIFT_BIN/midcomd" "$SWIFT_BIN/midctl"; do
  [ -x "$p" ] || fail "$p is missing from the image (build-image.sh with MIDCOM_QEMU_BENCH_BIN)"
done

# queue_stats: "queue_dropped user_dropped id_sequence" of queue 0 in gw, or "-" while nobody is bound.
queue_stats() { in_ns gw awk '$1 == 0 {print $6, $7, $8; found = 1} END {if (!found) print "-"}' /proc/net/netfilter/nfnetlink_queue; }

# expect_encoding WHO ENCODING: the rule the kernel holds in gw's chain enqueue has that encoding.
declare -A ENCODING_CHECKS=([native]=0 [compat]=0)
expect_encoding() {
  local netlink queue=0 target=0
  netlink=$(in_ns gw nft --debug=netlink list chain inet midcom enqueue 2>&1) || fail "$1: nft list chain inet midcom enqueue: $netlink"
  grep -q '\[ queue num 0 ' <<<"$netlink" && queue=1
  grep -q '\[ target name NFQUEUE rev 3 \]' <<<"$netlink" && target=1
  if [ "$2" = native ] && { [ $queue = 0 ] || [ $target = 1 ]; }; then
    fail "$1: chain enqueue does not hold the native queue expression:"$'\n'"$netlink"
  elif [ "$2" = compat ] && { [ $queue = 1 ] || [ $target = 0 ]; }; then
    fail "$1: chain enqueue does not hold the xtables NFQUEUE target:"$'\n'"$netlink"
  fi
  ENCODING_CHECKS[$2]=$((ENCODING_CHECKS[$2] + 1))
}

# reader_start CASE [ENCODING]: the gateway for one case (ruleset reloaded, as on the host), its reader bound
# to queue 0 with ENCODING (native by default).
READER_PID=
reader_start() {
  local want=${2:-native}
  bl_ruleset 9000
  case $1 in
    ruleset) READER_PID=; return 0 ;;
    cbatch|cperpkt)
      # bl_nfqref, with the encoding named (it takes whichever the kernel has, native first).
      ENCODING=$(in_ns gw "$BIN/nfqref" rule 0 1 midcom enqueue "$want") || fail "nfqref rule 0 1 midcom enqueue $want failed"
      bl_bg gw "$BL_DIR/nfqref.json" taskset -c "$READER_CPU" "$BIN/nfqref" "${1#c}" -d 120
      READER_PID=$BL_LAST_PID ;;
    midcomd)
      local conf=$'[policy]\nunsignaled = "default-policy"'
      [ "$want" = native ] || conf=$'[daemon]\nnfqueue-encoding = "compat"\n\n'"$conf"
      # 60 s for the control socket: start-up is slow under emulation.
      bl_midcomd "$conf" 60
      READER_PID=$MIDCOMD_PID ;;
  esac
  # nfqref rule's answer, or midctl status's queueEncoding (bl_midcomd sets ENCODING).
  [ "$ENCODING" = "$want" ] || fail "$1 reports the $ENCODING encoding, not $want"
  expect_encoding "$1" "$want"
  local _
  for _ in $(seq 1 100); do [ "$(queue_stats)" != - ] && break; sleep 0.1; done
  [ "$(queue_stats)" != - ] || fail "$1: nobody bound queue 0 within 10 s"
}

# reader_stop CASE: the queue's counters (read before the reader unbinds) into QSTATS, the reader stopped.
reader_stop() {
  QSTATS=$(queue_stats)
  if [ -n "$READER_PID" ]; then
    kill "$READER_PID" 2>/dev/null || true
    local _
    for _ in $(seq 1 200); do kill -0 "$READER_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$READER_PID" 2>/dev/null; then say "$1 did not stop within 20 s of SIGTERM: SIGKILL"; kill -9 "$READER_PID" 2>/dev/null || true; fi
    wait "$READER_PID" 2>/dev/null || true
  fi
  in_ns gw nft flush chain inet midcom enqueue 2>/dev/null || true
}

# udp_run RATE: receiver in server, sender in client (both on LOAD_CPU), SECS seconds; sets SEND and RECV.
udp_run() {
  local rate=$1 r _
  bl_bg server "$BL_DIR/recv.log" taskset -c "$LOAD_CPU" timeout $((SECS + 30)) "$BIN/udpblast" recv 9000 -d $((SECS + 5))
  r=$BL_LAST_PID
  for _ in $(seq 1 100); do grep -q '^ready' "$BL_DIR/recv.log" 2>/dev/null && break; sleep 0.1; done
  grep -q '^ready' "$BL_DIR/recv.log" || fail "the receiver was not ready within 10 s"
  SEND=$(in_ns client taskset -c "$LOAD_CPU" timeout $((SECS + 30)) "$BIN/udpblast" send 10.201.2.2 9000 -s 64 -r "$rate" -d "$SECS" -S 40000) ||
    fail "udpblast send: $SEND"
  wait "$r" || true
  RECV=$(tail -1 "$BL_DIR/recv.log")
  [ -n "$(jnum received "$RECV")" ] || fail "udpblast recv printed no result: $(cat "$BL_DIR/recv.log")"
}

# check_queued CASE RECEIVED: the queue saw every packet the receiver counted.
check_queued() {
  local queued; queued=$(awk '{print $3}' <<<"$QSTATS")
  [ "$QSTATS" != - ] && [ "$queued" -ge "$2" ] ||
    fail "$1: the queue's id sequence is ${queued:-unbound} but $2 packets reached the server: not all of them were queued"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.4f", (b > 0 ? a / b : 0)}'; }

declare -A PPS CPU SHARE
IFS=+ read -ra encs <<<"$ENCODINGS"
sfx() { [ "$1" = native ] || echo "-$1"; }   # case name suffix: none for native, -compat
say "kernel $(uname -r), $(nproc) vCPUs; $RUNS runs, ${SECS}s per case, encodings ${encs[*]}, reader on vCPU $READER_CPU, load on vCPU $LOAD_CPU"
bl_lab
for run in $(seq 1 "$RUNS"); do
  reader_start ruleset
  udp_run 0
  reader_stop ruleset
  PPS[ruleset]=$(jnum pps "$RECV")
  record 1q ruleset-64 pps "$run" "${PPS[ruleset]}"
  record 1q ruleset-64 offered_pps "$run" "$(jnum offered_pps "$SEND")"
  say "run $run, max load, kernel only (ruleset, no daemon): ${PPS[ruleset]} pps received (emulated), offered $(jnum offered_pps "$SEND")"
  for e in "${encs[@]}"; do
    for c in cbatch cperpkt midcomd; do
      k=$c-64$(sfx "$e")
      reader_start "$c" "$e"
      udp_run 0
      reader_stop "$c"
      rx=$(jnum received "$RECV"); PPS[$k]=$(jnum pps "$RECV")
      check_queued "$c" "$rx"
      record 1q "$k" pps "$run" "${PPS[$k]}"
      record 1q "$k" offered_pps "$run" "$(jnum offered_pps "$SEND")"
      record 1q "$k" kernel_drops "$run" "$(awk '{print $1 + $2}' <<<"$QSTATS")"
      say "run $run, max load, $c $e: ${PPS[$k]} pps received (emulated), offered $(jnum offered_pps "$SEND"), queue ${QSTATS}"
    done
  done
  if [ "$RATE" = 0 ]; then
    RATE=$(for k in "${!PPS[@]}"; do [ "$k" = ruleset ] || echo "${PPS[$k]}"; done | sort -n | head -1 |
      awk '{r = int($1 / 2 / 100) * 100; print (r < 100 ? 100 : r)}')
    say "fixed load: $RATE pps (half the slowest reader of run 1)"
  fi
  for e in "${encs[@]}"; do
    for c in cbatch cperpkt midcomd; do
      k=$c-fixed$(sfx "$e")
      reader_start "$c" "$e"
      c0=$(bl_task_cpu_ns "$READER_PID")
      udp_run "$RATE"
      c1=$(bl_task_cpu_ns "$READER_PID")
      reader_stop "$c"
      rx=$(jnum received "$RECV"); sent=$(jnum sent "$SEND")
      [ "$rx" -gt 0 ] || fail "$c $e: no packet reached the server at the fixed load"
      check_queued "$c" "$rx"
      CPU[$k]=$(( (c1 - c0) / rx )); SHARE[$k]=$(ratio "$rx" "$sent")
      record 1q "$k" cpu_ns_per_packet "$run" "${CPU[$k]}"
      record 1q "$k" received_share "$run" "${SHARE[$k]}"
      record 1q "$k" kernel_drops "$run" "$(awk '{print $1 + $2}' <<<"$QSTATS")"
      say "run $run, fixed load, $c $e: ${CPU[$k]} ns CPU per packet (emulated), received ÷ sent ${SHARE[$k]}"
    done
  done
  record 1q fixed-load offered_pps "$run" "$RATE"
  # The figure itself: this run's ratios (both sides measured in the same guest within a minute or two).
  for e in "${encs[@]}"; do
    x=$(sfx "$e")
    record 1q "midcomd-vs-cbatch-64$x" pps_ratio "$run" "$(ratio "${PPS[midcomd-64$x]}" "${PPS[cbatch-64$x]}")"
    record 1q "midcomd-vs-cperpkt-64$x" pps_ratio "$run" "$(ratio "${PPS[midcomd-64$x]}" "${PPS[cperpkt-64$x]}")"
    record 1q "midcomd-vs-ruleset-64$x" pps_ratio "$run" "$(ratio "${PPS[midcomd-64$x]}" "${PPS[ruleset]}")"
    record 1q "cbatch-vs-ruleset-64$x" pps_ratio "$run" "$(ratio "${PPS[cbatch-64$x]}" "${PPS[ruleset]}")"
    record 1q "midcomd-vs-cbatch-fixed$x" cpu_ratio "$run" "$(ratio "${CPU[midcomd-fixed$x]}" "${CPU[cbatch-fixed$x]}")"
    record 1q "midcomd-vs-cperpkt-fixed$x" cpu_ratio "$run" "$(ratio "${CPU[midcomd-fixed$x]}" "${CPU[cperpkt-fixed$x]}")"
    say "run $run/$RUNS, $e: midcomd ÷ nfqref batch: packets/s $(ratio "${PPS[midcomd-64$x]}" "${PPS[cbatch-64$x]}"), CPU per packet $(ratio "${CPU[midcomd-fixed$x]}" "${CPU[cbatch-fixed$x]}")"
  done
  if [ "${#encs[@]}" = 2 ]; then   # what the encoding changes for each reader: native ÷ compat
    for c in cbatch midcomd; do
      record 1q "$c-native-vs-compat-64" pps_ratio "$run" "$(ratio "${PPS[$c-64]}" "${PPS[$c-64-compat]}")"
      record 1q "$c-native-vs-compat-fixed" cpu_ratio "$run" "$(ratio "${CPU[$c-fixed]}" "${CPU[$c-fixed-compat]}")"
    done
  fi
done
say "done; the encoding checked in the kernel at every reader start: native ${ENCODING_CHECKS[native]}, compat ${ENCODING_CHECKS[compat]}"
echo "midcom-bench-kernel: $(uname -r)"
sed 's/^/midcom-bench: /' "$RAW"
