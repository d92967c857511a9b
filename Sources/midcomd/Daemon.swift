#if canImport(Glibc)
import Glibc
#endif
import CSPHost
import CSPTrust
import CSPWire
import Foundation
import MidcomControl
import MidcomCore
import MidcomKernel
import Netfilter
import Synchronization
import SystemSupport

/// Mark carried by signaling that midcomd processed and let through; `forward` accepts it
/// (nft-rules/midcom.nft). 0x4d43 is "MC".
let signalingMark: UInt32 = 0x4d43_0001
/// Mark of a packet of an admitted flow; queue_hook sets the same on the fast path.
let admittedMark: UInt32 = 0x4d43_0002
/// Set by queue_hook on a datagram from a CSP port inside a conntrack entry (the answer to a
/// request that went out): only such datagrams are treated as CSP replies. A datagram from port
/// 7227 without it is an ordinary first packet, so the port cannot open any inside port.
let cspReplyMark: UInt32 = 0x4d43_0003

/// The running gateway: wires the queue readers, the engine, the kernel programmer, the clean-up
/// service and the control socket together. Start order: table lock, kernel clients, queue bind,
/// queue rule, ruleset check, then the services; stop order is the reverse, so the kernel
/// programmer stops last.
final class Daemon: Sendable {
    let configuration: MidcomConfiguration
    let log: Log
    let engine: Mutex<GatewayEngine>
    /// Held for the daemon's life: one midcomd per table and network namespace.
    let lock: TableLock
    let nft: NFTablesClient
    let kernel: NFTKernelProgrammer
    let cleanup: CleanupService
    /// One reader per queue of the fan-out (`queue-count`); the first runs on the main thread.
    let queues: [NetfilterQueue]
    /// The proved-sources queue (chain enqueue_proved): signaling a spoofed flood cannot crowd out.
    let provedQueue: NetfilterQueue
    let encoding: QueueEncoding
    let control = Mutex<ControlServer?>(nil)
    /// The middlebox's own CSP sockets (one per family, bound to the CSP port): answers leave from
    /// them, and requests addressed to the middlebox itself arrive on them.
    let agents: [IPAddress.Family: UDPSocket]
    /// NAT-PMP's socket (UDP 5351), with `[nat]` and `port-mapping` on.
    let portMappingSocket: UDPSocket?
    let notifier: SystemdNotifier
    /// Answers leave from here: their sockets (IP_TRANSPARENT ones included) are not the packet
    /// thread's business.
    let replies = ReplyQueue()
    let started = ContinuousClock.now
    let startedNanoseconds = bootTimeNanoseconds()
    let malformedPackets = Atomic<UInt64>(0)
    let kernelErrors = Atomic<UInt64>(0)
    let failedReplies = Atomic<UInt64>(0)
    let stopping = Atomic<Bool>(false)
    /// Set by shutdown as it removes the queue rules, under this lock; the ruleset watcher puts
    /// them back only under it, and never once it is set.
    let queueRulesRemovedForGood = Mutex<Bool>(false)
    /// `midctl announce`: the port-mapping thread starts its announcements again.
    let announceRequested = Atomic<Bool>(false)
    /// Wakes the port-mapping thread for `announceRequested` and at stop; it otherwise sleeps until a
    /// request or its next announcement.
    let portMappingWake: WakeupPipe
    /// Requests to announce our epoch to the inside hosts (CSP ANNOUNCE): 1 at start, one more per
    /// `midctl announce`; the announcing thread sends its schedule whenever the count changes.
    let epochAnnouncementRequests = Atomic<UInt64>(1)
    /// Wakes the announcing thread for a new request (and at stop).
    let epochAnnouncementWake = DispatchSemaphore(value: 0)
    let epochAnnouncements = Atomic<UInt64>(0)

    /// The file and overrides the configuration came from: read again on reload.
    let source: ConfigurationSource
    let reloadFailures = Atomic<UInt64>(0)
    /// Our table in the kernel, as the ruleset watch last saw it, and how often an nftables
    /// reload took it away and we put it back.
    let rulesetCondition = Mutex<RulesetCondition>(.intact)
    /// Live events for `midctl monitor`.
    let events = EventHub()
    /// The Prometheus endpoint, with `[metrics] listen`.
    let metrics: MetricsService?
    let rulesetLost = Atomic<UInt64>(0)
    let rulesetRestored = Atomic<UInt64>(0)
    /// One reload at a time (SIGHUP and `midctl reload` may meet).
    let reloading = Mutex<Void>(())
    /// How the sessions of the previous run came back (Restart.swift).
    let restart = RestartState()

