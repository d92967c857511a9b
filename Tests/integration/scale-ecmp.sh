#!/usr/bin/env bash
# Scale-out (issue 16 part 3, docs/SCALING.md): two gateways behind an ECMP router. The router
# hashes on source and destination address only (fib_multipath_hash_policy 0) over a resilient
# nexthop group of both gateways; each gateway runs midcomd with the repo's ruleset and NATs to
# its own external address, so return traffic finds its box by the address. Checked with real
# packets: (a) a host's SETUP and its flow share their addresses, so the box that answers the
# SETUP is the box that carries the flow (record, session, element counters); (b) hosts spread
# over both boxes; (c) when gw2's nexthop leaves the group, gw1's hosts keep their box and their
# established TCP connections, gw2's hosts move and their connections break (their state lived
# in gw2), a moved host re-signals through gw1 and connects again; when gw2 comes back, buckets
# in use stay with gw1. Before that, `ip route get` shows the kernel's choice per hash policy:
# L3 vs 5-tuple (SETUP and flow split) and L3 vs source-only (one host, two destinations).
#
#   hosts 10.10.0.11-22 ── router ──┬─ gw1 (NAT 100.64.1.1) ─┐
#         (one namespace)  nhid 10 ─┤                        ├─ server 192.0.2.10
#                      (resilient)  └─ gw2 (NAT 100.64.2.1) ─┘
source "$(dirname "$0")/lib.sh"

# write_holder FILE: the long-lived TCP client (flows.py's tcp-send is one-shot): one connection
# per host, kept open; round K starts when $LAB_DIR/round-K exists, every connection still alive
# echoes 1000 octets (2 s timeout) and prints "round K HOST ok|broken", then "round K done".
write_holder() {
  cat >"$1" <<'PY'
import socket, sys, threading, time, os
# Usage: hold.py DIR SERVER PORT HOST:SPORT... Ends at DIR/end or after 60 s.
d, server, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
hosts = [(a, int(p)) for a, p in (h.split(":") for h in sys.argv[4:])]
conns, alive = {}, {}
for a, p in hosts:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a, p))
    s.settimeout(3)
    s.connect((server, port))
    conns[a], alive[a] = s, True
print("connected", len(conns), flush=True)

def echo(a):
    s = conns[a]
    try:
        s.settimeout(2)
        s.sendall(b"y" * 1000)
        got = 0
        while got < 1000:
            data = s.recv(65536)
            if not data:
                break
            got += len(data)
        alive[a] = got == 1000
    except OSError:
        alive[a] = False

deadline = time.monotonic() + 60
k = 1
while time.monotonic() < deadline and not os.path.exists(f"{d}/end"):
    if not os.path.exists(f"{d}/round-{k}"):
        time.sleep(0.05)
        continue
    ts = [threading.Thread(target=echo, args=(a,)) for a in conns if alive[a]]
    for t in ts: t.start()
    for t in ts: t.join()
    for a, _ in hosts:
        print(f"round {k} {a} {'ok' if alive[a] else 'broken'}", flush=True)
    print(f"round {k} done", flush=True)
    k += 1
for s in conns.values():
    try:
        s.shutdown(socket.SHUT_WR)
        s.settimeout(0.5)
        while s.recv(65536):
            pass
    except OSError:
        pass
    s.close()
print("closed", flush=True)
PY
}

lab_init scale

N=12                      # inside hosts 10.10.0.11 … 10.10.0.22
SERVER=192.0.2.10
host() { echo "10.10.0.$((10 + $1))"; }

step "lab: $N hosts — router (ECMP) — gw1, gw2 (midcomd, NAT pools 100.64.1.1, 100.64.2.1) — server $SERVER"
lab_ns hosts; lab_ns router; lab_ns gw1; lab_ns gw2; lab_ns server
lab_link hosts router; lab_link router gw1; lab_link router gw2; lab_link gw1 server; lab_link gw2 server
for i in $(seq 1 $N); do lab_addr hosts to-router "$(host "$i")/24"; done
in_ns hosts ip route add default via 10.10.0.1
lab_addr router to-hosts 10.10.0.1/24
lab_forwarding router
in_ns server ip addr add "$SERVER/32" dev lo
for g in 1 2; do
  lab_addr router "to-gw$g" "10.20.$g.1/24"; lab_addr "gw$g" to-router "10.20.$g.2/24"
  lab_addr "gw$g" to-server "100.64.$g.1/24"; lab_addr server "to-gw$g" "100.64.$g.2/24"
  in_ns "gw$g" ip route add 10.10.0.0/16 via "10.20.$g.1"
  in_ns "gw$g" ip route add 192.0.2.0/24 via "100.64.$g.2"
  in_ns server ip route add "10.20.$g.0/24" via "100.64.$g.1"
  lab_forwarding "gw$g"
