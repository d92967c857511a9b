#!/usr/bin/env bash
# Foundation end to end (issue #2): client — gateway — server on a real kernel.
#   1 signaled UDP flow admitted, data on the kernel fast path (queue counters flat)
#   2 unsignaled flow dropped; forbidden flow REJECTed with a reason csp prints
#   3 midctl sessions (table and --json); midctl without daemon
#   4 lifetime expiry in the kernel and in midctl
#   5 stop/kill: default policy applies, operator state untouched
# Also: IPv6, malformed CSP counted and dropped without harm.
source "$(dirname "$0")/lib.sh"
lab_init foundation

step "building the lab: client — gateway — server (IPv4 + IPv6)"
lab_basic
# Lifetimes this scenario waits out are `scaled` (lib.sh): longer in the slow QEMU guest.
lifetime=$(scaled 10)
cat >"$LAB_DIR/midcomd.conf" <<CONF
[daemon]
name = "gw1"

[policy]
default = "admit"
unsignaled = "drop"
max-lifetime = 600
drop-cache = $lifetime

[[rule]]
name = "no-telnet"
proto = "tcp"
port = 23
action = "reject"
reason = "telnet is forbidden by site policy"
CONF
# An operator's own table and a hand-written admission: midcomd must never touch either.
in_ns gw nft add table inet operator
in_ns gw nft add chain inet operator watch '{ type filter hook forward priority 10; policy accept; }'
in_ns gw nft add rule inet operator watch counter
lab_midcomd gw "$LAB_DIR/midcomd.conf"
in_ns gw nft add element inet midcom admit4 '{ 10.200.1.2 . udp . 9999 . 10.200.2.2 . 9999 timeout 1h }'
step "midcomd running: $(grep -o 'queue [0-9]* ([^)]*)' "$LAB_DIR/gw-midcomd.log" | head -1)"
lab_bg server "$LAB_DIR/listen4.log" "$BIN/csp" listen --duration 120
lab_bg server "$LAB_DIR/listen6.log" "$BIN/csp" listen --address :: --duration 120
sleep 0.3

step "unsignaled UDP 10.200.1.2:4001 -> 10.200.2.2:5001 must be dropped; after the first packet, by the kernel"
lab_serve server "$LAB_DIR/recv-unsignaled.log" $UDP recv 5001 --duration 2
in_ns client $UDP send 10.200.2.2 5001 --sport 4001 --count 1 >/dev/null
sleep "$(scaled 0.3)"
in_ns client $UDP send 10.200.2.2 5001 --sport 4001 --count 4 >/dev/null
wait_for_match "$LAB_DIR/recv-unsignaled.log" "^received " 5
expect_match "$(cat "$LAB_DIR/recv-unsignaled.log")" "^received 0 " "unsignaled flow"
expect_eq "$(status_counter gw unsignaled_dropped)" 1 "unsignaled packets judged (and dropped) by midcomd"
expect_match "$(in_ns gw nft list set inet midcom drop4)" "10.200.1.2 . udp . 4001 . 10.200.2.2 . 5001 counter packets 4 " "drop-cache element dropped the other 4 in the kernel"

step "csp setup udp 10.200.2.2:5000 --sport 4000 --lifetime $lifetime"
out=$(in_ns client "$BIN/csp" setup udp 10.200.2.2:5000 --sport 4000 --lifetime "$lifetime" --app demo) || fail "csp setup was not accepted: $out"
echo "$out" | sed 's/^/      /'
expect_match "$out" "ACCEPT from 10.200.2.2:7227" "reply"
expect_match "$out" "middlebox gw1 .*admitted, ${lifetime}s" "gateway record in the ACCEPT"
session=$(sed -n 's/^session \([0-9a-f]\{16\}\):.*/\1/p' <<<"$out")
elements=$(in_ns gw nft list set inet midcom admit4)
expect_match "$elements" "10.200.1.2 . udp . 4000 . 10.200.2.2 . 5000 .*timeout ${lifetime}s" "admit element with the granted lifetime"

