#!/usr/bin/env bash
# Relayed sessions through one gateway (issue 15, scenarios 1, 3 and 4; PROTOCOL.md 14). The
# gateway's policy relays TCP to the server's network: a signed SETUP that allows relaying gets a
# RELAY offer (gw's record, signed, naming its relay endpoint and a token); `csp connect` opens its
# hop to midrelayd, which opens the next hop to the server and splices the two. The two ends run
# the end-to-end layer (Noise XX, records); the relay sees ciphertext only. A hop killed mid-
# transfer is resumed without the application noticing; a SETUP that does not allow relaying, an
# unsigned one, and the n+1th session of a key are refused with a reason.
#
#   client 10.200.1.2 ── gw 10.200.1.1 (midcomd gw1 + midrelayd :7228) 10.200.2.1 ── server 10.200.2.2
source "$(dirname "$0")/lib.sh"
lab_init relay

step "lab: client — gw — server; gw relays TCP to 10.200.2.0/24 (midrelayd on 10.200.1.1:7228)"
lab_basic
"$BIN/csp" keygen --key "$LAB_DIR/client.key" >/dev/null
"$BIN/csp" keygen --key "$LAB_DIR/server.key" >/dev/null
server_key=$("$BIN/csp" keygen --key "$LAB_DIR/server.key" --show)
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"

[policy]
default = "admit"
unsignaled = "drop"

[relay]
enabled = true
listen = ["10.200.1.1:7228"]
token-lifetime = 5
terminating = true

[[rule]]
name = "plain-service-read-by-the-relay"
proto = "tcp"
destination = "10.200.2.2/32"
port = 9200
action = "relay"
relay-mode = "terminating"

[[rule]]
name = "server-net-through-the-relay"
proto = "tcp"
destination = "10.200.2.0/24"
action = "relay"
CONF
)
lab_midcomd gw "$conf"
relay_key="$LAB_DIR/gw-state/relay.key"
[ -f "$relay_key" ] || fail "midcomd made no relay key in its state directory"
expect_eq "$(stat -c %a "$relay_key")" 600 "relay key mode"
# midrelayd reads midcomd's configuration ([relay] listen); the limit is lowered for the last step.
start_relay() {
  lab_bg gw "$LAB_DIR/midrelayd.log" "$BIN/midrelayd" --config "$conf" --relay-key "$relay_key" \
    --control-socket "$LAB_DIR/relay.sock" --sessions-per-key 3 -v "$@"
  RELAY_PID=$LAB_LAST_PID
}
start_relay
wait_for_match "$LAB_DIR/midrelayd.log" "relaying on 10\.200\.1\.1:7228" 5
lab_bg server "$LAB_DIR/echo.log" "$BIN/csp" serve 9000 --address 10.200.2.2 --key "$LAB_DIR/server.key" --exec cat -v
wait_for_match "$LAB_DIR/echo.log" "^listening on 10\.200\.2\.2:9000" 5
lab_bg server "$LAB_DIR/sink.log" "$BIN/csp" serve 9001 --address 10.200.2.2 --key "$LAB_DIR/server.key" \
  --exec "sha256sum | cut -c1-64 > $LAB_DIR/sink.sum" -v
wait_for_match "$LAB_DIR/sink.log" "^listening on 10\.200\.2\.2:9001" 5

step "without signaling the client cannot reach the server"
set +e; out=$(in_ns client $FLOWS tcp-send 10.200.2.2 9000 --timeout 1); rc=$?; set -e
expect_eq "$rc" 1 "direct connection to 10.200.2.2:9000 (tcp-send exit status)"

step "a SETUP that does not allow relaying: REJECT 67 relay-required, naming the rule and the gateway"
csp_run client setup tcp 10.200.2.2:9000 --key "$LAB_DIR/client.key" --responder legacy
expect_eq "$CSP_RC" 1 "csp exit status"
expect_match "$CSP_OUT" "relay-required" "result code"
expect_match "$CSP_OUT" "gw1" "the REASON names the gateway"
step "an unsigned SETUP that would be relayed: refused (relaying binds hops to keys)"
csp_run client setup tcp 10.200.2.2:9000 --responder legacy --allow-relay
expect_eq "$CSP_RC" 1 "csp exit status"
expect_match "$CSP_OUT" "relaying needs a signed SETUP" "reason"

