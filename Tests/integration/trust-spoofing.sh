#!/usr/bin/env bash
# Trust regression: spoofed signaling (docs/PROTOCOL.md 6.6, 10.11, 11). Attackers outside and
# inside forge the victim's source address to open an incoming pinhole to it (SETUP addressed to
# the middlebox, listen, any peer) and to forge the victim's ACCEPT for a flow they signaled
# themselves. From outside the anti-spoofing chain of the ruleset drops the forgery before
# anything sees it; on the LAN, where the address is routed, the CHALLENGE goes to the real
# victim, which never asked, so nothing is opened. The victim itself still gets its pinhole.
# Fails on the binaries from before the trust work (MIDCOM_BIN=/work/baseline-bin, run with the
# ruleset of their release: revision 2, no anti-spoofing chain), where every forgery opens the
# gateway.
#
#   victim  10.201.1.2 ──┐                                           (2001:db8:201:1::2)
#                        lan bridge, gw (midcomd gw1) 10.201.1.1 | 10.201.2.1 ── outsider 10.201.2.2
#   insider 10.201.1.3 ──┘                                           (2001:db8:201:1::3, 2001:db8:201:2::2)
#
# TRUST_STEPS=abcd (default) runs only the steps named (to see each one fail on old binaries).
source "$(dirname "$0")/lib.sh"
lab_init tspoof
STEPS=${TRUST_STEPS:-abcd}
want() { [[ $STEPS == *"$1"* ]]; }
CRAFT="$PY $ROOT/Tests/integration/craft.py"
export CSP_STATE_DIR="$LAB_DIR/csp-state"

V4=10.201.1.2 V6=2001:db8:201:1::2
I4=10.201.1.3 I6=2001:db8:201:1::3
O4=10.201.2.2 O6=2001:db8:201:2::2
G4=10.201.1.1 G6=2001:db8:201:1::1

step "lab: victim and insider on gw's LAN bridge, outsider on gw's other side (IPv4 + IPv6)"
lab_ns victim; lab_ns insider; lab_ns gw; lab_ns outsider
lab_link victim gw; lab_link insider gw; lab_link gw outsider
in_ns gw ip link add lan type bridge
in_ns gw ip link set to-victim master lan
in_ns gw ip link set to-insider master lan
in_ns gw ip link set lan up
lab_addr gw lan $G4/24; lab_addr gw lan $G6/64
lab_addr gw to-outsider 10.201.2.1/24; lab_addr gw to-outsider 2001:db8:201:2::1/64
lab_addr victim to-gw $V4/24; lab_addr victim to-gw $V6/64
lab_addr insider to-gw $I4/24; lab_addr insider to-gw $I6/64
lab_addr outsider to-gw $O4/24; lab_addr outsider to-gw $O6/64
for h in victim insider; do
  in_ns $h ip route add default via $G4
  in_ns $h ip -6 route add default via $G6
done
in_ns outsider ip route add default via 10.201.2.1
in_ns outsider ip -6 route add default via 2001:db8:201:2::1
lab_forwarding gw
# The kernel's own IPv4 reverse-path filter stays off (IPv6 has none): the ruleset must not
# depend on it.
for c in all default lan to-outsider; do in_ns gw sysctl -qw "net.ipv4.conf.$c.rp_filter=0"; done
GW_LAN_MAC=$(in_ns gw cat /sys/class/net/lan/address)
GW_OUT_MAC=$(in_ns gw cat /sys/class/net/to-outsider/address)

lab_load_ruleset gw
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"

[policy]
default = "admit"
unsignaled = "drop"
max-lifetime = 600
CONF
)
lab_midcomd gw "$conf"
for a in "" ::; do
  lab_serve victim "$LAB_DIR/ssh${a:+6}.log" $FLOWS tcp-serve 22 ${a:+--bind $a} --duration 60
  lab_serve victim "$LAB_DIR/p2222${a:+6}.log" $FLOWS tcp-serve 2222 ${a:+--bind $a} --duration 60
  # What reaches the victim's signaling ports (nothing answers there) and the insider's.
  lab_serve victim "$LAB_DIR/v40022${a:+6}.log" $CRAFT recv 40022 --bind "${a:-0.0.0.0}" --duration 58
  lab_serve victim "$LAB_DIR/v7227${a:+6}.log" $CRAFT recv 7227 --bind "${a:-0.0.0.0}" --duration 58
  lab_serve insider "$LAB_DIR/i40022${a:+6}.log" $CRAFT recv 40022 --bind "${a:-0.0.0.0}" --duration 58
