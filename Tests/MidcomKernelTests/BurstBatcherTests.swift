import CSPWire
import MidcomCore
import MidcomKernel
import Netfilter
import XCTest

/// The burst glue: one batch for a burst, and when it fails, each packet's changes alone with the
/// failure plan the engine chose (defect 5 of the engine v2 issue: this path had no test).
final class BurstBatcherTests: XCTestCase {
    let host = CSPEndpoint(address: IPAddress("10.0.1.2")!, port: 40000)
    let peer = CSPEndpoint(address: IPAddress("10.0.2.2")!, port: 7227)

    func flow(_ port: UInt16) -> FlowTuple {
        FlowTuple(proto: .udp, source: host.address, sourcePort: port, destination: peer.address, destinationPort: 5000)
    }

    func message(_ type: CSPMessageType, _ session: UInt64) -> OutgoingMessage {
        OutgoingMessage(message: CSPMessage(type: type, sessionID: session, nonce: 1), destination: host)
    }

    final class Recorder {
        var sent: [OutgoingMessage] = []
        var forgotten: [UInt64] = []
        var failures: [Bool] = []
    }

    func batcher(_ kernel: RecordingKernel, _ recorder: Recorder, undo: [KernelChange] = []) -> (BurstBatcher, CleanupService) {
        let cleanup = CleanupService(kernel: kernel)
        let hooks = BurstBatcher.Hooks(
            send: { recorder.sent.append($0) },
            forgetSession: { recorder.forgotten.append($0); return undo },
            failed: { _, single in recorder.failures.append(single) })
        return (BurstBatcher(kernel: kernel, cleanup: cleanup, hooks: hooks), cleanup)
    }

    func testABurstIsOneBatchAndRepliesFollowIt() {
        let kernel = RecordingKernel()
        let recorder = Recorder()
        let (burst, cleanup) = batcher(kernel, recorder)
        burst.add(.init(packetID: 1, changes: [.install(.admission(flow(1)), lifetime: 5, tag: nil)], reply: message(.redirect, 1), plan: .ignore))
        burst.add(.init(packetID: 2, changes: [.remove(.admission(flow(2)))], reply: nil, plan: .ignore))
        XCTAssertTrue(burst.flush().isEmpty)
        XCTAssertEqual(kernel.batches.count, 1)
        XCTAssertEqual(kernel.batches.first?.count, 2)
        XCTAssertEqual(recorder.sent.map(\.message.type), [.redirect])
        XCTAssertEqual(cleanup.waiting, 1, "the removed admission's connections are queued for clean-up")
        XCTAssertTrue(burst.entries.isEmpty)
        XCTAssertTrue(burst.flush().isEmpty, "nothing left to program")
        XCTAssertEqual(kernel.batches.count, 1)
    }

    /// The batcher keeps one changes buffer from burst to burst: a later burst must neither carry
    /// an earlier burst's changes nor alter the array a kernel kept from it.
    func testConsecutiveBurstsEachProgramOnlyTheirOwnChanges() {
        let kernel = RecordingKernel()
        let recorder = Recorder()
        let (burst, _) = batcher(kernel, recorder)
        burst.add(.init(packetID: 1, changes: [.install(.admission(flow(1)), lifetime: 5, tag: nil),
                                               .install(.admission(flow(2)), lifetime: 5, tag: nil)], reply: nil, plan: .ignore))
        XCTAssertTrue(burst.flush().isEmpty)
        burst.add(.init(packetID: 2, change: .install(.admission(flow(3)), lifetime: 5, tag: nil), reply: nil, plan: .ignore))
        XCTAssertTrue(burst.flush().isEmpty)
        XCTAssertEqual(kernel.batches.count, 2)
        XCTAssertEqual(kernel.batches.first, [.install(.admission(flow(1)), lifetime: 5, tag: nil),
                                              .install(.admission(flow(2)), lifetime: 5, tag: nil)],
                       "the first burst's array, as the kernel kept it")
        XCTAssertEqual(kernel.batches.last, [.install(.admission(flow(3)), lifetime: 5, tag: nil)])
        XCTAssertTrue(burst.entries.isEmpty)
    }

