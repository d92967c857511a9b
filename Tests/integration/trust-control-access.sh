#!/usr/bin/env bash
# Trust: who may use the control socket. Root may do everything; with control-read-group and
# control-admin-group set, members of the first may only read (status, sessions, show), members of
# the second may also change (delete, flush), everyone else is refused — decided from the peer's
# credentials as the kernel reports them, tested with a non-root user (setpriv, uid 65534).
source "$(dirname "$0")/lib.sh"
lab_init ctlaccess

step "lab: one gateway, control groups 4242 (read) and 4343 (admin)"
lab_ns gw
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"
control-read-group = "4242"
control-admin-group = "4343"
CONF
)
lab_midcomd gw "$conf"
chmod 0755 "$LAB_DIR"
sock="$LAB_DIR/gw.sock"
expect_match "$(stat -c %a "$sock")" "^666$" "socket mode with control groups"

# as GROUPS ARGS...: midctl as uid 65534 with the given supplementary groups ("" for none);
# leaves the output in OUT and the status in RC.
as() {
  local groups=$1; shift
  local g=(--clear-groups); [ -n "$groups" ] && g=(--groups "$groups")
  set +e; OUT=$(setpriv --reuid=65534 --regid=65534 "${g[@]}" "$BIN/midctl" --socket "$sock" "$@" 2>&1); RC=$?; set -e
}

step "a user in neither group is refused, even reading"
as "" status
[ "$RC" -ne 0 ] || fail "status without a group succeeded: $OUT"
expect_match "$OUT" "permission denied: 'status' needs root, or a member of control-read-group" "refusal"

step "a member of the read group reads, but cannot change"
as 4242 status
expect_eq "$RC" 0 "status as a reader: $OUT"
expect_match "$OUT" "sessions" "status output"
as 4242 sessions
expect_eq "$RC" 0 "sessions as a reader: $OUT"
as 4242 flush
[ "$RC" -ne 0 ] || fail "flush as a reader succeeded: $OUT"
expect_match "$OUT" "permission denied: 'flush' needs root, or a member of control-admin-group" "refusal of flush"

step "a member of the admin group may change; root may everything"
as 4343 flush
expect_eq "$RC" 0 "flush as an admin: $OUT"
expect_eq "$("$BIN/midctl" --socket "$sock" flush >/dev/null 2>&1; echo $?)" 0 "flush as root"
expect_match "$(grep -c 'permission denied' "$LAB_DIR/gw-midcomd.log" || true)" "^[2-9]" "refusals are logged"

step "an unknown group name is a configuration error that names the key"
bad=$(lab_conf bad <<'CONF'
[daemon]
control-read-group = "no-such-group-midcom"
CONF
)
set +e; out=$("$BIN/midcomd" --check --config "$bad" 2>&1); rc=$?; set -e
expect_eq "$rc" 78 "exit status of --check"
expect_match "$out" "control-read-group 'no-such-group-midcom': no such group" "message"
