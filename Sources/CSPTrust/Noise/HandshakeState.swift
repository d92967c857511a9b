import Crypto

/// An X25519 public key (RFC 7748): 32 octets, as Noise sends `e` and `s`.
public struct X25519PublicKey: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 32 else { return nil }
        self.bytes = Array(bytes)
    }

    public var description: String { "x25519 \(hexString(bytes))" }
}

/// An X25519 private key: Noise's DH function (section 12.1) for static and ephemeral keys.
///
/// `@unchecked Sendable`, as `SigningKey`: swift-crypto's key is immutable after init but not marked
/// Sendable, and keeping it spares the scalar multiplication that re-deriving its public key costs.
public struct X25519PrivateKey: @unchecked Sendable {
    private let key: Curve25519.KeyAgreement.PrivateKey
    public let publicKey: X25519PublicKey

    /// A new random key (Noise's GENERATE_KEYPAIR).
    public init() {
        self.init(key: Curve25519.KeyAgreement.PrivateKey())
    }

    /// A key from 32 octets, used as an X25519 scalar (X25519 clamps it, RFC 7748 section 5).
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 32, let key = try? Curve25519.KeyAgreement.PrivateKey(rawRepresentation: Array(bytes)) else {
            return nil
        }
        self.init(key: key)
    }

    private init(key: Curve25519.KeyAgreement.PrivateKey) {
        self.key = key
        publicKey = X25519PublicKey(bytes: key.publicKey.rawRepresentation)!
    }

    /// The 32 octets of the scalar, as given (unclamped): what a key file stores.
    public var bytes: [UInt8] { Array(key.rawRepresentation) }

    /// DH(self, peer): X25519 of our scalar and the peer's u-coordinate (RFC 7748 section 5).
    public func sharedSecret(with peer: X25519PublicKey) throws(NoiseError) -> [UInt8] {
        do {
            let peerKey = try Curve25519.KeyAgreement.PublicKey(rawRepresentation: peer.bytes)
            return try key.sharedSecretFromKeyAgreement(with: peerKey).withUnsafeBytes { Array($0) }
        } catch {
            throw .invalidPublicKey
        }
    }
}

/// Noise's HandshakeState (revision 34, section 5.3) for exactly one protocol,
/// Noise_XX_25519_ChaChaPoly_SHA256 (PROTOCOL.md 14.5 and 14.7), in either role:
///
///     -> e
///     <- e, ee, s, es
///     -> s, se
///
/// XX because neither side knows the other's X25519 key in advance (a relayed host never sees the
/// responder's signed answer); both static keys travel encrypted, and each side binds its key to
/// its Ed25519 identity with the identity block in its payload (14.4).
///
/// A message that cannot be written or read ends the handshake (Noise 5.3): later calls throw
/// `handshakeFailed`. A call out of turn, or a payload too large to send, changes nothing.
public struct HandshakeState: Sendable {
    public enum Role: Hashable, Sendable {
        case initiator
        case responder
    }

    public static let protocolName = "Noise_XX_25519_ChaChaPoly_SHA256"
    public static let messageCount = 3

    private enum Token {
        case e, s, ee, es, se
    }

    /// XX's message patterns (Noise 7.5); message i is written by the initiator when i is even.
    private static let patterns: [[Token]] = [[.e], [.e, .ee, .s, .es], [.s, .se]]
    /// Octets of keys and tags in each message: `e` 32; `e` 32 + encrypted `s` 48 + payload tag 16;
    /// encrypted `s` 48 + payload tag 16. A message is this plus its payload.
    private static let overhead = [32, 96, 64]

    public let role: Role
    private var symmetric: SymmetricState
    private let localStatic: X25519PrivateKey
    private var localEphemeral: X25519PrivateKey?
    /// The peer's static key: known after message 2 (initiator) or 3 (responder), when the
    /// handshake has authenticated it. Check it against the peer's identity block.
    public private(set) var remoteStatic: X25519PublicKey?
    public private(set) var remoteEphemeral: X25519PublicKey?
    /// Messages written or read so far (0...3).
    public private(set) var messageIndex = 0
    private var failed = false

    /// Initialize (Noise 5.3): MixHash(prologue); XX has no pre-messages.
    public init(role: Role, prologue: [UInt8], staticKey: X25519PrivateKey) {
        self.init(role: role, prologue: prologue, staticKey: staticKey, ephemeralKey: nil)
    }

    /// For test vectors only: a fixed ephemeral key. Reusing an ephemeral key across handshakes
    /// destroys forward secrecy and the responder's freshness, hence internal.
    init(role: Role, prologue: [UInt8], staticKey: X25519PrivateKey, ephemeralKey: X25519PrivateKey?) {
        self.role = role
        symmetric = SymmetricState(protocolName: Array(Self.protocolName.utf8))
        symmetric.mixHash(prologue)
        localStatic = staticKey
        localEphemeral = ephemeralKey
    }

    public var localStaticPublicKey: X25519PublicKey { localStatic.publicKey }

