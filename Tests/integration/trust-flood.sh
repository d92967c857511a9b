#!/usr/bin/env bash
# Trust scenario 7: a flood of spoofed SETUPs does not keep legitimate hosts from setting up
# sessions. An attacker behind gw's third interface sends SETUPs from random addresses of a
# /12 routed there (so the anti-spoofing check passes and only return routability can stop
# them): first at ten times the legitimate rate, then as fast as its generator goes, while a
# legitimate client sets up sessions with real `csp setup`. Asserted: at least 99 % of the
# legitimate setups succeed, no spoofed source gets state, midcomd's memory stays within a
# bound, and the queue never fails open; then the full-speed flood again with midcomd on one CPU,
# where one thread reads both its queues. Success rates, not times: the bench measures rates.
#
#   client 10.204.1.2 ── gw ── server 10.204.2.2 (csp listen)
#                         └── attacker 10.204.3.2 (spoofs 172.16.0.0/12)
# The gateway is the release build (`make build` makes it): a flood measures the deployed daemon.
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${MIDCOM_BIN:-}" ]; then
  [ -x "$root/.build/release/midcomd" ] || { echo "FAIL: run 'swift build -c release --product midcomd' first" >&2; exit 1; }
  mkdir -p "$root/.build/flood-bin"
  ln -sf "$root/.build/release/midcomd" "$root/.build/flood-bin/midcomd"
  ln -sf "$root/.build/debug/midctl" "$root/.build/flood-bin/midctl"
  ln -sf "$root/.build/debug/csp" "$root/.build/flood-bin/csp"
  export MIDCOM_BIN="$root/.build/flood-bin"
fi
source "$(dirname "$0")/lib.sh"
lab_init flood

step "lab: client — gw — server, attacker on a third link with 172.16.0.0/12 routed to it"
lab_ns client; lab_ns gw; lab_ns server; lab_ns attacker
lab_link client gw; lab_link gw server; lab_link gw attacker
lab_addr client to-gw 10.204.1.2/24
lab_addr gw to-client 10.204.1.1/24
lab_addr gw to-server 10.204.2.1/24
lab_addr gw to-attacker 10.204.3.1/24
lab_addr server to-gw 10.204.2.2/24
lab_addr attacker to-gw 10.204.3.2/24
in_ns client ip route add default via 10.204.1.1
in_ns server ip route add default via 10.204.2.1
in_ns attacker ip route add default via 10.204.3.1
in_ns gw ip route add 172.16.0.0/12 via 10.204.3.2
lab_forwarding gw
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"
queue-fail-open = false

[policy]
default = "admit"
unsignaled = "drop"
CONF
)
lab_midcomd gw "$conf"
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 90
sleep 0.3
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$MIDCOMD_PID/status"; }
rss_start=$(rss)

# legit FIRST COUNT: COUNT real setups from the client (distinct source ports), sequentially;
# prints how many were ACCEPTed.
legit() {
  local first=$1 count=$2 ok=0 i
  for ((i = first; i < first + count; i++)); do
    if in_ns client "$BIN/csp" setup udp 10.204.2.2:5000 --sport "$i" --lifetime 60 --machine >/dev/null 2>&1; then
      ok=$((ok + 1))
    fi
  done
  echo "$ok"
}

step "flood at ten times the legitimate rate (legitimate: ~20 setups/s here)"
lab_bg attacker "$LAB_DIR/flood1.log" $PY "$ROOT/Tests/integration/spoof_flood.py" 10.204.2.2 172.16.0.0/12 --rate 200 --duration 60
flood1=$LAB_LAST_PID
ok=$(legit 20000 100)
kill "$flood1" 2>/dev/null || true
echo "      legitimate setups accepted: $ok of 100"
[ "$ok" -ge 99 ] || fail "under a 10x spoofed flood only $ok of 100 legitimate setups succeeded"

