#!/usr/bin/env bash
# High-availability pair (issue 16 part 2): two gateways share virtual addresses with keepalived
# (VRRPv3, unicast adverts) and connection state with conntrackd (FTFW over a sync link), run with
# the very files of docs/examples/ha/ (paths and per-box addresses substituted). A signaled TCP
# transfer and a signaled UDP stream cross gw1; gw1 dies (every process killed, links down); gw2
# takes the addresses, its notify script commits the synced conntrack entries, and both flows go
# on on gw2's kernel fast path although gw2's midcomd never saw them signaled. Measured: the VRRP
# takeover time, each flow's longest gap, TCP resets, UDP losses. Then a new signaled session and
# a pinhole work through gw2.
#
#                       ┌── gw1 (.2, master) ──┐
#   client 192.168.1.10 ┤ lan bridge    sync0  ├ wan bridge ── server 198.51.100.10
#   (gw 192.168.1.1)    └── gw2 (.3, backup) ──┘  (route to the LAN via 198.51.100.1)
#   virtual addresses 192.168.1.1 (lan0) and 198.51.100.1 (wan0); sync link 10.0.9.1 — 10.0.9.2
source "$(dirname "$0")/lib.sh"
lab_init hafail
EXAMPLES=$ROOT/docs/examples/ha
CRAFT="$PY $ROOT/Tests/integration/craft.py"
for tool in keepalived conntrackd; do
  command -v "$tool" >/dev/null || fail "$tool is missing: run scripts/install-deps.sh"
done

# ha_link A IFA B IFB: a veth pair, IFA in namespace A and IFB in B, both up.
ha_link() {
  LAB_LINKS=$((LAB_LINKS + 1))
  local ia="mca$$x$LAB_LINKS" ib="mcb$$x$LAB_LINKS"
  ip link add "$ia" type veth peer name "$ib"
  ip link set "$ia" netns "$(ns "$1")"; ip link set "$ib" netns "$(ns "$3")"
  in_ns "$1" ip link set "$ia" name "$2"; in_ns "$3" ip link set "$ib" name "$4"
  in_ns "$1" ip link set "$2" up; in_ns "$3" ip link set "$4" up
}
# ha_bridge NS PORTS...: a bridge br0 in NS (no STP, forwarding at once) over PORTS.
ha_bridge() {
  local n=$1 p; shift
  in_ns "$n" ip link add br0 type bridge forward_delay 0 stp_state 0
  in_ns "$n" ip link set br0 up
  for p in "$@"; do in_ns "$n" ip link set "$p" master br0; done
}

step "lab: client — lan bridge — gw1 + gw2 — wan bridge — server; sync link gw1 — gw2"
for n in client lan gw1 gw2 wan server; do lab_ns "$n"; done
ha_link client lan0 lan to-client
ha_link gw1 lan0 lan to-gw1; ha_link gw2 lan0 lan to-gw2
ha_link gw1 wan0 wan to-gw1; ha_link gw2 wan0 wan to-gw2
ha_link server wan0 wan to-server
ha_link gw1 sync0 gw2 sync0
ha_bridge lan to-client to-gw1 to-gw2
ha_bridge wan to-server to-gw1 to-gw2
lab_addr client lan0 192.168.1.10/24; in_ns client ip route add default via 192.168.1.1
lab_addr server wan0 198.51.100.10/24; in_ns server ip route add default via 198.51.100.1
for i in 1 2; do
  lab_addr "gw$i" lan0 "192.168.1.$((i + 1))/24"
  lab_addr "gw$i" wan0 "198.51.100.$((i + 1))/24"
  lab_addr "gw$i" sync0 "10.0.9.$i/24"
  lab_forwarding "gw$i"
done

step "both gateways: the same midcomd.conf (admit signaled flows, drop unsignaled ones)"
conf=$(lab_signaling_conf gw gw)
lab_midcomd gw1 "$conf"
lab_midcomd gw2 "$conf"