step "csp connect --signal: RELAY from gw1, hop 1 to the relay, 2 MB echoed intact end to end"
$PY - "$LAB_DIR/marked.bin" <<'PY'
import sys
with open(sys.argv[1], "wb") as f:
    for i in range(65536):
        f.write(b"MIDCOM-PLAINTEXT-MARKER-%05d\n" % (i % 100000))
PY
sent=$(sha256sum <"$LAB_DIR/marked.bin" | cut -c1-64)
lab_bg gw "$LAB_DIR/capture.log" tshark -q -i to-client -i to-server -w "$LAB_DIR/relay.pcapng" -f "tcp"
capture_pid=$LAB_LAST_PID
wait_for_match "$LAB_DIR/capture.log" "Capturing on" 10
sleep 0.5
set +e
in_ns client "$BIN/csp" connect 10.200.2.2:9000 --signal --key "$LAB_DIR/client.key" --peer-key "$server_key" -v \
  <"$LAB_DIR/marked.bin" >"$LAB_DIR/echoed.bin" 2>"$LAB_DIR/connect.log"
rc=$?
set -e
indent <"$LAB_DIR/connect.log"
expect_eq "$rc" 0 "csp connect exit status"
expect_eq "$(sha256sum <"$LAB_DIR/echoed.bin" | cut -c1-64)" "$sent" "the echo is the 2 MB sent, in order"
expect_match "$(cat "$LAB_DIR/connect.log")" "relayed by middlebox [0-9a-f]{16} at 10\.200\.1\.1:7228" "relay offer followed"
wait_for_match "$LAB_DIR/echo.log" "from csp-ed25519 [0-9a-f]{64} via 10\.200\.2\.1:[0-9]+" 5
expect_no_match "$(cat "$LAB_DIR/echo.log")" "via 10\.200\.1\.2" "the server saw the client's address"
expect_match "$(cat "$LAB_DIR/midrelayd.log")" "hop 1→2 up \(10\.200\.1\.2:[0-9]+ → 10\.200\.2\.2:9000\)" "midrelayd carried the session"
step "midctl sessions --relayed: the session with both hops and its octets each way"
out=$("$BIN/midctl" sessions --relayed --relay-socket "$LAB_DIR/relay.sock")
indent <<<"$out"
expect_match "$out" "^[0-9a-f]{16} +1→2 +10\.200\.1\.2:[0-9]+ +10\.200\.2\.2:9000 \(last\) +clear +2\.[0-9] MB +2\.[0-9] MB .*ended \(closed\)" "the relayed session's row"
json=$("$BIN/midctl" sessions --relayed --json --relay-socket "$LAB_DIR/relay.sock")
expect_eq "$($PY -c 'import json,sys; s=json.load(sys.stdin)[0]; print(s["bytes_up"] > 1966080, s["bytes_down"] > 1966080, s["hop_in"]["index"], s["hop_out"]["remote"], s["hop_out"]["last"])' <<<"$json")" \
  "True True 1 10.200.2.2:9000 True" "JSON: octets both ways, hop 1 in, hop 2 out to the server"
sleep 1
kill "$capture_pid"; wait "$capture_pid" 2>/dev/null || true
captured=$(stat -c %s "$LAB_DIR/relay.pcapng")
[ "$captured" -gt 4000000 ] || fail "the capture holds both hops both ways (only $captured octets)"
expect_eq "$(grep -ac "MIDCOM-PLAINTEXT-MARKER" "$LAB_DIR/relay.pcapng" || true)" 0 "plaintext markers on the relay's links"
echo "      capture: $captured octets on both hops, no plaintext marker"

step "a responder with another key than the pinned one: exit 5 (the session is not run)"
set +e
out=$(echo secret | in_ns client "$BIN/csp" connect 10.200.2.2:9000 --signal --key "$LAB_DIR/client.key" \
  --peer-key "$("$BIN/csp" keygen --key "$LAB_DIR/client.key" --show)" 2>&1)
rc=$?
set -e
indent <<<"$out"
expect_eq "$rc" 5 "csp connect exit status for a substituted responder"
expect_match "$out" "not the expected" "the key mismatch is named"

