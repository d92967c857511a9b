import CSPWire

/// Who this middlebox is on the wire: its records and ANNOUNCEs carry these.
public struct MiddleboxIdentity: Sendable, Equatable {
    public var id: UInt64
    /// Chosen anew at every start; hosts that see it change know state was lost and re-signal.
    public var epoch: UInt32
    public var name: String

    public init(id: UInt64, epoch: UInt32, name: String) {
        self.id = id
        self.epoch = epoch
        self.name = name
    }
}

/// A change the kernel adapter must make. The engine decides; the daemon programs nftables.
public enum KernelChange: Sendable, Equatable {
    /// Admit packets of the flow (initiator → responder); replies ride conntrack. Re-admitting an
    /// existing flow replaces its timeout.
    case admit(FlowTuple, lifetime: UInt32)
    /// The same for a flow already admitted (a refresh): the kernel element's timeout is replaced,
    /// which costs more than a first admission on kernels that do not update timeouts on re-add.
    case readmit(FlowTuple, lifetime: UInt32)
    /// Remove the admission and the flow's conntrack entries, so an established flow stops too.
    case revoke(FlowTuple)
    /// Translate the flow's source to `to` (outgoing NAT traversal).
    case snat(FlowTuple, to: CSPEndpoint, lifetime: UInt32)
    case removeSNAT(FlowTuple, to: CSPEndpoint)
    /// Translate packets to `external` into packets to `to` (incoming NAT traversal).
    /// Installing it also deletes conntrack entries already addressed to `external` (e.g. a peer
    /// that tried before the mapping existed), which would otherwise never be translated.
    case dnat(IPProtocol, external: CSPEndpoint, to: CSPEndpoint, lifetime: UInt32)
    case removeDNAT(IPProtocol, external: CSPEndpoint, to: CSPEndpoint)
    /// Drop the flow's packets in the kernel for a while (the drop cache): an unsignaled flow that
    /// was refused once must not send every further packet to user space.
    case block(FlowTuple, lifetime: UInt32)
}

/// What to do with an intercepted signaling packet.
public enum SignalingVerdict: Sendable, Equatable {
    /// Let it continue unchanged.
    case forward
    /// Let it continue with this CSP message as its new UDP payload (a record was appended).
    case forwardRewritten([UInt8])
    case drop
}

/// A CSP message this middlebox sends itself (e.g. REJECT), to the given endpoint.
public struct OutgoingMessage: Sendable, Equatable {
    public var message: CSPMessage
    public var destination: CSPEndpoint
    /// The source to send from: the responder's address and CSP port when the middlebox answers an
    /// intercepted request in the responder's place (docs/PROTOCOL.md 2.3), so the reply passes the
    /// conntrack and NAT state between the host and us; nil = the middlebox's own address.
    public var source: CSPEndpoint? = nil
}

public struct SignalingOutcome: Sendable, Equatable {
    public var verdict: SignalingVerdict
    public var kernel: [KernelChange] = []
    public var reply: OutgoingMessage? = nil
    /// A human-readable line for the log, nil when the event is not worth logging.
    public var event: String? = nil
}

/// Counters kept by the engine, exported through `midctl status`.
public struct EngineCounters: Sendable, Equatable {
    public var signalingMessages: UInt64 = 0
    public var malformedMessages: UInt64 = 0
    public var setups: UInt64 = 0
    public var admitted: UInt64 = 0
    public var rejected: UInt64 = 0
    public var refreshed: UInt64 = 0
    public var tornDown: UInt64 = 0
    public var mismatchedReplies: UInt64 = 0
    public var spoofedFlows: UInt64 = 0
    public var unknownTypes: UInt64 = 0
    public var unsignaledDropped: UInt64 = 0
    public var unsignaledPassed: UInt64 = 0
    public var unsignaledAdmitted: UInt64 = 0
    public var expired: UInt64 = 0
    public var tableFull: UInt64 = 0
    public var redirected: UInt64 = 0
    public var mapped: UInt64 = 0
    public var announced: UInt64 = 0
    public var announceLimited: UInt64 = 0
    public var localRequests: UInt64 = 0

