#!/usr/bin/env bash
# Moving sessions, scenario 2 (docs/PROTOCOL.md 6.7, 10.8): a mobile server. The server signs
# its answers (`csp listen --key`), so gw1 learns its key with the ACCEPT. The server's address
# changes; it sends REBIND (`csp rebind` on the server: this host is the session's responder) to
# the client; gw1 challenges the server's new address, the client's agent accepts, gw1 moves the
# remote side of the admission, and the client keeps talking to the server at its new address.
# A REBIND for the responder's side signed by another key moves nothing.
#
#   client 10.200.1.2 (csp listen, to answer) ── gw1 ── server 10.200.2.2 → 10.200.2.77
source "$(dirname "$0")/lib.sh"
lab_init mserver

step "lab: client — gw1 — server; both hosts have keys and an agent"
lab_basic
conf=$(lab_signaling_conf gw gw1)
lab_midcomd gw "$conf"
"$BIN/csp" keygen --key "$LAB_DIR/client.key" >/dev/null
"$BIN/csp" keygen --key "$LAB_DIR/server.key" >/dev/null
"$BIN/csp" keygen --key "$LAB_DIR/other.key" >/dev/null
lab_bg server "$LAB_DIR/server-listen.log" "$BIN/csp" listen --duration 90 --key "$LAB_DIR/server.key" --state-dir "$LAB_DIR/server-state"
lab_bg client "$LAB_DIR/client-listen.log" "$BIN/csp" listen --duration 90
lab_serve server "$LAB_DIR/echo.log" $FLOWS udp-echo 5000 --duration 90
wait_for_match "$LAB_DIR/server-listen.log" "^listening on" 5
replies() { in_ns client $FLOWS udp-ping "$1" 5000 --sport 4000 --count 3 --wait 0.3 | sed -n 's/.*replies \([0-9]*\).*/\1/p'; }

step "the client sets up a signed session; the server's ACCEPT is signed too"
csp_run client setup udp 10.200.2.2:5000 --sport 4000 --lifetime 60 --key "$LAB_DIR/client.key" --state-dir "$LAB_DIR/client-state"
expect_eq "$CSP_RC" 0 "setup"
expect_match "$CSP_OUT" "reply signed by key" "the server signed its ACCEPT"
s=$(session_of "$CSP_OUT")
expect_eq "$(replies 10.200.2.2)" 3 "data to the server"

step "the server moves to 10.200.2.77"
moved_at=$(now_s)
in_ns server ip addr del 10.200.2.2/24 dev to-gw
in_ns server ip addr add 10.200.2.77/24 dev to-gw
in_ns server ip route replace default via 10.200.2.1
expect_eq "$(replies 10.200.2.77)" 0 "the new address is not admitted yet"

step "a REBIND of the server's side signed by another key moves nothing"
cp -r "$LAB_DIR/server-state" "$LAB_DIR/forger-state"
csp_run server rebind "$s" --from 10.200.2.77 --key "$LAB_DIR/other.key" --state-dir "$LAB_DIR/forger-state"
expect_eq "$CSP_RC" 1 "foreign REBIND refused"
expect_match "$CSP_OUT" "authentication-failed" "refusal"

step "the server's own REBIND: challenged, accepted by the client, the admission follows the server"
csp_run server rebind "$s" --from 10.200.2.77 --key "$LAB_DIR/server.key" --state-dir "$LAB_DIR/server-state"
expect_eq "$CSP_RC" 0 "server rebind"
expect_match "$CSP_OUT" "challenged by middlebox [0-9a-f]{16}: proved our address" "the server's new address proved itself"
expect_match "$CSP_OUT" "middlebox gw1 id [0-9a-f]{16} epoch [0-9]+: rebound" "gw1's record"
expect_eq "$(replies 10.200.2.77)" 3 "the client talks to the server at its new address"
echo "      server moved → data again: $(awk -v a="$moved_at" -v b="$(now_s)" 'BEGIN { printf "%.2f", b - a }') s"
elements=$(nft_set gw admit4)
expect_match "$elements" "10\.200\.1\.2 \. udp \. 4000 \. 10\.200\.2\.77 \. 5000" "the moved admission"
wait_until_gone 4 "10\.200\.2\.2 \. 5000" "the old one goes after the rebind grace" nft_set gw admit4
wait_for_match "$LAB_DIR/client-listen.log" "REBIND $s .*-> ACCEPT" 3
