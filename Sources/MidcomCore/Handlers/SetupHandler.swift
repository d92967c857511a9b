import CSPWire

/// SETUP, intercepted or addressed to us. Both share every check (ownership, policy, table size,
/// NAT); they differ only at the end: an intercepted SETUP becomes pending and travels on to the
/// responder, one addressed to us is answered by the middlebox as the responder (an incoming
/// pinhole from any peer, docs/PROTOCOL.md 2.4).
extension GatewayEngine {
    mutating func handleSetup(_ request: SignalingRequest, now: Instant) -> SignalingOutcome {
        counters.setups += 1
        let setup = request.message
        let source = request.source
        guard let signaled = setup.flow else {
            counters.malformedMessages += 1
            return rejection(
                of: request, result: .malformedMessage, reason: "SETUP without FLOW", event: "SETUP without FLOW from \(source)")
        }
        let incoming = setup.requestedAction?.contains(.listen) ?? false
        // A hop to our relay endpoint (docs/PROTOCOL.md 14.2, step 2): answered here, with its token.
        if request.isAddressedToUs, !incoming, isOurRelayEndpoint(signaled) {
            return answerLegToOurRelay(request, signaled: signaled, now: now)
        }
        // A client signaling a flow to one of our NAT mappings of a listening server (it learnt
        // the public endpoint from a rendezvous, docs/PROTOCOL.md 10.7) reaches us: the pinhole
        // admits any peer, so we answer for the server.
        if request.isAddressedToUs, !incoming, let listener = mappedListener(for: signaled) {
            return answerForListener(request, listener: listener, flow: signaled)
        }
        // A host of ours away from home asks for a flow (docs/PROTOCOL.md 10.9); then for its
        // leg to the relay endpoint we gave it.
        if request.isAddressedToUs, !incoming {
            if let session = relayedSession(for: request, flow: signaled) { return answerRelayLeg(request, session: session) }
            if configuration.trust.homeAddress(of: request.signer) != nil {
                return relayForAwayHost(request, signaled: signaled, now: now)
            }
        }
        // Only an incoming pinhole makes sense at the middlebox: for outgoing flows the peer answers.
        if request.isAddressedToUs, !incoming {
            return rejection(
                of: request, result: .malformedMessage,
                reason: "send outgoing SETUPs to the peer; only incoming pinholes are requested from the middlebox",
                event: "outgoing SETUP addressed to us by \(source) refused")
        }
        // FLOW is never rewritten (it may be signed): NATs nearer the host report their
        // translation in their records, and the flow as it looks here is FLOW with those applied.
        let flow = Self.effectiveFlow(signaled, records: setup.records, incoming: incoming)
        if let refused = checkOwnership(of: request, flow: flow, incoming: incoming) { return refused }
        let existing = sessions[id: setup.sessionID]
        let decision = decidePolicy(
            flow: flow, application: setup.application, incoming: incoming, requestedLifetime: setup.lifetime)
        switch decision.action {
        case .reject:
            counters.rejected += 1
            // The owner asked to replace the session with a flow we refuse: the old one goes too.
            let kernel = existing.map { discard($0.id, now: now) } ?? []
            return rejection(
                of: request, result: .policyDenied, reason: decision.reason ?? "rejected by policy",
                event: "rejected SETUP \(hex(setup.sessionID)) \(flow) by \(decision.ruleName.map { "rule '\($0)'" } ?? "the default action"): \(decision.reason ?? "policy")",
                kernel: kernel)
        case .relay:
            return relay(request, flow: flow, decision: decision, incoming: incoming, existing: existing, now: now)
        case .admit where relaysOnRequest(request, flow: flow, incoming: incoming):
            return relay(request, flow: flow, decision: decision, incoming: incoming, existing: existing, now: now)
        case .redirect where !request.isAddressedToUs:
            return redirect(request, flow: flow, decision: decision, now: now)
        case .redirect, .admit:
            break
        }
        if let refused = refusalOfNewState(
            request, decision: decision, flow: flow, existingState: existing?.state, application: setup.application)
        {
            return refused
        }
        // Not `existing == nil`: that comparison copied the session out.
        let isNew = existing?.id == nil
        var session =
            existing
            ?? Session(
                id: setup.sessionID, flow: flow, state: .pending, application: setup.application, createdAt: now,
                expiresAt: nil, grantedLifetime: decision.lifetime, incoming: incoming)
        if session.state != .admitted { session.state = .pending }
        if isNew, let buried = tombstones[setup.sessionID] { session.replay = buried.window }
        // A signed session belongs to its key from now on (an unsigned one is upgraded by its
        // owner signing a re-SETUP; authenticate() made sure no other key can).
        if let signer = request.signer { session.ownerKey = signer }
        session.incoming = incoming
        session.application = setup.application ?? session.application
        session.updatedAt = now
        let mapping: CSPEndpoint?
        switch chooseMapping(for: session, flow: flow, request: request) {
        case .success(let chosen): mapping = chosen
        case .failure(let refusal): return refusal.outcome
        }
        if setup.flags.contains(.legacyResponder), !incoming, !request.isAddressedToUs, answersForLegacyResponder(of: flow) {
            return admitForLegacyResponder(
                request, session: session, previous: existing, flow: flow, mapping: mapping, lifetime: decision.lifetime, now: now)
        }
        if request.isAddressedToUs {
            session.mapping = mapping
            return answerAsResponder(request, session: session, previous: existing, flow: flow, lifetime: decision.lifetime, now: now)
        }
        return forwardSetup(
            request, session: session, previous: existing, flow: flow, mapping: mapping, lifetime: decision.lifetime, now: now)
    }

