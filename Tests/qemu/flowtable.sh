#!/usr/bin/env bash
# Runs inside the QEMU guest (guest.sh): `flowtable-devices` on a stock kernel, which has the
# nftables flowtable this project's development VM lacks (CONFIG_NF_FLOW_TABLE). midcomd must
#   1 create flowtable fastpath on the configured devices and link it (chain established);
#   2 offload an admitted flow: its conntrack entry says [OFFLOAD] and its packets leave every
#     forward hook (an operator's counting chain stays flat while the flow's traffic goes on);
#   3 stop a revoked flow although it is offloaded (midctl delete: midcomd deletes the conntrack
#     entry, the flowtable lets the flow go, its next packets meet the queue and the default
#     policy's drop);
#   4 stop an offloaded flow a victim pushes back (a signed DENY: the filter sits in chain
#     pushback, which offloaded packets never reach, so midcomd empties the flowtable);
#   5 leave a flow that is not admitted (the operator's default policy lets it) on the slow path;
#   6 put the flowtable and its links back after an operator's `nft -f midcom.nft` (which deletes
#     the table with the flowtable in it), and offload the flow again.
# Offloaded or not, what each step checks is what arrived: echoes counted by the client.
source "$(dirname "$0")/../integration/lib.sh"
lab_init flowtable

step "kernel $(uname -r): client — gateway — server, midcomd with flowtable-devices = [to-client, to-server]"
lab_basic
cat >"$LAB_DIR/gw.conf" <<CONF
[daemon]
name = "gw"
flowtable-devices = ["to-client", "to-server"]

[policy]
default = "admit"
unsignaled = "default-policy"
CONF
# Test-owned counters: every forwarded packet that still takes the slow path, per flow.
in_ns gw nft -f - <<'NFT'
table inet lab {
	chain watch {
		type filter hook forward priority 10; policy accept;
		udp dport 5000 counter
		udp sport 5000 counter
		udp dport 5001 counter
		udp sport 5001 counter
		udp dport 5002 counter
		udp sport 5002 counter
	}
}
NFT
# slow_path PORT: packets of both directions of the flow to PORT that met a forward hook.
slow_path() {
  in_ns gw nft list chain inet lab watch |
    awk -v p="$1" '$0 ~ "(dport|sport) " p " counter" { for (i = 1; i <= NF; i++) if ($i == "packets") n += $(i + 1) } END { print n + 0 }'
}
lab_midcomd gw "$LAB_DIR/gw.conf"
flowtable=$(in_ns gw nft list flowtable inet midcom fastpath)
indent <<<"$flowtable"
expect_match "$flowtable" 'devices = \{ (to-client, to-server|to-server, to-client) \}' "flowtable on both devices"
expect_match "$flowtable" 'hook ingress priority (filter|0)' "flowtable hook"
expect_match "$(in_ns gw nft list chain inet midcom established)" "goto offload_admitted" "chain established links the candidates"
expect_match "$(in_ns gw nft list chain inet midcom to_flowtable)" "flow add @fastpath" "chain to_flowtable adds to the flowtable"
expect_match "$(midctl gw status)" "flowtable: +fastpath on to-client, to-server" "midctl status"
lab_serve server "$LAB_DIR/echo5000.log" $FLOWS udp-echo 5000 --duration 300
lab_serve server "$LAB_DIR/echo5001.log" $FLOWS udp-echo 5001 --duration 300
lab_serve server "$LAB_DIR/echo5002.log" $FLOWS udp-echo 5002 --duration 300
# ping SPORT PORT COUNT: datagrams from the client's SPORT to the server's PORT; prints the echoes.
ping() { in_ns client $FLOWS udp-ping 10.200.2.2 "$2" --sport "$1" --count "$3" --interval 0.02 --wait "$(scaled 1)" | sed -n 's/.*replies \([0-9]*\).*/\1/p'; }
# offloaded SPORT: the conntrack entry of the client's flow from SPORT says [OFFLOAD].
offloaded() { in_ns gw conntrack -L -p udp --orig-port-src "$1" 2>/dev/null | grep -c OFFLOAD || true; }

