#!/usr/bin/env bash
# Engine regression: SIGHUP must not kill the gateway. (Its default action terminates the process
# with status 129 — no clean stop: the queue rule stays with bypass, sessions are lost.) midcomd
# keeps running, says in its log that it ignored the SIGHUP, keeps its queue rule and answers
# signaling as before.
#
#   client 10.200.1.2 ── gw (midcomd gw1) ── server 10.200.2.2
source "$(dirname "$0")/lib.sh"
lab_init sighup

step "lab: client — gw — server, midcomd running, one admitted flow"
lab_basic
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"

[policy]
default = "admit"
unsignaled = "drop"
CONF
)
lab_midcomd gw "$conf"
lab_bg server "$LAB_DIR/listen4.log" "$BIN/csp" listen --duration 20
sleep 0.3
csp_run client setup udp 10.200.2.2:5000 --sport 4000 --lifetime 60
expect_eq "$CSP_RC" 0 "csp setup before SIGHUP"
s1=$(session_of "$CSP_OUT")
expect_match "$(in_ns gw nft list chain inet midcom enqueue 2>/dev/null)" "$(queue_rule 0)" "queue rule before SIGHUP"

step "kill -HUP midcomd: still running 1 s later, logged, nothing lost"
kill -HUP "$MIDCOMD_PID"
sleep 1
if ! kill -0 "$MIDCOMD_PID" 2>/dev/null; then
  set +e; wait "$MIDCOMD_PID"; rc=$?; set -e
  fail "midcomd died on SIGHUP (exit status $rc)"
fi
wait_for_match "$LAB_DIR/gw-midcomd.log" "SIGHUP" 2
indent <<<"$(grep SIGHUP "$LAB_DIR/gw-midcomd.log")"
expect_match "$(in_ns gw nft list chain inet midcom enqueue 2>/dev/null)" "$(queue_rule 0)" "queue rule after SIGHUP"
expect_match "$(midctl gw sessions)" "^$s1 +udp +10\.200\.1\.2:4000 +10\.200\.2\.2:5000 +admitted" "session admitted before SIGHUP"

step "csp setup after SIGHUP still succeeds"
csp_run client setup udp 10.200.2.2:5001 --sport 4001 --lifetime 30
expect_eq "$CSP_RC" 0 "csp setup after SIGHUP"
expect_match "$CSP_OUT" "middlebox gw1 .*: admitted, 30s" "gw1's record after SIGHUP"
expect_match "$(nft_set gw admit4)" "10\.200\.1\.2 \. udp \. 4001 \. 10\.200\.2\.2 \. 5001 " "admit element after SIGHUP"
kill -0 "$MIDCOMD_PID" || fail "midcomd died"
echo "engine-sighup: all checks passed"
