#!/usr/bin/env python3
"""Minimal PCP client for the integration tests (stdlib only; RFC 6887, NAT-PMP per RFC 6886).

Written from the RFCs alone, independently of the gateway's server, so each checks the other.
Global options (before or after the command): --version N (default 2), --bind ADDR, --sport N,
--timeout S (0.25, doubled per retransmission), --attempts N (4), --server-port N (5351), -v.

  pcp_client.py map SERVER --proto udp|tcp|N --internal-port P [--external-port P]
                [--external-address IP] [--lifetime S] [--nonce 24HEX] [--client-address IP]
  pcp_client.py peer SERVER (map's options) --peer-address IP --peer-port P
  pcp_client.py announce SERVER
  pcp_client.py raw SERVER --hex HEXBYTES
      one line per response: "opcode=MAP result=SUCCESS code=0 lifetime=60 epoch=12
      nonce=<24hex> proto=17 internal-port=5004 external=203.0.113.1:5004" (PEER adds
      peer=IP:PORT; "version=N" leads when N is not 2; NAT-PMP answers are
      "version=0 opcode=128 result=UNSUPP_VERSION code=1 epoch=E [address=IP]");
      or "no response after N attempts"
  pcp_client.py listen-announce [--group 224.0.0.1] [--port 5350] [--duration S] [--iface-address IP]
      "listening on GROUP:PORT", then one response line plus " from=IP:PORT" per announcement
  pcp_client.py --self-test
Exit: 0 SUCCESS, 1 other result code (or unparseable raw answer), 2 usage/local error, 3 no response.
"""
import argparse
import ipaddress
import os
import select
import socket
import struct
import sys
import time

PCP_VERSION = 2
SERVER_PORT = 5351          # PCP and NAT-PMP servers listen here
ANNOUNCE_PORT = 5350        # clients listen here for multicast announcements
HEADER_LEN = 24             # request and response common headers are both 24 octets
MAP_BODY_LEN = 36
PEER_BODY_LEN = 56
OP_ANNOUNCE, OP_MAP, OP_PEER = 0, 1, 2
OPCODE_NAMES = {OP_ANNOUNCE: 'ANNOUNCE', OP_MAP: 'MAP', OP_PEER: 'PEER'}
RESULT_NAMES = {
    0: 'SUCCESS', 1: 'UNSUPP_VERSION', 2: 'NOT_AUTHORIZED', 3: 'MALFORMED_REQUEST',
    4: 'UNSUPP_OPCODE', 5: 'UNSUPP_OPTION', 6: 'MALFORMED_OPTION', 7: 'NETWORK_FAILURE',
    8: 'NO_RESOURCES', 9: 'UNSUPP_PROTOCOL', 10: 'USER_EX_QUOTA',
    11: 'CANNOT_PROVIDE_EXTERNAL', 12: 'ADDRESS_MISMATCH', 13: 'EXCESSIVE_REMOTE_PEERS',
}
# NAT-PMP numbers its result codes differently (e.g. 3 is a network failure there).
NATPMP_RESULT_NAMES = {0: 'SUCCESS', 1: 'UNSUPP_VERSION', 2: 'NOT_AUTHORIZED',
                       3: 'NETWORK_FAILURE', 4: 'NO_RESOURCES', 5: 'UNSUPP_OPCODE'}
EXIT_OK, EXIT_RESULT, EXIT_USAGE, EXIT_NO_RESPONSE = 0, 1, 2, 3
VERBOSE = False


def vlog(msg):
    if VERBOSE:
        print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- addresses

def ip16(addr):
    """The 16-octet address field: IPv6 as is, IPv4 as IPv4-mapped ::ffff:a.b.c.d."""
    ip = ipaddress.ip_address(addr)
    return b'\0' * 10 + b'\xff\xff' + ip.packed if ip.version == 4 else ip.packed


def ip_text(raw16):
    ip = ipaddress.IPv6Address(raw16)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


def endpoint(raw16, port):
    text = ip_text(raw16)
    return ('[%s]:%d' if ':' in text else '%s:%d') % (text, port)


# ---------------------------------------------------------------- encoding

