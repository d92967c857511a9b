import CSPWire

/// Requests addressed to the middlebox itself (not intercepted on their way to a peer), and
/// discovery. A host that wants an incoming pinhole from any peer has no peer to send its SETUP
/// to, so it sends it to the middlebox it discovered, which answers as the responder.
extension GatewayEngine {
    public mutating func handleLocalRequest(payload: UnsafeRawBufferPointer, from source: CSPEndpoint, now: Instant)
        -> SignalingOutcome
    {
        counters.signalingMessages += 1
        counters.localRequests += 1
        let request: CSPMessage
        do {
            request = try CSPMessage.parse(payload)
        } catch {
            counters.malformedMessages += 1
            return SignalingOutcome(verdict: .drop, event: "dropped malformed CSP sent to us by \(source): \(error)")
        }
        switch request.type {
        case .setup:
            return localSetup(request, from: source, now: now)
        case .refresh:
            guard var session = sessions[id: request.sessionID], owner(of: session) == source.address else {
                return rejection(
                    of: request, to: source, result: .unknownSession, reason: "no session \(hex(request.sessionID)) here",
                    event: "REFRESH for unknown session \(hex(request.sessionID)) from \(source)")
            }
            if request.lifetime == 0 {
                removeSession(session.id)
                counters.tornDown += 1
                return SignalingOutcome(verdict: .drop, kernel: revocation(of: session), reply: answer(request, to: source, lifetime: 0, session: session))
            }
            let decision = policy.decide(flow: session.flow, application: session.application, incoming: session.incoming, requestedLifetime: request.lifetime)
            session.grantedLifetime = decision.lifetime
            session.expiresAt = now.adding(seconds: decision.lifetime)
            session.updatedAt = now
            sessions.upsert(session)
            counters.refreshed += 1
            return SignalingOutcome(
                verdict: .drop, kernel: installation(of: session, lifetime: decision.lifetime, replacing: true),
                reply: answer(request, to: source, lifetime: decision.lifetime, session: session),
                event: "refreshed \(hex(session.id)) \(session.flow) for \(decision.lifetime)s")
        case .teardown:
            guard let session = sessions[id: request.sessionID], owner(of: session) == source.address else {
                return SignalingOutcome(verdict: .drop)
            }
            removeSession(session.id)
            counters.tornDown += 1
            return SignalingOutcome(verdict: .drop, kernel: revocation(of: session), event: "torn down \(hex(session.id)) \(session.flow)")
        default:
            return rejection(
                of: request, to: source, result: .unknownSession,
                reason: "\(request.type) is not handled by a middlebox; send it to the peer",
                event: "\(request.type) addressed to us by \(source) refused")
        }
    }

    mutating func localSetup(_ setup: CSPMessage, from source: CSPEndpoint, now: Instant) -> SignalingOutcome {
        counters.setups += 1
        guard let flow = setup.flow else {
            counters.malformedMessages += 1
            return rejection(of: setup, to: source, result: .malformedMessage, reason: "SETUP without FLOW", event: "SETUP without FLOW from \(source)")
        }
        // Only an incoming pinhole makes sense here: for outgoing flows the peer is the responder.
        guard setup.requestedAction?.contains(.listen) ?? false else {
            return rejection(
                of: setup, to: source, result: .malformedMessage,
                reason: "send outgoing SETUPs to the peer; only incoming pinholes are requested from the middlebox",
                event: "outgoing SETUP addressed to us by \(source) refused")
        }
        guard flow.destination == source.address else {
            counters.spoofedFlows += 1
            return rejection(
                of: setup, to: source, result: .sourceDenied, reason: "flow \(flow) does not belong to signaling host \(source.address)",
                event: "rejected spoofed pinhole SETUP \(hex(setup.sessionID)) from \(source)")
        }
        let decision = policy.decide(flow: flow, application: setup.application, incoming: true, requestedLifetime: setup.lifetime)
        guard decision.action == .admit else {
            counters.rejected += 1
            return rejection(
                of: setup, to: source, result: .policyDenied, reason: decision.reason ?? "incoming flows are not allowed",
                event: "rejected pinhole \(hex(setup.sessionID)) \(flow): \(decision.reason ?? "policy")")
        }
        if sessions[id: setup.sessionID] == nil, sessions.count >= configuration.maximumSessions {
            counters.tableFull += 1
            return rejection(of: setup, to: source, result: .resourcesExhausted, reason: "session table full", retryAfter: 30, event: "session table full")
        }
        if let old = sessions[id: setup.sessionID] { removeSession(old.id) }
        var session = Session(
            id: setup.sessionID, flow: flow, state: .admitted, application: setup.application, createdAt: now,
            expiresAt: now.adding(seconds: decision.lifetime), grantedLifetime: decision.lifetime, incoming: true)
        session.installed = [.admission(flow)]
        if let nat = configuration.nat, flow.destination.family == .ipv4, nat.isInternal(flow.destination) {
            guard let port = allocateNATPort(flow.proto, preferred: flow.destinationPort) else {
                return rejection(of: setup, to: source, result: .resourcesExhausted, reason: "no free NAT port", retryAfter: 30, event: "NAT ports exhausted")
            }
            let external = CSPEndpoint(address: nat.externalAddress, port: port)
            session.mapping = external
            session.installed.append(
                .dnat(flow.proto, external: external, to: CSPEndpoint(address: flow.destination, port: flow.destinationPort)))
            counters.mapped += 1
        }
        sessions.upsert(session)
        counters.admitted += 1
        let mappedNote = session.mapping.map { " mapped from \($0)" } ?? ""
        return SignalingOutcome(
            verdict: .drop, kernel: installation(of: session, lifetime: decision.lifetime),
            reply: answer(setup, to: source, lifetime: decision.lifetime, session: session),
            event: "opened pinhole \(hex(session.id)) \(flow)\(mappedNote) for \(decision.lifetime)s")
    }

