#if canImport(Glibc)
import Glibc
#endif
import CSPHost
import CSPWire
import Foundation
import MidcomControl
import MidcomCore
import Netfilter
import Synchronization

/// Mark carried by signaling that midcomd processed and let through; `forward` accepts it
/// (nft-rules/midcom.nft). 0x4d43 is "MC".
let signalingMark: UInt32 = 0x4d43_0001
/// Mark of a packet of an admitted flow; queue_hook sets the same on the fast path.
let admittedMark: UInt32 = 0x4d43_0002

/// The running gateway: wires the queue reader, the engine, the nft programmer and the control
/// socket together. Start order: nft programmer (kernel state) first, then the control socket,
/// then the queue; stop order is the reverse, so the programmer stops last.
final class Daemon: Sendable {
    let configuration: MidcomConfiguration
    let log: Log
    let engine: Mutex<GatewayEngine>
    let nft: NFTablesClient
    /// One reader per queue of the fan-out (`queue-count`); the first runs on the main thread.
    let queues: [NetfilterQueue]
    let encoding: QueueEncoding
    let control = Mutex<ControlServer?>(nil)
    /// The middlebox's own CSP sockets (one per family, bound to the CSP port): answers leave from
    /// them, and requests addressed to the middlebox itself arrive on them.
    let agents: [IPAddress.Family: UDPSocket]
    let conntrack: ConntrackClient
    let notifier: SystemdNotifier
    let started = ContinuousClock.now
    let malformedPackets = Atomic<UInt64>(0)
    let kernelErrors = Atomic<UInt64>(0)
    let stopping = Atomic<Bool>(false)

    init(configuration: MidcomConfiguration, log: Log, notifier: SystemdNotifier) throws {
        self.configuration = configuration
        self.log = log
        self.notifier = notifier
        let identity = MiddleboxIdentity(
            id: configuration.middleboxID ?? secureRandomUInt64(), epoch: UInt32(truncatingIfNeeded: secureRandomUInt64()),
            name: configuration.middleboxName)
        engine = Mutex(GatewayEngine(configuration: configuration, identity: identity))

        nft = try NFTablesClient()
        guard try nft.tableExists(table: configuration.table) else {
            throw DaemonError(
                "table inet \(configuration.table) does not exist: load the Midcom ruleset first (nft -f /etc/nftables.d/midcom.nft)")
        }
        conntrack = try ConntrackClient()
        // Bind the queue before touching the queue rule: if another midcomd holds the queue, we
        // must fail without replacing (and then removing) the rule it depends on.
        queues = try (0..<configuration.queueCount).map { offset in
            var queueConfiguration = QueueConfiguration(queueNumber: configuration.queueNumber + offset)
            // CSP messages SHOULD fit in 1200 octets (PROTOCOL.md 2.1) and first packets are judged
            // on their headers: 2 KiB copies all of that; larger signaling is forwarded unprocessed.
            queueConfiguration.copyRange = 2048
            queueConfiguration.maxQueueLength = configuration.queueMaximumLength
            queueConfiguration.failOpen = configuration.queueFailOpen
            queueConfiguration.receiveBufferBytes = configuration.queueReceiveBuffer
            return try NetfilterQueue(queueConfiguration)
        }
        encoding = try nft.installQueueRule(
            table: configuration.table, chain: "enqueue",
            spec: QueueRuleSpec(
                queueNumber: configuration.queueNumber, queueCount: configuration.queueCount,
                cpuFanout: false, bypass: configuration.onDaemonAbsent == .defaultPolicy),
            encoding: QueueEncodingPreference(rawValue: configuration.encoding.rawValue) ?? .auto)
        var agents: [IPAddress.Family: UDPSocket] = [:]
        for family in [IPAddress.Family.ipv4, .ipv6] {
            do {
                agents[family] = try UDPSocket(family: family, port: configuration.cspPort, reuseAddress: true)
            } catch {
                log(.warning, "cannot bind the CSP port \(configuration.cspPort) for \(family): \(error); answering from an ephemeral port")
                agents[family] = try? UDPSocket(family: family)
            }
        }
        self.agents = agents
        do {
            try checkRuleset()
        } catch {
            try? nft.flushChain(table: configuration.table, chain: "enqueue")
            throw error
        }
    }

