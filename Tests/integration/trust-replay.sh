#!/usr/bin/env bash
# Trust scenario 3 (docs/PROTOCOL.md 6.6, 7.3): replayed signaling. The gateway's links are tapped
# (every CSP datagram captured as it arrived); captured requests and answers are later sent again
# byte for byte, from their original address and port, so only replay protection can stop them:
#
#  0. an unsigned SETUP and its ACCEPT, replayed after the session's TEARDOWN → nothing admitted;
#  a. a signed SETUP + ACCEPT and a signed REFRESH, replayed after the TEARDOWN → nothing admitted
#     (the ended session's replay window, kept as a tombstone);
#  b. a signed SETUP + ACCEPT (and the unsigned ones of 0) replayed after midcomd restarted with its
#     state directory → refused (signed before the start), nothing admitted;
#  c. a signed TEARDOWN swallowed on the way (the tap keeps it, the gateway never sees it), replayed
#     after the owner signaled the session again → the session stays;
#  d. a signed SETUP + ACCEPT replayed after the session expired → nothing admitted (the expired
#     session's window; the SETUP was its latest request, so the replay is byte for byte what a
#     retransmission would be).
#
#   client 10.200.1.2 ── gw (midcomd gw1, tapped) ── server 10.200.2.2 (csp listen)
source "$(dirname "$0")/lib.sh"
lab_init trustrpl
CRAFT="$PY $ROOT/Tests/integration/craft.py"
CAPTURE="$LAB_DIR/capture.jsonl"
# csp keeps its per-session sequence numbers here, not in the home directory.
export CSP_STATE_DIR="$LAB_DIR/csp-state"

step "lab: client — gw — server; gw1 with the default trust settings (challenge new-sources)"
lab_basic
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"

[policy]
default = "admit"
unsignaled = "drop"
max-lifetime = 60
CONF
)
lab_midcomd gw "$conf"
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 85
for _ in $(seq 1 50); do [ -n "$(in_ns server ss -Hlun 'sport = :7227')" ] && break; sleep 0.1; done
lab_serve gw "$LAB_DIR/capture.log" $CRAFT capture --out "$CAPTURE" --duration 85

counter() { status_counter gw "$1"; }
session_row() { midctl gw sessions | grep -E "^$1 " || true; }
# (no pipe into grep -q: nft may still be writing when grep has its match, and pipefail would see SIGPIPE)
admit4_has() { grep -Eq "10\.200\.1\.2 \. udp \. $1 \. 10\.200\.2\.2 \. 5000 " <<<"$(nft_set gw admit4)"; }

# captured TYPE SESSION SEQ IFACE: wait (bounded) until the tap has the datagram.
captured() {
  local i
  for ((i = 0; i < 30; i++)); do
    grep -q "\"if\": \"$4\", \"dir\": \"in\".*\"type\": $1, \"session\": \"$2\", \"nonce\": \"[0-9a-f]*\", \"seq\": $3," "$CAPTURE" && return 0
    sleep 0.1
  done
  fail "the tap did not capture type $1 session $2 seq $3 arriving on $4"
}

# replay_setup SESSION: the SETUP (seq 1) as the client sent it, from the client's address:port,
# then the responder's ACCEPT of it as the server sent it, from 10.200.2.2:7227.
replay_setup() {
  in_ns client $CRAFT replay "$CAPTURE" --type 1 --session "$1" --seq 1 --if to-client --wait 0.5 | indent
  in_ns server $CRAFT replay "$CAPTURE" --type 2 --session "$1" --seq 1 --if to-server --wait 0.5 | indent
}

# expect_gone SESSION SPORT WHAT: no session, no admit4 element for the flow from SPORT.
expect_gone() {
  [ -z "$(session_row "$1")" ] || fail "$3: session $1 is back: $(session_row "$1")"
  ! admit4_has "$2" || fail "$3: the flow from port $2 is admitted again: $(nft_set gw admit4)"
}

# signed_setup SPORT LIFETIME: csp setup --key A; leaves the session ID in SESSION.
signed_setup() {
  csp_run client setup udp 10.200.2.2:5000 --sport "$1" --lifetime "$2" --key "$LAB_DIR/keyA"
  expect_eq "$CSP_RC" 0 "signed SETUP from port $1: csp exit status"
  SESSION=$(session_of "$CSP_OUT")
  expect_match "$(session_row "$SESSION")" " admitted" "signed SETUP from port $1: session $SESSION"
  admit4_has "$1" || fail "signed SETUP from port $1: no admit4 element: $(nft_set gw admit4)"
}

