/// A transport endpoint carried in REDIRECT-TARGET, MAPPED-ADDRESS, HOST-ADDRESS and NEW-ADDRESS.
public struct CSPEndpoint: Hashable, Sendable, CustomStringConvertible {
    public var address: IPAddress
    public var port: UInt16
    public init(address: IPAddress, port: UInt16) {
        self.address = address
        self.port = port
    }

    public var description: String { address.family == .ipv6 ? "[\(address)]:\(port)" : "\(address):\(port)" }

    /// Parses the `description` form: `1.2.3.4:80` or `[2001:db8::1]:80`.
    public init?(parsing text: String) {
        let host: Substring
        let port: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            port = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            port = text[text.index(after: colon)...]
        }
        guard let address = IPAddress(String(host)), let number = UInt16(port) else { return nil }
        self.init(address: address, port: number)
    }
}

/// REASON: why a request failed, and when retrying may help.
public struct CSPReason: Hashable, Sendable {
    /// Operator-defined detail code (0 = none); the header's result code carries the class.
    public var code: UInt16
    /// Seconds after which the same request may succeed (0 = do not retry unchanged).
    public var retryAfter: UInt32
    public var text: String
    public init(code: UInt16 = 0, retryAfter: UInt32 = 0, text: String) {
        self.code = code
        self.retryAfter = retryAfter
        self.text = text
    }
}

/// An additional path for multihoming (ADD-PATH / REMOVE-PATH).
public struct CSPPath: Hashable, Sendable {
    public var pathID: UInt8
    public var endpoint: CSPEndpoint
    public init(pathID: UInt8, endpoint: CSPEndpoint) {
        self.pathID = pathID
        self.endpoint = endpoint
    }
}

/// DENY-SOURCE: the prefix (and optionally protocol/port) a victim asks upstream middleboxes to drop.
public struct CSPDenySource: Hashable, Sendable {
    public var prefix: IPAddress
    public var prefixLength: UInt8
    public var proto: IPProtocol
    /// Destination port on the victim, 0 = any.
    public var port: UInt16
    /// Limit the traffic to the middlebox's rate instead of dropping it all (flag 0x01).
    public var rateLimit: Bool
    public init(
        prefix: IPAddress, prefixLength: UInt8, proto: IPProtocol = IPProtocol(rawValue: 0), port: UInt16 = 0, rateLimit: Bool = false
    ) {
        self.prefix = prefix
        self.prefixLength = prefixLength
        self.proto = proto
        self.port = port
        self.rateLimit = rateLimit
    }
}

/// A public key or signature. Key type 1 is Ed25519 (32-byte keys, 64-byte signatures).
public struct CSPKeyMaterial: Hashable, Sendable {
    public static let ed25519: UInt8 = 1
    public var keyType: UInt8
    public var bytes: [UInt8]
    public init(keyType: UInt8 = CSPKeyMaterial.ed25519, bytes: [UInt8]) {
        self.keyType = keyType
        self.bytes = bytes
    }
}

/// RELAY-ENDPOINT (docs/PROTOCOL.md 14.1): where a relay accepts hops and which kinds of hop it takes.
public struct CSPRelayEndpoint: Hashable, Sendable {
    /// The hop transport: 6 (TCP) is the hop protocol of this revision; 17 (UDP) is reserved. A host
    /// ignores an offer whose transport it does not know, so every value parses.
    public var transport: IPProtocol
    public var modes: CSPRelayModes
    public var endpoint: CSPEndpoint
    public init(transport: IPProtocol = .tcp, modes: CSPRelayModes, endpoint: CSPEndpoint) {
        self.transport = transport
        self.modes = modes
        self.endpoint = endpoint
    }
}

/// RELAY-ENDPOINT `modes`. Unknown bits are kept (they round-trip) and mean nothing to a receiver.
public struct CSPRelayModes: OptionSet, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// The relay accepts hops whose stream passes unchanged after the hop handshake (14.6).
    public static let clear = CSPRelayModes(rawValue: 0x01)
    /// The relay accepts hops whose stream is also encrypted hop by hop (14.6).
    public static let sealed = CSPRelayModes(rawValue: 0x02)
    /// The relay ends the end-to-end layer and reads the stream (14.9).
    public static let terminating = CSPRelayModes(rawValue: 0x04)
}

