#!/usr/bin/env bash
# Moving sessions, scenario 5 (docs/PROTOCOL.md 6.7, 10.10): multihoming over two paths through
# two gateways. The client has two uplinks (via gwA and via gwB) to a server network both
# gateways reach. It sets up a signed UDP session over gwA (path 0) and adds path 1 over gwB with
# ADD-PATH (sent over that path: gwB never saw the session and sets the path up, after the new
# address proved itself); data flow over both paths; then the gwA uplink fails and the data keep
# flowing over path 1. At gwA, which knows the session, an ADD-PATH signed by another key adds
# nothing (at gwB, which does not, such a request is simply a new session of that key, under policy).
#
#   client 10.206.1.2 ── gwA ──┐
#                               ├── lan ── server 10.206.2.2 (csp listen, udp echo 5000)
#   client 10.206.3.2 ── gwB ──┘   (gwA 10.206.2.1, gwB 10.206.2.3)
source "$(dirname "$0")/lib.sh"
lab_init multihome

step "lab: a client with two uplinks through gwA and gwB to one server network"
lab_ns client; lab_ns gwa; lab_ns gwb; lab_ns server
lab_link client gwa; lab_link client gwb; lab_link gwa server; lab_link gwb server
in_ns server ip link add lan type bridge
in_ns server ip link set to-gwa master lan
in_ns server ip link set to-gwb master lan
in_ns server ip link set lan up
lab_addr server lan 10.206.2.2/24
lab_addr gwa to-server 10.206.2.1/24
lab_addr gwb to-server 10.206.2.3/24
lab_addr client to-gwa 10.206.1.2/24; lab_addr gwa to-client 10.206.1.1/24
lab_addr client to-gwb 10.206.3.2/24; lab_addr gwb to-client 10.206.3.1/24
in_ns server ip route add 10.206.1.0/24 via 10.206.2.1
in_ns server ip route add 10.206.3.0/24 via 10.206.2.3
# The client picks the uplink by source address (policy routing), as a multihomed host does.
in_ns client ip route add default via 10.206.1.1
in_ns client ip route add default via 10.206.3.1 table 100
in_ns client ip rule add from 10.206.3.2 table 100
lab_forwarding gwa; lab_forwarding gwb
for gw in gwa gwb; do lab_midcomd "$gw" "$(lab_signaling_conf "$gw" "$gw")"; done
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 90
lab_serve server "$LAB_DIR/echo.log" $FLOWS udp-echo 5000 --duration 90
export CSP_STATE_DIR="$LAB_DIR/csp-state"
in_ns client "$BIN/csp" keygen --key "$LAB_DIR/client.key" | indent
"$BIN/csp" keygen --key "$LAB_DIR/other.key" >/dev/null
sleep 0.3
replies() { in_ns client $FLOWS udp-ping 10.206.2.2 5000 --bind "$1" --sport 4000 --count 5 --wait 0.4 | sed -n 's/.*replies \([0-9]*\).*/\1/p'; }

step "path 0: a signed setup over gwA"
csp_run client setup udp 10.206.2.2:5000 --sport 4000 --source 10.206.1.2 --lifetime 60 --key "$LAB_DIR/client.key"
expect_eq "$CSP_RC" 0 "setup over gwA"
s=$(session_of "$CSP_OUT")
expect_eq "$(replies 10.206.1.2)" 5 "replies over path 0"
expect_eq "$(replies 10.206.3.2)" 0 "nothing over gwB before ADD-PATH"

step "at gwA, which knows the session, an ADD-PATH signed by another key adds nothing"
lab_addr client to-gwa 10.206.1.3/24
csp_run client add-path "$s" --path-id 2 --from 10.206.1.3 --key "$LAB_DIR/other.key"
expect_eq "$CSP_RC" 1 "foreign ADD-PATH refused"
expect_match "$CSP_OUT" "authentication-failed" "refusal"
expect_eq "$(replies 10.206.1.3)" 0 "nothing from the foreign path's address"

step "path 1: ADD-PATH over gwB, which never saw the session"
csp_run client add-path "$s" --path-id 1 --from 10.206.3.2 --key "$LAB_DIR/client.key"
expect_eq "$CSP_RC" 0 "add-path over gwB"
expect_match "$CSP_OUT" "challenged by middlebox [0-9a-f]{16}: proved our address" "the new path's address proved itself"
expect_match "$CSP_OUT" "middlebox gwb id [0-9a-f]{16} epoch [0-9]+: admitted" "gwB's record"
expect_eq "$(replies 10.206.3.2)" 5 "replies over path 1"
expect_eq "$(replies 10.206.1.2)" 5 "path 0 still works"
expect_match "$(nft_set gwb admit4)" "10\.206\.3\.2 \. udp \. 4000 \. 10\.206\.2\.2 \. 5000" "gwB's admission of path 1"
expect_match "$(midctl gwb sessions)" "$s +udp +10\.206\.3\.2:4000" "gwB holds the session for path 1"

step "a second path through gwA shows in midctl sessions under its session"
lab_addr client to-gwa 10.206.1.4/24
csp_run client add-path "$s" --path-id 2 --from 10.206.1.4 --key "$LAB_DIR/client.key"
expect_eq "$CSP_RC" 0 "add-path 2 over gwA"
expect_match "$(midctl gwa sessions)" "\+path 2 +udp +10\.206\.1\.4:4000 +10\.206\.2\.2:5000" "path 2 listed"
expect_eq "$(replies 10.206.1.4)" 5 "replies over path 2"
csp_run client remove-path "$s" --path-id 2 --key "$LAB_DIR/client.key"
expect_eq "$CSP_RC" 0 "remove-path 2"
expect_no_match "$(midctl gwa sessions)" "\+path 2" "path 2 gone from the listing"
sleep 1.5  # the path's connections are cleared from conntrack by the clean-up thread
expect_eq "$(replies 10.206.1.4)" 0 "nothing over path 2 after REMOVE-PATH"

step "the gwA uplink fails: path 1 carries on"
in_ns client ip link set to-gwa down
expect_eq "$(replies 10.206.3.2)" 5 "replies over path 1 with path 0 down"
expect_eq "$(status_counter gwb paths_added)" 1 "paths added at gwB"