def encode_header(opcode, lifetime, client_ip, version=PCP_VERSION):
    # version | R=0 + opcode | reserved(2) | requested lifetime(4) | client IP(16)
    return struct.pack('!BBHI16s', version, opcode & 0x7f, 0, lifetime, ip16(client_ip))


def encode_map_body(nonce, proto, internal_port, ext_port, ext_ip):
    # nonce(12) | protocol | reserved(3) | internal port | suggested ext port | suggested ext IP(16)
    return struct.pack('!12sB3xHH16s', nonce, proto, internal_port, ext_port, ip16(ext_ip))


def encode_peer_body(nonce, proto, internal_port, ext_port, ext_ip, peer_port, peer_ip):
    # MAP's fields, then remote peer port | reserved(2) | remote peer IP(16)
    return (encode_map_body(nonce, proto, internal_port, ext_port, ext_ip)
            + struct.pack('!H2x16s', peer_port, ip16(peer_ip)))


# ---------------------------------------------------------------- decoding

def parse_options(data, off):
    """Option codes after the opcode body; True as second value if an option overruns the end."""
    codes = []
    while off < len(data):
        if off + 4 > len(data):
            return codes, True
        code, _, length = struct.unpack_from('!BBH', data, off)
        if off + 4 + length > len(data):
            return codes, True
        codes.append(code)
        off += 4 + ((length + 3) & ~3)      # option data is padded to a 4-octet boundary
    return codes, False


def parse_response(data):
    """Decode a datagram as PCP or (version 0) NAT-PMP; None if too short to be either."""
    if len(data) < 2:
        return None
    version, op = data[0], data[1]
    if version == 0:
        # NAT-PMP: version | opcode (128 + request op) | result(2) | epoch(4) | op-specific
        if len(data) < 8:
            return None
        code, epoch = struct.unpack_from('!HI', data, 2)
        r = {'natpmp': True, 'version': 0, 'opcode': op, 'code': code, 'epoch': epoch}
        if op == 128 and len(data) >= 12:
            r['address'] = str(ipaddress.IPv4Address(data[8:12]))
        elif op in (129, 130) and len(data) >= 16:
            r['internal_port'], r['external_port'], r['lifetime'] = struct.unpack_from('!HHI', data, 8)
        return r
    if len(data) < HEADER_LEN:
        return None
    # version | R + opcode | reserved | result | lifetime(4) | epoch(4) | reserved(12)
    _, op, _, code, lifetime, epoch = struct.unpack_from('!BBBBII', data, 0)
    r = {'natpmp': False, 'version': version, 'opcode': op & 0x7f, 'response': bool(op & 0x80),
         'code': code, 'lifetime': lifetime, 'epoch': epoch, 'options': [], 'bad_options': False}
    opcode = r['opcode']
    body_len = {OP_ANNOUNCE: 0, OP_MAP: MAP_BODY_LEN, OP_PEER: PEER_BODY_LEN}.get(opcode)
    if body_len is None:                    # unknown opcode: its body layout is unknown too
        r['extra'] = len(data) - HEADER_LEN
        return r
    if len(data) < HEADER_LEN + body_len:   # an error answer may carry the header only
        r['truncated'] = True
        return r
    if body_len:
        nonce, proto, iport, eport, eip = struct.unpack_from('!12sB3xHH16s', data, HEADER_LEN)
        r.update(nonce=nonce, proto=proto, internal_port=iport, external_port=eport, external_ip=eip)
        if opcode == OP_PEER:
            r['peer_port'], r['peer_ip'] = struct.unpack_from('!H2x16s', data, HEADER_LEN + 36)
    r['options'], r['bad_options'] = parse_options(data, HEADER_LEN + body_len)
    return r


