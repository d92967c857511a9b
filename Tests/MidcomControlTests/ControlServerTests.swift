import Foundation
import Glibc
import XCTest

@testable import MidcomControl

/// A real ControlServer on a socket in a temporary directory, answering a real ControlClient or raw bytes.
/// Every wait is bounded by socket timeouts or semaphores of at most a few seconds.
final class ControlServerTests: XCTestCase {
    private var directory: TemporaryDirectory!

    override func setUpWithError() throws {
        directory = try TemporaryDirectory()
    }

    override func tearDown() {
        directory = nil
    }

    private var client: ControlClient { ControlClient(path: directory.socketPath, timeout: .seconds(2)) }

    func testSessionsAndStatus() throws {
        let running = try RunningServer(path: directory.socketPath)
        XCTAssertEqual(try client.send(ControlRequest(command: .sessions)), ControlResponse(ok: true, sessions: Fixtures.sessions))
        XCTAssertEqual(try client.send(ControlRequest(command: .status)).status, Fixtures.status)
        XCTAssertEqual(running.requests.map(\.command), [.sessions, .status])
        XCTAssertTrue(running.stop())
    }

    func testShowUnknownIDIsAnErrorResponseNotAThrow() throws {
        let running = try RunningServer(path: directory.socketPath)
        let response = try client.send(ControlRequest(command: .show, sessionID: "00000000000000ff"))
        XCTAssertEqual(response, .failure("no session with id 00000000000000ff"))
        XCTAssertTrue(running.stop())
    }

    func testSessionIDReachesTheHandlerInLowerCase() throws {
        let running = try RunningServer(path: directory.socketPath)
        let response = try client.send(ControlRequest(command: .show, sessionID: "00000000000000A1"))
        XCTAssertEqual(response.sessions, [Fixtures.admitted])
        XCTAssertEqual(running.requests.first?.sessionID, "00000000000000a1")
        XCTAssertTrue(running.stop())
    }

