#!/usr/bin/env bash
# Midcom benchmark suite (issue #4): `sudo make bench` (≈ 20 min) or `sudo BENCH_QUICK=1 make bench` (≈ 5 min).
# Every figure is measured against a reference measured in the same run on the same machine, ≥ 5 runs
# (3 in quick mode), median and spread; see docs/PERFORMANCE.md for what each figure means.
# Prints the table and writes Benchmarks/results/latest.json. Benchmarks, not tests: nothing here fails on a
# number; the script fails only when a measurement could not be made.
#   BENCH_QUICK=1       subset: figures 1 (64 B), 2, 3, 4, 6, 7 (≤ 100k), 10, 11, 12, 13, 14, 15, shorter runs
#   BENCH_RUNS=N        runs per figure (default 5, quick 3)
#   BENCH_FIG13_PORTS=N ports per natpmpc loop in figure 13 (default 300, quick 150)
#   BENCH_FIGURES="1 3" only these figures (1–15; 10 = the cost of trust: signed ÷ unsigned setups/s with
#                       challenge = never, CPU per Ed25519 verification, and a spoofed-source SETUP flood against
#                       the default trust settings while an initiator that answers CHALLENGEs sets up sessions;
#                       11 = mobility: signed REBINDs/s ÷ signed re-SETUPs/s of the same sessions, and the
#                       interruption of a UDP stream when its host's address changes under `csp keep`;
#                       12 = DoS pushback: packets/s a DENY filter drops ÷ packets/s the gateway forwards of
#                       the same spoofed flood without it, and the gateway's CPU per million packets;
#                       13 = NAT-PMP mappings created+removed/s, midcomd ÷ miniupnpd, the same clients: Debian's
#                       natpmpc, a process per request, and natpmpload; 14 = reader CPU per packet where the
#                       kernel's share is small: 64 B UDP on loopback queued from OUTPUT and dropped at raw
#                       prerouting, midcomd ÷ the tuned C loop ÷ nfqref batch; 15 = relayed sessions: csp's
#                       end-to-end encrypted transfer relayed by midrelayd ÷ the same forwarded by the kernel,
#                       relayed sessions/s, gateway CPU per GB, beside Debian's danted (SOCKS5) and coturn (TURN))
#   BENCH_FIGURES=1q    figure 1 on Debian's stock kernel under QEMU (tcg), where midcomd and nfqref use the
#                       NATIVE nft queue expression (this VM's kernel has only the compat target): midcomd ÷ nfqref
#                       in the same guest, per-run ratios only, and the same with the compat target in the same
#                       guest as the control (`sudo make bench-qemu`; not in the default list; runs `make
#                       qemu-test`'s harness with the static binaries of `make deb`; alone: 3 runs unless BENCH_RUNS, ≈ 4 min)
#   BENCH_FIGURES=5q    figure 5 on Debian's stock kernel under QEMU with the flowtable option (this VM's kernel
#                       has no flowtables): bulk TCP through the gateway, midcomd-flowtable ÷ no table, ÷ a
#                       stateful firewall, ÷ midcomd without it; per-run ratios only (`sudo make bench-qemu` runs
#                       1q and 5q; ≈ 2 min for 5q alone)
#   BENCH_QEMU_SECONDS=S figures 1q and 5q: seconds per case (default 3); BENCH_QEMU_RATE=PPS its fixed load (default:
#                       half the slowest reader's rate in the first run); BENCH_QEMU_ENCODINGS="native" leaves out
#                       the compat control (default "native compat"; half the time)
#   BENCH_FIG15_CLIENTS=N figure 15: concurrent session clients (default 8)
#   BENCH_FIG14_TUNE="name:nfqref options;…"   figure 14: extra C loop variants (how nfqref batch was tuned)
#   BENCH_FIG14_CASES="none ctuned cbatch midcomd"  figure 14: the cases to run
#   BENCH_FIG3_CASES="cadmit cadmit-m midcomd"  figure 3: the cases, in order (repeat one to see the spread)
#   BENCH_FIG3_RATE=FLOWS_PER_S  figure 3's throughput phase at a fixed offered rate instead of as fast as one core
#                       sends: CPU per flow of readers that are not saturated (docs/PERFORMANCE.md, fourth pass)
#   BENCH_FIG9_READER_CPUS, BENCH_FIG9_LOAD_CPUS, BENCH_FIG9_QUEUES, BENCH_FIG9_FLOWS, BENCH_FIG9_RATE
#                       figure 9 on a bigger machine (CPU lists, queue counts, flows, the fixed load of 9b)
#   READER_CPU, LOAD_CPU the reader's and the load's CPU (defaults 1 and 0)
#   BENCH_SWIFT_BUILD=0 skip the Swift builds, reuse the binaries in .build-bench
#   BENCH_RESULTS=DIR   write raw.jsonl, latest.json and the C binaries there instead of Benchmarks/results
source "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || { echo "bench: needs root (namespaces, nftables, NFQUEUE): sudo make bench" >&2; exit 1; }
QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then RUNS=${BENCH_RUNS:-3}; D=1.5; FIGS=${BENCH_FIGURES:-"1 2 3 4 6 7 10 11 12 13 14 15"}
else RUNS=${BENCH_RUNS:-5}; D=3; FIGS=${BENCH_FIGURES:-"1 2 3 4 5 6 7 8 9 10 11 12 13 14 15"}; fi
# Figure 1q alone: 3 runs unless BENCH_RUNS says otherwise (a run is ≈ 80 s under emulation).
if [ "$FIGS" = 1q ]; then RUNS=${BENCH_RUNS:-3}; fi
mkdir -p "$RESULTS" "$BIN"
RAW="$RESULTS/raw.jsonl"
: >"$RAW"
META="$RESULTS/meta.json"

# MARK: build (C references with gcc -O2; midcomd release build in its own scratch path)
# cspload signs SETUPs for figures 10 and 11, nfqref csp its records (figure 4), with OpenSSL's libcrypto
# (Debian libssl-dev).
for p in nfqref udpblast cspload nftload natpmpload udpgap; do
  if [ ! -x "$BIN/$p" ] || [ "$BENCH_DIR/c/$p.c" -nt "$BIN/$p" ] || [ "$BENCH_DIR/c/benchutil.h" -nt "$BIN/$p" ]; then
    extra=(); case $p in cspload|nfqref) extra=(-lcrypto) ;; esac
    gcc -O2 -Wall -o "$BIN/$p" "$BENCH_DIR/c/$p.c" -lnetfilter_queue -lnftnl -lmnl "${extra[@]}"
  fi
done
# BENCH_SWIFT_BUILD=0 reuses the Swift binaries already in .build-bench (C-only iterations, e.g. figure 14's tuning).
# Figure 1q alone needs none: its guest runs the static binaries of `make deb`.
if [ "${BENCH_SWIFT_BUILD:-1}" != 0 ] && [ -n "$(tr ' ' '\n' <<<"$FIGS" | grep -vx -e 1q -e '')" ]; then
  (cd "$ROOT" && nice -n 10 swift build -c release --scratch-path .build-bench 2>&1 | tail -1)
  (cd "$BENCH_DIR" && nice -n 10 swift build -c release --scratch-path "$ROOT/.build-bench/benchpkg" 2>&1 | tail -1)
fi
SWIFT_BENCH="$ROOT/.build-bench/benchpkg/release/MidcomBench"
modprobe nfnetlink_queue 2>/dev/null || true
modprobe xt_NFQUEUE 2>/dev/null || true

ENCODING=unknown
say() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }

# udp_run SIZE RATE SECONDS [SPORT]: receiver (server, LOAD_CPU) + sender (client, LOAD_CPU); sets RECV and SEND.
udp_run() {
  local size=$1 rate=$2 secs=$3 sport=${4:-40000}
  bl_bg server "$BL_DIR/recv.log" taskset -c "$LOAD_CPU" "$BIN/udpblast" recv 9000 -d "$(echo "$secs + 3" | bc)"
  local r=$BL_LAST_PID
  sleep 0.2
  local l0 r0 t0 t1; l0=$(cpu_busy_ticks "$LOAD_CPU"); r0=$(cpu_busy_ticks "$READER_CPU"); t0=$(date +%s%N)
  SEND=$(in_ns client taskset -c "$LOAD_CPU" "$BIN/udpblast" send 10.201.2.2 9000 -s "$size" -r "$rate" -d "$secs" -S "$sport")
  t1=$(date +%s%N)
  # Busy shares of both CPUs while the sender ran: which side bounds a max-load run.
  LOAD_BUSY=$(cpu_busy_share "$LOAD_CPU" "$l0" "$t0" "$t1"); READER_BUSY=$(cpu_busy_share "$READER_CPU" "$r0" "$t0" "$t1")
  wait "$r" || true
  RECV=$(tail -1 "$BL_DIR/recv.log")
}
# cpu_busy_ticks CPU: clock ticks CPU spent not idle (user, nice, system, irq, softirq, steal) since boot.
cpu_busy_ticks() { awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# cpu_busy_share CPU TICKS0 T0_NS T1_NS: the CPU's busy share between T0 and T1 (0-1).
cpu_busy_share() {
  echo "$(cpu_busy_ticks "$1") $2 $3 $4 $(getconf CLK_TCK)" | awk '{s = ($1 - $2) / $5 / (($4 - $3) / 1e9); printf "%.3f\n", (s > 1 ? 1 : s)}'
}
# reader_wakeups PID: voluntary context switches of all the process's threads (each a sleep, then a wake-up).
reader_wakeups() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s + 0}'; }

midcomd_counter() { bl_midctl status --json | python3 -c "import json,sys; print(json.load(sys.stdin)['counters'].get('$1', 0))"; }
midcomd_status() { bl_midctl status --json | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

# reader_start CASE: the gateway for one queue case, the ruleset already loaded. Sets READER_PID.
reader_start() {
  case $1 in
    none|ruleset) READER_PID= ;;
    cbatch) bl_nfqref batch; READER_PID=$NFQREF_PID ;;
    cperpkt) bl_nfqref perpkt; READER_PID=$NFQREF_PID ;;
    midcomd) bl_midcomd $'[policy]\nunsignaled = "default-policy"'; READER_PID=$MIDCOMD_PID; ENCODING=$(midcomd_status queueEncoding) ;;
  esac
}
# reader_stop CASE: prints "drops" (kernel queue_dropped + user_dropped) read before the reader unbinds.
reader_stop() {
  local kq; kq=$(bl_kernel_queue)
  [ -n "$READER_PID" ] && bl_stop "$READER_PID"
  in_ns gw nft flush chain inet midcom enqueue 2>/dev/null || true
  echo "$kq" | awk '{print $1 + $2}'
}
gateway_for() {
  if [ "$1" = none ]; then in_ns gw nft delete table inet midcom 2>/dev/null || true; else bl_ruleset 9000; fi
}

# MARK: figure 1 — queue throughput (max offered load) and CPU per packet at a fixed load
fig1() {
  bl_lab
  local sizes="64 1400"; [ "$QUICK" = 1 ] && sizes=64
  for run in $(seq 1 "$RUNS"); do
    for size in $sizes; do
      # cbatch-again: the best C loop once more after midcomd, an A/A control (how finely a run can
      # tell two readers apart; report.py gives its ratio run by run).
      for c in none ruleset cbatch cperpkt midcomd cbatch-again; do
        local kind=${c%-again}
        gateway_for $kind; reader_start $kind
        local w0=0; [ -n "$READER_PID" ] && w0=$(reader_wakeups "$READER_PID")
        udp_run "$size" 0 "$D"
        local w1=0; [ -n "$READER_PID" ] && w1=$(reader_wakeups "$READER_PID")
        local drops; drops=$(reader_stop $kind)
        record 1 "$c-$size" pps "$run" "$(echo "$RECV" | json_field pps)"
        record 1 "$c-$size" offered_pps "$run" "$(echo "$SEND" | json_field offered_pps)"
        record 1 "$c-$size" kernel_drops "$run" "$drops"
        # What bounds the run: the sending CPU also runs the receiver and, in its softirq, the gateway's
        # path up to the queue (and the wake-ups of a sleeping reader); the reader CPU runs the reader and
        # the forwarding that follows each verdict.
        record 1 "$c-$size" load_cpu_busy "$run" "$LOAD_BUSY"
        record 1 "$c-$size" reader_cpu_busy "$run" "$READER_BUSY"
        [ -n "$READER_PID" ] && record 1 "$c-$size" reader_wakeups_per_packet "$run" \
          "$(echo "$RECV" | json_field received | awk -v w=$((w1 - w0)) '{printf "%.4f\n", ($1 > 0 ? w / $1 : 0)}')"
      done
    done
    for c in cbatch cperpkt midcomd; do  # CPU per packet at 50 kpps (below every reader's capacity)
      gateway_for $c; reader_start $c
      local c0; c0=$(bl_proc_cpu_ns "$READER_PID")
      udp_run 64 50000 "$D"
      local c1; c1=$(bl_proc_cpu_ns "$READER_PID")
      local drops; drops=$(reader_stop $c)
      record 1 "$c-50k" cpu_ns_per_packet "$run" "$(( (c1 - c0) / $(echo "$RECV" | json_field received | awk '{print ($1 > 0 ? $1 : 1)}') ))"
      record 1 "$c-50k" kernel_drops "$run" "$drops"
    done
    say "figure 1 run $run/$RUNS done"
  done
}

# MARK: figure 1q — figure 1 with the native queue expression, in QEMU (the host kernel has only the compat target)
# Tests/qemu/bench-fig1.sh does the measuring in the guest (what, and how the encoding is checked: its header);
# this boots it through `make qemu-test`'s harness with the C programs built above and takes the guest's
# `midcom-bench:` lines (lib.sh's record format) into raw.jsonl. Emulated CPUs: only ratios of two readers in
# the same run are reported. At 3 s per case a run takes ≈ 80 s with both encodings (13 cases), ≈ 40 s with
# native only. Bounded: QEMU is stopped after 60 s + (S + 8) s per case.
QEMU_KERNEL=
fig1q() {
  local secs=${BENCH_QEMU_SECONDS:-3} runs=$RUNS encs=${BENCH_QEMU_ENCODINGS:-"native compat"} log="$BL_DIR/qemu-fig1.log"
  case $encs in native) ;; "native compat") ;; *) echo "figure 1q: BENCH_QEMU_ENCODINGS is \"native\" or \"native compat\"" >&2; return 1 ;; esac
  local cases=$(( 1 + 6 * $(wc -w <<<"$encs") ))
  MIDCOM_QEMU_BENCH="fig1 runs=$runs seconds=$secs rate=${BENCH_QEMU_RATE:-0} encodings=${encs// /+}" MIDCOM_QEMU_BENCH_BIN="$BIN" \
    MIDCOM_QEMU_TIMEOUT=$(( 60 + runs * cases * (secs + 8) )) bash "$ROOT/Tests/qemu/run.sh" 2>&1 | tee "$log" >&2 ||
    { echo "figure 1q: the QEMU run failed (above)" >&2; return 1; }
  QEMU_KERNEL=$(sed -n 's/^midcom-bench-kernel: //p' "$log" | tail -1)
  sed -n 's/^midcom-bench: //p' "$log" >>"$RAW"
  grep -q '"fig":"1q","case":"midcomd-vs-cbatch-64"' "$RAW" || { echo "figure 1q: the guest reported no result" >&2; return 1; }
}

# MARK: figure 5q — figure 5 with the flowtable option, in QEMU (the host kernel has no nftables flowtables)
# Tests/qemu/bench-fig5.sh does the measuring in the guest (cases, and the check that the flow was offloaded:
# its header); booted like figure 1q. Bulk TCP only: a one-way UDP flood never becomes `established` and is
# never offloaded. Emulated CPUs: only ratios of two cases in the same run are reported. ≈ 30 s per run at
# 3 s per case. Bounded: QEMU is stopped after 60 s + (S + 15) s per case.
fig5q() {
  local secs=${BENCH_QEMU_SECONDS:-3} runs=$RUNS log="$BL_DIR/qemu-fig5.log"
  MIDCOM_QEMU_BENCH="fig5 runs=$runs seconds=$secs" MIDCOM_QEMU_BENCH_BIN="$BIN" \
    MIDCOM_QEMU_TIMEOUT=$(( 60 + runs * 5 * (secs + 15) )) bash "$ROOT/Tests/qemu/run.sh" 2>&1 | tee "$log" >&2 ||
    { echo "figure 5q: the QEMU run failed (above)" >&2; return 1; }
  QEMU_KERNEL=$(sed -n 's/^midcom-bench-kernel: //p' "$log" | tail -1)
  sed -n 's/^midcom-bench: //p' "$log" >>"$RAW"
  grep -q '"fig":"5q","case":"flowtable-vs-none"' "$RAW" || { echo "figure 5q: the guest reported no result" >&2; return 1; }
}

# MARK: figure 2 — added latency of a queued packet at 10 kpps (one-way, sender and receiver on LOAD_CPU)
fig2() {
  bl_lab
  for run in $(seq 1 "$RUNS"); do
    for c in ruleset cbatch midcomd; do
      gateway_for $c; reader_start $c
      udp_run 64 10000 "$D"
      reader_stop $c >/dev/null
      record 2 "$c" lat_p50_ns "$run" "$(echo "$RECV" | json_field lat_p50_ns)"
      record 2 "$c" lat_p99_ns "$run" "$(echo "$RECV" | json_field lat_p99_ns)"
    done
    say "figure 2 run $run/$RUNS done"
  done
}