    /// The kernel changes that (re)install everything a session owns with a new lifetime.
    func installation(of session: Session, lifetime: UInt32, replacing: Bool = false) -> [KernelChange] {
        session.installed.map { object in
            switch object {
            case .admission(let flow): replacing ? .readmit(flow, lifetime: lifetime) : .admit(flow, lifetime: lifetime)
            case .snat(let flow, let to): .snat(flow, to: to, lifetime: lifetime)
            case .dnat(let proto, let external, let to): .dnat(proto, external: external, to: to, lifetime: lifetime)
            }
        }
    }

    /// ACCEPT from the middlebox acting as the responder.
    func answer(_ request: CSPMessage, to destination: CSPEndpoint, lifetime: UInt32, session: Session) -> OutgoingMessage {
        var tlvs: [CSPTLV] = [.lifetime(lifetime), .epoch(identity.epoch)]
        var extra: [CSPTLV] = []
        if let mapping = session.mapping {
            tlvs.append(.mappedAddress(mapping))
            extra.append(.mappedAddress(mapping))
        }
        tlvs.append(.middleboxRecord(record(session.mapping == nil ? .admitted : .mapped, lifetime: lifetime, extra: extra)))
        let accept = CSPMessage(
            type: .accept, flags: .fromMiddlebox, result: .success, sessionID: request.sessionID, nonce: request.nonce, tlvs: tlvs)
        return OutgoingMessage(message: accept, destination: destination)
    }

    /// ANNOUNCE for a packet of `triggerLength` IP octets that carried the discovery option with
    /// the query flag (docs/PROTOCOL.md 9.3), or nil when it must not be sent: at most one per
    /// source per second and `announcesPerSecond` in all, and never more than 3× the size of the
    /// trigger (the name is left out first), so probes cannot turn the gateway into an amplifier.
    public mutating func announce(to destination: CSPEndpoint, nonce: UInt64, triggerLength: Int, now: Instant)
        -> OutgoingMessage?
    {
        let second = now.nanoseconds / 1_000_000_000
        if announceWindow.second != second {
            announceWindow = (second, 0)
            announcedSources.removeAll(keepingCapacity: true)
        }
        guard announceWindow.count < Self.announcesPerSecond, !announcedSources.contains(destination.address) else {
            counters.announceLimited += 1
            return nil
        }
        let record = CSPMiddleboxRecord(middleboxID: identity.id, epoch: identity.epoch, decision: .forwarded, grantedLifetime: 0)
        var message = CSPMessage(
            type: .announce, flags: .fromMiddlebox, result: .success, sessionID: 0, nonce: nonce,
            tlvs: [.epoch(identity.epoch), .middleboxName(identity.name), .middleboxRecord(record)])
        let headers = destination.address.family == .ipv4 ? 28 : 48  // IP + UDP octets of our answer
        if let size = try? message.serialize().count, size + headers > 3 * triggerLength {
            message.tlvs.removeAll { $0.type == .middleboxName }
        }
        guard let size = try? message.serialize().count, size + headers <= 3 * triggerLength else {
            counters.announceLimited += 1
            return nil
        }
        announceWindow.count += 1
        announcedSources.insert(destination.address)
        counters.announced += 1
        return OutgoingMessage(message: message, destination: destination)
    }
}
