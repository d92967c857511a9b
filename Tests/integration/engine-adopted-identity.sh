#!/usr/bin/env bash
# Engine regression: sessions adopted after a restart keep their identity. A flow admitted under
# a session ID and an application name is still that session after midcomd restarts: midctl lists
# the original ID and application, the owner can tear it down by that ID (the element goes), and a
# re-SETUP under the same ID (what a host does when it sees the new epoch) updates that one session
# instead of creating a second one beside an adopted twin.
#
#   client 10.200.1.2 — gw (midcomd gw1) — server 10.200.2.2 (csp listen)
source "$(dirname "$0")/lib.sh"
lab_init eadopt

step "lab: client — gw — server"
lab_basic
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"

[policy]
default = "admit"
unsignaled = "drop"
CONF
)
lab_midcomd gw "$conf"
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 60
sleep 0.3

# rows FLOW-REGEX: the sessions midctl lists, one "id proto source:port destination:port state
# application" line each (from `midctl sessions --json`), filtered by FLOW-REGEX.
rows() {
  midctl gw sessions --json | $PY -c '
import json, sys
for r in json.load(sys.stdin):
    print("%s %s %s:%d %s:%d %s %s" % (r["id"], r["proto"], r["source"], r["sourcePort"], r["destination"],
                                       r["destinationPort"], r["state"], r.get("application") or "-"))' | grep -E -- "$1" || true
}

restart() {
  kill -TERM "$MIDCOMD_PID"
  for _ in $(seq 1 50); do kill -0 "$MIDCOMD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$MIDCOMD_PID" 2>/dev/null && fail "midcomd did not stop within 5 s of SIGTERM"
  lab_midcomd gw "$conf"
}

# wait_adopted FLOW-REGEX: wait (at most 10 s) until midctl lists a session for the flow.
wait_adopted() {
  local r=""
  for _ in $(seq 1 100); do
    r=$(rows "$1"); [ -n "$r" ] && break; sleep 0.1
  done
  [ -n "$r" ] || fail "no session for /$1/ within 10 s of the restart: $(midctl gw sessions)"
}

problems=()
ID1=ad0b7ed1d0000001
ID2=ad0b7ed1d0000002
flow1='udp 10\.200\.1\.2:4000 10\.200\.2\.2:5000 '
flow2='udp 10\.200\.1\.2:4001 10\.200\.2\.2:5001 '

step "csp setup udp 10.200.2.2:5000 --sport 4000 --session $ID1 --app voip"
csp_run client setup udp 10.200.2.2:5000 --sport 4000 --session "$ID1" --app voip --lifetime 60
expect_eq "$CSP_RC" 0 "setup exit status"
expect_eq "$(rows "$flow1")" "$ID1 udp 10.200.1.2:4000 10.200.2.2:5000 admitted voip" "session before the restart"
expect_match "$(nft_set gw admit4)" "10\.200\.1\.2 \. udp \. 4000 \. 10\.200\.2\.2 \. 5000 " "element before the restart"

step "restart midcomd; wait until the flow is adopted"
restart
wait_adopted "$flow1"
r=$(rows "$flow1"); indent <<<"$r"
[ "$r" == "$ID1 udp 10.200.1.2:4000 10.200.2.2:5000 admitted voip" ] \
  || problems+=("after the restart midctl lists [$r] for the flow, expected [$ID1 ... admitted voip]")

step "csp teardown $ID1 10.200.2.2 (the owner, by the original ID): element and session go"
csp_run client teardown "$ID1" 10.200.2.2
expect_eq "$CSP_RC" 0 "teardown exit status"
sleep 0.3
grep -Eq "10\.200\.1\.2 \. udp \. 4000 \. 10\.200\.2\.2 \. 5000 " <<<"$(nft_set gw admit4)" \
  && problems+=("TEARDOWN $ID1 left the adopted element 10.200.1.2:4000 -> 10.200.2.2:5000 in admit4")
r=$(rows "$flow1")
[ -z "$r" ] || problems+=("after TEARDOWN $ID1 midctl still lists [$r]")

step "csp setup udp 10.200.2.2:5001 --sport 4001 --session $ID2 --app voip; restart; the same SETUP again"
csp_run client setup udp 10.200.2.2:5001 --sport 4001 --session "$ID2" --app voip --lifetime 60
expect_eq "$CSP_RC" 0 "second setup exit status"
restart
wait_adopted "$flow2"
csp_run client setup udp 10.200.2.2:5001 --sport 4001 --session "$ID2" --app voip --lifetime 60
expect_eq "$CSP_RC" 0 "re-setup exit status after the restart"
sleep 0.3
r=$(rows "$flow2"); indent <<<"$r"
[ "$r" == "$ID2 udp 10.200.1.2:4001 10.200.2.2:5001 admitted voip" ] \
  || problems+=("after the re-SETUP midctl lists [$(tr '\n' '|' <<<"$r")] for the flow, expected exactly one session $ID2 admitted voip")
n=$(nft_set gw admit4 | grep -cE "10\.200\.1\.2 \. udp \. 4001 \. 10\.200\.2\.2 \. 5001 " || true)
[ "$n" == 1 ] || problems+=("admit4 holds $n elements for 10.200.1.2:4001 -> 10.200.2.2:5001, expected 1")

[ ${#problems[@]} -eq 0 ] || fail "adopted sessions lost their identity: $(printf '%s; ' "${problems[@]}")"
echo "engine-adopted-identity: all checks passed"
