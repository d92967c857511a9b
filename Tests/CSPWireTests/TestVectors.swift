import CSPTrust
import CSPWire
import Foundation
import TestSupport

/// The published test vectors (docs/PROTOCOL.md, "Test vectors"). Each is stored as
/// `Vectors/<name>.hex`; `VectorFileTests` checks the files are exactly what the codec emits.
/// To regenerate after a deliberate wire change: `CSP_REGENERATE_VECTORS=1 swift test --filter VectorFileTests`.
enum TestVectors {
    typealias Vector = TestVector

    static let hostV4 = IPAddress("192.0.2.10")!
    static let peerV4 = IPAddress("198.51.100.20")!
    static let hostV6 = IPAddress("2001:db8:1::10")!
    static let peerV6 = IPAddress("2001:db8:2::20")!
    static let session: UInt64 = 0x0123_4567_89ab_cdef
    static let nonce: UInt64 = 0x1122_3344_5566_7788

    /// Real Ed25519 keys (RFC 8032), from fixed seeds so the vectors are reproducible: the host's
    /// seed is 32 octets 0x01, the middlebox's 32 octets 0x02 (never use them for anything else).
    /// Signatures are deterministic, so every vector below verifies with these public keys.
    static let hostSigningKey = SigningKey(seed: [UInt8](repeating: 0x01, count: 32))!
    static let middleboxSigningKey = SigningKey(seed: [UInt8](repeating: 0x02, count: 32))!
    /// Where a test needs signature octets of the right shape, not a valid signature.
    static let placeholderSignature = CSPKeyMaterial(bytes: (0..<64).map { UInt8(0x40 &+ $0) })
    static let hostKey = hostSigningKey.publicKey.material
    static let middleboxKey = middleboxSigningKey.publicKey.material
    static let middleboxID = middleboxSigningKey.publicKey.fingerprint
    /// expiry (4 octets) ‖ 16 octets of HMAC, as a Midcom gateway mints them (ChallengeTokens).
    static let token: [UInt8] = [
        0x65, 0x53, 0xf1, 0x1e, 0x5a, 0x17, 0xc3, 0x9e, 0x04, 0x88, 0xd1, 0x2b, 0x6f, 0x90, 0x3e, 0xa5, 0x71, 0x0c, 0xe8, 0x42,
    ]

    /// A RELAY-TOKEN in Midcom's layout (docs/PROTOCOL.md 14.2): version 1, hop index 1, modes
    /// clear|sealed, reserved, expiry (the vectors' time + 60 s), then 16 octets standing for the MAC
    /// (the token is the relay's business: nobody but the relay checks it).
    static let relayToken: [UInt8] = [
        0x01, 0x01, 0x03, 0x00, 0x65, 0x53, 0xf1, 0x3c,
        0x9d, 0x2e, 0x41, 0x7a, 0xc8, 0x05, 0xb3, 0x66, 0x1f, 0xe0, 0x58, 0x94, 0x0b, 0xd7, 0x2a, 0x63,
    ]

    static let udpFlow = FlowTuple(proto: .udp, source: hostV4, sourcePort: 40000, destination: peerV4, destinationPort: 5004)
    static let tcpFlow6 = FlowTuple(proto: .tcp, source: hostV6, sourcePort: 50000, destination: peerV6, destinationPort: 443)

    static func record(_ id: UInt64, _ decision: CSPDecision, lifetime: UInt32, _ tlvs: [CSPTLV] = []) -> CSPMiddleboxRecord {
        CSPMiddleboxRecord(middleboxID: id, epoch: 0x0000_0007, decision: decision, grantedLifetime: lifetime, tlvs: tlvs)
    }

    /// `message` signed end to end by the host key at the vectors' fixed time.
    static func hostSigned(_ message: CSPMessage, at time: UInt64, identity: Bool = true) -> CSPMessage {
        try! message.signed(by: hostSigningKey, timestamp: time, includeIdentity: identity)
    }

    /// `message` with `record` appended, signed by the middlebox key (bound to the header).
    static func appending(_ record: CSPMiddleboxRecord, to message: CSPMessage) -> CSPMessage {
        var out = message
        out.tlvs.append(.middleboxRecord(record.signed(by: middleboxSigningKey, header: message.headerForSigning)))
        return out
    }

    static let signedSetup = hostSigned(
        CSPMessage(type: .setup, flags: [.recordRoute], sessionID: session, nonce: nonce, sequence: 1, tlvs: [
            .flow(udpFlow), .lifetime(300), .application("rtp"), .requestedAction([.admit, .allowRedirect, .wantMapping]),
        ]), at: 0x6553_f100)

