#!/usr/bin/env bash
# Moving sessions, scenario 3 (docs/PROTOCOL.md 10.7): a hidden mobile server via a rendezvous.
# The server sits behind a NAT (midcomd nat1) and is known only to the rendezvous rv
# (`csp rendezvous`). Its agent registers udp/5004 there (signed; the NAT maps the port on the
# way and its record tells both where clients reach the server). A client behind its own
# firewall (midcomd cfw) names the server as rv:5004: its SETUP is relayed to the server's agent,
# whose signed REDIRECT to the NAT's mapping comes back through rv; the client signals the mapped
# address (the NAT answers for the listening server), and data flows directly. Then the server
# moves to another address while the client is talking: its agent sends REBIND, the NAT's mapping
# follows it, the rendezvous learns the new agent endpoint, and the client keeps talking; a new
# client is relayed to the moved server. Another key cannot take the service over.
#
#   server 192.168.1.2 → .3 ── nat (nat1, 203.0.113.1) ──┐
#                                                         core ── rv 198.51.100.7
#   client 10.9.0.2 ── cfw (cfw) ── 100.64.1.1 ──────────┘
source "$(dirname "$0")/lib.sh"
lab_init rendezvous

step "lab: server — nat — core — rv, client — cfw — core"
for n in server nat core rv cfw client; do lab_ns $n; done
lab_link server nat; lab_link nat core; lab_link core rv; lab_link core cfw; lab_link cfw client
lab_addr server to-nat 192.168.1.2/24; in_ns server ip route add default via 192.168.1.1
lab_addr nat to-server 192.168.1.1/24; lab_addr nat to-core 203.0.113.1/24; in_ns nat ip route add default via 203.0.113.254
lab_addr core to-nat 203.0.113.254/24; lab_addr core to-rv 198.51.100.254/24; lab_addr core to-cfw 100.64.1.254/24
in_ns core ip route add 10.9.0.0/24 via 100.64.1.1
lab_addr rv to-core 198.51.100.7/24; in_ns rv ip route add default via 198.51.100.254
lab_addr cfw to-core 100.64.1.1/24; lab_addr cfw to-client 10.9.0.1/24; in_ns cfw ip route add default via 100.64.1.254
lab_addr client to-cfw 10.9.0.2/24; in_ns client ip route add default via 10.9.0.1
for n in nat core cfw; do lab_forwarding $n; done
lab_midcomd nat "$(lab_nat_conf)"
lab_nat_signaling nat to-core
lab_midcomd cfw "$(lab_signaling_conf cfw cfw)"
export CSP_STATE_DIR="$LAB_DIR/csp-state"
"$BIN/csp" keygen --key "$LAB_DIR/server.key" | indent
"$BIN/csp" keygen --key "$LAB_DIR/rv.key" >/dev/null
"$BIN/csp" keygen --key "$LAB_DIR/intruder.key" >/dev/null
server_id=$("$BIN/csp" keygen --show --key "$LAB_DIR/server.key" | sed -n 's/.* id \([0-9a-f]*\)$/\1/p')

step "rv runs the rendezvous; the server's echo service and its agent register udp/5004 there"
lab_bg rv "$LAB_DIR/rv.log" "$BIN/csp" rendezvous --key "$LAB_DIR/rv.key" --duration 90
wait_for_match "$LAB_DIR/rv.log" "^rendezvous on " 5
lab_serve server "$LAB_DIR/echo.log" $FLOWS udp-echo 5004 --duration 90
lab_bg server "$LAB_DIR/agent.log" "$BIN/csp" listen --key "$LAB_DIR/server.key" --rendezvous 198.51.100.7 \
  --register udp/5004 --registration-lifetime 30 --duration 90
