import CSPWire
import XCTest

@testable import CSPSession

/// The HOP-OPEN TLVs of the hop-open-tlvs vector, written out by hand. Offsets are from the first
/// octet of the TLVs (the octet after U's identity block in OPEN's payload).
let hopOpenFixture: [UInt8] =
    [
        // HOP (critical), 12 octets
        0x80, 0x16, 0x00, 0x0c,  // 0   type 0x8016, length 12
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,  // 4   S
        0x01,  // 12  hop index 1
        0x00,  // 13  flags: none
        0x01,  // 14  protection: clear
        0x00,  // 15  reserved
        // TARGET (critical), 9 octets for IPv4
        0x80, 0x17, 0x00, 0x09,  // 16  type 0x8017, length 9
        0x06,  // 20  proto 6 (TCP)
        0x04, 0x00, 0x01, 0xbb,  // 21  family 4, reserved, port 443
        0xc6, 0x33, 0x64, 0x14,  // 25  198.51.100.20
        // RELAY-TOKEN (critical), 24 octets
        0x80, 0x14, 0x00, 0x18,  // 29  type 0x8014, length 24
    ] + SessionVectors.relayToken  // 33
    + [
        // END-TO-END (critical), kind + 32 octets
        0x80, 0x18, 0x00, 0x21,  // 57  type 0x8018, length 33
        0x01,  // 61  kind 1: Noise message 1
    ] + SessionVectors.initiatorEphemeral  // 62  e

/// Raw TLV octets.
func tlv(_ type: UInt16, _ value: [UInt8]) -> [UInt8] {
    [UInt8(type >> 8), UInt8(type & 0xff), UInt8(value.count >> 8), UInt8(value.count & 0xff)] + value
}

