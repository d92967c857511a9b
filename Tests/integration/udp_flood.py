#!/usr/bin/env python3
"""A bounded UDP flood for the pushback scenarios (stdlib only, IPv4).

  udp_flood.py DST PORT PREFIX --rate R --duration S [--size N] [--marks FILE]

Sends UDP datagrams to DST:PORT from every host address of PREFIX in turn (spoofed through a raw
socket with IP_HDRINCL; the kernel fills the IP checksum; UDP checksum 0 = none), at R per second
in bursts of 1 ms, for S seconds (at most 30). Every 0.5 s it appends "T SENT" (monotonic seconds,
datagrams so far) to FILE, so a test can tell how many were sent in any interval. Prints
"sent N in T s (R/s)" at the end.
"""
import argparse
import ipaddress
import socket
import struct
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dst")
    p.add_argument("port", type=int)
    p.add_argument("prefix")
    p.add_argument("--rate", type=float, default=10000)
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--marks")
    a = p.parse_args()
    hosts = list(ipaddress.ip_network(a.prefix).hosts())[:1024]
    dst = ipaddress.ip_address(a.dst)
    payload = b"\xa5" * max(0, a.size)
    # One prebuilt datagram per source: nothing is packed per packet.
    packets = []
    for index, src in enumerate(hosts):
        udp = struct.pack("!HHHH", 10000 + index, a.port, 8 + len(payload), 0) + payload
        packets.append(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src.packed, dst.packed) + udp)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    marks = open(a.marks, "a", buffering=1) if a.marks else None
    target = (a.dst, 0)
    per_ms = max(1, int(a.rate / 1000))
    start = time.monotonic()
    deadline = start + min(a.duration, 30.0)
    sent, index, next_mark, tick = 0, 0, start, start
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        if marks and now >= next_mark:
            marks.write(f"{now:.3f} {sent}\n")
            next_mark += 0.5
        if now < tick:
            time.sleep(tick - now)
            continue
        tick += 0.001
        for _ in range(per_ms):
            try:
                s.sendto(packets[index], target)
                sent += 1
            except OSError:
                pass  # a full device queue: the flood is best effort
            index = (index + 1) % len(packets)
    if marks:
        marks.write(f"{time.monotonic():.3f} {sent}\n")
    elapsed = time.monotonic() - start
    print(f"sent {sent} in {elapsed:.1f} s ({sent / max(elapsed, 1e-9):.0f}/s)")


if __name__ == "__main__":
    main()
