#!/usr/bin/env bash
# Runs inside the QEMU guest (Tests/qemu/init starts it; see run.sh): the checks of
# `make qemu-test` on a stock Debian kernel, where midcomd has the native nft queue expression.
#
#   native-encoding        Tests/qemu/native-encoding.sh: midcomd's choice on this kernel is the
#                          native `queue` expression (log line, midctl status, the rule in nft),
#                          and forced compat is told apart by the same checks
#   foundation, 05-…, 06-…, 07-…
#                          the host's namespace scenarios, unchanged (Tests/integration, lib.sh),
#                          run against the static release binaries. Chosen for their timing: each
#                          checks its sessions well within their lifetimes even at emulated speed
#                          (01 and 03 keep 30 s sessions for about as long as they run here).
#   flowtable              Tests/qemu/flowtable.sh: flowtable-devices on a kernel that has
#                          flowtables (this VM's has none): admitted flows offloaded, a revoked
#                          or pushed-back flow stopped although offloaded, others left alone,
#                          all of it back after an operator's nftables reload
#   only-native            every midcomd those scenarios started logged the native encoding: the
#                          fallback was never taken behind the scenarios' back
#
# One line per check in run-all.sh's format (the check's whole output after a FAIL, or always
# with midcom.verbose=1 on the kernel command line); the exit status is the number of failures.
# Kernel command line: midcom.scenarios=a,b,c replaces the list below; midcom.verbose=1.
# midcom.bench=NAME,key=value,... runs Tests/qemu/bench-NAME.sh with those arguments instead of the
# checks (the bench's figure 1q: run.sh's MIDCOM_QEMU_BENCH); its exit status is the guest's.
set -u
ROOT=/opt/midcom
scenarios=(foundation 05-rejection 06-nat-outgoing 07-nat-incoming flowtable)
verbose=0
bench=()
for arg in $(</proc/cmdline); do
  case $arg in
    midcom.scenarios=*) IFS=, read -ra scenarios <<<"${arg#*=}" ;;
    midcom.verbose=1) verbose=1 ;;
    midcom.bench=*) IFS=, read -ra bench <<<"${arg#*=}" ;;
  esac
done
passed=0; failed=0

# run_check NAME SECONDS CMD...: one bounded check, one line.
run_check() {
  local name=$1 seconds=$2; shift 2
  local log; log=$(mktemp "/tmp/check-$name.XXXXXX")
  local start=$EPOCHREALTIME status
  if timeout "$seconds" "$@" >"$log" 2>&1; then status=PASS; passed=$((passed + 1)); else status=FAIL; failed=$((failed + 1)); fi
  local elapsed; elapsed=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  printf '%-4s %-28s %6ss\n' "$status" "$name" "$elapsed"
  if [ $status = FAIL ] || [ $verbose = 1 ]; then sed 's/^/     | /' "$log"; fi
  rm -f "$log"
}

echo "guest: kernel $(uname -r), $(nproc) CPUs, /init after ${MIDCOM_BOOTED:-?}s, checks start after $(cut -d' ' -f1 /proc/uptime)s; $(nft --version)"
if [ ${#bench[@]} -gt 0 ]; then
  [[ ${bench[0]} =~ ^[a-z0-9]+$ ]] && [ -f "$ROOT/Tests/qemu/bench-${bench[0]}.sh" ] ||
    { echo "guest: no benchmark '${bench[0]}' (Tests/qemu/bench-NAME.sh) in this image"; exit 1; }
  exec bash "$ROOT/Tests/qemu/bench-${bench[0]}.sh" "${bench[@]:1}"
fi

# The scenarios get the real midctl and csp, and a midcomd that is the real one (exec, same PID)
# with its stderr also copied to /tmp/midcomd-logs: lib.sh deletes its lab directory with the
# logs, and only-native needs every start-up line.
mkdir -p /tmp/midcom-bin /tmp/midcomd-logs
ln -s "$ROOT/bin/midctl" /tmp/midcom-bin/midctl
ln -s "$ROOT/bin/csp" /tmp/midcom-bin/csp
cat >/tmp/midcom-bin/midcomd <<'EOF'
#!/usr/bin/bash
exec /opt/midcom/bin/midcomd "$@" 2> >(exec tee -a "/tmp/midcomd-logs/$$.log" >&2)
EOF
chmod +x /tmp/midcom-bin/midcomd

# Bounds with room for a host that is itself starved of CPU (a CI run saw every check take 2-3x
# its usual time: native-encoding ran past 60 s, and foundation's 5 s wait for a UDP listener
# to start ran out): the scenarios' waits for a process to start last 4x longer here; what
# they check of sessions and timing is unchanged.
export LAB_TIME_SCALE=4
# Its own binaries: it starts midcomd with forced compat too, which only-native must not count.
MIDCOM_BIN=$ROOT/bin run_check native-encoding 180 bash "$ROOT/Tests/qemu/native-encoding.sh"
for s in "${scenarios[@]}"; do
  script=$ROOT/Tests/integration/$s.sh
  [ -f "$ROOT/Tests/qemu/$s.sh" ] && script=$ROOT/Tests/qemu/$s.sh
  MIDCOM_BIN=/tmp/midcom-bin run_check "$s" 360 bash "$script"
done

only_native() {
  local starts native
  starts=$(cat /tmp/midcomd-logs/*.log 2>/dev/null | grep -c "midcomd started: " || true)
  native=$(cat /tmp/midcomd-logs/*.log 2>/dev/null | grep -c "midcomd started: .*(native nft queue expression)" || true)
  echo "midcomd starts in the scenarios: $starts, with the native queue expression: $native"
  cat /tmp/midcomd-logs/*.log 2>/dev/null | grep "midcomd started: " | grep -v "native nft queue expression" || true
  [ "$starts" -gt 0 ] && [ "$starts" = "$native" ]
}
export -f only_native
run_check only-native 10 bash -c only_native

echo "guest: $passed passed, $failed failed"
exit "$failed"
