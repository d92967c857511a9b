// Encoding and decoding of CSP messages (docs/PROTOCOL.md, "Message format" and "TLVs").

extension CSPMessage {
    /// Records may carry TLVs but not further records; the limit keeps a hostile message from
    /// recursing the decoder.
    static let maximumNesting = 1
    static let maximumTextLength = 255

    /// Decodes and validates a whole message. Never traps and never reads outside `bytes`.
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(CSPWireError) -> CSPMessage {
        var message = CSPMessage.empty
        try parse(bytes, into: &message)
        return message
    }

    /// `parse`, into `message`: what it held is replaced, and its TLV array's storage is reused when
    /// no copy of the message shares it. A reader that parses message after message into one value
    /// allocates no array per message (figure 4: one allocation per message, docs/PERFORMANCE.md
    /// "Sixteenth pass"); a message the engine kept a copy of is left alone, and the next parse
    /// allocates afresh. After a throw, `message` holds an unspecified part of the message.
    public static func parse(_ bytes: UnsafeRawBufferPointer, into message: inout CSPMessage) throws(CSPWireError) {
        let view = try CSPMessageView(bytes)
        // One by one, not `removeAll(keepingCapacity:)`: that walks the generic `replaceSubrange`,
        // ~180 instructions for a message's two or three TLVs. A shared array is copied at the
        // first removal, and the copy's storage reused after it.
        while !message.tlvs.isEmpty { message.tlvs.removeLast() }
        try appendTLVs(bytes, from: headerLength, to: view.length, depth: 0, to: &message.tlvs)
        message.type = view.type
        message.flags = view.flags
        message.result = view.result
        message.sessionID = view.sessionID
        message.nonce = view.nonce
        message.sequence = view.sequence
    }

    public static func parse(_ bytes: [UInt8]) throws(CSPWireError) -> CSPMessage {
        do {
            return try bytes.withUnsafeBytes { buffer in try parse(buffer) }
        } catch let error as CSPWireError {
            throw error
        } catch {
            fatalError("unreachable: parse throws only CSPWireError")
        }
    }

    /// The encoded message. Throws only when the body exceeds the 16-bit length field.
    public func serialize() throws(CSPWireError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(128)
        out.appendBigEndian(Self.magic)
        out.append(Self.version)
        out.append(type.rawValue)
        out.append(flags.rawValue)
        out.append(result.rawValue)
        out.appendBigEndian(UInt16(0))  // length, patched below
        out.appendBigEndian(sessionID)
        out.appendBigEndian(nonce)
        out.appendBigEndian(sequence)
        for tlv in tlvs { try tlv.emit(into: &out, depth: 0) }
        guard out.count <= Int(UInt16.max) else { throw CSPWireError(.messageTooLong, at: 0) }
        out.writeBigEndian(UInt16(out.count), at: 6)
        return out
    }

    static func parseTLVs(_ bytes: UnsafeRawBufferPointer, from start: Int, to end: Int, depth: Int)
        throws(CSPWireError) -> [CSPTLV]
    {
        var tlvs: [CSPTLV] = []
        try appendTLVs(bytes, from: start, to: end, depth: depth, to: &tlvs)
        return tlvs
    }

    static func appendTLVs(_ bytes: UnsafeRawBufferPointer, from start: Int, to end: Int, depth: Int, to tlvs: inout [CSPTLV])
        throws(CSPWireError)
    {
        var reader = CSPTLVReader(bytes, from: start, to: end, depth: depth)
        // Room for one TLV per 8 octets (a type, a length and a 4-octet value; up to 16): the
        // array is allocated once for common messages instead of growing 1, 2, 4. (Counting
        // first would report a later TLV's overrun before an earlier TLV's bad value.)
        let room = min(max((end - start) / 8, 1), 16)
        if end > start, tlvs.capacity < tlvs.count + room { tlvs.reserveCapacity(tlvs.count + room) }
        while let raw = try reader.next() { tlvs.append(try reader.decode(raw)) }
    }
}

