/// An IPv4 or IPv6 address stored inline (no heap allocation), in network byte order.
///
/// The wire codecs and the core share this type so a flow parsed from a packet can key the
/// session table without conversion.
public struct IPAddress: Hashable, Sendable, Comparable {
    public enum Family: UInt8, Sendable {
        case ipv4 = 4
        case ipv6 = 6
    }

    /// Upper and lower 64 bits of the address; an IPv4 address lives in the low 32 bits of `low`.
    @usableFromInline let high: UInt64
    @usableFromInline let low: UInt64
    /// Last: the next field of a struct holding an address starts right after its 17 octets
    /// (a `FlowTuple` is 48 octets, not 72: docs/PERFORMANCE.md "Seventh pass").
    public let family: Family

    @inlinable public init(ipv4 value: UInt32) {
        family = .ipv4
        high = 0
        low = UInt64(value)
    }

    @inlinable public init(ipv6 high: UInt64, _ low: UInt64) {
        family = .ipv6
        self.high = high
        self.low = low
    }

    /// Reads 4 (IPv4) or 16 (IPv6) bytes in network order.
    public init?(bytes: some Collection<UInt8>) {
        switch bytes.count {
        case 4:
            self.init(ipv4: bytes.reduce(0) { $0 << 8 | UInt32($1) })
        case 16:
            let h = bytes.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            let l = bytes.dropFirst(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            self.init(ipv6: h, l)
        default:
            return nil
        }
    }

    public var ipv4Value: UInt32? { family == .ipv4 ? UInt32(truncatingIfNeeded: low) : nil }

    /// One word for an IPv4 address (the family above its 32 bits), two for IPv6: the synthesized
    /// hash fed the three fields one by one, and the gateway hashes an address on every SETUP and
    /// ACCEPT (the pending counts per owner, docs/PERFORMANCE.md "Ninth pass"). Equal addresses
    /// feed equal words; an IPv4 and an IPv6 address feed different lengths.
    public func hash(into hasher: inout Hasher) {
        if family == .ipv4 {
            hasher.combine(low | 1 << 32)
        } else {
            hasher.combine(high)
            hasher.combine(low)
        }
    }

    /// Network-order bytes: 4 for IPv4, 16 for IPv6.
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        appendBytes(to: &out)
        return out
    }

    public var byteCount: Int { family == .ipv4 ? 4 : 16 }

    public func appendBytes(to out: inout [UInt8]) {
        if family == .ipv4 {
            let v = UInt32(truncatingIfNeeded: low)
            out.append(contentsOf: [UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)])
        } else {
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(high >> UInt64(shift) & 0xff)) }
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(low >> UInt64(shift) & 0xff)) }
        }
    }

    public static func < (a: IPAddress, b: IPAddress) -> Bool {
        (a.family.rawValue, a.high, a.low) < (b.family.rawValue, b.high, b.low)
    }

    /// True when the first `prefixLength` bits equal those of `network`.
    public func isIn(_ network: IPAddress, prefixLength: Int) -> Bool {
        guard family == network.family else { return false }
        let bits = family == .ipv4 ? 32 : 128
        let p = max(0, min(prefixLength, bits))
        if family == .ipv4 {
            if p == 0 { return true }
            let mask = UInt64(UInt32.max << UInt32(32 - p))
            return low & mask == network.low & mask
        }
        func mask(_ n: Int) -> UInt64 { n <= 0 ? 0 : (n >= 64 ? .max : UInt64.max << UInt64(64 - n)) }
        return high & mask(p) == network.high & mask(p) && low & mask(p - 64) == network.low & mask(p - 64)
    }
}

extension IPAddress: CustomStringConvertible, LosslessStringConvertible {
    /// Parses dotted-quad IPv4 or RFC 4291 text IPv6 (with `::` compression and an embedded IPv4 tail).
    public init?(_ text: String) {
        if text.contains(":") {
            guard let v6 = IPAddress.parseIPv6(Substring(text)) else { return nil }
            self = v6
        } else {
            guard let v4 = IPAddress.parseIPv4(Substring(text)) else { return nil }
            self.init(ipv4: v4)
        }
    }