step "csp serve --forward: an ordinary TCP echo server (flows.py) reached end to end through the relay"
lab_serve server "$LAB_DIR/plain.log" $FLOWS tcp-serve 9100 --bind 127.0.0.1 --duration 60
lab_bg server "$LAB_DIR/forward.log" "$BIN/csp" serve 9002 --address 10.200.2.2 --key "$LAB_DIR/server.key" --forward 127.0.0.1:9100 -v
wait_for_match "$LAB_DIR/forward.log" "^listening on 10\.200\.2\.2:9002" 5
head -c 300000 /dev/urandom >"$LAB_DIR/plain.bin"
in_ns client "$BIN/csp" connect 10.200.2.2:9002 --signal --key "$LAB_DIR/client.key" --peer-key "$server_key" \
  <"$LAB_DIR/plain.bin" >"$LAB_DIR/plain.out" 2>"$LAB_DIR/plain-connect.log" || fail "csp connect to --forward: $(cat "$LAB_DIR/plain-connect.log")"
cmp -s "$LAB_DIR/plain.bin" "$LAB_DIR/plain.out" || fail "the plain server's echo differs from what was sent"
wait_for_match "$LAB_DIR/plain.log" "conn from 127\.0\.0\.1:[0-9]+ bytes 300000" 5

step "a terminating relay for a server without the session layer: REJECT 68 unless allowed, then the relay answers"
lab_serve server "$LAB_DIR/plain9200.log" $FLOWS tcp-serve 9200 --bind 10.200.2.2 --duration 60
set +e
out=$(echo hi | in_ns client "$BIN/csp" connect 10.200.2.2:9200 --signal --key "$LAB_DIR/client.key" --any-peer 2>&1)
rc=$?
set -e
indent <<<"$out"
expect_eq "$rc" 1 "csp connect exit status without --allow-terminating"
expect_match "$out" "terminating-relay-required" "REJECT 68"
in_ns client "$BIN/csp" connect 10.200.2.2:9200 --signal --key "$LAB_DIR/client.key" --allow-terminating -v \
  <"$LAB_DIR/plain.bin" >"$LAB_DIR/plain9200.out" 2>"$LAB_DIR/terminating.log" || fail "terminating: $(cat "$LAB_DIR/terminating.log")"
indent <"$LAB_DIR/terminating.log"
cmp -s "$LAB_DIR/plain.bin" "$LAB_DIR/plain9200.out" || fail "the plain server's echo through the terminating relay differs"
expect_match "$(cat "$LAB_DIR/terminating.log")" "ends the end-to-end layer: it reads this session" "the host is told the relay reads it"
wait_for_match "$LAB_DIR/plain9200.log" "conn from 10\.200\.2\.1:[0-9]+ bytes 300000" 5
expect_match "$(cat "$LAB_DIR/midrelayd.log")" "terminated here → 10\.200\.2\.2:9200" "midrelayd ended the end-to-end layer"

head -c 100000000 /dev/urandom >"$LAB_DIR/big.bin"
big=$(sha256sum <"$LAB_DIR/big.bin" | cut -c1-64)
# break_and_resume NAME GAP BREAK...: 100 MB to the sha256 sink with a GAP-second pause after
# 40 MB, during which BREAK (a command) breaks something; then the client must have resumed, exited
# 0, and the server's sha256 must be the sender's. The client's log is $LAB_DIR/NAME.log.
break_and_resume() {
  local name=$1 gap=$2 transfer; shift 2
  rm -f "$LAB_DIR/sink.sum"
  (
    set +e
    { head -c 40000000 "$LAB_DIR/big.bin"; sleep "$gap"; tail -c +40000001 "$LAB_DIR/big.bin"; } |
      in_ns client "$BIN/csp" connect 10.200.2.2:9001 --signal --key "$LAB_DIR/client.key" --peer-key "$server_key" -v \
        >/dev/null 2>"$LAB_DIR/$name.log"
    echo $? >"$LAB_DIR/$name.rc"
  ) &
  transfer=$!
  wait_for_match "$LAB_DIR/midrelayd.log" "hop 1→2 up \(10\.200\.1\.2:[0-9]+ → 10\.200\.2\.2:9001\)" 10
  sleep 1
  "$@"
  wait "$transfer" || true
  indent <"$LAB_DIR/$name.log"
  expect_eq "$(cat "$LAB_DIR/$name.rc")" 0 "csp connect exit status"
  expect_match "$(cat "$LAB_DIR/$name.log")" "resumed" "the client resumed"
  for _ in $(seq 1 50); do [ -s "$LAB_DIR/sink.sum" ] && break; sleep 0.1; done
  expect_eq "$(cat "$LAB_DIR/sink.sum")" "$big" "sha256 of the 100 MB the server read"
}
restart_relay() {
  kill -9 "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true
  : >"$LAB_DIR/midrelayd.log"
  sleep 6  # the relay's state is gone and the token (5 s) has expired
  start_relay
  wait_for_match "$LAB_DIR/midrelayd.log" "relaying on 10\.200\.1\.1:7228" 5
}

