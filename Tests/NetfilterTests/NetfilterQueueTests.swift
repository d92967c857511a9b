import Foundation
import Synchronization
import TestSupport
import XCTest

@testable import Netfilter

#if canImport(Glibc)
import Glibc
#endif

/// NetfilterQueue end to end: UDP to 127.0.0.1 is queued by an `output` hook chain of a test table, the reader
/// decides, and a UDP socket shows what got through. A later chain counts packets (and marks) that were accepted.
final class NetfilterQueueTests: XCTestCase {
    private static let mark: UInt32 = 0x4d43_0001
    private var table = ""
    private var receiver: Int32 = -1
    private var sender: Int32 = -1
    private var port: UInt16 = 0
    private var queueNumber: UInt16 = 0

    override func setUpWithError() throws {
        guard Host.requireRoot() else { throw XCTSkip("not root (already reported as a failure)") }
        try Host.loopbackUp()
        table = Host.uniqueTableName("nfq")
        queueNumber = UInt16.random(in: 1000 ..< 60000)
        receiver = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        sender = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        XCTAssertGreaterThanOrEqual(receiver, 0)
        XCTAssertGreaterThanOrEqual(sender, 0)
        var address = Self.loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(receiver, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        XCTAssertEqual(bound, 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(receiver, $0, &length) }
        }
        port = UInt16(bigEndian: address.sin_port)
        let (name, receiverFD, senderFD) = (table, receiver, sender)
        addTeardownBlock {
            Host.deleteTable("inet", name)
            close(receiverFD)
            close(senderFD)
        }
        try Host.nft("""
            table inet \(table) {
                chain out {
                    type filter hook output priority 0; policy accept;
                    ip daddr 127.0.0.1 udp dport \(port) jump to_queue
                }
                chain to_queue { }
                chain after {
                    type filter hook output priority 10; policy accept;
                    udp dport \(port) meta mark \(String(format: "0x%08x", Self.mark)) counter
                    udp dport \(port) counter comment "all"
                }
            }
            """)
    }

    // MARK: Helpers

    /// Packet ids the handler saw, handed to beforeVerdicts; shared between the two closures.
    final class IDLog: Sendable {
        private let entries = Mutex<[(id: UInt32, index: UInt8)]>([])
        private let leak = Mutex(false)
        func append(id: UInt32, index: UInt8) { entries.withLock { $0.append((id, index)) } }
        func drain() -> [(id: UInt32, index: UInt8)] { entries.withLock { list in defer { list = [] }; return list } }
        func leaked() { leak.withLock { $0 = true } }
        var didLeak: Bool { leak.withLock { $0 } }
    }

