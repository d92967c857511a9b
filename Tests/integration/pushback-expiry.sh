#!/usr/bin/env bash
# DoS pushback, scenario 3 (docs/PROTOCOL.md 6.8): a filter lasts its lifetime and no longer
# unless refreshed (same filter ID, same key); lifetime 0 removes it at once; the operator can
# remove one (`midctl undeny`). Checked in the kernel: the attacker's datagrams are dropped while
# the filter holds, and pass again once it is gone. A victim may ask for a rate limit instead: the
# ruleset's rate passes, the rest is dropped.
#
#   victim 10.200.1.2 (udp 5353, open to anyone) ── gw (gw1) ── attacker 10.200.2.2
source "$(dirname "$0")/lib.sh"
lab_init pbexpiry

step "lab: victim — gw — attacker; the victim's udp 5353 is open to anyone"
lab_line victim gw attacker
lab_midcomd gw "$(lab_signaling_conf gw gw1)"
export CSP_STATE_DIR="$LAB_DIR/csp-state"
"$BIN/csp" keygen --key "$LAB_DIR/victim.key" >/dev/null
lab_serve victim "$LAB_DIR/echo.log" $FLOWS udp-echo 5353 --duration 90
csp_run victim setup udp --incoming --peer any --local-port 5353 --via 10.200.1.1 --lifetime 90 --key "$LAB_DIR/victim.key"
expect_eq "$CSP_RC" 0 "pinhole"
hits() { in_ns attacker $FLOWS udp-ping 10.200.1.2 5353 --sport "$1" --count 3 --interval 0.02 --wait 0.3 | sed -n 's/.*replies \([0-9]*\).*/\1/p'; }
expect_eq "$(hits 6000)" 3 "the attacker reaches the service"
filter_of() { sed -n 's/^filter \([0-9a-f]*\):.*/\1/p' <<<"$1"; }
present() { in_ns gw nft list set inet midcom deny4 | grep -c "10\.200\.2\.0/24 \. udp \. 10\.200\.1\.2 \. 5353 " || true; }

step "DENY 10.200.2.0/24 udp 5353 for 3 s: the attacker is dropped at gw"
csp_run victim deny 10.200.2.0/24 --proto udp --port 5353 --lifetime 3 --key "$LAB_DIR/victim.key" --wait 0.5
expect_eq "$CSP_RC" 0 "deny"
f=$(filter_of "$CSP_OUT")
start=$(now_s)
expect_eq "$(hits 6001)" 0 "the attacker while the filter holds"
expect_match "$(midctl gw denies)" "$f +10\.200\.1\.2 +[0-9a-f]{16} +10\.200\.2\.0/24 +udp +5353 +drop +[0-9]+s +[0-3]s +[1-9]" "listed with its drops"

step "refreshed at 2 s (same ID, lifetime 3): still there at 4 s"
sleep_until "$(after "$start" 2)"
csp_run victim deny 10.200.2.0/24 --proto udp --port 5353 --lifetime 3 --session "$f" --key "$LAB_DIR/victim.key" --wait 0.5
expect_eq "$CSP_RC" 0 "refresh"
sleep_until "$(after "$start" 4)"
expect_eq "$(present)" 1 "the filter at 4 s"
expect_eq "$(hits 6002)" 0 "the attacker at 4 s"

step "not refreshed again: gone after its lifetime (kernel and table), the attacker passes"
sleep_until "$(after "$start" 6.5)"
expect_eq "$(present)" 0 "the filter at 6.5 s"
expect_no_match "$(midctl gw denies)" "$f" "midctl after expiry"
expect_eq "$(hits 6003)" 3 "the attacker after expiry"
expect_eq "$(status_counter gw denies_expired)" 1 "expired counter"

step "lifetime 0 removes at once; the operator removes one with midctl undeny"
csp_run victim deny 10.200.2.0/24 --proto udp --port 5353 --lifetime 60 --key "$LAB_DIR/victim.key" --wait 0.5
g=$(filter_of "$CSP_OUT")
expect_eq "$(present)" 1 "installed again"
csp_run victim deny 10.200.2.0/24 --proto udp --port 5353 --lifetime 0 --session "$g" --key "$LAB_DIR/victim.key" --wait 0.5
expect_eq "$CSP_RC" 0 "removal"
expect_match "$CSP_OUT" "middlebox gw1 id [0-9a-f]{16}: removed" "gw1 says removed"
expect_eq "$(present)" 0 "after lifetime 0"
csp_run victim deny 10.200.2.0/24 --proto udp --port 5353 --lifetime 60 --key "$LAB_DIR/victim.key" --wait 0.5
h=$(filter_of "$CSP_OUT")
out=$(midctl gw undeny "$h"); indent <<<"$out"
expect_eq "$out" "removed $h" "midctl undeny"
expect_eq "$(present)" 0 "after undeny"
expect_eq "$(hits 6004)" 3 "the attacker after undeny"
step "rate-limit instead of drop: of a 4000/s flood for 2 s, the ruleset's 1000/s (burst 100) passes"
in_ns victim nft add table ip lab
in_ns victim nft add chain ip lab count '{ type filter hook prerouting priority -400; policy accept; }'
in_ns victim nft add rule ip lab count ip saddr 10.200.2.0/24 udp dport 5353 counter
csp_run victim deny 10.200.2.0/24 --proto udp --port 5353 --lifetime 30 --rate-limit --key "$LAB_DIR/victim.key" --wait 0.5
expect_eq "$CSP_RC" 0 "rate-limit filter"
expect_match "$CSP_OUT" "rate-limit 10\.200\.2\.0/24 udp port 5353" "asked for a rate limit"
expect_match "$(in_ns gw nft list set inet midcom ratelimit4)" "10\.200\.2\.0/24 \. udp \. 10\.200\.1\.2 \. 5353 limit rate over 1000/second" "the element, in the rate-limit set"
expect_match "$(midctl gw denies)" "10\.200\.2\.0/24 +udp +5353 +rate-limit " "listed as rate-limit"
out=$(in_ns attacker $PY "$ROOT/Tests/integration/udp_flood.py" 10.200.1.2 5353 10.200.2.16/28 --rate 4000 --duration 2); indent <<<"$out"
sent=$(sed -n 's/^sent \([0-9]*\) .*/\1/p' <<<"$out")
sleep 0.2
passed=$(in_ns victim nft list chain ip lab count | sed -n 's/.*counter packets \([0-9]*\).*/\1/p')
dropped=$(midctl gw denies --json | $PY -c 'import json,sys; print(sum(d.get("packets") or 0 for d in json.load(sys.stdin) if d["action"]=="rate-limit"))')
echo "      sent $sent, passed $passed, dropped $dropped by the rate limit"
[ "$passed" -ge 1500 ] && [ "$passed" -le 3000 ] || fail "the rate limit let $passed of $sent through (expected about 2100)"
[ $((passed + dropped)) -ge $((sent * 99 / 100)) ] || fail "passed + dropped ($passed + $dropped) is not what was sent ($sent)"
echo "pushback-expiry: all checks passed"