    public var asDictionary: [String: UInt64] {
        [
            "signaling_messages": signalingMessages, "malformed_messages": malformedMessages, "setups": setups,
            "admitted": admitted, "rejected": rejected, "refreshed": refreshed, "torn_down": tornDown,
            "mismatched_replies": mismatchedReplies, "spoofed_flows": spoofedFlows, "unknown_types": unknownTypes,
            "unsignaled_dropped": unsignaledDropped, "unsignaled_passed": unsignaledPassed,
            "unsignaled_admitted": unsignaledAdmitted, "expired": expired, "table_full": tableFull,
            "redirected": redirected, "mapped": mapped, "announced": announced, "announce_limited": announceLimited,
            "local_requests": localRequests,
        ]
    }
}

/// What the gateway does with the first packet of a flow nobody signaled.
public enum UnsignaledDecision: Sendable, Equatable {
    /// Drop this packet; `cache` (if any) drops the rest of the flow in the kernel.
    case drop(cache: KernelChange?)
    /// Leave it to the static ruleset's default policy.
    case defaultPolicy
    case admit(KernelChange)
}

/// The middlebox's signaling logic: pure, deterministic, no syscalls. The daemon feeds it
/// intercepted packets and the time, and carries out the verdicts and kernel changes it returns.
public struct GatewayEngine: Sendable {
    public internal(set) var sessions = SessionTable()
    public internal(set) var counters = EngineCounters()
    /// External ports in use by NAT mappings, per protocol.
    var natPortsInUse: [IPProtocol: Set<UInt16>] = [:]
    var natPortCursor: UInt16 = 0
    /// ANNOUNCEs sent in the current second: discovery must not turn the gateway into a reflector.
    var announceWindow: (second: UInt64, count: Int) = (0, 0)
    /// Sources answered in the current second (at most one ANNOUNCE per source per second).
    var announcedSources: Set<IPAddress> = []
    public static let announcesPerSecond = 100
    public let identity: MiddleboxIdentity
    public let policy: Policy
    var configuration: MidcomConfiguration { policy.configuration }

    public init(configuration: MidcomConfiguration, identity: MiddleboxIdentity) {
        self.policy = Policy(configuration: configuration)
        self.identity = identity
    }

    // MARK: signaling

    /// Handles one CSP datagram crossing the gateway from `source` to `destination`.
    public mutating func handleSignaling(
        payload: UnsafeRawBufferPointer, source: CSPEndpoint, destination: CSPEndpoint, now: Instant
    ) -> SignalingOutcome {
        counters.signalingMessages += 1
        let message: CSPMessage
        do {
            message = try CSPMessage.parse(payload)
        } catch {
            counters.malformedMessages += 1
            // Answering garbage would make us a reflector; malformed signaling is dropped and counted.
            return SignalingOutcome(verdict: .drop, event: "dropped malformed CSP from \(source): \(error)")
        }
        // A request that already carries our record came round a routing loop.
        if message.records.contains(where: { $0.middleboxID == identity.id }), !message.type.isReply {
            return SignalingOutcome(verdict: .drop, event: "dropped \(message.type) \(hex(message.sessionID)): routing loop (our record is in it)")
        }
        switch message.type {
        case .setup: return handleSetup(message, from: source, to: destination, now: now)
        case .accept, .mapped: return handleAccept(message, from: source, to: destination, now: now)
        case .reject, .redirect, .challenge: return handleReject(message, from: source, to: destination)
        case .refresh: return handleRefresh(message, from: source, to: destination, now: now)
        case .teardown: return handleTeardown(message, from: source)
        default:
            if !CSPMessageType.allKnown.contains(message.type) { counters.unknownTypes += 1 }
            // Messages this version does not act on still reach the far end: Midcom never breaks
            // end-to-end signaling it does not understand.
            return SignalingOutcome(verdict: .forward)
        }
    }

