// The CSP discovery option (docs/PROTOCOL.md, "Discovery option"). One 12-octet body, carried in
// three containers: an IPv4 option, an IPv6 hop-by-hop option, and a TCP experimental option.
//
//   body: flags(1) reserved(1) replyPort(2) nonce(8)
//
//   IPv4 option      0x9e len=14 body                 (copy=1 class=0 number=30, RFC 4727 experiment)
//   IPv6 HBH option  0x1e len=12 body                 (act=00 skip, chg=0, RFC 4727 experiment)
//   TCP option       kind=253 len=16 ExID=0x4353 body (RFC 6994 experiment identifier "CS")

/// What a discovery option says: "CSP middleboxes on this path, tell me who you are".
///
/// A middlebox that sees one forwards the packet unchanged and, if `query` is set, sends an
/// ANNOUNCE to the packet's source address on `replyPort` (7227 when 0), echoing `nonce` in the
/// ANNOUNCE header's nonce field.
public struct CSPDiscoveryOption: Hashable, Sendable {
    public struct Flags: OptionSet, Hashable, Sendable {
        public var rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// The sender asks each CSP middlebox on the path to send it an ANNOUNCE.
        public static let query = Flags(rawValue: 0x01)
        /// The sender speaks CSP: a middlebox may answer this flow with CSP (e.g. REJECT or CHALLENGE
        /// with fromMiddlebox) instead of dropping silently.
        public static let capable = Flags(rawValue: 0x02)
    }

    /// The three containers the option travels in.
    public enum Encoding: Hashable, Sendable, CaseIterable {
        case ipv4Option
        case ipv6HopByHop
        case tcpOption
    }

    /// IPv4 option type: copied=1 (present in every fragment), class 0, number 30 (RFC 4727).
    public static let ipv4OptionType: UInt8 = 0x9e
    /// IPv6 option type 0x1e: action 00 (skip if unknown), change bit 0 (not modified en route), RFC 4727.
    public static let ipv6OptionType: UInt8 = 0x1e
    /// TCP experimental option kind (RFC 4727) shared via a 16-bit experiment identifier (RFC 6994).
    public static let tcpOptionKind: UInt8 = 253
    /// RFC 6994 experiment identifier: ASCII "CS", the same octets as the CSP magic.
    public static let tcpExperimentID: UInt16 = 0x4353
    /// flags(1) reserved(1) replyPort(2) nonce(8)
    public static let bodyLength = 12

    public var flags: Flags
    /// UDP port on which the sender receives ANNOUNCE; 0 means the default CSP port.
    public var replyPort: UInt16
    /// Chosen at random by the sender for each probe; ANNOUNCE echoes it so the sender can tell a
    /// solicited ANNOUNCE from a forged one (an off-path attacker would have to guess 64 bits).
    public var nonce: UInt64

    public init(flags: Flags = [.query, .capable], replyPort: UInt16 = 0, nonce: UInt64) {
        self.flags = flags
        self.replyPort = replyPort
        self.nonce = nonce
    }

    /// Where ANNOUNCE goes for this option.
    public var effectiveReplyPort: UInt16 { replyPort == 0 ? CSPMessage.defaultPort : replyPort }

    /// nftables match expressions that select packets carrying the option, so that only those are
    /// queued to the daemon (verified with nft 1.0.6 on Linux 6.18; limits in PROTOCOL.md 9.3).
    ///
    /// In libnftnl terms: IPv4 is `payload network 0/1 & 0x0f > 5` plus `payload network 20/1 == 0x9e`;
    /// IPv6 is `payload network 6/1 == 0` plus `payload network 42/1 == 0x1e`; TCP is an `exthdr`
    /// expression with op TCPOPT, type 253, offset 2, length 2, compared with 0x4353 (the kernel
    /// walks the options; only nft's parser rejects `tcp option @253,0,8 exists`).
    public enum NFTPrefilter {
        /// Matches only when the discovery option is the first IPv4 option.
        public static let ipv4 = "ip hdrlength > 5 @nh,160,8 0x9e"
        /// Matches only when the option is first in a hop-by-hop header right after the IPv6 header.
        public static let ipv6 = "ip6 nexthdr 0 @nh,336,8 0x1e"
        /// Any hop-by-hop header (coarser; includes MLD router alerts).
        public static let ipv6AnyHopByHop = "exthdr hbh exists"
        /// Kind 253 anywhere among the TCP options, but only the first kind-253 option is examined.
        public static let tcp = "tcp option @253,16,16 0x4353"
    }