    /// What every request that may set up or change a session here must pass besides its
    /// policy decision (SETUP, and REBIND or ADD-PATH that create a session here): the keys the
    /// policy allows for the flow (the rule's `signatures`, else [trust]), the table size, and
    /// the pending limits — what a flood of such requests costs us is bounded per source and
    /// in all.
    mutating func refusalOfNewState(
        _ request: SignalingRequest, decision: PolicyDecision, flow: FlowTuple, existingState: SessionState?,
        application: String?
    ) -> SignalingOutcome? {
        let message = request.message
        let source = request.source
        if !authorizes(decision.signatures, signer: request.signer, source: source.address, application: application) {
            counters.authenticationFailures += 1
            let needed =
                decision.signatures == .knownKeys
                ? (request.signer == nil ? "a signature by a known key" : "a known key (\(request.signer!) is not listed)")
                : "a signature"
            let rule = decision.ruleName.map { " (rule '\($0)')" } ?? ""
            return rejection(
                of: request, result: .authenticationFailed, reason: "this flow needs \(needed)\(rule)",
                event: "refused \(message.type) \(hex(message.sessionID)) \(flow) from \(source): needs \(needed)\(rule)")
        }
        if existingState == nil, sessions.count >= configuration.maximumSessions {
            counters.tableFull += 1
            return rejection(
                of: request, result: .resourcesExhausted, reason: "session table full", retryAfter: 30,
                event: "session table full: rejected \(hex(message.sessionID))")
        }
        if existingState == nil || existingState == .pending {
            let trust = configuration.trust
            if sessions.pendingSessions(of: source.address) >= trust.pendingPerSource || sessions.pendingCount >= trust.maximumPending {
                counters.pendingLimited += 1
                return rejection(
                    of: request, result: .resourcesExhausted, reason: "too many requests in flight", retryAfter: 5,
                    event: "pending limit: rejected \(hex(message.sessionID)) from \(source.address)")
            }
        }
        return nil
    }

    /// Anti-spoofing: a host may only signal flows it takes part in, as the data sender
    /// (outgoing) or the receiver (incoming pinhole), and a session belongs to the host that
    /// created it: another host reusing its ID must not take it over (until signatures bind
    /// sessions to keys, the owner's address is the proof).
    mutating func checkOwnership(of request: SignalingRequest, flow: FlowTuple, incoming: Bool) -> SignalingOutcome? {
        let source = request.source
        let sessionID = request.message.sessionID
        let flowOwner = incoming ? flow.destination : flow.source
        guard flowOwner == source.address else {
            return spoofed(
                request, reason: "flow \(flow) does not belong to signaling host \(source.address)",
                event: "rejected spoofed \(request.message.type) \(hex(sessionID)) from \(source): flow \(flow)")
        }
        if let owner = sessions.owner(ofSession: sessionID), owner != source.address {
            return spoofed(
                request, reason: "session \(hex(sessionID)) belongs to another host",
                event: "rejected \(request.message.type) \(hex(sessionID)) from \(source): session owned by \(owner)")
        }
        return nil
    }

