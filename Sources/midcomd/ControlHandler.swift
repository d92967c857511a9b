#if canImport(Glibc)
import Glibc
#endif
import CSPWire
import CommandLineSupport
import MidcomControl
import MidcomCore
import MidcomKernel
import Netfilter

/// Answers `midctl` requests. Runs on the control thread; takes the engine lock only briefly
/// and lists kernel counters outside it, so the packet loop is never blocked by a listing.
extension Daemon {
    static let countersLimit = 100_000

    func answer(_ request: ControlRequest) -> ControlResponse {
        switch request.command {
        case .sessions:
            let filter: SessionMatcher?
            do { filter = try request.filter.map(SessionMatcher.init) } catch { return .failure("\(error)") }
            return ControlResponse(ok: true, sessions: sessionRecords(matching: nil, filter: filter))
        case .rules:
            return ControlResponse(ok: true, rules: ruleRecords())
        case .monitor:
            // Streams are served by the control server itself (it calls `events.subscribe`).
            return .failure("monitor is a stream: use `midctl monitor`")
        case .showConfig:
            return ControlResponse(ok: true, message: engine.withLock { $0.policy.configuration }.tomlText)
        case .show:
            guard let id = request.sessionID.flatMap({ UInt64($0, radix: 16) }) else {
                return .failure("'\(request.sessionID ?? "")' is not a session ID (16 hex digits)")
            }
            let records = sessionRecords(matching: id)
            return records.isEmpty ? .failure("no session \(hex(id))") : ControlResponse(ok: true, sessions: records)
        case .delete:
            guard let id = request.sessionID.flatMap({ UInt64($0, radix: 16) }) else {
                return .failure("'\(request.sessionID ?? "")' is not a session ID (16 hex digits)")
            }
            guard let (session, changes) = engine.withLock({ $0.delete(id: id, dryRun: request.dryRun) }) else {
                return .failure("no session \(hex(id))")
            }
            if let error = applyOperatorChanges(changes, dryRun: request.dryRun) { return .failure(error) }
            if !request.dryRun {
                log(.notice, "operator deleted session \(hex(id)) \(session.flow)")
                events.publish("delete", session: id, "operator deleted session \(hex(id)) \(session.flow)")
            }
            return ControlResponse(ok: true, affected: [hex(id)])
        case .flush:
            let (sessions, changes) = engine.withLock { $0.flush(dryRun: request.dryRun) }
            if let error = applyOperatorChanges(changes, dryRun: request.dryRun) { return .failure(error) }
            if !request.dryRun {
                log(.notice, "operator flushed \(sessions.count) session(s)")
                events.publish("delete", "operator flushed \(sessions.count) session(s)")
            }
            return ControlResponse(ok: true, affected: sessions.map { hex($0.id) }.sorted())
        case .status:
            return ControlResponse(ok: true, status: status())
        case .announce:
            epochAnnouncementRequests.add(1, ordering: .relaxed)
            epochAnnouncementWake.signal()
            let csp = "epoch \(engine.withLock { $0.identity.epoch }): announcing to the inside CSP hosts (ANNOUNCE to 224.0.0.1 and ff02::1, 3 times over 1.5 s)"
            guard configuration.nat != nil else {
                log(.notice, "midctl announce: announcing our epoch to the inside hosts")
                return ControlResponse(ok: true, message: "\(csp); no [nat]: no NAT-PMP/PCP clients to tell")
            }
            let epoch = engine.withLock { engine -> UInt32 in
                engine.restartPortMappingEpoch(wallClock: wallClock())
                return engine.portMappingEpoch(wallClock: wallClock())
            }
            announceRequested.store(true, ordering: .relaxed)
            portMappingWake.signal()
            log(.notice, "midctl announce: the port-mapping epoch starts again; announcing it to the inside hosts")
            return ControlResponse(ok: true, message: "\(csp); port-mapping epoch \(epoch): announcing to NAT-PMP/PCP clients (10 times over about 4 minutes)")
        case .reload:
            switch reload(trigger: "midctl reload") {
            case .success(let summary): return ControlResponse(ok: true, message: summary)
            case .failure(let failure): return .failure("configuration not reloaded, still running on the previous one: \(failure)")
            }
        case .denies:
            return ControlResponse(ok: true, denies: denyRecords())
        case .undeny:
            guard let id = request.sessionID.flatMap({ UInt64($0, radix: 16) }) else {
                return .failure("'\(request.sessionID ?? "")' is not a filter ID (16 hex digits)")
            }
            let removed: (DenyEntry, [KernelChange])? = engine.withLock { engine in
                if request.dryRun { return engine.denies.entries[id].map { ($0, []) } }
                return engine.removeDeny(id: id)
            }
            guard let (entry, changes) = removed else { return .failure("no DENY filter \(hex(id))") }
            if let error = applyOperatorChanges(changes, dryRun: request.dryRun) { return .failure(error) }
            if !request.dryRun { log(.notice, "operator removed DENY filter \(hex(id)) \(entry.filter)") }
            return ControlResponse(ok: true, affected: [hex(id)])
        }
    }

