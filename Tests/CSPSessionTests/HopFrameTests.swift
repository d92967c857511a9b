import CSPTrust
import XCTest

@testable import CSPSession

/// A HELLO frame written out by hand. Offsets in the comments are from the first octet.
let helloFixture: [UInt8] =
    [
        0x43, 0x48,  // 0  magic "CH"
        0x01,  // 2  version 1
        0x01,  // 3  kind HELLO
        0x00, 0x20,  // 4  body length 32
    ] + SessionVectors.initiatorEphemeral  // 6  Noise message 1: e

func frameError(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> SessionWireError? {
    do {
        let result = try HopFrame.parse(bytes)
        XCTFail("parsed (\(result)) but should not have", file: file, line: line)
        return nil
    } catch {
        return error
    }
}

final class HopFrameTests: XCTestCase {
    func testFixtureParsesFieldByField() throws {
        XCTAssertEqual(helloFixture.count, 38)
        let hello = HopFrame(kind: .hello, body: SessionVectors.initiatorEphemeral)
        XCTAssertEqual(try HopFrame.parse(helloFixture), .complete(hello, consumed: 38))
        XCTAssertEqual(try hello.serialize(), helloFixture)
        let header = try helloFixture.withUnsafeBytes { buffer throws(SessionWireError) in try HopFrameHeader.parse(buffer) }
        XCTAssertEqual(header, .complete(HopFrameHeader(kind: .hello, bodyLength: 32), consumed: 6))
        // Octets after the frame (the next frame, or the stream) are not consumed.
        XCTAssertEqual(try HopFrame.parse(helloFixture + [0x43, 0x48]), .complete(hello, consumed: 38))
    }

    func testKindsAndTheirBodyLengths() {
        XCTAssertEqual(HopFrameKind.allKnown.map(\.rawValue), [1, 2, 3, 4, 5])
        XCTAssertEqual(HopFrameKind.allKnown.map(\.description), ["HELLO", "HELLO-REPLY", "OPEN", "ACCEPT", "REFUSE"])
        XCTAssertEqual(HopFrameKind.hello.bodyLengths, 32...32)
        XCTAssertEqual(HopFrameKind.helloReply.bodyLengths, 196...196)
        XCTAssertEqual(HopFrameKind.open.bodyLengths, 164...65535)
        XCTAssertEqual(HopFrameKind.accept.bodyLengths, 16...65535)
        XCTAssertEqual(HopFrameKind.refuse.bodyLengths, 2...65535)
        XCTAssertNil(HopFrameKind(rawValue: 0).bodyLengths)
        XCTAssertNil(HopFrameKind(rawValue: 6).bodyLengths)
        XCTAssertEqual(HopFrameKind(rawValue: 6).description, "kind-6")
        // The frame limits count the identity block of 14.4 as CSPTrust encodes it.
        XCTAssertEqual(IdentityBlock.length, 100)
    }

    func testEveryKindRoundTripsAtItsLimits() throws {
        for kind in HopFrameKind.allKnown {
            let lengths = try XCTUnwrap(kind.bodyLengths)
            for length in Set([lengths.lowerBound, lengths.upperBound]) {
                let frame = HopFrame(kind: kind, body: (0..<length).map { UInt8(truncatingIfNeeded: $0) })
                let bytes = try frame.serialize()
                XCTAssertEqual(bytes.count, 6 + length)
                XCTAssertEqual(try HopFrame.parse(bytes), .complete(frame, consumed: bytes.count), "\(kind) \(length)")
            }
        }
    }

    /// Fed one octet at a time, the parser asks for exactly the rest of the header, then exactly the
    /// rest of the body, and never completes early.
    func testIncrementalOneOctetAtATime() throws {
        for frame in [
            HopFrame(kind: .hello, body: SessionVectors.initiatorEphemeral),
            HopFrame(kind: .refuse, body: try SessionVectors.loopRefusal.serialize()),
            HopFrame(kind: .open, body: SessionVectors.standIn(300)),
        ] {
            let bytes = try frame.serialize()
            for count in 0..<bytes.count {
                let expected = count < 6 ? 6 - count : bytes.count - count
                XCTAssertEqual(try HopFrame.parse(Array(bytes.prefix(count))), .needsMore(expected), "\(frame.kind) at \(count)")
            }
            XCTAssertEqual(try HopFrame.parse(bytes), .complete(frame, consumed: bytes.count))
        }
    }

    /// A driver that reads exactly what the parser asks for reads the frame and nothing more.
    func testADriverReadingExactlyWhatIsAskedFor() throws {
        let stream = try HopFrame(kind: .accept, body: SessionVectors.standIn(40)).serialize() + [0xde, 0xad]
        var buffer: [UInt8] = []
        var reads: [Int] = []
        while true {
            switch try HopFrame.parse(buffer) {
            case .needsMore(let n):
                reads.append(n)
                buffer += stream[buffer.count..<buffer.count + n]
            case .complete(let frame, let consumed):
                XCTAssertEqual(frame.body.count, 40)
                XCTAssertEqual(consumed, buffer.count)
                XCTAssertEqual(reads, [6, 40])
                return
            }
        }
    }

    func testSplitInTwoAtEveryPoint() throws {
        let bytes = try HopFrame(kind: .refuse, body: try SessionVectors.clearRefusal.serialize()).serialize()
        for cut in 1..<bytes.count {
            guard case .needsMore = try HopFrame.parse(Array(bytes[..<cut])) else { return XCTFail("complete at \(cut)") }
            guard case .complete(_, let consumed) = try HopFrame.parse(Array(bytes[..<cut]) + bytes[cut...]) else {
                return XCTFail("incomplete after \(cut)")
            }
            XCTAssertEqual(consumed, bytes.count)
        }
    }

    /// 14.5: a bad magic or version or an unknown kind ends the hop, detected at the first octet
    /// that shows it, however little has arrived.
    func testHeaderErrorsAtTheirOctet() {
        XCTAssertEqual(frameError([0x44]), SessionWireError(.badFrameMagic, at: 0))
        XCTAssertEqual(frameError([0x43, 0x53]), SessionWireError(.badFrameMagic, at: 0), "a CSP datagram is not a hop frame")
        XCTAssertEqual(frameError([0x43, 0x48, 0x02]), SessionWireError(.unsupportedFrameVersion(2), at: 2))
        XCTAssertEqual(frameError([0x43, 0x48, 0x00, 0x01, 0x00, 0x20]), SessionWireError(.unsupportedFrameVersion(0), at: 2))
        for kind: UInt8 in [0, 6, 7, 0x80, 0xff] {
            XCTAssertEqual(frameError([0x43, 0x48, 0x01, kind]), SessionWireError(.unknownFrameKind(kind), at: 3))
        }
        // Single-octet changes of the fixture's header, with the exact error.
        func mutated(_ offset: Int, _ value: UInt8) -> [UInt8] {
            var b = helloFixture
            b[offset] = value
            return b
        }
        XCTAssertEqual(frameError(mutated(0, 0x00)), SessionWireError(.badFrameMagic, at: 0))
        XCTAssertEqual(frameError(mutated(1, 0x53)), SessionWireError(.badFrameMagic, at: 0))
        XCTAssertEqual(frameError(mutated(2, 0x02)), SessionWireError(.unsupportedFrameVersion(2), at: 2))
        XCTAssertEqual(frameError(mutated(3, 0x09)), SessionWireError(.unknownFrameKind(9), at: 3))
        // HELLO-REPLY with HELLO's body length; HELLO one octet too long, and 256 octets too long.
        XCTAssertEqual(frameError(mutated(3, 0x02)), SessionWireError(.badFrameLength(kind: 2, length: 32), at: 4))
        XCTAssertEqual(frameError(mutated(5, 0x21)), SessionWireError(.badFrameLength(kind: 1, length: 33), at: 4))
        XCTAssertEqual(frameError(mutated(4, 0x01)), SessionWireError(.badFrameLength(kind: 1, length: 288), at: 4))
    }

    /// Impossible body lengths are refused from the header alone, before the body is read.
    func testImpossibleBodyLengthsPerKind() {
        let cases: [(HopFrameKind, Int)] = [
            (.hello, 0), (.hello, 31), (.hello, 33), (.helloReply, 195), (.helloReply, 197), (.helloReply, 65535),
            (.open, 0), (.open, 163), (.accept, 0), (.accept, 15), (.refuse, 0), (.refuse, 1),
        ]
        for (kind, length) in cases {
            let header: [UInt8] = [0x43, 0x48, 0x01, kind.rawValue, UInt8(length >> 8), UInt8(length & 0xff)]
            XCTAssertEqual(
                frameError(header), SessionWireError(.badFrameLength(kind: kind.rawValue, length: length), at: 4),
                "\(kind) \(length)")
            XCTAssertThrowsError(try HopFrame(kind: kind, body: [UInt8](repeating: 0, count: length)).serialize()) {
                XCTAssertEqual(
                    $0 as? SessionWireError, SessionWireError(.badFrameLength(kind: kind.rawValue, length: length), at: 4))
            }
        }
        XCTAssertThrowsError(try HopFrame(kind: HopFrameKind(rawValue: 6), body: []).serialize()) {
            XCTAssertEqual($0 as? SessionWireError, SessionWireError(.unknownFrameKind(6), at: 3))
        }
        // Encoding appends: offsets count from the start of the output.
        var out: [UInt8] = [1, 2, 3]
        XCTAssertThrowsError(try HopFrame(kind: .hello, body: []).append(to: &out)) {
            XCTAssertEqual($0 as? SessionWireError, SessionWireError(.badFrameLength(kind: 1, length: 0), at: 7))
        }
        XCTAssertEqual(out, [1, 2, 3], "nothing written")
    }

    /// Random corruption of whole frames: every outcome is a typed error, a request for more, or a
    /// frame that re-encodes to the octets it came from.
    func testRandomMutationsNeverTrap() throws {
        var rng = SeededGenerator(seed: 0x4843)
        let frames = try SessionVectors.all.prefix(5).map { try $0.bytes() }
        for original in frames {
            for _ in 0..<300 {
                var b = original
                let at = Int.random(in: 0..<b.count, using: &rng)
                b[at] = UInt8.random(in: 0...255, using: &rng)
                guard case .complete(let frame, let consumed)? = try? HopFrame.parse(b) else { continue }
                XCTAssertEqual(try frame.serialize(), Array(b[..<consumed]))
            }
        }
    }

    func testErrorsDescribeThemselves() {
        XCTAssertEqual(SessionWireError(.unknownFrameKind(9), at: 3).description, "unknown hop frame kind 9")
        XCTAssertEqual(
            SessionWireError(.badFrameLength(kind: 1, length: 33), at: 4).description,
            "hop frame HELLO cannot have a body of 33 octets")
        XCTAssertEqual(
            SessionWireError(.tlv(.badTLVValue(type: 0x8016)), at: 8).description, "TLV HOP at byte 8 has an invalid value")
    }
}

/// SplitMix64, so that a failure of a randomized test reproduces from its seed.
struct SeededGenerator: RandomNumberGenerator {
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