# MARK: figure 3 — new-flow admission (C admission vs midcomd `unsignaled = admit`)
fig3() {
  bl_lab
  in_ns server nft add table inet sink
  in_ns server nft add chain inet sink input '{ type filter hook input priority 0; policy accept; }'
  in_ns server nft add rule inet sink input udp dport 1-65535 counter drop
  local conf=$'[policy]\nunsignaled = "admit"\nlegacy-lifetime = 60\nmax-sessions = 4000000'
  for run in $(seq 1 "$RUNS"); do
    # cadmit-m: the C admission doing midcomd's work besides (a session record per flow in a hash table, the
    # session's tag as the element's comment): `nfqref admit -m`. BENCH_FIG3_CASES reorders or repeats cases
    # (the order matters: each case leaves its flows in conntrack for the next).
    for c in ${BENCH_FIG3_CASES:-cadmit cadmit-m midcomd}; do
      # Throughput: new flows offered as fast as one core can send them, for D seconds.
      bl_ruleset
      case $c in
        cadmit) bl_nfqref admit -t 60; READER_PID=$NFQREF_PID ;;
        cadmit-m) bl_nfqref admit -t 60 -m; READER_PID=$NFQREF_PID ;;
        midcomd) bl_midcomd "$conf"; READER_PID=$MIDCOMD_PID ;;
      esac
      local c0; c0=$(bl_proc_cpu_ns "$READER_PID")
      local out; out=$(in_ns client taskset -c "$LOAD_CPU" "$BIN/udpblast" flows 10.201.2.2 5000 -f 3000000 -k 1 -d "$D" -S 20000 \
        ${BENCH_FIG3_RATE:+-r "$BENCH_FIG3_RATE"})
      sleep 0.5
      local c1; c1=$(bl_proc_cpu_ns "$READER_PID")
      local admitted
      if [ $c != midcomd ]; then reader_stop $c >/dev/null; admitted=$(json_field elements_added <"$BL_DIR/nfqref.json")
      else admitted=$(midcomd_counter unsignaled_admitted); reader_stop $c >/dev/null; fi
      local secs; secs=$(echo "$out" | json_field seconds)
      record 3 "$c" flows_per_s "$run" "$(echo "$admitted / $secs" | bc -l)"
      record 3 "$c" cpu_ns_per_flow "$run" "$(( (c1 - c0) / (admitted > 0 ? admitted : 1) ))"
      # Packets per flow that reached user space: 3 packets per flow, 100 ms apart, 5000 new flows/s.
      [ $c = cadmit-m ] && continue  # packets per flow: the same as cadmit's
      bl_ruleset
      if [ $c = cadmit ]; then bl_nfqref admit -t 60; READER_PID=$NFQREF_PID; else bl_midcomd "$conf"; READER_PID=$MIDCOMD_PID; fi
      in_ns client taskset -c "$LOAD_CPU" "$BIN/udpblast" flows 10.201.2.2 5000 -f 10000 -k 3 -l 500 -r 5000 -S 30000 >/dev/null
      sleep 0.3
      local queued
      if [ $c = cadmit ]; then reader_stop $c >/dev/null; queued=$(json_field received <"$BL_DIR/nfqref.json")
      else queued=$(midcomd_counter queue_received); reader_stop $c >/dev/null; fi
      record 3 "$c" packets_per_flow "$run" "$(echo "$queued / 10000" | bc -l)"
    done
    say "figure 3 run $run/$RUNS done"
  done
}

# MARK: figure 4 — signaled session setup (cspload), gateway-added latency = gateway − kernel forwarding
# Cases per run: kernel (no midcom table), cref (`nfqref csp`: the same two queue crossings as midcomd, in C),
# midcomd; each at window 64 over 8 sockets and window 1. Then with recordRoute (`cspload setup -R`: the ACCEPT
# is re-injected with the gateway's record appended, signed by midcomd's key and by `nfqref csp -k`): cref-rr and
# midcomd-rr at both windows. Then signed setups (`cspload setup -S`, the signed pool of figure 10, window 64) through
# midcomd, and the cost of one Ed25519 verification in the same run (`MidcomBench trust`): the target for signed
# setups/s is 0.9 × 10⁹ ÷ (verify_ns + midcomd's CPU per unsigned session), see docs/PERFORMANCE.md.
FIG4_CONF=$'[policy]\ndefault = "admit"\nunsignaled = "drop"\nmax-sessions = 4000000\n[trust]\nchallenge = "never"'
# fig4_gateway CASE: the gateway of one case in gw (sets FIG4_PID, empty for kernel forwarding).
fig4_gateway() {
  FIG4_PID=
  case $1 in
    kernel) in_ns gw nft delete table inet midcom 2>/dev/null || true ;;
    # cspload does not answer CHALLENGEs: figure 4 measures the signaling path without return
    # routability (docs/PERFORMANCE.md; the trust figure measures what it costs).
    midcomd) bl_ruleset; bl_midcomd "$FIG4_CONF"; FIG4_PID=$MIDCOMD_PID ;;
    cref | cref-state)
      # Requests reach `enqueue`, answers inside conntrack `enqueue_proved` (midcom.nft's queue_hook): both to
      # queue 0 with midcomd's rule, one C reader (midcomd reads the proved queue with a second reader thread).
      # cref-state (`csp -m`): the C reference also keeps midcomd's per-session state, laid out as midcomd's.
      local state=(); [ "$1" = cref-state ] && state=(-m)
      bl_ruleset
      ENCODING=$(in_ns gw "$BIN/nfqref" rule 0 1 midcom enqueue)
      in_ns gw "$BIN/nfqref" rule 0 1 midcom enqueue_proved >/dev/null
      bl_bg gw "$BL_DIR/nfqref.json" taskset -c "$READER_CPU" "$BIN/nfqref" csp "${state[@]}" -k -d 120
      FIG4_PID=$BL_LAST_PID
      sleep 0.3 ;;
  esac
}
# fig4_window CASE RUN W [CSPLOAD_ARGS...]: one cspload window through the current gateway; records sessions/s,
# lost, round-trip percentiles and the gateway's CPU per completed session under CASE-wW. Sets FIG4_OUT.
# Sessions signal flows from index FIG4_FIRST (default 0) on, window 1 from FIG4_FIRST + 2 000 000: window 64
# (~200k sessions in 3 s) leaves its sessions alive, and window 1 signalling the same flows under new session IDs
# would make every one of its sessions supersede one of them, work that the C reference skips (seventeenth pass).
fig4_window() {
  local c=$1 run=$2 w=$3; shift 3
  local s=8 first=${FIG4_FIRST:-0}; [ "$w" = 1 ] && s=1 first=$((first + 2000000))
  bl_bg server "$BL_DIR/resp.log" taskset -c "$LOAD_CPU" "$BIN/cspload" respond -d "$(echo "$D + 25" | bc)"
  local r=$BL_LAST_PID c0=0 c1=0
  sleep 0.2
  [ -n "$FIG4_PID" ] && c0=$(bl_task_cpu_ns "$FIG4_PID")
  FIG4_OUT=$(in_ns client taskset -c "$LOAD_CPU" timeout 60 "$BIN/cspload" setup 10.201.2.2 -w "$w" -s $s -d "$D" -i "$first" "$@")
  [ -n "$FIG4_PID" ] && c1=$(bl_task_cpu_ns "$FIG4_PID")
  bl_stop "$r"
  record 4 "$c-w$w" sessions_per_s "$run" "$(echo "$FIG4_OUT" | json_field sessions_per_s)"
  record 4 "$c-w$w" lost "$run" "$(echo "$FIG4_OUT" | json_field lost)"
  for p in p50 p99 p999; do record 4 "$c-w$w" "rtt_${p}_ns" "$run" "$(echo "$FIG4_OUT" | json_field rtt_${p}_ns)"; done
  if [ -n "$FIG4_PID" ]; then
    local done_sessions; done_sessions=$(echo "$FIG4_OUT" | json_field completed)
    record 4 "$c-w$w" cpu_ns_per_session "$run" "$(( (c1 - c0) / (done_sessions > 0 ? done_sessions : 1) ))"
  fi
}
fig4() {
  bl_lab
  for run in $(seq 1 "$RUNS"); do
    local c w
    for c in kernel cref midcomd; do
      fig4_gateway $c
      [ $c = midcomd ] && ENCODING=$(midcomd_status queueEncoding)
      for w in 64 1; do fig4_window $c "$run" $w; done
      # With recordRoute: the ACCEPT is rewritten (record appended, signed) by both gateways. Other flows (FIG4_FIRST).
      if [ $c != kernel ]; then for w in 64 1; do FIG4_FIRST=5000000 fig4_window "$c-rr" "$run" $w -R; done; fi
      [ -n "$FIG4_PID" ] && bl_stop "$FIG4_PID"
      if [ $c = cref ]; then  # what the C reference did: ACCEPTs rewritten (with records) and admitted, none unmatched
        local m; for m in admitted rewritten unmatched sign_errors nft_errors verdict_errors; do
          record 4 cref-counters "$m" "$run" "$(json_field $m <"$BL_DIR/nfqref.json")"
        done
      fi
    done
    # cref-again: the C reference once more after midcomd, in the same order (window 64 fills its set, then
    # window 1): an A/A control for the window-1 latency rows, whose target of 1.2 is the issue's.
    fig4_gateway cref
    for w in 64 1; do fig4_window cref-again "$run" $w; done
    bl_stop "$FIG4_PID"
    # cref-state: the C reference keeping midcomd's per-session state (a record per session in one array,
    # indexed by ID and by flow, an expiry heap, the element's comment): the price of holding ~200k sessions
    # at window 1, paid in C (sixteenth pass).
    fig4_gateway cref-state
    for w in 64 1; do fig4_window cref-state "$run" $w; done
    bl_stop "$FIG4_PID"
    # Signed setups through midcomd (challenge = never: only the signature's cost shows), after the unsigned
    # window 64 of this run sized the pool, and the cost of one verification on the reader CPU.
    local trust; trust=$(taskset -c "$READER_CPU" "$SWIFT_BENCH" trust 5000)
    local vns; vns=$(echo "$trust" | json_field verify_ns)
    record 4 verify verify_ns "$run" "$vns"
    # The user-space share of an unsigned session: parse and engine alone (no queue, no netlink),
    # SETUP and ACCEPT of 100k sessions, as midcomd's packet thread runs them.
    local engine; engine=$(taskset -c "$READER_CPU" "$SWIFT_BENCH" engine 100000)
    record 4 engine ns_per_session "$run" "$(echo "$engine" | json_field ns_per_session)"
    # The same work counted instead of timed (instructions and cache-line misses per session with the caches
    # evicted before each message, as at window 1): the same on every run, so once.
    if [ "$run" = 1 ]; then
      # Without valgrind (bench.sh run without `install-deps.sh bench`) the rows say "not measured".
      local footprint m
      if footprint=$(bash "$BENCH_DIR/footprint.sh" "$SWIFT_BENCH"); then
        for m in instructions i1_misses d1_read_misses d1_write_misses; do
          record 4 engine-footprint "$m" "$run" "$(echo "$footprint" | json_field $m)"
        done
      else
        say "figure 4: the engine's footprint was not counted (Benchmarks/footprint.sh failed)"
      fi
      # The whole daemon counted: midcomd itself under callgrind at window 1 in a lab of its own (queue
      # loop, parse, engine, nft batch, verdicts, runtime and libraries; Benchmarks/daemon-footprint.sh).
      if footprint=$(bash "$BENCH_DIR/daemon-footprint.sh" "$SWIFT_BIN/midcomd"); then
        for m in instructions i1_misses d1_read_misses d1_write_misses allocations hot_code_lines hot_code_pages; do
          record 4 daemon-footprint "$m" "$run" "$(echo "$footprint" | json_field $m)"
        done
      else
        say "figure 4: the daemon's footprint was not counted (Benchmarks/daemon-footprint.sh failed)"
      fi
    fi
    local unsigned_per_s; unsigned_per_s=$(python3 -c "import json; print(max(r['value'] for r in map(json.loads, open('$RAW')) if r['fig'] == '4' and r['case'] == 'midcomd-w64' and r['metric'] == 'sessions_per_s' and r['run'] == $run))")
    local pool; pool=$(python3 -c "print(int(min(1.5 * $unsigned_per_s, 3e9 / $vns) * $D) + 5000)")
    fig4_gateway midcomd
    fig4_window midcomd-signed "$run" 64 -S -n "$pool" -T 15
    record 4 midcomd-signed-w64 pool_exhausted "$run" "$(echo "$FIG4_OUT" | json_field pool_exhausted)"
    record 4 midcomd-signed-w64 authentication_failures "$run" "$(midcomd_counter authentication_failures)"
    [ "$(echo "$FIG4_OUT" | json_field pool_exhausted)" = 1 ] && say "figure 4: the signed pool ($pool) ran out: window shortened"
    bl_stop "$FIG4_PID"
    say "figure 4 run $run/$RUNS done"
  done
}

# MARK: figure 5 — fast path of an admitted flow: midcomd running vs the same ruleset without a daemon, and vs
# no inet midcom table at all (a gateway without Midcom: plain forwarding, conntrack only).
# Cases: none (no table: plain forwarding, no conntrack at all), rpfilter (no table, the kernel's strict
# reverse-path filter on), stateful (a gateway without Midcom as deployed: a stateful firewall table, conntrack
# on every packet, with rp_filter), ruleset (no daemon), ruleset-no-antispoof (the ruleset with its
# `fib` reverse-path chain emptied: what the rest of Midcom's ruleset costs; any ruleset-no-CHAIN works), midcomd, and
# midcomd-flowtable (`flowtable-devices`: the admitted flows offloaded to an nftables flowtable) where the kernel has
# flowtables (skipped, and said so, otherwise). To measure another option the same way, add a case name to
# FIG5_CASES and its config to fig5_conf.
# ruleset-again: `ruleset` once more after midcomd, an A/A control (how finely a run can tell two cases apart).
FIG5_CASES=${BENCH_FIG5_CASES:-"none rpfilter stateful ruleset ruleset-no-antispoof ruleset-no-pushback midcomd midcomd-flowtable ruleset-again"}
# fig5_rp_filter 0|1: the gateway's IPv4 reverse-path filter (strict), on every interface.
fig5_rp_filter() {
  local key
  for key in $(in_ns gw sysctl -aN 2>/dev/null | grep -E '^net\.ipv4\.conf\..*\.rp_filter$'); do in_ns gw sysctl -qw "$key=$1"; done
}
fig5_conf() {
  case $1 in
    midcomd) printf '[policy]\nunsignaled = "drop"\n' ;;
    midcomd-flowtable) printf '[daemon]\nflowtable-devices = ["to-client", "to-server"]\n[policy]\nunsignaled = "drop"\n' ;;
  esac
}
fig5() {
  bl_lab
  bl_bg server "$BL_DIR/iperf-server.log" taskset -c "$LOAD_CPU" iperf3 -s -p 5201
  sleep 0.3
  local cases=() c
  for c in $FIG5_CASES; do
    if [ "${c#midcomd-}" != "$c" ]; then
      fig5_conf "$c" >"$BL_DIR/check.conf"
      "$SWIFT_BIN/midcomd" --config "$BL_DIR/check.conf" --check >/dev/null 2>&1 || { say "figure 5: $c skipped (midcomd does not accept its configuration)"; continue; }
    fi
    if [ $c = midcomd-flowtable ] && ! in_ns gw nft -f - >/dev/null 2>&1 <<'NFT'
table inet fig5probe { flowtable f { hook ingress priority 0; devices = { to-client }; } }
NFT
    then
      say "figure 5: $c skipped (this kernel has no nftables flowtables, CONFIG_NF_FLOW_TABLE)"; continue
    fi
    in_ns gw nft delete table inet fig5probe 2>/dev/null || true
    cases+=("$c")
  done
  for run in $(seq 1 "$RUNS"); do
    for c in "${cases[@]}"; do
      in_ns gw nft delete table inet fig5stateful 2>/dev/null || true
      if [ $c = none ] || [ $c = rpfilter ] || [ $c = stateful ]; then
        in_ns gw nft delete table inet midcom 2>/dev/null || true
        # stateful: a gateway without Midcom as deployed, i.e. a stateful firewall (conntrack on every
        # forwarded packet, established accepted first, invalid dropped) with the strict rp_filter.
        [ $c = stateful ] && in_ns gw nft -f - <<'NFT'
table inet fig5stateful {
  chain forward { type filter hook forward priority filter; policy accept; ct state established,related accept; ct state invalid drop; }
}
NFT
      else
        bl_ruleset
        in_ns gw nft add element inet midcom admit4_anyport "{ 10.201.1.2 . tcp . 10.201.2.2 . 5201 timeout 1h, 10.201.1.2 . udp . 10.201.2.2 . 9000 timeout 1h }"
      fi
      # ruleset-no-CHAIN: the ruleset with one of its chains emptied (what that chain costs).
      [ "${c#ruleset-no-}" != "$c" ] && in_ns gw nft flush chain inet midcom "${c#ruleset-no-}"
      fig5_rp_filter "$( { [ $c = rpfilter ] || [ $c = stateful ]; } && echo 1 || echo 0)"
      local q0=0
      local cpu0=0
      if [ "${c#midcomd}" != "$c" ]; then
        bl_midcomd "$(fig5_conf "$c")"; q0=$(midcomd_counter queue_received); cpu0=$(bl_task_cpu_ns "$MIDCOMD_PID")
      fi
      local bps; bps=$(in_ns client taskset -c "$LOAD_CPU" timeout $(( ${D%.*} + 20 )) iperf3 -c 10.201.2.2 -p 5201 -t "$D" -J | python3 -c "import json,sys; print(json.load(sys.stdin)['end']['sum_received']['bits_per_second'])")
      udp_run 64 0 "$D"
      record 5 "$c" tcp_bps "$run" "$bps"
      record 5 "$c" udp_pps "$run" "$(echo "$RECV" | json_field pps)"
      if [ "${c#midcomd}" != "$c" ]; then
        record 5 "$c" queued_during_run "$run" "$(( $(midcomd_counter queue_received) - q0 ))"
        # What the daemon itself ran during both transfers (all threads): with nothing queued, its
        # timers only. A difference from `ruleset` that this cannot pay for is the machine's spread.
        record 5 "$c" daemon_cpu_ns_during_run "$run" "$(( $(bl_task_cpu_ns "$MIDCOMD_PID") - cpu0 ))"
        bl_stop "$MIDCOMD_PID"
      fi
    done
    say "figure 5 run $run/$RUNS done"
  done
}