    func testAFailedBatchFallsBackPacketByPacketToEachPlan() throws {
        let kernel = RecordingKernel()
        let poisoned: Set<FlowTuple> = [flow(2), flow(3), flow(4)]
        kernel.failing { changes in
            changes.contains { change in
                switch change {
                case .install(.admission(let f), _, _), .refresh(.admission(let f), _, _): poisoned.contains(f)
                default: false
                }
            }
        }
        let recorder = Recorder()
        let undo: [KernelChange] = [.remove(.admission(flow(9)))]
        let (burst, _) = batcher(kernel, recorder, undo: undo)
        let refusal = message(.reject, 2)
        burst.add(.init(packetID: 1, changes: [.install(.admission(flow(1)), lifetime: 5, tag: nil)], reply: message(.accept, 1), plan: .ignore))
        burst.add(.init(packetID: 2, changes: [.refresh(.admission(flow(2)), lifetime: 5, tag: nil)], reply: nil, plan: .refuse(sessionID: 2, reply: refusal)))
        burst.add(.init(packetID: 3, changes: [.install(.admission(flow(3)), lifetime: 5, tag: nil)], reply: nil, plan: .defaultPolicy))
        burst.add(.init(packetID: 4, changes: [.install(.admission(flow(4)), lifetime: 5, tag: nil)], reply: message(.accept, 4), plan: .ignore))
        let overrides = burst.flush()
        XCTAssertEqual(overrides.map(\.id), [2, 3])
        XCTAssertEqual(overrides.map(\.verdict), [.drop, .accept], "refused ACCEPT dropped; legacy packet meets the default policy")
        XCTAssertEqual(recorder.forgotten, [2], "the engine forgets the session whose state is missing")
        XCTAssertEqual(recorder.sent.map(\.message.type), [.accept, .reject, .accept],
                       "packet 1's reply, the refusal instead of packet 2's, packet 4's (its plan ignores failures)")
        // 1 whole batch + 4 single retries + the best-effort undo of the refused session.
        XCTAssertEqual(kernel.batches.count, 6)
        XCTAssertEqual(kernel.batches[3], undo, "the refused session's undo, right after its own attempt")
        XCTAssertEqual(recorder.failures, [false, true, true, true], "the batch, then each packet that failed alone")
    }

    /// An intercepted ACCEPT's plan describes its REJECT; the message is built only now, when the
    /// kernel refused, and goes to the host in the responder's name.
    func testARefusedAnswerIsRejectedInTheRespondersName() throws {
        let kernel = RecordingKernel()
        kernel.failing { _ in true }
        let recorder = Recorder()
        let (burst, _) = batcher(kernel, recorder)
        let rejection = AnswerRejection(
            sessionID: 5, nonce: 55, sequence: 3, host: host, responder: peer, middleboxID: 0x77, epoch: 9, middleboxName: "gw1")
        burst.add(.init(packetID: 7, changes: [.install(.admission(flow(5)), lifetime: 5, tag: nil)], reply: nil,
                        plan: .refuseAnswer(sessionID: 5, rejection: rejection)))
        let overrides = burst.flush()
        XCTAssertEqual(overrides.map(\.id), [7])
        XCTAssertEqual(overrides.map(\.verdict), [.drop], "the ACCEPT does not reach the host")
        XCTAssertEqual(recorder.forgotten, [5])
        let sent = try XCTUnwrap(recorder.sent.first)
        XCTAssertEqual(recorder.sent.count, 1)
        XCTAssertEqual(sent.destination, host)
        XCTAssertEqual(sent.source, peer, "from the responder, like the ACCEPT it replaces")
        XCTAssertEqual(sent.message.type, .reject)
        XCTAssertEqual(sent.message.result, .middleboxUnavailable)
        XCTAssertEqual([sent.message.sessionID, sent.message.nonce], [5, 55])
        XCTAssertEqual(sent.message.sequence, 3)
        XCTAssertEqual(sent.message.epoch, 9)
        XCTAssertEqual(sent.message.records.map(\.middleboxID), [0x77])
        XCTAssertEqual(sent.message.records.first?.decision, .rejected)
    }

