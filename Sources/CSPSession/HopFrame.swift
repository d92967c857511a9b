// Hop frames (docs/PROTOCOL.md 14.5): what a hop carries before its stream phase. Framing only;
// the bodies are Noise handshake messages and ciphertexts that the hop state machine produces.

/// The kind of a hop frame. Codes are listed as `static let`s like CSPWire's, but a kind outside
/// the five is not carried along: 14.5 ends the hop on an unknown kind, so `HopFrame.parse` throws.
public struct HopFrameKind: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// U → D: Noise message 1 (`e`), empty payload.
    public static let hello = HopFrameKind(rawValue: 1)
    /// D → U: Noise message 2 (`e, ee, s, es`), payload D's identity block.
    public static let helloReply = HopFrameKind(rawValue: 2)
    /// U → D: Noise message 3 (`s, se`), payload U's identity block ‖ HOP-OPEN TLVs.
    public static let open = HopFrameKind(rawValue: 3)
    /// D → U: HOP-ACCEPT TLVs encrypted with the hop's D→U cipher at nonce 0.
    public static let accept = HopFrameKind(rawValue: 4)
    /// D → U: `result(1) reserved(1)` ‖ TLVs; encrypted like ACCEPT once D has read OPEN, else clear.
    public static let refuse = HopFrameKind(rawValue: 5)

    public static let allKnown: [HopFrameKind] = [.hello, .helloReply, .open, .accept, .refuse]

    public var description: String {
        switch self {
        case .hello: "HELLO"
        case .helloReply: "HELLO-REPLY"
        case .open: "OPEN"
        case .accept: "ACCEPT"
        case .refuse: "REFUSE"
        default: "kind-\(rawValue)"
        }
    }

    /// The body lengths a frame of this kind can have; nil for an unknown kind. They follow from
    /// Noise_XX_25519_ChaChaPoly_SHA256 (keys 32 octets, AEAD tag 16) and the fixed payloads of 14.5,
    /// so a driver refuses an impossible frame from its header, before reading or buffering the body.
    /// Only fixed parts are counted: the TLVs inside OPEN, ACCEPT and REFUSE are checked when decoded.
    public var bodyLengths: ClosedRange<Int>? {
        let key = 32
        let tag = 16
        let identityBlock = 100  // docs/PROTOCOL.md 14.4; CSPTrust's IdentityBlock.length
        return switch self {
        // `e` in the clear: no key exists yet, and 14.5 gives message 1 an empty payload.
        case .hello: key...key
        // `e` ‖ encrypted `s` ‖ encrypted identity block: nothing else may follow.
        case .helloReply: (key + key + tag + identityBlock + tag)...(key + key + tag + identityBlock + tag)
        // encrypted `s` ‖ encrypted (identity block ‖ TLVs).
        case .open: (key + tag + identityBlock + tag)...HopFrame.maximumBodyLength
        // An AEAD ciphertext is at least its tag.
        case .accept: tag...HopFrame.maximumBodyLength
        // result and reserved octets in the clear (before D has read OPEN); more when encrypted.
        case .refuse: 2...HopFrame.maximumBodyLength
        default: nil
        }
    }
}

/// The 6-octet hop frame header: `0x43 'C' ‖ 0x48 'H' ‖ version(1) = 1 ‖ kind(1) ‖ length(2)`.
public struct HopFrameHeader: Hashable, Sendable {
    public static let length = 6
    public static let magic: UInt16 = 0x4348  // "CH"
    public static let version: UInt8 = 1

    public var kind: HopFrameKind
    /// Octets of body that follow the header.
    public var bodyLength: Int

    public init(kind: HopFrameKind, bodyLength: Int) {
        self.kind = kind
        self.bodyLength = bodyLength
    }