# ha_files I: gw I's copies of docs/examples/ha (gw1's files as shipped, gw2 with the two unicast
# and sync addresses swapped and priority 100), with lab paths for binaries, sockets and logs.
ha_files() {
  local i=$1 d="$LAB_DIR/gw$1"
  mkdir -p "$d"
  local paths=(
    -e "s|/usr/sbin/midctl|$BIN/midctl|g"
    -e "s|/run/midcom/control.sock|$LAB_DIR/gw$i.sock|g"
    -e "s|/etc/keepalived/midcom-ha-notify.sh|$d/midcom-ha-notify.sh|g"
    -e "s|/etc/conntrackd/conntrackd.conf|$d/conntrackd.conf|g"
    -e "s|/var/log/conntrackd.log|$d/conntrackd.log|g"
    -e "s|/var/lock/conntrackd.lock|$d/conntrackd.lock|g"
    -e "s|/var/run/conntrackd.ctl|$d/conntrackd.ctl|g"
    -e "s|/var/log/midcom-ha.log|$d/notify.log|g"
  )
  local swap=()
  if [ "$i" = 2 ]; then
    swap=(-e '/unicast_src_ip\|unicast_peer\|^\t\t192\.168\.1\.3$/{s/192\.168\.1\.2/@A@/;s/192\.168\.1\.3/192.168.1.2/;s/@A@/192.168.1.3/}'
          -e 's/^\tpriority 150$/\tpriority 100/'
          -e '/^\t\tIPv4_address 10\.0\.9\.1$\|IPv4_Destination_Address/{s/10\.0\.9\.1/@A@/;s/10\.0\.9\.2/10.0.9.1/;s/@A@/10.0.9.2/}')
  fi
  sed "${paths[@]}" "${swap[@]}" "$EXAMPLES/keepalived.conf" >"$d/keepalived.conf"
  sed "${paths[@]}" "${swap[@]}" "$EXAMPLES/conntrackd.conf" >"$d/conntrackd.conf"
  sed "${paths[@]}" "$EXAMPLES/midcom-ha-notify.sh" >"$d/midcom-ha-notify.sh"
  chmod 755 "$d/midcom-ha-notify.sh"
}
ha_files 1; ha_files 2
expect_match "$(grep -A1 unicast_peer "$LAB_DIR/gw2/keepalived.conf")" "192\.168\.1\.2" "gw2's unicast peer is gw1"
expect_match "$(grep unicast_src_ip "$LAB_DIR/gw2/keepalived.conf")" "192\.168\.1\.3" "gw2's own unicast address"
expect_match "$(grep -E 'IPv4_(address 10|Destination)' "$LAB_DIR/gw2/conntrackd.conf" | tr -s '\t\n' '  ')" \
  "IPv4_address 10\.0\.9\.2 IPv4_Destination_Address 10\.0\.9\.1" "gw2's sync addresses"

step "conntrackd (FTFW over sync0) and keepalived on both; gw1 (priority 150) becomes master"
for i in 1 2; do
  lab_bg "gw$i" "$LAB_DIR/gw$i-conntrackd.out" conntrackd -C "$LAB_DIR/gw$i/conntrackd.conf"
done
for i in 1 2; do
  for _ in $(seq 1 50); do in_ns "gw$i" conntrackd -C "$LAB_DIR/gw$i/conntrackd.conf" -s >/dev/null 2>&1 && break; sleep 0.1; done
  in_ns "gw$i" conntrackd -C "$LAB_DIR/gw$i/conntrackd.conf" -s >/dev/null 2>&1 || fail "conntrackd on gw$i did not start: $(cat "$LAB_DIR/gw$i-conntrackd.out" "$LAB_DIR/gw$i/conntrackd.log" 2>/dev/null)"
done
start_keepalived() {
  local d="$LAB_DIR/gw$1"
  lab_bg "gw$1" "$LAB_DIR/gw$1-keepalived.log" keepalived -n -l -D -f "$d/keepalived.conf" \
    -p "$d/keepalived.pid" -r "$d/vrrp.pid" -c "$d/checkers.pid"
}
vip_on() { in_ns "$1" ip -4 -o addr show dev lan0 | grep -q ' 192\.168\.1\.1/'; }
# gw1 first: with nopreempt (a recovered box must not take the addresses back) whichever box
# becomes master first stays master, and on a loaded machine gw2's start could win the race.
start_keepalived 1
for _ in $(seq 1 100); do vip_on gw1 && break; sleep 0.1; done
vip_on gw1 || fail "gw1 did not take 192.168.1.1 within 10 s: $(tail -n 20 "$LAB_DIR/gw1-keepalived.log")"
start_keepalived 2
wait_for_match "$LAB_DIR/gw1/notify.log" "midcom-ha: master" 5
wait_for_match "$LAB_DIR/gw2/notify.log" "midcom-ha: backup" 5
vip_on gw2 && fail "gw2 holds 192.168.1.1 as well"
in_ns gw1 ip -4 -o addr show dev wan0 | grep -q ' 198\.51\.100\.1/' || fail "gw1 did not take 198.51.100.1"

lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --duration 90
lab_serve server "$LAB_DIR/tcp.log" $FLOWS tcp-serve 8080 --duration 90
lab_serve server "$LAB_DIR/udp.log" $FLOWS udp-echo 5000 --duration 90
lab_serve server "$LAB_DIR/udp2.log" $FLOWS udp-echo 5001 --duration 90
sleep 0.3

step "signal a TCP flow (any source port → :8080) and a UDP flow (:4000 → :5000) through gw1"
csp_run client setup tcp 198.51.100.10:8080 --lifetime 120
expect_eq "$CSP_RC" 0 "TCP setup"
gw1_id=$(sed -n 's/.*middlebox gw id \([0-9a-f]\{16\}\) epoch.*/\1/p' <<<"$CSP_OUT" | head -1)
csp_run client setup udp 198.51.100.10:5000 --sport 4000 --lifetime 120
expect_eq "$CSP_RC" 0 "UDP setup"

step "a pinhole for the server to the client's port 6000 (no connection yet), kept by csp keep (lifetime 120 s: refreshes ~60 s apart)"
export CSP_STATE_DIR="$LAB_DIR/csp-state"
in_ns client "$BIN/csp" keygen --key "$LAB_DIR/client.key" >/dev/null
lab_serve client "$LAB_DIR/pin.log" $FLOWS udp-echo 6000 --duration 60
csp_run client setup udp --incoming --peer 198.51.100.10 --local-port 6000 --lifetime 120 --key "$LAB_DIR/client.key"
expect_eq "$CSP_RC" 0 "pinhole setup"
pin=$(session_of "$CSP_OUT")
lab_bg client "$LAB_DIR/keep.log" "$BIN/csp" keep "$pin" --lifetime 120 --duration 90 --key "$LAB_DIR/client.key"
wait_for_match "$LAB_DIR/keep.log" '"event":"keeping"' 5
sleep 0.3

# Epoch announcements (docs/PROTOCOL.md 5.7.1) are unauthenticated multicast on the LAN: anyone
# inside can send them. A forged one may cost one REFRESH per 2 s, never a change of state.
step "forged epoch ANNOUNCEs on the LAN (50 unsigned ones of an unknown middlebox, 50 with a discovery nonce): at most one REFRESH, no re-signal"
record=$(printf '%016x%08x%02x%02x%08x' 0x6666 7 0 0 0)
in_ns client $CRAFT send 224.0.0.1 7227 --type 14 --flags 1 --session 0 --nonce 0 --seq 0 --tlv 0x000a=00000007 \
  --tlv "0x0009=$record" --count 50 >/dev/null
in_ns client $CRAFT send 224.0.0.1 7227 --type 14 --flags 1 --session 0 --nonce 1234 --seq 0 --tlv 0x000a=00000008 \
  --tlv "0x0009=$(printf '%016x%08x%02x%02x%08x' 0x6667 8 0 0 0)" --count 50 >/dev/null
wait_for_match "$LAB_DIR/keep.log" '"event":"refreshed"' 5
sleep 0.5
indent <"$LAB_DIR/keep.log"
expect_eq "$(grep -c '"event":"announced"' "$LAB_DIR/keep.log")" 1 "announcements the keeper acted on"
expect_match "$(grep '"event":"announced"' "$LAB_DIR/keep.log")" '"middlebox":"0000000000006666"' "the one acted on"
expect_no_match "$(cat "$LAB_DIR/keep.log")" '"event":"resignaled"' "a re-signal after forged announcements"
expect_match "$(midctl gw1 sessions)" "$pin +udp .*admitted" "the pinhole on gw1, unchanged"
expect_eq "$(midctl gw2 sessions --json | $PY -c 'import json,sys; print(len(json.load(sys.stdin)))')" 0 "sessions gw2's midcomd knows"

