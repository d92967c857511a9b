// Code points of the Connection Signaling Protocol (docs/PROTOCOL.md, "Registries").
// Every code is an open set: unknown values parse, round-trip and are reported by name "unknown-N".

/// The CSP message type (header octet 3).
public struct CSPMessageType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let setup = CSPMessageType(rawValue: 1)
    public static let accept = CSPMessageType(rawValue: 2)
    public static let reject = CSPMessageType(rawValue: 3)
    public static let redirect = CSPMessageType(rawValue: 4)
    public static let mapped = CSPMessageType(rawValue: 5)
    public static let challenge = CSPMessageType(rawValue: 6)
    public static let response = CSPMessageType(rawValue: 7)
    public static let rebind = CSPMessageType(rawValue: 8)
    public static let addPath = CSPMessageType(rawValue: 9)
    public static let removePath = CSPMessageType(rawValue: 10)
    public static let deny = CSPMessageType(rawValue: 11)
    public static let refresh = CSPMessageType(rawValue: 12)
    public static let teardown = CSPMessageType(rawValue: 13)
    public static let announce = CSPMessageType(rawValue: 14)
    /// A middlebox offers to relay the session (docs/PROTOCOL.md 14.2): sent like a REDIRECT, in the
    /// responder's name; its relaying record carries the relay endpoint and the token.
    public static let relay = CSPMessageType(rawValue: 15)

    public static let allKnown: [CSPMessageType] = [
        .setup, .accept, .reject, .redirect, .mapped, .challenge, .response, .rebind, .addPath, .removePath, .deny,
        .refresh, .teardown, .announce, .relay,
    ]

    public var description: String {
        switch self {
        case .setup: "SETUP"
        case .accept: "ACCEPT"
        case .reject: "REJECT"
        case .redirect: "REDIRECT"
        case .mapped: "MAPPED"
        case .challenge: "CHALLENGE"
        case .response: "RESPONSE"
        case .rebind: "REBIND"
        case .addPath: "ADD-PATH"
        case .removePath: "REMOVE-PATH"
        case .deny: "DENY"
        case .refresh: "REFRESH"
        case .teardown: "TEARDOWN"
        case .announce: "ANNOUNCE"
        case .relay: "RELAY"
        default: "unknown-\(rawValue)"
        }
    }

    /// Replies travel from the responder back to the initiator; requests the other way.
    public var isReply: Bool {
        switch self {
        case .accept, .reject, .redirect, .mapped, .challenge, .announce, .relay: true
        default: false
        }
    }
}

/// Header flags (header octet 4).
public struct CSPFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Set when a middlebox (not an end host) originated the message, e.g. a REJECT sent by a firewall.
    public static let fromMiddlebox = CSPFlags(rawValue: 0x01)
    /// Set by the initiator to ask middleboxes to append their records (n-way reporting).
    public static let recordRoute = CSPFlags(rawValue: 0x02)
    /// Set when the final TLV is an end-to-end SIGNATURE.
    public static let signed = CSPFlags(rawValue: 0x04)
    /// In a SETUP: the responder may not speak CSP, so middleboxes that honour the flag decide and
    /// answer for it (docs/PROTOCOL.md 6.9). In an ACCEPT: a middlebox answered on the responder's
    /// behalf. Middleboxes that do not know it forward it unchanged, like every unknown flag.
    public static let legacyResponder = CSPFlags(rawValue: 0x08)
}

