import CSPTrust
import CSPWire

/// Monotonic time in nanoseconds, supplied by the caller so the core never reads a clock itself
/// (tests drive time explicitly; the daemon passes `ContinuousClock` readings).
public struct Instant: Comparable, Hashable, Sendable {
    public var nanoseconds: UInt64
    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }
    public static func seconds(_ s: Double) -> Instant { Instant(nanoseconds: UInt64(s * 1e9)) }
    public static func < (a: Instant, b: Instant) -> Bool { a.nanoseconds < b.nanoseconds }
    /// Whole seconds since the clock's origin (for per-second budgets).
    public var wholeSeconds: UInt64 { nanoseconds / 1_000_000_000 }
    public func adding(seconds: UInt32) -> Instant { Instant(nanoseconds: nanoseconds &+ UInt64(seconds) * 1_000_000_000) }
    public func seconds(since earlier: Instant) -> Double {
        nanoseconds >= earlier.nanoseconds ? Double(nanoseconds - earlier.nanoseconds) / 1e9 : -Double(earlier.nanoseconds - nanoseconds) / 1e9
    }
}

/// Where a session stands on this middlebox.
public enum SessionState: String, Sendable, Equatable {
    /// SETUP seen and forwarded; waiting for the responder's answer. Nothing is installed.
    case pending
    /// The flow is admitted in the kernel.
    case admitted
    /// The host was told to use a proxy; the host → proxy flow is admitted.
    case redirected
    /// Admitted without signaling under the `unsignaled = admit` policy.
    case legacy
}

/// A request forwarded on the session's behalf whose answer has not come back yet (a SETUP, a
/// re-SETUP with another flow, or a REFRESH). It takes effect when the responder ACCEPTs it.
public struct PendingRequest: Sendable, Equatable {
    /// Ties the answer to the request.
    public var nonce: UInt64
    /// The flow the session will admit once ACCEPTed.
    public var flow: FlowTuple
    /// What policy granted; the answer may only shorten it.
    public var lifetime: UInt32
    /// The request asked for records: its answer gets ours too (docs/PROTOCOL.md 4.2).
    public var recordRoute: Bool
    /// The NAT mapping the session will have with `flow` (reserved already), nil when unmapped.
    public var mapping: CSPEndpoint?
    /// The request is a REBIND: its answer reports decision "rebound".
    public var rebind = false
    /// The request came from the responder (a mobile server's REBIND): the owner answers it.
    public var fromResponder = false

    public init(nonce: UInt64, flow: FlowTuple, lifetime: UInt32, recordRoute: Bool, mapping: CSPEndpoint? = nil) {
        self.nonce = nonce
        self.flow = flow
        self.lifetime = lifetime
        self.recordRoute = recordRoute
        self.mapping = mapping
    }
}

/// Identifies one flow of a session; path 0 is the flow the session was set up with.
public typealias PathID = UInt8

/// One signaled (or legacy-admitted) session known to this middlebox.
///
/// A session owns one or more paths (path ID → flow); what it needs in the kernel is derived from
/// its state (`kernelObjects`), so every change of state yields the exact kernel diff.
///
/// Layout matters at a million sessions (docs/PERFORMANCE.md, figure 7): what every session has is
/// stored inline (path 0 among it); what few sessions have (further paths, a NAT mapping, a
/// redirect target, an application name, keys) lives in one shared box that exists only when one
/// of them is set. A request in flight has a box of its own (`pending`).
public struct Session: Sendable, Equatable {
    public var id: UInt64
    /// Path 0, from the initiator's point of view.
    public var flow: FlowTuple
    public var state: SessionState
    public var createdAt: Instant
    public var updatedAt: Instant
    /// When the session (and its kernel elements) expire; nil never.
    public var expiresAt: Instant?
    public var grantedLifetime: UInt32
    /// True when the responder (not the initiator) opened the session: an incoming pinhole.
    public var incoming: Bool
    /// Sequences of the owner's requests seen so far (docs/PROTOCOL.md 7.3).
    public var replay = ReplayWindow()
    /// The latest answered request asked for records (a repeated answer gets ours again).
    public var recordRoute = false
    private var extras: ExtrasBox?
    /// Not in `extras`: every signaled session has a request in flight for one round trip per
    /// request, and holding it there built, compared and copied the 344-octet `Extras` twice per
    /// session (figure 4's footprint, docs/PERFORMANCE.md "Ninth pass"). Immutable: a change is a
    /// new box, so copies of the session never see it change.
    private var pendingBox: PendingBox?