wait_for_match "$LAB_DIR/agent.log" "rendezvous: registered udp/5004 at 198\.51\.100\.7:7227: clients reach 203\.0\.113\.1:5004" 10
indent <"$LAB_DIR/agent.log"
expect_match "$(cat "$LAB_DIR/agent.log")" "CHALLENGE from 198\.51\.100\.7:7227: answered" "the rendezvous made the agent prove its endpoint"
expect_match "$(cat "$LAB_DIR/rv.log")" "SETUP [0-9a-f]{16}: udp/5004 at 203\.0\.113\.1:5004, agent 203\.0\.113\.1:[0-9]+" "rv's registration: the NAT's mapping"
expect_match "$(in_ns nat nft list map inet midcom dnat4)" "203\.0\.113\.1 \. udp \. 5004 .*: 192\.168\.1\.2 \. 5004" "nat1 maps the registered port"
expect_match "$(midctl nat sessions)" "udp .*192\.168\.1\.2:5004 +admitted" "nat1 lists the listening session"

ping_server() { in_ns client $FLOWS udp-ping 203.0.113.1 5004 --sport "$1" --count "${2:-5}" --interval 0.02 --wait 0.4; }

step "unsignaled, the client reaches nothing (its firewall drops the flow)"
out=$(ping_server 6000); indent <<<"$out"; expect_match "$out" "sent 5 replies 0 " "before signaling"

step "the client signals rv:5004: relayed to the server's agent, the server's REDIRECT comes back through rv"
csp_run client setup udp 198.51.100.7:5004 --sport 6001 --lifetime 60 --machine
expect_eq "$CSP_RC" 4 "csp exit status (redirected)"
expect_match "$CSP_OUT" "^type=REDIRECT .*from=198\.51\.100\.7:7227 middlebox=false .*redirect=203\.0\.113\.1:5004 .*peer-key=$server_id" "the server's signed REDIRECT"
s1=$(sed -n 's/.* session=\([0-9a-f]*\) .*/\1/p' <<<"$CSP_OUT")
wait_for_match "$LAB_DIR/rv.log" "relayed SETUP $s1 .* to 203\.0\.113\.1:[0-9]+" 2
wait_for_match "$LAB_DIR/rv.log" "relayed REDIRECT $s1 to 100\.64\.1\.1:|relayed REDIRECT $s1 to 10\.9\.0\.2:" 2
wait_for_match "$LAB_DIR/agent.log" "relayed SETUP $s1 from .* -> REDIRECT to 203\.0\.113\.1:5004" 2
wait_for_match "$LAB_DIR/nat-midcomd.log" "SETUP $s1 relayed by a rendezvous: passed on untouched" 2
expect_no_match "$(midctl nat sessions)" "$s1" "nat1 keeps nothing for the relayed SETUP"
expect_no_match "$(midctl cfw sessions)" "$s1" "cfw released the SETUP to rv"

step "the client signals the mapped address: nat1 answers for the listening server, cfw admits, data flows directly"
csp_run client setup udp 203.0.113.1:5004 --sport 6001 --lifetime 60 --session "$s1" --machine
expect_eq "$CSP_RC" 0 "csp exit status"
expect_match "$CSP_OUT" "^type=ACCEPT .*from=203\.0\.113\.1:7227 middlebox=true " "nat1's ACCEPT"
expect_match "$(nft_set cfw admit4)" "10\.9\.0\.2 \. udp \. 6001 \. 203\.0\.113\.1 \. 5004" "cfw admitted the client's flow"
out=$(ping_server 6001); indent <<<"$out"; expect_match "$out" "sent 5 replies 5 from 203\.0\.113\.1:5004" "data to the hidden server"
wait_for_match "$LAB_DIR/echo.log" "echo from 100\.64\.1\.1:[0-9]+$|echo from 10\.9\.0\.2:6001$" 2

