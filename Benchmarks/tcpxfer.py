#!/usr/bin/env python3
"""Plain TCP transfers for figure 15: one sender, one sink, and the two relay protocols of its anchors.

    tcpxfer.py sink ADDRESS PORT [-n COUNT] [-t S]   accept COUNT connections (default 1), one after the
                                                     other, each within S seconds (default 60)
    tcpxfer.py stdin-sink                            the same for standard input (`csp serve --exec`)
    tcpxfer.py send HOST PORT -d SECONDS [-r RATE [-c CHUNK]]
                    [--socks5 PROXY:PORT | --turn SERVER:PORT --user U --password P]

The sender writes zeros for SECONDS, from a 1 MiB buffer as fast as it goes, or with -r CHUNK octets
(default 1 MiB) per send paced to at most RATE octets/s; then it shuts down its side and waits for the
peer's end of file (the sink closes after its own end of file, so the last octet has arrived when the
sender returns). Each program prints one JSON line: the sink {"bytes", "seconds", "reset"}, seconds from
its first octet to its end of file (connection set-up and the relays' handshakes are not in it), reset
when the stream ended with a reset instead; the sender {"bytes", "seconds", "setup_ms", "reset"}.

--socks5: RFC 1928 CONNECT through a SOCKS5 server (no authentication), the way any SOCKS client asks
Dante for a TCP relay. --turn: an RFC 6062 TCP allocation on a TURN server (RFC 8656 long-term
credentials): Allocate with REQUESTED-TRANSPORT TCP, CreatePermission and Connect for the peer on the
control connection, then ConnectionBind on a second connection, which then carries the stream. Python's
standard library only (Debian's python3), so nothing is installed for it; every wait is bounded.
"""
import argparse
import hashlib
import hmac
import ipaddress
import json
import os
import socket
import struct
import sys
import time

CHUNK = 1 << 20
TIMEOUT = 15.0


def sink_stream(read, reset):
    """Reads until end of file (or a reset: reset[0] set); returns (bytes, seconds from the first octet)."""
    total = 0
    first = None
    while True:
        try:
            n = read()
        except ConnectionResetError:
            reset[0] = True
            break
        if n <= 0:
            break
        if first is None:
            first = time.monotonic()
        total += n
    return total, (time.monotonic() - first) if first is not None else 0.0


def cmd_sink(args):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.address, args.port))
    listener.listen(16)
    listener.settimeout(args.timeout)
    buf = bytearray(CHUNK)
    for _ in range(args.count):
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            raise SystemExit(f"tcpxfer: no connection within {args.timeout} s")
        conn.settimeout(TIMEOUT)
        reset = [False]
        total, secs = sink_stream(lambda: conn.recv_into(buf), reset)
        conn.close()
        print(json.dumps({"bytes": total, "seconds": round(secs, 6), "reset": reset[0]}), flush=True)


def cmd_stdin_sink(_args):
    buf = bytearray(CHUNK)
    reset = [False]
    total, secs = sink_stream(lambda: os.readv(0, [buf]), reset)
    print(json.dumps({"bytes": total, "seconds": round(secs, 6), "reset": reset[0]}), flush=True)


def endpoint(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            raise SystemExit(f"tcpxfer: connection closed after {len(data)} of {n} octets")
        data += part
    return data


def socks5_connect(proxy, host, port):
    """RFC 1928: method negotiation (0: no authentication), CONNECT to an IPv4 address."""
    sock = socket.create_connection(proxy, timeout=TIMEOUT)
    sock.sendall(b"\x05\x01\x00")
    if recv_exact(sock, 2) != b"\x05\x00":
        raise SystemExit("tcpxfer: the SOCKS5 server refused method 0 (no authentication)")
    sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack("!H", port))
    ver, rep, _, atyp = recv_exact(sock, 4)
    if ver != 5 or rep != 0:
        raise SystemExit(f"tcpxfer: SOCKS5 CONNECT refused, reply code {rep}")
    # BND.ADDR (IPv4, IPv6 or a name) and BND.PORT: read and ignored.
    recv_exact(sock, (recv_exact(sock, 1)[0] if atyp == 3 else 16 if atyp == 4 else 4) + 2)
    return sock


# STUN/TURN (RFC 8489, 8656, 6062)
MAGIC = 0x2112A442
ALLOCATE, CREATE_PERMISSION, CONNECT, CONNECTION_BIND = 0x003, 0x008, 0x00A, 0x00B
A_USERNAME, A_MESSAGE_INTEGRITY, A_ERROR_CODE, A_REALM, A_NONCE = 0x0006, 0x0008, 0x0009, 0x0014, 0x0015
A_XOR_PEER_ADDRESS, A_REQUESTED_TRANSPORT, A_CONNECTION_ID = 0x0012, 0x0019, 0x002A


def stun_attr(kind, value):
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def xor_address(host, port):
    addr = int(ipaddress.IPv4Address(host)) ^ MAGIC
    return struct.pack("!BBHI", 0, 1, port ^ (MAGIC >> 16), addr)