def format_response(r):
    if r['natpmp']:
        f = ['version=0', 'opcode=%d' % r['opcode'],
             'result=' + NATPMP_RESULT_NAMES.get(r['code'], 'CODE_%d' % r['code']),
             'code=%d' % r['code'], 'epoch=%d' % r['epoch']]
        if 'address' in r:
            f.append('address=' + r['address'])
        if 'lifetime' in r:
            f += ['internal-port=%d' % r['internal_port'], 'external-port=%d' % r['external_port'],
                  'lifetime=%d' % r['lifetime']]
        return ' '.join(f)
    f = [] if r['version'] == PCP_VERSION else ['version=%d' % r['version']]
    f += ['opcode=' + OPCODE_NAMES.get(r['opcode'], str(r['opcode'])),
          'result=' + RESULT_NAMES.get(r['code'], 'CODE_%d' % r['code']),
          'code=%d' % r['code'], 'lifetime=%d' % r['lifetime'], 'epoch=%d' % r['epoch']]
    if not r['response']:
        f.append('r=0')                     # only reachable through `raw`
    if 'nonce' in r:
        f += ['nonce=' + r['nonce'].hex(), 'proto=%d' % r['proto'],
              'internal-port=%d' % r['internal_port'],
              'external=' + endpoint(r['external_ip'], r['external_port'])]
    if 'peer_ip' in r:
        f.append('peer=' + endpoint(r['peer_ip'], r['peer_port']))
    if r.get('truncated'):
        f.append('body=absent')
    if r.get('extra'):
        f.append('extra-bytes=%d' % r['extra'])
    if r['options']:
        f.append('options=' + ','.join(str(c) for c in r['options']))
    if r['bad_options']:
        f.append('options-malformed=1')
    return ' '.join(f)


def exit_status(r):
    return EXIT_OK if r['code'] == 0 else EXIT_RESULT


# ---------------------------------------------------------------- transport

def pcp_matcher(opcode, nonce):
    """Accept a response to our request: returns (parsed, None) or (None, reason-to-ignore)."""
    def accept(data):
        r = parse_response(data)
        if r is None:
            return None, 'short'
        if r['natpmp']:
            # A NAT-PMP-only server rejects any version but 0 with its own version 0 and
            # result 1; opcode 128 per the RFC 6886 erratum, 0 from older servers.
            return (r, None) if r['opcode'] in (0, 128) or r['opcode'] & 0x80 else (None, 'natpmp-request')
        if not r['response']:
            return None, 'r-bit-clear'
        if r['opcode'] != opcode:
            return None, 'opcode-mismatch'
        if nonce is not None:
            if 'nonce' in r:
                if r['nonce'] != nonce:
                    return None, 'nonce-mismatch'
            elif r['code'] == 0:
                return None, 'success-without-body'
        return r, None
    return accept


def raw_accept(data):
    # `raw` exists to see what the server does with odd input: take anything it sends.
    r = parse_response(data)
    return (r if r is not None else {'malformed': data}), None


def transact(args, request, accept):
    """Send, retransmitting with a doubling timer; the first accepted response or None."""
    server = args.server
    family = socket.AF_INET if server.version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((args.bind or ('0.0.0.0' if family == socket.AF_INET else '::'), args.sport))
    except OSError as e:
        usage_fail('cannot bind %s port %d: %s' % (args.bind or 'any', args.sport, e))
    timeout, ignored = args.timeout, 0
    try:
        for attempt in range(1, args.attempts + 1):
            vlog('send attempt %d: %d octets %s' % (attempt, len(request), request.hex()))
            try:
                sock.sendto(request, (str(server), args.server_port))
            except OSError as e:            # e.g. no route yet: counts as a lost attempt
                vlog('send failed: %s' % e)
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                    break
                data, src = sock.recvfrom(4096)
                if ipaddress.ip_address(src[0].split('%')[0]) != server or src[1] != args.server_port:
                    parsed, reason = None, 'wrong-source'
                else:
                    parsed, reason = accept(data)
                if parsed is not None:
                    return parsed
                ignored += 1
                vlog('ignored %s from %s:%d (%d octets): %s' % (reason, src[0], src[1], len(data), data.hex()))
            timeout *= 2
        return None
    finally:
        vlog('ignored datagrams: %d' % ignored)
        sock.close()


def usage_fail(msg):
    print('error: ' + msg, file=sys.stderr)
    sys.exit(EXIT_USAGE)


