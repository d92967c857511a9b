import CSPTrust
import CSPWire

/// REBIND, ADD-PATH and REMOVE-PATH (docs/PROTOCOL.md 6.7): a signed session's owner moves to a
/// new address, or adds or removes one of its paths. Only the session's key may do this (an
/// unsigned session cannot move), and only from an address that answered a CHALLENGE (checked
/// by the pipeline before these handlers run).
extension GatewayEngine {
    /// REBIND: FLOW is the session's flow as it was, NEW-ADDRESS the owner's new endpoint; it
    /// arrives from the new address. A session we know moves when the peer ACCEPTs (like a
    /// re-SETUP with another flow: the new admission goes in, the old one out, its connections
    /// cleared); a session we do not know (we are on the new path only) is set up for the rebound
    /// flow under policy, owned by the REBIND's key.
    ///
    /// An ADD-PATH reaching a middlebox that does not know its session (the new path crosses
    /// other middleboxes than the first) comes here too, with its PATH as the new address: the
    /// path's flow is set up here like a rebound flow (`addsPath`).
    mutating func handleRebind(
        _ request: SignalingRequest, now: Instant, newAddress override: CSPEndpoint? = nil, addsPath: Bool = false
    ) -> SignalingOutcome {
        let rebind = request.message
        guard let signer = request.signer else {
            counters.authenticationFailures += 1
            return rejection(
                of: request, result: .authenticationFailed, reason: "REBIND must be signed: unsigned sessions cannot move",
                event: "refused unsigned REBIND \(hex(rebind.sessionID)) from \(request.source)")
        }
        guard let old = rebind.flow, let newAddress = override ?? rebind.newAddress, newAddress.address.family == old.source.family
        else {
            counters.malformedMessages += 1
            return rejection(
                of: request, result: .malformedMessage, reason: "REBIND needs FLOW and a NEW-ADDRESS of the same family",
                event: "malformed REBIND \(hex(rebind.sessionID)) from \(request.source)")
        }
        let existing = sessions[id: rebind.sessionID]
        if let existing, existing.state == .admitted, existing.responderKey == signer, existing.ownerKey != signer, !addsPath {
            return rebindResponder(request, session: existing, newAddress: newAddress, now: now)
        }
        if let existing, existing.ownerKey != signer {
            counters.authenticationFailures += 1
            return rejection(
                of: request, result: .authenticationFailed, reason: "session \(hex(rebind.sessionID)) does not belong to \(signer)",
                event: "refused REBIND \(hex(rebind.sessionID)): \(signer) is not the session's key")
        }
        let incoming = existing?.incoming ?? (rebind.requestedAction?.contains(.listen) ?? false)
        // FLOW is the initiator's view, never rewritten in transit: NATs nearer the host report
        // their translations in records, as for SETUP.
        let end = Session.ownerEnd(incoming: incoming)
        // A REBIND moves the owner's end; it cannot re-aim the session at another peer or port.
        if let existing, !addsPath {
            let peer: FlowTuple.End = end == .source ? .destination : .source
            let peerPort = { (f: FlowTuple) in peer == .source ? f.sourcePort : f.destinationPort }
            guard old.proto == existing.flow.proto, old.address(of: peer) == existing.flow.address(of: peer),
                peerPort(old) == peerPort(existing.flow)
            else {
                counters.malformedMessages += 1
                return rejection(
                    of: request, result: .malformedMessage, reason: "FLOW is not the session's flow \(existing.flow)",
                    event: "refused REBIND \(hex(rebind.sessionID)): FLOW \(old) is not the session's \(existing.flow)")
            }
        }
        let moved = Self.effectiveFlow(old, records: rebind.records, incoming: incoming).moving(end, to: newAddress)
        // The REBIND comes from the new address: that is the one that proved itself.
        guard moved.address(of: end) == request.source.address else {
            return spoofedRebind(request, reason: "NEW-ADDRESS \(newAddress.address) is not the REBIND's source \(request.source.address)")
        }
        let decision = decidePolicy(
            flow: existing?.relay == nil ? moved : policyView(moved, relayedFor: signer),
            application: existing?.application ?? rebind.application, incoming: incoming,
            requestedLifetime: rebind.lifetime ?? existing?.grantedLifetime)
        if decision.action == .relay { return refusedDirect(request, flow: moved, decision: decision) }
        guard decision.action != .reject else {
            counters.rejected += 1
            return rejection(
                of: request, result: .policyDenied, reason: decision.reason ?? "rejected by policy",
                event: "rejected REBIND \(hex(rebind.sessionID)) to \(moved): \(decision.reason ?? "policy")")
        }
        if let refused = refusalOfNewState(
            request, decision: decision, flow: moved, existingState: existing?.state,
            application: existing?.application ?? rebind.application)
        {
            return refused
        }
        var session =
            existing
            ?? Session(
                id: rebind.sessionID, flow: moved, state: .pending, application: rebind.application, createdAt: now,
                expiresAt: nil, grantedLifetime: decision.lifetime, incoming: incoming)
        if existing == nil {
            session.ownerKey = signer
            if let buried = tombstones[rebind.sessionID] { session.replay = buried.window }
        }
        session.updatedAt = now
        let mapping: CSPEndpoint?
        switch chooseMapping(for: session, flow: moved, request: request) {
        case .success(let chosen): mapping = chosen
        case .failure(let refusal): return refusal.outcome
        }
        if addsPath { counters.pathsAdded += 1 } else { counters.rebinds += 1 }
        if request.isAddressedToUs {
            // A pinhole requested from us moves at once: we are its responder.
            session.mapping = mapping
            var outcome = answerAsResponder(
                request, session: session, previous: existing, flow: moved, lifetime: decision.lifetime, now: now)
            outcome.event = "REBIND \(hex(session.id)) to \(moved): moved"
            return outcome
        }
        var outcome = forwardSetup(
            request, session: session, previous: existing, flow: moved, mapping: mapping, lifetime: decision.lifetime, now: now)
        if addsPath {
            outcome.event = "ADD-PATH \(hex(session.id)) (session new here): \(moved) pending"
            return outcome
        }
        sessions.markPendingRebind(id: session.id)
        outcome.event = "REBIND \(hex(session.id)) \(existing.map { "\($0.flow)" } ?? "(new here)") -> \(moved) pending"
        return outcome
    }