    /// Noise's `h`: after the last message, a unique name for this session (channel binding).
    public var handshakeHash: [UInt8] { symmetric.handshakeHash }

    public var isComplete: Bool { messageIndex == Self.messageCount }

    /// Whether the next call is writeMessage (true) or readMessage (false).
    public var isOurTurnToWrite: Bool { !isComplete && (messageIndex % 2 == 0) == (role == .initiator) }

    /// WriteMessage: the next handshake message, carrying `payload` (encrypted from message 2 on).
    public mutating func writeMessage(payload: [UInt8] = []) throws(NoiseError) -> [UInt8] {
        try checkUsable()
        guard isOurTurnToWrite else { throw .notOurTurn }
        let length = Self.overhead[messageIndex] + payload.count
        guard length <= CipherState.maxMessageLength else { throw .messageTooLong(length: length) }
        do {
            var message: [UInt8] = []
            message.reserveCapacity(length)
            for token in Self.patterns[messageIndex] {
                switch token {
                case .e:
                    let e = localEphemeral ?? X25519PrivateKey()
                    localEphemeral = e
                    message += e.publicKey.bytes
                    symmetric.mixHash(e.publicKey.bytes)
                case .s:
                    message += try symmetric.encryptAndHash(localStatic.publicKey.bytes)
                case .ee, .es, .se:
                    try mixDH(token)
                }
            }
            message += try symmetric.encryptAndHash(payload)
            messageIndex += 1
            return message
        } catch {
            failed = true
            throw error
        }
    }

    /// ReadMessage: processes the peer's next handshake message and returns its payload.
    @discardableResult
    public mutating func readMessage(_ message: [UInt8]) throws(NoiseError) -> [UInt8] {
        try checkUsable()
        guard !isOurTurnToWrite else { throw .notPeersTurn }
        guard message.count <= CipherState.maxMessageLength else {
            failed = true
            throw .messageTooLong(length: message.count)
        }
        guard message.count >= Self.overhead[messageIndex] else {
            failed = true
            throw .messageTooShort(length: message.count, minimum: Self.overhead[messageIndex])
        }
        do {
            var offset = 0
            func take(_ count: Int) -> [UInt8] {
                defer { offset += count }
                return Array(message[offset..<offset + count])
            }
            for token in Self.patterns[messageIndex] {
                switch token {
                case .e:
                    let re = take(32)
                    remoteEphemeral = X25519PublicKey(bytes: re)
                    symmetric.mixHash(re)
                case .s:
                    let sealed = take(symmetric.cipher.hasKey ? 32 + CipherState.tagLength : 32)
                    remoteStatic = X25519PublicKey(bytes: try symmetric.decryptAndHash(sealed))
                case .ee, .es, .se:
                    try mixDH(token)
                }
            }
            let payload = try symmetric.decryptAndHash(Array(message[offset...]))
            messageIndex += 1
            return payload
        } catch {
            failed = true
            throw error
        }
    }

    /// Split (Noise 5.2): the two transport CipherStates, each with n = 0.
    public func split() throws(NoiseError) -> (initiatorToResponder: CipherState, responderToInitiator: CipherState) {
        let keys = try completedKeys(outputs: 2)
        return (CipherState(optionalKey: keys[0]), CipherState(optionalKey: keys[1]))
    }

    /// Split with the third HKDF output, PROTOCOL.md 14.7's `k_resume`, the key of resume blobs.
    public func splitWithResumeKey() throws(NoiseError) -> (
        initiatorToResponder: CipherState, responderToInitiator: CipherState, resumeKey: [UInt8]
    ) {
        let keys = try completedKeys(outputs: 3)
        return (CipherState(optionalKey: keys[0]), CipherState(optionalKey: keys[1]), keys[2])
    }

    private func completedKeys(outputs: Int) throws(NoiseError) -> [[UInt8]] {
        guard !failed else { throw .handshakeFailed }
        guard isComplete else { throw .handshakeNotComplete }
        return symmetric.splitKeys(outputs: outputs)
    }

    private func checkUsable() throws(NoiseError) {
        guard !failed else { throw .handshakeFailed }
        guard !isComplete else { throw .handshakeAlreadyComplete }
    }

    /// ee, es, se: MixKey(DH(…)). For es the initiator uses its ephemeral and the responder its
    /// static; for se the reverse, so both sides compute the same two secrets.
    private mutating func mixDH(_ token: Token) throws(NoiseError) {
        let initiator = role == .initiator
        let (local, remote): (X25519PrivateKey?, X25519PublicKey?) =
            switch token {
            case .ee: (localEphemeral, remoteEphemeral)
            case .es: initiator ? (localEphemeral, remoteStatic) : (localStatic, remoteEphemeral)
            case .se: initiator ? (localStatic, remoteEphemeral) : (localEphemeral, remoteStatic)
            case .e, .s: preconditionFailure("not a DH token")
            }
        // The pattern puts every key before its first use; a nil here would be a bug in the table.
        guard let local, let remote else { preconditionFailure("XX pattern used a key before it was known") }
        symmetric.mixKey(try local.sharedSecret(with: remote))
    }
}