    // MARK: lifecycle

    func run() throws {
        let server = try ControlServer(path: configuration.controlSocket) { [weak self] request in
            self?.answer(request) ?? .failure("midcomd is stopping")
        }
        control.withLock { $0 = server }
        Thread.detachNewThread { server.run() }
        for socket in agents.values {
            Thread.detachNewThread { [self] in self.serveLocalRequests(on: socket) }
        }
        Thread.detachNewThread { [self] in self.adoptKernelState() }
        log(.notice, "midcomd started: queue \(queueDescription) (\(encoding == .native ? "native nft queue expression" : "xtables NFQUEUE target via nft_compat")), control socket \(configuration.controlSocket), epoch \(engine.withLock { $0.identity.epoch })")
        notifier.notify("READY=1\nSTATUS=queue \(queueDescription), \(encoding.rawValue) encoding")
        for extra in queues.dropFirst() {
            Thread.detachNewThread { [self] in
                let work = BurstWork()
                do {
                    try extra.run(beforeVerdicts: { self.flush(work) }) { packet in self.handle(packet, work: work) }
                } catch {
                    log(.error, "queue reader failed: \(error)")
                    stop()
                }
            }
        }
        let work = BurstWork()
        try queues[0].run(
            tickInterval: .milliseconds(250), tick: { [self] in tick() }, beforeVerdicts: { [self] in flush(work) }
        ) { [self] packet in
            handle(packet, work: work)
        }
    }

    var queueDescription: String {
        configuration.queueCount == 1
            ? "\(configuration.queueNumber)"
            : "\(configuration.queueNumber)-\(configuration.queueNumber + configuration.queueCount - 1) (fan-out by flow hash)"
    }

    func stop() {
        guard !stopping.exchange(true, ordering: .relaxed) else { return }
        notifier.notify("STOPPING=1")
        log(.notice, "stopping: removing the queue rule; admitted flows keep their kernel timeouts")
        for queue in queues { queue.stop() }
    }

    /// After run() returns: undo what start installed, in reverse order.
    func shutdown() {
        control.withLock { $0?.stop() }
        do {
            try nft.flushChain(table: configuration.table, chain: "enqueue")
        } catch {
            log(.error, "could not remove the queue rule: \(error)")
        }
    }

    // MARK: packet path

    func handle(_ packet: borrowing QueuedPacket, work: BurstWork) -> Verdict {
        guard let ip = try? IPPacketView(packet.payload) else {
            malformedPackets.add(1, ordering: .relaxed)
            let length = packet.payload.count
            log.limited(.warning, category: "malformed-ip", "dropped a queued packet that is not valid IPv4/IPv6 (\(length) bytes)")
            return .drop
        }
        if ip.proto == .udp, let udp = try? UDPDatagramView(ip),
            udp.destinationPort == configuration.cspPort || udp.sourcePort == configuration.cspPort
        {
            return handleSignaling(udp, truncated: packet.originalLength > packet.payload.count, id: packet.id, work: work)
        }
        return handleFirstPacket(ip, id: packet.id, work: work)
    }