    init(configuration: MidcomConfiguration, source: ConfigurationSource, log: Log, notifier: SystemdNotifier) throws {
        self.configuration = configuration
        self.source = source
        self.log = log
        self.notifier = notifier
        // First of all: a second daemon must fail before it touches anything the first one uses
        // (its epoch file among them).
        lock = try TableLock(table: configuration.table)
        nft = try NFTablesClient()
        portMappingWake = try WakeupPipe()  // before the queue rules: a failure here leaves nothing behind
        guard let comment = try nft.tableComment(table: configuration.table) else {
            throw DaemonError(
                "table inet \(configuration.table) does not exist: load the Midcom ruleset first (nft -f /etc/nftables.d/midcom.nft)")
        }
        let revision = NFTSchema.revision(ofTableComment: comment)
        guard revision == NFTSchema.rulesetRevision else {
            throw DaemonError(
                "table inet \(configuration.table) was loaded from ruleset revision \(revision), this midcomd needs revision \(NFTSchema.rulesetRevision): reload nft-rules/midcom.nft of this release (nft -f /etc/nftables.d/midcom.nft) and start midcomd again")
        }
        let identity = try PersistentIdentity.load(configuration: configuration, directory: configuration.trust.stateDirectory)
        var relayTokenKey: RelayTokenKey?
        if configuration.relay.enabled, let signingKey = identity.key {
            relayTokenKey = try RelayOffering.loadTokenKey(
                directory: configuration.trust.stateDirectory, signingKey: signingKey, log: log)
            // Not fatal at start (an address may come up after us), but every offer naming it
            // sends hosts nowhere until it does; `midcomd --check` refuses it.
            for endpoint in RelayOffering.foreignListenEndpoints(configuration.relay) {
                log(.warning, "[relay] listen \(endpoint): not an address of this box (yet): offers naming it cannot be used")
            }
        }
        engine = Mutex(
            GatewayEngine(
                configuration: configuration, identity: identity, startedAt: wallClockSeconds(), relayTokenKey: relayTokenKey))
        let metrics = configuration.metricsListen.map { _ in MetricsService() }
        self.metrics = metrics
        var observeBatch: (@Sendable (Duration, Int) -> Void)?
        if let histogram = metrics?.batchLatency {
            observeBatch = { duration, _ in histogram.record(duration) }
        }
        kernel = NFTKernelProgrammer(
            nft: nft, conntrack: try ConntrackClient(), table: configuration.table, flowtableDevices: configuration.flowtableDevices,
            flowtableEmptyFailed: { [log] error in
                log.limited(.error, category: "flowtable", "could not empty the flowtable after a pushback filter came (offloaded flows may pass it until their connections end): \(error)")
            },
            observeBatch: observeBatch)
        cleanup = CleanupService(kernel: kernel)
        // Bind the queue before touching the queue rule: if another process holds the queue, we
        // must fail without replacing (and then removing) the rule it depends on.
        func queueConfiguration(_ number: UInt16) -> QueueConfiguration {
            var queueConfiguration = QueueConfiguration(queueNumber: number)
            queueConfiguration.copyRange = 2048
            queueConfiguration.maxQueueLength = configuration.queueMaximumLength
            queueConfiguration.failOpen = configuration.queueFailOpen
            queueConfiguration.receiveBufferBytes = configuration.queueReceiveBuffer
            return queueConfiguration
        }
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
        provedQueue = try NetfilterQueue(queueConfiguration(configuration.provedQueueNumber))
        encoding = try nft.installQueueRule(
            table: configuration.table, chain: "enqueue",
            spec: QueueRuleSpec(
                queueNumber: configuration.queueNumber, queueCount: configuration.queueCount,
                cpuFanout: false, bypass: configuration.onDaemonAbsent == .defaultPolicy),
            encoding: QueueEncodingPreference(rawValue: configuration.encoding.rawValue) ?? .auto)
        do {
            _ = try nft.installQueueRule(
                table: configuration.table, chain: "enqueue_proved",
                spec: QueueRuleSpec(
                    queueNumber: configuration.provedQueueNumber, queueCount: 1, cpuFanout: false,
                    bypass: configuration.onDaemonAbsent == .defaultPolicy),
                encoding: QueueEncodingPreference(rawValue: encoding.rawValue) ?? .auto)
        } catch {
            try? nft.flushChain(table: configuration.table, chain: "enqueue")
            throw error
        }
        var agents: [IPAddress.Family: UDPSocket] = [:]
        for family in [IPAddress.Family.ipv4, .ipv6] {
            do {
                agents[family] = try UDPSocket(family: family, port: configuration.cspPort, reuseAddress: true)
            } catch {
                log(.warning, "cannot bind the CSP port \(configuration.cspPort) for \(family): \(error); answering from an ephemeral port")
                do {
                    agents[family] = try UDPSocket(family: family)
                } catch {
                    log(.warning, "no CSP socket for \(family) at all (\(error)): answers to \(family) hosts are counted as failed replies")
                }
            }
        }
        self.agents = agents
        var portMapping: UDPSocket?
        if let nat = configuration.nat, nat.portMapping {
            do {
                portMapping = try UDPSocket(family: .ipv4, port: NATPMP.serverPort, reuseAddress: true)
            } catch {
                log(.warning, "cannot bind UDP \(NATPMP.serverPort) for NAT-PMP (\(error)): is another NAT-PMP/PCP server (miniupnpd) running? NAT-PMP is off")
            }
        }
        self.portMappingSocket = portMapping
        do {
            try checkRuleset()
            try filterPortMappingInput(serving: portMapping != nil)
            try linkFlowtable()
        } catch {
            do {
                try nft.flushChain(table: configuration.table, chain: "enqueue")
                try nft.flushChain(table: configuration.table, chain: "enqueue_proved")
            } catch let flushError {
                log(.error, "could not remove the queue rule again: \(flushError)")
            }
            throw error
        }
    }

