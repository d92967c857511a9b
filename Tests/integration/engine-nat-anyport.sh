#!/usr/bin/env bash
# Engine regression: a NAT must not report success for a flow it cannot translate. An outgoing
# SETUP through a `[nat]` gateway that leaves the source port open (any port, --sport 0) cannot be
# given an SNAT mapping (the map is keyed by the source port); the gateway must answer REJECT with
# result 7 (source-port-required, host-fixable: signal again with the port) and a reason that says
# so, and install nothing — not an ACCEPT "mapped to 203.0.113.1:0" for a flow whose packets would
# leave untranslated and never come back. The same flow with its source port is mapped as usual.
#
#   inside 192.168.1.2 — nat (midcomd nat1, external 203.0.113.1) — outside 203.0.113.2
source "$(dirname "$0")/lib.sh"
lab_init enatany

step "lab: inside — nat — outside"
lab_nat
conf=$(lab_nat_conf)
lab_nat_signaling nat to-outside
lab_midcomd nat "$conf"
lab_bg outside "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 60
lab_serve outside "$LAB_DIR/tcp.log" $FLOWS tcp-serve 8080 --duration 60
sleep 0.3

step "with its source port: csp setup tcp 203.0.113.2:8080 --sport 4100 → mapped to 203.0.113.1:4100"
csp_run inside setup tcp 203.0.113.2:8080 --sport 4100 --lifetime 30
expect_eq "$CSP_RC" 0 "csp exit status with --sport"
expect_match "$CSP_OUT" "ACCEPT from 203\.0\.113\.2:7227 " "the server's ACCEPT"
expect_match "$CSP_OUT" "^  mapped to 203\.0\.113\.1:4100$" "mapping reported to the host"
s1=$(session_of "$CSP_OUT")
expect_match "$(in_ns nat nft list map inet midcom snat4)" "192\.168\.1\.2 \. tcp \. 4100 .*: 203\.0\.113\.1 \. 4100" "SNAT element of the --sport flow"
expect_match "$(midctl nat sessions)" "$s1 +tcp +192\.168\.1\.2:4100 +203\.0\.113\.2:8080 +admitted +nat" "session row of the --sport flow"
out=$(in_ns inside $FLOWS tcp-send 203.0.113.2 8080 --sport 4100 --bytes 10000 --timeout 3) || fail "TCP on the mapped flow: $out"
indent <<<"$out"; expect_match "$out" "sent 10000 echoed 10000" "the mapped TCP connection"
wait_for_match "$LAB_DIR/tcp.log" "conn from 203\.0\.113\.1:4100 bytes 10000" 3

step "any source port: csp setup tcp 203.0.113.2:8081 (no --sport) → REJECT source-port-required"
snat_before=$(in_ns nat nft -j list map inet midcom snat4 | $PY -c 'import json,sys; print(sum(len(o["map"].get("elem", [])) for o in json.load(sys.stdin)["nftables"] if "map" in o))')
csp_run inside setup tcp 203.0.113.2:8081 --lifetime 30 --machine
rc=$CSP_RC; reply=$CSP_OUT
sid=$(sed -n 's/.*session=\([0-9a-f]\{16\}\).*/\1/p' <<<"$reply" | head -1)
sleep 0.3
snat=$(in_ns nat nft list map inet midcom snat4)
snat_after=$(in_ns nat nft -j list map inet midcom snat4 | $PY -c 'import json,sys; print(sum(len(o["map"].get("elem", [])) for o in json.load(sys.stdin)["nftables"] if "map" in o))')
table=$(midctl nat sessions)
anyport=$(nft_set nat admit4_anyport)
indent <<<"$table"
problems=()
[ "$rc" != 0 ] || problems+=("csp exited 0 for an any-port flow the NAT cannot translate")
grep -Eq "^type=REJECT .*result=(source-port-required|result-7) " <<<"$reply" \
  || problems+=("expected REJECT with result 7 (source-port-required), got: $reply")
grep -Eiq 'reason="[^"]*source port' <<<"$reply" || problems+=("the REJECT's reason does not mention the source port")
grep -Eq "mapped=203\.0\.113\.1:0( |$)" <<<"$reply" && problems+=("the reply reports the mapping 203.0.113.1:0")
grep -Eq "tcp +192\.168\.1\.2:(\*|0) +203\.0\.113\.2:8081 " <<<"$table" && problems+=("midctl shows a session for the any-port flow")
[ -n "$sid" ] && grep -q "$sid" <<<"$table" && problems+=("midctl shows session $sid")
[ "$snat_after" == "$snat_before" ] || problems+=("snat4 went from $snat_before to $snat_after elements")
grep -Eq "\. 8081 " <<<"$anyport" && problems+=("admit4_anyport admits 192.168.1.2 -> 203.0.113.2:8081")
[ ${#problems[@]} -eq 0 ] || fail "any-port flow through the NAT: $(printf '%s; ' "${problems[@]}")"
expect_match "$snat" "192\.168\.1\.2 \. tcp \. 4100 .*: 203\.0\.113\.1 \. 4100" "SNAT element of the --sport flow afterwards"
echo "engine-nat-anyport: all checks passed"