    func handleSignaling(_ udp: UDPDatagramView, truncated: Bool, id: UInt32, work: BurstWork) -> Verdict {
        let source = CSPEndpoint(address: udp.packet.source, port: udp.sourcePort)
        let destination = CSPEndpoint(address: udp.packet.destination, port: udp.destinationPort)
        if truncated {
            log.limited(.warning, category: "truncated", "signaling from \(source) truncated by the queue copy range: forwarded unprocessed")
            return .accept(mark: signalingMark)
        }
        let now = self.now()
        let outcome = engine.withLock { $0.handleSignaling(payload: udp.payload, source: source, destination: destination, now: now) }
        if !outcome.kernel.isEmpty {
            // Programmed with the rest of the burst, before any verdict of it leaves; the reply
            // (e.g. REDIRECT) waits too, so the host never acts on state that is not there yet.
            var fallback: BurstWork.Failure = .none
            // An ACCEPT for state we could not install must not reach the host as success; a
            // failed removal only leaves elements that time out by themselves.
            if let message = try? CSPMessage.parse(udp.payload), message.type == .accept || message.type == .mapped {
                fallback = .refuseAccept(sessionID: message.sessionID, nonce: message.nonce, host: destination, responder: source)
            }
            work.entries.append(.init(packetID: id, changes: outcome.kernel, reply: outcome.reply, failure: fallback))
        } else if let reply = outcome.reply {
            send(reply)
        }
        if let event = outcome.event { log.limited(.info, category: "signaling", event) }
        switch outcome.verdict {
        case .forward:
            return .accept(mark: signalingMark)
        case .drop:
            return .drop
        case .forwardRewritten(let message):
            guard let rewritten = try? PacketBuilder.replacingUDPPayload(of: udp, with: message) else {
                return .accept(mark: signalingMark)
            }
            return .accept(mark: signalingMark, replacingPayloadWith: rewritten)
        }
    }

    func handleFirstPacket(_ ip: IPPacketView, id: UInt32, work: BurstWork) -> Verdict {
        let flow = ip.flow
        // Discovery rides on first packets, which are queued anyway: answer, then decide the
        // packet like any other. A malformed option list is not our business: the packet is
        // judged on its flow alone.
        if let found = try? CSPDiscoveryOption.find(in: ip), found.option.flags.contains(.query) {
            let destination = CSPEndpoint(address: ip.source, port: found.option.effectiveReplyPort)
            if let announce = engine.withLock({ $0.announce(to: destination, nonce: found.option.nonce, triggerLength: ip.totalLength, now: now()) }) {
                send(announce)
                log.limited(.info, category: "discovery", "ANNOUNCE to \(destination) (\(found.encoding) discovery option)")
            }
        }
        let decision = engine.withLock { $0.handleUnsignaled(flow: flow, now: now()) }
        switch decision {
        case .drop(let cache):
            // The kernel drops the rest of the flow; a failure only costs more queued packets.
            if let cache { work.entries.append(.init(packetID: id, changes: [cache], reply: nil, failure: .none)) }
            return .drop
        case .defaultPolicy:
            return .accept
        case .admit(let change):
            // If the element cannot be installed, the packet meets the default policy instead.
            work.entries.append(.init(packetID: id, changes: [change], reply: nil, failure: .verdict(.accept)))
            return .accept(mark: admittedMark)
        }
    }

    /// Runs before a burst's verdicts leave: one netlink batch for all its kernel changes, then the
    /// replies that waited for them. If the batch fails, each packet's changes are tried alone and
    /// the packets whose changes fail get their fallback verdict.
    func flush(_ work: BurstWork) -> [(id: UInt32, verdict: Verdict)] {
        guard !work.entries.isEmpty else { return [] }
        defer { work.entries.removeAll(keepingCapacity: true) }
        if (try? apply(work.entries.flatMap(\.changes))) != nil {
            for entry in work.entries { if let reply = entry.reply { send(reply) } }
            return []
        }
        var overrides: [(id: UInt32, verdict: Verdict)] = []
        for entry in work.entries {
            if (try? apply(entry.changes)) != nil {
                if let reply = entry.reply { send(reply) }
                continue
            }
            switch entry.failure {
            case .none:
                if let reply = entry.reply { send(reply) }
            case .verdict(let verdict):
                overrides.append((entry.packetID, verdict))
            case .refuseAccept(let sessionID, let nonce, let host, let responder):
                var outcome = engine.withLock {
                    $0.kernelChangeFailed(sessionID: sessionID, replyTo: host, nonce: nonce, reason: "middlebox could not install state")
                }
                outcome.reply?.source = responder
                if let reply = outcome.reply { send(reply) }
                overrides.append((entry.packetID, .drop))
            }
        }
        return overrides
    }

