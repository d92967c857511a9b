#!/usr/bin/env bash
# Operations, reload (issue 13): `midctl reload` and SIGHUP re-read midcomd.conf. A valid file is
# taken over at once and every session is judged again: a flow the new rules reject is revoked
# (kernel element and connection gone, the data stops), a key removed from [[known-key]] loses its
# sessions, lifetimes are cut to the new maximum. A file with an error, or one that changes a
# restart-only setting, is refused with file:line (or the setting) and midcomd keeps running on
# the configuration in effect.
#
#   client 10.200.1.2 ── gw (midcomd gw1) ── server 10.200.2.2
source "$(dirname "$0")/lib.sh"
lab_init reload

step "lab: client — gw — server; gw1 admits everything, known keys not required"
lab_basic
conf="$LAB_DIR/gw.conf"
write_conf() {
  cat >"$conf" <<CONF
[daemon]
name = "gw1"

[policy]
default = "admit"
unsignaled = "drop"
max-lifetime = $1
$2
CONF
}
write_conf 3600 ""
lab_midcomd gw "$conf"
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 60
lab_serve server "$LAB_DIR/echo5000.log" $FLOWS udp-echo 5000 --duration 60
lab_serve server "$LAB_DIR/echo6000.log" $FLOWS udp-echo 6000 --duration 60
key_line=$("$BIN/csp" keygen --key "$LAB_DIR/keyA" 2>&1) || fail "keygen: $key_line"
KEY_A=$(awk '{ print $1 " " $2 }' <<<"$key_line")
ping() { in_ns client $FLOWS udp-ping 10.200.2.2 "$1" --sport "$2" --count 5 --interval 0.02 --wait 0.4; }

step "three sessions: UDP 5000, UDP 6000 (600 s), UDP 6000 signed by key A"
csp_run client setup udp 10.200.2.2:5000 --sport 4000 --lifetime 600 --responder csp
expect_eq "$CSP_RC" 0 "setup 5000"; s5000=$(session_of "$CSP_OUT")
csp_run client setup udp 10.200.2.2:6000 --sport 4001 --lifetime 600 --responder csp
expect_eq "$CSP_RC" 0 "setup 6000"; s6000=$(session_of "$CSP_OUT")
csp_run client setup udp 10.200.2.2:6000 --sport 4002 --lifetime 600 --responder csp --key "$LAB_DIR/keyA"
expect_eq "$CSP_RC" 0 "signed setup"; signed=$(session_of "$CSP_OUT")
out=$(ping 5000 4000); indent <<<"$out"; expect_match "$out" "sent 5 replies 5 " "5000 flows"

step "a file with an error: refused with file:line, the old configuration stays"
write_conf 3600 $'[[rule]]\nname = "broken"\nproto = "udp"\nport = 99999\naction = "reject"'
set +e; out=$(midctl gw reload 2>&1); rc=$?; set -e; indent <<<"$out"
expect_eq "$rc" 1 "midctl reload exit status"
expect_match "$out" "configuration not reloaded, still running on the previous one: .*gw\.conf:11: " "file:line"
expect_match "$(midctl gw sessions)" "$s5000 .* admitted" "nothing revoked"
expect_eq "$(status_counter gw reload_failures)" 1 "reload_failures"

step "a restart-only change (queue) is refused and named"
write_conf 3600 ""
sed -i 's/^name = "gw1"$/name = "gw1"\nqueue = 5/' "$conf"
set +e; out=$(midctl gw reload 2>&1); rc=$?; set -e; indent <<<"$out"
expect_eq "$rc" 1 "midctl reload exit status"
expect_match "$out" "\[daemon\] queue changed: restart midcomd to apply it" "restart-only setting named"
expect_match "$(in_ns gw nft list chain inet midcom enqueue)" "$(queue_rule 0)" "still on queue 0"

step "reload with a rule rejecting UDP 5000, max-lifetime 120 and known keys = key A only for 6000"
write_conf 120 "$(printf '[[rule]]\nname = "no-5000"\nproto = "udp"\nport = 5000\naction = "reject"\nreason = "5000 is closed now"\n\n[[rule]]\nname = "6000-known-keys"\nproto = "udp"\nport = 6000\naction = "admit"\nsignatures = "known-keys"\n\n[[known-key]]\nname = "A"\nkey = "%s"\n' "$KEY_A")"
set +e; out=$(midctl gw reload 2>&1); rc=$?; set -e; indent <<<"$out"
expect_eq "$rc" 0 "midctl reload exit status"
expect_match "$out" "reloaded .*gw\.conf: 2 rule\(s\), 2 session\(s\) revoked, 1 lifetime\(s\) shortened" "reload summary"
sessions=$(midctl gw sessions); indent <<<"$sessions"
expect_no_match "$sessions" "$s5000" "the rejected flow's session is revoked"
expect_no_match "$sessions" "$s6000" "the unsigned 6000 session is revoked (known keys needed now)"
expect_match "$sessions" "$signed .* admitted" "key A's session stays"
expect_no_match "$(nft_set gw admit4)" "udp \. 4000 \. 10\.200\.2\.2 \. 5000" "5000's element removed"
expect_match "$(nft_set gw admit4)" "udp \. 4002 \. 10\.200\.2\.2 \. 6000 .*expires 1m[0-9]" "key A's admission cut to 120 s"
out=$(ping 5000 4000); indent <<<"$out"; expect_match "$out" "sent 5 replies 0 " "the revoked flow stops (connection cleared too)"
grep -E "revoked session" "$LAB_DIR/gw-midcomd.log" | indent
csp_run client setup udp 10.200.2.2:5000 --sport 4003 --responder csp
expect_eq "$CSP_RC" 1 "a new SETUP for 5000"
expect_match "$CSP_OUT" "5000 is closed now" "rejected by the new rule"
expect_eq "$(status_counter gw revoked)" 2 "revoked counter"

step "removing key A from [[known-key]] (SIGHUP) revokes its session: key revocation"
write_conf 120 $'[[rule]]\nname = "6000-known-keys"\nproto = "udp"\nport = 6000\naction = "admit"\nsignatures = "known-keys"\n\n[[known-key]]\nname = "someone else"\nkey = "csp-ed25519 8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"'
kill -HUP "$MIDCOMD_PID"
wait_for_match "$LAB_DIR/gw-midcomd.log" "SIGHUP: reloaded .* 1 session\(s\) revoked" 3
expect_no_match "$(midctl gw sessions)" "$signed" "key A's session revoked"
out=$(ping 6000 4002); indent <<<"$out"; expect_match "$out" "sent 5 replies 0 " "its flow stops"
expect_eq "$(status_counter gw reloads)" 2 "reloads counter"
kill -0 "$MIDCOMD_PID" || fail "midcomd died"
echo "ops-reload: all checks passed"
