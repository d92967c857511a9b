#!/usr/bin/env bash
# DoS pushback, scenario 2 (docs/PROTOCOL.md 6.8): DENY cannot be used to cut someone else off, or
# beyond its bounds. On the gateway's LAN: the victim, another host, and mallory. Refused, each
# with its reason, nothing installed, counted: an unsigned DENY; a signed DENY sent from another
# host's address (mallory holds it, but the gateway's CHALLENGE goes to the real owner, who never
# asked); a prefix wider than allowed (/8, the bound is /16); a third filter over the per-victim
# bound (2 here); another key removing the victim's filter. The victim's own DENYs pass.
#
#   attacker 203.0.113.2 ── gw (gw1) ── br0 10.31.0.0/24: victim .5, other .6, mallory .7
source "$(dirname "$0")/lib.sh"
lab_init pbabuse

step "lab: attacker — gw — LAN (victim, other, mallory on one bridge)"
for n in attacker gw victim other mallory; do lab_ns $n; done
lab_link attacker gw; lab_link gw victim; lab_link gw other; lab_link gw mallory
lab_addr attacker to-gw 203.0.113.2/24; in_ns attacker ip route add default via 203.0.113.1
lab_addr gw to-attacker 203.0.113.1/24
in_ns gw ip link add br0 type bridge
for h in victim other mallory; do in_ns gw ip link set "to-$h" master br0; done
in_ns gw ip link set br0 up
lab_addr gw br0 10.31.0.1/24
lab_addr victim to-gw 10.31.0.5/24; lab_addr other to-gw 10.31.0.6/24; lab_addr mallory to-gw 10.31.0.7/24
for h in victim other mallory; do in_ns $h ip route add default via 10.31.0.1; done
# Mallory also holds the other host's address, but never answers ARP and asks only in its own
# name: what is sent to 10.31.0.6 reaches the other host only (mallory is no on-link ARP
# spoofer: return routability cannot tell apart two hosts that both receive an address's traffic).
lab_addr mallory to-gw 10.31.0.6/32
in_ns mallory sysctl -qw net.ipv4.conf.all.arp_ignore=8 net.ipv4.conf.to-gw.arp_ignore=8 \
  net.ipv4.conf.all.arp_announce=2 net.ipv4.conf.to-gw.arp_announce=2
lab_forwarding gw
lab_midcomd gw "$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"

[policy]
default = "admit"
unsignaled = "drop"

[pushback]
filters-per-victim = 2
min-prefix-length = 16
CONF
)"
export CSP_STATE_DIR="$LAB_DIR/csp-state"
"$BIN/csp" keygen --key "$LAB_DIR/victim.key" >/dev/null
"$BIN/csp" keygen --key "$LAB_DIR/mallory.key" >/dev/null
deny_set() { in_ns gw nft list set inet midcom deny4 2>/dev/null; }
deny() { local n=$1; shift; csp_run "$n" deny "$@" --toward 203.0.113.77 --wait 1; }

step "an unsigned DENY: authentication-failed"
out=$(in_ns victim $PY "$ROOT/Tests/integration/craft.py" send 203.0.113.77 7227 --type 11 --lifetime 60 \
  --tlv "0x8010=04181100$(printf %04x 53)cb007100" --wait 1)
indent <<<"$out"
expect_match "$out" "reply [0-9]+ octets from 203\.0\.113\.77:7227 type 3 " "a REJECT (in the name of the DENY's destination)"
wait_for_match "$LAB_DIR/gw-midcomd.log" "refused DENY [0-9a-f]{16} from 10\.31\.0\.5:[0-9]+: DENY must be signed" 2

step "mallory's signed DENY from the other host's address: challenged there, never proved, nothing installed"
sent=$(status_counter gw challenges_sent)
deny mallory 203.0.113.0/24 --proto udp --port 53 --from 10.31.0.6 --key "$LAB_DIR/mallory.key"
expect_eq "$CSP_RC" 3 "no middlebox granted it"
[ "$(status_counter gw challenges_sent)" -gt "$sent" ] || fail "gw did not challenge the other host's address"
expect_no_match "$(deny_set)" "10\.31\.0\.6" "no filter for the other host"

step "a prefix wider than allowed (/8, the bound is /16): policy-denied"
deny victim 203.0.0.0/8 --proto udp --key "$LAB_DIR/victim.key"
expect_eq "$CSP_RC" 1 "refused"
expect_match "$CSP_OUT" "policy-denied: /8 is wider than this middlebox allows \(/16 at most\)" "reason"
expect_match "$CSP_OUT" "challenged by middlebox [0-9a-f]{16}: proved our address" "the victim proved its address first"

step "the victim's own DENYs pass, up to its bound of 2 filters; the third is refused"
deny victim 203.0.113.0/24 --proto udp --port 53 --key "$LAB_DIR/victim.key"
expect_eq "$CSP_RC" 0 "first filter"
first=$(sed -n 's/^filter \([0-9a-f]*\):.*/\1/p' <<<"$CSP_OUT")
deny victim 198.18.0.0/16 --proto tcp --key "$LAB_DIR/victim.key"
expect_eq "$CSP_RC" 0 "second filter"
deny victim 192.0.2.0/24 --key "$LAB_DIR/victim.key"
expect_eq "$CSP_RC" 1 "third filter refused"
expect_match "$CSP_OUT" "resources-exhausted: 10\.31\.0\.5 holds 2 filters already" "reason"

step "mallory removing the victim's filter (its ID, lifetime 0, mallory's key): refused"
deny mallory 203.0.113.0/24 --proto udp --port 53 --lifetime 0 --session "$first" --key "$LAB_DIR/mallory.key"
expect_eq "$CSP_RC" 1 "refused"
expect_match "$CSP_OUT" "authentication-failed: filter $first belongs to another requester" "reason"

step "what gw1 holds: the victim's two filters, nothing else; the refusals are counted"
set=$(deny_set); indent <<<"$(midctl gw denies)"
expect_match "$set" "203\.0\.113\.0/24 \. udp \. 10\.31\.0\.5 \. 53 " "the victim's first filter"
expect_match "$set" "198\.18\.0\.0/16 \. tcp \. 10\.31\.0\.5 \. 0-65535 " "the victim's second filter"
expect_eq "$(grep -c ' \. 10\.31\.0\.' <<<"$set")" 2 "filters in the kernel"
expect_eq "$(status_counter gw denies_installed)" 2 "installed"
[ "$(status_counter gw denies_refused)" -ge 4 ] || fail "refusals counted: $(status_counter gw denies_refused)"
echo "pushback-abuse: all checks passed"
