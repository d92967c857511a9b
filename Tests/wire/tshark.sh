#!/usr/bin/env bash
# Checks tools/wireshark/csp.lua against real traffic: in a private network namespace it sends CSP
# messages (the published vectors) over IPv4 and IPv6 loopback, with the discovery option as an
# IPv4 option, an IPv6 hop-by-hop option and a TCP option, captures them with dumpcap, decodes them
# with `tshark -X lua_script:tools/wireshark/csp.lua`, and compares the decoded fields.
#
#   sudo Tests/wire/tshark.sh        (about 5 s; needs root, tshark, /usr/bin/python3 with scapy)
#
# Exits non-zero on the first mismatch. Removes its namespace and files on exit.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
lua="$root/tools/wireshark/csp.lua"
vectors="$root/Tests/CSPWireTests/Vectors"
[ "$(id -u)" -eq 0 ] || { echo "tshark.sh: must run as root" >&2; exit 2; }
for tool in tshark dumpcap ip; do command -v "$tool" >/dev/null || { echo "tshark.sh: $tool missing" >&2; exit 2; }; done

ns="cspwire-tshark-$$"
work="$(mktemp -d)"
capture_pid=""
cleanup() {
    [ -n "$capture_pid" ] && kill "$capture_pid" 2>/dev/null && wait "$capture_pid" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns"
ip -n "$ns" link set lo up
chmod 0777 "$work"
ip netns exec "$ns" dumpcap -q -i lo -w "$work/capture.pcapng" 2>"$work/dumpcap.log" &
capture_pid=$!
for _ in $(seq 50); do grep -q "Capturing on" "$work/dumpcap.log" 2>/dev/null && break; sleep 0.1; done
sleep 0.3

ip netns exec "$ns" /usr/bin/python3 - "$vectors" <<'PY'
import os, socket, sys, time
vectors = sys.argv[1]
def vector(name):
    text = open(os.path.join(vectors, name + ".hex")).read()
    return bytes.fromhex(" ".join(l for l in text.splitlines() if not l.startswith("#")))

def udp(family, src_port, dst, dst_port, payload, opt=None):
    s = socket.socket(family, socket.SOCK_DGRAM)
    if opt:
        s.setsockopt(*opt)
    s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", src_port))
    s.sendto(payload, (dst, dst_port))
    s.close()
    time.sleep(0.05)

# 1: SETUP over IPv4 to the CSP port.
udp(socket.AF_INET, 40000, "127.0.0.1", 7227, vector("setup-udp-ipv4-in-transit"))
# 2: ACCEPT over IPv6 from the CSP port.
udp(socket.AF_INET6, 7227, "::1", 40000, vector("accept-two-records"))
# 3: REJECT over IPv4 with the discovery option in IP_OPTIONS.
udp(socket.AF_INET, 40001, "127.0.0.1", 7227, vector("reject-from-middlebox"),
    (socket.IPPROTO_IP, socket.IP_OPTIONS, vector("discovery-ipv4-option")))
# 4: DENY over IPv6 with the discovery option in a hop-by-hop header (IPV6_HOPOPTS = 54).
udp(socket.AF_INET6, 40002, "::1", 7227, vector("deny"), (socket.IPPROTO_IPV6, 54, vector("discovery-ipv6-hbh")))
# 5: MAPPED on another port: found by the heuristic.
udp(socket.AF_INET, 40003, "127.0.0.1", 9999, vector("mapped"))
# 6: a truncated SETUP (length field says more): an expert error, no crash.
udp(socket.AF_INET, 40004, "127.0.0.1", 7227, vector("setup-tcp-ipv6-listen")[:-3])
# 7: TCP SYN with the discovery option after MSS (scapy over a raw socket).
sys.path.insert(0, "/usr/lib/python3/dist-packages")
from scapy.all import IP, TCP, send, conf
conf.verb = 0
tcp_option = vector("discovery-tcp-option")
send(IP(src="127.0.0.1", dst="127.0.0.1") / TCP(sport=40005, dport=443, flags="S",
     options=[("MSS", 1460), (253, tcp_option[2:])]))
time.sleep(0.2)
PY
sleep 0.5
kill "$capture_pid"; wait "$capture_pid" 2>/dev/null || true; capture_pid=""

failures=0
check() { # check NAME FILTER EXPECTED FIELDS... [-- extra tshark args]
    local name="$1" filter="$2" expected="$3"; shift 3
    local args=() extra=()
    while [ $# -gt 0 ]; do
        if [ "$1" = "--" ]; then shift; extra=("$@"); break; fi
        args+=(-e "$1"); shift
    done
    local got
    got="$(tshark -n -r "$work/capture.pcapng" -X "lua_script:$lua" "${extra[@]}" -Y "$filter" \
        -T fields -E separator='|' -E occurrence=a -E aggregator=',' "${args[@]}" 2>"$work/tshark.err" | head -1)"
    if [ "$got" = "$expected" ]; then
        echo "ok   $name"
    else
        echo "FAIL $name"; echo "     expected: $expected"; echo "     got:      $got"; cat "$work/tshark.err" >&2
        failures=$((failures + 1))
    fi
}

check "SETUP header" "udp.srcport == 40000 && csp" \
    "1|0x0123456789abcdef|0x1122334455667788|1|1|1" \
    csp.type csp.session_id csp.nonce csp.sequence csp.flags.record_route csp.flags.signed
check "SETUP TLVs" "udp.srcport == 40000 && csp" \
    "17|192.0.2.10|198.51.100.20|40000|5004|300|rtp|1,1,1,1|1700000000|0x6a3803d5f059902a|0" \
    csp.flow.proto csp.flow.src csp.flow.dst csp.flow.sport csp.flow.dport csp.lifetime csp.application csp.key_type csp.timestamp csp.record.id csp.record.decision -- -o csp.heuristic:FALSE
check "ACCEPT records over IPv6" "ipv6 && udp.srcport == 7227 && csp" \
    "2|300|0xfeed000000000002,0x6a3803d5f059902a|1,1|300,120|fw2.example,fw1.example" \
    csp.type csp.lifetime csp.record.id csp.record.decision csp.record.granted_lifetime csp.middlebox_name
check "REJECT + IPv4 discovery option" "udp.srcport == 40001" \
    "3|64|policy|1|17|port 5004 closed|IPv4 option 0x9e|1|1|0|0xdeadbeef0badcafe" \
    csp.type csp.result csp.result_class csp.flags.from_middlebox csp.reason.detail csp.reason.text \
    csp.discovery.encoding csp.discovery.query csp.discovery.capable csp.discovery.reply_port csp.discovery.nonce
check "DENY + IPv6 hop-by-hop discovery option" "udp.srcport == 40002" \
    "11|203.0.113.0|24|17|53|600|IPv6 hop-by-hop option 0x1e|0xdeadbeef0badcafe" \
    csp.type csp.deny.prefix csp.deny.prefix_length csp.deny.proto csp.deny.port csp.lifetime \
    csp.discovery.encoding csp.discovery.nonce
check "MAPPED via heuristic on port 9999" "udp.dstport == 9999" \
    "5|198.18.0.1,198.18.0.1|61000,61000|4" csp.type csp.endpoint.address csp.endpoint.port csp.record.decision
check "heuristic off: port 9999 not CSP" "udp.dstport == 9999 && !csp" "9999" udp.dstport -- -o csp.heuristic:FALSE
check "custom port preference" "udp.dstport == 9999" "5" csp.type -- -o csp.heuristic:FALSE -o csp.udp_port:9999
check "truncated SETUP is flagged" "udp.srcport == 40004" "1|length 83 but 80 octets,TLV header truncated" csp.type _ws.expert.message
check "TCP SYN discovery option" "tcp.flags.syn == 1 && tcp.srcport == 40005" \
    "TCP option 253, ExID 0x4353|1|0xdeadbeef0badcafe" csp.discovery.encoding csp.discovery.query csp.discovery.nonce

if [ "$failures" -ne 0 ]; then echo "tshark.sh: $failures check(s) failed" >&2; exit 1; fi
echo "tshark.sh: all checks passed"
