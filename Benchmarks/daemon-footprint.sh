#!/bin/bash
# The whole daemon's work per signaled session or per queued packet, counted instead of timed: the
# real midcomd under callgrind, in a bench lab. Instrumentation is switched on just before the load
# starts and off just after it ends, so start-up, adoption and the shutdown snapshot are not
# counted; what is counted is every user-space instruction of every midcomd thread for that load:
# the queue loop, the parse, the engine, the nft batch, the verdicts, the runtime (retain/release,
# malloc) and the libraries.
#
# Cases (DAEMON_FOOTPRINT_CASE):
#   signaled (default)  figure 4 at window 1: the bench's client — gw — server lab, midcom.nft,
#                       figure 4's configuration, `cspload setup -w 1`; per session.
#   plain               figure 14's harness: one namespace, 64 B UDP from `udpblast` to 127.0.0.1
#                       queued from OUTPUT (table mcb14, the rule midcomd installs), counted and
#                       dropped in raw prerouting; midcomd with `unsignaled = "default-policy"` (a
#                       plain accept per packet); per packet.
#   plain-c             the same harness and load with the C reference `nfqref batch` (figures 1
#                       and 14's best C loop) as the reader, counted the same way.
# The plain cases send at a fixed rate (DAEMON_FOOTPRINT_PPS, default 2000) in udpblast's bursts of
# 8, low enough that either reader keeps up under callgrind: both see the same bursts, so the two
# counts compare the same work.
#
# Prints one JSON object: per session (per packet), instructions, instruction-cache line misses,
# data-cache read and write line misses (32 KiB L1s, 64-octet lines), allocations
# (swift_allocObject + malloc calls) and the hot path's code footprint: the distinct 64-octet lines
# and 4 KiB pages of code run in at least half of the sessions (packets). Also per object (midcomd,
# libswiftCore, libc, ...). "sessions" is how many sessions (packets) were counted;
# "verdict_messages" is verdict messages per session (packet). In the plain cases a burst costs
# more than a packet and how many packets share a burst depends on timing under callgrind, so
# compare counts only at similar verdict messages per packet.
#
# Why: Benchmarks/footprint.sh counts only the parse and the engine (MidcomBench, no kernel); at
# figure 4's window 1 midcomd's user time per session was three times the C reference's, and half
# of midcomd's counted instructions were outside the engine (docs/PERFORMANCE.md, "Tenth pass").
# Figure 14 times the reader's CPU per packet, which this machine moves by 30 % from run to run.
# The counts repeat run to run for the same binary (±1 %: ticks and the number of bursts vary a
# little), where this machine's timings do not.
#
#   sudo [DAEMON_FOOTPRINT_CASE=signaled|plain|plain-c] [DAEMON_FOOTPRINT_OUT=FILE] \
#     Benchmarks/daemon-footprint.sh [MIDCOMD (.build-bench/release/midcomd)] [SECONDS (6)]
#
# Needs root (namespaces, NFQUEUE), valgrind (scripts/install-deps.sh bench) and the bench's C
# programs in Benchmarks/results/bin (built by Benchmarks/bench.sh; cspload, udpblast and nfqref
# drive the load and the reference).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
midcomd=${1:-"$here/../.build-bench/release/midcomd"}
seconds=${2:-6}
case_=${DAEMON_FOOTPRINT_CASE:-signaled}
pps=${DAEMON_FOOTPRINT_PPS:-2000}
case $case_ in
  signaled | plain | plain-c) ;;
  *) echo "daemon-footprint.sh: DAEMON_FOOTPRINT_CASE is signaled, plain or plain-c, not '$case_'" >&2; exit 1 ;;
esac
[ "$(id -u)" = 0 ] || { echo "daemon-footprint.sh: needs root (namespaces, NFQUEUE)" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "daemon-footprint.sh: valgrind is not installed (scripts/install-deps.sh bench)" >&2; exit 1; }
[ -x "$midcomd" ] || { echo "daemon-footprint.sh: no midcomd at $midcomd (swift build -c release --scratch-path .build-bench)" >&2; exit 1; }

