import CSPTrust
import CSPWire

/// A CSP message the middlebox must act on, parsed and its signature verified before the
/// engine's lock is taken: the engine never touches bytes, and never runs Ed25519 (except for a
/// signed message that omits IDENTITY, checked against its session's key).
public struct SignalingRequest: Sendable, Equatable {
    /// How the message reached us. Both kinds run through the same pipeline
    /// (`GatewayEngine.handle`); only the last step differs.
    public enum Entry: Sendable, Equatable {
        /// Intercepted on its way from `source` to `destination` (docs/PROTOCOL.md 2.2).
        case intercepted(destination: CSPEndpoint)
        /// Sent to the middlebox's own CSP port: the middlebox is the responder (2.4).
        case addressedToUs
    }

    public var message: CSPMessage
    public var source: CSPEndpoint
    public var entry: Entry
    /// What the end-to-end signature proves (docs/PROTOCOL.md 7).
    public var signature: SignatureCheck
    /// The receiver's wall clock when the datagram arrived, seconds since 1970 (for TIMESTAMP
    /// and challenge tokens; the engine's `Instant` is monotonic).
    public var wallClock: UInt64
    /// The datagram's CSP payload length: what the amplification bound is measured against.
    public var wireLength: Int
    /// It came from a CSP port inside the conntrack entry of a request that went out (the
    /// ruleset's mark 0x4d430003): the way a rendezvous's relayed SETUP reaches its server.
    public var insideConntrack = false

    public init(
        message: CSPMessage, source: CSPEndpoint, entry: Entry, signature: SignatureCheck = .unsigned,
        wallClock: UInt64 = 0, wireLength: Int? = nil
    ) {
        self.message = message
        self.source = source
        self.entry = entry
        self.signature = signature
        self.wallClock = wallClock
        self.wireLength = wireLength ?? ((try? message.serialize().count) ?? CSPMessage.headerLength)
    }

    /// Parses a datagram's payload and verifies its signature; throws the codec's error for
    /// malformed input.
    public init(parsing payload: UnsafeRawBufferPointer, source: CSPEndpoint, entry: Entry, wallClock: UInt64 = 0) throws {
        try self.init(
            parsing: payload, source: source, entry: entry, wallClock: wallClock, reusing: CSPMessage.empty)
    }

    /// `init(parsing:…)` into `storage`, a message taken back from an earlier request
    /// (`CSPMessage.parse(_:into:)`): its TLV array's storage is reused when nothing else holds it.
    public init(
        parsing payload: UnsafeRawBufferPointer, source: CSPEndpoint, entry: Entry, wallClock: UInt64 = 0,
        reusing storage: consuming CSPMessage
    ) throws {
        // Moved, not copied: a second reference would make the parse allocate storage anew.
        var message = consume storage
        try CSPMessage.parse(payload, into: &message)
        self.init(
            message: message, source: source, entry: entry, signature: SignatureCheck.check(payload, message: message),
            wallClock: wallClock, wireLength: payload.count)
    }

    public var isAddressedToUs: Bool { entry == .addressedToUs }

    /// Where the message was going: the peer for intercepted messages, nil for messages to us.
    public var destination: CSPEndpoint? {
        if case .intercepted(let destination) = entry { return destination }
        return nil
    }

    /// The key that signed the message, once verified (for `.needsSessionKey`, by the engine).
    public var signer: PublicKey? {
        if case .valid(let key) = signature.status { return key }
        return nil
    }
}