/// Result code (header octet 5). 0 in requests. Values 1–63 are errors a host may fix and retry;
/// 64–127 are policy decisions not worth retrying unchanged; 128–255 are resource/transient errors
/// that carry a retry time in the REASON TLV.
public struct CSPResultCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let success = CSPResultCode(rawValue: 0)
    public static let unsupportedVersion = CSPResultCode(rawValue: 1)
    public static let malformedMessage = CSPResultCode(rawValue: 2)
    public static let unknownCriticalTLV = CSPResultCode(rawValue: 3)
    public static let unknownSession = CSPResultCode(rawValue: 4)
    public static let authenticationFailed = CSPResultCode(rawValue: 5)
    public static let challengeRequired = CSPResultCode(rawValue: 6)
    /// A translating middlebox cannot map "any source port": the host signals the exact port.
    public static let sourcePortRequired = CSPResultCode(rawValue: 7)
    public static let policyDenied = CSPResultCode(rawValue: 64)
    public static let administrativelyProhibited = CSPResultCode(rawValue: 65)
    public static let sourceDenied = CSPResultCode(rawValue: 66)
    /// This flow is relayed here and the SETUP did not set allow-relay (docs/PROTOCOL.md 14.2).
    public static let relayRequired = CSPResultCode(rawValue: 67)
    /// This flow may pass only through a relay that reads it, and the SETUP did not set
    /// allow-terminating (docs/PROTOCOL.md 14.9).
    public static let terminatingRelayRequired = CSPResultCode(rawValue: 68)
    public static let resourcesExhausted = CSPResultCode(rawValue: 128)
    public static let middleboxUnavailable = CSPResultCode(rawValue: 129)

    public var description: String {
        switch self {
        case .success: "success"
        case .unsupportedVersion: "unsupported-version"
        case .malformedMessage: "malformed-message"
        case .unknownCriticalTLV: "unknown-critical-tlv"
        case .unknownSession: "unknown-session"
        case .authenticationFailed: "authentication-failed"
        case .challengeRequired: "challenge-required"
        case .sourcePortRequired: "source-port-required"
        case .policyDenied: "policy-denied"
        case .administrativelyProhibited: "administratively-prohibited"
        case .sourceDenied: "source-denied"
        case .relayRequired: "relay-required"
        case .terminatingRelayRequired: "terminating-relay-required"
        case .resourcesExhausted: "resources-exhausted"
        case .middleboxUnavailable: "middlebox-unavailable"
        default: "result-\(rawValue)"
        }
    }

    public var isRetryable: Bool { rawValue >= 128 }
}

/// What a middlebox decided, carried in its MIDDLEBOX-RECORD.
public struct CSPDecision: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Seen and forwarded; no state installed yet (SETUP on its way out).
    public static let forwarded = CSPDecision(rawValue: 0)
    public static let admitted = CSPDecision(rawValue: 1)
    public static let rejected = CSPDecision(rawValue: 2)
    public static let redirected = CSPDecision(rawValue: 3)
    public static let mapped = CSPDecision(rawValue: 4)
    public static let challenged = CSPDecision(rawValue: 5)
    public static let denied = CSPDecision(rawValue: 6)
    public static let rebound = CSPDecision(rawValue: 7)
    public static let removed = CSPDecision(rawValue: 8)
    /// Relayed by a rendezvous to the server registered there (docs/PROTOCOL.md 10.7): the
    /// request is off its flow's path from here on, and middleboxes pass it untouched.
    public static let rendezvous = CSPDecision(rawValue: 9)
    /// Admitted and answered by this middlebox on behalf of a responder that may not speak CSP
    /// (docs/PROTOCOL.md 6.9): the responder did not consent; this middlebox's policy did.
    public static let answeredForResponder = CSPDecision(rawValue: 10)
    /// This middlebox relays the session (docs/PROTOCOL.md 14.2): its record nests RELAY-ENDPOINT and
    /// RELAY-TOKEN, inside the record so that the record's signature covers them.
    public static let relayed = CSPDecision(rawValue: 11)

    public var description: String {
        switch self {
        case .forwarded: "forwarded"
        case .admitted: "admitted"
        case .rejected: "rejected"
        case .redirected: "redirected"
        case .mapped: "mapped"
        case .challenged: "challenged"
        case .denied: "denied"
        case .rebound: "rebound"
        case .removed: "removed"
        case .rendezvous: "rendezvous"
        case .answeredForResponder: "answered-for-responder"
        case .relayed: "relayed"
        default: "decision-\(rawValue)"
        }
    }
}

