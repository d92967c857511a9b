#!/usr/bin/env bash
# Scenario 3 (issue #3): firewalled incoming UDP. A host behind the firewall signals that it
# accepts a flow from a given peer (SETUP with action listen, sent to the peer's CSP agent); the
# firewall opens exactly that pinhole: the peer reaches that port, no other host reaches it and
# the peer reaches no other port. Then "any peer": the host asks the middlebox itself (--via);
# policy allows it on port 5006 and forbids it on port 5007.
#
#   host 10.200.1.2 ── gw (midcomd gw1) ── peer 10.200.2.2      (fd00:1::2 / fd00:2::2)
#                              └────────── other 10.200.4.2     (fd00:4::2)
source "$(dirname "$0")/lib.sh"
lab_init inudp

step "lab: host — gw — peer, plus another outside host; unsolicited UDP dropped"
lab_line host gw peer
lab_host gw other 4
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"

[policy]
default = "admit"
unsignaled = "drop"
max-lifetime = 600

[[rule]]
name = "no-open-5007"
proto = "udp"
port = 5007
direction = "incoming"
action = "reject"
reason = "port 5007 is not opened to the world"
CONF
)
lab_midcomd gw "$conf"
lab_bg peer "$LAB_DIR/listen4.log" "$BIN/csp" listen --duration 60
lab_bg peer "$LAB_DIR/listen6.log" "$BIN/csp" listen --address :: --duration 60
for port in 5004 5005 5006 5007; do
  lab_serve host "$LAB_DIR/echo4-$port.log" $FLOWS udp-echo "$port" --duration 60
done
lab_serve host "$LAB_DIR/echo6-5004.log" $FLOWS udp-echo 5004 --bind :: --duration 60
sleep 0.5

# ping FROM-NS DEST PORT SPORT: 3 datagrams, prints "sent 3 replies N from ...".
ping() { in_ns "$1" $FLOWS udp-ping "$2" "$3" --sport "$4" --count 3 --interval 0.02 --wait 0.4; }
expect_replies() { local out; out=$(ping "$1" "$2" "$3" "$4"); indent <<<"$out"; expect_match "$out" "sent 3 replies $5 " "$6"; }

step "before signaling: the peer cannot reach host:5004"
expect_replies peer 10.200.1.2 5004 6000 0 "unsolicited peer → host:5004"

step "host: csp setup udp --incoming --peer 10.200.2.2 --local-port 5004 --lifetime 30"
csp_run host setup udp --incoming --peer 10.200.2.2 --local-port 5004 --lifetime 30
expect_eq "$CSP_RC" 0 "incoming setup exit status"
expect_match "$CSP_OUT" "udp 10\.200\.2\.2:\* -> 10\.200\.1\.2:5004" "FLOW: the peer (any port) to the host's port"
expect_match "$CSP_OUT" "ACCEPT from 10\.200\.2\.2:7227 .*lifetime 30s" "the peer's agent accepted"
expect_match "$CSP_OUT" "middlebox gw1 .*: admitted, 30s" "gw1's record"
s4=$(session_of "$CSP_OUT")
wait_for_match "$LAB_DIR/listen4.log" "SETUP $s4 from 10\.200\.1\.2:[0-9]+ .* via 1 middlebox" 2
expect_match "$(nft_set gw admit4_anyport)" "10\.200\.2\.2 \. udp \. 10\.200\.1\.2 \. 5004 .*timeout 30s" "pinhole element: peer → host:5004, any source port"
expect_eq "$(nft_element_count gw)" 1 "elements in the midcom sets (exactly the one pinhole)"

step "exactly that pinhole: the peer reaches host:5004 from any port; nothing else gets in"
expect_replies peer 10.200.1.2 5004 6000 3 "peer:6000 → host:5004"
expect_replies peer 10.200.1.2 5004 6001 3 "peer:6001 → host:5004"
expect_replies peer 10.200.1.2 5005 6002 0 "peer → host:5005 (not signaled)"
expect_replies other 10.200.1.2 5004 6000 0 "other host → host:5004 (not the signaled peer)"
expect_no_match "$(cat "$LAB_DIR/echo4-5005.log")" "echo from" "host:5005 saw traffic"
wait_for_match "$LAB_DIR/echo4-5004.log" "echo from 10\.200\.2\.2:6001" 2
expect_no_match "$(cat "$LAB_DIR/echo4-5004.log")" "echo from 10\.200\.4\.2" "host:5004 saw the other host"

