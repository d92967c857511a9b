import Foundation
import XCTest

@testable import MidcomControl

/// Runs the built `midctl` binary against a ControlServer in this process.
/// `swift test` builds every product first; with `swift test --skip-build` build it with `swift build --product midctl`.
final class MidctlTests: XCTestCase {
    private var directory: TemporaryDirectory!

    override func setUpWithError() throws {
        directory = try TemporaryDirectory()
    }

    override func tearDown() {
        directory = nil
    }

    // MARK: - Running the binary

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// The directory holding the test bundle is the build products directory, which also holds `midctl`.
    static func midctlPath() throws -> String {
        if let override = ProcessInfo.processInfo.environment["MIDCTL_PATH"] { return override }
        var directories = Bundle.allBundles.map(\.bundleURL).filter { $0.pathExtension == "xctest" }
            .map { $0.deletingLastPathComponent() }
        let main = Bundle.main.bundleURL
        directories.append(main.pathExtension == "xctest" ? main.deletingLastPathComponent() : main)
        directories.append(URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent())
        for directory in directories {
            let candidate = directory.appendingPathComponent("midctl").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw MidctlNotBuilt(searched: directories.map(\.path))
    }

    struct MidctlNotBuilt: Error, CustomStringConvertible {
        var searched: [String]
        var description: String {
            "midctl binary not found in \(searched.joined(separator: ", ")); build it first with "
                + "`swift build --product midctl` using the same --scratch-path as the tests (or set MIDCTL_PATH)"
        }
    }

    private func midctl(
        _ arguments: [String], environment: [String: String] = [:], timeout: TimeInterval = 10,
        wrapper: [String] = [], file: StaticString = #filePath, line: UInt = #line
    ) throws -> Result {
        let executable: String
        do {
            executable = try Self.midctlPath()
        } catch {
            XCTFail("\(error)", file: file, line: line)
            throw error
        }
        let stdoutPath = directory.path + "/stdout"
        let stderrPath = directory.path + "/stderr"
        var childEnvironment = ProcessInfo.processInfo.environment
        childEnvironment["MIDCOM_SOCKET"] = nil
        childEnvironment["COLUMNS"] = "80"
        childEnvironment.merge(environment) { $1 }
        let argv = (wrapper.isEmpty ? [executable] : wrapper + [executable]) + arguments

        // posix_spawn + waitpid, not Foundation.Process: `make test` runs the suites in a fresh
        // network namespace (unshare -n, lo down), where Process cannot create its wake-up socket
        // pair and may never notice that the child exited. Output goes to files, not pipes, so a
        // chatty child never blocks on a full pipe while we wait for it.
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdoutPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        var cArguments: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        var cEnvironment: [UnsafeMutablePointer<CChar>?] = childEnvironment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (cArguments + cEnvironment).forEach { free($0) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, argv[0], &actions, nil, &cArguments, &cEnvironment)
        guard spawned == 0 else {
            XCTFail("cannot run \(argv[0]): \(String(cString: strerror(spawned)))", file: file, line: line)
            throw MidctlNotBuilt(searched: [argv[0]])
        }
        let deadline = Date().addingTimeInterval(timeout)
        var status: Int32 = 0
        while waitpid(pid, &status, WNOHANG) == 0 {
            if Date() >= deadline {
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
                XCTFail("midctl \(arguments.joined(separator: " ")) did not exit within \(timeout) s", file: file, line: line)
                break
            }
            usleep(5_000)
        }
        // WIFEXITED / WEXITSTATUS are macros: decode the wait status by hand.
        let exitStatus = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return Result(
            status: exitStatus,
            stdout: try String(contentsOfFile: stdoutPath, encoding: .utf8),
            stderr: try String(contentsOfFile: stderrPath, encoding: .utf8))
    }

    private func decodeJSON<T: Decodable>(_ type: T.Type, _ text: String) throws -> T {
        try JSONDecoder().decode(type, from: Data(text.utf8))
    }

    // MARK: - Tests

    func testSessionsPrintsTheTable() throws {
        let running = try RunningServer(path: directory.socketPath)
        let result = try midctl(["sessions", "--socket", directory.socketPath])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(result.stdout, SessionTableFormatter.table(Fixtures.sessions))
        XCTAssertEqual(result.stderr, "")
        // midctl asks for a stream; a daemon without streams (this one) answers with one line.
        XCTAssertEqual(running.requests, [ControlRequest(command: .sessions, stream: true)])
        XCTAssertTrue(running.stop())
    }

    func testSocketOptionBeforeTheSubcommandAndFromTheEnvironment() throws {
        let running = try RunningServer(path: directory.socketPath)
        let before = try midctl(["--socket", directory.socketPath, "status"])
        XCTAssertEqual(before.status, 0, before.stderr)
        XCTAssertEqual(before.stdout, SessionTableFormatter.status(Fixtures.status))
        let environment = try midctl(["status"], environment: ["MIDCOM_SOCKET": directory.socketPath])
        XCTAssertEqual(environment.status, 0, environment.stderr)
        let bare = try midctl([], environment: ["MIDCOM_SOCKET": directory.socketPath])
        XCTAssertEqual(bare.stdout, SessionTableFormatter.table(Fixtures.sessions), "sessions is the default")
        XCTAssertEqual(running.requests.map(\.command), [.status, .status, .sessions])
        XCTAssertTrue(running.stop())
    }

    func testEmptySessionsPrintsOnlyTheHeader() throws {
        let running = try RunningServer(path: directory.socketPath) { _ in ControlResponse(ok: true, sessions: []) }
        let result = try midctl(["sessions", "--socket", directory.socketPath])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(result.stdout, SessionTableFormatter.table([]))
        XCTAssertEqual(result.stderr, "")
        let json = try midctl(["sessions", "--json", "--socket", directory.socketPath])
        XCTAssertEqual(json.stdout, "[\n\n]\n")
        XCTAssertEqual(try decodeJSON([SessionRecord].self, json.stdout), [])
        XCTAssertTrue(running.stop())
    }

    func testSessionsJSONParsesBackToTheSameRecords() throws {
        let running = try RunningServer(path: directory.socketPath)
        let result = try midctl(["sessions", "--json", "--socket", directory.socketPath])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(try decodeJSON([SessionRecord].self, result.stdout), Fixtures.sessions)
        XCTAssertTrue(result.stdout.hasPrefix("[\n  {\n    \"action\" : \"admit\",\n"), "pretty, sorted keys:\n\(result.stdout)")
        XCTAssertTrue(running.stop())
    }

    func testShow() throws {
        let running = try RunningServer(path: directory.socketPath)
        let text = try midctl(["show", "00000000000000A1", "--socket", directory.socketPath])
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertEqual(text.stdout, SessionTableFormatter.detail(Fixtures.admitted))
        let json = try midctl(["show", "00000000000000b2", "--json", "--socket", directory.socketPath])
        XCTAssertEqual(json.status, 0, json.stderr)
        XCTAssertEqual(try decodeJSON(SessionRecord.self, json.stdout), Fixtures.pending)
        XCTAssertEqual(running.requests.map(\.sessionID), ["00000000000000a1", "00000000000000b2"])
        XCTAssertTrue(running.stop())
    }

    func testShowUnknownIDExitsOne() throws {
        let running = try RunningServer(path: directory.socketPath)
        let result = try midctl(["show", "00000000000000ff", "--socket", directory.socketPath])
        XCTAssertEqual(result.status, 1)
        XCTAssertEqual(result.stdout, "")
        XCTAssertEqual(result.stderr, "midctl: no session with id 00000000000000ff\n")
        XCTAssertTrue(running.stop())
    }

    func testDeleteDryRunSendsDryRun() throws {
        let running = try RunningServer(path: directory.socketPath)
        let result = try midctl(["delete", "00000000000000a1", "--dry-run", "--socket", directory.socketPath])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(result.stdout, "would delete 00000000000000a1\n")
        XCTAssertEqual(running.requests, [ControlRequest(command: .delete, sessionID: "00000000000000a1", dryRun: true)])
        XCTAssertTrue(running.stop())
    }

    func testDeleteAndFlush() throws {
        let running = try RunningServer(path: directory.socketPath)
        let delete = try midctl(["delete", "00000000000000b2", "--socket", directory.socketPath])
        XCTAssertEqual(delete.stdout, "deleted 00000000000000b2\n")
        let flush = try midctl(["flush", "--socket", directory.socketPath])
        XCTAssertEqual(flush.stdout, "deleted 00000000000000a1\ndeleted 00000000000000b2\n2 sessions deleted\n")
        let dryFlush = try midctl(["flush", "--dry-run", "--socket", directory.socketPath])
        XCTAssertEqual(
            dryFlush.stdout, "would delete 00000000000000a1\nwould delete 00000000000000b2\n2 sessions would be deleted\n")
        XCTAssertEqual(
            running.requests,
            [
                ControlRequest(command: .delete, sessionID: "00000000000000b2"),
                ControlRequest(command: .flush), ControlRequest(command: .flush, dryRun: true),
            ])
        XCTAssertTrue(running.stop())
    }

    func testStatusJSON() throws {
        let running = try RunningServer(path: directory.socketPath)
        let result = try midctl(["status", "--json", "--socket", directory.socketPath])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(try decodeJSON(DaemonStatus.self, result.stdout), Fixtures.status)
        XCTAssertTrue(running.stop())
    }

    func testNoDaemonExitsThreeWithAClearMessage() throws {
        let result = try midctl(["sessions", "--socket", "/nonexistent/x.sock"])
        XCTAssertEqual(result.status, 3)
        XCTAssertEqual(result.stdout, "")
        XCTAssertEqual(
            result.stderr,
            "midctl: midcomd is not running: no control socket at /nonexistent/x.sock "
                + "(start it with `systemctl start midcomd`, or pass --socket)\n")
    }

    func testPermissionDeniedExitsThree() throws {
        // As root, drop to nobody for the child; as anyone else, take the permission away instead.
        let running = try RunningServer(path: directory.socketPath)
        var wrapper: [String] = []
        if geteuid() == 0 {
            let setpriv = "/usr/bin/setpriv"
            try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: setpriv), "needs setpriv to drop root")
            XCTAssertEqual(chmod(directory.path, 0o755), 0)
            wrapper = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        } else {
            XCTAssertEqual(chmod(directory.socketPath, 0o000), 0)
        }
        let result = try midctl(["status", "--socket", directory.socketPath], wrapper: wrapper)
        XCTAssertEqual(result.status, 3, result.stderr)
        XCTAssertEqual(
            result.stderr,
            "midctl: permission denied on the control socket \(directory.socketPath) "
                + "(run as root, or as a member of the socket's group)\n")
        XCTAssertEqual(running.requests, [])
        XCTAssertTrue(running.stop())
    }

    func testUsageErrorsExitTwo() throws {
        let badID = try midctl(["show", "xyz", "--socket", directory.socketPath])
        XCTAssertEqual(badID.status, 2)
        XCTAssertTrue(badID.stderr.hasPrefix("midctl: session id 'xyz' is not 16 hex digits"), badID.stderr)
        let missing = try midctl(["delete"])
        XCTAssertEqual(missing.status, 2, missing.stderr)
        let unknownOption = try midctl(["sessions", "--frobnicate"])
        XCTAssertEqual(unknownOption.status, 2, unknownOption.stderr)
    }

    func testHelpListsSubcommandsAndExitCodes() throws {
        let result = try midctl(["--help"])
        XCTAssertEqual(result.status, 0)
        for word in ["sessions", "show", "delete", "flush", "status", "--socket", "Exit status", "3  midcomd could not"] {
            XCTAssertTrue(result.stdout.contains(word), "help mentions \(word):\n\(result.stdout)")
        }
    }
}