    mutating func handleSetup(_ setup: CSPMessage, from source: CSPEndpoint, to destination: CSPEndpoint, now: Instant)
        -> SignalingOutcome
    {
        counters.setups += 1
        guard let signaled = setup.flow else {
            counters.malformedMessages += 1
            return rejection(
                of: setup, to: source, as: destination, result: .malformedMessage, reason: "SETUP without FLOW",
                event: "SETUP without FLOW from \(source)")
        }
        let incoming = setup.requestedAction?.contains(.listen) ?? false
        // FLOW is never rewritten (it may be signed): NATs nearer the host report their
        // translation in their records, and the flow as it looks here is FLOW with those applied.
        let flow = Self.effectiveFlow(signaled, records: setup.records, incoming: incoming)
        // Anti-spoofing: a host may only signal flows it takes part in, as the data sender
        // (outgoing) or the receiver (incoming pinhole).
        let owner = incoming ? flow.destination : flow.source
        guard owner == source.address else {
            counters.spoofedFlows += 1
            return rejection(
                of: setup, to: source, as: destination, result: .sourceDenied,
                reason: "flow \(flow) does not belong to signaling host \(source.address)",
                event: "rejected spoofed SETUP \(hex(setup.sessionID)) from \(source): flow \(flow)")
        }
        // A session belongs to the host that created it: another host reusing its ID must not take
        // it over (until signatures bind sessions to keys, the owner's address is the proof).
        if let existing = sessions[id: setup.sessionID], self.owner(of: existing) != source.address {
            counters.spoofedFlows += 1
            return rejection(
                of: setup, to: source, as: destination, result: .sourceDenied,
                reason: "session \(hex(setup.sessionID)) belongs to another host",
                event: "rejected SETUP \(hex(setup.sessionID)) from \(source): session owned by \(self.owner(of: existing))")
        }
        let decision = policy.decide(
            flow: flow, application: setup.application, incoming: incoming, requestedLifetime: setup.lifetime)
        switch decision.action {
        case .reject:
            counters.rejected += 1
            if let existing = sessions[id: setup.sessionID], existing.flow == flow { removeSession(existing.id) }
            return rejection(
                of: setup, to: source, as: destination, result: .policyDenied, reason: decision.reason ?? "rejected by policy",
                event: "rejected SETUP \(hex(setup.sessionID)) \(flow): \(decision.reason ?? "policy")")
        case .redirect:
            return redirect(setup, flow: flow, decision: decision, from: source, to: destination, now: now)
        case .admit:
            if sessions[id: setup.sessionID] == nil, sessions.count >= configuration.maximumSessions {
                counters.tableFull += 1
                return rejection(
                    of: setup, to: source, as: destination, result: .resourcesExhausted, reason: "session table full",
                    retryAfter: 30, event: "session table full: rejected \(hex(setup.sessionID))")
            }
            var session = sessions[id: setup.sessionID]
                ?? Session(
                    id: setup.sessionID, flow: flow, state: .pending, application: setup.application, createdAt: now,
                    expiresAt: nil, grantedLifetime: decision.lifetime, incoming: incoming)
            session.flow = flow
            session.pendingNonce = setup.nonce
            session.grantedLifetime = decision.lifetime
            session.updatedAt = now
            if session.state == .pending { session.expiresAt = now.adding(seconds: configuration.pendingTimeout) }
            // Outgoing NAT traversal: choose the mapping now, so the responder and every middlebox
            // upstream see the flow as it will look after translation.
            var forwarded = setup
            if !incoming, session.mapping == nil, let nat = configuration.nat, natApplies(nat, flow) {
                let port = flow.sourcePort == 0 ? 0 : allocateNATPort(flow.proto, preferred: flow.sourcePort)
                if let port {
                    session.mapping = CSPEndpoint(address: nat.externalAddress, port: port)
                } else {
                    counters.tableFull += 1
                    return rejection(
                        of: setup, to: source, as: destination, result: .resourcesExhausted, reason: "no free NAT port",
                        retryAfter: 30,
                        event: "NAT ports exhausted: rejected \(hex(setup.sessionID))")
                }
            }
            sessions.upsert(session)
            // The record is appended even without recordRoute when we translate: middleboxes
            // beyond us need the MAPPED-ADDRESS to see the flow as it will look there.
            if setup.flags.contains(.recordRoute) || session.mapping != nil {
                var record = record(.forwarded, lifetime: decision.lifetime)
                if let mapping = session.mapping { record.tlvs.append(.mappedAddress(mapping)) }
                forwarded.tlvs.append(.middleboxRecord(record))
            }
            return SignalingOutcome(
                verdict: rewritten(original: setup, forwarded), event: "SETUP \(hex(setup.sessionID)) \(flow) pending")
        }
    }

