import CSPWire

/// A CSP host reaching an ordinary server that does not speak CSP (docs/PROTOCOL.md 6.9). Its
/// first SETUP goes unanswered; it sends the SETUP again flagged `legacyResponder`, and every
/// middlebox that honours the flag decides by its own policy at once, installs the admission,
/// answers the host itself and forwards the SETUP, so the middleboxes further along do the same.
/// The host collects one answer per middlebox and learns who admitted it. Nothing is left
/// pending: the session is admitted here, or refused as any SETUP is.
extension GatewayEngine {
    /// Whether we answer for the responder of `flow` (the flow as it looks here): only flows
    /// leaving our site, unless configured otherwise. Answering for a flow into the site would
    /// open a path to an inside server without the server's consent.
    func answersForLegacyResponder(of flow: FlowTuple) -> Bool {
        switch configuration.legacyResponders {
        case .never: false
        case .any: true
        case .inside: configuration.isInside(flow.source)
        }
    }

    /// Admits `session` now and answers the host on the responder's behalf; the SETUP travels on
    /// with our record so middleboxes further along answer too (and a responder that does speak
    /// CSP still may).
    mutating func admitForLegacyResponder(
        _ request: SignalingRequest, session: Session, previous: Session?, flow: FlowTuple, mapping: CSPEndpoint?,
        lifetime: UInt32, now: Instant
    ) -> SignalingOutcome {
        let setup = request.message
        var session = session
        let wasAdmitted = session.state == .admitted
        releasePendingMapping(of: session, keeping: mapping)
        session.flow = flow
        session.mapping = mapping
        session.state = .admitted
        session.pending = nil
        session.recordRoute = setup.flags.contains(.recordRoute)
        session.answeredForResponder = true
        session.grantedLifetime = lifetime
        session.expiresAt = now.adding(seconds: lifetime)
        let kernel = store(session, previous: previous, refresh: true)
        if wasAdmitted { counters.refreshed += 1 } else { counters.admitted += 1 }
        if mapping != nil, !wasAdmitted { counters.mapped += 1 }
        counters.answeredForResponders += 1
        let ourRecord = record(.answeredForResponder, lifetime: lifetime, extra: mapping.map { [.mappedAddress($0)] } ?? [])
        var forwarded = setup
        forwarded.tlvs.append(.middleboxRecord(ourRecord))
        let reply = answerForLegacyResponder(request, lifetime: lifetime, record: ourRecord)
        let mappedNote = mapping.map { " mapped to \($0)" } ?? ""
        return SignalingOutcome(
            verdict: rewritten(original: setup, forwarded), kernel: kernel, reply: reply,
            onKernelFailure: .refuse(sessionID: session.id, reply: nil),
            event: "admitted \(hex(session.id)) \(flow)\(mappedNote) for \(lifetime)s, answered for its responder")
    }

    /// REFRESH of a session we answered for: it takes effect here at once, we answer, and the
    /// REFRESH travels on for the middleboxes further along.
    mutating func refreshForLegacyResponder(_ request: SignalingRequest, session: Session, lifetime: UInt32, now: Instant)
        -> SignalingOutcome
    {
        var session = session
        let previous = session
        session.grantedLifetime = lifetime
        session.expiresAt = now.adding(seconds: lifetime)
        session.updatedAt = now
        let kernel = store(session, previous: previous, refresh: true)
        counters.refreshed += 1
        counters.answeredForResponders += 1
        let reply = answerForLegacyResponder(
            request, lifetime: lifetime,
            record: record(.answeredForResponder, lifetime: lifetime, extra: session.mapping.map { [.mappedAddress($0)] } ?? []))
        return SignalingOutcome(
            verdict: .forward, kernel: kernel, reply: reply, onKernelFailure: .refuse(sessionID: session.id, reply: nil),
            event: "refreshed \(hex(session.id)) \(session.flow) for \(lifetime)s, answered for its responder")
    }

    /// ACCEPT flagged `legacyResponder` with our record, in the responder's name: middleboxes
    /// nearer the host let it through inside the request's conntrack entry (as they let the
    /// responder's own answer through) and add their records. Within the reply budget.
    mutating func answerForLegacyResponder(_ request: SignalingRequest, lifetime: UInt32, record: CSPMiddleboxRecord)
        -> OutgoingMessage?
    {
        let message = request.message
        let accept = sealed(
            CSPMessage(
                type: .accept, flags: [.fromMiddlebox, .legacyResponder], result: .success, sessionID: message.sessionID,
                nonce: message.nonce, sequence: message.sequence,
                tlvs: [.lifetime(lifetime), .epoch(identity.epoch), .middleboxRecord(record)]))
        guard let budgeted = budgeted(accept, for: request) else {
            counters.repliesLimited += 1
            return nil
        }
        return OutgoingMessage(message: budgeted, destination: request.source, source: request.destination)
    }
}