    public init(
        id: UInt64, flow: FlowTuple, state: SessionState, application: String? = nil, createdAt: Instant,
        expiresAt: Instant?, grantedLifetime: UInt32, incoming: Bool = false
    ) {
        self.id = id
        self.flow = flow
        self.state = state
        self.createdAt = createdAt
        self.updatedAt = createdAt
        self.expiresAt = expiresAt
        self.grantedLifetime = grantedLifetime
        self.incoming = incoming
        // Through the setter only when there is one: the setter builds and compares `Extras`.
        if let application { self.application = application }
    }

    /// The address that signals for the session (and may refresh, re-signal or tear it down).
    public var owner: IPAddress { flow.address(of: ownerEnd) }

    /// The owner's end of the session's flows: the destination of an incoming pinhole.
    public var ownerEnd: FlowTuple.End { Self.ownerEnd(incoming: incoming) }

    public static func ownerEnd(incoming: Bool) -> FlowTuple.End { incoming ? .destination : .source }

    /// The address that answers the session's requests, nil when it is a wildcard.
    public var responder: IPAddress? {
        let address = incoming ? flow.source : flow.destination
        return address.isUnspecified ? nil : address
    }

    /// Every path, path 0 first.
    public var paths: [(id: PathID, flow: FlowTuple)] {
        [(0, flow)] + (extras?.value.extraPaths ?? [:]).sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// How many paths the session has (without building the list).
    public var pathCount: Int { 1 + (extras?.value.extraPaths.count ?? 0) }

    /// Whether `flow` is one of the session's paths (without building the list).
    @inline(__always)
    public func holds(_ flow: FlowTuple) -> Bool {
        if self.flow == flow { return true }
        guard let extras else { return false }
        return extras.value.extraPaths.values.contains(flow)
    }

    /// Adds or replaces path `id` (> 0); nil removes it. `expiresAt`: the path's own lifetime
    /// (an ADD-PATH with LIFETIME); nil: it lives as long as the session.
    public mutating func setPath(_ id: PathID, _ flow: FlowTuple?, expiresAt: Instant? = nil) {
        precondition(id != 0, "path 0 is the session's flow")
        updateExtras {
            $0.extraPaths[id] = flow
            $0.pathExpiry[id] = flow == nil ? nil : expiresAt
        }
    }

    /// When path `id` ends on its own (nil: with the session).
    public func pathExpiry(_ id: PathID) -> Instant? { extras?.value.pathExpiry[id] }

    /// The external endpoint a NAT on this middlebox maps the host to (reported in MAPPED-ADDRESS).
    public var mapping: CSPEndpoint? {
        get { extras?.value.mapping }
        set { if extras != nil || newValue != nil { updateExtras { $0.mapping = newValue } } }
    }
    /// Our endpoint through which a mobile host away from home reaches the flow's responder
    /// (docs/PROTOCOL.md 10.9): its packets to it are translated to the responder, from it.
    public var relay: CSPEndpoint? {
        get { extras?.value.relay }
        set { if extras != nil || newValue != nil { updateExtras { $0.relay = newValue } } }
    }
    /// Where the session came from (CSP, or a port-mapping protocol: issue 12).
    public var origin: SessionOrigin {
        get { extras?.value.origin ?? .csp }
        set { if extras != nil || newValue != .csp { updateExtras { $0.origin = newValue } } }
    }
    /// The proxy the host was sent to (REDIRECT).
    public var redirectTarget: CSPEndpoint? {
        get { extras?.value.redirectTarget }
        set { if extras != nil || newValue != nil { updateExtras { $0.redirectTarget = newValue } } }
    }
    public var application: String? {
        get { extras?.value.application }
        set { if extras != nil || newValue != nil { updateExtras { $0.application = newValue } } }
    }
    /// The key that signed the responder's answer, if it signed one: a mobile server moves its
    /// side of the session with it (REBIND from the responder, docs/PROTOCOL.md 6.7).
    public var responderKey: PublicKey? {
        get { extras?.value.responderKey }
        set { if extras != nil || newValue != nil { updateExtras { $0.responderKey = newValue } } }
    }
    /// The key the session belongs to (docs/PROTOCOL.md 6.7); nil: it belongs to its addresses.
    public var ownerKey: PublicKey? {
        get { extras?.value.ownerKey }
        set { if extras != nil || newValue != nil { updateExtras { $0.ownerKey = newValue } } }
    }
    /// Admitted on behalf of a responder that may not speak CSP (docs/PROTOCOL.md 6.9): we
    /// answer its REFRESH and TEARDOWN ourselves, since nobody else will.
    public var answeredForResponder: Bool {
        get { extras?.value.answeredForResponder ?? false }
        set { if extras != nil || newValue { updateExtras { $0.answeredForResponder = newValue } } }
    }
    /// A PCP mapping's owner: the nonce of the request that created it (RFC 6887 11.1).
    public var mappingNonce: PCP.Nonce? {
        get { extras?.value.mappingNonce }
        set { if extras != nil || newValue != nil { updateExtras { $0.mappingNonce = newValue } } }
    }
    /// The request we are waiting on, to match its answer.
    public var pending: PendingRequest? {
        get { pendingBox?.request }
        set { pendingBox = newValue.map(PendingBox.init) }
    }

    final class PendingBox: Sendable, Equatable {
        let request: PendingRequest
        init(_ request: PendingRequest) { self.request = request }
        static func == (a: PendingBox, b: PendingBox) -> Bool { a.request == b.request }
    }

    struct Extras: Sendable, Equatable {
        var mapping: CSPEndpoint?
        var redirectTarget: CSPEndpoint?
        var relay: CSPEndpoint?
        var origin: SessionOrigin = .csp
        var application: String?
        var ownerKey: PublicKey?
        var responderKey: PublicKey?
        var answeredForResponder = false
        var mappingNonce: PCP.Nonce?
        var extraPaths: [PathID: FlowTuple] = [:]
        var pathExpiry: [PathID: Instant] = [:]

        /// Equal to `Extras()`, tested field by field (building and comparing a whole empty value
        /// each time showed in figure 4).
        var isEmpty: Bool {
            mapping == nil && redirectTarget == nil && relay == nil && origin == .csp && application == nil
                && ownerKey == nil && responderKey == nil && !answeredForResponder && mappingNonce == nil
                && extraPaths.isEmpty && pathExpiry.isEmpty
        }
    }

    /// Shared between copies of a session and changed in place only while one session holds it
    /// (copy on write): a box another copy can see is never written, which keeps value semantics
    /// and makes sharing across threads safe. In place, an ACCEPT's handful of field updates cost
    /// one copy of the extras instead of one box per field (figure 4's profile: six 344-octet
    /// copies and boxes per admitted session).
    final class ExtrasBox: @unchecked Sendable, Equatable {
        fileprivate(set) var value: Extras
        init(_ value: Extras) { self.value = value }
        static func == (a: ExtrasBox, b: ExtrasBox) -> Bool { a.value == b.value }
    }

    /// The setters above skip it when there are no extras and the value is the default: a new
    /// session's handlers set `mapping`, `application` and `pending` to nil, and building an
    /// empty `Extras` (344 octets) only to find it empty cost a copy each time.
    private mutating func updateExtras(_ change: (inout Extras) -> Void) {
        if extras != nil, isKnownUniquelyReferenced(&extras!) {
            change(&extras!.value)
            if extras!.value.isEmpty { extras = nil }
            return
        }
        var value = extras?.value ?? Extras()
        change(&value)
        extras = value.isEmpty ? nil : ExtrasBox(value)
    }
}

extension Session {
    /// The host → proxy flow a redirected session admits.
    public var proxyFlow: FlowTuple? {
        redirectTarget.map {
            FlowTuple(proto: flow.proto, source: flow.source, sourcePort: 0, destination: $0.address, destinationPort: $0.port)
        }
    }

