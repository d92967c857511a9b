import CSPWire
import XCTest

/// The code points of relayed sessions (docs/PROTOCOL.md 14.1) in CSP datagrams: RELAY, decision
/// relayed, the new REQUESTED-ACTION bits and result codes, RELAY-ENDPOINT, RELAY-TOKEN,
/// RELAYED-SESSION, and the hop-payload-only TLVs that a datagram ignores.
final class RelayTLVTests: XCTestCase {
    /// A SETUP (FLOW and LIFETIME) followed by `extra`, raw TLV octets, with the header length
    /// patched. The extra TLVs start at offset 54.
    func setup(appending extra: [UInt8]) throws -> [UInt8] {
        var bytes = try CSPMessage(
            type: .setup, sessionID: TestVectors.session, nonce: TestVectors.nonce, sequence: 1,
            tlvs: [.flow(TestVectors.udpFlow), .lifetime(60)]
        ).serialize()
        XCTAssertEqual(bytes.count, 54)
        bytes += extra
        bytes[6] = UInt8(bytes.count >> 8)
        bytes[7] = UInt8(bytes.count & 0xff)
        return bytes
    }

    func tlv(_ type: UInt16, _ value: [UInt8]) -> [UInt8] {
        [UInt8(type >> 8), UInt8(type & 0xff), UInt8(value.count >> 8), UInt8(value.count & 0xff)] + value
    }

    func testCodePoints() {
        XCTAssertEqual(CSPMessageType.relay.rawValue, 15)
        XCTAssertEqual(CSPMessageType.relay.description, "RELAY")
        XCTAssertTrue(CSPMessageType.relay.isReply)
        XCTAssertTrue(CSPMessageType.allKnown.contains(.relay))
        XCTAssertEqual(CSPDecision.relayed.rawValue, 11)
        XCTAssertEqual(CSPDecision.relayed.description, "relayed")
        XCTAssertEqual(CSPRequestedAction.allowRelay.rawValue, 0x10)
        XCTAssertEqual(CSPRequestedAction.wantRelay.rawValue, 0x20)
        XCTAssertEqual(CSPRequestedAction.allowTerminating.rawValue, 0x40)
        XCTAssertEqual(CSPResultCode.relayRequired.rawValue, 67)
        XCTAssertEqual(CSPResultCode.relayRequired.description, "relay-required")
        XCTAssertEqual(CSPResultCode.terminatingRelayRequired.rawValue, 68)
        XCTAssertEqual(CSPResultCode.terminatingRelayRequired.description, "terminating-relay-required")
        XCTAssertFalse(CSPResultCode.terminatingRelayRequired.isRetryable)
        let types: [(CSPTLVType, UInt16, String, Bool)] = [
            (.relayEndpoint, 0x8013, "RELAY-ENDPOINT", true), (.relayToken, 0x8014, "RELAY-TOKEN", true),
            (.relayedSession, 0x0015, "RELAYED-SESSION", false), (.hop, 0x8016, "HOP", true),
            (.target, 0x8017, "TARGET", true), (.endToEnd, 0x8018, "END-TO-END", true), (.chain, 0x0019, "CHAIN", false),
        ]
        for (type, raw, name, critical) in types {
            XCTAssertEqual(type.rawValue, raw, name)
            XCTAssertEqual(type.description, name)
            XCTAssertEqual(type.isCritical, critical, name)
        }
        // Datagram TLVs are decoded into typed cases; hop-only ones are not, and are not "known".
        XCTAssertEqual(
            CSPTLVType.allKnown.filter { $0.rawValue & 0x7fff >= 0x13 }, [.relayEndpoint, .relayToken, .relayedSession])
        XCTAssertEqual(CSPTLVType.hopPayloadOnly, [.hop, .target, .endToEnd, .chain])
        XCTAssertFalse(CSPTLVType.hop.isKnown)
        XCTAssertTrue(CSPTLVType.chain.isHopPayloadOnly)
        XCTAssertFalse(CSPTLVType.relayToken.isHopPayloadOnly)
    }

