import XCTest

@testable import CSPSession

func recordError(_ plaintext: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> SessionWireError? {
    do {
        let record = try EndToEndRecord(plaintext: plaintext)
        XCTFail("decoded \(record) but should not have", file: file, line: line)
        return nil
    } catch { return error }
}

final class EndToEndRecordTests: XCTestCase {
    /// Each type's plaintext, written out: `type(1) ‖ body`.
    func testEveryTypeFieldByField() throws {
        let cases: [([UInt8], EndToEndRecord)] = [
            ([0x01, 0x68, 0x69], .data([0x68, 0x69])),  // DATA "hi"
            ([0x02, 0, 0, 0, 0, 0, 0, 0x01, 0x00], .ack(nextExpected: 256)),  // ACK nextExpected 256
            ([0x03], .close),  // CLOSE: empty
            ([0x04, 0x01] + Array("bad record".utf8), .abort(code: .integrityFailure, text: "bad record")),  // ABORT
            ([0x04, 0x09], .abort(code: EndToEndAbortCode(rawValue: 9), text: "")),  // ABORT, unknown code, no text
            ([0x05], .keyUpdate),  // KEY-UPDATE: empty
            ([0x06, 0xde, 0xad, 0xbe, 0xef, 0x0b, 0xad, 0xca, 0xfe], .ping(token: 0xdead_beef_0bad_cafe)),  // PING
            ([0x07], .message([])),  // MESSAGE: may be empty
            ([0x07, 0x00, 0xff], .message([0x00, 0xff])),
        ]
        for (plaintext, record) in cases {
            XCTAssertEqual(try EndToEndRecord(plaintext: plaintext), record, "\(plaintext)")
            XCTAssertEqual(try record.plaintext(), plaintext, "\(record)")
            XCTAssertEqual(record.type.rawValue, plaintext[0])
        }
        XCTAssertEqual(EndToEndRecordType.allCases.map(\.rawValue), Array(1...7))
        XCTAssertEqual(
            EndToEndRecordType.allCases.map(\.description), ["DATA", "ACK", "CLOSE", "ABORT", "KEY-UPDATE", "PING", "MESSAGE"])
        XCTAssertEqual(EndToEndAbortCode.limit.description, "limit")
        XCTAssertEqual(EndToEndAbortCode(rawValue: 9).description, "abort-9")
    }

    func testOnlyACKsDoNotElicitAcknowledgement() {
        let records: [EndToEndRecord] = [
            .data([1]), .ack(nextExpected: 0), .close, .abort(code: .limit, text: ""), .keyUpdate, .ping(token: 0), .message([]),
        ]
        XCTAssertEqual(records.filter { !$0.elicitsAcknowledgement }, [.ack(nextExpected: 0)])
    }

    func testBodyLimits() throws {
        let full = [UInt8](repeating: 0x61, count: 16384)
        XCTAssertEqual(try EndToEndRecord(plaintext: [0x01] + full), .data(full))
        XCTAssertEqual(try EndToEndRecord(plaintext: [0x07] + full), .message(full))
        XCTAssertEqual(try EndToEndRecord.data(full).plaintext().count, 16385)
        // A record at its largest seals to the largest ciphertext the framing allows.
        XCTAssertEqual(EndToEndRecordFraming.ciphertextLengths.upperBound, 1 + EndToEndRecord.maximumBodyLength + 16)
        XCTAssertEqual(EndToEndRecordFraming.ciphertextLengths.lowerBound, 1 + 16)
    }

    /// Every body its type cannot have, reported at the body's first octet; unknown types at the type.
    func testImpossibleBodies() {
        let bad: [[UInt8]] = [
            [0x01],  // DATA with nothing
            [0x01] + [UInt8](repeating: 0, count: 16385),
            [0x07] + [UInt8](repeating: 0, count: 16385),
            [0x02] + [UInt8](repeating: 0, count: 7), [0x02] + [UInt8](repeating: 0, count: 9),
            [0x06] + [UInt8](repeating: 0, count: 7), [0x06] + [UInt8](repeating: 0, count: 9), [0x06],
            [0x03, 0x00], [0x05, 0x00],  // CLOSE and KEY-UPDATE carry nothing
            [0x04],  // ABORT without its code
            [0x04, 0x01, 0xff, 0xfe],  // ABORT text not UTF-8
            [0x04, 0x01] + [UInt8](repeating: 0x61, count: 256),  // ABORT text above 255 octets
        ]
        for plaintext in bad {
            XCTAssertEqual(
                recordError(plaintext), SessionWireError(.badRecordBody(type: plaintext[0]), at: 1),
                "type \(plaintext[0]), \(plaintext.count) octets")
        }
        for type: UInt8 in [0, 8, 0x80, 0xff] {
            XCTAssertEqual(recordError([type, 1, 2]), SessionWireError(.unknownRecordType(type), at: 0))
        }
        XCTAssertEqual(recordError([]), SessionWireError(.truncated, at: 0))
    }

    func testEncodingRefusesOrCuts() throws {
        var out: [UInt8] = [9, 9]
        XCTAssertThrowsError(try EndToEndRecord.data([]).appendPlaintext(to: &out)) {
            XCTAssertEqual($0 as? SessionWireError, SessionWireError(.badRecordBody(type: 1), at: 3))
        }
        XCTAssertThrowsError(try EndToEndRecord.message([UInt8](repeating: 0, count: 16385)).plaintext()) {
            XCTAssertEqual($0 as? SessionWireError, SessionWireError(.badRecordBody(type: 7), at: 1))
        }
        XCTAssertEqual(out, [9, 9], "nothing written")
        // ABORT's text is cut at a character boundary, as 3.2's text is: 254 octets and a 4-octet
        // scalar leave 254.
        let text = String(repeating: "a", count: 254) + "😀"
        let plaintext = try EndToEndRecord.abort(code: .abortedByApplication, text: text).plaintext()
        XCTAssertEqual(plaintext.count, 2 + 254)
        XCTAssertEqual(
            try EndToEndRecord(plaintext: plaintext),
            .abort(code: .abortedByApplication, text: String(repeating: "a", count: 254)))
    }

    // MARK: framing

    func testRecordFramingIncrementally() throws {
        let ciphertext = (0..<40).map { UInt8($0) }
        var stream: [UInt8] = []
        try EndToEndRecordFraming.appendRecord(ciphertext: ciphertext, to: &stream)
        XCTAssertEqual(Array(stream.prefix(2)), [0x00, 40])
        stream += [0xaa]  // the next record's first octet
        for count in 0..<42 {
            let expected = count < 2 ? 2 - count : 42 - count
            XCTAssertEqual(
                try stream.prefix(count).withUnsafeBytes { buffer throws(SessionWireError) in
                    try EndToEndRecordFraming.parseRecord(buffer)
                }, .needsMore(expected), "at \(count)")
        }
        let parsed = try stream.withUnsafeBytes { buffer throws(SessionWireError) in try EndToEndRecordFraming.parseRecord(buffer)
        }
        XCTAssertEqual(parsed, .complete(2..<42, consumed: 42))
        XCTAssertEqual(Array(stream[2..<42]), ciphertext)
    }

    /// A length outside the range fails as soon as its two octets are in, before any body is buffered.
    func testLengthRanges() throws {
        func parse(_ header: [UInt8], _ parser: (UnsafeRawBufferPointer) throws(SessionWireError) -> IncrementalParse<Range<Int>>)
            -> Result<IncrementalParse<Range<Int>>, SessionWireError>
        {
            header.withUnsafeBytes { buffer in
                do throws(SessionWireError) { return .success(try parser(buffer)) } catch { return .failure(error) }
            }
        }
        let cases:
            [(String, ClosedRange<Int>, (UnsafeRawBufferPointer) throws(SessionWireError) -> IncrementalParse<Range<Int>>)] = [
                ("record", 17...16401, EndToEndRecordFraming.parseRecord),
                ("handshake", 164...65535, EndToEndRecordFraming.parseHandshake),
                ("sealed hop", 17...65535, SealedHopRecordFraming.parseRecord),
            ]
        for (name, range, parser) in cases {
            for length in [0, 1, range.lowerBound - 1, range.upperBound + 1] where length <= 65535 {
                let header = [UInt8(length >> 8), UInt8(length & 0xff)]
                XCTAssertEqual(
                    parse(header, parser), .failure(SessionWireError(.badRecordLength(length), at: 0)), "\(name) \(length)")
            }
            for length in [range.lowerBound, range.upperBound] {
                let header = [UInt8(length >> 8), UInt8(length & 0xff)]
                XCTAssertEqual(parse(header, parser), .success(.needsMore(length)), "\(name) \(length)")
            }
        }
        XCTAssertEqual(EndToEndRecordFraming.handshakeLengths, 164...65535)
        XCTAssertEqual(SealedHopRecordFraming.chunkLengths, 1...65519)
        XCTAssertEqual(SealedHopRecordFraming.ciphertextLengths.lowerBound, SealedHopRecordFraming.chunkLengths.lowerBound + 16)
        XCTAssertEqual(SealedHopRecordFraming.ciphertextLengths.upperBound, SealedHopRecordFraming.chunkLengths.upperBound + 16)
    }

    func testAppendRefusesLengthsOutOfRange() throws {
        var out: [UInt8] = [7]
        XCTAssertThrowsError(try EndToEndRecordFraming.appendRecord(ciphertext: [UInt8](repeating: 0, count: 16), to: &out)) {
            XCTAssertEqual($0 as? SessionWireError, SessionWireError(.badRecordLength(16), at: 1))
        }
        XCTAssertThrowsError(try EndToEndRecordFraming.appendRecord(ciphertext: [UInt8](repeating: 0, count: 16402), to: &out))
        XCTAssertThrowsError(try EndToEndRecordFraming.appendHandshake(message: [UInt8](repeating: 0, count: 163), to: &out))
        XCTAssertThrowsError(try SealedHopRecordFraming.appendRecord(ciphertext: [UInt8](repeating: 0, count: 65536), to: &out))
        XCTAssertEqual(out, [7])
        try SealedHopRecordFraming.appendRecord(ciphertext: [UInt8](repeating: 0xee, count: 65535), to: &out)
        try EndToEndRecordFraming.appendHandshake(message: [UInt8](repeating: 0xee, count: 164), to: &out)
        XCTAssertEqual(out.count, 1 + 2 + 65535 + 2 + 164)
        XCTAssertEqual(Array(out[1..<3]), [0xff, 0xff])
    }

    /// Sealed hop records cut the stream at any point: fed one octet at a time, a sequence of them
    /// comes out whole, in order.
    func testSealedRecordsOneOctetAtATime() throws {
        var stream: [UInt8] = []
        let records = [17, 18, 300].map { [UInt8](repeating: UInt8($0 & 0xff), count: $0) }
        for record in records { try SealedHopRecordFraming.appendRecord(ciphertext: record, to: &stream) }
        var buffer: [UInt8] = []
        var out: [[UInt8]] = []
        for octet in stream {
            buffer.append(octet)
            let result = try buffer.withUnsafeBytes { raw throws(SessionWireError) in try SealedHopRecordFraming.parseRecord(raw)
            }
            if case .complete(let range, let consumed) = result {
                out.append(Array(buffer[range]))
                buffer.removeFirst(consumed)
            }
        }
        XCTAssertEqual(out, records)
        XCTAssertTrue(buffer.isEmpty)
    }
}
