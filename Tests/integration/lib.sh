# Shared helpers for the namespace lab. Source it; call lab_init NAME first.
#
# Every namespace, process and temporary file a test creates is registered here and removed by
# an EXIT trap, also when the test fails half-way. Namespace names carry the test name and PID,
# so tests run in parallel or after a crashed run never collide.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${MIDCOM_BIN:-$ROOT/.build/debug}
PY=/usr/bin/python3
UDP="$PY $ROOT/Tests/integration/udp.py"

LAB_NAMESPACES=()
LAB_PIDS=()
LAB_FAILED=0
# Waits (wait_for_match, wait_until_gone, lab_midcomd, udp.py's receive durations, `scaled`) and
# the lifetimes a scenario chooses with `scaled` last this many times longer: a whole number, 1
# here. The QEMU guest sets it (Tests/qemu/guest.sh): there everything runs 15-20x slower, and
# slower again when the host itself is starved of CPU.
export LAB_TIME_SCALE=${LAB_TIME_SCALE:-1}
# scaled N: N (seconds, fractions allowed) times LAB_TIME_SCALE.
scaled() { awk -v n="$1" -v k="$LAB_TIME_SCALE" 'BEGIN { print n * k }'; }

lab_init() {
  if [ "$(id -u)" != 0 ]; then
    echo "FAIL: integration tests need root (network namespaces, nftables, NFQUEUE): run 'sudo make test'" >&2
    exit 1
  fi
  for tool in "$BIN/midcomd" "$BIN/midctl" "$BIN/csp"; do
    [ -x "$tool" ] || { echo "FAIL: $tool is missing: run 'swift build' first" >&2; exit 1; }
  done
  LAB_NAME=$1
  LAB_TAG="mc$$${LAB_NAME:0:6}"
  LAB_DIR=$(mktemp -d "/tmp/midcom-$LAB_NAME.XXXXXX")
  trap lab_cleanup EXIT
}

ns() { echo "${LAB_TAG}-$1"; }

# lab_ns NAME: create a namespace with loopback up.
lab_ns() {
  local n; n=$(ns "$1")
  ip netns add "$n"
  LAB_NAMESPACES+=("$n")
  ip -n "$n" link set lo up
}

in_ns() { local n; n=$(ns "$1"); shift; ip netns exec "$n" "$@"; }

# lab_link A B: a veth pair between namespaces A and B, named after the peer on each side.
LAB_LINKS=0
lab_link() {
  local a=$1 b=$2
  LAB_LINKS=$((LAB_LINKS + 1))
  # Temporary names are short (IFNAMSIZ is 16) and unique per test process.
  local ia="mca$$x$LAB_LINKS" ib="mcb$$x$LAB_LINKS"
  ip link add "$ia" type veth peer name "$ib"
  ip link set "$ia" netns "$(ns "$a")"
  ip link set "$ib" netns "$(ns "$b")"
  in_ns "$a" ip link set "$ia" name "to-$b"
  in_ns "$b" ip link set "$ib" name "to-$a"
  in_ns "$a" ip link set "to-$b" up
  in_ns "$b" ip link set "to-$a" up
}

# lab_addr NS IFACE ADDR/LEN (IPv6 addresses are added with nodad so they work at once)
lab_addr() {
  if [[ $3 == *:* ]]; then in_ns "$1" ip addr add "$3" dev "$2" nodad; else in_ns "$1" ip addr add "$3" dev "$2"; fi
}

lab_forwarding() {
  in_ns "$1" sysctl -qw net.ipv4.ip_forward=1
  in_ns "$1" sysctl -qw net.ipv6.conf.all.forwarding=1
}

# lab_bg NS LOGFILE CMD...: run a process in a namespace in the background, remembered for
# cleanup; its PID is left in LAB_LAST_PID (call it directly, not in $(...), or cleanup loses it).
lab_bg() {
  local n=$1 logfile=$2; shift 2
  ip netns exec "$(ns "$n")" "$@" >"$logfile" 2>&1 &
  LAB_LAST_PID=$!
  LAB_PIDS+=("$LAB_LAST_PID")
}

