import CSPWire

/// What a relay accepts on its hops (docs/PROTOCOL.md 14.6): RELAY-ENDPOINT's `modes`.
public enum RelayProtection: String, Sendable, CaseIterable, Equatable {
    /// Hops whose stream passes unchanged after the hop handshake (midrelayd splices them).
    case clear
    /// Hops whose stream is also encrypted hop by hop.
    case sealed
    /// Either, as the host chooses.
    case either
}

/// How a `relay` rule's flows pass the relay (docs/PROTOCOL.md 14.9): `relay-mode` of a [[rule]].
public enum RelayMode: String, Sendable, CaseIterable, Equatable {
    /// End to end encrypted: the relay carries octets it cannot read.
    case blind
    /// The relay ends the end-to-end layer and reads the stream (a target without the session
    /// layer); the host must set allow-terminating, and `[relay] terminating` must allow it.
    case terminating
}

/// `[relay]` of midcomd.conf (docs/ARCHITECTURE.md, "Relayed sessions"). Read by both daemons
/// with the same parser: midcomd offers relays (the decision, the RELAY message, the token),
/// midrelayd serves them (`MidcomConfiguration(path:text:).relay`). The limits are midrelayd's;
/// midcomd reads `enabled`, `listen`, `on-request`, `token-lifetime`, `protection` and
/// `terminating`.
public struct RelayConfiguration: Sendable, Equatable {
    /// The TCP port a relay accepts hops on when `listen` names none (PROTOCOL.md 14.1).
    public static let defaultPort: UInt16 = 7228

    /// midcomd offers relays (rules with `action = "relay"`); midrelayd serves them.
    public var enabled = false
    /// The hop endpoints, in the order written. An offer names the first one of the SETUP's
    /// address family (docs/PROTOCOL.md 14.2). Each is a concrete address: a host connects to it.
    public var listen: [CSPEndpoint] = []
    /// Also relay flows policy admits when the host sets want-relay.
    public var onRequest = false
    /// Seconds an offer (its RELAY-TOKEN) is valid: the RELAY's LIFETIME and the token's expiry.
    public var tokenLifetime: UInt32 = 60
    public var protection: RelayProtection = .either
    /// Rules may use `relay-mode = "terminating"` (the relay reads the stream).
    public var terminating = false
    /// Relayed sessions one upstream key may hold at the relay.
    public var sessionsPerKey = 16
    /// ... one upstream address (IPv4 /32, IPv6 /64).
    public var sessionsPerAddress = 64
    /// ... in all.
    public var maximumSessions = 4096
    /// Octets a session may carry, both ways together; 0: no limit.
    public var bytesPerSession: UInt64 = 0
    /// Seconds without an octet either way after which the relay ends a session.
    public var idleTimeout: UInt32 = 300
    /// Seconds a broken session is kept for the host's resume (PROTOCOL.md 14.7).
    public var resumeGrace: UInt32 = 30
    /// Seconds a hop handshake may take.
    public var handshakeTimeout: UInt32 = 10
    /// Data-path worker threads; 0: half the CPUs, at least 1.
    public var workers = 0
    /// Threads for hop handshakes and onward signaling.
    public var setupThreads = 4
    /// Octets of each splice pipe (F_SETPIPE_SZ; the kernel's pipe-max-size is 1 MiB).
    public var pipeSize = 262_144
    /// midrelayd's control socket (`midctl sessions --relayed`, `status`).
    public var controlSocket = "/run/midcom-relay/relay.sock"

    public init() {}

    /// RELAY-ENDPOINT's `modes` for a rule of `mode`: the protections this relay accepts, and
    /// terminating for a terminating rule.
    public func modes(for mode: RelayMode) -> CSPRelayModes {
        var modes: CSPRelayModes =
            switch protection {
            case .clear: .clear
            case .sealed: .sealed
            case .either: [.clear, .sealed]
            }
        if mode == .terminating { modes.insert(.terminating) }
        return modes
    }

    /// The endpoint an offer names for a host of `family`: the first `listen` endpoint of that
    /// family (the engine does not know which interface a SETUP arrived on).
    public func endpoint(for family: IPAddress.Family) -> CSPEndpoint? {
        listen.first { $0.address.family == family }
    }

