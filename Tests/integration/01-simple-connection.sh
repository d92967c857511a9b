#!/usr/bin/env bash
# Scenario 1 (issue #3): simple connection. Client and server signal a TCP connection and a UDP
# flow through one gateway, IPv4 and IPv6; the data runs on the kernel fast path: midcomd's
# queue counter moves only for signaling (and for the first packet of a flow nobody signaled).
#
#   client 10.200.1.2 ── gw (midcomd gw1) ── server 10.200.2.2   (fd00:1::2 / fd00:2::2)
source "$(dirname "$0")/lib.sh"
lab_init simple

step "lab: client — gw — server (IPv4 + IPv6), policy: admit signaled flows, drop unsignaled"
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
lab_serve server "$LAB_DIR/tcp4.log" $FLOWS tcp-serve 8080 --duration 60
lab_serve server "$LAB_DIR/tcp6.log" $FLOWS tcp-serve 8080 --bind :: --duration 60
lab_serve server "$LAB_DIR/udp4.log" $FLOWS udp-echo 5000 --duration 60
lab_serve server "$LAB_DIR/udp6.log" $FLOWS udp-echo 5000 --bind :: --duration 60
sleep 0.5

# signal_and_send LABEL PROTO DEST SETUP-ARGS... : SETUP must be ACCEPTed with gw1's record, and
# only signaling may enter the queue: with return routability on (the default) that is the SETUP
# (challenged), the host's RESPONSE, the SETUP again, the server's ACCEPT (its sender is challenged
# too; the server's RESPONSE goes to gw1's own address, not through the queue) and the ACCEPT
# again: five, up to eight when retransmissions cross a CHALLENGE (the data steps below check
# that no data packet is ever queued).
signal() {
  local label=$1; shift
  local before; before=$(status_counter gw queue_received)
  step "$label: csp setup $*"
  csp_run client setup "$@"
  expect_eq "$CSP_RC" 0 "$label: csp exit status"
  expect_match "$CSP_OUT" "ACCEPT from .*:7227 in [0-9.]+ ms, lifetime 30s" "$label: ACCEPT from the server"
  expect_match "$CSP_OUT" "middlebox gw1 id [0-9a-f]{16} epoch [0-9]+: admitted, 30s" "$label: gw1's record"
  expect_match "$CSP_OUT" "challenged by middlebox [0-9a-f]{16}: proved our address" "$label: the host proved its address"
  local queued=$(( $(status_counter gw queue_received) - before ))
  [ "$queued" -ge 5 ] && [ "$queued" -le 8 ] || fail "$label: packets queued for the SETUP/ACCEPT exchange: expected 5 to 8, got $queued"
}

signal "TCP/IPv4" tcp 10.200.2.2:8080 --lifetime 30 --app web
tcp4_session=$(session_of "$CSP_OUT")
expect_match "$(nft_set gw admit4_anyport)" "10\.200\.1\.2 \. tcp \. 10\.200\.2\.2 \. 8080 .*timeout 30s" "admit4_anyport element (any source port)"

step "TCP/IPv4: 200 kB echoed over the admitted connection; queue counter flat"
before=$(status_counter gw queue_received)
out=$(in_ns client $FLOWS tcp-send 10.200.2.2 8080 --bytes 200000) || fail "TCP/IPv4 transfer: $out"
indent <<<"$out"
expect_match "$out" "sent 200000 echoed 200000" "TCP/IPv4 echo"
wait_for_match "$LAB_DIR/tcp4.log" "conn from 10\.200\.1\.2:[0-9]+ bytes 200000" 3
expect_eq "$(status_counter gw queue_received)" "$before" "packets queued to midcomd during the TCP/IPv4 transfer"

signal "UDP/IPv4" udp 10.200.2.2:5000 --sport 4000 --lifetime 30 --app rtp
udp4_session=$(session_of "$CSP_OUT")
expect_match "$(nft_set gw admit4)" "10\.200\.1\.2 \. udp \. 4000 \. 10\.200\.2\.2 \. 5000 .*timeout 30s" "admit4 element"

