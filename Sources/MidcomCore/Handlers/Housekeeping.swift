import CSPWire

/// State that does not come from signaling: unsignaled flows, expiry, operator actions, and the
/// kernel state a previous run left behind.
extension GatewayEngine {
    public mutating func handleUnsignaled(flow: FlowTuple, now: Instant) -> UnsignaledDecision {
        var behaviour = configuration.unsignaled
        if behaviour == .admitInside { behaviour = configuration.isInside(flow.source) ? .admit : .drop }
        switch behaviour {
        case .drop, .admitInside:
            counters.unsignaledDropped += 1
            // Per packet of an unsignaled flood: a switch, not an array literal to search.
            let portProtocol = switch flow.proto {
                case .tcp, .udp, .sctp: true
                default: false
                }
            let cacheable = portProtocol && configuration.dropCacheLifetime > 0
            return .drop(cache: cacheable ? .block(flow, lifetime: configuration.dropCacheLifetime) : nil)
        case .defaultPolicy:
            counters.unsignaledPassed += 1
            return .defaultPolicy
        case .admit:
            guard sessions.count < configuration.maximumSessions else {
                counters.tableFull += 1
                return .drop(cache: nil)
            }
            counters.unsignaledAdmitted += 1
            let lifetime = configuration.legacyLifetime
            // The flow index's keyed hash: two words for an IPv4 flow instead of the tuple's fields.
            var id = UInt64(truncatingIfNeeded: SessionTable.hash(flow)) | 1 << 63
            while let other = sessions.flow(ofSession: id), other != flow { id &+= 1 }
            let session = Session(
                id: id, flow: flow, state: .legacy, createdAt: now, expiresAt: now.adding(seconds: lifetime),
                grantedLifetime: lifetime)
            sessions.upsert(session)
            return .admit(.install(.admission(flow), lifetime: lifetime, tag: session.tag))
        }
    }

    /// Forgets sessions whose lifetime passed and returns them with the changes that remove what
    /// they installed. The elements were given the same lifetime and are usually gone already;
    /// removing them anyway (removal never fails on a missing element) keeps a refresh that raced
    /// the expiry from leaving an element no session owns.
    public mutating func expire(now: Instant) -> (sessions: [Session], kernel: [KernelChange]) {
        expireTombstones(now: now)
        if validated.count > 4096, now.nanoseconds / 1_000_000_000 % 10 == 0 { pruneValidated(now: now) }
        var kernel = retired(now: now) + expirePaths(now: now) + expireDenies(now: now)
        let expired = sessions.expire(now: now)
        guard !expired.isEmpty else { return ([], kernel) }
        counters.expired += UInt64(expired.count)
        for session in expired { kernel += released(session, now: now) }
        return (expired, kernel)
    }

    /// Operator removal (`midctl delete`): the kernel changes that undo what was installed.
    public mutating func delete(id: UInt64, dryRun: Bool = false) -> (Session, [KernelChange])? {
        guard let session = sessions[id: id] else { return nil }
        if dryRun { return (session, session.kernelObjects.map { .remove($0) }) }
        return (session, discard(id))
    }

    public mutating func flush(dryRun: Bool = false) -> ([Session], [KernelChange]) {
        if dryRun {
            let all = Array(sessions.all)
            return (all, all.flatMap { $0.kernelObjects.map { KernelChange.remove($0) } })
        }
        let all = sessions.removeAll()
        natPorts?.releaseAll()
        return (all, all.flatMap { $0.kernelObjects.map { KernelChange.remove($0) } })
    }
}

/// An element found in the kernel at start-up, decoded by the kernel adapter.
public struct AdoptedElement: Sendable, Equatable {
    public var object: KernelObject
    /// Seconds until the kernel removes it.
    public var remaining: UInt32
    /// From the element's comment; nil for elements written by a release without tags.
    public var tag: ElementTag?

    public init(object: KernelObject, remaining: UInt32, tag: ElementTag?) {
        self.object = object
        self.remaining = remaining
        self.tag = tag
    }
}

