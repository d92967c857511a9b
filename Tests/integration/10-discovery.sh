#!/usr/bin/env bash
# Scenario 10 (issue #3): discovery. The client sends a packet carrying the discovery option
# toward a host beyond the gateway, in each encoding: IPv4 option, IPv6 hop-by-hop option, TCP
# option (IPv4 and IPv6 SYN). The gateway answers ANNOUNCE with its name, identity and epoch (the
# same it writes into its records), and forwards the probe with the option unchanged. Without the
# daemon nobody answers (csp exit 3); after a restart the epoch differs, which is how hosts notice
# lost state.
#
#   client 10.200.1.2 ── gw (midcomd gw1) ── server 10.200.2.2   (fd00:1::2 / fd00:2::2)
source "$(dirname "$0")/lib.sh"
lab_init discover

step "lab: client — gw — server; the operator lets the LAN out, so probes travel on"
lab_basic
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"

[policy]
default = "admit"
unsignaled = "default-policy"
CONF
)
in_ns gw nft -f "$ROOT/nft-rules/midcom.nft"
in_ns gw nft insert rule inet midcom default_policy iifname to-client oifname to-server accept
lab_midcomd gw "$conf"
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 60
lab_serve server "$LAB_DIR/sniff.log" $FLOWS sniff to-gw --duration 60
sleep 0.5

step "reference: gw1's identity and epoch as its record in an ACCEPT shows them"
csp_run client setup udp 10.200.2.2:5000 --sport 4000 --lifetime 30
expect_eq "$CSP_RC" 0 "setup exit status"
identity=$(sed -n 's/.*middlebox gw1 id \([0-9a-f]\{16\}\) epoch \([0-9]*\):.*/\1 \2/p' <<<"$CSP_OUT")
id=${identity% *}; epoch=${identity#* }
[ -n "$id" ] && [ -n "$epoch" ] || fail "no gw1 record in: $CSP_OUT"
expect_eq "$(midctl gw status --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["epoch"])')" "$epoch" "epoch in midctl status"

# discover LABEL DEST ENCODING GW-ADDRESS: one ANNOUNCE from gw1 with the reference identity.
discover() {
  step "$1: csp discover $2 --encoding $3"
  csp_run client discover "$2" --encoding "$3" --timeout 1
  expect_eq "$CSP_RC" 0 "$1: csp exit status"
  expect_eq "$(grep -c '^ANNOUNCE' <<<"$CSP_OUT")" 1 "$1: ANNOUNCEs"
  # Signed by the key whose fingerprint is the ID when that fits 3x the probe (the name is left
  # out first); a small probe gets the unsigned ANNOUNCE with the name (docs/PROTOCOL.md 5.7, 9.3).
  expect_match "$CSP_OUT" "^ANNOUNCE from $4: middlebox (gw1 id $id epoch $epoch; unsigned|(gw1|\\?) id $id epoch $epoch; signed by key $id)$" "$1: ANNOUNCE"
}
discover "IPv4 option" 10.200.2.2 ipv4 "10\.200\.1\.1"
discover "IPv6 hop-by-hop option" fd00:2::2 ipv6 "fd00:1::1"
discover "TCP option (IPv4 SYN)" 10.200.2.2:80 tcp "10\.200\.1\.1"
discover "TCP option (IPv6 SYN)" '[fd00:2::2]:80' tcp "fd00:1::1"
# The recommended probe (PROTOCOL.md 9.2): an empty datagram to the peer's CSP port with the option.
# It is signaling by port, and must be answered, not dropped as malformed CSP.
discover "IPv4 option, empty datagram to the CSP port" 10.200.2.2:7227 ipv4 "10\.200\.1\.1"
expect_eq "$(status_counter gw announced)" 5 "announced counter"
expect_eq "$(status_counter gw malformed_messages)" 0 "the empty probe is not malformed signaling"

step "each probe reached the server with its option unchanged"
wait_for_match "$LAB_DIR/sniff.log" "^ipv4 10\.200\.1\.2 > 10\.200\.2\.2 ipopts 9e0e" 2
wait_for_match "$LAB_DIR/sniff.log" "^ipv6 fd00:1::2 > fd00:2::2 hbh [0-9a-f]{2}011e0c" 2
wait_for_match "$LAB_DIR/sniff.log" "^ipv4 10\.200\.1\.2 > 10\.200\.2\.2 tcpopts (([0-9a-f]{2})*)fd104353" 2
wait_for_match "$LAB_DIR/sniff.log" "^ipv6 fd00:1::2 > fd00:2::2 tcpopts (([0-9a-f]{2})*)fd104353" 2
indent <"$LAB_DIR/sniff.log"

step "idle, midcomd's threads sleep until work comes: its timers only (the readers' ticks, the snapshot's, the ruleset watch's)"
# Voluntary context switches of all its threads over 2 s with no traffic: a thread that polls
# (the epoch announcer's 100 ms loop did) wakes the gateway's CPUs ten times a second for nothing.
wakeups() {
  for task in /proc/"$MIDCOMD_PID"/task/*; do
    # Its ID and name (midcomd names its threads), then its count.
    echo "$(basename "$task"):$(tr -d ' ' <"$task/comm") $(awk '/^voluntary_ctxt_switches/ {print $2}' "$task/status")"
  done | sort  # join's order
}
wakeups >"$LAB_DIR/wake0"
sleep 2
wakeups >"$LAB_DIR/wake1"
# Per thread (its ID and name, and wake-ups in the 2 s), then the sum.
join "$LAB_DIR/wake0" "$LAB_DIR/wake1" | awk '$3 > $2 {printf "      thread %s: %d\n", $1, $3 - $2}'
idle=$(join "$LAB_DIR/wake0" "$LAB_DIR/wake1" | awk '{s += $3 - $2} END {print s + 0}')
echo "      $idle wake-ups in 2 s ($(wc -l <"$LAB_DIR/wake1") threads)"
[ "$idle" -le "${IDLE_WAKEUPS_MAX:-32}" ] || fail "idle midcomd woke $idle times in 2 s (expected at most ${IDLE_WAKEUPS_MAX:-32})"

step "midcomd stopped: no middlebox answers (exit 3)"
kill -TERM "$MIDCOMD_PID"
for _ in $(seq 1 50); do kill -0 "$MIDCOMD_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$MIDCOMD_PID" 2>/dev/null && fail "midcomd did not stop within 5 s of SIGTERM"
csp_run client discover 10.200.2.2 --encoding ipv4 --timeout 1
expect_eq "$CSP_RC" 3 "csp exit status without a middlebox"
expect_match "$CSP_OUT" "no CSP middlebox answered" "csp message without a middlebox"

step "midcomd restarted: ANNOUNCE again, with a new epoch"
lab_midcomd gw "$conf"
csp_run client discover 10.200.2.2 --encoding ipv4 --timeout 1
expect_eq "$CSP_RC" 0 "csp exit status after the restart"
expect_match "$CSP_OUT" "^ANNOUNCE from 10\.200\.1\.1: middlebox (gw1|\?) id [0-9a-f]{16} epoch [0-9]+; (signed by key [0-9a-f]{16}|unsigned)$" "ANNOUNCE after the restart"
epoch2=$(sed -n 's/.* epoch \([0-9]*\)$/\1/p' <<<"$CSP_OUT")
[ "$epoch2" != "$epoch" ] || fail "the epoch did not change across the restart ($epoch)"
echo "10-discovery: all checks passed"
