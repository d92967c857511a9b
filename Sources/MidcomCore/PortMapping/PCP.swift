import CSPWire

/// PCP (RFC 6887) messages, as a gateway reads requests and writes responses: MAP, PEER and
/// ANNOUNCE, IPv4 clients (our NAT is IPv4). Pure and bounds-checked; a request is at most 1100
/// octets (RFC 6887 7).
public enum PCP {
    public static let version: UInt8 = 2
    public static let maximumLength = 1100
    static let headerLength = 24
    static let mapBodyLength = 36
    static let peerBodyLength = 56

    public enum Opcode: UInt8, Sendable {
        case announce = 0
        case map = 1
        case peer = 2
    }

    /// Result codes (RFC 6887 7.4).
    public enum Result: UInt8, Sendable {
        case success = 0
        case unsupportedVersion = 1
        case notAuthorized = 2
        case malformedRequest = 3
        case unsupportedOpcode = 4
        case unsupportedOption = 5
        case malformedOption = 6
        case networkFailure = 7
        case noResources = 8
        case unsupportedProtocol = 9
        case userExceededQuota = 10
        case cannotProvideExternal = 11
        case addressMismatch = 12
        case excessiveRemotePeers = 13
    }

    /// The 96-bit mapping nonce: a mapping belongs to the client that created it with this
    /// value (RFC 6887 11.1); a request with another nonce may not change or delete it.
    public struct Nonce: Hashable, Sendable, CustomStringConvertible {
        public var high: UInt64
        public var low: UInt32
        public init(high: UInt64, low: UInt32) {
            self.high = high
            self.low = low
        }
        init(_ b: ArraySlice<UInt8>) {
            high = b.prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
            low = b.dropFirst(8).prefix(4).reduce(0) { $0 << 8 | UInt32($1) }
        }
        var bytes: [UInt8] { (0..<8).map { UInt8(high >> (56 - 8 * $0) & 0xff) } + NATPMP.bigEndian(low) }
        public var description: String {
            let digits = String(low, radix: 16)
            return hex(high) + String(repeating: "0", count: 8 - digits.count) + digits
        }
    }

    /// A MAP or PEER request's opcode fields.
    public struct Mapping: Equatable, Sendable {
        public var nonce: Nonce
        /// IANA protocol number; 0 means all protocols (not served: a pinhole is per protocol).
        public var proto: UInt8
        public var internalPort: UInt16
        public var suggestedExternalPort: UInt16
        /// Unspecified (all zeros, or ::ffff:0.0.0.0) when the client has no preference.
        public var suggestedExternalAddress: IPAddress
        /// PEER only: the remote peer.
        public var peer: CSPEndpoint?
    }

    /// Options a server must understand (RFC 6887 7.3, 13): PREFER_FAILURE is honoured,
    /// THIRD_PARTY is refused (only a client's own address is mapped), FILTER is not offered.
    public struct Options: Equatable, Sendable {
        public var preferFailure = false
        public var thirdParty = false
        /// The first mandatory option (code < 128) this server does not serve.
        public var unsupported: UInt8?
    }

    public struct Request: Equatable, Sendable {
        public var opcode: Opcode
        public var requestedLifetime: UInt32
        /// The client's own address as it wrote it (must be the datagram's source).
        public var clientAddress: IPAddress
        public var mapping: Mapping?
        public var options: Options
    }

    public enum ParseError: Error, Equatable {
        /// Shorter than 4 octets, a response, or too long: dropped without an answer.
        case dropped
        /// Answered with this result, echoing what could be read of the request.
        case answer(Result, opcode: UInt8)
    }

