import CSPTrust
import CSPWire

/// A hidden server's registration at a rendezvous (docs/PROTOCOL.md 10.7), as pure state: the
/// agent (`csp listen --rendezvous`) sends what this returns from its own socket, so the
/// rendezvous relays clients' SETUPs to that socket.
///
/// The registration is `SETUP FLOW=any→us:port ACTION=listen|want-mapping`, signed: a NAT on the
/// way maps the port (its record in the ACCEPT names the public endpoint); REFRESH at half the
/// lifetime; REBIND when our address moves (the NAT's mapping follows us, the rendezvous learns
/// the new agent endpoint). Relayed SETUPs are answered with a signed REDIRECT to the public
/// endpoint, and only when the rendezvous's signed record shows they came through it.
public struct RendezvousRegistration: Sendable {
    public struct Send: Sendable {
        public var bytes: [UInt8]
        public var destination: CSPEndpoint
    }

    public let rendezvous: CSPEndpoint
    public let proto: IPProtocol
    public let port: UInt16
    public let sessionID: UInt64
    /// Our address as FLOW names it (the one the registration or the last REBIND used).
    public private(set) var address: IPAddress
    /// Where clients connect: the NAT's mapping, or our own endpoint. Nil until registered.
    public private(set) var location: CSPEndpoint?
    /// The rendezvous's key: pinned by the operator, else learnt from its first signed ACCEPT.
    public private(set) var rendezvousKey: PublicKey?
    public private(set) var lifetime: UInt32
    private let key: SigningKey
    private var sequence: UInt32 = 0
    private var inFlight: (message: CSPMessage, bytes: [UInt8], attempts: Int, resendAt: Double, challenges: Int)?
    private var refreshAt: Double?

    public static let maximumAttempts = 5

    public init(
        rendezvous: CSPEndpoint, proto: IPProtocol, port: UInt16, address: IPAddress, key: SigningKey, lifetime: UInt32,
        rendezvousKey: PublicKey?, sessionID: UInt64
    ) {
        self.rendezvous = rendezvous
        self.proto = proto
        self.port = port
        self.address = address
        self.key = key
        self.lifetime = lifetime
        self.rendezvousKey = rendezvousKey
        self.sessionID = sessionID
    }

    var flow: FlowTuple {
        let any = address.family == .ipv4 ? IPAddress(ipv4: 0) : IPAddress(ipv6: 0, 0)
        return FlowTuple(proto: proto, source: any, sourcePort: 0, destination: address, destinationPort: port)
    }

    /// The first registration (and a new one after the rendezvous forgot us).
    public mutating func register(now: Double, wall: UInt64) -> [Send] {
        request(.setup, tlvs: [.flow(flow), .lifetime(lifetime), .requestedAction([.admit, .listen, .wantMapping])], now: now, wall: wall)
    }

    /// Our address moved to `newAddress`: REBIND from it (the caller's socket picks it as source).
    public mutating func moved(to newAddress: IPAddress, now: Double, wall: UInt64) -> [Send] {
        let old = flow
        address = newAddress
        return request(
            .rebind,
            tlvs: [
                .flow(old), .newAddress(CSPEndpoint(address: newAddress, port: port)), .lifetime(lifetime),
                .requestedAction([.admit, .listen, .wantMapping]),
            ], now: now, wall: wall)
    }

    /// Retransmissions and refreshes that are due.
    public mutating func due(now: Double, wall: UInt64) -> [Send] {
        if var pending = inFlight, now >= pending.resendAt {
            guard pending.attempts < Self.maximumAttempts else {
                // No answer: start over later (the rendezvous or the path may be down).
                inFlight = nil
                refreshAt = now + 5
                return []
            }
            pending.attempts += 1
            pending.resendAt = now + 0.25 * Double(1 << min(pending.attempts, 5))
            inFlight = pending
            return [Send(bytes: pending.bytes, destination: rendezvous)]
        }
        if inFlight == nil, let at = refreshAt, now >= at {
            refreshAt = nil
            // A re-registration (SETUP, same session) also re-creates what a restarted NAT or
            // rendezvous lost; it costs the same as a REFRESH.
            return register(now: now, wall: wall)
        }
        return []
    }

