import CSPTrust
import CSPWire

/// The off-path firewall for a mobile host (docs/PROTOCOL.md 10.9). A host of this site
/// ([[known-key]] with `home-address`) that is away asks us for each flow in a SETUP addressed
/// to us; we decide it under the policy of its home address, as if it were inside, and admit it
/// only through a relay endpoint of ours (answer: REDIRECT to it). Its packets cross our kernel:
/// counted, expired, torn down and re-decided here like any flow of the site.
extension GatewayEngine {
    /// `flow` as our policy sees it for a relayed session: from the host's home address.
    func policyView(_ flow: FlowTuple, relayedFor key: PublicKey?) -> FlowTuple {
        guard let home = configuration.trust.homeAddress(of: key) else { return flow }
        var view = flow
        view.source = home
        return view
    }

    mutating func relayForAwayHost(_ request: SignalingRequest, signaled: FlowTuple, now: Instant) -> SignalingOutcome {
        let setup = request.message
        let flow = Self.effectiveFlow(signaled, records: setup.records, incoming: false)
        if let refused = checkOwnership(of: request, flow: flow, incoming: false) { return refused }
        guard configuration.nat != nil, flow.source.family == .ipv4, flow.destination.family == .ipv4 else {
            counters.rejected += 1
            return rejection(
                of: request, result: .policyDenied,
                reason: "this middlebox relays IPv4 flows only, from its [nat] external address",
                event: "cannot relay \(hex(setup.sessionID)) \(flow) for a host away: no IPv4 relay")
        }
        guard flow.sourcePort != 0, flow.destinationPort != 0 else {
            counters.rejected += 1
            return rejection(
                of: request, result: .sourcePortRequired, reason: "a relayed flow needs both ports (bind the socket first)",
                event: "rejected relay \(hex(setup.sessionID)) \(flow): ports missing")
        }
        let existing = sessions[id: setup.sessionID]
        let decision = decidePolicy(
            flow: policyView(flow, relayedFor: request.signer), application: setup.application, incoming: false,
            requestedLifetime: setup.lifetime)
        guard decision.action == .admit else {
            counters.rejected += 1
            let kernel = existing.map { discard($0.id, now: now) } ?? []
            let reason = decision.action == .reject ? decision.reason ?? "rejected by policy" : "only direct flows are relayed"
            return rejection(
                of: request, result: .policyDenied, reason: reason,
                event: "refused relay \(hex(setup.sessionID)) \(flow) for a host away: \(reason)", kernel: kernel)
        }
        if existing == nil, sessions.count >= configuration.maximumSessions {
            counters.tableFull += 1
            return rejection(
                of: request, result: .resourcesExhausted, reason: "session table full", retryAfter: 30,
                event: "session table full: rejected \(hex(setup.sessionID))")
        }
        // The relay endpoint stays while the flow's responder does (a REBIND of the host keeps it).
        var relay = existing?.relay
        if let current = relay, existing?.flow.destination != flow.destination || existing?.flow.destinationPort != flow.destinationPort
            || existing?.flow.proto != flow.proto
        {
            natPorts?.release(existing!.flow.proto, current.port)
            relay = nil
        }
        if relay == nil {
            guard let nat = configuration.nat, let port = natPorts?.allocate(flow.proto, preferred: flow.sourcePort) else {
                counters.tableFull += 1
                return rejection(
                    of: request, result: .resourcesExhausted, reason: "no free relay port", retryAfter: 30,
                    event: "relay ports exhausted: rejected \(hex(setup.sessionID))")
            }
            relay = CSPEndpoint(address: nat.externalAddress, port: port)
        }
        var session =
            existing
            ?? Session(
                id: setup.sessionID, flow: flow, state: .admitted, application: setup.application, createdAt: now,
                expiresAt: nil, grantedLifetime: decision.lifetime)
        session.flow = flow
        session.state = .admitted
        session.pending = nil
        session.ownerKey = request.signer
        session.relay = relay
        session.grantedLifetime = decision.lifetime
        session.expiresAt = now.adding(seconds: decision.lifetime)
        session.updatedAt = now
        let kernel = store(session, previous: existing, refresh: true)
        if existing == nil { counters.admitted += 1 } else { counters.refreshed += 1 }
        let target = relay!
        let reply = redirection(setup, to: target, lifetime: decision.lifetime)
        let refusal = rejection(
            of: request, result: .middleboxUnavailable, reason: "middlebox could not install state", retryAfter: 5, event: "")
        return SignalingOutcome(
            verdict: .drop, kernel: kernel,
            reply: OutgoingMessage(message: sealed(reply), destination: request.source),
            onKernelFailure: .refuse(sessionID: session.id, reply: refusal.reply),
            event: "relaying \(hex(session.id)) \(flow) through \(target) for a host away (as \(policyView(flow, relayedFor: request.signer).source))")
    }

    /// The host's SETUP for its leg to our relay endpoint (so middleboxes on its new path admit
    /// it): we are that flow's responder, and the relayed session is its admission here.
    func relayedSession(for request: SignalingRequest, flow: FlowTuple) -> Session? {
        guard let session = sessions[id: request.message.sessionID], let relay = session.relay, session.state == .admitted,
            flow.destination == relay.address, flow.destinationPort == relay.port, flow.proto == session.flow.proto,
            flow.source == session.flow.source, flow.sourcePort == session.flow.sourcePort, isFromOwner(request)
        else { return nil }
        return session
    }

    mutating func answerRelayLeg(_ request: SignalingRequest, session: Session) -> SignalingOutcome {
        let left = session.expiresAt.map { UInt32(min(Double(UInt32.max), max(0, $0.seconds(since: clock)))) } ?? session.grantedLifetime
        return SignalingOutcome(
            verdict: .drop, reply: OutgoingMessage(message: ownAccept(request.message, lifetime: left), destination: request.source),
            event: "SETUP \(hex(session.id)) for the leg to relay \(session.relay!): answered")
    }
}