step "50 datagrams on the admitted flow reach the server without entering user space"
queued_before=$(status_counter gw queue_received)
lab_serve server "$LAB_DIR/recv-admitted.log" $UDP recv 5000 --duration 3
in_ns client $UDP send 10.200.2.2 5000 --sport 4000 --count 50 >/dev/null
wait_for_match "$LAB_DIR/recv-admitted.log" "^received " 5
expect_match "$(cat "$LAB_DIR/recv-admitted.log")" "^received 50 from 10.200.1.2:4000" "admitted flow"
queued_after=$(status_counter gw queue_received)
expect_eq "$queued_after" "$queued_before" "packets queued to user space while sending on the admitted flow"
step "queue counter before/after: $queued_before/$queued_after"

step "midctl sessions"
table=$(midctl gw sessions)
echo "$table" | sed 's/^/      /'
expect_match "$table" "$session +udp +10.200.1.2:4000 +10.200.2.2:5000 +admitted +admit" "session row"
json=$(midctl gw sessions --json)
$PY - "$session" <<PYEOF || fail "midctl sessions --json: $json"
import json, sys
rows = json.loads('''$json''')
row = [r for r in rows if r["id"] == sys.argv[1]][0]
assert row["state"] == "admitted" and row["proto"] == "udp", row
assert row["sourcePort"] == 4000 and row["destinationPort"] == 5000, row
assert row["packets"] >= 50 and 0 < row["remainingSeconds"] <= $lifetime, row
assert row["application"] == "demo", row
PYEOF

step "forbidden flow: csp setup tcp 10.200.2.2:23 gets REJECT with the reason (sent by the gateway in the server's name)"
set +e; out=$(in_ns client "$BIN/csp" setup tcp 10.200.2.2:23 --sport 4023); rc=$?; set -e
echo "$out" | sed 's/^/      /'
expect_eq "$rc" 1 "csp exit status for REJECT"
expect_match "$out" "REJECT from 10.200.2.2:7227 \(middlebox\) in [0-9.]+ ms: policy-denied: telnet is forbidden by site policy" "reject reason"
expect_no_match "$(in_ns gw nft list set inet midcom admit4)" "\. 23 " "no element for the rejected flow"

step "IPv6: csp setup udp [fd00:2::2]:5000 --sport 4000, then data"
out=$(in_ns client "$BIN/csp" setup udp '[fd00:2::2]:5000' --sport 4000 --lifetime 30) || fail "IPv6 setup: $out"
expect_match "$out" "ACCEPT from \[fd00:2::2\]:7227" "IPv6 reply"
expect_match "$(in_ns gw nft list set inet midcom admit6)" "fd00:1::2 . udp . 4000 . fd00:2::2 . 5000" "IPv6 element"
lab_serve server "$LAB_DIR/recv6.log" $UDP recv 5000 --bind :: --duration 3
in_ns client $UDP send fd00:2::2 5000 --sport 4000 --count 10 >/dev/null
wait_for_match "$LAB_DIR/recv6.log" "^received " 5
expect_match "$(cat "$LAB_DIR/recv6.log")" "^received 10 from fd00:1::2:4000" "IPv6 admitted flow"

step "malformed CSP (garbage, truncated header, bad version) is counted and dropped"
before=$(status_counter gw malformed_messages)
in_ns client $PY -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for payload in [b'garbage', b'CS\x01', b'CS\x09\x01' + bytes(40), b'CS\x01\x01\x00\x00\x00\x40' + bytes(20)]:
    s.sendto(payload, ('10.200.2.2', 7227))
"
sleep "$(scaled 0.5)"
expect_eq "$(status_counter gw malformed_messages)" "$((before + 4))" "malformed messages counted"
kill -0 "$MIDCOMD_PID" || fail "midcomd died on malformed input"

step "lifetime expiry: $lifetime s after the ACCEPT without refresh the element goes, then the session"
wait_until_gone 12 "4000 . 10.200.2.2 . 5000" "expired element" in_ns gw nft list set inet midcom admit4
wait_until_gone 6 "$session" "expired session in midctl" midctl gw sessions
lab_serve server "$LAB_DIR/recv-expired.log" $UDP recv 5000 --duration 1.5
in_ns client $UDP send 10.200.2.2 5000 --sport 4000 --count 5 >/dev/null
wait_for_match "$LAB_DIR/recv-expired.log" "^received " 5
expect_match "$(cat "$LAB_DIR/recv-expired.log")" "^received 0 " "data after expiry"