# flowtable_linked: both of midcomd's rules are in place (waits at most 5 s, scaled).
flowtable_linked() {
  local i
  for i in $(seq 1 $((50 * LAB_TIME_SCALE))); do
    if in_ns gw nft list chain inet midcom to_flowtable 2>/dev/null | grep -q "flow add @fastpath" &&
      in_ns gw nft list chain inet midcom established 2>/dev/null | grep -q "goto offload_admitted"; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

step "an admitted flow (csp setup, udp 4000 -> 5000) is offloaded after its first exchange"
csp_run client setup udp 10.200.2.2:5000 --sport 4000 --lifetime 300
expect_eq "$CSP_RC" 0 "csp setup"
session=$(session_of "$CSP_OUT")
expect_eq "$(ping 4000 5000 5)" 5 "echoes while the flow is set up"
expect_eq "$(offloaded 4000)" 1 "conntrack entry of the admitted flow offloaded"
before=$(slow_path 5000)
expect_eq "$(ping 4000 5000 100)" 100 "echoes of the offloaded flow"
after=$(slow_path 5000)
echo "      packets of the flow on the slow path: $before before, $after after 200 more"
[ $((after - before)) -le 4 ] || fail "the offloaded flow still took the slow path: $before -> $after packets"

step "a flow midcomd did not admit (the operator's default policy lets it) stays on the slow path"
# midcomd hands unsignaled flows to the default policy (unsignaled = "default-policy"), which
# drops everything but this operator's allowance.
in_ns gw nft insert rule inet midcom default_policy udp dport 5002 accept
expect_eq "$(ping 4002 5002 20)" 20 "echoes of the legacy flow"
before=$(slow_path 5002)
expect_eq "$(ping 4002 5002 50)" 50 "more echoes"
after=$(slow_path 5002)
expect_eq "$(offloaded 4002)" 0 "the legacy flow is not offloaded"
[ $((after - before)) -ge 100 ] || fail "the legacy flow left the slow path: $before -> $after packets"

step "an operator reloads the ruleset (nft -f midcom.nft deletes the table, the flowtable with it): midcomd puts both back"
in_ns gw nft -f "$ROOT/nft-rules/midcom.nft"
flowtable_linked || fail "the flowtable was not linked again within $((5 * LAB_TIME_SCALE)) s of the reload"
expect_match "$(in_ns gw nft list flowtable inet midcom fastpath)" 'devices = \{ (to-client, to-server|to-server, to-client) \}' "the flowtable is back"
expect_eq "$(status_counter gw ruleset_restored)" 1 "ruleset_restored"
expect_eq "$(ping 4000 5000 5)" 5 "echoes of the admitted flow after the reload"
expect_eq "$(offloaded 4000)" 1 "offloaded again"
before=$(slow_path 5000)
expect_eq "$(ping 4000 5000 50)" 50 "more echoes"
after=$(slow_path 5000)
[ $((after - before)) -le 4 ] || fail "after the reload the flow still took the slow path: $before -> $after packets"

step "midctl delete: the offloaded flow stops (conntrack entry deleted, flowtable lets go)"
expect_match "$(midctl gw delete "$session")" "deleted $session" "midctl delete"
# midcomd deletes the entry at once; the flowtable notices a dead entry in its next sweep (~1 s).
sleep "$(scaled 2)"
expect_eq "$(offloaded 4000)" 0 "no offloaded entry left for the flow"
expect_eq "$(ping 4000 5000 20)" 0 "echoes after the revocation"

step "a victim's DENY stops a flow that is offloaded already"
"$BIN/csp" keygen --key "$LAB_DIR/server.key" >/dev/null
export CSP_STATE_DIR="$LAB_DIR/csp-state"
csp_run server setup udp --incoming --peer any --local-port 5001 --via 10.200.2.1 --lifetime 300 --key "$LAB_DIR/server.key"
expect_eq "$CSP_RC" 0 "the server opens udp 5001 (pinhole)"
expect_eq "$(ping 4001 5001 5)" 5 "echoes through the pinhole"
expect_eq "$(offloaded 4001)" 1 "conntrack entry of the pinhole's flow offloaded"
expect_eq "$(ping 4001 5001 20)" 20 "echoes of the offloaded flow"
csp_run server deny 10.200.1.0/24 --proto udp --port 5001 --lifetime 60 --toward 10.200.1.2 --key "$LAB_DIR/server.key" --wait "$(scaled 1.5)"
expect_eq "$CSP_RC" 0 "csp deny"
expect_match "$CSP_OUT" "middlebox gw id [0-9a-f]{16}: denied, 60s" "the gateway's answer"
expect_eq "$(ping 4001 5001 20)" 0 "echoes after the DENY"
expect_match "$(in_ns gw nft list set inet midcom deny4)" "10.200.1.0/24 . udp . 10.200.2.2 . 5001 .*counter packets ([1-9][0-9]*) " "the filter dropped them"
expect_match "$(in_ns gw nft list flowtable inet midcom fastpath)" 'devices = \{ (to-client, to-server|to-server, to-client) \}' "the flowtable is back"
expect_eq "$(status_counter gw flowtable_emptied)" 1 "times midcomd emptied the flowtable"
expect_eq "$(status_counter gw flowtable_empty_failures)" 0 "failures to empty it"
echo "flowtable: all checks passed"