/// One TLV where it lies in a buffer (docs/PROTOCOL.md 3.2), its value not yet interpreted.
public struct CSPRawTLV {
    public let type: CSPTLVType
    /// Offset of the TLV's type field from the start of the buffer the reader walks: error offsets
    /// count from the same start.
    public let offset: Int
    /// The value octets: a view into the reader's buffer, valid only while that buffer is.
    public let value: UnsafeRawBufferPointer
}

/// Walks a sequence of TLVs (docs/PROTOCOL.md 3.2) without copying. `CSPMessage.parse` and the hop
/// payloads of CSPSession (14.5) share it, so that there is one reading of 3.2: a type and a length
/// need 4 octets, and a value must end within the sequence.
public struct CSPTLVReader {
    let bytes: UnsafeRawBufferPointer
    let end: Int
    /// 0 at top level, 1 inside a MIDDLEBOX-RECORD (which must not nest another).
    let depth: Int
    /// Where the next TLV starts; moves only past a TLV that `next()` returned.
    public private(set) var offset: Int

    /// A reader over a body that is nothing but TLVs, such as a hop payload.
    public init(_ bytes: UnsafeRawBufferPointer) {
        self.init(bytes, from: 0, to: bytes.count, depth: 0)
    }

    init(_ bytes: UnsafeRawBufferPointer, from start: Int, to end: Int, depth: Int) {
        self.bytes = bytes
        self.offset = start
        self.end = end
        self.depth = depth
    }

    /// The next TLV, or nil after the last. Throws `.truncated` when fewer than the 4 octets of a
    /// type and a length remain, `.tlvOverrun` when the value would run past the end (3.2: "makes
    /// the message malformed"); the offset is that TLV's.
    public mutating func next() throws(CSPWireError) -> CSPRawTLV? {
        guard offset < end else { return nil }
        guard end - offset >= 4 else { throw CSPWireError(.truncated, at: offset) }
        let type = bytes.loadBigEndianUInt16(at: offset)
        let length = Int(bytes.loadBigEndianUInt16(at: offset + 2))
        let valueStart = offset + 4
        guard length <= end - valueStart else { throw CSPWireError(.tlvOverrun(type: type), at: offset) }
        let raw = CSPRawTLV(
            type: CSPTLVType(rawValue: type), offset: offset,
            value: UnsafeRawBufferPointer(rebasing: bytes[valueStart..<valueStart + length]))
        offset = valueStart + length
        return raw
    }

    /// `raw` (from this reader) decoded as a CSP datagram decodes it: a known type into its typed
    /// case, validated (a MIDDLEBOX-RECORD with its nested TLVs); an unknown non-critical or a
    /// hop-payload-only type verbatim as `.unknown`; an unknown critical type is an error
    /// (`.unknownCriticalTLV`, which a receiver answers with result 3).
    public func decode(_ raw: CSPRawTLV) throws(CSPWireError) -> CSPTLV {
        try CSPTLV.decode(
            type: raw.type, value: raw.value, in: bytes, valueOffset: raw.offset + 4, at: raw.offset, depth: depth)
    }
}

