#!/usr/bin/env bash
# Moving sessions, scenario 6b (docs/PROTOCOL.md 6.5, 10.13): a new middlebox appears on the path
# mid-session. client — gw1 — gw2 — server; at first only gw1 runs midcomd (gw2 just routes).
# The client's session is kept by `csp keep`. Then gw2 gets the Midcom ruleset and its own
# midcomd: the session's packets stop at gw2 (nobody admitted them there); at the keeper's next
# refresh gw2 answers unknown-session (or its record appears), the keeper signals the session
# again, both middleboxes admit, and the data pass again. The interruption is printed.
#
#   client 10.208.1.2 ── gw1 ── 10.208.2.0/24 ── gw2 ── server 10.208.3.2
source "$(dirname "$0")/lib.sh"
lab_init newmbx

step "lab: client — gw1 — gw2 — server; midcomd on gw1 only"
lab_ns client; lab_ns gw1; lab_ns gw2; lab_ns server
lab_link client gw1; lab_link gw1 gw2; lab_link gw2 server
lab_addr client to-gw1 10.208.1.2/24; lab_addr gw1 to-client 10.208.1.1/24
lab_addr gw1 to-gw2 10.208.2.1/24; lab_addr gw2 to-gw1 10.208.2.2/24
lab_addr gw2 to-server 10.208.3.1/24; lab_addr server to-gw2 10.208.3.2/24
in_ns client ip route add default via 10.208.1.1
in_ns gw1 ip route add default via 10.208.2.2
in_ns gw2 ip route add 10.208.1.0/24 via 10.208.2.1
in_ns server ip route add default via 10.208.3.1
lab_forwarding gw1; lab_forwarding gw2
lab_midcomd gw1 "$(lab_signaling_conf gw1 gw1)"
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 90
lab_serve server "$LAB_DIR/echo.log" $FLOWS udp-echo 5000 --duration 90
export CSP_STATE_DIR="$LAB_DIR/csp-state"
in_ns client "$BIN/csp" keygen --key "$LAB_DIR/client.key" >/dev/null
sleep 0.3
csp_run client setup udp 10.208.3.2:5000 --sport 4000 --lifetime 6 --key "$LAB_DIR/client.key"
expect_eq "$CSP_RC" 0 "setup through gw1"
expect_eq "$(grep -c '^  middlebox ' <<<"$CSP_OUT")" 1 "one middlebox on the path"
s=$(session_of "$CSP_OUT")
lab_bg client "$LAB_DIR/keep.log" "$BIN/csp" keep "$s" --lifetime 6 --duration 60 --key "$LAB_DIR/client.key"
wait_for_match "$LAB_DIR/keep.log" '"event":"keeping"' 5
replies() { in_ns client $FLOWS udp-ping 10.208.3.2 5000 --sport 4000 --count 3 --wait 0.3 | sed -n 's/.*replies \([0-9]*\).*/\1/p'; }
expect_eq "$(replies)" 3 "data through gw1 alone"

step "gw2 starts Midcom: the flow's packets stop there until the session is signaled again"
appeared=$(now_s)
lab_midcomd gw2 "$(lab_signaling_conf gw2 gw2)"
in_ns gw2 conntrack -F >/dev/null 2>&1 || true  # a fresh middlebox knows no connections
expect_eq "$(replies)" 0 "data stopped at gw2 (not admitted there)"
wait_for_match "$LAB_DIR/keep.log" '"event":"resignaled"' 10
echo "      $(grep resignaled "$LAB_DIR/keep.log" | head -1)"
ok=0
for _ in $(seq 1 20); do [ "$(replies)" = 3 ] && { ok=1; break; }; sleep 0.2; done
[ "$ok" = 1 ] || fail "data did not pass again after the re-signal"
echo "      middlebox appeared → data again: $(awk -v a="$appeared" -v b="$(now_s)" 'BEGIN { printf "%.2f", b - a }') s"
expect_match "$(midctl gw2 sessions)" "$s +udp +10\.208\.1\.2:4000 +10\.208\.3\.2:5000 +admitted" "gw2 admitted the session"
expect_match "$(midctl gw1 sessions)" "$s +udp +10\.208\.1\.2:4000 +10\.208\.3\.2:5000 +admitted" "gw1 still has it"
wait_for_match "$LAB_DIR/keep.log" '"event":"refreshed"' 8
