/// One relayed session as midrelayd reports it on its control socket (`sessions`), for
/// `midctl sessions --relayed` (docs/ARCHITECTURE.md, "`midctl sessions`").
public struct RelayedSessionRecord: Codable, Sendable, Equatable {
    /// One hop at the relay: the connection it accepted (in) or opened (out).
    public struct Hop: Codable, Sendable, Equatable {
        public var index: Int
        public var local: String?
        public var remote: String?
        /// The other end's key (csp-ed25519 <hex>): the upstream end's, or the next relay's; nil for
        /// a responder (the end-to-end layer authenticates it, not the relay).
        public var key: String?
        /// The hop goes to the target itself.
        public var last: Bool?
        public init(index: Int, local: String?, remote: String?, key: String?, last: Bool? = nil) {
            self.index = index
            self.local = local
            self.remote = remote
            self.key = key
            self.last = last
        }
    }

    /// The relayed session's ID `S` (16 lowercase hex digits).
    public var session: String
    public var hopIn: Hop
    public var hopOut: Hop?
    /// "clear" or "sealed".
    public var protection: String
    public var bytesUp: UInt64
    public var bytesDown: UInt64
    public var idleSeconds: Double
    public var ageSeconds: Double
    public var resumptions: Int
    /// "setting-up", "up", "broken" (within resume-grace), "ended" (a tombstone).
    public var state: String
    /// Why it ended or broke.
    public var reason: String?

    public init(
        session: String, hopIn: Hop, hopOut: Hop?, protection: String, bytesUp: UInt64, bytesDown: UInt64, idleSeconds: Double,
        ageSeconds: Double, resumptions: Int, state: String, reason: String?
    ) {
        self.session = session
        self.hopIn = hopIn
        self.hopOut = hopOut
        self.protection = protection
        self.bytesUp = bytesUp
        self.bytesDown = bytesDown
        self.idleSeconds = idleSeconds
        self.ageSeconds = ageSeconds
        self.resumptions = resumptions
        self.state = state
        self.reason = reason
    }

    private enum CodingKeys: String, CodingKey {
        case session, hopIn = "hop_in", hopOut = "hop_out", protection, bytesUp = "bytes_up", bytesDown = "bytes_down"
        case idleSeconds = "idle_seconds", ageSeconds = "age_seconds", resumptions, state, reason
    }
}