    /// The DENY filters, with the drops the kernel counted for each.
    func denyRecords() -> [DenyRecord] {
        let now = self.now()
        let entries = engine.withLock { Array($0.denies.entries.values) }
        let counters = elementCounters(of: Set(entries.map { NFTSchema.element(for: .denyFilter($0.filter)).set }))
        return entries.sorted { $0.createdAt < $1.createdAt }.map { entry in
            let element = NFTSchema.element(for: .denyFilter(entry.filter))
            let counted = counters[CountedKey(element)]
            var record = DenyRecord(
                id: hex(entry.id), victim: entry.filter.victim.description, key: entry.owner.map { hex($0.fingerprint) },
                source: "\(entry.filter.source)/\(entry.filter.prefixLength)", proto: entry.filter.proto.map { "\($0)" } ?? "any",
                port: entry.filter.port, ageSeconds: now.seconds(since: entry.createdAt),
                remainingSeconds: max(0, entry.expiresAt.seconds(since: now)), packets: counted?.0 ?? nil, bytes: counted?.1 ?? nil)
            record.action = entry.filter.rateLimited ? "rate-limit" : "drop"
            return record
        }
    }

    func applyOperatorChanges(_ changes: [KernelChange], dryRun: Bool) -> String? {
        guard !dryRun, !changes.isEmpty else { return nil }
        do {
            try apply(changes)
            return nil
        } catch {
            return "session removed, but the kernel refused to remove its state: \(error)"
        }
    }

    func sessionRecords(matching id: UInt64?, filter: SessionMatcher? = nil) -> [SessionRecord] {
        let now = self.now()
        let sessions: [Session] = engine.withLock { engine in
            if let id { return engine.sessions[id: id].map { [$0] } ?? [] }
            guard let filter else { return Array(engine.sessions.all) }
            return engine.sessions.all.filter(filter.matches)
        }
        // Packet and byte counts live in the kernel elements (`counter` sets); join them by key.
        // The kernel dumps a set in chunks and restarts its walk for each chunk (quadratic in the
        // set size), so above `countersLimit` sessions the counters are left out ("-") rather than
        // making a listing take minutes; `nft list set inet midcom admit4` still shows them.
        let counters = elementCounters(
            of: sessions.count > Self.countersLimit
                ? [] : Set(sessions.flatMap { $0.admittedFlows.map { NFTSchema.element(for: .admission($0)).set } }))
        return sessions.sorted { $0.createdAt < $1.createdAt }.map { session in
            var packets: UInt64?
            var bytes: UInt64?
            if let flow = session.admittedFlows.first,
                let found = counters[CountedKey(NFTSchema.element(for: .admission(flow)))]
            {
                (packets, bytes) = found
            }
            var record = SessionRecord(
                id: hex(session.id), proto: session.flow.proto.description, source: session.flow.source.description,
                sourcePort: session.flow.sourcePort, destination: session.flow.destination.description,
                destinationPort: session.flow.destinationPort, state: session.state.rawValue,
                action: session.actionName, ageSeconds: now.seconds(since: session.createdAt),
                remainingSeconds: session.expiresAt.map { max(0, $0.seconds(since: now)) }, packets: packets, bytes: bytes,
                application: session.application)
            if session.origin != .csp { record.origin = session.origin.rawValue }
            if session.pathCount > 1 {
                record.paths = session.paths.dropFirst().map { path in
                    PathRecord(
                        id: path.id, source: path.flow.source.description, sourcePort: path.flow.sourcePort,
                        destination: path.flow.destination.description, destinationPort: path.flow.destinationPort)
                }
            }
            return record
        }
    }