# MARK: figure 6 — nft programming: elements/s through midcomd's NFTablesClient vs nft -f vs C libnftnl
fig6() {
  bl_lab
  local n=20000; [ "$QUICK" = 1 ] && n=5000
  local pc=$((n / 4))
  { echo "add element inet midcom admit4 {"; "$BIN/nftload" keys $n | sed 's/,$//; s/$/ timeout 600s,/; $ s/,$//'; echo "}"; } >"$BL_DIR/add.nft"
  { echo "delete element inet midcom admit4 {"; "$BIN/nftload" keys $n; echo "}"; } >"$BL_DIR/del.nft"
  # Each case runs for 20-200 ms, where one preemption, or the kernel's deferred resize of the set's
  # hash table landing in the next case, moves a sample by 10-40 %. So every run measures each case
  # FIG6_REPS times, C and midcomd taking turns at going first, and all the samples go into the
  # medians. Every case leaves the set empty for the next.
  local reps=${FIG6_REPS:-7}
  fig6_c() {
    record 6 c add_per_s "$run" "$(in_ns gw "$BIN/nftload" add $n -b 1000 | json_field per_s)"
    record 6 c del_per_s "$run" "$(in_ns gw "$BIN/nftload" del $n -b 1000 | json_field per_s)"
    # -m: the same transactions as midcomd's per change (an admission with its tag; a revocation is add 1 s + delete).
    record 6 c-per-change add_per_s "$run" "$(in_ns gw "$BIN/nftload" add $pc -m | json_field per_s)"
    record 6 c-per-change del_per_s "$run" "$(in_ns gw "$BIN/nftload" del $pc -m | json_field per_s)"
  }
  fig6_midcomd() {
    record 6 midcomd-bulk add_per_s "$run" "$(in_ns gw "$SWIFT_BENCH" nft add $n bulk | json_field per_s)"
    record 6 midcomd-bulk del_per_s "$run" "$(in_ns gw "$SWIFT_BENCH" nft del $n bulk | json_field per_s)"
    record 6 midcomd-per-change add_per_s "$run" "$(in_ns gw "$SWIFT_BENCH" nft add $pc per-change | json_field per_s)"
    record 6 midcomd-per-change del_per_s "$run" "$(in_ns gw "$SWIFT_BENCH" nft del $pc per-change | json_field per_s)"
  }
  for run in $(seq 1 "$RUNS"); do
    bl_ruleset
    local t0 t1 rep
    for rep in $(seq 1 "$reps"); do
      t0=$(date +%s%N); in_ns gw nft -f "$BL_DIR/add.nft"; t1=$(date +%s%N)
      record 6 nft-f add_per_s "$run" "$(echo "$n * 1000000000 / ($t1 - $t0)" | bc -l)"
      t0=$(date +%s%N); in_ns gw nft -f "$BL_DIR/del.nft"; t1=$(date +%s%N)
      record 6 nft-f del_per_s "$run" "$(echo "$n * 1000000000 / ($t1 - $t0)" | bc -l)"
      if [ $(( (run + rep) % 2 )) = 0 ]; then fig6_c; fig6_midcomd; else fig6_midcomd; fig6_c; fi
    done
    say "figure 6 run $run/$RUNS done"
  done
}

# MARK: figure 7 — scale: SessionTable per size; midcomd holding N adopted sessions, `midctl sessions` time
fig7() {
  local sizes="10000 100000 1000000" big=1000000
  [ "$QUICK" = 1 ] && { sizes="10000 100000"; big=100000; }
  for run in $(seq 1 "$RUNS"); do
    taskset -c "$READER_CPU" "$SWIFT_BENCH" table $sizes | while read -r line; do
      local n; n=$(echo "$line" | json_field sessions)
      for m in bytes_per_session upsert_ns lookup_flow_ns lookup_id_ns expire_ns_per_session; do
        record 7 "table-$n" $m "$run" "$(echo "$line" | json_field $m)"
      done
    done
    say "figure 7 table run $run/$RUNS done"
  done
  bl_lab
  bl_ruleset
  local conf7=$'[policy]\nunsignaled = "drop"\nmax-sessions = 4000000'
  bl_midcomd "$conf7"
  local rss0; rss0=$(awk '/VmRSS/ {print $2}' "/proc/$MIDCOMD_PID/status")
  bl_stop "$MIDCOMD_PID"
  rm -f "$BL_DIR/gw-state/sessions.snapshot"
  in_ns gw "$BIN/nftload" add $big -b 1000 -t 3600 >/dev/null || say "nftload reported kernel errors while preloading"
  # fig7_secs T0: seconds since T0 (ns) with a leading zero (bc prints ".5", which is not JSON).
  fig7_secs() { echo "($(date +%s%N) - $1) / 1000000000" | bc -l | awk '{printf "%.6f", $1}'; }
  # fig7_wait_full T0 METRIC: until midcomd holds $big sessions; records seconds since T0 (ns) as METRIC.
  fig7_wait_full() {
    for _ in $(seq 1 3000); do [ "$(midcomd_status sessions)" -ge $big ] && break; sleep 0.2; done
    record 7 "daemon-$big" "$2" 1 "$(fig7_secs "$1")"
  }
  fig7_rss() { echo $(( ($(awk '/VmRSS/ {print $2}' "/proc/$MIDCOMD_PID/status") - rss0) * 1024 / big )); }
  # First start, no snapshot: adoption by the kernel's set dump (quadratic; the reference, and the path
  # after a crash without a usable snapshot).
  local t0; t0=$(date +%s%N)
  BL_MIDCOMD_SETTLE=0 bl_midcomd "$conf7" 300
  fig7_wait_full "$t0" adopt_s
  bl_midcomd_settle 600  # the dump at a million elements takes minutes
  record 7 "daemon-$big" rss_dump_bytes_per_session 1 "$(fig7_rss)"
  # midctl gives up after its own reply timeout (exit 3): then the time recorded is that of the failure,
  # and midctl_*_ok is 0.
  for run in $(seq 1 "$RUNS"); do
    local a b ok
    for variant in "" --json; do
      local metric=midctl_sessions${variant:+_json}
      ok=1; a=$(date +%s%N)
      timeout 60 "$SWIFT_BIN/midctl" --socket "$BL_DIR/gw.sock" sessions $variant >/dev/null 2>"$BL_DIR/midctl.err" || ok=0
      b=$(date +%s%N)
      record 7 "daemon-$big" "${metric}_s" "$run" "$(echo "($b - $a) / 1000000000" | bc -l | awk '{printf "%.6f", $1}')"
      record 7 "daemon-$big" "${metric}_ok" "$run" "$ok"
      [ $ok = 1 ] || say "midctl sessions $variant at $big: $(head -c 200 "$BL_DIR/midctl.err")"
    done
  done
  # Clean stop: midcomd writes its session snapshot (bl_stop would SIGKILL after 5 s; give it 120 s).
  a=$(date +%s%N)
  kill "$MIDCOMD_PID" 2>/dev/null || true
  for _ in $(seq 1 1200); do kill -0 "$MIDCOMD_PID" 2>/dev/null || break; sleep 0.1; done
  bl_stop "$MIDCOMD_PID"
  record 7 "daemon-$big" stop_s 1 "$(fig7_secs "$a")"
  record 7 "daemon-$big" snapshot_bytes 1 "$(stat -c %s "$BL_DIR/gw-state/sessions.snapshot" 2>/dev/null || echo 0)"
  # Second start: the restart path. Serving = `midctl status` answers; full state = every session is back
  # (from the snapshot, each checked in the kernel by key); then the background sweep of the sets ends.
  t0=$(date +%s%N)
  BL_MIDCOMD_SETTLE=0 bl_midcomd "$conf7" 300
  record 7 "daemon-$big" restart_serve_s 1 "$(fig7_secs "$t0")"
  fig7_wait_full "$t0" restart_full_s
  record 7 "daemon-$big" rss_full_bytes_per_session 1 "$(fig7_rss)"
  record 7 "daemon-$big" restored_from_snapshot 1 "$(midcomd_counter adopted_from_snapshot)"
  bl_midcomd_settle 600  # the sweep at a million elements takes minutes
  record 7 "daemon-$big" restart_sweep_s 1 "$(fig7_secs "$t0")"
  record 7 "daemon-$big" rss_bytes_per_session 1 "$(fig7_rss)"
  say "figure 7 restart: $(grep -E 'restored|snapshot|adopted' "$BL_DIR/midcomd.log" | tail -3 | tr '\n' ' ')"
  bl_stop "$MIDCOMD_PID"
}

# MARK: figure 8 — pinholes created and removed per second: midcomd (signaled) vs miniupnpd (NAT-PMP)
# upnp_ruleset NS: the tables miniupnpd 2.3.1's nftables backend programs, `table inet filter` with its
# default chains (figures 8 and 13; the forward policy accepts, as in gw without a daemon).
upnp_ruleset() {
  in_ns "$1" nft -f - <<'NFT'
table inet filter {
  chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
  chain miniupnpd { }
  chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
  chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
}
NFT
}

fig8() {
  bl_lab
  bl_ruleset
  bl_midcomd $'[policy]\ndefault = "admit"\nunsignaled = "drop"\nmax-sessions = 4000000\n[trust]\nchallenge = "never"'
  for run in $(seq 1 "$RUNS"); do
    # The listening host is the server; the rendezvous answering its SETUPs sits on the client side.
    bl_bg client "$BL_DIR/resp.log" taskset -c "$LOAD_CPU" "$BIN/cspload" respond -d "$(echo "$D + 5" | bc)"
    local r=$BL_LAST_PID
    sleep 0.2
    local out; out=$(in_ns server taskset -c "$LOAD_CPU" "$BIN/cspload" setup 10.201.1.2 -w 64 -s 8 -d "$D" -L -t)
    bl_stop "$r"
    record 8 midcomd pinholes_per_s "$run" "$(echo "$out" | json_field sessions_per_s)"
    record 8 midcomd lost "$run" "$(echo "$out" | json_field lost)"
  done
  bl_stop "$MIDCOMD_PID"
  # miniupnpd (Debian miniupnpd-nftables) in its own namespace, NAT-PMP over a veth pair inside it.
  if command -v miniupnpd >/dev/null; then
    bl_ns upnp
    in_ns upnp ip link add ext0 type veth peer name ext1
    in_ns upnp ip link add lan0 type veth peer name lan1
    for i in ext0 ext1 lan0 lan1; do in_ns upnp ip link set $i up; done
    in_ns upnp ip addr add 10.203.0.1/24 dev ext0
    in_ns upnp ip addr add 10.203.1.1/24 dev lan0
    upnp_ruleset upnp
    # miniupnpd refuses to map behind a private external address ("port forwarding is impossible"),
    # so ext_ip names a public-looking one. It is only a label in NAT-PMP answers: no packet is ever
    # sent to it, and nothing in this namespace routes anywhere outside it.
    printf '%s\n' ext_ifname=ext0 ext_ip=11.22.33.44 listening_ip=lan0 enable_natpmp=yes enable_upnp=no secure_mode=no \
      'allow 1024-65535 0.0.0.0/0 1024-65535' >"$BL_DIR/miniupnpd.conf"
    bl_bg upnp "$BL_DIR/miniupnpd.log" taskset -c "$READER_CPU" miniupnpd -d -f "$BL_DIR/miniupnpd.conf" -P "$BL_DIR/miniupnpd.pid"
    local mpid=$BL_LAST_PID
    sleep 1
    for run in $(seq 1 "$RUNS"); do
      local out; out=$(in_ns upnp taskset -c "$LOAD_CPU" "$BIN/natpmpload" 10.203.1.1 -d "$D")
      record 8 miniupnpd cycles_per_s "$run" "$(echo "$out" | json_field per_s)"
      record 8 miniupnpd errors "$run" "$(echo "$out" | json_field errors)"
    done
    bl_stop "$mpid"
    grep -m1 -E "Failed to add|Port forwarding is impossible" "$BL_DIR/miniupnpd.log" >"$RESULTS/miniupnpd-note.txt" || true
  fi
}

# MARK: figure 9 — multiqueue: 1 vs 2 queues (C reader per queue, flows balanced by hash)
# The kernel's queue balancing (NFQUEUE --queue-balance, nft `queue num A-B`) hashes the packet's addresses and
# protocol, not its ports: every flow between two hosts lands on one queue. So each flow comes from its own client
# address (10.201.1.10, .11, …), as on a gateway with many hosts, and each case records the share of the busiest
# queue (from the queues' packet id sequences), so an uneven split is seen, not mistaken for a reader's cost.
# a. throughput: FIG9_FLOWS 64 B flows (hash-balanced over the queues) as fast as the generators go.
# b. CPU time: the same flows at a fixed total of FIG9_RATE packets/s (below every reader's capacity, so the
#    generator is not the bound): the readers' CPU (all threads of midcomd, or all C readers; schedstat ns) ÷ the
#    packets received. With more readers than cores, or readers sharing a core with the load, a second queue
#    cannot raise 9a; 9b shows what it costs or saves per packet.
# CPU placement for bigger machines (defaults: the 2-core VM): BENCH_FIG9_READER_CPUS, the CPUs of the readers
# of queue 0, 1, … (C: one per queue, cycled; midcomd: its threads may run on all of them); BENCH_FIG9_LOAD_CPUS,
# the CPUs of the senders (cycled over the flows) and the receiver (the first); BENCH_FIG9_QUEUES, the queue counts
# (default "1 2"); BENCH_FIG9_FLOWS (8, at most 100: client addresses); BENCH_FIG9_RATE (50000: figure 1's fixed load; 100k was not reached
# on the loaded 2-core VM).
FIG9_READER_CPUS=${BENCH_FIG9_READER_CPUS:-"$READER_CPU $LOAD_CPU"}
FIG9_LOAD_CPUS=${BENCH_FIG9_LOAD_CPUS:-"$LOAD_CPU"}
FIG9_QUEUES=${BENCH_FIG9_QUEUES:-"1 2"}
FIG9_FLOWS=${BENCH_FIG9_FLOWS:-8}
FIG9_RATE=${BENCH_FIG9_RATE:-50000}
# fig9_load [TOTAL_PPS]: FIG9_FLOWS 64 B flows for $D seconds, unlimited or TOTAL_PPS in all; the receiver's log
# (last line: JSON with pps and received) is left in $BL_DIR/recv.log.
fig9_load() {
  local total=${1:-0} lcpus=($FIG9_LOAD_CPUS)
  bl_bg server "$BL_DIR/recv.log" taskset -c "${lcpus[0]}" "$BIN/udpblast" recv 9000 -d "$(echo "$D + 3" | bc)"
  local r=$BL_LAST_PID
  sleep 0.2
  local senders=() i rate=0
  [ "$total" -gt 0 ] && rate=$((total / FIG9_FLOWS))
  for i in $(seq 0 $((FIG9_FLOWS - 1))); do
    in_ns client taskset -c "${lcpus[$((i % ${#lcpus[@]}))]}" "$BIN/udpblast" send 10.201.2.2 9000 -s 64 -r "$rate" -d "$D" \
      -S $((40000 + i)) -B "10.201.1.$((10 + i))" >/dev/null &
    senders+=($!)
  done
  wait "${senders[@]}" || true
  wait "$r" || true
}

