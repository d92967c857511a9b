import Foundation
import Glibc
import Synchronization
import XCTest

@testable import MidcomControl

/// The streamed `sessions` listing: row frames, their renderers (which must print exactly what
/// SessionTableFormatter and JSONEncoder print for the same records) and the server/client pair.
final class SessionRowStreamTests: XCTestCase {
    // MARK: - Fixtures

    static func record(_ index: Int, random: inout SystemRandomNumberGenerator) -> SessionRecord {
        let v6 = index % 5 == 0
        let source = v6 ? "2001:db8::\(String(index, radix: 16))" : "10.\(index % 256).\(index / 256 % 256).\(index % 7)"
        var record = SessionRecord(
            id: String(format: "%016llx", UInt64.random(in: 0...UInt64.max, using: &random)), proto: index % 3 == 0 ? "tcp" : "udp",
            source: index % 11 == 0 ? (v6 ? "::" : "0.0.0.0") : source, sourcePort: UInt16(index % 3 == 1 ? 0 : 1024 + index % 60000),
            destination: v6 ? "2001:db8:1::2" : "203.0.113.\(index % 250)", destinationPort: UInt16(5000 + index % 100),
            state: ["admitted", "pending", "legacy", "redirected"][index % 4], action: ["admit", "none", "nat", "redirect"][index % 4],
            ageSeconds: [0, 0.5, 12.25, 3599.9, 86400 * 3 + 0.125, 1e-7][index % 6],
            remainingSeconds: index % 4 == 1 ? nil : Double(index % 100_000) + 0.5,
            packets: index % 2 == 0 ? UInt64(index) * 1000 : nil, bytes: index % 2 == 0 ? UInt64(index) * 1_000_003 : nil,
            application: index % 9 == 0 ? "voip \"a\\b\"\n\té/\u{1}" : index % 4 == 0 ? "web" : nil)
        if index % 13 == 0 { record.origin = index % 2 == 0 ? "nat-pmp" : "pcp" }
        if index % 17 == 0 {
            record.paths = [
                PathRecord(id: 1, source: "10.9.9.9", sourcePort: 4000, destination: record.destination, destinationPort: 80),
                PathRecord(id: 7, source: "2001:db8::9", sourcePort: 0, destination: "2001:db8::1", destinationPort: 443),
            ]
        }
        return record
    }

    static func frames(of records: [SessionRecord], perFrame: Int = 100) -> [[UInt8]] {
        stride(from: 0, to: records.count, by: perFrame).map { start in
            var builder = SessionRowFrameBuilder()
            for record in records[start..<min(start + perFrame, records.count)] {
                builder.append(
                    id: UInt64(record.id, radix: 16)!, proto: record.proto, source: record.source, sourcePort: record.sourcePort,
                    destination: record.destination, destinationPort: record.destinationPort, state: record.state,
                    action: record.action, ageSeconds: record.ageSeconds, remainingSeconds: record.remainingSeconds,
                    packets: record.packets, bytes: record.bytes, application: record.application, origin: record.origin,
                    paths: record.paths.map { $0.map {
                        .init(id: $0.id, source: $0.source, sourcePort: $0.sourcePort, destination: $0.destination, destinationPort: $0.destinationPort)
                    } })
            }
            return builder.frame
        }
    }

    /// The payload of a frame (after length and kind), checking both.
    static func payload(_ frame: [UInt8]) -> [UInt8] {
        let length = frame[0..<4].reduce(0) { $0 << 8 | Int($1) }
        precondition(length == frame.count - 4 && frame[4] == SessionRowStream.Kind.rows.rawValue)
        return Array(frame[5...])
    }

    static func records(_ reader: SessionRowReader) throws -> [SessionRecord] {
        var rows = reader
        var records: [SessionRecord] = []
        while let row = try rows.next() { records.append(reader.record(row)) }
        return records
    }

    // MARK: - Frames

    func testRowsRoundTrip() throws {
        var random = SystemRandomNumberGenerator()
        let records = (0..<500).map { Self.record($0, random: &random) }
        var decoded: [SessionRecord] = []
        for frame in Self.frames(of: records) { decoded += try Self.records(SessionRowReader(payload: Self.payload(frame))) }
        XCTAssertEqual(decoded, records)
    }

    func testEveryTruncationIsRefused() throws {
        var random = SystemRandomNumberGenerator()
        let payload = Self.payload(Self.frames(of: (0..<3).map { Self.record($0 * 17, random: &random) })[0])
        for length in 0..<payload.count {
            XCTAssertThrowsError(try Self.records(SessionRowReader(payload: Array(payload[..<length]))), "cut at \(length)")
        }
        // Octets after the announced rows are refused too.
        XCTAssertThrowsError(try Self.records(SessionRowReader(payload: payload + [0])))
    }

