import CSPWire

/// Monotonic time in nanoseconds, supplied by the caller so the core never reads a clock itself
/// (tests drive time explicitly; the daemon passes `ContinuousClock` readings).
public struct Instant: Comparable, Hashable, Sendable {
    public var nanoseconds: UInt64
    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }
    public static func seconds(_ s: Double) -> Instant { Instant(nanoseconds: UInt64(s * 1e9)) }
    public static func < (a: Instant, b: Instant) -> Bool { a.nanoseconds < b.nanoseconds }
    public func adding(seconds: UInt32) -> Instant { Instant(nanoseconds: nanoseconds &+ UInt64(seconds) * 1_000_000_000) }
    public func seconds(since earlier: Instant) -> Double {
        nanoseconds >= earlier.nanoseconds ? Double(nanoseconds - earlier.nanoseconds) / 1e9 : -Double(earlier.nanoseconds - nanoseconds) / 1e9
    }
}

/// Where a session stands on this middlebox.
public enum SessionState: String, Sendable, Equatable {
    /// SETUP seen and forwarded; waiting for the responder's answer.
    case pending
    /// The flow is admitted in the kernel.
    case admitted
    /// The host was told to use a proxy; a redirect is installed.
    case redirected
    /// Admitted without signaling under the `unsignaled = admit` policy.
    case legacy
}

extension Session {
    /// What the session installed, in one word for `midctl`: redirect, nat, admit or none.
    public var actionName: String {
        if state == .redirected { return "redirect" }
        if installed.contains(where: { if case .admission = $0 { false } else { true } }) { return "nat" }
        return installed.isEmpty ? "none" : "admit"
    }

    /// The admitted flows (for counters and conntrack clean-up).
    public var admittedFlows: [FlowTuple] {
        installed.compactMap { if case .admission(let f) = $0 { f } else { nil } }
    }
}

/// One piece of kernel state a session owns; removing the session removes all of them.
public enum InstalledObject: Sendable, Equatable {
    /// An element in one of the admit/pinhole sets.
    case admission(FlowTuple)
    /// Source NAT of the flow's initiator to `to` (outgoing NAT traversal).
    case snat(FlowTuple, to: CSPEndpoint)
    /// Destination NAT of `external` to `to` (incoming NAT traversal).
    case dnat(IPProtocol, external: CSPEndpoint, to: CSPEndpoint)
}

/// One signaled (or legacy-admitted) flow known to this middlebox.
///
/// Layout matters at a million sessions (docs/PERFORMANCE.md, figure 7): what every session has is
/// stored inline; what few sessions have (a NAT mapping, a redirect target, an application name, a
/// request in flight) lives in one shared, immutable box that exists only when one of them is set,
/// and the kernel objects are at most one admission and one translation, stored inline rather than
/// in an array.
public struct Session: Sendable, Equatable {
    public var id: UInt64
    /// The flow as signaled, from the initiator's point of view.
    public var flow: FlowTuple {
        didSet {
            // What is installed does not change with the flow: keep the old admission as it was.
            if admitsOwnFlow, oldValue != flow {
                admitsOwnFlow = false
                updateExtras { $0.otherAdmission = oldValue }
            }
        }
    }
    public var state: SessionState
    public var createdAt: Instant
    public var updatedAt: Instant
    /// When the session (and its kernel element) expires; nil never.
    public var expiresAt: Instant?
    public var grantedLifetime: UInt32
    /// True when the responder (not the initiator) opened the session: an incoming pinhole.
    public var incoming: Bool

    /// The common case of `installed`: the session admits its own flow.
    private var admitsOwnFlow = false
    private var extras: ExtrasBox?

    public init(
        id: UInt64, flow: FlowTuple, state: SessionState, installed: [InstalledObject] = [], application: String? = nil,
        createdAt: Instant, expiresAt: Instant?, grantedLifetime: UInt32, pendingNonce: UInt64? = nil,
        incoming: Bool = false
    ) {
        self.id = id
        self.flow = flow
        self.state = state
        self.createdAt = createdAt
        self.updatedAt = createdAt
        self.expiresAt = expiresAt
        self.grantedLifetime = grantedLifetime
        self.incoming = incoming
        self.installed = installed
        self.application = application
        self.pendingNonce = pendingNonce
    }

    /// What the session installed in the kernel: at most one admission and one NAT translation.
    public var installed: [InstalledObject] {
        get {
            var objects: [InstalledObject] = []
            if admitsOwnFlow { objects.append(.admission(flow)) }
            if let other = extras?.value.otherAdmission { objects.append(.admission(other)) }
            if let translation = extras?.value.translation { objects.append(translation) }
            return objects
        }
        set {
            var ownFlow = false
            var other: FlowTuple?
            var translation: InstalledObject?
            for object in newValue {
                if case .admission(let admitted) = object {
                    precondition(!ownFlow && other == nil, "a session owns at most one admission")
                    if admitted == flow { ownFlow = true } else { other = admitted }
                } else {
                    precondition(translation == nil, "a session owns at most one NAT translation")
                    translation = object
                }
            }
            admitsOwnFlow = ownFlow
            updateExtras {
                $0.otherAdmission = other
                $0.translation = translation
            }
        }
    }

    /// The external endpoint a NAT on this middlebox maps the host to (reported in MAPPED-ADDRESS).
    public var mapping: CSPEndpoint? {
        get { extras?.value.mapping }
        set { updateExtras { $0.mapping = newValue } }
    }
    /// The proxy the host was sent to (REDIRECT).
    public var redirectTarget: CSPEndpoint? {
        get { extras?.value.redirectTarget }
        set { updateExtras { $0.redirectTarget = newValue } }
    }
    public var application: String? {
        get { extras?.value.application }
        set { updateExtras { $0.application = newValue } }
    }
    /// The nonce of the request we are waiting on, to match its reply.
    public var pendingNonce: UInt64? {
        get { extras?.value.pendingNonce }
        set { updateExtras { $0.pendingNonce = newValue } }
    }

    struct Extras: Sendable, Equatable {
        var mapping: CSPEndpoint?
        var redirectTarget: CSPEndpoint?
        var application: String?
        var pendingNonce: UInt64?
        /// An admission of another flow than the session's own (a redirect's host → proxy flow).
        var otherAdmission: FlowTuple?
        var translation: InstalledObject?
    }

    /// Immutable, so sharing it between copies of a session keeps value semantics.
    final class ExtrasBox: Sendable, Equatable {
        let value: Extras
        init(_ value: Extras) { self.value = value }
        static func == (a: ExtrasBox, b: ExtrasBox) -> Bool { a.value == b.value }
    }

    private mutating func updateExtras(_ change: (inout Extras) -> Void) {
        var value = extras?.value ?? Extras()
        change(&value)
        extras = value == Extras() ? nil : ExtrasBox(value)
    }
}