    func send(_ outgoing: OutgoingMessage) {
        do {
            let bytes = try outgoing.message.serialize()
            let family = outgoing.destination.address.family
            if let source = outgoing.source, source.address.family == family {
                // Answering in the responder's place: from its address, so the reply passes the
                // conntrack/NAT state of the middleboxes nearer the host (docs/PROTOCOL.md 2.3).
                // One socket per reply: these are refusals, not the data path.
                do {
                    let socket = try UDPSocket(family: family, address: source.address, port: source.port, reuseAddress: true, transparent: true)
                    try socket.send(bytes, to: outgoing.destination)
                    return
                } catch {
                    log.limited(.warning, category: "reply", "cannot answer as \(source) (\(error)); answering from our own address")
                }
            }
            guard let socket = agents[family] else { return }
            try socket.send(bytes, to: outgoing.destination)
        } catch {
            log.limited(.warning, category: "reply", "could not send \(outgoing.message.type) to \(outgoing.destination): \(error)")
        }
    }

    /// Programs one batch of engine decisions; revocations also delete the flows' conntrack
    /// entries so that established traffic stops with its admission.
    func apply(_ changes: [KernelChange]) throws {
        // Deleting the conntrack entries of a wildcard flow means dumping the whole conntrack table
        // (about 5 ms even when it is nearly empty). A pinhole whose element never matched a packet
        // let no connection in: ask its counter first, while the element still exists.
        var unused: Set<FlowTuple> = []
        for case .revoke(let flow) in changes where flow.sourcePort == 0 || flow.source.isUnspecified {
            let element = AdmissionElement(admitting: flow)
            if let found = try? nft.element(table: configuration.table, set: element.set, key: element.key), found.packets == 0 {
                unused.insert(flow)
            }
        }
        var batch = NFTChangeSet(table: configuration.table)
        for change in changes { batch.append(change) }
        do {
            try nft.apply(batch)
        } catch {
            kernelErrors.add(1, ordering: .relaxed)
            log.limited(.error, category: "kernel", "kernel update failed: \(error)")
            throw error
        }
        for change in changes {
            switch change {
            case .revoke(let flow) where !unused.contains(flow):
                forgetConnections(of: flow)
            case .dnat(let proto, let external, _, _), .removeDNAT(let proto, let external, _):
                // Conntrack keys translated connections by their original (external) tuple. On
                // install: entries made before the mapping (a peer that tried early) would never
                // be translated; on removal: connections through the mapping must stop with it.
                let any = IPAddress(ipv4: 0)
                forgetConnections(of: FlowTuple(proto: proto, source: any, sourcePort: 0, destination: external.address, destinationPort: external.port))
            default:
                break
            }
        }
    }

    func forgetConnections(of flow: FlowTuple) {
        let filter = ConntrackFilter(
            family: flow.source.family == .ipv4 ? 2 : 10, proto: flow.proto.rawValue, source: flow.source.bytes,
            sourcePort: flow.sourcePort, destination: flow.destination.bytes, destinationPort: flow.destinationPort)
        do {
            _ = try conntrack.deleteEntries(matching: filter)
        } catch {
            kernelErrors.add(1, ordering: .relaxed)
            log.limited(.warning, category: "conntrack", "could not delete conntrack entries of \(flow): \(error)")
        }
    }

    /// Serves CSP requests addressed to this middlebox (incoming pinholes from any peer).
    func serveLocalRequests(on socket: UDPSocket) {
        while !stopping.load(ordering: .relaxed) {
            guard let received = try? socket.receive(timeout: .milliseconds(250)) else { continue }
            let now = self.now()
            let outcome = received.bytes.withUnsafeBytes { payload in
                engine.withLock { $0.handleLocalRequest(payload: payload, from: received.from, now: now) }
            }
            if !outcome.kernel.isEmpty {
                do {
                    try apply(outcome.kernel)
                } catch {
                    if let request = try? CSPMessage.parse(received.bytes), request.type == .setup {
                        let failed = engine.withLock {
                            $0.kernelChangeFailed(sessionID: request.sessionID, replyTo: received.from, nonce: request.nonce, reason: "middlebox could not install state")
                        }
                        if let reply = failed.reply { send(reply) }
                    }
                    continue
                }
            }
            if let event = outcome.event { log.limited(.info, category: "signaling", event) }
            if let reply = outcome.reply { send(reply) }
        }
    }

