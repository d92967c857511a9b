/// A validated, zero-copy view of an IPv4 or IPv6 packet as NFQUEUE delivers it (starting at the IP
/// header). The initializer checks every length once; afterwards no accessor can fail.
///
/// For IPv6 it walks the extension-header chain (hop-by-hop, routing, destination options,
/// fragment) to find the upper-layer protocol, remembering where hop-by-hop options sit so the
/// discovery option can be found without a second walk.
public struct IPPacketView {
    public let bytes: UnsafeRawBufferPointer
    public let family: IPAddress.Family
    /// The upper-layer protocol (after IPv6 extension headers).
    public let proto: IPProtocol
    /// Offset of the transport header.
    public let transportOffset: Int
    /// Bytes of the packet according to its own length fields (may be less than `bytes.count`);
    /// for a truncated capture, the bytes captured.
    public let totalLength: Int
    /// The capture holds only the packet's first `totalLength` octets (NFQUEUE copy range): headers
    /// and ports can be read, the payload is incomplete.
    public let isTruncated: Bool
    /// IPv4 options (between the fixed header and the transport header), empty for IPv6.
    public let ipv4Options: Range<Int>
    /// IPv6 hop-by-hop options data (after next-header and length octets), empty if absent.
    public let hopByHopOptions: Range<Int>
    /// True for any fragment other than the first, which carries no transport header.
    public let isNonInitialFragment: Bool

    static let maximumExtensionHeaders = 8

    /// `allowingTruncation`: the bytes are a capture cut short on purpose (NFQUEUE reports the
    /// packet's original length beyond the copy range); lengths are then checked against what was
    /// captured and `isTruncated` tells the payload is incomplete.
    public init(_ bytes: UnsafeRawBufferPointer, allowingTruncation: Bool = false) throws(CSPWireError) {
        guard bytes.count >= 1 else { throw CSPWireError(.truncated, at: 0) }
        var truncated = false
        switch bytes[0] >> 4 {
        case 4:
            guard bytes.count >= 20 else { throw CSPWireError(.truncated, at: bytes.count) }
            let headerLength = Int(bytes[0] & 0x0f) * 4
            var total = Int(bytes.loadBigEndianUInt16(at: 2))
            if allowingTruncation, total > bytes.count {
                total = bytes.count
                truncated = true
            }
            guard headerLength >= 20, total >= headerLength, total <= bytes.count else {
                throw CSPWireError(.badIPHeader, at: 0)
            }
            let fragmentOffset = bytes.loadBigEndianUInt16(at: 6) & 0x1fff
            family = .ipv4
            proto = IPProtocol(rawValue: bytes[9])
            transportOffset = headerLength
            totalLength = total
            ipv4Options = 20..<headerLength
            hopByHopOptions = 0..<0
            isNonInitialFragment = fragmentOffset != 0
        case 6:
            guard bytes.count >= 40 else { throw CSPWireError(.truncated, at: bytes.count) }
            var total = 40 + Int(bytes.loadBigEndianUInt16(at: 4))
            if allowingTruncation, total > bytes.count {
                total = bytes.count
                truncated = true
            }
            guard total <= bytes.count else { throw CSPWireError(.badIPHeader, at: 4) }
            var next = bytes[6]
            var offset = 40
            var hopByHop = 0..<0
            var nonInitial = false
            var walked = 0
            extensionWalk: while true {
                switch next {
                case 0, 43, 60:  // hop-by-hop, routing, destination options: (next, hdr-ext-len in 8-octet units)
                    guard total - offset >= 8, walked < Self.maximumExtensionHeaders else {
                        throw CSPWireError(.badIPHeader, at: offset)
                    }
                    let length = (Int(bytes[offset + 1]) + 1) * 8
                    guard total - offset >= length else { throw CSPWireError(.badIPHeader, at: offset) }
                    // RFC 8200: hop-by-hop must come first.
                    if next == 0 {
                        guard offset == 40 else { throw CSPWireError(.badIPHeader, at: offset) }
                        hopByHop = offset + 2..<offset + length
                    }
                    next = bytes[offset]
                    offset += length
                    walked += 1
                case 44:  // fragment header, fixed 8 octets
                    guard total - offset >= 8 else { throw CSPWireError(.badIPHeader, at: offset) }
                    nonInitial = bytes.loadBigEndianUInt16(at: offset + 2) & 0xfff8 != 0
                    next = bytes[offset]
                    offset += 8
                    walked += 1
                    // A non-initial fragment carries data, not the next header: stop walking.
                    if nonInitial { break extensionWalk }
                default:
                    break extensionWalk
                }
            }
            family = .ipv6
            proto = IPProtocol(rawValue: next)
            transportOffset = offset
            totalLength = total
            ipv4Options = 0..<0
            hopByHopOptions = hopByHop
            isNonInitialFragment = nonInitial
        default:
            throw CSPWireError(.badIPHeader, at: 0)
        }
        self.bytes = bytes
        isTruncated = truncated
    }

