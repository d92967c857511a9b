import Foundation
import XCTest

@testable import MidcomControl

final class SessionTableFormatterTests: XCTestCase {
    func testEmptyTableIsTheHeaderAlone() {
        XCTAssertEqual(
            SessionTableFormatter.table([]),
            "ID  PROTO  SOURCE  DESTINATION  STATE  ACTION  AGE  LEFT  PACKETS  BYTES  APP  ORIGIN\n")
    }

    func testIPv4AndIPv6WithUnknownCounters() {
        // Columns padded to their widest cell; AGE, LEFT, PACKETS and BYTES right-aligned; '-' for unknown.
        let expected = """
            ID                PROTO  SOURCE           DESTINATION             STATE     ACTION    AGE   LEFT  PACKETS   BYTES  APP  ORIGIN
            00000000000000a1  udp    192.0.2.10:5060  198.51.100.7:5060       admitted  admit   3m04s  1h00m     1234  555KiB  sip  csp
            00000000000000b2  tcp    [2001:db8::1]:*  [2001:db8:ffff::2]:443  pending   none       3s      -        -       -  -    csp

            """
        XCTAssertEqual(SessionTableFormatter.table(Fixtures.sessions), expected)
    }

    func testFurtherPathsAreListedBelowTheirSession() {
        var session = Fixtures.sessions[0]
        session.paths = [PathRecord(id: 1, source: "203.0.113.9", sourcePort: 5060, destination: "198.51.100.7", destinationPort: 5060)]
        let lines = SessionTableFormatter.table([session]).split(separator: "\n")
        XCTAssertEqual(lines.count, 3)
        XCTAssertTrue(lines[2].hasPrefix("  +path 1"), String(lines[2]))
        XCTAssertTrue(lines[2].contains("udp    203.0.113.9:5060"), String(lines[2]))
        XCTAssertTrue(lines[2].hasSuffix("198.51.100.7:5060"), "no trailing blanks: \(lines[2])")
    }

    func testNoTrailingBlanks() {
        for line in SessionTableFormatter.table(Fixtures.sessions).split(separator: "\n") {
            XCTAssertFalse(line.hasSuffix(" "), String(line))
        }
    }

    func testDetail() {
        let expected = """
            id:               00000000000000a1
            protocol:         udp
            source:           192.0.2.10:5060
            destination:      198.51.100.7:5060
            state:            admitted
            action:           admit
            age:              3m04s
            remaining:        1h00m
            packets:          1234
            bytes:            567890 (555KiB)
            application:      sip
            peer middleboxes: 1

            """
        XCTAssertEqual(SessionTableFormatter.detail(Fixtures.admitted), expected)
    }

    func testDetailWithUnknowns() {
        let expected = """
            id:               00000000000000b2
            protocol:         tcp
            source:           [2001:db8::1]:*
            destination:      [2001:db8:ffff::2]:443
            state:            pending
            action:           none
            age:              3s
            remaining:        no expiry
            packets:          -
            bytes:            -
            application:      -
            peer middleboxes: -

            """
        XCTAssertEqual(SessionTableFormatter.detail(Fixtures.pending), expected)
    }

    func testStatusWithCountersSortedByName() {
        let expected = """
            version:        0.1.0
            pid:            4242
            uptime:         1h02m
            epoch:          7
            queues:         0 1
            queue encoding: fanout
            ruleset:        -
            flowtable:      -
            sessions:       2
            counters:
              admitted          7
              rejected_policy   3
              requests         10

            """
        XCTAssertEqual(SessionTableFormatter.status(Fixtures.status), expected)
    }

    func testStatusWithoutQueuesOrCounters() {
        var status = Fixtures.status
        status.queueNumbers = []
        status.counters = [:]
        let text = SessionTableFormatter.status(status)
        XCTAssertTrue(text.contains("queues:         none\n"), text)
        XCTAssertTrue(text.hasSuffix("counters:       none\n"), text)
    }

    func testDurations() {
        let cases: [(Double?, String)] = [
            (nil, "-"), (.nan, "-"), (.infinity, "-"), (-5, "0s"), (0, "0s"), (0.9, "0s"), (12.7, "12s"),
            (59.99, "59s"), (60, "1m00s"), (184, "3m04s"), (3599, "59m59s"), (3600, "1h00m"), (3720, "1h02m"),
            (86399, "23h59m"), (86400, "1d00h"), (3 * 86400 + 4 * 3600 + 59, "3d04h"),
        ]
        for (seconds, expected) in cases {
            XCTAssertEqual(SessionTableFormatter.duration(seconds), expected, "\(String(describing: seconds))")
        }
    }

    func testEndpoints() {
        XCTAssertEqual(SessionTableFormatter.endpoint("192.0.2.1", port: 80), "192.0.2.1:80")
        XCTAssertEqual(SessionTableFormatter.endpoint("192.0.2.1", port: 0), "192.0.2.1:*")
        XCTAssertEqual(SessionTableFormatter.endpoint("fe80::1", port: 65535), "[fe80::1]:65535")
        XCTAssertEqual(SessionTableFormatter.endpoint("::", port: 0), "[::]:*")
        XCTAssertEqual(SessionTableFormatter.endpoint("", port: 0), "*:*")
    }

    func testByteCounts() {
        let cases: [(UInt64, String)] = [
            (0, "0B"), (1023, "1023B"), (1024, "1.0KiB"), (1536, "1.5KiB"), (10 * 1024, "10KiB"),
            (1023 * 1024 + 900, "1.0MiB"), (5 * 1024 * 1024, "5.0MiB"), (.max, "16EiB"),
        ]
        for (count, expected) in cases {
            XCTAssertEqual(SessionTableFormatter.byteCount(count), expected, "\(count)")
        }
    }

    /// Colors wrap the padded cells, so the columns line up exactly as without them.
    func testColorsKeepTheColumnsAligned() {
        let plain = SessionTableFormatter.table(Fixtures.sessions)
        let colored = SessionTableFormatter.table(Fixtures.sessions, color: true)
        XCTAssertFalse(plain.contains("\u{1B}"))
        XCTAssertTrue(colored.contains("\u{1B}[32m"), colored)
        let stripped = colored.replacingOccurrences(of: "\u{1B}\\[[0-9;]*m", with: "", options: .regularExpression)
        XCTAssertEqual(stripped, plain)
        let event = ControlEvent(time: 0, kind: "reject", session: "0123456789abcdef", text: "rejected")
        XCTAssertEqual(SessionTableFormatter.event(event, clock: "12:00:00.000"), "12:00:00.000 reject     0123456789abcdef rejected")
        XCTAssertTrue(SessionTableFormatter.event(event, clock: "12:00:00.000", color: true).contains("\u{1B}[31mreject"))
    }
}
