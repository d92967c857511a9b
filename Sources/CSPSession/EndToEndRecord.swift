// The framing of the end-to-end layer (docs/PROTOCOL.md 14.7) and of sealed hops (14.6): what
// surrounds a ciphertext on the stream, and the layout of a record's plaintext. No encryption here:
// the CipherStates (CSPTrust's Noise) turn plaintexts into ciphertexts and back.

/// End-to-end record types (14.7). A closed set: "an unknown type is a failure", and the session
/// fails closed, so there is nothing to carry along.
public enum EndToEndRecordType: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    case data = 1
    case ack = 2
    case close = 3
    case abort = 4
    case keyUpdate = 5
    case ping = 6
    case message = 7

    public var description: String {
        switch self {
        case .data: "DATA"
        case .ack: "ACK"
        case .close: "CLOSE"
        case .abort: "ABORT"
        case .keyUpdate: "KEY-UPDATE"
        case .ping: "PING"
        case .message: "MESSAGE"
        }
    }
}

/// ABORT's code. An open set: "others: reported by number".
public struct EndToEndAbortCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// A record did not decrypt or came out of sequence, a resume point or blob was bad, or the
    /// peer's identity was not the expected one: the session failed closed.
    public static let integrityFailure = EndToEndAbortCode(rawValue: 1)
    public static let abortedByApplication = EndToEndAbortCode(rawValue: 2)
    /// A buffer or lifetime limit.
    public static let limit = EndToEndAbortCode(rawValue: 3)

    public var description: String {
        switch self {
        case .integrityFailure: "integrity-failure"
        case .abortedByApplication: "aborted-by-application"
        case .limit: "limit"
        default: "abort-\(rawValue)"
        }
    }
}

/// The plaintext of one end-to-end record: `type(1) ‖ body`.
public enum EndToEndRecord: Hashable, Sendable {
    /// 1–16384 application octets (an empty DATA would be a record that moves nothing).
    case data([UInt8])
    /// Every record of the other direction below `nextExpected` arrived.
    case ack(nextExpected: UInt64)
    /// No more DATA or MESSAGE in this direction (half-close).
    case close
    /// The session ends now. `text` follows the text rule of 3.2 (UTF-8, at most 255 octets).
    case abort(code: EndToEndAbortCode, text: String)
    /// The sender's following records use the Rekey()'d key.
    case keyUpdate
    /// Answered by an ACK at once.
    case ping(token: UInt64)
    /// 0–16384 octets: one application message (datagram API, 14.11).
    case message([UInt8])

    /// The most application octets a DATA or MESSAGE carries: records stay 16 KiB like TLS's.
    public static let maximumBodyLength = 16384
    static let maximumTextLength = 255

    public var type: EndToEndRecordType {
        switch self {
        case .data: .data
        case .ack: .ack
        case .close: .close
        case .abort: .abort
        case .keyUpdate: .keyUpdate
        case .ping: .ping
        case .message: .message
        }
    }

    /// Every type but ACK elicits an acknowledgement (14.7), so ACKs never answer ACKs.
    public var elicitsAcknowledgement: Bool { type != .ack }

    /// Decodes a decrypted record. Error offsets count from the type octet. Invalid UTF-8 in an
    /// ABORT's text is refused rather than repaired, so that decoding and encoding are inverse.
    public init(plaintext: UnsafeRawBufferPointer) throws(SessionWireError) {
        guard plaintext.count >= 1 else { throw SessionWireError(.truncated, at: 0) }
        guard let type = EndToEndRecordType(rawValue: plaintext[0]) else {
            throw SessionWireError(.unknownRecordType(plaintext[0]), at: 0)
        }
        let body = UnsafeRawBufferPointer(rebasing: plaintext[1...])
        let bad = SessionWireError(.badRecordBody(type: type.rawValue), at: 1)
        switch type {
        case .data:
            guard (1...Self.maximumBodyLength).contains(body.count) else { throw bad }
            self = .data(Array(body))
        case .message:
            guard body.count <= Self.maximumBodyLength else { throw bad }
            self = .message(Array(body))
        case .ack:
            guard body.count == 8 else { throw bad }
            self = .ack(nextExpected: body.bigEndianUInt64(at: 0))
        case .ping:
            guard body.count == 8 else { throw bad }
            self = .ping(token: body.bigEndianUInt64(at: 0))
        case .close, .keyUpdate:
            guard body.isEmpty else { throw bad }
            self = type == .close ? .close : .keyUpdate
        case .abort:
            let text = UnsafeRawBufferPointer(rebasing: body.dropFirst())
            guard body.count >= 1, text.count <= Self.maximumTextLength,
                let string = String(validating: text, as: UTF8.self)
            else { throw bad }
            self = .abort(code: EndToEndAbortCode(rawValue: body[0]), text: string)
        }
    }