# fig9_case KIND Q RUN: one run of 9a and 9b with KIND (c or midcomd) reading Q queues.
fig9_case() {
  local kind=$1 q=$2 run=$3 rcpus=($FIG9_READER_CPUS) pids=() i
  local cpus; cpus=$(echo "${rcpus[@]:0:$q}" | tr ' ' ',')
  [ "$q" -gt "${#rcpus[@]}" ] && cpus=$(echo "${rcpus[@]}" | tr ' ' ',')
  local load
  for load in max fixed; do
    bl_ruleset 9000
    if [ "$kind" = c ]; then
      # More than one queue: flows balanced by hash (no cpu-fanout: one sending CPU would put every packet in one queue).
      in_ns gw "$BIN/nfqref" rule 0 "$q" >/dev/null
      pids=()
      for i in $(seq 0 $((q - 1))); do
        bl_bg gw "$BL_DIR/q$i.json" taskset -c "${rcpus[$((i % ${#rcpus[@]}))]}" "$BIN/nfqref" batch -q "$i" -d 60; pids+=("$BL_LAST_PID")
      done
      sleep 0.3
    else
      BL_MIDCOMD_CPUS=$cpus bl_midcomd "$(printf '[daemon]\nqueue-count = %s\n[policy]\nunsignaled = "default-policy"' "$q")"
      pids=("$MIDCOMD_PID")
    fi
    local c0=0 c1=0 p s0 s1
    s0=$(fig9_queue_ids "$q")
    for p in "${pids[@]}"; do c0=$((c0 + $(bl_task_cpu_ns "$p"))); done
    if [ $load = max ]; then fig9_load; else fig9_load "$FIG9_RATE"; fi
    for p in "${pids[@]}"; do c1=$((c1 + $(bl_task_cpu_ns "$p"))); done
    s1=$(fig9_queue_ids "$q")
    for p in "${pids[@]}"; do bl_stop "$p"; done
    in_ns gw nft flush chain inet midcom enqueue 2>/dev/null || true
    local out; out=$(tail -1 "$BL_DIR/recv.log")
    local share; share=$(python3 -c "
a, b = [int(x) for x in '$s0'.split()], [int(x) for x in '$s1'.split()]
d = [y - x for x, y in zip(a, b)]
print(f'{max(d) / sum(d):.3f}' if sum(d) > 0 else 0)")
    local tag="$kind-${q}q"; [ $load = fixed ] && tag="$kind-${q}q-fixed"
    record 9 "$tag" busiest_queue_share "$run" "$share"
    if [ $load = max ]; then
      record 9 "$kind-${q}q" pps "$run" "$(echo "$out" | json_field pps)"
    else
      local got; got=$(echo "$out" | json_field received)
      record 9 "$kind-${q}q-fixed" pps "$run" "$(echo "$out" | json_field pps)"
      record 9 "$kind-${q}q-fixed" cpu_ns_per_packet "$run" "$(( (c1 - c0) / (got > 0 ? got : 1) ))"
    fi
  done
}

# fig9_queue_ids Q: the packet id sequence of queues 0 … Q-1 in gw (packets each has queued since it was bound;
# 0 for an unbound queue), space-separated.
fig9_queue_ids() {
  in_ns gw awk -v q="$1" '$1 < q {id[$1] = $8} END {for (i = 0; i < q; i++) printf "%d ", id[i] + 0}' \
    /proc/net/netfilter/nfnetlink_queue 2>/dev/null || echo 0
}

fig9() {
  bl_lab
  # A client address per flow (the queue hash does not see ports), resolved once like the lab's own.
  local i mac; mac=$(in_ns client cat /sys/class/net/to-gw/address)
  for i in $(seq 0 $((FIG9_FLOWS - 1))); do
    in_ns client ip addr add "10.201.1.$((10 + i))/24" dev to-gw
    in_ns gw ip neigh replace "10.201.1.$((10 + i))" lladdr "$mac" dev to-client nud permanent
  done
  for run in $(seq 1 "$RUNS"); do
    local q
    for q in $FIG9_QUEUES; do fig9_case c "$q" "$run"; done
    # midcomd with queue-count 1 and 2 (one reader thread per queue; with 2 queues it may use both CPUs).
    for q in $FIG9_QUEUES; do fig9_case midcomd "$q" "$run"; done
    say "figure 9 run $run/$RUNS done"
  done
}

# MARK: figure 10 — the cost of trust
# a. signed ÷ unsigned signaled setups/s through midcomd with `challenge = never` (only the signature's cost
#    shows): cspload setup, window 64 over 8 sockets as in figure 4; the signed SETUPs (fresh session ID each,
#    sequence 1) are built and signed before the timed window, their pool sized from this run's unsigned count
#    and the verification ceiling (b) — cspload reports when it ran out ("pool_exhausted").
# b. CPU per verification: MidcomBench trust (SignatureCheck.check on serialized signed SETUPs, single thread on
#    the reader CPU), and per record signature (midcomd signs its record in every reply it forwards); OpenSSL's
#    `openssl speed ed25519` verify on the same CPU as the reference.
# c. spoofed flood: midcomd with the default trust settings (challenge = new-sources); `cspload flood` sends
#    SETUPs from random addresses of SPOOF_PREFIX (routed back to the client side, so the ruleset's anti-spoofing
#    check passes and only return routability stops them) as fast as CPU 0 goes, while an initiator that answers
#    CHALLENGEs (`cspload setup -C`, BENCH_FLOOD_WINDOW sessions in flight, default 1: one host opening
#    sessions one after another) sets up sessions with a responder that answers them too (`cspload respond -C`).
#    The same legitimate load runs first without the flood. Repeated with `replies-per-source = 255` and 8
#    sessions in flight (see fig10_flood).
SPOOF_PREFIX=10.250.0.0/16
FLOOD_WINDOW=${BENCH_FLOOD_WINDOW:-1}
fig10() {
  bl_lab
  in_ns gw ip route add "$SPOOF_PREFIX" via 10.201.1.2
  local fd; fd=$(echo "$D * 2" | bc)  # the flood's window (legitimate runs take as long)
  local never=$'[policy]\ndefault = "admit"\nunsignaled = "drop"\nmax-sessions = 4000000\n[trust]\nchallenge = "never"'
  local defaults=$'[policy]\ndefault = "admit"\nunsignaled = "drop"\nmax-sessions = 4000000'
  for run in $(seq 1 "$RUNS"); do
    # b. CPU per verification and per record signature.
    local out; out=$(taskset -c "$READER_CPU" "$SWIFT_BENCH" trust 20000)
    for m in verify_ns verify_ceiling_per_s parse_verify_ns parse_unsigned_ns record_sign_ns sign_ns; do
      record 10 swift "$m" "$run" "$(echo "$out" | json_field $m)"
    done
    local ceiling; ceiling=$(echo "$out" | json_field verify_ceiling_per_s)
    if command -v openssl >/dev/null; then
      local ossl; ossl=$(taskset -c "$READER_CPU" openssl speed -mr -seconds 1 ed25519 2>/dev/null | awk -F: '/^\+F6:/ {printf "%.0f", 1e9 / $6; exit}')
      [ -n "$ossl" ] && record 10 openssl verify_ns "$run" "$ossl"
    fi

    # a. unsigned, then signed, through one midcomd (challenge = never); distinct flows (cspload -S).
    bl_ruleset
    bl_midcomd "$never"
    bl_bg server "$BL_DIR/resp.log" taskset -c "$LOAD_CPU" "$BIN/cspload" respond -d 60
    local r=$BL_LAST_PID
    sleep 0.2
    local c0 c1 case_args pool=0
    for c in unsigned signed; do
      case_args=()
      if [ $c = signed ]; then
        # Enough signed SETUPs for this window: signed setups/s cannot beat the unsigned ones nor the
        # verification ceiling of one core (midcomd verifies on its one packet thread); generous margins.
        pool=$(python3 -c "print(int(min(1.5 * ($(echo "$out" | json_field completed) + $(echo "$out" | json_field lost)), 3 * $ceiling * $D) + 5000))")
        case_args=(-S -n "$pool" -T 15)
      fi
      c0=$(bl_proc_cpu_ns "$MIDCOMD_PID")
      out=$(in_ns client taskset -c "$LOAD_CPU" "$BIN/cspload" setup 10.201.2.2 -w 64 -s 8 -d "$D" "${case_args[@]}")
      c1=$(bl_proc_cpu_ns "$MIDCOMD_PID")
      record 10 "$c-w64" sessions_per_s "$run" "$(echo "$out" | json_field sessions_per_s)"
      record 10 "$c-w64" lost "$run" "$(echo "$out" | json_field lost)"
      record 10 "$c-w64" rtt_p50_ns "$run" "$(echo "$out" | json_field rtt_p50_ns)"
      local done_sessions; done_sessions=$(echo "$out" | json_field completed)
      record 10 "$c-w64" cpu_ns_per_session "$run" "$(( (c1 - c0) / (done_sessions > 0 ? done_sessions : 1) ))"
      if [ $c = signed ]; then
        record 10 "$c-w64" pool "$run" "$pool"
        record 10 "$c-w64" pool_exhausted "$run" "$(echo "$out" | json_field pool_exhausted)"
        record 10 "$c-w64" sign_s "$run" "$(echo "$out" | json_field sign_s)"
        record 10 "$c-w64" authentication_failures "$run" "$(midcomd_counter authentication_failures)"
        [ "$(echo "$out" | json_field pool_exhausted)" = 1 ] && say "figure 10: the signed pool ($pool) ran out: window shortened"
      fi
    done
    bl_stop "$r"
    bl_stop "$MIDCOMD_PID"

    # c. default trust settings, then the same with replies-per-source raised to its maximum (255): the
    #    default budget of 5 CHALLENGEs per address and second caps one initiator (and one responder) at
    #    about 5 new sessions/s whatever the flood does, so the second case shows what the flood itself costs.
    fig10_flood "" "$defaults" "$FLOOD_WINDOW"
    fig10_flood "rps255-" "$defaults"$'\n[trust]\nreplies-per-source = 255' 8
    say "figure 10 run $run/$RUNS done"
  done
}

# fig10_flood PREFIX CONFIG WINDOW: legitimate sessions (cspload setup -C, WINDOW in flight over WINDOW sockets)
# for $fd seconds without, then with, a spoofed flood; records cases PREFIX"legit-noflood", PREFIX"legit-flood"
# and PREFIX"flood".
fig10_flood() {
  local pre=$1 conf=$2 w=$3
  bl_ruleset
  bl_midcomd "$conf"
  bl_bg server "$BL_DIR/resp.log" taskset -c "$LOAD_CPU" "$BIN/cspload" respond -C -d 60
  local r=$BL_LAST_PID
  sleep 0.2
  local legit=(setup 10.201.2.2 -C -w "$w" -s "$w") out m
  local p0 a0; p0=$(midcomd_counter challenges_passed); a0=$(midcomd_counter admitted)
  out=$(in_ns client taskset -c "$LOAD_CPU" "$BIN/cspload" "${legit[@]}" -d "$fd")
  for m in sessions_per_s success_rate lost started challenges rtt_p50_ns; do
    record 10 "${pre}legit-noflood" "$m" "$run" "$(echo "$out" | json_field $m)"
  done
  # Proofs per admitted session: 2 expected (the initiator's and the responder's address); and how often the
  # responder was challenged again for an ACCEPT whose CHALLENGE it had already answered.
  local p1 a1; p1=$(midcomd_counter challenges_passed); a1=$(midcomd_counter admitted)
  record 10 "${pre}legit-noflood" proofs_per_session "$run" "$(echo "($p1 - $p0) / ($a1 - $a0 + ($a1 == $a0))" | bc -l)"
  bl_stop "$r"
  local resp; resp=$(tail -1 "$BL_DIR/resp.log")
  record 10 "${pre}legit-noflood" responder_rechallenged "$run" \
    "$(echo "$resp" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(d['repeated_challenges'] / max(d['challenges'], 1))")"
  bl_bg server "$BL_DIR/resp.log" taskset -c "$LOAD_CPU" "$BIN/cspload" respond -C -d 60
  r=$BL_LAST_PID
  local rss0 rss1 kq0 kq1 sent0 sent1 lim0 lim1 cpu0 cpu1
  rss0=$(awk '/VmRSS/ {print $2}' "/proc/$MIDCOMD_PID/status")
  kq0=$(bl_kernel_queue)
  sent0=$(midcomd_counter challenges_sent); lim0=$(midcomd_counter challenges_limited)
  cpu0=$(bl_proc_cpu_ns "$MIDCOMD_PID")
  bl_bg client "$BL_DIR/flood.log" taskset -c "$LOAD_CPU" "$BIN/cspload" flood 10.201.2.2 "$SPOOF_PREFIX" -d "$fd"
  local f=$BL_LAST_PID
  sleep 0.2
  # Other flows than the run without the flood (-i): a flow signaled again would supersede its session.
  out=$(in_ns client taskset -c "$LOAD_CPU" "$BIN/cspload" "${legit[@]}" -i 1000000 -d "$(echo "$fd - 0.5" | bc)")
  wait "$f" || true
  sleep 0.3  # what the queue still holds is handled
  cpu1=$(bl_proc_cpu_ns "$MIDCOMD_PID")
  sent1=$(midcomd_counter challenges_sent); lim1=$(midcomd_counter challenges_limited)
  kq1=$(bl_kernel_queue)
  rss1=$(awk '/VmRSS/ {print $2}' "/proc/$MIDCOMD_PID/status")
  for m in sessions_per_s success_rate lost started challenges rtt_p50_ns; do
    record 10 "${pre}legit-flood" "$m" "$run" "$(echo "$out" | json_field $m)"
  done
  local flood fsecs handled
  flood=$(tail -1 "$BL_DIR/flood.log")
  fsecs=$(echo "$flood" | json_field seconds)
  handled=$((sent1 - sent0 + lim1 - lim0))
  record 10 "${pre}flood" offered_per_s "$run" "$(echo "$flood" | json_field per_s)"
  # Handled: every spoofed SETUP midcomd judged ends as a CHALLENGE sent or one the reply budget refused
  # (the legitimate sessions' few CHALLENGEs are in it too).
  record 10 "${pre}flood" handled_per_s "$run" "$(echo "$handled / $fsecs" | bc -l)"
  record 10 "${pre}flood" challenges_sent_per_s "$run" "$(echo "($sent1 - $sent0) / $fsecs" | bc -l)"
  record 10 "${pre}flood" challenges_limited_per_s "$run" "$(echo "($lim1 - $lim0) / $fsecs" | bc -l)"
  record 10 "${pre}flood" cpu_ns_per_handled "$run" "$(( (cpu1 - cpu0) / (handled > 0 ? handled : 1) ))"
  record 10 "${pre}flood" queue_dropped "$run" "$(( $(echo "$kq1" | cut -d' ' -f1) - $(echo "$kq0" | cut -d' ' -f1) ))"
  record 10 "${pre}flood" user_dropped "$run" "$(( $(echo "$kq1" | cut -d' ' -f2) - $(echo "$kq0" | cut -d' ' -f2) ))"
  record 10 "${pre}flood" rss_before_kb "$run" "$rss0"
  record 10 "${pre}flood" rss_after_kb "$run" "$rss1"
  record 10 "${pre}flood" sessions_after "$run" "$(midcomd_status sessions)"
  bl_stop "$r"
  bl_stop "$MIDCOMD_PID"
}

