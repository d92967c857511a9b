#!/usr/bin/env bash
# Runs every integration scenario (each builds and removes its own namespaces) and prints one
# line per scenario with its time, then a summary line. Usage: run-all.sh [NAME-FILTER]
set -u
dir=$(cd "$(dirname "$0")" && pwd)
filter=${1:-}
passed=0; failed=0; failures=()
for script in "$dir"/[0-9a-z]*.sh; do
  name=$(basename "$script" .sh)
  case $name in lib|run-all) continue ;; esac
  [ -n "$filter" ] && [[ $name != *$filter* ]] && continue
  log=$(mktemp "/tmp/midcom-scenario-$name.XXXXXX")
  start=$(date +%s%N)
  if timeout 300 bash "$script" >"$log" 2>&1; then status=PASS; passed=$((passed + 1)); else status=FAIL; failed=$((failed + 1)); failures+=("$name"); fi
  tenths=$(( ($(date +%s%N) - start) / 100000000 ))
  elapsed="$((tenths / 10)).$((tenths % 10))"
  printf '%-4s %-28s %6ss\n' "$status" "$name" "$elapsed"
  if [ $status = FAIL ]; then sed 's/^/     | /' "$log"; fi
  rm -f "$log"
done
echo "scenarios: $passed passed, $failed failed"
[ $failed -eq 0 ]
