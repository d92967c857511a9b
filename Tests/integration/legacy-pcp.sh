#!/usr/bin/env bash
# Legacy clients, scenarios 2 and 3 (issue 12): a PCP client (RFC 6887; Tests/integration/
# pcp_client.py, written from the RFC independently of midcomd's code, since Debian ships no PCP
# client) on an inside host. MAP opens a port that an outside peer reaches; renewal with the same
# nonce keeps it, another nonce may neither renew nor delete it (the nonce owns the mapping);
# PEER maps and admits an outgoing flow; policy, address mismatch, unsupported versions,
# protocols and options get their result codes; nobody outside gets an answer. After a restart
# midcomd multicasts ANNOUNCE with its new epoch, and the client's re-MAP claims the mapping the
# restarted daemon adopted from the kernel.
#
#   inside 192.168.1.2 ── nat (midcomd nat1, external 203.0.113.1) ── outside 203.0.113.2
source "$(dirname "$0")/lib.sh"
lab_init pcp

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
lab_serve outside "$LAB_DIR/peer.log" $FLOWS udp-echo 6000 --duration 60
PCPC="$PY $ROOT/Tests/integration/pcp_client.py"
pcp() { set +e; PCP_OUT=$(in_ns inside timeout 10 $PCPC "$@" 2>&1); PCP_RC=$?; set -e; indent <<<"$PCP_OUT"; }
field() { sed -n "s/.*[ ^]$1=\([^ ]*\).*/\1/p" <<<"$PCP_OUT" | head -1; }
ping_out() { in_ns outside $FLOWS udp-ping 203.0.113.1 "$1" --sport "$2" --count 5 --interval 0.02 --wait 0.4; }
owner=0102030405060708090a0b0c
thief=ffeeddccbbaa998877665544

step "before the mapping, outside → 203.0.113.1:5004 reaches nobody"
out=$(ping_out 5004 6100); indent <<<"$out"; expect_match "$out" "sent 5 replies 0 " "unmapped"

step "PCP MAP udp 5004 (nonce $owner): mapped; the outside peer reaches the inside server"
pcp map 192.168.1.1 --proto udp --internal-port 5004 --lifetime 60 --nonce $owner
expect_eq "$PCP_RC" 0 "pcp exit status"
expect_match "$PCP_OUT" "opcode=MAP result=SUCCESS code=0 lifetime=60 " "MAP granted"
expect_match "$PCP_OUT" "nonce=$owner proto=17 internal-port=5004 external=203\.0\.113\.1:5004" "assigned external endpoint"
first_epoch=$(field epoch)
out=$(ping_out 5004 6101); indent <<<"$out"; expect_match "$out" "sent 5 replies 5 from 203\.0\.113\.1:5004" "through the mapping"
table=$(midctl nat sessions); indent <<<"$table"
expect_match "$table" "udp +0\.0\.0\.0:\* +192\.168\.1\.2:5004 +admitted +nat .* pcp$" "listed, origin pcp"

step "renewal with the same nonce keeps the port; another nonce may neither renew nor delete it"
pcp map 192.168.1.1 --proto udp --internal-port 5004 --lifetime 120 --nonce $owner
expect_match "$PCP_OUT" "result=SUCCESS .*lifetime=120 .*external=203\.0\.113\.1:5004" "renewed"
pcp map 192.168.1.1 --proto udp --internal-port 5004 --lifetime 120 --nonce $thief
expect_eq "$PCP_RC" 1 "pcp exit status"
expect_match "$PCP_OUT" "result=NOT_AUTHORIZED code=2" "another nonce: renewal refused"
pcp map 192.168.1.1 --proto udp --internal-port 5004 --lifetime 0 --nonce $thief
expect_match "$PCP_OUT" "result=NOT_AUTHORIZED code=2" "another nonce: deletion refused"
out=$(ping_out 5004 6102); indent <<<"$out"; expect_match "$out" "sent 5 replies 5 " "still mapped"

step "TCP MAP with a suggested external port 8081: a TCP connection from outside"
pcp map 192.168.1.1 --proto tcp --internal-port 8080 --external-port 8081 --lifetime 60
expect_match "$PCP_OUT" "result=SUCCESS .*proto=6 internal-port=8080 external=203\.0\.113\.1:8081" "TCP on the suggested port"
out=$(in_ns outside $FLOWS tcp-send 203.0.113.1 8081 --bytes 30000) || fail "TCP through the mapping: $out"
indent <<<"$out"; expect_match "$out" "sent 30000 echoed 30000" "TCP through the mapping"

step "PEER: the inside host's outgoing UDP 7000 → 203.0.113.2:6000 is mapped and admitted"
out=$(in_ns inside $FLOWS udp-ping 203.0.113.2 6000 --sport 7001 --count 3 --wait 0.4); indent <<<"$out"
expect_match "$out" "sent 3 replies 0 " "without PEER the unsignaled flow is dropped (unsignaled = drop)"
pcp peer 192.168.1.1 --proto udp --internal-port 7000 --peer-address 203.0.113.2 --peer-port 6000 --lifetime 60
expect_match "$PCP_OUT" "opcode=PEER result=SUCCESS .*internal-port=7000 external=203\.0\.113\.1:([0-9]+) peer=203\.0\.113\.2:6000" "PEER granted"
peer_port=$(field external | sed 's/.*://')
out=$(in_ns inside $FLOWS udp-ping 203.0.113.2 6000 --sport 7000 --count 5 --wait 0.4); indent <<<"$out"
expect_match "$out" "sent 5 replies 5 from 203\.0\.113\.2:6000" "the PEER flow passes"
wait_for_match "$LAB_DIR/peer.log" "echo from 203\.0\.113\.1:$peer_port$" 2

