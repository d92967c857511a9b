#!/usr/bin/env bash
# Moving sessions with the session keeper (`csp keep`, docs/PROTOCOL.md 6.1, 6.5, 6.7):
#  a. renegotiation: gw1 restarts (new epoch; the kernel's admissions are adopted, the engine's
#     state is lost): at its next refresh the keeper sees the new epoch in gw1's record and
#     signals the whole session again; the flow keeps passing;
#  b. mobile host without a human: the client's address is deleted and a new one added; the
#     keeper learns it from rtnetlink and sends REBIND from the new address on its own; the data
#     continue from there. The interruption of each is printed.
#
#   client 10.200.1.2 → 10.200.1.77 ── gw (gw1) ── server 10.200.2.2 (csp listen, udp echo 5000)
source "$(dirname "$0")/lib.sh"
lab_init keeper

step "lab: client — gw — server; a signed session kept by csp keep (lifetime 6 s)"
lab_basic
conf=$(lab_signaling_conf gw gw1)
lab_midcomd gw "$conf"
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 90
lab_serve server "$LAB_DIR/echo.log" $FLOWS udp-echo 5000 --duration 90
export CSP_STATE_DIR="$LAB_DIR/csp-state"
in_ns client "$BIN/csp" keygen --key "$LAB_DIR/client.key" >/dev/null
sleep 0.3
csp_run client setup udp 10.200.2.2:5000 --sport 4000 --lifetime 6 --key "$LAB_DIR/client.key"
expect_eq "$CSP_RC" 0 "setup"
s=$(session_of "$CSP_OUT")
lab_bg client "$LAB_DIR/keep.log" "$BIN/csp" keep "$s" --lifetime 6 --duration 60 --key "$LAB_DIR/client.key"
wait_for_match "$LAB_DIR/keep.log" '"event":"keeping"' 5
replies() { in_ns client $FLOWS udp-ping 10.200.2.2 5000 --sport 4000 --count 3 --wait 0.3 | sed -n 's/.*replies \([0-9]*\).*/\1/p'; }
expect_eq "$(replies)" 3 "data before"

step "a. gw1 restarts with a new epoch and announces it (PROTOCOL.md 5.7.1): the keeper refreshes at once and re-signals"
kill "$MIDCOMD_PID"; wait "$MIDCOMD_PID" 2>/dev/null || true
restart_at=$(now_s)
lab_midcomd gw "$conf"
wait_for_match "$LAB_DIR/keep.log" '"event":"resignaled".*restarted \(epoch' 10
echo "      $(grep resignaled "$LAB_DIR/keep.log" | head -1)"
expect_match "$(cat "$LAB_DIR/keep.log")" '"event":"announced"' "the keeper heard the restarted gw's epoch announcement"
expect_eq "$(replies)" 3 "data after the re-signal"
echo "      restart → re-signaled: $(awk -v a="$restart_at" -v b="$(now_s)" 'BEGIN { printf "%.2f", b - a }') s"
expect_match "$(midctl gw sessions)" "$s +udp +10\.200\.1\.2:4000 +10\.200\.2\.2:5000 +admitted" "the session is known again"

step "b. the client's address changes: the keeper sends REBIND by itself"
moved_at=$(now_s)
in_ns client ip addr del 10.200.1.2/24 dev to-gw
in_ns client ip addr add 10.200.1.77/24 dev to-gw
in_ns client ip route replace default via 10.200.1.1
wait_for_match "$LAB_DIR/keep.log" '"event":"rebound".*"to":"10\.200\.1\.77"' 10
expect_eq "$(replies)" 3 "data from the new address"
echo "      address change → data again: $(awk -v a="$moved_at" -v b="$(now_s)" 'BEGIN { printf "%.2f", b - a }') s"
expect_match "$(nft_set gw admit4)" "10\.200\.1\.77 \. udp \. 4000 \. 10\.200\.2\.2 \. 5000" "the new admission"
wait_until_gone 4 "10\.200\.1\.2 \. udp" "the old admission goes after the rebind grace (2 s)" nft_set gw admit4
wait_for_match "$LAB_DIR/keep.log" '"event":"refreshed"' 8

step "c. make before break: a new address comes up first, then the old one goes: the keeper moves at once"
# (promote_secondaries: deleting the primary address must leave the newer one in place)
in_ns client sysctl -qw net.ipv4.conf.to-gw.promote_secondaries=1
in_ns client ip addr add 10.200.1.88/24 dev to-gw
in_ns client ip addr del 10.200.1.77/24 dev to-gw
in_ns client ip route replace default via 10.200.1.1 src 10.200.1.88
moved_at=$(now_s)
wait_for_match "$LAB_DIR/keep.log" '"event":"rebound".*"to":"10\.200\.1\.88"' 5
expect_eq "$(replies)" 3 "data from the third address"
echo "      old address gone → data again: $(awk -v a="$moved_at" -v b="$(now_s)" 'BEGIN { printf "%.2f", b - a }') s"

step "csp sessions shows the session, its moved flow and its running keeper (JSON for scripts)"
csp_run client sessions
expect_match "$CSP_OUT" "$s +initiator +udp 10\.200\.1\.88:4000 -> 10\.200\.2\.2:5000 .* running pid [0-9]+: (refreshed|rebound)" "table row"
listing=$(in_ns client "$BIN/csp" sessions --json)
keeper=$($PY -c 'import json,sys; r=[x for x in json.loads(sys.argv[1]) if x["id"]==sys.argv[2]][0]; print(r["flow"]["source"], r["keeper"]["running"], r["keeper"]["event"], len(r["middleboxes"]))' "$listing" "$s")
echo "      $keeper"
expect_match "$keeper" "^10\.200\.1\.88 True (refreshed|rebound) 1$" "JSON: flow, keeper, gw1's record"
echo "mobility-keeper: all checks passed"