    // MARK: lifecycle

    func run() throws {
        let access = try controlAccess(configuration)
        let server = try ControlServer(
            path: configuration.controlSocket, access: access, log: { [log] in log(.warning, $0) },
            subscribe: { [events] in events.subscribe() },
            sessionRows: { [weak self] request in self?.sessionRows(request) ?? .refused("midcomd is stopping") }
        ) {
            [weak self] request in
            self?.answer(request) ?? .failure("midcomd is stopping")
        }
        control.withLock { $0 = server }
        startThread("control") { server.run() }
        startThread("ct-cleanup") { [self] in
            cleanup.run(shouldStop: { stopping.load(ordering: .relaxed) }) { error in
                kernelErrors.add(1, ordering: .relaxed)
                log.limited(.warning, category: "conntrack", "could not delete conntrack entries of removed admissions: \(error)")
            }
        }
        for socket in agents.values {
            startThread("csp-agent") { [self] in self.serveLocalRequests(on: socket) }
        }
        if let socket = portMappingSocket {
            startThread("port-mapping") { [self] in self.servePortMapping(on: socket) }
        }
        startThread("replies") { [self] in
            var sockets = TransparentSockets()
            replies.run(shouldStop: { stopping.load(ordering: .relaxed) }) { transmit($0, sockets: &sockets) }
        }
        startThread("adoption") { [self] in self.adoptKernelState() }
        startThread("snapshots") { [self] in self.writeSnapshotsPeriodically() }
        startThread("ruleset-watch") { [self] in self.watchRuleset() }
        startThread("epoch-announce") { [self] in self.announceEpochOnRequest() }
        if let metrics, let listen = configuration.metricsListen { metrics.serve(at: listen, daemon: self) }
        let identity = engine.withLock { $0.identity }
        log(.notice, "middlebox \(hex(identity.id)) key \(identity.key?.publicKey.text ?? "none") (challenge \(configuration.trust.challenge.rawValue), signatures \(configuration.trust.signatures.rawValue))")
        log(.notice, "midcomd started: queue \(queueDescription) (\(encoding == .native ? "native nft queue expression" : "xtables NFQUEUE target via nft_compat")), control socket \(configuration.controlSocket), epoch \(engine.withLock { $0.identity.epoch })")
        notifier.notify("READY=1\nSTATUS=queue \(queueDescription), \(encoding.rawValue) encoding")
        // One reader thread per queue, but no more than the CPUs midcomd may run on.
        let cpus = allowedCPUCount()
        let readers = NetfilterQueue.readerGroups(queues + [provedQueue], cpus: cpus ?? Int.max)
        let split = readers.map { group in group.map { "\($0.configuration.queueNumber)" }.joined(separator: "+") }
        let allowed = cpus.map { "\($0) CPU\($0 == 1 ? "" : "s") allowed" } ?? "CPU affinity unknown"
        log(.notice, "queue readers: \(split.joined(separator: ", ")) (\(readers.count == 1 ? "one thread" : "a thread each"); \(allowed))")
        for group in readers.dropFirst() {
            startThread("queue-reader") { [self] in
                let burst = makeBurst()
                var parseStorage = CSPMessage.empty
                do {
                    try NetfilterQueue.run(group, beforeVerdicts: { burst.flush() }) { packet in
                        self.handle(packet, burst: burst, parseStorage: &parseStorage)
                    }
                } catch {
                    log(.error, "queue reader failed: \(error)")
                    stop()
                }
            }
        }
        let burst = makeBurst()
        var parseStorage = CSPMessage.empty
        try NetfilterQueue.run(
            readers[0], tickInterval: .milliseconds(250), tick: { [self] in tick(burst) }, beforeVerdicts: { burst.flush() }
        ) { [self] packet in
            handle(packet, burst: burst, parseStorage: &parseStorage)
        }
    }

