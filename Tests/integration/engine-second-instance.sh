#!/usr/bin/env bash
# Engine regression: one midcomd per gateway (per network namespace). A second midcomd started
# with another queue number and its own control socket must refuse to start — exit non-zero
# within 5 s saying "another midcomd" — instead of replacing the first one's queue rule in
# `enqueue` (and flushing the chain when it stops, which leaves the gateway without a daemon).
# The first daemon keeps its rule (queue 0) and keeps answering signaling.
#
#   client 10.200.1.2 ── gw (midcomd gw1, queue 0) ── server 10.200.2.2
source "$(dirname "$0")/lib.sh"
lab_init second

enqueue() { in_ns gw nft list chain inet midcom enqueue 2>/dev/null; }

step "lab: client — gw — server, the first midcomd on queue 0"
lab_basic
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"
queue = 0

[policy]
default = "admit"
unsignaled = "drop"
CONF
)
lab_midcomd gw "$conf"
expect_match "$(enqueue)" "$(queue_rule 0)" "the first daemon's queue rule"
lab_bg server "$LAB_DIR/listen4.log" "$BIN/csp" listen --duration 20
sleep 0.3

step "a second midcomd in the same namespace, queue 1, its own control socket: refused within 5 s"
conf2=$(lab_conf second <<'CONF'
[daemon]
name = "gw2"
queue = 1

[policy]
default = "admit"
unsignaled = "drop"
CONF
)
lab_bg gw "$LAB_DIR/gw2-midcomd.log" "$BIN/midcomd" --config "$conf2" --control-socket "$LAB_DIR/second.sock" --log-level debug
second=$LAB_LAST_PID
for _ in $(seq 1 50); do kill -0 "$second" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$second" 2>/dev/null; then
  fail "the second midcomd (queue 1) still runs after 5 s; enqueue chain now: $(enqueue | grep -E "$(queue_rule '[0-9]+(-[0-9]+)?')" | tr -s ' \t' ' ')"
fi
set +e; wait "$second"; rc=$?; set -e
out=$(cat "$LAB_DIR/gw2-midcomd.log")
indent <<<"$out"
[ "$rc" -ne 0 ] || fail "the second midcomd exited 0: $out"
expect_match "$out" "another midcomd" "the second daemon's message"

step "the first daemon keeps its queue rule and answers signaling"
chain=$(enqueue)
indent <<<"$(grep -E "$(queue_rule '[0-9]+(-[0-9]+)?')" <<<"$chain" || true)"
expect_match "$chain" "$(queue_rule 0)" "the first daemon's queue rule after the second start"
expect_no_match "$chain" "num 1" "a queue rule of the second daemon"
expect_eq "$(grep -cE "$(queue_rule '[0-9]+(-[0-9]+)?')" <<<"$chain" || true)" 1 "queue rules in enqueue"
kill -0 "$MIDCOMD_PID" || fail "the first midcomd died"
expect_match "$(midctl gw status)" "queue" "the first daemon answers midctl"
csp_run client setup udp 10.200.2.2:5000 --sport 4000 --lifetime 30
expect_eq "$CSP_RC" 0 "csp setup through the first daemon"
expect_match "$CSP_OUT" "middlebox gw1 .*: admitted, 30s" "gw1's record"
expect_match "$(nft_set gw admit4)" "10\.200\.1\.2 \. udp \. 4000 \. 10\.200\.2\.2 \. 5000 " "admit element"
echo "engine-second-instance: all checks passed"
