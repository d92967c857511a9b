import CSPWire

/// Where a session came from: CSP signaling, or a port-mapping protocol spoken by hosts that do
/// not know CSP (issue 12: NAT-PMP now, PCP next).
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

    public init(
        client: IPAddress, proto: IPProtocol, internalPort: UInt16, suggestedExternalPort: UInt16, lifetime: UInt32,
        origin: SessionOrigin
    ) {
        self.client = client
        self.proto = proto
        self.internalPort = internalPort
        self.suggestedExternalPort = suggestedExternalPort
        self.lifetime = lifetime
        self.origin = origin
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
        UInt32(truncatingIfNeeded: wallClock >= startedAtWallClock ? wallClock - startedAtWallClock : 0)
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
        let any = IPAddress(ipv4: 0)
        let flow = FlowTuple(proto: request.proto, source: any, sourcePort: 0, destination: client, destinationPort: request.internalPort)
        let existing = sessions.session(for: flow)
        if let existing, existing.origin != request.origin {
            counters.rejected += 1
            return PortMappingOutcome(
                result: .notAuthorized,
                event: "\(request.origin.rawValue) request for \(flow): held by \(existing.origin.rawValue) session \(hex(existing.id))")
        }
        if request.lifetime == 0 {
            let kernel = existing.map { discard($0.id, now: now) } ?? []
            if existing != nil { counters.tornDown += 1 }
            return PortMappingOutcome(
                result: .success, kernel: kernel,
                event: existing.map { "\(request.origin.rawValue) mapping \(hex($0.id)) \(flow) deleted" })
        }
        let decision = policy.decide(flow: flow, application: nil, incoming: true, requestedLifetime: request.lifetime)
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
        var mapping = existing?.mapping
        if mapping == nil {
            let preferred = request.suggestedExternalPort != 0 ? request.suggestedExternalPort : request.internalPort
            guard let port = natPorts?.allocate(request.proto, preferred: preferred) else {
                counters.tableFull += 1
                return PortMappingOutcome(result: .outOfResources, event: "NAT ports exhausted: refused \(request.origin.rawValue) mapping \(flow)")
            }
            mapping = CSPEndpoint(address: nat.externalAddress, port: port)
        }
        var session =
            existing
            ?? Session(
                id: Self.portMappingID(flow), flow: flow, state: .admitted, createdAt: now, expiresAt: nil,
                grantedLifetime: decision.lifetime, incoming: true)
        session.origin = request.origin
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

    /// A mapping's session ID: derived from what it maps (its refreshes and deletion find it by
    /// flow), in a range CSP hosts' random IDs are unlikely to meet (top bits 10).
    static func portMappingID(_ flow: FlowTuple) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a: stable across runs, unlike Hasher
        for byte in flow.destination.bytes + [flow.proto.rawValue, UInt8(flow.destinationPort >> 8), UInt8(flow.destinationPort & 0xff)] {
            hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3
        }
        return hash & 0x3fff_ffff_ffff_ffff | 0x8000_0000_0000_0000
    }
}
