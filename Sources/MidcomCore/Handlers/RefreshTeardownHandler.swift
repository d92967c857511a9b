import CSPWire

/// REFRESH and TEARDOWN from the session's owner (or, for TEARDOWN, its responder).
extension GatewayEngine {
    mutating func handleRefresh(_ request: SignalingRequest, now: Instant) -> SignalingOutcome {
        let refresh = request.message
        if let answered = answerForRelayLeg(request, now: now) { return answered }
        guard var session = sessions[id: refresh.sessionID], session.owner == request.source.address else {
            counters.mismatchedReplies += 1
            return rejection(
                of: request, result: .unknownSession, reason: "no session \(hex(refresh.sessionID)) here",
                event: "REFRESH for unknown session \(hex(refresh.sessionID)) from \(request.source)")
        }
        // Lifetime 0 means delete (PCP-style).
        if refresh.lifetime == 0 { return handleTeardown(request, now: now) }
        let decision = decidePolicy(
            flow: session.relay == nil ? session.flow : policyView(session.flow, relayedFor: session.ownerKey),
            application: session.application, incoming: session.incoming, requestedLifetime: refresh.lifetime)
        if session.answeredForResponder, !request.isAddressedToUs {
            return refreshForLegacyResponder(request, session: session, lifetime: decision.lifetime, now: now)
        }
        guard request.isAddressedToUs else {
            // The refresh takes effect when the responder ACCEPTs it.
            let previous = session
            releasePendingMapping(of: session)
            session.pending = PendingRequest(
                nonce: refresh.nonce, flow: session.flow, lifetime: decision.lifetime,
                recordRoute: refresh.flags.contains(.recordRoute), mapping: session.mapping)
            let kernel = store(session, previous: previous)
            return SignalingOutcome(verdict: .forward, kernel: kernel)
        }
        let previous = session
        session.grantedLifetime = decision.lifetime
        session.expiresAt = now.adding(seconds: decision.lifetime)
        session.updatedAt = now
        let kernel = store(session, previous: previous, refresh: true)
        counters.refreshed += 1
        return SignalingOutcome(
            verdict: .drop, kernel: kernel, reply: answer(request, lifetime: decision.lifetime, session: session),
            onKernelFailure: .refuse(sessionID: session.id, reply: nil),
            event: describe("refreshed \(hex(session.id)) \(session.flow) for \(decision.lifetime)s"))
    }

    /// TEARDOWN (or REFRESH with lifetime 0). Intercepted, it travels on to the peer; addressed to
    /// us, we answer ACCEPT with lifetime 0 as the responder (docs/PROTOCOL.md 5.6).
    mutating func handleTeardown(_ request: SignalingRequest, now: Instant) -> SignalingOutcome {
        let teardown = request.message
        let local = request.isAddressedToUs
        if let answered = answerForRelayLeg(request, now: now) { return answered }
        if let session = sessions[id: teardown.sessionID], session.ownerKey != nil, !mayTearDown(session, request) {
            counters.authenticationFailures += 1
        }
        guard let session = sessions[id: teardown.sessionID], mayTearDown(session, request) else {
            // Not ours to judge when intercepted; to us, an unknown session is simply gone already.
            return SignalingOutcome(verdict: local ? .drop : .forward)
        }
        let kernel = discard(session.id, now: now)
        counters.tornDown += 1
        // Nobody else answers a TEARDOWN for a responder without CSP: we do, as for its SETUP.
        let reply =
            local
            ? answer(request, lifetime: 0, session: session)
            : session.answeredForResponder ? answerForLegacyResponder(request, lifetime: 0, record: record(.removed, lifetime: 0)) : nil
        return SignalingOutcome(
            verdict: local ? .drop : .forward, kernel: kernel, reply: reply,
            event: describe("torn down \(hex(session.id)) \(session.flow)"))
    }

    /// A signed session ends only by its key (the responder's TEARDOWN still travels to the
    /// owner, who decides); an unsigned one by its owner's or responder's address.
    func mayTearDown(_ session: Session, _ request: SignalingRequest) -> Bool {
        if let key = session.ownerKey { return request.signer == key && session.owner == request.source.address }
        return session.owner == request.source.address
            || (!request.isAddressedToUs && session.responder == request.source.address)
    }

    /// REBIND, ADD-PATH, REMOVE-PATH, DENY and RESPONSE are specified but not acted on yet: they
    /// travel on unchanged (the far end still gets them), and to us they are refused.
    mutating func handleNotActedOn(_ request: SignalingRequest) -> SignalingOutcome {
        counters.notActedOn += 1
        guard request.isAddressedToUs else { return SignalingOutcome(verdict: .forward) }
        return rejection(
            of: request, result: .unknownSession,
            reason: "\(request.message.type) is not handled by this middlebox yet",
            event: "\(request.message.type) addressed to us by \(request.source) refused")
    }
}
