import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Shared plumbing of the tests that run as root against the real kernel, inside `unshare -n`
/// (NetfilterTests, MidcomKernelTests).
public enum Host {
    public struct CommandResult {
        public var status: Int32
        public var stdout: String
        public var stderr: String
    }

    /// Runs a program to completion (bounded by `timeout`), feeding `input` on stdin.
    ///
    /// posix_spawn + waitpid rather than Foundation.Process: in a fresh network namespace (lo down) Foundation cannot
    /// create its CFSocket wakeup pair and Process never notices that the child exited.
    @discardableResult
    public static func run(_ arguments: [String], input: String? = nil, timeout: TimeInterval = 10) throws -> CommandResult {
        let base = "/tmp/nftest-\(getpid())-\(UInt32.random(in: 0 ..< .max))"
        let paths = (input: base + ".in", out: base + ".out", err: base + ".err")
        defer { for path in [paths.input, paths.out, paths.err] { unlink(path) } }
        guard FileManager.default.createFile(atPath: paths.input, contents: Data((input ?? "").utf8)) else {
            throw TestFailure("cannot write \(paths.input)")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, paths.input, O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, paths.out, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, paths.err, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let spawned = posix_spawnp(&pid, arguments[0], &actions, nil, &argv, environ)
        guard spawned == 0 else { throw TestFailure("cannot run \(arguments[0]): \(String(cString: strerror(spawned)))") }
        let deadline = Date().addingTimeInterval(timeout)
        var status: Int32 = 0
        while true {
            let waited = waitpid(pid, &status, WNOHANG)
            if waited == pid { break }
            if waited < 0 && errno != EINTR { throw TestFailure("waitpid: \(String(cString: strerror(errno)))") }
            if Date() > deadline {
                kill(pid, SIGKILL)
                _ = waitpid(pid, &status, 0)
                throw TestFailure("\(arguments.joined(separator: " ")) did not finish within \(timeout) s")
            }
            usleep(2_000)
        }
        let exitStatus: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return CommandResult(status: exitStatus,
                             stdout: (try? String(contentsOfFile: paths.out, encoding: .utf8)) ?? "",
                             stderr: (try? String(contentsOfFile: paths.err, encoding: .utf8)) ?? "")
    }

    /// Loads an nft script (`nft -f -`) and fails with nft's own message if it is refused.
    public static func nft(_ script: String) throws {
        let result = try run(["nft", "-f", "-"], input: script)
        guard result.status == 0 else { throw TestFailure("nft -f refused the script: \(result.stderr)\n\(script)") }
    }

    /// `nft -j <arguments>` decoded as JSON; returns the objects of the "nftables" array.
    public static func nftJSON(_ arguments: [String]) throws -> [[String: Any]] {
        let result = try run(["nft", "-j"] + arguments)
        guard result.status == 0 else { throw TestFailure("nft -j \(arguments.joined(separator: " ")) failed: \(result.stderr)") }
        let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8))
        guard let top = object as? [String: Any], let items = top["nftables"] as? [[String: Any]] else {
            throw TestFailure("unexpected nft -j output: \(result.stdout)")
        }
        return items
    }

    /// `nft list ...` as text (stderr carries the iptables-nft warnings for compat expressions; ignored).
    public static func nftList(_ arguments: [String]) throws -> String {
        let result = try run(["nft", "list"] + arguments)
        guard result.status == 0 else { throw TestFailure("nft list \(arguments.joined(separator: " ")) failed: \(result.stderr)") }
        return result.stdout
    }

    /// Packets counted by the first `counter` of a rule of `chain` whose JSON text (expressions, comment) contains
    /// `marker`.
    public static func counterPackets(family: String, table: String, chain: String, ruleContaining marker: String) throws -> UInt64? {
        for item in try nftJSON(["list", "chain", family, table, chain]) {
            guard let rule = item["rule"] as? [String: Any], let expressions = rule["expr"] as? [[String: Any]] else { continue }
            let text = String(decoding: try JSONSerialization.data(withJSONObject: rule), as: UTF8.self)
            guard text.contains(marker) else { continue }
            for expression in expressions {
                if let counter = expression["counter"] as? [String: Any], let packets = counter["packets"] as? NSNumber {
                    return packets.uint64Value
                }
            }
        }
        return nil
    }

    /// True when running as root: the tests need CAP_NET_ADMIN and must not pass silently without it.
    public static func requireRoot(file: StaticString = #filePath, line: UInt = #line) -> Bool {
        if geteuid() == 0 { return true }
        XCTFail("NetfilterTests need root: run make test as root", file: file, line: line)
        return false
    }

    /// Brings `lo` up (a fresh `unshare -n` namespace has it down).
    public static func loopbackUp() throws {
        let result = try run(["ip", "link", "set", "lo", "up"])
        guard result.status == 0 else { throw TestFailure("ip link set lo up failed: \(result.stderr)") }
    }

    /// Deletes a table if it exists; used in teardown so failures do not leak tables.
    public static func deleteTable(_ family: String, _ name: String) {
        _ = try? run(["nft", "delete", "table", family, name])
    }

    /// A table name unique within this test process.
    public static func uniqueTableName(_ prefix: String) -> String {
        "\(prefix)_\(getpid())_\(UInt32.random(in: 0 ..< .max))"
    }

    /// Polls `condition` every 20 ms until it is true or `timeout` passes.
    public static func wait(timeout: TimeInterval, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        repeat {
            if try condition() { return true }
            usleep(20_000)
        } while Date() < deadline
        return try condition()
    }
}

public struct TestFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Bytes written as hex, for comparisons with keys the kernel reports.
public func hex(_ bytes: [UInt8]) -> String {
    bytes.map { String(format: "%02x", $0) }.joined()
}
