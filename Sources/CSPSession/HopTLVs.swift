// The payloads of hop frames (docs/PROTOCOL.md 14.5): HOP-OPEN, HOP-ACCEPT and REFUSE's body, in
// the TLV encoding of 3.2. The TLV framing is CSPWire's (`CSPTLVReader`, `CSPTLV.append`), so a
// hop payload and a CSP datagram read 3.2 the same way; the values of the "hop payloads only" TLVs
// (14.1: HOP, TARGET, END-TO-END, CHAIN) are decoded here, the others (REASON, RELAY-TOKEN) by CSPWire.
import CSPWire

// MARK: - HOP

/// HOP `flags` (14.5). Other bits are sent 0; received ones are kept so that a relay copying the
/// flags into its own HOP-OPEN passes them on unchanged.
public struct HopFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// END-TO-END carries a resume blob (14.7): the session exists and resumes on this chain.
    public static let resume = HopFlags(rawValue: 0x01)
    /// D is the target: no further hop.
    public static let last = HopFlags(rawValue: 0x02)
    /// The host granted allow-terminating (14.9).
    public static let allowTerminating = HopFlags(rawValue: 0x04)
}

/// HOP `protection` (14.6), chosen by H for the whole chain and copied by relays.
public enum HopProtection: Hashable, Sendable {
    /// 1: the stream passes unchanged after ACCEPT (a relay may splice it).
    case clear
    /// 2: every octet after ACCEPT is also encrypted hop by hop (sealed hop records).
    case sealed
    /// Any other value (3 is reserved for a kernel-TLS record format): carried so that the relay
    /// can refuse it by policy (64) instead of the hop failing as malformed.
    case unknown(UInt8)

    public init(rawValue: UInt8) {
        switch rawValue {
        case 1: self = .clear
        case 2: self = .sealed
        default: self = .unknown(rawValue)
        }
    }

    public var rawValue: UInt8 {
        switch self {
        case .clear: 1
        case .sealed: 2
        case .unknown(let value): value
        }
    }
}

/// HOP: `sessionID(8) hopIndex(1) flags(1) protection(1) reserved(1)`, 12 octets. Names the relayed
/// session and the hop it opens (in HOP-OPEN) or that refused (in REFUSE).
public struct HopDescriptor: Hashable, Sendable {
    public static let encodedLength = 12

    /// The relayed session ID `S`: the session ID of the host's SETUP, the same at every hop.
    public var sessionID: UInt64
    /// 1 for the hop from the host. 0 does not exist and is malformed; values above 8 decode, and
    /// a relay refuses them by policy (REFUSE 64).
    public var hopIndex: UInt8
    public var flags: HopFlags
    public var protection: HopProtection

    public init(sessionID: UInt64, hopIndex: UInt8, flags: HopFlags = [], protection: HopProtection = .clear) {
        self.sessionID = sessionID
        self.hopIndex = hopIndex
        self.flags = flags
        self.protection = protection
    }

    init?(value: UnsafeRawBufferPointer) {
        guard value.count == Self.encodedLength, value[8] != 0 else { return nil }
        // value[11] is reserved: sent 0, ignored.
        self.init(
            sessionID: value.bigEndianUInt64(at: 0), hopIndex: value[8], flags: HopFlags(rawValue: value[9]),
            protection: HopProtection(rawValue: value[10]))
    }

    var isEncodable: Bool { hopIndex != 0 }

    func appendValue(to out: inout [UInt8]) {
        out.appendBigEndian(sessionID)
        out.append(hopIndex)
        out.append(flags.rawValue)
        out.append(protection.rawValue)
        out.append(0)
    }
}

// MARK: - TARGET

/// TARGET: `proto(1)` endpoint (3.2), 9 or 21 octets: the protocol and endpoint H named, copied
/// unchanged by every relay.
public struct TargetEndpoint: Hashable, Sendable {
    /// 6 (TCP) in this revision; any value decodes.
    public var proto: IPProtocol
    public var endpoint: CSPEndpoint

    public init(proto: IPProtocol = .tcp, endpoint: CSPEndpoint) {
        self.proto = proto
        self.endpoint = endpoint
    }