    /// An answer from the rendezvous (or a middlebox on the way). Returns what to send and what happened.
    public mutating func handle(_ reply: CSPMessage, bytes: [UInt8], from source: CSPEndpoint, now: Double, wall: UInt64)
        -> (sends: [Send], event: String?)
    {
        guard var pending = inFlight, reply.sessionID == sessionID, reply.nonce == pending.message.nonce else { return ([], nil) }
        switch reply.type {
        case .challenge:
            guard let token = reply.challengeToken, pending.challenges < SignalingClient.maximumChallenges else { return ([], nil) }
            pending.challenges += 1
            inFlight = pending
            var response = CSPMessage(
                type: .response, sessionID: sessionID, nonce: pending.message.nonce, sequence: pending.message.sequence,
                tlvs: [.challengeToken(token)])
            if let signed = try? response.signed(by: key, timestamp: wall) { response = signed }
            guard let responseBytes = try? response.serialize() else { return ([], nil) }
            return (
                [Send(bytes: responseBytes, destination: source), Send(bytes: pending.bytes, destination: rendezvous)],
                "CHALLENGE from \(source): answered"
            )
        case .accept, .mapped:
            let fromRendezvous = !reply.flags.contains(.fromMiddlebox)
            if fromRendezvous {
                guard case .valid(let signer) = SignatureCheck.check(bytes, message: reply).status,
                    rendezvousKey.map({ $0 == signer }) ?? true
                else { return ([], "ignored an ACCEPT not signed by the rendezvous's key") }
                rendezvousKey = signer
            }
            inFlight = nil
            let granted = ([reply.lifetime ?? lifetime] + reply.records.map(\.grantedLifetime).filter { $0 > 0 }).min() ?? lifetime
            location = Self.mapped(in: reply) ?? CSPEndpoint(address: address, port: port)
            refreshAt = now + Double(max(granted, 2)) / 2
            return ([], "registered \(proto)/\(port) at \(rendezvous): clients reach \(location!), \(granted)s")
        case .reject, .redirect:
            inFlight = nil
            let retry = reply.reason.map { max(Double($0.retryAfter), 5) } ?? 5
            refreshAt = now + retry
            return ([], "registration refused: \(reply.result) \(reply.reason?.text ?? "")")
        default:
            return ([], nil)
        }
    }

    /// The answer to a SETUP the rendezvous relayed to us: a signed REDIRECT to where clients
    /// connect. Nil (ignored) unless it came from the rendezvous with its signed record, for our
    /// service, and we are registered.
    public func answerRelayed(_ request: CSPMessage, bytes: [UInt8], from source: CSPEndpoint, wall: UInt64) -> CSPMessage? {
        guard request.type == .setup, source.address == rendezvous.address, let location, let rendezvousKey,
            let flow = request.flow, flow.proto == proto,
            let index = request.records.lastIndex(where: { $0.decision == .rendezvous })
        else { return nil }
        let check = SignatureCheck.check(bytes, message: request, checkRecords: true)
        guard let recordCheck = check.records.first(where: { $0.index == index }), case .valid(let signer) = recordCheck.status,
            signer == rendezvousKey
        else { return nil }
        let redirect = CSPMessage(
            type: .redirect, sessionID: request.sessionID, nonce: request.nonce, sequence: request.sequence,
            tlvs: [.redirectTarget(location), .lifetime(min(request.lifetime ?? lifetime, lifetime))])
        return try? redirect.signed(by: key, timestamp: wall)
    }

    /// Whether a relayed request carries the rendezvous's record (so `answerRelayed` applies).
    public static func isRelayed(_ request: CSPMessage) -> Bool {
        request.records.contains { $0.decision == .rendezvous }
    }

    private mutating func request(_ type: CSPMessageType, tlvs: [CSPTLV], now: Double, wall: UInt64) -> [Send] {
        sequence += 1
        var message = CSPMessage(
            type: type, flags: .recordRoute, sessionID: sessionID, nonce: secureRandomUInt64(), sequence: sequence, tlvs: tlvs)
        guard let signed = try? message.signed(by: key, timestamp: wall), let bytes = try? signed.serialize() else { return [] }
        message = signed
        inFlight = (message, bytes, 1, now + 0.25, 0)
        return [Send(bytes: bytes, destination: rendezvous)]
    }

    /// The public endpoint a NAT reported: in the reply, or the last record with MAPPED-ADDRESS.
    static func mapped(in reply: CSPMessage) -> CSPEndpoint? {
        if let direct = reply.mappedAddress { return direct }
        for record in reply.records.reversed() {
            for case .mappedAddress(let endpoint) in record.tlvs { return endpoint }
        }
        return nil
    }
}