extension CSPTLV {
    static func decode(
        type: CSPTLVType, value: UnsafeRawBufferPointer, in message: UnsafeRawBufferPointer, valueOffset: Int,
        at offset: Int, depth: Int
    ) throws(CSPWireError) -> CSPTLV {
        let bad = CSPWireError(.badTLVValue(type: type.rawValue), at: offset)
        var cursor = ByteCursor(value)
        func text() throws(CSPWireError) -> String {
            guard value.count <= CSPMessage.maximumTextLength else { throw bad }
            // Invalid UTF-8 is rejected rather than repaired so that parse(serialize(m)) == m holds.
            guard let s = String(validating: value, as: UTF8.self) else { throw bad }
            return s
        }
        func endpoint() throws(CSPWireError) -> CSPEndpoint {
            guard let e = cursor.readEndpoint(), cursor.remaining == 0 else { throw bad }
            return e
        }
        switch type {
        case .flow:
            guard let proto = cursor.readUInt8(), let family = cursor.readUInt8(), let sport = cursor.readUInt16(),
                let dport = cursor.readUInt16(), let addressLength = IPAddress.Family(rawValue: family)?.addressLength,
                let src = cursor.readAddress(length: addressLength), let dst = cursor.readAddress(length: addressLength),
                cursor.remaining == 0
            else { throw bad }
            return .flow(
                FlowTuple(
                    proto: IPProtocol(rawValue: proto), source: src, sourcePort: sport, destination: dst,
                    destinationPort: dport))
        case .lifetime:
            guard let v = cursor.readUInt32(), cursor.remaining == 0 else { throw bad }
            return .lifetime(v)
        case .application: return .application(try text())
        case .middleboxName: return .middleboxName(try text())
        case .requestedAction:
            guard let v = cursor.readUInt8(), cursor.remaining == 0 else { throw bad }
            return .requestedAction(CSPRequestedAction(rawValue: v))
        case .reason:
            guard let code = cursor.readUInt16(), let retry = cursor.readUInt32(),
                let rest = cursor.readBytes(cursor.remaining), rest.count <= CSPMessage.maximumTextLength,
                let s = String(validating: rest, as: UTF8.self)
            else { throw bad }
            return .reason(CSPReason(code: code, retryAfter: retry, text: s))
        case .redirectTarget: return .redirectTarget(try endpoint())
        case .mappedAddress: return .mappedAddress(try endpoint())
        case .hostAddress: return .hostAddress(try endpoint())
        case .newAddress: return .newAddress(try endpoint())
        case .epoch:
            guard let v = cursor.readUInt32(), cursor.remaining == 0 else { throw bad }
            return .epoch(v)
        case .timestamp:
            guard let v = cursor.readUInt64(), cursor.remaining == 0 else { throw bad }
            return .timestamp(v)
        case .identity, .signature:
            let expected = type == .identity ? 32 : 64
            guard let keyType = cursor.readUInt8() else { throw bad }
            // Ed25519 lengths are enforced; other key types are carried opaquely for agility.
            if keyType == CSPKeyMaterial.ed25519, cursor.remaining != expected { throw bad }
            guard let rest = cursor.readBytes(cursor.remaining) else { throw bad }
            let key = CSPKeyMaterial(keyType: keyType, bytes: Array(rest))
            return type == .identity ? .identity(key) : .signature(key)
        case .challengeToken:
            // At least 64 random bits, so an off-path attacker cannot guess it.
            guard (8...32).contains(value.count) else { throw bad }
            return .challengeToken(Array(value))
        case .path:
            guard let id = cursor.readUInt8() else { throw bad }
            return .path(CSPPath(pathID: id, endpoint: try endpoint()))
        case .denySource:
            guard let family = cursor.readUInt8(), let prefixLength = cursor.readUInt8(), let proto = cursor.readUInt8(),
                let flags = cursor.readUInt8(), let port = cursor.readUInt16(),
                let addressLength = IPAddress.Family(rawValue: family)?.addressLength,
                prefixLength <= addressLength * 8,
                let prefix = cursor.readAddress(length: addressLength), cursor.remaining == 0
            else { throw bad }
            return .denySource(
                CSPDenySource(
                    prefix: prefix, prefixLength: prefixLength, proto: IPProtocol(rawValue: proto), port: port,
                    rateLimit: flags & 0x01 != 0))
        case .middleboxRecord:
            guard depth < CSPMessage.maximumNesting else { throw CSPWireError(.nestingTooDeep, at: offset) }
            guard let id = cursor.readUInt64(), let epoch = cursor.readUInt32(), let decision = cursor.readUInt8(),
                cursor.readUInt8() != nil, let granted = cursor.readUInt32()
            else { throw bad }
            let nestedStart = valueOffset + 18
            let nested = try CSPMessage.parseTLVs(
                message, from: nestedStart, to: valueOffset + value.count, depth: depth + 1)
            return .middleboxRecord(
                CSPMiddleboxRecord(
                    middleboxID: id, epoch: epoch, decision: CSPDecision(rawValue: decision), grantedLifetime: granted,
                    tlvs: nested))
        case .relayEndpoint:
            guard let transport = cursor.readUInt8(), let modes = cursor.readUInt8() else { throw bad }
            return .relayEndpoint(
                CSPRelayEndpoint(
                    transport: IPProtocol(rawValue: transport), modes: CSPRelayModes(rawValue: modes), endpoint: try endpoint()))
        case .relayToken:
            guard CSPTLV.relayTokenLengths.contains(value.count) else { throw bad }
            return .relayToken(Array(value))
        case .relayedSession:
            guard let session = cursor.readUInt64(), let hopIndex = cursor.readUInt8(), hopIndex != 0,
                let flags = cursor.readUInt8(), cursor.remaining == 0
            else { throw bad }
            return .relayedSession(
                CSPRelayedSession(sessionID: session, hopIndex: hopIndex, flags: CSPRelayedSessionFlags(rawValue: flags)))
        default:
            // Hop-payload-only TLVs never belong in a datagram, and 14.1 has a CSP receiver ignore
            // them, critical bit or not: kept verbatim like an unknown non-critical TLV, so that a
            // middlebox forwards them unchanged and nobody judges their values here.
            if type.isCritical, !type.isHopPayloadOnly {
                throw CSPWireError(.unknownCriticalTLV(type: type.rawValue), at: offset)
            }
            return .unknown(type: type.rawValue, value: Array(value))
        }
    }

