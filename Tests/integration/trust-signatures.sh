#!/usr/bin/env bash
# Trust scenarios 2 and 5 (docs/PROTOCOL.md 6.7, 7): signed requests and signed records.
#
#  a. [trust] signatures = any-key: an unsigned SETUP, a SETUP whose signature is forged, and a
#     captured signed SETUP altered after signing are refused (REJECT authentication-failed) and
#     install nothing; a SETUP signed with `csp setup --key` is admitted.
#  b. signatures = known-keys: a key that no [[known-key]] lists, and a listed key used from outside
#     its `source` prefix, are refused; the listed key from its prefix is admitted.
#  c. Pinning: csp judges gw1's signed record against a pinned key (the gateway's own: "pinned";
#     another: exit 5, "EXPECTED") and against a known-middleboxes file (first use, then "known",
#     then, after the gateway was given a new key under the same ID, exit 5). The ID is fixed in
#     [daemon]: by default it is the key's fingerprint, and a new key would be a new middlebox.
#  d. Ownership: a session signed by key A ignores REFRESH and TEARDOWN signed by key B or unsigned,
#     sent from the owner's own host; its owner still refreshes it, and A's TEARDOWN ends it.
#
#   client 10.200.1.2 ── gw (midcomd gw1, id 4d6964636f6d0071) ── server 10.200.2.2 (csp listen)
source "$(dirname "$0")/lib.sh"
lab_init trustsig
CRAFT="$PY $ROOT/Tests/integration/craft.py"
# csp keeps its per-session sequence numbers here, not in the home directory.
export CSP_STATE_DIR="$LAB_DIR/csp-state"
# Another user of the client host: its own csp state (its requests name the owner's session).
OTHER_STATE="$LAB_DIR/csp-state-other"
GW_ID=4d6964636f6d0071

step "lab: client — gw — server; gw1 with a fixed middlebox ID and [trust] signatures = any-key"
lab_basic
conf_any=$(lab_conf gw-any <<CONF
[daemon]
name = "gw1"
id = "$GW_ID"

[policy]
default = "admit"
unsignaled = "drop"
max-lifetime = 600

[trust]
signatures = "any-key"
CONF
)
out=$("$BIN/midcomd" --check --config "$conf_any" 2>&1) ||
  fail "midcomd refuses '[trust] signatures = any-key': the gateway cannot be told to require signed requests: $out"
lab_midcomd gw "$conf_any"
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 85
for _ in $(seq 1 50); do [ -n "$(in_ns server ss -Hlun 'sport = :7227')" ] && break; sleep 0.1; done
# Every CSP datagram the gateway's interfaces carry, as it arrived (for the altered copy in a.4).
lab_serve gw "$LAB_DIR/capture.log" $CRAFT capture --out "$LAB_DIR/capture.jsonl" --duration 85

step "keys: csp keygen A, B, C (Ed25519, private key files mode 0600)"
keygen() {
  local out
  out=$("$BIN/csp" keygen --key "$LAB_DIR/key$1" 2>&1) || fail "csp keygen --key key$1: $out"
  grep -Eq "^csp-ed25519 [0-9a-f]{64} id [0-9a-f]{16}$" <<<"$out" || fail "csp keygen output: $out"
  expect_eq "$(stat -c %a "$LAB_DIR/key$1")" 600 "mode of the private key file key$1"
  echo "$out"
}
# key_of LINE: "csp-ed25519 <hex>"; fp_of LINE: the key's fingerprint (what csp prints as "key <fp>").
key_of() { awk '{ print $1 " " $2 }' <<<"$1"; }
fp_of() { $PY -c 'import hashlib, sys; print(hashlib.sha256(bytes.fromhex(sys.argv[1].split()[1])).hexdigest()[:16])' "$1"; }
line=$(keygen A); KEY_A=$(key_of "$line"); FP_A=$(fp_of "$line")
expect_match "$line" " id $FP_A$" "csp keygen: the ID is the key's fingerprint"
line=$(keygen B); KEY_B=$(key_of "$line"); FP_B=$(fp_of "$line")
line=$(keygen C); KEY_C=$(key_of "$line")
expect_eq "$("$BIN/csp" keygen --key "$LAB_DIR/keyA" --show | awk '{ print $1 " " $2 }')" "$KEY_A" "csp keygen --show"
indent <<<"A: $KEY_A"$'\n'"B: $KEY_B"$'\n'"C: $KEY_C"
gw_line=$("$BIN/midcomd" --config "$conf_any" --state-dir "$LAB_DIR/gw-state" --show-key 2>&1) || fail "midcomd --show-key: $gw_line"
expect_match "$gw_line" "^csp-ed25519 [0-9a-f]{64} midcomd gw1 id $GW_ID$" "midcomd --show-key"
GW_KEY=$(key_of "$gw_line"); GW_FP=$(fp_of "$gw_line")
indent <<<"gw1: $gw_line (key $GW_FP)"

