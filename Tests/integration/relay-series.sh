#!/usr/bin/env bash
# Two relays in series (issue 15, scenario 2; PROTOCOL.md 14.3): both gateways relay TCP to the
# server's network. gw1 offers its relay to the client; gw1's relay signals its onward hop (its own
# SETUP, signed, with RELAYED-SESSION), gw2 offers its relay in turn, and the session runs over
# three hops, end-to-end encrypted between client and server. Then a hostile party between the two
# relays flips one bit of the stream: the server's end-to-end layer detects it and the session
# fails closed — the client gets an integrity error, never altered data, and no resumption.
#
#   client 10.200.1.2 ── gw1 10.200.1.1 | 100.64.0.2 ── gw2 100.64.0.1 | 203.0.113.1 ── server 203.0.113.2
#                        (midcomd + midrelayd)         (midcomd + midrelayd)
source "$(dirname "$0")/lib.sh"
lab_init series

step "lab: client — gw1 — gw2 — server; both gateways relay TCP to 203.0.113.0/24"
lab_ns client; lab_ns gw1; lab_ns gw2; lab_ns server
lab_link client gw1; lab_link gw1 gw2; lab_link gw2 server
lab_addr client to-gw1 10.200.1.2/24
lab_addr gw1 to-client 10.200.1.1/24
lab_addr gw1 to-gw2 100.64.0.2/24
lab_addr gw2 to-gw1 100.64.0.1/24
lab_addr gw2 to-server 203.0.113.1/24
lab_addr server to-gw2 203.0.113.2/24
in_ns client ip route add default via 10.200.1.1
in_ns gw1 ip route add default via 100.64.0.1
in_ns gw2 ip route add 10.200.1.0/24 via 100.64.0.2
in_ns server ip route add default via 203.0.113.1
lab_forwarding gw1; lab_forwarding gw2
"$BIN/csp" keygen --key "$LAB_DIR/client.key" >/dev/null
"$BIN/csp" keygen --key "$LAB_DIR/server.key" >/dev/null
server_key=$("$BIN/csp" keygen --key "$LAB_DIR/server.key" --show)
for gw in gw1 gw2; do
  listen=$([ $gw = gw1 ] && echo 10.200.1.1 || echo 100.64.0.1)
  conf=$(lab_conf $gw <<CONF
[daemon]
name = "$gw"

[policy]
default = "admit"
unsignaled = "drop"

[relay]
enabled = true
listen = ["$listen:7228"]

[[rule]]
name = "server-net-through-the-relay"
proto = "tcp"
destination = "203.0.113.0/24"
action = "relay"
CONF
  )
  lab_midcomd $gw "$conf"
  lab_bg $gw "$LAB_DIR/$gw-midrelayd.log" "$BIN/midrelayd" --listen "$listen:7228" --relay-key "$LAB_DIR/$gw-state/relay.key" \
    --control-socket "$LAB_DIR/$gw-relay.sock" -v
  wait_for_match "$LAB_DIR/$gw-midrelayd.log" "relaying on $listen:7228" 5
done
lab_bg server "$LAB_DIR/echo.log" "$BIN/csp" serve 9000 --address 203.0.113.2 --key "$LAB_DIR/server.key" --exec cat -v
wait_for_match "$LAB_DIR/echo.log" "^listening on 203\.0\.113\.2:9000" 5

$PY - "$LAB_DIR/data.bin" <<'PY'
import os, sys
with open(sys.argv[1], "wb") as f:
    f.write(os.urandom(4 << 20))
PY
sent=$(sha256sum <"$LAB_DIR/data.bin" | cut -c1-64)
connect() {  # connect LOG [OPTIONS...]: 4 MB echoed; status in CONNECT_RC, echo in $LAB_DIR/echoed.bin
  local log=$1; shift
  set +e
  in_ns client "$BIN/csp" connect 203.0.113.2:9000 --signal --key "$LAB_DIR/client.key" --peer-key "$server_key" -v "$@" \
    <"$LAB_DIR/data.bin" >"$LAB_DIR/echoed.bin" 2>"$LAB_DIR/$log"
  CONNECT_RC=$?
  set -e
  indent <"$LAB_DIR/$log"
}

step "csp connect: gw1's relay, then gw2's relay (offered to gw1's relay), then the server: 4 MB echoed intact"
connect connect.log
expect_eq "$CONNECT_RC" 0 "csp connect exit status"
expect_eq "$(sha256sum <"$LAB_DIR/echoed.bin" | cut -c1-64)" "$sent" "the echo is the 4 MB sent, in order"
expect_match "$(cat "$LAB_DIR/connect.log")" "relayed by middlebox [0-9a-f]{16} at 10\.200\.1\.1:7228" "hop 1 goes to gw1's relay"
expect_match "$(cat "$LAB_DIR/gw1-midrelayd.log")" "hop 2: relayed by middlebox [0-9a-f]{16} at 100\.64\.0\.1:7228" "gw1's relay was offered gw2's"
expect_match "$(cat "$LAB_DIR/gw1-midrelayd.log")" "hop 1→2 up \(10\.200\.1\.2:[0-9]+ → 100\.64\.0\.1:7228\)" "gw1 relays hop 1 to hop 2"
expect_match "$(cat "$LAB_DIR/gw2-midrelayd.log")" "hop 2→3 up \(100\.64\.0\.2:[0-9]+ → 203\.0\.113\.2:9000\)" "gw2 relays hop 2 to hop 3"
expect_match "$(cat "$LAB_DIR/echo.log")" "via 203\.0\.113\.1:[0-9]+" "the server sees gw2's relay"

step "the same through both relays with sealed hops (each hop encrypted between its two ends)"
connect sealed.log --protection sealed
expect_eq "$CONNECT_RC" 0 "csp connect exit status (sealed)"
expect_eq "$(sha256sum <"$LAB_DIR/echoed.bin" | cut -c1-64)" "$sent" "the echo is the 4 MB sent (sealed)"

step "a hostile party between the relays flips one bit after 1 MB: detected end to end, the session fails closed"
lab_serve gw2 "$LAB_DIR/flip.log" $FLOWS tcp-flip 7999 --to 100.64.0.1:7228 --after 1000000 --duration 60 --bind 100.64.0.1
in_ns gw2 nft -f - <<'NFT'
table ip hostile {
  chain prerouting {
    type nat hook prerouting priority dstnat - 20; policy accept;
    ip saddr 100.64.0.2 tcp dport 7228 redirect to :7999
  }
}
NFT
connect flipped.log
expect_eq "$CONNECT_RC" 6 "csp connect exit status: the session failed closed"
expect_match "$(cat "$LAB_DIR/flipped.log")" "aborted by the peer \(code 1\): integrity failure" "the server's ABORT names the integrity failure"
expect_no_match "$(cat "$LAB_DIR/flipped.log")" "resumed" "a failed session is never resumed"
wait_for_match "$LAB_DIR/flip.log" "flipped True" 5
wait_for_match "$LAB_DIR/echo.log" "failed: integrity failure" 5
received=$(stat -c %s "$LAB_DIR/echoed.bin")
[ "$received" -lt $((4 << 20)) ] || fail "the client received all 4 MB despite the flipped bit"
cmp -s -n "$received" "$LAB_DIR/echoed.bin" "$LAB_DIR/data.bin" || fail "what the client received before the failure differs from what it sent"
echo "      $received octets echoed before the failure, all of them the ones sent"
echo "relay-series: all checks passed"