    /// RELAY-TOKEN's length (docs/PROTOCOL.md 14.1); the content is the relay's business (Midcom's is 24).
    public static let relayTokenLengths = 16...64

    /// Appends this TLV in the encoding of docs/PROTOCOL.md 3.2, exactly as `CSPMessage.serialize`
    /// writes it. Throws for values the decoder would reject (see `emit`); error offsets count
    /// from the start of `out`.
    public func encode(into out: inout [UInt8]) throws(CSPWireError) {
        try emit(into: &out, depth: 0)
    }

    /// Appends a TLV of `type` whose value `writeValue` appends, then patches its length: the one
    /// writer of 3.2's type and length, shared by `emit` and by hop payloads whose TLV values
    /// CSPWire does not model (docs/PROTOCOL.md 14.5). Throws `.messageTooLong` if the value
    /// exceeds 65535 octets.
    public static func append(
        _ type: CSPTLVType, into out: inout [UInt8], value writeValue: (inout [UInt8]) throws(CSPWireError) -> Void
    ) throws(CSPWireError) {
        let typeOffset = out.count
        out.appendBigEndian(type.rawValue)
        out.appendBigEndian(UInt16(0))  // length, patched below
        let valueStart = out.count
        try writeValue(&out)
        let length = out.count - valueStart
        guard length <= Int(UInt16.max) else { throw CSPWireError(.messageTooLong, at: typeOffset) }
        out.writeBigEndian(UInt16(length), at: typeOffset + 2)
    }

    /// Appends the TLV. Refuses values the decoder would reject, so that whatever serializes also
    /// parses back equal: mixed-family flows, Ed25519 keys/signatures of the wrong length, challenge
    /// tokens outside 8...32 octets, relay tokens outside 16...64, hop index 0, impossible prefix
    /// lengths, records inside records, and `.unknown` carrying a type this implementation decodes.
    /// Text longer than 255 octets is cut at a scalar boundary.
    func emit(into out: inout [UInt8], depth: Int) throws(CSPWireError) {
        try Self.append(type, into: &out) { (out: inout [UInt8]) throws(CSPWireError) in
            let typeOffset = out.count - 4
            try emitValue(into: &out, typeOffset: typeOffset, depth: depth)
        }
    }