# The streams: TCP writes 1000 bytes every 10 ms and reads the echo; UDP sends a numbered datagram
# every 10 ms. Each reports the longest time between two answers (the interruption).
cat >"$LAB_DIR/stream.py" <<'PY'
import socket, sys, threading, time
mode, addr, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
times, state = [], {"got": 0, "error": "none"}
def gap():
    g = max((b - a for a, b in zip(times, times[1:])), default=0.0)
    return g
if mode == "tcp":
    s = socket.create_connection((addr, port), timeout=5)
    s.settimeout(15)
    def reader():
        try:
            while data := s.recv(65536):
                state["got"] += len(data); times.append(time.monotonic())
        except OSError as e:
            state["error"] = type(e).__name__
    t = threading.Thread(target=reader); t.start()
    sent, end = 0, time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            s.sendall(b"x" * 1000); sent += 1000; time.sleep(0.01)
        s.shutdown(socket.SHUT_WR)
    except OSError as e:
        state["error"] = type(e).__name__
    t.join(20)
    print(f"tcp sent {sent} echoed {state['got']} max_gap {gap():.3f} error {state['error']}", flush=True)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 4000)); s.settimeout(0.2)
    s.connect((addr, port)); stop = threading.Event()
    def reader():
        while not stop.is_set():
            try:
                s.recv(2048); state["got"] += 1; times.append(time.monotonic())
            except OSError:
                pass
    t = threading.Thread(target=reader); t.start()
    sent, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        s.send(sent.to_bytes(4, "big")); sent += 1; time.sleep(0.01)
    time.sleep(0.5); stop.set(); t.join()
    print(f"udp sent {sent} replies {state['got']} lost {sent - state['got']} max_gap {gap():.3f}", flush=True)
PY

step "stream TCP and UDP through gw1 for 8 s; after 2.5 s gw1 dies (all its processes killed, its links down)"
lab_bg client "$LAB_DIR/tcp-stream.log" $PY "$LAB_DIR/stream.py" tcp 198.51.100.10 8080 8
tcp_pid=$LAB_LAST_PID
lab_bg client "$LAB_DIR/udp-stream.log" $PY "$LAB_DIR/stream.py" udp 198.51.100.10 5000 8
udp_pid=$LAB_LAST_PID
sleep 2.5
synced=$(in_ns gw2 conntrack -L 2>/dev/null | grep -Ec "dport=(8080|5000) .*ASSURED" || true)
echo "      gw2's kernel before the failure: $synced synced entries of the two streams"
[ "$synced" -ge 2 ] || fail "conntrackd did not sync the TCP and UDP entries into gw2's kernel (found $synced)"
dropped_before=$(status_counter gw2 unsignaled_dropped)
kill_at=$(now_s)
# Links first, so that no goodbye gets out (keepalived's VRRP child would send a priority-0
# advert on the SIGTERM it gets when its parent dies): a dead box, not a clean shutdown.
for l in lan0 wan0 sync0; do in_ns gw1 ip link set "$l" down; done
for pid in $(ip netns pids "$(ns gw1)"); do disown "$pid" 2>/dev/null || true; kill -9 "$pid" 2>/dev/null || true; done
for _ in $(seq 1 50); do vip_on gw2 && break; sleep 0.05; done
vip_on gw2 || fail "gw2 did not take 192.168.1.1 within 2.5 s of gw1's death: $(tail -n 20 "$LAB_DIR/gw2-keepalived.log")"
takeover=$(awk -v a="$kill_at" -v b="$(now_s)" 'BEGIN { printf "%.2f", b - a }')
wait_for_match "$LAB_DIR/gw2/notify.log" "midcom-ha: master" 5
wait "$tcp_pid" || true; wait "$udp_pid" || true
tcp_out=$(cat "$LAB_DIR/tcp-stream.log"); udp_out=$(cat "$LAB_DIR/udp-stream.log")
indent <<<"$tcp_out"; indent <<<"$udp_out"
indent <"$LAB_DIR/gw2/notify.log"
master_at=$(sed -n 's/^\([0-9.]*\) midcom-ha: master$/\1/p' "$LAB_DIR/gw2/notify.log" | tail -1)
commit=$(awk -v a="$kill_at" -v b="$master_at" 'BEGIN { printf "%.2f", b - a }')
tcp_gap=$(sed -n 's/.* max_gap \([0-9.]*\) .*/\1/p' <<<"$tcp_out")
udp_gap=$(sed -n 's/.* max_gap \([0-9.]*\)$/\1/p' <<<"$udp_out")
dropped=$(( $(status_counter gw2 unsignaled_dropped) - dropped_before ))

