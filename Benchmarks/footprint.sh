#!/bin/bash
# The engine's footprint per signaled session, counted instead of timed: figure 4's SETUP and ACCEPT
# (`MidcomBench engine N 0 cold BYTES`) under callgrind's cache simulator, collecting only the parse
# and the engine (SignalingRequest(parsing:) and GatewayEngine.handle), with BYTES evicted before
# each message as at window 1. Prints one JSON object: per session, instructions, instruction-cache
# line misses, data-cache read and write line misses (32 KiB L1s, 64-octet lines).
#
# Why: at window 1 midcomd's user time per session is the engine's work done cold (docs/PERFORMANCE.md,
# "Sixth pass"), and this machine's timing noise (±10 % and more between runs) hides changes of that
# size; the counts are the same on every run of the same binary, so a change to the engine's
# footprint shows in them exactly ("Seventh pass").
#
#   Benchmarks/footprint.sh MIDCOMBENCH [SESSIONS (3000)] [EVICT_BYTES (2097152)]
set -euo pipefail
bench=${1:?usage: footprint.sh MIDCOMBENCH [SESSIONS] [EVICT_BYTES]}
sessions=${2:-3000}
evict=${3:-2097152}
command -v valgrind >/dev/null || { echo "footprint.sh: valgrind is not installed (scripts/install-deps.sh bench)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Debian 12's valgrind cannot read Swift's DWARF 5; the symbol table is all callgrind needs here.
cp "$bench" "$work/bench"
strip --strip-debug "$work/bench"
valgrind --tool=callgrind --cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=1048576,16,64 \
  --toggle-collect='$s10MidcomCore13GatewayEngineV6handle_3now*' \
  --toggle-collect='$s10MidcomCore16SignalingRequestV7parsing*' \
  --callgrind-out-file="$work/out" "$work/bench" engine "$sessions" 0 cold "$evict" >"$work/stdout" 2>"$work/stderr" ||
  { echo "footprint.sh: the run failed:" >&2; tail -5 "$work/stderr" >&2; exit 1; }
python3 - "$work/out" "$sessions" <<'EOF'
import json, sys
events = totals = None
for line in open(sys.argv[1]):
    if line.startswith("events:"):
        events = line.split()[1:]
    elif line.startswith(("summary:", "totals:")):
        totals = [int(x) for x in line.split()[1:]]
counts = dict(zip(events, totals))
n = int(sys.argv[2])
print(json.dumps({
    "sessions": n,
    "instructions": round(counts["Ir"] / n),
    "i1_misses": round(counts["I1mr"] / n),
    "d1_read_misses": round(counts["D1mr"] / n),
    "d1_write_misses": round(counts["D1mw"] / n),
}))
EOF