    static let messages: [(String, String, CSPMessage)] = [
        ("setup-udp-ipv4", "SETUP, outgoing UDP over IPv4, signed end to end, record-route", signedSetup),
        ("setup-udp-ipv4-in-transit", "the same SETUP after one middlebox appended its (signed) record",
         appending(record(middleboxID, .forwarded, lifetime: 120, [.middleboxName("fw1.example")]), to: signedSetup)),
        ("setup-tcp-ipv6-listen", "SETUP for an incoming TCP flow over IPv6 (the host listens)",
         CSPMessage(type: .setup, flags: [.recordRoute], sessionID: session, nonce: nonce, sequence: 1, tlvs: [
            .flow(tcpFlow6.reversed), .lifetime(3600), .requestedAction([.admit, .listen]),
         ])),
        ("accept-two-records", "ACCEPT carrying the records of two middleboxes (nearest the responder first; the second signed)",
         appending(record(middleboxID, .admitted, lifetime: 120, [.middleboxName("fw1.example")]), to:
            CSPMessage(type: .accept, sessionID: session, nonce: nonce, sequence: 1, tlvs: [
                .lifetime(300),
                .middleboxRecord(record(0xfeed_0000_0000_0002, .admitted, lifetime: 300, [.middleboxName("fw2.example")])),
            ]))),
        ("reject-from-middlebox", "REJECT originated by a firewall (policy, no retry), its record signed",
         appending(record(middleboxID, .rejected, lifetime: 0), to:
            CSPMessage(type: .reject, flags: [.fromMiddlebox], result: .policyDenied, sessionID: session, nonce: nonce, sequence: 1, tlvs: [
                .reason(CSPReason(code: 17, retryAfter: 0, text: "port 5004 closed")),
            ]))),
        ("reject-retry", "REJECT for lack of resources, retry after 30 s (record unsigned, as when trimmed to 3x)",
         CSPMessage(type: .reject, flags: [.fromMiddlebox], result: .resourcesExhausted, sessionID: session, nonce: nonce, tlvs: [
            .reason(CSPReason(code: 0, retryAfter: 30, text: "")),
            .middleboxRecord(record(middleboxID, .rejected, lifetime: 0)),
         ])),
        ("redirect", "REDIRECT to an off-path proxy",
         CSPMessage(type: .redirect, flags: [.fromMiddlebox], sessionID: session, nonce: nonce, tlvs: [
            .redirectTarget(CSPEndpoint(address: IPAddress("203.0.113.5")!, port: 3128)),
            .middleboxRecord(record(0xfeed_0000_0000_0001, .redirected, lifetime: 300, [.redirectTarget(CSPEndpoint(address: IPAddress("203.0.113.5")!, port: 3128))])),
         ])),
        ("mapped", "MAPPED: a NAT reports the public endpoint it allocated",
         CSPMessage(type: .mapped, sessionID: session, nonce: nonce, sequence: 1, tlvs: [
            .lifetime(300),
            .mappedAddress(CSPEndpoint(address: IPAddress("198.18.0.1")!, port: 61000)),
            .middleboxRecord(record(0xfeed_0000_0000_0003, .mapped, lifetime: 300, [.mappedAddress(CSPEndpoint(address: IPAddress("198.18.0.1")!, port: 61000))])),
         ])),
        ("challenge", "CHALLENGE: return-routability check of the SETUP's sender (token: expiry + HMAC)",
         CSPMessage(type: .challenge, flags: [.fromMiddlebox], result: .challengeRequired, sessionID: session, nonce: nonce, sequence: 1, tlvs: [
            .challengeToken(token), .middleboxRecord(record(middleboxID, .challenged, lifetime: 0)),
         ])),
        ("response", "RESPONSE: the challenged host echoes the token (same session, nonce and sequence), signed",
         hostSigned(
            CSPMessage(type: .response, sessionID: session, nonce: nonce, sequence: 1, tlvs: [.challengeToken(token)]),
            at: 0x6553_f101)),
        ("rebind-ipv6", "REBIND: a mobile host moved to a new address (signed by the session's key, no IDENTITY)",
         hostSigned(
            CSPMessage(type: .rebind, flags: [.recordRoute], sessionID: session, nonce: 0x0102_0304_0506_0708, sequence: 5, tlvs: [
                .flow(tcpFlow6), .newAddress(CSPEndpoint(address: IPAddress("2001:db8:3::10")!, port: 50000)),
            ]), at: 0x6553_f200, identity: false)),
        ("add-path", "ADD-PATH: a second path for multihoming",
         hostSigned(
            CSPMessage(type: .addPath, flags: [.recordRoute], sessionID: session, nonce: 0x0a0b_0c0d_0e0f_1011, sequence: 6, tlvs: [
                .path(CSPPath(pathID: 2, endpoint: CSPEndpoint(address: IPAddress("192.0.2.77")!, port: 40000))), .lifetime(300),
            ]), at: 0x6553_f250, identity: false)),
        ("remove-path", "REMOVE-PATH: drop path 2",
         CSPMessage(type: .removePath, sessionID: session, nonce: 0x1213_1415_1617_1819, sequence: 7, tlvs: [
            .path(CSPPath(pathID: 2, endpoint: CSPEndpoint(address: IPAddress("192.0.2.77")!, port: 40000))),
         ])),
        ("deny", "DENY: a victim asks upstream middleboxes to drop 203.0.113.0/24 UDP to port 53",
         hostSigned(
            CSPMessage(type: .deny, flags: [.recordRoute], sessionID: 0x7777_0000_0000_0001, nonce: 0x2021_2223_2425_2627, sequence: 1, tlvs: [
                .denySource(CSPDenySource(prefix: IPAddress("203.0.113.0")!, prefixLength: 24, proto: .udp, port: 53)), .lifetime(600),
            ]), at: 0x6553_f300)),
        ("refresh", "REFRESH: extend the session to 300 s",
         CSPMessage(type: .refresh, sessionID: session, nonce: 0x3031_3233_3435_3637, sequence: 3, tlvs: [.lifetime(300)])),
        ("refresh-delete", "REFRESH with lifetime 0: delete the state now",
         CSPMessage(type: .refresh, sessionID: session, nonce: 0x3839_3a3b_3c3d_3e3f, sequence: 4, tlvs: [.lifetime(0)])),
        ("teardown", "TEARDOWN: no TLVs",
         CSPMessage(type: .teardown, sessionID: session, nonce: 0x4041_4243_4445_4647, sequence: 8)),
        ("announce", "ANNOUNCE: a middlebox answers a discovery option (nonce echoed), its record signed",
         appending(record(middleboxID, .forwarded, lifetime: 0, [.middleboxName("fw1.example")]), to:
            CSPMessage(type: .announce, flags: [.fromMiddlebox], sessionID: 0, nonce: 0xdead_beef_0bad_cafe, sequence: 0, tlvs: [.epoch(7)]))),
        ("relay", "RELAY: a middlebox offers its relay (TCP 192.0.2.1:7228, clear or sealed hops) for 60 s, its record signed",
         appending(record(middleboxID, .relayed, lifetime: 60, [
            .relayEndpoint(CSPRelayEndpoint(transport: .tcp, modes: [.clear, .sealed], endpoint: CSPEndpoint(address: IPAddress("192.0.2.1")!, port: 7228))),
            .relayToken(relayToken), .middleboxName("gw1.example"),
         ]), to:
            CSPMessage(type: .relay, flags: [.fromMiddlebox], sessionID: session, nonce: nonce, sequence: 1, tlvs: [.lifetime(60)]))),
        ("unknown-noncritical", "SETUP with an unknown non-critical TLV 0x0777 (kept verbatim)",
         CSPMessage(type: .setup, sessionID: session, nonce: nonce, sequence: 1, tlvs: [
            .flow(udpFlow), .lifetime(60), .unknown(type: 0x0777, value: [0xca, 0xfe]),
         ])),
    ]

    static let discovery = CSPDiscoveryOption(flags: [.query, .capable], replyPort: 0, nonce: 0xdead_beef_0bad_cafe)

    static var all: [Vector] {
        messages.map { name, summary, message in Vector(name: name, summary: summary, bytes: { try message.serialize() }) }
            + [
                Vector(name: "discovery-ipv4-option", summary: "IPv4 options field: discovery option + 2 EOL",
                       bytes: { discovery.ipv4OptionsField }),
                Vector(name: "discovery-ipv6-hbh", summary: "IPv6 hop-by-hop header (next header 17) with the discovery option",
                       bytes: { discovery.ipv6HopByHopHeader(nextHeader: 17) }),
                Vector(name: "discovery-tcp-option", summary: "TCP option kind 253, ExID 0x4353",
                       bytes: { discovery.tcpOption }),
            ]
    }
}