    private func emitValue(into out: inout [UInt8], typeOffset: Int, depth: Int) throws(CSPWireError) {
        let bad = CSPWireError(.badTLVValue(type: type.rawValue), at: typeOffset)
        func appendText(_ s: String) { out.append(contentsOf: CSPMessage.truncatedUTF8(s)) }
        switch self {
        case .flow(let f):
            out.append(f.proto.rawValue)
            out.append(f.source.family.rawValue)
            out.appendBigEndian(f.sourcePort)
            out.appendBigEndian(f.destinationPort)
            f.source.appendBytes(to: &out)
            // A flow never mixes families; the destination is written in the source's family width.
            if f.destination.family == f.source.family {
                f.destination.appendBytes(to: &out)
            } else {
                throw CSPWireError(.badTLVValue(type: CSPTLVType.flow.rawValue), at: typeOffset)
            }
        case .lifetime(let v), .epoch(let v): out.appendBigEndian(v)
        case .timestamp(let v): out.appendBigEndian(v)
        case .application(let s), .middleboxName(let s): appendText(s)
        case .requestedAction(let a): out.append(a.rawValue)
        case .reason(let r):
            out.appendBigEndian(r.code)
            out.appendBigEndian(r.retryAfter)
            appendText(r.text)
        case .redirectTarget(let e), .mappedAddress(let e), .hostAddress(let e), .newAddress(let e):
            out.appendEndpoint(e)
        case .identity(let k), .signature(let k):
            if k.keyType == CSPKeyMaterial.ed25519, k.bytes.count != (type == .identity ? 32 : 64) { throw bad }
            out.append(k.keyType)
            out.append(contentsOf: k.bytes)
        case .challengeToken(let t):
            guard (8...32).contains(t.count) else { throw bad }
            out.append(contentsOf: t)
        case .path(let p):
            out.append(p.pathID)
            out.appendEndpoint(p.endpoint)
        case .denySource(let d):
            guard Int(d.prefixLength) <= d.prefix.byteCount * 8 else { throw bad }
            out.append(d.prefix.family.rawValue)
            out.append(d.prefixLength)
            out.append(d.proto.rawValue)
            out.append(d.rateLimit ? 0x01 : 0)  // flags; other bits reserved, sent 0 and ignored
            out.appendBigEndian(d.port)
            d.prefix.appendBytes(to: &out)
        case .middleboxRecord(let r):
            guard depth < CSPMessage.maximumNesting else { throw CSPWireError(.nestingTooDeep, at: typeOffset) }
            out.appendBigEndian(r.middleboxID)
            out.appendBigEndian(r.epoch)
            out.append(r.decision.rawValue)
            out.append(0)
            out.appendBigEndian(r.grantedLifetime)
            for tlv in r.tlvs { try tlv.emit(into: &out, depth: depth + 1) }
        case .relayEndpoint(let r):
            out.append(r.transport.rawValue)
            out.append(r.modes.rawValue)
            out.appendEndpoint(r.endpoint)
        case .relayToken(let t):
            guard Self.relayTokenLengths.contains(t.count) else { throw bad }
            out.append(contentsOf: t)
        case .relayedSession(let r):
            guard r.hopIndex != 0 else { throw bad }
            out.appendBigEndian(r.sessionID)
            out.append(r.hopIndex)
            out.append(r.flags.rawValue)
        case .unknown(let t, let value):
            guard !CSPTLVType(rawValue: t).isKnown else { throw bad }
            out.append(contentsOf: value)
        }
    }
}

extension CSPMessage {
    /// The UTF-8 of `text`, cut to at most 255 octets without splitting a scalar.
    static func truncatedUTF8(_ text: String) -> ArraySlice<UInt8> {
        let utf8 = Array(text.utf8)
        guard utf8.count > maximumTextLength else { return utf8[...] }
        var end = maximumTextLength
        // Back up over continuation octets (10xxxxxx) to the start of the scalar that does not fit.
        while end > 0, utf8[end] & 0xc0 == 0x80 { end -= 1 }
        return utf8[..<end]
    }
}

extension IPAddress.Family {
    public var addressLength: Int { self == .ipv4 ? 4 : 16 }
}