    /// The host must go through a proxy: answer REDIRECT and pre-admit the host → proxy flow, so the
    /// host can reconnect at once without signaling again (docs/PROTOCOL.md, REDIRECT).
    mutating func redirect(
        _ setup: CSPMessage, flow: FlowTuple, decision: PolicyDecision, from source: CSPEndpoint, to destination: CSPEndpoint,
        now: Instant
    ) -> SignalingOutcome {
        guard let target = decision.redirectTarget, target.address.family == flow.source.family else {
            counters.rejected += 1
            return rejection(
                of: setup, to: source, as: destination, result: .policyDenied,
                reason: "flows of this kind must use a proxy of the other address family",
                event: "cannot redirect \(flow): no proxy of its family")
        }
        guard setup.requestedAction?.contains(.allowRedirect) ?? true else {
            counters.rejected += 1
            return rejection(
                of: setup, to: source, as: destination, result: .policyDenied,
                reason: "flows of this kind must go through the proxy \(target)",
                event: "rejected \(hex(setup.sessionID)) \(flow): host does not accept redirection")
        }
        counters.redirected += 1
        let proxyFlow = FlowTuple(
            proto: flow.proto, source: flow.source, sourcePort: 0, destination: target.address, destinationPort: target.port)
        if let old = sessions[id: setup.sessionID] { removeSession(old.id) }
        var session = Session(
            id: setup.sessionID, flow: flow, state: .redirected, installed: [.admission(proxyFlow)],
            application: setup.application, createdAt: now, expiresAt: now.adding(seconds: decision.lifetime),
            grantedLifetime: decision.lifetime)
        session.redirectTarget = target
        sessions.upsert(session)
        let reply = CSPMessage(
            type: .redirect, flags: .fromMiddlebox, result: .success, sessionID: setup.sessionID, nonce: setup.nonce,
            sequence: setup.sequence,
            tlvs: [
                .redirectTarget(target), .lifetime(decision.lifetime), .epoch(identity.epoch),
                .middleboxRecord(record(.redirected, lifetime: decision.lifetime, extra: [.redirectTarget(target)])),
            ])
        return SignalingOutcome(
            verdict: .drop, kernel: [.admit(proxyFlow, lifetime: decision.lifetime)],
            reply: OutgoingMessage(message: reply, destination: source, source: CSPEndpoint(address: destination.address, port: destination.port)),
            event: "redirected \(hex(setup.sessionID)) \(flow) to proxy \(target)")
    }

