#!/usr/bin/env bash
# Trust regression: off-path forgery (docs/PROTOCOL.md 6.3, 6.6, 7.3, 11). An attacker on the
# server's network segment, off the client–server path, forges signaling in the server's name.
# The gateway's anti-spoofing cannot tell it from the server (same segment): the engine must.
#   a. ACCEPTs for the client's pending SETUP with guessed nonces: nothing is admitted.
#   b. TEARDOWNs for the client's admitted (signed) session: from the attacker's own address, in
#      the server's name, and in the client's name with a sequence already seen: it stays.
#   c. A SETUP in the server's name: challenged at the server, no state at all.
# Fails on the binaries from before the trust work (MIDCOM_BIN=/work/baseline-bin, run with the
# ruleset of their release: revision 2), where the forged TEARDOWN ends the session.
#
#   client 10.202.1.2 ── gw (midcomd gw1) 10.202.1.1 | 10.202.2.1 ── wan bridge ──┬── server   10.202.2.2
#   (2001:db8:202:1::2)                                                          └── attacker 10.202.2.3
#                                                                  (2001:db8:202:2::2, ::3)
#
# TRUST_STEPS=abc (default) runs only the steps named (to see each one fail on old binaries).
source "$(dirname "$0")/lib.sh"
lab_init tforge
STEPS=${TRUST_STEPS:-abc}
want() { [[ $STEPS == *"$1"* ]]; }
CRAFT="$PY $ROOT/Tests/integration/craft.py"
export CSP_STATE_DIR="$LAB_DIR/csp-state"

C4=10.202.1.2 C6=2001:db8:202:1::2
S4=10.202.2.2 S6=2001:db8:202:2::2
A4=10.202.2.3 A6=2001:db8:202:2::3

step "lab: client — gw — server, the attacker on the server's segment (IPv4 + IPv6)"
lab_ns client; lab_ns gw; lab_ns server; lab_ns attacker
lab_link client gw; lab_link gw server; lab_link gw attacker
in_ns gw ip link add wan type bridge
in_ns gw ip link set to-server master wan
in_ns gw ip link set to-attacker master wan
in_ns gw ip link set wan up
lab_addr gw to-client 10.202.1.1/24; lab_addr gw to-client 2001:db8:202:1::1/64
lab_addr gw wan 10.202.2.1/24; lab_addr gw wan 2001:db8:202:2::1/64
lab_addr client to-gw $C4/24; lab_addr client to-gw $C6/64
lab_addr server to-gw $S4/24; lab_addr server to-gw $S6/64
lab_addr attacker to-gw $A4/24; lab_addr attacker to-gw $A6/64
in_ns client ip route add default via 10.202.1.1
in_ns client ip -6 route add default via 2001:db8:202:1::1
for h in server attacker; do
  in_ns $h ip route add default via 10.202.2.1
  in_ns $h ip -6 route add default via 2001:db8:202:2::1
done
lab_forwarding gw
for c in all default wan to-client; do in_ns gw sysctl -qw "net.ipv4.conf.$c.rp_filter=0"; done
WAN_MAC=$(in_ns gw cat /sys/class/net/wan/address)

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
lab_serve server "$LAB_DIR/echo4.log" $FLOWS udp-echo 5000 --duration 60
lab_serve server "$LAB_DIR/echo6.log" $FLOWS udp-echo 5000 --bind :: --duration 60

counter() { status_counter gw "$1"; }
admits() { nft_element_count gw admit4 admit6 admit4_anyport admit6_anyport; }
# wait_exit PID SECONDS: wait (bounded) for a background process; leaves its status in EXIT_RC.
wait_exit() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  set +e; wait "$1"; EXIT_RC=$?; set -e
}