# lib.sh's EXIT trap removes the lab, the processes and BL_DIR, also on failure.
source "$here/lib.sh"
for program in cspload udpblast nfqref; do
  [ -x "$BIN/$program" ] || { echo "daemon-footprint.sh: no $BIN/$program (run Benchmarks/bench.sh once, or BENCH_BIN=dir)" >&2; exit 1; }
done

# A directory that stands in for SWIFT_BIN: midcomd is a wrapper that runs the real binary under
# callgrind. Debian 12's valgrind cannot read Swift's DWARF 5; the symbol table is all it needs.
wrap="$BL_DIR/bin"
mkdir -p "$wrap"
cp "$midcomd" "$wrap/midcomd.real"
strip --strip-debug "$wrap/midcomd.real"
ln -s "$(cd "$(dirname "$midcomd")" && pwd)/midctl" "$wrap/midctl"
callgrind=(valgrind --tool=callgrind --dump-instr=yes --instr-atstart=no --cache-sim=yes
  --I1=32768,8,64 --D1=32768,8,64 --LL=1048576,16,64 --callgrind-out-file="$BL_DIR/callgrind.out")
printf '#!/bin/bash\nexec %s "%s" "$@"\n' "${callgrind[*]}" "$wrap/midcomd.real" >"$wrap/midcomd"
chmod +x "$wrap/midcomd"
SWIFT_BIN=$wrap

if [ "$case_" = signaled ]; then
  bl_lab
  bl_ruleset
  # Figure 4's configuration (bench.sh FIG4_CONF); under valgrind start-up takes a few seconds.
  bl_midcomd $'[policy]\ndefault = "admit"\nunsignaled = "drop"\nmax-sessions = 4000000\n[trust]\nchallenge = "never"' 60
  reader=$MIDCOMD_PID
  bl_bg server "$BL_DIR/resp.log" taskset -c "$LOAD_CPU" "$BIN/cspload" respond -d $((seconds + 30))
  sleep 0.3
  callgrind_control -i on "$reader" >/dev/null 2>&1
  load=$(in_ns client taskset -c "$LOAD_CPU" timeout $((seconds + 30)) "$BIN/cspload" setup 10.201.2.2 -w 1 -s 1 -d "$seconds")
  callgrind_control -i off "$reader" >/dev/null 2>&1
  completed=$(echo "$load" | python3 -c 'import json, sys; print(json.load(sys.stdin)["completed"])')
else
  # Figure 14's harness (bench.sh fig14): only lo. midcomd's own ruleset is loaded (midcomd checks
  # its revision) but hooks forward, so the harness's own table queues the locally sent packets.
  bl_ns gw
  bl_ruleset
  bl_loopback_harness
  in_ns gw "$BIN/nfqref" rule 0 1 mcb14 >/dev/null
  if [ "$case_" = plain ]; then
    bl_midcomd $'[policy]\nunsignaled = "default-policy"' 60
    reader=$MIDCOMD_PID
  else
    bl_bg gw "$BL_DIR/nfqref.json" taskset -c "$READER_CPU" "${callgrind[@]}" "$BIN/nfqref" batch -d $((seconds + 90))
    reader=$BL_LAST_PID
    # Bounded: the reference binds its queue within a second natively, a few seconds under valgrind.
    for _ in $(seq 1 300); do
      in_ns gw awk '$1 == 0 {found=1} END {exit !found}' /proc/net/netfilter/nfnetlink_queue 2>/dev/null && break
      sleep 0.1
    done
  fi
  sleep 0.3
  callgrind_control -i on "$reader" >/dev/null 2>&1
  before=$(bl_loopback_sink)
  in_ns gw taskset -c "$LOAD_CPU" timeout $((seconds + 30)) "$BIN/udpblast" send 127.0.0.1 9000 -s 64 -r "$pps" -d "$seconds" -S 40000 >/dev/null
  # The last burst's verdicts may still be on their way: wait until the sink stops counting (bounded).
  for _ in $(seq 1 50); do
    settled=$(bl_loopback_sink); sleep 0.1
    [ "$(bl_loopback_sink)" = "$settled" ] && break
  done
  callgrind_control -i off "$reader" >/dev/null 2>&1
  completed=$(($(bl_loopback_sink) - before))
