import CSPWire

/// NAT-PMP (RFC 6886) messages, as a gateway reads requests and writes responses. Pure and
/// bounds-checked: every request is at most 12 octets; anything else is malformed.
public enum NATPMP {
    public static let serverPort: UInt16 = 5351
    public static let clientPort: UInt16 = 5350
    public static let version: UInt8 = 0

    public enum Request: Equatable, Sendable {
        /// Opcode 0: what is the external address?
        case externalAddress
        /// Opcodes 1 (UDP) and 2 (TCP): map `internalPort` for `lifetime` seconds (0 deletes),
        /// preferably to `suggestedExternalPort` (0: no preference).
        case map(proto: IPProtocol, internalPort: UInt16, suggestedExternalPort: UInt16, lifetime: UInt32)
    }

    /// Result codes (RFC 6886 3.5).
    public enum Result: UInt16, Sendable {
        case success = 0
        case unsupportedVersion = 1
        /// Not authorized / refused (e.g. policy, or a request for another host).
        case notAuthorized = 2
        /// Network failure (e.g. the gateway has no external address).
        case networkFailure = 3
        /// Out of resources (no free port, table full).
        case outOfResources = 4
        case unsupportedOpcode = 5
    }

    public enum ParseError: Error, Equatable {
        /// Too short, too long, or not a request: dropped without an answer.
        case malformed
        /// Answered with result 1 (and our version) so a client can fall back.
        case unsupportedVersion(opcode: UInt8)
        /// Answered with result 5.
        case unsupportedOpcode(UInt8)
    }

    public static func parse(_ bytes: some Collection<UInt8>) throws(ParseError) -> Request {
        let b = Array(bytes.prefix(13))
        guard b.count >= 2 else { throw .malformed }
        let opcode = b[1]
        guard opcode < 128 else { throw .malformed }  // a response, not a request
        guard b[0] == version else { throw .unsupportedVersion(opcode: opcode) }
        switch opcode {
        case 0:
            guard b.count == 2 else { throw .malformed }
            return .externalAddress
        case 1, 2:
            guard b.count == 12 else { throw .malformed }
            let internalPort = UInt16(b[4]) << 8 | UInt16(b[5])
            let suggested = UInt16(b[6]) << 8 | UInt16(b[7])
            let lifetime = b[8..<12].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            guard internalPort != 0 else { throw .malformed }
            return .map(proto: opcode == 1 ? .udp : .tcp, internalPort: internalPort, suggestedExternalPort: suggested, lifetime: lifetime)
        default:
            throw .unsupportedOpcode(opcode)
        }
    }

    /// The response to an external-address request.
    public static func externalAddressResponse(_ result: Result, epoch: UInt32, address: IPAddress?) -> [UInt8] {
        var out = header(opcode: 0, result: result, epoch: epoch)
        out += address?.ipv4Value.map(bigEndian) ?? [0, 0, 0, 0]
        return out
    }

    /// The response to a mapping request (opcode 1 or 2).
    public static func mapResponse(
        _ result: Result, proto: IPProtocol, epoch: UInt32, internalPort: UInt16, externalPort: UInt16, lifetime: UInt32
    ) -> [UInt8] {
        var out = header(opcode: proto == .udp ? 1 : 2, result: result, epoch: epoch)
        out += bigEndian16(internalPort) + bigEndian16(externalPort) + bigEndian(lifetime)
        return out
    }

    /// A response carrying only a result (unsupported version or opcode).
    public static func errorResponse(opcode: UInt8, _ result: Result, epoch: UInt32) -> [UInt8] {
        header(opcode: opcode, result: result, epoch: epoch)
    }

    static func header(opcode: UInt8, result: Result, epoch: UInt32) -> [UInt8] {
        [version, 128 &+ opcode] + bigEndian16(result.rawValue) + bigEndian(epoch)
    }

    static func bigEndian(_ value: UInt32) -> [UInt8] { [UInt8(value >> 24), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)] }
    static func bigEndian16(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xff)] }
}
