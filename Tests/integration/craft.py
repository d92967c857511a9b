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
      and "replies K" at the end; with --respond, a CHALLENGE (type 6) for the message is answered
      as a host does (docs/PROTOCOL.md 6.6): RESPONSE (type 7, same session, nonce and sequence,
      the CHALLENGE-TOKEN echoed) to the CHALLENGE's source, then the message again to ADDR:PORT
      ("responded to the challenge from A:P", at most 8 times)
  craft.py recv PORT [--bind ADDR] [--duration S] [--answer T]
      prints "listening on udp ADDR PORT", then per datagram
      "recv N octets from ADDR:PORT type T session S" ("type -" when it is not CSP), and
      "received K" at the end; --answer T answers each CSP datagram from the same socket with a
      message of type T that echoes its session, nonce and sequence (LIFETIME 30 included)

  craft.py spoof SRC SPORT DST DPORT --iface IF --mac MAC [--type T] [--flags F] [--result R]
                [--session HEX] [--nonce HEX] [--seq N] [--lifetime S]
                [--flow PROTO,SRC,SPORT,DST,DPORT] [--tlv TYPE=HEX ...] [--count N]
      sends the message with a FORGED source SRC:SPORT to DST:DPORT as a raw Ethernet frame out of
      IF to the next hop MAC (AF_PACKET: no route lookup, so any source address, even toward the
      sender's own address through the gateway); IPv4 or IPv6 after SRC/DST. One line per frame:
      "spoofed N octets type T session S nonce X from SRC:SPORT to DST:DPORT via IF"; --count N
      sends N frames, each with a new random nonce unless --nonce is given

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


def message_tlvs(data):
    """(type, value) of each top-level TLV of a whole CSP message (stops at a truncated TLV)."""
    offset = 28
    while offset + 4 <= len(data):
        kind, length = struct.unpack("!HH", data[offset:offset + 4])
        if offset + 4 + length > len(data):
            return
        yield kind, data[offset + 4:offset + 4 + length]
        offset += 4 + length


def request_tlvs(args):
    """The TLVs given by --flow, --lifetime and --tlv (in that order)."""
    tlvs = b""
    if args.flow:
        proto, src, sport, dst, dport = args.flow.split(",")
        tlvs += flow_tlv(proto, src, int(sport), dst, int(dport))
    if args.lifetime is not None:
        tlvs += lifetime_tlv(args.lifetime)
    for item in args.tlv:
        kind, _, value = item.partition("=")
        tlvs += tlv(int(kind, 0), bytes.fromhex(value))
    return tlvs


def send(args):
    tlvs = request_tlvs(args)
    session = int(args.session, 16) if args.session else int.from_bytes(os.urandom(8), "big")
    nonce = int(args.nonce, 16) if args.nonce else int.from_bytes(os.urandom(8), "big")
    data = message(args.type, tlvs, session, nonce, args.seq, args.flags, args.result, args.size)
    s = udp_socket(args.addr, args.sport, args.bind)
    for _ in range(max(1, min(args.count, 1000))):
        s.sendto(data, (args.addr, args.port))
    say(f"sent {len(data)} octets {text(data)} to {args.addr}:{args.port} from port {s.getsockname()[1]}")
    if args.wait:
        deadline, replies, responded = time.monotonic() + min(args.wait, MAX_SECONDS), 0, 0
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                reply, peer = s.recvfrom(65535)
            except socket.timeout:
                break
            replies += 1
            say(f"reply {len(reply)} octets from {peer[0]}:{peer[1]} {text(reply)}")
            d = describe(reply)
            if args.respond and responded < 8 and d and d[0] == 6 and d[1:3] == (session, nonce):
                token = next((v for k, v in message_tlvs(reply) if k == 0x800D), None)
                if token is not None:
                    responded += 1
                    s.sendto(message(7, tlv(0x800D, token), session, nonce, args.seq), peer[:2])
                    s.sendto(data, (args.addr, args.port))
                    say(f"responded to the challenge from {peer[0]}:{peer[1]}")
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


def checksum(data):
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_udp(src, sport, dst, dport, payload):
    """(ethertype, IP packet) carrying one UDP datagram from src:sport to dst:dport."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:
        raise ValueError(f"{src} and {dst} are of different families")
    length = 8 + len(payload)
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, 17, length)
    else:
        pseudo = s.packed + d.packed + struct.pack("!IxxxB", length, 17)
    udp = struct.pack("!HHHH", sport, dport, length, 0) + payload
    udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    if s.version == 4:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, int.from_bytes(os.urandom(2), "big"), 0, 64, 17, 0,
                             s.packed, d.packed)
        header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
        return 0x0800, header + udp
    return 0x86DD, struct.pack("!IHBB16s16s", 6 << 28, length, 17, 64, s.packed, d.packed) + udp


def spoof(args):
    tlvs = request_tlvs(args)
    session = int(args.session, 16) if args.session else int.from_bytes(os.urandom(8), "big")
    with open(f"/sys/class/net/{args.iface}/address") as f:
        own_mac = bytes.fromhex(f.read().strip().replace(":", ""))
    next_hop = bytes.fromhex(args.mac.replace(":", ""))
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((args.iface, 0))
    for _ in range(max(1, min(args.count, 1000))):
        nonce = int(args.nonce, 16) if args.nonce else int.from_bytes(os.urandom(8), "big")
        data = message(args.type, tlvs, session, nonce, args.seq, args.flags, args.result)
        ethertype, packet = ip_udp(args.src, args.sport, args.dst, args.dport, data)
        s.send(next_hop + own_mac + struct.pack("!H", ethertype) + packet)
        say(f"spoofed {len(data)} octets {text(data)} nonce {nonce:016x} from {args.src}:{args.sport} "
            f"to {args.dst}:{args.dport} via {args.iface}")


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
p.add_argument("--respond", action="store_true")
p.add_argument("--count", type=int, default=1, help="send the datagram this many times (at most 1000)")
p.set_defaults(fn=send)
p = sub.add_parser("recv")
p.add_argument("port", type=int)
p.add_argument("--bind")
p.add_argument("--duration", type=float, default=3.0)
p.add_argument("--answer", type=number)
p.set_defaults(fn=recv)
p = sub.add_parser("spoof")
p.add_argument("src")
p.add_argument("sport", type=int)
p.add_argument("dst")
p.add_argument("dport", type=int)
p.add_argument("--iface", required=True)
p.add_argument("--mac", required=True)
p.add_argument("--type", type=number, default=1)
p.add_argument("--flags", type=number, default=0)
p.add_argument("--result", type=number, default=0)
p.add_argument("--session")
p.add_argument("--nonce")
p.add_argument("--seq", type=int, default=1)
p.add_argument("--lifetime", type=int)
p.add_argument("--flow")
p.add_argument("--tlv", action="append", default=[])
p.add_argument("--count", type=int, default=1)
p.set_defaults(fn=spoof)

# ---------------------------------------------------------------------------------------------
# Capture and replay (trust tests: trust-signatures.sh, trust-replay.sh). Added modes only; the
# modes above keep their behaviour.
#
#   craft.py capture --out FILE [--port 7227] [--duration S] [--count N]
#       captures every UDP datagram to or from PORT on every interface of the current network
#       namespace (AF_PACKET, both directions), prints "capturing on all interfaces port PORT",
#       appends one JSON object per datagram to FILE as it arrives (keys: if, dir ("in" or
#       "out"), src, sport, dst, dport, type, session, nonce, seq, flags, hex) and prints
#       "captured K" at the end
#   craft.py replay FILE --type T [--session HEX] [--seq N] [--if IF] [--dir in|out]
#                   [--flip-dport] [--wait S]
#       sends the exact UDP payload of the last matching captured datagram again, from its
#       original source address and port (a UDP socket bound to them: run it in that host's
#       namespace) to its original destination; prints "replayed N octets type T session S seq Q
#       from A:P to B:P"; --flip-dport first flips the lowest bit of FLOW's destination port
#       (an alteration after signing); --wait S then prints each reply as
#       "reply N octets from A:P type T result R session S reason TEXT" and "replies K"
#   craft.py forge ADDR PORT --flow PROTO,SRC,SPORT,DST,DPORT [--lifetime S] [--sport N] [--wait S]
#       a SETUP that claims a signature: signed flag, IDENTITY of 32 random octets, TIMESTAMP now,
#       SIGNATURE of 64 random octets (last); prints "sent ..." and the replies as replay does
import json  # noqa: E402

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def tlvs_of(data):
    """(type, value) of each TLV in a TLV area; stops at an overrun."""
    out, i = [], 0
    while i + 4 <= len(data):
        kind, size = struct.unpack("!HH", data[i:i + 4])
        if i + 4 + size > len(data):
            break
        out.append((kind, data[i + 4:i + 4 + size]))
        i += 4 + size
    return out


def reason_of(data):
    """REASON text at top level or nested in a MIDDLEBOX-RECORD, or '-'."""
    if len(data) < 28:
        return "-"
    for kind, value in tlvs_of(data[28:]):
        if kind == 0x0005 and len(value) >= 6:
            return value[6:].decode("utf-8", "replace")
        if kind == 0x0009 and len(value) >= 18:
            for nested, v in tlvs_of(value[18:]):
                if nested == 0x0005 and len(v) >= 6:
                    return v[6:].decode("utf-8", "replace")
    return "-"


def reply_text(data, peer):
    d = describe(data)
    result = data[5] if d else "-"
    return f"reply {len(data)} octets from {peer[0]}:{peer[1]} {text(data)} result {result} reason {reason_of(data)}"


def wait_replies(s, seconds):
    deadline, replies = time.monotonic() + min(seconds, MAX_SECONDS), 0
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            reply, peer = s.recvfrom(65535)
        except (socket.timeout, ConnectionRefusedError):
            break
        replies += 1
        say(reply_text(reply, peer))
    say(f"replies {replies}")


def udp_of(packet):
    """(src, sport, dst, dport, payload) of an IPv4 or IPv6 UDP packet, or None."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        ihl = (packet[0] & 0x0F) * 4
        if packet[9] != 17 or struct.unpack("!H", packet[6:8])[0] & 0x3FFF:
            return None  # not UDP, or a fragment
        src, dst, rest = packet[12:16], packet[16:20], packet[ihl:]
    elif version == 6 and len(packet) >= 40:
        if packet[6] != 17:
            return None
        src, dst, rest = packet[8:24], packet[24:40], packet[40:]
    else:
        return None
    if len(rest) < 8:
        return None
    sport, dport, length = struct.unpack("!HHH", rest[:6])
    return (str(ipaddress.ip_address(src)), sport, str(ipaddress.ip_address(dst)), dport, rest[8:max(8, length)])


def capture(args):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    say(f"capturing on all interfaces port {args.port}")
    deadline, count = time.monotonic() + min(args.duration, 120.0), 0
    with open(args.out, "a") as out:
        while count < args.count and (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                packet, address = s.recvfrom(65535)
            except socket.timeout:
                break
            if address[0] == "lo":
                continue
            udp = udp_of(packet)
            if not udp or args.port not in (udp[1], udp[3]):
                continue
            src, sport, dst, dport, payload = udp
            d = describe(payload) or (None, 0, 0, 0)
            record = {
                "if": address[0], "dir": "out" if address[2] == PACKET_OUTGOING else "in",
                "src": src, "sport": sport, "dst": dst, "dport": dport,
                "type": d[0], "session": f"{d[1]:016x}", "nonce": f"{d[2]:016x}", "seq": d[3],
                "flags": payload[4] if len(payload) > 4 else None, "hex": payload.hex(),
            }
            out.write(json.dumps(record) + "\n")
            out.flush()
            count += 1
            say(f"{record['if']} {record['dir']} {src}:{sport} > {dst}:{dport} {len(payload)} octets "
                f"type {d[0]} session {record['session']} seq {d[3]}")
    say(f"captured {count}")


def replay(args):
    chosen = None
    with open(args.file) as f:
        for line in f:
            r = json.loads(line)
            if r["type"] != args.type or r["dir"] != args.dir:
                continue
            if args.session and r["session"] != args.session.lower():
                continue
            if args.seq is not None and r["seq"] != args.seq:
                continue
            if getattr(args, "if") and r["if"] != getattr(args, "if"):
                continue
            chosen = r
    if chosen is None:
        sys.exit(f"replay: no captured datagram of type {args.type} session {args.session} seq {args.seq} in {args.file}")
    data = bytearray(bytes.fromhex(chosen["hex"]))
    if args.flip_dport:
        i = 28
        while i + 4 <= len(data):
            kind, size = struct.unpack("!HH", data[i:i + 4])
            if kind == 0x8001:
                data[i + 4 + 5] ^= 0x01  # FLOW value: proto family srcPort dstPort: low octet of dstPort
                break
            i += 4 + size
        else:
            sys.exit("replay: no FLOW to alter")
    s = udp_socket(chosen["src"], chosen["sport"], chosen["src"])
    s.sendto(bytes(data), (chosen["dst"], chosen["dport"]))
    say(f"replayed {len(data)} octets {text(bytes(data))} seq {chosen['seq']} "
        f"from {chosen['src']}:{chosen['sport']} to {chosen['dst']}:{chosen['dport']}")
    if args.wait:
        wait_replies(s, args.wait)


def forge(args):
    proto, src, sport, dst, dport = args.flow.split(",")
    tlvs = flow_tlv(proto, src, int(sport), dst, int(dport)) + lifetime_tlv(args.lifetime)
    tlvs += tlv(0x000B, b"\x01" + os.urandom(32))                 # IDENTITY: Ed25519, random
    tlvs += tlv(0x0012, struct.pack("!Q", int(time.time())))      # TIMESTAMP: now
    tlvs += tlv(0x000C, b"\x01" + os.urandom(64))                 # SIGNATURE: random, last
    session = int.from_bytes(os.urandom(8), "big")
    data = message(1, tlvs, session, int.from_bytes(os.urandom(8), "big"), 1, 0x04)
    s = udp_socket(args.addr, args.sport)
    s.sendto(data, (args.addr, args.port))
    say(f"sent {len(data)} octets {text(data)} to {args.addr}:{args.port} from port {s.getsockname()[1]}")
    if args.wait:
        wait_replies(s, args.wait)


p = sub.add_parser("capture")
p.add_argument("--out", required=True)
p.add_argument("--port", type=int, default=7227)
p.add_argument("--duration", type=float, default=60.0)
p.add_argument("--count", type=int, default=1000)
p.set_defaults(fn=capture)
p = sub.add_parser("replay")
p.add_argument("file")
p.add_argument("--type", type=number, required=True)
p.add_argument("--session")
p.add_argument("--seq", type=int)
p.add_argument("--if")
p.add_argument("--dir", choices=["in", "out"], default="in")
p.add_argument("--flip-dport", action="store_true")
p.add_argument("--wait", type=float, default=0.0)
p.set_defaults(fn=replay)
p = sub.add_parser("forge")
p.add_argument("addr")
p.add_argument("port", type=int)
p.add_argument("--flow", required=True)
p.add_argument("--lifetime", type=int, default=30)
p.add_argument("--sport", type=int, default=0)
p.add_argument("--wait", type=float, default=0.0)
p.set_defaults(fn=forge)


if __name__ == "__main__":
    args = parser.parse_args()
    args.fn(args)