    init?(value: UnsafeRawBufferPointer) {
        guard value.count >= 1, let endpoint = CSPEndpoint(encoded: UnsafeRawBufferPointer(rebasing: value[1...])) else {
            return nil
        }
        self.init(proto: IPProtocol(rawValue: value[0]), endpoint: endpoint)
    }

    /// The TLV's value octets, as the end-to-end prologue (14.7) takes them: `"CSP1 e2e" ‖ S ‖ TARGET's
    /// value`. The encoding is canonical (the endpoint's reserved octet is 0), so H and P compute
    /// the same prologue from the value H sent and the value P decoded.
    public var encodedValue: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(1 + endpoint.encodedLength)
        appendValue(to: &out)
        return out
    }

    func appendValue(to out: inout [UInt8]) {
        out.append(proto.rawValue)
        endpoint.encode(into: &out)
    }
}

// MARK: - END-TO-END

/// END-TO-END `kind` (14.5, 14.7). An open set: relays copy the part without reading it, and only
/// the ends decide whether a kind makes sense.
public struct EndToEndPartKind: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Noise message 1 of the end-to-end handshake (H's `e`), in H's HOP-OPEN.
    public static let handshake1 = EndToEndPartKind(rawValue: 1)
    /// Noise message 2 (P's `e, ee, s, es` with its identity block), in P's HOP-ACCEPT.
    public static let handshake2 = EndToEndPartKind(rawValue: 2)
    /// A resume blob (`ResumeBlob`), in a resuming HOP-OPEN and in P's answering HOP-ACCEPT.
    public static let resumeBlob = EndToEndPartKind(rawValue: 3)

    public var description: String {
        switch self {
        case .handshake1: "handshake-1"
        case .handshake2: "handshake-2"
        case .resumeBlob: "resume-blob"
        default: "kind-\(rawValue)"
        }
    }
}

/// END-TO-END: `kind(1) data`, 1–65000 octets: the end-to-end layer's part of a hop message,
/// copied unchanged by every relay.
public struct EndToEndPart: Hashable, Sendable {
    /// Kind and data together: at most 65000 octets, so that OPEN (with the identity block and the
    /// other TLVs) and ACCEPT stay within a 65535-octet Noise message.
    public static let valueLengths = 1...65000

    public var kind: EndToEndPartKind
    /// Opaque to the hop layer: a Noise message or a resume blob.
    public var data: [UInt8]

    public init(kind: EndToEndPartKind, data: [UInt8]) {
        self.kind = kind
        self.data = data
    }

    init?(value: UnsafeRawBufferPointer) {
        guard Self.valueLengths.contains(value.count) else { return nil }
        self.init(kind: EndToEndPartKind(rawValue: value[0]), data: Array(value[1...]))
    }

    var isEncodable: Bool { Self.valueLengths.contains(1 + data.count) }

    func appendValue(to out: inout [UInt8]) {
        out.append(kind.rawValue)
        out.append(contentsOf: data)
    }
}

/// The data of END-TO-END kind 3 (14.7): `epoch(4) ‖ ENCRYPT(k_resume, n = 2·epoch + d,
/// ad = "CSP1 resume" ‖ S, nextExpected(8))`. Framing only: sealing and opening are the end-to-end
/// state machine's.
public struct ResumeBlob: Hashable, Sendable {
    /// `nextExpected` (8 octets) sealed with ChaCha20-Poly1305 (16-octet tag).
    public static let sealedLength = 8 + 16
    public static let encodedLength = 4 + sealedLength

    /// H's resume attempt counter, 1, 2, …; strictly increasing (an older one is a replay).
    public var epoch: UInt32
    public var sealedNextExpected: [UInt8]

    public init(epoch: UInt32, sealedNextExpected: [UInt8]) {
        self.epoch = epoch
        self.sealedNextExpected = sealedNextExpected
    }

    /// Decodes END-TO-END data of kind 3; nil unless it is exactly 28 octets.
    public init?(data: [UInt8]) {
        guard data.count == Self.encodedLength else { return nil }
        epoch = UInt32(data[0]) << 24 | UInt32(data[1]) << 16 | UInt32(data[2]) << 8 | UInt32(data[3])
        sealedNextExpected = Array(data[4...])
    }

