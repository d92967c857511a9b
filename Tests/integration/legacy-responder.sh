#!/usr/bin/env bash
# Legacy clients, scenario 4 (issue 12): a CSP host connects through two Midcom gateways to an
# ordinary TCP server and UDP server that run no CSP at all, with the configuration Midcom ships
# (docs/examples/midcomd.conf; the ISP adds its [nat] section). The host's SETUP goes unanswered;
# after 0.75 s csp sends it again flagged "the responder may not speak CSP" and each gateway
# decides by its own policy, admits, answers for the server and forwards the SETUP
# (docs/PROTOCOL.md 6.9). The host learns which middleboxes admitted it; nothing stays pending;
# REFRESH and TEARDOWN are answered the same way; a refusal further along tears down what the
# nearer gateway admitted. From outside the site the flag opens nothing.
#
#   client 10.200.1.2 ── fw (gw1, shipped config) ── isp (isp1, shipped + [nat] 203.0.113.1) ── server 203.0.113.2
#                               100.64.0.2 ──── 100.64.0.1
source "$(dirname "$0")/lib.sh"
lab_init legacyresp

step "lab: client — fw — isp — server; fw runs the shipped configuration, isp the same with NAT"
lab_series
fw_conf=$(lab_conf fw <"$ROOT/docs/examples/midcomd.conf")
isp_conf=$(sed 's/^name = "gw1"/name = "isp1"/' "$ROOT/docs/examples/midcomd.conf" | lab_conf isp)
cat >>"$isp_conf" <<'CONF'

[nat]
external-address = "203.0.113.1"
internal = "10.0.0.0/8, 100.64.0.0/10"

[[rule]]
name = "isp-blocks-8081"
proto = "tcp"
port = 8081
action = "reject"
reason = "the ISP blocks TCP 8081"
CONF
in_ns fw "$BIN/midcomd" --check --config "$fw_conf" | indent
lab_nat_signaling isp to-server
lab_midcomd fw "$fw_conf"
lab_midcomd isp "$isp_conf"
lab_serve server "$LAB_DIR/tcp.log" $FLOWS tcp-serve 8443 --duration 60
lab_serve server "$LAB_DIR/udp.log" $FLOWS udp-echo 5004 --duration 60

step "unsignaled, the shipped policy drops the flow"
set +e; out=$(in_ns client $FLOWS tcp-send 203.0.113.2 8443 --sport 40000 --bytes 1000 --timeout 1 2>&1); set -e
indent <<<"$out"; expect_no_match "$out" "echoed 1000" "unsignaled TCP"

step "csp setup tcp 203.0.113.2:8443: no CSP there, so both gateways answer for the server"
csp_run client setup tcp 203.0.113.2:8443 --sport 40001 --lifetime 120
expect_eq "$CSP_RC" 0 "csp exit status"
expect_match "$CSP_OUT" "no answer from 203\.0\.113\.2 in 0\.75 s" "fell back after 0.75 s"
expect_match "$CSP_OUT" "answered for the responder by 2 middleboxes" "two answers"
expect_match "$CSP_OUT" "middlebox isp1 id [0-9a-f]{16} epoch [0-9]+: answered-for-responder, 120s" "the ISP's record"
expect_match "$CSP_OUT" "middlebox gw1 id [0-9a-f]{16} epoch [0-9]+: answered-for-responder, 120s" "the firewall's record"
expect_match "$CSP_OUT" "^  mapped to 203\.0\.113\.1:40001$" "the ISP's mapping"
tcp_session=$(session_of "$CSP_OUT")
expect_match "$(midctl fw sessions)" "$tcp_session +tcp +10\.200\.1\.2:40001 +203\.0\.113\.2:8443 +admitted" "fw session admitted, not pending"
expect_match "$(midctl isp sessions)" "$tcp_session +tcp +10\.200\.1\.2:40001 +203\.0\.113\.2:8443 +admitted" "isp session admitted, not pending"
expect_eq "$(status_counter fw answered_for_responders)" 1 "fw answered_for_responders"
expect_eq "$(status_counter isp answered_for_responders)" 1 "isp answered_for_responders"

