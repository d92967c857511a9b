#!/usr/bin/env python3
"""Bounded two-way traffic for the scenario tests (stdlib only). Every mode ends on its own:
servers after --duration (at most 120 s), clients after --timeout.

  Servers print "listening on ..." (sniff: "capturing on ...") once ready (lib.sh: lab_serve).

  flows.py udp-echo PORT --duration S [--bind ADDR]
      echoes every datagram; prints "echo from ADDR:PORT" for each new peer, then
      "echoed N from ADDR:PORT ..." at the end
  flows.py udp-ping ADDR PORT [--sport N] [--bind ADDR] [--count N] [--interval S] [--wait S]
      sends N datagrams from one socket and counts the replies:
      "sent N replies M from ADDR:PORT ..." (exit 0 even with 0 replies: the test decides)
  flows.py tcp-serve PORT --duration S [--bind ADDR]
      echo server; one line per finished connection: "conn from ADDR:PORT bytes N"
  flows.py tcp-send ADDR PORT [--bytes N] [--sport N] [--timeout S] [--connect HOST:PORT]
      connects, (with --connect: asks the proxy for HOST:PORT first), sends N bytes, reads the
      echo: "connected from ADDR:PORT sent N echoed M"; exit 1 with "connect failed: ..." when the
      connection cannot be made, exit 2 when the echo is short
  flows.py tcp-proxy PORT --duration S [--bind ADDR]
      an HTTP CONNECT proxy: "proxy ADDR:PORT -> HOST:PORT up N down M" per finished connection
  flows.py tcp-flip PORT --to HOST:PORT --after N --duration S [--bind ADDR]
      a hostile forwarder: passes each connection on to HOST:PORT and flips the lowest bit of
      the octet at offset N (upstream direction); "flip ADDR:PORT -> HOST:PORT at N up U down D"
  flows.py sniff IFACE --duration S
      captures on IFACE (AF_PACKET) and prints one line per received IP packet that carries
      options: "ipv4 SRC > DST ipopts HEX", "ipv6 SRC > DST hbh HEX", "... tcpopts HEX"
"""
import argparse
import socket
import sys
import threading
import time

MAX_DURATION = 120.0


