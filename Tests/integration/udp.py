#!/usr/bin/env python3
"""Bounded UDP traffic for the integration tests (stdlib only).

  udp.py send DEST_ADDR DEST_PORT --sport N --count N [--size N] [--interval S]
  udp.py recv PORT --duration S [--bind ADDR]     prints: listening on ADDR:PORT once bound,
                                                  then received N from ADDR:PORT ...
"""
import argparse
import os
import socket
import sys
import time


def family_of(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def send(args):
    s = socket.socket(family_of(args.addr), socket.SOCK_DGRAM)
    s.bind(("::" if ":" in args.addr else "0.0.0.0", args.sport))
    payload = b"m" * args.size
    for _ in range(min(args.count, 100000)):
        s.sendto(payload, (args.addr, args.port))
        if args.interval:
            time.sleep(args.interval)
    print(f"sent {args.count}")


def recv(args):
    bind = args.bind or "0.0.0.0"
    s = socket.socket(family_of(bind), socket.SOCK_DGRAM)
    s.bind((bind, args.port))
    # lib.sh's lab_serve waits for this line: no test packet races the bind (slow hosts, QEMU).
    print(f"listening on {bind}:{args.port}", flush=True)
    # LAB_TIME_SCALE (lib.sh): a slow guest's sender may start seconds after this listener.
    scale = int(os.environ.get("LAB_TIME_SCALE", "1"))
    deadline = time.monotonic() + min(args.duration * scale, 120)
    count = 0
    peers = set()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            _, peer = s.recvfrom(65535)
        except socket.timeout:
            break
        count += 1
        peers.add(f"{peer[0]}:{peer[1]}")
    print(f"received {count} from {' '.join(sorted(peers)) or '-'}")
    sys.stdout.flush()


parser = argparse.ArgumentParser()
sub = parser.add_subparsers(dest="cmd", required=True)
p = sub.add_parser("send")
p.add_argument("addr")
p.add_argument("port", type=int)
p.add_argument("--sport", type=int, default=0)
p.add_argument("--count", type=int, default=10)
p.add_argument("--size", type=int, default=100)
p.add_argument("--interval", type=float, default=0.0)
p.set_defaults(fn=send)
p = sub.add_parser("recv")
p.add_argument("port", type=int)
p.add_argument("--duration", type=float, default=3.0)
p.add_argument("--bind")
p.set_defaults(fn=recv)
args = parser.parse_args()
args.fn(args)