    /// RELAY-ENDPOINT `transport(1) modes(1)` endpoint, field by field; IPv4 (10 octets) and IPv6 (22).
    func testRelayEndpointFieldByField() throws {
        let v4: [UInt8] = [
            0x06,  // transport 6: the hop protocol over TCP
            0x03,  // modes: clear | sealed
            0x04, 0x00, 0x1c, 0x3c,  // endpoint: family 4, reserved, port 7228
            0xc0, 0x00, 0x02, 0x01,  // 192.0.2.1
        ]
        let m = try CSPMessage.parse(try setup(appending: tlv(0x8013, v4)))
        let expected = CSPRelayEndpoint(
            transport: .tcp, modes: [.clear, .sealed], endpoint: CSPEndpoint(address: IPAddress("192.0.2.1")!, port: 7228))
        XCTAssertEqual(m.tlvs.last, .relayEndpoint(expected))
        XCTAssertEqual(
            try CSPMessage(type: .setup, sessionID: 1, nonce: 1, tlvs: [.relayEndpoint(expected)]).serialize().suffix(14),
            tlv(0x8013, v4)[...])

        let v6: [UInt8] = [0x11, 0xfc, 0x06, 0x00, 0x1c, 0x3c] + IPAddress("2001:db8::1")!.bytes
        let m6 = try CSPMessage.parse(try setup(appending: tlv(0x8013, v6)))
        // Transport 17 (reserved for UDP hops) and unknown mode bits parse: the host ignores the offer.
        XCTAssertEqual(
            m6.tlvs.last,
            .relayEndpoint(
                CSPRelayEndpoint(
                    transport: .udp, modes: CSPRelayModes(rawValue: 0xfc),
                    endpoint: CSPEndpoint(address: IPAddress("2001:db8::1")!, port: 7228))))
        XCTAssertTrue(CSPRelayModes(rawValue: 0xfc).contains(.terminating))
    }

    func testRelayEndpointImpossibleLengths() throws {
        let v4: [UInt8] = [0x06, 0x01, 0x04, 0x00, 0x1c, 0x3c, 0xc0, 0x00, 0x02, 0x01]
        let v6: [UInt8] = [0x06, 0x01, 0x06, 0x00, 0x1c, 0x3c] + IPAddress("2001:db8::1")!.bytes
        var cases: [[UInt8]] = [[], [0x06], [0x06, 0x01], Array(v4.prefix(9)), v4 + [0], Array(v6.prefix(21)), v6 + [0]]
        // The family decides the length: IPv4 with 16 address octets, IPv6 with 4, family 5.
        cases.append([0x06, 0x01, 0x04] + v6[3...])
        cases.append([0x06, 0x01, 0x06] + v4[3...])
        cases.append([0x06, 0x01, 0x05] + v4[3...])
        for value in cases {
            XCTAssertEqual(
                parseError(try setup(appending: tlv(0x8013, value))), CSPWireError(.badTLVValue(type: 0x8013), at: 54),
                "\(value.count) octets: \(value)")
        }
    }

    func testRelayTokenLengths() throws {
        for length in [16, 24, 64] {
            let token = (0..<length).map { UInt8($0) }
            let m = try CSPMessage.parse(try setup(appending: tlv(0x8014, token)))
            XCTAssertEqual(m.relayToken, token)
            XCTAssertEqual(try CSPMessage.parse(try m.serialize()), m)
        }
        for length in [0, 8, 15, 65, 200] {
            XCTAssertEqual(
                parseError(try setup(appending: tlv(0x8014, Array(repeating: 7, count: length)))),
                CSPWireError(.badTLVValue(type: 0x8014), at: 54), "\(length) octets")
        }
    }

    func testRelayedSessionFieldByField() throws {
        let value: [UInt8] = [
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,  // S
            0x02,  // hop index 2
            0x81,  // flags: allow-terminating, and an unknown bit that round-trips
        ]
        let m = try CSPMessage.parse(try setup(appending: tlv(0x0015, value)))
        let expected = CSPRelayedSession(
            sessionID: 0x0123_4567_89ab_cdef, hopIndex: 2, flags: CSPRelayedSessionFlags(rawValue: 0x81))
        XCTAssertEqual(m.relayedSession, expected)
        XCTAssertTrue(expected.flags.contains(.allowTerminating))
        XCTAssertEqual(try m.serialize(), try setup(appending: tlv(0x0015, value)))
        // 9 and 11 octets, and hop index 0 (hops count from 1).
        for bad in [Array(value.prefix(9)), value + [0], Array(value.prefix(8)) + [0x00, 0x00]] {
            XCTAssertEqual(
                parseError(try setup(appending: tlv(0x0015, bad))), CSPWireError(.badTLVValue(type: 0x0015), at: 54))
        }
    }