    /// `sessions` as a stream of row frames (SessionRowStream.swift). The listing's order (oldest
    /// first) is fixed from one pass over the table under the engine lock that copies 16 octets
    /// per matching session; the rows are then made a frame at a time, each frame's sessions
    /// copied under the lock and encoded outside it, on the connection's thread.
    func sessionRows(_ request: ControlRequest) -> SessionRowAnswer {
        let filter: SessionMatcher?
        do { filter = try request.filter.map(SessionMatcher.init) } catch { return .refused("\(error)") }
        let capacity = engine.withLock { $0.sessions.count }
        var order: [(createdAt: UInt64, id: UInt64)] = []
        order.reserveCapacity(capacity + 1024)
        engine.withLock { engine in
            for session in engine.sessions.all where filter?.matches(session) ?? true {
                order.append((session.createdAt.nanoseconds, session.id))
            }
        }
        order.sort { $0 < $1 }
        // The kernel's counters: see `sessionRecords` for why not above `countersLimit`.
        let counters = order.count > Self.countersLimit ? [:] : elementCounters(of: Set(NFTSchema.admissionSets.map(\.name)))
        return .rows(SessionRows(daemon: self, order: order, counters: counters, now: now()))
    }

    /// Packets and bytes of every element of `sets`, by set and key (`counter` sets).
    func elementCounters(of sets: Set<String>) -> [CountedKey: (UInt64?, UInt64?)] {
        var counters: [CountedKey: (UInt64?, UInt64?)] = [:]
        for set in sets {
            do {
                for element in try kernel.listElements(set: set) {
                    counters[CountedKey(set: set, key: element.key)] = (element.packets, element.bytes)
                }
            } catch {
                log.limited(.warning, category: "control", "cannot list set \(set) for its counters: \(error)")
            }
        }
        return counters
    }

