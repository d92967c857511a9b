import CSPWire

/// Where a session came from: CSP signaling, or a port-mapping protocol spoken by hosts that do
/// not know CSP (NAT-PMP, RFC 6886, and PCP, RFC 6887).
public enum SessionOrigin: String, Sendable, Equatable {
    case csp
    case natPMP = "nat-pmp"
    case pcp
}

/// A port mapping asked for without CSP: an incoming pinhole from any peer to the client's own
/// port, mapped on our external address. The client is the datagram's source: only a client's
/// own address can be mapped (miniupnpd's "secure mode").
public struct PortMappingRequest: Sendable, Equatable {
    public var client: IPAddress
    public var proto: IPProtocol
    public var internalPort: UInt16
    /// 0: no preference.
    public var suggestedExternalPort: UInt16
    /// 0 deletes the mapping.
    public var lifetime: UInt32
    public var origin: SessionOrigin
    /// PCP: the mapping's nonce, its owner (RFC 6887 11.1); nil for NAT-PMP.
    public var nonce: PCP.Nonce?
    /// PCP PREFER_FAILURE: the suggested external port, or nothing.
    public var preferFailure = false
    /// PCP: an external address the client suggested (nil: no preference).
    public var suggestedExternalAddress: IPAddress?
    /// PCP PEER: an outgoing flow from the client's port to this peer, mapped; nil: MAP, a
    /// pinhole from any peer.
    public var peer: CSPEndpoint?

    public init(
        client: IPAddress, proto: IPProtocol, internalPort: UInt16, suggestedExternalPort: UInt16, lifetime: UInt32,
        origin: SessionOrigin, nonce: PCP.Nonce? = nil, peer: CSPEndpoint? = nil
    ) {
        self.client = client
        self.proto = proto
        self.internalPort = internalPort
        self.suggestedExternalPort = suggestedExternalPort
        self.lifetime = lifetime
        self.origin = origin
        self.nonce = nonce
        self.peer = peer
    }

    /// The flow the mapping is: from any peer to the client's port (MAP), or from the client's
    /// port to its peer (PEER).
    public var flow: FlowTuple {
        if let peer {
            return FlowTuple(proto: proto, source: client, sourcePort: internalPort, destination: peer.address, destinationPort: peer.port)
        }
        return FlowTuple(proto: proto, source: IPAddress(ipv4: 0), sourcePort: 0, destination: client, destinationPort: internalPort)
    }
}

public struct PortMappingOutcome: Sendable, Equatable {
    public enum Result: Sendable, Equatable {
        case success
        /// Refused by policy, or the port belongs to a session of another origin.
        case notAuthorized
        case outOfResources
        /// This gateway has no NAT (no external address to map to).
        case networkFailure
        /// PREFER_FAILURE, and the suggested external port or address cannot be had.
        case cannotProvideExternal
    }

    public var result: Result
    /// 0 when nothing is mapped (refused, or deleted).
    public var externalPort: UInt16 = 0
    public var lifetime: UInt32 = 0
    public var kernel: [KernelChange] = []
    public var event: String?

    public init(result: Result, externalPort: UInt16 = 0, lifetime: UInt32 = 0, kernel: [KernelChange] = [], event: String? = nil) {
        self.result = result
        self.externalPort = externalPort
        self.lifetime = lifetime
        self.kernel = kernel
        self.event = event
    }
}

extension GatewayEngine {
    /// Seconds since this middlebox lost its state (it started): NAT-PMP's and PCP's epoch.
    public func portMappingEpoch(wallClock: UInt64) -> UInt32 {
        UInt32(truncatingIfNeeded: wallClock >= portMappingEpochStart ? wallClock - portMappingEpochStart : 0)
    }

    /// The epoch starts again at 0 (RFC 6887 8.5: clients that see it go back re-map): what a box
    /// of a HA pair says after taking over the addresses, whose mappings it may not all hold.
    public mutating func restartPortMappingEpoch(wallClock: UInt64) {
        portMappingEpochStart = wallClock
    }

    /// The external address mappings are made on, nil without `[nat]`.
    public var externalAddress: IPAddress? { configuration.nat?.externalAddress }

