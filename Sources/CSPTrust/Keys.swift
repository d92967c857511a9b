import CSPWire
import Crypto

/// An Ed25519 public key (RFC 8032), as it travels in IDENTITY: 32 octets kept inline, so a
/// session can hold its owner's key without a heap allocation.
public struct PublicKey: Hashable, Sendable, CustomStringConvertible {
    private var words: (UInt64, UInt64, UInt64, UInt64)

    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 32 else { return nil }
        var w: [UInt64] = [0, 0, 0, 0]
        for (i, byte) in bytes.enumerated() { w[i / 8] = w[i / 8] << 8 | UInt64(byte) }
        words = (w[0], w[1], w[2], w[3])
    }

    public init?(_ material: CSPKeyMaterial) {
        guard material.keyType == CSPKeyMaterial.ed25519 else { return nil }
        self.init(bytes: material.bytes)
    }

    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(32)
        for word in [words.0, words.1, words.2, words.3] {
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: word >> UInt64(shift))) }
        }
        return out
    }

    public var material: CSPKeyMaterial { CSPKeyMaterial(keyType: CSPKeyMaterial.ed25519, bytes: bytes) }

    /// The first 8 octets of SHA-256 of the key: a middlebox's ID (docs/PROTOCOL.md 3.3) and the
    /// short name `csp` and `midctl` print for any key.
    public var fingerprint: UInt64 {
        SHA256.hash(data: bytes).prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// One copy-pasteable line: `csp-ed25519 <64 hex digits>`.
    public var text: String { "\(Self.textPrefix) \(hexString(bytes))" }
    public var description: String { "key \(hex(fingerprint))" }

    public static let textPrefix = "csp-ed25519"

    /// Parses `csp-ed25519 <64 hex digits> [comment]`.
    public init?(text: some StringProtocol) {
        let parts = text.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard parts.count >= 2, parts[0] == Self.textPrefix, let bytes = bytesFromHex(parts[1]) else { return nil }
        self.init(bytes: bytes)
    }

    public static func == (a: PublicKey, b: PublicKey) -> Bool {
        a.words.0 == b.words.0 && a.words.1 == b.words.1 && a.words.2 == b.words.2 && a.words.3 == b.words.3
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(words.0)
        hasher.combine(words.1)
        hasher.combine(words.2)
        hasher.combine(words.3)
    }

    /// Whether `signature` is this key's pure-Ed25519 signature of `message`.
    public func isValidSignature(_ signature: [UInt8], for message: [UInt8]) -> Bool {
        guard signature.count == 64, let key = try? Curve25519.Signing.PublicKey(rawRepresentation: bytes) else {
            return false
        }
        return key.isValidSignature(signature, for: message)
    }
}

/// An Ed25519 private key. Only its 32-octet seed is stored on disk (RFC 8032 5.1.5).
///
/// `@unchecked Sendable`: swift-crypto's key is an immutable value (its storage is never mutated
/// after init) that the module does not mark Sendable; keeping the expanded key avoids
/// re-deriving it (a scalar multiplication) for every signature.
public struct SigningKey: @unchecked Sendable {
    private let key: Curve25519.Signing.PrivateKey
    public let publicKey: PublicKey

    /// A new random key.
    public init() {
        key = Curve25519.Signing.PrivateKey()
        publicKey = PublicKey(bytes: key.publicKey.rawRepresentation)!
    }

    public init?(seed: some Collection<UInt8>) {
        guard seed.count == 32, let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: Array(seed)) else {
            return nil
        }
        self.key = key
        publicKey = PublicKey(bytes: key.publicKey.rawRepresentation)!
    }

    public var seed: [UInt8] { Array(key.rawRepresentation) }

    /// The 64-octet signature of `message`.
    public func sign(_ message: [UInt8]) -> [UInt8] {
        // Signing fails only for a malformed key, which init rules out.
        guard let signature = try? key.signature(for: message) else { return Data64.zero }
        return Array(signature)
    }
}

enum Data64 {
    static let zero = [UInt8](repeating: 0, count: 64)
}

/// Lower-case hex of `bytes`.
public func hexString(_ bytes: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 15)])
    }
    return String(decoding: out, as: UTF8.self)
}

/// The bytes of an even-length hex string, nil if it is not one.
public func bytesFromHex(_ text: some StringProtocol) -> [UInt8]? {
    let chars = Array(text.utf8)
    guard chars.count % 2 == 0 else { return nil }
    func value(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: c - 48
        case 97...102: c - 87
        case 65...70: c - 55
        default: nil
        }
    }
    var out: [UInt8] = []
    out.reserveCapacity(chars.count / 2)
    var i = 0
    while i < chars.count {
        guard let high = value(chars[i]), let low = value(chars[i + 1]) else { return nil }
        out.append(high << 4 | low)
        i += 2
    }
    return out
}