func openError(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> SessionWireError? {
    do {
        _ = try HopOpen(decoding: bytes)
        XCTFail("decoded but should not have", file: file, line: line)
        return nil
    } catch { return error }
}

final class HopTLVTests: XCTestCase {
    let hop = Array(hopOpenFixture[0..<16])
    let target = Array(hopOpenFixture[16..<29])
    let token = Array(hopOpenFixture[29..<57])
    let endToEnd = Array(hopOpenFixture[57...])

    func testOpenFixtureFieldByField() throws {
        XCTAssertEqual(hopOpenFixture.count, 94)
        let open = try HopOpen(decoding: hopOpenFixture)
        XCTAssertEqual(open, SessionVectors.open)
        XCTAssertEqual(open.hop.sessionID, 0x0123_4567_89ab_cdef)
        XCTAssertEqual(open.hop.hopIndex, 1)
        XCTAssertEqual(open.hop.protection, .clear)
        XCTAssertEqual(open.target.endpoint.port, 443)
        XCTAssertEqual(open.endToEnd.kind, .handshake1)
        XCTAssertEqual(try open.serialize(), hopOpenFixture)
        // The prologue of 14.7 takes TARGET's value octets.
        XCTAssertEqual(open.target.encodedValue, Array(hopOpenFixture[20..<29]))
        // Order is free (3.2), and the token is optional.
        XCTAssertEqual(try HopOpen(decoding: endToEnd + target + hop + token), open)
        var noToken = open
        noToken.relayToken = nil
        XCTAssertEqual(try HopOpen(decoding: hop + target + endToEnd), noToken)
        XCTAssertEqual(try noToken.serialize(), hop + target + endToEnd)
    }

    func testOpenRequiresHopTargetAndEndToEnd() {
        XCTAssertEqual(openError(target + token + endToEnd), SessionWireError(.missingTLV(type: 0x8016), at: 78))
        XCTAssertEqual(openError(hop + token + endToEnd), SessionWireError(.missingTLV(type: 0x8017), at: 81))
        XCTAssertEqual(openError(hop + target + token), SessionWireError(.missingTLV(type: 0x8018), at: 57))
        XCTAssertEqual(openError([]), SessionWireError(.missingTLV(type: 0x8016), at: 0))
    }

    func testFirstOccurrenceCounts() throws {
        let second = tlv(0x8016, [0, 0, 0, 0, 0, 0, 0, 9, 0x05, 0x02, 0x02, 0x00])
        XCTAssertEqual(try HopOpen(decoding: hopOpenFixture + second), SessionVectors.open)
        // A second, malformed HOP still makes the payload malformed (3.2: a known TLV with an impossible value).
        XCTAssertEqual(
            openError(hopOpenFixture + tlv(0x8016, [1])), SessionWireError(.tlv(.badTLVValue(type: 0x8016)), at: 94))
    }

    func testHopDescriptorValues() throws {
        let value: [UInt8] = [0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10, 0x08, 0x87, 0x03, 0xff]
        let open = try HopOpen(decoding: tlv(0x8016, value) + target + endToEnd)
        // Unknown flag bits and protection 3 (reserved for kernel TLS) are carried, for the relay's
        // policy to refuse; the reserved octet is ignored.
        XCTAssertEqual(
            open.hop,
            HopDescriptor(
                sessionID: 0xfedc_ba98_7654_3210, hopIndex: 8, flags: HopFlags(rawValue: 0x87), protection: .unknown(3)))
        XCTAssertTrue(open.hop.flags.contains([.resume, .last, .allowTerminating]))
        XCTAssertEqual(Array(try open.serialize().prefix(16)), tlv(0x8016, Array(value.prefix(11)) + [0x00]))
        XCTAssertEqual(HopProtection(rawValue: 2), .sealed)
        XCTAssertEqual(HopProtection.unknown(0).rawValue, 0)
        XCTAssertEqual(HopProtection(rawValue: 1).rawValue, 1)
    }

    /// Every TLV length 14.1 forbids, and the impossible contents, at the offending TLV's offset.
    func testImpossibleHopTLVValues() {
        let badTarget: [[UInt8]] = [
            [], [0x06], [0x06, 0x04, 0x00, 0x01, 0xbb, 0xc6, 0x33, 0x64],  // 0, 1, 8 octets
            [0x06, 0x04, 0x00, 0x01, 0xbb, 0xc6, 0x33, 0x64, 0x14, 0x00],  // 10
            [0x06, 0x06, 0x00, 0x01, 0xbb] + [UInt8](repeating: 0x20, count: 15),  // 20
            [0x06, 0x06, 0x00, 0x01, 0xbb] + [UInt8](repeating: 0x20, count: 17),  // 22
            [0x06, 0x06, 0x00, 0x01, 0xbb, 0xc6, 0x33, 0x64, 0x14],  // IPv6 family with 4 address octets
            [0x06, 0x05, 0x00, 0x01, 0xbb, 0xc6, 0x33, 0x64, 0x14],  // family 5
        ]
        for value in badTarget {
            XCTAssertEqual(
                openError(hop + tlv(0x8017, value) + endToEnd), SessionWireError(.tlv(.badTLVValue(type: 0x8017)), at: 16),
                "TARGET of \(value.count)")
        }
        let hopValue = Array(hop[4...])
        for value in [Array(hopValue.prefix(11)), hopValue + [0], [], Array(hopValue.prefix(8)) + [0, 0, 1, 0]] {
            XCTAssertEqual(
                openError(tlv(0x8016, value) + target + endToEnd), SessionWireError(.tlv(.badTLVValue(type: 0x8016)), at: 0),
                "HOP \(value)")
        }
        XCTAssertEqual(
            openError(hop + target + tlv(0x8018, [])), SessionWireError(.tlv(.badTLVValue(type: 0x8018)), at: 29))
        XCTAssertEqual(
            openError(hop + target + tlv(0x8018, [UInt8](repeating: 1, count: 65001))),
            SessionWireError(.tlv(.badTLVValue(type: 0x8018)), at: 29))
        // RELAY-TOKEN's 16–64 octets are CSPWire's rule, reported the same way.
        for length in [15, 65] {
            XCTAssertEqual(
                openError(hop + target + tlv(0x8014, [UInt8](repeating: 1, count: length)) + endToEnd),
                SessionWireError(.tlv(.badTLVValue(type: 0x8014)), at: 29), "token of \(length)")
        }
    }

    func testEndToEndLimits() throws {
        for length in [1, 65000] {
            let part = EndToEndPart(kind: EndToEndPartKind(rawValue: 9), data: [UInt8](repeating: 7, count: length - 1))
            let open = HopOpen(hop: SessionVectors.open.hop, target: SessionVectors.target, endToEnd: part)
            XCTAssertEqual(try HopOpen(decoding: try open.serialize()), open, "END-TO-END of \(length)")
        }
        XCTAssertEqual(EndToEndPartKind(rawValue: 9).description, "kind-9")
        XCTAssertEqual(EndToEndPartKind.resumeBlob.description, "resume-blob")
    }

    /// Unknown critical TLVs end the hop; unknown non-critical and other known CSP TLVs are ignored
    /// (but a known one must still be well-formed).
    func testUnknownAndForeignTLVs() throws {
        XCTAssertEqual(
            openError(hop + tlv(0x8099, [1, 2]) + target + endToEnd),
            SessionWireError(.tlv(.unknownCriticalTLV(type: 0x8099)), at: 16))
        XCTAssertEqual(try HopOpen(decoding: hop + tlv(0x0777, [1, 2]) + target + endToEnd + token), SessionVectors.open)
        // LIFETIME and a CHAIN have no meaning in HOP-OPEN: ignored.
        XCTAssertEqual(
            try HopOpen(decoding: tlv(0x0002, [0, 0, 0, 60]) + hopOpenFixture + tlv(0x0019, [1, 0, 0, 0, 0, 0, 0, 0, 1])),
            SessionVectors.open)
        XCTAssertEqual(
            openError(tlv(0x0002, [0, 0, 60]) + hopOpenFixture), SessionWireError(.tlv(.badTLVValue(type: 0x0002)), at: 0))
        // A record in a hop payload is decoded like one in a datagram (no nesting).
        let nested = tlv(0x0009, [UInt8](repeating: 0, count: 18) + tlv(0x0009, [UInt8](repeating: 0, count: 18)))
        XCTAssertEqual(openError(hopOpenFixture + nested), SessionWireError(.tlv(.nestingTooDeep), at: 116))
    }

    /// Every prefix of the fixture fails with a typed error (never a trap): cut inside a TLV it is
    /// truncated or overruns, cut between TLVs a required one is missing.
    func testEveryTruncation() {
        let starts = [0, 16, 29, 57]
        let missingAfter: [Int: UInt16] = [0: 0x8016, 16: 0x8017, 29: 0x8018, 57: 0x8018]
        for n in 0..<hopOpenFixture.count {
            let error = openError(Array(hopOpenFixture.prefix(n)))
            if let missing = missingAfter[n] {
                XCTAssertEqual(error, SessionWireError(.missingTLV(type: missing), at: n), "prefix \(n)")
                continue
            }
            let start = starts.last { $0 < n }!
            let type = UInt16(hopOpenFixture[start]) << 8 | UInt16(hopOpenFixture[start + 1])
            let expected: CSPWireError.Kind = n - start < 4 ? .truncated : .tlvOverrun(type: type)
            XCTAssertEqual(error, SessionWireError(.tlv(expected), at: start), "prefix \(n)")
        }
    }

    func testAcceptRoundTripAndChainOrder() throws {
        let accept = SessionVectors.resumeAccept
        let bytes = try accept.serialize()
        XCTAssertEqual(
            bytes,
            tlv(0x8018, [0x03, 0x00, 0x00, 0x00, 0x01] + SessionVectors.standIn(24))
                + tlv(0x0019, [0x01, 0x6a, 0x38, 0x03, 0xd5, 0xf0, 0x59, 0x90, 0x2a]))
        XCTAssertEqual(try HopAccept(decoding: bytes), accept)
        XCTAssertEqual(ResumeBlob(data: accept.endToEnd.data)?.epoch, 1)
        // The next relay up appends its own entry: END-TO-END's octets are unchanged, entries keep their order.
        var passedUp = accept
        passedUp.chain.append(ChainEntry(hopIndex: 2, middleboxID: 0xfeed))
        let upBytes = try passedUp.serialize()
        XCTAssertEqual(Array(upBytes.prefix(bytes.count)), bytes)
        XCTAssertEqual(try HopAccept(decoding: upBytes).chain.map(\.hopIndex), [1, 2])
        // CHAIN entries need not follow END-TO-END.
        XCTAssertEqual(try HopAccept(decoding: Array(bytes[33...]) + Array(bytes[..<33])), accept)
    }

    func testAcceptErrors() {
        func acceptError(_ bytes: [UInt8]) -> SessionWireError? {
            do {
                _ = try HopAccept(decoding: bytes)
                return nil
            } catch { return error }
        }
        let chain = tlv(0x0019, [0x01, 0x6a, 0x38, 0x03, 0xd5, 0xf0, 0x59, 0x90, 0x2a])
        XCTAssertEqual(acceptError(chain), SessionWireError(.missingTLV(type: 0x8018), at: 13))
        // CHAIN is one entry of 9 octets: 8, 10, two entries in one TLV, and hop index 0 are malformed.
        for value in [
            Array(chain[4..<12]), Array(chain[4...]) + [0], Array(chain[4...]) + Array(chain[4...]), [0] + Array(chain[5...]),
        ] {
            XCTAssertEqual(
                acceptError(tlv(0x8018, [2]) + tlv(0x0019, value)), SessionWireError(.tlv(.badTLVValue(type: 0x0019)), at: 5),
                "CHAIN of \(value.count)")
        }
        XCTAssertEqual(acceptError(tlv(0x8018, [2]) + [0x00, 0x19, 0x00]), SessionWireError(.tlv(.truncated), at: 5))
    }

    func testRefuseBodyFieldByField() throws {
        let body: [UInt8] =
            [
                0x40,  // 0  result 64 policy-denied
                0x00,  // 1  reserved
                0x00, 0x05, 0x00, 0x10,  // 2  REASON, length 16
                0x00, 0x00,  // 6  detail 0
                0x00, 0x00, 0x00, 0x00,  // 8  retry after 0
            ] + Array("relay loop".utf8)  // 12
            + tlv(0x8016, [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x02, 0x00, 0x01, 0x00])  // 22 HOP (S, 2)
        XCTAssertEqual(try HopRefuse(decoding: body), SessionVectors.loopRefusal)
        XCTAssertEqual(try SessionVectors.loopRefusal.serialize(), body)
        // The reserved octet is ignored; the TLVs are optional (a clear REFUSE knows no session).
        XCTAssertEqual(try HopRefuse(decoding: [0x81, 0xff]), HopRefuse(result: .middleboxUnavailable))
        XCTAssertEqual(try HopRefuse(result: .middleboxUnavailable).serialize(), [0x81, 0x00])
        // Fixed part missing; TLV errors are offset by the two fixed octets.
        for short in [[], [0x40]] as [[UInt8]] {
            XCTAssertThrowsError(try HopRefuse(decoding: short)) {
                XCTAssertEqual($0 as? SessionWireError, SessionWireError(.truncated, at: short.count))
            }
        }
        XCTAssertThrowsError(try HopRefuse(decoding: [0x40, 0x00] + tlv(0x8016, [1, 2]))) {
            XCTAssertEqual($0 as? SessionWireError, SessionWireError(.tlv(.badTLVValue(type: 0x8016)), at: 2))
        }
        XCTAssertThrowsError(try HopRefuse(decoding: [0x40, 0x00, 0x00, 0x05, 0x00, 0x07, 0, 0])) {
            XCTAssertEqual($0 as? SessionWireError, SessionWireError(.tlv(.tlvOverrun(type: 0x0005)), at: 2))
        }
    }

    func testEncodeRefusesWhatDecodeWouldReject() {
        func encodeError(_ encode: () throws -> [UInt8]) -> SessionWireError? {
            do {
                _ = try encode()
                return nil
            } catch { return error as? SessionWireError }
        }
        var open = SessionVectors.open
        open.hop.hopIndex = 0
        XCTAssertEqual(encodeError { try open.serialize() }, SessionWireError(.tlv(.badTLVValue(type: 0x8016)), at: 0))
        open = SessionVectors.open
        open.relayToken = [1, 2, 3]
        XCTAssertEqual(encodeError { try open.serialize() }, SessionWireError(.tlv(.badTLVValue(type: 0x8014)), at: 29))
        open = SessionVectors.open
        open.endToEnd.data = [UInt8](repeating: 0, count: 65000)
        XCTAssertEqual(encodeError { try open.serialize() }, SessionWireError(.tlv(.badTLVValue(type: 0x8018)), at: 57))
        let accept = HopAccept(
            endToEnd: EndToEndPart(kind: .handshake2, data: []), chain: [ChainEntry(hopIndex: 0, middleboxID: 1)])
        XCTAssertEqual(encodeError { try accept.serialize() }, SessionWireError(.tlv(.badTLVValue(type: 0x0019)), at: 5))
    }

    func testResumeBlobLayout() {
        let blob = ResumeBlob(epoch: 0x0102_0304, sealedNextExpected: Array(0..<24))
        XCTAssertEqual(blob.data, [1, 2, 3, 4] + Array(0..<24))
        XCTAssertEqual(ResumeBlob(data: blob.data!), blob)
        XCTAssertNil(ResumeBlob(data: Array(0..<27)))
        XCTAssertNil(ResumeBlob(data: Array(0..<29)))
        XCTAssertNil(ResumeBlob(epoch: 1, sealedNextExpected: [1]).data)
    }

    func testIPv6Target() throws {
        let target = TargetEndpoint(proto: .tcp, endpoint: CSPEndpoint(address: IPAddress("2001:db8:2::20")!, port: 443))
        XCTAssertEqual(target.encodedValue.count, 21)
        let open = HopOpen(hop: SessionVectors.open.hop, target: target, endToEnd: SessionVectors.open.endToEnd)
        XCTAssertEqual(try HopOpen(decoding: try open.serialize()), open)
    }
}