    /// A mapping request, as a session of the table: through the same policy, limits and
    /// kernel schema (DNAT + pinhole) as a pinhole a CSP host asks of us.
    public mutating func handlePortMapping(_ request: PortMappingRequest, now: Instant) -> PortMappingOutcome {
        clock = now
        guard let nat = configuration.nat else {
            return PortMappingOutcome(result: .networkFailure, event: "\(request.origin.rawValue) request from \(request.client): no [nat] here")
        }
        let client = request.client
        guard nat.isInternal(client), client.family == .ipv4 else {
            counters.rejected += 1
            return PortMappingOutcome(result: .notAuthorized, event: "\(request.origin.rawValue) request from \(client): not an inside address")
        }
        let flow = request.flow
        let incoming = request.peer == nil
        let existing = sessions.session(for: flow)
        if let existing, let owner = Self.otherOwner(of: existing, for: request) {
            counters.rejected += 1
            return PortMappingOutcome(
                result: .notAuthorized, event: "\(request.origin.rawValue) request for \(flow): session \(hex(existing.id)) belongs to \(owner)")
        }
        if request.lifetime == 0 {
            let kernel = existing.map { discard($0.id, now: now) } ?? []
            if existing != nil { counters.tornDown += 1 }
            return PortMappingOutcome(
                result: .success, kernel: kernel,
                event: existing.map { "\(request.origin.rawValue) mapping \(hex($0.id)) \(flow) deleted" })
        }
        let decision = decidePolicy(flow: flow, application: nil, incoming: incoming, requestedLifetime: request.lifetime)
        guard decision.action == .admit,
            authorizes(decision.signatures, signer: nil, source: client, application: nil)
        else {
            counters.rejected += 1
            let why = decision.action == .reject ? decision.reason ?? "policy" : "this flow needs a signature (CSP)"
            return PortMappingOutcome(result: .notAuthorized, event: "refused \(request.origin.rawValue) mapping \(flow): \(why)")
        }
        if existing == nil, sessions.count >= configuration.maximumSessions {
            counters.tableFull += 1
            return PortMappingOutcome(result: .outOfResources, event: "session table full: refused \(request.origin.rawValue) mapping \(flow)")
        }
        if request.preferFailure, let suggested = request.suggestedExternalAddress, suggested != nat.externalAddress {
            return PortMappingOutcome(result: .cannotProvideExternal, event: "\(request.origin.rawValue) mapping \(flow): \(suggested) is not ours")
        }
        var mapping = existing?.mapping
        if request.preferFailure, request.suggestedExternalPort != 0, let held = mapping, held.port != request.suggestedExternalPort {
            return PortMappingOutcome(
                result: .cannotProvideExternal, event: "\(request.origin.rawValue) mapping \(flow): mapped on port \(held.port) already")
        }
        if mapping == nil {
            let preferred = request.suggestedExternalPort != 0 ? request.suggestedExternalPort : request.internalPort
            guard let port = natPorts?.allocate(request.proto, preferred: preferred) else {
                counters.tableFull += 1
                return PortMappingOutcome(result: .outOfResources, event: "NAT ports exhausted: refused \(request.origin.rawValue) mapping \(flow)")
            }
            if request.preferFailure, request.suggestedExternalPort != 0, port != request.suggestedExternalPort {
                natPorts?.release(request.proto, port)
                return PortMappingOutcome(
                    result: .cannotProvideExternal, event: "\(request.origin.rawValue) mapping \(flow): port \(request.suggestedExternalPort) is taken")
            }
            mapping = CSPEndpoint(address: nat.externalAddress, port: port)
        }
        var session =
            existing
            ?? Session(
                id: Self.portMappingID(flow), flow: flow, state: .admitted, createdAt: now, expiresAt: nil,
                grantedLifetime: decision.lifetime, incoming: incoming)
        session.origin = request.origin
        session.mappingNonce = request.nonce
        session.mapping = mapping
        session.state = .admitted
        session.grantedLifetime = decision.lifetime
        session.expiresAt = now.adding(seconds: decision.lifetime)
        session.updatedAt = now
        let kernel = store(session, previous: existing, refresh: true)
        if existing == nil {
            counters.admitted += 1
            counters.mapped += 1
        } else {
            counters.refreshed += 1
        }
        return PortMappingOutcome(
            result: .success, externalPort: mapping!.port, lifetime: decision.lifetime, kernel: kernel,
            event: "\(request.origin.rawValue) mapping \(hex(session.id)) \(flow) on \(mapping!) for \(decision.lifetime)s")
    }

    /// Who else a session a mapping request names belongs to, nil when the request may change
    /// it: a signed CSP session belongs to its key, a PCP mapping to its nonce. Otherwise the
    /// client's address owns it either way (it is the client's own port), so NAT-PMP and PCP
    /// clients take over their unsigned pinholes — among them the mappings a restarted midcomd
    /// adopted from the kernel, which come back without origin or nonce.
    static func otherOwner(of session: Session, for request: PortMappingRequest) -> String? {
        if let key = session.ownerKey { return "key \(key)" }
        if let nonce = session.mappingNonce, nonce != request.nonce { return "the PCP client with nonce \(nonce)" }
        return nil
    }

    /// A mapping's session ID: derived from what it maps (its refreshes and deletion find it by
    /// flow), in a range CSP hosts' random IDs are unlikely to meet (top bits 10).
    static func portMappingID(_ flow: FlowTuple) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a: stable across runs, unlike Hasher
        let ports = [flow.sourcePort, flow.destinationPort].flatMap { [UInt8($0 >> 8), UInt8($0 & 0xff)] }
        for byte in flow.source.bytes + flow.destination.bytes + [flow.proto.rawValue] + ports {
            hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3
        }
        return hash & 0x3fff_ffff_ffff_ffff | 0x8000_0000_0000_0000
    }
}