    /// A mobile server: the responder, by the key that signed its answer, moves its side of the
    /// session to NEW-ADDRESS (from which the REBIND comes). The REBIND travels to the owner; the
    /// move takes effect when the owner ACCEPTs it.
    private mutating func rebindResponder(_ request: SignalingRequest, session: Session, newAddress: CSPEndpoint, now: Instant)
        -> SignalingOutcome
    {
        let moved = session.flow.moving(session.ownerEnd == .source ? .destination : .source, to: newAddress)
        guard newAddress.address == request.source.address else {
            return spoofedRebind(request, reason: "NEW-ADDRESS \(newAddress.address) is not the REBIND's source \(request.source.address)")
        }
        let decision = decidePolicy(
            flow: moved, application: session.application, incoming: session.incoming,
            requestedLifetime: request.message.lifetime ?? session.grantedLifetime)
        if decision.action == .relay { return refusedDirect(request, flow: moved, decision: decision) }
        guard decision.action != .reject else {
            counters.rejected += 1
            return rejection(
                of: request, result: .policyDenied, reason: decision.reason ?? "rejected by policy",
                event: "rejected responder REBIND \(hex(session.id)) to \(moved)")
        }
        counters.rebinds += 1
        var outcome = forwardSetup(
            request, session: session, previous: session, flow: moved, mapping: session.mapping, lifetime: decision.lifetime, now: now)
        sessions.markPendingRebind(id: session.id, fromResponder: true)
        outcome.event = "REBIND \(hex(session.id)) by its responder: \(session.flow) -> \(moved) pending"
        return outcome
    }

    private mutating func spoofedRebind(_ request: SignalingRequest, reason: String) -> SignalingOutcome {
        counters.spoofedFlows += 1
        return rejection(
            of: request, result: .sourceDenied, reason: reason,
            event: "refused \(request.message.type) \(hex(request.message.sessionID)) from \(request.source): \(reason)")
    }

