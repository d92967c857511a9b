import CSPWire

/// A CSP message the middlebox must act on, parsed (and, with the trust issue, verified) before
/// the engine's lock is taken: the engine never touches bytes.
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

    public init(message: CSPMessage, source: CSPEndpoint, entry: Entry) {
        self.message = message
        self.source = source
        self.entry = entry
    }

    /// Parses a datagram's payload; throws the codec's error for malformed input.
    public init(parsing payload: UnsafeRawBufferPointer, source: CSPEndpoint, entry: Entry) throws {
        self.init(message: try CSPMessage.parse(payload), source: source, entry: entry)
    }

    public var isAddressedToUs: Bool { entry == .addressedToUs }

    /// Where the message was going: the peer for intercepted messages, nil for messages to us.
    public var destination: CSPEndpoint? {
        if case .intercepted(let destination) = entry { return destination }
        return nil
    }
}
