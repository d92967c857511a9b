import CSPSession
import CSPTrust
import CSPWire

/// A relay's limits (docs/PROTOCOL.md 14.8; `[relay]` in midcomd.conf).
public struct RelayLimits: Sendable, Equatable {
    public var sessionsPerKey = 16
    public var sessionsPerAddress = 64
    public var maxSessions = 4096
    /// Octets both ways per session; 0: no limit.
    public var bytesPerSession: UInt64 = 0
    public var idleTimeout: Duration = .seconds(300)
    public var resumeGrace: Duration = .seconds(30)
    public var handshakeTimeout: Duration = .seconds(10)
    /// Which hop protections this relay accepts.
    public var acceptsClear = true
    public var acceptsSealed = true
    public init() {}
}

/// What the relay knows of one relayed session: the pure record the setup threads, the workers
/// and `midctl` share (the sockets live with the worker that moves the octets).
public struct RelayedSession: Sendable, Equatable {
    public enum State: String, Sendable { case settingUp = "setting-up", up, broken, ended }

    public let sessionID: UInt64
    /// The index of the hop this relay accepts (it opens hopIndex + 1).
    public let hopIndex: UInt8
    public let upstreamKey: PublicKey
    public let upstreamAddress: IPAddress
    public var target: TargetEndpoint
    public var protection: HopProtection
    public var flags: HopFlags
    public var upstream: (local: CSPEndpoint, remote: CSPEndpoint)?
    public var downstream: (local: CSPEndpoint, remote: CSPEndpoint, key: PublicKey?, last: Bool)?
    public var state: State
    public var octetsUp: UInt64 = 0
    public var octetsDown: UInt64 = 0
    public var resumptions = 0
    public let started: ContinuousClock.Instant
    public var lastActivity: ContinuousClock.Instant
    /// When a broken session is forgotten; when an ended one's tombstone goes.
    public var expires: ContinuousClock.Instant?
    /// Why it ended (kept for `resume-grace`, so a resume learns the cause).
    public var endReason: String?
    /// Changes every time the session's hops are replaced: a worker's report about an older pair
    /// of hops must not end the newer one.
    public var generation = 0

    public static func == (a: RelayedSession, b: RelayedSession) -> Bool {
        a.sessionID == b.sessionID && a.hopIndex == b.hopIndex && a.state == b.state && a.generation == b.generation
            && a.octetsUp == b.octetsUp && a.octetsDown == b.octetsDown
    }
}

/// The relay's sessions by (session ID, hop index), with the counts its limits need. Pure: time
/// passed in; the daemon holds it under one lock (setup threads and workers touch it only at
/// session start, resume, end and once per second for counters — never per octet).
public struct RelaySessionTable: Sendable {
    public struct Key: Hashable, Sendable {
        public var sessionID: UInt64
        public var hopIndex: UInt8
        public init(sessionID: UInt64, hopIndex: UInt8) {
            self.sessionID = sessionID
            self.hopIndex = hopIndex
        }
    }

    /// A refusal of an OPEN, as REFUSE carries it.
    public struct Refusal: Error, Sendable, Equatable {
        public var result: CSPResultCode
        public var text: String
        public var retryAfter: UInt32
        public init(_ result: CSPResultCode, _ text: String, retryAfter: UInt32 = 0) {
            self.result = result
            self.text = text
            self.retryAfter = retryAfter
        }
    }

    public var limits: RelayLimits
    public private(set) var sessions: [Key: RelayedSession] = [:]

    public init(limits: RelayLimits) { self.limits = limits }

    /// Sessions that count against the limits: setting up, up, or broken within resume-grace.
    private func live(_ session: RelayedSession) -> Bool { session.state != .ended }

    /// The decision for a first OPEN whose token already checked (or a resume of a session this
    /// relay no longer holds, with a valid token): admit it as a new session, or refuse why.
    public mutating func admit(
        open: HopOpen, upstreamKey: PublicKey, upstreamAddress: IPAddress, now: ContinuousClock.Instant
    ) throws(Refusal) -> RelayedSession {
        let key = Key(sessionID: open.hop.sessionID, hopIndex: open.hop.hopIndex)
        try checkShape(open)
        if sessions.values.contains(where: { $0.sessionID == key.sessionID && $0.hopIndex != key.hopIndex && live($0) }) {
            throw Refusal(.policyDenied, "relay loop: session \(hex(key.sessionID)) already passes this relay at another hop")
        }
        if let existing = sessions[key], live(existing) {
            guard existing.upstreamKey == upstreamKey else { throw Refusal(.authenticationFailed, "the session belongs to another key") }
            throw Refusal(.policyDenied, "session \(hex(key.sessionID)) hop \(key.hopIndex) is already relayed here: resume it")
        }
        let liveSessions = sessions.values.filter(live)
        if liveSessions.count >= limits.maxSessions {
            throw Refusal(.resourcesExhausted, "\(limits.maxSessions) relayed sessions in all", retryAfter: 30)
        }
        if liveSessions.count(where: { $0.upstreamKey == upstreamKey }) >= limits.sessionsPerKey {
            throw Refusal(.resourcesExhausted, "\(limits.sessionsPerKey) relayed sessions for \(upstreamKey)", retryAfter: 30)
        }
        let prefix = Self.addressPrefix(upstreamAddress)
        if liveSessions.count(where: { Self.addressPrefix($0.upstreamAddress) == prefix }) >= limits.sessionsPerAddress {
            throw Refusal(.resourcesExhausted, "\(limits.sessionsPerAddress) relayed sessions for address \(upstreamAddress)", retryAfter: 30)
        }
        let session = RelayedSession(
            sessionID: key.sessionID, hopIndex: key.hopIndex, upstreamKey: upstreamKey, upstreamAddress: upstreamAddress,
            target: open.target, protection: open.hop.protection, flags: open.hop.flags, state: .settingUp, started: now,
            lastActivity: now)
        sessions[key] = session
        return session
    }