/// RELAYED-SESSION (docs/PROTOCOL.md 14.3): in a relay's own SETUP, the relayed session and hop
/// its flow would carry, so that a middlebox further along binds its offer to them.
public struct CSPRelayedSession: Hashable, Sendable {
    /// The relayed session ID `S`: the session ID of the host's SETUP.
    public var sessionID: UInt64
    /// The hop this flow would carry, from 2 (a host's own SETUP names hop 1 implicitly). 0 does
    /// not exist and is malformed; values above 8 parse, and a middlebox refuses them by policy.
    public var hopIndex: UInt8
    public var flags: CSPRelayedSessionFlags
    public init(sessionID: UInt64, hopIndex: UInt8, flags: CSPRelayedSessionFlags = []) {
        self.sessionID = sessionID
        self.hopIndex = hopIndex
        self.flags = flags
    }
}

/// RELAYED-SESSION `flags`. Unknown bits are kept (they round-trip) and mean nothing to a receiver.
public struct CSPRelayedSessionFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// The session's host granted allow-terminating (14.9), so offers may come from terminating relays.
    public static let allowTerminating = CSPRelayedSessionFlags(rawValue: 0x01)
}

/// What one middlebox on the path decided and requires; appended in path order (n-way reporting).
public struct CSPMiddleboxRecord: Hashable, Sendable {
    /// Stable identifier of the middlebox (e.g. the first 8 bytes of a hash of its public key).
    public var middleboxID: UInt64
    /// Changes whenever the middlebox restarts and loses state; hosts re-signal when it changes.
    public var epoch: UInt32
    public var decision: CSPDecision
    /// Seconds the middlebox will keep the state (its clamp of the requested lifetime).
    public var grantedLifetime: UInt32
    /// Details: REASON, REDIRECT-TARGET, MAPPED-ADDRESS, MIDDLEBOX-NAME, IDENTITY, SIGNATURE, ...
    public var tlvs: [CSPTLV]

    public init(middleboxID: UInt64, epoch: UInt32, decision: CSPDecision, grantedLifetime: UInt32, tlvs: [CSPTLV] = []) {
        self.middleboxID = middleboxID
        self.epoch = epoch
        self.decision = decision
        self.grantedLifetime = grantedLifetime
        self.tlvs = tlvs
    }

    /// RELAY-ENDPOINT nested in a `relayed` record (first occurrence).
    public var relayEndpoint: CSPRelayEndpoint? {
        tlvs.lazy.compactMap { if case .relayEndpoint(let v) = $0 { v } else { nil } }.first
    }
    /// RELAY-TOKEN nested in a `relayed` record (first occurrence).
    public var relayToken: [UInt8]? {
        tlvs.lazy.compactMap { if case .relayToken(let v) = $0 { v } else { nil } }.first
    }
}

/// One type-length-value element of a CSP message body.
///
/// No case is boxed: every value fits inline in the TLV (FLOW, the largest, is 48 octets since
/// `FlowTuple` shrank), so that parsing a FLOW or a LIFETIME allocates nothing. Figure 4's profile
/// had one box per TLV, later one per FLOW (docs/PERFORMANCE.md, "Sixteenth pass").
public enum CSPTLV: Hashable, Sendable {
    case flow(FlowTuple)
    case lifetime(UInt32)
    case application(String)
    case requestedAction(CSPRequestedAction)
    case reason(CSPReason)
    case redirectTarget(CSPEndpoint)
    case mappedAddress(CSPEndpoint)
    case hostAddress(CSPEndpoint)
    case middleboxRecord(CSPMiddleboxRecord)
    case epoch(UInt32)
    case identity(CSPKeyMaterial)
    case signature(CSPKeyMaterial)
    case challengeToken([UInt8])
    case newAddress(CSPEndpoint)
    case path(CSPPath)
    case denySource(CSPDenySource)
    case middleboxName(String)
    case timestamp(UInt64)
    case relayEndpoint(CSPRelayEndpoint)
    /// 16–64 opaque octets minted by the relay (docs/PROTOCOL.md 14.2).
    case relayToken([UInt8])
    case relayedSession(CSPRelayedSession)
    /// A TLV this implementation does not decode here, kept verbatim so middleboxes forward it
    /// unchanged: an unknown non-critical type, or one of `CSPTLVType.hopPayloadOnly`, which a CSP
    /// datagram ignores (docs/PROTOCOL.md 14.1) and CSPSession decodes from hop payloads.
    case unknown(type: UInt16, value: [UInt8])