    mutating func handleAccept(_ accept: CSPMessage, from source: CSPEndpoint, to destination: CSPEndpoint, now: Instant)
        -> SignalingOutcome
    {
        guard var session = sessions[id: accept.sessionID], session.pendingNonce == accept.nonce,
            responder(of: session).map({ $0 == source.address }) ?? true
        else {
            counters.mismatchedReplies += 1
            // A reply we hold no pending request for (asymmetric route, our restart, or a forgery)
            // opens nothing here; it is passed on unchanged for the hosts to judge.
            return SignalingOutcome(
                verdict: .forward, event: "ACCEPT \(hex(accept.sessionID)) from \(source) matches no request here: passed on, nothing installed")
        }
        let wasAdmitted = session.state == .admitted
        let lifetime = min(session.grantedLifetime, accept.lifetime.map { $0 == 0 ? session.grantedLifetime : $0 } ?? .max)
        var kernel: [KernelChange] = [wasAdmitted ? .readmit(session.flow, lifetime: lifetime) : .admit(session.flow, lifetime: lifetime)]
        session.installed = [.admission(session.flow)]
        if let mapping = session.mapping, mapping.port != 0 {
            kernel.append(.snat(session.flow, to: mapping, lifetime: lifetime))
            session.installed.append(.snat(session.flow, to: mapping))
        }
        session.state = .admitted
        session.pendingNonce = nil
        session.updatedAt = now
        session.grantedLifetime = lifetime
        session.expiresAt = now.adding(seconds: lifetime)
        sessions.upsert(session)
        if wasAdmitted { counters.refreshed += 1 } else { counters.admitted += 1 }
        if session.mapping != nil, !wasAdmitted { counters.mapped += 1 }
        var forwarded = accept
        if let mapping = session.mapping {
            forwarded.tlvs.append(.middleboxRecord(record(.mapped, lifetime: lifetime, extra: [.mappedAddress(mapping)])))
        } else {
            forwarded.tlvs.append(.middleboxRecord(record(.admitted, lifetime: lifetime)))
        }
        let mappedNote = session.mapping.map { " mapped to \($0)" } ?? ""
        return SignalingOutcome(
            verdict: rewritten(original: accept, forwarded), kernel: kernel,
            event: "\(wasAdmitted ? "refreshed" : "admitted") \(hex(session.id)) \(session.flow)\(mappedNote) for \(lifetime)s")
    }

    mutating func handleReject(_ reject: CSPMessage, from source: CSPEndpoint, to destination: CSPEndpoint) -> SignalingOutcome {
        guard let session = sessions[id: reject.sessionID], session.pendingNonce == reject.nonce else {
            // Someone else's (e.g. an upstream middlebox's) REJECT for a session we never held: pass it on.
            return SignalingOutcome(verdict: .forward)
        }
        // A pending session is simply released; an admitted one whose refresh was refused loses
        // what it installed.
        removeSession(session.id)
        var forwarded = reject
        forwarded.tlvs.append(.middleboxRecord(record(.forwarded, lifetime: 0)))
        return SignalingOutcome(
            verdict: rewritten(original: reject, forwarded), kernel: revocation(of: session),
            event: "\(reject.type) for \(hex(session.id)) \(session.flow) from upstream: released")
    }

    mutating func handleRefresh(_ refresh: CSPMessage, from source: CSPEndpoint, to destination: CSPEndpoint, now: Instant)
        -> SignalingOutcome
    {
        guard var session = sessions[id: refresh.sessionID], owner(of: session) == source.address else {
            counters.mismatchedReplies += 1
            return rejection(
                of: refresh, to: source, as: destination, result: .unknownSession, reason: "no session \(hex(refresh.sessionID)) here",
                event: "REFRESH for unknown session \(hex(refresh.sessionID)) from \(source)")
        }
        // The refresh takes effect when the responder ACCEPTs it; lifetime 0 means delete (PCP-style).
        if refresh.lifetime == 0 { return handleTeardown(refresh, from: source) }
        let decision = policy.decide(
            flow: session.flow, application: session.application, incoming: session.incoming,
            requestedLifetime: refresh.lifetime)
        session.pendingNonce = refresh.nonce
        session.grantedLifetime = decision.lifetime
        sessions.upsert(session)
        return SignalingOutcome(verdict: .forward)
    }

    mutating func handleTeardown(_ teardown: CSPMessage, from source: CSPEndpoint) -> SignalingOutcome {
        guard let session = sessions[id: teardown.sessionID],
            owner(of: session) == source.address || responder(of: session) == source.address
        else { return SignalingOutcome(verdict: .forward) }
        removeSession(session.id)
        counters.tornDown += 1
        return SignalingOutcome(
            verdict: .forward, kernel: revocation(of: session), event: "torn down \(hex(session.id)) \(session.flow)")
    }

