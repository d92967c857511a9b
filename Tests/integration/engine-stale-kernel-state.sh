#!/usr/bin/env bash
# Engine regression: kernel state must not outlive its session. A host may re-signal a session ID
# it owns for another flow (docs/PROTOCOL.md 5.1: "replaces the session's parameters"); the
# gateway must then remove what it installed for the old flow, not leave it admitted until its
# timeout with no session left to refresh, tear down or show it.
#   (a) outgoing session re-signaled for another destination port, ACCEPTed by the responder:
#       admit4 holds only the new flow, midctl shows one session with the new flow
#   (b) incoming pinhole via the gateway re-requested under the same ID for another local port:
#       pinhole4 holds only the new port
#   (c) admitted session re-signaled for a flow the policy rejects: REJECT, the old element is
#       gone and midctl shows no session
#
#   client 10.200.1.2 — gw (midcomd gw1) — server 10.200.2.2 (csp listen: accepts everything)
source "$(dirname "$0")/lib.sh"
lab_init estale

step "lab: client — gw — server; policy rejects udp port 5999"
lab_basic
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"

[policy]
default = "admit"
unsignaled = "drop"

[[rule]]
name = "no-5999"
proto = "udp"
port = 5999
action = "reject"
reason = "udp 5999 is forbidden by site policy"
CONF
)
lab_midcomd gw "$conf"
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 60
sleep 0.3

# rows_of ID: the sessions midctl lists with that ID, one "proto source:port destination:port
# state" line each (from `midctl sessions --json`).
rows_of() {
  midctl gw sessions --json | $PY -c '
import json, sys
for r in json.load(sys.stdin):
    if r["id"] == sys.argv[1]:
        print("%s %s:%d %s:%d %s" % (r["proto"], r["source"], r["sourcePort"], r["destination"], r["destinationPort"], r["state"]))' "$1"
}
elements() { nft_set gw "$1" | grep -oE '([0-9.]+ \. )?(udp|tcp) \. [^,}]*' | sed 's/ counter.*//'; }

problems=()
S1=5e5510a000000001
S2=5e5510a000000002
S3=5e5510a000000003

step "(a) csp setup udp 10.200.2.2:5000 --sport 4000 --session $S1, then the same ID for 10.200.2.2:5001"
csp_run client setup udp 10.200.2.2:5000 --sport 4000 --session "$S1" --lifetime 60
expect_eq "$CSP_RC" 0 "(a) first setup exit status"
expect_match "$(nft_set gw admit4)" "10\.200\.1\.2 \. udp \. 4000 \. 10\.200\.2\.2 \. 5000 " "(a) element of the first flow"
csp_run client setup udp 10.200.2.2:5001 --sport 4000 --session "$S1" --lifetime 60
expect_eq "$CSP_RC" 0 "(a) re-signal exit status (the responder accepts every port)"
expect_match "$CSP_OUT" "ACCEPT from 10\.200\.2\.2:7227" "(a) the responder's ACCEPT"
wait_for_match "$LAB_DIR/listen.log" "SETUP $S1 .*5001" 2
sleep 0.3
admit=$(nft_set gw admit4); rows=$(rows_of "$S1")
indent <<<"$(elements admit4)"; indent <<<"$rows"
expect_match "$admit" "10\.200\.1\.2 \. udp \. 4000 \. 10\.200\.2\.2 \. 5001 " "(a) element of the re-signaled flow"
grep -Eq "10\.200\.1\.2 \. udp \. 4000 \. 10\.200\.2\.2 \. 5000 " <<<"$admit" \
  && problems+=("(a) admit4 still admits the old flow 10.200.1.2:4000 -> 10.200.2.2:5000 after $S1 was re-signaled for :5001")
[ "$(grep -c . <<<"$rows")" == 1 ] && grep -Eq "udp 10\.200\.1\.2:4000 10\.200\.2\.2:5001 admitted" <<<"$rows" \
  || problems+=("(a) midctl does not show exactly one session $S1 for 10.200.1.2:4000 -> 10.200.2.2:5001: [$rows]")
[ "$(nft_element_count gw admit4)" == 1 ] || problems+=("(a) admit4 holds $(nft_element_count gw admit4) elements, expected 1")

step "(b) pinhole via the gateway: --local-port 6000 --session $S2, then the same ID for --local-port 6001"
csp_run client setup udp --incoming --peer any --local-port 6000 --via 10.200.1.1 --session "$S2" --lifetime 60
expect_eq "$CSP_RC" 0 "(b) first pinhole exit status"
expect_match "$(nft_set gw pinhole4)" "udp \. 10\.200\.1\.2 \. 6000 " "(b) pinhole element of port 6000"
csp_run client setup udp --incoming --peer any --local-port 6001 --via 10.200.1.1 --session "$S2" --lifetime 60
expect_eq "$CSP_RC" 0 "(b) re-requested pinhole exit status"
sleep 0.3
pinholes=$(nft_set gw pinhole4); rows=$(rows_of "$S2")
indent <<<"$(elements pinhole4)"; indent <<<"$rows"
expect_match "$pinholes" "udp \. 10\.200\.1\.2 \. 6001 " "(b) pinhole element of port 6001"
grep -Eq "udp \. 10\.200\.1\.2 \. 6000 " <<<"$pinholes" \
  && problems+=("(b) pinhole4 still opens 10.200.1.2:6000 after $S2 was re-requested for port 6001")
[ "$(nft_element_count gw pinhole4)" == 1 ] || problems+=("(b) pinhole4 holds $(nft_element_count gw pinhole4) elements, expected 1")
[ "$(grep -c . <<<"$rows")" == 1 ] && grep -Eq ":0 10\.200\.1\.2:6001 admitted" <<<"$rows" \
  || problems+=("(b) midctl does not show exactly one session $S2 for port 6001: [$rows]")

step "(c) csp setup udp 10.200.2.2:5002 --sport 4002 --session $S3, then the same ID for 10.200.2.2:5999 (policy: reject)"
csp_run client setup udp 10.200.2.2:5002 --sport 4002 --session "$S3" --lifetime 60
expect_eq "$CSP_RC" 0 "(c) first setup exit status"
expect_match "$(nft_set gw admit4)" "10\.200\.1\.2 \. udp \. 4002 \. 10\.200\.2\.2 \. 5002 " "(c) element of the admitted flow"
csp_run client setup udp 10.200.2.2:5999 --sport 4002 --session "$S3" --lifetime 60
expect_eq "$CSP_RC" 1 "(c) re-signal for a forbidden flow: csp exit status"
expect_match "$CSP_OUT" "REJECT from 10\.200\.2\.2:7227 \(middlebox\) .*policy-denied: udp 5999 is forbidden" "(c) the policy's REJECT"
sleep 0.3
admit=$(nft_set gw admit4); rows=$(rows_of "$S3")
indent <<<"$(elements admit4)"; indent <<<"${rows:-(no session $S3)}"
grep -Eq "\. 4002 \. 10\.200\.2\.2 \. 5002 " <<<"$admit" \
  && problems+=("(c) admit4 still admits 10.200.1.2:4002 -> 10.200.2.2:5002 after $S3 was re-signaled for a rejected flow")
grep -Eq "\. 5999 " <<<"$admit" && problems+=("(c) admit4 admits the rejected flow to port 5999")
[ -z "$rows" ] || problems+=("(c) midctl still shows session $S3 after its re-signal was rejected: [$rows]")

[ ${#problems[@]} -eq 0 ] || fail "kernel state outlived its session: $(printf '%s; ' "${problems[@]}")"
echo "engine-stale-kernel-state: all checks passed"