# MARK: figure 11 — mobility
# a. REBINDs/s: `cspload rebind` (client) sets up signed sessions from its first address 10.201.1.2, then per
#    run moves the same sessions twice, timed: signed re-SETUPs to another flow (next sequence, the other
#    source port of the session's pair, same address) and signed REBINDs to the client's second address
#    10.201.1.3 (FLOW the flow as it was, NEW-ADDRESS the same port there, sent from there), in alternating
#    order. A REBIND midcomd knows is processed like a re-SETUP with another flow (docs/PROTOCOL.md 6.7):
#    the re-SETUPs are the reference. midcomd runs with the default trust settings, so the second address
#    answers one CHALLENGE for the key (`cspload` signs its RESPONSE) and is proved for the rest; the
#    responder (`cspload respond -C`) answers both with ACCEPT. Each kind first runs FIG11_WARM seconds
#    untimed: midcomd removes the admission a REBIND replaced `rebind-grace` (2 s) later, batched in its
#    housekeeping, and that work must fall inside the timed window as it does under a sustained load. The
#    sessions are sized from the verification ceiling (signed requests/s cannot exceed it), every request
#    built and signed before its phase.
# b. interruption: `udpgap send` (one datagram every GAP_INTERVAL_US from 0.0.0.0:4000) through the gateway to
#    `udpgap recv`; the client's address changes (delete 10.201.1.2, add 10.201.1.3, default route again: in
#    one `ip -batch`, and as three `ip` commands) and `csp keep` (rtnetlink) sends the REBIND, answering
#    midcomd's CHALLENGE for the new address; gap = kernel receive time of the first datagram from the new
#    address − that of the last one from the old. Reference: the same address change through gw with no
#    midcom table (plain forwarding, no signaling).
GAP_INTERVAL_US=${BENCH_GAP_INTERVAL_US:-200}
FIG11_WARM=2.5
fig11() {
  bl_lab
  in_ns client ip addr add 10.201.1.3/24 dev to-gw
  in_ns gw ip neigh replace 10.201.1.3 lladdr "$(in_ns client cat /sys/class/net/to-gw/address)" dev to-client nud permanent
  bl_ruleset
  bl_midcomd $'[policy]\ndefault = "admit"\nunsignaled = "drop"\nmax-sessions = 4000000'
  local ceiling n
  ceiling=$(taskset -c "$READER_CPU" "$SWIFT_BENCH" trust 2000 | json_field verify_ceiling_per_s)
  n=$(python3 -c "print(min(int(1.1 * $ceiling * ($D + $FIG11_WARM)) + 2000, 200000))")
  bl_bg server "$BL_DIR/resp.log" taskset -c "$LOAD_CPU" "$BIN/cspload" respond -C -d 600
  local r=$BL_LAST_PID
  sleep 0.2
  local f0 s0; f0=$(midcomd_counter authentication_failures); s0=$(midcomd_counter spoofed_flows)
  say "figure 11a: $n signed sessions (verification ceiling $ceiling/s), then $RUNS runs"
  in_ns client taskset -c "$LOAD_CPU" timeout 900 "$BIN/cspload" rebind 10.201.2.2 10.201.1.3 -w 64 -s 8 -d "$D" \
    -g "$FIG11_WARM" -r "$RUNS" -n "$n" -P "$MIDCOMD_PID" >"$BL_DIR/rebind.jsonl"
  bl_stop "$r"
  python3 - "$BL_DIR/rebind.jsonl" >>"$RAW" <<'PYEOF'
import json, sys
proofs = 0
for line in open(sys.argv[1]):
    d = json.loads(line)
    run = d.get("run", 1)
    for kind in (["setup"] if d.get("phase") == "prep" else ["resetup", "rebind"]):
        case = "prep-setup" if kind == "setup" else kind + "-w64"
        for m in ("per_s", "lost", "rejects", "challenges", "abandoned", "rtt_p50_ns", "rtt_p99_ns", "pool",
                  "pool_exhausted", "sign_s", "cpu_ns_per_request"):
            print(json.dumps({"fig": "11", "case": case, "metric": m, "run": run, "value": d[f"{kind}_{m}"]}))
    print(json.dumps({"fig": "11", "case": "sessions", "metric": "alive", "run": run, "value": d["alive"]}))
    if "run" in d:
        proofs += d["resetup_challenges"] + d["rebind_challenges"]
# CHALLENGEs the moving host answered in all runs: 1 expected (the new address, once for the key).
print(json.dumps({"fig": "11", "case": "sessions", "metric": "challenges_in_runs", "run": 1, "value": proofs}))
PYEOF
  record 11 sessions prepared 1 "$n"
  record 11 midcomd-a authentication_failures 1 "$(( $(midcomd_counter authentication_failures) - f0 ))"
  record 11 midcomd-a spoofed_flows 1 "$(( $(midcomd_counter spoofed_flows) - s0 ))"
  record 11 midcomd-a rebinds 1 "$(midcomd_counter rebinds)"
  bl_stop "$MIDCOMD_PID"
  say "figure 11a done"
  for run in $(seq 1 "$RUNS"); do
    for how in batch steps; do
      for c in kernel midcomd; do fig11_move "$c" "$how" "$run"; done
    done
    say "figure 11 run $run/$RUNS done"
  done
}

# fig11_move CASE HOW RUN: one address change of a host that sends a UDP stream through gw (a fresh lab);
# CASE kernel: no midcom table in gw; midcomd: a signed session kept by `csp keep`. HOW batch: the old address
# deleted, the new one added and the default route restored by one `ip -batch` (route and address within
# a millisecond); steps: the same as three `ip` commands, the route a few ms after the address, as DHCP
# clients and Tests/integration/mobility-keeper.sh do it.
fig11_move() {
  local c=$1 how=$2 run=$3 state="$BL_DIR/csp-state" key="$BL_DIR/client.key" keeper= listener=
  bl_lab
  if [ "$c" = midcomd ]; then
    bl_ruleset
    bl_midcomd $'[daemon]\nname = "gw"\n[policy]\ndefault = "admit"\nunsignaled = "drop"'
    bl_bg server "$BL_DIR/listen.log" "$SWIFT_BIN/csp" listen --duration 30
    listener=$BL_LAST_PID
  else
    in_ns gw nft delete table inet midcom 2>/dev/null || true
  fi
  bl_bg server "$BL_DIR/gap.log" taskset -c "$LOAD_CPU" "$BIN/udpgap" recv 5000 -d 8
  local recv=$BL_LAST_PID
  if [ "$c" = midcomd ]; then
    rm -rf "$state"
    [ -f "$key" ] || "$SWIFT_BIN/csp" keygen --key "$key" >/dev/null
    sleep 0.2
    local out s
    out=$(in_ns client timeout 20 "$SWIFT_BIN/csp" setup udp 10.201.2.2:5000 --sport 4000 --lifetime 60 --key "$key" --state-dir "$state" 2>&1) || true
    s=$(sed -n 's/^session \([0-9a-f]\{16\}\):.*/\1/p' <<<"$out" | head -1)
    [ -n "$s" ] || { echo "figure 11: csp setup failed: $out" >&2; return 1; }
    bl_bg client "$BL_DIR/keep.log" taskset -c "$LOAD_CPU" "$SWIFT_BIN/csp" keep "$s" --lifetime 60 --duration 10 \
      --key "$key" --state-dir "$state"
    keeper=$BL_LAST_PID
    for _ in $(seq 1 50); do grep -q '"event":"keeping"' "$BL_DIR/keep.log" 2>/dev/null && break; sleep 0.1; done
  fi
  local p0=0; [ "$c" = midcomd ] && p0=$(midcomd_counter challenges_passed)
  bl_bg client "$BL_DIR/send.log" taskset -c "$LOAD_CPU" "$BIN/udpgap" send 10.201.2.2 5000 -S 4000 -i "$GAP_INTERVAL_US" -d 4
  local snd=$BL_LAST_PID
  sleep 1
  if [ "$how" = batch ]; then
    printf '%s\n' "addr del 10.201.1.2/24 dev to-gw" "addr add 10.201.1.3/24 dev to-gw" \
      "route replace default via 10.201.1.1" | in_ns client ip -batch -
  else
    in_ns client ip addr del 10.201.1.2/24 dev to-gw
    in_ns client ip addr add 10.201.1.3/24 dev to-gw
    in_ns client ip route replace default via 10.201.1.1
  fi
  wait "$snd" || true
  wait "$recv" || true
  local gap; gap=$(tail -1 "$BL_DIR/gap.log")
  if [ "$(echo "$gap" | json_field moved)" = 1 ]; then
    record 11 "gap-$c-$how" gap_ms "$run" "$(echo "$gap" | json_field gap_ms)"
    record 11 "gap-$c-$how" missing "$run" "$(echo "$gap" | json_field missing)"
    # Datagrams the sender could not send (no usable address) vs the ones that left and were lost on the way.
    record 11 "gap-$c-$how" send_errors "$run" "$(tail -1 "$BL_DIR/send.log" | json_field send_errors)"
    record 11 "gap-$c-$how" sent "$run" "$(tail -1 "$BL_DIR/send.log" | json_field sent)"
  else
    say "figure 11: the stream never arrived from the new address ($c, $how, run $run): $gap"
  fi
  record 11 "gap-$c-$how" moved "$run" "$(echo "$gap" | json_field moved)"
  if [ "$c" = midcomd ]; then
    record 11 "gap-midcomd-$how" keeper_retries "$run" "$(grep -c '"event":"rebind-retry"' "$BL_DIR/keep.log" || true)"
    record 11 "gap-midcomd-$how" rebound "$run" "$(grep -c '"event":"rebound"' "$BL_DIR/keep.log" || true)"
    record 11 "gap-midcomd-$how" challenges_passed "$run" "$(( $(midcomd_counter challenges_passed) - p0 ))"
    bl_stop "$keeper"
    bl_stop "$listener"
    bl_stop "$MIDCOMD_PID"
  fi
}

# MARK: figure 12 — DoS pushback (issue 11)
# The victim is the server (10.201.2.2), running a UDP service on FIG12_PORT open to anyone: it signals an
# incoming pinhole from any peer (`csp setup udp --incoming --peer any`, signed) to midcomd in gw (release
# build, the shipped ruleset, `default = admit`, `unsignaled = drop`, default trust and [pushback]). The flood:
# `udpblast spoof` on the client, pinned to LOAD_CPU, 64 B datagrams from random addresses and source ports of
# FIG12_PREFIX (routed from gw back to the client side, so the ruleset's anti-spoofing check passes them, as
# for a compromised network's own hosts) to the service, as fast as one core sends them. RPS on gw's ingress
# veth steers everything gw (and the server behind it) does with the flood to READER_CPU, where midcomd runs,
# so that CPU's softirq time is the gateway's kernel work and the flood generator has the other CPU to itself.
# Forwarded = the pinhole4 element's counter in gw; the server drops what reaches it in its own raw prerouting
# chain (a counter: delivered packets).
# Cases per run, in this order:
#   forward:    the pinhole only; the gateway forwards the flood (pinhole4 in queue_hook, one conntrack entry
#               per new source address and port): packets/s at the server.
#   filter:     the victim sends `csp deny PREFIX --proto udp --port P` (real DENY through midcomd; the time
#               from DENY sent to ACCEPT as csp prints it); the kernel drops at raw + 10: packets/s from the
#               deny4 element's counter (`midctl denies --json`). The victim removes it afterwards (lifetime 0).
#   ratelimit:  the same with `--rate-limit` (ratelimit4: 1000/s burst 100 pass, the rest dropped and counted).
# Gateway CPU = Δ(irq + softirq) of READER_CPU in /proc/stat + Δ midcomd's user+system time, over the flood.
FIG12_PREFIX=10.250.12.0/24
FIG12_TOWARD=10.250.12.77
FIG12_PORT=5353
fig12() {
  bl_lab
  in_ns gw ip route add "$FIG12_PREFIX" via 10.201.1.2
  in_ns gw sh -c "printf '%x' $((1 << READER_CPU)) >/sys/class/net/to-client/queues/rx-0/rps_cpus"
  in_ns server nft -f - <<NFT
table ip sink {
  chain pre { type filter hook prerouting priority raw; policy accept; udp dport $FIG12_PORT counter drop; }
}
NFT
  bl_ruleset
  bl_midcomd $'[daemon]\nname = "gw"\n[policy]\ndefault = "admit"\nunsignaled = "drop"'
  local key="$BL_DIR/victim.key" state="$BL_DIR/csp-state" out
  "$SWIFT_BIN/csp" keygen --key "$key" >/dev/null
  out=$(in_ns server timeout 20 "$SWIFT_BIN/csp" setup udp --incoming --peer any --local-port "$FIG12_PORT" \
    --via 10.201.2.1 --lifetime 600 --key "$key" --state-dir "$state" 2>&1) \
    || { echo "figure 12: csp setup --incoming failed: $out" >&2; return 1; }
  in_ns gw nft list set inet midcom pinhole4 | grep -q "udp . 10.201.2.2 . $FIG12_PORT" \
    || { echo "figure 12: no pinhole4 element after csp setup: $out" >&2; return 1; }
  for run in $(seq 1 "$RUNS"); do
    fig12_case forward "$run" "$key" "$state"
    fig12_case filter "$run" "$key" "$state"
    fig12_case ratelimit "$run" "$key" "$state"
    say "figure 12 run $run/$RUNS done"
  done
  record 12 midcomd denies_installed 1 "$(midcomd_counter denies_installed)"
  record 12 midcomd denies_refused 1 "$(midcomd_counter denies_refused)"
  bl_stop "$MIDCOMD_PID"
}

# fig12_gw_cpu_ns: irq + softirq time of READER_CPU (all namespaces: the lab is the only traffic there) plus
# midcomd's user+system time, in ns.
fig12_gw_cpu_ns() {
  local ticks; ticks=$(awk -v c="cpu$READER_CPU" '$1 == c {print $7 + $8}' /proc/stat)
  echo $(( ticks * 1000000000 / $(getconf CLK_TCK) + $(bl_proc_cpu_ns "$MIDCOMD_PID") ))
}
# fig12_busy_ns: every non-idle tick of READER_CPU (user, nice, system, irq, softirq, steal), for context:
# it includes whatever else the machine runs there.
fig12_busy_ns() {
  awk -v c="cpu$READER_CPU" -v hz="$(getconf CLK_TCK)" '$1 == c {printf "%.0f", ($2 + $3 + $4 + $7 + $8 + $9) * 1e9 / hz}' /proc/stat
}
fig12_softirq_ns() { awk -v c="cpu$1" -v hz="$(getconf CLK_TCK)" '$1 == c {printf "%.0f", $8 * 1e9 / hz}' /proc/stat; }
# fig12_ksoftirqd_ns: CPU time of READER_CPU's ksoftirqd (softirq work deferred to a thread under load).
fig12_ksoftirqd_ns() { bl_proc_cpu_ns "$(pgrep -x "ksoftirqd/$READER_CPU" | head -1)"; }
fig12_steal_ns() { awk -v c="cpu$READER_CPU" -v hz="$(getconf CLK_TCK)" '$1 == c {printf "%.0f", $9 * 1e9 / hz}' /proc/stat; }
# fig12_ct_stat COLUMN: a column of gw's conntrack statistics (insert, early_drop, drop), summed over CPUs.
fig12_ct_stat() {
  in_ns gw awk -v col="$1" 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == col) k = i; next}
    {n = 0; h = tolower($k); for (j = 1; j <= length(h); j++) n = n * 16 + index("0123456789abcdef", substr(h, j, 1)) - 1; sum += n}
    END {print sum + 0}' /proc/net/stat/nf_conntrack
}
# fig12_div A B: A ÷ B as a JSON number (0 when B is 0).
fig12_div() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.6g\n", (b + 0 != 0 ? a / b : 0)}'; }
# fig12_pinhole_count: packets the gateway accepted for forwarding (the pinhole4 element's counter).
fig12_pinhole_count() {
  in_ns gw nft list set inet midcom pinhole4 | sed -n "s/.*udp \. 10\.201\.2\.2 \. $FIG12_PORT .*counter packets \([0-9]*\).*/\1/p" | head -1
}
fig12_sink_count() { in_ns server nft list chain ip sink pre | sed -n 's/.*counter packets \([0-9]*\).*/\1/p' | head -1; }
# fig12_backlog_drops: packets READER_CPU's input backlog refused (full: net.core.netdev_max_backlog).
fig12_backlog_drops() { printf '%d\n' "0x$(awk -v l=$((READER_CPU + 1)) 'NR == l {print $2}' /proc/net/softnet_stat)"; }
# fig12_filter_packets ID: the kernel counter of filter ID (midctl denies --json), 0 if not listed.
fig12_filter_packets() {
  bl_midctl denies --json | python3 -c "import json,sys; print(next((d.get('packets') or 0 for d in json.load(sys.stdin) if d['id'] == '$1'), 0))"
}