step "IPv6: csp setup udp --incoming --peer fd00:2::2 --local-port 5004"
csp_run host setup udp --incoming --peer fd00:2::2 --local-port 5004 --lifetime 30
expect_eq "$CSP_RC" 0 "IPv6 incoming setup exit status"
expect_match "$CSP_OUT" "middlebox gw1 .*: admitted, 30s" "gw1's IPv6 record"
expect_match "$(nft_set gw admit6_anyport)" "fd00:2::2 \. udp \. fd00:1::2 \. 5004 .*timeout 30s" "IPv6 pinhole element"
expect_eq "$(nft_element_count gw)" 2 "elements in the midcom sets (IPv4 and IPv6 pinholes)"
expect_replies peer fd00:1::2 5004 6000 3 "IPv6 peer → host:5004"
expect_replies other fd00:1::2 5004 6000 0 "IPv6 other host → host:5004"

step "any peer, allowed by policy: csp setup udp --incoming --peer any --local-port 5006 --via 10.200.1.1"
expect_replies other 10.200.1.2 5006 6000 0 "other host → host:5006 before signaling"
csp_run host setup udp --incoming --peer any --local-port 5006 --via 10.200.1.1 --lifetime 30
expect_eq "$CSP_RC" 0 "any-peer setup exit status"
expect_match "$CSP_OUT" "udp 0\.0\.0\.0:\* -> 10\.200\.1\.2:5006" "FLOW: any peer to the host's port"
expect_match "$CSP_OUT" "ACCEPT from 10\.200\.1\.1:7227 \(middlebox\) .*lifetime 30s" "the middlebox answered itself"
expect_match "$CSP_OUT" "middlebox gw1 .*: admitted, 30s" "gw1's record"
expect_match "$(nft_set gw pinhole4)" "udp \. 10\.200\.1\.2 \. 5006 .*timeout 30s" "any-peer pinhole element"
expect_eq "$(nft_element_count gw)" 3 "elements in the midcom sets"
expect_replies peer 10.200.1.2 5006 6003 3 "peer → host:5006"
expect_replies other 10.200.1.2 5006 6004 3 "other host → host:5006"
expect_replies other 10.200.1.2 5005 6005 0 "other host → host:5005 (still closed)"

step "any peer, forbidden by policy on port 5007: REJECT, nothing opened"
csp_run host setup udp --incoming --peer any --local-port 5007 --via 10.200.1.1 --lifetime 30
expect_eq "$CSP_RC" 1 "forbidden any-peer setup exit status"
expect_match "$CSP_OUT" "REJECT from 10\.200\.1\.1:7227 \(middlebox\) .*: policy-denied: port 5007 is not opened to the world" "reject reason"
expect_eq "$(nft_element_count gw)" 3 "elements in the midcom sets after the REJECT"
expect_replies other 10.200.1.2 5007 6006 0 "other host → host:5007"

step "midctl sessions: the three pinholes"
table=$(midctl gw sessions)
indent <<<"$table"
expect_match "$table" "$s4 +udp +10\.200\.2\.2:\* +10\.200\.1\.2:5004 +admitted" "given-peer session row"
expect_eq "$(midctl gw sessions --json | $PY -c 'import json,sys; print(len(json.load(sys.stdin)))')" 3 "sessions in midctl"

step "csp teardown of the any-peer pinhole: the element goes and so do its connections"
s6006=$(midctl gw sessions | awk '/10\.200\.1\.2:5006/ {print $1}')
[ -n "$s6006" ] || fail "no session for the any-peer pinhole"
in_ns host "$BIN/csp" teardown "$s6006" 10.200.1.1 >/dev/null
for _ in $(seq 1 30); do midctl gw sessions | grep -q "$s6006" || break; sleep 0.1; done
expect_no_match "$(midctl gw sessions)" "$s6006" "session after teardown"
expect_no_match "$(nft_set gw pinhole4)" "10\.200\.1\.2 \. 5006" "pinhole element after teardown"
expect_eq "$(in_ns gw conntrack -L -p udp --orig-dst 10.200.1.2 --orig-port-dst 5006 2>/dev/null | wc -l)" 0 "conntrack entries through the removed pinhole"
expect_replies other 10.200.1.2 5006 6004 0 "the other host's established flow after teardown"
echo "03-firewalled-incoming-udp: all checks passed"
