#!/usr/bin/env bash
# Scenario 9 (issue #3): a legacy host that does not speak CSP gets the documented default
# policy. The operator's legacy rule in `default_policy` allows outgoing traffic from the LAN;
# midcomd runs with `unsignaled = default-policy`, so the first packet of an unsignaled flow is
# handed back to that policy: outgoing UDP and TCP work (replies ride conntrack), incoming is
# dropped, IPv4 and IPv6, no session is created; the same holds with midcomd stopped. A CSP host
# on the same LAN can still open an incoming pinhole that the legacy policy would not give.
#
#   legacy 10.200.1.2 ── gw (midcomd gw1, default_policy: lan → wan accept) ── server 10.200.2.2
source "$(dirname "$0")/lib.sh"
lab_init legacy

step "lab: legacy — gw — server; operator rule: iifname to-legacy oifname to-server accept"
lab_line legacy gw server
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"

[policy]
default = "admit"
unsignaled = "default-policy"
CONF
)
in_ns gw nft -f "$ROOT/nft-rules/midcom.nft"
in_ns gw nft insert rule inet midcom default_policy iifname to-legacy oifname to-server accept
lab_midcomd gw "$conf"
lab_bg server "$LAB_DIR/listen4.log" "$BIN/csp" listen --duration 60
for b in 0.0.0.0 ::; do
  lab_serve server "$LAB_DIR/udp-server-$b.log" $FLOWS udp-echo 5000 --bind "$b" --duration 60
  lab_serve server "$LAB_DIR/tcp-server-$b.log" $FLOWS tcp-serve 8080 --bind "$b" --duration 60
  lab_serve legacy "$LAB_DIR/udp-legacy-$b.log" $FLOWS udp-echo 5000 --bind "$b" --duration 60
  lab_serve legacy "$LAB_DIR/tcp-legacy-$b.log" $FLOWS tcp-serve 8080 --bind "$b" --duration 60
done
sleep 0.5

# outgoing_works / incoming_dropped SPORT: UDP and TCP, IPv4 and IPv6, no csp anywhere.
outgoing_works() {
  local sport=$1 dest out
  for dest in 10.200.2.2 fd00:2::2; do
    out=$(in_ns legacy $FLOWS udp-ping "$dest" 5000 --sport "$sport" --count 5 --interval 0.02 --wait 0.4)
    indent <<<"$out"; expect_match "$out" "sent 5 replies 5 " "outgoing UDP to $dest"
    out=$(in_ns legacy $FLOWS tcp-send "$dest" 8080 --bytes 50000 --timeout 2) || fail "outgoing TCP to $dest: $out"
    indent <<<"$out"; expect_match "$out" "sent 50000 echoed 50000" "outgoing TCP to $dest"
  done
}
incoming_dropped() {
  local sport=$1 dest out rc
  for dest in 10.200.1.2 fd00:1::2; do
    out=$(in_ns server $FLOWS udp-ping "$dest" 5000 --sport "$sport" --count 5 --interval 0.02 --wait 0.4)
    indent <<<"$out"; expect_match "$out" "sent 5 replies 0 " "incoming UDP to $dest"
    set +e; out=$(in_ns server $FLOWS tcp-send "$dest" 8080 --timeout 1); rc=$?; set -e
    indent <<<"$out"; expect_eq "$rc" 1 "incoming TCP to $dest (tcp-send exit status)"
  done
  expect_no_match "$(cat "$LAB_DIR"/udp-legacy-*.log)" "echo from .*:$sport\$" "the legacy host saw incoming UDP from port $sport"
}

step "outgoing from the legacy host: UDP and TCP over IPv4 and IPv6 work without signaling"
outgoing_works 4000
step "incoming to the legacy host: dropped"
incoming_dropped 6000

step "midcomd only handed the first packets back to the policy: no sessions, no elements"
passed=$(status_counter gw unsignaled_passed)
[ "$passed" -ge 4 ] || fail "unsignaled_passed should count the first packet of the 4 outgoing flows, is $passed"
expect_eq "$(status_counter gw admitted)" 0 "admitted counter"
expect_eq "$(midctl gw sessions --json | $PY -c 'import json,sys; print(len(json.load(sys.stdin)))')" 0 "sessions in midctl"
expect_eq "$(nft_element_count gw)" 0 "elements in the midcom sets"
expect_match "$(in_ns gw nft list chain inet midcom default_policy)" "counter packets [1-9][0-9]* bytes [0-9]+ drop" "the final drop of default_policy counted the incoming packets"

step "a CSP host on the same LAN still gets its pinhole (the legacy policy alone would drop it)"
csp_run legacy setup udp --incoming --peer 10.200.2.2 --local-port 5000 --lifetime 30
expect_eq "$CSP_RC" 0 "incoming setup exit status"
pinhole=$(session_of "$CSP_OUT")
out=$(in_ns server $FLOWS udp-ping 10.200.1.2 5000 --sport 6100 --count 5 --interval 0.02 --wait 0.4)
indent <<<"$out"; expect_match "$out" "sent 5 replies 5 " "incoming UDP through the signaled pinhole"
step "csp teardown: the pinhole and its established flow are gone"
csp_run legacy teardown "$pinhole" 10.200.2.2
expect_eq "$CSP_RC" 0 "teardown exit status"
sleep 0.3
expect_eq "$(nft_element_count gw)" 0 "elements after the teardown"
out=$(in_ns server $FLOWS udp-ping 10.200.1.2 5000 --sport 6100 --count 5 --interval 0.02 --wait 0.4)
indent <<<"$out"; expect_match "$out" "sent 5 replies 0 " "the established incoming flow after the teardown"

step "midcomd stopped (SIGTERM): the same legacy policy still applies"
kill -TERM "$MIDCOMD_PID"
for _ in $(seq 1 50); do kill -0 "$MIDCOMD_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$MIDCOMD_PID" 2>/dev/null && fail "midcomd did not stop within 5 s of SIGTERM"
outgoing_works 4100
incoming_dropped 6200
echo "09-legacy-host: all checks passed"
