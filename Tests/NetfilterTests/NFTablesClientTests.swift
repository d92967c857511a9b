import Foundation
import TestSupport
import XCTest

@testable import Netfilter

#if canImport(Glibc)
import Glibc
#endif

/// NFTablesClient against the real kernel: every test builds its own table with `nft -f` and deletes it afterwards.
final class NFTablesClientTests: XCTestCase {
    private var table = ""

    override func setUpWithError() throws {
        guard Host.requireRoot() else { throw XCTSkip("not root (already reported as a failure)") }
        try Host.loopbackUp()
        table = Host.uniqueTableName("nftc")
        let name = table
        addTeardownBlock { Host.deleteTable("inet", name) }
        try Host.nft("""
            table inet \(table) {
                set flows {
                    type ipv4_addr . inet_proto . inet_service . ipv4_addr . inet_service
                    flags timeout
                    counter
                }
                set marks { type mark; }
                set protos { type inet_proto; }
                set ports { type inet_service; }
                set v6 { type ipv6_addr . inet_service; }
                chain queue_here { }
            }
            """)
    }

    private func flowKey(_ source: UInt32, _ proto: UInt8, _ sourcePort: UInt16, _ destination: UInt32, _ destinationPort: UInt16) -> NFTSetKey {
        var key = NFTSetKey()
        key.append(ipv4: source)
        key.append(proto: proto)
        key.append(port: sourcePort)
        key.append(ipv4: destination)
        key.append(port: destinationPort)
        return key
    }

    // MARK: Keys

