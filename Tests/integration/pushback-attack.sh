#!/usr/bin/env bash
# DoS pushback, scenario 1 (docs/PROTOCOL.md 6.8, 10.12): a victim behind two CSP gateways in
# series runs a UDP service open to anyone. A bounded flood from a /24 (spoofed sources) hits it
# through gwA then gwB while a legitimate client elsewhere uses the same service. The victim sends
# one signed DENY towards the attack: gwB and gwA each check it, install a kernel filter for the
# attacking prefix to the victim's own address only, answer with their record, and pass it on.
# Afterwards the first gateway on the attack path (gwA) drops ≥ 99 % of the attack, the victim
# sees next to none of it, and the legitimate client keeps ≥ 99 % delivery. The time from DENY
# sent to each gateway's filter being active is printed.
#
#   attacker 203.0.113.0/24 ──┐
#                             gwA ── 100.64.30.0/30 ── gwB ── victim 10.30.0.5 (udp 5353)
#   legit 198.51.100.9 ───────┘
source "$(dirname "$0")/lib.sh"
lab_init pushback

RATE=${PUSHBACK_RATE:-20000}
step "lab: attacker and legit — gwA — gwB — victim"
for n in attacker legit gwA gwB victim; do lab_ns $n; done
lab_link attacker gwA; lab_link legit gwA; lab_link gwA gwB; lab_link gwB victim
lab_addr attacker to-gwA 203.0.113.2/24; in_ns attacker ip route add default via 203.0.113.1
lab_addr legit to-gwA 198.51.100.9/24; in_ns legit ip route add default via 198.51.100.1
lab_addr gwA to-attacker 203.0.113.1/24; lab_addr gwA to-legit 198.51.100.1/24; lab_addr gwA to-gwB 100.64.30.1/30
in_ns gwA ip route add 10.30.0.0/24 via 100.64.30.2
lab_addr gwB to-gwA 100.64.30.2/30; lab_addr gwB to-victim 10.30.0.1/24; in_ns gwB ip route add default via 100.64.30.1
lab_addr victim to-gwB 10.30.0.5/24; in_ns victim ip route add default via 10.30.0.1
lab_forwarding gwA; lab_forwarding gwB
# Spoofed sources of the attacker's own /24 arrive where that /24 lives: the anti-spoofing check
# passes them, as it would for a compromised network's hosts.
lab_midcomd gwA "$(lab_signaling_conf gwA gwA)"
lab_midcomd gwB "$(lab_signaling_conf gwB gwB)"
export CSP_STATE_DIR="$LAB_DIR/csp-state"
"$BIN/csp" keygen --key "$LAB_DIR/victim.key" >/dev/null
# What arrives: test-owned counters ahead of everything (gwA from the attacker's link, the victim
# from the attacking prefix).
in_ns gwA nft add table ip lab
in_ns gwA nft add chain ip lab count '{ type filter hook prerouting priority -400; policy accept; }'
in_ns gwA nft add rule ip lab count iifname to-attacker ip saddr 203.0.113.0/24 udp dport 5353 counter
in_ns victim nft add table ip lab
in_ns victim nft add chain ip lab count '{ type filter hook prerouting priority -400; policy accept; }'
in_ns victim nft add rule ip lab count ip saddr 203.0.113.0/24 udp dport 5353 counter
counted() { in_ns "$1" nft list chain ip lab count | sed -n 's/.*counter packets \([0-9]*\).*/\1/p' | head -1; }
# gwA's arrivals and its filter's drops from one ruleset dump, so both are read at one moment.
gwA_counts() {
  in_ns gwA nft list ruleset 2>/dev/null | $PY -c '
import re, sys
text = sys.stdin.read()
arrived = re.search(r"iifname \"to-attacker\".*counter packets (\d+)", text).group(1)
m = re.search(r"203\.0\.113\.0/24 \. udp \. 10\.30\.0\.5 \. 5353 counter packets (\d+)", text)
print(arrived, m.group(1) if m else 0)'
}

