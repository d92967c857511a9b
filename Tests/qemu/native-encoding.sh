#!/usr/bin/env bash
# Runs inside the QEMU guest (guest.sh): on a kernel with the native nft `queue` expression,
# midcomd's default (`nfqueue-encoding = "auto"`) must choose it and not the xtables NFQUEUE
# target through nft_compat, although nft_compat and xt_NFQUEUE are loaded too (init loads
# them): the start-up log line, `midctl status` and the rule the kernel holds all say so. Then the
# converse, so the checks are known to tell the two apart: with `nfqueue-encoding = "compat"` the
# same checks see the xt target. That the native queue carries packets is the scenarios' part
# (guest.sh's only-native ties their midcomd starts to this encoding). On this project's
# development VM the kernel has no nft_queue: the host's scenarios all run compat.
#
# nft in the guest has no xtables plugins, so it cannot translate a compat rule into the
# `queue num 0 bypass` the host's nft prints for it; `nft --debug=netlink` and `nft -j` show the
# expression the kernel holds either way.
source "$(dirname "$0")/../integration/lib.sh"
lab_init encoding

step "kernel $(uname -r): nft_queue, nft_compat and xt_NFQUEUE are all loaded"
modules=$(cut -d' ' -f1 /proc/modules)
for m in nft_queue nfnetlink_queue nft_compat xt_NFQUEUE; do
  expect_match "$modules" "^$m\$" "module $m"
done

lab_ns gw
# expect_rule ENCODING: what the kernel holds in chain enqueue, seen three ways.
expect_rule() {
  local listing netlink json
  listing=$(in_ns gw nft list ruleset 2>&1)
  netlink=$(in_ns gw nft --debug=netlink list chain inet midcom enqueue 2>&1)
  json=$(in_ns gw nft -j list chain inet midcom enqueue 2>&1)
  local kinds
  kinds=$($PY -c '
import json, sys
doc = json.loads(sys.argv[1])
kinds = set()
for o in doc["nftables"]:
    for e in o.get("rule", {}).get("expr", []):
        if "queue" in e: kinds.add("queue")
        if "xt" in e and e["xt"].get("name") == "NFQUEUE": kinds.add("xt-NFQUEUE")
print(" ".join(sorted(kinds)))' "$json") || fail "nft -j list chain inet midcom enqueue: $json"
  if [ "$1" = native ]; then
    expect_match "$netlink" "\[ queue num 0 " "netlink expression of the queue rule"
    expect_no_match "$netlink" "\[ target name NFQUEUE" "netlink expression of the queue rule"
    expect_eq "$kinds" queue "expressions in nft -j list chain inet midcom enqueue"
    expect_match "$listing" "queue (flags bypass )?(num|to) 0" "queue expression in nft list ruleset"
    expect_no_match "$listing" 'xt target "NFQUEUE"' "nft list ruleset"
    expect_no_match "$listing" "managed by iptables-nft" "nft list ruleset"
  else
    expect_match "$netlink" "\[ target name NFQUEUE rev 3 \]" "netlink expression of the queue rule"
    expect_no_match "$netlink" "\[ queue num " "netlink expression of the queue rule"
    expect_eq "$kinds" xt-NFQUEUE "expressions in nft -j list chain inet midcom enqueue"
    # nft prints the compat rule as `xt target "NFQUEUE"` or, built with libxtables as Debian's
    # is but without the plugin, "XT target NFQUEUE not found"; either way not as a queue.
    expect_match "$listing" 'xt target "NFQUEUE"|XT target NFQUEUE not found' "nft list ruleset"
    expect_no_match "$listing" "queue (flags bypass )?(num|to) 0" "nft list ruleset"
    expect_match "$listing" "managed by iptables-nft" "nft list ruleset"
  fi
  indent <<<"$(grep -E 'queue .*to|xt target|XT target' <<<"$listing")"
}

step "nfqueue-encoding auto (the default): midcomd chooses the native queue expression"
lab_midcomd gw "$(lab_signaling_conf gw gw1)"
started=$(grep "midcomd started: " "$LAB_DIR/gw-midcomd.log" || true)
indent <<<"$started"
expect_match "$started" "midcomd started: queue 0 .*\(native nft queue expression\)" "midcomd's start-up log line"
expect_no_match "$(cat "$LAB_DIR/gw-midcomd.log")" "nft_compat" "midcomd's log (no fallback)"
expect_match "$(midctl gw status)" "queue encoding: +native" "midctl status"
expect_rule native

step "the converse: nfqueue-encoding = \"compat\" gives the xt target, and the same checks see it"
kill -TERM "$MIDCOMD_PID"
for _ in $(seq 1 50); do kill -0 "$MIDCOMD_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$MIDCOMD_PID" 2>/dev/null && fail "midcomd did not stop within 5 s of SIGTERM"
conf=$(printf '[daemon]\nname = "gw1"\nnfqueue-encoding = "compat"\n\n[policy]\ndefault = "admit"\nunsignaled = "drop"\n' | lab_conf compat)
lab_midcomd gw "$conf"
started=$(grep "midcomd started: " "$LAB_DIR/gw-midcomd.log" || true)
indent <<<"$started"
expect_match "$started" "\(xtables NFQUEUE target via nft_compat\)" "midcomd's start-up log line with compat forced"
expect_match "$(midctl gw status)" "queue encoding: +compat" "midctl status with compat forced"
expect_rule compat
echo "native-encoding: all checks passed"
