#!/usr/bin/env bash
# Bad configuration, missing privilege, missing ruleset, a second daemon: each gives one clear
# sentence and a meaningful exit status, and never a stack of netlink errors.
source "$(dirname "$0")/lib.sh"
lab_init startup-errors
lab_ns gw

run() { set +e; out=$("$@" 2>&1); rc=$?; set -e; }

step "configuration error names file, line and fix (exit 78)"
printf '[daemon]\nqueue = 1\nqeue-count = 2\n' >"$LAB_DIR/bad.conf"
run "$BIN/midcomd" --config "$LAB_DIR/bad.conf" --check
expect_eq "$rc" 78 "exit status for a bad configuration"
expect_match "$out" "bad.conf:3: unknown key 'qeue-count' in \[daemon\] \(fix: did you mean 'queue-count'" "config error"
run "$BIN/midcomd" --config "$ROOT/docs/examples/midcomd.conf" --check
expect_eq "$rc" 0 "the shipped example configuration checks"

step "missing ruleset"
run in_ns gw "$BIN/midcomd" --config /dev/null --control-socket "$LAB_DIR/gw.sock"
expect_eq "$rc" 1 "exit status without the ruleset"
expect_match "$out" "table inet midcom does not exist: load the Midcom ruleset first" "missing table message"
expect_eq "$(echo "$out" | wc -l)" 1 "one line"

step "a ruleset of an older revision (no revision comment: port-7227 answers not tied to conntrack) is refused"
sed '/comment "midcom ruleset revision/d' "$ROOT/nft-rules/midcom.nft" >"$LAB_DIR/rev1.nft"
in_ns gw nft -f "$LAB_DIR/rev1.nft"
run in_ns gw "$BIN/midcomd" --config /dev/null --control-socket "$LAB_DIR/gw.sock"
expect_eq "$rc" 1 "exit status with a revision-1 ruleset"
expect_match "$out" "was loaded from ruleset revision 1, this midcomd needs revision 6: reload nft-rules/midcom.nft" "revision message"
expect_eq "$(echo "$out" | wc -l)" 1 "one line"
in_ns gw nft delete table inet midcom

step "a ruleset that lacks a set this midcomd programs (drop-cache sets) is refused with the fix"
sed '/set drop4 {/,/}/d; /set drop6 {/,/}/d; /@drop4/d; /@drop6/d' "$ROOT/nft-rules/midcom.nft" >"$LAB_DIR/old.nft"
in_ns gw nft -f "$LAB_DIR/old.nft"
run in_ns gw "$BIN/midcomd" --config /dev/null --control-socket "$LAB_DIR/gw.sock"
expect_eq "$rc" 1 "exit status with an old ruleset"
expect_match "$out" "has no set drop4: it was loaded from an older ruleset; reload nft-rules/midcom.nft" "old ruleset message"
expect_eq "$(in_ns gw nft list chain inet midcom enqueue 2>/dev/null | grep -cE "$(queue_rule '[0-9]+')" || true)" 0 "no queue rule left behind"
in_ns gw nft delete table inet midcom

step "missing privilege"
in_ns gw nft -f "$ROOT/nft-rules/midcom.nft"
run in_ns gw setpriv --reuid=65534 --regid=65534 --clear-groups "$BIN/midcomd" --config /dev/null --control-socket "$LAB_DIR/x.sock"
expect_eq "$rc" 1 "exit status without privilege"
expect_match "$out" "needs CAP_NET_ADMIN" "privilege message"
expect_eq "$(echo "$out" | wc -l)" 1 "one line"

step "a second daemon on the same table is refused, the first keeps working"
lab_midcomd gw
run in_ns gw "$BIN/midcomd" --config /dev/null --control-socket "$LAB_DIR/second.sock"
expect_eq "$rc" 1 "exit status of the second daemon"
expect_match "$out" "another midcomd already serves table inet midcom" "table lock message"
expect_eq "$(echo "$out" | wc -l)" 1 "one line"

step "a daemon on another table but the same queue is refused by the queue bind"
in_ns gw nft -f - <<'NFT'
table inet other {
	comment "midcom ruleset revision 6"
	set csp_ports { type inet_service; }
	chain enqueue { }
}
NFT
printf '[daemon]\ntable = "other"\n' >"$LAB_DIR/other.conf"
run in_ns gw "$BIN/midcomd" --config "$LAB_DIR/other.conf" --control-socket "$LAB_DIR/third.sock"
expect_eq "$rc" 1 "exit status of the third daemon"
expect_match "$out" "already bound by another process" "queue busy message"
in_ns gw nft delete table inet other
expect_match "$(midctl gw status)" "queue encoding: (compat|native)" "first daemon still answers"
expect_match "$(in_ns gw nft list chain inet midcom enqueue 2>/dev/null)" "$(queue_rule 0)" "queue rule of the first daemon kept"