    /// The kernel change, if any, that the daemon failed to apply: forget the session and tell the
    /// host, instead of forwarding an ACCEPT for state that does not exist.
    public mutating func kernelChangeFailed(sessionID: UInt64, replyTo destination: CSPEndpoint, nonce: UInt64, reason: String)
        -> SignalingOutcome
    {
        removeSession(sessionID)
        counters.admitted -= min(counters.admitted, 1)
        let reject = CSPMessage(
            type: .reject, flags: .fromMiddlebox, result: .middleboxUnavailable, sessionID: sessionID, nonce: nonce,
            tlvs: [
                .reason(CSPReason(retryAfter: 5, text: reason)), .middleboxRecord(record(.rejected, lifetime: 0)),
            ])
        return SignalingOutcome(
            verdict: .drop, reply: OutgoingMessage(message: reject, destination: destination),
            event: "could not install \(hex(sessionID)): \(reason)")
    }

    // MARK: unsignaled flows, expiry, operator actions

    public mutating func handleUnsignaled(flow: FlowTuple, now: Instant) -> UnsignaledDecision {
        switch configuration.unsignaled {
        case .drop:
            counters.unsignaledDropped += 1
            let cacheable = [IPProtocol.tcp, .udp, .sctp].contains(flow.proto) && configuration.dropCacheLifetime > 0
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
            var id = UInt64(truncatingIfNeeded: flow.hashValue) | 1 << 63
            while let other = sessions[id: id], other.flow != flow { id &+= 1 }
            sessions.upsert(
                Session(
                    id: id, flow: flow, state: .legacy, installed: [.admission(flow)], createdAt: now,
                    expiresAt: now.adding(seconds: lifetime), grantedLifetime: lifetime))
            return .admit(.admit(flow, lifetime: lifetime))
        }
    }

    /// Forgets sessions whose lifetime passed. Their kernel elements time out on their own at the
    /// same moment (they were installed with the same lifetime), so no kernel change is needed.
    public mutating func expire(now: Instant) -> [Session] {
        let expired = sessions.expire(now: now)
        counters.expired += UInt64(expired.count)
        for session in expired { releaseNATPorts(of: session) }
        return expired
    }

    /// Operator removal (`midctl delete`): the kernel changes that undo what was installed.
    public mutating func delete(id: UInt64, dryRun: Bool = false) -> (Session, [KernelChange])? {
        guard let session = sessions[id: id] else { return nil }
        if !dryRun { removeSession(id) }
        return (session, revocation(of: session))
    }

    public mutating func flush(dryRun: Bool = false) -> ([Session], [KernelChange]) {
        let all = dryRun ? Array(sessions.all) : sessions.removeAll()
        if !dryRun { natPortsInUse.removeAll() }
        return (all, all.flatMap(revocation(of:)))
    }

    /// Adopts state found in the kernel at start-up (left by a previous run), so a restart neither
    /// drops working flows nor forgets them.
    public mutating func adopt(flow: FlowTuple, remaining: UInt32, now: Instant) {
        guard sessions.session(for: flow) == nil else { return }
        var id = UInt64(truncatingIfNeeded: flow.hashValue) | 1 << 62
        while sessions[id: id] != nil { id &+= 1 }
        sessions.upsert(
            Session(
                id: id, flow: flow, state: .admitted, installed: [.admission(flow)], createdAt: now,
                expiresAt: now.adding(seconds: remaining), grantedLifetime: remaining))
    }

    // MARK: helpers

    func revocation(of session: Session) -> [KernelChange] {
        session.installed.map { object in
            switch object {
            case .admission(let flow): .revoke(flow)
            case .snat(let flow, let to): .removeSNAT(flow, to: to)
            case .dnat(let proto, let external, let to): .removeDNAT(proto, external: external, to: to)
            }
        }
    }

    /// Removes a session and gives back its NAT ports.
    mutating func removeSession(_ id: UInt64) {
        guard let session = sessions.remove(id: id) else { return }
        releaseNATPorts(of: session)
    }

    mutating func releaseNATPorts(of session: Session) {
        guard let mapping = session.mapping, mapping.port != 0 else { return }
        natPortsInUse[session.flow.proto]?.remove(mapping.port)
    }