def local_address_toward(args):
    """The address the kernel would send from toward SERVER (a connected UDP socket sends nothing)."""
    if args.bind and not ipaddress.ip_address(args.bind).is_unspecified:
        return args.bind
    s = socket.socket(socket.AF_INET if args.server.version == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        s.connect((str(args.server), args.server_port))
        return s.getsockname()[0].split('%')[0]
    except OSError as e:
        usage_fail('no local address toward %s: %s' % (args.server, e))
    finally:
        s.close()


def run(args, request, accept):
    r = transact(args, request, accept)
    if r is None:
        print('no response after %d attempts' % args.attempts, flush=True)
        return EXIT_NO_RESPONSE
    if 'malformed' in r:
        print('malformed=1 len=%d hex=%s' % (len(r['malformed']), r['malformed'].hex()), flush=True)
        return EXIT_RESULT
    print(format_response(r), flush=True)
    return exit_status(r)


# ---------------------------------------------------------------- commands

def cmd_map_or_peer(args):
    client = args.client_address or local_address_toward(args)
    nonce = args.nonce if args.nonce is not None else os.urandom(12)
    # No preference: the all-zeros address of the client's family (::ffff:0.0.0.0 or ::).
    ext = args.external_address or ('0.0.0.0' if ipaddress.ip_address(client).version == 4 else '::')
    vlog('client %s nonce %s' % (client, nonce.hex()))
    if args.cmd == 'map':
        opcode, body = OP_MAP, encode_map_body(nonce, args.proto, args.internal_port, args.external_port, ext)
    else:
        opcode, body = OP_PEER, encode_peer_body(nonce, args.proto, args.internal_port, args.external_port,
                                                 ext, args.peer_port, args.peer_address)
    request = encode_header(opcode, args.lifetime, client, args.version) + body
    return run(args, request, pcp_matcher(opcode, nonce))


def cmd_announce(args):
    client = local_address_toward(args)
    return run(args, encode_header(OP_ANNOUNCE, 0, client, args.version), pcp_matcher(OP_ANNOUNCE, None))


def cmd_raw(args):
    return run(args, args.hex, raw_accept)


def cmd_listen_announce(args):
    if not args.group.is_multicast:
        usage_fail('%s is not a multicast group' % args.group)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((str(args.group), args.port))     # the group address: only datagrams sent to it
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, args.group.packed + args.iface_address.packed)
    except OSError as e:
        usage_fail('cannot listen on %s:%d: %s' % (args.group, args.port, e))
    print('listening on %s:%d' % (args.group, args.port), flush=True)
    deadline, seen = time.monotonic() + args.duration, 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([s], [], [], remaining)[0]:
            break
        data, src = s.recvfrom(4096)
        r = parse_response(data)
        if r is not None and (
                (r['natpmp'] and r['opcode'] == 128 and 'address' in r)
                or (not r['natpmp'] and r['version'] == PCP_VERSION and r['response']
                    and r['opcode'] == OP_ANNOUNCE)):
            seen += 1
            print('%s from=%s:%d' % (format_response(r), src[0], src[1]), flush=True)
        else:
            vlog('ignored from %s:%d (%d octets): %s' % (src[0], src[1], len(data), data.hex()))
    vlog('announcements: %d' % seen)
    s.close()
    return EXIT_OK


# ---------------------------------------------------------------- self-test

