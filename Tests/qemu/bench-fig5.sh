#!/usr/bin/env bash
# Runs inside the QEMU guest: the bench's figure 5 (the fast path of an admitted flow) with the flowtable
# option, which needs a kernel with nftables flowtables (the development VM's has none). Benchmarks/bench.sh's
# figure 5q boots the guest for it (`BENCH_FIGURES=5q`); guest.sh hands over to this script when the kernel
# command line says midcom.bench=fig5,... (run.sh's MIDCOM_QEMU_BENCH).
#
# What: one bulk TCP transfer (iperf3, client → server through gw, SECS seconds, both ends on vCPU 0) per
# case, bits/s at the receiver, in the guest's client — gw — server namespaces (Benchmarks/lib.sh):
#   none               no table at all: plain forwarding, no conntrack
#   stateful           a gateway without Midcom as deployed: a stateful firewall table (conntrack on every
#                      packet, established accepted first, invalid dropped) with the strict rp_filter
#   ruleset            Midcom's ruleset, the flow admitted by hand, no daemon
#   midcomd            the same with midcomd running (no flowtable)
#   midcomd-flowtable  midcomd with flowtable-devices = [to-client, to-server]: the admitted flow offloaded
# Cases interleaved in each run. The CPUs are emulated (tcg), so only ratios of two cases in the same run
# count: midcomd-flowtable ÷ none (the issue's goal: ≥ 1.0), ÷ stateful, ÷ midcomd.
#
# Never a silent success: in every Midcom case a test-owned forward chain counts the octets of the transfer that
# took the slow path; with the flowtable they must be under 5 % of the octets transferred (else the flow was not
# offloaded and the script fails), without it at least as many (else the count is broken).
#
# Console output: progress lines, one `midcom-bench: {json}` line per value (lib.sh's record format, figure
# "5q") and `midcom-bench-kernel: RELEASE`. Arguments (key=value): runs=N (3), seconds=S (3).
set -euo pipefail
RUNS=3; SECS=3
for a in "$@"; do
  case $a in
    runs=*) RUNS=${a#*=} ;;
    seconds=*) SECS=${a#*=} ;;
    *) echo "bench-fig5: unknown argument $a" >&2; exit 2 ;;
  esac
done
for v in "$RUNS" "$SECS"; do [[ $v =~ ^[0-9]+$ ]] || { echo "bench-fig5: not a whole number: $v" >&2; exit 2; }; done
[ "$RUNS" -ge 1 ] && [ "$SECS" -ge 1 ] || { echo "bench-fig5: runs and seconds must be at least 1" >&2; exit 2; }

export BENCH_RESULTS=/tmp/bench BENCH_BIN=/opt/midcom/bench/bin BENCH_SWIFT_BIN=/opt/midcom/bin
source /opt/midcom/Benchmarks/lib.sh
mkdir -p "$RESULTS"
RAW="$RESULTS/raw.jsonl"
: >"$RAW"

say() { echo "bench-fig5 $(awk '{printf "%6.1f", $1}' /proc/uptime)s: $*"; }
fail() { echo "bench-fig5: FAIL: $*" >&2; exit 1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.4f", (b > 0 ? a / b : 0)}'; }

for p in "$BIN/iperf3" "$SWIFT_BIN/midcomd" "$SWIFT_BIN/midctl"; do
  [ -x "$p" ] || fail "$p is missing from the image (build-image.sh with MIDCOM_QEMU_BENCH_BIN)"
done

# rp_filter 0|1: the gateway's strict IPv4 reverse-path filter on every interface.
rp_filter() {
  local key
  for key in $(in_ns gw sysctl -aN 2>/dev/null | grep -E '^net\.ipv4\.conf\..*\.rp_filter$'); do in_ns gw sysctl -qw "$key=$1"; done
}

# gateway CASE: gw's tables for one case; midcomd started for the midcomd cases (MIDCOMD_PID).
MIDCOMD_PID=
gateway() {
  in_ns gw nft delete table inet fig5stateful 2>/dev/null || true
  in_ns gw nft delete table inet fig5watch 2>/dev/null || true
  rp_filter 0
  case $1 in
    none) in_ns gw nft delete table inet midcom 2>/dev/null || true; return 0 ;;
    stateful)
      in_ns gw nft delete table inet midcom 2>/dev/null || true
      rp_filter 1
      in_ns gw nft -f - <<'NFT'
table inet fig5stateful {
  chain forward { type filter hook forward priority filter; policy accept; ct state established,related accept; ct state invalid drop; }
}
NFT
      return 0 ;;
  esac
  bl_ruleset
  in_ns gw nft add element inet midcom admit4_anyport "{ 10.201.1.2 . tcp . 10.201.2.2 . 5201 timeout 1h }"
  # The transfer's packets (both directions) that meet a forward hook: the slow path.
  in_ns gw nft -f - <<'NFT'
