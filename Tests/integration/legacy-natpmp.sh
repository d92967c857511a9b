#!/usr/bin/env bash
# Legacy clients, scenario 1 and part of 3 (issue 12): an unmodified NAT-PMP client (Debian's
# natpmpc, RFC 6886) on an inside host maps UDP and TCP ports on the Midcom NAT. The mapping is a
# session of midcomd's table (origin nat-pmp), through its policy and kernel schema (DNAT +
# pinhole): an outside peer reaches the inside server through it, `midctl sessions` lists it, and
# deleting it (lifetime 0) closes the port. A mapping the policy forbids is refused, and nobody
# outside gets an answer. After a restart the gateway announces its address and new epoch.
#
#   inside 192.168.1.2 ── nat (midcomd nat1, external 203.0.113.1) ── outside 203.0.113.2
source "$(dirname "$0")/lib.sh"
command -v natpmpc >/dev/null || { echo "FAIL: natpmpc is missing (apt-get install natpmpc; scripts/install-deps.sh does)" >&2; exit 1; }
lab_init natpmp

step "lab: inside — nat — outside; nat1 forbids incoming TCP 23"
lab_nat
conf=$(lab_conf nat <<'CONF'
[daemon]
name = "nat1"

[policy]
default = "admit"
unsignaled = "drop"

[[rule]]
name = "no-telnet-in"
proto = "tcp"
port = 23
direction = "incoming"
action = "reject"
reason = "no telnet from outside"

[nat]
external-address = "203.0.113.1"
port-range = "20000-29999"
CONF
)
lab_midcomd nat "$conf"
lab_serve inside "$LAB_DIR/udp.log" $FLOWS udp-echo 5004 --duration 60
lab_serve inside "$LAB_DIR/tcp.log" $FLOWS tcp-serve 8080 --duration 60
ping_out() { in_ns outside $FLOWS udp-ping 203.0.113.1 "$1" --sport "$2" --count 5 --interval 0.02 --wait 0.4; }
natpmp() { set +e; NATPMP_OUT=$(in_ns inside timeout 10 natpmpc -g 192.168.1.1 "$@" 2>&1); NATPMP_RC=$?; set -e; indent <<<"$NATPMP_OUT"; }

step "natpmpc asks for the external address"
natpmp
expect_eq "$NATPMP_RC" 0 "natpmpc exit status"
expect_match "$NATPMP_OUT" "Public IP address : 203\.0\.113\.1" "external address"

step "before the mapping, outside → 203.0.113.1:5004 reaches nobody"
out=$(ping_out 5004 6000); indent <<<"$out"; expect_match "$out" "sent 5 replies 0 " "unmapped"

step "natpmpc -a 5004 5004 udp 60: mapped; the outside peer reaches the inside server"
natpmp -a 5004 5004 udp 60
expect_eq "$NATPMP_RC" 0 "natpmpc exit status"
expect_match "$NATPMP_OUT" "Mapped public port 5004 protocol UDP to local port 5004 liftime 60" "UDP mapping"
out=$(ping_out 5004 6001); indent <<<"$out"; expect_match "$out" "sent 5 replies 5 from 203\.0\.113\.1:5004" "through the mapping"
wait_for_match "$LAB_DIR/udp.log" "echo from 203\.0\.113\.2:6001$" 2
table=$(midctl nat sessions); indent <<<"$table"
expect_match "$table" "udp +0\.0\.0\.0:\* +192\.168\.1\.2:5004 +admitted +nat .* nat-pmp$" "listed, origin nat-pmp"
expect_match "$(in_ns nat nft list map inet midcom dnat4)" "203\.0\.113\.1 \. udp \. 5004 .*: 192\.168\.1\.2 \. 5004" "DNAT element"

step "natpmpc -a 8080 8080 tcp 60: a TCP connection from outside"
natpmp -a 8080 8080 tcp 60
expect_match "$NATPMP_OUT" "Mapped public port 8080 protocol TCP to local port 8080 liftime 60" "TCP mapping"
out=$(in_ns outside $FLOWS tcp-send 203.0.113.1 8080 --bytes 50000) || fail "TCP through the mapping: $out"
indent <<<"$out"; expect_match "$out" "sent 50000 echoed 50000" "TCP through the mapping"

