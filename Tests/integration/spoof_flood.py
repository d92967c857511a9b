#!/usr/bin/env python3
"""Spoofed CSP SETUP flood for the trust tests and the bench (stdlib only, IPv4).

  spoof_flood.py DST PREFIX --rate R --duration S [--dport 7227] [--flow-port P]

Sends SETUPs to DST:7227 from random source addresses inside PREFIX (e.g. 172.16.0.0/12), each
with a FLOW from that address to DST:P, through a raw socket (IP_HDRINCL; the kernel fills the
IP checksum; UDP checksum 0 = none). --rate 0 sends as fast as it can. Ends after S seconds
(at most 60) and prints "sent N in T s (R/s)".
"""
import argparse
import ipaddress
import os
import random
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from craft import flow_tlv, lifetime_tlv, message  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dst")
    p.add_argument("prefix")
    p.add_argument("--rate", type=float, default=0)
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--dport", type=int, default=7227)
    p.add_argument("--flow-port", type=int, default=5000)
    a = p.parse_args()
    net = ipaddress.ip_network(a.prefix)
    base, size = int(net.network_address), net.num_addresses
    dst = ipaddress.ip_address(a.dst)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    # One template per packet shape; the source address is patched in per packet (IP header
    # bytes 12..16 and the FLOW's source inside the CSP payload).
    rng = random.Random(os.getpid())
    deadline = time.monotonic() + min(a.duration, 60.0)
    sent, start = 0, time.monotonic()
    interval = 1.0 / a.rate if a.rate > 0 else 0.0
    next_at = start
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        if interval:
            if now < next_at:
                time.sleep(min(next_at - now, 0.01))
                continue
            next_at += interval
        src = ipaddress.ip_address(base + rng.randrange(1, size - 1))
        session, nonce = rng.getrandbits(64), rng.getrandbits(64)
        payload = message(1, flow_tlv("udp", str(src), rng.randrange(1024, 65535), str(dst), a.flow_port)
                          + lifetime_tlv(60), session, nonce, 1, 0x02)
        sport = rng.randrange(1024, 65535)
        udp = struct.pack("!HHHH", sport, a.dport, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src.packed, dst.packed)
        try:
            s.sendto(ip + udp, (a.dst, 0))
            sent += 1
        except OSError:
            pass  # a full device queue: the flood is best effort
    elapsed = time.monotonic() - start
    print(f"sent {sent} in {elapsed:.1f} s ({sent / max(elapsed, 1e-9):.0f}/s)")


if __name__ == "__main__":
    main()
