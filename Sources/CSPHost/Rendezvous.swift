import CSPTrust
import CSPWire

/// The rendezvous for hidden servers (docs/PROTOCOL.md 10.7), as pure state: `csp rendezvous`
/// does the sockets. A server registers a service (protocol and port) here, signed; a client
/// names the server by this host's address and that port; its SETUP is relayed to the server's
/// agent with our signed record, and the server's answer comes back the same way (like a SIP
/// Via, so the client's firewall and NAT see the answer from where the request went). Data then
/// flows directly between client and server: the rendezvous carries one exchange per client.
///
/// What a registration proves: the key that signed it owns the service until the registration
/// lapses (first come, or only `allowedKeys`); the agent's endpoint answered a CHALLENGE, so a
/// registration cannot point client SETUPs at someone else's address.
public struct Rendezvous: Sendable {
    /// A service as clients name it: protocol and port at the rendezvous's address.
    public struct Service: Hashable, Sendable, CustomStringConvertible {
        public var proto: IPProtocol
        public var port: UInt16
        public init(proto: IPProtocol, port: UInt16) {
            self.proto = proto
            self.port = port
        }
        public var description: String { "\(proto)/\(port)" }
    }

    public struct Registration: Sendable {
        public var key: PublicKey
        public var sessionID: UInt64
        /// Where relayed SETUPs go: the source of the server's latest registration message.
        public var agent: CSPEndpoint
        /// Where clients connect: FLOW's destination with the NATs' MAPPED-ADDRESSes applied.
        public var location: CSPEndpoint
        public var expires: UInt64
        public var lastSequence: UInt32
    }

    /// What to send in answer to one datagram (nothing is common: drops are counted).
    public struct Output: Sendable {
        public var bytes: [UInt8]
        public var destination: CSPEndpoint
    }

    public struct Counters: Sendable {
        public var registered = 0
        public var relayedRequests = 0
        public var relayedAnswers = 0
        public var refused = 0
        public var challenges = 0
        public var dropped = 0
    }

    public private(set) var registrations: [Service: Registration] = [:]
    public private(set) var counters = Counters()
    /// Limits: clients waiting for an answer, proved agent endpoints, services.
    public var maximumPending = 4096
    public var maximumServices = 4096
    public var maximumLifetime: UInt32 = 3600
    public var timestampTolerance: UInt64 = 30
    /// Keys allowed to register; nil: any key, first come per service.
    public var allowedKeys: Set<PublicKey>?

    private let key: SigningKey
    private let epoch: UInt32
    private var tokens: ChallengeTokens
    /// Wall-clock seconds of the datagram being handled (our answers' TIMESTAMP).
    private var clock: UInt64 = 0
    private var services: [UInt64: Service] = [:]
    private var proved: [CSPEndpoint: UInt64] = [:]
    private var pending: [PendingKey: (client: CSPEndpoint, agent: CSPEndpoint, expires: UInt64)] = [:]
    /// Our latest answers: a middlebox on the way may CHALLENGE one (a NAT must know an ACCEPT
    /// that installs its mapping really comes from us), and we then send it again.
    private var answered: [PendingKey: (message: CSPMessage, bytes: [UInt8], destination: CSPEndpoint, expires: UInt64)] = [:]
    private struct PendingKey: Hashable {
        var session: UInt64
        var nonce: UInt64
    }
    /// How long a relayed SETUP waits for the server's answer, and an agent's proof lasts.
    static let answerWait: UInt64 = 10
    static let proofLifetime: UInt64 = 600

    public init(key: SigningKey, epoch: UInt32, tokenSecret: [UInt8]) {
        self.key = key
        self.epoch = epoch
        tokens = ChallengeTokens(secret: tokenSecret)
    }