step "a mapping the policy forbids (incoming TCP 23) is refused"
natpmp -a 23 23 tcp 60
expect_match "$NATPMP_OUT" "failed : not authorized" "result 2 (not authorized)"
expect_no_match "$NATPMP_OUT" "Mapped public port" "no mapping for port 23"
expect_no_match "$(in_ns nat nft list map inet midcom dnat4)" "\. tcp \. 23 " "no DNAT for port 23"

step "nobody outside gets an answer (NAT-PMP is for inside hosts): the kernel drops it on input"
dropped_before=$(in_ns nat nft list chain inet midcom port_mapping_input | sed -n 's/.*@portmap_refused4 counter packets \([0-9]*\) .*/\1/p')
set +e; out=$(in_ns outside timeout 3 natpmpc -g 203.0.113.1 2>&1); set -e
expect_no_match "$out" "Public IP address" "outside client"
dropped=$(in_ns nat nft list chain inet midcom port_mapping_input | sed -n 's/.*@portmap_refused4 counter packets \([0-9]*\) .*/\1/p')
[ "$dropped" -gt "$dropped_before" ] || fail "port_mapping_input dropped $dropped_before then $dropped packets"
filter=$(nft_set nat portmap_refused4); indent <<<"$filter"
expect_match "$filter" "0\.0\.0\.0-9\.255\.255\.255 \. 5351" "refused below 10/8"
expect_no_match "$filter" "192\.168\.[0-9.]*-192\.168" "the inside is not refused"

step "natpmpc -a 5004 5004 udp 0 deletes the mapping: the peer is refused again"
natpmp -a 5004 5004 udp 0
out=$(ping_out 5004 6002); indent <<<"$out"; expect_match "$out" "sent 5 replies 0 " "after deletion"
expect_no_match "$(midctl nat sessions)" "192\.168\.1\.2:5004 " "session after deletion"
expect_no_match "$(in_ns nat nft list map inet midcom dnat4)" "\. udp \. 5004 " "DNAT after deletion"
step "after a restart (state lost), nat1 announces its address and new epoch to 224.0.0.1:5350"
lab_bg inside "$LAB_DIR/announce.log" $PY "$ROOT/Tests/integration/craft.py" recv 5350 --duration 10
wait_for_match "$LAB_DIR/announce.log" "^listening on" 3
kill "$MIDCOMD_PID"; wait "$MIDCOMD_PID" 2>/dev/null || true
expect_no_match "$(nft_set nat portmap_refused4)" "elements" "a stopped midcomd leaves no input filter behind"
lab_midcomd nat "$conf"
started=$(now_s)
wait_for_match "$LAB_DIR/announce.log" "recv 12 octets from 192\.168\.1\.1:5351" 3
natpmp
expect_match "$NATPMP_OUT" "epoch = [0-2]$" "the epoch started again"

# The announcements go out 0, 0.25, 0.75, 1.75, 3.75, 7.75 and 15.75 s after the start.
step "idle, the port-mapping thread sleeps until a request or its next announcement (none from 4 to 6 s)"
sleep_until "$(after "$started" 4)"
pm_wakeups() {
  local task
  for task in /proc/"$MIDCOMD_PID"/task/*; do
    if [ "$(cat "$task/comm")" = port-mapping ]; then awk '/^voluntary_ctxt_switches/ {print $2}' "$task/status"; fi
  done
}
w0=$(pm_wakeups)
[ -n "$w0" ] || fail "midcomd has no thread named port-mapping"
sleep 2
w1=$(pm_wakeups)
echo "      the port-mapping thread woke $((w1 - w0)) times in 2 s"
# It polled every 250 ms before: 8 or 9 times.
[ $((w1 - w0)) -le 1 ] || fail "the idle port-mapping thread woke $((w1 - w0)) times in 2 s (expected at most 1)"

step "midctl announce wakes it at once: announced within 1 s, not at 15.75 s"
sleep_until "$(after "$started" 8.5)"
lab_bg inside "$LAB_DIR/announce3.log" $PY "$ROOT/Tests/integration/craft.py" recv 5350 --duration 10
wait_for_match "$LAB_DIR/announce3.log" "^listening on" 3
out=$(midctl nat announce); indent <<<"$out"
expect_match "$out" "port-mapping epoch [0-2]: announcing to NAT-PMP/PCP clients" "midctl announce"
wait_for_match "$LAB_DIR/announce3.log" "recv 12 octets from 192\.168\.1\.1:5351" 1
echo "legacy-natpmp: all checks passed"
