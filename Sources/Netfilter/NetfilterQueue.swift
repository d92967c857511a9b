import CNetfilter
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import SystemSupport

/// Reads packets from one NFQUEUE (libnetfilter_queue's libmnl-based API) and returns a verdict for each.
///
/// The hot path allocates nothing per packet: `receiveSlots` receive buffers, each sized for the largest copy plus
/// netlink overhead and filled by one `recvmmsg` per round, one attribute table and one verdict buffer, all
/// allocated in `init`. Packets are handed to the handler as views over their receive slot. Runs of identical plain
/// verdicts (accept or drop, the same mark, no payload) for consecutive ids become one NFQNL_MSG_VERDICT_BATCH;
/// every other verdict is a message of its own, in id order; all messages of a burst leave in one `sendto`.
///
/// Thread model: `run` blocks one thread (`run(_:)` one thread for several queues); `stop` and `counters` may be
/// called from any thread.
public final class NetfilterQueue: @unchecked Sendable {
    public let configuration: QueueConfiguration

    private let socket: OpaquePointer  // struct mnl_socket *
    private let fd: Int32
    private let wakeFD: Int32  // eventfd written by stop()
    /// `receiveSlots` × `slotBytes`: one datagram per slot, read by one `recvmmsg` (a syscall per packet cost
    /// about a fifth of the reader's time in the figure-1 profile).
    private let receiveBuffer: UnsafeMutableRawBufferPointer
    private let slotBytes: Int
    private let receiveVectors: UnsafeMutablePointer<iovec>
    private let receiveHeaders: UnsafeMutablePointer<cnf_mmsghdr>
    /// A burst's verdict messages, concatenated and sent with one `sendto` when the burst is released (the kernel
    /// handles every netlink message of a datagram in order); a verdict that does not fit sends what is there first.
    private let sendBuffer: UnsafeMutableRawBufferPointer
    static let sendBufferBytes = 256 * 1024
    private let attributes: UnsafeMutablePointer<UnsafeMutablePointer<nlattr>?>
    private let attributeCount: Int

    private let stopRequested = Atomic<Bool>(false)
    private let running = Atomic<Bool>(false)
    // Published by the loop after every drained burst; the loop itself counts in a plain local struct.
    private let publishedReceived = Atomic<UInt64>(0)
    private let publishedAccepted = Atomic<UInt64>(0)
    private let publishedDropped = Atomic<UInt64>(0)
    private let publishedRepeated = Atomic<UInt64>(0)
    private let publishedModified = Atomic<UInt64>(0)
    private let publishedENOBUFS = Atomic<UInt64>(0)
    private let publishedTruncated = Atomic<UInt64>(0)
    private let publishedVerdictErrors = Atomic<UInt64>(0)
    private let publishedVerdictMessages = Atomic<UInt64>(0)

    /// Datagrams read per `recvmmsg`, and the most one burst reads before its verdicts go out: bounds both the
    /// memory (64 × ~4 KiB) and how long the first packet of a burst waits for its verdict under load.
    static let receiveSlots = 64
    static let burstLimit = 256

    /// The largest payload a verdict may carry: NFQA_PAYLOAD is a netlink attribute, whose length is 16 bits.
    static let maximumReplacementPayload = 0xffff - 4