    static func parseIPv4(_ text: Substring) -> UInt32? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy(\.isASCII), let octet = UInt8(part) else { return nil }
            value = value << 8 | UInt32(octet)
        }
        return value
    }

    static func parseIPv6(_ text: Substring) -> IPAddress? {
        var groups: [UInt16] = []
        var tail: [UInt16] = []
        var sawCompression = false
        var halves: [String] = [String(text)]
        if let range = text.firstRange(of: "::") {
            halves = [String(text[..<range.lowerBound]), String(text[range.upperBound...])]
            guard halves[1].firstRange(of: "::") == nil else { return nil }
        }
        func parseGroups(_ s: String, into out: inout [UInt16]) -> Bool {
            if s.isEmpty { return true }
            let fields = s.split(separator: ":", omittingEmptySubsequences: false)
            for (index, field) in fields.enumerated() {
                if index == fields.count - 1, field.contains(".") {
                    guard let v4 = parseIPv4(field) else { return false }
                    out.append(UInt16(v4 >> 16))
                    out.append(UInt16(v4 & 0xffff))
                } else {
                    guard !field.isEmpty, field.count <= 4, let g = UInt16(field, radix: 16) else { return false }
                    out.append(g)
                }
            }
            return true
        }
        guard parseGroups(halves[0], into: &groups) else { return nil }
        if halves.count == 2 {
            sawCompression = true
            guard parseGroups(halves[1], into: &tail) else { return nil }
        }
        let total = groups.count + tail.count
        if sawCompression {
            guard total <= 7 else { return nil }
            groups += Array(repeating: 0, count: 8 - total) + tail
        } else {
            guard total == 8 else { return nil }
        }
        let h = groups[0..<4].reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        let l = groups[4..<8].reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        return IPAddress(ipv6: h, l)
    }

    public var description: String {
        if family == .ipv4 {
            let v = UInt32(truncatingIfNeeded: low)
            return "\(v >> 24).\(v >> 16 & 0xff).\(v >> 8 & 0xff).\(v & 0xff)"
        }
        let groups = (0..<8).map { i -> UInt16 in
            let word = i < 4 ? high : low
            return UInt16(truncatingIfNeeded: word >> UInt64((3 - i % 4) * 16))
        }
        // RFC 5952: compress the longest run (length >= 2) of zero groups, first one on ties.
        var bestStart = -1, bestLength = 0, runStart = -1
        for i in 0...8 {
            if i < 8, groups[i] == 0 {
                if runStart < 0 { runStart = i }
            } else if runStart >= 0 {
                if i - runStart > bestLength { bestStart = runStart; bestLength = i - runStart }
                runStart = -1
            }
        }
        if bestLength < 2 { return groups.map { String($0, radix: 16) }.joined(separator: ":") }
        let head = groups[..<bestStart].map { String($0, radix: 16) }.joined(separator: ":")
        let rest = groups[(bestStart + bestLength)...].map { String($0, radix: 16) }.joined(separator: ":")
        return head + "::" + rest
    }
}

/// IP protocol numbers used by CSP flows. An open set: any value round-trips.
public struct IPProtocol: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let tcp = IPProtocol(rawValue: 6)
    public static let udp = IPProtocol(rawValue: 17)
    public static let icmp = IPProtocol(rawValue: 1)
    public static let icmpv6 = IPProtocol(rawValue: 58)
    public static let sctp = IPProtocol(rawValue: 132)

    public init?(name: String) {
        switch name.lowercased() {
        case "tcp": self = .tcp
        case "udp": self = .udp
        case "icmp": self = .icmp
        case "icmpv6": self = .icmpv6
        case "sctp": self = .sctp
        default:
            guard let n = UInt8(name) else { return nil }
            self.init(rawValue: n)
        }
    }

    public var description: String {
        switch self {
        case .tcp: "tcp"
        case .udp: "udp"
        case .icmp: "icmp"
        case .icmpv6: "icmpv6"
        case .sctp: "sctp"
        default: "proto-\(rawValue)"
        }
    }
}

/// A transport flow as seen from its initiator. Port 0 means "any" where the protocol allows wildcards.
public struct FlowTuple: Hashable, Sendable, CustomStringConvertible {
    // Declared widest first so the small fields fill the addresses' tail padding: 48 octets
    // instead of 72 in every session, pending request, kernel object and copy of them.
    public var source: IPAddress
    public var destination: IPAddress
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var proto: IPProtocol

    @inlinable public init(proto: IPProtocol, source: IPAddress, sourcePort: UInt16, destination: IPAddress, destinationPort: UInt16) {
        self.proto = proto
        self.source = source
        self.sourcePort = sourcePort
        self.destination = destination
        self.destinationPort = destinationPort
    }

    /// One end of a flow.
    public enum End: Sendable, Equatable {
        case source
        case destination
    }

    /// The address at `end`.
    public func address(of end: End) -> IPAddress { end == .source ? source : destination }

    /// The flow with one end moved to `endpoint` (a REBIND's NEW-ADDRESS, an ADD-PATH's PATH):
    /// the source port follows the endpoint (0 stays "any port"), the destination port changes
    /// only when the endpoint names one.
    public func moving(_ end: End, to endpoint: CSPEndpoint) -> FlowTuple {
        var moved = self
        switch end {
        case .source:
            moved.source = endpoint.address
            moved.sourcePort = endpoint.port
        case .destination:
            moved.destination = endpoint.address
            if endpoint.port != 0 { moved.destinationPort = endpoint.port }
        }
        return moved
    }

    /// The same flow seen from the responder.
    public var reversed: FlowTuple {
        FlowTuple(proto: proto, source: destination, sourcePort: destinationPort, destination: source, destinationPort: sourcePort)
    }

    public var description: String {
        func endpoint(_ a: IPAddress, _ p: UInt16) -> String {
            let port = p == 0 ? "*" : String(p)
            return a.family == .ipv6 ? "[\(a)]:\(port)" : "\(a):\(port)"
        }
        return "\(proto) \(endpoint(source, sourcePort)) -> \(endpoint(destination, destinationPort))"
    }
}

extension IPAddress {
    /// This address with every bit after the first `length` cleared.
    public func masked(to length: UInt8) -> IPAddress { setting(from: length, to: 0) }
    /// This address with every bit after the first `length` set.
    public func filled(from length: UInt8) -> IPAddress { setting(from: length, to: 1) }

    private func setting(from length: UInt8, to bit: UInt8) -> IPAddress {
        var bytes = self.bytes
        for index in 0..<bytes.count {
            let first = index * 8
            let keep = max(0, min(8, Int(length) - first))
            let mask: UInt8 = keep == 8 ? 0xff : keep == 0 ? 0 : ~(0xff >> UInt8(keep))
            bytes[index] = bit == 0 ? bytes[index] & mask : bytes[index] | ~mask
        }
        return IPAddress(bytes: bytes)!
    }
}
