# Benchmark lab helpers (sourced by Benchmarks/bench.sh). The shape follows Tests/integration/lib.sh:
# every namespace, process and table the bench makes is registered and removed by an EXIT trap, also
# when a run fails half-way. Namespaces are named after the bench's PID, so a crashed run never collides.
#
# Topology (IPv4 only; all addresses exist only inside namespaces this bench creates):
#   client 10.201.1.2 ── gw 10.201.1.1 | 10.201.2.1 ── server 10.201.2.2
# CPU placement: the gateway's queue reader (midcomd or nfqref) runs on CPU 1; traffic generators and
# receivers run on CPU 0. veth delivery runs in the softirq of the sending CPU, and a reinjected packet
# continues in the context of the verdict's sendmsg, i.e. on the reader's CPU.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR="$ROOT/Benchmarks"
# BENCH_RESULTS: another directory for raw.jsonl, latest.json and the C binaries (runs side by side).
RESULTS=${BENCH_RESULTS:-"$BENCH_DIR/results"}
# BENCH_BIN, BENCH_SWIFT_BIN: where the C programs and midcomd/midctl are when they were built elsewhere (figure
# 1q's QEMU guest, Tests/qemu/bench-fig1.sh, sources this file with the binaries of its image).
BIN=${BENCH_BIN:-"$RESULTS/bin"}
SWIFT_BIN=${BENCH_SWIFT_BIN:-"$ROOT/.build-bench/release"}
READER_CPU=${READER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}

BL_TAG="mcb$$"
BL_NAMESPACES=()
BL_PIDS=()
BL_DIR=$(mktemp -d /tmp/midcom-bench.XXXXXX)