echo "      figures: VRRP takeover (address on gw2) ${takeover} s after gw1's death; notify_master (commit) at ${commit} s"
echo "      figures: TCP longest gap ${tcp_gap} s, UDP longest gap ${udp_gap} s ($(sed -n 's/.* lost \([0-9]*\) .*/\1/p' <<<"$udp_out") datagrams lost);" \
  "stream packets gw2's midcomd saw as unsignaled and dropped (no conntrack entry yet): $dropped"
expect_eq "$dropped" 0 "stream packets that met gw2 before their conntrack entry"
expect_match "$tcp_out" "^tcp sent ([0-9]+) echoed \1 max_gap [0-9.]+ error none$" "TCP transfer completes without a reset"
awk -v g="$tcp_gap" 'BEGIN { exit !(g <= 3.0) }' || fail "TCP interruption ${tcp_gap} s > 3 s"
awk -v g="$udp_gap" 'BEGIN { exit !(g <= 3.0) }' || fail "UDP interruption ${udp_gap} s > 3 s"
expect_match "$(in_ns gw2 conntrack -L -p tcp --dport 8080 2>/dev/null)" "ESTABLISHED|TIME_WAIT|FIN_WAIT|CLOSE" "the TCP entry in gw2's kernel"
expect_no_match "$(midctl gw2 sessions)" "198\.51\.100\.10:(8080|5000)" "gw2's midcomd knows the streams (they ran on conntrack alone)"

step "a new signaled session through gw2 (the new master)"
csp_run client setup udp 198.51.100.10:5001 --sport 4001 --lifetime 60
expect_eq "$CSP_RC" 0 "new session's setup"
expect_match "$CSP_OUT" "middlebox gw id [0-9a-f]{16} epoch [0-9]+: admitted" "gw2's record"
gw2_id=$(sed -n 's/.*middlebox gw id \([0-9a-f]\{16\}\) epoch.*/\1/p' <<<"$CSP_OUT" | head -1)
[ "$gw2_id" != "$gw1_id" ] || fail "the new session carries gw1's record ($gw1_id)"
out=$(in_ns client $FLOWS udp-ping 198.51.100.10 5001 --sport 4001 --count 5 --interval 0.02 --wait 0.5)
indent <<<"$out"; expect_match "$out" "sent 5 replies 5 " "data of the new session"

step "the kept pinhole: gw2 announces its epoch (notify_master: midctl announce); the keeper REFRESHes at once, sees gw2's record and re-signals; the server gets in"
wait_for_match "$LAB_DIR/keep.log" '"event":"resignaled"' 10
resignaled_at=$(grep '"event":"resignaled"' "$LAB_DIR/keep.log" | head -1 | sed -n 's/.*"at":"\([0-9.]*\)".*/\1/p')
resignal=$(awk -v a="$kill_at" -v b="$resignaled_at" 'BEGIN { printf "%.2f", b - a }')
echo "      $(grep '"event":"announced"' "$LAB_DIR/keep.log" | tail -1)"
echo "      $(grep resignaled "$LAB_DIR/keep.log" | head -1)"
expect_match "$(grep '"event":"announced"' "$LAB_DIR/keep.log" | tail -1)" "\"middlebox\":\"$gw2_id\"" "gw2's announcement reached the keeper"
awk -v r="$resignal" 'BEGIN { exit !(r <= 5.0) }' || fail "the keeper re-signaled ${resignal} s after gw1's death (its next refresh was ~60 s away: the announcement did not work)"
expect_match "$(midctl gw2 sessions)" "$pin +udp +198\.51\.100\.10(:\*)? +192\.168\.1\.10:6000 +admitted" "the pinhole on gw2"
out=$(in_ns server $FLOWS udp-ping 192.168.1.10 6000 --sport 7100 --count 3 --interval 0.02 --wait 0.5)
indent <<<"$out"; expect_match "$out" "sent 3 replies 3 " "data through the re-signaled pinhole"
echo "      figures: the pinhole was back on gw2 ${resignal} s after gw1's death (keeper refresh interval ~60 s; announcement-driven)"
echo "ha-failover: all checks passed (takeover ${takeover} s, TCP gap ${tcp_gap} s, UDP gap ${udp_gap} s)"