# admitted SESSION: the session's row in `midctl sessions` says admitted.
session_row() { midctl gw sessions | grep -E "^$1 " || true; }
expect_admitted() { expect_match "$(session_row "$1")" " admitted" "$2: session $1 in midctl sessions"; }
expect_no_session() { expect_eq "$(session_row "$1")" "" "$2: midctl sessions row of $1"; }
# (no pipe into grep -q: nft may still be writing when grep has its match, and pipefail would see SIGPIPE)
admit4_has() { grep -Eq "10\.200\.1\.2 \. udp \. $1 \. 10\.200\.2\.2 \. $2 " <<<"$(nft_set gw admit4)"; }
counter() { status_counter gw "$1"; }

# ---------------------------------------------------------------------------------------------
step "a.1 unsigned csp setup (sport 4001) → REJECT authentication-failed, nothing installed"
failures=$(counter authentication_failures)
csp_run client setup udp 10.200.2.2:5000 --sport 4001 --lifetime 60
expect_eq "$CSP_RC" 1 "unsigned SETUP: csp exit status"
expect_match "$CSP_OUT" "REJECT from .*: authentication-failed: this flow needs a signature" "unsigned SETUP refused"
expect_no_session "$(session_of "$CSP_OUT")" "unsigned SETUP"
expect_eq "$(nft_element_count gw)" 0 "admission elements after the unsigned SETUP"
expect_eq "$(counter authentication_failures)" "$((failures + 1))" "authentication_failures after the unsigned SETUP"

step "a.2 SETUP with a forged signature (random IDENTITY and SIGNATURE, TIMESTAMP now, sport 4002) → refused"
failures=$(counter authentication_failures)
out=$(in_ns client $CRAFT forge 10.200.2.2 7227 --flow udp,10.200.1.2,4002,10.200.2.2,5000 --lifetime 60 --wait 1.5)
indent <<<"$out"
forged=$(sed -n 's/^sent .* session \([0-9a-f]\{16\}\) .*/\1/p' <<<"$out")
expect_match "$out" "^reply [0-9]+ octets from 10\.200\.2\.2:7227 type 3 session $forged result 5 reason .*signature does not verify" \
  "REJECT authentication-failed (5) for the forged signature"
expect_no_session "$forged" "forged SETUP"
expect_eq "$(nft_element_count gw)" 0 "admission elements after the forged SETUP"
expect_eq "$(counter authentication_failures)" "$((failures + 1))" "authentication_failures after the forged SETUP"

step "a.3 csp setup --key A (sport 4003) → ACCEPT, admitted, gw1's record signed"
csp_run client setup udp 10.200.2.2:5000 --sport 4003 --lifetime 60 --key "$LAB_DIR/keyA"
expect_eq "$CSP_RC" 0 "signed SETUP: csp exit status"
expect_match "$CSP_OUT" "ACCEPT from 10\.200\.2\.2:7227 .*lifetime 60s" "signed SETUP accepted"
expect_match "$CSP_OUT" "middlebox gw1 id $GW_ID epoch [0-9]+: admitted, 60s; signed by key $GW_FP \(not pinned\)" "gw1's signed record"
s_a=$(session_of "$CSP_OUT")
expect_admitted "$s_a" "signed SETUP"
admit4_has 4003 5000 || fail "admit4 has no element for the signed SETUP's flow: $(nft_set gw admit4)"