    // MARK: housekeeping

    func now() -> Instant {
        let elapsed = started.duration(to: .now)
        return Instant(nanoseconds: UInt64(elapsed.components.seconds) * 1_000_000_000 + UInt64(elapsed.components.attoseconds / 1_000_000_000))
    }

    /// Called by the packet loop itself, so the watchdog fires only while packets can be served.
    func tick() {
        notifier.notify("WATCHDOG=1")
        let expired = engine.withLock { $0.expire(now: now()) }
        for session in expired where session.state != .pending {
            log.limited(.info, category: "expiry", "session \(hex(session.id)) \(session.flow) expired")
            // The elements time out in the kernel by themselves; the connections they let in must go too.
            for flow in session.admittedFlows { forgetConnections(of: flow) }
        }
    }

    /// Checks that the loaded ruleset has every set and map this midcomd programs: a ruleset from an
    /// older release would otherwise fail one batch after another at run time. Listing the sets
    /// that only this release has is cheap (they are small after a reload).
    func checkRuleset() throws {
        for set in ["drop4", "drop6", "snat4", "dnat4"] {
            let listing = Result { () throws(NetfilterError) in try nft.listElements(table: configuration.table, set: set) }
            if case .failure(let error) = listing, error.errno == ENOENT {
                throw DaemonError(
                    "table inet \(configuration.table) has no set \(set): it was loaded from an older ruleset; reload nft-rules/midcom.nft (nft -f /etc/nftables.d/midcom.nft) and start midcomd again")
            }
            _ = try listing.get()
        }
    }

    /// Sessions admitted by a previous run are still in the kernel with their timeouts: adopt them.
    /// Runs on its own thread after start-up: the kernel dumps a big set in quadratic time (tens of
    /// seconds at a million elements), and the gateway must serve packets meanwhile; a session
    /// signaled again before it is adopted simply wins.
    func adoptKernelState() {
        var adopted = 0
        for set in AdmissionElement.allSets {
            let elements: [NFTSetElement]
            do {
                elements = try nft.listElements(table: configuration.table, set: set)
            } catch {
                log(.warning, "cannot list set \(set) to adopt earlier sessions: \(error)")
                continue
            }
            let now = self.now()
            for element in elements {
                guard let flow = AdmissionElement.flow(set: set, key: element.key) else { continue }
                let remaining = element.expiresIn.map { UInt32(clamping: $0.components.seconds) } ?? configuration.maximumLifetime
                engine.withLock { $0.adopt(flow: flow, remaining: max(remaining, 1), now: now) }
                adopted += 1
            }
        }
        if adopted > 0 { log(.notice, "adopted \(adopted) admitted flow(s) left in the kernel by a previous run") }
    }
}

/// Kernel work collected while one queue reader handles a burst of packets; owned by that reader's
/// thread (it never crosses threads, so it needs no lock).
final class BurstWork {
    enum Failure {
        /// Nothing to undo (e.g. a drop-cache element).
        case none
        /// Give the packet this verdict instead.
        case verdict(Verdict)
        /// Drop the ACCEPT and tell the host, in the responder's name, that we could not install.
        case refuseAccept(sessionID: UInt64, nonce: UInt64, host: CSPEndpoint, responder: CSPEndpoint)
    }

    struct Entry {
        var packetID: UInt32
        var changes: [KernelChange]
        var reply: OutgoingMessage?
        var failure: Failure
    }

    var entries: [Entry] = []

    init() { entries.reserveCapacity(64) }
}

struct DaemonError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
