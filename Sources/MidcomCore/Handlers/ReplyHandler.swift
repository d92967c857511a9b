import CSPWire

/// Answers travelling back to the host: ACCEPT/MAPPED make a pending request take effect;
/// REJECT/REDIRECT/CHALLENGE from further along release what it held.
extension GatewayEngine {
    mutating func handleAccept(_ request: SignalingRequest, now: Instant) -> SignalingOutcome {
        let accept = request.message
        // Unwrapped once (each `if let` of an optional session was a copy of it).
        guard let previous = sessions[id: accept.sessionID] else { return unmatchedAnswer(request) }
        if previous.pending == nil, previous.state == .admitted, previous.replay.latestNonce == accept.nonce,
            Self.responder(of: previous.flow, incoming: previous.incoming).map({ $0 == request.source.address }) ?? true
        {
            return repeatedAnswer(accept, session: previous)
        }
        guard let pending = previous.pending, pending.nonce == accept.nonce,
            pending.fromResponder
                ? previous.owner == request.source.address
                : Self.responder(of: pending.flow, incoming: previous.incoming).map({ $0 == request.source.address }) ?? true
        else { return unmatchedAnswer(request) }
        var session = previous
        let wasAdmitted = session.state == .admitted
        let lifetime = min(pending.lifetime, accept.lifetime.map { $0 == 0 ? pending.lifetime : $0 } ?? .max)
        session.flow = pending.flow
        session.pending = nil
        session.mapping = pending.mapping
        session.state = .admitted
        session.recordRoute = pending.recordRoute
        // A responder that signs its answers can later move its side of the session (6.7).
        if !pending.fromResponder, let signer = request.signer { session.responderKey = signer }
        session.updatedAt = now
        session.grantedLifetime = lifetime
        session.expiresAt = now.adding(seconds: lifetime)
        var kernel = store(session, previous: previous, refresh: true)
        if pending.rebind, wasAdmitted { kernel = retireLater(kernel, now: now) }
        // A re-SETUP that moved the session to another flow is a new admission, not a refresh.
        let refreshed = wasAdmitted && previous.flow == session.flow
        if refreshed { counters.refreshed += 1 } else { counters.admitted += 1 }
        if session.mapping != nil, !wasAdmitted { counters.mapped += 1 }
        var forwarded = accept
        if pending.recordRoute || session.mapping != nil {
            if let mapping = session.mapping {
                forwarded.tlvs.append(.middleboxRecord(record(.mapped, lifetime: lifetime, extra: [.mappedAddress(mapping)])))
            } else {
                forwarded.tlvs.append(.middleboxRecord(record(pending.rebind ? .rebound : .admitted, lifetime: lifetime)))
            }
        }
        // An ACCEPT for state we could not install must not reach the host as success.
        let plan: KernelFailurePlan =
            if let host = request.destination {
                .refuseAnswer(
                    sessionID: session.id,
                    rejection: AnswerRejection(
                        sessionID: accept.sessionID, nonce: accept.nonce, sequence: accept.sequence, host: host,
                        responder: request.source, middleboxID: identity.id, epoch: identity.epoch, middleboxName: identity.name,
                        signer: configuration.trust.signRecords ? identity.key : nil))
            } else {
                .refuse(sessionID: session.id, reply: nil)
            }
        return SignalingOutcome(
            verdict: rewritten(original: accept, forwarded), kernel: kernel, onKernelFailure: plan,
            event: describe(
                "\(refreshed ? "refreshed" : "admitted") \(hex(session.id)) \(session.flow)\(session.mapping.map { " mapped to \($0)" } ?? "") for \(lifetime)s"))
    }

    /// A reply we hold no pending request for (asymmetric route, our restart, or a forgery) opens
    /// nothing here; it is passed on unchanged for the hosts to judge. The ruleset only lets such
    /// replies through inside a conntrack entry of a request that went out.
    mutating func unmatchedAnswer(_ request: SignalingRequest) -> SignalingOutcome {
        counters.mismatchedReplies += 1
        return SignalingOutcome(
            verdict: .forward,
            event: "\(request.message.type) \(hex(request.message.sessionID)) from \(request.source) matches no request here: passed on, nothing installed")
    }

    /// The answer that admitted `session`, sent again by the responder (it was CHALLENGEd by a
    /// middlebox nearer the host, or the host retransmitted its request): it gets our record again
    /// and travels on; nothing changes here (docs/PROTOCOL.md 6.2, idempotent retransmissions).
    mutating func repeatedAnswer(_ accept: CSPMessage, session: Session) -> SignalingOutcome {
        var forwarded = accept
        if session.answeredForResponder {
            // A middlebox further along answering for the responder too (docs/PROTOCOL.md 6.9).
            let extra: [CSPTLV] = session.mapping.map { [.mappedAddress($0)] } ?? []
            forwarded.tlvs.append(.middleboxRecord(record(.answeredForResponder, lifetime: session.grantedLifetime, extra: extra)))
        } else if session.recordRoute || session.mapping != nil {
            if let mapping = session.mapping {
                forwarded.tlvs.append(.middleboxRecord(record(.mapped, lifetime: session.grantedLifetime, extra: [.mappedAddress(mapping)])))
            } else {
                forwarded.tlvs.append(.middleboxRecord(record(.admitted, lifetime: session.grantedLifetime)))
            }
        }
        return SignalingOutcome(
            verdict: rewritten(original: accept, forwarded), event: "\(accept.type) \(hex(session.id)) repeated: our record added again")
    }

    /// REJECT, REDIRECT, RELAY or CHALLENGE for a request we forwarded. A first SETUP's pending session
    /// is released. An admitted session whose REFRESH or re-SETUP was refused keeps its admission
    /// until its own lifetime ends (docs/PROTOCOL.md 6.3: a refusal releases pending state only);
    /// the host decides whether to tear it down.
    mutating func handleRefusal(_ request: SignalingRequest) -> SignalingOutcome {
        let refusal = request.message
        guard var session = sessions[id: refusal.sessionID], let pending = session.pending, pending.nonce == refusal.nonce
        else {
            // Someone else's (e.g. an upstream middlebox's) answer for a session we never held: pass it on.
            return SignalingOutcome(verdict: .forward)
        }
        // A CHALLENGE from further along ends nothing: the host proves its address and repeats
        // the same request, which then finds its pending state here.
        if refusal.type == .challenge { return SignalingOutcome(verdict: .forward) }
        var kernel: [KernelChange] = []
        let outcome: String
        if session.state == .pending {
            kernel = discard(session.id)
            outcome = "released"
        } else {
            let previous = session
            releasePendingMapping(of: session)
            session.pending = nil
            kernel = store(session, previous: previous)
            outcome = "request refused, admission kept until it expires"
        }
        var forwarded = refusal
        if pending.recordRoute { forwarded.tlvs.append(.middleboxRecord(record(.forwarded, lifetime: 0))) }
        return SignalingOutcome(
            verdict: rewritten(original: refusal, forwarded), kernel: kernel,
            event: "\(refusal.type) for \(hex(session.id)) \(session.flow) from upstream: \(outcome)")
    }

    /// The address that answers requests about `flow`, nil when it is a wildcard.
    static func responder(of flow: FlowTuple, incoming: Bool) -> IPAddress? {
        let address = incoming ? flow.source : flow.destination
        return address.isUnspecified ? nil : address
    }
}