fi
bl_stop "$reader"
[ "$completed" -gt 100 ] || { echo "daemon-footprint.sh: only $completed sessions (packets) were completed" >&2; exit 1; }

# DAEMON_FOOTPRINT_OUT=FILE keeps callgrind's output (callgrind_annotate --inclusive=yes FILE).
[ -n "${DAEMON_FOOTPRINT_OUT:-}" ] && cp "$BL_DIR/callgrind.out" "$DAEMON_FOOTPRINT_OUT"
python3 - "$BL_DIR/callgrind.out" "$completed" <<'EOF'
import collections, json, re, sys
path, sessions = sys.argv[1], int(sys.argv[2])
names = {}
def name(kind, text):
    m = re.match(r'\((\d+)\)(?: (.*))?', text)
    if not m: return text
    key = (kind, m.group(1))
    if m.group(2) is not None: names[key] = m.group(2)
    return names.get(key, '?')
events = []
obj = fn = None
call_line = False   # the cost line after calls= is the callee's inclusive cost, not this instruction's
calls_to = None
last = 0
self_cost = collections.defaultdict(lambda: collections.Counter())   # (object, address) -> events
per_object = collections.defaultdict(collections.Counter)
allocations = 0
verdict_messages = 0   # nfq_nlmsg_put calls: one per verdict message, in midcomd and in nfqref alike
for line in open(path):
    if line.startswith('events:'): events = line.split()[1:]; continue
    if line.startswith('ob='): obj = name('ob', line[3:].strip()); continue
    if line.startswith('fn='): fn = name('fn', line[3:].strip()); continue
    if line.startswith('cfn='): calls_to = name('fn', line[4:].strip()); continue
    if line.startswith('cob='): name('ob', line[4:].strip()); continue
    if line.startswith(('fl=', 'fi=', 'fe=', 'cfi=', 'cfl=')): name('fl', line.split('=', 1)[1].strip()); continue
    if line.startswith('calls='):
        call_line = True
        if calls_to in ('swift_allocObject', 'malloc') and not fn.startswith(('swift_', 'malloc', '_int_')):
            allocations += int(line.split()[0][6:])
        if calls_to == 'nfq_nlmsg_put':
            verdict_messages += int(line.split()[0][6:])
        continue
    if not line or line[0] not in '0123456789+-*': continue
    parts = line.split()
    a = parts[0]
    if a.startswith('0x'): address = int(a, 16)
    elif a[0] in '+-':
        step = int(a[1:], 16) if a[1:].startswith('0x') else int(a[1:])
        address = last + step if a[0] == '+' else last - step
    elif a == '*': address = last
    else: address = int(a)
    last = address
    if call_line: call_line = False; continue
    values = dict(zip(events, [int(x) for x in parts[2:]]))
    self_cost[(obj, address)].update(values)
    per_object[obj].update(values)
total = collections.Counter()
for counts in per_object.values(): total.update(counts)
hot = [(o, a) for (o, a), c in self_cost.items() if c['Ir'] >= sessions / 2]
def short(o): return (o or '?').rsplit('/', 1)[-1].replace('midcomd.real', 'midcomd')
print(json.dumps({
    "sessions": sessions,
    "instructions": round(total['Ir'] / sessions),
    "i1_misses": round(total.get('I1mr', 0) / sessions),
    "d1_read_misses": round(total.get('D1mr', 0) / sessions),
    "d1_write_misses": round(total.get('D1mw', 0) / sessions),
    "allocations": round(allocations / sessions, 2),
    "verdict_messages": round(verdict_messages / sessions, 2),
    "hot_code_lines": len({(o, a >> 6) for o, a in hot}),
    "hot_code_pages": len({(o, a >> 12) for o, a in hot}),
    "instructions_by_object": {short(o): round(c['Ir'] / sessions) for o, c in
                               sorted(per_object.items(), key=lambda kv: -kv[1]['Ir']) if c['Ir'] >= sessions},
}))
EOF