    private static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        return address
    }

    private func send(_ bytes: [UInt8]) {
        var address = Self.loopback(port: port)
        let sent = bytes.withUnsafeBytes { buffer in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(sender, buffer.baseAddress, buffer.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        XCTAssertEqual(sent, bytes.count)
    }

    /// Datagrams that reach the receiver until `count` arrived or `timeout` passed, then `grace` more to catch extras.
    private func receive(count: Int, timeout: TimeInterval, grace: TimeInterval = 0.2) -> [[UInt8]] {
        var datagrams: [[UInt8]] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        var deadline = Date().addingTimeInterval(timeout)
        var graceStarted = false
        while true {
            let remaining = deadline.timeIntervalSinceNow
            if remaining <= 0 {
                if graceStarted || datagrams.count < count { break }
                graceStarted = true
                deadline = Date().addingTimeInterval(grace)
                continue
            }
            var descriptor = pollfd(fd: receiver, events: Int16(POLLIN), revents: 0)
            if poll(&descriptor, 1, Int32(max(1, remaining * 1000))) <= 0 { continue }
            let length = buffer.withUnsafeMutableBytes { recv(receiver, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if length >= 0 { datagrams.append(Array(buffer[0 ..< length])) }
            if datagrams.count >= count && !graceStarted {
                graceStarted = true
                deadline = Date().addingTimeInterval(grace)
            }
        }
        return datagrams
    }

    private func installQueueRule(bypass: Bool = false) throws {
        let client = try NFTablesClient()
        try client.installQueueRule(table: table, chain: "to_queue", spec: QueueRuleSpec(queueNumber: queueNumber, bypass: bypass))
    }

    /// Runs `queue` on its own thread; returns a function that stops it and waits (bounded) for run() to return,
    /// giving how long that took.
    private func start(_ queue: NetfilterQueue, tickInterval: Duration = .milliseconds(500), ticks: Counter? = nil,
                       beforeVerdicts: @escaping @Sendable () -> [(id: UInt32, verdict: Verdict)] = { [] },
                       handler: @escaping @Sendable (borrowing QueuedPacket) -> Verdict) -> () -> TimeInterval {
        // Weak everywhere but during run(): a test may release the queue to unbind it.
        let reference = WeakQueue(queue)
        return runOnThread(stopping: "stop()", stop: { reference.queue?.stop() }) {
            guard let queue = reference.queue else { return }
            try queue.run(tickInterval: tickInterval, tick: { ticks?.increment() }, beforeVerdicts: beforeVerdicts, handler: handler)
        }
    }

    /// Runs `body` (a reader's run loop) on a thread of its own; returns a function that calls
    /// `stop`, waits (bounded) for `body` to return and gives how long that took. Teardown calls it
    /// too, so no reader outlives its test.
    private func runOnThread(stopping what: String, stop: @escaping () -> Void,
                             _ body: @escaping @Sendable () throws -> Void) -> () -> TimeInterval {
        let finished = DispatchSemaphore(value: 0)
        let failure = Failure()
        let thread = Thread {
            do {
                try body()
            } catch {
                failure.record("\(error)")
            }
            finished.signal()
        }
        thread.start()
        var stopped = false
        let stopAndJoin = { () -> TimeInterval in
            if stopped { return 0 }
            stopped = true
            let start = Date()
            stop()
            let joined = finished.wait(timeout: .now() + 5) == .success
            XCTAssertTrue(joined, "run() did not return within 5 s of \(what)")
            if let message = failure.message { XCTFail("run() threw: \(message)") }
            return Date().timeIntervalSince(start)
        }
        addTeardownBlock { _ = stopAndJoin() }
        return stopAndJoin
    }

    /// Two queues on one thread: the queue rule for `queueNumber`, then a rule sending every
    /// datagram whose first payload byte is odd to queue `second` instead.
    private func installQueueRules(oddPayloadsTo second: UInt16) throws {
        try installQueueRule()
        try Host.nft("""
            add chain inet \(table) to_queue_b
            insert rule inet \(table) out ip daddr 127.0.0.1 udp dport \(port) @th,64,8 & 0x1 == 0x1 jump to_queue_b
            """)
        let client = try NFTablesClient()
        try client.installQueueRule(table: table, chain: "to_queue_b", spec: QueueRuleSpec(queueNumber: second))
    }

    /// Runs `queues` on one thread (`NetfilterQueue.run(_:)`); returns a function that stops the
    /// last of them and waits (bounded) for run() to return, giving how long that took.
    private func start(_ queues: [NetfilterQueue],
                       beforeVerdicts: @escaping @Sendable () -> [(id: UInt32, verdict: Verdict)] = { [] },
                       handler: @escaping @Sendable (borrowing QueuedPacket) -> Verdict) -> () -> TimeInterval {
        runOnThread(stopping: "stopping one of its queues", stop: { queues.last?.stop() }) {
            try NetfilterQueue.run(queues, beforeVerdicts: beforeVerdicts, handler: handler)
        }
    }

    /// Byte `index` of the UDP payload of an IPv4 packet.
    private static func udpPayloadByte(_ packet: UnsafeRawBufferPointer, _ index: Int = 0) -> UInt8? {
        guard packet.count >= 20, packet[0] >> 4 == 4 else { return nil }
        let offset = Int(packet[0] & 0x0f) * 4 + 8 + index
        return offset < packet.count ? packet[offset] : nil
    }

    // MARK: Tests

    func testAcceptsEvenDropsOddAndCountsThem() throws {
        let queue = try NetfilterQueue(QueueConfiguration(queueNumber: queueNumber))
        try installQueueRule()
        let stop = start(queue) { packet in
            guard packet.hwProtocol == 0x0800, let index = Self.udpPayloadByte(packet.payload) else { return .accept }
            return index % 2 == 0 ? .accept : .drop
        }
        let statistics = try XCTUnwrap(NetfilterQueue.kernelStatistics(queueNumber: queueNumber))
        XCTAssertEqual(statistics.copyRange, 0xffff - 4, "the kernel caps the copy range at 0xffff - NLA_HDRLEN")
        XCTAssertNotEqual(statistics.portID, 0)

        for index in 0 ..< 50 { send([UInt8(index), 0xaa, 0xbb]) }
        let received = receive(count: 25, timeout: 5)
        XCTAssertEqual(received.map { $0[0] }, Array(stride(from: 0, to: 50, by: 2)).map(UInt8.init))

        XCTAssertTrue(Host.wait(timeout: 2) { queue.counters.received == 50 }, "counters: \(queue.counters)")
        var expected = QueueCounters()
        expected.received = 50
        expected.accepted = 25
        expected.dropped = 25
        expected.verdictMessages = 50  // alternating verdicts cannot be batched
        XCTAssertEqual(queue.counters, expected)
        XCTAssertEqual(try Host.counterPackets(family: "inet", table: table, chain: "after", ruleContaining: "all"), 25)
        XCTAssertEqual(NetfilterQueue.kernelStatistics(queueNumber: queueNumber)?.queueTotal, 0, "no packet left without a verdict")

        let stopTime = stop()
        XCTAssertLessThan(stopTime, 1.0, "stop() must wake run() promptly")
    }

    /// The hook runs after a burst was handled and before any of its packets is let through, and it
    /// can replace verdicts: here every odd packet the handler accepted is turned into a drop.
    func testBeforeVerdictsSeesTheBurstFirstAndCanOverride() throws {
        let queue = try NetfilterQueue(QueueConfiguration(queueNumber: queueNumber))
        try installQueueRule()
        let seen = IDLog()
        let receiver = self.receiver
        _ = start(queue, beforeVerdicts: {
            // Nothing of this burst may have been delivered yet.
            var byte: UInt8 = 0
            if recv(receiver, &byte, 1, Int32(MSG_DONTWAIT | MSG_PEEK)) >= 0 { seen.leaked() }
            return seen.drain().filter { $0.index % 2 == 1 }.map { ($0.id, Verdict.drop) }
        }) { packet in
            guard packet.hwProtocol == 0x0800, let index = Self.udpPayloadByte(packet.payload) else { return .accept }
            seen.append(id: packet.id, index: index)
            return .accept(mark: 0x4d430001)
        }
        for index in 0 ..< 20 { send([UInt8(index)]) }
        let received = receive(count: 10, timeout: 5)
        XCTAssertEqual(received.map { $0[0] }, Array(stride(from: 0, to: 20, by: 2)).map(UInt8.init))
        XCTAssertFalse(seen.didLeak, "a packet was delivered before beforeVerdicts ran for its burst")
        XCTAssertTrue(Host.wait(timeout: 2) { queue.counters.dropped == 10 }, "counters: \(queue.counters)")
        XCTAssertEqual(NetfilterQueue.kernelStatistics(queueNumber: queueNumber)?.queueTotal, 0, "no packet left without a verdict")
    }

    func testAcceptWithMarkIsVisibleToLaterRules() throws {
        let queue = try NetfilterQueue(QueueConfiguration(queueNumber: queueNumber))
        try installQueueRule()
        let stop = start(queue) { _ in .accept(mark: Self.mark) }
        for index in 0 ..< 5 { send([UInt8(index)]) }
        XCTAssertEqual(receive(count: 5, timeout: 5).count, 5)
        XCTAssertEqual(try Host.counterPackets(family: "inet", table: table, chain: "after", ruleContaining: "mark"), 5)
        _ = stop()
    }

    func testReplacingThePayload() throws {
        let queue = try NetfilterQueue(QueueConfiguration(queueNumber: queueNumber))
        try installQueueRule()
        let replacement = Array("replaced by midcom".utf8)
        let stop = start(queue) { packet in
            let original = Array(packet.payload)
            return .accept(mark: nil, replacingPayloadWith: Self.ipv4UDP(original, withPayload: replacement))
        }
        send(Array("original".utf8))
        XCTAssertEqual(receive(count: 1, timeout: 5), [replacement])
        _ = stop()
        XCTAssertEqual(queue.counters.modified, 1)
    }

    /// Packets queued before the reader starts arrive as one burst: plain, marked and rewritten
    /// verdicts mixed leave in one datagram of verdict messages, and every packet gets its own.
    /// 200 packets: more than the loop's first storage for held verdicts (64), which grows twice
    /// while holding rewritten payloads, and an override lands on a verdict held after the growth.
    func testMixedVerdictsOfOneBurstAllApplyInOrder() throws {
        let queue = try NetfilterQueue(QueueConfiguration(queueNumber: queueNumber))
        try installQueueRule()
        let total = 200
        let overridden: UInt8 = 161  // accepted with a mark by the handler, dropped by beforeVerdicts
        for index in 0 ..< total { send([UInt8(index), 0x01]) }
        let seen = IDLog()
        let stop = start(queue, beforeVerdicts: {
            seen.drain().filter { $0.index == overridden }.map { ($0.id, Verdict.drop) }
        }) { packet in
            guard packet.hwProtocol == 0x0800, let index = Self.udpPayloadByte(packet.payload) else { return .accept }
            seen.append(id: packet.id, index: index)
            switch index % 4 {
            case 0: return .accept
            case 1: return .accept(mark: Self.mark)
            case 2: return .drop
            default:
                return .accept(mark: nil, replacingPayloadWith: Self.ipv4UDP(Array(packet.payload), withPayload: [index, 0x02, 0x03]))
            }
        }
        let kept = (0 ..< total).filter { $0 % 4 != 2 && $0 != Int(overridden) }.map { UInt8($0) }
        let received = receive(count: kept.count, timeout: 5)
        XCTAssertEqual(received.map { $0[0] }, kept)
        XCTAssertEqual(received.filter { $0[0] % 4 == 3 }.map { $0 }, (0 ..< total / 4).map { [UInt8($0 * 4 + 3), 0x02, 0x03] },
                       "rewritten payloads arrived intact")
        XCTAssertEqual(NetfilterQueue.kernelStatistics(queueNumber: queueNumber)?.queueTotal, 0, "no packet left without a verdict")
        _ = stop()
        XCTAssertEqual(queue.counters.received, UInt64(total))
        XCTAssertEqual(queue.counters.modified, UInt64(total / 4))
        XCTAssertEqual(queue.counters.dropped, UInt64(total / 4 + 1))
        XCTAssertEqual(queue.counters.verdictErrors, 0)
    }

    func testTickRunsWhileIdleAndStopIsPrompt() throws {
        let queue = try NetfilterQueue(QueueConfiguration(queueNumber: queueNumber))
        let ticks = Counter()
        let stop = start(queue, tickInterval: .milliseconds(50), ticks: ticks) { _ in .accept }
        usleep(600_000)
        XCTAssertGreaterThanOrEqual(ticks.value, 5, "tick must run at least every tickInterval while idle")
        XCTAssertLessThan(stop(), 0.5)
    }

    /// With the reader gone, a `bypass` rule lets packets continue; without bypass they are dropped.
    func testBypassWhenNoReaderIsBound() throws {
        do {
            let queue = try NetfilterQueue(QueueConfiguration(queueNumber: queueNumber))
            try installQueueRule(bypass: true)
            let stop = start(queue) { _ in .accept }
            _ = stop()
        }  // the queue is released here: socket closed, queue unbound
        XCTAssertNil(NetfilterQueue.kernelStatistics(queueNumber: queueNumber))
        for index in 0 ..< 3 { send([UInt8(index)]) }
        XCTAssertEqual(receive(count: 3, timeout: 3).count, 3)
        XCTAssertEqual(try Host.counterPackets(family: "inet", table: table, chain: "after", ruleContaining: "all"), 3)

        try installQueueRule(bypass: false)
        send([9])
        XCTAssertEqual(receive(count: 1, timeout: 0.5).count, 0, "without bypass an unbound queue drops")
    }

    /// A socket buffer too small for the burst: the kernel reports ENOBUFS (counted), and with fail-open it accepts
    /// what it could not deliver.
    func testENOBUFSIsCountedAndFailOpenAccepts() throws {
        var configuration = QueueConfiguration(queueNumber: queueNumber)
        configuration.receiveBufferBytes = 1  // the kernel rounds this up to its minimum: a few packets
        configuration.failOpen = true
        let queue = try NetfilterQueue(configuration)
        try installQueueRule()
        for index in 0 ..< 50 { send([UInt8(index)]) }  // nobody reads yet
        let stop = start(queue) { _ in .accept }
        XCTAssertEqual(Set(receive(count: 50, timeout: 5).map { $0[0] }).count, 50, "every packet gets through")
        XCTAssertTrue(Host.wait(timeout: 2) { queue.counters.enobufs >= 1 }, "counters: \(queue.counters)")
        XCTAssertLessThan(queue.counters.received, 50)
        XCTAssertGreaterThan(queue.counters.received, 0)
        // The packets that waited in the socket are accepted by batch verdicts.
        XCTAssertLessThan(queue.counters.verdictMessages, queue.counters.received, "counters: \(queue.counters)")
        XCTAssertEqual(NetfilterQueue.kernelStatistics(queueNumber: queueNumber)?.queueTotal, 0)
        // user_dropped stays 0: with fail-open the kernel accepts what it cannot deliver instead of dropping it.
        XCTAssertEqual(NetfilterQueue.kernelStatistics(queueNumber: queueNumber)?.userDropped, 0)
        _ = stop()
    }

    /// Two queues read by one thread (midcomd on one CPU reads its unproved and its proved queue so):
    /// odd payloads go to the second queue. Each queue's burst is released on its own — packet ids
    /// are per queue (both start at 1), so an override by id must reach only its own queue's packet
    /// — and stopping either queue ends the loop.
    func testOneThreadReadsTwoQueuesAndReleasesEachBurstAlone() throws {
        let second = queueNumber &+ 1
        let first = try NetfilterQueue(QueueConfiguration(queueNumber: queueNumber))
        let other = try NetfilterQueue(QueueConfiguration(queueNumber: second))
        try installQueueRules(oddPayloadsTo: second)

        let seen = IDLog()
        let mixed = Counter()
        let stopAndJoin = start([first, other], beforeVerdicts: {
            let burst = seen.drain()
            // One queue's burst: all even or all odd.
            if Set(burst.map { $0.index % 2 }).count > 1 { mixed.increment() }
            return burst.filter { $0.index % 4 == 1 }.map { ($0.id, Verdict.drop) }
        }) { packet in
            guard packet.hwProtocol == 0x0800, let index = Self.udpPayloadByte(packet.payload) else { return .accept }
            seen.append(id: packet.id, index: index)
            return .accept
        }

        for index in 0 ..< 40 { send([UInt8(index)]) }
        let received = receive(count: 30, timeout: 5)
        XCTAssertEqual(received.map { $0[0] }.sorted(), (0 ..< 40).filter { $0 % 4 != 1 }.map { UInt8($0) })
        XCTAssertEqual(mixed.value, 0, "a burst mixed the two queues' packets")
        XCTAssertTrue(Host.wait(timeout: 2) { first.counters.received == 20 && other.counters.received == 20 },
                      "counters: \(first.counters) \(other.counters)")
        XCTAssertEqual(first.counters.dropped, 0, "an override by id reached the other queue's packet")
        XCTAssertEqual(other.counters.dropped, 10)
        for number in [queueNumber, second] {
            XCTAssertEqual(NetfilterQueue.kernelStatistics(queueNumber: number)?.queueTotal, 0, "queue \(number): a packet left without a verdict")
        }

        XCTAssertLessThan(stopAndJoin(), 1.0)
    }

    /// A queue that never drains (a sustained flood of unproved requests) must not keep the loop from
    /// reading the other queue: the proved answers on it are what the flood's victims are waiting for.
    func testAFloodedQueueNeverKeepsTheOtherFromBeingRead() throws {
        let second = queueNumber &+ 1
        let flooded = try NetfilterQueue(QueueConfiguration(queueNumber: queueNumber))
        let other = try NetfilterQueue(QueueConfiguration(queueNumber: second))
        try installQueueRules(oddPayloadsTo: second)
        // Queued packets hold the sender's send buffer until their verdict; the default would block
        // the sender after a few hundred.
        var sendBuffer: Int32 = 32 << 20
        XCTAssertEqual(setsockopt(sender, SOL_SOCKET, SO_SNDBUFFORCE, &sendBuffer, socklen_t(MemoryLayout<Int32>.size)), 0)

        // The backlog is queued before the reader starts; each flooded packet costs the handler
        // 0.5 ms, so the flooded queue holds ~1.5 s of work and hits the burst limit round after round.
        let floodCount = 3000
        for _ in 0 ..< floodCount { send([0]) }
        XCTAssertTrue(Host.wait(timeout: 2) { (NetfilterQueue.kernelStatistics(queueNumber: self.queueNumber)?.queueTotal ?? 0) >= 2500 },
                      "the flood did not queue: \(String(describing: NetfilterQueue.kernelStatistics(queueNumber: queueNumber)))")

        let floodHandled = Counter()
        let floodHandledBeforeTheOther = Counter()
        let stopAndJoin = start([flooded, other]) { packet in
            guard let index = Self.udpPayloadByte(packet.payload), index & 1 == 0 else {
                floodHandledBeforeTheOther.set(floodHandled.value)
                return .accept
            }
            usleep(500)
            floodHandled.increment()
            return .drop
        }

        // Two full bursts read: the loop's first look at the other queue (empty then) is behind it.
        XCTAssertTrue(Host.wait(timeout: 5) { flooded.counters.received >= 2 * 256 }, "the reader did not start: \(flooded.counters)")
        // Sending queues the packet before sendto returns (the output hook runs in the sender's call).
        // From then on the loop may finish the flood's current burst and read one more before the
        // other queue's turn: counted in packets, so the bound does not depend on this machine's speed.
        let floodHandledAtSend = floodHandled.value
        let sent = Date()
        send([1])
        let answered = receive(count: 1, timeout: 5, grace: 0)
        let latency = Date().timeIntervalSince(sent)
        XCTAssertEqual(answered.map { $0[0] }, [1], "the other queue's packet never got its verdict")
        XCTAssertLessThanOrEqual(floodHandledBeforeTheOther.value, floodHandledAtSend + 2 * 256,
                                 "the other queue waited behind more than two of the flood's bursts (\(latency) s)")
        XCTAssertLessThan(floodHandledBeforeTheOther.value, floodCount, "the other queue was read only once the flood had drained")
        _ = stopAndJoin()
    }

    func testReaderGroupsNeverMoreThreadsThanCPUs() {
        XCTAssertEqual(NetfilterQueue.readerGroups([0, 1], cpus: 1), [[0, 1]])
        XCTAssertEqual(NetfilterQueue.readerGroups([0, 1], cpus: 2), [[0], [1]])
        XCTAssertEqual(NetfilterQueue.readerGroups([0, 1], cpus: 64), [[0], [1]])
        XCTAssertEqual(NetfilterQueue.readerGroups([0, 1, 2, 3, 4], cpus: 2), [[0, 2, 4], [1, 3]])
        XCTAssertEqual(NetfilterQueue.readerGroups([0, 1], cpus: 0), [[0, 1]], "a nonsense count still gives one reader")
    }

    func testSecondReaderOnTheSameQueueIsRefused() throws {
        let queue = try NetfilterQueue(QueueConfiguration(queueNumber: queueNumber))
        XCTAssertThrowsError(try NetfilterQueue(QueueConfiguration(queueNumber: queueNumber))) { error in
            let error = error as! NetfilterError
            XCTAssertEqual(error.operation, "NFQNL_CFG_CMD_BIND")
            XCTAssertTrue(error.description.contains("queue \(self.queueNumber) is already bound by another process"), error.description)
        }
        withExtendedLifetime(queue) {}
    }

    func testKernelStatisticsLineParsing() {
        let line = "  101  12345     2 2 65535     7     3      988  1"
        XCTAssertEqual(KernelQueueStatistics(line: Substring(line)),
                       KernelQueueStatistics(queueNumber: 101, portID: 12345, queueTotal: 2, copyMode: 2, copyRange: 65535,
                                             queueDropped: 7, userDropped: 3, idSequence: 988))
        XCTAssertNil(KernelQueueStatistics(line: "garbage"))
    }

    // MARK: Packet rewriting (test-only helper)

    /// `packet` (IPv4 + UDP) with its UDP payload replaced; total length, UDP length and both checksums fixed.
    static func ipv4UDP(_ packet: [UInt8], withPayload payload: [UInt8]) -> [UInt8] {
        let headerLength = Int(packet[0] & 0x0f) * 4
        var result = Array(packet[0 ..< headerLength + 8]) + payload
        func put16(_ value: UInt16, at offset: Int) {
            result[offset] = UInt8(value >> 8)
            result[offset + 1] = UInt8(value & 0xff)
        }
        func checksum(_ bytes: [UInt8]) -> UInt16 {
            var sum: UInt32 = 0
            var index = 0
            while index + 1 < bytes.count {
                sum += UInt32(bytes[index]) << 8 | UInt32(bytes[index + 1])
                index += 2
            }
            if index < bytes.count { sum += UInt32(bytes[index]) << 8 }
            while sum > 0xffff { sum = (sum & 0xffff) + (sum >> 16) }
            return ~UInt16(sum)
        }
        put16(UInt16(result.count), at: 2)
        put16(0, at: 10)
        put16(checksum(Array(result[0 ..< headerLength])), at: 10)
        let udpLength = UInt16(8 + payload.count)
        put16(udpLength, at: headerLength + 4)
        put16(0, at: headerLength + 6)
        let pseudo = Array(result[12 ..< 20]) + [0, 17, UInt8(udpLength >> 8), UInt8(udpLength & 0xff)]
        let sum = checksum(pseudo + Array(result[headerLength...]))
        put16(sum == 0 ? 0xffff : sum, at: headerLength + 6)
        return result
    }
}

/// Thread-safe test counters and failure slots (Mutex keeps them Sendable without @unchecked).
final class Counter: Sendable {
    private let storage = Mutex<Int>(0)
    func increment() { storage.withLock { $0 += 1 } }
    func set(_ newValue: Int) { storage.withLock { $0 = newValue } }
    var value: Int { storage.withLock { $0 } }
}

final class WeakQueue: Sendable {
    private let storage: Mutex<WeakBox>
    private struct WeakBox { weak var queue: NetfilterQueue? }
    init(_ queue: NetfilterQueue) { storage = Mutex(WeakBox(queue: queue)) }
    var queue: NetfilterQueue? { storage.withLock { $0.queue } }
}

final class Failure: Sendable {
    private let storage = Mutex<String?>(nil)
    func record(_ message: String) { storage.withLock { $0 = message } }
    var message: String? { storage.withLock { $0 } }
}