    /// Elements added by `nft` itself come back with exactly the bytes NFTSetKey builds.
    func testSetKeyBytesMatchWhatNftProduces() throws {
        try Host.nft("""
            add element inet \(table) flows { 10.0.0.1 . udp . 1234 . 192.168.1.2 . 80 timeout 60s }
            add element inet \(table) marks { 0x4d430001 }
            add element inet \(table) protos { tcp }
            add element inet \(table) ports { 443 }
            add element inet \(table) v6 { 2001:db8::1 . 53 }
            """)
        let client = try NFTablesClient()

        let flow = flowKey(0x0a00_0001, 17, 1234, 0xc0a8_0102, 80)
        // 0a000001 | 11 000000 | 04d2 0000 | c0a80102 | 0050 0000: every field padded to a 4-byte register
        XCTAssertEqual(hex(flow.bytes), "0a000001" + "11000000" + "04d20000" + "c0a80102" + "00500000")
        XCTAssertEqual(try client.listElements(table: table, set: "flows").map(\.key), [flow.bytes])

        var mark = NFTSetKey()
        mark.append(mark: 0x4d43_0001)
        XCTAssertEqual(try client.listElements(table: table, set: "marks").map(\.key), [mark.bytes])

        var proto = NFTSetKey()
        proto.append(proto: 6)
        XCTAssertEqual(proto.bytes, [6], "a single inet_proto is one byte, not a padded register")
        XCTAssertEqual(try client.listElements(table: table, set: "protos").map(\.key), [proto.bytes])

        var port = NFTSetKey()
        port.append(port: 443)
        XCTAssertEqual(port.bytes, [0x01, 0xbb])
        XCTAssertEqual(try client.listElements(table: table, set: "ports").map(\.key), [port.bytes])

        var v6 = NFTSetKey()
        v6.append(ipv6: [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [1])
        v6.append(port: 53)
        XCTAssertEqual(try client.listElements(table: table, set: "v6").map(\.key), [v6.bytes])
    }

    // MARK: Elements

    func testAddListAndDeleteElementsWithTimeouts() throws {
        let client = try NFTablesClient()
        let first = flowKey(0x0a00_0001, 17, 5000, 0x0a00_0002, 53)
        let second = flowKey(0x0a00_0003, 6, 40000, 0x0a00_0004, 443)
        var changes = NFTChangeSet(table: table)
        changes.addElement(set: "flows", key: first, timeout: .seconds(60))
        changes.addElement(set: "flows", key: second, timeout: .seconds(30))
        XCTAssertEqual(changes.count, 2)
        try client.apply(changes)

        let listed = try client.listElements(table: table, set: "flows").sorted { hex($0.key) < hex($1.key) }
        XCTAssertEqual(listed.map(\.key), [first.bytes, second.bytes])
        XCTAssertEqual(listed.map(\.timeout), [.seconds(60), .seconds(30)])
        for (element, timeout) in zip(listed, [Duration.seconds(60), .seconds(30)]) {
            let expiresIn = try XCTUnwrap(element.expiresIn)
            XCTAssertTrue(expiresIn <= timeout && expiresIn > timeout - .seconds(5), "expiresIn \(expiresIn) for timeout \(timeout)")
            XCTAssertEqual(element.packets, 0, "the set is declared with `counter`")
            XCTAssertEqual(element.bytes, 0)
        }

        // nft sees the same elements.
        let json = try Host.nftJSON(["list", "set", "inet", table, "flows"])
        let set = try XCTUnwrap(json.compactMap { $0["set"] as? [String: Any] }.first)
        let elements = try XCTUnwrap(set["elem"] as? [[String: Any]])
        let rendered = elements.map { item -> String in
            let element = item["elem"] as? [String: Any]
            let fields = ((element?["val"] as? [String: Any])?["concat"] as? [Any]) ?? []
            return fields.map { "\($0)" }.joined(separator: " . ") + " timeout \(element?["timeout"] ?? "none")"
        }.sorted()
        XCTAssertEqual(rendered, ["10.0.0.1 . udp . 5000 . 10.0.0.2 . 53 timeout 60",
                                  "10.0.0.3 . tcp . 40000 . 10.0.0.4 . 443 timeout 30"])

        // Re-adding an element sets its new timeout.
        var refresh = NFTChangeSet(table: table)
        refresh.addElement(set: "flows", key: second, timeout: .seconds(120))
        try client.apply(refresh)
        XCTAssertEqual(try client.listElements(table: table, set: "flows").first { $0.key == second.bytes }?.timeout, .seconds(120))

        // Deleting removes exactly one.
        var delete = NFTChangeSet(table: table)
        delete.deleteElement(set: "flows", key: first)
        try client.apply(delete)
        XCTAssertEqual(try client.listElements(table: table, set: "flows").map(\.key), [second.bytes])

        var flush = NFTChangeSet(table: table)
        flush.flushSet("flows")
        try client.apply(flush)
        XCTAssertEqual(try client.listElements(table: table, set: "flows"), [])

        try client.apply(NFTChangeSet(table: table))  // empty: nothing sent, no error
    }

    /// One element by key (no dump): present with its timeout and counters, nil when absent.
    func testGetOneElement() throws {
        let client = try NFTablesClient()
        let key = flowKey(0x0a00_0001, 17, 5000, 0x0a00_0002, 53)
        var changes = NFTChangeSet(table: table)
        changes.addElement(set: "flows", key: key, timeout: .seconds(60))
        try client.apply(changes)
        let element = try XCTUnwrap(try client.element(table: table, set: "flows", key: key))
        XCTAssertEqual(element.key, key.bytes)
        XCTAssertEqual(element.timeout, .seconds(60))
        XCTAssertEqual(element.packets, 0)
        XCTAssertNil(try client.element(table: table, set: "flows", key: flowKey(0x0a00_0009, 17, 1, 0x0a00_0002, 53)))
        XCTAssertNil(try client.element(table: table, set: "no_such_set", key: key))
    }

    func testOneSecondTimeoutExpires() throws {
        let client = try NFTablesClient()
        var changes = NFTChangeSet(table: table)
        changes.addElement(set: "flows", key: flowKey(0x0a00_0001, 17, 1, 0x0a00_0002, 2), timeout: .seconds(1))
        let start = Date()
        try client.apply(changes)
        XCTAssertEqual(try client.listElements(table: table, set: "flows").count, 1)
        let expired = try Host.wait(timeout: 6) { try client.listElements(table: table, set: "flows").isEmpty }
        XCTAssertTrue(expired, "the element did not expire within 6 s")
        XCTAssertGreaterThan(Date().timeIntervalSince(start), 0.9)
    }

    func testMissingSetOrTableIsNamedInTheError() throws {
        let client = try NFTablesClient()
        var changes = NFTChangeSet(table: table)
        changes.addElement(set: "nosuchset", key: flowKey(1, 17, 1, 2, 2), timeout: .seconds(5))
        XCTAssertThrowsError(try client.apply(changes)) { error in
            let error = error as! NetfilterError
            XCTAssertEqual(error.errno, ENOENT)
            XCTAssertEqual(error.operation, "NFT_MSG_NEWSETELEM")
            XCTAssertTrue(error.description.contains("set nosuchset does not exist: load nft-rules/midcom.nft first"), error.description)
            XCTAssertTrue(error.description.contains("element 00000001110000000001000000000002"), error.description)
        }
        XCTAssertThrowsError(try client.listElements(table: "nosuchtable", set: "flows")) { error in
            XCTAssertTrue("\(error)".contains("table inet nosuchtable or set flows does not exist"), "\(error)")
        }
        XCTAssertTrue(try client.tableExists(table: table))
        XCTAssertFalse(try client.tableExists(table: "nosuchtable"))
        XCTAssertFalse(try client.tableExists(family: .ipv4, table: table))
    }

    /// One bad element fails the whole batch: nothing is added, and the error names the bad element.
    func testBatchWithOneBadElementFailsWhole() throws {
        let client = try NFTablesClient()
        var bad = NFTSetKey()
        bad.append(raw: [0xde, 0xad, 0xbe])  // 3 bytes for a 20-byte key
        var changes = NFTChangeSet(table: table)
        changes.addElement(set: "flows", key: flowKey(0x0a00_0001, 17, 1, 0x0a00_0002, 2), timeout: .seconds(60))
        changes.addElement(set: "flows", key: bad, timeout: .seconds(60))
        changes.addElement(set: "flows", key: flowKey(0x0a00_0003, 17, 1, 0x0a00_0004, 2), timeout: .seconds(60))
        XCTAssertThrowsError(try client.apply(changes)) { error in
            let error = error as! NetfilterError
            XCTAssertEqual(error.errno, EINVAL)
            XCTAssertTrue(error.object.hasSuffix("set inet \(table) flows, element deadbe"), error.description)
        }
        XCTAssertEqual(try client.listElements(table: table, set: "flows"), [])

        // Deleting an element that is not there also fails whole.
        var delete = NFTChangeSet(table: table)
        delete.deleteElement(set: "flows", key: flowKey(9, 17, 9, 9, 9))
        XCTAssertThrowsError(try client.apply(delete)) { error in
            XCTAssertEqual((error as! NetfilterError).errno, ENOENT)
            XCTAssertTrue("\(error)".contains("may have timed out"), "\(error)")
        }
    }

    /// The change set `apply(table:building:)` keeps between transactions starts empty each time:
    /// a failed transaction's elements (its error still describes them) are neither in the kernel
    /// nor in the next transaction, which holds exactly what its own build wrote.
    func testReusedChangeSetCarriesNothingOver() throws {
        let client = try NFTablesClient()
        var bad = NFTSetKey()
        bad.append(raw: [0xde, 0xad, 0xbe])  // 3 bytes for a 20-byte key
        let first = flowKey(0x0a00_0001, 17, 1, 0x0a00_0002, 2)
        let second = flowKey(0x0a00_0003, 17, 3, 0x0a00_0004, 4)
        var failure: NetfilterError?
        do {
            try client.apply(table: table) { changes in
                changes.addElement(set: "flows", key: first, timeoutSeconds: 60)
                changes.addElement(set: "flows", key: bad, timeoutSeconds: 60)
            }
        } catch {
            failure = error
        }
        XCTAssertEqual(failure?.errno, EINVAL)
        XCTAssertTrue(failure?.object.hasSuffix("set inet \(table) flows, element deadbe") ?? false, "\(String(describing: failure))")
        XCTAssertEqual(try client.listElements(table: table, set: "flows"), [])

        var seen = -1
        try client.apply(table: table) { changes in
            seen = changes.count
            changes.addElement(set: "flows", key: second, timeoutSeconds: 60)
        }
        XCTAssertEqual(seen, 0, "the reused change set must start empty")
        XCTAssertEqual(try client.listElements(table: table, set: "flows").map(\.key), [second.bytes])
        // The error was described when it was thrown: handing the storage on changed nothing in it.
        XCTAssertTrue(failure?.object.hasSuffix("element deadbe") ?? false)

        // An empty build sends nothing and changes nothing.
        try client.apply(table: table) { _ in }
        XCTAssertEqual(try client.listElements(table: table, set: "flows").count, 1)

        // A burst's storage is kept; a transaction larger than the limit gives its storage back.
        XCTAssertGreaterThan(client.reusableCapacity, 0)
        try client.apply(table: table) { changes in
            for index in 0..<UInt32(NFTablesClient.reusableOperationsLimit + 1) {
                changes.addElement(set: "flows", key: flowKey(0x0b00_0000 | index, 17, 5, 0x0a00_0004, 6), timeoutSeconds: 60)
            }
        }
        XCTAssertEqual(try client.listElements(table: table, set: "flows").count, NFTablesClient.reusableOperationsLimit + 2)
        XCTAssertEqual(client.reusableCapacity, 0, "a large transaction's storage is not held")
    }

    /// The error names the element the kernel refused, also deep in a large batch (the encoder keeps no
    /// description per element: the message is found again from the sequence number), and the
    /// client's reused buffer carries nothing over into the next transaction.
    func testErrorDeepInALargeBatchNamesThatElement() throws {
        let client = try NFTablesClient()
        var bad = NFTSetKey()
        bad.append(raw: [0xba, 0xd0, 0x07])  // 3 bytes for a 20-byte key
        var changes = NFTChangeSet(table: table)
        for index in 0 ..< 1000 {
            if index == 700 { changes.addElement(set: "flows", key: bad, timeout: .seconds(60)) }
            changes.addElement(set: "flows", key: flowKey(0x0a00_0000 | UInt32(index), 17, 1, 0x0a01_0000, 53), timeout: .seconds(60))
        }
        XCTAssertThrowsError(try client.apply(changes)) { error in
            let error = error as! NetfilterError
            XCTAssertEqual(error.errno, EINVAL)
            XCTAssertEqual(error.operation, "NFT_MSG_NEWSETELEM")
            XCTAssertEqual(error.object, "set inet \(table) flows, element bad007")
            XCTAssertTrue(error.description.contains("the 3-byte key or its data does not match the type of set flows"), error.description)
        }
        XCTAssertEqual(try client.listElements(table: table, set: "flows"), [], "nothing of the failed batch was applied")

        // A missing element among good ones: its delete is named, with the hint for ENOENT.
        var mixed = NFTChangeSet(table: table)
        mixed.addElement(set: "flows", key: flowKey(0x0a00_0001, 17, 1, 0x0a01_0000, 53), timeout: .seconds(60))
        mixed.deleteElement(set: "flows", key: flowKey(0x0a00_0002, 17, 2, 0x0a01_0000, 53))
        mixed.addElement(set: "flows", key: flowKey(0x0a00_0003, 17, 3, 0x0a01_0000, 53), timeout: .seconds(60))
        XCTAssertThrowsError(try client.apply(mixed)) { error in
            let error = error as! NetfilterError
            XCTAssertEqual(error.errno, ENOENT)
            XCTAssertEqual(error.operation, "NFT_MSG_DELSETELEM")
            XCTAssertEqual(error.object, "set inet \(table) flows, element " + "0a000002" + "11000000" + "00020000" + "0a010000" + "00350000")
            XCTAssertTrue(error.description.contains("the element is not in the set (it may have timed out already)"), error.description)
        }

        // The same client, right after: a good batch goes through whole.
        var good = NFTChangeSet(table: table)
        good.addElement(set: "flows", key: flowKey(0x0a00_0001, 17, 1, 0x0a01_0000, 53), timeout: .seconds(60), comment: "after")
        try client.apply(good)
        XCTAssertEqual(try client.listElements(table: table, set: "flows").map(\.comment), ["after"])
    }

    func testLargeBatch() throws {
        let client = try NFTablesClient()
        var changes = NFTChangeSet(table: table)
        for index in 0 ..< 5000 {
            changes.addElement(set: "flows", key: flowKey(0x0a00_0000 | UInt32(index), 17, UInt16(index), 0x0a01_0000, 53), timeout: .seconds(60))
        }
        try client.apply(changes)
        XCTAssertEqual(try client.listElements(table: table, set: "flows").count, 5000)
    }

    // MARK: Queue rules

    /// Whether this kernel has the native `queue` expression, decided by asking nft.
    private func kernelHasNativeQueue() throws -> Bool {
        try Host.nft("add chain inet \(table) probe")
        return try Host.run(["nft", "add", "rule", "inet", table, "probe", "queue", "num", "0"]).status == 0
    }

    private func rules(in chain: String) throws -> [[String: Any]] {
        try Host.nftJSON(["list", "chain", "inet", table, chain]).compactMap { $0["rule"] as? [String: Any] }
    }

    func testAutoQueueRuleFallsBackToCompatAndReplacesTheChain() throws {
        let native = try kernelHasNativeQueue()
        let client = try NFTablesClient()
        let spec = QueueRuleSpec(queueNumber: 3, bypass: true)
        XCTAssertEqual(try client.installQueueRule(table: table, chain: "queue_here", spec: spec, encoding: .auto),
                       native ? .native : .compat)
        XCTAssertEqual(try client.installQueueRule(table: table, chain: "queue_here", spec: spec, encoding: .auto),
                       native ? .native : .compat)
        XCTAssertEqual(try rules(in: "queue_here").count, 1, "installing twice leaves exactly one rule")
        XCTAssertTrue(try Host.nftList(["chain", "inet", table, "queue_here"]).contains("queue num 3 bypass"))

        try client.flushChain(table: table, chain: "queue_here")
        XCTAssertEqual(try rules(in: "queue_here").count, 0)
    }

    func testNativeQueueRuleFailsClearlyWhenTheKernelLacksIt() throws {
        let native = try kernelHasNativeQueue()
        let client = try NFTablesClient()
        let spec = QueueRuleSpec(queueNumber: 0)
        if native {
            XCTAssertEqual(try client.installQueueRule(table: table, chain: "queue_here", spec: spec, encoding: .native), .native)
        } else {
            XCTAssertThrowsError(try client.installQueueRule(table: table, chain: "queue_here", spec: spec, encoding: .native)) { error in
                let error = error as! NetfilterError
                XCTAssertTrue(error.description.contains("this kernel has no nft queue expression (nft_queue); use the compat encoding"),
                              error.description)
                XCTAssertTrue(error.object.contains("queue_here"), error.description)
            }
        }
    }

    func testCompatQueueRuleWithFanout() throws {
        let client = try NFTablesClient()
        XCTAssertEqual(try client.installQueueRule(table: table, chain: "queue_here",
                                                   spec: QueueRuleSpec(queueNumber: 10, queueCount: 4, bypass: true),
                                                   encoding: .compat), .compat)
        XCTAssertTrue(try Host.nftList(["chain", "inet", table, "queue_here"]).contains("queue num 10-13 bypass"))
        XCTAssertEqual(try client.installQueueRule(table: table, chain: "queue_here",
                                                   spec: QueueRuleSpec(queueNumber: 7, queueCount: 2, cpuFanout: true),
                                                   encoding: .compat), .compat)
        let listing = try Host.nftList(["chain", "inet", table, "queue_here"])
        XCTAssertTrue(listing.contains("queue num 7-8 fanout"), listing)
        XCTAssertEqual(try rules(in: "queue_here").count, 1)
    }

    func testQueueRuleIntoMissingChainNamesTheChain() throws {
        let client = try NFTablesClient()
        XCTAssertThrowsError(try client.installQueueRule(table: table, chain: "nochain", spec: QueueRuleSpec(queueNumber: 0), encoding: .compat)) { error in
            XCTAssertTrue("\(error)".contains("table inet \(table) or chain nochain does not exist"), "\(error)")
        }
    }
}
