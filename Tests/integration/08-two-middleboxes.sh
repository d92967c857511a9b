#!/usr/bin/env bash
# Scenario 8 (issue #3): two middleboxes in series, each with its own midcomd: a site firewall
# (site-fw) and an ISP NAT (isp-nat). Both intercept the same SETUP and append their records; the
# server's ACCEPT collects both decisions on the way back (nearest the server first), and each
# middlebox installs its own state with its own lifetime (the firewall clamps to 20 s). When the
# ISP refuses a flow, its REJECT passes the firewall, which releases its pending state and adds
# its record, so the host sees both again. IPv4 only (the ISP is a NAT).
#
#   client 10.200.1.2 ── fw (site-fw) ── isp (isp-nat, 203.0.113.1) ── server 203.0.113.2
#                               100.64.0.2 ──── 100.64.0.1
source "$(dirname "$0")/lib.sh"
lab_init series

step "lab: client — fw — isp — server; two midcomd, one per middlebox"
lab_series
fw_conf=$(lab_conf fw <<'CONF'
[daemon]
name = "site-fw"

[policy]
default = "admit"
unsignaled = "drop"
max-lifetime = 20
default-lifetime = 20
CONF
)
isp_conf=$(lab_conf isp <<'CONF'
[daemon]
name = "isp-nat"

[policy]
default = "admit"
unsignaled = "drop"

[nat]
external-address = "203.0.113.1"

[[rule]]
name = "no-6000"
proto = "udp"
port = 6000
action = "reject"
reason = "the ISP blocks UDP 6000"
CONF
)
lab_nat_signaling isp to-server
lab_midcomd fw "$fw_conf"
lab_midcomd isp "$isp_conf"
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 60
lab_serve server "$LAB_DIR/echo.log" $FLOWS udp-echo 5000 --duration 60
sleep 0.5

step "client: csp setup udp 203.0.113.2:5000 --sport 4000 --lifetime 30"
csp_run client setup udp 203.0.113.2:5000 --sport 4000 --lifetime 30
expect_eq "$CSP_RC" 0 "csp exit status"
expect_match "$CSP_OUT" "ACCEPT from 203\.0\.113\.2:7227 " "the server's ACCEPT"
expect_match "$CSP_OUT" "^  mapped to 203\.0\.113\.1:4000$" "the ISP's mapping"
records=$(grep -E "^  middlebox " <<<"$CSP_OUT" || true)
expect_eq "$(wc -l <<<"$records")" 2 "records in the ACCEPT"
expect_match "$(sed -n 1p <<<"$records")" "middlebox isp-nat id [0-9a-f]{16} epoch [0-9]+: mapped, 30s" "first record: the ISP NAT (nearest the server)"
expect_match "$(sed -n 2p <<<"$records")" "middlebox site-fw id [0-9a-f]{16} epoch [0-9]+: admitted, 20s" "second record: the site firewall (its own clamp)"
s=$(session_of "$CSP_OUT")
wait_for_match "$LAB_DIR/listen.log" "SETUP $s from 203\.0\.113\.1:[0-9]+ .* via 2 middlebox" 2

step "each middlebox installed its own state"
expect_match "$(nft_set fw admit4)" "10\.200\.1\.2 \. udp \. 4000 \. 203\.0\.113\.2 \. 5000 .*timeout 20s" "site-fw admission (20 s)"
expect_match "$(nft_set isp admit4)" "10\.200\.1\.2 \. udp \. 4000 \. 203\.0\.113\.2 \. 5000 .*timeout 30s" "isp-nat admission (30 s)"
expect_match "$(in_ns isp nft list map inet midcom snat4)" "10\.200\.1\.2 \. udp \. 4000 .*: 203\.0\.113\.1 \. 4000" "isp-nat SNAT"
expect_eq "$(in_ns fw nft list map inet midcom snat4 | grep -c 'elements' || true)" 0 "SNAT elements on the firewall (it does not translate)"
expect_match "$(midctl fw sessions)" "$s +udp +10\.200\.1\.2:4000 +203\.0\.113\.2:5000 +admitted" "site-fw session"
expect_match "$(midctl isp sessions)" "$s +udp +10\.200\.1\.2:4000 +203\.0\.113\.2:5000 +admitted" "isp-nat session"

step "data crosses both: the server sees the ISP's address, replies come back"
out=$(in_ns client $FLOWS udp-ping 203.0.113.2 5000 --sport 4000 --count 5 --wait 0.4)
indent <<<"$out"; expect_match "$out" "sent 5 replies 5 from 203\.0\.113\.2:5000" "flow through both middleboxes"
wait_for_match "$LAB_DIR/echo.log" "echo from 203\.0\.113\.1:4000$" 2

step "the ISP rejects UDP 6000: the REJECT carries both records, neither middlebox keeps state"
fw_before=$(nft_element_count fw)
csp_run client setup udp 203.0.113.2:6000 --sport 4001 --lifetime 30
expect_eq "$CSP_RC" 1 "csp exit status"
expect_match "$CSP_OUT" "REJECT from 203\.0\.113\.2:7227 \(middlebox\) .*: policy-denied: the ISP blocks UDP 6000" "the ISP's REJECT"
records=$(grep -E "^  middlebox " <<<"$CSP_OUT" || true)
expect_eq "$(wc -l <<<"$records")" 2 "records in the REJECT"
expect_match "$(sed -n 1p <<<"$records")" "middlebox isp-nat .*: rejected" "first record: the ISP NAT rejected"
expect_match "$(sed -n 2p <<<"$records")" "middlebox site-fw .*: forwarded" "second record: the firewall passed the REJECT on"
rejected=$(session_of "$CSP_OUT")
expect_eq "$(nft_element_count fw)" "$fw_before" "site-fw elements after the REJECT"
expect_no_match "$(midctl fw sessions)" "$rejected" "site-fw session for the rejected flow"
expect_no_match "$(midctl isp sessions)" "$rejected" "isp-nat session for the rejected flow"
expect_no_match "$(cat "$LAB_DIR/listen.log")" "$rejected" "the server's agent saw the rejected SETUP"
echo "08-two-middleboxes: all checks passed"