done

# The router: L3 hash (source and destination address only), a fixed seed where the kernel has
# one (6.11+) so the spread is the same on every run, and a resilient group of both gateways.
in_ns router sysctl -qw net.ipv4.fib_multipath_hash_policy=0
in_ns router sysctl -qw net.ipv4.fib_multipath_hash_seed=2026 2>/dev/null || true
in_ns router ip nexthop add id 1 via 10.20.1.2 dev to-gw1
in_ns router ip nexthop add id 2 via 10.20.2.2 dev to-gw2
if in_ns router ip nexthop add id 10 group 1/2 type resilient buckets 32 idle_timer 120 2>"$LAB_DIR/nh.err"; then
  GROUP=resilient
else
  # Kernels before 5.13 have no resilient groups: a plain hash-threshold group still keeps a
  # host on its box while the set of boxes is unchanged, but moves more hosts when it changes.
  step "resilient nexthop groups unsupported here ($(cat "$LAB_DIR/nh.err")): hash-threshold group instead"
  in_ns router ip nexthop add id 10 group 1/2
  GROUP=hash-threshold
fi
in_ns router ip route add 192.0.2.0/24 nhid 10
indent < <(in_ns router ip nexthop show id 10)

for g in 1 2; do
  conf=$(lab_conf "gw$g" <<CONF
[daemon]
name = "gw$g"

[policy]
default = "admit"
unsignaled = "drop"

[nat]
external-address = "100.64.$g.1"
internal = "10.10.0.0/16"
port-range = "20000-29999"
CONF
)
  lab_nat_signaling "gw$g" to-server
  lab_midcomd "gw$g" "$conf"
done
lab_bg server "$LAB_DIR/listen.log" "$BIN/csp" listen --address "$SERVER" --duration 60
lab_serve server "$LAB_DIR/tcp.log" $FLOWS tcp-serve 8080 --bind "$SERVER" --duration 60

# split_count POLICY A-ARGS B-ARGS: under multipath hash POLICY, how many hosts' two route lookups
# (`ip route get` to A and to B, "DEST [ipproto P sport S dport D]", %p = the host's flow port) pick
# different gateways. One `ip -batch` per policy: the kernel's own choice, no packets sent.
split_count() {
  local policy=$1 a=$2 b=$3 i
  in_ns router sysctl -qw net.ipv4.fib_multipath_hash_policy="$policy"
  local picks
  picks=$(for i in $(seq 1 $N); do
    echo "route get ${a//%p/$((41000 + i))} from $(host "$i") iif to-hosts"
    echo "route get ${b//%p/$((41000 + i))} from $(host "$i") iif to-hosts"
  done | in_ns router ip -batch - | grep -o 'dev to-gw[12]' | paste -d' ' - -)
  [ "$(wc -l <<<"$picks")" == "$N" ] || fail "ip route get under policy $policy: $picks"
  awk '$2 != $4 { n++ } END { print n + 0 }' <<<"$picks"
}

step "the kernel's choice for SETUP (udp →7227) and flow (tcp →8080) of each host: L3 hash vs 5-tuple hash"
setup="$SERVER ipproto udp sport 40000 dport 7227"
flow="$SERVER ipproto tcp sport %p dport 8080"
l3=$(split_count 0 "$setup" "$flow"); l4=$(split_count 1 "$setup" "$flow")
step "hosts whose SETUP and flow would reach different gateways: L3 hash $l3 of $N, 5-tuple hash $l4 of $N"
expect_eq "$l3" 0 "hosts split by the L3 hash"
[ "$l4" -ge 1 ] || fail "the 5-tuple hash split no host's SETUP from its flow (expected some of $N)"

