#!/usr/bin/env bash
# Scenario 5 (issue #3): rejection. A forbidden flow gets a REJECT from the gateway with a result
# code and a reason text that csp prints (exit status 1). The gateway answers in the server's
# name (source = the SETUP's destination, fromMiddlebox set; docs/PROTOCOL.md 2.3), so csp shows
# "REJECT from <server>:7227 (middlebox)". The SETUP never reaches the server and
# nothing is installed: no element, no session, no data. Covered: a rule's own reason (IPv4 and
# IPv6), the default policy's reason, and a flow the gateway allows but the server refuses (the
# gateway forwards that REJECT and releases its pending state).
#
#   client 10.200.1.2 ── gw (midcomd gw1: default reject) ── server 10.200.2.2
source "$(dirname "$0")/lib.sh"
lab_init reject

step "lab: client — gw — server; policy: reject by default, telnet forbidden, UDP 5000-5001 allowed"
lab_basic
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"

[policy]
default = "reject"
unsignaled = "drop"

[[rule]]
name = "no-telnet"
proto = "tcp"
port = 23
action = "reject"
reason = "telnet is forbidden by site policy"

[[rule]]
name = "media"
proto = "udp"
port = "5000-5001"
action = "admit"
CONF
)
lab_midcomd gw "$conf"
# The server's own agent accepts only port 5000.
lab_bg server "$LAB_DIR/listen4.log" "$BIN/csp" listen --accept-ports 5000 --duration "$(scaled 60)"
lab_bg server "$LAB_DIR/listen6.log" "$BIN/csp" listen --address :: --duration "$(scaled 60)"
lab_serve server "$LAB_DIR/telnet.log" $FLOWS tcp-serve 23 --duration "$(scaled 60)"
sleep "$(scaled 0.5)"

# no_state LABEL SESSION: nothing installed and nothing remembered for SESSION.
no_state() {
  expect_eq "$(nft_element_count gw)" 0 "$1: elements in the midcom sets"
  expect_no_match "$(midctl gw sessions)" "$2" "$1: session in midctl"
}

step "tcp 10.200.2.2:23: the rule's REJECT with code and reason"
csp_run client setup tcp 10.200.2.2:23 --lifetime "$(scaled 30)"
expect_eq "$CSP_RC" 1 "csp exit status for REJECT"
expect_match "$CSP_OUT" "REJECT from 10\.200\.2\.2:7227 \(middlebox\) in [0-9.]+ ms: policy-denied: telnet is forbidden by site policy" "reject line"
expect_match "$CSP_OUT" "middlebox gw1 id [0-9a-f]{16} epoch [0-9]+: rejected; signed by key [0-9a-f]{16}" "gw1's record, signed"
telnet=$(session_of "$CSP_OUT")
no_state "telnet" "$telnet"
expect_no_match "$(cat "$LAB_DIR/listen4.log")" "$telnet" "the server's agent saw the rejected SETUP"
set +e; out=$(in_ns client $FLOWS tcp-send 10.200.2.2 23 --timeout 1); rc=$?; set -e
indent <<<"$out"
expect_eq "$rc" 1 "telnet connection after REJECT"
expect_no_match "$(cat "$LAB_DIR/telnet.log")" "conn from" "the server's telnet port saw a connection"

step "the same for scripts: csp --machine"
csp_run client setup tcp 10.200.2.2:23 --machine
expect_eq "$CSP_RC" 1 "csp --machine exit status"
expect_match "$CSP_OUT" "^type=REJECT result=policy-denied session=[0-9a-f]{16} from=10\.200\.2\.2:7227 middlebox=true .*reason=\"telnet is forbidden by site policy\" records=1 signers=[0-9a-f]{16}:untrusted challenges=1$" "machine line"

step "IPv6: tcp [fd00:2::2]:23 is rejected the same way"
csp_run client setup tcp '[fd00:2::2]:23' --lifetime "$(scaled 30)"
expect_eq "$CSP_RC" 1 "IPv6 csp exit status"
expect_match "$CSP_OUT" "REJECT from \[fd00:2::2\]:7227 \(middlebox\) .*: policy-denied: telnet is forbidden by site policy" "IPv6 reject line"
no_state "telnet6" "$(session_of "$CSP_OUT")"

step "udp 10.200.2.2:6000: no rule matches, the default policy rejects"
csp_run client setup udp 10.200.2.2:6000 --sport 4000
expect_eq "$CSP_RC" 1 "default-reject exit status"
expect_match "$CSP_OUT" "REJECT from 10\.200\.2\.2:7227 \(middlebox\) .*: policy-denied: not admitted by default policy" "default-policy reason"
no_state "default" "$(session_of "$CSP_OUT")"

step "udp 10.200.2.2:5001: the gateway allows it, the server refuses; the gateway keeps nothing"
csp_run client setup udp 10.200.2.2:5001 --sport 4001
expect_eq "$CSP_RC" 1 "server-reject exit status"
expect_match "$CSP_OUT" "REJECT from 10\.200\.2\.2:7227 in [0-9.]+ ms: policy-denied: not accepted by the responder" "the server's REJECT (not from the middlebox)"
refused=$(session_of "$CSP_OUT")
wait_for_match "$LAB_DIR/listen4.log" "SETUP $refused .* -> REJECT" 2
no_state "refused" "$refused"

step "control: udp 10.200.2.2:5000 is admitted (the path and the server's agent work)"
csp_run client setup udp 10.200.2.2:5000 --sport 4000 --lifetime "$(scaled 30)"
expect_eq "$CSP_RC" 0 "admitted setup exit status"
expect_eq "$(nft_element_count gw)" 1 "elements after the one admitted flow"
expect_eq "$(status_counter gw rejected)" 4 "rejected counter (REJECTs originated by gw1)"
echo "05-rejection: all checks passed"