    /// 14.1: the hop-payload-only TLVs never belong in a datagram, and a CSP receiver that finds
    /// one ignores it, critical or not, well-formed or not: it is kept verbatim and forwarded.
    func testHopPayloadOnlyTLVsAreIgnoredInDatagrams() throws {
        let hopTLVs: [[UInt8]] = [
            tlv(0x8016, [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x00, 0x01, 0x00]),  // HOP, 12 octets
            tlv(0x8016, [0xff]),  // HOP of an impossible length: still ignored
            tlv(0x8017, [0x06, 0x04, 0x00, 0x01, 0xbb, 0xc6, 0x33, 0x64, 0x14]),  // TARGET
            tlv(0x8018, [0x01] + Array(repeating: 0xee, count: 32)),  // END-TO-END
            tlv(0x8018, []),  // END-TO-END of 0 octets
            tlv(0x0019, [0x01, 0x6a, 0x38, 0x03, 0xd5, 0xf0, 0x59, 0x90, 0x2a]),  // CHAIN
        ]
        for raw in hopTLVs {
            let bytes = try setup(appending: raw)
            let m = try CSPMessage.parse(bytes)
            let type = UInt16(raw[0]) << 8 | UInt16(raw[1])
            XCTAssertEqual(m.tlvs.last, .unknown(type: type, value: Array(raw[4...])))
            XCTAssertNil(m.ruleViolation)
            XCTAssertEqual(try m.serialize(), bytes, "forwarded unchanged")
        }
        // The same inside a record.
        let record = CSPMiddleboxRecord(
            middleboxID: 1, epoch: 1, decision: .forwarded, grantedLifetime: 0,
            tlvs: [.unknown(type: 0x8016, value: [1, 2, 3])])
        let m = CSPMessage(type: .setup, sessionID: 1, nonce: 1, tlvs: [.middleboxRecord(record)])
        XCTAssertEqual(try CSPMessage.parse(try m.serialize()), m)
        // Any other unknown critical TLV is still refused.
        XCTAssertEqual(
            parseError(try setup(appending: tlv(0x801a, []))), CSPWireError(.unknownCriticalTLV(type: 0x801a), at: 54))
    }

    func testRelayRules() throws {
        let relay = try XCTUnwrap(TestVectors.messages.first { $0.0 == "relay" }?.2)
        XCTAssertNil(relay.ruleViolation)
        XCTAssertEqual(relay.relayingRecord?.middleboxID, TestVectors.middleboxID)
        XCTAssertEqual(relay.relayingRecord?.relayToken, TestVectors.relayToken)
        XCTAssertEqual(relay.relayingRecord?.relayEndpoint?.endpoint.port, 7228)

        var noLifetime = relay
        noLifetime.tlvs.removeAll { $0.type == .lifetime }
        XCTAssertEqual(noLifetime.ruleViolation, "RELAY requires LIFETIME")

        let offer = "RELAY requires a record with decision relayed nesting RELAY-ENDPOINT and RELAY-TOKEN"
        func withRecord(_ change: (inout CSPMiddleboxRecord) -> Void) -> CSPMessage {
            var message = relay
            message.tlvs = message.tlvs.map { tlv in
                guard case .middleboxRecord(var record) = tlv else { return tlv }
                change(&record)
                return .middleboxRecord(record)
            }
            return message
        }
        XCTAssertEqual(withRecord { $0.decision = .admitted }.ruleViolation, offer)
        XCTAssertEqual(withRecord { $0.tlvs.removeAll { $0.type == .relayToken } }.ruleViolation, offer)
        XCTAssertEqual(withRecord { $0.tlvs.removeAll { $0.type == .relayEndpoint } }.ruleViolation, offer)
        var bare = relay
        bare.tlvs.removeAll { $0.type == .middleboxRecord }
        XCTAssertEqual(bare.ruleViolation, offer)
    }