    public init(plaintext: [UInt8]) throws(SessionWireError) {
        self = try withTypedThrows(plaintext) { buffer throws(SessionWireError) in try EndToEndRecord(plaintext: buffer) }
    }

    /// Appends `type(1) ‖ body`. Throws `.badRecordBody` for an empty DATA or a DATA or MESSAGE
    /// above 16384 octets; an ABORT's text longer than 255 octets is cut at a character boundary.
    public func appendPlaintext(to out: inout [UInt8]) throws(SessionWireError) {
        switch self {
        case .data(let bytes), .message(let bytes):
            let minimum = type == .data ? 1 : 0
            guard (minimum...Self.maximumBodyLength).contains(bytes.count) else {
                throw SessionWireError(.badRecordBody(type: type.rawValue), at: out.count + 1)
            }
            out.append(type.rawValue)
            out.append(contentsOf: bytes)
        case .ack(let value), .ping(let value):
            out.append(type.rawValue)
            out.appendBigEndian(value)
        case .close, .keyUpdate:
            out.append(type.rawValue)
        case .abort(let code, let text):
            out.append(type.rawValue)
            out.append(code.rawValue)
            out.append(contentsOf: Self.truncatedUTF8(text))
        }
    }

    public func plaintext() throws(SessionWireError) -> [UInt8] {
        var out: [UInt8] = []
        try appendPlaintext(to: &out)
        return out
    }

    /// The UTF-8 of `text`, cut to at most 255 octets without splitting a scalar (as CSPWire does
    /// for 3.2's text).
    static func truncatedUTF8(_ text: String) -> ArraySlice<UInt8> {
        let utf8 = Array(text.utf8)
        guard utf8.count > maximumTextLength else { return utf8[...] }
        var end = maximumTextLength
        // Back up over continuation octets (10xxxxxx) to the start of the scalar that does not fit.
        while end > 0, utf8[end] & 0xc0 == 0x80 { end -= 1 }
        return utf8[..<end]
    }
}

/// The end-to-end stream's framing (14.7): `length(2) ‖ ciphertext`, for the records and, once at
/// the start of H's stream, for Noise message 3.
public enum EndToEndRecordFraming {
    /// A record's ciphertext: `type(1) ‖ body` (1–16385 octets) plus the 16-octet tag.
    public static let ciphertextLengths = 17...16401
    /// Noise message 3 (`s, se`): encrypted `s` (48) ‖ encrypted (identity block (100) ‖ TLVs) with its
    /// tag (16), up to Noise's 65535-octet limit.
    public static let handshakeLengths = 164...65535

    /// One record from the start of `bytes`: `.needsMore(n)` until its two length octets and then
    /// its whole ciphertext are there, then the ciphertext's range in `bytes` (not copied) and the
    /// octets consumed. A length outside 17–16401 throws at once: the session fails closed.
    public static func parseRecord(_ bytes: UnsafeRawBufferPointer) throws(SessionWireError) -> IncrementalParse<Range<Int>> {
        try parseLengthPrefixed(bytes, lengths: ciphertextLengths)
    }

    /// H's message 3, the first item of H's stream, framed like a record but with its own length range.
    public static func parseHandshake(_ bytes: UnsafeRawBufferPointer) throws(SessionWireError) -> IncrementalParse<Range<Int>> {
        try parseLengthPrefixed(bytes, lengths: handshakeLengths)
    }

    public static func appendRecord(ciphertext: some Collection<UInt8>, to out: inout [UInt8]) throws(SessionWireError) {
        try appendLengthPrefixed(ciphertext, lengths: ciphertextLengths, to: &out)
    }

    public static func appendHandshake(message: some Collection<UInt8>, to out: inout [UInt8]) throws(SessionWireError) {
        try appendLengthPrefixed(message, lengths: handshakeLengths, to: &out)
    }
}

/// A sealed hop's framing (14.6): each direction after ACCEPT is `length(2) ‖ ciphertext`, the
/// ciphertext sealing a chunk of the stream whose boundaries are independent of end-to-end records.
public enum SealedHopRecordFraming {
    /// A chunk of the stream: 1–65519 octets, so that chunk and tag fit the 16-bit length.
    public static let chunkLengths = 1...65519
    public static let ciphertextLengths = 17...65535

    /// One hop record from the start of `bytes`, as `EndToEndRecordFraming.parseRecord` does.
    public static func parseRecord(_ bytes: UnsafeRawBufferPointer) throws(SessionWireError) -> IncrementalParse<Range<Int>> {
        try parseLengthPrefixed(bytes, lengths: ciphertextLengths)
    }

    public static func appendRecord(ciphertext: some Collection<UInt8>, to out: inout [UInt8]) throws(SessionWireError) {
        try appendLengthPrefixed(ciphertext, lengths: ciphertextLengths, to: &out)
    }
}
