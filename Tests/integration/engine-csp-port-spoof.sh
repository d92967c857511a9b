#!/usr/bin/env bash
# Engine regression: source port 7227 is not a key to the inside. The gateway queues every
# datagram from UDP port 7227 as a CSP reply (ahead of the conntrack fast path); a reply is only
# forwarded when it answers a request that went out (conntrack relates it). An outside host
# sending from port 7227 to an inside port nobody signaled — a CSP message of an unknown type, or
# an ACCEPT for a session nobody has — must reach nothing, over IPv4 and IPv6.
# Positive controls: a real reply to a request that went out still arrives, and csp setup works.
#
#   client 10.200.1.2 / fd00:1::2 ── gw (midcomd gw1) ── server 10.200.2.2 / fd00:2::2
source "$(dirname "$0")/lib.sh"
lab_init spoof
CRAFT="$PY $ROOT/Tests/integration/craft.py"

step "lab: client — gw — server; the client listens on udp 5353 (IPv4 and IPv6), nobody signaled it"
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
lab_serve client "$LAB_DIR/recv4-5353.log" $CRAFT recv 5353 --duration 25
lab_serve client "$LAB_DIR/recv6-5353.log" $CRAFT recv 5353 --bind :: --duration 25

step "control (c): a reply from server:7227 to a request client:40000 sent out arrives (IPv4, IPv6)"
lab_serve server "$LAB_DIR/answer4.log" $CRAFT recv 7227 --answer 0x7f --duration 3
lab_serve server "$LAB_DIR/answer6.log" $CRAFT recv 7227 --bind :: --answer 0x7f --duration 3
for dst in 10.200.2.2 fd00:2::2; do
  out=$(in_ns client $CRAFT send "$dst" 7227 --sport 40000 --type 0x7f --lifetime 30 --wait 1.5)
  indent <<<"$out"
  expect_match "$out" "^reply [0-9]+ octets from $dst:7227 type 127 " "reply (type 0x7f) from $dst:7227 to client:40000"
done
wait_for_match "$LAB_DIR/answer4.log" "^recv [0-9]+ octets from 10\.200\.1\.2:40000 type 127 " 2
wait_for_match "$LAB_DIR/answer6.log" "^recv [0-9]+ octets from fd00:1::2:40000 type 127 " 2
# The answering sockets hold port 7227 until their --duration ends; csp listen needs it next.
wait_for_match "$LAB_DIR/answer4.log" "^received " 4
wait_for_match "$LAB_DIR/answer6.log" "^received " 4

step "control (d): csp setup udp 10.200.2.2:5000 --sport 4000 is still accepted"
lab_bg server "$LAB_DIR/listen4.log" "$BIN/csp" listen --duration 20
sleep 0.3
csp_run client setup udp 10.200.2.2:5000 --sport 4000 --lifetime 30
expect_eq "$CSP_RC" 0 "csp setup exit status"
expect_match "$CSP_OUT" "ACCEPT from 10\.200\.2\.2:7227 in" "the server accepted"
expect_match "$CSP_OUT" "middlebox gw1 .*: admitted, 30s" "gw1's record"
expect_match "$(nft_set gw admit4)" "10\.200\.1\.2 \. udp \. 4000 \. 10\.200\.2\.2 \. 5000 " "admit element"

step "attack: server:7227 → client:5353, (a) CSP type 0x7f and (b) ACCEPT for an unknown session, IPv4 and IPv6"
for dst in 10.200.1.2 fd00:1::2; do
  out=$(in_ns server $CRAFT send "$dst" 5353 --sport 7227 --type 0x7f --lifetime 30); indent <<<"$out"
  out=$(in_ns server $CRAFT send "$dst" 5353 --sport 7227 --type 2 --session 0badc0de0badc0de --lifetime 30); indent <<<"$out"
done
sleep 0.5
delivered=()
for log in recv4-5353 recv6-5353; do
  grep -q "type 127 " "$LAB_DIR/$log.log" && delivered+=("$log: (a) type 0x7f")
  grep -q "type 2 session 0badc0de0badc0de" "$LAB_DIR/$log.log" && delivered+=("$log: (b) ACCEPT for an unknown session")
done
indent <<<"$(cat "$LAB_DIR/recv4-5353.log" "$LAB_DIR/recv6-5353.log")"
if [ ${#delivered[@]} -ne 0 ]; then
  list=$(printf '%s; ' "${delivered[@]}")
  fail "datagrams from server:7227 reached client:5353 (no request went out): ${list%; }"
fi
expect_no_match "$(cat "$LAB_DIR/recv4-5353.log" "$LAB_DIR/recv6-5353.log")" "^recv " "anything at client:5353"
kill -0 "$MIDCOMD_PID" || fail "midcomd died"
echo "engine-csp-port-spoof: all checks passed"