    func natApplies(_ nat: NATConfiguration, _ flow: FlowTuple) -> Bool {
        flow.source.family == .ipv4 && nat.isInternal(flow.source) && !nat.isInternal(flow.destination)
    }

    /// The host's own port when free (so port-preserving applications keep working), else the next
    /// free port of the configured range.
    mutating func allocateNATPort(_ proto: IPProtocol, preferred: UInt16) -> UInt16? {
        guard let nat = configuration.nat else { return nil }
        var used = natPortsInUse[proto] ?? []
        defer { natPortsInUse[proto] = used }
        if preferred != 0, used.insert(preferred).inserted { return preferred }
        let size = Int(nat.ports.upperBound - nat.ports.lowerBound) + 1
        for step in 0..<size {
            let port = nat.ports.lowerBound &+ UInt16((Int(natPortCursor) + step) % size)
            if used.insert(port).inserted {
                natPortCursor = UInt16((Int(natPortCursor) + step + 1) % size)
                return port
            }
        }
        return nil
    }

    /// The address that signals for the session (and may refresh or tear it down).
    func owner(of session: Session) -> IPAddress { session.incoming ? session.flow.destination : session.flow.source }

    /// The address that answers the session's requests, nil when it is a wildcard.
    func responder(of session: Session) -> IPAddress? {
        let address = session.incoming ? session.flow.source : session.flow.destination
        return address.isUnspecified ? nil : address
    }

    func record(_ decision: CSPDecision, lifetime: UInt32, extra: [CSPTLV] = []) -> CSPMiddleboxRecord {
        CSPMiddleboxRecord(
            middleboxID: identity.id, epoch: identity.epoch, decision: decision, grantedLifetime: lifetime,
            tlvs: [.middleboxName(identity.name)] + extra)
    }

    func rewritten(original: CSPMessage, _ forwarded: CSPMessage) -> SignalingVerdict {
        guard forwarded != original, let bytes = try? forwarded.serialize() else { return .forward }
        return .forwardRewritten(bytes)
    }

    /// REJECT for `request`, sent to `destination`; `responder` (the request's destination) is
    /// the address it is sent from when we answer an intercepted request in the peer's place.
    func rejection(
        of request: CSPMessage, to destination: CSPEndpoint, as responder: CSPEndpoint? = nil, result: CSPResultCode,
        reason: String, retryAfter: UInt32 = 0, event: String
    ) -> SignalingOutcome {
        let reject = CSPMessage(
            type: .reject, flags: .fromMiddlebox, result: result, sessionID: request.sessionID, nonce: request.nonce,
            sequence: request.sequence,
            tlvs: [
                .reason(CSPReason(retryAfter: retryAfter, text: reason)), .epoch(identity.epoch),
                .middleboxRecord(record(.rejected, lifetime: 0)),
            ])
        return SignalingOutcome(
            verdict: .drop, reply: OutgoingMessage(message: reject, destination: destination, source: responder), event: event)
    }

    /// FLOW as it looks at this middlebox: the MAPPED-ADDRESSes that NATs nearer the host put in
    /// their records, applied in path order, to the source (outgoing) or destination (incoming).
    static func effectiveFlow(_ flow: FlowTuple, records: [CSPMiddleboxRecord], incoming: Bool) -> FlowTuple {
        var result = flow
        for record in records {
            for case .mappedAddress(let mapped) in record.tlvs where mapped.address.family == flow.source.family {
                if incoming {
                    result.destination = mapped.address
                    if mapped.port != 0 { result.destinationPort = mapped.port }
                } else {
                    result.source = mapped.address
                    if mapped.port != 0 { result.sourcePort = mapped.port }
                }
            }
        }
        return result
    }
}


extension IPAddress {
    /// 0.0.0.0 or ::, used in FLOW for "any peer".
    public var isUnspecified: Bool { self == IPAddress(ipv4: 0) || self == IPAddress(ipv6: 0, 0) }
}
