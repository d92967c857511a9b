#!/usr/bin/env bash
# natpmpc-loop.sh GATEWAY FIRST_PORT COUNT MAX_SECONDS: the client of figure 13, Debian's unmodified natpmpc
# (libnatpmp), one process per request as an application or a script would run it. For COUNT distinct UDP
# ports P from FIRST_PORT, one after the other: `natpmpc -g GATEWAY -a P P udp 60` (map), then
# `natpmpc -g GATEWAY -a P P udp 0` (remove); stops early once MAX_SECONDS have passed. The caller runs it
# inside the client's namespace, pinned to a CPU (the natpmpc processes inherit both).
#
# A cycle counts only when both requests were granted: natpmpc exited 0 and printed the answer, for the map
# "Mapped public port E protocol UDP to local port P liftime L" with E > 0 and L > 0, for the removal the
# same with "port 0" and "liftime 0" (RFC 6886 3.4). Anything else is a refusal (an error result, no
# answer) and is counted as one, never as a cycle. natpmpc itself retries an unanswered request for
# minutes (RFC 6886 3.1), so every call runs under `timeout 5`.
#
# Prints one JSON line: {"ports":N,"granted":G,"map_refused":A,"unmap_refused":B,"seconds":S,"per_s":R,
# "first_error":"..."} (per_s = granted cycles ÷ the loop's wall time).
set -u
[ $# -eq 4 ] || { echo "usage: natpmpc-loop.sh GATEWAY FIRST_PORT COUNT MAX_SECONDS" >&2; exit 2; }
gw=$1 first=$2 count=$3 max_s=$4
ports=0 granted=0 map_refused=0 unmap_refused=0 first_error=
now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }

# refused WHAT OUTPUT: remembers the first refusal's natpmpc output (one line, JSON-safe).
refused() {
  [ -n "$first_error" ] && return
  first_error="$1: $(tr '\n"\\' '  /' <<<"$2" | tr -cd '[:print:]' | tail -c 300)"
}

why() { if [ "$1" = 124 ]; then echo "no answer within 5 s"; else echo "exit $1"; fi; }

start=$(now_us)
deadline=$((start + max_s * 1000000))
for ((i = 0; i < count; i++)); do
  p=$((first + i))
  ports=$((ports + 1))
  ok=1
  out=$(timeout 5 natpmpc -g "$gw" -a "$p" "$p" udp 60 2>&1)
  rc=$?
  if [ $rc -ne 0 ] || ! [[ $out =~ Mapped\ public\ port\ ([0-9]+)\ protocol\ UDP\ to\ local\ port\ $p\ liftime\ ([0-9]+) ]] \
    || [ "${BASH_REMATCH[1]}" = 0 ] || [ "${BASH_REMATCH[2]}" = 0 ]; then
    map_refused=$((map_refused + 1)); ok=0; refused "map $p ($(why $rc))" "$out"
  fi
  # Removed even after a refused map, so that nothing the loop asked for stays behind.
  out=$(timeout 5 natpmpc -g "$gw" -a "$p" "$p" udp 0 2>&1)
  rc=$?
  if [ $rc -ne 0 ] || ! [[ $out =~ Mapped\ public\ port\ 0\ protocol\ UDP\ to\ local\ port\ $p\ liftime\ 0 ]]; then
    unmap_refused=$((unmap_refused + 1)); ok=0; refused "unmap $p ($(why $rc))" "$out"
  fi
  [ $ok = 1 ] && granted=$((granted + 1))
  [ "$(now_us)" -ge "$deadline" ] && break
done
elapsed=$(($(now_us) - start))
awk -v n="$ports" -v g="$granted" -v a="$map_refused" -v b="$unmap_refused" -v us="$elapsed" -v e="$first_error" \
  'BEGIN {printf "{\"ports\":%d,\"granted\":%d,\"map_refused\":%d,\"unmap_refused\":%d,\"seconds\":%.3f,\"per_s\":%.1f,\"first_error\":\"%s\"}\n",
          n, g, a, b, us / 1e6, (us > 0 ? g * 1e6 / us : 0), e}'