    // The getters below are inlinable: the daemon's classifier reads them for every queued packet,
    // and across the module boundary each was a call (docs/PERFORMANCE.md, "Twelfth pass").
    @inlinable public var source: IPAddress {
        family == .ipv4 ? IPAddress(ipv4: bytes.loadBigEndianUInt32(at: 12)) : Self.ipv6Address(bytes, at: 8)
    }

    @inlinable public var destination: IPAddress {
        family == .ipv4 ? IPAddress(ipv4: bytes.loadBigEndianUInt32(at: 16)) : Self.ipv6Address(bytes, at: 24)
    }

    /// Bytes after the IP and extension headers, up to the packet's own length.
    public var transportBytes: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: bytes[transportOffset..<totalLength])
    }

    @usableFromInline static func ipv6Address(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> IPAddress {
        let high = UInt64(bytes.loadBigEndianUInt32(at: offset)) << 32 | UInt64(bytes.loadBigEndianUInt32(at: offset + 4))
        let low = UInt64(bytes.loadBigEndianUInt32(at: offset + 8)) << 32 | UInt64(bytes.loadBigEndianUInt32(at: offset + 12))
        return IPAddress(ipv6: high, low)
    }

    /// The transport ports of TCP, UDP, UDP-Lite, SCTP and DCCP (all start with two 16-bit ports),
    /// or nil for other protocols, fragments and truncated headers.
    @inlinable public var ports: (source: UInt16, destination: UInt16)? {
        guard !isNonInitialFragment, totalLength - transportOffset >= 4 else { return nil }
        switch proto.rawValue {
        case 6, 17, 33, 132, 136:
            return (bytes.loadBigEndianUInt16(at: transportOffset), bytes.loadBigEndianUInt16(at: transportOffset + 2))
        default:
            return nil
        }
    }

    /// The flow this packet belongs to, seen from its sender. Ports are 0 for portless protocols.
    @inlinable public var flow: FlowTuple { flow(ports: ports) }

    /// `flow` for a caller that has read `ports` already.
    @inlinable public func flow(ports: (source: UInt16, destination: UInt16)?) -> FlowTuple {
        FlowTuple(
            proto: proto, source: source, sourcePort: ports?.source ?? 0, destination: destination,
            destinationPort: ports?.destination ?? 0)
    }
}

/// A validated view of a UDP datagram within an IP packet.
public struct UDPDatagramView {
    public let packet: IPPacketView
    public let sourcePort: UInt16
    public let destinationPort: UInt16
    /// Offset of the UDP payload within `packet.bytes`.
    public let payloadOffset: Int
    public let payloadLength: Int

    public init(_ packet: IPPacketView) throws(CSPWireError) {
        guard packet.proto == .udp, !packet.isNonInitialFragment else {
            throw CSPWireError(.badTransportHeader, at: packet.transportOffset)
        }
        let start = packet.transportOffset
        guard packet.totalLength - start >= 8 else { throw CSPWireError(.truncated, at: start) }
        let length = Int(packet.bytes.loadBigEndianUInt16(at: start + 4))
        guard length >= 8, length <= packet.totalLength - start else {
            throw CSPWireError(.badTransportHeader, at: start + 4)
        }
        self.packet = packet
        sourcePort = packet.bytes.loadBigEndianUInt16(at: start)
        destinationPort = packet.bytes.loadBigEndianUInt16(at: start + 2)
        payloadOffset = start + 8
        payloadLength = length - 8
    }

    public var payload: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: packet.bytes[payloadOffset..<payloadOffset + payloadLength])
    }

    /// True when the checksum verifies, or is 0 ("none", allowed for IPv4 only).
    public var checksumIsValid: Bool {
        let start = packet.transportOffset
        let stored = packet.bytes.loadBigEndianUInt16(at: start + 6)
        if stored == 0 { return packet.family == .ipv4 }
        let datagram = packet.bytes[start..<payloadOffset + payloadLength]
        let sum = PacketBuilder.onesComplementSum(
            datagram,
            initial: PacketBuilder.pseudoHeaderSum(
                source: packet.source, destination: packet.destination, proto: 17, length: datagram.count))
        return PacketBuilder.fold(sum) == 0
    }
}