table inet fig5watch {
  chain forward { type filter hook forward priority 10; policy accept; tcp dport 5201 counter; tcp sport 5201 counter; }
}
NFT
  case $1 in
    midcomd) bl_midcomd $'[policy]\nunsignaled = "drop"' 60 ;;
    midcomd-flowtable)
      bl_midcomd $'[daemon]\nflowtable-devices = ["to-client", "to-server"]\n\n[policy]\nunsignaled = "drop"' 60
      in_ns gw nft list flowtable inet midcom fastpath >/dev/null 2>&1 || fail "midcomd started without flowtable fastpath" ;;
  esac
}

# slow_path: octets of the transfer (both directions, headers included) that met a forward hook. Octets, not
# packets: with GSO a veth carries many segments in one packet.
slow_path() {
  in_ns gw nft list table inet fig5watch 2>/dev/null |
    awk '/counter packets/ { for (i = 1; i <= NF; i++) if ($i == "bytes") n += $(i + 1) } END { print n + 0 }'
}

# transfer: one iperf3 run client → server; prints bits/s received and the octets moved.
transfer() {
  in_ns client taskset -c "$LOAD_CPU" timeout $((SECS + 60)) "$BIN/iperf3" -c 10.201.2.2 -p 5201 -t "$SECS" -J |
    python3 -c "import json,sys; e = json.load(sys.stdin)['end']['sum_received']; print(e['bits_per_second'], e['bytes'])"
}

cases=(none stateful ruleset midcomd midcomd-flowtable)
say "kernel $(uname -r), $(nproc) vCPUs; $RUNS runs, ${SECS}s per case: ${cases[*]}"
bl_lab
bl_bg server "$BL_DIR/iperf-server.log" taskset -c "$LOAD_CPU" "$BIN/iperf3" -s -p 5201
sleep 1
declare -A BPS
for run in $(seq 1 "$RUNS"); do
  for c in "${cases[@]}"; do
    gateway "$c"
    read -r bps octets <<<"$(transfer)" || fail "$c: iperf3 gave no result"
    [ -n "$bps" ] || fail "$c: iperf3 gave no result"
    BPS[$c]=$bps
    record 5q "$c" tcp_bps "$run" "$bps"
    line="run $run, $c: $(awk -v b="$bps" 'BEGIN {printf "%.1f", b / 1e6}') Mbit/s (emulated)"
    if [ "$c" != none ] && [ "$c" != stateful ]; then
      slow=$(slow_path)
      record 5q "$c" slow_path_share "$run" "$(ratio "$slow" "$octets")"
      line+=", slow path ÷ transfer $(ratio "$slow" "$octets") in octets"
      if [ "$c" = midcomd-flowtable ]; then
        [ "$slow" -lt $(( octets / 20 )) ] || fail "$c: $slow octets took the slow path for a transfer of $octets: the flow was not offloaded"
      else
        [ "$slow" -ge "$octets" ] || fail "$c: only $slow octets counted on the slow path for a transfer of $octets: the count is broken"
      fi
    fi
    [ -n "$MIDCOMD_PID" ] && { bl_stop "$MIDCOMD_PID"; MIDCOMD_PID=; }
    say "$line"
  done
  record 5q flowtable-vs-none tcp_ratio "$run" "$(ratio "${BPS[midcomd-flowtable]}" "${BPS[none]}")"
  record 5q flowtable-vs-stateful tcp_ratio "$run" "$(ratio "${BPS[midcomd-flowtable]}" "${BPS[stateful]}")"
  record 5q flowtable-vs-midcomd tcp_ratio "$run" "$(ratio "${BPS[midcomd-flowtable]}" "${BPS[midcomd]}")"
  record 5q midcomd-vs-none tcp_ratio "$run" "$(ratio "${BPS[midcomd]}" "${BPS[none]}")"
  record 5q midcomd-vs-stateful tcp_ratio "$run" "$(ratio "${BPS[midcomd]}" "${BPS[stateful]}")"
  record 5q stateful-vs-none tcp_ratio "$run" "$(ratio "${BPS[stateful]}" "${BPS[none]}")"
  say "run $run: flowtable ÷ none $(ratio "${BPS[midcomd-flowtable]}" "${BPS[none]}"), midcomd ÷ none $(ratio "${BPS[midcomd]}" "${BPS[none]}")"
done
sed 's/^/midcom-bench: /' "$RAW"
echo "midcom-bench-kernel: $(uname -r)"