# lab_midcomd NS [CONFIG]: load the ruleset and start midcomd; waits until its socket answers.
lab_midcomd() {
  local n=$1 config=${2:-}
  in_ns "$n" nft list table inet midcom >/dev/null 2>&1 || in_ns "$n" nft -f "$ROOT/nft-rules/midcom.nft"
  local args=(--control-socket "$LAB_DIR/$n.sock" --log-level debug)
  # Each gateway keeps its key and epoch in the lab (binaries from before the trust work, used to
  # show a regression test fails on them, have no state directory).
  "$BIN/midcomd" --help 2>&1 | grep -q -- --state-dir && args+=(--state-dir "$LAB_DIR/$n-state")
  [ -n "$config" ] && args+=(--config "$config")
  [ -z "$config" ] && args+=(--config /dev/null)
  # LAB_MIDCOMD_CPUS: the CPUs midcomd may run on (taskset), e.g. one CPU as the bench runs it.
  local pin=()
  [ -n "${LAB_MIDCOMD_CPUS:-}" ] && pin=(taskset -c "$LAB_MIDCOMD_CPUS")
  lab_bg "$n" "$LAB_DIR/$n-midcomd.log" "${pin[@]}" "$BIN/midcomd" "${args[@]}"
  MIDCOMD_PID=$LAB_LAST_PID
  for _ in $(seq 1 $((100 * LAB_TIME_SCALE))); do
    if "$BIN/midctl" --socket "$LAB_DIR/$n.sock" status >/dev/null 2>&1; then return 0; fi
    kill -0 "$MIDCOMD_PID" 2>/dev/null || { cat "$LAB_DIR/$n-midcomd.log" >&2; fail "midcomd in $n exited at start"; }
    sleep 0.1
  done
  fail "midcomd in $n did not answer on its control socket within $((10 * LAB_TIME_SCALE)) s"
}

midctl() { local n=$1; shift; "$BIN/midctl" --socket "$LAB_DIR/$n.sock" "$@"; }

# queue_rule N: a regex for midcomd's queue rule to queue (or range) N in `nft list` output, in
# either encoding: the xtables target through nft_compat ("queue num 0 bypass", kernels without
# nft_queue, like the development VM's) or the native expression ("queue flags bypass to 0",
# stock kernels; Tests/qemu runs the scenarios there).
queue_rule() { echo "queue (num $1( |\$)|(flags [a-z,]+ )?to $1( |\$))"; }


# status_counter NS NAME: one counter from `midctl status --json`.
status_counter() {
  midctl "$1" status --json | $PY -c "import json,sys; print(json.load(sys.stdin)['counters'].get('$2', 0))"
}

fail() {
  echo "FAIL: $*" >&2
  LAB_FAILED=1
  exit 1
}

expect_eq() { [ "$1" == "$2" ] || fail "$3: expected '$2', got '$1'"; }

expect_match() { grep -Eq -- "$2" <<<"$1" || fail "$3: expected /$2/ in: $1"; }

expect_no_match() { ! grep -Eq -- "$2" <<<"$1" || fail "$3: did not expect /$2/ in: $1"; }

step() { echo "  - $*"; }