# teardown SESSION SPORT [ARGS...]: csp teardown, then wait (bounded) until the session is gone.
teardown() {
  local s=$1 sport=$2; shift 2
  csp_run client teardown "$s" 10.200.2.2 "$@"
  for _ in $(seq 1 30); do [ -z "$(session_row "$s")" ] && ! admit4_has "$sport" && return 0; sleep 0.1; done
  fail "csp teardown $s did not end the session: $(session_row "$s")"
}

# ---------------------------------------------------------------------------------------------
step "0. unsigned: csp setup (sport 4100), csp teardown, then the captured SETUP + ACCEPT replayed"
csp_run client setup udp 10.200.2.2:5000 --sport 4100 --lifetime 30
expect_eq "$CSP_RC" 0 "unsigned SETUP: csp exit status"
s_u=$(session_of "$CSP_OUT")
admit4_has 4100 || fail "unsigned SETUP: no admit4 element: $(nft_set gw admit4)"
captured 1 "$s_u" 1 to-client; captured 2 "$s_u" 1 to-server
teardown "$s_u" 4100
replays=$(counter replays); challenges=$(counter challenges_sent); admitted=$(counter admitted)
replay_setup "$s_u"
sleep 0.3
expect_gone "$s_u" 4100 "unsigned SETUP + ACCEPT replayed after the TEARDOWN"
expect_eq "$(counter admitted)" "$admitted" "admitted counter after the unsigned replay"
refused=$(( $(counter replays) - replays + $(counter challenges_sent) - challenges ))
[ "$refused" -ge 1 ] || fail "the replayed unsigned SETUP was neither refused as a replay nor challenged"
step "unsigned replay stopped: replays +$(( $(counter replays) - replays )), challenges_sent +$(( $(counter challenges_sent) - challenges ))"

# ---------------------------------------------------------------------------------------------
step "key A: csp keygen"
out=$("$BIN/csp" keygen --key "$LAB_DIR/keyA" 2>&1) || fail "csp keygen --key keyA: $out"
indent <<<"$out"

step "a. signed: csp setup --key A (sport 4101), csp refresh --key A, csp teardown --key A"
signed_setup 4101 30
s_a=$SESSION
csp_run client refresh "$s_a" 10.200.2.2 --lifetime 30 --key "$LAB_DIR/keyA"
expect_eq "$CSP_RC" 0 "signed REFRESH: csp exit status"
captured 1 "$s_a" 1 to-client; captured 2 "$s_a" 1 to-server; captured 12 "$s_a" 2 to-client
teardown "$s_a" 4101 --key "$LAB_DIR/keyA"
step "a. replayed: the SETUP + ACCEPT and the REFRESH of $s_a"
replays=$(counter replays); admitted=$(counter admitted); refreshed=$(counter refreshed)
replay_setup "$s_a"
in_ns client $CRAFT replay "$CAPTURE" --type 12 --session "$s_a" --seq 2 --if to-client --wait 0.5 | indent
sleep 0.3
expect_gone "$s_a" 4101 "signed SETUP + ACCEPT replayed after the TEARDOWN"
expect_eq "$(counter admitted)" "$admitted" "admitted counter after the signed replays"
expect_eq "$(counter refreshed)" "$refreshed" "refreshed counter after the REFRESH replay"
expect_eq "$(counter replays)" "$((replays + 2))" "replays after the SETUP and REFRESH replays (the ended session's window)"

# ---------------------------------------------------------------------------------------------
step "b. restart: csp setup --key A (sport 4103), csp teardown; midcomd restarted with its state directory"
signed_setup 4103 30
s_c=$SESSION
captured 1 "$s_c" 1 to-client; captured 2 "$s_c" 1 to-server
teardown "$s_c" 4103 --key "$LAB_DIR/keyA"
sleep 1.1  # the SETUP's TIMESTAMP (whole seconds) is now before the next start
kill -TERM "$MIDCOMD_PID"
for _ in $(seq 1 50); do kill -0 "$MIDCOMD_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$MIDCOMD_PID" 2>/dev/null && fail "midcomd did not stop within 5 s of SIGTERM"
cp "$LAB_DIR/gw-midcomd.log" "$LAB_DIR/gw-run1-midcomd.log"
lab_midcomd gw "$conf"
step "b. replayed after the restart: the signed SETUP + ACCEPT of $s_c, and the unsigned ones of $s_u"
replay_setup "$s_c"
sleep 0.3
expect_gone "$s_c" 4103 "signed SETUP + ACCEPT replayed after the restart"
[ "$(counter authentication_failures)" -ge 1 ] || fail "the replayed signed SETUP was not refused (authentication_failures 0)"
replay_setup "$s_u"
sleep 0.3
expect_gone "$s_u" 4100 "unsigned SETUP + ACCEPT replayed after the restart"
expect_eq "$(counter admitted)" 0 "admitted counter after the restart's replays"
expect_eq "$(nft_element_count gw)" 0 "admission elements after the restart's replays"