step "UDP/IPv4: 100 datagrams each way; queue counter flat"
before=$(status_counter gw queue_received)
out=$(in_ns client $FLOWS udp-ping 10.200.2.2 5000 --sport 4000 --count 100 --interval 0.005 --wait 0.5)
indent <<<"$out"
expect_match "$out" "sent 100 replies 100 from 10\.200\.2\.2:5000" "UDP/IPv4 echo"
expect_eq "$(status_counter gw queue_received)" "$before" "packets queued to midcomd during the UDP/IPv4 flow"

signal "TCP/IPv6" tcp '[fd00:2::2]:8080' --lifetime 30 --app web
tcp6_session=$(session_of "$CSP_OUT")
expect_match "$(nft_set gw admit6_anyport)" "fd00:1::2 \. tcp \. fd00:2::2 \. 8080 .*timeout 30s" "admit6_anyport element"
signal "UDP/IPv6" udp '[fd00:2::2]:5000' --sport 4000 --lifetime 30 --app rtp
udp6_session=$(session_of "$CSP_OUT")
expect_match "$(nft_set gw admit6)" "fd00:1::2 \. udp \. 4000 \. fd00:2::2 \. 5000 .*timeout 30s" "admit6 element"

step "IPv6: 200 kB over TCP and 100 datagrams each way over UDP; queue counter flat"
before=$(status_counter gw queue_received)
out=$(in_ns client $FLOWS tcp-send fd00:2::2 8080 --bytes 200000) || fail "TCP/IPv6 transfer: $out"
indent <<<"$out"
expect_match "$out" "sent 200000 echoed 200000" "TCP/IPv6 echo"
wait_for_match "$LAB_DIR/tcp6.log" "conn from fd00:1::2:[0-9]+ bytes 200000" 3
out=$(in_ns client $FLOWS udp-ping fd00:2::2 5000 --sport 4000 --count 100 --interval 0.005 --wait 0.5)
indent <<<"$out"
expect_match "$out" "sent 100 replies 100 from fd00:2::2:5000" "UDP/IPv6 echo"
expect_eq "$(status_counter gw queue_received)" "$before" "packets queued to midcomd during the IPv6 flows"

step "contrast: an unsignaled TCP connection (port 8081): its first packets go to user space and are dropped"
before=$(status_counter gw queue_received)
dropped=$(status_counter gw unsignaled_dropped)
set +e; out=$(in_ns client $FLOWS tcp-send 10.200.2.2 8081 --timeout 1.5); rc=$?; set -e
indent <<<"$out"
expect_eq "$rc" 1 "tcp-send exit status for the unsignaled connection"
expect_match "$out" "connect failed: timed out" "unsignaled connection"
queued=$(( $(status_counter gw queue_received) - before ))
[ "$queued" -ge 1 ] || fail "the unsignaled SYN should have been queued to midcomd (queued $queued)"
expect_eq "$(( $(status_counter gw unsignaled_dropped) - dropped ))" "$queued" "unsignaled packets queued to midcomd and dropped by it"
step "queued for the unsignaled connection: $queued SYN(s), all dropped"

step "midctl sessions: four admitted sessions with the traffic counted by the kernel"
table=$(midctl gw sessions)
indent <<<"$table"
expect_match "$table" "$tcp4_session +tcp +10\.200\.1\.2(:0|:\*)? +10\.200\.2\.2:8080 +admitted" "TCP/IPv4 session row"
expect_match "$table" "$udp4_session +udp +10\.200\.1\.2:4000 +10\.200\.2\.2:5000 +admitted" "UDP/IPv4 session row"
expect_match "$table" "$tcp6_session +tcp " "TCP/IPv6 session row"
expect_match "$table" "$udp6_session +udp " "UDP/IPv6 session row"
json=$(midctl gw sessions --json)
$PY -c '
import json, sys
rows = {r["id"]: r for r in json.loads(sys.argv[1])}
for sid in sys.argv[2:]:
    r = rows[sid]
    assert r["state"] == "admitted", r
    assert r["packets"] >= 1, ("the kernel counted no packet for", r)
assert len(rows) == 4, rows
' "$json" "$tcp4_session" "$udp4_session" "$tcp6_session" "$udp6_session" || fail "midctl sessions --json: $json"
expect_eq "$(status_counter gw admitted)" 4 "admitted counter"
echo "01-simple-connection: all checks passed"
