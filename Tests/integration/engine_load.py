#!/usr/bin/env python3
"""Load generators for the engine regression scenarios (stdlib only). Every mode is bounded in
count and time and ends on its own.

  engine_load.py setup DST --count N --first-port P [--lifetime S] [--window W] [--timeout S]
      signals N any-source-port UDP sessions "self:* -> DST:P+i" (raw CSP SETUPs: FLOW +
      LIFETIME, docs/PROTOCOL.md sections 3 and 5) to the responder at DST:7227, at most W in
      flight, resending unanswered ones after 1 s (same nonce, so a retransmission). Prints one
      line: "accepted A rejected R unanswered U seconds T".
  engine_load.py flood DST DPORT --count N [--first-sport S] [--rate PPS]
      sends one UDP datagram from each of N source ports S..S+N-1 to DST:DPORT (raw socket: no
      bind per port), so a gateway on the path creates N conntrack entries. Prints
      "sent N seconds T".
  engine_load.py notify PATH --duration S
      sd_notify receiver: binds a unix datagram socket at PATH, prints "listening on PATH" and
      then one line per datagram: "WALLCLOCK STATE" (e.g. "1700000000.123456 WATCHDOG=1").
  engine_load.py gaps LOG --from T0 --to T1
      the longest time between consecutive WATCHDOG=1 lines of LOG (as written by notify) inside
      [T0, T1], the window's edges counting as beats' neighbours (a daemon silent at T1 has a gap
      up to T1): "watchdogs N max_gap G at T".
"""
import argparse
import os
import random
import socket
import struct
import sys
import time

CSP_PORT = 7227
T_SETUP, T_ACCEPT, T_REJECT = 1, 2, 3
MAX_SECONDS = 120.0


def say(line):
    print(line)
    sys.stdout.flush()


def setup_message(sid, nonce, src, dst, dport, lifetime):
    flow = struct.pack("!BBHH4s4s", 17, 4, 0, dport, socket.inet_aton(src), socket.inet_aton(dst))
    body = struct.pack("!HH", 0x8001, len(flow)) + flow + struct.pack("!HHI", 0x0002, 4, lifetime)
    header = b"CS" + struct.pack("!BBBBH", 1, T_SETUP, 0, 0, 28 + len(body)) + struct.pack("!QQI", sid, nonce, 1)
    return header + body


def cmd_setup(a):
    deadline = time.monotonic() + min(a.timeout, MAX_SECONDS)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.connect((a.dst, CSP_PORT))
    src = s.getsockname()[0]
    s.setblocking(False)
    tag = random.getrandbits(24)
    # index -> (message, last send time); sid = tag << 40 | index
    waiting = {}
    todo = list(range(a.count))
    todo.reverse()
    accepted = rejected = 0
    begin = time.monotonic()
    while (todo or waiting) and time.monotonic() < deadline:
        now = time.monotonic()
        while todo and len(waiting) < a.window:
            i = todo.pop()
            sid = tag << 40 | i
            m = setup_message(sid, random.getrandbits(64), src, a.dst, a.first_port + i, a.lifetime)
            waiting[i] = [m, now]
            s.send(m)
        got = 0
        while True:
            try:
                r = s.recv(2048)
            except BlockingIOError:
                break
            got += 1
            if len(r) < 28 or r[:2] != b"CS":
                continue
            sid = struct.unpack("!Q", r[8:16])[0]
            i = sid & ((1 << 40) - 1)
            if sid >> 40 != tag or i not in waiting:
                continue
            del waiting[i]
            if r[3] == T_ACCEPT:
                accepted += 1
            else:
                rejected += 1
        if not got:
            for entry in waiting.values():
                if now - entry[1] > 1.0:
                    entry[1] = now
                    s.send(entry[0])
            time.sleep(0.002)
    say("accepted %d rejected %d unanswered %d seconds %.2f"
        % (accepted, rejected, len(waiting) + len(todo), time.monotonic() - begin))


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def cmd_flood(a):
    begin = time.monotonic()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((a.dst, a.dport))
    src = probe.getsockname()[0]
    probe.close()
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    pseudo = socket.inet_aton(src) + socket.inet_aton(a.dst)
    payload = b"ct"
    sent = 0
    interval = 1.0 / a.rate if a.rate > 0 else 0
    for k in range(a.count):
        if time.monotonic() - begin > MAX_SECONDS:
            break
        sport = a.first_sport + k
        udp = struct.pack("!HHHH", sport, a.dport, 8 + len(payload), 0) + payload
        csum = checksum(pseudo + struct.pack("!BBH", 0, 17, len(udp)) + udp) or 0xFFFF
        udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
        while True:
            try:
                s.sendto(udp, (a.dst, 0))
                break
            except (BlockingIOError, OSError):
                time.sleep(0.001)
        sent += 1
        if interval and sent % 100 == 0:
            ahead = begin + sent * interval - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    say("sent %d seconds %.2f" % (sent, time.monotonic() - begin))


def cmd_notify(a):
    try:
        os.unlink(a.path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(a.path)
    s.settimeout(0.2)
    say("listening on %s" % a.path)
    end = time.monotonic() + min(a.duration, MAX_SECONDS)
    while time.monotonic() < end:
        try:
            data = s.recv(4096)
        except socket.timeout:
            continue
        stamp = time.time()
        for state in data.decode(errors="replace").split("\n"):
            if state:
                say("%.6f %s" % (stamp, state))
    s.close()
    os.unlink(a.path)


def cmd_gaps(a):
    beats = []
    with open(a.log) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and parts[1] == "WATCHDOG=1":
                t = float(parts[0])
                if a.start <= t <= a.end:
                    beats.append(t)
    points = [a.start] + beats + [a.end]
    gap, at = max((points[k + 1] - points[k], points[k]) for k in range(len(points) - 1))
    say("watchdogs %d max_gap %.2f at %.2f" % (len(beats), gap, at - a.start))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    q = sub.add_parser("setup")
    q.add_argument("dst")
    q.add_argument("--count", type=int, required=True)
    q.add_argument("--first-port", type=int, required=True)
    q.add_argument("--lifetime", type=int, default=8)
    q.add_argument("--window", type=int, default=128)
    q.add_argument("--timeout", type=float, default=30)
    q = sub.add_parser("flood")
    q.add_argument("dst")
    q.add_argument("dport", type=int)
    q.add_argument("--count", type=int, required=True)
    q.add_argument("--first-sport", type=int, default=20000)
    q.add_argument("--rate", type=float, default=0)
    q = sub.add_parser("notify")
    q.add_argument("path")
    q.add_argument("--duration", type=float, required=True)
    q = sub.add_parser("gaps")
    q.add_argument("log")
    q.add_argument("--from", dest="start", type=float, required=True)
    q.add_argument("--to", dest="end", type=float, required=True)
    a = p.parse_args()
    if a.mode == "setup" and not (0 < a.count and a.first_port + a.count <= 65536):
        p.error("ports first-port..first-port+count-1 must be valid")
    if a.mode == "flood" and not (0 < a.count and a.first_sport + a.count <= 65536):
        p.error("source ports first-sport..first-sport+count-1 must be valid")
    {"setup": cmd_setup, "flood": cmd_flood, "notify": cmd_notify, "gaps": cmd_gaps}[a.mode](a)


if __name__ == "__main__":
    main()
