#!/usr/bin/env bash
# Defaults a new operator can live with (issue 12): the home/office gateway profile, exactly as
# shipped (docs/examples/home-gateway.conf and docs/examples/home-gateway.nft, only the interface
# names set). Unmodified LAN applications work without signaling (unsignaled = admit-inside,
# translated by the profile's masquerade); nothing comes in unasked; natpmpc opens a port; a CSP
# host reaches an ordinary server through midcomd's answer for it (PROTOCOL.md 6.9); nobody
# outside reaches NAT-PMP.
#
#   inside 192.168.1.2 ── nat (midcomd home-gw, external 203.0.113.1) ── outside 203.0.113.2
source "$(dirname "$0")/lib.sh"
command -v natpmpc >/dev/null || { echo "FAIL: natpmpc is missing (apt-get install natpmpc; scripts/install-deps.sh does)" >&2; exit 1; }
lab_init home

step "lab: inside — nat — outside; the shipped home profile on nat"
lab_nat
conf=$(lab_conf home <"$ROOT/docs/examples/home-gateway.conf")
in_ns nat "$BIN/midcomd" --check --config "$conf" | indent
in_ns nat nft -f "$ROOT/nft-rules/midcom.nft"
sed -e 's/^define LAN = .*/define LAN = "to-inside"/' -e 's/^define WAN = .*/define WAN = "to-outside"/' \
  "$ROOT/docs/examples/home-gateway.nft" >"$LAB_DIR/home.nft"
in_ns nat nft -f "$LAB_DIR/home.nft"
lab_midcomd nat "$conf"
lab_serve outside "$LAB_DIR/out-tcp.log" $FLOWS tcp-serve 8443 --duration 60
lab_serve outside "$LAB_DIR/out-udp.log" $FLOWS udp-echo 5353 --duration 60
lab_serve inside "$LAB_DIR/in-udp.log" $FLOWS udp-echo 5004 --duration 60

step "an unmodified LAN application reaches the internet without signaling"
out=$(in_ns inside $FLOWS tcp-send 203.0.113.2 8443 --bytes 40000) || fail "LAN → internet TCP: $out"
indent <<<"$out"; expect_match "$out" "sent 40000 echoed 40000" "TCP out"
wait_for_match "$LAB_DIR/out-tcp.log" "from 203\.0\.113\.1:" 2
out=$(in_ns inside $FLOWS udp-ping 203.0.113.2 5353 --sport 4444 --count 5 --wait 0.4); indent <<<"$out"
expect_match "$out" "sent 5 replies 5 " "UDP out"
expect_match "$(midctl nat sessions)" "192\.168\.1\.2:4444 +203\.0\.113\.2:5353 +legacy " "listed as a legacy admission"
[ "$(status_counter nat unsignaled_admitted)" -ge 2 ] || fail "unsignaled_admitted: $(status_counter nat unsignaled_admitted)"

step "nothing comes in unasked"
out=$(in_ns outside $FLOWS udp-ping 203.0.113.1 5004 --sport 6000 --count 5 --wait 0.4); indent <<<"$out"
expect_match "$out" "sent 5 replies 0 " "outside → 203.0.113.1:5004 before a mapping"

step "natpmpc opens UDP 5004; the outside peer reaches the LAN server"
set +e; out=$(in_ns inside timeout 10 natpmpc -g 192.168.1.1 -a 5004 5004 udp 60 2>&1); set -e; indent <<<"$out"
expect_match "$out" "Mapped public port 5004 protocol UDP to local port 5004" "mapped"
out=$(in_ns outside $FLOWS udp-ping 203.0.113.1 5004 --sport 6001 --count 5 --wait 0.4); indent <<<"$out"
expect_match "$out" "sent 5 replies 5 from 203\.0\.113\.1:5004" "through the mapping"

step "NAT-PMP from the WAN side gets nothing"
set +e; out=$(in_ns outside timeout 4 natpmpc -g 203.0.113.1 2>&1); set -e
expect_no_match "$out" "Public IP address" "outside NAT-PMP client"

step "a CSP host reaches an ordinary server: home-gw answers for it and maps its port"
csp_run inside setup tcp 203.0.113.2:8443 --sport 40001 --lifetime 60
expect_eq "$CSP_RC" 0 "csp exit status"
expect_match "$CSP_OUT" "middlebox home-gw id [0-9a-f]{16} epoch [0-9]+: answered-for-responder, 60s" "home-gw's record"
expect_match "$CSP_OUT" "^  mapped to 203\.0\.113\.1:40001$" "its mapping"
out=$(in_ns inside $FLOWS tcp-send 203.0.113.2 8443 --sport 40001 --bytes 20000) || fail "signaled TCP: $out"
indent <<<"$out"; expect_match "$out" "sent 20000 echoed 20000" "signaled TCP"
wait_for_match "$LAB_DIR/out-tcp.log" "from 203\.0\.113\.1:40001" 2
echo "legacy-home-profile: all checks passed"