    // MARK: parse

    /// Decodes a body (the option data after the container's own type/length/ExID octets).
    /// Longer bodies are accepted and the extra octets ignored, so a later revision can extend the
    /// body without a new option number; the reserved octet is ignored on receipt.
    public init(body: UnsafeRawBufferPointer, at offset: Int = 0) throws(CSPWireError) {
        guard body.count >= Self.bodyLength else { throw CSPWireError(.badDiscoveryOption, at: offset) }
        flags = Flags(rawValue: body[0])
        replyPort = body.loadBigEndianUInt16(at: 2)
        nonce = UInt64(body.loadBigEndianUInt32(at: 4)) << 32 | UInt64(body.loadBigEndianUInt32(at: 8))
    }

    /// Finds the option in whichever container `packet` has: IPv4 options, then IPv6 hop-by-hop
    /// options, then (for TCP) TCP options. Returns nil when there is none. Throws when the option
    /// list holding it is malformed, or when an option with our number is too short.
    @inlinable
    public static func find(in packet: IPPacketView) throws(CSPWireError) -> (option: CSPDiscoveryOption, encoding: Encoding)? {
        // Inlined into the caller: most queued packets have no IP options and are not TCP, and
        // need no call to learn that they carry no option (docs/PERFORMANCE.md, "Eleventh pass").
        guard !packet.ipv4Options.isEmpty || !packet.hopByHopOptions.isEmpty || packet.proto == .tcp else { return nil }
        return try findInContainers(packet)
    }

    @usableFromInline
    static func findInContainers(_ packet: IPPacketView) throws(CSPWireError) -> (option: CSPDiscoveryOption, encoding: Encoding)? {
        if let o = try find(inIPv4Options: packet) { return (o, .ipv4Option) }
        if let o = try find(inHopByHop: packet) { return (o, .ipv6HopByHop) }
        if packet.proto == .tcp, !packet.isNonInitialFragment, let segment = try? TCPSegmentView(packet),
            let o = try find(inTCPOptions: segment)
        {
            return (o, .tcpOption)
        }
        return nil
    }

    public static func find(inIPv4Options packet: IPPacketView) throws(CSPWireError) -> CSPDiscoveryOption? {
        guard !packet.ipv4Options.isEmpty,
            let (dataStart, dataEnd) = try OptionWalker.first(
                type: ipv4OptionType, in: packet.bytes, packet.ipv4Options, grammar: .ipv4OrTCP, error: .badIPHeader)
        else { return nil }
        return try CSPDiscoveryOption(body: slice(packet.bytes, dataStart, dataEnd), at: dataStart - 2)
    }

    public static func find(inHopByHop packet: IPPacketView) throws(CSPWireError) -> CSPDiscoveryOption? {
        guard !packet.hopByHopOptions.isEmpty,
            let (dataStart, dataEnd) = try OptionWalker.first(
                type: ipv6OptionType, in: packet.bytes, packet.hopByHopOptions, grammar: .ipv6, error: .badIPHeader)
        else { return nil }
        return try CSPDiscoveryOption(body: slice(packet.bytes, dataStart, dataEnd), at: dataStart - 2)
    }

    /// Kind-253 options with another experiment identifier (or too short to carry one) are skipped:
    /// RFC 6994 lets several experiments share the kind.
    public static func find(inTCPOptions segment: TCPSegmentView) throws(CSPWireError) -> CSPDiscoveryOption? {
        let bytes = segment.packet.bytes
        var range = segment.options
        while !range.isEmpty,
            let (dataStart, dataEnd) = try OptionWalker.first(
                type: tcpOptionKind, in: bytes, range, grammar: .ipv4OrTCP, error: .badTransportHeader)
        {
            if dataEnd - dataStart >= 2, bytes.loadBigEndianUInt16(at: dataStart) == tcpExperimentID {
                return try CSPDiscoveryOption(body: slice(bytes, dataStart + 2, dataEnd), at: dataStart - 2)
            }
            range = dataEnd..<range.upperBound
        }
        return nil
    }