if want a; then
  step "a. the server's agent does not answer (a capture listens on its CSP port); the client signals UDP to server:5000"
  lab_serve server "$LAB_DIR/srv7227.log" $CRAFT recv 7227 --duration 20
  cap4=$LAB_LAST_PID
  lab_serve server "$LAB_DIR/srv72276.log" $CRAFT recv 7227 --bind :: --duration 20
  cap6=$LAB_LAST_PID
  lab_bg client "$LAB_DIR/setup-a4.log" "$BIN/csp" setup udp $S4:5000 --sport 4000 --lifetime 30 --attempts 3 --responder csp
  csp4=$LAB_LAST_PID
  lab_bg client "$LAB_DIR/setup-a6.log" "$BIN/csp" setup udp "[$S6]:5000" --sport 4000 --lifetime 30 --attempts 3 --responder csp
  csp6=$LAB_LAST_PID
  wait_for_match "$LAB_DIR/srv7227.log" "from 10\.202\.1\.2:[0-9]+ type 1 session" 3
  wait_for_match "$LAB_DIR/srv72276.log" "from 2001:db8:202:1::2:[0-9]+ type 1 session" 3
  for fam in 4 6; do
    if [ $fam = 4 ]; then cap=srv7227 c=$C4 s=$S4; else cap=srv72276 c=$C6 s=$S6; fi
    line=$(grep -m1 "type 1 session" "$LAB_DIR/$cap.log")
    session=${line##* }
    port=$(sed -E 's/.* from .*:([0-9]+) type 1 .*/\1/' <<<"$line")
    step "a/IPv$fam: SETUP $session from [$c]:$port pending at gw; the attacker forges 5 ACCEPTs from [$s]:7227, random nonces"
    expect_eq "$(state_of "$session")" pending "a/IPv$fam: the client's session before the forgeries"
    mismatched=$(counter mismatched_replies)
    in_ns attacker $CRAFT spoof "$s" 7227 "$c" "$port" --iface to-gw --mac "$WAN_MAC" --type 2 --session "$session" \
      --lifetime 600 --count 5 | indent
    sleep 0.5
    expect_eq "$(state_of "$session")" pending "a/IPv$fam: the client's session after the forged ACCEPTs"
    expect_eq "$(admits)" 0 "a/IPv$fam: admit elements after the forged ACCEPTs"
    expect_eq "$(( $(counter mismatched_replies) - mismatched ))" 5 "a/IPv$fam: forged ACCEPTs judged as matching no request (mismatched_replies)"
  done
  step "a: the client never took a forgery for the answer: its csp gives up (exit 3, no answer)"
  for fam in 4 6; do
    pid=csp$fam; wait_exit "${!pid}" 12
    indent <"$LAB_DIR/setup-a$fam.log"
    expect_eq "$EXIT_RC" 3 "a/IPv$fam: the client's csp setup exit status"
    expect_no_match "$(cat "$LAB_DIR/setup-a$fam.log")" "ACCEPT from" "a/IPv$fam: the client's csp output"
  done
  expect_eq "$(admits)" 0 "a: admit elements in the end"
  out=$(in_ns client $FLOWS udp-ping $S4 5000 --sport 4000 --count 3 --interval 0.02 --wait 0.4); indent <<<"$out"
  expect_match "$out" "sent 3 replies 0 " "a: client:4000 → server:5000 (never admitted)"
  kill "$cap4" "$cap6" 2>/dev/null || true
  wait_exit "$cap4" 3; wait_exit "$cap6" 3
fi

if want b; then
  step "b. the server's agent runs (csp listen); the client signals UDP client:4001 → server:5000, signed where csp can"
  lab_bg server "$LAB_DIR/listen4.log" "$BIN/csp" listen --duration 40
  lab_bg server "$LAB_DIR/listen6.log" "$BIN/csp" listen --address :: --duration 40
  sleep 0.3
  key=()
  if "$BIN/csp" --help 2>&1 | grep -q keygen; then
    in_ns client "$BIN/csp" keygen --key "$LAB_DIR/client.key" | indent
    key=(--key "$LAB_DIR/client.key")
  else
    step "b: this csp cannot sign (old binaries): the session is unsigned"
  fi
  for fam in 4 6; do
    if [ $fam = 4 ]; then c=$C4 s=$S4 dest=$S4:5000 elem="10\.202\.1\.2 \. udp \. 4001 \. 10\.202\.2\.2 \. 5000 "
    else c=$C6 s=$S6 dest="[$S6]:5000" elem="2001:db8:202:1::2 \. udp \. 4001 \. 2001:db8:202:2::2 \. 5000 "; fi
    step "b/IPv$fam: csp setup udp $dest --sport 4001 ${key[*]}"
    csp_run client setup udp "$dest" --sport 4001 --lifetime 60 "${key[@]}"
    expect_eq "$CSP_RC" 0 "b/IPv$fam: csp setup exit status"
    session=$(session_of "$CSP_OUT")
    expect_eq "$(state_of "$session")" admitted "b/IPv$fam: the client's session"
    set_name=admit$fam
    expect_match "$(nft_set gw $set_name)" "$elem" "b/IPv$fam: the session's $set_name element"
    # still_there LABEL: the session, its element and its traffic survived a forgery.
    still_there() {
      expect_eq "$(state_of "$session")" admitted "$1: session $session (gone = the forgery tore it down)"
      expect_match "$(nft_set gw $set_name)" "$elem" "$1: the $set_name element"
      local out; out=$(in_ns client $FLOWS udp-ping "$s" 5000 --sport 4001 --count 3 --interval 0.02 --wait 0.4)
      indent <<<"$out"
      expect_match "$out" "sent 3 replies 3 " "$1: client:4001 → server:5000"
    }
    still_there "b/IPv$fam before the forgeries"
    torn=$(counter torn_down); authfail=$(counter authentication_failures); drops=$(antispoof_drops)
    step "b/IPv$fam: TEARDOWN $session from the attacker's own address, to the client's CSP port"
    in_ns attacker $CRAFT send "$c" 7227 --type 13 --session "$session" --seq 2 | indent
    sleep 0.4
    still_there "b/IPv$fam after the attacker's own TEARDOWN"
    step "b/IPv$fam: TEARDOWN $session in the server's name ([$s]:7227 → [$c]:7227), sequence 1 (already seen)"
    in_ns attacker $CRAFT spoof "$s" 7227 "$c" 7227 --iface to-gw --mac "$WAN_MAC" --type 13 --session "$session" --seq 1 | indent
    sleep 0.4
    still_there "b/IPv$fam after the TEARDOWN in the server's name"
    step "b/IPv$fam: TEARDOWN $session in the client's name ([$c]:40001 → [$s]:7227) from outside, sequence 1 (replay)"
    in_ns attacker $CRAFT spoof "$c" 40001 "$s" 7227 --iface to-gw --mac "$WAN_MAC" --type 13 --session "$session" --seq 1 | indent
    sleep 0.4
    still_there "b/IPv$fam after the TEARDOWN in the client's name"
    expect_eq "$(( $(counter torn_down) - torn ))" 0 "b/IPv$fam: sessions torn down"
    failed=$(( $(counter authentication_failures) - authfail ))
    [ "$failed" -ge 1 ] || fail "b/IPv$fam: the unsigned TEARDOWNs of a signed session should count as authentication failures (counted $failed)"
    dropped=$(( $(antispoof_drops) - drops ))
    [ "$dropped" -ge 1 ] || fail "b/IPv$fam: the anti-spoofing chain should have dropped the TEARDOWN in the client's name"
    step "b/IPv$fam: authentication_failures +$failed, anti-spoofing drops +$dropped, torn_down +0"
  done
fi

if want c; then
  step "c. the attacker forges a SETUP in the server's name (server:6000 → client:5001), sent to the client's agent"
  lab_bg client "$LAB_DIR/clisten4.log" "$BIN/csp" listen --duration 20
  lab_bg client "$LAB_DIR/clisten6.log" "$BIN/csp" listen --address :: --duration 20
  for a in "" ::; do
    lab_serve server "$LAB_DIR/srv40000${a:+6}.log" $CRAFT recv 40000 --bind "${a:-0.0.0.0}" --duration 15
    lab_serve attacker "$LAB_DIR/att40000${a:+6}.log" $CRAFT recv 40000 --bind "${a:-0.0.0.0}" --duration 15
  done
  challenged=$(counter challenges_sent); passed=$(counter challenges_passed); elements=$(admits)
  for fam in 4 6; do
    if [ $fam = 4 ]; then c=$C4 s=$S4; else c=$C6 s=$S6; fi
    session=5b0f0c000000000$fam
    in_ns attacker $CRAFT spoof "$s" 40000 "$c" 7227 --iface to-gw --mac "$WAN_MAC" --session "$session" \
      --flow "udp,$s,6000,$c,5001" --lifetime 600 | indent
  done
  sleep 1
  for fam in 4 6; do
    expect_eq "$(state_of 5b0f0c000000000$fam)" none "c/IPv$fam: state for the SETUP forged in the server's name"
  done
  expect_eq "$(admits)" "$elements" "c: admit elements (those of step b only)"
  expect_no_match "$(nft_set gw admit4; nft_set gw admit6)" "\. 6000 \. " "c: an admit element for the forged flow server:6000 → client:5001"
  expect_no_match "$(cat "$LAB_DIR/clisten4.log" "$LAB_DIR/clisten6.log")" "5b0f0c00000000" "c: the client's agent heard of the forged SETUPs"
  wait_for_match "$LAB_DIR/srv40000.log" "type 6 session 5b0f0c0000000004" 2
  wait_for_match "$LAB_DIR/srv400006.log" "type 6 session 5b0f0c0000000006" 2
  grep -h "^recv" "$LAB_DIR/srv40000.log" "$LAB_DIR/srv400006.log" | sed 's/^/server: /' | indent
  expect_no_match "$(cat "$LAB_DIR/att40000.log" "$LAB_DIR/att400006.log")" "^recv" "c: the CHALLENGE (or anything) reached the attacker"
  expect_eq "$(( $(counter challenges_sent) - challenged ))" 2 "c: CHALLENGEs sent to the server"
  expect_eq "$(( $(counter challenges_passed) - passed ))" 0 "c: CHALLENGEs passed"
fi

step "gw counters: $(midctl gw status --json | $PY -c '
import json, sys
c = json.load(sys.stdin)["counters"]
print(" ".join(f"{k}={c.get(k, 0)}" for k in ("mismatched_replies", "authentication_failures", "torn_down", "challenges_sent", "challenges_passed", "admitted")))')"
echo "trust-forgery: all checks passed"