extension GatewayEngine {
    /// Adopts state found in the kernel at start-up (left by a previous run), so a restart neither
    /// drops working flows, nor forgets them, nor hands their NAT ports to another host. Feed
    /// admissions before NAT elements: a tagged translation joins the session its admission made.
    /// A session signaled again before it is adopted wins.
    public mutating func adopt(_ element: AdoptedElement, now: Instant) {
        let remaining = max(min(element.remaining, configuration.maximumLifetime), 1)
        switch element.object {
        case .admission(let flow):
            if let tag = element.tag {
                guard sessions[id: tag.sessionID] == nil else { return }
                guard sessions.session(for: flow) == nil else { return }
                var session = Session(
                    id: tag.sessionID, flow: flow, state: tag.kind == .legacy ? .legacy : .admitted,
                    application: tag.application, createdAt: now, expiresAt: now.adding(seconds: remaining),
                    grantedLifetime: remaining, incoming: tag.kind == .incoming)
                if tag.kind == .redirect {
                    // Admitted as itself: the host → proxy flow is what the kernel holds.
                    session.state = .admitted
                }
                sessions.upsert(session)
            } else {
                guard sessions.session(for: flow) == nil else { return }
                var id = UInt64(truncatingIfNeeded: flow.hashValue) | 1 << 62
                while sessions[id: id] != nil { id &+= 1 }
                sessions.upsert(
                    Session(
                        id: id, flow: flow, state: .admitted, createdAt: now, expiresAt: now.adding(seconds: remaining),
                        grantedLifetime: remaining, incoming: flow.source.isUnspecified))
            }
            counters.adopted += 1
        case .sourceNAT(let rule):
            natPorts?.reserve(rule.proto, rule.external.port)
            if element.tag?.kind == .relay {
                // A relay's SNAT names its relay endpoint; its DNAT follows from it.
                if let tag = element.tag, var session = sessions[id: tag.sessionID], session.relay == nil {
                    session.relay = rule.external.endpoint
                    sessions.upsert(session)
                }
            } else {
                attach(mapping: rule.external, proto: rule.proto, to: element.tag)
            }
        case .denyFilter(let filter):
            if let tag = element.tag, tag.kind == .deny { adoptDeny(filter, id: tag.sessionID, remaining: remaining, now: now) }
        case .destinationNAT(let rule):
            natPorts?.reserve(rule.proto, rule.external.port)
            if element.tag?.kind != .relay { attach(mapping: rule.external, proto: rule.proto, to: element.tag) }
        }
    }

    private mutating func attach(mapping: IPv4Endpoint, proto: IPProtocol, to tag: ElementTag?) {
        guard let tag, var session = sessions[id: tag.sessionID], session.mapping == nil, session.flow.proto == proto else { return }
        session.mapping = mapping.endpoint
        sessions.upsert(session)
    }
}

extension GatewayEngine {
    /// `changes` of a REBIND that took effect, with the old admissions' removals held back for
    /// `rebind-grace` seconds (NAT rules move at once: their keys are the same external endpoint).
    mutating func retireLater(_ changes: [KernelChange], now: Instant) -> [KernelChange] {
        let grace = configuration.rebindGrace
        guard grace > 0 else { return changes }
        return changes.filter { change in
            guard case .remove(.admission(let flow)) = change, retiring.count < Self.maximumRetiring else { return true }
            retiring.append((now.adding(seconds: grace), flow))
            return false
        }
    }

    /// The held-back removals that are due, unless a session holds the flow again by then.
    mutating func retired(now: Instant) -> [KernelChange] {
        var due = 0
        while due < retiring.count, retiring[due].at <= now { due += 1 }
        guard due > 0 else { return [] }
        let flows = retiring.prefix(due).map(\.flow)
        retiring.removeFirst(due)
        return flows.filter { sessions.session(for: $0) == nil }.map { .remove(.admission($0)) }
    }
}

extension GatewayEngine {
    /// Paths whose own lifetime ended: removed from their sessions (which live on).
    mutating func expirePaths(now: Instant) -> [KernelChange] {
        var changes: [KernelChange] = []
        while let top = pathDeadlines.peek, top.at <= now {
            pathDeadlines.pop()
            guard let session = sessions[id: top.sessionID], session.pathExpiry(top.pathID) == top.at else { continue }
            var updated = session
            updated.setPath(top.pathID, nil)
            changes += store(updated, previous: session)
            counters.pathsRemoved += 1
        }
        return changes
    }
}


extension GatewayEngine {
    /// Everything the engine holds in the kernel, as installs with what is left of each lifetime
    /// and the sessions' tags: to put back after an nftables reload replaced our table (its sets
    /// come back empty). Admissions a REBIND retires are left out: they were on their way out.
    public func kernelState(now: Instant) -> [KernelChange] {
        func left(_ expiresAt: Instant?, _ granted: UInt32) -> UInt32 {
            guard let expiresAt else { return granted }
            return UInt32(min(Double(UInt32.max), max(1, expiresAt.seconds(since: now).rounded(.up))))
        }
        var changes: [KernelChange] = []
        changes.reserveCapacity(sessions.count + denies.count)
        for session in sessions.all {
            let lifetime = left(session.expiresAt, session.grantedLifetime)
            for object in session.kernelObjects { changes.append(.install(object, lifetime: lifetime, tag: session.tag)) }
        }
        for entry in denies.entries.values {
            changes.append(
                .install(.denyFilter(entry.filter), lifetime: left(entry.expiresAt, entry.lifetime), tag: ElementTag(sessionID: entry.id, kind: .deny)))
        }
        return changes
    }
}