extension ByteCursor {
    mutating func readAddress(length: Int) -> IPAddress? {
        guard let raw = readBytes(length) else { return nil }
        return IPAddress(bytes: raw)
    }

    /// family(1) reserved(1) port(2) address(4|16)
    mutating func readEndpoint() -> CSPEndpoint? {
        guard let family = readUInt8(), readUInt8() != nil, let port = readUInt16(),
            let length = IPAddress.Family(rawValue: family)?.addressLength, let address = readAddress(length: length)
        else { return nil }
        return CSPEndpoint(address: address, port: port)
    }
}

extension CSPEndpoint {
    /// Octets of the endpoint encoding (docs/PROTOCOL.md 3.2): 8 for IPv4, 20 for IPv6.
    public var encodedLength: Int { 4 + address.byteCount }

    /// Appends the endpoint encoding of docs/PROTOCOL.md 3.2: `family(1) reserved(1) port(2)
    /// address(4|16)`, reserved sent 0. For TLV values CSPWire does not model (TARGET, 14.5).
    public func encode(into out: inout [UInt8]) { out.appendEndpoint(self) }

    /// Decodes an endpoint that fills `bytes` exactly (8 or 20 octets); nil for any other length or
    /// an unknown family. The reserved octet is ignored, as 3.2 says.
    public init?(encoded bytes: UnsafeRawBufferPointer) {
        var cursor = ByteCursor(bytes)
        guard let endpoint = cursor.readEndpoint(), cursor.remaining == 0 else { return nil }
        self = endpoint
    }
}

extension Array where Element == UInt8 {
    mutating func appendEndpoint(_ e: CSPEndpoint) {
        append(e.address.family.rawValue)
        append(0)
        appendBigEndian(e.port)
        e.address.appendBytes(to: &self)
    }
}

/// A zero-copy, validated view of a CSP message header over received bytes. Construction checks
/// magic, version and length once; afterwards no accessor can fail.
public struct CSPMessageView {
    public let bytes: UnsafeRawBufferPointer

    public init(_ bytes: UnsafeRawBufferPointer) throws(CSPWireError) {
        guard bytes.count >= CSPMessage.headerLength else { throw CSPWireError(.truncated, at: bytes.count) }
        guard bytes.loadBigEndianUInt16(at: 0) == CSPMessage.magic else { throw CSPWireError(.badMagic, at: 0) }
        guard bytes[2] == CSPMessage.version else { throw CSPWireError(.unsupportedVersion(bytes[2]), at: 2) }
        let declared = Int(bytes.loadBigEndianUInt16(at: 6))
        // Trailing bytes beyond the declared length are an error, not padding: a middlebox that
        // appends a record must rewrite the length, and a mismatch means someone did not.
        guard declared == bytes.count, declared >= CSPMessage.headerLength else {
            throw CSPWireError(.lengthMismatch(declared: declared, actual: bytes.count), at: 6)
        }
        self.bytes = bytes
    }

    public var type: CSPMessageType { CSPMessageType(rawValue: bytes[3]) }
    public var flags: CSPFlags { CSPFlags(rawValue: bytes[4]) }
    public var result: CSPResultCode { CSPResultCode(rawValue: bytes[5]) }
    public var length: Int { Int(bytes.loadBigEndianUInt16(at: 6)) }
    public var sessionID: UInt64 { UInt64(bytes.loadBigEndianUInt32(at: 8)) << 32 | UInt64(bytes.loadBigEndianUInt32(at: 12)) }
    public var nonce: UInt64 { UInt64(bytes.loadBigEndianUInt32(at: 16)) << 32 | UInt64(bytes.loadBigEndianUInt32(at: 20)) }
    public var sequence: UInt32 { bytes.loadBigEndianUInt32(at: 24) }

    /// Cheap test used before any allocation: does this UDP payload look like CSP at all?
    public static func looksLikeCSP(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= CSPMessage.headerLength && bytes.loadBigEndianUInt16(at: 0) == CSPMessage.magic
    }
}
