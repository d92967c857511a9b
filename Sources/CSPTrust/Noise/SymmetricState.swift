import Crypto

/// Noise's SymmetricState (revision 34, section 5.2) for SHA-256: the chaining key `ck` that
/// collects every DH output, the handshake hash `h` that collects every octet sent, and the
/// CipherState keyed from `ck`. Internal: HandshakeState is the only user.
struct SymmetricState: Sendable {
    static let hashLength = 32

    private(set) var chainingKey: [UInt8]
    private(set) var handshakeHash: [UInt8]
    private(set) var cipher: CipherState

    /// InitializeSymmetric: a name of at most HASHLEN octets is zero-padded, a longer one hashed.
    /// ("Noise_XX_25519_ChaChaPoly_SHA256" is exactly 32 octets: used as it is.)
    init(protocolName: [UInt8]) {
        if protocolName.count <= Self.hashLength {
            handshakeHash = protocolName + [UInt8](repeating: 0, count: Self.hashLength - protocolName.count)
        } else {
            handshakeHash = Array(SHA256.hash(data: protocolName))
        }
        chainingKey = handshakeHash
        cipher = CipherState(optionalKey: nil)
    }

    /// MixKey: ck, temp_k = HKDF(ck, ikm, 2); the cipher gets temp_k with n = 0.
    mutating func mixKey(_ inputKeyMaterial: [UInt8]) {
        let outputs = noiseHKDF(chainingKey: chainingKey, inputKeyMaterial: inputKeyMaterial, outputs: 2)
        chainingKey = outputs[0]
        cipher = CipherState(optionalKey: outputs[1])
    }

    /// MixHash: h = HASH(h ‖ data).
    mutating func mixHash(_ data: [UInt8]) {
        var hasher = SHA256()
        hasher.update(data: handshakeHash)
        hasher.update(data: data)
        handshakeHash = Array(hasher.finalize())
    }

    /// EncryptAndHash: the ciphertext (or, before the first MixKey, the plaintext) joins `h`, so
    /// the peer's decryption also proves it saw the same transcript.
    mutating func encryptAndHash(_ plaintext: [UInt8]) throws(NoiseError) -> [UInt8] {
        let ciphertext = try cipher.encryptWithAd(handshakeHash, plaintext: plaintext)
        mixHash(ciphertext)
        return ciphertext
    }

    /// DecryptAndHash: the mirror of encryptAndHash.
    mutating func decryptAndHash(_ ciphertext: [UInt8]) throws(NoiseError) -> [UInt8] {
        let plaintext = try cipher.decryptWithAd(handshakeHash, ciphertext: ciphertext)
        mixHash(ciphertext)
        return plaintext
    }

    /// Split's keys, and with `outputs: 3` the third output of the same HKDF (PROTOCOL.md 14.7's
    /// `k_resume`): HKDF(ck, zerolen, n). The first two are the same either way.
    func splitKeys(outputs: Int) -> [[UInt8]] {
        noiseHKDF(chainingKey: chainingKey, inputKeyMaterial: [], outputs: outputs)
    }
}

/// Noise's HKDF (section 4.3): HMAC-SHA-256 extract with the chaining key as salt, then 2 or 3
/// outputs of 32 octets. That is RFC 5869's HKDF with empty info and L = 32·n, so swift-crypto's
/// HKDF computes it (and RFC 5869's vectors test it).
func noiseHKDF(chainingKey: [UInt8], inputKeyMaterial: [UInt8], outputs: Int) -> [[UInt8]] {
    precondition((2...3).contains(outputs), "Noise's HKDF has 2 or 3 outputs")
    let prk = HKDF<SHA256>.extract(inputKeyMaterial: SymmetricKey(data: inputKeyMaterial), salt: chainingKey)
    let okm = HKDF<SHA256>.expand(pseudoRandomKey: prk, info: [UInt8](), outputByteCount: 32 * outputs)
    let bytes = okm.withUnsafeBytes { Array($0) }
    return (0..<outputs).map { Array(bytes[32 * $0..<32 * ($0 + 1)]) }
}