    private mutating func spoofed(_ request: SignalingRequest, reason: String, event: String) -> SignalingOutcome {
        counters.spoofedFlows += 1
        return rejection(of: request, result: .sourceDenied, reason: reason, event: event)
    }

    /// A refusal as an error value, so the NAT choice can be a `Result`.
    struct Refusal: Error {
        var outcome: SignalingOutcome
    }

    /// The NAT mapping the session will have once `flow` is admitted, if this middlebox translates
    /// the flow: for outgoing flows chosen now, so the responder and every middlebox upstream see
    /// the flow as it will look after translation; for pinholes requested from us, the external
    /// port peers connect to. A new port is reserved at once; the old one is released when the
    /// session stops using it (`store`, `released`).
    mutating func chooseMapping(for session: Session, flow: FlowTuple, request: SignalingRequest)
        -> Result<CSPEndpoint?, Refusal>
    {
        guard let nat = configuration.nat else { return .success(nil) }
        let incoming = session.incoming
        // An incoming pinhole is mapped when asked of us, and when its SETUP leaves the inside
        // (a hidden server registering at a rendezvous, docs/PROTOCOL.md 10.7): the peer it goes
        // to learns the public endpoint from our record.
        let leavesInside = request.destination.map { !nat.isInternal($0.address) } ?? false
        let applies =
            incoming
            ? (request.isAddressedToUs || leavesInside) && flow.destination.family == .ipv4 && nat.isInternal(flow.destination)
            : flow.source.family == .ipv4 && nat.isInternal(flow.source) && !nat.isInternal(flow.destination)
        guard applies else { return .success(nil) }
        let hostPort = incoming ? flow.destinationPort : flow.sourcePort
        // A translation is keyed by the host's port: "any source port" cannot be mapped (every
        // connection would need the same external port), and must not be reported as mapped.
        guard hostPort != 0 else {
            counters.rejected += 1
            return .failure(Refusal(outcome: rejection(
                of: request, result: .sourcePortRequired,
                reason: "this middlebox translates addresses: signal the exact source port (bind the socket first)",
                event: "rejected \(hex(request.message.sessionID)) \(flow): NAT needs the source port")))
        }
        // The mapping stays while the host keeps its port; a new port gets a new mapping.
        let current = session.pending?.mapping ?? session.mapping
        let currentFlow = session.pending?.flow ?? session.flow
        let currentPort = incoming ? currentFlow.destinationPort : currentFlow.sourcePort
        if let current, currentPort == hostPort, currentFlow.proto == flow.proto { return .success(current) }
        guard let port = natPorts?.allocate(flow.proto, preferred: hostPort) else {
            counters.tableFull += 1
            return .failure(Refusal(outcome: rejection(
                of: request, result: .resourcesExhausted, reason: "no free NAT port", retryAfter: 30,
                event: "NAT ports exhausted: rejected \(hex(request.message.sessionID))")))
        }
        return .success(CSPEndpoint(address: nat.externalAddress, port: port))
    }

    /// Gives back the port of a pending request's mapping that the session does not use (a
    /// refused, replaced or abandoned re-SETUP).
    mutating func releasePendingMapping(of session: Session, keeping kept: CSPEndpoint? = nil) {
        guard let pending = session.pending?.mapping, pending != session.mapping, pending != kept else { return }
        natPorts?.release(session.pending?.flow.proto ?? session.flow.proto, pending.port)
    }