    /// Opens a netlink socket, binds `configuration.queueNumber` and sets copy mode and range, queue length,
    /// flags and receive buffer. Fails if another process has bound the queue.
    public init(_ configuration: QueueConfiguration) throws(NetfilterError) {
        self.configuration = configuration
        let queueName = "queue \(configuration.queueNumber)"
        let opened = syscallHandle { mnl_socket_open2(NETLINK_NETFILTER, Int32(SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue)) }
        guard let socket = opened.handle else {
            throw NetfilterError(operation: "socket(AF_NETLINK, NETLINK_NETFILTER)", object: queueName, errno: opened.errno)
        }
        if case .failure(let code) = syscall({ mnl_socket_bind(socket, 0, pid_t(MNL_SOCKET_AUTOPID)) }) {
            mnl_socket_close(socket)
            throw NetfilterError(operation: "bind(AF_NETLINK)", object: queueName, errno: code)
        }
        let wakeFD: Int32
        switch syscall({ eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK)) }) {
        case .success(let descriptor): wakeFD = descriptor
        case .failure(let code):
            mnl_socket_close(socket)
            throw NetfilterError(operation: "eventfd", object: queueName, errno: code)
        }
        self.socket = socket
        self.fd = mnl_socket_get_fd(socket)
        self.wakeFD = wakeFD
        let copyRange = Int(min(configuration.copyRange, 0xffff))
        // Slots start 16-aligned, so every netlink header in them is aligned.
        let slotBytes = (copyRange + cnf_nfq_receive_overhead() + 15) & ~15
        self.slotBytes = slotBytes
        self.receiveBuffer = .allocate(byteCount: slotBytes * NetfilterQueue.receiveSlots, alignment: 16)
        self.receiveVectors = .allocate(capacity: NetfilterQueue.receiveSlots)
        self.receiveHeaders = .allocate(capacity: NetfilterQueue.receiveSlots)
        for slot in 0 ..< NetfilterQueue.receiveSlots {
            receiveVectors[slot] = iovec(iov_base: receiveBuffer.baseAddress! + slot * slotBytes, iov_len: slotBytes)
            var header = cnf_mmsghdr()
            header.msg_hdr.msg_iov = receiveVectors + slot
            header.msg_hdr.msg_iovlen = 1
            receiveHeaders[slot] = header
        }
        self.sendBuffer = .allocate(
            byteCount: max(NetfilterQueue.sendBufferBytes, NetfilterQueue.maximumReplacementPayload + cnf_nfq_receive_overhead()), alignment: 16)
        self.attributeCount = Int(__NFQA_MAX.rawValue)  // NFQA_MAX + 1
        self.attributes = .allocate(capacity: attributeCount)
        self.attributes.initialize(repeating: nil, count: attributeCount)
        // From here on deinit releases everything.

        var size = Int32(clamping: configuration.receiveBufferBytes)
        if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        // NETLINK_NO_ENOBUFS stays off on purpose: when the socket overflows we want recv to report ENOBUFS so the
        // loss is counted (QueueCounters.enobufs) and visible to operators, rather than silently hidden. The lost
        // packets themselves are already gone (dropped or, with fail-open, accepted by the kernel), so the loop
        // just counts and continues.
        var one: Int32 = 1
        // Errors for verdicts then echo only the header, not the (possibly 64 KiB) payload we sent.
        _ = setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, socklen_t(MemoryLayout<Int32>.size))

        try configure(operation: "NFQNL_CFG_CMD_BIND", sequence: 1) { nlh in
            nfq_nlmsg_cfg_put_cmd(nlh, UInt16(AF_INET), UInt8(NFQNL_CFG_CMD_BIND.rawValue))
        }
        try configure(operation: "NFQA_CFG_PARAMS/NFQA_CFG_QUEUE_MAXLEN", sequence: 2) { nlh in
            nfq_nlmsg_cfg_put_params(nlh, UInt8(NFQNL_COPY_PACKET.rawValue), Int32(copyRange))
            nfq_nlmsg_cfg_put_qmaxlen(nlh, configuration.maxQueueLength)
        }
        let flags = (configuration.failOpen ? UInt32(NFQA_CFG_F_FAIL_OPEN) : 0) | (configuration.gso ? UInt32(NFQA_CFG_F_GSO) : 0)
        try configure(operation: "NFQA_CFG_FLAGS", sequence: 3) { nlh in
            cnf_nfq_cfg_put_flags(nlh, flags, UInt32(NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO))
        }
    }

    deinit {
        // Closing the socket unbinds the queue; the kernel drops what is still queued to it.
        mnl_socket_close(socket)
        close(wakeFD)
        receiveBuffer.deallocate()
        receiveVectors.deallocate()
        receiveHeaders.deallocate()
        sendBuffer.deallocate()
        attributes.deallocate()
    }

    /// A thread-safe snapshot, updated by `run` after every burst of packets.
    public var counters: QueueCounters {
        var counters = QueueCounters()
        counters.received = publishedReceived.load(ordering: .relaxed)
        counters.accepted = publishedAccepted.load(ordering: .relaxed)
        counters.dropped = publishedDropped.load(ordering: .relaxed)
        counters.repeated = publishedRepeated.load(ordering: .relaxed)
        counters.modified = publishedModified.load(ordering: .relaxed)
        counters.enobufs = publishedENOBUFS.load(ordering: .relaxed)
        counters.truncated = publishedTruncated.load(ordering: .relaxed)
        counters.verdictErrors = publishedVerdictErrors.load(ordering: .relaxed)
        counters.verdictMessages = publishedVerdictMessages.load(ordering: .relaxed)
        return counters
    }

    /// Makes `run` return after the packet it is handling; thread-safe and final (a later `run` returns at once).
    public func stop() {
        stopRequested.store(true, ordering: .sequentiallyConsistent)
        _ = syscall { eventfd_write(wakeFD, 1) }
    }

    /// Blocks the calling thread until `stop()`. Calls `handler` for every packet and sends exactly one verdict per
    /// packet id; calls `tick` at least every `tickInterval`, also when idle. Throws only when the socket fails
    /// for another reason than ENOBUFS (counted) or EINTR (retried).
    ///
    /// Verdicts are held until the burst of packets read in one go has been handled; then
    /// `beforeVerdicts` runs and may replace some of them (by packet id), and the burst's verdicts go
    /// out in id order. This lets a caller program the kernel once per burst, before any packet whose
    /// handling depends on that programming is let through.
    public func run(tickInterval: Duration = .milliseconds(500), tick: () -> Void = {},
                    beforeVerdicts: () -> [(id: UInt32, verdict: Verdict)] = { [] },
                    handler: (borrowing QueuedPacket) -> Verdict) throws(NetfilterError) {
        try NetfilterQueue.run([self], tickInterval: tickInterval, tick: tick, beforeVerdicts: beforeVerdicts, handler: handler)
    }

    /// `run` for several queues on the calling thread: each round drains a bounded burst from every
    /// queue in turn and releases it (`beforeVerdicts` runs once per queue's burst, so its packet ids
    /// are that queue's), then sleeps until any of them has packets. Readiness is asked for after
    /// every round, so a flood that never drains one queue still leaves each other queue a burst
    /// per round. Returns when any of them is stopped; throws when any socket fails as `run`
    /// describes.
    ///
    /// Why one thread for several queues: on fewer CPUs than queues, a thread per queue only takes
    /// turns with the others — and every turn is a context switch, a lock handed over and caches
    /// filled again.
    public static func run(_ queues: [NetfilterQueue], tickInterval: Duration = .milliseconds(500), tick: () -> Void = {},
                           beforeVerdicts: () -> [(id: UInt32, verdict: Verdict)] = { [] },
                           handler: (borrowing QueuedPacket) -> Verdict) throws(NetfilterError) {
        precondition(!queues.isEmpty, "NetfilterQueue.run needs at least one queue")
        for queue in queues {
            guard queue.running.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else {
                preconditionFailure("NetfilterQueue.run called while queue \(queue.configuration.queueNumber) is already running on another thread")
            }
        }
        defer { for queue in queues { queue.running.store(false, ordering: .releasing) } }

        var loops = queues.map { LoopState(counters: $0.counters) }
        defer { for index in loops.indices { loops[index].freeHeld() } }
        // The tick deadline in integer nanoseconds: ContinuousClock's instants and `Duration`
        // arithmetic cost ~500 instructions per wake-up here (docs/PERFORMANCE.md, "Tenth pass").
        let tickNanoseconds = UInt64(max(1, tickInterval.components.seconds * 1_000_000_000
            + tickInterval.components.attoseconds / 1_000_000_000))
        var nextTick = bootTimeNanoseconds() &+ tickNanoseconds
        // poll, not epoll: an epoll registration stays on the socket's wait queue, so the kernel ran
        // epoll's callback (a lock taken with interrupts off, the ready list checked) for every packet
        // it queued, on the CPU that received the packet, also while this thread was busy and had no
        // need of a wake-up. In figure 1's lab, where that CPU is the bound, poll delivered 12-30 % more
        // packets per second (docs/PERFORMANCE.md, "Thirteenth pass").
        // poll's entries exist only while the thread sleeps in it; the price is the walk over these
        // descriptors on each sleep (fdget, an entry added and removed on each): two per queue.
        // Slots: the queues' sockets, then their eventfds. Raw storage: no exclusivity or uniqueness
        // check per wait.
        let descriptorCount = 2 * queues.count
        let descriptors = UnsafeMutablePointer<pollfd>.allocate(capacity: descriptorCount)
        for (index, queue) in queues.enumerated() {
            (descriptors + index).initialize(to: pollfd(fd: queue.fd, events: Int16(POLLIN), revents: 0))
            (descriptors + queues.count + index).initialize(to: pollfd(fd: queue.wakeFD, events: Int16(POLLIN), revents: 0))
        }
        defer { descriptors.deallocate() }
        defer { for (queue, loop) in zip(queues, loops) { queue.publish(loop.counters) } }

        // Queues that may hold packets: all at first, then those poll reported and those whose last
        // burst hit the limit. An idle queue costs no recvmmsg per round.
        var pending = Array(repeating: true, count: queues.count)
        while !queues.contains(where: { $0.stopRequested.load(ordering: .relaxed) }) {
            for index in queues.indices where pending[index] {
                let queue = queues[index]
                pending[index] = !(try queue.drainBurst(&loops[index], beforeVerdicts: beforeVerdicts, handler: handler))
                queue.publish(loops[index].counters)
            }

            let now = bootTimeNanoseconds()
            if now >= nextTick {
                tick()
                nextTick = now &+ tickNanoseconds
            }
            // While a queue still holds packets the wait only polls (0 ms): it must still be asked,
            // or a queue that never drains (a sustained flood) would keep the others from ever being
            // marked and read. Otherwise it sleeps until a packet, a stop or the tick; rounded up
            // (+1 ms) so that it never ends just before the tick is due.
            let milliseconds = pending.contains(true) ? 0 : Int32(clamping: (nextTick &- min(now, nextTick)) / 1_000_000 + 1)
            let waited = syscall { poll(descriptors, nfds_t(descriptorCount), milliseconds) }
            switch waited {
            case .success(let ready) where ready > 0:
                for index in queues.indices {
                    // Readable, or an error (ENOBUFS) that the next recvmmsg reports.
                    if descriptors[index].revents != 0 { pending[index] = true }
                    if descriptors[queues.count + index].revents != 0 {
                        var value: eventfd_t = 0
                        _ = eventfd_read(descriptors[queues.count + index].fd, &value)
                    }
                }
            case .success:
                break
            case .failure(let code):  // (EINTR is retried by syscall)
                throw NetfilterError(operation: "poll", object: "queue \(queues[0].configuration.queueNumber)", errno: code)
            }
        }
    }

    /// The queues each reader thread serves: one thread per queue, but no more threads than `cpus`
    /// (queues dealt out in turn; the first group holds the first queue). On one CPU the unproved and
    /// the proved queue share a thread: two threads there only take turns, each turn a context switch
    /// and a lock handed over; fairness between the queues is the loop's (a burst of each in turn).
    public static func readerGroups<Queue>(_ queues: [Queue], cpus: Int) -> [[Queue]] {
        let threads = max(1, min(queues.count, cpus))
        var groups = Array(repeating: [Queue](), count: threads)
        for (index, queue) in queues.enumerated() { groups[index % threads].append(queue) }
        return groups
    }

    /// Reads up to `burstLimit` packets (until the socket is drained), handles them and releases
    /// their verdicts. Whether the socket was drained. Bounded, so that tick, stop and the other
    /// queues of the loop get their turn under sustained load too.
    private func drainBurst(_ loop: inout LoopState, beforeVerdicts: () -> [(id: UInt32, verdict: Verdict)],
                            handler: (borrowing QueuedPacket) -> Verdict) throws(NetfilterError) -> Bool {
        var drained = false
        var read = 0
        // Captured as values: a closure capturing `self` retains and releases the queue per call.
        let descriptor = fd, headers = receiveHeaders
        while read < NetfilterQueue.burstLimit {
            // The socket is non-blocking: recvmmsg returns what is there. Fewer datagrams than slots
            // means the socket was drained (an error after the first datagram is reported by the next
            // call, and poll returns at once if more arrived meanwhile).
            let received = syscall { cnf_recvmmsg(descriptor, headers, UInt32(NetfilterQueue.receiveSlots)) }
            switch received {
            case .success(let count):
                for slot in 0 ..< Int(count) {
                    process(slot: receiveBuffer.baseAddress! + slot * slotBytes, length: Int(receiveHeaders[slot].msg_len),
                            loop: &loop, handler: handler)
                }
                read += Int(count)
                if Int(count) < NetfilterQueue.receiveSlots { drained = true }
            case .failure(let code) where code == EAGAIN || code == EWOULDBLOCK:
                drained = true
            case .failure(ENOBUFS):
                loop.counters.enobufs &+= 1
                read += 1  // reported once per overflow; still bounded
                continue
            case .failure(let code):
                releaseBurst(&loop, beforeVerdicts: beforeVerdicts)
                throw NetfilterError(operation: "recvmmsg", object: "queue \(configuration.queueNumber)", errno: code)
            }
            if drained || stopRequested.load(ordering: .relaxed) { break }
        }
        releaseBurst(&loop, beforeVerdicts: beforeVerdicts)
        return drained
    }

    /// Reads the kernel's view of `queueNumber` from /proc/net/netfilter/nfnetlink_queue (of the calling thread's
    /// network namespace). Nil when the queue is not bound or the file is missing (nfnetlink_queue not loaded).
    public static func kernelStatistics(queueNumber: UInt16) -> KernelQueueStatistics? {
        guard let file = fopen("/proc/net/netfilter/nfnetlink_queue", "r") else { return nil }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>? = nil
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0 {
            guard let line else { break }
            let text = String(cString: line)
            if let statistics = KernelQueueStatistics(line: Substring(text)), statistics.queueNumber == queueNumber {
                return statistics
            }
        }
        return nil
    }

    // MARK: Loop internals

    private struct LoopState {
        var counters: QueueCounters
        /// A run of plain verdicts not sent yet: ids up to `lastID` all get `kind`.
        var pendingKind: Verdict.Kind = .accept
        var pendingMark: UInt32? = nil
        var pendingLastID: UInt32 = 0
        var pendingCount = 0
        /// Bytes of verdict messages waiting in `sendBuffer`.
        var sendOffset = 0
        /// Verdicts of the current burst, in arrival (= id) order, not sent yet: `heldCount` of them
        /// at `held`. Storage the loop owns, not an Array: emptying an Array of a type with a
        /// reference in it (the replacement payload) destroys its elements through the runtime's
        /// generic `swift_arrayDestroy` after every burst (~145 instructions a round in figure 14's
        /// harness, docs/PERFORMANCE.md "Twelfth pass"); here each verdict is moved out as it is
        /// issued. Allocated on first use, doubled when full, freed when `run` returns.
        var held: UnsafeMutablePointer<HeldVerdict>? = nil
        var heldCount = 0
        var heldCapacity = 0

        mutating func hold(_ verdict: Verdict, id: UInt32) {
            if heldCount == heldCapacity { growHeld() }
            (held.unsafelyUnwrapped + heldCount).initialize(to: HeldVerdict(id: id, verdict: verdict))
            heldCount += 1
        }

        /// Starts at one `recvmmsg`'s worth, so that a burst of a few `recvmmsg`s already grows it
        /// (the queue tests' bursts run this path).
        mutating func growHeld() {
            let capacity = max(NetfilterQueue.receiveSlots, heldCapacity * 2)
            let storage = UnsafeMutablePointer<HeldVerdict>.allocate(capacity: capacity)
            if let held {
                storage.moveInitialize(from: held, count: heldCount)
                held.deallocate()
            }
            held = storage
            heldCapacity = capacity
        }

        /// Frees the storage once every held verdict has been issued.
        mutating func freeHeld() {
            held?.deinitialize(count: heldCount)
            held?.deallocate()
            held = nil
            heldCount = 0
            heldCapacity = 0
        }
    }

    /// One held verdict (a named struct: an array of `(id, verdict)` tuples was destroyed through
    /// the runtime's generic tuple witness, docs/PERFORMANCE.md "Eleventh pass").
    private struct HeldVerdict {
        let id: UInt32
        var verdict: Verdict
    }

    /// Sends the held verdicts of a burst, after `beforeVerdicts` had its say.
    private func releaseBurst(_ loop: inout LoopState, beforeVerdicts: () -> [(id: UInt32, verdict: Verdict)]) {
        if loop.heldCount > 0, let held = loop.held {
            let count = loop.heldCount
            for override in beforeVerdicts() {
                if let index = (0 ..< count).first(where: { held[$0].id == override.id }) {
                    held[index].verdict = override.verdict
                }
            }
            // In id order: a batch verdict covers every queued id up to its own, so an earlier packet
            // with its own verdict must be answered first (issue/flushPending keep that invariant).
            // Each verdict is moved out as it is issued, which leaves the storage empty.
            loop.heldCount = 0
            for index in 0 ..< count {
                let entry = (held + index).move()
                issue(entry.verdict, id: entry.id, loop: &loop)
            }
        }
        flushPending(&loop)
        flushSends(&loop)
    }

    private func publish(_ counters: QueueCounters) {
        publishedReceived.store(counters.received, ordering: .relaxed)
        publishedAccepted.store(counters.accepted, ordering: .relaxed)
        publishedDropped.store(counters.dropped, ordering: .relaxed)
        publishedRepeated.store(counters.repeated, ordering: .relaxed)
        publishedModified.store(counters.modified, ordering: .relaxed)
        publishedENOBUFS.store(counters.enobufs, ordering: .relaxed)
        publishedTruncated.store(counters.truncated, ordering: .relaxed)
        publishedVerdictErrors.store(counters.verdictErrors, ordering: .relaxed)
        publishedVerdictMessages.store(counters.verdictMessages, ordering: .relaxed)
    }

    /// Handles every netlink message of one datagram.
    private func process(slot: UnsafeMutableRawPointer, length: Int, loop: inout LoopState, handler: (borrowing QueuedPacket) -> Verdict) {
        let packetType = cnf_nfnl_msg_type(UInt8(NFNL_SUBSYS_QUEUE), UInt8(NFQNL_MSG_PACKET.rawValue))
        var remaining = Int32(length)
        var current: UnsafeMutablePointer<nlmsghdr>? = slot.assumingMemoryBound(to: nlmsghdr.self)
        while let nlh = current, mnl_nlmsg_ok(nlh, remaining) {
            defer { current = mnl_nlmsg_next(nlh, &remaining) }
            let type = cnf_nlmsg_type(nlh)
            if Int32(type) == NLMSG_ERROR {
                // Verdicts are sent without NLM_F_ACK, so any error message is a refused verdict.
                if cnf_nlmsg_error_code(nlh) != 0 { loop.counters.verdictErrors &+= 1 }
                continue
            }
            guard type == packetType else { continue }
            guard cnf_nfq_parse_packet(nlh, attributes, Int32(attributeCount)) == 0, let header = attributes[Int(NFQA_PACKET_HDR.rawValue)] else {
                continue  // without a packet header there is no id to give a verdict for
            }
            let id = cnf_nfq_packet_id(header)
            var payload = UnsafeRawBufferPointer(start: nil, count: 0)
            if let attribute = attributes[Int(NFQA_PAYLOAD.rawValue)] {
                payload = UnsafeRawBufferPointer(start: mnl_attr_get_payload(attribute), count: Int(mnl_attr_get_payload_len(attribute)))
            }
            var originalLength = payload.count
            if let attribute = attributes[Int(NFQA_CAP_LEN.rawValue)] {
                originalLength = Int(cnf_attr_get_be32(attribute))
                if originalLength > payload.count { loop.counters.truncated &+= 1 }
            }
            let packet = QueuedPacket(
                id: id, payload: payload, originalLength: originalLength,
                mark: attributes[Int(NFQA_MARK.rawValue)].map { cnf_attr_get_be32($0) } ?? 0,
                inInterface: attributes[Int(NFQA_IFINDEX_INDEV.rawValue)].map { cnf_attr_get_be32($0) } ?? 0,
                outInterface: attributes[Int(NFQA_IFINDEX_OUTDEV.rawValue)].map { cnf_attr_get_be32($0) } ?? 0,
                hwProtocol: cnf_nfq_hw_protocol(header),
                hook: cnf_nfq_hook(header),
                skbInfo: attributes[Int(NFQA_SKB_INFO.rawValue)].map { cnf_attr_get_be32($0) } ?? 0)
            loop.counters.received &+= 1
            loop.hold(handler(packet), id: id)
        }
    }

    private func issue(_ verdict: Verdict, id: UInt32, loop: inout LoopState) {
        switch verdict.kind {
        case .accept: loop.counters.accepted &+= 1
        case .drop: loop.counters.dropped &+= 1
        case .repeat: loop.counters.repeated &+= 1
        }
        if verdict.isBatchable {
            // A batch verdict covers every queued id up to the last one (wrap-around aware in the kernel); extend the
            // run only while ids increase and the verdict is the same.
            if loop.pendingCount > 0
                && (loop.pendingKind != verdict.kind || loop.pendingMark != verdict.mark
                    || Int32(bitPattern: id &- loop.pendingLastID) <= 0)
            {
                flushPending(&loop)
            }
            loop.pendingKind = verdict.kind
            loop.pendingMark = verdict.mark
            loop.pendingLastID = id
            loop.pendingCount += 1
            return
        }
        flushPending(&loop)
        if let payload = verdict.payload, payload.count > NetfilterQueue.maximumReplacementPayload {
            // Cannot be expressed in one netlink attribute; dropping is the safe reading of "not this packet".
            loop.counters.verdictErrors &+= 1
            send(verdict: .drop, id: id, batch: false, loop: &loop)
            return
        }
        if verdict.payload != nil { loop.counters.modified &+= 1 }
        send(verdict: verdict, id: id, batch: false, loop: &loop)
    }

    private func flushPending(_ loop: inout LoopState) {
        guard loop.pendingCount > 0 else { return }
        let batch = loop.pendingCount > 1
        loop.pendingCount = 0
        let verdict: Verdict =
            switch (loop.pendingKind, loop.pendingMark) {
            case (.accept, let mark?): .accept(mark: mark)
            case (.accept, nil): .accept
            default: .drop
            }
        send(verdict: verdict, id: loop.pendingLastID, batch: batch, loop: &loop)
    }

    /// Appends one verdict message to the send buffer (sent by `flushSends`).
    private func send(verdict: Verdict, id: UInt32, batch: Bool, loop: inout LoopState) {
        // Header, nfgenmsg, verdict, mark and payload attributes, each padded to 4 octets.
        let worstCase = 64 + ((verdict.payload?.count ?? 0) + 3) & ~3
        if loop.sendOffset + worstCase > sendBuffer.count { flushSends(&loop) }
        let type = batch ? NFQNL_MSG_VERDICT_BATCH : NFQNL_MSG_VERDICT
        let buffer = (sendBuffer.baseAddress! + loop.sendOffset).assumingMemoryBound(to: CChar.self)
        guard let nlh = nfq_nlmsg_put(buffer, Int32(type.rawValue), UInt32(configuration.queueNumber)) else { return }
        nfq_nlmsg_verdict_put(nlh, Int32(bitPattern: id), Int32(verdict.kind.rawValue))
        if let mark = verdict.mark { nfq_nlmsg_verdict_put_mark(nlh, mark) }
        if let payload = verdict.payload {
            payload.withUnsafeBytes { nfq_nlmsg_verdict_put_pkt(nlh, $0.baseAddress, UInt32($0.count)) }
        }
        loop.sendOffset += Int(nlh.pointee.nlmsg_len)
        loop.counters.verdictMessages &+= 1
    }

    /// Sends the verdict messages waiting in the send buffer in one datagram. The kernel answers a refused
    /// verdict with an error message (counted when read). If the datagram itself is refused (e.g. no memory for
    /// it), each message is tried on its own, so one failure does not strand a burst of packets in the queue.
    private func flushSends(_ loop: inout LoopState) {
        guard loop.sendOffset > 0 else { return }
        let length = loop.sendOffset
        loop.sendOffset = 0
        // Captured as values, as in drainBurst: no retain of the queue per call.
        let socket = self.socket, buffer = sendBuffer.baseAddress
        guard case .failure = syscall({ mnl_socket_sendto(socket, buffer, length) }) else { return }
        var offset = 0
        while offset + MemoryLayout<nlmsghdr>.size <= length {
            let message = (sendBuffer.baseAddress! + offset).assumingMemoryBound(to: nlmsghdr.self)
            let size = Int(message.pointee.nlmsg_len)
            guard size >= MemoryLayout<nlmsghdr>.size, offset + size <= length else { break }
            if case .failure = syscall({ mnl_socket_sendto(socket, message, size) }) { loop.counters.verdictErrors &+= 1 }
            offset += size
        }
    }

    /// Sends one NFQNL_MSG_CONFIG message with NLM_F_ACK and waits (up to 5 s) for its acknowledgement.
    ///
    /// Once the queue is bound, packets may arrive before the acknowledgement; they are handed back to the kernel
    /// with NF_REPEAT, which runs the hook again and so queues them anew for `run`.
    private func configure(operation: String, sequence: UInt32, _ build: (UnsafeMutablePointer<nlmsghdr>) -> Void) throws(NetfilterError) {
        let object = "queue \(configuration.queueNumber)"
        let buffer = sendBuffer.baseAddress!.assumingMemoryBound(to: CChar.self)
        guard let nlh = nfq_nlmsg_put(buffer, Int32(NFQNL_MSG_CONFIG.rawValue), UInt32(configuration.queueNumber)) else {
            throw NetfilterError(operation: operation, object: object, errno: ENOMEM)
        }
        cnf_nlmsg_set_seq(nlh, sequence)
        cnf_nlmsg_add_flags(nlh, UInt16(NLM_F_ACK))
        build(nlh)
        let length = Int(nlh.pointee.nlmsg_len)
        _ = try syscall { mnl_socket_sendto(socket, nlh, length) }.get("sendto(\(operation))", object)

        let packetType = cnf_nfnl_msg_type(UInt8(NFNL_SUBSYS_QUEUE), UInt8(NFQNL_MSG_PACKET.rawValue))
        let deadline = ContinuousClock.now.advanced(by: .seconds(5))
        while ContinuousClock.now < deadline {
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            _ = try syscall { poll(&descriptor, 1, 100) }.get("poll(\(operation))", object)
            let received = syscall { recv(fd, receiveBuffer.baseAddress, receiveBuffer.count, 0) }
            let count: Int
            switch received {
            case .success(let value): count = value
            case .failure(let code) where code == EAGAIN || code == EWOULDBLOCK || code == ENOBUFS: continue
            case .failure(let code): throw NetfilterError(operation: "recv(\(operation))", object: object, errno: code)
            }
            var remaining = Int32(count)
            var current: UnsafeMutablePointer<nlmsghdr>? = receiveBuffer.baseAddress?.assumingMemoryBound(to: nlmsghdr.self)
            var result: Int32? = nil
            while let message = current, mnl_nlmsg_ok(message, remaining) {
                if Int32(cnf_nlmsg_type(message)) == NLMSG_ERROR && cnf_nlmsg_seq(message) == sequence {
                    result = cnf_nlmsg_error_code(message)
                } else if cnf_nlmsg_type(message) == packetType {
                    if cnf_nfq_parse_packet(message, attributes, Int32(attributeCount)) == 0, let header = attributes[Int(NFQA_PACKET_HDR.rawValue)] {
                        var scratch = LoopState(counters: QueueCounters())
                        sendRepeatDuringSetup(id: cnf_nfq_packet_id(header), loop: &scratch)
                    }
                }
                current = mnl_nlmsg_next(message, &remaining)
            }
            guard let result else { continue }
            if result == 0 { return }
            throw NetfilterError(operation: operation, object: object, errno: result, hint: NetfilterQueue.hint(operation: operation, errno: result, queue: configuration.queueNumber))
        }
        throw NetfilterError(operation: operation, object: object, errno: ETIMEDOUT,
                             hint: "the kernel did not acknowledge the queue configuration within 5 s")
    }

    /// NF_REPEAT for a packet that arrived while the queue was being configured (the send buffer holds the config
    /// message being acknowledged, so this one is built on the stack).
    private func sendRepeatDuringSetup(id: UInt32, loop: inout LoopState) {
        withUnsafeTemporaryAllocation(byteCount: 256, alignment: 16) { scratch in
            guard let nlh = nfq_nlmsg_put(scratch.baseAddress!.assumingMemoryBound(to: CChar.self),
                                          Int32(NFQNL_MSG_VERDICT.rawValue), UInt32(configuration.queueNumber)) else { return }
            nfq_nlmsg_verdict_put(nlh, Int32(bitPattern: id), NF_REPEAT)
            let length = Int(nlh.pointee.nlmsg_len)
            _ = syscall { mnl_socket_sendto(socket, nlh, length) }
        }
    }

    static func hint(operation: String, errno code: Int32, queue: UInt16) -> String? {
        switch code {
        case EPERM where operation == "NFQNL_CFG_CMD_BIND", EBUSY:
            // The kernel answers EPERM both without CAP_NET_ADMIN and when another socket owns the queue.
            return "queue \(queue) is already bound by another process (is another midcomd running?), or this process lacks CAP_NET_ADMIN (run as root or grant the capability)"
        case EOPNOTSUPP where operation == "NFQA_CFG_FLAGS":
            return "this kernel does not support one of the requested queue flags (fail-open, GSO)"
        case EPERM, EACCES:
            return nil
        default:
            return nil
        }
    }
}
