import CSPWire
import Crypto

/// Stateless return-routability tokens (docs/PROTOCOL.md 6.6), like SYN cookies: a CHALLENGE
/// costs no memory, and a RESPONSE proves its sender received what was sent to the address.
///
///     token = expiry(4) ‖ HMAC-SHA-256(key(epoch), sessionID ‖ nonce ‖ address ‖ port ‖ expiry)[0..<16]
///
/// The HMAC key rotates every `rotation` seconds; it is derived from a secret chosen at start
/// (`key(n) = HMAC(secret, n)`), so rotation needs no randomness and no state, and tokens of the
/// current and the previous key verify. A token is valid until its expiry, at most `validity`.
public struct ChallengeTokens: Sendable {
    public static let rotation: UInt64 = 60
    public static let validity: UInt64 = 30
    public static let tokenLength = 20
    private let secret: [UInt8]
    /// The key of the latest generation used (deriving it costs an HMAC: once per rotation).
    private var cached: (generation: UInt64, key: [UInt8])?

    /// `secret`: 32 random octets, new at every start (tokens need not survive a restart).
    public init(secret: [UInt8]) { self.secret = secret }

    public mutating func mint(sessionID: UInt64, nonce: UInt64, address: IPAddress, port: UInt16, now: UInt64) -> [UInt8] {
        let expiry = UInt32(truncatingIfNeeded: now + Self.validity)
        let generation = now / Self.rotation
        if cached?.generation != generation { cached = (generation, key(generation)) }
        return bigEndian(expiry)
            + mac(sessionID: sessionID, nonce: nonce, address: address, port: port, expiry: expiry, key: cached!.key)
    }

    /// Whether `token` was minted by us, for exactly these values, and has not expired.
    public func verify(
        _ token: [UInt8], sessionID: UInt64, nonce: UInt64, address: IPAddress, port: UInt16, now: UInt64
    ) -> Bool {
        guard token.count == Self.tokenLength else { return false }
        let expiry = token[0..<4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        let nowLow = UInt32(truncatingIfNeeded: now)
        // Serial-number arithmetic on 32 bits: expired, or further ahead than we ever mint.
        let ahead = expiry &- nowLow
        guard ahead <= UInt32(Self.validity) else { return false }
        let minted = now &+ UInt64(ahead) &- Self.validity
        // The expiry names the key generation the token was minted under: the current key or,
        // for a token minted just before a rotation, the previous one.
        let generation = minted / Self.rotation
        let expected = mac(
            sessionID: sessionID, nonce: nonce, address: address, port: port, expiry: expiry,
            key: cached?.generation == generation ? cached!.key : key(generation))
        return constantTimeEqual(Array(token[4...]), expected)
    }

    private func key(_ generation: UInt64) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: bigEndian(generation), using: SymmetricKey(data: secret)))
    }

    private func mac(sessionID: UInt64, nonce: UInt64, address: IPAddress, port: UInt16, expiry: UInt32, key: [UInt8])
        -> [UInt8]
    {
        var input = bigEndian(sessionID) + bigEndian(nonce)
        input.append(address.family == .ipv4 ? 4 : 6)
        input += address.bytes
        input += bigEndian(port) + bigEndian(expiry)
        return Array(HMAC<SHA256>.authenticationCode(for: input, using: SymmetricKey(data: key)).prefix(16))
    }
}

func bigEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    (0..<T.bitWidth / 8).reversed().map { UInt8(truncatingIfNeeded: value >> ($0 * 8)) }
}

func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var difference: UInt8 = 0
    for i in a.indices { difference |= a[i] ^ b[i] }
    return difference == 0
}