/// TLV type numbers. Bit 15 set means "critical": a receiver that does not understand it must
/// reject the message (result unknown-critical-tlv) instead of ignoring the TLV.
public struct CSPTLVType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let criticalBit: UInt16 = 0x8000
    public var isCritical: Bool { rawValue & Self.criticalBit != 0 }
    public var code: UInt16 { rawValue & ~Self.criticalBit }

    public static let flow = CSPTLVType(rawValue: 0x8001)
    public static let lifetime = CSPTLVType(rawValue: 0x0002)
    public static let application = CSPTLVType(rawValue: 0x0003)
    public static let requestedAction = CSPTLVType(rawValue: 0x0004)
    public static let reason = CSPTLVType(rawValue: 0x0005)
    public static let redirectTarget = CSPTLVType(rawValue: 0x8006)
    public static let mappedAddress = CSPTLVType(rawValue: 0x0007)
    public static let hostAddress = CSPTLVType(rawValue: 0x0008)
    public static let middleboxRecord = CSPTLVType(rawValue: 0x0009)
    public static let epoch = CSPTLVType(rawValue: 0x000a)
    public static let identity = CSPTLVType(rawValue: 0x000b)
    public static let signature = CSPTLVType(rawValue: 0x000c)
    public static let challengeToken = CSPTLVType(rawValue: 0x800d)
    public static let newAddress = CSPTLVType(rawValue: 0x800e)
    public static let path = CSPTLVType(rawValue: 0x800f)
    public static let denySource = CSPTLVType(rawValue: 0x8010)
    public static let middleboxName = CSPTLVType(rawValue: 0x0011)
    public static let timestamp = CSPTLVType(rawValue: 0x0012)
    /// Relayed sessions (docs/PROTOCOL.md 14.1).
    public static let relayEndpoint = CSPTLVType(rawValue: 0x8013)
    public static let relayToken = CSPTLVType(rawValue: 0x8014)
    public static let relayedSession = CSPTLVType(rawValue: 0x0015)
    /// The hop protocol's own TLVs (docs/PROTOCOL.md 14.5): "hop payloads only".
    public static let hop = CSPTLVType(rawValue: 0x8016)
    public static let target = CSPTLVType(rawValue: 0x8017)
    public static let endToEnd = CSPTLVType(rawValue: 0x8018)
    public static let chain = CSPTLVType(rawValue: 0x0019)

    /// The types this implementation decodes into a typed `CSPTLV` case.
    public static let allKnown: [CSPTLVType] = [
        .flow, .lifetime, .application, .requestedAction, .reason, .redirectTarget, .mappedAddress, .hostAddress,
        .middleboxRecord, .epoch, .identity, .signature, .challengeToken, .newAddress, .path, .denySource,
        .middleboxName, .timestamp, .relayEndpoint, .relayToken, .relayedSession,
    ]

    public var isKnown: Bool { Self.allKnown.contains(self) }

    /// The TLVs that exist only inside hop messages (docs/PROTOCOL.md 14.1, "hop payloads only").
    /// They use the encoding of 3.2 but never appear in CSP datagrams, so a CSP receiver that finds
    /// one ignores it, critical bit or not: `CSPMessage.parse` keeps them verbatim as `.unknown`,
    /// and CSPSession decodes their values from hop payloads.
    public static let hopPayloadOnly: [CSPTLVType] = [.hop, .target, .endToEnd, .chain]

    public var isHopPayloadOnly: Bool { Self.hopPayloadOnly.contains(self) }

    public var description: String {
        switch self {
        case .flow: "FLOW"
        case .lifetime: "LIFETIME"
        case .application: "APPLICATION"
        case .requestedAction: "REQUESTED-ACTION"
        case .reason: "REASON"
        case .redirectTarget: "REDIRECT-TARGET"
        case .mappedAddress: "MAPPED-ADDRESS"
        case .hostAddress: "HOST-ADDRESS"
        case .middleboxRecord: "MIDDLEBOX-RECORD"
        case .epoch: "EPOCH"
        case .identity: "IDENTITY"
        case .signature: "SIGNATURE"
        case .challengeToken: "CHALLENGE-TOKEN"
        case .newAddress: "NEW-ADDRESS"
        case .path: "PATH"
        case .denySource: "DENY-SOURCE"
        case .middleboxName: "MIDDLEBOX-NAME"
        case .timestamp: "TIMESTAMP"
        case .relayEndpoint: "RELAY-ENDPOINT"
        case .relayToken: "RELAY-TOKEN"
        case .relayedSession: "RELAYED-SESSION"
        case .hop: "HOP"
        case .target: "TARGET"
        case .endToEnd: "END-TO-END"
        case .chain: "CHAIN"
        default: "tlv-0x" + String(rawValue, radix: 16)
        }
    }
}

/// Actions a host may ask for in REQUESTED-ACTION (a bit set).
public struct CSPRequestedAction: OptionSet, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let admit = CSPRequestedAction(rawValue: 0x01)
    /// The host accepts being redirected to a proxy.
    public static let allowRedirect = CSPRequestedAction(rawValue: 0x02)
    /// The host wants a NAT to create (and report) a mapping.
    public static let wantMapping = CSPRequestedAction(rawValue: 0x04)
    /// Incoming: the host is the responder and opens a pinhole for peers to reach it.
    public static let listen = CSPRequestedAction(rawValue: 0x08)
    /// The host accepts a relay that carries its end-to-end encrypted stream (docs/PROTOCOL.md 14.2).
    public static let allowRelay = CSPRequestedAction(rawValue: 0x10)
    /// The host asks to be relayed (to hide its address, to keep a session across its moves).
    public static let wantRelay = CSPRequestedAction(rawValue: 0x20)
    /// The host accepts a relay that ends the end-to-end layer and reads the stream (14.9).
    public static let allowTerminating = CSPRequestedAction(rawValue: 0x40)
}
