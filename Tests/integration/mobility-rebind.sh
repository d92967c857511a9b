#!/usr/bin/env bash
# Moving sessions, scenario 1 (docs/PROTOCOL.md 6.7, 10.8): a mobile host. The client sets up a
# signed UDP session, its address changes mid-transfer (the old address deleted, a new one added),
# and `csp rebind` moves the session: gw1 makes the new address prove itself (CHALLENGE), the
# server accepts, gw1 installs the new admission and removes the old one, and the data continue
# from the new address. An attacker's unsigned REBIND and one signed by another key move nothing.
# IPv4 and IPv6.
#
#   client 10.205.1.2 → 10.205.1.77 ── gw (gw1) ── server 10.205.2.2 (csp listen, udp echo 5000)
#          fd05:1::2  → fd05:1::77                  fd05:2::2
source "$(dirname "$0")/lib.sh"
lab_init rebind

step "lab: client — gw — server, IPv4 and IPv6; the client signs with its own key"
lab_ns client; lab_ns gw; lab_ns server
lab_link client gw; lab_link gw server
lab_addr client to-gw 10.205.1.2/24; in_ns client ip -6 addr add fd05:1::2/64 dev to-gw nodad
lab_addr gw to-client 10.205.1.1/24; in_ns gw ip -6 addr add fd05:1::1/64 dev to-client nodad
lab_addr gw to-server 10.205.2.1/24; in_ns gw ip -6 addr add fd05:2::1/64 dev to-server nodad
lab_addr server to-gw 10.205.2.2/24; in_ns server ip -6 addr add fd05:2::2/64 dev to-gw nodad
in_ns client ip route add default via 10.205.1.1; in_ns client ip -6 route add default via fd05:1::1
in_ns server ip route add default via 10.205.2.1; in_ns server ip -6 route add default via fd05:2::1
lab_forwarding gw
conf=$(lab_signaling_conf gw gw1)
lab_midcomd gw "$conf"
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 90
lab_bg server "$LAB_DIR/listen6.log" "$BIN/csp" listen --address :: --duration 90
lab_serve server "$LAB_DIR/echo4.log" $FLOWS udp-echo 5000 --duration 90
lab_serve server "$LAB_DIR/echo6.log" $FLOWS udp-echo 5000 --bind :: --duration 90
export CSP_STATE_DIR="$LAB_DIR/csp-state"
in_ns client "$BIN/csp" keygen --key "$LAB_DIR/client.key" | indent
"$BIN/csp" keygen --key "$LAB_DIR/attacker.key" >/dev/null
sleep 0.3

ping_count() { in_ns client $FLOWS udp-ping "$1" 5000 --sport 4000 --count 5 --wait 0.4 | sed -n 's/.*replies \([0-9]*\).*/\1/p'; }

