#!/usr/bin/env bash
# Engine regression: NAT ports are not reused after a restart. Host A (inside) holds an outgoing
# mapping 203.0.113.1:4000 (SNAT) and an incoming one 203.0.113.1:6000 (DNAT + pinhole). midcomd
# restarts; both mappings stay in the kernel with their timeouts. Host B (inside2) then asks for
# the same ports: it must get other external ports, and A's translations must stay A's — a
# restarted gateway that forgot which external ports are taken would hand them out again and
# replace A's DNAT with B's.
#
#   inside 192.168.1.2 (A) ──┐
#                            nat (midcomd nat1, external 203.0.113.1) ── outside 203.0.113.2
#   inside2 192.168.2.2 (B) ─┘
source "$(dirname "$0")/lib.sh"
lab_init enatrs

step "lab: inside (A), inside2 (B) — nat — outside"
lab_nat
lab_nat_host inside2 2
conf=$(lab_nat_conf)
lab_nat_signaling nat to-outside
lab_midcomd nat "$conf"
lab_bg outside "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 60
lab_serve inside "$LAB_DIR/udp-inside.log" $FLOWS udp-echo 6000 --duration 60
lab_serve inside2 "$LAB_DIR/udp-inside2.log" $FLOWS udp-echo 6000 --duration 60
sleep 0.3

step "A: csp setup udp 203.0.113.2:5000 --sport 4000 → mapped to 203.0.113.1:4000"
csp_run inside setup udp 203.0.113.2:5000 --sport 4000 --lifetime 120
expect_eq "$CSP_RC" 0 "A's outgoing csp exit status"
expect_match "$CSP_OUT" "^  mapped to 203\.0\.113\.1:4000$" "A's outgoing mapping (own port, it is free)"
snat_a='192\.168\.1\.2 \. udp \. 4000 (timeout [0-9a-z]+ )?(expires [0-9a-z]+ )?(comment "[^"]*" )?: 203\.0\.113\.1 \. 4000([,} ]|$)'
expect_match "$(in_ns nat nft list map inet midcom snat4)" "$snat_a" "A's SNAT element"

step "A: csp setup udp --incoming --peer any --local-port 6000 --via 192.168.1.1 → mapped to 203.0.113.1:6000"
csp_run inside setup udp --incoming --peer any --local-port 6000 --via 192.168.1.1 --lifetime 120
expect_eq "$CSP_RC" 0 "A's pinhole csp exit status"
expect_match "$CSP_OUT" "^  mapped to 203\.0\.113\.1:6000$" "A's incoming mapping (own port, it is free)"
dnat_a='203\.0\.113\.1 \. udp \. 6000 (timeout [0-9a-z]+ )?(expires [0-9a-z]+ )?(comment "[^"]*" )?: 192\.168\.1\.2 \. 6000([,} ]|$)'
expect_match "$(in_ns nat nft list map inet midcom dnat4)" "$dnat_a" "A's DNAT element"

step "restart midcomd (SIGTERM, wait, start again); wait until it adopted A's flows"
kill -TERM "$MIDCOMD_PID"
for _ in $(seq 1 50); do kill -0 "$MIDCOMD_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$MIDCOMD_PID" 2>/dev/null && fail "midcomd did not stop within 5 s of SIGTERM"
expect_match "$(in_ns nat nft list map inet midcom snat4)" "$snat_a" "A's SNAT element while midcomd is stopped"
expect_match "$(in_ns nat nft list map inet midcom dnat4)" "$dnat_a" "A's DNAT element while midcomd is stopped"
lab_midcomd nat "$conf"
adopted=0
for _ in $(seq 1 100); do
  table=$(midctl nat sessions)
  adopted=$(grep -cE "udp +(192\.168\.1\.2:4000 +203\.0\.113\.2:5000|0\.0\.0\.0:\* +192\.168\.1\.2:6000) +admitted" <<<"$table" || true)
  [ "$adopted" -ge 2 ] && break; sleep 0.1
done
indent <<<"$table"
[ "$adopted" -ge 2 ] || fail "A's outgoing flow and pinhole were not both adopted within 10 s"

