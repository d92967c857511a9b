#!/usr/bin/env bash
# Operations, restart from the session snapshot (issue 14, figure 7): midcomd writes its sessions
# to <state-dir>/sessions.snapshot when it stops and adopts them from there at the next start, with
# their IDs and applications, checking each one's element in the kernel by key (no set dump). A
# session whose element was deleted while midcomd was down is not adopted; an element added while
# it was down is still adopted (the background sweep of the sets). A corrupt snapshot is refused
# with one log line and the kernel's sets are used instead. `midctl sessions` (a stream of rows
# since issue 14) keeps its table, --json and filters.
#
#   client 10.200.1.2 — gw (midcomd gw1) — server 10.200.2.2 (csp listen)
source "$(dirname "$0")/lib.sh"
lab_init restartsnap

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
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 90
sleep 0.3
snapshot="$LAB_DIR/gw-state/sessions.snapshot"

# rows [MIDCTL-ARGS...]: "id proto source:port destination:port state application" per session,
# from `midctl sessions --json`, sorted.
rows() {
  midctl gw sessions --json "$@" | $PY -c '
import json, sys
for r in json.load(sys.stdin):
    print("%s %s %s:%d %s:%d %s %s" % (r["id"], r["proto"], r["source"], r["sourcePort"], r["destination"],
                                       r["destinationPort"], r["state"], r.get("application") or "-"))' | sort
}

stop_midcomd() {
  kill -TERM "$MIDCOMD_PID"
  for _ in $(seq 1 50); do kill -0 "$MIDCOMD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$MIDCOMD_PID" 2>/dev/null && fail "midcomd did not stop within 5 s of SIGTERM"
  cp "$LAB_DIR/gw-midcomd.log" "$LAB_DIR/gw-midcomd.$1.log"
}

# wait_counter NAME VALUE: until `midctl status` shows the counter at VALUE (at most 10 s).
wait_counter() {
  for _ in $(seq 1 100); do [ "$(status_counter gw "$1")" == "$2" ] && return 0; sleep 0.1; done
  fail "counter $1 did not reach $2 within 10 s (it is $(status_counter gw "$1"))"
}

ID1=5e551011d0000001
ID2=5e551011d0000002
ID3=5e551011d0000003
STRANGER=5e551011d00000e9

step "three sessions: $ID1 (udp 5000), $ID2 (udp 5001), $ID3 (udp 5002, app voip)"
csp_run client setup udp 10.200.2.2:5000 --sport 4000 --session "$ID1" --lifetime 600
expect_eq "$CSP_RC" 0 "setup $ID1"
csp_run client setup udp 10.200.2.2:5001 --sport 4001 --session "$ID2" --lifetime 600
expect_eq "$CSP_RC" 0 "setup $ID2"
csp_run client setup udp 10.200.2.2:5002 --sport 4002 --session "$ID3" --app voip --lifetime 600
expect_eq "$CSP_RC" 0 "setup $ID3"
before=$(rows); indent <<<"$before"
expect_eq "$(wc -l <<<"$before")" 3 "sessions before the restart"

step "midctl sessions filters (the stream keeps the table, --json and every filter)"
table=$(midctl gw sessions); indent <<<"$table"
expect_match "$(head -1 <<<"$table")" "^ID +PROTO +SOURCE +DESTINATION +STATE +ACTION +AGE +LEFT +PACKETS +BYTES +APP +ORIGIN$" "table header"
expect_match "$table" "^$ID3 +udp +10\.200\.1\.2:4002 +10\.200\.2\.2:5002 +admitted +admit +[0-9]+s +9m[0-9]{2}s +[0-9]+ +[0-9]+B +voip +csp$" "table row"
expect_eq "$(rows --port 5002)" "$ID3 udp 10.200.1.2:4002 10.200.2.2:5002 admitted voip" "--port 5002"
expect_eq "$(rows --app voip | cut -d' ' -f1)" "$ID3" "--app voip"
expect_eq "$(rows --address 10.200.2.2 --state admitted | wc -l)" 3 "--address --state"
expect_eq "$(midctl gw sessions --proto tcp)" "ID  PROTO  SOURCE  DESTINATION  STATE  ACTION  AGE  LEFT  PACKETS  BYTES  APP  ORIGIN" "--proto tcp: the header alone"
expect_eq "$(midctl gw sessions --json --proto tcp | tr -d ' \n')" "[]" "--json with no session: an empty array"
set +e; out=$(midctl gw sessions --state nonsense 2>&1); rc=$?; set -e
expect_eq "$rc" 1 "a bad filter: midcomd's refusal"
expect_match "$out" "unknown state 'nonsense'" "the refusal names the filter"