extension IPPacketView {
    /// True for IPv6 (no header checksum) or an IPv4 header whose checksum verifies.
    public var ipv4HeaderChecksumIsValid: Bool {
        guard family == .ipv4 else { return true }
        return PacketBuilder.fold(PacketBuilder.onesComplementSum(bytes[0..<transportOffset])) == 0
    }
}

/// Internet checksum (RFC 1071) helpers and packet construction.
public enum PacketBuilder {
    /// One's-complement sum of 16-bit words, not yet folded or inverted.
    @inlinable
    public static func onesComplementSum<C: Collection<UInt8>>(_ bytes: C, initial: UInt32 = 0) -> UInt32 {
        var sum = initial
        var iterator = bytes.makeIterator()
        while let high = iterator.next() {
            let low = iterator.next() ?? 0
            sum &+= UInt32(high) << 8 | UInt32(low)
        }
        return sum
    }

    @inlinable
    public static func fold(_ sum: UInt32) -> UInt16 {
        var s = sum
        while s >> 16 != 0 { s = (s & 0xffff) &+ (s >> 16) }
        return ~UInt16(s)
    }

    static func pseudoHeaderSum(source: IPAddress, destination: IPAddress, proto: UInt8, length: Int) -> UInt32 {
        var header: [UInt8] = []
        source.appendBytes(to: &header)
        destination.appendBytes(to: &header)
        if source.family == .ipv4 {
            header += [0, proto]
            header.appendBigEndian(UInt16(length))
        } else {
            header.appendBigEndian(UInt32(length))
            header += [0, 0, 0, proto]
        }
        return onesComplementSum(header)
    }

    /// A copy of the packet whose UDP payload is replaced by `payload`, with the IP total/payload
    /// length, IPv4 header checksum, UDP length and UDP checksum recomputed. Options and extension
    /// headers are kept. Used when a middlebox appends its record to a CSP message in transit.
    public static func replacingUDPPayload(of datagram: UDPDatagramView, with payload: [UInt8]) throws(CSPWireError)
        -> [UInt8]
    {
        let packet = datagram.packet
        let udpStart = packet.transportOffset
        let udpLength = 8 + payload.count
        let total = udpStart + udpLength
        guard udpLength <= Int(UInt16.max), total <= Int(UInt16.max) + (packet.family == .ipv6 ? 40 : 0) else {
            throw CSPWireError(.messageTooLong, at: 0)
        }
        var out = [UInt8](packet.bytes[0..<udpStart])
        out.reserveCapacity(total)
        out.append(contentsOf: packet.bytes[udpStart..<udpStart + 4])  // ports
        out.appendBigEndian(UInt16(udpLength))
        out.appendBigEndian(UInt16(0))  // checksum, patched below
        out.append(contentsOf: payload)
        if packet.family == .ipv4 {
            out.writeBigEndian(UInt16(total), at: 2)
            out.writeBigEndian(0, at: 10)
            out.writeBigEndian(fold(onesComplementSum(out[0..<udpStart])), at: 10)
        } else {
            out.writeBigEndian(UInt16(total - 40), at: 4)
        }
        out.writeBigEndian(
            udpChecksum(source: packet.source, destination: packet.destination, udp: out[udpStart...]), at: udpStart + 6)
        return out
    }

    /// UDP checksum over a complete UDP header+payload whose checksum field is zero. A computed 0
    /// is sent as 0xffff (RFC 768), since 0 means "no checksum" in IPv4.
    public static func udpChecksum(source: IPAddress, destination: IPAddress, udp: ArraySlice<UInt8>) -> UInt16 {
        let sum = onesComplementSum(
            udp, initial: pseudoHeaderSum(source: source, destination: destination, proto: 17, length: udp.count))
        let folded = fold(sum)
        return folded == 0 ? 0xffff : folded
    }

