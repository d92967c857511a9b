import CSPTrust
import CSPWire

/// Relayed sessions, midcomd's part (docs/PROTOCOL.md 14.2): the relay decision for a SETUP —
/// an offer (RELAY) or a refusal — and the answer to a host's leg SETUP to our relay endpoint.
/// Nothing here installs kernel state or a session: midrelayd learns of a session only when a hop
/// arrives with the token minted here.
extension GatewayEngine {
    /// Whether an admitted SETUP asks to be relayed and `[relay] on-request` grants it: a host's
    /// outgoing TCP flow with want-relay. (Without on-request the bit is ignored: the SETUP is
    /// admitted and forwarded like any other.)
    func relaysOnRequest(_ request: SignalingRequest, flow: FlowTuple, incoming: Bool) -> Bool {
        let relay = configuration.relay
        return relay.enabled && relay.onRequest && !incoming && !request.isAddressedToUs && flow.proto == .tcp
            && (request.message.requestedAction?.contains(.wantRelay) ?? false)
    }

    /// A refusal of a flow policy relays: the REJECT's result, REASON and retryAfter.
    struct RelayRefusal {
        var result: CSPResultCode
        var reason: String
        var retryAfter: UInt32 = 0
    }

    /// PROTOCOL.md 14.2's table, for a SETUP whose policy decision is `relay`, or `admit` with
    /// want-relay granted by on-request: RELAY, or the refusal the table gives. Nothing is
    /// installed; with a relay rule, a session the owner had for the flow goes (the rule no
    /// longer admits it directly), as on a rejection.
    mutating func relay(
        _ request: SignalingRequest, flow: FlowTuple, decision: PolicyDecision, incoming: Bool, existing: Session?, now: Instant
    ) -> SignalingOutcome {
        let setup = request.message
        let byRule = decision.action == .relay
        let mode: RelayMode = byRule ? decision.relayMode : .blind
        let why = byRule ? (decision.ruleName.map { "rule '\($0)'" } ?? "policy") : "[relay] on-request"
        let kernel = byRule ? existing.map { discard($0.id, now: now) } ?? [] : []
        func refused(_ engine: inout GatewayEngine, _ refusal: RelayRefusal) -> SignalingOutcome {
            engine.counters.rejected += 1
            engine.counters.relayOffersRefused += 1
            let context = refusal.reason.contains(why) ? "" : " (\(why))"
            return engine.rejection(
                of: request, result: refusal.result, reason: refusal.reason, retryAfter: refusal.retryAfter,
                event: "refused relay for SETUP \(hex(setup.sessionID)) \(flow): \(refusal.reason)\(context)", kernel: kernel)
        }
        if let refusal = tableRefusal(setup, flow: flow, decision: decision, incoming: incoming, why: why) {
            return refused(&self, refusal)
        }
        // Each hop is bound to its upstream end's key (the token, the hop handshake): a relayed
        // session is always signed.
        guard let signer = request.signer else {
            counters.relayOffersRefused += 1
            var outcome = authenticationFailed(request, "relaying needs a signed SETUP")
            outcome.kernel = kernel
            return outcome
        }
        guard authorizes(decision.signatures, signer: signer, source: request.source.address, application: setup.application) else {
            counters.relayOffersRefused += 1
            var outcome = authenticationFailed(request, "this flow needs a known key; \(signer) is not one (\(why))")
            outcome.kernel = kernel
            return outcome
        }
        let endpoint = configuration.relay.endpoint(for: flow.destination.family)
        switch (relayService, relayTokenKey, endpoint) {
        case (.unavailable(let retryAfter), _, _):
            return refused(&self, RelayRefusal(result: .middleboxUnavailable, reason: "the relay of \(identity.name) is down", retryAfter: retryAfter))
        case (.full(let retryAfter), _, _):
            return refused(&self, RelayRefusal(result: .resourcesExhausted, reason: "the relay of \(identity.name) is full", retryAfter: retryAfter))
        case (.available, nil, _):
            return refused(&self, RelayRefusal(result: .middleboxUnavailable, reason: "the relay of \(identity.name) is not set up (no relay key)"))
        case (.available, _, nil):
            let family = flow.destination.family == .ipv4 ? "IPv4" : "IPv6"
            return refused(&self, RelayRefusal(
                result: .policyDenied,
                reason: "\(describeRelayed(flow, rule: decision.ruleIndex.map { configuration.rules[$0] })) are relayed by \(identity.name), which has no \(family) relay endpoint"))
        case (.available, .some(let key), .some(let endpoint)):
            return offer(request, flow: flow, decision: decision, mode: mode, signer: signer, key: key, endpoint: endpoint, kernel: kernel, why: why)
        }
    }

