#!/usr/bin/env bash
# sessions-loop.sh SECONDS MAX_SESSIONS COMMAND...: one client of figure 15's sessions/s. Runs COMMAND (one
# session, e.g. `csp connect`) again and again, one after the other, with a few octets on its standard input,
# until SECONDS have passed or MAX_SESSIONS ran; each run under `timeout 10`. A session counts when COMMAND
# exited 0 (for csp connect: both directions closed cleanly); anything else is a failure, never a session.
# The caller runs several of these side by side, inside the client's namespace and pinned to a CPU.
#
# Prints one JSON line: {"sessions":N,"failed":F,"seconds":S,"p50_ms":X,"p99_ms":Y,"first_error":"..."}
# (seconds: from the start to the end of the last session; p50/p99: wall time of the sessions that counted).
set -u
[ $# -ge 3 ] || { echo "usage: sessions-loop.sh SECONDS MAX_SESSIONS COMMAND..." >&2; exit 2; }
secs=$1 max=$2; shift 2
now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
err=$(mktemp /tmp/midcom-sessions-loop.XXXXXX)
trap 'rm -f "$err"' EXIT
sessions=0 failed=0 first_error= times=()
start=$(now_us)
deadline=$((start + $(awk -v d="$secs" 'BEGIN {printf "%d", d * 1e6}')))
for ((i = 0; i < max; i++)); do
  t0=$(now_us)
  if printf 'hello through the relay\n' | timeout 10 "$@" >/dev/null 2>"$err"; then
    sessions=$((sessions + 1)); times+=($(( $(now_us) - t0 )))
  else
    rc=$?
    failed=$((failed + 1))
    [ -n "$first_error" ] || first_error="exit $rc: $(tr '\n"\\' '  /' <"$err" | tr -cd '[:print:]' | tail -c 300)"
  fi
  [ "$(now_us)" -ge "$deadline" ] && break
done
elapsed=$(($(now_us) - start))
pct() {  # pct P: the P-th percentile of times (ms), 0 when none
  [ ${#times[@]} -gt 0 ] || { echo 0; return; }
  printf '%s\n' "${times[@]}" | sort -n | awk -v p="$1" '{v[NR] = $1} END {i = int((NR - 1) * p / 100) + 1; printf "%.3f", v[i] / 1000}'
}
awk -v n="$sessions" -v f="$failed" -v us="$elapsed" -v p50="$(pct 50)" -v p99="$(pct 99)" -v e="$first_error" \
  'BEGIN {printf "{\"sessions\":%d,\"failed\":%d,\"seconds\":%.3f,\"p50_ms\":%s,\"p99_ms\":%s,\"first_error\":\"%s\"}\n", n, f, us / 1e6, p50, p99, e}'
