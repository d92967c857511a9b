#!/usr/bin/env bash
# Scenario 4 (issue #3): redirect to an off-path proxy. Policy says web flows (TCP 8080) must go
# through a proxy that is not on the client–server path. The gateway answers the SETUP itself with
# REDIRECT (in the server's name, fromMiddlebox set, REDIRECT-TARGET = the proxy; csp exit status
# 4) and pre-admits client → proxy (any source port) for the granted lifetime. The host then
# reconnects to the proxy (an HTTP CONNECT proxy here), which reaches the server; the operator's
# default_policy allows the proxy's own traffic. The server sees the proxy, never the client, and
# the direct path stays closed. IPv4 and IPv6.
#
#   client 10.200.1.2 ── gw (midcomd gw1) ── server 10.200.2.2
#                          │
#                        proxy 10.200.3.2:3128          (fd00:1::2, fd00:2::2, fd00:3::2)
source "$(dirname "$0")/lib.sh"
lab_init redirect

step "lab: client — gw — server, proxy on a third gateway interface; web must use the proxy"
lab_proxy
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"

[policy]
default = "admit"
unsignaled = "default-policy"

[[rule]]
name = "web-via-proxy"
proto = "tcp"
port = 8080
destination = "10.200.2.0/24"
action = "redirect"
redirect-to = "10.200.3.2:3128"

[[rule]]
name = "web-via-proxy-v6"
proto = "tcp"
port = 8080
destination = "fd00:2::/64"
action = "redirect"
redirect-to = "[fd00:3::2]:3128"
CONF
)
in_ns gw nft -f "$ROOT/nft-rules/midcom.nft"
# The operator's legacy policy: the proxy may reach the servers; everything else unsignaled drops.
in_ns gw nft insert rule inet midcom default_policy ip saddr 10.200.3.2 accept
in_ns gw nft insert rule inet midcom default_policy ip6 saddr fd00:3::2 accept
lab_midcomd gw "$conf"
lab_bg server "$LAB_DIR/listen4.log" "$BIN/csp" listen --duration 60
lab_bg server "$LAB_DIR/listen6.log" "$BIN/csp" listen --address :: --duration 60
lab_serve server "$LAB_DIR/web4.log" $FLOWS tcp-serve 8080 --duration 60
lab_serve server "$LAB_DIR/web6.log" $FLOWS tcp-serve 8080 --bind :: --duration 60
lab_serve proxy "$LAB_DIR/proxy4.log" $FLOWS tcp-proxy 3128 --duration 60
lab_serve proxy "$LAB_DIR/proxy6.log" $FLOWS tcp-proxy 3128 --bind :: --duration 60
sleep 0.5

direct_fails() {
  local out rc
  set +e; out=$(in_ns client $FLOWS tcp-send "$1" 8080 --timeout 1); rc=$?; set -e
  indent <<<"$out"
  expect_eq "$rc" 1 "direct connection to $1:8080 (tcp-send exit status)"
}

step "without signaling the client cannot reach the server directly"
direct_fails 10.200.2.2

step "csp setup tcp 10.200.2.2:8080 --lifetime 20: REDIRECT to the proxy"
csp_run client setup tcp 10.200.2.2:8080 --lifetime 20 --app web
expect_eq "$CSP_RC" 4 "csp exit status for REDIRECT"
expect_match "$CSP_OUT" "REDIRECT from 10\.200\.2\.2:7227 \(middlebox\) in [0-9.]+ ms: redirect to 10\.200\.3\.2:3128" "REDIRECT line"
expect_match "$CSP_OUT" "middlebox gw1 id [0-9a-f]{16} epoch [0-9]+: redirected, 20s" "gw1's record"
s4=$(session_of "$CSP_OUT")
target=$(sed -n 's/.*: redirect to \([0-9.]*:[0-9]*\)$/\1/p' <<<"$CSP_OUT")
expect_eq "$target" "10.200.3.2:3128" "redirect target parsed from csp"
expect_no_match "$(cat "$LAB_DIR/listen4.log")" "$s4" "the server's agent saw the redirected SETUP"
expect_match "$(nft_set gw admit4_anyport)" "10\.200\.1\.2 \. tcp \. 10\.200\.3\.2 \. 3128 .*timeout 20s" "pre-admitted client → proxy"
expect_eq "$(nft_element_count gw)" 1 "elements in the midcom sets (only client → proxy)"
expect_match "$(midctl gw sessions)" "$s4 +tcp .* redirect" "redirected session in midctl"

step "the client reconnects through the proxy: 100 kB reach the server and come back"
out=$(in_ns client $FLOWS tcp-send "${target%:*}" "${target##*:}" --connect 10.200.2.2:8080 --bytes 100000) || fail "via proxy: $out"
indent <<<"$out"
expect_match "$out" "sent 100000 echoed 100000" "echo through the proxy"
wait_for_match "$LAB_DIR/proxy4.log" "proxy 10\.200\.1\.2:[0-9]+ -> 10\.200\.2\.2:8080 up 100000 down 100000" 3
indent <"$LAB_DIR/proxy4.log"
wait_for_match "$LAB_DIR/web4.log" "conn from 10\.200\.3\.2:[0-9]+ bytes 100000" 3
expect_no_match "$(cat "$LAB_DIR/web4.log")" "conn from 10\.200\.1\.2" "the server saw the client directly"
step "the direct path is still closed"
direct_fails 10.200.2.2

step "IPv6 (csp --machine): REDIRECT to [fd00:3::2]:3128, then through the proxy"
csp_run client setup tcp '[fd00:2::2]:8080' --lifetime 20 --machine
expect_eq "$CSP_RC" 4 "IPv6 csp exit status for REDIRECT"
expect_match "$CSP_OUT" "^type=REDIRECT .*from=\[fd00:2::2\]:7227 middlebox=true .*redirect=\[fd00:3::2\]:3128" "IPv6 machine line"
target6=$(sed -n 's/.* redirect=\[\([0-9a-f:]*\)\]:\([0-9]*\).*/\1 \2/p' <<<"$CSP_OUT")
expect_eq "$target6" "fd00:3::2 3128" "IPv6 redirect target parsed from csp --machine"
expect_match "$(nft_set gw admit6_anyport)" "fd00:1::2 \. tcp \. fd00:3::2 \. 3128 .*timeout 20s" "pre-admitted client → proxy (IPv6)"
# shellcheck disable=SC2086
out=$(in_ns client $FLOWS tcp-send $target6 --connect '[fd00:2::2]:8080' --bytes 100000) || fail "via IPv6 proxy: $out"
indent <<<"$out"
expect_match "$out" "sent 100000 echoed 100000" "echo through the IPv6 proxy"
wait_for_match "$LAB_DIR/proxy6.log" "proxy fd00:1::2:[0-9]+ -> \[fd00:2::2\]:8080 up 100000 down 100000" 3
wait_for_match "$LAB_DIR/web6.log" "conn from fd00:3::2:[0-9]+ bytes 100000" 3
direct_fails fd00:2::2
expect_eq "$(status_counter gw redirected)" 2 "redirected counter"
echo "04-redirect-proxy: all checks passed"