# Per-host sharding by hash (SCALING.md): the custom policy 3 hashing the source address only
# (kernel 5.12+) keeps all of a host's destinations on one box; the L3 hash pins (host, peer).
if in_ns router sysctl -qw net.ipv4.fib_multipath_hash_fields=0x0001 2>/dev/null &&
   in_ns router sysctl -qw net.ipv4.fib_multipath_hash_policy=3 2>/dev/null; then
  l3=$(split_count 0 "$SERVER" 192.0.2.99); src=$(split_count 3 "$SERVER" 192.0.2.99)
  step "hosts whose two destinations ($SERVER, 192.0.2.99) would use different boxes: L3 hash $l3 of $N, source-only hash $src of $N"
  expect_eq "$src" 0 "hosts spread over both boxes by the source-only hash"
else
  step "custom multipath hash policy (3) unsupported by this kernel: per-host hash not shown"
fi
in_ns router sysctl -qw net.ipv4.fib_multipath_hash_policy=0

step "(a) every host signals its TCP flow (csp setup, in parallel): the gateway that answers is the one that carries it"
pids=()
for i in $(seq 1 $N); do
  lab_bg hosts "$LAB_DIR/setup$i.log" "$BIN/csp" setup tcp "$SERVER:8080" --source "$(host "$i")" \
    --sport $((41000 + i)) --lifetime 60 --state-dir "$LAB_DIR/csp$i"
  pids+=("$LAB_LAST_PID")
done
for i in $(seq 1 $N); do wait "${pids[$((i - 1))]}" || fail "csp setup of $(host "$i"): $(cat "$LAB_DIR/setup$i.log")"; done
declare -A box sid mapped
for i in $(seq 1 $N); do
  out=$(cat "$LAB_DIR/setup$i.log")
  box[$i]=$(sed -n 's/^.*middlebox \(gw[12]\) id [0-9a-f]* epoch [0-9]*: mapped.*/\1/p' <<<"$out" | head -1)
  sid[$i]=$(session_of "$out")
  mapped[$i]=$(sed -n 's/^ *mapped to \(100\.64\.[12]\.1:[0-9]*\)$/\1/p' <<<"$out" | head -1)
  [ -n "${box[$i]}" ] && [ -n "${sid[$i]}" ] || fail "host $(host "$i"): no record of gw1 or gw2: $out"
  expect_match "$out" "mapped to 100\.64\.${box[$i]#gw}\.1:[0-9]+" "host $(host "$i"): mapped into ${box[$i]}'s pool"
done