    /// One datagram from `source`; `now` is wall-clock seconds (TIMESTAMPs are checked against it).
    /// Returns what to send and a line for the log (nil: dropped silently, counted).
    public mutating func handle(_ bytes: [UInt8], from source: CSPEndpoint, now: UInt64) -> (outputs: [Output], event: String?) {
        clock = now
        guard let message = try? CSPMessage.parse(bytes) else {
            counters.dropped += 1
            return ([], nil)
        }
        if message.type == .challenge, let answered = answered[PendingKey(session: message.sessionID, nonce: message.nonce)],
            answered.expires > now
        {
            return answerChallenge(message, for: answered, from: source)
        }
        if message.type.isReply { return relayAnswer(message, bytes: bytes, from: source, now: now) }
        switch message.type {
        case .response:
            return proveAgent(message, bytes: bytes, from: source, now: now)
        case .setup where !(message.requestedAction?.contains(.listen) ?? false):
            return relayRequest(message, bytes: bytes, from: source, now: now)
        case .setup, .refresh, .rebind, .teardown:
            return register(message, bytes: bytes, from: source, now: now)
        default:
            counters.dropped += 1
            return ([], "dropped \(message.type) \(hex(message.sessionID)) from \(source)")
        }
    }

    // MARK: servers

    private mutating func register(_ message: CSPMessage, bytes: [UInt8], from source: CSPEndpoint, now: UInt64)
        -> (outputs: [Output], event: String?)
    {
        let known = services[message.sessionID].flatMap { registrations[$0] }
        let check = SignatureCheck.check(bytes, message: message)
        let signer: PublicKey
        switch check.status {
        case .valid(let key): signer = key
        case .needsSessionKey:
            guard let known, check.deferred?.verify(with: known.key) == true else {
                return refuse(message, to: source, .authenticationFailed, "registration messages must be signed by the server's key")
            }
            signer = known.key
        default:
            return refuse(message, to: source, .authenticationFailed, "registration messages must be signed by the server's key")
        }
        if let known, known.key != signer {
            return refuse(message, to: source, .authenticationFailed, "service registered by another key")
        }
        if let allowed = allowedKeys, !allowed.contains(signer) {
            return refuse(message, to: source, .authenticationFailed, "\(signer) may not register here")
        }
        guard let timestamp = message.timestamp, timestamp + timestampTolerance >= now, timestamp <= now + timestampTolerance else {
            return refuse(message, to: source, .authenticationFailed, "TIMESTAMP missing or more than \(timestampTolerance)s off")
        }
        if let known, message.sequence <= known.lastSequence {
            counters.dropped += 1
            return ([], "dropped replayed \(message.type) \(hex(message.sessionID)) (sequence \(message.sequence))")
        }
        // The agent's endpoint must answer first: relayed SETUPs will go there.
        guard (proved[source] ?? 0) > now else {
            counters.challenges += 1
            let token = tokens.mint(sessionID: message.sessionID, nonce: message.nonce, address: source.address, port: source.port, now: now)
            let challenge = CSPMessage(
                type: .challenge, result: .challengeRequired, sessionID: message.sessionID, nonce: message.nonce,
                sequence: message.sequence, tlvs: [.challengeToken(token)])
            return (send(challenge, to: source), "CHALLENGE \(hex(message.sessionID)) to \(source)")
        }
        if message.type == .teardown {
            if let service = services.removeValue(forKey: message.sessionID) { registrations[service] = nil }
            return (answer(message, to: source, lifetime: 0), "unregistered \(hex(message.sessionID))")
        }
        let lifetime = min(message.lifetime ?? 60, maximumLifetime)
        var registration: Registration
        let service: Service
        switch message.type {
        case .setup:
            guard let flow = message.flow, flow.destinationPort != 0 else {
                return refuse(message, to: source, .malformedMessage, "a registration names the service in FLOW")
            }
            service = Service(proto: flow.proto, port: flow.destinationPort)
            if let holder = registrations[service], holder.key != signer, holder.expires > now {
                return refuse(message, to: source, .policyDenied, "\(service) is registered by another server")
            }
            if registrations[service] == nil, registrations.count >= maximumServices {
                prune(now: now)
                guard registrations.count < maximumServices else {
                    return refuse(message, to: source, .resourcesExhausted, "rendezvous full")
                }
            }
            if let old = registrations[service], old.sessionID != message.sessionID { services[old.sessionID] = nil }
            registration = Registration(
                key: signer, sessionID: message.sessionID, agent: source, location: Self.location(of: flow, records: message.records),
                expires: 0, lastSequence: 0)
        case .rebind:
            guard let known, let knownService = services[message.sessionID], let flow = message.flow, let moved = message.newAddress else {
                return refuse(message, to: source, .unknownSession, "no registration \(hex(message.sessionID)) here")
            }
            service = knownService
            registration = known
            registration.agent = source
            var newFlow = flow
            newFlow.destination = moved.address
            newFlow.destinationPort = moved.port
            registration.location = Self.location(of: newFlow, records: message.records)
        default:  // REFRESH
            guard let known, let knownService = services[message.sessionID] else {
                return refuse(message, to: source, .unknownSession, "no registration \(hex(message.sessionID)) here")
            }
            service = knownService
            registration = known
            registration.agent = source
        }
        registration.expires = now + UInt64(lifetime)
        registration.lastSequence = message.sequence
        if known == nil { counters.registered += 1 }
        registrations[service] = registration
        services[message.sessionID] = service
        return (
            answer(message, to: source, lifetime: lifetime),
            "\(message.type) \(hex(message.sessionID)): \(service) at \(registration.location), agent \(source), \(lifetime)s"
        )
    }

