import Crypto

/// Why a Noise operation failed. Every failure of a handshake is final (Noise section 5.3: the
/// HandshakeState is then deleted); a failed transport decryption leaves the CipherState as it was.
public enum NoiseError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The AEAD tag did not verify: wrong key, wrong nonce, wrong associated data or altered octets.
    case decryptionFailed
    /// Fewer octets than the message's fixed part (keys and tags) needs.
    case messageTooShort(length: Int, minimum: Int)
    /// Above Noise's limit of 65535 octets per message (section 3).
    case messageTooLong(length: Int)
    /// The nonce reached 2^64−1, which Noise reserves for Rekey (sections 5.1, 11.3).
    case nonceExhausted
    /// A transport operation on a CipherState without a key.
    case missingKey
    /// The peer's public key yields no shared secret (the DH function refused it).
    case invalidPublicKey
    /// writeMessage called while a message from the peer is expected.
    case notOurTurn
    /// readMessage called while it is our turn to write.
    case notPeersTurn
    /// writeMessage or readMessage after the last handshake message.
    case handshakeAlreadyComplete
    /// split() before the last handshake message.
    case handshakeNotComplete
    /// An earlier error ended this handshake; start a new one.
    case handshakeFailed

    public var description: String {
        switch self {
        case .decryptionFailed: "Noise: decryption failed (altered octets, or another key, nonce or associated data)"
        case .messageTooShort(let length, let minimum):
            "Noise: message of \(length) octets is shorter than its \(minimum) octets of keys and tags"
        case .messageTooLong(let length): "Noise: message of \(length) octets exceeds 65535"
        case .nonceExhausted: "Noise: nonce 2^64-1 reached: the session must end (or have ended) before it"
        case .missingKey: "Noise: CipherState has no key"
        case .invalidPublicKey: "Noise: the peer's X25519 key gives no shared secret"
        case .notOurTurn: "Noise: writeMessage while a message from the peer is expected"
        case .notPeersTurn: "Noise: readMessage while it is our turn to write"
        case .handshakeAlreadyComplete: "Noise: the handshake is already complete"
        case .handshakeNotComplete: "Noise: split() before the handshake is complete"
        case .handshakeFailed: "Noise: this handshake failed earlier and cannot continue"
        }
    }
}

/// Noise's CipherState (The Noise Protocol Framework, revision 34, section 5.1) over
/// ChaCha20-Poly1305 (RFC 8439) from swift-crypto: a key and the nonce the next message uses.
///
/// Besides Noise's sequential `encryptWithAd`/`decryptWithAd`, `encrypt(nonce:…)` and
/// `decrypt(nonce:…)` take the nonce from the caller and leave `nonce` alone: the end-to-end layer
/// numbers its records itself and retransmits stored ciphertext after a resume (PROTOCOL.md 14.7),
/// and the resume blob uses its own nonce space (2·epoch + d).
public struct CipherState: Sendable {
    public static let keyLength = 32
    public static let tagLength = 16
    /// Noise's limit for any message (section 3); it bounds transport messages too.
    public static let maxMessageLength = 65535
    /// Noise reserves the largest nonce for Rekey (sections 5.1 and 11.3): no message uses it.
    public static let reservedNonce = UInt64.max

    /// Noise's `k`; nil is its "empty" key, under which Encrypt/DecryptWithAd pass octets through
    /// (the first handshake message, before any DH).
    private var key: [UInt8]?
    /// Noise's `n`: the nonce of the next `encryptWithAd`/`decryptWithAd`. Setting it is SetNonce.
    public var nonce: UInt64

    /// Noise's InitializeKey: `n` starts at 0.
    init(optionalKey: [UInt8]?) {
        key = optionalKey
        nonce = 0
    }

    /// A CipherState with a 32-octet key (a Split() output, or `k_resume` for the resume blob).
    public init?(key: [UInt8], nonce: UInt64 = 0) {
        guard key.count == Self.keyLength else { return nil }
        self.key = key
        self.nonce = nonce
    }

    public var hasKey: Bool { key != nil }

