#!/usr/bin/env python3
"""Raw CSP messages for the integration tests (stdlib only; docs/PROTOCOL.md section 3).

Builds a 28-octet CSP header plus TLVs and sends it as one UDP datagram from a chosen source
port, or receives (and optionally answers) such datagrams. Every mode ends on its own.

  craft.py send ADDR PORT [--sport N] [--bind ADDR] [--type T] [--flags F] [--result R]
                [--session HEX] [--nonce HEX] [--seq N] [--lifetime S]
                [--flow PROTO,SRC,SPORT,DST,DPORT] [--tlv TYPE=HEX ...] [--size N] [--wait S]
      sends one message: "sent N octets type T session S to ADDR:PORT from port P";
      --size pads with a non-critical unknown TLV (0x7001) so the whole message is N octets;
      --wait S then prints each reply on the same socket ("reply N octets from A:P type T ...")
      and "replies K" at the end
  craft.py recv PORT [--bind ADDR] [--duration S] [--answer T]
      prints "listening on udp ADDR PORT", then per datagram
      "recv N octets from ADDR:PORT type T session S" ("type -" when it is not CSP), and
      "received K" at the end; --answer T answers each CSP datagram from the same socket with a
      message of type T that echoes its session, nonce and sequence (LIFETIME 30 included)

Numbers accept 0x prefixes. Python use: `from craft import message, tlv, flow_tlv`.
"""
import argparse
import ipaddress
import os
import socket
import struct
import sys
import time

MAX_SECONDS = 60.0
PROTOS = {"tcp": 6, "udp": 17, "sctp": 132}


def tlv(kind, value):
    """One TLV: 16-bit type (bit 15 = critical), 16-bit value length, value."""
    return struct.pack("!HH", kind, len(value)) + value


def flow_tlv(proto, src, sport, dst, dport):
    """FLOW (0x8001): proto family srcPort dstPort src dst."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    number = PROTOS[proto] if proto in PROTOS else int(proto)
    return tlv(0x8001, struct.pack("!BBHH", number, s.version, sport, dport) + s.packed + d.packed)


def lifetime_tlv(seconds):
    return tlv(0x0002, struct.pack("!I", seconds))


def message(kind, tlvs=b"", session=0, nonce=0, seq=1, flags=0, result=0, size=None):
    """A whole CSP message; with size, padded by a non-critical unknown TLV to exactly size octets."""
    if size is not None:
        pad = size - 28 - len(tlvs) - 4
        if pad < 0:
            raise ValueError(f"--size {size} is smaller than the message")
        tlvs += tlv(0x7001, b"\x00" * pad)
    length = 28 + len(tlvs)
    return struct.pack("!2sBBBBHQQI", b"CS", 1, kind, flags, result, length, session, nonce, seq) + tlvs


def describe(data):
    """(type, session, nonce, seq) of a CSP message, or None when it is not CSP."""
    if len(data) < 28 or data[:2] != b"CS":
        return None
    _, _, kind, _, _, _, session, nonce, seq = struct.unpack("!2sBBBBHQQI", data[:28])
    return kind, session, nonce, seq


def text(data):
    d = describe(data)
    return f"type {d[0]} session {d[1]:016x}" if d else "type - session -"


def udp_socket(address, port, bind=None):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((bind or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
    return s


def say(line):
    print(line)
    sys.stdout.flush()


def send(args):
    tlvs = b""
    if args.flow:
        proto, src, sport, dst, dport = args.flow.split(",")
        tlvs += flow_tlv(proto, src, int(sport), dst, int(dport))
    if args.lifetime is not None:
        tlvs += lifetime_tlv(args.lifetime)
    for item in args.tlv:
        kind, _, value = item.partition("=")
        tlvs += tlv(int(kind, 0), bytes.fromhex(value))
    session = int(args.session, 16) if args.session else int.from_bytes(os.urandom(8), "big")
    nonce = int(args.nonce, 16) if args.nonce else int.from_bytes(os.urandom(8), "big")
    data = message(args.type, tlvs, session, nonce, args.seq, args.flags, args.result, args.size)
    s = udp_socket(args.addr, args.sport, args.bind)
    s.sendto(data, (args.addr, args.port))
    say(f"sent {len(data)} octets {text(data)} to {args.addr}:{args.port} from port {s.getsockname()[1]}")
    if args.wait:
        deadline, replies = time.monotonic() + min(args.wait, MAX_SECONDS), 0
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                reply, peer = s.recvfrom(65535)
            except socket.timeout:
                break
            replies += 1
            say(f"reply {len(reply)} octets from {peer[0]}:{peer[1]} {text(reply)}")
        say(f"replies {replies}")


def recv(args):
    bind = args.bind or "0.0.0.0"
    s = udp_socket(bind, args.port, bind)
    say(f"listening on udp {bind} {args.port}")
    deadline, count = time.monotonic() + min(args.duration, MAX_SECONDS), 0
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            data, peer = s.recvfrom(65535)
        except socket.timeout:
            break
        count += 1
        say(f"recv {len(data)} octets from {peer[0]}:{peer[1]} {text(data)}")
        d = describe(data)
        if args.answer is not None and d:
            s.sendto(message(args.answer, lifetime_tlv(30), d[1], d[2], d[3]), peer[:2])
    say(f"received {count}")


parser = argparse.ArgumentParser(description="raw CSP datagrams (docs/PROTOCOL.md section 3)")
sub = parser.add_subparsers(dest="cmd", required=True)
number = lambda v: int(v, 0)  # noqa: E731
p = sub.add_parser("send")
p.add_argument("addr")
p.add_argument("port", type=int)
p.add_argument("--sport", type=int, default=0)
p.add_argument("--bind")
p.add_argument("--type", type=number, default=1)
p.add_argument("--flags", type=number, default=0)
p.add_argument("--result", type=number, default=0)
p.add_argument("--session")
p.add_argument("--nonce")
p.add_argument("--seq", type=int, default=1)
p.add_argument("--lifetime", type=int)
p.add_argument("--flow")
p.add_argument("--tlv", action="append", default=[])
p.add_argument("--size", type=int)
p.add_argument("--wait", type=float, default=0.0)
p.set_defaults(fn=send)
p = sub.add_parser("recv")
p.add_argument("port", type=int)
p.add_argument("--bind")
p.add_argument("--duration", type=float, default=3.0)
p.add_argument("--answer", type=number)
p.set_defaults(fn=recv)

if __name__ == "__main__":
    args = parser.parse_args()
    args.fn(args)
