#!/usr/bin/env bash
# Operations, seeing what the gateway does (issue 13): `midctl monitor` streams session events
# live (text and --json), including the rule that rejected; `midctl sessions` filters by address,
# protocol, port, state, origin and application; `midctl rules` shows each rule's hits;
# `midctl show-config` prints the configuration in effect, which midcomd reads back as is.
#
#   client 10.200.1.2 ── gw (midcomd gw1) ── server 10.200.2.2
source "$(dirname "$0")/lib.sh"
lab_init inspect

step "lab: client — gw — server; gw1 rejects TCP 23 (rule no-telnet), admits the rest"
lab_basic
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"

[policy]
default = "admit"
unsignaled = "drop"

[[rule]]
name = "no-telnet"
proto = "tcp"
port = 23
action = "reject"
reason = "telnet is forbidden"

[[rule]]
name = "short-udp-53"
proto = "udp"
port = 53
action = "admit"
max-lifetime = 30
CONF
)
lab_midcomd gw "$conf"
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 60
lab_bg gw "$LAB_DIR/monitor.json" "$BIN/midctl" --socket "$LAB_DIR/gw.sock" monitor --json
sleep 0.5

step "events: a SETUP admitted, one rejected by a rule, an unsignaled flow, a TEARDOWN"
csp_run client setup udp 10.200.2.2:5000 --sport 4000 --lifetime 60 --app voip --responder csp
expect_eq "$CSP_RC" 0 "admitted setup"; s1=$(session_of "$CSP_OUT")
csp_run client setup tcp 10.200.2.2:23 --sport 4001 --responder csp
expect_eq "$CSP_RC" 1 "rejected setup"; s2=$(session_of "$CSP_OUT")
in_ns client $FLOWS udp-ping 10.200.2.2 6000 --sport 4002 --count 1 --wait 0.2 >/dev/null
wait_for_match "$LAB_DIR/monitor.json" '"kind":"unsignaled"' 3
wait_for_match "$LAB_DIR/monitor.json" "\"kind\":\"admit\",\"session\":\"$s1\"" 3
wait_for_match "$LAB_DIR/monitor.json" "\"kind\":\"reject\",\"session\":\"$s2\",\"text\":\"rejected SETUP $s2 .* by rule 'no-telnet': telnet is forbidden\"" 3
expect_match "$(cat "$LAB_DIR/monitor.json")" "\"kind\":\"setup\",\"session\":\"$s1\"" "the SETUP going out"
expect_match "$(cat "$LAB_DIR/monitor.json")" "unsignaled udp 10\.200\.1\.2:4002 -> 10\.200\.2\.2:6000 dropped" "the unsignaled flow"
indent <"$LAB_DIR/monitor.json"

step "midctl sessions filters"
csp_run client setup udp 10.200.2.2:53 --sport 4003 --responder csp
expect_eq "$CSP_RC" 0 "DNS setup"; s3=$(session_of "$CSP_OUT")
all=$(midctl gw sessions); indent <<<"$all"
expect_match "$(midctl gw sessions --app voip)" "$s1" "--app voip"
expect_no_match "$(midctl gw sessions --app voip)" "$s3" "--app voip leaves DNS out"
expect_match "$(midctl gw sessions --port 53)" "$s3" "--port 53"
expect_no_match "$(midctl gw sessions --port 53)" "$s1" "--port 53 leaves 5000 out"
expect_match "$(midctl gw sessions --address 10.200.2.0/24 --proto udp --state admitted --origin csp)" "$s1" "prefix, protocol, state, origin"
expect_no_match "$(midctl gw sessions --proto tcp)" "$s1" "--proto tcp"
expect_no_match "$(midctl gw sessions --address 192.0.2.1)" "$s1" "--address elsewhere"
expect_eq "$(midctl gw sessions --json --proto udp | $PY -c 'import json,sys; print(len(json.load(sys.stdin)))')" 2 "JSON, filtered"
set +e; out=$(midctl gw sessions --state bogus 2>&1); rc=$?; set -e
expect_eq "$rc" 1 "an unknown state"; expect_match "$out" "unknown state 'bogus'" "its message"

step "midctl rules: each rule with its hits"
rules=$(midctl gw rules); indent <<<"$rules"
expect_match "$rules" "1 +no-telnet +tcp port 23 +reject +1$" "no-telnet decided once"
expect_match "$rules" "2 +short-udp-53 +udp port 53 +admit +1$" "short-udp-53 once"
expect_match "$rules" "- +\(default\) +any +admit +[1-9][0-9]*$" "the default action"

step "midctl show-config: the configuration in effect, which midcomd reads back"
midctl gw show-config >"$LAB_DIR/shown.conf"
indent <"$LAB_DIR/shown.conf"
expect_match "$(cat "$LAB_DIR/shown.conf")" "max-lifetime = 30" "the rule's bound"
expect_match "$(cat "$LAB_DIR/shown.conf")" "default-lifetime = 60" "a default filled in"
out=$("$BIN/midcomd" --check --config "$LAB_DIR/shown.conf") || fail "midcomd --check of the shown configuration: $out"
indent <<<"$out"

step "text mode, stopping after one event"
lab_bg gw "$LAB_DIR/monitor.txt" "$BIN/midctl" --socket "$LAB_DIR/gw.sock" monitor --kind teardown --count 1
sleep 0.5
csp_run client teardown "$s1" 10.200.2.2
wait_for_match "$LAB_DIR/monitor.txt" "^[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3} teardown +$s1 torn down $s1" 3
indent <"$LAB_DIR/monitor.txt"
echo "ops-inspect: all checks passed"