    /// A resume OPEN for a session this relay holds: the same key, then a new generation of hops.
    /// Nil when the relay does not hold it (the caller then needs a valid token, or refuses 4 with
    /// the tombstone's reason).
    public mutating func resume(open: HopOpen, upstreamKey: PublicKey, now: ContinuousClock.Instant) throws(Refusal) -> RelayedSession? {
        let key = Key(sessionID: open.hop.sessionID, hopIndex: open.hop.hopIndex)
        try checkShape(open)
        guard var session = sessions[key] else { return nil }
        if session.state == .ended {
            let reason = session.endReason ?? "ended"
            // Ended by the relay's own decision (a limit, the operator): final, so the host stops
            // instead of asking the middleboxes for a new offer and coming back to this tombstone
            // until its resume timeout. Other ends (a break not resumed in time) say "unknown".
            if Self.endedByDecision(reason) { throw Refusal(.policyDenied, reason) }
            throw Refusal(.unknownSession, reason)
        }
        guard session.upstreamKey == upstreamKey else { throw Refusal(.authenticationFailed, "the session belongs to another key") }
        session.generation += 1
        session.resumptions += 1
        session.state = .settingUp
        session.expires = nil
        session.lastActivity = now
        sessions[key] = session
        return session
    }

    private func checkShape(_ open: HopOpen) throws(Refusal) {
        if open.hop.hopIndex > 8 { throw Refusal(.policyDenied, "relay chain longer than 8 hops") }
        switch open.hop.protection {
        case .clear where !limits.acceptsClear: throw Refusal(.policyDenied, "this relay requires sealed hops")
        case .sealed where !limits.acceptsSealed: throw Refusal(.policyDenied, "this relay requires clear hops")
        case .clear, .sealed: break
        default: throw Refusal(.policyDenied, "hop protection \(open.hop.protection.rawValue) is not supported")
        }
    }

    /// The downstream hop is up and ACCEPT went upstream.
    public mutating func up(
        _ key: Key, generation: Int, upstream: (CSPEndpoint, CSPEndpoint), downstream: (CSPEndpoint, CSPEndpoint, PublicKey?, Bool),
        now: ContinuousClock.Instant
    ) {
        guard var session = sessions[key], session.generation == generation else { return }
        session.state = .up
        session.upstream = (upstream.0, upstream.1)
        session.downstream = (downstream.0, downstream.1, downstream.2, downstream.3)
        session.lastActivity = now
        sessions[key] = session
    }

    /// Octets moved since the last report (workers report at most once a second per session).
    public mutating func count(_ key: Key, generation: Int, up: UInt64, down: UInt64, now: ContinuousClock.Instant) -> Bool {
        guard var session = sessions[key], session.generation == generation else { return true }
        if up + down > 0 { session.lastActivity = now }
        session.octetsUp += up
        session.octetsDown += down
        sessions[key] = session
        return limits.bytesPerSession == 0 || session.octetsUp + session.octetsDown < limits.bytesPerSession
    }

    /// The session's hops ended. A clean end (both FINs) or a limit ends it (tombstone); a break
    /// keeps it for `resume-grace`, for the host's resume.
    public mutating func hopsEnded(_ key: Key, generation: Int, clean: Bool, reason: String, now: ContinuousClock.Instant) {
        guard var session = sessions[key], session.generation == generation else { return }
        if clean || Self.endedByDecision(reason) {
            session.state = .ended
        } else {
            session.state = .broken
        }
        session.endReason = reason
        session.expires = now + limits.resumeGrace
        sessions[key] = session
    }

    /// A setup that failed before the session was up: forget it (nothing of it lives on).
    public mutating func forget(_ key: Key, generation: Int) {
        guard let session = sessions[key], session.generation == generation else { return }
        if session.resumptions == 0 { sessions.removeValue(forKey: key) } else {
            sessions[key]?.state = .broken
        }
    }

    /// Drops broken sessions past their grace and tombstones past theirs; returns sessions whose
    /// idle time ran out (their worker aborts both hops).
    public mutating func expire(now: ContinuousClock.Instant) -> [Key] {
        var idle: [Key] = []
        for (key, session) in sessions {
            switch session.state {
            case .broken:
                if let expires = session.expires, expires <= now {
                    sessions[key]?.state = .ended
                    sessions[key]?.endReason = "not resumed within \(limits.resumeGrace)"
                    sessions[key]?.expires = now + limits.resumeGrace
                }
            case .ended:
                if let expires = session.expires, expires <= now { sessions.removeValue(forKey: key) }
            case .up:
                if now - session.lastActivity >= limits.idleTimeout { idle.append(key) }
            case .settingUp:
                break
            }
        }
        return idle
    }

    /// Reasons the relay itself ends a session for (not a break): the session must not come back.
    static func endedByDecision(_ reason: String) -> Bool {
        reason.hasPrefix("byte limit") || reason == "idle" || reason == "deleted by operator"
    }

    /// IPv4 /32, IPv6 /64: what one subscriber usually has.
    static func addressPrefix(_ address: IPAddress) -> [UInt8] {
        address.family == .ipv4 ? address.bytes : Array(address.bytes.prefix(8))
    }
}