    func status() -> DaemonStatus {
        let (count, engineCounters, epoch) = engine.withLock { ($0.sessions.count, $0.counters, $0.identity.epoch) }
        var counters = engineCounters.asDictionary
        for q in (queues + [provedQueue]).map(\.counters) {
            counters["queue_received", default: 0] += q.received
            counters["queue_accepted", default: 0] += q.accepted
            counters["queue_dropped", default: 0] += q.dropped
            counters["queue_modified", default: 0] += q.modified
            counters["queue_enobufs", default: 0] += q.enobufs
            counters["queue_truncated", default: 0] += q.truncated
            counters["queue_verdict_errors", default: 0] += q.verdictErrors
        }
        counters["malformed_packets"] = malformedPackets.load(ordering: .relaxed)
        counters["kernel_errors"] = kernelErrors.load(ordering: .relaxed)
        counters["replies_failed"] = failedReplies.load(ordering: .relaxed)
        counters["reload_failures"] = reloadFailures.load(ordering: .relaxed)
        counters.merge(restart.counters) { $1 }
        counters["epoch_announcements"] = epochAnnouncements.load(ordering: .relaxed)
        counters["ruleset_lost"] = rulesetLost.load(ordering: .relaxed)
        counters["ruleset_restored"] = rulesetRestored.load(ordering: .relaxed)
        let cleaned = cleanup.counters
        counters["conntrack_deleted"] = cleaned.deleted
        counters["conntrack_cleanup_failures"] = cleaned.failures
        counters["conntrack_cleanup_overflowed"] = cleaned.overflowed
        if !configuration.flowtableDevices.isEmpty {
            counters["flowtable_emptied"] = kernel.flowtableEmptied.load(ordering: .relaxed)
            counters["flowtable_empty_failures"] = kernel.flowtableEmptyFailures.load(ordering: .relaxed)
        }
        for number in configuration.queueNumber..<configuration.queueNumber + configuration.queueCount {
            if let kernel = NetfilterQueue.kernelStatistics(queueNumber: number) {
                counters["kernel_queue_dropped", default: 0] += UInt64(kernel.queueDropped)
                counters["kernel_user_dropped", default: 0] += UInt64(kernel.userDropped)
            }
        }
        let uptime = started.duration(to: .now)
        var status = DaemonStatus(
            version: midcomVersion, pid: getpid(),
            uptimeSeconds: Double(uptime.components.seconds) + Double(uptime.components.attoseconds) / 1e18, epoch: epoch,
            queueNumbers: Array(configuration.queueNumber..<configuration.queueNumber + configuration.queueCount),
            queueEncoding: encoding.rawValue, sessions: count, counters: counters)
        status.ruleset = rulesetCondition.withLock { $0 }.description
        status.flowtable = configuration.flowtableDevices.isEmpty
            ? "off" : "\(NFTSchema.Flowtable.name) on \(configuration.flowtableDevices.joined(separator: ", "))"
        return status
    }
}

/// The rows of one streamed listing, a frame at a time.
struct SessionRows: SessionRowSource {
    let daemon: Daemon
    let order: [(createdAt: UInt64, id: UInt64)]
    let counters: [CountedKey: (UInt64?, UInt64?)]
    let now: Instant
    var position = 0

    mutating func nextFrame() -> SessionRowFrameBuilder? {
        guard position < order.count else { return nil }
        let chunk = order[position..<min(position + SessionRowStream.rowsPerFrame, order.count)]
        position = chunk.endIndex
        let sessions: [Session] = daemon.engine.withLock { engine in chunk.compactMap { engine.sessions[id: $0.id] } }
        var frame = SessionRowFrameBuilder()
        for session in sessions { append(session, to: &frame) }
        return frame
    }

    private func append(_ session: Session, to frame: inout SessionRowFrameBuilder) {
        var packets: UInt64?
        var bytes: UInt64?
        if !counters.isEmpty, let flow = session.admittedFlows.first,
            let found = counters[CountedKey(NFTSchema.element(for: .admission(flow)))]
        {
            (packets, bytes) = found
        }
        var paths: [SessionRowFrameBuilder.Path]?
        if session.pathCount > 1 {
            paths = session.paths.dropFirst().map { path in
                .init(
                    id: path.id, source: Self.text(path.flow.source), sourcePort: path.flow.sourcePort,
                    destination: Self.text(path.flow.destination), destinationPort: path.flow.destinationPort)
            }
        }
        let flow = session.flow
        frame.append(
            id: session.id, proto: flow.proto.description, source: Self.text(flow.source), sourcePort: flow.sourcePort,
            destination: Self.text(flow.destination), destinationPort: flow.destinationPort, state: session.state.rawValue,
            action: session.actionName, ageSeconds: now.seconds(since: session.createdAt),
            remainingSeconds: session.expiresAt.map { max(0, $0.seconds(since: now)) }, packets: packets, bytes: bytes,
            application: session.application, origin: session.origin == .csp ? nil : session.origin.rawValue, paths: paths)
    }