    func testAnUnusedWildcardAdmissionNeedsNoConntrackWalk() {
        let kernel = RecordingKernel()
        var wildcard = flow(0)
        wildcard.sourcePort = 0
        kernel.state.withLock { $0.unused = [wildcard] }
        let recorder = Recorder()
        let (burst, cleanup) = batcher(kernel, recorder)
        burst.add(.init(packetID: 1, changes: [.remove(.admission(wildcard)), .remove(.admission(flow(2)))], reply: nil, plan: .ignore))
        XCTAssertTrue(burst.flush().isEmpty)
        XCTAssertEqual(cleanup.waiting, 1, "only the exact flow waits for conntrack")
    }

    func testExpiryIsProgrammedAtOnceAndItsConnectionsQueued() {
        let kernel = RecordingKernel()
        let recorder = Recorder()
        let (burst, cleanup) = batcher(kernel, recorder)
        burst.programNow([.remove(.admission(flow(1))), .remove(.admission(flow(2)))])
        XCTAssertEqual(kernel.batches.count, 1, "one batch for all expired sessions")
        XCTAssertEqual(cleanup.waiting, 2)
        kernel.failing { _ in true }
        burst.programNow([.remove(.admission(flow(3)))])
        XCTAssertEqual(recorder.failures, [false], "reported; the elements time out anyway")
        XCTAssertEqual(cleanup.waiting, 2, "nothing removed, no connections to end")
    }

    func testASingleEntryIsNotRetried() {
        let kernel = RecordingKernel()
        kernel.failing { _ in true }
        let recorder = Recorder()
        let (burst, _) = batcher(kernel, recorder)
        burst.add(.init(packetID: 7, changes: [.block(flow(1), lifetime: 10)], reply: nil, plan: .ignore))
        XCTAssertTrue(burst.flush().isEmpty, "a drop-cache element that fails keeps the packet's own verdict")
        XCTAssertEqual(kernel.batches.count, 1)
    }
}

final class CleanupServiceTests: XCTestCase {
    let flow = FlowTuple(proto: .udp, source: IPAddress("10.0.1.2")!, sourcePort: 0, destination: IPAddress("10.0.2.2")!, destinationPort: 5000)

    func testOnePassForEverythingQueuedAndDuplicatesOnce() {
        let kernel = RecordingKernel()
        let cleanup = CleanupService(kernel: kernel)
        var other = flow
        other.destinationPort = 5001
        cleanup.enqueue([flow, other])
        cleanup.enqueue([flow])
        XCTAssertNil(cleanup.runOnce())
        XCTAssertEqual(kernel.forgotten.count, 1)
        XCTAssertEqual(Set(kernel.forgotten[0]), [flow, other])
        XCTAssertEqual(cleanup.counters.deleted, 2)
        XCTAssertNil(cleanup.runOnce())
        XCTAssertEqual(kernel.forgotten.count, 1, "an empty queue costs no pass")
    }

    func testTheQueueIsBoundedAndFailuresAreCounted() {
        let kernel = RecordingKernel()
        kernel.state.withLock { $0.failConntrack = true }
        let cleanup = CleanupService(kernel: kernel, capacity: 2)
        XCTAssertFalse(cleanup.enqueue([flow, flow, flow]))
        XCTAssertEqual(cleanup.counters.overflowed, 1)
        XCTAssertNotNil(cleanup.runOnce())
        XCTAssertEqual(cleanup.counters.failures, 1)
        XCTAssertEqual(cleanup.waiting, 0, "a failed pass is not retried forever: entries time out by themselves")
    }

    func testConnectionsToForgetCoverRevokedAdmissionsAndDNAT() {
        let rule = DestinationNAT(
            proto: .udp, external: IPv4Endpoint(address: 0xc633_6401, port: 6000), internal: IPv4Endpoint(address: 0x0a00_0102, port: 6000))
        let flows = connectionsToForget(after: [
            .install(.admission(flow), lifetime: 5, tag: nil), .remove(.admission(flow)),
            .install(.destinationNAT(rule), lifetime: 5, tag: nil),
        ])
        XCTAssertEqual(flows.count, 2)
        XCTAssertEqual(flows.first, flow)
        XCTAssertEqual(flows.last?.destination, IPAddress("198.51.100.1"))
        XCTAssertEqual(flows.last?.destinationPort, 6000)
    }
}
