#!/usr/bin/env bash
# Scenario 7 (issue #3): NAT traversal, incoming (IPv4 only: NAT is IPv4). A server behind a NAT
# wants to accept flows from any peer. It has no peer to send a SETUP to, so it sends it to the NAT
# itself (csp --peer any --via 192.168.1.1): the NAT answers ACCEPT in its own name with
# MAPPED-ADDRESS (its external address and port), installs the DNAT and the pinhole, and a client
# outside connects to that address. UDP and TCP; a second inside server asking for the same port
# gets another external port; TEARDOWN closes the mapping again.
#
#   inside 192.168.1.2 ──┐
#                        nat (midcomd nat1, external 203.0.113.1) ── outside 203.0.113.2
#   inside2 192.168.2.2 ─┘
source "$(dirname "$0")/lib.sh"
lab_init natin

step "lab: inside, inside2 — nat — outside"
lab_nat
lab_nat_host inside2 2
conf=$(lab_nat_conf)
lab_midcomd nat "$conf"
lab_serve inside "$LAB_DIR/udp-inside.log" $FLOWS udp-echo 5004 --duration "$(scaled 60)"
lab_serve inside "$LAB_DIR/tcp-inside.log" $FLOWS tcp-serve 8080 --duration "$(scaled 60)"
lab_serve inside2 "$LAB_DIR/udp-inside2.log" $FLOWS udp-echo 5004 --duration "$(scaled 60)"
sleep "$(scaled 0.5)"

ping_out() { in_ns outside $FLOWS udp-ping 203.0.113.1 "$1" --sport "$2" --count 5 --interval 0.02 --wait 0.4; }

step "before signaling: outside → 203.0.113.1:5004 reaches nobody"
out=$(ping_out 5004 6000); indent <<<"$out"; expect_match "$out" "sent 5 replies 0 " "unmapped port"

step "inside: csp setup udp --incoming --peer any --local-port 5004 --via 192.168.1.1 --lifetime $(scaled 30)"
csp_run inside setup udp --incoming --peer any --local-port 5004 --via 192.168.1.1 --lifetime "$(scaled 30)"
expect_eq "$CSP_RC" 0 "csp exit status"
expect_match "$CSP_OUT" "ACCEPT from 192\.168\.1\.1:7227 \(middlebox\) .*lifetime $(scaled 30)s" "the NAT answered itself"
expect_match "$CSP_OUT" "^  mapped to 203\.0\.113\.1:5004$" "external address reported (own port, it is free)"
expect_match "$CSP_OUT" "middlebox nat1 id [0-9a-f]{16} epoch [0-9]+: mapped, $(scaled 30)s" "nat1's record"
s1=$(session_of "$CSP_OUT")
expect_match "$(in_ns nat nft list map inet midcom dnat4)" "203\.0\.113\.1 \. udp \. 5004 .*: 192\.168\.1\.2 \. 5004" "DNAT map element"
expect_match "$(nft_set nat pinhole4)" "udp \. 192\.168\.1\.2 \. 5004" "pinhole element"

step "outside connects to 203.0.113.1:5004: the inside server answers, it sees the real client"
out=$(ping_out 5004 6010); indent <<<"$out"; expect_match "$out" "sent 5 replies 5 from 203\.0\.113\.1:5004" "mapped UDP flow"
wait_for_match "$LAB_DIR/udp-inside.log" "echo from 203\.0\.113\.2:6010$" 2

step "TCP: csp setup tcp --incoming --peer any --local-port 8080 --via 192.168.1.1, then outside connects"
csp_run inside setup tcp --incoming --peer any --local-port 8080 --via 192.168.1.1 --lifetime "$(scaled 30)" --machine
expect_eq "$CSP_RC" 0 "TCP csp exit status"
expect_match "$CSP_OUT" "^type=ACCEPT .*from=192\.168\.1\.1:7227 middlebox=true .*mapped=203\.0\.113\.1:8080 " "TCP machine line"
out=$(in_ns outside $FLOWS tcp-send 203.0.113.1 8080 --bytes 100000) || fail "TCP to the mapped address: $out"
indent <<<"$out"; expect_match "$out" "sent 100000 echoed 100000" "mapped TCP connection"
wait_for_match "$LAB_DIR/tcp-inside.log" "conn from 203\.0\.113\.2:[0-9]+ bytes 100000" 3

step "inside2 asks for UDP 5004 too: another external port from 20000-29999"
csp_run inside2 setup udp --incoming --peer any --local-port 5004 --via 192.168.2.1 --lifetime "$(scaled 30)" --machine
expect_eq "$CSP_RC" 0 "inside2 csp exit status"
port2=$(sed -n 's/.* mapped=203\.0\.113\.1:\([0-9]*\) .*/\1/p' <<<"$CSP_OUT")
[ -n "$port2" ] && [ "$port2" -ge 20000 ] && [ "$port2" -le 29999 ] || fail "inside2's external port '$port2' is not in 20000-29999"
out=$(ping_out "$port2" 6001); indent <<<"$out"; expect_match "$out" "sent 5 replies 5 from 203\.0\.113\.1:$port2" "inside2's mapped flow"
wait_for_match "$LAB_DIR/udp-inside2.log" "echo from 203\.0\.113\.2:6001$" 2
expect_no_match "$(cat "$LAB_DIR/udp-inside.log")" "6001" "inside saw inside2's traffic"

step "the client that tried before the mapping existed (from port 6000) gets through now too"
# Its first attempt left an unreplied conntrack entry for 203.0.113.2:6000 → 203.0.113.1:5004
# (addressed to the NAT itself); installing the DNAT must not leave the client stuck behind it.
out=$(ping_out 5004 6000); indent <<<"$out"; expect_match "$out" "sent 5 replies 5 from 203\.0\.113\.1:5004" "mapped UDP flow for the early client"
wait_for_match "$LAB_DIR/udp-inside.log" "echo from 203\.0\.113\.2:6000$" 2

step "midctl sessions on the NAT"
table=$(midctl nat sessions)
indent <<<"$table"
expect_match "$table" "$s1 +udp .*192\.168\.1\.2:5004 +admitted" "inside's UDP session row"
expect_eq "$(status_counter nat mapped)" 3 "mapped counter"

step "csp teardown $s1 192.168.1.1: the mapping and its flow are gone"
csp_run inside teardown "$s1" 192.168.1.1
expect_eq "$CSP_RC" 0 "teardown exit status"
sleep "$(scaled 0.3)"
expect_no_match "$(in_ns nat nft list map inet midcom dnat4)" "203\.0\.113\.1 \. udp \. 5004 " "DNAT element after teardown"
expect_no_match "$(midctl nat sessions)" "$s1" "session after teardown"
out=$(ping_out 5004 6010); indent <<<"$out"; expect_match "$out" "sent 5 replies 0 " "the established UDP flow after teardown"
echo "07-nat-incoming: all checks passed"