step "a hop killed mid-transfer (ss -K on the client's hop): the session resumes, 100 MB arrive intact"
break_and_resume resume 2 in_ns client ss -K dst 10.200.1.1 dport = 7228
step "the relay's hop to the server killed (ss -K in gw): resumed through a new hop 2"
break_and_resume resume2 2 in_ns gw ss -K dst 10.200.2.2 dport = 9001
step "midrelayd killed mid-transfer and restarted after the offer expired: a new offer, the session resumes, 100 MB intact"
break_and_resume restart 10 restart_relay
expect_match "$(cat "$LAB_DIR/restart.log")" "the relay forgot the session: new offer" "the client signaled again"

step "hostile hops: 200 connections of garbage, a bad magic, an oversized and an unknown frame: each ends, the relay serves on"
in_ns client $PY - <<'PY'
import socket
bad = [b"GET / HTTP/1.1\r\n\r\n", b"CH\x02\x01\x00\x20" + bytes(32), b"CH\x01\x01\xff\xff", b"CH\x01\x09\x00\x01x", b"\x00" * 4096]
closed = 0
for i in range(200):
    s = socket.create_connection(("10.200.1.1", 7228), timeout=5)
    try:
        s.sendall(bad[i % len(bad)])
        s.settimeout(5)
        while s.recv(4096):
            pass
        closed += 1
    except ConnectionResetError:
        closed += 1
    finally:
        s.close()
print(f"      {closed} of 200 hostile hops ended by the relay")
assert closed == 200
PY
kill -0 "$RELAY_PID" || fail "midrelayd died on hostile hops"
echo hello | in_ns client "$BIN/csp" connect 10.200.2.2:9000 --signal --key "$LAB_DIR/client.key" --peer-key "$server_key" \
  >"$LAB_DIR/after-hostile.out" 2>&1 || fail "a session after the hostile hops: $(cat "$LAB_DIR/after-hostile.out")"
expect_eq "$(cat "$LAB_DIR/after-hostile.out")" "hello" "a session after the hostile hops is echoed"