bl_cleanup() {
  local rc=$?
  for pid in "${BL_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${BL_PIDS[@]}"; do
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  for n in "${BL_NAMESPACES[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  if [ $rc -ne 0 ]; then
    for f in "$BL_DIR"/*.log; do [ -f "$f" ] && { echo "----- $(basename "$f") (last 20 lines)" >&2; tail -n 20 "$f" >&2; }; done
  fi
  rm -rf "$BL_DIR"
  exit $rc
}
trap bl_cleanup EXIT

ns() { echo "${BL_TAG}-$1"; }
in_ns() { local n; n=$(ns "$1"); shift; ip netns exec "$n" "$@"; }

bl_ns() {
  local n; n=$(ns "$1")
  ip netns add "$n"
  BL_NAMESPACES+=("$n")
  ip -n "$n" link set lo up
}

BL_LINKS=0
bl_link() {
  local a=$1 b=$2
  BL_LINKS=$((BL_LINKS + 1))
  local ia="mba$$x$BL_LINKS" ib="mbb$$x$BL_LINKS"
  ip link add "$ia" type veth peer name "$ib"
  ip link set "$ia" netns "$(ns "$a")"
  ip link set "$ib" netns "$(ns "$b")"
  in_ns "$a" ip link set "$ia" name "to-$b"
  in_ns "$b" ip link set "$ib" name "to-$a"
  in_ns "$a" ip link set "to-$b" up
  in_ns "$b" ip link set "to-$a" up
}

# bl_bg NS LOG CMD...: background process in a namespace, remembered for cleanup; PID in BL_LAST_PID.
bl_bg() {
  local n=$1 logfile=$2; shift 2
  ip netns exec "$(ns "$n")" "$@" >"$logfile" 2>&1 &
  BL_LAST_PID=$!
  BL_PIDS+=("$BL_LAST_PID")
}

# bl_stop PID: SIGTERM, wait up to 5 s, then SIGKILL.
bl_stop() {
  local pid=$1
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# bl_lab: a fresh client — gw — server lab (namespaces deleted first if a previous lab exists).
bl_lab() {
  for n in "${BL_NAMESPACES[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  BL_NAMESPACES=()
  BL_TAG="mcb$$r$RANDOM"
  bl_ns client; bl_ns gw; bl_ns server
  bl_link client gw; bl_link gw server
  in_ns client ip addr add 10.201.1.2/24 dev to-gw
  in_ns gw ip addr add 10.201.1.1/24 dev to-client
  in_ns gw ip addr add 10.201.2.1/24 dev to-server
  in_ns server ip addr add 10.201.2.2/24 dev to-gw
  in_ns client ip route add default via 10.201.1.1
  in_ns server ip route add default via 10.201.2.1
  in_ns gw sysctl -qw net.ipv4.ip_forward=1
  in_ns gw sysctl -qw net.netfilter.nf_conntrack_max=2000000 2>/dev/null || true
  # Resolve neighbours once so the first timed packet does not wait for ARP (no ping on a minimal host).
  in_ns gw ip neigh replace 10.201.1.2 lladdr "$(in_ns client cat /sys/class/net/to-gw/address)" dev to-client nud permanent
  in_ns gw ip neigh replace 10.201.2.2 lladdr "$(in_ns server cat /sys/class/net/to-gw/address)" dev to-server nud permanent
  in_ns client ip neigh replace 10.201.1.1 lladdr "$(in_ns gw cat /sys/class/net/to-client/address)" dev to-gw nud permanent
  in_ns server ip neigh replace 10.201.2.1 lladdr "$(in_ns gw cat /sys/class/net/to-server/address)" dev to-gw nud permanent
}

# bl_ruleset [ACCEPT_PORT]: load nft-rules/midcom.nft into gw; with a port, the operator-owned
# default_policy chain accepts UDP to the server on that port (so "no daemon" forwards the traffic too).
bl_ruleset() {
  in_ns gw nft -f "$ROOT/nft-rules/midcom.nft"
  if [ -n "${1:-}" ]; then
    in_ns gw nft insert rule inet midcom default_policy ip daddr 10.201.2.2 udp dport "$1" accept
  fi
}

# bl_loopback_harness: figure 14's table in gw (also Benchmarks/daemon-footprint.sh's plain cases):
# UDP to port 9000 sent in gw jumps to chain `enqueue` (empty: the caller adds the queue rule), and
# after the verdict it is counted and dropped in raw prerouting on lo (bl_loopback_sink reads the count).
bl_loopback_harness() {
  in_ns gw nft -f - <<'NFT'
table inet mcb14 {
  chain out { type filter hook output priority filter; policy accept; udp dport 9000 jump enqueue; }
  chain enqueue { }
  chain sink { type filter hook prerouting priority raw; policy accept; iif lo udp dport 9000 counter drop; }
}
NFT
}
bl_loopback_sink() { in_ns gw nft list chain inet mcb14 sink | sed -n 's/.*counter packets \([0-9]*\).*/\1/p' | head -1; }

# bl_midcomd CONFIG_BODY [WAIT_S]: start midcomd in gw pinned to READER_CPU; waits (10 s by default) for its
# control socket, which opens only after start-up (adopting kernel state can take a while at 1M elements),
# and then until its adoption has ended (counter adoption_running 0), so that a figure measures the
# steady state, not a restart. The state directory outlives a midcomd of the lab: the next one
# restores the last one's session snapshot and then sweeps the kernel's sets in the background; a
# figure's load started meanwhile was measured against that sweep (figure 4's window 1 went from
# ~0.25 ms to ~10 ms at p99 in its lab by hand, docs/PERFORMANCE.md "Fifteenth pass").
# BL_MIDCOMD_SETTLE=0: return as soon as the socket answers (figure 7 times the restart itself).
bl_midcomd() {
  printf '%s\n' "$1" >"$BL_DIR/midcomd.conf"
  # BL_MIDCOMD_CPUS: where midcomd's threads may run (default: the reader CPU only).
  bl_bg gw "$BL_DIR/midcomd.log" taskset -c "${BL_MIDCOMD_CPUS:-$READER_CPU}" "$SWIFT_BIN/midcomd" --config "$BL_DIR/midcomd.conf" \
    --control-socket "$BL_DIR/gw.sock" --log-level warning --state-dir "$BL_DIR/gw-state"
  MIDCOMD_PID=$BL_LAST_PID
  local wait=${2:-10}
  for _ in $(seq 1 $((wait * 10))); do
    if "$SWIFT_BIN/midctl" --socket "$BL_DIR/gw.sock" status --json >"$BL_DIR/status.json" 2>/dev/null; then
      ENCODING=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['queueEncoding'])" "$BL_DIR/status.json")
      [ "${BL_MIDCOMD_SETTLE:-1}" = 0 ] && return 0
      bl_midcomd_settle
      return 0
    fi
    kill -0 "$MIDCOMD_PID" 2>/dev/null || { cat "$BL_DIR/midcomd.log" >&2; echo "midcomd exited at start" >&2; return 1; }
    sleep 0.1
  done
  echo "midcomd did not answer within $wait s" >&2
  return 1
}