    /// The flow when `kernelObjects` is exactly one admission of it (a legacy session, or an
    /// admitted one with one path and no extras: nearly every session), without building the array.
    var soleAdmission: FlowTuple? {
        switch state {
        case .legacy: return flow
        case .admitted: return extras == nil ? flow : nil
        case .pending, .redirected: return nil
        }
    }

    /// What the session needs in the kernel, derived from its state alone.
    public var kernelObjects: [KernelObject] {
        switch state {
        case .pending:
            return []
        case .legacy:
            return [.admission(flow)]
        case .redirected:
            return proxyFlow.map { [.admission($0)] } ?? []
        case .admitted:
            // Most sessions have one path and no extras: no sorted path list, no relay array.
            guard extras != nil else { return [.admission(flow)] }
            var objects = pathCount == 1 ? [KernelObject.admission(flow)] : paths.map { KernelObject.admission($0.flow) }
            if let translation { objects.append(translation) }
            if relay != nil { objects += relayTranslations }
            return objects
        }
    }

    /// The NAT rule of a mapped session: SNAT of the initiator (outgoing) or DNAT to the host
    /// (incoming). nil when unmapped, or when an endpoint is not IPv4 (the NAT maps are IPv4 only).
    var translation: KernelObject? {
        guard let mapping, let external = IPv4Endpoint(mapping) else { return nil }
        if incoming {
            guard let host = IPv4Endpoint(CSPEndpoint(address: flow.destination, port: flow.destinationPort)) else { return nil }
            return .destinationNAT(DestinationNAT(proto: flow.proto, external: external, internal: host))
        }
        guard let host = IPv4Endpoint(CSPEndpoint(address: flow.source, port: flow.sourcePort)), host.port != 0 else { return nil }
        return .sourceNAT(SourceNAT(proto: flow.proto, internal: host, external: external))
    }