# fig12_case CASE RUN KEY STATE: one flood of D seconds through gw (see fig12).
fig12_case() {
  local c=$1 run=$2 key=$3 state=$4 id= out ms
  if [ "$c" != forward ]; then
    local extra=(); [ "$c" = ratelimit ] && extra=(--rate-limit)
    out=$(in_ns server timeout 20 "$SWIFT_BIN/csp" deny "$FIG12_PREFIX" --proto udp --port "$FIG12_PORT" --toward "$FIG12_TOWARD" \
      --lifetime 120 --wait 0.5 "${extra[@]}" --key "$key" --state-dir "$state" 2>&1) || { echo "figure 12: csp deny failed: $out" >&2; return 1; }
    id=$(sed -n 's/^filter \([0-9a-f]\{16\}\):.*/\1/p' <<<"$out" | head -1)
    ms=$(sed -n 's/.*middlebox gw id [0-9a-f]*: denied, .* in \([0-9.]*\) ms.*/\1/p' <<<"$out" | head -1)
    [ -n "$id" ] && [ -n "$ms" ] || { echo "figure 12: no filter in csp deny's answer: $out" >&2; return 1; }
    record 12 "$c" deny_to_accept_ms "$run" "$ms"
    record 12 "$c" deny_challenged "$run" "$(grep -c 'challenged by middlebox' <<<"$out" || true)"
  fi
  local s0 p0 f0 b0 g0 y0 z0 t0 v0 k0 e0 s1 p1 f1 b1 g1 y1 z1 t1 v1 k1 e1 flood secs win
  s0=$(fig12_sink_count); p0=$(fig12_pinhole_count); f0=0; [ -n "$id" ] && f0=$(fig12_filter_packets "$id")
  e0=$(fig12_ct_stat early_drop); k0=$(fig12_ksoftirqd_ns)
  b0=$(fig12_backlog_drops); t0=$(date +%s%N); g0=$(fig12_gw_cpu_ns); y0=$(fig12_busy_ns); z0=$(fig12_softirq_ns "$LOAD_CPU"); v0=$(fig12_steal_ns)
  flood=$(in_ns client taskset -c "$LOAD_CPU" timeout $(( ${D%.*} + 10 )) "$BIN/udpblast" spoof 10.201.2.2 "$FIG12_PORT" "$FIG12_PREFIX" -d "$D")
  sleep 0.2  # what the backlog still holds is handled
  g1=$(fig12_gw_cpu_ns); y1=$(fig12_busy_ns); z1=$(fig12_softirq_ns "$LOAD_CPU"); v1=$(fig12_steal_ns); t1=$(date +%s%N)
  b1=$(fig12_backlog_drops); e1=$(fig12_ct_stat early_drop); k1=$(fig12_ksoftirqd_ns)
  s1=$(fig12_sink_count); p1=$(fig12_pinhole_count); f1=0; [ -n "$id" ] && f1=$(fig12_filter_packets "$id")
  secs=$(echo "$flood" | json_field seconds)
  win=$((t1 - t0))
  # Forwarded: accepted by gw's ruleset (pinhole4). Delivered: counted at the server; fewer, because the
  # server's receive queues into the same full backlog of READER_CPU (a lab artifact, both share one CPU).
  local fwd=$((p1 - p0)) dropped=$((f1 - f0)) cpu=$((g1 - g0))
  record 12 "$c" delivered_pps "$run" "$(fig12_div "$((s1 - s0))" "$secs")"
  record 12 "$c" offered_pps "$run" "$(echo "$flood" | json_field offered_pps)"
  record 12 "$c" forwarded_pps "$run" "$(fig12_div "$fwd" "$secs")"
  record 12 "$c" backlog_drops_pps "$run" "$(fig12_div "$((b1 - b0))" "$secs")"
  # Shares of one CPU over the whole window between the two readings (the flood and the 0.2 s after it).
  record 12 "$c" gw_cpu_share "$run" "$(fig12_div "$cpu" "$win")"
  record 12 "$c" cpu_busy_share "$run" "$(fig12_div "$((y1 - y0))" "$win")"
  record 12 "$c" load_cpu_softirq_share "$run" "$(fig12_div "$((z1 - z0))" "$win")"
  # The rest of the reader CPU's busy time: the hypervisor's (steal), and processes other than midcomd.
  record 12 "$c" steal_share "$run" "$(fig12_div "$((v1 - v0))" "$win")"
  record 12 "$c" other_share "$run" "$(fig12_div "$((y1 - y0 - cpu - v1 + v0))" "$win")"
  record 12 "$c" ksoftirqd_share "$run" "$(fig12_div "$((k1 - k0))" "$win")"
  # Conntrack entries evicted for new ones (gw's table, 262 144 here, is full after a few seconds of the flood).
  record 12 "$c" conntrack_early_drops_per_s "$run" "$(fig12_div "$((e1 - e0))" "$secs")"
  # CPU per million packets the gateway dealt with: forwarded, or dropped by the filter (rate limit: both).
  record 12 "$c" gw_cpu_ms_per_mpkt "$run" "$(fig12_div "$cpu" "$((fwd + dropped))")"
  if [ -n "$id" ]; then
    record 12 "$c" dropped_pps "$run" "$(fig12_div "$dropped" "$secs")"
    out=$(in_ns server timeout 20 "$SWIFT_BIN/csp" deny "$FIG12_PREFIX" --proto udp --port "$FIG12_PORT" --toward "$FIG12_TOWARD" \
      --session "$id" --lifetime 0 --wait 0.5 --key "$key" --state-dir "$state" 2>&1) \
      || { echo "figure 12: removing filter $id failed: $out" >&2; return 1; }
    if in_ns gw nft list set inet midcom deny4 | grep -q "$FIG12_PREFIX" || in_ns gw nft list set inet midcom ratelimit4 | grep -q "$FIG12_PREFIX"; then
      echo "figure 12: filter $id still in the kernel after its removal: $out" >&2; return 1
    fi
  fi
}

# MARK: figure 13 — NAT-PMP port mappings: midcomd ÷ miniupnpd, the same client (issue 12)
# Two labs alike, side by side for the whole figure, so that only the daemon differs:
#   client 10.201.1.2 — gw 10.201.1.1 | 10.201.2.1 — server 10.201.2.2 (bl_lab): midcomd in gw (release
#     build, the shipped ruleset, `default = admit`, `unsignaled = drop`, [nat] with external address
#     10.201.2.1, the client's /24 inside, port-mapping on: NAT-PMP on UDP 5351, a mapping is a session with
#     a dnat4 element and a pinhole);
#   uclient — ugw — userver with the same addresses (fig13_upnp_lab): miniupnpd 2.3.1 (Debian
#     miniupnpd-nftables) in ugw, NAT-PMP on the client side, its external interface towards userver.
# Both daemons pinned to READER_CPU, the client to LOAD_CPU; the client's commands are the same for both,
# only the namespace they run in differs. Per run, the daemons in alternating order:
#   natpmpc:    Benchmarks/natpmpc-loop.sh: Debian's unmodified natpmpc, a process per request (as a script or
#               an application using libnatpmp runs it); for FIG13_PORTS distinct ports P, `natpmpc -a P P udp
#               60` then `natpmpc -a P P udp 0`, at most FIG13_MAX_S s; granted cycles ÷ the loop's time.
#   natpmpload: the C client of figure 8 (one socket, one request at a time, map + remove, ports from 20000),
#               for D s; cycles/s.
# A refused or unanswered request never counts as a cycle: natpmpc-loop.sh counts only cycles whose two
# answers were grants, and a natpmpload run with any error result or timeout records no rate at all (the
# report then prints the failure instead of a number). Before the runs one mapping per daemon must show up in
# its kernel table and be gone after its removal (fig13_check); after every loop no DNAT to the client may
# be left, and midcomd's `mapped` and `torn_down` counters must have moved by the cycles the client counted.
# Daemon CPU per cycle (all the daemon's threads, fig13_cpu_ns) is recorded too.
FIG13_PORTS=${BENCH_FIG13_PORTS:-}
FIG13_MAX_S=30
# miniupnpd 2.3.1 refuses every mapping when its external address is private or reserved: RFC 1918, the
# TEST-NETs, 198.18/15, 240/4… (its addr_is_reserved list; "Port forwarding is impossible"). It also refuses
# such an address as ext_ip, and this version has no option to allow one (ext_allow_private_ipv4 came
# later), so, as in figure 8, ext_ip names a public-looking address. It is only a label in NAT-PMP answers:
# miniupnpd's rules match its external interface, no packet is ever sent to the address, and nothing in
# these namespaces routes anywhere outside them.
FIG13_UPNP_EXT_IP=11.22.33.44
FIG13_GW=10.201.1.1
fig13() {
  command -v natpmpc >/dev/null && command -v miniupnpd >/dev/null || {
    echo "figure 13: needs natpmpc and miniupnpd (Debian natpmpc and miniupnpd-nftables: scripts/install-deps.sh bench)" >&2
    return 1
  }
  local ports=${FIG13_PORTS:-300}; [ "$QUICK" = 1 ] && ports=${FIG13_PORTS:-150}
  [ $((30000 + RUNS * ports)) -le 65535 ] || { echo "figure 13: $RUNS runs of $ports ports do not fit above port 30000" >&2; return 1; }
  bl_lab
  fig13_upnp_lab
  bl_ruleset
  bl_midcomd $'[policy]\ndefault = "admit"\nunsignaled = "drop"\n[nat]\nexternal-address = "10.201.2.1"\ninternal = "10.201.1.0/24"\nport-mapping = true'
  fig13_miniupnpd
  # The ports of the check and the warm-up lie below every run's ports.
  fig13_check midcomd 29999
  fig13_check miniupnpd 29999
  # One short untimed loop per daemon first (the first loop after start ran up to 30 % slower: page cache,
  # the daemon's first allocations), then each daemon's CPU while idle for D s: its own housekeeping, which the
  # CPU per cycle below includes (the natpmpc loops leave the daemon idle most of the time).
  local d i0 i1 warm
  for d in midcomd miniupnpd; do
    warm=$(in_ns "$(fig13_ns "$d" client)" taskset -c "$LOAD_CPU" timeout 60 bash "$BENCH_DIR/natpmpc-loop.sh" "$FIG13_GW" 29000 20 20)
    [ "$(echo "$warm" | json_field granted)" = 20 ] || { echo "figure 13: $d refused the warm-up mappings: $warm" >&2; return 1; }
    i0=$(fig13_cpu_ns "$(fig13_pid "$d")"); sleep "$D"; i1=$(fig13_cpu_ns "$(fig13_pid "$d")")
    record 13 "$d" idle_cpu_ms_per_s 1 "$(echo "($i1 - $i0) / 1000000 / $D" | bc -l)"
  done
  for run in $(seq 1 "$RUNS"); do
    local order="midcomd miniupnpd"
    [ $((run % 2)) = 0 ] && order="miniupnpd midcomd"
    for d in $order; do fig13_natpmpc "$d" "$run" $((30000 + (run - 1) * ports)) "$ports"; done
    for d in $order; do fig13_natpmpload "$d" "$run"; done
    say "figure 13 run $run/$RUNS done"
  done
  record 13 midcomd rejected 1 "$(midcomd_counter rejected)"
  bl_stop "$UPNP_PID"
  bl_stop "$MIDCOMD_PID"
}

# fig13_upnp_lab: uclient — ugw — userver, addressed like bl_lab's client — gw — server (added to the
# namespaces of the current lab, removed with them).
fig13_upnp_lab() {
  bl_ns uclient; bl_ns ugw; bl_ns userver
  bl_link uclient ugw; bl_link ugw userver
  in_ns uclient ip addr add 10.201.1.2/24 dev to-ugw
  in_ns ugw ip addr add 10.201.1.1/24 dev to-uclient
  in_ns ugw ip addr add 10.201.2.1/24 dev to-userver
  in_ns userver ip addr add 10.201.2.2/24 dev to-ugw
  in_ns uclient ip route add default via 10.201.1.1
  in_ns userver ip route add default via 10.201.2.1
  in_ns ugw sysctl -qw net.ipv4.ip_forward=1
  in_ns ugw ip neigh replace 10.201.1.2 lladdr "$(in_ns uclient cat /sys/class/net/to-ugw/address)" dev to-uclient nud permanent
  in_ns uclient ip neigh replace 10.201.1.1 lladdr "$(in_ns ugw cat /sys/class/net/to-uclient/address)" dev to-ugw nud permanent
}

# fig13_miniupnpd: miniupnpd in ugw on READER_CPU, NAT-PMP only (no UPnP IGD, no IPv6), secure mode (a
# client maps only its own address, as midcomd), the client's /24 allowed; sets UPNP_PID. It runs as a
# daemon with its default log level, not under -d: -d also turns on debug logging, about 20 lines per
# mapping, and with no syslog socket in the lab glibc writes each to /dev/console (~2 ms a line), which held
# figure 8's miniupnpd to ~40 cycles/s. Its start-up errors (before it forks) land in miniupnpd.log.
fig13_miniupnpd() {
  upnp_ruleset ugw
  printf '%s\n' ext_ifname=to-userver "ext_ip=$FIG13_UPNP_EXT_IP" listening_ip=to-uclient enable_natpmp=yes enable_upnp=no \
    ipv6_disable=yes secure_mode=yes 'allow 1024-65535 10.201.1.0/24 1024-65535' 'deny 0-65535 0.0.0.0/0 0-65535' \
    >"$BL_DIR/miniupnpd.conf"
  rm -f "$BL_DIR/miniupnpd.pid"
  in_ns ugw taskset -c "$READER_CPU" timeout 10 miniupnpd -f "$BL_DIR/miniupnpd.conf" -P "$BL_DIR/miniupnpd.pid" \
    >"$BL_DIR/miniupnpd.log" 2>&1 || { echo "figure 13: miniupnpd did not start: $(cat "$BL_DIR/miniupnpd.log")" >&2; return 1; }
  UPNP_PID=
  for _ in $(seq 1 50); do
    [ -s "$BL_DIR/miniupnpd.pid" ] && { UPNP_PID=$(cat "$BL_DIR/miniupnpd.pid"); break; }
    sleep 0.1
  done
  [ -n "$UPNP_PID" ] || { echo "figure 13: miniupnpd wrote no pid file: $(cat "$BL_DIR/miniupnpd.log")" >&2; return 1; }
  BL_PIDS+=("$UPNP_PID")
  for _ in $(seq 1 50); do
    in_ns ugw ss -Hlun 'sport = :5351' | grep -q . && return 0
    kill -0 "$UPNP_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "figure 13: miniupnpd is not listening on UDP 5351 (it logs to syslog; run it with -d to see why)" >&2
  return 1
}

# fig13_cpu_ns PID: CPU time of all the process's threads in ns from /proc/PID/task/*/schedstat (ns resolution;
# bl_proc_cpu_ns counts 10 ms ticks, too coarse for a few hundred mappings); the tick count where the kernel
# keeps no schedstat.
fig13_cpu_ns() {
  if [ -r "/proc/$1/schedstat" ]; then cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'
  else bl_proc_cpu_ns "$1"; fi
}

# fig13_ns DAEMON ROLE: the namespace of the client (ROLE client) or gateway (gw) of DAEMON's lab.
fig13_ns() { if [ "$1" = midcomd ]; then echo "$2"; else echo "u$2"; fi; }
fig13_pid() { if [ "$1" = midcomd ]; then echo "$MIDCOMD_PID"; else echo "$UPNP_PID"; fi; }

# fig13_dnats DAEMON: the DNATs to the client in DAEMON's tables, one "external-port internal-port" line
# each (midcomd: dnat4 elements; miniupnpd: the rules of its prerouting_miniupnpd chain).
fig13_dnats() {
  if [ "$1" = midcomd ]; then
    in_ns gw nft list map inet midcom dnat4 | tr ',{}' '\n\n\n' \
      | sed -n 's/.*10\.201\.2\.1 \. udp \. \([0-9]*\) .*: 10\.201\.1\.2 \. \([0-9]*\).*/\1 \2/p'
  else
    in_ns ugw nft list chain inet filter prerouting_miniupnpd \
      | sed -n 's/.*th dport \([0-9]*\) dnat ip to 10\.201\.1\.2:\([0-9]*\).*/\1 \2/p'
  fi
}

# fig13_filter DAEMON PORT: succeeds when DAEMON's forward filter lets the mapped flow in (midcomd: a
# pinhole4 element for the client's port; miniupnpd: an accept rule for the port in its miniupnpd chain).
fig13_filter() {
  if [ "$1" = midcomd ]; then
    in_ns gw nft list set inet midcom pinhole4 | grep -q "udp \. 10\.201\.1\.2 \. $2\b"
  else
    in_ns ugw nft list chain inet filter miniupnpd | grep -q "th dport $2 .*accept"
  fi
}

# fig13_check DAEMON PORT: one mapping through natpmpc must be granted, installed (DNAT PORT → client:PORT and
# the filter's pinhole) and, after its removal, gone. Fails the figure otherwise.
fig13_check() {
  local d=$1 p=$2 c out
  c=$(fig13_ns "$d" client)
  out=$(in_ns "$c" timeout 10 natpmpc -g "$FIG13_GW" -a "$p" "$p" udp 60 2>&1) \
    && grep -q "Mapped public port $p protocol UDP to local port $p liftime [1-9]" <<<"$out" \
    || { echo "figure 13: $d did not grant the mapping of UDP $p: $out" >&2; return 1; }
  fig13_dnats "$d" | grep -qx "$p $p" && fig13_filter "$d" "$p" || {
    echo "figure 13: $d granted UDP $p but its DNAT or pinhole is not in the kernel:" >&2
    in_ns "$(fig13_ns "$d" gw)" nft list ruleset >&2
    return 1
  }
  out=$(in_ns "$c" timeout 10 natpmpc -g "$FIG13_GW" -a "$p" "$p" udp 0 2>&1) \
    && grep -q "Mapped public port 0 protocol UDP to local port $p liftime 0" <<<"$out" \
    || { echo "figure 13: $d did not remove the mapping of UDP $p: $out" >&2; return 1; }
  if fig13_dnats "$d" | grep -qx "$p $p" || fig13_filter "$d" "$p"; then
    echo "figure 13: $d removed UDP $p but its DNAT or pinhole is still in the kernel" >&2
    return 1
  fi
  record 13 "$d" installed_check 1 1
}

# fig13_counters: midcomd's "mapped torn_down" counters.
fig13_counters() {
  bl_midctl status --json | python3 -c "import json,sys; c=json.load(sys.stdin)['counters']; print(c.get('mapped', 0), c.get('torn_down', 0))"
}

# fig13_after DAEMON CASE RUN CYCLES M0 T0: what must hold after a loop whose client counted CYCLES granted
# map + remove cycles: no DNAT to the client left; for midcomd, `mapped` and `torn_down` moved by CYCLES
# (M0, T0: their values before the loop).
fig13_after() {
  local d=$1 c=$2 run=$3 n=$4 m0=$5 t0=$6 left m1 t1
  left=$(fig13_dnats "$d" | wc -l)
  record 13 "$c" leftover_dnat "$run" "$left"
  [ "$left" = 0 ] || say "figure 13: $left DNAT(s) of $d left in the kernel after the $c loop of run $run"
  if [ "$d" = midcomd ]; then
    read -r m1 t1 < <(fig13_counters)
    record 13 "$c" mapped_minus_cycles "$run" $((m1 - m0 - n))
    record 13 "$c" torn_down_minus_cycles "$run" $((t1 - t0 - n))
    [ $((m1 - m0)) = "$n" ] && [ $((t1 - t0)) = "$n" ] \
      || say "figure 13: midcomd counted $((m1 - m0)) mappings and $((t1 - t0)) removals for $n granted cycles ($c, run $run)"
  fi
}

