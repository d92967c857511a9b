#!/usr/bin/env bash
# Scenario 6 (issue #3): NAT traversal, outgoing (IPv4 only: NAT is IPv4). A client behind a NAT
# gateway signals a UDP flow; the NAT picks the external port (the client's own port when free),
# forwards the SETUP with its record carrying MAPPED-ADDRESS, installs the SNAT when the server's
# ACCEPT passes, and appends its "mapped" record: csp prints "mapped to 203.0.113.1:PORT". The
# server sees exactly that address, and its replies come back through the NAT. A second inside
# host asking for the same port gets another external port from the configured range. TEARDOWN
# removes the mapping and stops the flow.
#
#   inside 192.168.1.2 ──┐
#                        nat (midcomd nat1, external 203.0.113.1) ── outside 203.0.113.2
#   inside2 192.168.2.2 ─┘
source "$(dirname "$0")/lib.sh"
lab_init natout

step "lab: inside, inside2 — nat — outside; the outside host has no route to the inside"
lab_nat
lab_nat_host inside2 2
conf=$(lab_nat_conf)
lab_nat_signaling nat to-outside
lab_midcomd nat "$conf"
lab_bg outside "$LAB_DIR/listen.log" "$BIN/csp" listen --duration "$(scaled 60)"
lab_serve outside "$LAB_DIR/echo.log" $FLOWS udp-echo 5000 --duration "$(scaled 60)"
sleep "$(scaled 0.5)"

step "before signaling: inside:4000 → outside:5000 gets nowhere"
out=$(in_ns inside $FLOWS udp-ping 203.0.113.2 5000 --sport 4000 --count 3 --wait 0.4)
indent <<<"$out"; expect_match "$out" "sent 3 replies 0 " "unsignaled flow"

step "inside: csp setup udp 203.0.113.2:5000 --sport 4000 --lifetime $(scaled 30)"
csp_run inside setup udp 203.0.113.2:5000 --sport 4000 --lifetime "$(scaled 30)"
expect_eq "$CSP_RC" 0 "csp exit status"
expect_match "$CSP_OUT" "ACCEPT from 203\.0\.113\.2:7227 .*lifetime $(scaled 30)s" "the server's ACCEPT"
expect_match "$CSP_OUT" "^  mapped to 203\.0\.113\.1:4000$" "mapping reported to the host (own port, it is free)"
expect_match "$CSP_OUT" "middlebox nat1 id [0-9a-f]{16} epoch [0-9]+: mapped, $(scaled 30)s" "nat1's record"
s1=$(session_of "$CSP_OUT")
wait_for_match "$LAB_DIR/listen.log" "SETUP $s1 from 203\.0\.113\.1:[0-9]+ .* via 1 middlebox" 2
snat=$(in_ns nat nft list map inet midcom snat4)
expect_match "$snat" "192\.168\.1\.2 \. udp \. 4000 .*: 203\.0\.113\.1 \. 4000" "SNAT map element"
expect_match "$(nft_set nat admit4)" "192\.168\.1\.2 \. udp \. 4000 \. 203\.0\.113\.2 \. 5000" "admission element"

step "data: the server sees 203.0.113.1:4000 and its replies reach the client"
out=$(in_ns inside $FLOWS udp-ping 203.0.113.2 5000 --sport 4000 --count 5 --wait 0.4)
indent <<<"$out"; expect_match "$out" "sent 5 replies 5 from 203\.0\.113\.2:5000" "translated flow"
wait_for_match "$LAB_DIR/echo.log" "echo from 203\.0\.113\.1:4000$" 2
expect_no_match "$(cat "$LAB_DIR/echo.log")" "echo from 192\.168\." "the server saw an inside address"

step "inside2 wants the same port 4000: it gets another external port from 20000-29999"
csp_run inside2 setup udp 203.0.113.2:5000 --sport 4000 --lifetime "$(scaled 30)" --machine
expect_eq "$CSP_RC" 0 "inside2 csp exit status"
expect_match "$CSP_OUT" "^type=ACCEPT .* mapped=203\.0\.113\.1:[0-9]+ " "inside2 machine line"
port2=$(sed -n 's/.* mapped=203\.0\.113\.1:\([0-9]*\) .*/\1/p' <<<"$CSP_OUT")
[ -n "$port2" ] && [ "$port2" -ge 20000 ] && [ "$port2" -le 29999 ] || fail "inside2's external port '$port2' is not in 20000-29999"
out=$(in_ns inside2 $FLOWS udp-ping 203.0.113.2 5000 --sport 4000 --count 5 --wait 0.4)
indent <<<"$out"; expect_match "$out" "sent 5 replies 5 from 203\.0\.113\.2:5000" "inside2's translated flow"
wait_for_match "$LAB_DIR/echo.log" "echo from 203\.0\.113\.1:$port2$" 2

step "midctl sessions on the NAT"
table=$(midctl nat sessions)
indent <<<"$table"
expect_match "$table" "$s1 +udp +192\.168\.1\.2:4000 +203\.0\.113\.2:5000 +admitted" "inside's session row"
expect_eq "$(status_counter nat mapped)" 2 "mapped counter"

step "csp teardown $s1 203.0.113.2: the NAT removes its mapping, and the flow stops"
csp_run inside teardown "$s1" 203.0.113.2
expect_eq "$CSP_RC" 0 "teardown exit status"
sleep "$(scaled 0.3)"
expect_no_match "$(in_ns nat nft list map inet midcom snat4)" "192\.168\.1\.2 \. udp \. 4000 " "SNAT element after teardown"
expect_no_match "$(midctl nat sessions)" "$s1" "session after teardown"
out=$(in_ns inside $FLOWS udp-ping 203.0.113.2 5000 --sport 4000 --count 5 --wait 0.4)
indent <<<"$out"; expect_match "$out" "sent 5 replies 0 " "the established flow after teardown"
echo "06-nat-outgoing: all checks passed"