    /// Intercepted SETUP: the session waits for the responder's answer; the SETUP travels on. An
    /// admitted session keeps what it has installed until the answer comes (flow and mapping alike).
    mutating func forwardSetup(
        _ request: SignalingRequest, session: Session, previous: Session?, flow: FlowTuple, mapping: CSPEndpoint?,
        lifetime: UInt32, now: Instant
    ) -> SignalingOutcome {
        let setup = request.message
        var session = session
        let recordRoute = setup.flags.contains(.recordRoute)
        releasePendingMapping(of: session, keeping: mapping)
        if session.state == .pending {
            session.flow = flow
            session.mapping = mapping
            session.grantedLifetime = lifetime
            session.expiresAt = now.adding(seconds: configuration.pendingTimeout)
        }
        session.pending = PendingRequest(nonce: setup.nonce, flow: flow, lifetime: lifetime, recordRoute: recordRoute, mapping: mapping)
        let kernel = store(session, previous: previous)
        var forwarded = setup
        // Our record goes in when asked for, and whenever we translate: middleboxes beyond us
        // need the MAPPED-ADDRESS to see the flow as it will look there.
        if recordRoute || mapping != nil {
            var record = record(.forwarded, lifetime: lifetime)
            if let mapping { record.tlvs.append(.mappedAddress(mapping)) }
            forwarded.tlvs.append(.middleboxRecord(record))
        }
        return SignalingOutcome(
            verdict: rewritten(original: setup, forwarded), kernel: kernel,
            event: describe("SETUP \(hex(setup.sessionID)) \(flow) pending"))
    }

    /// SETUP addressed to us: admit at once and answer ACCEPT as the responder.
    mutating func answerAsResponder(
        _ request: SignalingRequest, session: Session, previous: Session?, flow: FlowTuple, lifetime: UInt32, now: Instant
    ) -> SignalingOutcome {
        var session = session
        let wasAdmitted = session.state == .admitted
        releasePendingMapping(of: session, keeping: session.mapping)
        session.flow = flow
        session.state = .admitted
        session.pending = nil
        session.grantedLifetime = lifetime
        session.expiresAt = now.adding(seconds: lifetime)
        let kernel = store(session, previous: previous, refresh: true)
        if wasAdmitted { counters.refreshed += 1 } else { counters.admitted += 1 }
        if session.mapping != nil, !wasAdmitted { counters.mapped += 1 }
        let mappedNote = session.mapping.map { " mapped from \($0)" } ?? ""
        let refusal = rejection(
            of: request, result: .middleboxUnavailable, reason: "middlebox could not install state", retryAfter: 5, event: "")
        return SignalingOutcome(
            verdict: .drop, kernel: kernel, reply: answer(request, lifetime: lifetime, session: session),
            onKernelFailure: .refuse(sessionID: session.id, reply: refusal.reply),
            event: describe("opened pinhole \(hex(session.id)) \(flow)\(mappedNote) for \(lifetime)s"))
    }

    /// The admitted any-peer pinhole whose NAT mapping is `flow`'s destination.
    func mappedListener(for flow: FlowTuple) -> Session? {
        guard let nat = configuration.nat, flow.destination == nat.externalAddress,
            let listener = sessions.listener(proto: flow.proto, mappedPort: flow.destinationPort),
            listener.flow.source.isUnspecified
        else { return nil }
        return listener
    }

    /// ACCEPT in the listening server's name for a client's flow to its mapping: nothing is
    /// installed (the pinhole is there); the lifetime is what is left of the pinhole's.
    mutating func answerForListener(_ request: SignalingRequest, listener: Session, flow signaled: FlowTuple) -> SignalingOutcome {
        let flow = Self.effectiveFlow(signaled, records: request.message.records, incoming: false)
        if let refused = checkOwnership(of: request, flow: flow, incoming: false) { return refused }
        let left = listener.expiresAt.map { UInt32(min(Double(UInt32.max), max(0, $0.seconds(since: clock)))) } ?? listener.grantedLifetime
        let lifetime = min(request.message.lifetime ?? left, left)
        return SignalingOutcome(
            verdict: .drop, reply: OutgoingMessage(message: ownAccept(request.message, lifetime: lifetime), destination: request.source),
            event: "answered SETUP \(hex(request.message.sessionID)) \(flow) for the server listening at \(listener.flow.destination):\(listener.flow.destinationPort)")
    }