# move LABEL SERVER OLD NEW PLEN SET: the whole scenario over one address family.
move() {
  local label=$1 server=$2 old=$3 new=$4 plen=$5 set=$6
  step "$label: signed setup from $old, data flows"
  csp_run client setup udp "$server:5000" --sport 4000 --lifetime 60 --key "$LAB_DIR/client.key"
  expect_eq "$CSP_RC" 0 "$label: setup"
  local s; s=$(session_of "$CSP_OUT")
  expect_eq "$(ping_count "$server")" 5 "$label: replies before the move"

  step "$label: the client's address changes to $new; its packets are not admitted yet"
  local moved_at; moved_at=$(now_s)
  in_ns client ip addr del "$old/$plen" dev to-gw
  if [[ $new == *:* ]]; then
    in_ns client ip -6 addr add "$new/$plen" dev to-gw nodad
    in_ns client ip -6 route replace default via fd05:1::1
  else
    in_ns client ip addr add "$new/$plen" dev to-gw
    in_ns client ip route replace default via 10.205.1.1
  fi
  expect_eq "$(ping_count "$server")" 0 "$label: replies from the new address before REBIND"

  step "$label: attackers' REBINDs (unsigned; signed by another key) move nothing"
  local newflow="udp,$old,4000,$server,5000"
  in_ns client $PY "$ROOT/Tests/integration/craft.py" send "$server" 7227 --type 8 --flags 2 --session "$s" --seq 100 \
    --flow "$newflow" --tlv "0x800e=$(endpoint_hex "$new" 4000)" --wait 1 | indent
  local f; f=$(midctl gw sessions --json | $PY -c 'import json,sys; print([r["source"] for r in json.load(sys.stdin) if r["id"]==sys.argv[1]][0])' "$s")
  expect_match "$f" "^\[?$old" "$label: the session still has the old address"
  csp_run client rebind "$s" --from "$new" --key "$LAB_DIR/attacker.key"
  expect_eq "$CSP_RC" 1 "$label: REBIND signed by another key refused"
  expect_match "$CSP_OUT" "authentication-failed" "$label: refusal reason"

  step "$label: csp rebind with the session's key: challenged, accepted, moved"
  csp_run client rebind "$s" --from "$new" --key "$LAB_DIR/client.key"
  expect_eq "$CSP_RC" 0 "$label: rebind"
  expect_match "$CSP_OUT" "challenged by middlebox [0-9a-f]{16}: proved our address" "$label: the new address proved itself"
  expect_match "$CSP_OUT" "middlebox gw1 id [0-9a-f]{16} epoch [0-9]+: rebound" "$label: gw1's record says rebound"
  expect_eq "$(ping_count "$server")" 5 "$label: replies from the new address after REBIND"
  local back; back=$(now_s)
  echo "      interruption (address change → data again, including the test's own probes): $(awk -v a="$moved_at" -v b="$back" 'BEGIN { printf "%.2f", b - a }') s"
  local elements; elements=$(nft_set gw "$set")
  expect_match "$elements" "$new \. udp \. 4000 \. $server \. 5000" "$label: the new admission"
  expect_match "$elements" "$old \. udp" "$label: the old admission stays for the rebind grace (2 s)"
  wait_until_gone 4 "$old \. udp" "$label: the old admission goes after the grace" nft_set gw "$set"
  wait_for_match "$LAB_DIR/listen$([[ $new == *:* ]] && echo 6).log" "REBIND $s .*-> ACCEPT" 3
}

# endpoint_hex ADDR PORT: a CSP endpoint value (family, reserved, port, address) in hex.
endpoint_hex() {
  $PY -c 'import ipaddress,struct,sys; a=ipaddress.ip_address(sys.argv[1]); print((struct.pack("!BBH", a.version, 0, int(sys.argv[2])) + a.packed).hex())' "$1" "$2"
}

move "IPv4" 10.205.2.2 10.205.1.2 10.205.1.77 24 admit4
move "IPv6" fd05:2::2 fd05:1::2 fd05:1::77 64 admit6

# TCP: a connection is bound to its addresses and cannot outlive the move; the session can. The
# application reconnects from the new address under the moved admission (same source port), and
# the transfer goes on; from the new address without the REBIND it cannot.
step "TCP: a signed TCP session from 10.205.1.77 transfers; the address moves to .88; REBIND; the transfer resumes"
lab_serve server "$LAB_DIR/tcp.log" $FLOWS tcp-serve 8080 --duration 60
csp_run client setup tcp 10.205.2.2:8080 --sport 4100 --lifetime 60 --key "$LAB_DIR/client.key"
expect_eq "$CSP_RC" 0 "TCP setup"
t=$(session_of "$CSP_OUT")
out=$(in_ns client $FLOWS tcp-send 10.205.2.2 8080 --sport 4100 --bytes 200000 --timeout 3) || fail "TCP before the move: $out"
indent <<<"$out"; expect_match "$out" "sent 200000 echoed 200000" "TCP transfer before the move"
in_ns client ip addr del 10.205.1.77/24 dev to-gw
in_ns client ip addr add 10.205.1.88/24 dev to-gw
in_ns client ip route replace default via 10.205.1.1
set +e; out=$(in_ns client $FLOWS tcp-send 10.205.2.2 8080 --sport 4100 --bytes 1000 --timeout 1 2>&1); set -e
indent <<<"$out"; expect_no_match "$out" "echoed 1000" "TCP from the new address before REBIND"
csp_run client rebind "$t" --from 10.205.1.88 --key "$LAB_DIR/client.key"
expect_eq "$CSP_RC" 0 "TCP rebind"
out=$(in_ns client $FLOWS tcp-send 10.205.2.2 8080 --sport 4100 --bytes 200000 --timeout 3) || fail "TCP after the move: $out"
indent <<<"$out"; expect_match "$out" "sent 200000 echoed 200000" "TCP transfer resumes from the new address"
expect_match "$(nft_set gw admit4)" "10\.205\.1\.88 \. tcp \. 4100 \. 10\.205\.2\.2 \. 8080" "the moved TCP admission"
expect_eq "$(status_counter gw rebinds)" 3 "REBINDs acted on"
echo "mobility-rebind: all checks passed"