    func testAFlippedRowCountIsRefused() throws {
        var random = SystemRandomNumberGenerator()
        var payload = Self.payload(Self.frames(of: [Self.record(1, random: &random)])[0])
        payload[1] = 2  // two rows announced, one there
        XCTAssertThrowsError(try Self.records(SessionRowReader(payload: payload))) { error in
            XCTAssertTrue("\(error)".contains("row 2 of 2 runs past the end"), "\(error)")
        }
    }

    func testEndAndErrorFrames() {
        XCTAssertEqual(SessionRowFrameBuilder.endFrame(total: 258), [0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, 2])
        XCTAssertEqual(SessionRowFrameBuilder.errorFrame("no"), [0, 0, 0, 3, 2, UInt8(ascii: "n"), UInt8(ascii: "o")])
    }

    // MARK: - Rendering: the same octets as before streaming

    func render(_ records: [SessionRecord], json: Bool, color: Bool = false) throws -> String {
        var out: [UInt8] = []
        let readers = try Self.frames(of: records, perFrame: 7).map { try SessionRowReader(payload: Self.payload($0)) }
        if json {
            var writer = SessionRowRenderer.JSONArrayWriter()
            writer.begin(into: &out)
            for reader in readers {
                var rows = reader
                while let row = try rows.next() { writer.append(row, of: reader, into: &out) }
            }
            writer.end(into: &out)
        } else {
            // As midctl: each frame added as it arrives, the table written at the end.
            var table = SessionRowRenderer.TableWriter(color: color)
            for reader in readers { try table.add(reader) }
            try table.finish { piece in
                out += piece
                piece.removeAll()
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    func pretty(_ records: [SessionRecord]) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(records), as: UTF8.self) + "\n"
    }

    func testTableIsSessionTableFormatters() throws {
        var random = SystemRandomNumberGenerator()
        let records = (0..<400).map { Self.record($0, random: &random) }
        XCTAssertEqual(try render(records, json: false), SessionTableFormatter.table(records))
        XCTAssertEqual(try render(records, json: false, color: true), SessionTableFormatter.table(records, color: true))
        XCTAssertEqual(try render([], json: false), SessionTableFormatter.table([]))
        XCTAssertEqual(try render(Array(records.prefix(1)), json: false), SessionTableFormatter.table(Array(records.prefix(1))))
    }

    /// A cell wider than any before it in the last frame widens its column for every frame
    /// rendered before it arrived: those are rendered again, and the table is still the
    /// formatter's (a frame kept as first rendered would be misaligned).
    func testTableWhoseWidthsGrowInTheLastFrame() throws {
        var random = SystemRandomNumberGenerator()
        var records = (0..<60).map { Self.record($0 * 4 + 1, random: &random) }  // no application, no IPv6
        records[59].application = String(repeating: "wide application ", count: 4)
        records[59].source = "2001:db8:ffff:ffff:ffff:ffff:ffff:1"
        XCTAssertEqual(try render(records, json: false), SessionTableFormatter.table(records))
        XCTAssertEqual(try render(records, json: false, color: true), SessionTableFormatter.table(records, color: true))
    }

    func testJSONIsJSONEncoders() throws {
        var random = SystemRandomNumberGenerator()
        let records = (0..<400).map { Self.record($0, random: &random) }
        XCTAssertEqual(try render(records, json: true), try pretty(records))
        XCTAssertEqual(try render([], json: true), try pretty([]))
        var odd = records[3]
        odd.paths = []
        odd.ageSeconds = 123456789.123456789
        odd.remainingSeconds = 1e21
        XCTAssertEqual(try render([odd], json: true), try pretty([odd]))
    }

    func testNumbersAsJSONEncoderWritesThem() throws {
        let encoder = JSONEncoder()
        for value in [0, -0.0, 1, 12.5, 1e15, 1e16, 1e-5, 0.1, 3e21, -2.5, 4_294_967_295 * 1000.0, .leastNonzeroMagnitude, 1.7976931348623157e308] {
            var out: [UInt8] = []
            SessionRowRenderer.appendJSONNumber(value, to: &out)
            XCTAssertEqual(String(decoding: out, as: UTF8.self), String(decoding: try encoder.encode(value), as: UTF8.self), "\(value)")
        }
        for value: UInt64 in [0, 9, 10, 99, 1_000_000, 9_999_999_999_999_999, 10_000_000_000_000_000, .max] {
            var out: [UInt8] = []
            SessionRowRenderer.appendDecimal(value, to: &out)
            XCTAssertEqual(String(decoding: out, as: UTF8.self), String(value))
        }
    }

    // MARK: - Server and client

    final class FrameCounter: Sendable { let value = Atomic<Int>(0) }

    /// A source of `count` rows in frames of `perFrame`, counting the frames made.
    struct CountingSource: SessionRowSource {
        let records: [SessionRecord]
        let perFrame: Int
        let made: FrameCounter?
        var position = 0

        mutating func nextFrame() -> SessionRowFrameBuilder? {
            guard position < records.count else { return nil }
            let chunk = Array(records[position..<min(position + perFrame, records.count)])
            position += chunk.count
            made?.value.add(1, ordering: .relaxed)
            var builder = SessionRowFrameBuilder()
            for record in chunk {
                builder.append(
                    id: UInt64(record.id, radix: 16)!, proto: record.proto, source: record.source, sourcePort: record.sourcePort,
                    destination: record.destination, destinationPort: record.destinationPort, state: record.state,
                    action: record.action, ageSeconds: record.ageSeconds, remainingSeconds: record.remainingSeconds,
                    packets: record.packets, bytes: record.bytes, application: record.application, origin: record.origin)
            }
            return builder
        }
    }

    /// `timeout`: the server's time per frame; the default leaves a debug-built client room on a
    /// loaded machine (200 ms dropped it mid-listing while another build ran).
    func streamingServer(
        _ directory: TemporaryDirectory, records: [SessionRecord], made: FrameCounter? = nil, perFrame: Int = 1000,
        timeout: Duration = .seconds(5)
    ) throws -> ControlServer {
        let server = try ControlServer(
            path: directory.socketPath, connectionTimeout: timeout,
            sessionRows: { request in
                if request.filter?.state == "bogus" { return .refused("unknown state 'bogus'") }
                return .rows(CountingSource(records: records, perFrame: perFrame, made: made))
            }
        ) { _ in ControlResponse(ok: true, sessions: records) }
        Thread { server.run() }.start()
        return server
    }

    func testClientReadsTheStream() throws {
        let directory = try TemporaryDirectory()
        var random = SystemRandomNumberGenerator()
        let records = (0..<5000).map { index -> SessionRecord in
            var record = Self.record(index, random: &random)
            record.paths = nil
            return record
        }
        let server = try streamingServer(directory, records: records)
        defer { server.stop() }
        var received: [SessionRecord] = []
        var frames = 0
        let legacy = try ControlClient(path: directory.socketPath).listSessions(ControlRequest(command: .sessions)) { reader throws(SessionRowStreamError) in
            frames += 1
            var rows = reader
            while let row = try rows.next() { received.append(reader.record(row)) }
        }
        XCTAssertNil(legacy)
        XCTAssertEqual(frames, 5)
        XCTAssertEqual(received, records)
    }

    func testARefusalIsTheAnswerLine() throws {
        let directory = try TemporaryDirectory()
        let server = try streamingServer(directory, records: [])
        defer { server.stop() }
        XCTAssertThrowsError(
            try ControlClient(path: directory.socketPath).listSessions(ControlRequest(command: .sessions, filter: SessionFilter(state: "bogus"))) { _ in }
        ) { error in
            XCTAssertEqual(error as? ControlError, .refused("unknown state 'bogus'"))
        }
    }

    func testAnOlderDaemonsSingleLineIsAccepted() throws {
        let directory = try TemporaryDirectory()
        var random = SystemRandomNumberGenerator()
        let records = (0..<3).map { Self.record($0, random: &random) }
        let server = try RunningServer(path: directory.socketPath) { _ in ControlResponse(ok: true, sessions: records) }
        defer { server.stop() }
        let legacy = try ControlClient(path: directory.socketPath).listSessions(ControlRequest(command: .sessions)) { _ in XCTFail("no frames") }
        XCTAssertEqual(legacy, records)
        XCTAssertEqual(server.requests.first?.stream, true)
    }

    /// A reader that stops reading is disconnected: the server makes a bounded number of frames
    /// (what fits the socket buffers), never all of them.
    func testAStalledReaderIsDisconnected() throws {
        let directory = try TemporaryDirectory()
        var random = SystemRandomNumberGenerator()
        let record = Self.record(1, random: &random)
        let records = [SessionRecord](repeating: record, count: 400_000)
        let made = FrameCounter()
        let server = try streamingServer(directory, records: records, made: made, perFrame: 2000, timeout: .milliseconds(200))
        defer { server.stop() }
        let client = try RawClient(path: directory.socketPath)
        try client.send(#"{"command":"sessions","stream":true}"# + "\n")
        Thread.sleep(forTimeInterval: 0.8)  // read nothing: the server's 200 ms per frame run out
        let framesMade = made.value.load(ordering: .relaxed)
        XCTAssertLessThan(framesMade, 200, "the server went on making frames for a reader that took none")
        Thread.sleep(forTimeInterval: 0.3)
        XCTAssertEqual(made.value.load(ordering: .relaxed), framesMade, "frames made after the reader was dropped")
    }
}