problems=()
step "B: csp setup udp 203.0.113.2:5000 --sport 4000 (port 4000 is A's): another external port"
csp_run inside2 setup udp 203.0.113.2:5000 --sport 4000 --lifetime 120 --machine
b_out=$(sed -n 's/.* mapped=203\.0\.113\.1:\([0-9]*\).*/\1/p' <<<"$CSP_OUT" | head -1)
if [ "$CSP_RC" != 0 ] || [ -z "$b_out" ]; then
  problems+=("B's outgoing SETUP was not accepted with a mapping (exit $CSP_RC): $CSP_OUT")
elif [ "$b_out" == 4000 ]; then
  problems+=("B's outgoing flow was mapped to 203.0.113.1:4000, the external port A's adopted SNAT still holds")
fi

step "B: csp setup udp --incoming --peer any --local-port 6000 --via 192.168.2.1 (port 6000 is A's): another external port"
csp_run inside2 setup udp --incoming --peer any --local-port 6000 --via 192.168.2.1 --lifetime 120 --machine
b_in=$(sed -n 's/.* mapped=203\.0\.113\.1:\([0-9]*\).*/\1/p' <<<"$CSP_OUT" | head -1)
if [ "$CSP_RC" != 0 ] || [ -z "$b_in" ]; then
  problems+=("B's pinhole was not accepted with a mapping (exit $CSP_RC): $CSP_OUT")
elif [ "$b_in" == 6000 ]; then
  problems+=("B's pinhole was mapped to 203.0.113.1:6000, the external port A's adopted DNAT still holds")
fi

step "the kernel maps after B's requests"
snat=$(in_ns nat nft list map inet midcom snat4); dnat=$(in_ns nat nft list map inet midcom dnat4)
indent <<<"$snat"; indent <<<"$dnat"

step "assert: B got ports other than A's (outgoing '$b_out', incoming '$b_in'), A's translations are intact"
grep -Eq -- "$snat_a" <<<"$snat" || problems+=("A's SNAT element 192.168.1.2 . udp . 4000 : 203.0.113.1 . 4000 is gone")
grep -Eq -- "$dnat_a" <<<"$dnat" || problems+=("A's DNAT element 203.0.113.1 . udp . 6000 : 192.168.1.2 . 6000 is gone")
! grep -Eq -- "203\.0\.113\.1 \. udp \. 6000 .*: 192\.168\.2\.2" <<<"$dnat" || problems+=("dnat4 translates A's external port 6000 to B")
! grep -Eq -- "192\.168\.2\.2 \. udp \. 4000 .*: 203\.0\.113\.1 \. 4000([,} ]|$)" <<<"$snat" || problems+=("snat4 translates B to A's external port 4000 too")
[ ${#problems[@]} -eq 0 ] || fail "NAT ports reused after restart: $(printf '%s; ' "${problems[@]}")"
expect_match "$snat" "192\.168\.2\.2 \. udp \. 4000 .*: 203\.0\.113\.1 \. $b_out([,} ]|$)" "B's SNAT element"
expect_match "$dnat" "203\.0\.113\.1 \. udp \. $b_in .*: 192\.168\.2\.2 \. 6000([,} ]|$)" "B's DNAT element"

step "data: outside → 203.0.113.1:6000 still reaches A, outside → 203.0.113.1:$b_in reaches B"
out=$(in_ns outside $FLOWS udp-ping 203.0.113.1 6000 --sport 7100 --count 3 --interval 0.02 --wait 0.4)
indent <<<"$out"; expect_match "$out" "sent 3 replies 3 " "A's mapped port after the restart"
wait_for_match "$LAB_DIR/udp-inside.log" "echo from 203\.0\.113\.2:7100$" 2
out=$(in_ns outside $FLOWS udp-ping 203.0.113.1 "$b_in" --sport 7101 --count 3 --interval 0.02 --wait 0.4)
indent <<<"$out"; expect_match "$out" "sent 3 replies 3 " "B's mapped port"
wait_for_match "$LAB_DIR/udp-inside2.log" "echo from 203\.0\.113\.2:7101$" 2
echo "engine-nat-restart: all checks passed"