    public var type: CSPTLVType {
        switch self {
        case .flow: .flow
        case .lifetime: .lifetime
        case .application: .application
        case .requestedAction: .requestedAction
        case .reason: .reason
        case .redirectTarget: .redirectTarget
        case .mappedAddress: .mappedAddress
        case .hostAddress: .hostAddress
        case .middleboxRecord: .middleboxRecord
        case .epoch: .epoch
        case .identity: .identity
        case .signature: .signature
        case .challengeToken: .challengeToken
        case .newAddress: .newAddress
        case .path: .path
        case .denySource: .denySource
        case .middleboxName: .middleboxName
        case .timestamp: .timestamp
        case .relayEndpoint: .relayEndpoint
        case .relayToken: .relayToken
        case .relayedSession: .relayedSession
        case .unknown(let type, _): CSPTLVType(rawValue: type)
        }
    }
}

/// A complete CSP message as a value: build it, `serialize()` it, or `parse` received bytes.
public struct CSPMessage: Hashable, Sendable {
    public static let magic: UInt16 = 0x4353  // "CS"
    public static let version: UInt8 = 1
    public static let headerLength = 28
    /// The UDP port CSP uses by default (configurable on every implementation).
    public static let defaultPort: UInt16 = 7227

    public var type: CSPMessageType
    public var flags: CSPFlags
    public var result: CSPResultCode
    /// Names the session end to end; survives address changes (mobility, NAT rebinding).
    public var sessionID: UInt64
    /// Chosen at random by the requester; replies echo it, which ties a reply to its request.
    public var nonce: UInt64
    /// Per-session counter of the sender, for the replay window.
    public var sequence: UInt32
    public var tlvs: [CSPTLV]

    public init(
        type: CSPMessageType, flags: CSPFlags = [], result: CSPResultCode = .success, sessionID: UInt64, nonce: UInt64,
        sequence: UInt32 = 0, tlvs: [CSPTLV] = []
    ) {
        self.type = type
        self.flags = flags
        self.result = result
        self.sessionID = sessionID
        self.nonce = nonce
        self.sequence = sequence
        self.tlvs = tlvs
    }

    /// A message with no TLVs and a zero header: what `parse(_:into:)` starts from, and what a
    /// reader's parse storage holds while its storage is lent to a request.
    @inlinable public static var empty: CSPMessage { CSPMessage(type: .setup, sessionID: 0, nonce: 0) }

    // MARK: typed accessors (first occurrence wins)