    /// The END-TO-END data; nil if `sealedNextExpected` is not 24 octets.
    public var data: [UInt8]? {
        guard sealedNextExpected.count == Self.sealedLength else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(Self.encodedLength)
        out.appendBigEndian(epoch)
        out.append(contentsOf: sealedNextExpected)
        return out
    }
}

// MARK: - CHAIN

/// CHAIN: `hopIndex(1) middleboxID(8)`, 9 octets, one TLV per relay, each relay appending its own
/// to the HOP-ACCEPT it passes up. Informative (the host's `-v` output, midctl).
public struct ChainEntry: Hashable, Sendable {
    public static let encodedLength = 9

    /// The index of the hop the relay accepted (it opened hopIndex + 1). 0 is malformed.
    public var hopIndex: UInt8
    /// The relay's middlebox ID (3.3), the fingerprint of its key.
    public var middleboxID: UInt64

    public init(hopIndex: UInt8, middleboxID: UInt64) {
        self.hopIndex = hopIndex
        self.middleboxID = middleboxID
    }

    init?(value: UnsafeRawBufferPointer) {
        guard value.count == Self.encodedLength, value[0] != 0 else { return nil }
        self.init(hopIndex: value[0], middleboxID: value.bigEndianUInt64(at: 1))
    }

    var isEncodable: Bool { hopIndex != 0 }

    func appendValue(to out: inout [UInt8]) {
        out.append(hopIndex)
        out.appendBigEndian(middleboxID)
    }
}

// MARK: - Payloads

/// HOP-OPEN: the TLVs of OPEN's payload after U's identity block.
public struct HopOpen: Hashable, Sendable {
    public var hop: HopDescriptor
    public var target: TargetEndpoint
    /// Present on the first open of a hop to a relay that has no state for (S, k): 16–64 octets.
    public var relayToken: [UInt8]?
    /// H's part, copied unchanged by every relay: handshake-1, or a resume blob with flag resume.
    public var endToEnd: EndToEndPart

    public init(hop: HopDescriptor, target: TargetEndpoint, relayToken: [UInt8]? = nil, endToEnd: EndToEndPart) {
        self.hop = hop
        self.target = target
        self.relayToken = relayToken
        self.endToEnd = endToEnd
    }

    /// Decodes HOP-OPEN TLVs. HOP, TARGET and END-TO-END are required; where a type repeats, the
    /// first counts (3.2). Other known TLVs are decoded (so a bad one is malformed) and ignored, an
    /// unknown non-critical one is ignored, and an unknown critical one is an error. Error offsets
    /// count from the start of `tlvs`.
    public init(decoding tlvs: UnsafeRawBufferPointer) throws(SessionWireError) {
        var hop: HopDescriptor?
        var target: TargetEndpoint?
        var relayToken: [UInt8]?
        var endToEnd: EndToEndPart?
        try forEachHopPayloadTLV(in: tlvs) { tlv throws(SessionWireError) in
            switch tlv {
            case .hop(let v): if hop == nil { hop = v }
            case .target(let v): if target == nil { target = v }
            case .endToEnd(let v): if endToEnd == nil { endToEnd = v }
            case .csp(.relayToken(let v)): if relayToken == nil { relayToken = v }
            default: break
            }
        }
        guard let hop else { throw SessionWireError(.missingTLV(type: CSPTLVType.hop.rawValue), at: tlvs.count) }
        guard let target else { throw SessionWireError(.missingTLV(type: CSPTLVType.target.rawValue), at: tlvs.count) }
        guard let endToEnd else { throw SessionWireError(.missingTLV(type: CSPTLVType.endToEnd.rawValue), at: tlvs.count) }
        self.init(hop: hop, target: target, relayToken: relayToken, endToEnd: endToEnd)
    }

    public init(decoding tlvs: [UInt8]) throws(SessionWireError) {
        self = try withTypedThrows(tlvs) { buffer throws(SessionWireError) in try HopOpen(decoding: buffer) }
    }