    /// The settings midrelayd cannot take over on a reload (its listeners, threads and control
    /// socket), named as in the file; empty: `new` may be swapped in. The limits reload.
    public func restartOnlyChanges(to new: RelayConfiguration) -> [String] {
        var changed: [String] = []
        if listen != new.listen { changed.append("[relay] listen") }
        if workers != new.workers { changed.append("[relay] workers") }
        if setupThreads != new.setupThreads { changed.append("[relay] setup-threads") }
        if controlSocket != new.controlSocket { changed.append("[relay] control-socket") }
        return changed
    }

    mutating func read(_ reader: inout TableReader) throws(ConfigError) {
        enabled = try reader.boolean("enabled", default: enabled)
        if let (items, v) = try reader.stringList("listen") {
            listen = []
            for item in items {
                listen.append(try Self.endpoint(parsing: item, value: v, reader: reader))
            }
        }
        onRequest = try reader.boolean("on-request", default: onRequest)
        tokenLifetime = try reader.integer("token-lifetime", default: tokenLifetime, range: 5...3600)
        protection = try reader.choice("protection", default: protection)
        terminating = try reader.boolean("terminating", default: terminating)
        sessionsPerKey = try reader.integer("sessions-per-key", default: sessionsPerKey, range: 1...1_000_000)
        sessionsPerAddress = try reader.integer("sessions-per-address", default: sessionsPerAddress, range: 1...1_000_000)
        maximumSessions = try reader.integer("max-sessions", default: maximumSessions, range: 1...1_000_000)
        bytesPerSession = try reader.integer("bytes-per-session", default: bytesPerSession, range: 0...UInt64(Int64.max))
        idleTimeout = try reader.integer("idle-timeout", default: idleTimeout, range: 1...604_800)
        resumeGrace = try reader.integer("resume-grace", default: resumeGrace, range: 0...3600)
        handshakeTimeout = try reader.integer("handshake-timeout", default: handshakeTimeout, range: 1...300)
        workers = try reader.integer("workers", default: workers, range: 0...1024)
        setupThreads = try reader.integer("setup-threads", default: setupThreads, range: 1...256)
        pipeSize = try reader.integer("pipe-size", default: pipeSize, range: 4096...1_048_576)
        controlSocket = try reader.string("control-socket", default: controlSocket)
        try reader.rejectUnknownKeys()
        if enabled, listen.isEmpty {
            throw ConfigError(
                path: reader.path, line: reader.table.value("enabled")?.line ?? reader.table.line,
                message: "[relay] is enabled but has no listen endpoint: an offer must name where hosts connect",
                fix: "add listen = [\"<an address of this box>:\(Self.defaultPort)\"]")
        }
    }

    /// One `listen` item: `address:port`, `[IPv6]:port`, or an address alone (port 7228).
    static func endpoint(parsing text: String, value: ConfigFile.Value, reader: TableReader) throws(ConfigError) -> CSPEndpoint {
        let example = "write e.g. listen = [\"10.1.0.1:\(defaultPort)\", \"[2001:db8:1::1]:\(defaultPort)\"]"
        let endpoint: CSPEndpoint
        if let address = IPAddress(text) {
            endpoint = CSPEndpoint(address: address, port: defaultPort)
        } else if text.hasPrefix("[") || text.filter({ $0 == ":" }).count == 1, let parsed = CSPEndpoint(parsing: text) {
            // An IPv6 address with a port needs its brackets: "2001:db8::1:7228" is an address.
            endpoint = parsed
        } else {
            throw reader.error(value, "listen: '\(text)' is not an address:port", fix: example)
        }
        guard !endpoint.address.isUnspecified else {
            throw reader.error(
                value, "listen: '\(text)' is a wildcard: a RELAY offer must name an address hosts can connect to",
                fix: "list the addresses of this box one by one: \(example)")
        }
        guard endpoint.port != 0 else { throw reader.error(value, "listen: '\(text)' has port 0", fix: example) }
        return endpoint
    }
}
