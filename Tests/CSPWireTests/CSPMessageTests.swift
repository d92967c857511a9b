import CSPWire
import XCTest

/// A SETUP with a record from one middlebox, written out by hand field by field. Offsets in the
/// comments are from the start of the message; the mutation tests below refer to them.
let setupFixture: [UInt8] = [
    // header (28 octets)
    0x43, 0x53,  // 0   magic "CS"
    0x01,  // 2   version 1
    0x01,  // 3   type SETUP
    0x02,  // 4   flags: recordRoute
    0x00,  // 5   result: success
    0x00, 0x59,  // 6   length 89
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,  // 8   session ID
    0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,  // 16  nonce
    0x00, 0x00, 0x00, 0x01,  // 24  sequence 1
    // FLOW (critical), 14 octets of value for IPv4
    0x80, 0x01, 0x00, 0x0e,  // 28  type 0x8001, length 14
    0x11,  // 32  protocol 17 (UDP)
    0x04,  // 33  family 4
    0x9c, 0x40,  // 34  source port 40000
    0x13, 0x8c,  // 36  destination port 5004
    0xc0, 0x00, 0x02, 0x0a,  // 38  source 192.0.2.10
    0xc6, 0x33, 0x64, 0x14,  // 42  destination 198.51.100.20
    // LIFETIME
    0x00, 0x02, 0x00, 0x04,  // 46  type 2, length 4
    0x00, 0x00, 0x01, 0x2c,  // 50  300 s
    // APPLICATION
    0x00, 0x03, 0x00, 0x03,  // 54  type 3, length 3
    0x72, 0x74, 0x70,  // 58  "rtp"
    // MIDDLEBOX-RECORD, 18 fixed octets + one nested TLV
    0x00, 0x09, 0x00, 0x18,  // 61  type 9, length 24
    0xfe, 0xed, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,  // 65  middlebox ID
    0x00, 0x00, 0x00, 0x07,  // 73  epoch 7
    0x00,  // 77  decision forwarded
    0x00,  // 78  reserved
    0x00, 0x00, 0x00, 0x78,  // 79  granted lifetime 120
    0x00, 0x11, 0x00, 0x02,  // 83  nested MIDDLEBOX-NAME, length 2
    0x66, 0x77,  // 87  "fw"
]

let setupFixtureMessage = CSPMessage(
    type: .setup, flags: [.recordRoute], sessionID: 0x0123_4567_89ab_cdef, nonce: 0x1122_3344_5566_7788, sequence: 1,
    tlvs: [
        .flow(TestVectors.udpFlow), .lifetime(300), .application("rtp"),
        .middleboxRecord(
            CSPMiddleboxRecord(
                middleboxID: 0xfeed_0000_0000_0001, epoch: 7, decision: .forwarded, grantedLifetime: 120,
                tlvs: [.middleboxName("fw")])),
    ])