    /// Appends HOP, TARGET, RELAY-TOKEN (when present) and END-TO-END, in that order. Throws for
    /// values `init(decoding:)` would refuse (hop index 0, a token outside 16–64 octets, an
    /// END-TO-END part above 65000 octets).
    public func encode(into out: inout [UInt8]) throws(SessionWireError) {
        try appendHopTLV(.hop, encodable: hop.isEncodable, to: &out) { hop.appendValue(to: &$0) }
        try appendHopTLV(.target, encodable: true, to: &out) { target.appendValue(to: &$0) }
        if let relayToken { try appendCSPTLV(.relayToken(relayToken), to: &out) }
        try appendHopTLV(.endToEnd, encodable: endToEnd.isEncodable, to: &out) { endToEnd.appendValue(to: &$0) }
    }

    public func serialize() throws(SessionWireError) -> [UInt8] {
        var out: [UInt8] = []
        try encode(into: &out)
        return out
    }
}

/// HOP-ACCEPT: the TLVs of ACCEPT's plaintext.
public struct HopAccept: Hashable, Sendable {
    /// The responder's part, copied back unchanged by every relay: handshake-2, or P's resume blob.
    public var endToEnd: EndToEndPart
    /// One entry per relay in the order they appended them: the relay nearest the responder first.
    public var chain: [ChainEntry]

    public init(endToEnd: EndToEndPart, chain: [ChainEntry] = []) {
        self.endToEnd = endToEnd
        self.chain = chain
    }

    /// Decodes HOP-ACCEPT TLVs: END-TO-END is required (the first counts); every CHAIN counts, in
    /// order. Other TLVs as for `HopOpen`.
    public init(decoding tlvs: UnsafeRawBufferPointer) throws(SessionWireError) {
        var endToEnd: EndToEndPart?
        var chain: [ChainEntry] = []
        try forEachHopPayloadTLV(in: tlvs) { tlv throws(SessionWireError) in
            switch tlv {
            case .endToEnd(let v): if endToEnd == nil { endToEnd = v }
            case .chain(let v): chain.append(v)
            default: break
            }
        }
        guard let endToEnd else { throw SessionWireError(.missingTLV(type: CSPTLVType.endToEnd.rawValue), at: tlvs.count) }
        self.init(endToEnd: endToEnd, chain: chain)
    }

    public init(decoding tlvs: [UInt8]) throws(SessionWireError) {
        self = try withTypedThrows(tlvs) { buffer throws(SessionWireError) in try HopAccept(decoding: buffer) }
    }

    /// Appends END-TO-END, then one CHAIN per entry. A relay passing an ACCEPT up appends its own
    /// entry to `chain` and encodes again: END-TO-END's octets come out unchanged.
    public func encode(into out: inout [UInt8]) throws(SessionWireError) {
        try appendHopTLV(.endToEnd, encodable: endToEnd.isEncodable, to: &out) { endToEnd.appendValue(to: &$0) }
        for entry in chain {
            try appendHopTLV(.chain, encodable: entry.isEncodable, to: &out) { entry.appendValue(to: &$0) }
        }
    }

    public func serialize() throws(SessionWireError) -> [UInt8] {
        var out: [UInt8] = []
        try encode(into: &out)
        return out
    }
}

/// REFUSE's body (14.5): `result(1) reserved(1)` ‖ TLVs (REASON; HOP of the refusing hop). The same
/// octets are sent in the clear before D has read OPEN and as the plaintext of the encrypted body after.
public struct HopRefuse: Hashable, Sendable {
    /// The codes of section 4, same classes (14.5's table: 4, 5, 64, 67, 68, 128, 129).
    public var result: CSPResultCode
    public var reason: CSPReason?
    /// The hop that refused, so the host learns which one; absent in a clear REFUSE (D has not read
    /// OPEN, so it does not know the session).
    public var hop: HopDescriptor?

    public init(result: CSPResultCode, reason: CSPReason? = nil, hop: HopDescriptor? = nil) {
        self.result = result
        self.reason = reason
        self.hop = hop
    }

    /// Decodes the body; error offsets count from its first octet.
    public init(decoding body: UnsafeRawBufferPointer) throws(SessionWireError) {
        guard body.count >= 2 else { throw SessionWireError(.truncated, at: body.count) }
        // body[1] is reserved: sent 0, ignored.
        var reason: CSPReason?
        var hop: HopDescriptor?
        try forEachHopPayloadTLV(in: UnsafeRawBufferPointer(rebasing: body[2...]), base: 2) { tlv throws(SessionWireError) in
            switch tlv {
            case .hop(let v): if hop == nil { hop = v }
            case .csp(.reason(let v)): if reason == nil { reason = v }
            default: break
            }
        }
        self.init(result: CSPResultCode(rawValue: body[0]), reason: reason, hop: hop)
    }