    private static func slice(_ bytes: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: bytes[start..<end])
    }

    // MARK: emit

    public func appendBody(to out: inout [UInt8]) {
        out.append(flags.rawValue)
        out.append(0)
        out.appendBigEndian(replyPort)
        out.appendBigEndian(nonce)
    }

    /// The 14-octet IPv4 option alone (type, length, body), to place first among other options.
    public var ipv4Option: [UInt8] {
        var out: [UInt8] = [Self.ipv4OptionType, UInt8(2 + Self.bodyLength)]
        appendBody(to: &out)
        return out
    }

    /// A complete 16-octet IPv4 options field (the option and two EOL octets): the value for
    /// `setsockopt(IPPROTO_IP, IP_OPTIONS)` or for the options area of a raw packet. Placing the
    /// option first is what lets the nft pre-filter `@nh,160,8 0x9e` see it.
    public var ipv4OptionsField: [UInt8] { ipv4Option + [0, 0] }

    /// The 14-octet IPv6 option alone (type, data length, body).
    public var ipv6Option: [UInt8] {
        var out: [UInt8] = [Self.ipv6OptionType, UInt8(Self.bodyLength)]
        appendBody(to: &out)
        return out
    }

    /// A complete 16-octet hop-by-hop options header (next header, length 1 = 16 octets, the
    /// 14-octet option; no padding needed): the value for `setsockopt(IPPROTO_IPV6, IPV6_HOPOPTS)`
    /// (the kernel overwrites `nextHeader`) or the header of a raw packet.
    public func ipv6HopByHopHeader(nextHeader: UInt8 = 0) -> [UInt8] {
        [nextHeader, 1] + ipv6Option
    }

    /// The 16-octet TCP option (kind 253, length 16, experiment ID, body). It fills four 32-bit
    /// words, so it needs no padding next to other options.
    public var tcpOption: [UInt8] {
        var out: [UInt8] = [Self.tcpOptionKind, UInt8(4 + Self.bodyLength)]
        out.appendBigEndian(Self.tcpExperimentID)
        appendBody(to: &out)
        return out
    }

    /// The bytes for one encoding (the stand-alone option, not the padded field/header).
    public func emit(_ encoding: Encoding) -> [UInt8] {
        switch encoding {
        case .ipv4Option: ipv4Option
        case .ipv6HopByHop: ipv6Option
        case .tcpOption: tcpOption
        }
    }
}

/// Walks type-length option lists.
enum OptionWalker {
    enum Grammar {
        /// RFC 791 / RFC 9293: 0 ends the list, 1 is a one-octet no-op, otherwise the length octet
        /// counts the type and length octets too (so it is at least 2).
        case ipv4OrTCP
        /// RFC 8200 section 4.2: 0 is Pad1, otherwise the length octet counts only the data.
        case ipv6
    }

    /// The data range (as start/end offsets into `bytes`) of the first option of `type` in `range`,
    /// or nil. Throws `error` at the offending option when an option runs past the end of the list.
    static func first(
        type wanted: UInt8, in bytes: UnsafeRawBufferPointer, _ range: Range<Int>, grammar: Grammar,
        error: CSPWireError.Kind
    ) throws(CSPWireError) -> (Int, Int)? {
        var offset = range.lowerBound
        let end = range.upperBound
        while offset < end {
            let type = bytes[offset]
            switch grammar {
            case .ipv4OrTCP:
                if type == 0 { return nil }
                if type == 1 {
                    offset += 1
                    continue
                }
                guard end - offset >= 2 else { throw CSPWireError(error, at: offset) }
                let length = Int(bytes[offset + 1])
                guard length >= 2, length <= end - offset else { throw CSPWireError(error, at: offset) }
                if type == wanted { return (offset + 2, offset + length) }
                offset += length
            case .ipv6:
                if type == 0 {
                    offset += 1
                    continue
                }
                guard end - offset >= 2 else { throw CSPWireError(error, at: offset) }
                let length = Int(bytes[offset + 1])
                guard length <= end - offset - 2 else { throw CSPWireError(error, at: offset) }
                if type == wanted { return (offset + 2, offset + 2 + length) }
                offset += 2 + length
            }
        }
        return nil
    }
}