step "SIGTERM: the queue rule goes, the table, the operator's table and hand-written element stay"
kill -TERM "$MIDCOMD_PID"
for _ in $(seq 1 $((50 * LAB_TIME_SCALE))); do kill -0 "$MIDCOMD_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$MIDCOMD_PID" 2>/dev/null && fail "midcomd did not stop within $((5 * LAB_TIME_SCALE)) s of SIGTERM"
expect_eq "$(in_ns gw nft list chain inet midcom enqueue | grep -cE "queue (num|flags|to) " || true)" 0 "queue rules left after stop"
expect_match "$(in_ns gw nft list set inet midcom admit4)" "9999 . 10.200.2.2 . 9999" "operator element after stop"
expect_match "$(in_ns gw nft list table inet operator)" "counter packets" "operator table after stop"
set +e; out=$("$BIN/midctl" --socket "$LAB_DIR/gw.sock" sessions 2>&1); rc=$?; set -e
expect_eq "$rc" 3 "midctl exit status without daemon"
expect_match "$out" "not running" "midctl message without daemon"

step "default policy with no daemon: operator's legacy rule passes, the rest is dropped"
in_ns gw nft insert rule inet midcom default_policy udp dport 6000 accept
lab_serve server "$LAB_DIR/recv-6000.log" $UDP recv 6000 --duration 4
lab_serve server "$LAB_DIR/recv-6001.log" $UDP recv 6001 --duration 4
in_ns client $UDP send 10.200.2.2 6000 --sport 4600 --count 5 >/dev/null
in_ns client $UDP send 10.200.2.2 6001 --sport 4601 --count 5 >/dev/null
wait_for_match "$LAB_DIR/recv-6000.log" "^received " 5
wait_for_match "$LAB_DIR/recv-6001.log" "^received " 5
expect_match "$(cat "$LAB_DIR/recv-6000.log")" "^received 5 " "legacy-allowed flow without daemon"
expect_match "$(cat "$LAB_DIR/recv-6001.log")" "^received 0 " "other flow without daemon"

step "restart: flows admitted in the kernel before (here the hand-written element) are adopted as sessions"
lab_midcomd gw "$LAB_DIR/midcomd.conf"
adopted=""
for _ in $(seq 1 $((50 * LAB_TIME_SCALE))); do
  adopted=$(midctl gw sessions | grep -E "udp +10\.200\.1\.2:9999 +10\.200\.2\.2:9999 +admitted" || true)
  [ -n "$adopted" ] && break; sleep 0.1
done
[ -n "$adopted" ] || fail "the kernel element 10.200.1.2:9999 -> 10.200.2.2:9999 was not adopted: $(midctl gw sessions)"

step "SIGKILL: the queue rule stays (bypass) and the default policy still applies"
expect_match "$(in_ns gw nft list chain inet midcom enqueue 2>/dev/null)" "queue (num 0 bypass|flags bypass to 0)" "queue rule installed"
kill -9 "$MIDCOMD_PID"; wait "$MIDCOMD_PID" 2>/dev/null || true
expect_match "$(in_ns gw nft list chain inet midcom enqueue 2>/dev/null)" "queue (num 0 bypass|flags bypass to 0)" "queue rule after SIGKILL"
lab_serve server "$LAB_DIR/recv-6000b.log" $UDP recv 6000 --duration 4
lab_serve server "$LAB_DIR/recv-6002.log" $UDP recv 6002 --duration 4
in_ns client $UDP send 10.200.2.2 6000 --sport 4602 --count 5 >/dev/null
in_ns client $UDP send 10.200.2.2 6002 --sport 4603 --count 5 >/dev/null
wait_for_match "$LAB_DIR/recv-6000b.log" "^received " 5
wait_for_match "$LAB_DIR/recv-6002.log" "^received " 5
expect_match "$(cat "$LAB_DIR/recv-6000b.log")" "^received 5 " "legacy-allowed flow after SIGKILL"
expect_match "$(cat "$LAB_DIR/recv-6002.log")" "^received 0 " "other flow after SIGKILL"
echo "foundation: all checks passed"