    /// The host must go through a proxy: answer REDIRECT and pre-admit the host → proxy flow, so the
    /// host can reconnect at once without signaling again (docs/PROTOCOL.md, REDIRECT).
    mutating func redirect(_ request: SignalingRequest, flow: FlowTuple, decision: PolicyDecision, now: Instant)
        -> SignalingOutcome
    {
        let setup = request.message
        guard let target = decision.redirectTarget, target.address.family == flow.source.family else {
            counters.rejected += 1
            return rejection(
                of: request, result: .policyDenied, reason: "flows of this kind must use a proxy of the other address family",
                event: "cannot redirect \(flow): no proxy of its family")
        }
        guard setup.requestedAction?.contains(.allowRedirect) ?? true else {
            counters.rejected += 1
            return rejection(
                of: request, result: .policyDenied, reason: "flows of this kind must go through the proxy \(target)",
                event: "rejected \(hex(setup.sessionID)) \(flow): host does not accept redirection")
        }
        counters.redirected += 1
        let previous = sessions[id: setup.sessionID]
        var session = Session(
            id: setup.sessionID, flow: flow, state: .redirected, application: setup.application, createdAt: now,
            expiresAt: now.adding(seconds: decision.lifetime), grantedLifetime: decision.lifetime)
        session.redirectTarget = target
        let kernel = store(session, previous: previous)
        let reply = redirection(setup, to: target, lifetime: decision.lifetime)
        // If the proxy flow cannot be admitted, the host hears nothing it could act on in vain.
        return SignalingOutcome(
            verdict: .drop, kernel: kernel,
            reply: OutgoingMessage(message: reply, destination: request.source, source: request.destination),
            onKernelFailure: .refuse(sessionID: session.id, reply: nil),
            event: "redirected \(hex(setup.sessionID)) \(flow) to proxy \(target)")
    }

    /// REDIRECT in our own name: `request`'s host must use `target` (a proxy, or our relay).
    func redirection(_ request: CSPMessage, to target: CSPEndpoint, lifetime: UInt32) -> CSPMessage {
        CSPMessage(
            type: .redirect, flags: .fromMiddlebox, result: .success, sessionID: request.sessionID, nonce: request.nonce,
            sequence: request.sequence,
            tlvs: [
                .redirectTarget(target), .lifetime(lifetime), .epoch(identity.epoch),
                .middleboxRecord(record(.redirected, lifetime: lifetime, extra: [.redirectTarget(target)])),
            ])
    }

    /// ACCEPT in our own name with our record (`admitted`, or `denied` with `extra` for a DENY),
    /// signed when we sign records: for a request we answer without installing anything.
    func ownAccept(_ request: CSPMessage, lifetime: UInt32, decision: CSPDecision = .admitted, extra: [CSPTLV] = []) -> CSPMessage {
        sealed(
            CSPMessage(
                type: .accept, flags: .fromMiddlebox, result: .success, sessionID: request.sessionID, nonce: request.nonce,
                sequence: request.sequence,
                tlvs: [.lifetime(lifetime), .epoch(identity.epoch), .middleboxRecord(record(decision, lifetime: lifetime, extra: extra))]))
    }

    /// ACCEPT from the middlebox acting as the responder.
    func answer(_ request: SignalingRequest, lifetime: UInt32, session: Session) -> OutgoingMessage {
        var tlvs: [CSPTLV] = [.lifetime(lifetime), .epoch(identity.epoch)]
        var extra: [CSPTLV] = []
        if let mapping = session.mapping {
            tlvs.append(.mappedAddress(mapping))
            extra.append(.mappedAddress(mapping))
        }
        tlvs.append(.middleboxRecord(record(session.mapping == nil ? .admitted : .mapped, lifetime: lifetime, extra: extra)))
        let accept = CSPMessage(
            type: .accept, flags: .fromMiddlebox, result: .success, sessionID: request.message.sessionID,
            nonce: request.message.nonce, sequence: request.message.sequence, tlvs: tlvs)
        return OutgoingMessage(message: sealed(accept), destination: request.source)
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
