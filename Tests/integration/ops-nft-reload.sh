#!/usr/bin/env bash
# Operations, surviving an nftables reload (issue 13). An operator loads Debian's stock
# /etc/nftables.conf (it starts with `flush ruleset`) without the Midcom include: midcomd notices
# within its 200 ms watch, logs it, and `midctl status` shows the table missing. When the ruleset
# is loaded again with the include, midcomd puts back its queue rules and every live session's
# elements from its own table within a second (measured here), so admitted flows pass again and
# new flows are judged again; the same after `nft -f midcom.nft` alone (the include deletes the
# table first) and after `nft flush chain inet midcom enqueue`.
#
#   client 10.200.1.2 ── gw (midcomd gw1) ── server 10.200.2.2
source "$(dirname "$0")/lib.sh"
lab_init nftreload

step "lab: client — gw — server; one admitted UDP flow"
lab_basic
conf=$(lab_signaling_conf gw gw1)
lab_midcomd gw "$conf"
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 60
lab_serve server "$LAB_DIR/echo5000.log" $FLOWS udp-echo 5000 --duration 60
lab_serve server "$LAB_DIR/echo6000.log" $FLOWS udp-echo 6000 --duration 60
csp_run client setup udp 10.200.2.2:5000 --sport 4000 --lifetime 120 --responder csp
expect_eq "$CSP_RC" 0 "csp setup"; s=$(session_of "$CSP_OUT")
ping() { in_ns client $FLOWS udp-ping 10.200.2.2 "$1" --sport "$2" --count 3 --interval 0.02 --wait 0.3; }
out=$(ping 5000 4000); indent <<<"$out"; expect_match "$out" "sent 3 replies 3 " "admitted flow"
element="10\.200\.1\.2 \. udp \. 4000 \. 10\.200\.2\.2 \. 5000 "

# Debian's stock nftables.conf (package nftables), as an operator would load it.
cat >"$LAB_DIR/stock.conf" <<'NFT'
flush ruleset

table inet filter {
	chain input {
		type filter hook input priority filter;
	}
	chain forward {
		type filter hook forward priority filter;
	}
	chain output {
		type filter hook output priority filter;
	}
}
NFT
{ cat "$LAB_DIR/stock.conf"; echo "include \"$ROOT/nft-rules/midcom.nft\""; } >"$LAB_DIR/with-midcom.conf"

# ms_until REGEX CMD...: milliseconds until CMD's output matches (bounded: fails after 5 s).
ms_until() {
  local regex=$1 start i; shift
  start=$(date +%s%N)
  for ((i = 0; i < 500; i++)); do
    "$@" 2>/dev/null | grep -Eq -- "$regex" && { echo $(( ($(date +%s%N) - start) / 1000000 )); return 0; }
    sleep 0.01
  done
  fail "/$regex/ did not appear within 5 s in: $*"
}

step "the stock nftables.conf (flush ruleset, no include): midcomd notices and says so"
in_ns gw nft -f "$LAB_DIR/stock.conf"
took=$(ms_until "ruleset: +MISSING" midctl gw status)
step "noticed in $took ms"
[ "$took" -le 1000 ] || fail "noticing the missing table took $took ms"
wait_for_match "$LAB_DIR/gw-midcomd.log" "table inet midcom was removed .* midcomd is bypassed" 2
expect_eq "$(status_counter gw ruleset_lost)" 1 "ruleset_lost"
expect_match "$(midctl gw sessions)" "$s .* admitted" "the session is kept"

step "the ruleset again, with the include: queue rules and the session's element are back within a second"
in_ns gw nft -f "$LAB_DIR/with-midcom.conf"
took=$(ms_until "$element" nft_set gw admit4)
step "restored in $took ms"
[ "$took" -le 1000 ] || fail "restoring took $took ms"
expect_match "$(in_ns gw nft list chain inet midcom enqueue)" "$(queue_rule 0)" "queue rule back"
expect_match "$(midctl gw status)" "ruleset: +intact" "status intact"
expect_eq "$(status_counter gw ruleset_restored)" 1 "ruleset_restored"
out=$(ping 5000 4000); indent <<<"$out"; expect_match "$out" "sent 3 replies 3 " "the admitted flow passes"
out=$(ping 6000 4001); indent <<<"$out"; expect_match "$out" "sent 3 replies 0 " "an unsignaled flow is judged (dropped) again"
csp_run client setup udp 10.200.2.2:6000 --sport 4002 --lifetime 60 --responder csp
expect_eq "$CSP_RC" 0 "a new SETUP after the reload"

step "nft -f midcom.nft alone (the include deletes the table first): restored within a second"
in_ns gw nft -f "$ROOT/nft-rules/midcom.nft"
took=$(ms_until "$element" nft_set gw admit4)
step "restored in $took ms"
[ "$took" -le 1000 ] || fail "restoring took $took ms"
out=$(ping 5000 4000); indent <<<"$out"; expect_match "$out" "sent 3 replies 3 " "the admitted flow passes"
expect_match "$(nft_set gw admit4)" "udp \. 4002 \. 10\.200\.2\.2 \. 6000 " "the second session is back too"

step "a ruleset of another revision is named, not programmed; the right one is restored again"
sed 's/comment "midcom ruleset revision [0-9]*"/comment "midcom ruleset revision 4"/' "$ROOT/nft-rules/midcom.nft" >"$LAB_DIR/old.nft"
in_ns gw nft -f "$LAB_DIR/old.nft"
took=$(ms_until "ruleset: +WRONG REVISION: table loaded from ruleset revision 4" midctl gw status)
step "noticed in $took ms"
expect_no_match "$(in_ns gw nft list chain inet midcom enqueue)" "$(queue_rule '[0-9]+')" "no queue rule in a table of another revision"
in_ns gw nft -f "$ROOT/nft-rules/midcom.nft"
took=$(ms_until "$element" nft_set gw admit4)
[ "$took" -le 1000 ] || fail "restoring took $took ms"
expect_match "$(midctl gw status)" "ruleset: +intact" "status intact again"

step "nft flush chain inet midcom enqueue: the queue rule is put back"
in_ns gw nft flush chain inet midcom enqueue
took=$(ms_until "$(queue_rule 0)" in_ns gw nft list chain inet midcom enqueue)
step "queue rule back in $took ms"
[ "$took" -le 1000 ] || fail "putting back the queue rule took $took ms"
out=$(ping 6000 4003); indent <<<"$out"; expect_match "$out" "sent 3 replies 0 " "unsignaled flows are judged again"
kill -0 "$MIDCOMD_PID" || fail "midcomd died"
echo "ops-nft-reload: all checks passed"
