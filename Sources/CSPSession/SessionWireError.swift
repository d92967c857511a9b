import CSPWire

/// Why a hop frame, a hop payload or an end-to-end record could not be decoded or encoded
/// (docs/PROTOCOL.md 14.5–14.7). Equality is on `kind` and `offset`, so tests can assert the exact
/// failure. Every decoding failure ends the hop (frames, payloads) or fails the session closed
/// (end-to-end records); none is answered on the wire by this layer.
public struct SessionWireError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable {
        /// A hop frame whose first two octets are not "CH".
        case badFrameMagic
        case unsupportedFrameVersion(UInt8)
        /// A hop frame kind this revision does not define (14.5: ends the hop).
        case unknownFrameKind(UInt8)
        /// A frame body of a length its kind cannot have (`HopFrameKind.bodyLengths`).
        case badFrameLength(kind: UInt8, length: Int)
        /// A body shorter than its fixed fields (REFUSE's result and reserved octets, a record's type).
        case truncated
        /// A TLV-level failure in a hop payload, as CSPWire's reader and decoder report it (an overrun,
        /// a bad value, an unknown critical type), or as the hop TLVs' own decoders do (`.badTLVValue`).
        case tlv(CSPWireError.Kind)
        /// A hop payload lacks a TLV it must carry (HOP-OPEN: HOP, TARGET, END-TO-END; HOP-ACCEPT:
        /// END-TO-END).
        case missingTLV(type: UInt16)
        /// A length-prefixed record whose length field is outside its range (end-to-end records
        /// 17–16401 octets of ciphertext, sealed hop records 17–65535).
        case badRecordLength(Int)
        /// An end-to-end record type this revision does not define: a failure (14.7).
        case unknownRecordType(UInt8)
        /// An end-to-end record body of a length or content its type cannot have.
        case badRecordBody(type: UInt8)
    }

    public var kind: Kind
    /// Octet offset, from the start of the buffer given to the decoder (or of the output being
    /// written, for encoding), where the failure was found.
    public var offset: Int

    public init(_ kind: Kind, at offset: Int) {
        self.kind = kind
        self.offset = offset
    }

    /// A CSPWire failure inside a hop payload, moved by `base` when the TLVs start `base` octets into
    /// the buffer the caller handed over (REFUSE's TLVs follow two fixed octets).
    init(_ wire: CSPWireError, base: Int = 0) {
        self.init(.tlv(wire.kind), at: wire.offset + base)
    }

    public var description: String {
        switch kind {
        case .badFrameMagic: "not a hop frame (bad magic) at byte \(offset)"
        case .unsupportedFrameVersion(let v): "unsupported hop frame version \(v)"
        case .unknownFrameKind(let k): "unknown hop frame kind \(k)"
        case .badFrameLength(let k, let length):
            "hop frame \(HopFrameKind(rawValue: k)) cannot have a body of \(length) octets"
        case .truncated: "truncated at byte \(offset)"
        case .tlv(let wire): CSPWireError(wire, at: offset).description
        case .missingTLV(let t): "hop payload lacks \(CSPTLVType(rawValue: t))"
        case .badRecordLength(let length): "record length \(length) out of range at byte \(offset)"
        case .unknownRecordType(let t): "unknown end-to-end record type \(t)"
        case .badRecordBody(let t): "end-to-end record type \(t) has an invalid body"
        }
    }
}

/// What an incremental decoder made of the octets received so far. It never consumes a partial
/// item, so a socket driver can keep its read index until `.complete` (the swift-nio habit).
public enum IncrementalParse<Value> {
    /// At least this many more octets are needed before anything can be decoded. A driver that
    /// reads exactly this many never reads past the item (a hop frame: first the 6-octet header,
    /// then exactly the body).
    case needsMore(Int)
    /// One item, which occupied the first `consumed` octets of the buffer.
    case complete(Value, consumed: Int)
}

extension IncrementalParse: Sendable where Value: Sendable {}
extension IncrementalParse: Equatable where Value: Equatable {}

/// Length-prefixed records, `length(2) ‖ ciphertext`: the shape shared by end-to-end records (14.7)
/// and sealed hop records (14.6). The ciphertext is returned as a range of the buffer (no copy),
/// because records are the stream's hot path; the caller decrypts from there.
func parseLengthPrefixed(_ bytes: UnsafeRawBufferPointer, lengths: ClosedRange<Int>) throws(SessionWireError)
    -> IncrementalParse<Range<Int>>
{
    guard bytes.count >= 2 else { return .needsMore(2 - bytes.count) }
    let length = Int(bytes.bigEndianUInt16(at: 0))
    // Checked before the body arrives, so a driver never waits for (or buffers) an impossible record.
    guard lengths.contains(length) else { throw SessionWireError(.badRecordLength(length), at: 0) }
    guard bytes.count >= 2 + length else { return .needsMore(2 + length - bytes.count) }
    return .complete(2..<2 + length, consumed: 2 + length)
}

func appendLengthPrefixed(_ ciphertext: some Collection<UInt8>, lengths: ClosedRange<Int>, to out: inout [UInt8])
    throws(SessionWireError)
{
    guard lengths.contains(ciphertext.count) else {
        throw SessionWireError(.badRecordLength(ciphertext.count), at: out.count)
    }
    out.appendBigEndian(UInt16(ciphertext.count))
    out.append(contentsOf: ciphertext)
}

// Big-endian helpers: CSPWire's are internal to it, and these few lines are cheaper than making
// its byte cursor public API.
extension UnsafeRawBufferPointer {
    func bigEndianUInt16(at offset: Int) -> UInt16 {
        UInt16(self[offset]) << 8 | UInt16(self[offset + 1])
    }

    func bigEndianUInt32(at offset: Int) -> UInt32 {
        UInt32(bigEndianUInt16(at: offset)) << 16 | UInt32(bigEndianUInt16(at: offset + 2))
    }

    func bigEndianUInt64(at offset: Int) -> UInt64 {
        UInt64(bigEndianUInt32(at: offset)) << 32 | UInt64(bigEndianUInt32(at: offset + 4))
    }
}

extension Array where Element == UInt8 {
    mutating func appendBigEndian(_ value: UInt16) {
        append(UInt8(value >> 8))
        append(UInt8(truncatingIfNeeded: value))
    }

    mutating func appendBigEndian(_ value: UInt32) {
        appendBigEndian(UInt16(value >> 16))
        appendBigEndian(UInt16(truncatingIfNeeded: value))
    }

    mutating func appendBigEndian(_ value: UInt64) {
        appendBigEndian(UInt32(value >> 32))
        appendBigEndian(UInt32(truncatingIfNeeded: value))
    }
}