step "stop midcomd: it writes the snapshot"
stop_midcomd first
[ -s "$snapshot" ] || fail "no snapshot at $snapshot after a clean stop"
expect_match "$(cat "$LAB_DIR/gw-midcomd.first.log")" "wrote 3 session\(s\) to .*sessions\.snapshot" "snapshot logged"

step "while midcomd is down: $ID2's element is deleted, a stranger ($STRANGER, udp 4009 → 5009) is added"
in_ns gw nft delete element inet midcom admit4 "{ 10.200.1.2 . udp . 4001 . 10.200.2.2 . 5001 }"
in_ns gw nft add element inet midcom admit4 \
  "{ 10.200.1.2 . udp . 4009 . 10.200.2.2 . 5009 timeout 300s comment \"csp $STRANGER o\" }"

step "start midcomd: $ID1 and $ID3 come back from the snapshot with their IDs, $ID2 does not"
lab_midcomd gw "$conf"
wait_counter adopted_from_snapshot 2
after=$(rows); indent <<<"$after"
expect_match "$after" "^$ID1 udp 10\.200\.1\.2:4000 10\.200\.2\.2:5000 admitted -$" "$ID1 restored"
expect_match "$after" "^$ID3 udp 10\.200\.1\.2:4002 10\.200\.2\.2:5002 admitted voip$" "$ID3 restored with its application"
expect_no_match "$after" "$ID2" "the session whose element was deleted while down"
expect_eq "$(status_counter gw snapshot_sessions_gone)" 1 "snapshot_sessions_gone"
expect_match "$(cat "$LAB_DIR/gw-midcomd.log")" "restored 2 session\(s\) from .*sessions\.snapshot \(3 in the file, written at a clean stop; 1 no longer in the kernel\)" "restore logged"

step "the sweep adopts the element added while midcomd was down"
wait_counter adoption_running 0
expect_match "$(rows)" "^$STRANGER udp 10\.200\.1\.2:4009 10\.200\.2\.2:5009 admitted -$" "stranger adopted with its tag's ID"
expect_eq "$(status_counter gw adopted_from_kernel)" 1 "adopted_from_kernel (the stranger only)"
out=$(in_ns client $FLOWS udp-ping 10.200.2.2 5000 --sport 4000 --count 3 --interval 0.02 --wait 0.4 2>&1 || true)
indent <<<"$out"

step "the owner tears $ID1 down by its ID after the restart: element and session go"
csp_run client teardown "$ID1" 10.200.2.2
expect_eq "$CSP_RC" 0 "teardown $ID1"
sleep 0.3
expect_no_match "$(rows)" "$ID1" "$ID1 after its teardown"
expect_no_match "$(nft_set gw admit4)" "10\.200\.1\.2 \. udp \. 4000 \. 10\.200\.2\.2 \. 5000 " "$ID1's element after its teardown"

step "a corrupt snapshot is refused with one log line; the kernel's sets are used instead"
stop_midcomd second
[ -s "$snapshot" ] || fail "no snapshot after the second stop"
size=$(stat -c %s "$snapshot")
printf '\xa5' | dd of="$snapshot" bs=1 seek=$((size / 2)) conv=notrunc status=none
lab_midcomd gw "$conf"
wait_counter adoption_running 0
log=$(cat "$LAB_DIR/gw-midcomd.log")
expect_eq "$(grep -c "session snapshot .* refused" <<<"$log")" 1 "one refusal line"
expect_match "$log" "session snapshot .*sessions\.snapshot refused: snapshot corrupt \(checksum mismatch\); adopting earlier sessions from the kernel's sets instead" "refusal names the problem"
expect_eq "$(status_counter gw adopted_from_snapshot)" 0 "nothing from the corrupt snapshot"
after=$(rows); indent <<<"$after"
expect_match "$after" "^$ID3 udp 10\.200\.1\.2:4002 10\.200\.2\.2:5002 admitted voip$" "$ID3 adopted from the kernel's set (its tag)"
expect_match "$after" "^$STRANGER udp " "the stranger adopted from the kernel's set"

step "a snapshot of another table is refused too"
stop_midcomd third
$PY - "$snapshot" <<'PY'
import sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
# header: magic(8) version(2) flags(2) id(8) written(8) table-length(1) table: rename "midcom" to "midcox"
i = 8 + 2 + 2 + 8 + 8
n = data[i]
assert bytes(data[i + 1:i + 1 + n]) == b"midcom", data[i + 1:i + 1 + n]
data[i + n] = ord("x")
open(path, "wb").write(data)
PY
lab_midcomd gw "$conf"
wait_counter adoption_running 0
expect_match "$(cat "$LAB_DIR/gw-midcomd.log")" "session snapshot .* refused: snapshot of table midcox, this midcomd runs table midcom" "foreign table refused"
expect_match "$(rows)" "^$ID3 " "$ID3 still adopted (from the kernel's set)"

echo "ops-restart-snapshot: all checks passed"
