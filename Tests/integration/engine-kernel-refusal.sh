#!/usr/bin/env bash
# The kernel refuses an admission (here: the operator sized the admit4 set for one element): the
# host must hear REJECT middlebox-unavailable in the responder's name, never the ACCEPT, and
# midcomd must forget the session, so that engine and kernel agree. The refused ACCEPT arrives
# alone, a burst of one; before the fix such a burst's failure was taken for success (the ACCEPT
# went on, the session stayed admitted without its element).
#
#   client 10.200.1.2 ── gw (midcomd gw1, admit4 { size 1 }) ── server 10.200.2.2
source "$(dirname "$0")/lib.sh"
lab_init krefuse

step "lab: client — gw — server; the gateway's admit4 set holds one element"
lab_basic
sed 's/^\(\tset admit4 {\)$/\1\n\t\tsize 1/' "$ROOT/nft-rules/midcom.nft" >"$LAB_DIR/sized.nft"
grep -Pzq 'set admit4 \{\n\t\tsize 1\n' "$LAB_DIR/sized.nft" || fail "could not size admit4 in the lab's copy of the ruleset"
in_ns gw nft -f "$LAB_DIR/sized.nft"
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"

[policy]
default = "admit"
unsignaled = "drop"
CONF
)
lab_midcomd gw "$conf"
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 60
lab_serve server "$LAB_DIR/echo.log" $FLOWS udp-echo 5004 --duration 60
lab_serve server "$LAB_DIR/echo5.log" $FLOWS udp-echo 5005 --duration 60
sleep 0.5

step "first session: admitted, its flow works"
csp_run client setup udp 10.200.2.2:5004 --sport 40000 --lifetime 30
expect_eq "$CSP_RC" 0 "first setup exit status"
expect_match "$CSP_OUT" "ACCEPT from 10\.200\.2\.2:7227 .*lifetime 30s" "first ACCEPT"
first=$(session_of "$CSP_OUT")
out=$(in_ns client $FLOWS udp-ping 10.200.2.2 5004 --sport 40000 --count 3 --interval 0.02 --wait 0.4); indent <<<"$out"
expect_match "$out" "sent 3 replies 3 " "first flow"

step "second session: the set is full, the kernel refuses the element"
csp_run client setup udp 10.200.2.2:5005 --sport 40001 --lifetime 30
expect_eq "$CSP_RC" 1 "second setup exit status (refused)"
expect_match "$CSP_OUT" "^REJECT from 10\.200\.2\.2:7227 \(middlebox\) in [0-9.]+ ms: middlebox-unavailable: middlebox could not install state \(retry after 5s\)" "REJECT in the responder's name"
expect_match "$CSP_OUT" "middlebox gw1 .*: rejected; signed by key" "gw1's record in the REJECT, signed like its ACCEPT's"
expect_no_match "$CSP_OUT" "ACCEPT" "the refused ACCEPT reached the host"
second=$(session_of "$CSP_OUT")

step "engine and kernel agree: one session, one element, the second flow dropped"
expect_eq "$(status_counter gw kernel_failures)" 1 "kernel failures counted"
sessions=$(midctl gw sessions); indent <<<"$sessions"
expect_match "$sessions" "$first" "first session listed"
[ -n "$second" ] && expect_no_match "$sessions" "$second" "refused session listed"
expect_eq "$(nft_element_count gw admit4)" 1 "admit4 elements"
out=$(in_ns client $FLOWS udp-ping 10.200.2.2 5005 --sport 40001 --count 3 --interval 0.02 --wait 0.4); indent <<<"$out"
expect_match "$out" "sent 3 replies 0 " "refused flow"
expect_match "$(cat "$LAB_DIR/gw-midcomd.log")" "(nft|kernel|netlink).*(No space|full|ENOSPC|E2BIG|refus)" "the failure is logged"

step "the first session is untouched and the gateway keeps serving"
out=$(in_ns client $FLOWS udp-ping 10.200.2.2 5004 --sport 40000 --count 3 --interval 0.02 --wait 0.4); indent <<<"$out"
expect_match "$out" "sent 3 replies 3 " "first flow after the refusal"
kill -0 "$MIDCOMD_PID" || fail "midcomd exited"
echo "engine-kernel-refusal: all checks passed"