    func testInvalidRequestsNeverReachTheHandler() throws {
        let running = try RunningServer(path: directory.socketPath)
        let missing = try client.send(ControlRequest(command: .delete))
        XCTAssertEqual(missing, .failure("command 'delete' needs a sessionID"))
        let raw = try RawClient(path: directory.socketPath)
        try raw.send(#"{"version":2,"command":"status"}"# + "\n")
        XCTAssertEqual(
            try raw.receiveResponse(),
            .failure("unsupported control protocol version 2; this midcomd speaks version 1"))
        XCTAssertEqual(running.requests, [])
        XCTAssertTrue(running.stop())
    }

    func testDryRunIsPassedThrough() throws {
        let running = try RunningServer(path: directory.socketPath)
        let response = try client.send(ControlRequest(command: .flush, dryRun: true))
        XCTAssertEqual(response.affected, Fixtures.sessions.map(\.id))
        XCTAssertEqual(running.requests, [ControlRequest(command: .flush, dryRun: true)])
        XCTAssertTrue(running.stop())
    }

    func testMalformedLineGetsAnErrorAndTheServerKeepsServing() throws {
        let running = try RunningServer(path: directory.socketPath)
        do {
            let raw = try RawClient(path: directory.socketPath)
            try raw.send("this is not json\n")
            XCTAssertEqual(try raw.receiveResponse(), .failure("malformed request: not a JSON object"))
            // The same connection still answers a good request after a bad one.
            try raw.send(#"{"command":"status"}"# + "\n")
            XCTAssertEqual(try raw.receiveResponse().status, Fixtures.status)
        }
        XCTAssertTrue(try client.send(ControlRequest(command: .sessions)).ok, "next client served")
        XCTAssertTrue(running.stop())
    }

    func testSeveralRequestsInOneWriteGetOneResponseEach() throws {
        let running = try RunningServer(path: directory.socketPath)
        let raw = try RawClient(path: directory.socketPath)
        try raw.send("{\"command\":\"status\"}\n\n{\"command\":\"sessions\"}\r\n")
        XCTAssertEqual(try raw.receiveResponse().status, Fixtures.status)
        XCTAssertEqual(try raw.receiveResponse().sessions, Fixtures.sessions)
        XCTAssertEqual(running.requests.map(\.command), [.status, .sessions])
        XCTAssertTrue(running.stop())
    }

    func testRequestSplitAcrossWritesAndUnterminatedAtEndOfStream() throws {
        let running = try RunningServer(path: directory.socketPath)
        let raw = try RawClient(path: directory.socketPath)
        try raw.send(#"{"comm"#)
        Thread.sleep(forTimeInterval: 0.05)
        try raw.send(#"and":"status"}"#)
        _ = shutdown(raw.socket.fd, Int32(SHUT_WR))
        XCTAssertEqual(try raw.receiveResponse().status, Fixtures.status)
        XCTAssertTrue(running.stop())
    }

    func testOversizedLineIsRefusedAndTheServerKeepsServing() throws {
        let running = try RunningServer(path: directory.socketPath)
        do {
            let raw = try RawClient(path: directory.socketPath)
            try raw.send(bytes: [UInt8](repeating: UInt8(ascii: "x"), count: ControlProtocol.maxRequestLineBytes + 10) + [10])
            XCTAssertEqual(try raw.receiveResponse(), .failure("request line exceeds 65536 bytes"))
            XCTAssertTrue(try raw.receivesEndOfStream(), "the connection is closed after an oversized line")
        }
        do {
            // The same, through ControlClient: a huge session id is answered, not a crash or a hang.
            let response = try client.send(ControlRequest(command: .show, sessionID: String(repeating: "a", count: 100_000)))
            XCTAssertEqual(response, .failure("request line exceeds 65536 bytes"))
        }
        XCTAssertTrue(try client.send(ControlRequest(command: .status)).ok, "next client served")
        XCTAssertEqual(running.requests.map(\.command), [.status])
        XCTAssertTrue(running.stop())
    }

    func testALineOfExactlyTheLimitIsAccepted() throws {
        let running = try RunningServer(path: directory.socketPath)
        let raw = try RawClient(path: directory.socketPath)
        let request = #"{"command":"status"}"#
        let padding = String(repeating: " ", count: ControlProtocol.maxRequestLineBytes - request.utf8.count)
        try raw.send(padding + request + "\n")
        XCTAssertEqual(try raw.receiveResponse().status, Fixtures.status)
        XCTAssertTrue(running.stop())
    }

    func testSilentClientIsDisconnectedAndDoesNotBlockOthersForever() throws {
        let running = try RunningServer(path: directory.socketPath, connectionTimeout: .milliseconds(300))
        let silent = try RawClient(path: directory.socketPath, timeout: .seconds(3))
        try silent.send(#"{"command":"#)  // never finished
        let start = ContinuousClock.now
        XCTAssertTrue(try client.send(ControlRequest(command: .status)).ok)
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(2))
        XCTAssertTrue(try silent.receivesEndOfStream(), "the silent client was disconnected")
        XCTAssertTrue(running.stop())
    }

    func testUnencodableResponseBecomesAnErrorResponse() throws {
        let running = try RunningServer(path: directory.socketPath) { _ in
            var session = Fixtures.admitted
            session.ageSeconds = .nan
            return ControlResponse(ok: true, sessions: [session])
        }
        XCTAssertEqual(try client.send(ControlRequest(command: .sessions)), .failure("midcomd could not encode its response"))
        XCTAssertTrue(running.stop())
    }

    func testStopReturnsPromptlyAndRemovesTheSocket() throws {
        let running = try RunningServer(path: directory.socketPath)
        XCTAssertTrue(FileManager.default.fileExists(atPath: directory.socketPath))
        let start = ContinuousClock.now
        XCTAssertTrue(running.stop(within: 1))
        XCTAssertLessThan(ContinuousClock.now - start, .milliseconds(500))
        XCTAssertFalse(FileManager.default.fileExists(atPath: directory.socketPath))
        XCTAssertThrowsError(try client.send(ControlRequest(command: .status))) { error in
            XCTAssertEqual(error as? ControlError, .daemonNotRunning(path: directory.socketPath))
        }
        running.server.stop()  // idempotent
    }

    func testStopInterruptsAConnectionInProgress() throws {
        let running = try RunningServer(path: directory.socketPath, connectionTimeout: .seconds(30))
        let idle = try RawClient(path: directory.socketPath)
        try idle.send(#"{"command""#)
        Thread.sleep(forTimeInterval: 0.1)  // let the server start serving it
        let start = ContinuousClock.now
        XCTAssertTrue(running.stop(within: 2))
        XCTAssertLessThan(ContinuousClock.now - start, .milliseconds(500))
    }

    func testStopBeforeRunMakesRunReturnAtOnce() throws {
        let server = try ControlServer(path: directory.socketPath) { _ in .failure("unused") }
        server.stop()
        let start = ContinuousClock.now
        server.run()
        XCTAssertLessThan(ContinuousClock.now - start, .milliseconds(500))
    }

    func testSocketModeIs0660() throws {
        let running = try RunningServer(path: directory.socketPath)
        let attributes = try FileManager.default.attributesOfItem(atPath: directory.socketPath)
        XCTAssertEqual((attributes[.posixPermissions] as? NSNumber)?.intValue, 0o660)
        XCTAssertTrue(running.stop())
    }

    func testStaleSocketIsReplaced() throws {
        do {
            // Bound and closed without unlink: what a crashed daemon leaves behind.
            let stale = try UnixStreamSocket.make()
            try stale.bind(to: XCTUnwrap(UnixSocketAddress(path: directory.socketPath)))
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: directory.socketPath))
        let running = try RunningServer(path: directory.socketPath)
        XCTAssertTrue(try client.send(ControlRequest(command: .status)).ok)
        XCTAssertTrue(running.stop())
    }

    func testLiveDaemonIsNotDisplaced() throws {
        let running = try RunningServer(path: directory.socketPath)
        XCTAssertThrowsError(try ControlServer(path: directory.socketPath) { _ in .failure("second") }) { error in
            XCTAssertEqual(error as? ControlError, .addressInUse(path: directory.socketPath))
        }
        XCTAssertTrue(try client.send(ControlRequest(command: .status)).ok, "the first server still answers")
        XCTAssertTrue(running.stop())
    }

    func testARegularFileIsNotRemoved() throws {
        XCTAssertTrue(FileManager.default.createFile(atPath: directory.socketPath, contents: Data("keep".utf8)))
        XCTAssertThrowsError(try ControlServer(path: directory.socketPath) { _ in .failure("unused") }) { error in
            XCTAssertEqual(error as? ControlError, .systemCallFailed(call: "bind", path: directory.socketPath, errno: EEXIST))
        }
        XCTAssertEqual(FileManager.default.contents(atPath: directory.socketPath), Data("keep".utf8))
    }

    func testStoppingAnOldServerLeavesItsSuccessorsSocket() throws {
        let old = try RunningServer(path: directory.socketPath)
        // The operator removed the socket and a new daemon took the path before the old one shut down.
        try FileManager.default.removeItem(atPath: directory.socketPath)
        let successor = try RunningServer(path: directory.socketPath)
        XCTAssertTrue(old.stop())
        XCTAssertTrue(FileManager.default.fileExists(atPath: directory.socketPath))
        XCTAssertTrue(try client.send(ControlRequest(command: .status)).ok)
        XCTAssertTrue(successor.stop())
    }

    // MARK: - Client errors

    func testClientReportsMissingDaemon() {
        for path in ["/nonexistent/x.sock", directory.socketPath] {
            XCTAssertThrowsError(try ControlClient(path: path).send(ControlRequest(command: .status))) { error in
                XCTAssertEqual(error as? ControlError, .daemonNotRunning(path: path))
            }
        }
    }

    func testClientReportsStaleSocketAsMissingDaemon() throws {
        let stale = try UnixStreamSocket.make()
        try stale.bind(to: XCTUnwrap(UnixSocketAddress(path: directory.socketPath)))
        XCTAssertThrowsError(try client.send(ControlRequest(command: .status))) { error in
            XCTAssertEqual(error as? ControlError, .daemonNotRunning(path: directory.socketPath))
        }
    }

    func testClientReportsPermissionDenied() throws {
        try XCTSkipIf(geteuid() == 0, "root bypasses file permissions")
        let running = try RunningServer(path: directory.socketPath)
        XCTAssertEqual(chmod(directory.socketPath, 0o000), 0)
        XCTAssertThrowsError(try client.send(ControlRequest(command: .status))) { error in
            XCTAssertEqual(error as? ControlError, .permissionDenied(path: directory.socketPath))
        }
        XCTAssertTrue(running.stop())
    }

    func testClientTimesOutOnADaemonThatNeverAnswers() throws {
        // Listening, but nobody ever accepts or answers.
        let mute = try UnixStreamSocket.make()
        try mute.bind(to: XCTUnwrap(UnixSocketAddress(path: directory.socketPath)))
        try mute.listen(backlog: 4)
        let start = ContinuousClock.now
        XCTAssertThrowsError(
            try ControlClient(path: directory.socketPath, timeout: .milliseconds(200)).send(ControlRequest(command: .status))
        ) { error in
            XCTAssertEqual(error as? ControlError, .timeout)
        }
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(2))
    }

    func testClientRejectsAGarbageAnswer() throws {
        let fake = try UnixStreamSocket.make()
        try fake.bind(to: XCTUnwrap(UnixSocketAddress(path: directory.socketPath)))
        try fake.listen(backlog: 4)
        let fd = fake.fd
        let answered = DispatchSemaphore(value: 0)
        Thread {
            let connection = Glibc.accept(fd, nil, nil)
            var buffer = [UInt8](repeating: 0, count: 4096)
            _ = Glibc.recv(connection, &buffer, buffer.count, 0)
            let reply = Array("HTTP/1.0 400 Bad Request\n".utf8)
            _ = Glibc.send(connection, reply, reply.count, Int32(MSG_NOSIGNAL))
            Glibc.close(connection)
            answered.signal()
        }.start()
        XCTAssertThrowsError(try client.send(ControlRequest(command: .status))) { error in
            XCTAssertEqual(error as? ControlError, .protocolError("malformed response: not a JSON object"))
        }
        XCTAssertEqual(answered.wait(timeout: .now() + 2), .success)
    }

    func testPathTooLong() {
        let path = "/tmp/" + String(repeating: "p", count: 120)
        XCTAssertThrowsError(try ControlClient(path: path).send(ControlRequest(command: .status))) { error in
            XCTAssertEqual(error as? ControlError, .pathTooLong(path: path))
        }
        XCTAssertThrowsError(try ControlServer(path: path) { _ in .failure("unused") }) { error in
            XCTAssertEqual(error as? ControlError, .pathTooLong(path: path))
        }
    }
}
