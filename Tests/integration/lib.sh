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
  [ -n "$config" ] && args+=(--config "$config")
  [ -z "$config" ] && args+=(--config /dev/null)
  lab_bg "$n" "$LAB_DIR/$n-midcomd.log" "$BIN/midcomd" "${args[@]}"
  MIDCOMD_PID=$LAB_LAST_PID
  for _ in $(seq 1 100); do
    if "$BIN/midctl" --socket "$LAB_DIR/$n.sock" status >/dev/null 2>&1; then return 0; fi
    kill -0 "$MIDCOMD_PID" 2>/dev/null || { cat "$LAB_DIR/$n-midcomd.log" >&2; fail "midcomd in $n exited at start"; }
    sleep 0.1
  done
  fail "midcomd in $n did not answer on its control socket within 10 s"
}

midctl() { local n=$1; shift; "$BIN/midctl" --socket "$LAB_DIR/$n.sock" "$@"; }

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
  if [ $rc -ne 0 ] || [ $LAB_FAILED -ne 0 ]; then
    # On failure show what the gateway knew: its log, its table and its sessions.
    for f in "$LAB_DIR"/*-midcomd.log; do
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