def self_test():
    nonce = bytes(range(1, 13))
    v4 = lambda hexaddr: '00' * 10 + 'ffff' + hexaddr     # IPv4-mapped, as hex
    hdr = lambda op, life: '02' + op + '0000' + life + v4('c0000221')   # client 192.0.2.33
    m = encode_header(OP_MAP, 3600, '192.0.2.33') + encode_map_body(nonce, 17, 5004, 0, '0.0.0.0')
    assert len(m) == 60, len(m)
    assert m.hex() == hdr('01', '00000e10') + nonce.hex() + '11' + '000000' + '138c' + '0000' + v4('00000000'), m.hex()
    p = (encode_header(OP_PEER, 120, '192.0.2.33')
         + encode_peer_body(nonce, 6, 5004, 5004, '203.0.113.1', 80, '198.51.100.7'))
    assert len(p) == 80, len(p)
    assert p.hex() == (hdr('02', '00000078') + nonce.hex() + '06' + '000000' + '138c' + '138c' + v4('cb007101')
                       + '0050' + '0000' + v4('c6336407')), p.hex()
    a = encode_header(OP_ANNOUNCE, 0, '192.0.2.33')
    assert len(a) == HEADER_LEN and a.hex() == hdr('00', '00000000'), a.hex()
    assert encode_header(OP_MAP, 1, '2001:db8::1', version=1)[:2] == b'\x01\x01'
    assert ip16('2001:db8::1') == ipaddress.IPv6Address('2001:db8::1').packed
    # MAP response: R bit, result 0, lifetime 60, epoch 12, 12 reserved, body, one padded option.
    resp = ('02810000' '0000003c' '0000000c' + '00' * 12 + nonce.hex() + '11000000' '138c138d'
            + v4('cb007101') + '99000001' 'ab000000')
    r = parse_response(bytes.fromhex(resp))
    line = format_response(r)
    assert line == ('opcode=MAP result=SUCCESS code=0 lifetime=60 epoch=12 nonce=0102030405060708090a0b0c '
                    'proto=17 internal-port=5004 external=203.0.113.1:5005 options=153'), line
    assert pcp_matcher(OP_MAP, nonce)(bytes.fromhex(resp))[1] is None
    assert pcp_matcher(OP_MAP, bytes(12))(bytes.fromhex(resp))[1] == 'nonce-mismatch'
    assert pcp_matcher(OP_PEER, nonce)(bytes.fromhex(resp))[1] == 'opcode-mismatch'
    assert pcp_matcher(OP_MAP, nonce)(bytes.fromhex('0201' + resp[4:]))[1] == 'r-bit-clear'
    bad = parse_response(bytes.fromhex(resp[:-16] + '99000009' 'ab000000'))   # option overruns
    assert bad['bad_options'] and bad['options'] == [], bad
    # Header-only error answer: accepted despite having no nonce to compare.
    err = bytes.fromhex('02810003' '00000708' '0000000c' + '00' * 12)
    assert pcp_matcher(OP_MAP, nonce)(err)[1] is None
    assert format_response(parse_response(err)).startswith('opcode=MAP result=MALFORMED_REQUEST code=3 ')
    peer_resp = bytes.fromhex(resp[:-16]) + struct.pack('!H2x16s', 80, ip16('2001:db8::7'))
    peer_resp = bytes([2, 0x82]) + peer_resp[2:]
    assert format_response(parse_response(peer_resp)).endswith('peer=[2001:db8::7]:80')
    # NAT-PMP: version rejection and public-address announcement.
    nv = parse_response(bytes.fromhex('00800001' '00000007'))
    assert format_response(nv) == 'version=0 opcode=128 result=UNSUPP_VERSION code=1 epoch=7'
    assert pcp_matcher(OP_MAP, nonce)(bytes.fromhex('00800001' '00000007'))[1] is None
    na = parse_response(bytes.fromhex('00800000' '00000005' 'cb007101'))
    assert format_response(na) == 'version=0 opcode=128 result=SUCCESS code=0 epoch=5 address=203.0.113.1'
    assert parse_response(b'\x02\x81\x00') is None


# ---------------------------------------------------------------- command line