def family_of(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def any_address(family):
    return "::" if family == socket.AF_INET6 else "0.0.0.0"


def bound_socket(bind, kind):
    """A server socket; IPv6 ones are IPv6-only, so IPv4 and IPv6 servers can share a port."""
    family = family_of(bind or "0.0.0.0")
    s = socket.socket(family, kind)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return s


def split_hostport(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def say(line):
    print(line)
    sys.stdout.flush()


def peer_text(peer):
    return f"{peer[0]}:{peer[1]}"


def deadline_of(duration):
    return time.monotonic() + min(duration, MAX_DURATION)


# --- UDP -------------------------------------------------------------------------------------

def udp_echo(args):
    s = bound_socket(args.bind, socket.SOCK_DGRAM)
    s.bind((args.bind or "0.0.0.0", args.port))
    say(f"listening on udp {args.bind or '0.0.0.0'} {args.port}")
    deadline = deadline_of(args.duration)
    count, unsent, peers = 0, 0, []
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            data, peer = s.recvfrom(65535)
        except socket.timeout:
            break
        try:
            s.sendto(data, peer)
        except OSError as error:
            # The mobility scenarios move this server's address: a request that arrived just before
            # the old address (and the routes through it) went has no route back. A real server
            # loses that one reply and goes on; dying here would fail every later check.
            unsent += 1
            if unsent == 1:
                say(f"reply to {peer_text(peer)} not sent: {error.strerror}")
            continue
        count += 1
        if peer_text(peer) not in peers:
            peers.append(peer_text(peer))
            say(f"echo from {peer_text(peer)}")
    say(f"echoed {count} from {' '.join(peers) or '-'}")
    if unsent:
        say(f"unsent replies: {unsent}")


def udp_ping(args):
    family = family_of(args.addr)
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((args.bind or any_address(family), args.sport))
    sent, replies, peers = 0, 0, set()

    def drain(until):
        nonlocal replies
        while (left := until - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                _, peer = s.recvfrom(65535)
            except socket.timeout:
                return
            replies += 1
            peers.add(peer_text(peer))

    unsent = 0
    for _ in range(min(args.count, 10000)):
        try:
            s.sendto(b"p" * args.size, (args.addr, args.port))
        except OSError:
            unsent += 1  # no route while this host's address moves: that probe is lost, as on a real host
        sent += 1
        drain(time.monotonic() + args.interval)
    drain(time.monotonic() + min(args.wait, 10.0))
    say(f"sent {sent} replies {replies} from {' '.join(sorted(peers)) or '-'}")
    if unsent:
        say(f"{unsent} of them not sent: no route")


# --- TCP -------------------------------------------------------------------------------------

def serve(args, handler):
    s = bound_socket(args.bind, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((args.bind or "0.0.0.0", args.port))
    s.listen(16)
    say(f"listening on tcp {args.bind or '0.0.0.0'} {args.port}")
    deadline = deadline_of(args.duration)
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            conn, peer = s.accept()
        except socket.timeout:
            break
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        threading.Thread(target=handler, args=(conn, peer), daemon=True).start()
    s.close()


def tcp_serve(args):
    def handle(conn, peer):
        total = 0
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
                total += len(data)
        except OSError:
            pass
        finally:
            conn.close()
        say(f"conn from {peer_text(peer)} bytes {total}")

    serve(args, handle)


def relay(src, dst, counter, key):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
            counter[key] += len(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def tcp_proxy(args):
    def handle(conn, peer):
        target = "-"
        counter = {"up": 0, "down": 0}
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 4096:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            request, _, rest = head.partition(b"\r\n\r\n")
            words = request.split(b"\r\n")[0].split()
            if len(words) < 2 or words[0] != b"CONNECT":
                conn.sendall(b"HTTP/1.1 405 only CONNECT\r\n\r\n")
                return
            target = words[1].decode()
            host, port = split_hostport(target)
            upstream = socket.create_connection((host, port), timeout=5)
            upstream.settimeout(conn.gettimeout())
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.sendall(rest)
                counter["up"] += len(rest)
            back = threading.Thread(target=relay, args=(upstream, conn, counter, "down"), daemon=True)
            back.start()
            relay(conn, upstream, counter, "up")
            back.join(timeout=10)
            upstream.close()
        except OSError as e:
            say(f"proxy {peer_text(peer)} -> {target} failed: {e}")
            try:
                conn.sendall(b"HTTP/1.1 502 upstream unreachable\r\n\r\n")
            except OSError:
                pass
            return
        finally:
            conn.close()
        say(f"proxy {peer_text(peer)} -> {target} up {counter['up']} down {counter['down']}")

    serve(args, handle)


def tcp_send(args):
    family = family_of(args.addr)
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((args.bind or any_address(family), args.sport))
    s.settimeout(args.timeout)
    try:
        s.connect((args.addr, args.port))
        if args.connect:
            s.sendall(f"CONNECT {args.connect} HTTP/1.1\r\nHost: {args.connect}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 4096:
                chunk = s.recv(1)
                if not chunk:
                    break
                head += chunk
            status = head.split(b"\r\n")[0].decode(errors="replace")
            if " 200 " not in status + " ":
                say(f"connect failed: proxy answered '{status}'")
                sys.exit(1)
    except OSError as e:
        say(f"connect failed: {e}")
        sys.exit(1)
    local = peer_text(s.getsockname())
    payload = b"x" * args.bytes
    echoed = 0
    try:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        while echoed < args.bytes and (data := s.recv(65536)):
            echoed += len(data)
    except OSError as e:
        say(f"connected from {local} sent {args.bytes} echoed {echoed} error {e}")
        sys.exit(2)
    say(f"connected from {local} sent {args.bytes} echoed {echoed}")
    sys.exit(0 if echoed == args.bytes else 2)


def tcp_flip(args):
    target = split_hostport(args.to)

    def handle(conn, peer):
        try:
            upstream = socket.create_connection(target, timeout=args.duration)
        except OSError as e:
            say(f"flip {peer_text(peer)} -> {args.to} connect failed: {e}")
            conn.close()
            return
        counter = {"up": 0, "down": 0, "flipped": False}

        def pump(src, dst, key, flip):
            try:
                while data := src.recv(65536):
                    if flip and not counter["flipped"] and counter[key] + len(data) > args.after:
                        at = args.after - counter[key]
                        data = data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]
                        counter["flipped"] = True
                    counter[key] += len(data)
                    dst.sendall(data)
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        down = threading.Thread(target=pump, args=(upstream, conn, "down", False), daemon=True)
        down.start()
        pump(conn, upstream, "up", True)
        down.join(args.duration)
        conn.close()
        upstream.close()
        say(f"flip {peer_text(peer)} -> {args.to} at {args.after} up {counter['up']} down {counter['down']} flipped {counter['flipped']}")

    serve(args, handle)


# --- capture ---------------------------------------------------------------------------------

def sniff(args):
    ETH_P_ALL = 0x0003
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((args.iface, 0))
    say(f"capturing on {args.iface}")
    deadline = deadline_of(args.duration)
    printed = 0
    while printed < 1000 and (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            frame, addr = s.recvfrom(65535)
        except socket.timeout:
            break
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        ethertype = int.from_bytes(frame[12:14], "big")
        ip = frame[14:]
        parts = []
        if ethertype == 0x0800 and len(ip) >= 20:
            ihl = (ip[0] & 0x0F) * 4
            proto = ip[9]
            parts.append(f"ipv4 {socket.inet_ntop(socket.AF_INET, ip[12:16])} > {socket.inet_ntop(socket.AF_INET, ip[16:20])}")
            if ihl > 20:
                parts.append(f"ipopts {ip[20:ihl].hex()}")
            l4 = ip[ihl:]
        elif ethertype == 0x86DD and len(ip) >= 40:
            proto = ip[6]
            parts.append(f"ipv6 {socket.inet_ntop(socket.AF_INET6, ip[8:24])} > {socket.inet_ntop(socket.AF_INET6, ip[24:40])}")
            l4 = ip[40:]
            if proto == 0 and len(l4) >= 8:
                hbh_len = (l4[1] + 1) * 8
                parts.append(f"hbh {l4[:hbh_len].hex()}")
                proto, l4 = l4[0], l4[hbh_len:]
        else:
            continue
        if proto == 6 and len(l4) >= 20 and (l4[12] >> 4) > 5:
            parts.append(f"tcpopts {l4[20:(l4[12] >> 4) * 4].hex()}")
        if len(parts) > 1:
            say(" ".join(parts))
            printed += 1


parser = argparse.ArgumentParser()
sub = parser.add_subparsers(dest="cmd", required=True)
p = sub.add_parser("udp-echo")
p.add_argument("port", type=int)
p.add_argument("--duration", type=float, default=5.0)
p.add_argument("--bind")
p.set_defaults(fn=udp_echo)
p = sub.add_parser("udp-ping")
p.add_argument("addr")
p.add_argument("port", type=int)
p.add_argument("--sport", type=int, default=0)
p.add_argument("--bind")
p.add_argument("--count", type=int, default=5)
p.add_argument("--size", type=int, default=64)
p.add_argument("--interval", type=float, default=0.05)
p.add_argument("--wait", type=float, default=1.0)
p.set_defaults(fn=udp_ping)
for name, fn in (("tcp-serve", tcp_serve), ("tcp-proxy", tcp_proxy)):
    p = sub.add_parser(name)
    p.add_argument("port", type=int)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--bind")
    p.set_defaults(fn=fn)
p = sub.add_parser("tcp-send")
p.add_argument("addr")
p.add_argument("port", type=int)
p.add_argument("--bytes", type=int, default=10000)
p.add_argument("--sport", type=int, default=0)
p.add_argument("--bind")
p.add_argument("--timeout", type=float, default=3.0)
p.add_argument("--connect", help="HOST:PORT to ask an HTTP CONNECT proxy for")
p.set_defaults(fn=tcp_send)
p = sub.add_parser("tcp-flip")
p.add_argument("port", type=int)
p.add_argument("--to", required=True)
p.add_argument("--after", type=int, required=True)
p.add_argument("--duration", type=float, default=10.0)
p.add_argument("--bind")
p.set_defaults(fn=tcp_flip)
p = sub.add_parser("sniff")
p.add_argument("iface")
p.add_argument("--duration", type=float, default=10.0)
p.set_defaults(fn=sniff)
args = parser.parse_args()
args.fn(args)