    /// The refusals of the table that need no more than the SETUP and the decision: an incoming
    /// pinhole, a chain too long, no consent to the (terminating) relay; nil: none applies.
    func tableRefusal(_ setup: CSPMessage, flow: FlowTuple, decision: PolicyDecision, incoming: Bool, why: String) -> RelayRefusal? {
        let byRule = decision.action == .relay
        let requested = setup.requestedAction ?? []
        let relayed = describeRelayed(flow, rule: decision.ruleIndex.map { configuration.rules[$0] })
        if byRule, incoming {
            return RelayRefusal(result: .policyDenied, reason: "\(relayed) are relayed by \(identity.name): no pinholes are opened for them")
        }
        if let hop = setup.relayedSession, hop.hopIndex >= Self.maximumHops {
            // The hop this flow would carry is the last a session may have: a relay here would
            // make one more (14.3: no relay accepts or offers a hop index above 8).
            return RelayRefusal(result: .policyDenied, reason: "relay chain longer than \(Self.maximumHops) hops")
        }
        guard byRule else { return nil }
        if decision.relayMode == .terminating, !requested.contains(.allowTerminating) {
            return RelayRefusal(
                result: .terminatingRelayRequired,
                reason: "\(relayed) are relayed by \(identity.name) through a relay that reads them (\(why)): allow a terminating relay or do without")
        }
        // allow-terminating consents to more than allow-relay does: to a blind relay too.
        if requested.isDisjoint(with: [.allowRelay, .wantRelay, .allowTerminating]) {
            return RelayRefusal(result: .relayRequired, reason: "\(relayed) are relayed by \(identity.name) (\(why)): allow relaying or do without")
        }
        if flow.destinationPort == 0 {
            return RelayRefusal(result: .policyDenied, reason: "a relayed flow needs its destination port (the relay connects to it)")
        }
        return nil
    }

    /// RELAY (docs/PROTOCOL.md 14.2), sent like a REDIRECT: fromMiddlebox, in the responder's
    /// name, echoing session ID, nonce and sequence, within the reply budget; LIFETIME and our
    /// signed record (decision `relayed`, nesting RELAY-ENDPOINT and RELAY-TOKEN).
    private mutating func offer(
        _ request: SignalingRequest, flow: FlowTuple, decision: PolicyDecision, mode: RelayMode, signer: PublicKey,
        key: RelayTokenKey, endpoint: CSPEndpoint, kernel: [KernelChange], why: String
    ) -> SignalingOutcome {
        let setup = request.message
        let lifetime = configuration.relay.tokenLifetime
        let modes = configuration.relay.modes(for: mode)
        let binding = Self.relayBinding(of: setup, flow: flow, upstreamKey: signer, relayEndpoint: endpoint)
        let expiry = UInt32(clamping: request.wallClock + UInt64(lifetime))
        let token = key.mint(for: binding, modes: modes.rawValue, expiry: expiry).bytes
        var tlvs: [CSPTLV] = [.lifetime(lifetime), .epoch(identity.epoch)]
        if decision.action == .relay, let reason = decision.reason { tlvs.append(.reason(CSPReason(text: reason))) }
        // The endpoint and the token go inside our record, so that its signature covers them.
        let extra: [CSPTLV] = [.relayEndpoint(CSPRelayEndpoint(transport: .tcp, modes: modes, endpoint: endpoint)), .relayToken(token)]
        tlvs.append(.middleboxRecord(record(.relayed, lifetime: lifetime, extra: extra)))
        let relay = CSPMessage(
            type: .relay, flags: .fromMiddlebox, result: .success, sessionID: setup.sessionID, nonce: setup.nonce,
            sequence: setup.sequence, tlvs: tlvs)
        guard let bounded = budgeted(sealed(relay), for: request) else {
            counters.repliesLimited += 1
            return SignalingOutcome(verdict: .drop, kernel: kernel, event: "relay offer for \(hex(setup.sessionID)) not sent: reply budget")
        }
        relayOffers.note(
            token, target: RelayOfferBook.Target(proto: binding.targetProtocol, endpoint: binding.target, expiry: UInt64(expiry)),
            now: request.wallClock)
        counters.relayOffers += 1
        return SignalingOutcome(
            verdict: .drop, kernel: kernel,
            reply: OutgoingMessage(message: bounded, destination: request.source, source: request.destination),
            event: describe(
                "offered relay \(endpoint) to SETUP \(hex(setup.sessionID)) \(flow) (\(why), hop \(binding.hopIndex), \(mode.rawValue)) for \(lifetime)s"))
    }