    /// A complete IPv4 or IPv6 UDP packet, for tests and raw-socket senders. `ipv4Options` is
    /// padded with EOL octets to a multiple of 4 (at most 40 octets are kept); `ipv6HopByHop` is a
    /// complete hop-by-hop header (see `CSPDiscoveryOption.ipv6HopByHopHeader`) whose next-header
    /// octet is overwritten.
    public static func udpPacket(
        source: IPAddress, sourcePort: UInt16, destination: IPAddress, destinationPort: UInt16, payload: [UInt8],
        ttl: UInt8 = 64, ipv4Options: [UInt8] = [], ipv6HopByHop: [UInt8] = []
    ) -> [UInt8] {
        var out = ipHeader(
            source: source, destination: destination, proto: 17, payloadLength: 8 + payload.count, ttl: ttl,
            ipv4Options: ipv4Options, ipv6HopByHop: ipv6HopByHop)
        let udpLength = 8 + payload.count
        let udpStart = out.count
        out.appendBigEndian(sourcePort)
        out.appendBigEndian(destinationPort)
        out.appendBigEndian(UInt16(udpLength))
        out.appendBigEndian(UInt16(0))
        out += payload
        out.writeBigEndian(udpChecksum(source: source, destination: destination, udp: out[udpStart...]), at: udpStart + 6)
        return out
    }
}

extension PacketBuilder {
    /// An IPv4 header (with options, padded) or an IPv6 header (with an optional hop-by-hop header)
    /// for a payload of `payloadLength` transport octets.
    static func ipHeader(
        source: IPAddress, destination: IPAddress, proto: UInt8, payloadLength: Int, ttl: UInt8, ipv4Options: [UInt8],
        ipv6HopByHop: [UInt8]
    ) -> [UInt8] {
        var out: [UInt8] = []
        if source.family == .ipv4 {
            var options = Array(ipv4Options.prefix(40))
            options += repeatElement(0, count: (4 - options.count % 4) % 4)
            let headerLength = 20 + options.count
            out += [0x40 | UInt8(headerLength / 4), 0]
            out.appendBigEndian(UInt16(truncatingIfNeeded: headerLength + payloadLength))
            out += [0, 0, 0x40, 0, ttl, proto, 0, 0]  // id, DF, ttl, proto, checksum
            source.appendBytes(to: &out)
            destination.appendBytes(to: &out)
            out += options
            out.writeBigEndian(fold(onesComplementSum(out)), at: 10)
        } else {
            var hopByHop = ipv6HopByHop
            out += [0x60, 0, 0, 0]
            out.appendBigEndian(UInt16(truncatingIfNeeded: hopByHop.count + payloadLength))
            if hopByHop.isEmpty {
                out += [proto, ttl]
            } else {
                hopByHop[0] = proto
                out += [0, ttl]
            }
            source.appendBytes(to: &out)
            destination.appendBytes(to: &out)
            out += hopByHop
        }
        return out
    }

    /// A complete IPv4 or IPv6 TCP segment with a valid checksum, for tests and raw-socket senders.
    /// `options` is padded with EOL octets to a multiple of 4 (at most 40 octets are kept).
    public static func tcpPacket(
        source: IPAddress, sourcePort: UInt16, destination: IPAddress, destinationPort: UInt16,
        sequenceNumber: UInt32 = 0, acknowledgmentNumber: UInt32 = 0, flags: TCPFlags = .syn, window: UInt16 = 65535,
        options: [UInt8] = [], payload: [UInt8] = [], ttl: UInt8 = 64, ipv4Options: [UInt8] = [],
        ipv6HopByHop: [UInt8] = []
    ) -> [UInt8] {
        var tcpOptions = Array(options.prefix(40))
        tcpOptions += repeatElement(0, count: (4 - tcpOptions.count % 4) % 4)
        let tcpLength = 20 + tcpOptions.count + payload.count
        var out = ipHeader(
            source: source, destination: destination, proto: 6, payloadLength: tcpLength, ttl: ttl,
            ipv4Options: ipv4Options, ipv6HopByHop: ipv6HopByHop)
        let tcpStart = out.count
        out.appendBigEndian(sourcePort)
        out.appendBigEndian(destinationPort)
        out.appendBigEndian(sequenceNumber)
        out.appendBigEndian(acknowledgmentNumber)
        out += [UInt8((20 + tcpOptions.count) / 4) << 4, flags.rawValue]
        out.appendBigEndian(window)
        out += [0, 0, 0, 0]  // checksum, urgent pointer
        out += tcpOptions
        out += payload
        let sum = onesComplementSum(
            out[tcpStart...],
            initial: pseudoHeaderSum(source: source, destination: destination, proto: 6, length: tcpLength))
        out.writeBigEndian(fold(sum), at: tcpStart + 16)
        return out
    }
}