step "the victim opens udp 5353 to anyone (signed, through gwB to gwA); the legitimate client gets answers"
lab_serve victim "$LAB_DIR/echo.log" $FLOWS udp-echo 5353 --duration 90
csp_run victim setup udp --incoming --peer any --local-port 5353 --via 100.64.30.1 --lifetime 90 --key "$LAB_DIR/victim.key"
expect_eq "$CSP_RC" 0 "pinhole"
legit() { in_ns legit $FLOWS udp-ping 10.30.0.5 5353 --sport 7000 --count "$1" --interval 0.01 --wait 0.5 | sed -n 's/.*replies \([0-9]*\).*/\1/p'; }
expect_eq "$(legit 20)" 20 "legitimate answers before the attack"

step "the attack: $RATE datagrams/s from 203.0.113.0/24 for 12 s; it reaches the victim"
lab_bg attacker "$LAB_DIR/flood.log" $PY "$ROOT/Tests/integration/udp_flood.py" 10.30.0.5 5353 203.0.113.0/24 --rate "$RATE" --duration 12
flood=$LAB_LAST_PID
sleep 2
before=$(counted victim)
echo "      attack datagrams at the victim so far: $before"
[ "${before:-0}" -gt $((RATE / 2)) ] || fail "the flood does not reach the victim ($before)"

step "the victim sends DENY 203.0.113.0/24 udp port 5353 (signed) towards the attack"
csp_run victim deny 203.0.113.0/24 --proto udp --port 5353 --lifetime 60 --toward 203.0.113.77 --key "$LAB_DIR/victim.key" --wait 1.5
expect_eq "$CSP_RC" 0 "csp deny"
expect_match "$CSP_OUT" "middlebox gwB id [0-9a-f]{16}: denied, 60s in [0-9.]+ ms" "gwB's answer"
expect_match "$CSP_OUT" "middlebox gwA id [0-9a-f]{16}: denied, 60s in [0-9.]+ ms" "gwA's answer"
echo "      DENY sent → filter active: gwB $(sed -n 's/.*gwB .* in \([0-9.]*\) ms/\1/p' <<<"$CSP_OUT") ms, gwA $(sed -n 's/.*gwA .* in \([0-9.]*\) ms/\1/p' <<<"$CSP_OUT") ms"
table=$(midctl gwA denies); indent <<<"$table"
expect_match "$table" "10\.30\.0\.5 +[0-9a-f]{16} +203\.0\.113\.0/24 +udp +5353 " "gwA lists the filter with its requester"
expect_match "$(midctl gwB denies)" "10\.30\.0\.5 +[0-9a-f]{16} +203\.0\.113\.0/24 +udp +5353 " "gwB lists it"
expect_match "$(in_ns gwA nft list set inet midcom deny4)" "203\.0\.113\.0/24 \. udp \. 10\.30\.0\.5 \. 5353 " "gwA's kernel filter"

step "afterwards (3 s of attack): gwA drops ≥ 99 %, the victim sees ≤ 1 %, the legitimate client ≥ 99 %"
sleep 0.3
read -r a0 d0 <<<"$(gwA_counts)"; v0=$(counted victim)
got=$(legit 300)
read -r a1 d1 <<<"$(gwA_counts)"; v1=$(counted victim)
arrived=$((a1 - a0)); reached=$((v1 - v0)); dropped=$((d1 - d0))
echo "      attack at gwA: $arrived, dropped by gwA's filter: $dropped, at the victim: $reached; legitimate: $got/300"
[ "$arrived" -gt 1000 ] || fail "the attack had stopped during the measurement ($arrived)"
[ $((dropped * 100)) -ge $((arrived * 99)) ] || fail "gwA dropped only $dropped of $arrived"
[ $((reached * 100)) -le "$arrived" ] || fail "the victim still got $reached of $arrived"
[ "$got" -ge 297 ] || fail "legitimate delivery $got/300 is below 99 %"
expect_match "$(midctl gwA status)" "denies_installed +1" "gwA's counter"
wait "$flood" || true
echo "      $(cat "$LAB_DIR/flood.log")"
echo "pushback-attack: all checks passed"