step "refusals get their result codes"
pcp map 192.168.1.1 --proto tcp --internal-port 23 --lifetime 60
expect_match "$PCP_OUT" "result=NOT_AUTHORIZED code=2" "policy (incoming TCP 23)"
expect_no_match "$(in_ns nat nft list map inet midcom dnat4)" "\. tcp \. 23 " "no DNAT for port 23"
pcp map 192.168.1.1 --proto udp --internal-port 5010 --lifetime 60 --client-address 192.168.1.99
expect_match "$PCP_OUT" "result=ADDRESS_MISMATCH code=12" "another host's address"
pcp map 192.168.1.1 --proto 47 --internal-port 5010 --lifetime 60
expect_match "$PCP_OUT" "result=UNSUPP_PROTOCOL code=9" "protocol 47"
pcp --version 1 map 192.168.1.1 --proto udp --internal-port 5010 --lifetime 60
expect_match "$PCP_OUT" "result=UNSUPP_VERSION code=1" "version 1"
pcp raw 192.168.1.1 --hex 0201000000000e10
expect_match "$PCP_OUT" "result=MALFORMED_REQUEST code=3" "8 octets"
pcp raw 192.168.1.1 --hex "0201 0000 00000e10 00000000000000000000ffffc0a80102 0102030405060708090a0b0c 11000000 1392 0000 00000000000000000000ffff00000000 03000014 0000000000000000000000000000000000000000"
expect_match "$PCP_OUT" "result=UNSUPP_OPTION code=5" "FILTER option (not offered)"
expect_no_match "$(midctl nat sessions)" ":5010 " "nothing installed for the refused requests"
set +e; out=$(in_ns outside timeout 5 $PCPC map 203.0.113.1 --proto udp --internal-port 5004 --attempts 2 2>&1); set -e
indent <<<"$out"; expect_match "$out" "no response" "nobody outside gets an answer"

step "after a restart midcomd announces its new epoch; the client's re-MAP claims the adopted mapping"
sleep_until "$(after "$(now_s)" 2)"
pcp announce 192.168.1.1
before=$(field epoch)
lab_bg inside "$LAB_DIR/announce.log" $PCPC listen-announce --iface-address 192.168.1.2 --duration 10
wait_for_match "$LAB_DIR/announce.log" "^listening on" 3
kill "$MIDCOMD_PID"; wait "$MIDCOMD_PID" 2>/dev/null || true
lab_midcomd nat "$conf"
wait_for_match "$LAB_DIR/announce.log" "opcode=ANNOUNCE result=SUCCESS code=0 lifetime=0 epoch=[0-9]+ from=192\.168\.1\.1:5351" 3
wait_for_match "$LAB_DIR/announce.log" "version=0 opcode=128 .*address=203\.0\.113\.1 from=192\.168\.1\.1:5351" 3
pcp announce 192.168.1.1
after_restart=$(field epoch)
[ "$after_restart" -lt "$before" ] || fail "the epoch did not go back after the restart: $before then $after_restart (first $first_epoch)"
out=$(ping_out 5004 6103); indent <<<"$out"; expect_match "$out" "sent 5 replies 5 " "the adopted mapping still forwards"
pcp map 192.168.1.1 --proto udp --internal-port 5004 --lifetime 60 --nonce $owner
expect_match "$PCP_OUT" "result=SUCCESS .*external=203\.0\.113\.1:5004" "re-MAP claims the adopted mapping, same port"
expect_match "$(midctl nat sessions)" "192\.168\.1\.2:5004 +admitted +nat .* pcp$" "origin pcp again"

step "midctl announce (a HA pair's new active box): the epoch starts again and is multicast to the inside"
sleep_until "$(after "$(now_s)" 2)"
pcp announce 192.168.1.1
running=$(field epoch)
lab_bg inside "$LAB_DIR/announce2.log" $PCPC listen-announce --iface-address 192.168.1.2 --duration 10
wait_for_match "$LAB_DIR/announce2.log" "^listening on" 3
out=$(midctl nat announce); indent <<<"$out"
expect_match "$out" "port-mapping epoch [01]: announcing to NAT-PMP/PCP clients" "midctl announce"
wait_for_match "$LAB_DIR/announce2.log" "opcode=ANNOUNCE result=SUCCESS code=0 lifetime=0 epoch=[01] from=192\.168\.1\.1:5351" 3
pcp announce 192.168.1.1
[ "$(field epoch)" -lt "$running" ] || fail "the epoch did not go back after midctl announce: $running then $(field epoch)"

step "MAP with lifetime 0 and the owner's nonce deletes it: the peer is refused again"
pcp map 192.168.1.1 --proto udp --internal-port 5004 --lifetime 0 --nonce $owner
expect_match "$PCP_OUT" "result=SUCCESS code=0 lifetime=0 " "deleted"
out=$(ping_out 5004 6104); indent <<<"$out"; expect_match "$out" "sent 5 replies 0 " "after deletion"
expect_no_match "$(midctl nat sessions)" "192\.168\.1\.2:5004 " "session after deletion"
echo "legacy-pcp: all checks passed"
