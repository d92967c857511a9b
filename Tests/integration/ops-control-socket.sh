#!/usr/bin/env bash
# Operations, control socket robustness (issue 13). With control groups set the socket is 0666, so
# any local user can connect. A user (uid 65534) opens 30 idle connections and keeps another alive
# with a blank line every 0.3 s: midcomd serves at most 4 connections per user (the others get
# one error line at once), closes a connection that sends no complete request within 2 s whatever
# blank lines it sends, logs the refusals, and root's `midctl status` answers within a second
# throughout.
source "$(dirname "$0")/lib.sh"
lab_init ctlsock

step "lab: one gateway with control groups (socket 0666)"
lab_ns gw
conf=$(lab_conf gw <<'CONF'
[daemon]
name = "gw1"
control-read-group = "4242"
CONF
)
lab_midcomd gw "$conf"
chmod 0755 "$LAB_DIR"
sock="$LAB_DIR/gw.sock"
expect_match "$(stat -c %a "$sock")" "^666$" "socket mode"

cat >"$LAB_DIR/hog.py" <<'PY'
import socket, sys, time
path, count, mode, duration = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
conns, refused = [], 0
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    conns.append(s)
time.sleep(0.5)
for s in conns:
    s.setblocking(False)
    try:
        data = s.recv(4096)
        if b"too many control connections" in data:
            refused += 1
    except BlockingIOError:
        pass
print(f"opened {count} refused {refused}", flush=True)
start = time.monotonic()
if mode == "trickle":
    s = conns[0]
    s.setblocking(True)
    s.settimeout(0.3)
    while time.monotonic() - start < duration:
        try:
            s.sendall(b"\n")
            if s.recv(1) == b"":
                print(f"closed after {time.monotonic() - start:.1f} s", flush=True)
                break
        except socket.timeout:
            continue
        except OSError:
            print(f"closed after {time.monotonic() - start:.1f} s", flush=True)
            break
    else:
        print("still open", flush=True)
else:
    time.sleep(duration)
PY

step "uid 65534: 30 idle connections; only 4 are served, the others are refused at once"
lab_bg gw "$LAB_DIR/hog.log" setpriv --reuid=65534 --regid=65534 --clear-groups $PY "$LAB_DIR/hog.py" "$sock" 30 idle 6
wait_for_match "$LAB_DIR/hog.log" "^opened 30 refused [0-9]+" 5
indent <"$LAB_DIR/hog.log"
expect_match "$(cat "$LAB_DIR/hog.log")" "^opened 30 refused 26$" "26 of 30 refused"

step "root's midctl status answers within a second meanwhile"
start=$(date +%s%N)
out=$(midctl gw status) || fail "midctl status: $out"
took=$(( ($(date +%s%N) - start) / 1000000 ))
step "answered in $took ms"
[ "$took" -le 1000 ] || fail "midctl status took $took ms"
wait_for_match "$LAB_DIR/gw-midcomd.log" "refused a connection: too many control connections from uid 65534" 2

step "a connection kept alive with blank lines is closed after 2 s"
sleep 2.5  # the idle ones are closed by now
lab_bg gw "$LAB_DIR/trickle.log" setpriv --reuid=65534 --regid=65534 --clear-groups $PY "$LAB_DIR/hog.py" "$sock" 1 trickle 6
wait_for_match "$LAB_DIR/trickle.log" "^closed after " 6
indent <"$LAB_DIR/trickle.log"
closed=$(sed -n 's/^closed after \([0-9.]*\) s$/\1/p' "$LAB_DIR/trickle.log")
$PY -c "import sys; sys.exit(0 if 1.0 <= float('$closed') <= 3.0 else 1)" || fail "closed after $closed s"
start=$(date +%s%N)
midctl gw status >/dev/null || fail "midctl status after the trickle"
took=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$took" -le 1000 ] || fail "midctl status took $took ms"
echo "ops-control-socket: all checks passed"