# ---------------------------------------------------------------------------------------------
step "c. csp setup --key A (sport 4104); its TEARDOWN is swallowed on the way (captured, never reaches midcomd)"
signed_setup 4104 30
s_d=$SESSION
in_ns gw nft -f - <<'NFT'
table inet lab_hold {
  chain prerouting {
    type filter hook prerouting priority -400; policy accept;
    iifname "to-client" udp dport 7227 drop
  }
}
NFT
csp_run client teardown "$s_d" 10.200.2.2 --key "$LAB_DIR/keyA"
captured 13 "$s_d" 2 to-client
in_ns gw nft delete table inet lab_hold
sleep 0.2
expect_match "$(session_row "$s_d")" " admitted" "session $s_d while its TEARDOWN is held"
step "c. the owner signals the session again: csp refresh --key A (csp forgot the session when it sent the TEARDOWN: sequence 2 again)"
csp_run client refresh "$s_d" 10.200.2.2 --lifetime 30 --key "$LAB_DIR/keyA"
expect_eq "$CSP_RC" 0 "the owner's REFRESH: csp exit status"
captured 12 "$s_d" 2 to-client
step "c. the held TEARDOWN of $s_d replayed from its original address:port"
replays=$(counter replays); torn=$(counter torn_down)
in_ns client $CRAFT replay "$CAPTURE" --type 13 --session "$s_d" --seq 2 --if to-client --wait 0.5 | indent
sleep 0.3
expect_match "$(session_row "$s_d")" " admitted" "session $s_d after the old TEARDOWN was replayed"
admit4_has 4104 || fail "the old TEARDOWN removed $s_d's element: $(nft_set gw admit4)"
expect_eq "$(counter torn_down)" "$torn" "torn_down after the old TEARDOWN"
expect_eq "$(counter replays)" "$((replays + 1))" "replays after the old TEARDOWN"

# ---------------------------------------------------------------------------------------------
step "d. expiry: csp setup --key A --lifetime 3 (sport 4105), wait until it expires, replay SETUP + ACCEPT"
expired=$(counter expired)
signed_setup 4105 3
s_e=$SESSION
captured 1 "$s_e" 1 to-client; captured 2 "$s_e" 1 to-server
for _ in $(seq 1 80); do [ -z "$(session_row "$s_e")" ] && break; sleep 0.1; done
[ -z "$(session_row "$s_e")" ] || fail "session $s_e did not expire within 8 s: $(session_row "$s_e")"
expect_eq "$(counter expired)" "$((expired + 1))" "expired counter"
replays=$(counter replays); admitted=$(counter admitted)
out=$(in_ns client $CRAFT replay "$CAPTURE" --type 1 --session "$s_e" --seq 1 --if to-client --wait 0.5)
indent <<<"$out"
in_ns server $CRAFT replay "$CAPTURE" --type 2 --session "$s_e" --seq 1 --if to-server --wait 0.5 | indent
sleep 0.3
if grep -Eq "^reply .* type 2 session $s_e result 0 " <<<"$out"; then
  fail "the SETUP of expired session $s_e, replayed, reached the responder and was ACCEPTed: the gateway let it through" \
    "(it is byte for byte the session's latest request, i.e. what a retransmission looks like); now: $(session_row "$s_e")"
fi
expect_gone "$s_e" 4105 "signed SETUP + ACCEPT replayed after expiry"
expect_eq "$(counter admitted)" "$admitted" "admitted counter after the replay of an expired session"
expect_eq "$(counter replays)" "$((replays + 1))" "replays after the SETUP replay (the expired session's window)"

echo "trust-replay: all checks passed"