    public init(decoding body: [UInt8]) throws(SessionWireError) {
        self = try withTypedThrows(body) { buffer throws(SessionWireError) in try HopRefuse(decoding: buffer) }
    }

    /// Appends result, reserved (0), REASON (when present; text cut to 255 octets as in 3.2) and HOP
    /// (when present).
    public func encode(into out: inout [UInt8]) throws(SessionWireError) {
        out.append(result.rawValue)
        out.append(0)
        if let reason { try appendCSPTLV(.reason(reason), to: &out) }
        if let hop { try appendHopTLV(.hop, encodable: hop.isEncodable, to: &out) { hop.appendValue(to: &$0) } }
    }

    public func serialize() throws(SessionWireError) -> [UInt8] {
        var out: [UInt8] = []
        try encode(into: &out)
        return out
    }
}

// MARK: - The shared walk

/// A TLV of a hop payload, decoded: the four hop-only types here, everything else by CSPWire.
enum HopPayloadTLV {
    case hop(HopDescriptor)
    case target(TargetEndpoint)
    case endToEnd(EndToEndPart)
    case chain(ChainEntry)
    case csp(CSPTLV)
}

/// Walks the TLVs of a hop payload with CSPWire's reader and hands each one over decoded. Every
/// known TLV is validated wherever it appears (3.2: a known TLV with an impossible value is
/// malformed), even one the payload does not use. `base` is where `bytes` starts in the buffer
/// the caller was given, for error offsets.
func forEachHopPayloadTLV(
    in bytes: UnsafeRawBufferPointer, base: Int = 0, _ body: (HopPayloadTLV) throws(SessionWireError) -> Void
) throws(SessionWireError) {
    var reader = CSPTLVReader(bytes)
    while true {
        let raw: CSPRawTLV
        do throws(CSPWireError) {
            guard let next = try reader.next() else { return }
            raw = next
        } catch {
            throw SessionWireError(error, base: base)
        }
        let bad = SessionWireError(.tlv(.badTLVValue(type: raw.type.rawValue)), at: base + raw.offset)
        switch raw.type {
        case .hop:
            guard let v = HopDescriptor(value: raw.value) else { throw bad }
            try body(.hop(v))
        case .target:
            guard let v = TargetEndpoint(value: raw.value) else { throw bad }
            try body(.target(v))
        case .endToEnd:
            guard let v = EndToEndPart(value: raw.value) else { throw bad }
            try body(.endToEnd(v))
        case .chain:
            guard let v = ChainEntry(value: raw.value) else { throw bad }
            try body(.chain(v))
        default:
            // CSPWire decodes the rest exactly as in a datagram, including the unknown-critical rule.
            let tlv: CSPTLV
            do throws(CSPWireError) { tlv = try reader.decode(raw) } catch { throw SessionWireError(error, base: base) }
            try body(.csp(tlv))
        }
    }
}

/// Appends a hop-only TLV through CSPWire's TLV writer. `encodable` is the value's own check (the
/// rules its decoder enforces). After a throw `out` may end in a partial payload: discard it.
private func appendHopTLV(
    _ type: CSPTLVType, encodable: Bool, to out: inout [UInt8], _ writeValue: (inout [UInt8]) -> Void
) throws(SessionWireError) {
    guard encodable else { throw SessionWireError(.tlv(.badTLVValue(type: type.rawValue)), at: out.count) }
    do throws(CSPWireError) {
        try CSPTLV.append(type, into: &out) { (value: inout [UInt8]) throws(CSPWireError) in writeValue(&value) }
    } catch {
        throw SessionWireError(error)
    }
}

private func appendCSPTLV(_ tlv: CSPTLV, to out: inout [UInt8]) throws(SessionWireError) {
    do throws(CSPWireError) { try tlv.encode(into: &out) } catch { throw SessionWireError(error) }
}