    public var flow: FlowTuple? { tlvs.lazy.compactMap { if case .flow(let f) = $0 { f } else { nil } }.first }
    public var lifetime: UInt32? { tlvs.lazy.compactMap { if case .lifetime(let v) = $0 { v } else { nil } }.first }
    public var application: String? {
        tlvs.lazy.compactMap { if case .application(let v) = $0 { v } else { nil } }.first
    }
    public var requestedAction: CSPRequestedAction? {
        tlvs.lazy.compactMap { if case .requestedAction(let v) = $0 { v } else { nil } }.first
    }
    public var reason: CSPReason? { tlvs.lazy.compactMap { if case .reason(let v) = $0 { v } else { nil } }.first }
    public var redirectTarget: CSPEndpoint? {
        tlvs.lazy.compactMap { if case .redirectTarget(let v) = $0 { v } else { nil } }.first
    }
    public var mappedAddress: CSPEndpoint? {
        tlvs.lazy.compactMap { if case .mappedAddress(let v) = $0 { v } else { nil } }.first
    }
    public var epoch: UInt32? { tlvs.lazy.compactMap { if case .epoch(let v) = $0 { v } else { nil } }.first }
    public var newAddress: CSPEndpoint? {
        tlvs.lazy.compactMap { if case .newAddress(let v) = $0 { v } else { nil } }.first
    }
    public var challengeToken: [UInt8]? {
        tlvs.lazy.compactMap { if case .challengeToken(let v) = $0 { v } else { nil } }.first
    }
    public var denySource: CSPDenySource? {
        tlvs.lazy.compactMap { if case .denySource(let v) = $0 { v } else { nil } }.first
    }
    /// Top-level RELAY-TOKEN: a host's SETUP for its leg to the relaying middlebox copies the offer's
    /// token here (docs/PROTOCOL.md 14.2, step 2). In a RELAY the token is inside the record.
    public var relayToken: [UInt8]? {
        tlvs.lazy.compactMap { if case .relayToken(let v) = $0 { v } else { nil } }.first
    }
    public var relayedSession: CSPRelayedSession? {
        tlvs.lazy.compactMap { if case .relayedSession(let v) = $0 { v } else { nil } }.first
    }
    /// Middlebox records in path order.
    public var records: [CSPMiddleboxRecord] {
        tlvs.compactMap { if case .middleboxRecord(let r) = $0 { r } else { nil } }
    }
    /// The record that makes a relay offer: the first with decision `relayed` that nests both
    /// RELAY-ENDPOINT and RELAY-TOKEN (docs/PROTOCOL.md 14.2). Records after it were appended by the
    /// middleboxes between the host and the relay.
    public var relayingRecord: CSPMiddleboxRecord? {
        records.first { $0.decision == .relayed && $0.relayEndpoint != nil && $0.relayToken != nil }
    }
}

/// A session ID (or any 64-bit identifier) as the 16 hex digits hosts, logs and midctl show.
/// Written digit by digit into the string's own storage: it runs for every element midcomd tags and
/// every row `midctl sessions` prints (a million at a time), where `String(_:radix:)` and padding
/// cost several allocations.
public func hex(_ id: UInt64) -> String {
    String(unsafeUninitializedCapacity: 16) { buffer in
        writeHex(id, into: buffer, at: 0)
        return 16
    }
}

/// The 16 lower-case hex digits of `id` at `offset` of `buffer` (which has room for them).
/// Eight digits at a time, as the bytes of one word: every admitted flow's element comment is
/// tagged with its session ID, and the loop of one digit per step was ~280 instructions per
/// signaled session (docs/PERFORMANCE.md, "Sixteenth pass").
@inlinable
public func writeHex(_ id: UInt64, into buffer: UnsafeMutableBufferPointer<UInt8>, at offset: Int) {
    precondition(offset >= 0 && offset <= buffer.count - 16, "writeHex: no room for 16 digits")
    let start = UnsafeMutableRawPointer(buffer.baseAddress!) + offset
    start.storeBytes(of: hexDigits(UInt32(truncatingIfNeeded: id >> 32)).bigEndian, as: UInt64.self)
    (start + 8).storeBytes(of: hexDigits(UInt32(truncatingIfNeeded: id)).bigEndian, as: UInt64.self)
}

/// The eight hex digits of `nibbles` as the bytes of a word, the least significant digit in the
/// lowest byte (stored big-endian, the digits read most significant first).
@inlinable
func hexDigits(_ nibbles: UInt32) -> UInt64 {
    // Spread the nibbles out, one per byte: halves, then quarters, then nibbles.
    var spread = UInt64(nibbles)
    spread = (spread | spread << 16) & 0x0000_ffff_0000_ffff
    spread = (spread | spread << 8) & 0x00ff_00ff_00ff_00ff
    spread = (spread | spread << 4) & 0x0f0f_0f0f_0f0f_0f0f
    // 1 in each byte whose nibble is 10 or more (nibble + 6 carries into bit 4); no byte overflows.
    let isLetter = ((spread &+ 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101
    // "0" + nibble for a digit; "a" + nibble - 10 = "0" + nibble + 39 for a letter.
    return spread &+ 0x3030_3030_3030_3030 &+ isLetter &* 0x27
}