    /// A session has at most 8 hops (docs/PROTOCOL.md 14, terms).
    static let maximumHops: UInt8 = 8

    /// What the token of an offer for `setup` is bound to (docs/PROTOCOL.md 14.2): the relayed
    /// session `S` and hop index — RELAYED-SESSION's in a relay's onward SETUP (14.3), else the
    /// SETUP's session ID and hop 1 —, the SETUP's IDENTITY, FLOW's protocol and destination, and
    /// the relay endpoint offered. midrelayd builds the same binding from the hop's OPEN.
    static func relayBinding(of setup: CSPMessage, flow: FlowTuple, upstreamKey: PublicKey, relayEndpoint: CSPEndpoint)
        -> RelayToken.Binding
    {
        RelayToken.Binding(
            sessionID: setup.relayedSession?.sessionID ?? setup.sessionID, hopIndex: setup.relayedSession?.hopIndex ?? 1,
            upstreamKey: upstreamKey, targetProtocol: flow.proto.rawValue,
            target: CSPEndpoint(address: flow.destination, port: flow.destinationPort), relayEndpoint: relayEndpoint)
    }

    /// "flows to 198.51.100.0/24:443": what a relay rule covers, for REASON.
    func describeRelayed(_ flow: FlowTuple, rule: PolicyRule?) -> String {
        guard let rule else { return "flows to \(flow.destination):\(flow.destinationPort)" }
        let destination = rule.destination?.description ?? "any address"
        guard let ports = rule.ports else { return "flows to \(destination)" }
        let port = ports.count == 1 ? "\(ports.lowerBound)" : "\(ports.lowerBound)-\(ports.upperBound)"
        return rule.destination?.address.family == .ipv6 ? "flows to [\(destination)]:\(port)" : "flows to \(destination):\(port)"
    }

    /// A REBIND or ADD-PATH that would admit a flow directly which policy relays: refused with
    /// relay-required (a relayed flow is signaled as a new session, with allow-relay).
    mutating func refusedDirect(_ request: SignalingRequest, flow: FlowTuple, decision: PolicyDecision) -> SignalingOutcome {
        counters.rejected += 1
        counters.relayOffersRefused += 1
        let rule = decision.ruleIndex.map { configuration.rules[$0] }
        let reason = "\(describeRelayed(flow, rule: rule)) are relayed by \(identity.name) (rule '\(decision.ruleName ?? "?")'): signal a new session that allows relaying"
        return rejection(
            of: request, result: .relayRequired, reason: reason,
            event: "refused \(request.message.type) \(hex(request.message.sessionID)) \(flow): relayed by policy")
    }

    // MARK: the leg to our relay

    /// Whether `flow` (a SETUP's FLOW) goes to one of our relay endpoints.
    func isOurRelayEndpoint(_ flow: FlowTuple) -> Bool {
        configuration.relay.enabled && flow.proto == .tcp
            && configuration.relay.listen.contains(CSPEndpoint(address: flow.destination, port: flow.destinationPort))
    }

    /// A host's (or an upstream relay's) SETUP for its hop to our relay endpoint (docs/PROTOCOL.md
    /// 14.2, step 2), addressed to us: we answer it ourselves — ACCEPT with our record when its
    /// RELAY-TOKEN is one we offered for this session, hop and key, REJECT 64 otherwise. Nothing
    /// is installed: our ruleset lets hops reach the relay port, and the middleboxes between the
    /// host and us admit the hop as an ordinary flow when they see the ACCEPT.
    mutating func answerLegToOurRelay(_ request: SignalingRequest, signaled: FlowTuple, now: Instant) -> SignalingOutcome {
        let setup = request.message
        let flow = Self.effectiveFlow(signaled, records: setup.records, incoming: false)
        let endpoint = CSPEndpoint(address: signaled.destination, port: signaled.destinationPort)
        if let refused = checkOwnership(of: request, flow: flow, incoming: false) { return refused }
        let checked = checkLegToken(setup, flow: flow, signer: request.signer, relayEndpoint: endpoint, wallClock: request.wallClock)
        let hop: String
        switch checked {
        case .success(let binding):
            hop = "hop \(binding.hopIndex)"
        case .failure(let problem):
            // The host repeats the leg's SETUP (the hop's CSP session) after the offer's token
            // expired: the session already has its leg here.
            if let leg = relayLegs.leg(setup.sessionID, now: now), leg.key == request.signer, leg.flow == flow,
                leg.relayedSession == setup.relayedSession?.sessionID ?? setup.sessionID,
                leg.hopIndex == setup.relayedSession?.hopIndex ?? 1
            {
                hop = "its hop, again"
                break
            }
            let why = problem.why
            counters.rejected += 1
            counters.relayLegsRefused += 1
            return rejection(
                of: request, result: .policyDenied, reason: why,
                event: "refused SETUP \(hex(setup.sessionID)) \(flow) for a hop to our relay: \(why)")
        }
        var lifetime = setup.lifetime ?? configuration.defaultLifetime
        if lifetime == 0 { lifetime = configuration.defaultLifetime }
        lifetime = min(lifetime, configuration.maximumLifetime)
        guard let accept = budgeted(ownAccept(setup, lifetime: lifetime), for: request) else {
            counters.repliesLimited += 1
            return SignalingOutcome(verdict: .drop, event: "ACCEPT for the hop \(hex(setup.sessionID)) to our relay not sent: reply budget")
        }
        counters.relayLegsAnswered += 1
        if let signer = request.signer {
            let leg = RelayLegTable.Leg(
                key: signer, flow: flow, relayedSession: setup.relayedSession?.sessionID ?? setup.sessionID,
                hopIndex: setup.relayedSession?.hopIndex ?? 1, expiresAt: now.adding(seconds: lifetime))
            relayLegs.note(setup.sessionID, leg, now: now)
        }
        return SignalingOutcome(
            verdict: .drop, reply: OutgoingMessage(message: accept, destination: request.source),
            event: describe("answered SETUP \(hex(setup.sessionID)) \(flow) for \(hop) to our relay \(endpoint)"))
    }

