import CSPWire
import Crypto

/// Midcom's RELAY-TOKEN (docs/PROTOCOL.md 14.2): 24 octets that bind a hop to the relayed session,
/// the hop index, the upstream end's Ed25519 key and the target, minted by midcomd with the token
/// key it shares with midrelayd, which checks it when the hop's OPEN arrives. Stateless, like
/// `ChallengeTokens`: the offer creates nothing at the relay.
///
///     version(1) = 1 ‖ hopIndex(1) ‖ modes(1) ‖ reserved(1) = 0 ‖ expiry(4) ‖ mac(16)
///     mac = HMAC-SHA-256(token key, "CSP1 relay token" 0x00 ‖ S(8) ‖ hopIndex ‖ modes ‖ expiry
///                        ‖ upstream key(32) ‖ target proto(1) ‖ target endpoint ‖ relay endpoint)[0..<16]
///
/// A token alone is useless: the hop handshake proves the upstream key it names.
public struct RelayToken: Hashable, Sendable {
    public static let length = 24
    public static let version: UInt8 = 1
    static let macLength = 16
    static let domain = Array("CSP1 relay token".utf8) + [0]

    /// What a token is bound to, beyond its own fields: the relay knows each of these when a hop
    /// arrives (HOP, TARGET, the handshake's key, the endpoint it accepted on).
    public struct Binding: Hashable, Sendable {
        /// `S`: the SETUP's session ID, or RELAYED-SESSION's (14.3).
        public var sessionID: UInt64
        /// 1 for a host's SETUP, else RELAYED-SESSION's hop index.
        public var hopIndex: UInt8
        /// The SETUP's IDENTITY.
        public var upstreamKey: PublicKey
        /// FLOW's protocol (6 for the TCP hops of this revision).
        public var targetProtocol: UInt8
        /// FLOW's destination.
        public var target: CSPEndpoint
        /// The relay endpoint offered in RELAY-ENDPOINT.
        public var relayEndpoint: CSPEndpoint

        public init(
            sessionID: UInt64, hopIndex: UInt8, upstreamKey: PublicKey, targetProtocol: UInt8, target: CSPEndpoint,
            relayEndpoint: CSPEndpoint
        ) {
            self.sessionID = sessionID
            self.hopIndex = hopIndex
            self.upstreamKey = upstreamKey
            self.targetProtocol = targetProtocol
            self.target = target
            self.relayEndpoint = relayEndpoint
        }
    }

    /// Why a token was refused. `expired` maps to REFUSE 4 (the host signals again for a new
    /// offer); the others mean the token is not for this hop (PROTOCOL.md 14.5).
    public enum Rejection: Error, Hashable, Sendable, CustomStringConvertible {
        case malformed(String)
        case unsupportedVersion(UInt8)
        /// Not minted with our key for this session, hop, upstream key, target and relay endpoint.
        case badMAC
        case expired(expiry: UInt32, now: UInt64)

        public var description: String {
            switch self {
            case .malformed(let why): "relay token malformed: \(why)"
            case .unsupportedVersion(let v): "relay token version \(v), expected \(RelayToken.version)"
            case .badMAC: "relay token not minted for this session, hop, upstream key, target and relay endpoint"
            case .expired(let expiry, let now): "relay token expired at \(expiry) (now \(now))"
            }
        }
    }

    public let hopIndex: UInt8
    /// RELAY-ENDPOINT's `modes` of the offer (0x01 clear, 0x02 sealed, 0x04 terminating).
    public let modes: UInt8
    /// Seconds since 1970 after which the token is refused.
    public let expiry: UInt32
    public let mac: [UInt8]

    public var bytes: [UInt8] { [Self.version, hopIndex, modes, 0] + bigEndian(expiry) + mac }

    /// Checks the layout only; `RelayTokenKey.check` proves the rest.
    public init(bytes: some Collection<UInt8>) throws(Rejection) {
        let bytes = Array(bytes)
        guard bytes.count == Self.length else { throw .malformed("\(bytes.count) octets, expected \(Self.length)") }
        guard bytes[0] == Self.version else { throw .unsupportedVersion(bytes[0]) }
        // The reserved octet is outside the MAC: anything but 0 is refused, so no bit of a valid
        // token can change without the token failing.
        guard bytes[3] == 0 else { throw .malformed("reserved octet is \(bytes[3]), not 0") }
        hopIndex = bytes[1]
        modes = bytes[2]
        expiry = bytes[4..<8].reduce(0) { $0 << 8 | UInt32($1) }
        mac = Array(bytes[8..<24])
    }

    fileprivate init(hopIndex: UInt8, modes: UInt8, expiry: UInt32, mac: [UInt8]) {
        self.hopIndex = hopIndex
        self.modes = modes
        self.expiry = expiry
        self.mac = mac
    }
}

/// The 32-octet key midcomd mints relay tokens with and midrelayd checks them with.
public struct RelayTokenKey: Sendable {
    public static let length = 32
    public let bytes: [UInt8]

    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == Self.length else { return nil }
        self.bytes = Array(bytes)
    }

    /// A new random key (midcomd, at its first start).
    public static func random() -> RelayTokenKey {
        RelayTokenKey(bytes: SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) })!
    }

    /// A token for `binding`, valid until `expiry` (now + token-lifetime).
    public func mint(for binding: RelayToken.Binding, modes: UInt8, expiry: UInt32) -> RelayToken {
        RelayToken(
            hopIndex: binding.hopIndex, modes: modes, expiry: expiry,
            mac: mac(binding: binding, hopIndex: binding.hopIndex, modes: modes, expiry: expiry))
    }

    /// The token, if it was minted with this key for exactly `binding` and has not expired at
    /// `now` (seconds since 1970). The MAC is compared in constant time and checked before the
    /// expiry, so only authentic tokens are reported as expired.
    public func check(_ token: some Collection<UInt8>, for binding: RelayToken.Binding, now: UInt64) throws(RelayToken.Rejection)
        -> RelayToken
    {
        let parsed = try RelayToken(bytes: token)
        // The MAC covers the token's own hop index; the binding's (the HOP's) must be the same.
        let expected = mac(binding: binding, hopIndex: parsed.hopIndex, modes: parsed.modes, expiry: parsed.expiry)
        guard constantTimeEqual(parsed.mac, expected), parsed.hopIndex == binding.hopIndex else { throw .badMAC }
        guard now <= UInt64(parsed.expiry) else { throw .expired(expiry: parsed.expiry, now: now) }
        return parsed
    }

    private func mac(binding: RelayToken.Binding, hopIndex: UInt8, modes: UInt8, expiry: UInt32) -> [UInt8] {
        var input = RelayToken.domain
        input += bigEndian(binding.sessionID)
        input += [hopIndex, modes]
        input += bigEndian(expiry)
        input += binding.upstreamKey.bytes
        input.append(binding.targetProtocol)
        appendEndpoint(binding.target, to: &input)
        appendEndpoint(binding.relayEndpoint, to: &input)
        let code = HMAC<SHA256>.authenticationCode(for: input, using: SymmetricKey(data: bytes))
        return Array(code.prefix(RelayToken.macLength))
    }
}

/// The endpoint encoding of PROTOCOL.md 3.2: family(1) reserved(1) = 0 port(2) address(4|16).
private func appendEndpoint(_ endpoint: CSPEndpoint, to out: inout [UInt8]) {
    out.append(endpoint.address.family.rawValue)
    out.append(0)
    out += bigEndian(endpoint.port)
    endpoint.address.appendBytes(to: &out)
}