hold="$LAB_DIR/hold.py"
write_holder "$hold"
args=()
for i in $(seq 1 $N); do args+=("$(host "$i"):$((41000 + i))"); done
lab_bg hosts "$LAB_DIR/hold.log" $PY "$hold" "$LAB_DIR" "$SERVER" 8080 "${args[@]}"
wait_for_match "$LAB_DIR/hold.log" "^connected $N$" 5
round() {
  touch "$LAB_DIR/round-$1"
  wait_for_match "$LAB_DIR/hold.log" "^round $1 done$" 6
}
round 1
json1=$(midctl gw1 sessions --json); json2=$(midctl gw2 sessions --json)
count=(0 0 0)
for i in $(seq 1 $N); do
  g=${box[$i]#gw}; o=$((3 - g))
  expect_match "$(cat "$LAB_DIR/hold.log")" "^round 1 $(host "$i") ok$" "host $(host "$i"): TCP echo through ${box[$i]}"
  own=$json1; other=$json2; [ "$g" == 2 ] && { own=$json2; other=$json1; }
  pk=$($PY -c 'import json,sys; r={r["id"]: r for r in json.loads(sys.argv[1])}.get(sys.argv[2]); print(r["packets"] if r else "none")' "$own" "${sid[$i]}")
  [ "$pk" != none ] && [ "$pk" -ge 1 ] || fail "host $(host "$i"): session ${sid[$i]} on ${box[$i]} should have counted packets, got $pk"
  expect_no_match "$other" "${sid[$i]}" "host $(host "$i"): session on gw$o"
  expect_match "$(nft_set "gw$g" admit4)" "$(host "$i" | sed 's/\./\\./g') \. tcp \. $((41000 + i)) \. 192\.0\.2\.10 \. 8080 .*counter packets [1-9]" "host $(host "$i"): admit4 element with packets on ${box[$i]}"
  count[$g]=$((count[g] + 1))
done
step "each host's SETUP answered by, and its TCP flow counted on, the same box; the other box has no trace of it"

step "(b) $N hosts spread over the two boxes: gw1 ${count[1]}, gw2 ${count[2]}"
[ "${count[1]}" -ge 1 ] && [ "${count[2]}" -ge 1 ] || fail "all hosts on one box (gw1 ${count[1]}, gw2 ${count[2]})"
buckets_before=$(in_ns router ip nexthop bucket show id 10 2>/dev/null | awk '$NF == 1 { print $4 }' | sort -n | tr '\n' ' ')

step "(c) gw2 leaves the group (ip nexthop del id 2): only gw2's hosts move"
dropped_before=$(status_counter gw1 unsignaled_dropped)
in_ns router ip nexthop del id 2
indent < <(in_ns router ip nexthop show id 10)
if [ "$GROUP" == resilient ]; then
  buckets_after=$(in_ns router ip nexthop bucket show id 10 | awk '$NF == 1 { print $4 }' | sort -n | tr '\n' ' ')
  for b in $buckets_before; do [[ " $buckets_after " == *" $b "* ]] || fail "bucket $b of gw1 moved: before '$buckets_before', after '$buckets_after'"; done
  step "gw1's $(wc -w <<<"$buckets_before") buckets kept their box; gw2's were handed to gw1"
fi
round 2
for i in $(seq 1 $N); do
  if [ "${box[$i]}" == gw1 ]; then
    expect_match "$(cat "$LAB_DIR/hold.log")" "^round 2 $(host "$i") ok$" "gw1's host $(host "$i") after gw2 left"
  else
    expect_match "$(cat "$LAB_DIR/hold.log")" "^round 2 $(host "$i") broken$" "gw2's host $(host "$i") after gw2 left (state lives in gw2)"
    moved=$i
  fi
done
dropped=$(( $(status_counter gw1 unsignaled_dropped) - dropped_before ))
[ "$dropped" -ge 1 ] || fail "gw1 should have dropped the moved connections' packets as unsignaled flows (dropped $dropped)"
step "gw1's ${count[1]} established connections still echo; gw2's ${count[2]} are broken: gw1 has neither their conntrack entries, nor their admissions, nor their NAT mappings (it dropped $dropped of their packets as unsignaled)"

step "a moved host signals again: gw1 answers and a new connection works (from gw1's pool)"
i=$moved
csp_run hosts setup tcp "$SERVER:8080" --source "$(host "$i")" --sport $((42000 + i)) --lifetime 60 --state-dir "$LAB_DIR/csp$i"
expect_eq "$CSP_RC" 0 "re-signal exit status"
expect_match "$CSP_OUT" "middlebox gw1 id [0-9a-f]{16} epoch [0-9]+: mapped" "the moved host's SETUP answered by gw1"
out=$(in_ns hosts $FLOWS tcp-send "$SERVER" 8080 --bind "$(host "$i")" --sport $((42000 + i)) --bytes 20000) || fail "new connection of the moved host: $out"
indent <<<"$out"
wait_for_match "$LAB_DIR/tcp.log" "conn from 100\.64\.1\.1:[0-9]+ bytes 20000" 3

if [ "$GROUP" == resilient ]; then
  step "gw2 comes back (nexthop re-added to the group, ip nexthop replace): buckets per nexthop right after"
  in_ns router ip nexthop add id 2 via 10.20.2.2 dev to-gw2
  in_ns router ip nexthop replace id 10 group 1/2 type resilient
  indent < <(in_ns router ip nexthop bucket show id 10 | awk '{ n[$NF]++ } END { for (h in n) printf "nexthop %s: %d buckets\n", h, n[h] }' | sort)
  round 3
  for i in $(seq 1 $N); do
    [ "${box[$i]}" == gw1 ] && expect_match "$(cat "$LAB_DIR/hold.log")" "^round 3 $(host "$i") ok$" "gw1's host $(host "$i") after gw2 came back"
  done
  step "gw1's connections still echo: the kernel gave gw2 only idle buckets; a bucket in use moves after idle_timer (120 s) without packets"
fi

touch "$LAB_DIR/end"
wait_for_match "$LAB_DIR/hold.log" "^closed$" 5
for i in $(seq 1 $N); do
  [ "${box[$i]}" == gw1 ] || continue
  wait_for_match "$LAB_DIR/tcp.log" "conn from ${mapped[$i]//./\\.} bytes [0-9]+" 3
done
echo "scale-ecmp: all checks passed ($GROUP group; gw1 ${count[1]} hosts, gw2 ${count[2]})"
