import Crypto

/// Why an identity block proves nothing.
public enum IdentityBlockError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Not the 100 octets of `ed25519Public(32) ‖ generation(4) ‖ signature(64)`.
    case wrongLength(Int)
    /// The signature does not bind this Ed25519 key to the X25519 key the handshake authenticated:
    /// a block copied from another party, or another key of the sender.
    case badSignature(signer: PublicKey, x25519: X25519PublicKey)

    public var description: String {
        switch self {
        case .wrongLength(let length): "identity block of \(length) octets, expected \(IdentityBlock.length)"
        case .badSignature(let signer, let x25519):
            "identity block: \(signer)'s signature does not bind \(x25519) (a block of another key or party)"
        }
    }
}

/// The binding of a static X25519 key to an Ed25519 identity (docs/PROTOCOL.md 14.4), sent in every
/// handshake payload:
///
///     identity block = ed25519Public(32) ‖ generation(4) ‖ signature(64)
///     signature      = Ed25519("CSP1 x25519" 0x00 ‖ ed25519Public ‖ generation ‖ x25519Public)
///
/// The X25519 key is not in the block: the receiver verifies against the key Noise authenticated
/// (`rs`), so a block is worthless next to any other X25519 key.
public struct IdentityBlock: Hashable, Sendable {
    public static let length = 100
    static let domain = Array("CSP1 x25519".utf8) + [0]

    public let ed25519PublicKey: PublicKey
    /// 0 unless the X25519 key was rotated; the derivation's `generation`.
    public let generation: UInt32
    public let signature: [UInt8]

    /// Signs the binding of `x25519PublicKey` to `signingKey`'s identity.
    public init(binding x25519PublicKey: X25519PublicKey, generation: UInt32, signingKey: SigningKey) {
        ed25519PublicKey = signingKey.publicKey
        self.generation = generation
        signature = signingKey.sign(
            Self.signedOctets(ed25519PublicKey: signingKey.publicKey, generation: generation, x25519PublicKey: x25519PublicKey))
    }

    /// Parses the 100 octets; proves nothing until `verify(for:)`.
    public init(bytes: some Collection<UInt8>) throws(IdentityBlockError) {
        let bytes = Array(bytes)
        guard bytes.count == Self.length else { throw .wrongLength(bytes.count) }
        ed25519PublicKey = PublicKey(bytes: bytes[0..<32])!
        generation = bytes[32..<36].reduce(0) { $0 << 8 | UInt32($1) }
        signature = Array(bytes[36..<100])
    }

    public var bytes: [UInt8] { ed25519PublicKey.bytes + bigEndian(generation) + signature }

    /// The Ed25519 key that vouches for `x25519PublicKey` (Noise's `rs` after the handshake); the
    /// caller then judges that key by its own trust (pinned, remembered, listed).
    public func verify(for x25519PublicKey: X25519PublicKey) throws(IdentityBlockError) -> PublicKey {
        let input = Self.signedOctets(
            ed25519PublicKey: ed25519PublicKey, generation: generation, x25519PublicKey: x25519PublicKey)
        guard ed25519PublicKey.isValidSignature(signature, for: input) else {
            throw .badSignature(signer: ed25519PublicKey, x25519: x25519PublicKey)
        }
        return ed25519PublicKey
    }

    /// Parses and verifies in one step.
    public static func verify(_ block: some Collection<UInt8>, for x25519PublicKey: X25519PublicKey) throws(IdentityBlockError)
        -> PublicKey
    {
        try IdentityBlock(bytes: block).verify(for: x25519PublicKey)
    }

    static func signedOctets(ed25519PublicKey: PublicKey, generation: UInt32, x25519PublicKey: X25519PublicKey) -> [UInt8] {
        domain + ed25519PublicKey.bytes + bigEndian(generation) + x25519PublicKey.bytes
    }
}

extension SigningKey {
    /// The static X25519 key derived from this identity (PROTOCOL.md 14.4):
    /// HKDF-SHA-256(IKM = seed, salt = empty, info = "CSP1 x25519 static" ‖ generation(4), L = 32).
    /// Derived rather than mapped from Edwards to Montgomery form: that map needs field arithmetic
    /// swift-crypto does not expose, and one secret would serve two primitives.
    public func x25519StaticKey(generation: UInt32 = 0) -> X25519PrivateKey {
        let info = Array("CSP1 x25519 static".utf8) + bigEndian(generation)
        let derived = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: SymmetricKey(data: seed), salt: [UInt8](), info: info, outputByteCount: 32)
        // Any 32 octets are an X25519 scalar.
        return X25519PrivateKey(bytes: derived.withUnsafeBytes { Array($0) })!
    }
}

/// What a party of the session layer brings to a handshake: its static X25519 key and the identity
/// block that binds it to its Ed25519 key. A relay is given exactly this (midcomd's `relay.key`,
/// ARCHITECTURE.md), never the Ed25519 seed, so it can prove its identity but not sign records.
public struct SessionIdentity: Sendable {
    public let staticKey: X25519PrivateKey
    public let identityBlock: IdentityBlock

    /// Derives the static key of `generation` from the identity and signs the binding.
    public init(signingKey: SigningKey, generation: UInt32 = 0) {
        staticKey = signingKey.x25519StaticKey(generation: generation)
        identityBlock = IdentityBlock(binding: staticKey.publicKey, generation: generation, signingKey: signingKey)
    }

    /// The relay's form: a derived key and its block, checked to belong together (a block of
    /// another key would make every handshake fail at the peer).
    public init(staticKey: X25519PrivateKey, identityBlock: IdentityBlock) throws(IdentityBlockError) {
        _ = try identityBlock.verify(for: staticKey.publicKey)
        self.staticKey = staticKey
        self.identityBlock = identityBlock
    }

    public var ed25519PublicKey: PublicKey { identityBlock.ed25519PublicKey }
}