    private mutating func proveAgent(_ message: CSPMessage, bytes: [UInt8], from source: CSPEndpoint, now: UInt64)
        -> (outputs: [Output], event: String?)
    {
        guard let token = message.challengeToken,
            tokens.verify(token, sessionID: message.sessionID, nonce: message.nonce, address: source.address, port: source.port, now: now)
        else {
            counters.dropped += 1
            return ([], "dropped RESPONSE \(hex(message.sessionID)) from \(source): not our token")
        }
        if proved.count >= maximumPending { proved = proved.filter { $0.value > now } }
        if proved.count < maximumPending { proved[source] = now + Self.proofLifetime }
        return ([], "\(source) proved itself")
    }

    /// Where clients reach the server: FLOW's destination, with each NAT's MAPPED-ADDRESS applied
    /// in path order (the NAT nearest the server first).
    static func location(of flow: FlowTuple, records: [CSPMiddleboxRecord]) -> CSPEndpoint {
        var location = CSPEndpoint(address: flow.destination, port: flow.destinationPort)
        for record in records {
            for case .mappedAddress(let mapped) in record.tlvs where mapped.address.family == location.address.family {
                location = CSPEndpoint(address: mapped.address, port: mapped.port == 0 ? location.port : mapped.port)
            }
        }
        return location
    }

    // MARK: clients

    private mutating func relayRequest(_ message: CSPMessage, bytes: [UInt8], from source: CSPEndpoint, now: UInt64)
        -> (outputs: [Output], event: String?)
    {
        guard let flow = message.flow else {
            return refuse(message, to: source, .malformedMessage, "SETUP without FLOW")
        }
        let service = Service(proto: flow.proto, port: flow.destinationPort)
        guard let registration = registrations[service], registration.expires > now else {
            return refuse(message, to: source, .unknownSession, "no server registered for \(service) here")
        }
        if message.records.contains(where: { $0.decision == .rendezvous }) {
            counters.dropped += 1
            return ([], "dropped SETUP \(hex(message.sessionID)): already relayed by a rendezvous")
        }
        if pending.count >= maximumPending {
            pending = pending.filter { $0.value.expires > now }
            guard pending.count < maximumPending else {
                return refuse(message, to: source, .resourcesExhausted, "too many requests in flight", retryAfter: 5)
            }
        }
        var relayed = message
        let record = CSPMiddleboxRecord(
            middleboxID: key.publicKey.fingerprint, epoch: epoch, decision: .rendezvous, grantedLifetime: 0,
            tlvs: [.hostAddress(source)])
        relayed.tlvs.append(.middleboxRecord(record.signed(by: key, header: message.headerForSigning)))
        guard let out = try? relayed.serialize() else {
            return refuse(message, to: source, .resourcesExhausted, "request too large to relay")
        }
        pending[PendingKey(session: message.sessionID, nonce: message.nonce)] = (source, registration.agent, now + Self.answerWait)
        counters.relayedRequests += 1
        return ([Output(bytes: out, destination: registration.agent)], "relayed SETUP \(hex(message.sessionID)) \(flow) from \(source) to \(registration.agent)")
    }

