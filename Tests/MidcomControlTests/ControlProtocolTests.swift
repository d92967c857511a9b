import Foundation
import XCTest

@testable import MidcomControl

final class ControlProtocolTests: XCTestCase {
    private func roundTrip<T: Codable & Equatable>(_ value: T, file: StaticString = #filePath, line: UInt = #line)
        throws
    {
        let encoded = try ControlLineCodec.encodeLine(value)
        XCTAssertEqual(encoded.last, ControlLineCodec.newline, file: file, line: line)
        XCTAssertEqual(encoded.filter { $0 == ControlLineCodec.newline }.count, 1, "one line", file: file, line: line)
        let decoded = try ControlLineCodec.decode(T.self, line: encoded.dropLast(), what: "test")
        XCTAssertEqual(decoded, value, file: file, line: line)
    }

    func testRequestsRoundTrip() throws {
        try roundTrip(ControlRequest(command: .sessions))
        try roundTrip(ControlRequest(command: .delete, sessionID: "00000000000000a1", dryRun: true))
        for command in ControlCommand.allCases { try roundTrip(ControlRequest(command: command)) }
    }

    func testResponsesRoundTrip() throws {
        try roundTrip(ControlResponse(ok: true, sessions: Fixtures.sessions))
        try roundTrip(ControlResponse(ok: true, status: Fixtures.status))
        try roundTrip(ControlResponse(ok: true, affected: ["00000000000000a1"]))
        try roundTrip(ControlResponse.failure("no session with id 00000000000000ff"))
        try roundTrip(ControlResponse(ok: true, sessions: []))
    }

    func testRecordsRoundTripWithExtremeValues() throws {
        var record = Fixtures.admitted
        record.packets = .max
        record.bytes = .max
        record.sourcePort = .max
        record.application = "line\nbreak \"quoted\" \u{1F600}"
        try roundTrip(record)
    }

    func testEncodingIsOneSortedLineWithoutNulls() throws {
        let line = String(decoding: try ControlLineCodec.encodeLine(ControlResponse(ok: true, sessions: [Fixtures.pending])), as: UTF8.self)
        XCTAssertFalse(line.contains("null"), "absent optionals are omitted: \(line)")
        XCTAssertEqual(
            line,
            #"{"ok":true,"sessions":[{"action":"none","ageSeconds":3.2,"destination":"2001:db8:ffff::2","#
                + #""destinationPort":443,"id":"00000000000000b2","proto":"tcp","source":"2001:db8::1","#
                + #""sourcePort":0,"state":"pending"}]}"# + "\n")
    }

    func testRequestDefaultsWhenFieldsAreOmitted() throws {
        let request = try ControlLineCodec.decode(ControlRequest.self, line: Array(#"{"command":"flush"}"#.utf8), what: "request")
        XCTAssertEqual(request, ControlRequest(command: .flush))
        XCTAssertEqual(request.version, 1)
        XCTAssertFalse(request.dryRun)
    }

    func testTrailingCarriageReturnIsTolerated() throws {
        let request = try ControlLineCodec.decode(ControlRequest.self, line: Array("{\"command\":\"status\"}\r".utf8), what: "request")
        XCTAssertEqual(request.command, .status)
    }

    func testMalformedRequestsAreDescribedInOneLine() {
        let cases: [(String, String)] = [
            ("garbage", "malformed request: not a JSON object"),
            ("[1,2]", "malformed request: not a JSON object"),
            ("{}", "malformed request: missing field 'command'"),
            (#"{"command":"reboot"}"#, "malformed request: unknown command (expected one of: sessions, show, delete, flush, status, denies, undeny, reload, rules, show-config, announce, monitor)"),
            (#"{"command":"show","sessionID":7}"#, "malformed request: field 'sessionID' is not of type String"),
            (#"{"command":"flush","dryRun":"yes"}"#, "malformed request: field 'dryRun' is not of type Bool"),
        ]
        for (line, expected) in cases {
            XCTAssertThrowsError(try ControlLineCodec.decode(ControlRequest.self, line: Array(line.utf8), what: "request")) { error in
                XCTAssertEqual((error as? ControlLineCodec.DecodeFailure)?.message, expected, line)
            }
        }
    }

    func testValidation() {
        XCTAssertNil(ControlRequest(command: .sessions).validationError)
        XCTAssertNil(ControlRequest(command: .show, sessionID: "00000000000000A1").validationError)
        XCTAssertEqual(ControlRequest(command: .show).validationError, "command 'show' needs a sessionID")
        XCTAssertEqual(
            ControlRequest(command: .delete, sessionID: "12").validationError, "session id '12' is not 16 hex digits")
        var future = ControlRequest(command: .status)
        future.version = 2
        XCTAssertEqual(
            future.validationError, "unsupported control protocol version 2; this midcomd speaks version 1")
    }

    func testSessionIDNormalization() {
        XCTAssertEqual(SessionRecord.normalizedID("00000000DEADBEEF"), "00000000deadbeef")
        XCTAssertEqual(SessionRecord.normalizedID("0123456789abcdef"), "0123456789abcdef")
        XCTAssertNil(SessionRecord.normalizedID("0123456789abcde"))
        XCTAssertNil(SessionRecord.normalizedID("0123456789abcdef0"))
        XCTAssertNil(SessionRecord.normalizedID("0123456789abcdeg"))
        XCTAssertNil(SessionRecord.normalizedID("０123456789abcde"))  // a full-width digit is not hex
        XCTAssertNil(SessionRecord.normalizedID(""))
    }

    func testErrorDescriptionsSayWhatToDo() {
        XCTAssertEqual(
            ControlError.daemonNotRunning(path: "/run/midcom/control.sock").description,
            "midcomd is not running: no control socket at /run/midcom/control.sock "
                + "(start it with `systemctl start midcomd`, or pass --socket)")
        XCTAssertEqual(
            ControlError.permissionDenied(path: "/run/midcom/control.sock").description,
            "permission denied on the control socket /run/midcom/control.sock "
                + "(run as root, or as a member of the socket's group)")
        XCTAssertEqual(
            ControlError.systemCallFailed(call: "bind", path: "/x", errno: EEXIST).description,
            "bind on /x failed: File exists (errno 17)")
    }
}