    /// A thread of midcomd's, named for the operator (`top -H`, `ps -L`; the main thread, the first
    /// queue reader, keeps the process's name): which one is busy or wakes often shows at a glance.
    func startThread(_ name: String, _ body: @escaping @Sendable () -> Void) {
        Thread.detachNewThread {
            nameCurrentThread(name)
            body()
        }
    }

    func makeBurst() -> BurstBatcher {
        BurstBatcher(
            kernel: kernel, cleanup: cleanup,
            hooks: .init(
                send: { [self] in send($0) },
                forgetSession: { [self] id in engine.withLock { $0.forgetFailed(sessionID: id) } },
                failed: { [self] error, single in
                    kernelErrors.add(1, ordering: .relaxed)
                    log.limited(.error, category: "kernel", "kernel update failed\(single ? " (one packet's changes)" : ""): \(error)")
                }))
    }

    var queueDescription: String {
        configuration.queueCount == 1
            ? "\(configuration.queueNumber)"
            : "\(configuration.queueNumber)-\(configuration.queueNumber + configuration.queueCount - 1) (fan-out by flow hash)"
    }

    func stop() {
        guard !stopping.exchange(true, ordering: .relaxed) else { return }
        epochAnnouncementWake.signal()
        portMappingWake.signal()
        notifier.notify("STOPPING=1")
        log(.notice, "stopping: removing the queue rule; admitted flows keep their kernel timeouts")
        for queue in queues { queue.stop() }
        provedQueue.stop()
    }

    /// After run() returns: undo what start installed, in reverse order. The chain is ours to
    /// flush: the table lock keeps every other midcomd away from it.
    func shutdown() {
        control.withLock { $0?.stop() }
        // The packet loops have stopped: the snapshot holds every session, for the next start.
        writeSessionSnapshot(clean: true)
        queueRulesRemovedForGood.withLock { removed in
            removed = true
            for chain in ["enqueue", "enqueue_proved"] {
                do {
                    try nft.flushChain(table: configuration.table, chain: chain)
                } catch {
                    log(.error, "could not remove the queue rule of \(chain): \(error)")
                }
            }
        }
        do { try filterPortMappingInput(serving: false) } catch {
            log(.error, "could not empty the NAT-PMP/PCP input filter: \(error)")
        }
    }

    /// While we serve NAT-PMP and PCP, the kernel drops their requests from outside `[nat]
    /// internal` on input (chain port_mapping_input) before they reach our socket — which
    /// ignores them anyway: two locks on one door. Emptied when we stop or do not serve them.
    func filterPortMappingInput(serving: Bool) throws {
        var changes = NFTChangeSet(table: configuration.table)
        changes.flushSet(NFTSchema.portMappingRefused4.name)
        changes.flushSet(NFTSchema.portMappingRefused6.name)
        if serving, let nat = configuration.nat {
            for element in NFTSchema.portMappingRefusals(inside: nat.internalPrefixes, port: NATPMP.serverPort) {
                changes.addElement(set: element.set, key: element.key, keyEnd: element.keyEnd)
            }
        }
        try nft.apply(changes)
    }

    /// Programs changes outside a burst (agent requests, operator actions, expiry) and queues the
    /// connection clean-up they need.
    func apply(_ changes: [KernelChange]) throws {
        guard !changes.isEmpty else { return }
        do {
            try kernel.apply(changes)
        } catch {
            kernelErrors.add(1, ordering: .relaxed)
            log.limited(.error, category: "kernel", "kernel update failed: \(error)")
            throw error
        }
        if !cleanup.enqueue(connectionsToForget(after: changes)) {
            log.limited(.warning, category: "conntrack", "connection clean-up queue full: some removed flows' connections end by their own timeouts")
        }
    }

    // MARK: housekeeping

    /// Seconds since 1970 (TIMESTAMP and challenge tokens need the wall clock).
    func wallClock() -> UInt64 { wallClockSeconds() }

    /// The engine's clock: nanoseconds since start. Read for every queued packet, so straight from
    /// CLOCK_BOOTTIME (what ContinuousClock reads on Linux) in integers: `Duration` arithmetic
    /// (128-bit attoseconds) and `ContinuousClock.now` cost ~4 % of the reader's CPU in bench
    /// figure 14's profile.
    func now() -> Instant {
        Instant(nanoseconds: bootTimeNanoseconds() &- startedNanoseconds)
    }

    /// Called by the packet loop itself, so the watchdog fires only while packets can be served.
    /// Expiry costs one nft batch here, in order with the bursts; the conntrack walk it implies runs
    /// on the clean-up thread.
    func tick(_ burst: BurstBatcher) {
        notifier.notify("WATCHDOG=1")
        let (expired, changes) = engine.withLock { $0.expire(now: now()) }
        // Also the old admissions of moved sessions, once their grace is over.
        defer { burst.programNow(changes) }
        guard !expired.isEmpty else { return }
        if events.isListened {
            for session in expired { events.publish("expire", session: session.id, "session \(hex(session.id)) \(session.flow) expired") }
        }
        if expired.count <= 3 {
            for session in expired where session.state != .pending {
                log.limited(.info, category: "expiry", "session \(hex(session.id)) \(session.flow) expired")
            }
        } else {
            log.limited(.info, category: "expiry", "\(expired.count) sessions expired")
        }
    }

    /// Checks that the loaded ruleset has every set and map this midcomd programs, with the key and
    /// data lengths `NFTSchema` encodes: a ruleset from another release would otherwise fail one
    /// batch after another at run time. One GETSET per set: no elements are listed (a set of a
    /// million elements takes the kernel minutes to dump).
    func checkRuleset() throws {
        for spec in NFTSchema.all {
            guard let layout = try nft.setLayout(table: configuration.table, set: spec.name) else {
                throw DaemonError(
                    "table inet \(configuration.table) has no set \(spec.name): it was loaded from an older ruleset; reload nft-rules/midcom.nft (nft -f /etc/nftables.d/midcom.nft) and start midcomd again")
            }
            guard layout.keyLength == spec.keyLength, layout.dataLength == spec.dataLength else {
                throw DaemonError(
                    "set \(spec.name) of table inet \(configuration.table) has keys of \(layout.keyLength) octets (data \(layout.dataLength.map(String.init) ?? "none")), this midcomd encodes \(spec.keyLength) (\(spec.key.map(\.rawValue).joined(separator: " . "))): reload nft-rules/midcom.nft of this release")
            }
        }
    }

    /// Sessions admitted by a previous run are still in the kernel with their timeouts and tags:
    /// adopt them, with their NAT mappings (whose ports are then never handed out twice). Runs on
    /// its own thread after start-up, from the session snapshot when there is a usable one, else
    /// from the kernel's set dump (Restart.swift); a session signaled again before it is adopted
    /// simply wins.
    func adoptKernelState() {
        adoptFromSnapshotAndKernel()
    }
}

/// The control socket's access groups, resolved (a name must exist: a typo must not silently
/// lock operators out, or let no one in).
func controlAccess(_ configuration: MidcomConfiguration) throws -> ControlAccess {
    func gid(_ text: String?, key: String) throws -> Set<UInt32> {
        guard let text else { return [] }
        if let number = UInt32(text) { return [number] }
        guard let group = getgrnam(text) else {
            throw DaemonError("\(key) '\(text)': no such group (create it with groupadd, or give a group number)")
        }
        return [group.pointee.gr_gid]
    }
    return ControlAccess(
        readGroups: try gid(configuration.controlReadGroup, key: "control-read-group"),
        adminGroups: try gid(configuration.controlAdminGroup, key: "control-admin-group"))
}

/// Seconds since 1970.
func wallClockSeconds() -> UInt64 { UInt64(max(0, time(nil))) }

struct DaemonError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