    /// ENCRYPT(k, n++, ad, plaintext), or the plaintext itself while the key is empty.
    public mutating func encryptWithAd(_ ad: [UInt8], plaintext: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard let key else { return plaintext }
        let ciphertext = try Self.encrypt(key: key, nonce: nonce, ad: ad, plaintext: plaintext)
        nonce += 1
        return ciphertext
    }

    /// DECRYPT(k, n++, ad, ciphertext), or the ciphertext itself while the key is empty. A failure
    /// leaves `n` unchanged (Noise 5.1), so the caller decides whether the session survives it.
    public mutating func decryptWithAd(_ ad: [UInt8], ciphertext: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard let key else { return ciphertext }
        let plaintext = try Self.decrypt(key: key, nonce: nonce, ad: ad, ciphertext: ciphertext)
        nonce += 1
        return plaintext
    }

    /// ENCRYPT(k, nonce, ad, plaintext) at a nonce the caller owns; `nonce` is not touched.
    /// Never reuse a nonce with new plaintext: retransmit the stored ciphertext instead.
    public func encrypt(nonce: UInt64, ad: [UInt8] = [], plaintext: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard let key else { throw .missingKey }
        return try Self.encrypt(key: key, nonce: nonce, ad: ad, plaintext: plaintext)
    }

    /// DECRYPT(k, nonce, ad, ciphertext) at a nonce the caller owns; `nonce` is not touched.
    public func decrypt(nonce: UInt64, ad: [UInt8] = [], ciphertext: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard let key else { throw .missingKey }
        return try Self.decrypt(key: key, nonce: nonce, ad: ad, ciphertext: ciphertext)
    }

    /// Noise's Rekey (sections 4.2 and 11.3): k = the first 32 octets of ENCRYPT(k, 2^64−1, empty,
    /// 32 zeros). The nonce goes on counting, so a rekeyed direction never restarts at 0. Without a
    /// key there is nothing to rekey.
    public mutating func rekey() {
        guard let key else { return }
        self.key = Array(Self.seal(key: key, nonce: Self.reservedNonce, ad: [], plaintext: Self.zeros).prefix(Self.keyLength))
    }

    private static let zeros = [UInt8](repeating: 0, count: 32)

    /// ChaChaPoly's 96-bit nonce (Noise 12.3): 32 bits of zeros, then `n` as 64 bits little-endian.
    static func nonceBytes(_ n: UInt64) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 12)
        for i in 0..<8 { out[4 + i] = UInt8(truncatingIfNeeded: n >> (8 * UInt64(i))) }
        return out
    }

    private static func encrypt(key: [UInt8], nonce: UInt64, ad: [UInt8], plaintext: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard nonce != reservedNonce else { throw .nonceExhausted }
        guard plaintext.count + tagLength <= maxMessageLength else {
            throw .messageTooLong(length: plaintext.count + tagLength)
        }
        return seal(key: key, nonce: nonce, ad: ad, plaintext: plaintext)
    }

    private static func decrypt(key: [UInt8], nonce: UInt64, ad: [UInt8], ciphertext: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard nonce != reservedNonce else { throw .nonceExhausted }
        guard ciphertext.count >= tagLength else { throw .messageTooShort(length: ciphertext.count, minimum: tagLength) }
        guard ciphertext.count <= maxMessageLength else { throw .messageTooLong(length: ciphertext.count) }
        do {
            let box = try ChaChaPoly.SealedBox(combined: nonceBytes(nonce) + ciphertext)
            return Array(try ChaChaPoly.open(box, using: SymmetricKey(data: key), authenticating: ad))
        } catch {
            throw .decryptionFailed
        }
    }

    /// The AEAD itself: ciphertext ‖ tag, as Noise's ENCRYPT returns it.
    private static func seal(key: [UInt8], nonce: UInt64, ad: [UInt8], plaintext: [UInt8]) -> [UInt8] {
        do {
            let box = try ChaChaPoly.seal(
                plaintext, using: SymmetricKey(data: key), nonce: try ChaChaPoly.Nonce(data: nonceBytes(nonce)),
                authenticating: ad)
            return Array(box.combined.dropFirst(12))
        } catch {
            // swift-crypto fails only for a key or nonce of the wrong size, which these types rule out.
            preconditionFailure("ChaChaPoly.seal failed with a 32-octet key and a 12-octet nonce: \(error)")
        }
    }
}