    /// The server's answer to a relayed SETUP goes back to the client unchanged (it is signed by
    /// the server); only the agent we relayed to can answer, once.
    private mutating func relayAnswer(_ message: CSPMessage, bytes: [UInt8], from source: CSPEndpoint, now: UInt64)
        -> (outputs: [Output], event: String?)
    {
        let slot = PendingKey(session: message.sessionID, nonce: message.nonce)
        guard let waiting = pending[slot], waiting.expires > now, waiting.agent == source else {
            counters.dropped += 1
            return ([], "dropped \(message.type) \(hex(message.sessionID)) from \(source): no relayed request of it")
        }
        if message.type != .challenge { pending[slot] = nil }
        counters.relayedAnswers += 1
        return ([Output(bytes: bytes, destination: waiting.client)], "relayed \(message.type) \(hex(message.sessionID)) to \(waiting.client)")
    }

    // MARK: answers

    /// RESPONSE to the middlebox that challenged one of our answers, then the answer again (the
    /// caller leaves a moment between them, so the proof lands first).
    private func answerChallenge(
        _ challenge: CSPMessage, for answered: (message: CSPMessage, bytes: [UInt8], destination: CSPEndpoint, expires: UInt64),
        from source: CSPEndpoint
    ) -> (outputs: [Output], event: String?) {
        guard let response = ResponderPolicy.response(to: challenge, for: answered.message) else { return ([], nil) }
        return (
            signedOutput(response, to: source) + [Output(bytes: answered.bytes, destination: answered.destination)],
            "CHALLENGE \(hex(challenge.sessionID)) from \(source): RESPONSE, \(answered.message.type) sent again"
        )
    }

    private mutating func remember(_ message: CSPMessage, _ bytes: [UInt8], to destination: CSPEndpoint) {
        if answered.count >= maximumPending { answered = answered.filter { $0.value.expires > clock } }
        if answered.count < maximumPending {
            answered[PendingKey(session: message.sessionID, nonce: message.nonce)] = (message, bytes, destination, clock + Self.answerWait)
        }
    }

    private mutating func prune(now: UInt64) {
        for (service, registration) in registrations where registration.expires <= now {
            registrations[service] = nil
            services[registration.sessionID] = nil
        }
    }

    private mutating func answer(_ request: CSPMessage, to destination: CSPEndpoint, lifetime: UInt32) -> [Output] {
        let accept = CSPMessage(
            type: .accept, sessionID: request.sessionID, nonce: request.nonce, sequence: request.sequence, tlvs: [.lifetime(lifetime)])
        let outputs = signedOutput(accept, to: destination)
        if let sent = outputs.first, let signed = try? CSPMessage.parse(sent.bytes) { remember(signed, sent.bytes, to: destination) }
        return outputs
    }

    private mutating func refuse(
        _ request: CSPMessage, to destination: CSPEndpoint, _ result: CSPResultCode, _ text: String, retryAfter: UInt32 = 0
    ) -> (outputs: [Output], event: String?) {
        counters.refused += 1
        let reject = CSPMessage(
            type: .reject, result: result, sessionID: request.sessionID, nonce: request.nonce, sequence: request.sequence,
            tlvs: [.reason(CSPReason(retryAfter: retryAfter, text: text))])
        return (signedOutput(reject, to: destination), "refused \(request.type) \(hex(request.sessionID)) from \(destination): \(text)")
    }

    private func signedOutput(_ message: CSPMessage, to destination: CSPEndpoint) -> [Output] {
        guard let signed = try? message.signed(by: key, timestamp: clock), let bytes = try? signed.serialize() else { return [] }
        return [Output(bytes: bytes, destination: destination)]
    }

    private func send(_ message: CSPMessage, to destination: CSPEndpoint) -> [Output] {
        guard let bytes = try? message.serialize() else { return [] }
        return [Output(bytes: bytes, destination: destination)]
    }
}