func parseError(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> CSPWireError? {
    do {
        _ = try CSPMessage.parse(bytes)
        XCTFail("parsed but should not have", file: file, line: line)
        return nil
    } catch {
        return error
    }
}

final class CSPMessageTests: XCTestCase {
    /// `parse(_:into:)` replaces every field and TLV of what the message held, reuses its TLV
    /// storage when nothing shares it, and leaves a copy taken earlier as it was.
    func testParseIntoReplacesEverythingAndLeavesCopiesAlone() throws {
        let accept = CSPMessage(type: .accept, result: .success, sessionID: 9, nonce: 8, sequence: 7, tlvs: [.lifetime(60)])
        let acceptBytes = try accept.serialize()
        var message = CSPMessage(type: .setup, sessionID: 0, nonce: 0)
        try setupFixture.withUnsafeBytes { try CSPMessage.parse($0, into: &message) }
        XCTAssertEqual(message, setupFixtureMessage)
        let storage = message.tlvs.withUnsafeBufferPointer { $0.baseAddress }
        try acceptBytes.withUnsafeBytes { try CSPMessage.parse($0, into: &message) }
        XCTAssertEqual(message, accept)
        XCTAssertEqual(message.tlvs.withUnsafeBufferPointer { $0.baseAddress }, storage, "unshared storage is reused")

        let kept = message
        try setupFixture.withUnsafeBytes { try CSPMessage.parse($0, into: &message) }
        XCTAssertEqual(message, setupFixtureMessage)
        XCTAssertEqual(kept, accept, "a copy keeps what it held")

        // A malformed message throws the same error as `parse`; the value is then only fit to parse into again.
        var truncated = acceptBytes  // LIFETIME cut to 2 of its 4 octets
        truncated.removeLast(2)
        truncated[7] = UInt8(truncated.count)
        let expected = parseError(truncated)
        XCTAssertNotNil(expected)
        XCTAssertThrowsError(try truncated.withUnsafeBytes { try CSPMessage.parse($0, into: &message) }) { error in
            XCTAssertEqual(error as? CSPWireError, expected)
        }
        try acceptBytes.withUnsafeBytes { try CSPMessage.parse($0, into: &message) }
        XCTAssertEqual(message, accept)
    }

    func testFixtureParsesFieldByField() throws {
        XCTAssertEqual(setupFixture.count, 89)
        let m = try CSPMessage.parse(setupFixture)
        XCTAssertEqual(m, setupFixtureMessage)
        XCTAssertEqual(m.flow?.sourcePort, 40000)
        XCTAssertEqual(m.records.first?.middleboxID, 0xfeed_0000_0000_0001)
        XCTAssertEqual(try setupFixtureMessage.serialize(), setupFixture)
        try setupFixture.withUnsafeBytes { raw in
            let view = try CSPMessageView(raw)
            XCTAssertEqual(view.type, .setup)
            XCTAssertEqual(view.sessionID, 0x0123_4567_89ab_cdef)
            XCTAssertEqual(view.nonce, 0x1122_3344_5566_7788)
            XCTAssertEqual(view.sequence, 1)
            XCTAssertEqual(view.length, 89)
            XCTAssertTrue(CSPMessageView.looksLikeCSP(raw))
        }
    }

    /// Every proper prefix is a truncated datagram: short of the header it is `.truncated` at the
    /// end of the data, otherwise the header length disagrees.
    func testEveryTruncationThrows() {
        for n in 0..<setupFixture.count {
            let error = parseError(Array(setupFixture.prefix(n)))
            if n < 28 {
                XCTAssertEqual(error, CSPWireError(.truncated, at: n), "prefix \(n)")
            } else {
                XCTAssertEqual(error, CSPWireError(.lengthMismatch(declared: 89, actual: n), at: 6), "prefix \(n)")
            }
        }
        // Trailing octets are not padding.
        XCTAssertEqual(parseError(setupFixture + [0]), CSPWireError(.lengthMismatch(declared: 89, actual: 90), at: 6))
    }

    /// Truncated and with the length field patched to agree: the TLV walk must catch it.
    func testTruncationWithConsistentLengthNeverTraps() {
        for n in 28..<setupFixture.count {
            var bytes = Array(setupFixture.prefix(n))
            bytes[6] = UInt8(n >> 8)
            bytes[7] = UInt8(n & 0xff)
            guard [28, 46, 54, 61].contains(n) == false else {
                XCTAssertNoThrow(try CSPMessage.parse(bytes), "cut at a TLV boundary \(n)")
                continue
            }
            switch parseError(bytes)?.kind {
            case .truncated, .tlvOverrun, .badTLVValue: break
            case let other: XCTFail("prefix \(n): unexpected \(String(describing: other))")
            }
        }
    }

    func testSingleByteMutations() {
        func mutated(_ changes: [Int: UInt8]) -> [UInt8] {
            var b = setupFixture
            for (offset, value) in changes { b[offset] = value }
            return b
        }
        // Magic, version, length.
        XCTAssertEqual(parseError(mutated([0: 0x00])), CSPWireError(.badMagic, at: 0))
        XCTAssertEqual(parseError(mutated([2: 0x02])), CSPWireError(.unsupportedVersion(2), at: 2))
        XCTAssertEqual(parseError(mutated([7: 0x5a])), CSPWireError(.lengthMismatch(declared: 90, actual: 89), at: 6))
        XCTAssertEqual(parseError(mutated([6: 0x00, 7: 0x1b])), CSPWireError(.lengthMismatch(declared: 27, actual: 89), at: 6))
        // FLOW length runs past the end; FLOW one octet short; FLOW family 5.
        XCTAssertEqual(parseError(mutated([31: 0xff])), CSPWireError(.tlvOverrun(type: 0x8001), at: 28))
        XCTAssertEqual(parseError(mutated([31: 0x0d])), CSPWireError(.badTLVValue(type: 0x8001), at: 28))
        XCTAssertEqual(parseError(mutated([33: 0x05])), CSPWireError(.badTLVValue(type: 0x8001), at: 28))
        // LIFETIME of 3 octets.
        XCTAssertEqual(parseError(mutated([49: 0x03])), CSPWireError(.badTLVValue(type: 0x0002), at: 46))
        // APPLICATION made critical-and-unknown (0x8003): the receiver must refuse the message.
        let critical = parseError(mutated([54: 0x80]))
        XCTAssertEqual(critical, CSPWireError(.unknownCriticalTLV(type: 0x8003), at: 54))
        XCTAssertEqual(critical?.resultCode, .unknownCriticalTLV)
        // Invalid UTF-8 in APPLICATION.
        XCTAssertEqual(parseError(mutated([58: 0xff])), CSPWireError(.badTLVValue(type: 0x0003), at: 54))
        // Record length one too long / nested TLV length one too long.
        XCTAssertEqual(parseError(mutated([64: 0x19])), CSPWireError(.tlvOverrun(type: 0x0009), at: 61))
        XCTAssertEqual(parseError(mutated([86: 0x03])), CSPWireError(.tlvOverrun(type: 0x0011), at: 83))
        // A record nested inside a record.
        XCTAssertEqual(parseError(mutated([84: 0x09])), CSPWireError(.nestingTooDeep, at: 83))
        // Record fixed part cut short: length 17 leaves one octet of the granted lifetime outside.
        var short = setupFixture
        short[64] = 17
        short.removeSubrange(82..<89)
        short[7] = UInt8(short.count)
        XCTAssertEqual(parseError(short), CSPWireError(.badTLVValue(type: 0x0009), at: 61))
    }

    func testUnknownNonCriticalIsPreservedVerbatim() throws {
        var b = setupFixture
        b[28] = 0x00  // FLOW 0x8001 -> 0x0001, an unknown non-critical type
        let m = try CSPMessage.parse(b)
        XCTAssertEqual(m.tlvs[0], .unknown(type: 0x0001, value: Array(setupFixture[32..<46])))
        XCTAssertNil(m.flow)
        XCTAssertEqual(try m.serialize(), b)
    }

    func testUnknownTypesAndCodesRoundTrip() throws {
        let m = CSPMessage(
            type: CSPMessageType(rawValue: 200), flags: CSPFlags(rawValue: 0xf0), result: CSPResultCode(rawValue: 99),
            sessionID: 1, nonce: 2, sequence: 3,
            tlvs: [
                .middleboxRecord(
                    CSPMiddleboxRecord(
                        middleboxID: 1, epoch: 2, decision: CSPDecision(rawValue: 77), grantedLifetime: 3,
                        tlvs: [.unknown(type: 0x1234, value: [])]))
            ])
        XCTAssertEqual(try CSPMessage.parse(try m.serialize()), m)
        XCTAssertEqual(m.type.description, "unknown-200")
    }

    func testEmitRefusesWhatParseWouldReject() {
        func emitError(_ tlv: CSPTLV) -> CSPWireError? {
            do {
                _ = try CSPMessage(type: .setup, sessionID: 1, nonce: 1, tlvs: [tlv]).serialize()
                return nil
            } catch { return error }
        }
        let nested = CSPMiddleboxRecord(middleboxID: 1, epoch: 1, decision: .admitted, grantedLifetime: 1)
        var outer = nested
        outer.tlvs = [.middleboxRecord(nested)]
        XCTAssertEqual(emitError(.middleboxRecord(outer)), CSPWireError(.nestingTooDeep, at: 50))
        XCTAssertEqual(emitError(.identity(CSPKeyMaterial(bytes: [1, 2, 3]))), CSPWireError(.badTLVValue(type: 0x000b), at: 28))
        XCTAssertEqual(emitError(.challengeToken([1, 2, 3])), CSPWireError(.badTLVValue(type: 0x800d), at: 28))
        XCTAssertEqual(
            emitError(.denySource(CSPDenySource(prefix: IPAddress("10.0.0.0")!, prefixLength: 33))),
            CSPWireError(.badTLVValue(type: 0x8010), at: 28))
        XCTAssertEqual(emitError(.unknown(type: 0x0002, value: [0])), CSPWireError(.badTLVValue(type: 0x0002), at: 28))
        let mixed = FlowTuple(proto: .udp, source: TestVectors.hostV4, sourcePort: 1, destination: TestVectors.hostV6, destinationPort: 2)
        XCTAssertEqual(emitError(.flow(mixed)), CSPWireError(.badTLVValue(type: 0x8001), at: 28))
        // Other key types are opaque and any length goes.
        XCTAssertNil(emitError(.signature(CSPKeyMaterial(keyType: 9, bytes: [1]))))
        // A too-long message.
        let huge = CSPMessage(type: .setup, sessionID: 1, nonce: 1, tlvs: Array(repeating: .application(String(repeating: "a", count: 255)), count: 260))
        XCTAssertThrowsError(try huge.serialize()) { XCTAssertEqual(($0 as? CSPWireError)?.kind, .messageTooLong) }
    }

    func testLongTextIsCutAtAScalarBoundary() throws {
        // 254 ASCII octets then a 4-octet scalar: the scalar does not fit and is dropped whole.
        let text = String(repeating: "a", count: 254) + "😀"
        let m = CSPMessage(type: .setup, sessionID: 1, nonce: 1, tlvs: [.application(text)])
        let parsed = try CSPMessage.parse(try m.serialize())
        XCTAssertEqual(parsed.application, String(repeating: "a", count: 254))
        // 255 octets exactly survive.
        let exact = String(repeating: "é", count: 127) + "a"
        XCTAssertEqual(try CSPMessage.parse(try CSPMessage(type: .setup, sessionID: 1, nonce: 1, tlvs: [.application(exact)]).serialize()).application, exact)
    }

    func testEveryMessageTypeRoundTrips() throws {
        var seen: Set<UInt8> = []
        for (name, _, message) in TestVectors.messages {
            let bytes = try message.serialize()
            XCTAssertEqual(try CSPMessage.parse(bytes), message, name)
            XCTAssertEqual(try CSPMessage.parse(bytes).serialize(), bytes, name)
            seen.insert(message.type.rawValue)
        }
        XCTAssertEqual(seen, Set(CSPMessageType.allKnown.map(\.rawValue)))
    }

    func testVectorsFollowTheMessageRules() throws {
        for (name, _, message) in TestVectors.messages { XCTAssertNil(message.ruleViolation, name) }
        var setup = TestVectors.messages[0].2
        setup.tlvs.removeAll { $0.type == .lifetime }
        XCTAssertEqual(setup.ruleViolation, "SETUP requires LIFETIME")
        var reject = TestVectors.messages[4].2
        reject.result = .success
        XCTAssertEqual(reject.ruleViolation, "REJECT requires a non-zero result")
        reject = TestVectors.messages[4].2
        reject.tlvs.removeAll { $0.type == .middleboxRecord }
        XCTAssertEqual(reject.ruleViolation, "a middlebox-originated REJECT requires the middlebox's record")
    }

    func testRandomizedRoundTrip() throws {
        var rng = SplitMix64(seed: 0x5eed_c5b0)
        for i in 0..<3000 {
            let m = RandomMessages.message(&rng)
            let bytes: [UInt8]
            do { bytes = try m.serialize() } catch { XCTFail("\(i): serialize threw \(error) for \(m)"); continue }
            XCTAssertEqual(try CSPMessage.parse(bytes), m, "iteration \(i)")
        }
    }

    /// Random single-byte corruptions of every vector: decoding either fails with a CSPWireError or
    /// yields a message that re-serializes and re-parses to itself. (The fuzz target does this at scale.)
    func testRandomMutationsNeverTrap() throws {
        var rng = SplitMix64(seed: 42)
        for (name, _, message) in TestVectors.messages {
            let original = try message.serialize()
            for _ in 0..<300 {
                var b = original
                let at = Int(rng.next() % UInt64(b.count))
                b[at] = UInt8(truncatingIfNeeded: rng.next())
                guard let parsed = try? CSPMessage.parse(b) else { continue }
                XCTAssertEqual(try CSPMessage.parse(try parsed.serialize()), parsed, "\(name) mutated at \(at)")
            }
        }
    }
}

/// A deterministic generator (SplitMix64) so failures reproduce from the seed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

enum RandomMessages {
    static func address(_ family: IPAddress.Family, _ rng: inout SplitMix64) -> IPAddress {
        family == .ipv4 ? IPAddress(ipv4: UInt32.random(in: 0...UInt32.max, using: &rng))
            : IPAddress(ipv6: rng.next(), rng.next())
    }

    static func family(_ rng: inout SplitMix64) -> IPAddress.Family { Bool.random(using: &rng) ? .ipv4 : .ipv6 }

    static func endpoint(_ rng: inout SplitMix64) -> CSPEndpoint {
        CSPEndpoint(address: address(family(&rng), &rng), port: UInt16.random(in: 0...UInt16.max, using: &rng))
    }

    static func text(_ rng: inout SplitMix64) -> String {
        let alphabet: [String] = ["a", "Z", "0", "-", ".", " ", "é", "ß", "中", "😀", "\u{0}"]
        return (0..<Int.random(in: 0...40, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }.joined()
    }

    static func bytes(_ range: ClosedRange<Int>, _ rng: inout SplitMix64) -> [UInt8] {
        (0..<Int.random(in: range, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }

    static func tlv(_ rng: inout SplitMix64, allowRecord: Bool) -> CSPTLV {
        let u32 = { (rng: inout SplitMix64) in UInt32.random(in: 0...UInt32.max, using: &rng) }
        switch Int.random(in: 0...(allowRecord ? 21 : 20), using: &rng) {
        case 0:
            let f = family(&rng)
            return .flow(FlowTuple(proto: IPProtocol(rawValue: UInt8.random(in: 0...255, using: &rng)), source: address(f, &rng),
                sourcePort: UInt16.random(in: 0...UInt16.max, using: &rng), destination: address(f, &rng),
                destinationPort: UInt16.random(in: 0...UInt16.max, using: &rng)))
        case 1: return .lifetime(u32(&rng))
        case 2: return .application(text(&rng))
        case 3: return .requestedAction(CSPRequestedAction(rawValue: UInt8.random(in: 0...255, using: &rng)))
        case 4: return .reason(CSPReason(code: UInt16.random(in: 0...UInt16.max, using: &rng), retryAfter: u32(&rng), text: text(&rng)))
        case 5: return .redirectTarget(endpoint(&rng))
        case 6: return .mappedAddress(endpoint(&rng))
        case 7: return .hostAddress(endpoint(&rng))
        case 8: return .epoch(u32(&rng))
        case 9: return Bool.random(using: &rng) ? .identity(CSPKeyMaterial(bytes: bytes(32...32, &rng)))
            : .identity(CSPKeyMaterial(keyType: UInt8.random(in: 2...255, using: &rng), bytes: bytes(0...40, &rng)))
        case 10: return .signature(CSPKeyMaterial(bytes: bytes(64...64, &rng)))
        case 11: return .challengeToken(bytes(8...32, &rng))
        case 12: return .newAddress(endpoint(&rng))
        case 13: return .path(CSPPath(pathID: UInt8.random(in: 0...255, using: &rng), endpoint: endpoint(&rng)))
        case 14:
            let f = family(&rng)
            return .denySource(CSPDenySource(prefix: address(f, &rng), prefixLength: UInt8.random(in: 0...(f == .ipv4 ? 32 : 128), using: &rng),
                proto: IPProtocol(rawValue: UInt8.random(in: 0...255, using: &rng)), port: UInt16.random(in: 0...UInt16.max, using: &rng)))
        case 15: return .middleboxName(text(&rng))
        case 16: return .timestamp(rng.next())
        case 17:
            // An unknown, non-critical type.
            var t: UInt16
            repeat { t = UInt16.random(in: 0...0x7fff, using: &rng) } while CSPTLVType(rawValue: t).isKnown
            return .unknown(type: t, value: bytes(0...20, &rng))
        case 18:
            return .relayEndpoint(CSPRelayEndpoint(transport: IPProtocol(rawValue: UInt8.random(in: 0...255, using: &rng)),
                modes: CSPRelayModes(rawValue: UInt8.random(in: 0...255, using: &rng)), endpoint: endpoint(&rng)))
        case 19: return .relayToken(bytes(16...64, &rng))
        case 20:
            return .relayedSession(CSPRelayedSession(sessionID: rng.next(), hopIndex: UInt8.random(in: 1...255, using: &rng),
                flags: CSPRelayedSessionFlags(rawValue: UInt8.random(in: 0...255, using: &rng))))
        default:
            return .middleboxRecord(CSPMiddleboxRecord(middleboxID: rng.next(), epoch: u32(&rng),
                decision: CSPDecision(rawValue: UInt8.random(in: 0...255, using: &rng)), grantedLifetime: u32(&rng),
                tlvs: (0..<Int.random(in: 0...4, using: &rng)).map { _ in tlv(&rng, allowRecord: false) }))
        }
    }

    static func message(_ rng: inout SplitMix64) -> CSPMessage {
        CSPMessage(
            type: CSPMessageType(rawValue: UInt8.random(in: 0...255, using: &rng)),
            flags: CSPFlags(rawValue: UInt8.random(in: 0...255, using: &rng)),
            result: CSPResultCode(rawValue: UInt8.random(in: 0...255, using: &rng)),
            sessionID: rng.next(), nonce: rng.next(), sequence: UInt32.random(in: 0...UInt32.max, using: &rng),
            tlvs: (0..<Int.random(in: 0...8, using: &rng)).map { _ in tlv(&rng, allowRecord: true) })
    }
}