class Turn:
    def __init__(self, user, password):
        self.user, self.password = user.encode(), password.encode()
        self.realm = self.nonce = None

    def request(self, sock, method, attrs):
        """One request/response on SOCK; answers 401/438 once with credentials. Returns the attributes."""
        for _ in range(3):
            tid = os.urandom(12)
            body = b"".join(stun_attr(k, v) for k, v in attrs)
            if self.nonce is not None:
                body += stun_attr(A_USERNAME, self.user) + stun_attr(A_REALM, self.realm) + stun_attr(A_NONCE, self.nonce)
                header = struct.pack("!HHI", method, len(body) + 24, MAGIC) + tid
                key = hashlib.md5(self.user + b":" + self.realm + b":" + self.password).digest()
                body += stun_attr(A_MESSAGE_INTEGRITY, hmac.new(key, header + body, hashlib.sha1).digest())
            sock.sendall(struct.pack("!HHI", method, len(body), MAGIC) + tid + body)
            kind, length, _ = struct.unpack("!HHI", recv_exact(sock, 8))
            if recv_exact(sock, 12) != tid:
                raise SystemExit("tcpxfer: TURN answer to another transaction")
            got, payload = {}, recv_exact(sock, length)
            i = 0
            while i + 4 <= len(payload):
                k, n = struct.unpack("!HH", payload[i:i + 4])
                got[k] = payload[i + 4:i + 4 + n]
                i += 4 + n + (-n % 4)
            if kind == (method | 0x100):
                return got
            code = got.get(A_ERROR_CODE, b"\0\0\0\0")
            status = code[2] * 100 + code[3]
            if status in (401, 438) and A_NONCE in got:
                self.realm = got.get(A_REALM, self.realm)
                self.nonce = got[A_NONCE]
                continue
            raise SystemExit(f"tcpxfer: TURN method {method:#x} refused: {status} {code[4:].decode(errors='replace')}")
        raise SystemExit(f"tcpxfer: TURN method {method:#x}: credentials refused")


def turn_connect(server, user, password, host, port):
    """RFC 6062 4.3 and 4.4: the data connection to HOST:PORT through a TCP allocation."""
    turn = Turn(user, password)
    control = socket.create_connection(server, timeout=TIMEOUT)
    turn.request(control, ALLOCATE, [(A_REQUESTED_TRANSPORT, struct.pack("!B3x", 6))])
    peer = xor_address(host, port)
    turn.request(control, CREATE_PERMISSION, [(A_XOR_PEER_ADDRESS, peer)])
    connection_id = turn.request(control, CONNECT, [(A_XOR_PEER_ADDRESS, peer)])[A_CONNECTION_ID]
    data = socket.create_connection(server, timeout=TIMEOUT)
    turn.request(data, CONNECTION_BIND, [(A_CONNECTION_ID, connection_id)])
    return data, control


def cmd_send(args):
    host, port = args.host, args.port
    t0 = time.monotonic()
    keep = None
    if args.socks5:
        sock = socks5_connect(endpoint(args.socks5), host, port)
    elif args.turn:
        sock, keep = turn_connect(endpoint(args.turn), args.user, args.password, host, port)
    else:
        sock = socket.create_connection((host, port), timeout=TIMEOUT)
    setup = time.monotonic() - t0
    sock.settimeout(TIMEOUT)
    view = memoryview(bytearray(args.chunk))
    total = 0
    start = time.monotonic()
    deadline = start + args.seconds
    while time.monotonic() < deadline:
        if args.rate:
            # Paced: never ahead of RATE octets/s since the start (sleeps are the only waits).
            ahead = start + (total + args.chunk) / args.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            sent = 0
            while sent < args.chunk:
                sent += sock.send(view[sent:])
            total += sent
        else:
            total += sock.send(view)
    sock.shutdown(socket.SHUT_WR)
    reset = False
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        reset = True
    secs = time.monotonic() - start
    sock.close()
    if keep is not None:
        keep.close()
    print(json.dumps({"bytes": total, "seconds": round(secs, 6), "setup_ms": round(setup * 1000, 3), "reset": reset}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sink")
    s.add_argument("address")
    s.add_argument("port", type=int)
    s.add_argument("-n", "--count", type=int, default=1)
    s.add_argument("-t", "--timeout", type=float, default=60, help="seconds to wait for each connection")
    sub.add_parser("stdin-sink")
    c = sub.add_parser("send")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("-d", "--seconds", type=float, required=True)
    c.add_argument("-r", "--rate", type=float, default=0, help="octets/s (default: as fast as it goes)")
    c.add_argument("-c", "--chunk", type=int, default=CHUNK, help="octets per send (default 1 MiB)")
    c.add_argument("--socks5")
    c.add_argument("--turn")
    c.add_argument("--user", default="bench")
    c.add_argument("--password", default="bench")
    args = p.parse_args()
    {"sink": cmd_sink, "stdin-sink": cmd_stdin_sink, "send": cmd_send}[args.cmd](args)


if __name__ == "__main__":
    main()
