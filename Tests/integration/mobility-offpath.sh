#!/usr/bin/env bash
# Moving sessions, scenario 4 (docs/PROTOCOL.md 10.9): the off-path firewall of a mobile host.
# At home, the laptop's flows cross its site firewall fw (midcomd home-fw: NAT, a rule forbidding
# UDP port 25). Away, on a visited network behind another gateway (midcomd visited), fw is off
# the path. The laptop's key is a [[known-key]] of fw with its home address: it asks fw for each
# flow (csp setup --home), fw decides it under the home address's policy and relays the admitted
# ones through its own address (REDIRECT to a relay endpoint; DNAT + SNAT + admission in fw's
# kernel), so the site's policy still applies and fw still sees, counts and ends the traffic.
#
#   laptop 10.1.0.5 (home) ── fw (home-fw, 203.0.113.1) ──┐
#   laptop 10.8.0.5 (away) ── vgw (visited) ── 100.64.8.1 ┴ core ── server 198.51.100.2
source "$(dirname "$0")/lib.sh"
lab_init offpath

step "lab: laptop at home behind fw; a visited network behind vgw; the server beyond core"
for n in laptop fw vgw core server; do lab_ns $n; done
lab_link laptop fw; lab_link laptop vgw; lab_link fw core; lab_link vgw core; lab_link core server
lab_addr laptop to-fw 10.1.0.5/24; in_ns laptop ip route add default via 10.1.0.1
lab_addr fw to-laptop 10.1.0.1/24; lab_addr fw to-core 203.0.113.1/24; in_ns fw ip route add default via 203.0.113.254
lab_addr vgw to-laptop 10.8.0.1/24; lab_addr vgw to-core 100.64.8.1/24; in_ns vgw ip route add default via 100.64.8.254
lab_addr core to-fw 203.0.113.254/24; lab_addr core to-vgw 100.64.8.254/24; lab_addr core to-server 198.51.100.254/24
in_ns core ip route add 10.8.0.0/24 via 100.64.8.1
lab_addr server to-core 198.51.100.2/24; in_ns server ip route add default via 198.51.100.254
for n in fw vgw core; do lab_forwarding $n; done
export CSP_STATE_DIR="$LAB_DIR/csp-state"
laptop_key=$("$BIN/csp" keygen --key "$LAB_DIR/laptop.key" | cut -d' ' -f1-2)
"$BIN/csp" keygen --key "$LAB_DIR/stranger.key" >/dev/null
fwconf=$(lab_conf fw <<CONF
[daemon]
name = "home-fw"

[policy]
default = "admit"
unsignaled = "drop"

[[rule]]
name = "no-udp-25"
proto = "udp"
port = 25
action = "reject"
reason = "site policy: no UDP port 25"

[nat]
external-address = "203.0.113.1"
port-range = "20000-29999"

[[known-key]]
name = "laptop"
key = "$laptop_key"
home-address = "10.1.0.5"
CONF
)
lab_midcomd fw "$fwconf"
lab_nat_signaling fw to-core
lab_midcomd vgw "$(lab_signaling_conf vgw visited)"
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 90
lab_serve server "$LAB_DIR/echo.log" $FLOWS udp-echo 5000 --duration 90
lab_serve server "$LAB_DIR/echo25.log" $FLOWS udp-echo 25 --duration 90
sleep 0.3
ping_to() { in_ns laptop $FLOWS udp-ping "$1" "$2" --sport "$3" --count 5 --interval 0.02 --wait 0.4; }

step "at home: fw admits (and maps) the flow to port 5000 and refuses port 25"
csp_run laptop setup udp 198.51.100.2:5000 --sport 4000 --lifetime 60 --key "$LAB_DIR/laptop.key" --machine
expect_eq "$CSP_RC" 0 "home setup"
out=$(ping_to 198.51.100.2 5000 4000); indent <<<"$out"; expect_match "$out" "sent 5 replies 5 " "data at home"
csp_run laptop setup udp 198.51.100.2:25 --sport 4009 --lifetime 60 --key "$LAB_DIR/laptop.key" --machine
expect_eq "$CSP_RC" 1 "port 25 at home"
expect_match "$CSP_OUT" "site policy: no UDP port 25" "fw's reason at home"

step "the laptop moves to the visited network: fw is off its path"
in_ns laptop ip addr del 10.1.0.5/24 dev to-fw
lab_addr laptop to-vgw 10.8.0.5/24; in_ns laptop ip route replace default via 10.8.0.1