# fig13_natpmpc DAEMON RUN FIRST_PORT PORTS: one natpmpc loop against DAEMON.
fig13_natpmpc() {
  local d=$1 run=$2 first=$3 n=$4 c="$1-natpmpc" pid out m0=0 t0=0 c0 c1 refused granted
  pid=$(fig13_pid "$d")
  [ "$d" = midcomd ] && read -r m0 t0 < <(fig13_counters)
  c0=$(fig13_cpu_ns "$pid")
  out=$(in_ns "$(fig13_ns "$d" client)" taskset -c "$LOAD_CPU" timeout $((FIG13_MAX_S + 15)) \
    bash "$BENCH_DIR/natpmpc-loop.sh" "$FIG13_GW" "$first" "$n" "$FIG13_MAX_S") \
    || { echo "figure 13: the natpmpc loop against $d failed: $out" >&2; return 1; }
  c1=$(fig13_cpu_ns "$pid")
  granted=$(echo "$out" | json_field granted)
  refused=$(( $(echo "$out" | json_field map_refused) + $(echo "$out" | json_field unmap_refused) ))
  record 13 "$c" ports "$run" "$(echo "$out" | json_field ports)"
  record 13 "$c" granted "$run" "$granted"
  record 13 "$c" refused "$run" "$refused"
  if [ "$refused" -gt 0 ]; then
    say "figure 13: $d REFUSED or left unanswered $refused natpmpc requests in run $run (no rate recorded): $(echo "$out" | json_field first_error)"
  else
    record 13 "$c" cycles_per_s "$run" "$(echo "$out" | json_field per_s)"
    record 13 "$c" cpu_ns_per_cycle "$run" $(( (c1 - c0) / (granted > 0 ? granted : 1) ))
  fi
  fig13_after "$d" "$c" "$run" "$granted" "$m0" "$t0"
}

# fig13_natpmpload DAEMON RUN: natpmpload against DAEMON for D s.
fig13_natpmpload() {
  local d=$1 run=$2 c="$1-natpmpload" pid out m0=0 t0=0 c0 c1 refused cycles
  pid=$(fig13_pid "$d")
  [ "$d" = midcomd ] && read -r m0 t0 < <(fig13_counters)
  c0=$(fig13_cpu_ns "$pid")
  out=$(in_ns "$(fig13_ns "$d" client)" taskset -c "$LOAD_CPU" timeout $(( ${D%.*} + 10 )) "$BIN/natpmpload" "$FIG13_GW" -d "$D") \
    || { echo "figure 13: natpmpload against $d failed: $out" >&2; return 1; }
  c1=$(fig13_cpu_ns "$pid")
  cycles=$(echo "$out" | json_field cycles)
  refused=$(( $(echo "$out" | json_field errors) + $(echo "$out" | json_field timeouts) ))
  record 13 "$c" refused "$run" "$refused"
  if [ "$refused" -gt 0 ]; then
    # natpmpload counts a cycle whose answers were errors: no rate from such a run.
    say "figure 13: $d answered $(echo "$out" | json_field errors) natpmpload requests with an error and left $(echo "$out" | json_field timeouts) unanswered in run $run (no rate recorded)"
  else
    record 13 "$c" granted "$run" "$cycles"
    record 13 "$c" cycles_per_s "$run" "$(echo "$out" | json_field per_s)"
    record 13 "$c" cpu_ns_per_cycle "$run" $(( (c1 - c0) / (cycles > 0 ? cycles : 1) ))
  fi
  fig13_after "$d" "$c" "$run" "$cycles" "$m0" "$t0"
}

# MARK: figure 14 — reader CPU per packet where the kernel's share is small (issue 14)
# One namespace (named gw, so that bl_midcomd and bl_kernel_queue apply), nothing but lo: udpblast sends 64 B
# UDP to 127.0.0.1:9000 as fast as LOAD_CPU goes; table inet mcb14 queues it from OUTPUT and counts and drops it
# at raw priority in PREROUTING (iif lo) after the verdict, so nothing is delivered to a socket and the kernel's
# work per packet is small. midcomd's own ruleset (nft-rules/midcom.nft) hooks forward only (queue_hook) and
# never sees locally generated packets, so the queue rule for this harness lives in mcb14's own chain
# `enqueue`, reached by `udp dport 9000 jump enqueue` from an output base chain and filled by `nfqref rule 0 1
# mcb14` with the same rule midcomd installs (queue 0, bypass, the same native/compat encoding). The readers
# bind queue 0 like in figure 1; midcomd runs with its shipped ruleset loaded (it checks its revision) and
# `unsignaled = "default-policy"` (a plain accept per packet, as in figure 1). The reader is alone on
# READER_CPU, the sender on LOAD_CPU.
# Cases: none (the enqueue chain empty: what the kernel does without a queue), ctuned (`nfqref batch -x`: its
# defaults, which measured fastest of every knob tried, plus an attribute walk instead of nfq_nlmsg_parse: the
# leanest C loop), cbatch (`nfqref batch`, figure 1's reference), midcomd. Per case and run: packets/s counted at the sink over the sender's window, reader CPU
# (user+system of all its threads, schedstat ns) ÷ the same packets, and kernel queue drops (queue_dropped +
# user_dropped, read before the reader unbinds).
# BENCH_FIG14_TUNE="name:opts;name:opts" adds cases ctune-NAME (`nfqref batch OPTS`): how the C loop was tuned
# (docs/PERFORMANCE.md, figure 14).
FIG14_CASES=${BENCH_FIG14_CASES:-"none ctuned cbatch midcomd"}
FIG14_TUNE=${BENCH_FIG14_TUNE:-}
fig14() {
  for n in "${BL_NAMESPACES[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  BL_NAMESPACES=()
  BL_TAG="mcb$$r$RANDOM"
  bl_ns gw
  bl_ruleset
  bl_loopback_harness
  local cases=$FIG14_CASES names=() opts=() i
  if [ -n "$FIG14_TUNE" ]; then
    local IFS_=$IFS; IFS=';'
    for v in $FIG14_TUNE; do names+=("${v%%:*}"); opts+=("${v#*:}"); cases="$cases ctune-${v%%:*}"; done
    IFS=$IFS_
  fi
  for run in $(seq 1 "$RUNS"); do
    for c in $cases; do
      local pid=
      in_ns gw nft flush chain inet mcb14 enqueue
      if [ "$c" != none ]; then ENCODING=$(in_ns gw "$BIN/nfqref" rule 0 1 mcb14); fi
      case $c in
        none) ;;
        ctuned) bl_bg gw "$BL_DIR/nfqref.json" taskset -c "$READER_CPU" "$BIN/nfqref" batch -x -d 60; pid=$BL_LAST_PID ;;
        cbatch) bl_bg gw "$BL_DIR/nfqref.json" taskset -c "$READER_CPU" "$BIN/nfqref" batch -d 60; pid=$BL_LAST_PID ;;
        ctune-*)
          for i in "${!names[@]}"; do [ "ctune-${names[$i]}" = "$c" ] && break; done
          # shellcheck disable=SC2086
          bl_bg gw "$BL_DIR/nfqref.json" taskset -c "$READER_CPU" "$BIN/nfqref" batch ${opts[$i]} -d 60; pid=$BL_LAST_PID ;;
        midcomd) bl_midcomd $'[policy]\nunsignaled = "default-policy"'; pid=$MIDCOMD_PID ;;
      esac
      sleep 0.3
      local s0 s1 c0=0 c1=0 out kq
      [ -n "$pid" ] && c0=$(bl_task_cpu_ns "$pid")
      s0=$(bl_loopback_sink)
      out=$(in_ns gw taskset -c "$LOAD_CPU" timeout $(( ${D%.*} + 10 )) "$BIN/udpblast" send 127.0.0.1 9000 -s 64 -d "$D" -S 40000)
      s1=$(bl_loopback_sink)
      [ -n "$pid" ] && c1=$(bl_task_cpu_ns "$pid")
      kq=$(bl_kernel_queue)
      [ -n "$pid" ] && bl_stop "$pid"
      local pkts=$((s1 - s0)) secs; secs=$(echo "$out" | json_field seconds)
      record 14 "$c" pps "$run" "$(echo "$pkts / $secs" | bc -l)"
      record 14 "$c" offered_pps "$run" "$(echo "$out" | json_field offered_pps)"
      if [ -n "$pid" ]; then
        record 14 "$c" cpu_ns_per_packet "$run" "$(( (c1 - c0) / (pkts > 0 ? pkts : 1) ))"
        record 14 "$c" kernel_drops "$run" "$(echo "$kq" | awk '{print $1 + $2}')"
      fi
    done
    say "figure 14 run $run/$RUNS done"
  done
  # The same path counted instead of timed, once (the counts repeat run to run where this machine's
  # timings move by 30 %): midcomd and nfqref batch each under callgrind in this harness at a load
  # both keep up with (Benchmarks/daemon-footprint.sh, cases plain and plain-c).
  local footprint m which
  for which in plain:midcomd plain-c:cbatch; do
    if footprint=$(DAEMON_FOOTPRINT_CASE=${which%%:*} bash "$BENCH_DIR/daemon-footprint.sh" "$SWIFT_BIN/midcomd"); then
      for m in instructions verdict_messages hot_code_lines hot_code_pages allocations; do
        record 14 "${which#*:}-counted" "$m" 1 "$(echo "$footprint" | json_field $m)"
      done
    else
      say "figure 14: ${which#*:} was not counted (Benchmarks/daemon-footprint.sh failed)"
    fi
  done
}