    /// REFRESH or TEARDOWN (a REFRESH with lifetime 0 too) addressed to us for a leg to our relay
    /// we answered, from its key and address: ACCEPT as its responder, nothing installed. nil:
    /// not such a message (the ordinary handler decides).
    mutating func answerForRelayLeg(_ request: SignalingRequest, now: Instant) -> SignalingOutcome? {
        let message = request.message
        let id = message.sessionID
        guard request.isAddressedToUs, sessions[id: id] == nil, let leg = relayLegs.leg(id, now: now),
            request.signer == leg.key, request.source.address == leg.flow.source
        else { return nil }
        var lifetime: UInt32 = 0
        if message.type == .teardown || message.lifetime == 0 {
            relayLegs.remove(id)
        } else {
            lifetime = min(message.lifetime ?? configuration.defaultLifetime, configuration.maximumLifetime)
            var renewed = leg
            renewed.expiresAt = now.adding(seconds: lifetime)
            relayLegs.note(id, renewed, now: now)
        }
        guard let accept = budgeted(ownAccept(message, lifetime: lifetime), for: request) else {
            counters.repliesLimited += 1
            return SignalingOutcome(verdict: .drop)
        }
        return SignalingOutcome(
            verdict: .drop, reply: OutgoingMessage(message: accept, destination: request.source),
            event: describe(
                lifetime == 0
                    ? "\(message.type) \(hex(id)): the leg \(leg.flow) to our relay ended"
                    : "\(message.type) \(hex(id)): the leg \(leg.flow) to our relay refreshed for \(lifetime)s"))
    }

    struct LegProblem: Error {
        var why: String
    }

    /// The binding a leg SETUP's RELAY-TOKEN was minted for, once `RelayTokenKey.check` proved
    /// it: the session, hop, key and relay endpoint as the SETUP says, the target as the offer
    /// that carried the token said.
    mutating func checkLegToken(_ setup: CSPMessage, flow: FlowTuple, signer: PublicKey?, relayEndpoint: CSPEndpoint, wallClock: UInt64)
        -> Result<RelayToken.Binding, LegProblem>
    {
        guard let token = setup.relayToken else {
            return .failure(LegProblem(why: "a SETUP to the relay endpoint \(relayEndpoint) carries the RELAY-TOKEN of this middlebox's offer"))
        }
        guard let signer else {
            return .failure(LegProblem(why: "a hop to a relay must be signed by the key the relay offer was made for"))
        }
        guard let key = relayTokenKey, let target = relayOffers.target(of: token, now: wallClock) else {
            return .failure(LegProblem(
                why: "no offer of \(identity.name) carried this RELAY-TOKEN (expired, or made before a restart): signal the flow again"))
        }
        var binding = Self.relayBinding(of: setup, flow: flow, upstreamKey: signer, relayEndpoint: relayEndpoint)
        binding.targetProtocol = target.proto
        binding.target = target.endpoint
        do {
            _ = try key.check(token, for: binding, now: wallClock)
        } catch {
            return .failure(LegProblem(why: "\(error)"))
        }
        return .success(binding)
    }
}
