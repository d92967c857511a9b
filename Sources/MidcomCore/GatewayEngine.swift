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
    case revoke(FlowTuple)
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

    public var asDictionary: [String: UInt64] {
        [
            "signaling_messages": signalingMessages, "malformed_messages": malformedMessages, "setups": setups,
            "admitted": admitted, "rejected": rejected, "refreshed": refreshed, "torn_down": tornDown,
            "mismatched_replies": mismatchedReplies, "spoofed_flows": spoofedFlows, "unknown_types": unknownTypes,
            "unsignaled_dropped": unsignaledDropped, "unsignaled_passed": unsignaledPassed,
            "unsignaled_admitted": unsignaledAdmitted, "expired": expired, "table_full": tableFull,
        ]
    }
}

/// What the gateway does with the first packet of a flow nobody signaled.
public enum UnsignaledDecision: Sendable, Equatable {
    case drop
    /// Leave it to the static ruleset's default policy.
    case defaultPolicy
    case admit(KernelChange)
}

/// The middlebox's signaling logic: pure, deterministic, no syscalls. The daemon feeds it
/// intercepted packets and the time, and carries out the verdicts and kernel changes it returns.
public struct GatewayEngine: Sendable {
    public private(set) var sessions = SessionTable()
    public private(set) var counters = EngineCounters()
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
        switch message.type {
        case .setup: return handleSetup(message, from: source, now: now)
        case .accept: return handleAccept(message, from: source, to: destination, now: now)
        case .reject: return handleReject(message, from: source, to: destination)
        case .refresh: return handleRefresh(message, from: source, now: now)
        case .teardown: return handleTeardown(message, from: source)
        default:
            if !CSPMessageType.allKnown.contains(message.type) { counters.unknownTypes += 1 }
            // Messages this version does not act on still reach the far end: Midcom never breaks
            // end-to-end signaling it does not understand.
            return SignalingOutcome(verdict: .forward)
        }
    }

    mutating func handleSetup(_ setup: CSPMessage, from source: CSPEndpoint, now: Instant) -> SignalingOutcome {
        counters.setups += 1
        guard let flow = setup.flow else {
            counters.malformedMessages += 1
            return rejection(
                of: setup, to: source, result: .malformedMessage, reason: "SETUP without FLOW", event: "SETUP without FLOW from \(source)")
        }
        let incoming = setup.requestedAction?.contains(.listen) ?? false
        // Anti-spoofing: a host may only signal flows it takes part in, as the data sender
        // (outgoing) or the receiver (incoming pinhole).
        let owner = incoming ? flow.destination : flow.source
        guard owner == source.address else {
            counters.spoofedFlows += 1
            return rejection(
                of: setup, to: source, result: .sourceDenied,
                reason: "flow \(flow) does not belong to signaling host \(source.address)",
                event: "rejected spoofed SETUP \(hex(setup.sessionID)) from \(source): flow \(flow)")
        }
        let decision = policy.decide(
            flow: flow, application: setup.application, incoming: incoming, requestedLifetime: setup.lifetime)
        switch decision.action {
        case .reject, .redirect:
            // Redirect needs the proxy path of a later issue; until then it is refused, never silently admitted.
            counters.rejected += 1
            if let existing = sessions[id: setup.sessionID], existing.flow == flow { sessions.remove(id: existing.id) }
            return rejection(
                of: setup, to: source, result: .policyDenied, reason: decision.reason ?? "rejected by policy",
                event: "rejected SETUP \(hex(setup.sessionID)) \(flow): \(decision.reason ?? "policy")")
        case .admit:
            if sessions[id: setup.sessionID] == nil, sessions.count >= configuration.maximumSessions {
                counters.tableFull += 1
                return rejection(
                    of: setup, to: source, result: .resourcesExhausted, reason: "session table full", retryAfter: 30,
                    event: "session table full: rejected \(hex(setup.sessionID))")
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
            sessions.upsert(session)
            var forwarded = setup
            if setup.flags.contains(.recordRoute) {
                forwarded.tlvs.append(.middleboxRecord(record(.forwarded, lifetime: decision.lifetime)))
            }
            return SignalingOutcome(
                verdict: rewritten(original: setup, forwarded), event: "SETUP \(hex(setup.sessionID)) \(flow) pending")
        }
    }

    mutating func handleAccept(_ accept: CSPMessage, from source: CSPEndpoint, to destination: CSPEndpoint, now: Instant)
        -> SignalingOutcome
    {
        guard var session = sessions[id: accept.sessionID], session.pendingNonce == accept.nonce,
            responder(of: session).map({ $0 == source.address }) ?? true
        else {
            counters.mismatchedReplies += 1
            // An ACCEPT we did not see the request for (or a forgery) must not open anything.
            return SignalingOutcome(
                verdict: .drop, event: "dropped ACCEPT \(hex(accept.sessionID)) from \(source): no matching request")
        }
        let wasAdmitted = session.state == .admitted
        let lifetime = min(session.grantedLifetime, accept.lifetime.map { $0 == 0 ? session.grantedLifetime : $0 } ?? .max)
        session.state = .admitted
        session.installed = .admit(session.flow)
        session.pendingNonce = nil
        session.updatedAt = now
        session.grantedLifetime = lifetime
        session.expiresAt = now.adding(seconds: lifetime)
        sessions.upsert(session)
        if wasAdmitted { counters.refreshed += 1 } else { counters.admitted += 1 }
        var forwarded = accept
        forwarded.tlvs.append(.middleboxRecord(record(.admitted, lifetime: lifetime)))
        return SignalingOutcome(
            verdict: rewritten(original: accept, forwarded), kernel: [.admit(session.flow, lifetime: lifetime)],
            event: "\(wasAdmitted ? "refreshed" : "admitted") \(hex(session.id)) \(session.flow) for \(lifetime)s")
    }

    mutating func handleReject(_ reject: CSPMessage, from source: CSPEndpoint, to destination: CSPEndpoint) -> SignalingOutcome {
        guard let session = sessions[id: reject.sessionID], session.pendingNonce == reject.nonce else {
            // Someone else's (e.g. an upstream middlebox's) REJECT for a session we never held: pass it on.
            return SignalingOutcome(verdict: .forward)
        }
        sessions.remove(id: session.id)
        var forwarded = reject
        forwarded.tlvs.append(.middleboxRecord(record(.removed, lifetime: 0)))
        return SignalingOutcome(
            verdict: rewritten(original: reject, forwarded), kernel: revocation(of: session),
            event: "peer rejected \(hex(session.id)) \(session.flow)")
    }

    mutating func handleRefresh(_ refresh: CSPMessage, from source: CSPEndpoint, now: Instant) -> SignalingOutcome {
        guard var session = sessions[id: refresh.sessionID], owner(of: session) == source.address else {
            counters.mismatchedReplies += 1
            return rejection(
                of: refresh, to: source, result: .unknownSession, reason: "no session \(hex(refresh.sessionID)) here",
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
        sessions.remove(id: session.id)
        counters.tornDown += 1
        return SignalingOutcome(
            verdict: .forward, kernel: revocation(of: session), event: "torn down \(hex(session.id)) \(session.flow)")
    }

    /// The kernel change, if any, that the daemon failed to apply: forget the session and tell the
    /// host, instead of forwarding an ACCEPT for state that does not exist.
    public mutating func kernelChangeFailed(sessionID: UInt64, replyTo destination: CSPEndpoint, nonce: UInt64, reason: String)
        -> SignalingOutcome
    {
        sessions.remove(id: sessionID)
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
            return .drop
        case .defaultPolicy:
            counters.unsignaledPassed += 1
            return .defaultPolicy
        case .admit:
            guard sessions.count < configuration.maximumSessions else {
                counters.tableFull += 1
                return .drop
            }
            counters.unsignaledAdmitted += 1
            let lifetime = configuration.legacyLifetime
            var id = UInt64(truncatingIfNeeded: flow.hashValue) | 1 << 63
            while let other = sessions[id: id], other.flow != flow { id &+= 1 }
            sessions.upsert(
                Session(
                    id: id, flow: flow, state: .legacy, installed: .admit(flow), createdAt: now,
                    expiresAt: now.adding(seconds: lifetime), grantedLifetime: lifetime))
            return .admit(.admit(flow, lifetime: lifetime))
        }
    }

    /// Forgets sessions whose lifetime passed. Their kernel elements time out on their own at the
    /// same moment (they were installed with the same lifetime), so no kernel change is needed.
    public mutating func expire(now: Instant) -> [Session] {
        let expired = sessions.expire(now: now)
        counters.expired += UInt64(expired.count)
        return expired
    }

    /// Operator removal (`midctl delete`): the kernel changes that undo what was installed.
    public mutating func delete(id: UInt64, dryRun: Bool = false) -> (Session, [KernelChange])? {
        guard let session = sessions[id: id] else { return nil }
        if !dryRun { sessions.remove(id: id) }
        return (session, revocation(of: session))
    }

    public mutating func flush(dryRun: Bool = false) -> ([Session], [KernelChange]) {
        let all = dryRun ? Array(sessions.all) : sessions.removeAll()
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
                id: id, flow: flow, state: .admitted, installed: .admit(flow), createdAt: now,
                expiresAt: now.adding(seconds: remaining), grantedLifetime: remaining))
    }

    // MARK: helpers

    func revocation(of session: Session) -> [KernelChange] {
        switch session.installed {
        case .none: []
        case .admit(let flow), .redirect(let flow, _): [.revoke(flow)]
        }
    }

    /// The address that signals for the session (and may refresh or tear it down).
    func owner(of session: Session) -> IPAddress { session.incoming ? session.flow.destination : session.flow.source }

    /// The address that answers the session's requests, nil when it is a wildcard.
    func responder(of session: Session) -> IPAddress? {
        let address = session.incoming ? session.flow.source : session.flow.destination
        return address.isUnspecified ? nil : address
    }

    func record(_ decision: CSPDecision, lifetime: UInt32) -> CSPMiddleboxRecord {
        CSPMiddleboxRecord(
            middleboxID: identity.id, epoch: identity.epoch, decision: decision, grantedLifetime: lifetime,
            tlvs: [.middleboxName(identity.name)])
    }

    func rewritten(original: CSPMessage, _ forwarded: CSPMessage) -> SignalingVerdict {
        guard forwarded != original, let bytes = try? forwarded.serialize() else { return .forward }
        return .forwardRewritten(bytes)
    }

    func rejection(
        of request: CSPMessage, to destination: CSPEndpoint, result: CSPResultCode, reason: String,
        retryAfter: UInt32 = 0, event: String
    ) -> SignalingOutcome {
        let reject = CSPMessage(
            type: .reject, flags: .fromMiddlebox, result: result, sessionID: request.sessionID, nonce: request.nonce,
            sequence: 0,
            tlvs: [
                .reason(CSPReason(retryAfter: retryAfter, text: reason)), .epoch(identity.epoch),
                .middleboxRecord(record(.rejected, lifetime: 0)),
            ])
        return SignalingOutcome(verdict: .drop, reply: OutgoingMessage(message: reject, destination: destination), event: event)
    }
}

public func hex(_ id: UInt64) -> String {
    let digits = String(id, radix: 16)
    return String(repeating: "0", count: max(0, 16 - digits.count)) + digits
}

extension IPAddress {
    /// 0.0.0.0 or ::, used in FLOW for "any peer".
    public var isUnspecified: Bool { self == IPAddress(ipv4: 0) || self == IPAddress(ipv6: 0, 0) }
}