    public static func parse(_ bytes: some Collection<UInt8>) throws(ParseError) -> Request {
        let b = Array(bytes.prefix(maximumLength + 1))
        guard b.count >= 4, b.count <= maximumLength, b[1] & 0x80 == 0 else { throw .dropped }
        let opcodeValue = b[1] & 0x7f
        guard b[0] == version else { throw .answer(.unsupportedVersion, opcode: opcodeValue) }
        guard b.count >= headerLength, b.count % 4 == 0 else { throw .answer(.malformedRequest, opcode: opcodeValue) }
        guard let opcode = Opcode(rawValue: opcodeValue) else { throw .answer(.unsupportedOpcode, opcode: opcodeValue) }
        let lifetime = b[4..<8].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        let client = address(b[8..<24])
        var offset = headerLength
        var mapping: Mapping?
        if opcode != .announce {
            let length = opcode == .map ? mapBodyLength : peerBodyLength
            guard b.count >= offset + length else { throw .answer(.malformedRequest, opcode: opcodeValue) }
            let body = b[offset..<(offset + length)]
            let s = body.startIndex
            var m = Mapping(
                nonce: Nonce(body[s..<(s + 12)]), proto: body[s + 12],
                internalPort: UInt16(body[s + 16]) << 8 | UInt16(body[s + 17]),
                suggestedExternalPort: UInt16(body[s + 18]) << 8 | UInt16(body[s + 19]),
                suggestedExternalAddress: address(body[(s + 20)..<(s + 36)]))
            if opcode == .peer {
                let port = UInt16(body[s + 36]) << 8 | UInt16(body[s + 37])
                m.peer = CSPEndpoint(address: address(body[(s + 40)..<(s + 56)]), port: port)
            }
            mapping = m
            offset += length
        }
        var options = Options()
        while offset < b.count {
            guard offset + 4 <= b.count else { throw .answer(.malformedOption, opcode: opcodeValue) }
            let code = b[offset]
            let length = Int(b[offset + 2]) << 8 | Int(b[offset + 3])
            let padded = (length + 3) / 4 * 4
            guard offset + 4 + padded <= b.count else { throw .answer(.malformedOption, opcode: opcodeValue) }
            switch code {
            case 1: options.thirdParty = true
            case 2:
                guard length == 0 else { throw .answer(.malformedOption, opcode: opcodeValue) }
                options.preferFailure = true
            default:
                if code < 128, options.unsupported == nil { options.unsupported = code }
            }
            offset += 4 + padded
        }
        return Request(opcode: opcode, requestedLifetime: lifetime, clientAddress: client, mapping: mapping, options: options)
    }

    /// A response: the header, then for MAP and PEER the request's fields with the assigned
    /// external port and address (on errors, as the client sent them: RFC 6887 8.3). On an error
    /// `lifetime` is how long the client should consider the error valid (RFC 6887 7.2).
    public static func response(
        opcode: UInt8, result: Result, lifetime: UInt32, epoch: UInt32, mapping: Mapping?, externalPort: UInt16? = nil,
        externalAddress: IPAddress? = nil
    ) -> [UInt8] {
        var out: [UInt8] = [version, 0x80 | opcode, 0, result.rawValue]
        out += NATPMP.bigEndian(lifetime) + NATPMP.bigEndian(epoch)
        out += [UInt8](repeating: 0, count: 12)
        guard let m = mapping else { return out }
        out += m.nonce.bytes + [m.proto, 0, 0, 0] + NATPMP.bigEndian16(m.internalPort)
        out += NATPMP.bigEndian16(externalPort ?? m.suggestedExternalPort)
        out += mapped(externalAddress ?? m.suggestedExternalAddress)
        if let peer = m.peer {
            out += NATPMP.bigEndian16(peer.port) + [0, 0] + mapped(peer.address)
        }
        return out
    }

    /// An IPv4 address in PCP's 128-bit field is IPv4-mapped (::ffff:a.b.c.d).
    static func address(_ b: ArraySlice<UInt8>) -> IPAddress {
        let bytes = Array(b)
        if bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xff, bytes[11] == 0xff { return IPAddress(bytes: bytes[12..<16])! }
        return IPAddress(bytes: bytes) ?? IPAddress(ipv6: 0, 0)
    }

    static func mapped(_ address: IPAddress) -> [UInt8] {
        address.family == .ipv4 ? [UInt8](repeating: 0, count: 10) + [0xff, 0xff] + address.bytes : address.bytes
    }
}