    func testEmitRefusesImpossibleRelayValues() {
        func emitError(_ tlv: CSPTLV) -> CSPWireError? {
            do {
                _ = try CSPMessage(type: .setup, sessionID: 1, nonce: 1, tlvs: [tlv]).serialize()
                return nil
            } catch { return error }
        }
        XCTAssertEqual(emitError(.relayToken(Array(repeating: 1, count: 15))), CSPWireError(.badTLVValue(type: 0x8014), at: 28))
        XCTAssertEqual(emitError(.relayToken(Array(repeating: 1, count: 65))), CSPWireError(.badTLVValue(type: 0x8014), at: 28))
        XCTAssertEqual(
            emitError(.relayedSession(CSPRelayedSession(sessionID: 1, hopIndex: 0))),
            CSPWireError(.badTLVValue(type: 0x0015), at: 28))
        XCTAssertNil(emitError(.relayedSession(CSPRelayedSession(sessionID: 1, hopIndex: 9))))
        // Hop-only TLVs are written verbatim, as a middlebox forwards them.
        XCTAssertNil(emitError(.unknown(type: 0x8016, value: [1])))
        XCTAssertEqual(
            emitError(.unknown(type: 0x8014, value: Array(repeating: 1, count: 16))),
            CSPWireError(.badTLVValue(type: 0x8014), at: 28))
    }

    /// The TLV reader and writer CSPSession uses for hop payloads.
    func testPublicTLVReaderAndWriter() throws {
        var out: [UInt8] = []
        try CSPTLV.lifetime(60).encode(into: &out)
        try CSPTLV.append(.chain, into: &out) { (value: inout [UInt8]) throws(CSPWireError) in value += [1, 2, 3] }
        XCTAssertEqual(out, [0x00, 0x02, 0x00, 0x04, 0, 0, 0, 60, 0x00, 0x19, 0x00, 0x03, 1, 2, 3])
        try out.withUnsafeBytes { buffer in
            var reader = CSPTLVReader(buffer)
            let first = try XCTUnwrap(try reader.next())
            XCTAssertEqual(first.type, .lifetime)
            XCTAssertEqual(first.offset, 0)
            XCTAssertEqual(try reader.decode(first), .lifetime(60))
            let second = try XCTUnwrap(try reader.next())
            XCTAssertEqual(second.type, .chain)
            XCTAssertEqual(second.offset, 8)
            XCTAssertEqual(Array(second.value), [1, 2, 3])
            XCTAssertEqual(try reader.decode(second), .unknown(type: 0x0019, value: [1, 2, 3]))
            XCTAssertNil(try reader.next())
            XCTAssertEqual(reader.offset, 15)
        }
        // A value over 65535 octets.
        var big: [UInt8] = []
        XCTAssertThrowsError(
            try CSPTLV.append(.chain, into: &big) { (value: inout [UInt8]) throws(CSPWireError) in
                value += Array(repeating: 0, count: 65536)
            }
        ) { XCTAssertEqual($0 as? CSPWireError, CSPWireError(.messageTooLong, at: 0)) }
        // Truncated type/length and an overrun.
        for (bytes, error) in [
            ([0x00, 0x02, 0x00] as [UInt8], CSPWireError(.truncated, at: 0)),
            ([0x00, 0x02, 0x00, 0x05, 0, 0, 0, 0], CSPWireError(.tlvOverrun(type: 0x0002), at: 0)),
        ] {
            try bytes.withUnsafeBytes { buffer in
                var reader = CSPTLVReader(buffer)
                XCTAssertThrowsError(try reader.next()) { XCTAssertEqual($0 as? CSPWireError, error) }
                XCTAssertEqual(reader.offset, 0, "the read index does not move on failure")
            }
        }
    }

    func testEndpointEncodingHelpers() throws {
        for endpoint in [
            CSPEndpoint(address: IPAddress("192.0.2.1")!, port: 7228), CSPEndpoint(address: IPAddress("2001:db8::1")!, port: 1),
        ] {
            var out: [UInt8] = []
            endpoint.encode(into: &out)
            XCTAssertEqual(out.count, endpoint.encodedLength)
            XCTAssertEqual(out.withUnsafeBytes { CSPEndpoint(encoded: $0) }, endpoint)
            XCTAssertNil((out + [0]).withUnsafeBytes { CSPEndpoint(encoded: $0) })
            XCTAssertNil(out.dropLast().withUnsafeBytes { CSPEndpoint(encoded: $0) })
        }
        // The reserved octet is ignored.
        XCTAssertEqual(
            ([0x04, 0xff, 0x00, 0x50, 10, 0, 0, 1] as [UInt8]).withUnsafeBytes { CSPEndpoint(encoded: $0) },
            CSPEndpoint(address: IPAddress("10.0.0.1")!, port: 80))
    }
}