lab_cleanup() {
  local rc=$?
  # Best effort from here on: a reader that went away (`... | head`) must not end the cleanup
  # half-way (SIGPIPE, or a failed write under `set -e`) and leave namespaces and daemons behind.
  trap '' PIPE
  set +e
  if [ $rc -ne 0 ] || [ $LAB_FAILED -ne 0 ]; then
    # On failure show what the gateway knew: its log, its table and its sessions.
    for f in "$LAB_DIR"/*-midcomd.log "$LAB_DIR"/*midrelayd.log; do
      [ -f "$f" ] || continue
      echo "----- $(basename "$f") (last 40 lines)" >&2; tail -n 40 "$f" >&2
    done
    for n in "${LAB_NAMESPACES[@]}"; do
      if ip netns exec "$n" nft list table inet midcom >/dev/null 2>&1; then
        echo "----- nft list table inet midcom in $n" >&2; ip netns exec "$n" nft list table inet midcom >&2 || true
        local short=${n#"$LAB_TAG"-}
        [ -S "$LAB_DIR/$short.sock" ] && { echo "----- midctl sessions in $n" >&2; midctl "$short" sessions >&2 || true; }
      fi
    done
  fi
  for pid in "${LAB_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${LAB_PIDS[@]}"; do
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  for n in "${LAB_NAMESPACES[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$LAB_DIR"
  exit $rc
}

# lab_basic: client — gateway — server, IPv4 10.200.1.0/24 and 10.200.2.0/24, IPv6 fd00:1::/64 and fd00:2::/64.
lab_basic() {
  lab_ns client; lab_ns gw; lab_ns server
  lab_link client gw; lab_link gw server
  lab_addr client to-gw 10.200.1.2/24; lab_addr client to-gw fd00:1::2/64
  lab_addr gw to-client 10.200.1.1/24; lab_addr gw to-client fd00:1::1/64
  lab_addr gw to-server 10.200.2.1/24; lab_addr gw to-server fd00:2::1/64
  lab_addr server to-gw 10.200.2.2/24; lab_addr server to-gw fd00:2::2/64
  in_ns client ip route add default via 10.200.1.1
  in_ns client ip -6 route add default via fd00:1::1
  in_ns server ip route add default via 10.200.2.1
  in_ns server ip -6 route add default via fd00:2::1
  lab_forwarding gw
}

# ---------------------------------------------------------------------------------------------
# Scenario helpers (issue #3). Everything below only adds functions; the ones above keep their
# behaviour (foundation.sh relies on them).

FLOWS="$PY $ROOT/Tests/integration/flows.py"

# indent: prefix every line with six spaces (for echoing tool output under a step).
indent() { sed 's/^/      /'; }

# lab_serve NS LOGFILE CMD...: lab_bg for a flows.py server, then wait (at most 5 s) until it
# reports that it listens, so the first test packet never races its bind().
lab_serve() {
  lab_bg "$@"
  wait_for_match "$2" "^(listening|capturing) on " 5
}

# csp_run NS ARGS...: run csp in a namespace without tripping `set -e`; leaves the combined
# output in CSP_OUT and the exit status in CSP_RC, and echoes the output indented.
csp_run() {
  local n=$1; shift
  set +e; CSP_OUT=$(in_ns "$n" "$BIN/csp" "$@" 2>&1); CSP_RC=$?; set -e
  indent <<<"$CSP_OUT"
}

# session_of TEXT: the 16-hex-digit session ID from csp's "session ID: ..." line.
session_of() { sed -n 's/^session \([0-9a-f]\{16\}\):.*/\1/p' <<<"$1" | head -1; }

# wait_for_match FILE REGEX SECONDS: wait (bounded) until a line of FILE matches; fails otherwise.
wait_for_match() {
  local file=$1 regex=$2 seconds=$(($3 * LAB_TIME_SCALE)) i
  for ((i = 0; i < seconds * 10; i++)); do
    grep -Eq -- "$regex" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "waited ${seconds}s for /$regex/ in $(basename "$file"): $(cat "$file" 2>/dev/null)"
}

# now_s: the wall clock in seconds with fractions; sleep_until T: sleep until now_s >= T.
now_s() { date +%s.%N; }
sleep_until() {
  local d; d=$(awk -v t="$1" -v n="$(now_s)" 'BEGIN { d = t - n; if (d < 0) d = 0; if (d > 120) d = 120; printf "%.3f", d }')
  sleep "$d"
}
# after T SECONDS: the time SECONDS after T (for sleep_until).
after() { awk -v t="$1" -v s="$2" 'BEGIN { printf "%.3f", t + s }'; }

# nft_set NS SET: `nft list set inet midcom SET` in a namespace.
nft_set() { in_ns "$1" nft list set inet midcom "$2"; }

# nft_element_count NS [SET...]: how many elements the midcom sets hold (default: all six
# admission sets; sets that do not exist count 0).
nft_element_count() {
  local n=$1; shift
  local sets=("$@")
  [ ${#sets[@]} -eq 0 ] && sets=(admit4 admit6 admit4_anyport admit6_anyport pinhole4 pinhole6)
  local total=0 set c
  for set in "${sets[@]}"; do
    c=$(in_ns "$n" nft -j list set inet midcom "$set" 2>/dev/null | $PY -c '
import json, sys
try:
    doc = json.load(sys.stdin)
except ValueError:
    print(0); sys.exit()
print(sum(len(o["set"].get("elem", [])) for o in doc["nftables"] if "set" in o))')
    total=$((total + c))
  done
  echo "$total"
}

# lab_conf NAME: write stdin (a midcomd.conf) to $LAB_DIR/NAME.conf and print the path.
lab_conf() {
  local file="$LAB_DIR/$1.conf"
  cat >"$file"
  echo "$file"
}

# lab_signaling_conf NS NAME: the plain signaling gateway's midcomd.conf (admit signaled flows,
# drop unsignaled ones, records named NAME), written for NS; prints the path.
lab_signaling_conf() {
  printf '[daemon]\nname = "%s"\n\n[policy]\ndefault = "admit"\nunsignaled = "drop"\n' "$2" | lab_conf "$1"
}

# lab_line A GW B: A — GW — B with the addresses of lab_basic (A 10.200.1.2 / fd00:1::2,
# B 10.200.2.2 / fd00:2::2, GW .1 / ::1 on both), for scenarios whose hosts are not "client"
# and "server".
lab_line() {
  local a=$1 g=$2 b=$3
  lab_ns "$a"; lab_ns "$g"; lab_ns "$b"
  lab_link "$a" "$g"; lab_link "$g" "$b"
  lab_addr "$a" "to-$g" 10.200.1.2/24; lab_addr "$a" "to-$g" fd00:1::2/64
  lab_addr "$g" "to-$a" 10.200.1.1/24; lab_addr "$g" "to-$a" fd00:1::1/64
  lab_addr "$g" "to-$b" 10.200.2.1/24; lab_addr "$g" "to-$b" fd00:2::1/64
  lab_addr "$b" "to-$g" 10.200.2.2/24; lab_addr "$b" "to-$g" fd00:2::2/64
  in_ns "$a" ip route add default via 10.200.1.1
  in_ns "$a" ip -6 route add default via fd00:1::1
  in_ns "$b" ip route add default via 10.200.2.1
  in_ns "$b" ip -6 route add default via fd00:2::1
  lab_forwarding "$g"
}

# lab_host GW NAME N: one more host NAME on its own interface of gateway GW:
# NAME 10.200.N.2/24 + fd00:N::2/64, GW 10.200.N.1 + fd00:N::1, default routes via GW.
lab_host() {
  local g=$1 h=$2 i=$3
  lab_ns "$h"; lab_link "$g" "$h"
  lab_addr "$g" "to-$h" "10.200.$i.1/24"; lab_addr "$g" "to-$h" "fd00:$i::1/64"
  lab_addr "$h" "to-$g" "10.200.$i.2/24"; lab_addr "$h" "to-$g" "fd00:$i::2/64"
  in_ns "$h" ip route add default via "10.200.$i.1"
  in_ns "$h" ip -6 route add default via "fd00:$i::1"
}

# lab_proxy: lab_basic plus an off-path proxy host on a third interface of gw:
# proxy 10.200.3.2 / fd00:3::2 (gw 10.200.3.1 / fd00:3::1). Client–server traffic never crosses it.
lab_proxy() {
  lab_basic
  lab_host gw proxy 3
}

# lab_nat: inside — nat — outside. Inside 192.168.1.0/24: inside .2, nat .1. Outside
# 203.0.113.0/24: nat .1 (its external address), outside .2. The outside host has no route to
# the inside: only what the NAT translates reaches it and comes back.
lab_nat() {
  lab_ns inside; lab_ns nat; lab_ns outside
  lab_link inside nat; lab_link nat outside
  lab_addr inside to-nat 192.168.1.2/24
  lab_addr nat to-inside 192.168.1.1/24
  lab_addr nat to-outside 203.0.113.1/24
  lab_addr outside to-nat 203.0.113.2/24
  in_ns inside ip route add default via 192.168.1.1
  lab_forwarding nat
}

# lab_nat_host NAME N: one more inside host NAME behind the NAT of lab_nat, on its own interface:
# NAME 192.168.N.2/24, nat 192.168.N.1.
lab_nat_host() {
  lab_ns "$1"; lab_link nat "$1"
  lab_addr nat "to-$1" "192.168.$2.1/24"
  lab_addr "$1" to-nat "192.168.$2.2/24"
  in_ns "$1" ip route add default via "192.168.$2.1"
}

# lab_nat_conf: the NAT gateway configuration the NAT scenarios share (midcomd nat1, signaled flows
# admitted, unsignaled dropped, NAT to 203.0.113.1 with ports 20000-29999); prints the file's path.
lab_nat_conf() {
  lab_conf nat <<'CONF'
[daemon]
name = "nat1"

[policy]
default = "admit"
unsignaled = "drop"

[nat]
external-address = "203.0.113.1"
port-range = "20000-29999"
CONF
}

# lab_nat_signaling NS IFACE: the operator's masquerade, limited to CSP signaling (UDP 7227)
# leaving through IFACE, in the operator's own table. An operator would masquerade all LAN
# traffic; restricting it here means a data flow can only be translated by midcomd's own SNAT.
lab_nat_signaling() {
  in_ns "$1" nft add table ip operator_nat
  in_ns "$1" nft add chain ip operator_nat postrouting '{ type nat hook postrouting priority srcnat + 10; policy accept; }'
  in_ns "$1" nft add rule ip operator_nat postrouting oifname "$2" udp dport 7227 masquerade
}

# lab_series: client — fw — isp — server: a site firewall and an ISP NAT in series, each
# with its own midcomd. client 10.200.1.2, fw 10.200.1.1 | 100.64.0.2, isp 100.64.0.1 |
# 203.0.113.1 (external), server 203.0.113.2 (no route back to the inside).
lab_series() {
  lab_ns client; lab_ns fw; lab_ns isp; lab_ns server
  lab_link client fw; lab_link fw isp; lab_link isp server
  lab_addr client to-fw 10.200.1.2/24
  lab_addr fw to-client 10.200.1.1/24
  lab_addr fw to-isp 100.64.0.2/24
  lab_addr isp to-fw 100.64.0.1/24
  lab_addr isp to-server 203.0.113.1/24
  lab_addr server to-isp 203.0.113.2/24
  in_ns client ip route add default via 10.200.1.1
  in_ns fw ip route add default via 100.64.0.1
  in_ns isp ip route add 10.200.1.0/24 via 100.64.0.2
  lab_forwarding fw; lab_forwarding isp
}

# ---------------------------------------------------------------------------------------------
# Trust helpers (trust-*.sh).

# lab_load_ruleset NS: the ruleset of the binaries under test. Binaries from before the trust work (no --state-dir)
# refuse later revisions; they run with the last revision-2 ruleset from git, as they shipped.
lab_load_ruleset() {
  if "$BIN/midcomd" --help 2>&1 | grep -q -- --state-dir; then
    in_ns "$1" nft -f "$ROOT/nft-rules/midcom.nft"
    return
  fi
  local commit
  for commit in $(git -C "$ROOT" log --format=%H -n 20 -- nft-rules/midcom.nft); do
    git -C "$ROOT" show "$commit:nft-rules/midcom.nft" >"$LAB_DIR/ruleset.nft"
    if grep -q "midcom ruleset revision 2" "$LAB_DIR/ruleset.nft"; then
      echo "      (old binaries: ruleset revision 2 of commit ${commit:0:7})"
      in_ns "$1" nft -f "$LAB_DIR/ruleset.nft"
      return
    fi
  done
  fail "no revision-2 ruleset in the git history for the old binaries"
}

# antispoof_drops: packets the gw's anti-spoofing chain dropped so far.
antispoof_drops() {
  local json
  json=$(in_ns gw nft -j list chain inet midcom antispoof 2>/dev/null) || { echo 0; return; }
  $PY -c '
import json, sys
try:
    doc = json.load(sys.stdin)
except ValueError:
    print(0); sys.exit()
print(sum(e["counter"]["packets"] for o in doc["nftables"] if "rule" in o for e in o["rule"]["expr"] if "counter" in e))' <<<"$json"
}

# state_of SESSION: the session's state on gw ("none" when it has none).
state_of() {
  midctl gw sessions --json | $PY -c '
import json, sys
print({r["id"]: r["state"] for r in json.load(sys.stdin)}.get(sys.argv[1], "none"))' "$1"
}

# wait_until_gone SECONDS REGEX WHAT CMD...: wait (bounded) until CMD's output no longer matches
# REGEX (e.g. an element removed after a grace period); fails otherwise.
wait_until_gone() {
  local seconds=$(($1 * LAB_TIME_SCALE)) regex=$2 what=$3 i; shift 3
  for ((i = 0; i < seconds * 10; i++)); do
    "$@" 2>/dev/null | grep -Eq -- "$regex" || return 0
    sleep 0.1
  done
  fail "$what: /$regex/ still there after ${seconds}s"
}