    /// Decodes the header at the start of `bytes` (octets after it are not looked at). Each octet
    /// is checked as soon as it is present, so a stream that is not a hop fails at its first wrong
    /// octet rather than after six. 14.5: a bad magic or version, an unknown kind, or a length the
    /// kind cannot have ends the hop.
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(SessionWireError) -> IncrementalParse<HopFrameHeader> {
        let available = min(bytes.count, length)
        if available >= 1, bytes[0] != UInt8(magic >> 8) { throw SessionWireError(.badFrameMagic, at: 0) }
        if available >= 2, bytes[1] != UInt8(magic & 0xff) { throw SessionWireError(.badFrameMagic, at: 0) }
        if available >= 3, bytes[2] != version { throw SessionWireError(.unsupportedFrameVersion(bytes[2]), at: 2) }
        var lengths: ClosedRange<Int>?
        if available >= 4 {
            lengths = HopFrameKind(rawValue: bytes[3]).bodyLengths
            guard lengths != nil else { throw SessionWireError(.unknownFrameKind(bytes[3]), at: 3) }
        }
        guard available == length, let lengths else { return .needsMore(length - available) }
        let bodyLength = Int(bytes.bigEndianUInt16(at: 4))
        guard lengths.contains(bodyLength) else {
            throw SessionWireError(.badFrameLength(kind: bytes[3], length: bodyLength), at: 4)
        }
        return .complete(HopFrameHeader(kind: HopFrameKind(rawValue: bytes[3]), bodyLength: bodyLength), consumed: length)
    }

    public func append(to out: inout [UInt8]) {
        out.appendBigEndian(Self.magic)
        out.append(Self.version)
        out.append(kind.rawValue)
        out.appendBigEndian(UInt16(truncatingIfNeeded: bodyLength))
    }
}

/// One hop frame: its kind and its body (a Noise message or ciphertext, or REFUSE's clear body).
public struct HopFrame: Hashable, Sendable {
    /// The 16-bit length field's limit, which is also Noise's limit on a message (65535 octets).
    public static let maximumBodyLength = Int(UInt16.max)

    public var kind: HopFrameKind
    public var body: [UInt8]

    public init(kind: HopFrameKind, body: [UInt8]) {
        self.kind = kind
        self.body = body
    }

    /// Decodes one frame from the start of `bytes`, incrementally: `.needsMore(n)` until the header
    /// and then the whole body are present (n is exactly what is missing: 6 − received octets first,
    /// then the rest of the body), `.complete` with the frame and 6 + body length. A frame is copied
    /// out: there are at most five per hop, all before the stream.
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(SessionWireError) -> IncrementalParse<HopFrame> {
        guard case .complete(let header, _) = try HopFrameHeader.parse(bytes) else {
            return .needsMore(HopFrameHeader.length - bytes.count)
        }
        let total = HopFrameHeader.length + header.bodyLength
        guard bytes.count >= total else { return .needsMore(total - bytes.count) }
        let body = Array(bytes[HopFrameHeader.length..<total])
        return .complete(HopFrame(kind: header.kind, body: body), consumed: total)
    }

    public static func parse(_ bytes: [UInt8]) throws(SessionWireError) -> IncrementalParse<HopFrame> {
        try withTypedThrows(bytes) { buffer throws(SessionWireError) in try parse(buffer) }
    }

    /// Appends header and body. Throws `.unknownFrameKind` or `.badFrameLength` for a frame that
    /// `parse` would refuse, so that whatever is sent also decodes.
    public func append(to out: inout [UInt8]) throws(SessionWireError) {
        guard let lengths = kind.bodyLengths else { throw SessionWireError(.unknownFrameKind(kind.rawValue), at: out.count + 3) }
        guard lengths.contains(body.count) else {
            throw SessionWireError(.badFrameLength(kind: kind.rawValue, length: body.count), at: out.count + 4)
        }
        HopFrameHeader(kind: kind, bodyLength: body.count).append(to: &out)
        out.append(contentsOf: body)
    }

    public func serialize() throws(SessionWireError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(HopFrameHeader.length + body.count)
        try append(to: &out)
        return out
    }
}

/// Runs a typed-throwing decoder over an array's octets. `withUnsafeBytes` rethrows untyped, so the
/// error is narrowed back here once rather than at every call site.
func withTypedThrows<T>(
    _ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(SessionWireError) -> T
) throws(SessionWireError) -> T {
    let result: Result<T, SessionWireError> = bytes.withUnsafeBytes { buffer in
        do throws(SessionWireError) { return .success(try body(buffer)) } catch { return .failure(error) }
    }
    return try result.get()
}