step "the server moves to 192.168.1.3 while the client talks: REBIND, the NAT's mapping follows"
in_ns client $FLOWS udp-ping 203.0.113.1 5004 --sport 6001 --count 300 --interval 0.02 --wait 0.5 >"$LAB_DIR/during.log" 2>&1 &
talker=$!
LAB_PIDS+=("$talker")
sleep 1
moved_at=$(now_s)
in_ns server ip addr del 192.168.1.2/24 dev to-nat
in_ns server ip addr add 192.168.1.3/24 dev to-nat
in_ns server ip route replace default via 192.168.1.1
wait_for_match "$LAB_DIR/agent.log" "moved from 192\.168\.1\.2 to 192\.168\.1\.3: REBIND" 5
# (nat1's log is rate-limited by then: its map is the witness.)
for _ in $(seq 1 100); do
  in_ns nat nft list map inet midcom dnat4 | grep -q "192\.168\.1\.3 \. 5004" && break
  sleep 0.1
done
rebound_at=$(now_s)
wait "$talker" || true
out=$(cat "$LAB_DIR/during.log"); indent <<<"$out"
replies=$(sed -n 's/.*replies \([0-9]*\).*/\1/p' <<<"$out")
echo "      REBIND took effect $(awk -v a="$moved_at" -v b="$rebound_at" 'BEGIN { printf "%.2f", b - a }') s after the address change; the client got $replies of 300 replies"
if [ "${replies:-0}" -lt 200 ]; then
  # What the data met: nat1's connections to the mapping, the server's addresses and routes.
  in_ns nat conntrack -L -p udp --dport 5004 2>&1 | indent
  in_ns server ip -br addr | indent; in_ns server ip route | indent
  tail -5 "$LAB_DIR/echo.log" | indent; grep -m 3 -E "not sent|Error" "$LAB_DIR/echo.log" | indent
  tail -5 "$LAB_DIR/agent.log" | indent
  fail "the client's data did not continue across the move ($replies of 300 replies)"
fi
expect_match "$(in_ns nat nft list map inet midcom dnat4)" "203\.0\.113\.1 \. udp \. 5004 .*: 192\.168\.1\.3 \. 5004" "the mapping follows the server"
expect_no_match "$(in_ns nat nft list map inet midcom dnat4)" "192\.168\.1\.2" "no mapping to the old address"
wait_until_gone 4 "192\.168\.1\.2" "the pinhole to the old address goes after the rebind grace" nft_set nat pinhole4
out=$(ping_server 6001); indent <<<"$out"; expect_match "$out" "sent 5 replies 5 from 203\.0\.113\.1:5004" "the client keeps talking"
wait_for_match "$LAB_DIR/rv.log" "REBIND [0-9a-f]{16}: udp/5004 at 203\.0\.113\.1:5004, agent 203\.0\.113\.1:[0-9]+" 3

step "a new client session after the move is relayed to the moved server"
csp_run client setup udp 198.51.100.7:5004 --sport 6002 --lifetime 60 --machine
expect_eq "$CSP_RC" 4 "csp exit status (redirected)"
expect_match "$CSP_OUT" "redirect=203\.0\.113\.1:5004 .*peer-key=$server_id" "REDIRECT from the moved server"
s2=$(sed -n 's/.* session=\([0-9a-f]*\) .*/\1/p' <<<"$CSP_OUT")
csp_run client setup udp 203.0.113.1:5004 --sport 6002 --lifetime 60 --session "$s2" --machine
expect_eq "$CSP_RC" 0 "second client session admitted"
out=$(ping_server 6002); indent <<<"$out"; expect_match "$out" "sent 5 replies 5 from 203\.0\.113\.1:5004" "data to the moved server"

step "another key cannot register udp/5004 while the server holds it"
lab_bg client "$LAB_DIR/intruder.log" "$BIN/csp" listen --key "$LAB_DIR/intruder.key" --rendezvous 198.51.100.7:7227 \
  --register udp/5004 --csp-port 7300 --duration 4
wait_for_match "$LAB_DIR/intruder.log" "registration refused: policy-denied udp/5004 is registered by another server" 6
csp_run client setup udp 198.51.100.7:5004 --sport 6003 --lifetime 60 --machine
expect_match "$CSP_OUT" "redirect=203\.0\.113\.1:5004 .*peer-key=$server_id" "clients still reach the real server"
echo "mobility-rendezvous: all checks passed"