    /// ADD-PATH: the session's owner adds an endpoint under a path ID, over that path (the
    /// message comes from the new endpoint, which proved itself). Signed by the session's key;
    /// the new path is admitted at once with the session's lifetime and the message travels on.
    mutating func handleAddPath(_ request: SignalingRequest, now: Instant) -> SignalingOutcome {
        let message = request.message
        if sessions[id: message.sessionID] == nil, request.signer != nil, message.flow != nil,
            let path = message.tlvs.lazy.compactMap({ if case .path(let p) = $0 { p } else { nil } }).first
        {
            return handleRebind(request, now: now, newAddress: path.endpoint, addsPath: true)
        }
        guard let (session, path) = pathRequest(request) else { return pathRefusal(request) }
        guard path.pathID != 0, path.endpoint.address == request.source.address,
            path.endpoint.address.family == session.flow.source.family
        else {
            return spoofedRebind(request, reason: "PATH \(path.pathID) \(path.endpoint) must be a further path sent from its own address")
        }
        let flow = session.flow.moving(session.ownerEnd, to: path.endpoint)
        let decision = decidePolicy(
            flow: flow, application: session.application, incoming: session.incoming, requestedLifetime: message.lifetime)
        if decision.action == .relay { return refusedDirect(request, flow: flow, decision: decision) }
        guard decision.action != .reject else {
            counters.rejected += 1
            return rejection(
                of: request, result: .policyDenied, reason: decision.reason ?? "rejected by policy",
                event: "rejected ADD-PATH \(hex(session.id)) \(flow)")
        }
        if let refused = refusalOfNewState(
            request, decision: decision, flow: flow, existingState: session.state, application: session.application)
        {
            return refused
        }
        if let holder = sessions.session(for: flow), holder.id != session.id {
            return spoofedRebind(request, reason: "the flow \(flow) belongs to another session")
        }
        var updated = session
        // With LIFETIME the path lives on its own (renewed by the same ADD-PATH again); without,
        // it lives as long as the session.
        let ownLifetime = message.lifetime != nil && pathDeadlines.count < Self.maximumPathDeadlines
        let lifetime = ownLifetime ? decision.lifetime : updated.grantedLifetime
        let expiry = ownLifetime ? now.adding(seconds: lifetime) : nil
        updated.setPath(path.pathID, flow, expiresAt: expiry)
        updated.updatedAt = now
        var kernel = store(updated, previous: session, refresh: false).map { change -> KernelChange in
            if case .install(.admission(flow), _, let tag) = change { return .install(.admission(flow), lifetime: lifetime, tag: tag) }
            return change
        }
        if session.paths.contains(where: { $0.id == path.pathID && $0.flow == flow }) {
            kernel.append(.refresh(.admission(flow), lifetime: lifetime, tag: updated.tag))
        }
        if let expiry { pathDeadlines.push(PathDeadline(at: expiry, sessionID: session.id, pathID: path.pathID)) }
        counters.pathsAdded += 1
        var forwarded = message
        if message.flags.contains(.recordRoute) {
            forwarded.tlvs.append(.middleboxRecord(record(.admitted, lifetime: lifetime)))
        }
        return SignalingOutcome(
            verdict: request.isAddressedToUs ? .drop : rewritten(original: message, forwarded), kernel: kernel,
            reply: request.isAddressedToUs ? answer(request, lifetime: lifetime, session: updated) : nil,
            onKernelFailure: .ignore, event: "ADD-PATH \(hex(session.id)) path \(path.pathID): \(flow)")
    }

    /// REMOVE-PATH: the path's admission goes at once (removing state is never a risk once the
    /// key is checked); the message travels on.
    mutating func handleRemovePath(_ request: SignalingRequest, now: Instant) -> SignalingOutcome {
        guard let (session, path) = pathRequest(request) else { return pathRefusal(request) }
        guard path.pathID != 0, session.paths.contains(where: { $0.id == path.pathID }) else {
            return SignalingOutcome(verdict: request.isAddressedToUs ? .drop : .forward)
        }
        var updated = session
        updated.setPath(path.pathID, nil)
        updated.updatedAt = now
        let kernel = store(updated, previous: session)
        counters.pathsRemoved += 1
        return SignalingOutcome(
            verdict: request.isAddressedToUs ? .drop : .forward, kernel: kernel,
            reply: request.isAddressedToUs ? answer(request, lifetime: updated.grantedLifetime, session: updated) : nil,
            event: "REMOVE-PATH \(hex(session.id)) path \(path.pathID)")
    }

    /// The admitted, signed session a path request is for, when the request is signed by its key.
    private func pathRequest(_ request: SignalingRequest) -> (Session, CSPPath)? {
        guard let session = sessions[id: request.message.sessionID], session.state == .admitted, let key = session.ownerKey,
            request.signer == key,
            let path = request.message.tlvs.lazy.compactMap({ if case .path(let p) = $0 { p } else { nil } }).first
        else { return nil }
        return (session, path)
    }

    private mutating func pathRefusal(_ request: SignalingRequest) -> SignalingOutcome {
        let message = request.message
        guard let session = sessions[id: message.sessionID] else {
            // Not ours to judge when intercepted (the peer's session); to us: unknown.
            guard request.isAddressedToUs else { return SignalingOutcome(verdict: .forward) }
            return rejection(
                of: request, result: .unknownSession, reason: "no session \(hex(message.sessionID)) here",
                event: "\(message.type) for unknown session \(hex(message.sessionID)) from \(request.source)")
        }
        counters.authenticationFailures += 1
        let why =
            session.ownerKey == nil ? "unsigned sessions have one path" : "\(message.type) must be signed by the session's key and carry PATH"
        return rejection(
            of: request, result: .authenticationFailed, reason: why,
            event: "refused \(message.type) \(hex(message.sessionID)) from \(request.source): \(why)")
    }
}
