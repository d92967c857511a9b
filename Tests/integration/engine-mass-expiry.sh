#!/usr/bin/env bash
# Engine regression: a mass expiry must not stall the packet loop. Thousands of any-source-port
# sessions with a short lifetime expire together on a gateway whose conntrack table holds tens of
# thousands of entries. Cleaning up after them (their connections must go too) must not keep
# the packet loop from serving signaling and from sending its systemd watchdog pings: while the
# sessions expire, at least 9 of 10 SETUPs spaced over ~10 s are answered, and WATCHDOG=1 (every
# 250 ms from the packet loop) never pauses for more than 2 s.
#
#   client 10.200.1.2 — gw (midcomd gw1, NOTIFY_SOCKET read by engine_load.py) — server 10.200.2.2
#
# Scale (environment): MASS_SESSIONS (default 2500) sessions of MASS_LIFETIME (8) s,
# MASS_CONNS (25000) conntrack entries.
source "$(dirname "$0")/lib.sh"
lab_init emass

SESSIONS=${MASS_SESSIONS:-2500}
LIFETIME=${MASS_LIFETIME:-8}
CONNS=${MASS_CONNS:-25000}
LOAD="$PY $ROOT/Tests/integration/engine_load.py"

step "lab: client — gw — server; midcomd with NOTIFY_SOCKET"
lab_basic
# Unreplied UDP entries live 30 s by default: keep the flood's entries for the whole test.
in_ns gw sysctl -qw net.netfilter.nf_conntrack_udp_timeout=120
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"

[policy]
default = "admit"
unsignaled = "drop"

# The load tool sends raw SETUPs and does not answer CHALLENGEs: this test is about expiry.
[trust]
challenge = "never"
CONF
)
lab_serve gw "$LAB_DIR/notify.log" $LOAD notify "$LAB_DIR/notify.sock" --duration 90
export NOTIFY_SOCKET="$LAB_DIR/notify.sock"
lab_midcomd gw "$conf"
unset NOTIFY_SOCKET
wait_for_match "$LAB_DIR/notify.log" " READY=1$" 5
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 90
sleep 0.3

step "admit any-port udp 10.200.1.2:* -> 10.200.2.2:9999, then $CONNS datagrams from distinct source ports through it"
csp_run client setup udp 10.200.2.2:9999 --lifetime 120
expect_eq "$CSP_RC" 0 "any-port admission for the conntrack flood"
out=$(in_ns client $LOAD flood 10.200.2.2 9999 --count "$CONNS" --first-sport 20000)
indent <<<"$out"
sleep 0.5
entries=$(in_ns gw conntrack -C)
step "conntrack entries in gw: $entries"
[ "$entries" -ge $((CONNS * 9 / 10)) ] || fail "only $entries conntrack entries in gw after sending $CONNS flows"

step "$SESSIONS any-port sessions 10.200.1.2:* -> 10.200.2.2:30000+i with a lifetime of ${LIFETIME}s"
t_load=$(now_s)
out=$(in_ns client $LOAD setup 10.200.2.2 --count "$SESSIONS" --first-port 30000 --lifetime "$LIFETIME" --window 128 --timeout 20)
t_loaded=$(now_s)
indent <<<"$out"
accepted=$(sed -n 's/^accepted \([0-9]*\) .*/\1/p' <<<"$out")
[ "${accepted:-0}" -ge $((SESSIONS * 95 / 100)) ] || fail "only ${accepted:-0} of $SESSIONS load sessions were accepted"
n=$(nft_element_count gw admit4_anyport)
step "admit4_anyport holds $n elements ($(awk -v a="$t_load" -v b="$t_loaded" 'BEGIN { printf "%.1f", b - a }') s to signal them)"
[ "$n" -ge $((SESSIONS * 95 / 100)) ] || fail "admit4_anyport holds $n elements, expected about $SESSIONS"

step "while they expire: 10 csp setups, one per second (each waits at most 3.75 s for its answer)"
start=$(after "$t_load" "$LIFETIME")
sleep_until "$start"
probe_pids=()
for i in $(seq 0 9); do
  sleep_until "$(after "$start" "$i")"
  ( set +e
    in_ns client timeout 10 "$BIN/csp" setup udp 10.200.2.2:$((6000 + i)) --sport $((7000 + i)) --lifetime 30 >"$LAB_DIR/probe$i.log" 2>&1
    echo "$? $(now_s)" >"$LAB_DIR/probe$i.rc" ) &
  probe_pids+=($!)
done
for pid in "${probe_pids[@]}"; do wait "$pid" || true; done
t_end=$(now_s)
answered=0
for i in $(seq 0 9); do
  read -r rc t <"$LAB_DIR/probe$i.rc"
  took=$(awk -v t="$t" -v s="$(after "$start" "$i")" 'BEGIN { printf "%.1f", t - s }')
  [ "$rc" == 0 ] && answered=$((answered + 1))
  echo "      probe $i at +${i}s: exit $rc after ${took}s"
done

# The sessions expire from t_load + LIFETIME on: look at the watchdog from one second before.
t_window=$(after "$t_load" $((LIFETIME - 1)))
gaps=$($LOAD gaps "$LAB_DIR/notify.log" --from "$t_window" --to "$t_end")
window=$(awk -v a="$t_window" -v b="$t_end" 'BEGIN { printf "%.1f", b - a }')
max_gap=$(sed -n 's/.* max_gap \([0-9.]*\) .*/\1/p' <<<"$gaps")
left=$(nft_element_count gw admit4_anyport)
expired=$(status_counter gw expired)
step "answered $answered/10; in the ${window}s window from 1 s before the expiry: $gaps s; expired counter $expired; admit4_anyport now $left"
problems=()
[ "$answered" -ge 9 ] || problems+=("only $answered of 10 SETUPs were answered while $SESSIONS sessions expired")
awk -v g="$max_gap" 'BEGIN { exit !(g <= 2.0) }' || problems+=("the packet loop sent no WATCHDOG=1 for ${max_gap}s")
[ ${#problems[@]} -eq 0 ] || fail "mass expiry stalled the packet loop: $(printf '%s; ' "${problems[@]}")"
echo "engine-mass-expiry: all checks passed"
