#!/usr/bin/env bash
# Scenario 2 (issue #3): firewalled outgoing UDP. The gateway drops unsolicited UDP; a signaled
# outgoing flow is admitted and its replies come back; an admission that is not refreshed expires
# (element, session and conntrack entry gone, so even the established flow stops); REFRESH renews
# one; a REFRESH after expiry is answered unknown-session and a new SETUP restores the flow.
#
#   client 10.200.1.2 ── gw (midcomd gw1) ── server 10.200.2.2   (fd00:1::2 / fd00:2::2)
#   IPv4 flow 10.200.1.2:40000 → 10.200.2.2:5004 is refreshed, IPv6 flow [fd00:1::2]:40000 →
#   [fd00:2::2]:5004 is not: at t = 5 s one lives and the other is gone.
source "$(dirname "$0")/lib.sh"
lab_init outudp

step "lab: client — gw — server, policy: unsolicited UDP dropped"
lab_basic
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
lab_bg server "$LAB_DIR/listen4.log" "$BIN/csp" listen --duration 60
lab_bg server "$LAB_DIR/listen6.log" "$BIN/csp" listen --address :: --duration 60
lab_serve server "$LAB_DIR/echo4.log" $FLOWS udp-echo 5004 --duration 60
lab_serve server "$LAB_DIR/echo6.log" $FLOWS udp-echo 5004 --bind :: --duration 60
sleep 0.5

ping4() { in_ns client $FLOWS udp-ping 10.200.2.2 5004 --sport 40000 --count 5 --interval 0.02 --wait 0.4; }
ping6() { in_ns client $FLOWS udp-ping fd00:2::2 5004 --sport 40000 --count 5 --interval 0.02 --wait 0.4; }

step "unsignaled: 5 datagrams to 10.200.2.2:5004 and [fd00:2::2]:5004 are dropped at the gateway"
out=$(ping4); indent <<<"$out"; expect_match "$out" "sent 5 replies 0 " "unsignaled IPv4 flow"
out=$(ping6); indent <<<"$out"; expect_match "$out" "sent 5 replies 0 " "unsignaled IPv6 flow"
# midcomd judges the first datagram of each flow; its drop-cache element drops the other 4 in the kernel.
expect_eq "$(status_counter gw unsignaled_dropped)" 2 "unsignaled flows judged (and dropped) by midcomd"
expect_match "$(nft_set gw drop4)" "10\.200\.1\.2 \. udp \. 40000 \. 10\.200\.2\.2 \. 5004 counter packets 4 " "IPv4 drop-cache element"
expect_match "$(nft_set gw drop6)" "fd00:1::2 \. udp \. 40000 \. fd00:2::2 \. 5004 counter packets 4 " "IPv6 drop-cache element"
expect_no_match "$(cat "$LAB_DIR/echo4.log" "$LAB_DIR/echo6.log")" "echo from" "server saw unsignaled datagrams"

step "csp setup udp 10.200.2.2:5004 --sport 40000 --lifetime 4 (and the same over IPv6)"
t0=$(now_s)
csp_run client setup udp 10.200.2.2:5004 --sport 40000 --lifetime 4
expect_eq "$CSP_RC" 0 "IPv4 setup exit status"
expect_match "$CSP_OUT" "ACCEPT from 10\.200\.2\.2:7227 .*lifetime 4s" "IPv4 ACCEPT"
expect_match "$CSP_OUT" "middlebox gw1 .*: admitted, 4s" "gw1's IPv4 record"
s4=$(session_of "$CSP_OUT")
csp_run client setup udp '[fd00:2::2]:5004' --sport 40000 --lifetime 4
expect_eq "$CSP_RC" 0 "IPv6 setup exit status"
expect_match "$CSP_OUT" "middlebox gw1 .*: admitted, 4s" "gw1's IPv6 record"
s6=$(session_of "$CSP_OUT")
expect_match "$(nft_set gw admit4)" "10\.200\.1\.2 \. udp \. 40000 \. 10\.200\.2\.2 \. 5004 .*timeout 4s" "IPv4 element"
expect_match "$(nft_set gw admit6)" "fd00:1::2 \. udp \. 40000 \. fd00:2::2 \. 5004 .*timeout 4s" "IPv6 element"