    /// An address as `IPAddress.description` writes it; IPv4 without string interpolation (a
    /// listing formats two per session).
    static func text(_ address: IPAddress) -> String {
        guard let value = address.ipv4Value else { return address.description }
        return String(unsafeUninitializedCapacity: 15) { buffer in
            var count = 0
            for shift in [24, 16, 8, 0] {
                let octet = UInt8(truncatingIfNeeded: value >> UInt32(shift))
                if shift != 24 {
                    buffer[count] = UInt8(ascii: ".")
                    count += 1
                }
                if octet >= 100 {
                    buffer[count] = UInt8(ascii: "0") + octet / 100
                    count += 1
                }
                if octet >= 10 {
                    buffer[count] = UInt8(ascii: "0") + octet / 10 % 10
                    count += 1
                }
                buffer[count] = UInt8(ascii: "0") + octet % 10
                count += 1
            }
            return count
        }
    }
}

/// A listed element's identity (set and raw key), to join kernel counters with sessions.
struct CountedKey: Hashable {
    var set: String
    var key: [UInt8]

    init(set: String, key: [UInt8]) {
        self.set = set
        self.key = key
    }

    init(_ element: NFTSchema.Element) { self.init(set: element.set, key: element.key.bytes) }
}

extension Daemon {
    /// Each rule of the policy in effect with its hits, then the default action.
    func ruleRecords() -> [RuleRecord] {
        let (configuration, hits) = engine.withLock { ($0.policy.configuration, $0.ruleHits) }
        var records = configuration.rules.enumerated().map { index, rule in
            RuleRecord(
                position: index + 1, name: rule.name, match: Self.describe(rule), action: rule.action.rawValue,
                hits: index < hits.count ? hits[index] : 0)
        }
        records.append(RuleRecord(position: 0, name: "(default)", match: "any", action: configuration.defaultAction.rawValue, hits: hits.last ?? 0))
        return records
    }

    static func describe(_ rule: PolicyRule) -> String {
        var parts: [String] = []
        if let proto = rule.proto { parts.append(proto.description) }
        if let source = rule.source { parts.append("from \(source)") }
        if let destination = rule.destination { parts.append("to \(destination)") }
        if let ports = rule.ports { parts.append(ports.count == 1 ? "port \(ports.lowerBound)" : "ports \(ports.lowerBound)-\(ports.upperBound)") }
        if let application = rule.application { parts.append("app \(application)") }
        if let incoming = rule.incoming { parts.append(incoming ? "incoming" : "outgoing") }
        if let signatures = rule.signatures { parts.append("signatures \(signatures.rawValue)") }
        return parts.isEmpty ? "any" : parts.joined(separator: " ")
    }
}

/// `midctl sessions` filters, parsed once against the engine's types.
struct SessionMatcher {
    var prefix: IPPrefix?
    var proto: IPProtocol?
    var port: UInt16?
    var state: SessionState?
    var origin: SessionOrigin?
    var application: String?

    init(_ filter: SessionFilter) throws {
        if let address = filter.address {
            guard let prefix = IPPrefix(address) ?? IPPrefix(address + (address.contains(":") ? "/128" : "/32")) else {
                throw DaemonError("'\(address)' is not an address or prefix")
            }
            self.prefix = prefix
        }
        if let name = filter.proto {
            guard let proto = IPProtocol(name: name) else { throw DaemonError("unknown protocol '\(name)'") }
            self.proto = proto
        }
        port = filter.port
        if let name = filter.state {
            guard let state = SessionState(rawValue: name) else {
                throw DaemonError("unknown state '\(name)' (pending, admitted, redirected, legacy)")
            }
            self.state = state
        }
        if let name = filter.origin {
            guard let origin = SessionOrigin(rawValue: name) else { throw DaemonError("unknown origin '\(name)' (csp, nat-pmp, pcp)") }
            self.origin = origin
        }
        application = filter.application
    }

    func matches(_ session: Session) -> Bool {
        let flow = session.flow
        if let prefix, !prefix.contains(flow.source), !prefix.contains(flow.destination) { return false }
        if let proto, proto != flow.proto { return false }
        if let port, port != flow.sourcePort, port != flow.destinationPort { return false }
        if let state, state != session.state { return false }
        if let origin, origin != session.origin { return false }
        if let application, application != session.application { return false }
        return true
    }
}