# full_speed_flood NAME FIRST: a flood as fast as the generator goes while 100 legitimate setups
# (source ports from FIRST) run; asserts at least 99 succeeded and the flood reached midcomd.
full_speed_flood() {
  local name=$1 first=$2 flood sent_before limited_before ok challenged
  lab_bg attacker "$LAB_DIR/$name.log" $PY "$ROOT/Tests/integration/spoof_flood.py" 10.204.2.2 172.16.0.0/12 --rate 0 --duration 60
  flood=$LAB_LAST_PID
  sleep 1
  sent_before=$(status_counter gw challenges_sent); limited_before=$(status_counter gw challenges_limited)
  ok=$(legit "$first" 100)
  kill -INT "$flood" 2>/dev/null || true
  sleep 0.5
  challenged=$(( $(status_counter gw challenges_sent) - sent_before + $(status_counter gw challenges_limited) - limited_before ))
  echo "      legitimate setups accepted: $ok of 100; spoofed SETUPs met meanwhile: $challenged"
  [ "$ok" -ge 99 ] || fail "under a full-speed spoofed flood ($name) only $ok of 100 legitimate setups succeeded"
  [ "$challenged" -ge 1000 ] || fail "the flood ($name) barely reached midcomd ($challenged spoofed SETUPs): the test measured nothing"
}

step "flood as fast as the generator goes"
full_speed_flood flood2 21000

step "no spoofed source got state; memory bounded; the queue never failed open"
sessions=$(midctl gw sessions --json)
spoofed=$($PY -c 'import json,sys; print(sum(1 for s in json.load(sys.stdin) if s["source"].startswith("172.")))' <<<"$sessions")
expect_eq "$spoofed" 0 "sessions of spoofed sources"
admitted=$($PY -c 'import json,sys; print(sum(1 for s in json.load(sys.stdin) if s["state"] == "admitted"))' <<<"$sessions")
[ "$admitted" -ge 198 ] || fail "admitted legitimate sessions: $admitted, expected at least 198"
rss_end=$(rss)
echo "      midcomd RSS ${rss_start} kB at start, ${rss_end} kB after the floods"
# Spoofed requests create no sessions and no pending state; what grows is bounded by design:
# the reply budget's fixed table, the reply queue (4096 answers) and 256 kept reply sockets.
[ "$rss_end" -le $((rss_start + 65536)) ] || fail "midcomd grew by $((rss_end - rss_start)) kB under the flood (bound: 64 MiB)"
# queue-fail-open = false: an overflowing queue drops (the kernel counts it), it never accepts.
echo "      kernel queue (/proc/net/netfilter/nfnetlink_queue): $(in_ns gw cat /proc/net/netfilter/nfnetlink_queue)"
expect_eq "$(status_counter gw pending_limited)" 0 "SETUPs refused for pending state (spoofed ones never got any)"

step "midcomd on one CPU: one thread reads both queues; the full-speed flood again"
# On more CPUs each queue has its reader thread; on one, the unproved and the proved queue share
# one (a burst of each in turn), and the flood on the first must not starve the second.
if [ "$(nproc)" -ge 2 ]; then
  expect_match "$(cat "$LAB_DIR/gw-midcomd.log")" "queue readers: 0, 1 \(a thread each" "reader threads on $(nproc) CPUs"
fi
kill -TERM "$MIDCOMD_PID"
for _ in $(seq 1 50); do kill -0 "$MIDCOMD_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$MIDCOMD_PID" 2>/dev/null && fail "midcomd did not stop within 5 s of SIGTERM"
LAB_MIDCOMD_CPUS=0 lab_midcomd gw "$conf"
expect_match "$(cat "$LAB_DIR/gw-midcomd.log")" "queue readers: 0\+1 \(one thread; 1 CPU allowed\)" "reader threads on one CPU"
full_speed_flood flood3-one-reader 22000
spoofed=$($PY -c 'import json,sys; print(sum(1 for s in json.load(sys.stdin) if s["source"].startswith("172.")))' <<<"$(midctl gw sessions --json)")
expect_eq "$spoofed" 0 "sessions of spoofed sources (one reader thread)"