# bl_midcomd_settle [MAX_S]: until midcomd's adoption (the dump, or the sweep after a snapshot) has ended;
# at most MAX_S seconds (120), then a warning, and the figure runs.
bl_midcomd_settle() {
  local adopting
  for _ in $(seq 1 $((${1:-120} * 5))); do
    adopting=$("$SWIFT_BIN/midctl" --socket "$BL_DIR/gw.sock" status --json 2>/dev/null |
      python3 -c "import json,sys; print(json.load(sys.stdin)['counters'].get('adoption_running', 0))" 2>/dev/null) || true
    [ "$adopting" = 0 ] && return 0
    kill -0 "$MIDCOMD_PID" 2>/dev/null || return 0  # the caller's next step reports it
    sleep 0.2
  done
  echo "bl_midcomd: midcomd's adoption still runs after ${1:-120} s; the figure is measured during it" >&2
}

bl_midctl() { "$SWIFT_BIN/midctl" --socket "$BL_DIR/gw.sock" "$@"; }

# bl_nfqref MODE [ARGS]: install the queue rule and start the C reference reader in gw on READER_CPU.
bl_nfqref() {
  local mode=$1; shift
  ENCODING=$(in_ns gw "$BIN/nfqref" rule 0 1)
  bl_bg gw "$BL_DIR/nfqref.json" taskset -c "$READER_CPU" "$BIN/nfqref" "$mode" -d 120 "$@"
  NFQREF_PID=$BL_LAST_PID
  sleep 0.3
}

# bl_proc_cpu_ns PID: user+system CPU time of a process (all threads), in nanoseconds.
bl_proc_cpu_ns() {
  local ticks; ticks=$(awk '{print $14 + $15}' "/proc/$1/stat")
  echo $((ticks * 1000000000 / $(getconf CLK_TCK)))
}

# bl_task_cpu_ns PID: user+system CPU time of all the process's threads in ns, from /proc/PID/task/*/schedstat
# (ns resolution; bl_proc_cpu_ns counts 10 ms ticks); the tick count where the kernel keeps no schedstat.
bl_task_cpu_ns() {
  if [ -r "/proc/$1/schedstat" ]; then cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'
  else bl_proc_cpu_ns "$1"; fi
}

# bl_kernel_queue: "queue_dropped user_dropped" of queue 0 in gw (0 0 when unbound).
bl_kernel_queue() {
  in_ns gw awk '$1 == 0 {print $6, $7; found=1} END {if (!found) print 0, 0}' /proc/net/netfilter/nfnetlink_queue 2>/dev/null || echo "0 0"
}

# record FIG CASE METRIC RUN VALUE: one raw measurement line.
record() {
  printf '{"fig":"%s","case":"%s","metric":"%s","run":%s,"value":%s}\n' "$1" "$2" "$3" "$4" "$5" >>"$RAW"
}

json_field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