step "away, csp setup --home 203.0.113.1: fw decides as for 10.1.0.5 and relays; vgw admits the leg to the relay"
csp_run laptop setup udp 198.51.100.2:5000 --sport 4001 --lifetime 60 --key "$LAB_DIR/laptop.key" --home 203.0.113.1 --machine
expect_eq "$CSP_RC" 0 "relayed setup"
expect_match "$CSP_OUT" "^type=REDIRECT .*from=203\.0\.113\.1:7227 middlebox=true .*redirect=203\.0\.113\.1:[0-9]+ " "fw's REDIRECT to its relay"
expect_match "$CSP_OUT" "^type=ACCEPT .*from=203\.0\.113\.1:7227 middlebox=true " "fw answered the leg"
relay_port=$(sed -n 's/.* redirect=203\.0\.113\.1:\([0-9]*\) .*/\1/p' <<<"$CSP_OUT" | head -1)
s=$(sed -n 's/.* session=\([0-9a-f]*\) .*/\1/p' <<<"$CSP_OUT" | head -1)
expect_match "$(midctl fw sessions)" "$s +udp +10\.8\.0\.5:4001 +198\.51\.100\.2:5000 +admitted +relay " "fw lists the relayed session"
expect_match "$(in_ns fw nft list map inet midcom dnat4)" "203\.0\.113\.1 \. udp \. $relay_port .*: 198\.51\.100\.2 \. 5000" "fw's relay DNAT"
expect_match "$(in_ns fw nft list map inet midcom snat4)" "10\.8\.0\.5 \. udp \. 4001 .*: 203\.0\.113\.1 \. $relay_port" "fw's relay SNAT"
expect_match "$(nft_set fw admit4)" "10\.8\.0\.5 \. udp \. 4001 \. 198\.51\.100\.2 \. 5000" "fw's admission"
expect_match "$(nft_set vgw admit4)" "10\.8\.0\.5 \. udp \. 4001 \. 203\.0\.113\.1 \. $relay_port" "vgw admitted the leg to the relay"
out=$(ping_to 203.0.113.1 "$relay_port" 4001); indent <<<"$out"
expect_match "$out" "sent 5 replies 5 from 203\.0\.113\.1:$relay_port" "data through fw's relay"
wait_for_match "$LAB_DIR/echo.log" "echo from 203\.0\.113\.1:$relay_port$" 2
expect_match "$(midctl fw sessions)" "$s .* relay +[0-9]+s +[0-9]+s +[1-9][0-9]* +[0-9]+B" "fw counted the relayed flow (its first packet: the rest rides conntrack)"

step "away, port 25 is still refused by the home policy (vgw alone would have admitted it)"
csp_run laptop setup udp 198.51.100.2:25 --sport 4002 --lifetime 60 --key "$LAB_DIR/laptop.key" --home 203.0.113.1 --machine
expect_eq "$CSP_RC" 1 "port 25 away"
expect_match "$CSP_OUT" "^type=REJECT .*from=203\.0\.113\.1:7227 middlebox=true .*reason=\"site policy: no UDP port 25\"" "fw's refusal away"
expect_no_match "$(in_ns fw nft list map inet midcom dnat4)" "198\.51\.100\.2 \. 25" "no relay for port 25"
expect_no_match "$(nft_set vgw admit4)" "4002" "vgw admitted nothing for it"

step "a key that is not one of fw's mobile hosts, or no key, gets no relay"
csp_run laptop setup udp 198.51.100.2:5000 --sport 4003 --lifetime 60 --key "$LAB_DIR/stranger.key" --home 203.0.113.1 --machine
expect_eq "$CSP_RC" 1 "stranger refused"
csp_run laptop setup udp 198.51.100.2:5000 --sport 4004 --lifetime 60 --home 203.0.113.1 --machine
expect_eq "$CSP_RC" 1 "unsigned refused"
expect_no_match "$(in_ns fw nft list map inet midcom snat4)" "4003|4004" "no relay for them"

step "TEARDOWN to fw ends the relay: its NAT rules go, the data stop"
csp_run laptop teardown "$s" 203.0.113.1 --key "$LAB_DIR/laptop.key"
sleep 0.3
expect_no_match "$(in_ns fw nft list map inet midcom dnat4)" "203\.0\.113\.1 \. udp \. $relay_port " "relay DNAT after teardown"
expect_no_match "$(midctl fw sessions)" "$s" "session after teardown"
out=$(ping_to 203.0.113.1 "$relay_port" 4001); indent <<<"$out"; expect_match "$out" "sent 5 replies 0 " "no data after teardown"
echo "mobility-offpath: all checks passed"