step "limits: 3 sessions per key; the 4th is refused by the relay (REFUSE 128), passed to the host"
"$BIN/csp" keygen --key "$LAB_DIR/limit.key" >/dev/null
limit_key=$("$BIN/csp" keygen --key "$LAB_DIR/limit.key" --show)
limit_prefix=${limit_key#csp-ed25519 }; limit_prefix=${limit_prefix:0:8}
holders=()
for i in 1 2 3; do
  (sleep 20 | in_ns client "$BIN/csp" connect 10.200.2.2:9000 --signal --key "$LAB_DIR/limit.key" --peer-key "$server_key" \
    >/dev/null 2>"$LAB_DIR/hold$i.log") &
  holders+=($!)
done
up_sessions() { "$BIN/midctl" sessions --relayed --relay-socket "$LAB_DIR/relay.sock" | grep " up " | grep -c "$limit_prefix" || true; }
for _ in $(seq 1 100); do [ "$(up_sessions)" -ge 3 ] && break; sleep 0.1; done
set +e
out=$(echo hi | in_ns client "$BIN/csp" connect 10.200.2.2:9000 --signal --key "$LAB_DIR/limit.key" --peer-key "$server_key" 2>&1)
rc=$?
set -e
indent <<<"$out"
expect_eq "$rc" 1 "csp connect exit status for a refused session"
expect_match "$out" "resources-exhausted: 3 relayed sessions for key" "the relay's reason reaches the host"
expect_eq "$(up_sessions)" 3 "three sessions up at the relay"
for pid in "${holders[@]}"; do kill "$pid" 2>/dev/null || true; done

step "limits at the relay (midrelayd restarted with --idle-timeout 2 --bytes-per-session 3000000): an idle session and a transfer past 3 MB are cut at the relay"
kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true
: >"$LAB_DIR/midrelayd.log"
start_relay --idle-timeout 2 --bytes-per-session 3000000
wait_for_match "$LAB_DIR/midrelayd.log" "relaying on 10\.200\.1\.1:7228" 5
relayed() { "$BIN/midctl" sessions --relayed --relay-socket "$LAB_DIR/relay.sock"; }
# stdin stays open (sleep) and silent: csp connect's exit status goes to idle.rc when it ends.
(sleep 15 | { status=0; in_ns client "$BIN/csp" connect 10.200.2.2:9000 --signal --key "$LAB_DIR/client.key" --peer-key "$server_key" -v \
  >"$LAB_DIR/idle.out" 2>"$LAB_DIR/idle.log" || status=$?; echo $status >"$LAB_DIR/idle.rc"; }) &
for _ in $(seq 1 50); do relayed | grep -q " up " && break; sleep 0.1; done
expect_match "$(relayed)" " up " "the idle session is up at the relay"
up_at=$(now_s)
for _ in $(seq 1 80); do relayed | grep -q "ended (idle)" && break; sleep 0.1; done
cut=$(awk -v a="$up_at" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }')
out=$(relayed); indent <<<"$out"
expect_match "$out" "10\.200\.2\.2:9000 .*ended \(idle\)" "the idle session ended at the relay"
awk -v c="$cut" 'BEGIN { exit !(c >= 1.0 && c <= 5.0) }' || fail "idle session cut after ${cut} s (idle timeout 2 s, checked every second)"
for _ in $(seq 1 100); do [ -s "$LAB_DIR/idle.rc" ] && break; sleep 0.1; done
[ -s "$LAB_DIR/idle.rc" ] || fail "csp connect still runs 10 s after the relay cut its idle session: $(cat "$LAB_DIR/idle.log")"
rc=$(cat "$LAB_DIR/idle.rc")
expect_match "$(cat "$LAB_DIR/idle.log")" "refused by the relay chain: policy-denied: idle" "the relay's reason reaches the host"
echo "      idle session cut ${cut} s after it came up; csp connect exit $rc: $(tail -n 1 "$LAB_DIR/idle.log")"
[ "$rc" -ne 0 ] || fail "csp connect exited 0 although the relay cut the session"
: >"$LAB_DIR/sink.sum"
set +e
head -c 20000000 /dev/urandom | in_ns client "$BIN/csp" connect 10.200.2.2:9001 --signal --key "$LAB_DIR/client.key" \
  --peer-key "$server_key" >/dev/null 2>"$LAB_DIR/bytes.log"
rc=$?
set -e
out=$(relayed); indent <<<"$out"
expect_match "$out" "10\.200\.2\.2:9001 .*ended \(byte limit reached\)" "the session past 3 MB ended at the relay"
[ "$rc" -ne 0 ] || fail "csp connect exited 0 although the relay cut the transfer at its byte limit"
json=$("$BIN/midctl" sessions --relayed --json --relay-socket "$LAB_DIR/relay.sock")
moved=$($PY -c 'import json,sys; print(max(s["bytes_up"] + s["bytes_down"] for s in json.load(sys.stdin) if s["hop_out"]["remote"].endswith(":9001")))' <<<"$json")
echo "      byte limit: csp connect exit $rc after ${moved} octets through the relay (limit 3000000: the relay stops reading at it)"
# Over by one pipe (≤ 1 MiB) at most: the limit is held as octets move, not once a second.
[ "$moved" -ge 3000000 ] && [ "$moved" -le $((3000000 + 1048576)) ] || fail "octets through the relay before the cut: $moved"
echo "relay-session: all checks passed"