step "a.4 the captured signed SETUP of $s_a with FLOW's destination port changed 5000 → 5001, re-sent from its address:port → refused"
wait_for_match "$LAB_DIR/capture.log" "to-client in 10\.200\.1\.2:[0-9]+ > 10\.200\.2\.2:7227 .* type 1 session $s_a " 3
failures=$(counter authentication_failures); replays=$(counter replays)
out=$(in_ns client $CRAFT replay "$LAB_DIR/capture.jsonl" --type 1 --session "$s_a" --if to-client --flip-dport --wait 1.5)
indent <<<"$out"
expect_match "$out" "^reply [0-9]+ octets from 10\.200\.2\.2:7227 type 3 session $s_a result 5 reason signature does not verify with key $FP_A" \
  "REJECT authentication-failed (5) for the altered SETUP"
expect_eq "$(counter authentication_failures)" "$((failures + 1))" "authentication_failures after the altered SETUP"
expect_eq "$(counter replays)" "$replays" "replays after the altered SETUP (its signature, not its sequence, refused it)"
! admit4_has 4003 5001 || fail "the altered flow (destination port 5001) was admitted: $(nft_set gw admit4)"
admit4_has 4003 5000 || fail "the signed session's element is gone after the altered SETUP: $(nft_set gw admit4)"
expect_match "$(session_row "$s_a")" "10\.200\.2\.2:5000 +admitted" "session $s_a keeps its flow"

# ---------------------------------------------------------------------------------------------
step "b. restart gw1 with signatures = known-keys: A listed for 10.200.1.0/24, C only for 10.200.3.0/24"
conf_known=$(lab_conf gw-known <<CONF
[daemon]
name = "gw1"
id = "$GW_ID"

[policy]
default = "admit"
unsignaled = "drop"
max-lifetime = 600

[trust]
signatures = "known-keys"

[[known-key]]
name = "alice"
key = "$KEY_A"
source = "10.200.1.0/24"

[[known-key]]
name = "carol-at-the-branch"
key = "$KEY_C"
source = "10.200.3.0/24"
CONF
)
stop_gw() {
  kill -TERM "$MIDCOMD_PID"
  for _ in $(seq 1 50); do kill -0 "$MIDCOMD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$MIDCOMD_PID" 2>/dev/null && fail "midcomd did not stop within 5 s of SIGTERM"
  cp "$LAB_DIR/gw-midcomd.log" "$LAB_DIR/gw-run$1-midcomd.log"
}
stop_gw 1
lab_midcomd gw "$conf_known"

step "b.1 csp setup --key B (not listed, sport 4011) → REJECT authentication-failed"
failures=$(counter authentication_failures)
csp_run client setup udp 10.200.2.2:5000 --sport 4011 --lifetime 60 --key "$LAB_DIR/keyB"
expect_eq "$CSP_RC" 1 "SETUP signed by B: csp exit status"
expect_match "$CSP_OUT" "REJECT from .*: authentication-failed: this flow needs a known key \(key $FP_B is not listed\)" "SETUP signed by B refused"
expect_no_session "$(session_of "$CSP_OUT")" "SETUP signed by B"
admit4_has 4011 5000 && fail "B's flow was admitted: $(nft_set gw admit4)"

step "b.2 csp setup --key C (listed for 10.200.3.0/24 only, sent from 10.200.1.2, sport 4012) → refused"
csp_run client setup udp 10.200.2.2:5000 --sport 4012 --lifetime 60 --key "$LAB_DIR/keyC"
expect_eq "$CSP_RC" 1 "SETUP signed by C from outside its source: csp exit status"
expect_match "$CSP_OUT" "REJECT from .*: authentication-failed: this flow needs a known key" "SETUP signed by C from the wrong prefix refused"
admit4_has 4012 5000 && fail "C's flow from outside its source prefix was admitted: $(nft_set gw admit4)"
expect_eq "$(counter authentication_failures)" "$((failures + 2))" "authentication_failures after B's and C's SETUPs"

step "b.3 csp setup --key A (listed, sport 4013) → ACCEPT, admitted"
csp_run client setup udp 10.200.2.2:5000 --sport 4013 --lifetime 60 --key "$LAB_DIR/keyA"
expect_eq "$CSP_RC" 0 "SETUP signed by A: csp exit status"
s_c=$(session_of "$CSP_OUT")
expect_admitted "$s_c" "SETUP signed by A"
admit4_has 4013 5000 || fail "A's flow is not in admit4: $(nft_set gw admit4)"

