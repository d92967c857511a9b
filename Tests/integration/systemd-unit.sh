#!/usr/bin/env bash
# The systemd side: the unit verifies and scores <= 2.0 on `systemd-analyze security`, and the
# daemon speaks sd_notify: READY=1 once serving, WATCHDOG=1 from the packet loop, RELOADING=1
# and READY=1 around a reload, STOPPING=1.
source "$(dirname "$0")/lib.sh"
lab_init systemd-unit

step "systemd-analyze verify and security (offline)"
unit_dir="$LAB_DIR/units"; mkdir -p "$unit_dir"
# verify checks that ExecStart and ExecReload exist: point them at the freshly built binaries.
sed "s|/usr/local/sbin/|$BIN/|g" "$ROOT/systemd/midcomd.service" >"$unit_dir/midcomd.service"
expect_match "$(cat "$unit_dir/midcomd.service")" "^ExecReload=$BIN/midctl --socket /run/midcom/control.sock reload$" "ExecReload waits for midctl reload"
out=$(systemd-analyze verify "$unit_dir/midcomd.service" 2>&1) || fail "systemd-analyze verify: $out"
expect_eq "$out" "" "systemd-analyze verify output"
score=$(systemd-analyze security --offline=yes "$unit_dir/midcomd.service" 2>&1 | sed -n 's/.*Overall exposure level for midcomd.service: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || fail "no exposure score from systemd-analyze security"
step "exposure score $score"
$PY -c "import sys; sys.exit(0 if float('$score') <= 2.0 else 1)" || fail "exposure $score is above 2.0"

step "midrelayd.service: verify, no capability, exposure at most 2.0"
sed "s|/usr/local/sbin/|$BIN/|g" "$ROOT/systemd/midrelayd.service" >"$unit_dir/midrelayd.service"
out=$(systemd-analyze verify "$unit_dir/midrelayd.service" 2>&1) || fail "systemd-analyze verify midrelayd: $out"
expect_eq "$out" "" "systemd-analyze verify output (midrelayd)"
expect_match "$(cat "$unit_dir/midrelayd.service")" "^CapabilityBoundingSet=$" "midrelayd holds no capability"
expect_match "$(cat "$unit_dir/midrelayd.service")" "^LoadCredential=relay.key:/var/lib/midcom/relay.key$" "the relay key is handed over as a credential"
relay_score=$(systemd-analyze security --offline=yes "$unit_dir/midrelayd.service" 2>&1 | sed -n 's/.*Overall exposure level for midrelayd.service: \([0-9.]*\).*/\1/p')
[ -n "$relay_score" ] || fail "no exposure score for midrelayd.service"
step "midrelayd exposure score $relay_score"
$PY -c "import sys; sys.exit(0 if float('$relay_score') <= 2.0 else 1)" || fail "midrelayd exposure $relay_score is above 2.0"

step "sd_notify: READY=1, WATCHDOG=1 from the packet loop, STOPPING=1"
lab_ns gw
in_ns gw nft -f "$ROOT/nft-rules/midcom.nft"
cat >"$LAB_DIR/notify.py" <<'PYEOF'
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(0.5)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    try:
        data = s.recv(4096).decode()
    except socket.timeout:
        continue
    for line in data.splitlines():
        print(line, flush=True)
    if "STOPPING=1" in data:
        break
PYEOF
lab_bg gw "$LAB_DIR/notify.log" $PY "$LAB_DIR/notify.py" "$LAB_DIR/notify.sock"
for _ in $(seq 1 50); do [ -S "$LAB_DIR/notify.sock" ] && break; sleep 0.1; done
NOTIFY_SOCKET="$LAB_DIR/notify.sock" WATCHDOG_USEC=1000000 lab_bg gw "$LAB_DIR/gw-midcomd.log" \
  "$BIN/midcomd" --config /dev/null --control-socket "$LAB_DIR/gw.sock"
daemon=$LAB_LAST_PID
for _ in $(seq 1 50); do grep -q READY=1 "$LAB_DIR/notify.log" 2>/dev/null && break; sleep 0.1; done
expect_match "$(cat "$LAB_DIR/notify.log")" "^READY=1" "READY=1"
# READY comes only after the control socket answers.
midctl gw status >/dev/null || fail "midctl after READY=1"
sleep 1.2
watchdogs=$(grep -c '^WATCHDOG=1' "$LAB_DIR/notify.log" || true)
[ "$watchdogs" -ge 3 ] || fail "expected >= 3 WATCHDOG=1 in 1.2 s (every 250 ms), got $watchdogs"
step "a reload says RELOADING=1, then READY=1 again"
kill -HUP "$daemon"
for _ in $(seq 1 50); do [ "$(grep -c '^READY=1' "$LAB_DIR/notify.log")" -ge 2 ] && break; sleep 0.1; done
expect_match "$(grep -E '^(RELOADING|READY)=1' "$LAB_DIR/notify.log" | tr '\n' ' ')" "^READY=1 RELOADING=1 READY=1 $" "notifications around the reload"
kill -TERM "$daemon"
for _ in $(seq 1 50); do kill -0 "$daemon" 2>/dev/null || break; sleep 0.1; done
expect_match "$(cat "$LAB_DIR/notify.log")" "STOPPING=1" "STOPPING=1"
echo "systemd-unit: all checks passed"
