#if canImport(Glibc)
import Glibc
#endif
import CSPWire
import SystemSupport

/// Sends one packet carrying the discovery option toward a destination and collects the
/// ANNOUNCEs that CSP middleboxes on the path send back.
///
/// Privileges: the IPv4 option (IP_OPTIONS) needs none; the IPv6 hop-by-hop header
/// (IPV6_HOPOPTS) needs CAP_NET_RAW; the TCP option travels in a SYN built by hand and sent on a
/// raw socket, which needs CAP_NET_RAW.
public struct DiscoveryProbe: Sendable {
    public struct Answer: Sendable {
        public var announce: CSPMessage
        public var from: CSPEndpoint
    }

    public var destination: CSPEndpoint
    public var encoding: CSPDiscoveryOption.Encoding
    public var timeout: Duration = .seconds(1)

    public init(destination: CSPEndpoint, encoding: CSPDiscoveryOption.Encoding) {
        self.destination = destination
        self.encoding = encoding
    }

    public func run() throws(SystemCallError) -> [Answer] {
        let family = destination.address.family
        // ANNOUNCEs come back to this socket: its port goes into the option as the reply port.
        let socket = try UDPSocket(family: family)
        // Never 0: nonce 0 marks an unsolicited ANNOUNCE (docs/PROTOCOL.md 5.7.1).
        let option = CSPDiscoveryOption(replyPort: socket.localPort, nonce: max(1, secureRandomUInt64()))
        // An empty datagram: to a CSP port it is the pure probe of docs/PROTOCOL.md 9.2 (answered and
        // forwarded, never mistaken for a malformed message); to any other port it carries nothing.
        let probe: [UInt8] = []
        switch encoding {
        case .ipv4Option:
            try socket.setOption(level: Int32(IPPROTO_IP), name: IP_OPTIONS, bytes: option.ipv4OptionsField)
            try socket.send(probe, to: destination)
        case .ipv6HopByHop:
            try socket.setOption(level: Int32(IPPROTO_IPV6), name: Int32(IPV6_HOPOPTS), bytes: option.ipv6HopByHopHeader())
            try socket.send(probe, to: destination)
        case .tcpOption:
            let source = try UDPSocket.sourceAddress(toward: destination)
            let segment = PacketBuilder.tcpPacket(
                source: source, sourcePort: socket.localPort, destination: destination.address,
                destinationPort: destination.port, sequenceNumber: UInt32(truncatingIfNeeded: option.nonce),
                flags: .syn, options: option.tcpOption)
            try RawIPSocket(family: family).send(segment, to: destination.address)
        }
        var answers: [Answer] = []
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        while clock.now < deadline {
            guard let (bytes, from) = try socket.receive(timeout: clock.now.duration(to: deadline)) else { break }
            // Only an ANNOUNCE echoing our 64-bit nonce counts: anything else is stray or forged.
            guard let message = try? CSPMessage.parse(bytes), message.type == .announce, message.nonce == option.nonce
            else { continue }
            answers.append(Answer(announce: message, from: from))
        }
        return answers
    }
}

/// A raw socket that sends complete IP packets (header included). Needs CAP_NET_RAW.
final class RawIPSocket: Sendable {
    let fd: Int32
    let family: IPAddress.Family

    init(family: IPAddress.Family) throws(SystemCallError) {
        self.family = family
        fd = try systemCall("socket(SOCK_RAW) (needs CAP_NET_RAW)") {
            socket(family == .ipv4 ? AF_INET : AF_INET6, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(IPPROTO_RAW))
        }
    }

    deinit { close(fd) }

    func send(_ packet: [UInt8], to destination: IPAddress) throws(SystemCallError) {
        try UDPSocket.withSockaddr(CSPEndpoint(address: destination, port: 0)) { sa, len throws(SystemCallError) in
            _ = try systemCall("sendto (raw) \(destination)") {
                packet.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, sa, len) }
            }
        }
    }
}