step "queue-count = 2: one reader per queue, fan-out rule over both"
kill -TERM "$MIDCOMD_PID"; wait "$MIDCOMD_PID" 2>/dev/null || true
printf '[daemon]\nqueue = 4\nqueue-count = 2\n' >"$LAB_DIR/multi.conf"
lab_midcomd gw "$LAB_DIR/multi.conf"
expect_match "$(in_ns gw nft list chain inet midcom enqueue 2>/dev/null)" "$(queue_rule 4-5)" "fan-out rule"
bound=$(in_ns gw cat /proc/net/netfilter/nfnetlink_queue | awk '{print $1}' | sort -n | tr '\n' ' ')
# 4 and 5 for the fan-out, 6 the proved-sources queue (the number after them).
expect_eq "$bound" "4 5 6 " "queues bound in the namespace"
expect_match "$(in_ns gw nft list chain inet midcom enqueue_proved 2>/dev/null)" "$(queue_rule 6)" "proved-sources queue rule"
expect_match "$(midctl gw status)" "queues: +4 5" "midctl status lists both queues"
step "flowtable-devices: a missing interface, or a kernel without flowtables, is one sentence and leaves nothing behind"
kill -TERM "$MIDCOMD_PID"; wait "$MIDCOMD_PID" 2>/dev/null || true
printf '[daemon]\nflowtable-devices = ["nosuch0"]\n' >"$LAB_DIR/ft-missing.conf"
run in_ns gw "$BIN/midcomd" --config "$LAB_DIR/ft-missing.conf" --control-socket "$LAB_DIR/ft.sock"
expect_eq "$rc" 1 "exit status with a missing flowtable device"
expect_match "$out" "flowtable-devices in \[daemon\] names 'nosuch0', which is not an interface here" "missing device message"
expect_eq "$(echo "$out" | wc -l)" 1 "one line"
expect_eq "$(in_ns gw nft list chain inet midcom enqueue 2>/dev/null | grep -cE "$(queue_rule '[0-9]+')" || true)" 0 "no queue rule left behind"
in_ns gw ip link add ft0 type veth peer name ft1
in_ns gw ip link set ft0 up
printf '[daemon]\nflowtable-devices = ["ft0"]\n' >"$LAB_DIR/ft.conf"
if in_ns gw nft -f - 2>/dev/null <<'NFT'
table inet flowtable_probe { flowtable f { hook ingress priority 0; devices = { ft0 }; } }
NFT
then
  in_ns gw nft delete table inet flowtable_probe
  echo "  (this kernel has flowtables: midcomd must link one)"
  lab_midcomd gw "$LAB_DIR/ft.conf"
  expect_match "$(in_ns gw nft list flowtable inet midcom fastpath)" 'devices = \{ ft0 \}' "flowtable on ft0"
  expect_match "$(in_ns gw nft list chain inet midcom established)" "goto offload_admitted" "established links the candidates"
  expect_match "$(in_ns gw nft list chain inet midcom to_flowtable)" "flow add @fastpath" "candidates go to the flowtable"
  kill -TERM "$MIDCOMD_PID"; wait "$MIDCOMD_PID" 2>/dev/null || true
  lab_midcomd gw
  expect_eq "$(in_ns gw nft list flowtables 2>/dev/null | grep -c fastpath || true)" 0 "a start without flowtable-devices removes it"
  expect_eq "$(in_ns gw nft list chain inet midcom established | grep -c goto || true)" 0 "and its link"
else
  echo "  (this kernel has no flowtables: midcomd must say so)"
  run in_ns gw "$BIN/midcomd" --config "$LAB_DIR/ft.conf" --control-socket "$LAB_DIR/ft.sock"
  expect_eq "$rc" 1 "exit status on a kernel without flowtables"
  expect_match "$out" "cannot set up the flowtable on ft0: .*this kernel has no nftables flowtables \(CONFIG_NF_FLOW_TABLE" "no-flowtable message"
  expect_eq "$(echo "$out" | wc -l)" 1 "one line"
  expect_eq "$(in_ns gw nft list chain inet midcom enqueue 2>/dev/null | grep -cE "$(queue_rule '[0-9]+')" || true)" 0 "no queue rule left behind"
  expect_eq "$(in_ns gw nft list chain inet midcom established | grep -c goto || true)" 0 "established left empty"
fi
echo "startup-errors: all checks passed"