    /// A relayed session's NAT rules: the host's packets to our relay endpoint go to the
    /// responder (DNAT), and leave with the relay endpoint as their source (SNAT), so the
    /// responder's answers come back through us. IPv4 only, like the NAT maps.
    var relayTranslations: [KernelObject] {
        guard let relay, let external = IPv4Endpoint(relay),
            let host = IPv4Endpoint(CSPEndpoint(address: flow.source, port: flow.sourcePort)),
            let responder = IPv4Endpoint(CSPEndpoint(address: flow.destination, port: flow.destinationPort))
        else { return [] }
        return [
            .destinationNAT(DestinationNAT(proto: flow.proto, external: external, internal: responder)),
            .sourceNAT(SourceNAT(proto: flow.proto, internal: host, external: external)),
        ]
    }

    /// The comment the session's kernel elements carry.
    public var tag: ElementTag {
        let kind: ElementTag.Kind =
            switch state {
            case .legacy: .legacy
            case .redirected: .redirect
            case .pending, .admitted: relay != nil ? .relay : incoming ? .incoming : .outgoing
            }
        return ElementTag(sessionID: id, kind: kind, application: application)
    }

    /// What the session installed, in one word for `midctl`: redirect, nat, admit or none.
    /// Derived without building `kernelObjects` (a listing asks it of every session): besides
    /// admissions, an admitted session without a relay installs only its `translation`.
    public var actionName: String {
        if state == .redirected { return "redirect" }
        if relay != nil { return "relay" }
        switch state {
        case .pending: return "none"
        case .legacy: return "admit"
        case .admitted, .redirected: return translation != nil ? "nat" : "admit"
        }
    }

    /// The admitted flows (for counters and conntrack clean-up).
    public var admittedFlows: [FlowTuple] {
        kernelObjects.compactMap { if case .admission(let f) = $0 { f } else { nil } }
    }
}