# ---------------------------------------------------------------------------------------------
step "c. pinning: the gateway's key from midcomd --show-key is the same after the restart"
expect_eq "$(key_of "$("$BIN/midcomd" --config "$conf_known" --state-dir "$LAB_DIR/gw-state" --show-key 2>&1)")" "$GW_KEY" "gw1's key after the restart"

step "c.1 csp setup --pin <gw1's key> (sport 4031) → exit 0, record \"(pinned)\""
csp_run client setup udp 10.200.2.2:5000 --sport 4031 --lifetime 30 --key "$LAB_DIR/keyA" --pin "$GW_KEY"
expect_eq "$CSP_RC" 0 "csp setup pinned to gw1's key: exit status"
expect_match "$CSP_OUT" "middlebox gw1 id $GW_ID epoch [0-9]+: admitted, 30s; signed by key $GW_FP \(pinned\)" "gw1's record pinned"

step "c.2 csp setup --pin <another key> (the middlebox on the path is not the pinned one, sport 4032) → exit 5"
csp_run client setup udp 10.200.2.2:5000 --sport 4032 --lifetime 30 --key "$LAB_DIR/keyA" --pin "$KEY_C"
expect_eq "$CSP_RC" 5 "csp setup pinned to another key: exit status"
expect_match "$CSP_OUT" "middlebox $GW_ID: signed by key $GW_FP, EXPECTED a pinned key: substituted or re-keyed middlebox" "substituted middlebox reported"

step "c.3 --known-middleboxes: first use remembers gw1's key, the second exchange finds it known"
csp_run client setup udp 10.200.2.2:5000 --sport 4033 --lifetime 30 --key "$LAB_DIR/keyA" --known-middleboxes "$LAB_DIR/known"
expect_eq "$CSP_RC" 0 "first use: exit status"
expect_match "$CSP_OUT" "middlebox gw1 id $GW_ID .*\(new: trusted on first use and remembered\)" "first use"
expect_match "$(cat "$LAB_DIR/known")" "^$GW_ID $GW_KEY$" "known-middleboxes file"
csp_run client setup udp 10.200.2.2:5000 --sport 4034 --lifetime 30 --key "$LAB_DIR/keyA" --known-middleboxes "$LAB_DIR/known" --machine
expect_eq "$CSP_RC" 0 "second use: exit status"
expect_match "$CSP_OUT" "type=ACCEPT .* signers=$GW_ID:known" "second use: gw1 known"

step "c.4 gw1 gets a new key (identity.key deleted, same name and ID), the next csp setup → exit 5"
stop_gw 2
rm -f "$LAB_DIR/gw-state/identity.key"
lab_midcomd gw "$conf_known"
new_line=$("$BIN/midcomd" --config "$conf_known" --state-dir "$LAB_DIR/gw-state" --show-key 2>&1)
indent <<<"$new_line"
NEW_FP=$(fp_of "$new_line")
[ "$NEW_FP" != "$GW_FP" ] || fail "gw1's key did not change: $new_line"
csp_run client setup udp 10.200.2.2:5000 --sport 4035 --lifetime 30 --key "$LAB_DIR/keyA" --known-middleboxes "$LAB_DIR/known"
expect_eq "$CSP_RC" 5 "csp setup after gw1 was re-keyed: exit status"
expect_match "$CSP_OUT" "middlebox $GW_ID: signed by key $NEW_FP, EXPECTED key $GW_FP remembered for $GW_ID: substituted or re-keyed middlebox" \
  "changed key reported"
expect_match "$(cat "$LAB_DIR/known")" "^$GW_ID $GW_KEY$" "known-middleboxes file still holds the first key"