step "the TCP connection goes through both; the server sees the ISP's address"
out=$(in_ns client $FLOWS tcp-send 203.0.113.2 8443 --sport 40001 --bytes 50000) || fail "TCP through both: $out"
indent <<<"$out"; expect_match "$out" "sent 50000 echoed 50000" "TCP through both gateways"
wait_for_match "$LAB_DIR/tcp.log" "from 203\.0\.113\.1:40001" 2

step "csp setup udp --responder legacy: the gateways answer at once"
csp_run client setup udp 203.0.113.2:5004 --sport 4000 --lifetime 60 --responder legacy
expect_eq "$CSP_RC" 0 "csp exit status"
expect_no_match "$CSP_OUT" "no answer from" "no wait for the server"
expect_match "$CSP_OUT" "answered for the responder by 2 middleboxes" "two answers"
udp_session=$(session_of "$CSP_OUT")
out=$(in_ns client $FLOWS udp-ping 203.0.113.2 5004 --sport 4000 --count 5 --wait 0.4)
indent <<<"$out"; expect_match "$out" "sent 5 replies 5 from 203\.0\.113\.2:5004" "UDP through both gateways"
wait_for_match "$LAB_DIR/udp.log" "echo from 203\.0\.113\.1:4000$" 2

step "REFRESH is answered by both gateways too"
csp_run client refresh "$udp_session" 203.0.113.2 --lifetime 90
expect_eq "$CSP_RC" 0 "refresh exit status"
expect_match "$CSP_OUT" "answered for the responder by 2 middleboxes" "two answers to the REFRESH"
expect_match "$(nft_set isp admit4)" "10\.200\.1\.2 \. udp \. 4000 \. 203\.0\.113\.2 \. 5004 .*timeout 1m30s" "isp admission renewed for 90 s"

step "TEARDOWN: both gateways remove the session and answer"
csp_run client teardown "$udp_session" 203.0.113.2
expect_eq "$CSP_RC" 0 "teardown exit status"
expect_no_match "$(midctl fw sessions)" "$udp_session" "fw session after TEARDOWN"
expect_no_match "$(midctl isp sessions)" "$udp_session" "isp session after TEARDOWN"
out=$(in_ns client $FLOWS udp-ping 203.0.113.2 5004 --sport 4000 --count 3 --wait 0.4)
indent <<<"$out"; expect_match "$out" "sent 3 replies 0 " "UDP after TEARDOWN"

step "policy still decides: the shipped no-telnet rule refuses at once"
csp_run client setup tcp 203.0.113.2:23 --sport 40002 --responder legacy
expect_eq "$CSP_RC" 1 "csp exit status"
expect_match "$CSP_OUT" "REJECT .*telnet is forbidden by site policy" "the firewall's REJECT"

step "a refusal further along (the ISP blocks TCP 8081) tears down the firewall's admission"
csp_run client setup tcp 203.0.113.2:8081 --sport 40003 --responder legacy
expect_eq "$CSP_RC" 1 "csp exit status"
expect_match "$CSP_OUT" "REJECT .*the ISP blocks TCP 8081" "the ISP's REJECT"
refused=$(session_of "$CSP_OUT")
wait_until_gone 3 "$refused" "fw session of the refused flow" midctl fw sessions
expect_no_match "$(nft_set fw admit4)" "40003" "fw admission of the refused flow"

step "from outside the site the flag opens nothing (the ISP router signals toward the client)"
before=$(status_counter fw answered_for_responders)
set +e; out=$(in_ns isp "$BIN/csp" setup tcp 10.200.1.2:22 --sport 41000 --responder legacy --attempts 1 2>&1); rc=$?; set -e
indent <<<"$out"
expect_eq "$rc" 3 "no answer for a flow into the site"
expect_eq "$(status_counter fw answered_for_responders)" "$before" "fw answered nothing"
expect_no_match "$(nft_set fw admit4)" "100\.64\.0\.1 \. tcp \. 41000" "no fw admission into the site"
echo "legacy-responder: all checks passed"
