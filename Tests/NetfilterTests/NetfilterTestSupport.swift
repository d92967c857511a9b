import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Shared plumbing of the NetfilterTests: they run as root against the real kernel, inside `unshare -n`.
enum Host {
    struct CommandResult {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// Runs a program to completion (bounded by `timeout`), feeding `input` on stdin.
    @discardableResult
    static func run(_ arguments: [String], input: String? = nil, timeout: TimeInterval = 10) throws -> CommandResult {
        // Output goes to temporary files, read after exit: no pipe can fill up and block the child.
        let directory = FileManager.default.temporaryDirectory
        let outURL = directory.appendingPathComponent("nftest-\(getpid())-\(UInt32.random(in: 0 ..< .max)).out")
        let errURL = outURL.deletingPathExtension().appendingPathExtension("err")
        FileManager.default.createFile(atPath: outURL.path, contents: nil)
        FileManager.default.createFile(atPath: errURL.path, contents: nil)
        defer {
            try? FileManager.default.removeItem(at: outURL)
            try? FileManager.default.removeItem(at: errURL)
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let stdinPipe = Pipe()
        let outHandle = try FileHandle(forWritingTo: outURL)
        let errHandle = try FileHandle(forWritingTo: errURL)
        process.standardInput = stdinPipe
        process.standardOutput = outHandle
        process.standardError = errHandle
        try process.run()
        if let input { stdinPipe.fileHandleForWriting.write(Data(input.utf8)) }
        try stdinPipe.fileHandleForWriting.close()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(5_000) }
        if process.isRunning {
            process.terminate()
            throw TestFailure("\(arguments.joined(separator: " ")) did not finish within \(timeout) s")
        }
        process.waitUntilExit()
        try outHandle.close()
        try errHandle.close()
        return CommandResult(status: process.terminationStatus,
                             stdout: String(decoding: try Data(contentsOf: outURL), as: UTF8.self),
                             stderr: String(decoding: try Data(contentsOf: errURL), as: UTF8.self))
    }

    /// Loads an nft script (`nft -f -`) and fails with nft's own message if it is refused.
    static func nft(_ script: String) throws {
        let result = try run(["nft", "-f", "-"], input: script)
        guard result.status == 0 else { throw TestFailure("nft -f refused the script: \(result.stderr)\n\(script)") }
    }

    /// `nft -j <arguments>` decoded as JSON; returns the objects of the "nftables" array.
    static func nftJSON(_ arguments: [String]) throws -> [[String: Any]] {
        let result = try run(["nft", "-j"] + arguments)
        guard result.status == 0 else { throw TestFailure("nft -j \(arguments.joined(separator: " ")) failed: \(result.stderr)") }
        let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8))
        guard let top = object as? [String: Any], let items = top["nftables"] as? [[String: Any]] else {
            throw TestFailure("unexpected nft -j output: \(result.stdout)")
        }
        return items
    }

    /// `nft list ...` as text (stderr carries the iptables-nft warnings for compat expressions; ignored).
    static func nftList(_ arguments: [String]) throws -> String {
        let result = try run(["nft", "list"] + arguments)
        guard result.status == 0 else { throw TestFailure("nft list \(arguments.joined(separator: " ")) failed: \(result.stderr)") }
        return result.stdout
    }

    /// Packets counted by the first `counter` of a rule of `chain` whose expression list contains `marker`
    /// (matched against the JSON text of the rule).
    static func counterPackets(family: String, table: String, chain: String, ruleContaining marker: String) throws -> UInt64? {
        for item in try nftJSON(["list", "chain", family, table, chain]) {
            guard let rule = item["rule"] as? [String: Any], let expressions = rule["expr"] as? [[String: Any]] else { continue }
            let text = String(decoding: try JSONSerialization.data(withJSONObject: expressions), as: UTF8.self)
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
    static func requireRoot(file: StaticString = #filePath, line: UInt = #line) -> Bool {
        if geteuid() == 0 { return true }
        XCTFail("NetfilterTests need root: run make test as root", file: file, line: line)
        return false
    }

    /// Brings `lo` up (a fresh `unshare -n` namespace has it down).
    static func loopbackUp() throws {
        let result = try run(["ip", "link", "set", "lo", "up"])
        guard result.status == 0 else { throw TestFailure("ip link set lo up failed: \(result.stderr)") }
    }

    /// Deletes a table if it exists; used in teardown so failures do not leak tables.
    static func deleteTable(_ family: String, _ name: String) {
        _ = try? run(["nft", "delete", "table", family, name])
    }

    /// A table name unique within this test process.
    static func uniqueTableName(_ prefix: String) -> String {
        "\(prefix)_\(getpid())_\(UInt32.random(in: 0 ..< .max))"
    }

    /// Polls `condition` every 20 ms until it is true or `timeout` passes.
    static func wait(timeout: TimeInterval, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        repeat {
            if try condition() { return true }
            usleep(20_000)
        } while Date() < deadline
        return try condition()
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Bytes written as hex, for comparisons with keys the kernel reports.
func hex(_ bytes: [UInt8]) -> String {
    bytes.map { String(format: "%02x", $0) }.joined()
}