# ---------------------------------------------------------------------------------------------
step "d. ownership: csp setup --key A (sport 4041), then REFRESH and TEARDOWN of its session from the same host, signed by B or unsigned"
csp_run client setup udp 10.200.2.2:5000 --sport 4041 --lifetime 60 --key "$LAB_DIR/keyA"
expect_eq "$CSP_RC" 0 "SETUP signed by A: csp exit status"
s_o=$(session_of "$CSP_OUT")
expect_admitted "$s_o" "SETUP signed by A"
admit4_has 4041 5000 || fail "A's flow is not in admit4: $(nft_set gw admit4)"
failures=$(counter authentication_failures); torn=$(counter torn_down); replays=$(counter replays)
# The other requests come from another user of the client host: its own csp state directory.
step "d.1 csp refresh $s_o --key B → REJECT authentication-failed"
csp_run client refresh "$s_o" 10.200.2.2 --lifetime 60 --key "$LAB_DIR/keyB" --state-dir "$OTHER_STATE"
expect_eq "$CSP_RC" 1 "REFRESH signed by B: csp exit status"
expect_match "$CSP_OUT" "REJECT from .*: authentication-failed: session $s_o belongs to key $FP_A" "REFRESH signed by B refused"
step "d.2 unsigned csp refresh → REJECT authentication-failed"
csp_run client refresh "$s_o" 10.200.2.2 --lifetime 60 --state-dir "$OTHER_STATE"
expect_eq "$CSP_RC" 1 "unsigned REFRESH: csp exit status"
expect_match "$CSP_OUT" "REJECT from .*: authentication-failed: session $s_o belongs to key $FP_A" "unsigned REFRESH refused"
step "d.3 csp teardown --key B, then an unsigned csp teardown (no answer is awaited)"
csp_run client teardown "$s_o" 10.200.2.2 --key "$LAB_DIR/keyB" --state-dir "$OTHER_STATE"
expect_eq "$CSP_RC" 0 "csp teardown --key B exit status (sent)"
csp_run client teardown "$s_o" 10.200.2.2 --state-dir "$OTHER_STATE"
expect_eq "$CSP_RC" 0 "unsigned csp teardown exit status (sent)"
for _ in $(seq 1 20); do
  [ "$(counter authentication_failures)" -ge "$((failures + 4))" ] && break; sleep 0.1
done
step "d.4 the session is untouched: admitted, its element in admit4, torn_down unchanged, 4 authentication failures"
indent <<<"$(midctl gw sessions)"
expect_admitted "$s_o" "after B's and the unsigned REFRESH/TEARDOWN"
admit4_has 4041 5000 || fail "A's element left admit4 after B's or the unsigned TEARDOWN: $(nft_set gw admit4)"
expect_eq "$(counter torn_down)" "$torn" "torn_down after B's and the unsigned TEARDOWN"
expect_eq "$(counter authentication_failures)" "$((failures + 4))" "authentication_failures (2 REFRESH + 2 TEARDOWN not by A)"
step "d.5 the owner still controls it: csp refresh --key A → ACCEPT"
csp_run client refresh "$s_o" 10.200.2.2 --lifetime 60 --key "$LAB_DIR/keyA"
[ "$CSP_RC" == 0 ] || fail "the owner's signed REFRESH of $s_o was refused after B's and the unsigned TEARDOWN (exit $CSP_RC;" \
  "replays $replays → $(counter replays)): requests that failed the ownership check must not use up the owner's sequence numbers"
expect_match "$CSP_OUT" "ACCEPT from 10\.200\.2\.2:7227 .*lifetime 60s" "the owner's REFRESH accepted"
step "d.6 csp teardown --key A (the owner) → the session and its element are gone"
csp_run client teardown "$s_o" 10.200.2.2 --key "$LAB_DIR/keyA"
expect_eq "$CSP_RC" 0 "csp teardown --key A exit status"
for _ in $(seq 1 20); do [ -z "$(session_row "$s_o")" ] && break; sleep 0.1; done
[ -z "$(session_row "$s_o")" ] || fail "the owner's signed TEARDOWN did not end $s_o: $(session_row "$s_o") (replays $replays → $(counter replays))"
admit4_has 4041 5000 && fail "A's element is still in admit4 after A's TEARDOWN: $(nft_set gw admit4)"
expect_eq "$(counter torn_down)" "$((torn + 1))" "torn_down after A's TEARDOWN"
expect_eq "$(counter replays)" "$replays" "replays (no request of the owner was taken for a replay)"

echo "trust-signatures: all checks passed"