step "the admitted flows work both ways (replies ride conntrack)"
out=$(ping4); indent <<<"$out"; expect_match "$out" "sent 5 replies 5 from 10\.200\.2\.2:5004" "admitted IPv4 flow"
out=$(ping6); indent <<<"$out"; expect_match "$out" "sent 5 replies 5 from fd00:2::2:5004" "admitted IPv6 flow"
[ -n "$(in_ns gw conntrack -L -p udp --orig-port-src 40000 --orig-port-dst 5004 2>/dev/null)" ] || fail "no conntrack entry for the admitted IPv4 flow"

sleep_until "$(after "$t0" 2)"
step "t=2s: csp refresh $s4 10.200.2.2 --lifetime 5 (IPv6 session not refreshed)"
t1=$(now_s)
csp_run client refresh "$s4" 10.200.2.2 --lifetime 5
expect_eq "$CSP_RC" 0 "refresh exit status"
expect_match "$CSP_OUT" "ACCEPT from 10\.200\.2\.2:7227 .*lifetime 5s" "REFRESH answered"
expect_match "$CSP_OUT" "middlebox gw1 .*: admitted, 5s" "gw1 renewed the admission"
expect_match "$(nft_set gw admit4)" "10\.200\.1\.2 \. udp \. 40000 \. 10\.200\.2\.2 \. 5004 .*timeout 5s" "IPv4 element after REFRESH"

sleep_until "$(after "$t0" 4.8)"
step "t=4.8s: past the original 4 s: the refreshed IPv4 flow lives, the IPv6 flow has expired"
expect_match "$(nft_set gw admit4)" "10\.200\.1\.2 \. udp \. 40000 \. 10\.200\.2\.2 \. 5004" "refreshed IPv4 element"
expect_match "$(midctl gw sessions)" "$s4 +udp .* admitted" "refreshed IPv4 session"
out=$(ping4); indent <<<"$out"; expect_match "$out" "sent 5 replies 5 " "refreshed IPv4 flow"
expect_no_match "$(nft_set gw admit6)" "fd00:2::2 \. 5004" "expired IPv6 element"
expect_no_match "$(midctl gw sessions)" "$s6" "expired IPv6 session"
expect_eq "$(in_ns gw conntrack -L -f ipv6 -p udp --orig-port-src 40000 --orig-port-dst 5004 2>/dev/null | wc -l)" 0 "conntrack entries of the expired IPv6 flow"
out=$(ping6); indent <<<"$out"; expect_match "$out" "sent 5 replies 0 " "established IPv6 flow after expiry"

sleep_until "$(after "$t1" 5.8)"
step "t=7.8s: no second refresh: the IPv4 admission has expired too, and its established flow stops"
expect_no_match "$(nft_set gw admit4)" "10\.200\.2\.2 \. 5004" "expired IPv4 element"
expect_no_match "$(midctl gw sessions)" "$s4" "expired IPv4 session"
expect_eq "$(in_ns gw conntrack -L -f ipv4 -p udp --orig-port-src 40000 --orig-port-dst 5004 2>/dev/null | wc -l)" 0 "conntrack entries of the expired IPv4 flow"
out=$(ping4); indent <<<"$out"; expect_match "$out" "sent 5 replies 0 " "established IPv4 flow after expiry"
expect_eq "$(status_counter gw expired)" 2 "expired counter"

step "REFRESH after expiry: the gateway answers unknown-session; a new SETUP restores the flow"
csp_run client refresh "$s4" 10.200.2.2 --lifetime 5
expect_eq "$CSP_RC" 1 "refresh exit status after expiry"
expect_match "$CSP_OUT" "REJECT from .*\(middlebox\).*unknown-session" "REFRESH of an expired session"
csp_run client setup udp 10.200.2.2:5004 --sport 40000 --lifetime 30
expect_eq "$CSP_RC" 0 "new setup exit status"
out=$(ping4); indent <<<"$out"; expect_match "$out" "sent 5 replies 5 " "flow after the new SETUP"
echo "02-firewalled-outgoing-udp: all checks passed"