done

# antispoof_drops: packets the ruleset's anti-spoofing chain dropped (0 without the chain).
# state_of ID: the session's state in midctl (none when it does not exist).
session_count() { midctl gw sessions --json | $PY -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
counter() { status_counter gw "$1"; }
# tcp_probe FROM DEST PORT: one connection attempt (1 s); prints flows.py's line.
tcp_probe() { in_ns "$1" $FLOWS tcp-send "$2" "$3" --bytes 100 --timeout 1 || true; }
expect_blocked() {
  local out; out=$(tcp_probe "$1" "$2" "$3"); indent <<<"$out"
  expect_match "$out" "connect failed" "$4"
}
# listen_flow ADDR: FLOW of "open an incoming pinhole from any peer to ADDR:22" (sent with
# REQUESTED-ACTION admit|listen, TLV 0x0004 = 09, to the gateway, forged with ADDR as source).
listen_flow() { if [[ $1 == *:* ]]; then echo "tcp,::,0,$1,22"; else echo "tcp,0.0.0.0,0,$1,22"; fi; }

if want a; then
  step "a. outsider forges the victim's address: SETUP listen, any peer → victim:22, sent to the gateway"
  drops=$(antispoof_drops); challenged=$(counter challenges_sent)
  in_ns outsider $CRAFT spoof $V4 40022 $G4 7227 --iface to-gw --mac "$GW_OUT_MAC" --session 5b0f0a0000000004 \
    --flow "$(listen_flow $V4)" --lifetime 600 --tlv 0x0004=09 | indent
  in_ns outsider $CRAFT spoof $V6 40022 $G6 7227 --iface to-gw --mac "$GW_OUT_MAC" --session 5b0f0a0000000006 \
    --flow "$(listen_flow $V6)" --lifetime 600 --tlv 0x0004=09 | indent
  sleep 1
  expect_no_match "$(nft_set gw pinhole4)" "10\.201\.1\.2" "pinhole4 element for the victim opened by the outsider's forgery"
  expect_no_match "$(nft_set gw pinhole6)" "2001:db8:201:1::2" "pinhole6 element for the victim opened by the outsider's forgery"
  expect_eq "$(session_count)" 0 "sessions at gw after the outsider's forgeries"
  expect_blocked outsider $V4 22 "outsider → victim:22 (IPv4) after the forgery"
  expect_blocked outsider $V6 22 "outsider → victim:22 (IPv6) after the forgery"
  expect_no_match "$(cat "$LAB_DIR/ssh.log" "$LAB_DIR/ssh6.log")" "conn from" "victim:22 saw a connection"
  dropped=$(( $(antispoof_drops) - drops ))
  [ "$dropped" -ge 2 ] || fail "the anti-spoofing chain should have dropped both forgeries (dropped $dropped)"
  expect_eq "$(counter challenges_sent)" "$challenged" "CHALLENGEs sent (the forgeries never reached midcomd)"
  step "a: stopped by the anti-spoofing chain ($dropped packets dropped), midcomd never saw them"
fi

if want b; then
  step "b. insider forges the victim's address on the LAN: the same SETUPs (IPv4, IPv6)"
  challenged=$(counter challenges_sent); passed=$(counter challenges_passed)
  in_ns insider $CRAFT spoof $V4 40022 $G4 7227 --iface to-gw --mac "$GW_LAN_MAC" --session 5b0f0b0000000004 \
    --flow "$(listen_flow $V4)" --lifetime 600 --tlv 0x0004=09 | indent
  in_ns insider $CRAFT spoof $V6 40022 $G6 7227 --iface to-gw --mac "$GW_LAN_MAC" --session 5b0f0b0000000006 \
    --flow "$(listen_flow $V6)" --lifetime 600 --tlv 0x0004=09 | indent
  sleep 1
  expect_no_match "$(nft_set gw pinhole4)" "10\.201\.1\.2" "pinhole4 element for the victim opened by the insider's forgery"
  expect_no_match "$(nft_set gw pinhole6)" "2001:db8:201:1::2" "pinhole6 element for the victim opened by the insider's forgery"
  expect_eq "$(session_count)" 0 "sessions at gw after the insider's forgeries (a CHALLENGE creates no state)"
  wait_for_match "$LAB_DIR/v40022.log" "from 10\.201\.1\.1:7227 type 6 session 5b0f0b0000000004" 3
  wait_for_match "$LAB_DIR/v400226.log" "from 2001:db8:201:1::1:7227 type 6 session 5b0f0b0000000006" 3
  grep -h "^recv" "$LAB_DIR/v40022.log" "$LAB_DIR/v400226.log" | sed 's/^/victim: /' | indent
  expect_no_match "$(cat "$LAB_DIR/v40022.log" "$LAB_DIR/v400226.log")" "type 2 " "an ACCEPT reached the victim"
  expect_no_match "$(cat "$LAB_DIR/i40022.log" "$LAB_DIR/i400226.log")" "^recv" "the CHALLENGE (or anything) reached the insider"
  expect_eq "$(( $(counter challenges_sent) - challenged ))" 2 "CHALLENGEs sent to the victim"
  expect_eq "$(( $(counter challenges_passed) - passed ))" 0 "CHALLENGEs passed"
  expect_blocked outsider $V4 22 "outsider → victim:22 (IPv4) after the insider's forgery"
  expect_blocked outsider $V6 22 "outsider → victim:22 (IPv6) after the insider's forgery"
  expect_no_match "$(cat "$LAB_DIR/ssh.log" "$LAB_DIR/ssh6.log")" "conn from" "victim:22 saw a connection"
fi

if want c; then
  step "c. the spoofer caught, the victim is not: csp setup tcp --incoming --peer any --via gw --local-port 22"
  passed=$(counter challenges_passed)
  csp_run victim setup tcp --incoming --peer any --via $G4 --local-port 22 --lifetime 60
  expect_eq "$CSP_RC" 0 "the victim's own setup (IPv4) exit status"
  expect_match "$CSP_OUT" "challenged by middlebox [0-9a-f]+: proved our address" "the victim answered gw1's CHALLENGE (IPv4)"
  expect_match "$CSP_OUT" "ACCEPT from 10\.201\.1\.1:7227 \(middlebox\)" "gw1 accepted the victim (IPv4)"
  csp_run victim setup tcp --incoming --peer any --via $G6 --local-port 22 --lifetime 60
  expect_eq "$CSP_RC" 0 "the victim's own setup (IPv6) exit status"
  expect_match "$CSP_OUT" "challenged by middlebox [0-9a-f]+: proved our address" "the victim answered gw1's CHALLENGE (IPv6)"
  expect_eq "$(( $(counter challenges_passed) - passed ))" 2 "CHALLENGEs passed by the victim"
  expect_match "$(nft_set gw pinhole4)" "tcp \. 10\.201\.1\.2 \. 22 " "the victim's pinhole4 element"
  expect_match "$(nft_set gw pinhole6)" "tcp \. 2001:db8:201:1::2 \. 22 " "the victim's pinhole6 element"
  for d in $V4 $V6; do
    out=$(tcp_probe outsider $d 22); indent <<<"$out"
    expect_match "$out" "sent 100 echoed 100" "outsider → victim:22 through the victim's own pinhole ($d)"
  done
  wait_for_match "$LAB_DIR/ssh.log" "conn from 10\.201\.2\.2:" 2
  wait_for_match "$LAB_DIR/ssh6.log" "conn from 2001:db8:201:2::2:" 2
fi

# forge_accept LABEL FAMILY FORGER IFACE-MAC SESSION SPORT: the outsider signals its own flow
# outsider → victim:2222 (a real SETUP to victim:7227, its own CHALLENGE answered: it owns its
# address), nobody answers on the victim; then FORGER sends the victim's ACCEPT for it.
forge_accept() {
  local label=$1 fam=$2 forger=$3 mac=$4 session=$5 sport=$6 v o nonce
  if [ "$fam" = 6 ]; then v=$V6 o=$O6; else v=$V4 o=$O4; fi
  nonce=$(printf '%016x' $((RANDOM * 32768 + RANDOM + 1)))
  step "$label: outsider's SETUP tcp $o:* → [$v]:2222 (session $session), sent to the victim's CSP port"
  in_ns outsider $CRAFT send "$v" 7227 --sport "$sport" --session "$session" --nonce "$nonce" \
    --flow "tcp,$o,0,$v,2222" --lifetime 60 --respond --wait 1.2 | indent
  expect_eq "$(state_of "$session")" pending "$label: the outsider's own SETUP waits for the victim's answer at gw"
  wait_for_match "$LAB_DIR/v7227${fam/4/}.log" "type 1 session $session" 2
  step "$label: $forger forges the victim's ACCEPT ([$v]:7227 → [$o]:$sport, same session and nonce)"
  drops=$(antispoof_drops); challenged=$(counter challenges_sent); passed=$(counter challenges_passed)
  in_ns "$forger" $CRAFT spoof "$v" 7227 "$o" "$sport" --iface to-gw --mac "$mac" --type 2 --session "$session" \
    --nonce "$nonce" --lifetime 600 | indent
  sleep 0.7
  expect_eq "$(state_of "$session")" pending "$label: session $session after the forged ACCEPT (admitted = the forgery worked)"
  expect_eq "$(nft_element_count gw admit4 admit6 admit4_anyport admit6_anyport)" 0 "$label: admit elements"
  expect_blocked outsider "$v" 2222 "$label: outsider → victim:2222"
  expect_no_match "$(cat "$LAB_DIR/p2222.log" "$LAB_DIR/p22226.log")" "conn from" "$label: victim:2222 saw a connection"
  expect_eq "$(( $(counter challenges_passed) - passed ))" 0 "$label: CHALLENGEs passed after the forged ACCEPT"
  FORGE_DROPPED=$(( $(antispoof_drops) - drops )) FORGE_CHALLENGED=$(( $(counter challenges_sent) - challenged ))
}

if want d; then
  step "d. forged responder ACCEPTs"
  forge_accept "d/outside/IPv4" 4 outsider "$GW_OUT_MAC" 5b0f0d0000000104 41001
  [ "$FORGE_DROPPED" -ge 1 ] || fail "d/outside/IPv4: the anti-spoofing chain should have dropped the forged ACCEPT"
  expect_eq "$FORGE_CHALLENGED" 0 "d/outside/IPv4: CHALLENGEs (the forgery never reached midcomd)"
  forge_accept "d/outside/IPv6" 6 outsider "$GW_OUT_MAC" 5b0f0d0000000106 41002
  [ "$FORGE_DROPPED" -ge 1 ] || fail "d/outside/IPv6: the anti-spoofing chain should have dropped the forged ACCEPT"
  expect_eq "$FORGE_CHALLENGED" 0 "d/outside/IPv6: CHALLENGEs (the forgery never reached midcomd)"
  forge_accept "d/inside/IPv4" 4 insider "$GW_LAN_MAC" 5b0f0d0000000204 41003
  expect_eq "$FORGE_CHALLENGED" 1 "d/inside/IPv4: CHALLENGE of the ACCEPT's sender"
  wait_for_match "$LAB_DIR/v7227.log" "type 6 session 5b0f0d0000000204" 2
  forge_accept "d/inside/IPv6" 6 insider "$GW_LAN_MAC" 5b0f0d0000000206 41004
  expect_eq "$FORGE_CHALLENGED" 1 "d/inside/IPv6: CHALLENGE of the ACCEPT's sender"
  wait_for_match "$LAB_DIR/v72276.log" "type 6 session 5b0f0d0000000206" 2
  step "d: what reached the victim's CSP port (nothing answers there): the SETUPs and, for the LAN forgeries, the CHALLENGEs"
  grep -h "^recv" "$LAB_DIR/v7227.log" "$LAB_DIR/v72276.log" | indent
fi

step "gw counters: $(midctl gw status --json | $PY -c '
import json, sys
c = json.load(sys.stdin)["counters"]
print(" ".join(f"{k}={c.get(k, 0)}" for k in ("challenges_sent", "challenges_passed", "challenges_failed", "admitted", "mismatched_replies")))')"
echo "trust-spoofing: all checks passed"
