#!/usr/bin/env bash
# Engine regression: a session belongs to the host that created it. Host A opens a pinhole from
# any peer through the gateway (SETUP to the middlebox itself) with session ID S; host B, another
# host on the same LAN, sends the same request with the same S for its own address. B must get
# REJECT source-denied (66) and A's pinhole must stay exactly as it was (PROTOCOL.md 5.1: only the
# session's key or, unsigned, the session's addresses may replace a session).
#
#   A 10.200.1.2 ──┐
#                  lan bridge, gw 10.200.1.1 (midcomd gw1) 10.200.2.1 ── peer 10.200.2.2
#   B 10.200.1.3 ──┘
source "$(dirname "$0")/lib.sh"
lab_init owner

step "lab: hosts A and B on one LAN bridge behind gw, an outside peer"
lab_ns hosta; lab_ns hostb; lab_ns gw; lab_ns peer
lab_link hosta gw; lab_link hostb gw; lab_link gw peer
in_ns gw ip link add lan type bridge
in_ns gw ip link set to-hosta master lan
in_ns gw ip link set to-hostb master lan
in_ns gw ip link set lan up
lab_addr gw lan 10.200.1.1/24
lab_addr gw to-peer 10.200.2.1/24
lab_addr hosta to-gw 10.200.1.2/24
lab_addr hostb to-gw 10.200.1.3/24
lab_addr peer to-gw 10.200.2.2/24
in_ns hosta ip route add default via 10.200.1.1
in_ns hostb ip route add default via 10.200.1.1
in_ns peer ip route add default via 10.200.2.1
lab_forwarding gw
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"

[policy]
default = "admit"
unsignaled = "drop"
max-lifetime = 600
CONF
)
lab_midcomd gw "$conf"
lab_serve hosta "$LAB_DIR/echo-a.log" $FLOWS udp-echo 6000 --duration 30
lab_serve hostb "$LAB_DIR/echo-b.log" $FLOWS udp-echo 6000 --duration 30
S=5e55101d0000a001

ping() { in_ns peer $FLOWS udp-ping "$1" 6000 --sport "$2" --count 3 --interval 0.02 --wait 0.4; }
expect_replies() { local out; out=$(ping "$1" "$2"); indent <<<"$out"; expect_match "$out" "sent 3 replies $3 " "$4"; }

step "A: csp setup udp --incoming --peer any --local-port 6000 --via 10.200.1.1 --session $S"
csp_run hosta setup udp --incoming --peer any --local-port 6000 --via 10.200.1.1 --lifetime 60 --session "$S"
expect_eq "$CSP_RC" 0 "A's setup exit status"
expect_match "$CSP_OUT" "^session $S: udp 0\.0\.0\.0:\* -> 10\.200\.1\.2:6000" "A's FLOW"
expect_match "$CSP_OUT" "ACCEPT from 10\.200\.1\.1:7227 \(middlebox\)" "the middlebox accepted A"
expect_match "$(nft_set gw pinhole4)" "udp \. 10\.200\.1\.2 \. 6000 " "A's pinhole element"

step "B: the same request with the same session ID $S for its own address: REJECT source-denied"
csp_run hostb setup udp --incoming --peer any --local-port 6000 --via 10.200.1.1 --lifetime 60 --session "$S" --attempts 1
[ "$CSP_RC" -ne 0 ] || fail "B took over A's session $S: csp exited 0 (expected a REJECT, exit 1)"
expect_eq "$CSP_RC" 1 "B's setup exit status (REJECT)"
expect_match "$CSP_OUT" "REJECT from 10\.200\.1\.1:7227 \(middlebox\) .*: source-denied" "B's reject reason (result 66)"

step "the pinhole set holds A's element only"
set4=$(nft_set gw pinhole4)
indent <<<"$(grep -E 'udp \.' <<<"$set4" || true)"
expect_match "$set4" "udp \. 10\.200\.1\.2 \. 6000 " "A's pinhole element after B's attempt"
expect_no_match "$set4" "10\.200\.1\.3" "a pinhole element for B"
expect_eq "$(nft_element_count gw)" 1 "elements in the midcom sets"

step "midctl sessions: $S is A's flow"
table=$(midctl gw sessions)
indent <<<"$table"
expect_match "$table" "^$S +udp +0\.0\.0\.0:\* +10\.200\.1\.2:6000 +admitted" "session row of $S"
expect_no_match "$table" "10\.200\.1\.3" "a session for B"

step "traffic: the peer reaches A:6000, not B:6000"
expect_replies 10.200.1.2 7001 3 "peer → A:6000 through A's pinhole"
expect_replies 10.200.1.3 7002 0 "peer → B:6000 (never admitted)"
expect_no_match "$(cat "$LAB_DIR/echo-b.log")" "echo from" "B's port saw outside traffic"
echo "engine-pinhole-owner: all checks passed"