# MARK: figure 15 — relayed sessions (issue 15)
# The lab of the other figures, with the gateway's work on READER_CPU and the ends' on LOAD_CPU: RPS on gw's two
# veths sends everything gw receives to READER_CPU (kernel forwarding, or the relays' TCP receive), RPS on the
# client's and the server's veth sends what they receive to LOAD_CPU. The relays (midrelayd, danted, turnserver)
# and midcomd run on READER_CPU, every client and server program on LOAD_CPU; so READER_CPU does the gateway's
# work and nothing else of the lab, whichever way the octets cross it.
# gw runs, side by side for the whole figure: midcomd (release build, the shipped ruleset, `default = admit`,
# `unsignaled = drop`, [relay] on 10.201.1.1:7228, a rule relaying TCP to 10.201.2.2 ports 9000–9099);
# midrelayd (midcomd's relay.key, one worker, limits raised so that no bench session is refused); Debian's
# danted (SOCKS5 on 10.201.1.1:1080, no authentication, CONNECT to the server's /24); Debian's turnserver (TURN
# on 10.201.1.1:3478, long-term credentials, TCP relays from 10.201.2.1 to the server only, one relay thread).
# Flows that are forwarded, not relayed, are admitted by admit4_anyport elements (as in figure 5): the kernel's
# fast path; midcomd sees none of their packets.
# a. Throughput, per run, cases interleaved, FIG15_SECS (2 × D) of sending each; rate = octets the sink got ÷
#    its time from the first octet to the end (connection set-up and handshakes are not in it):
#    csp-direct    `cat /dev/zero` for FIG15_SECS into `csp connect` (no signaling) → gw forwards →
#                  `csp serve 9000 --exec "tcpxfer.py stdin-sink"`: the end-to-end session (Noise XX, records,
#                  clear hop) forwarded by the kernel;
#    csp-relayed   the same two programs with `csp connect --signal`: midcomd answers RELAY, hop 1 to midrelayd,
#                  hop 2 to the server, spliced (the issue's target: ≥ 0.8 × csp-direct);
#    iperf3        raw TCP forwarded: what the ends' encryption costs, for context;
#    plain-direct  `tcpxfer.py send` → `tcpxfer.py sink` on 5001, forwarded: the anchors' reference;
#    plain-dante   the same through danted (RFC 1928 CONNECT); plain-coturn: through an RFC 6062 TCP allocation
#                  on turnserver (Allocate, CreatePermission, Connect, ConnectionBind);
#    paced-direct, paced-dante, paced-coturn: the plain cases paced to this run's csp-relayed rate in 64 KiB
#                  sends, so that every relay's CPU per GB is compared at the same rate and send size.
#    Gateway CPU per GB = (Δ irq + softirq of READER_CPU + Δ the relay's user+system time, threads and child
#    processes) ÷ GB the sink got; the relay's own share is recorded apart, and both CPUs' busy shares.
# b. Sessions/s: FIG15_CLIENTS loops (sessions-loop.sh) side by side for FIG15_SECS, each opening one session
#    after another: a line of text into `csp connect`, echoed by `csp serve --exec cat`, both directions
#    closed. Cases: direct (no signaling, straight to the server), admitted (--signal: midcomd ACCEPTs, the
#    flow goes straight to the server), relayed (--signal: RELAY, hop 1 to midrelayd, hop 2 to the server;
#    nothing on hop 2's path speaks CSP, so midrelayd's own SETUP for it waits for silence), relayed-answered
#    (the same while `cspload respond` on the server answers that SETUP at once). Also p50/p99 of a session's
#    wall time, midcomd + midrelayd CPU per session, and the hops midrelayd carried per relayed session.
FIG15_CLIENTS=${BENCH_FIG15_CLIENTS:-8}
FIG15_CONF=$'[daemon]\nname = "gw"\n[policy]\ndefault = "admit"\nunsignaled = "drop"\nmax-sessions = 4000000
[relay]\nenabled = true\nlisten = ["10.201.1.1:7228"]\nsessions-per-key = 100000\nsessions-per-address = 100000
max-sessions = 100000\n[[rule]]\nname = "bench-through-the-relay"\nproto = "tcp"\ndestination = "10.201.2.2/32"
port = "9000-9099"\naction = "relay"'
FIG15_XFER="$BENCH_DIR/tcpxfer.py"
# fig15_tree_cpu_ns PID: user+system time of a process, its threads and every descendant (alive: their own
# time and their reaped children's; reaped: in the parent's cutime/cstime), in ns (clock ticks): danted works
# in child processes.
fig15_tree_cpu_ns() {
  python3 - "$1" <<'PY'
import os, sys
root, hz, kids, cpu = int(sys.argv[1]), os.sysconf("SC_CLK_TCK"), {}, {}
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    try:
        s = open(f"/proc/{d}/stat").read()
    except OSError:
        continue
    f = s[s.rindex(")") + 2:].split()
    kids.setdefault(int(f[1]), []).append(int(d))
    cpu[int(d)] = sum(int(x) for x in f[11:15])  # utime stime cutime cstime
todo, total = [root], 0
while todo:
    p = todo.pop()
    total += cpu.get(p, 0)
    todo += kids.get(p, [])
print(total * 1000000000 // hz)
PY
}
fig15_irq_ns() { awk -v c="cpu$1" -v hz="$(getconf CLK_TCK)" '$1 == c {printf "%.0f", ($7 + $8) * 1e9 / hz}' /proc/stat; }
fig15_busy_ns() { awk -v c="cpu$1" -v hz="$(getconf CLK_TCK)" '$1 == c {printf "%.0f", ($2 + $3 + $4 + $7 + $8 + $9) * 1e9 / hz}' /proc/stat; }
fig15_rps() { in_ns "$1" sh -c "printf '%x' $((1 << $3)) >/sys/class/net/$2/queues/rx-0/rps_cpus"; }
# fig15_up_count: relayed hops midrelayd reported up so far (its -v log).
fig15_up_count() { grep -c "hop 1→2 up" "$BL_DIR/midrelayd.log" || true; }

fig15() {
  command -v iperf3 >/dev/null || { echo "figure 15: needs iperf3 (scripts/install-deps.sh bench)" >&2; return 1; }
  bl_lab
  fig15_rps gw to-client "$READER_CPU"; fig15_rps gw to-server "$READER_CPU"
  fig15_rps client to-gw "$LOAD_CPU"; fig15_rps server to-gw "$LOAD_CPU"
  bl_ruleset
  local e
  for e in 9000 9050 5001 5201; do
    in_ns gw nft add element inet midcom admit4_anyport "{ 10.201.1.2 . tcp . 10.201.2.2 . $e timeout 2h }"
  done
  bl_midcomd "$FIG15_CONF"
  local relay_key="$BL_DIR/gw-state/relay.key"
  [ -f "$relay_key" ] || { echo "figure 15: midcomd made no relay key (does this midcomd relay?)" >&2; return 1; }
  # midrelayd reads midcomd's configuration ([relay]: listen, limits, setup threads), as it is deployed.
  bl_bg gw "$BL_DIR/midrelayd.log" taskset -c "$READER_CPU" "$SWIFT_BIN/midrelayd" --config "$BL_DIR/midcomd.conf" \
    --relay-key "$relay_key" --control-socket "$BL_DIR/relay.sock" -v
  RELAY_PID=$BL_LAST_PID
  # Keys of their own: figure 11 leaves client.key behind, and csp keygen refuses to overwrite a key.
  local ckey="$BL_DIR/fig15-client.key" skey="$BL_DIR/fig15-server.key" speer
  rm -f "$ckey" "$skey"
  "$SWIFT_BIN/csp" keygen --key "$ckey" >/dev/null
  "$SWIFT_BIN/csp" keygen --key "$skey" >/dev/null
  speer=$("$SWIFT_BIN/csp" keygen --key "$skey" --show)
  : >"$BL_DIR/csp-sink.jsonl"
  bl_bg server "$BL_DIR/serve-xfer.log" taskset -c "$LOAD_CPU" "$SWIFT_BIN/csp" serve 9000 --address 10.201.2.2 --key "$skey" \
    --exec "python3 $FIG15_XFER stdin-sink >>$BL_DIR/csp-sink.jsonl"
  bl_bg server "$BL_DIR/serve-echo.log" taskset -c "$LOAD_CPU" "$SWIFT_BIN/csp" serve 9050 --address 10.201.2.2 --key "$skey" --exec cat
  bl_bg server "$BL_DIR/serve-echo2.log" taskset -c "$LOAD_CPU" "$SWIFT_BIN/csp" serve 9150 --address 10.201.2.2 --key "$skey" --exec cat
  bl_bg server "$BL_DIR/iperf-server.log" taskset -c "$LOAD_CPU" iperf3 -s -p 5201
  # The anchors: Debian's dante-server and coturn, where installed.
  FIG15_DANTE_PID= FIG15_TURN_PID=
  if command -v danted >/dev/null; then
    printf '%s\n' "logoutput: stderr" "internal: 10.201.1.1 port = 1080" "external: 10.201.2.1" "clientmethod: none" \
      "socksmethod: none" "user.privileged: root" "user.unprivileged: nobody" \
      "client pass { from: 10.201.1.0/24 to: 0.0.0.0/0 }" "socks pass { from: 10.201.1.0/24 to: 10.201.2.0/24 command: connect }" \
      >"$BL_DIR/danted.conf"
    bl_bg gw "$BL_DIR/danted.log" taskset -c "$READER_CPU" danted -f "$BL_DIR/danted.conf" -p "$BL_DIR/danted.pid"
    FIG15_DANTE_PID=$BL_LAST_PID
  else say "figure 15: no danted (Debian dante-server): the SOCKS5 anchor is skipped"; fi
  if command -v turnserver >/dev/null; then
    # One relay thread (the relay gets one CPU, as midrelayd's one worker); TCP relays only towards the server.
    bl_bg gw "$BL_DIR/turnserver.log" taskset -c "$READER_CPU" turnserver -n --listening-ip=10.201.1.1 --listening-port=3478 \
      --relay-ip=10.201.2.1 --lt-cred-mech --user=bench:bench --realm=midcom.bench --no-tls --no-dtls --no-cli --no-udp \
      --relay-threads=1 --allowed-peer-ip=10.201.2.2 --log-file=stdout --simple-log --pidfile="$BL_DIR/turnserver.pid" \
      --userdb="$BL_DIR/turndb"
    FIG15_TURN_PID=$BL_LAST_PID
  else say "figure 15: no turnserver (Debian coturn): the TURN anchor is skipped"; fi
  local up
  for _ in $(seq 1 50); do
    up=1
    grep -q "relaying on" "$BL_DIR/midrelayd.log" || up=0
    grep -q "^listening on" "$BL_DIR/serve-xfer.log" || up=0
    grep -q "^listening on" "$BL_DIR/serve-echo.log" || up=0
    grep -q "^listening on" "$BL_DIR/serve-echo2.log" || up=0
    [ -z "$FIG15_DANTE_PID" ] || in_ns gw ss -Hltn 'sport = :1080' | grep -q . || up=0
    [ -z "$FIG15_TURN_PID" ] || in_ns gw ss -Hltn 'sport = :3478' | grep -q . || up=0
    [ $up = 1 ] && break
    sleep 0.1
  done
  [ $up = 1 ] || { echo "figure 15: the relays and servers did not all come up in 5 s" >&2; return 1; }
  # Warm-up, untimed: one relayed session (first contact: midcomd CHALLENGEs the client's address once).
  local out
  out=$(printf 'warm-up\n' | in_ns client timeout 20 "$SWIFT_BIN/csp" connect 10.201.2.2:9050 --signal --key "$ckey" --peer-key "$speer" \
    --state-dir "$BL_DIR/cs-warm" 2>&1) || { echo "figure 15: the warm-up relayed session failed: $out" >&2; return 1; }
  [ "$(fig15_up_count)" -ge 1 ] || { echo "figure 15: the warm-up session was not relayed: $out" >&2; return 1; }
  FIG15_SECS=$(echo "$D * 2" | bc)
  local cases=(csp-direct csp-relayed iperf3) anchors=(direct) a c
  [ -n "$FIG15_DANTE_PID" ] && anchors+=(dante)
  [ -n "$FIG15_TURN_PID" ] && anchors+=(coturn)
  for a in "${anchors[@]}"; do cases+=("plain-$a"); done
  for a in "${anchors[@]}"; do cases+=("paced-$a"); done
  for run in $(seq 1 "$RUNS"); do
    for c in "${cases[@]}"; do fig15_xfer "$c" "$run" "$ckey" "$speer"; done
    for c in direct admitted relayed relayed-answered; do fig15_sessions "$c" "$run" "$ckey" "$speer"; done
    say "figure 15 run $run/$RUNS done"
  done
  record 15 midrelayd refused 1 "$(grep -c "refused session" "$BL_DIR/midrelayd.log" || true)"
  bl_stop "$RELAY_PID"
  [ -n "$FIG15_DANTE_PID" ] && bl_stop "$FIG15_DANTE_PID"
  [ -n "$FIG15_TURN_PID" ] && bl_stop "$FIG15_TURN_PID"
  bl_stop "$MIDCOMD_PID"
}

# fig15_xfer CASE RUN CLIENT_KEY SERVER_PEER: one transfer of FIG15_SECS (see fig15).
fig15_xfer() {
  local c=$1 run=$2 ckey=$3 speer=$4 pid= sink= out res u0 g0 b0 z0 l0 t0 u1 g1 b1 z1 l1 t1 bytes secs
  case $c in
    *-dante) pid=$FIG15_DANTE_PID ;;
    *-coturn) pid=$FIG15_TURN_PID ;;
    csp-relayed) pid=$RELAY_PID ;;
  esac
  if [ "${c#plain-}" != "$c" ] || [ "${c#paced-}" != "$c" ]; then
    bl_bg server "$BL_DIR/sink.log" taskset -c "$LOAD_CPU" python3 "$FIG15_XFER" sink 10.201.2.2 5001 -t 30
    sink=$BL_LAST_PID
    for _ in $(seq 1 50); do in_ns server ss -Hltn 'sport = :5001' | grep -q . && break; sleep 0.1; done
  fi
  local n0; n0=$(wc -l <"$BL_DIR/csp-sink.jsonl"); local h0; h0=$(fig15_up_count)
  u0=0; [ -n "$pid" ] && u0=$(fig15_tree_cpu_ns "$pid")
  g0=$(fig15_irq_ns "$READER_CPU"); b0=$(fig15_busy_ns "$READER_CPU"); z0=$(fig15_irq_ns "$LOAD_CPU"); l0=$(fig15_busy_ns "$LOAD_CPU")
  t0=$(date +%s%N)
  local limit=$(( ${FIG15_SECS%.*} + 30 ))
  case $c in
    csp-direct|csp-relayed)
      local sig=(); [ $c = csp-relayed ] && sig=(--signal)
      out=$(in_ns client taskset -c "$LOAD_CPU" timeout "$limit" bash -c 'timeout "$1" cat /dev/zero | "$2" "${@:3}"' _ "$FIG15_SECS" \
        "$SWIFT_BIN/csp" connect 10.201.2.2:9000 "${sig[@]}" --key "$ckey" --peer-key "$speer" --state-dir "$BL_DIR/cs-xfer" 2>&1) \
        || { echo "figure 15: csp connect ($c) failed: $out" >&2; return 1; }
      for _ in $(seq 1 100); do [ "$(wc -l <"$BL_DIR/csp-sink.jsonl")" -gt "$n0" ] && break; sleep 0.1; done
      res=$(tail -1 "$BL_DIR/csp-sink.jsonl")
      [ "$(wc -l <"$BL_DIR/csp-sink.jsonl")" -gt "$n0" ] || { echo "figure 15: the csp sink reported nothing ($c)" >&2; return 1; } ;;
    iperf3)
      res=$(in_ns client taskset -c "$LOAD_CPU" timeout "$limit" iperf3 -c 10.201.2.2 -p 5201 -t "$FIG15_SECS" -J \
        | python3 -c "import json,sys; e=json.load(sys.stdin)['end']['sum_received']; print(json.dumps({'bytes': e['bytes'], 'seconds': e['seconds']}))") ;;
    plain-*|paced-*)
      local via=()
      case $c in *-dante) via=(--socks5 10.201.1.1:1080) ;; *-coturn) via=(--turn 10.201.1.1:3478 --user bench --password bench) ;; esac
      # Paced: 64 KiB sends (about what csp connect writes at a time) at this run's relayed csp rate.
      [ "${c#paced-}" != "$c" ] && via+=(-r "$FIG15_PACE" -c 65536)
      out=$(in_ns client taskset -c "$LOAD_CPU" timeout "$limit" python3 "$FIG15_XFER" send 10.201.2.2 5001 -d "$FIG15_SECS" "${via[@]}" 2>&1) \
        || { echo "figure 15: tcpxfer send ($c) failed: $out" >&2; return 1; }
      wait "$sink" || true
      res=$(tail -1 "$BL_DIR/sink.log")
      record 15 "$c" sent_minus_received "$run" "$(( $(echo "$out" | json_field bytes) - $(echo "$res" | json_field bytes) ))"
      record 15 "$c" setup_ms "$run" "$(echo "$out" | json_field setup_ms)" ;;
  esac
  u1=0; [ -n "$pid" ] && u1=$(fig15_tree_cpu_ns "$pid")
  g1=$(fig15_irq_ns "$READER_CPU"); b1=$(fig15_busy_ns "$READER_CPU"); z1=$(fig15_irq_ns "$LOAD_CPU"); l1=$(fig15_busy_ns "$LOAD_CPU")
  t1=$(date +%s%N)
  bytes=$(echo "$res" | json_field bytes); secs=$(echo "$res" | json_field seconds)
  [ "$bytes" -gt 0 ] || { echo "figure 15: no octets arrived ($c): $res $out" >&2; return 1; }
  if [ $c = csp-relayed ] && [ "$(fig15_up_count)" -le "$h0" ]; then echo "figure 15: the csp-relayed transfer did not go through midrelayd" >&2; return 1; fi
  if [ $c = csp-direct ] && [ "$(fig15_up_count)" -ne "$h0" ]; then echo "figure 15: the csp-direct transfer went through midrelayd" >&2; return 1; fi
  local gb; gb=$(echo "$bytes / 1000000000" | bc -l)
  record 15 "$c" bps "$run" "$(fig12_div "$((bytes * 8))" "$secs")"
  [ $c = csp-relayed ] && FIG15_PACE=$(fig12_div "$bytes" "$secs")
  record 15 "$c" softirq_ns_per_gb "$run" "$(fig12_div "$((g1 - g0))" "$gb")"
  record 15 "$c" gw_cpu_ns_per_gb "$run" "$(fig12_div "$((g1 - g0 + u1 - u0))" "$gb")"
  [ -n "$pid" ] && record 15 "$c" relay_cpu_ns_per_gb "$run" "$(fig12_div "$((u1 - u0))" "$gb")"
  # Context: how busy READER_CPU was in the window (with whatever else the machine runs there), and whether
  # the ends' CPU did gateway work (its irq + softirq per GB: the receive of the ends themselves).
  record 15 "$c" reader_cpu_busy_share "$run" "$(fig12_div "$((b1 - b0))" "$((t1 - t0))")"
  record 15 "$c" load_cpu_busy_share "$run" "$(fig12_div "$((l1 - l0))" "$((t1 - t0))")"
  record 15 "$c" load_cpu_irq_ns_per_gb "$run" "$(fig12_div "$((z1 - z0))" "$gb")"
  local reset; reset=$(echo "$res" | python3 -c "import json,sys; print(int(json.loads(sys.stdin.read()).get('reset', False)))")
  record 15 "$c" sink_reset "$run" "$reset"
}

# fig15_sessions CASE RUN CLIENT_KEY SERVER_PEER: FIG15_CLIENTS session loops side by side for FIG15_SECS.
fig15_sessions() {
  local c=$1 run=$2 ckey=$3 speer=$4 port=9050 sig=() i pids=() m0 m1 r0 r1 h0 resp=
  case $c in admitted) port=9150; sig=(--signal) ;; relayed*) sig=(--signal) ;; esac
  if [ $c = relayed-answered ]; then
    # The server's host answers the relay's own SETUP for hop 2 at once (ACCEPT), as a target whose host runs
    # a CSP agent would: what a relayed session costs without waiting for silence on hop 2's path.
    bl_bg server "$BL_DIR/resp.log" taskset -c "$LOAD_CPU" "$BIN/cspload" respond -d "$(( ${FIG15_SECS%.*} + 40 ))"
    resp=$BL_LAST_PID
    sleep 0.2
  fi
  h0=$(fig15_up_count)
  m0=$(bl_task_cpu_ns "$MIDCOMD_PID"); r0=$(bl_task_cpu_ns "$RELAY_PID")
  for i in $(seq 1 "$FIG15_CLIENTS"); do
    in_ns client taskset -c "$LOAD_CPU" timeout $(( ${FIG15_SECS%.*} + 30 )) bash "$BENCH_DIR/sessions-loop.sh" "$FIG15_SECS" 100000 \
      "$SWIFT_BIN/csp" connect "10.201.2.2:$port" "${sig[@]}" --key "$ckey" --peer-key "$speer" --state-dir "$BL_DIR/cs-$i" \
      >"$BL_DIR/loop-$i.json" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  m1=$(bl_task_cpu_ns "$MIDCOMD_PID"); r1=$(bl_task_cpu_ns "$RELAY_PID")
  [ -n "$resp" ] && bl_stop "$resp"
  local sum; sum=$(cat "$BL_DIR"/loop-*.json | python3 -c "
import json, statistics, sys
rows = [json.loads(l) for l in sys.stdin if l.startswith('{')]
ok = [r for r in rows if r['sessions']]
print(json.dumps({'loops': len(rows), 'sessions': sum(r['sessions'] for r in rows), 'failed': sum(r['failed'] for r in rows),
  'seconds': max([r['seconds'] for r in rows] or [0]), 'p50_ms': statistics.median([r['p50_ms'] for r in ok]) if ok else 0,
  'p99_ms': max([r['p99_ms'] for r in ok] or [0]), 'first_error': next((r['first_error'] for r in rows if r['first_error']), '')}))")
  rm -f "$BL_DIR"/loop-*.json
  local n; n=$(echo "$sum" | json_field sessions)
  [ "$(echo "$sum" | json_field loops)" = "$FIG15_CLIENTS" ] || { echo "figure 15: a session loop printed nothing ($c): $sum" >&2; return 1; }
  [ "$(echo "$sum" | json_field failed)" = 0 ] || say "figure 15: $(echo "$sum" | json_field failed) $c sessions failed in run $run: $(echo "$sum" | json_field first_error)"
  record 15 "sessions-$c" sessions_per_s "$run" "$(fig12_div "$n" "$(echo "$sum" | json_field seconds)")"
  record 15 "sessions-$c" failed "$run" "$(echo "$sum" | json_field failed)"
  record 15 "sessions-$c" p50_ms "$run" "$(echo "$sum" | json_field p50_ms)"
  record 15 "sessions-$c" p99_ms "$run" "$(echo "$sum" | json_field p99_ms)"
  record 15 "sessions-$c" gw_user_cpu_ns_per_session "$run" "$(( (m1 - m0 + r1 - r0) / (n > 0 ? n : 1) ))"
  record 15 "sessions-$c" relayed_hops_per_session "$run" "$(fig12_div "$(( $(fig15_up_count) - h0 ))" "$n")"
}

START=$(date +%s)
for f in $FIGS; do say "figure $f"; "fig$f"; done
python3 - "$META" <<PYEOF
import json, os, subprocess, sys
meta = {"kernel": os.uname().release, "cpus": os.cpu_count(), "runs": $RUNS, "quick": $QUICK == 1,
        "seconds_per_run": $D, "nfqueue_encoding": "$ENCODING", "reader_cpu": $READER_CPU, "load_cpu": $LOAD_CPU,
        "elapsed_s": $(date +%s) - $START, "qemu_kernel": "$QEMU_KERNEL", "fig9_flows": $FIG9_FLOWS, "commit": subprocess.run(["git", "-C", "$ROOT", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()}
json.dump(meta, open(sys.argv[1], "w"))
PYEOF
python3 "$BENCH_DIR/report.py" "$RAW" "$META" "$RESULTS/latest.json"
# Figure 13's rows (their own script; it adds them to latest.json and prints them when the figure ran).
python3 "$BENCH_DIR/report_fig13.py" "$RAW" "$RESULTS/latest.json"