def build_parser():
    def ip(text):
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            raise argparse.ArgumentTypeError('not an IP address: %r' % text)

    def ranged(lo, hi, conv=int):
        def check(text):
            v = conv(text)
            if not lo <= v <= hi:
                raise argparse.ArgumentTypeError('%s is outside %s..%s' % (text, lo, hi))
            return v
        return check

    def proto(text):
        return {'udp': 17, 'tcp': 6}.get(text.lower()) or ranged(0, 255)(text)

    def hexbytes(length=None):
        def conv(text):
            try:
                b = bytes.fromhex(text.replace(':', '').replace(' ', ''))
            except ValueError:
                raise argparse.ArgumentTypeError('not hex: %r' % text)
            if length is not None and len(b) != length:
                raise argparse.ArgumentTypeError('need %d octets (%d hex digits)' % (length, 2 * length))
            return b
        return conv

    def common(p, top):
        # Same options on the main parser and on each command; on the commands the default is
        # SUPPRESS so an option given before the command is not reset by the command's parser.
        d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
        p.add_argument('--version', type=ranged(0, 255), default=d(PCP_VERSION), help='version octet to send')
        p.add_argument('--bind', default=d(None), help='local address to send from (default any)')
        p.add_argument('--sport', type=ranged(0, 65535), default=d(0), help='local port (default 0)')
        p.add_argument('--timeout', type=ranged(0.001, 60.0, float), default=d(0.25),
                       help='first retransmission timeout, doubled each attempt')
        p.add_argument('--attempts', type=ranged(1, 100), default=d(4))
        p.add_argument('--server-port', type=ranged(1, 65535), default=d(SERVER_PORT))
        p.add_argument('-v', '--verbose', action='store_true', default=d(False))

    parser = argparse.ArgumentParser(description='PCP (RFC 6887) test client')
    common(parser, True)
    parser.add_argument('--self-test', action='store_true', help='check encoding offline')
    sub = parser.add_subparsers(dest='cmd')

    def mapping(name, func):
        p = sub.add_parser(name)
        common(p, False)
        p.add_argument('server', type=ip)
        p.add_argument('--proto', type=proto, required=True, help='udp, tcp or a protocol number')
        p.add_argument('--internal-port', type=ranged(0, 65535), required=True)
        p.add_argument('--external-port', type=ranged(0, 65535), default=0, help='suggested (0: none)')
        p.add_argument('--external-address', type=ip, help='suggested (default all-zeros)')
        p.add_argument('--lifetime', type=ranged(0, 0xffffffff), default=60, help='0 deletes')
        p.add_argument('--nonce', type=hexbytes(12), help='24 hex digits (default random)')
        p.add_argument('--client-address', type=ip, help='default: local address toward SERVER')
        p.set_defaults(func=func)
        return p

    mapping('map', cmd_map_or_peer)
    p = mapping('peer', cmd_map_or_peer)
    p.add_argument('--peer-address', type=ip, required=True)
    p.add_argument('--peer-port', type=ranged(0, 65535), required=True)
    p = sub.add_parser('announce')
    common(p, False)
    p.add_argument('server', type=ip)
    p.set_defaults(func=cmd_announce)
    p = sub.add_parser('raw')
    common(p, False)
    p.add_argument('server', type=ip)
    p.add_argument('--hex', type=hexbytes(), required=True, help='datagram to send')
    p.set_defaults(func=cmd_raw)
    p = sub.add_parser('listen-announce')
    common(p, False)
    p.add_argument('--group', type=ip, default=ipaddress.ip_address('224.0.0.1'))
    p.add_argument('--port', type=ranged(1, 65535), default=ANNOUNCE_PORT)
    p.add_argument('--duration', type=ranged(0.0, 86400.0, float), default=5.0)
    p.add_argument('--iface-address', type=ip, default=ipaddress.ip_address('0.0.0.0'),
                   help='IPv4 address of the interface to join on (default: kernel choice)')
    p.set_defaults(func=cmd_listen_announce)
    return parser


def main(argv=None):
    global VERBOSE
    parser = build_parser()
    args = parser.parse_args(argv)
    VERBOSE = args.verbose
    if args.self_test:
        self_test()
        print('self-test ok')
        return EXIT_OK
    if not args.cmd:
        parser.error('a command is required (map, peer, announce, raw, listen-announce)')
    if args.cmd == 'listen-announce' and (args.group.version != 4 or args.iface_address.version != 4):
        parser.error('listen-announce supports IPv4 groups only')
    if args.bind and args.cmd != 'listen-announce':
        try:
            bind_version = ipaddress.ip_address(args.bind).version
        except ValueError:
            parser.error('--bind: not an IP address: %r' % args.bind)
        if bind_version != args.server.version:
            parser.error('--bind and SERVER are of different address families')
    for name in ('client_address', 'external_address', 'peer_address'):
        if getattr(args, name, None) is not None:
            setattr(args, name, str(getattr(args, name)))
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
