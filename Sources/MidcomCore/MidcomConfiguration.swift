import CSPWire

/// How `midcomd` behaves, read from `/etc/midcom/midcomd.conf` (see docs/CONFIGURATION in README).
public struct MidcomConfiguration: Sendable, Equatable {
    public enum QueueEncodingPreference: String, Sendable, CaseIterable { case auto, native, compat }

    /// What the kernel does with packets that should be queued while no daemon listens.
    public enum AbsentDaemonBehaviour: String, Sendable, CaseIterable {
        /// Queue rule carries `bypass`: packets continue to the static ruleset's default policy.
        case defaultPolicy = "default-policy"
        /// No `bypass`: the kernel drops what it cannot queue (fail-closed).
        case drop
    }

    /// What the daemon does with the first packet of a flow nobody signaled.
    public enum UnsignaledBehaviour: String, Sendable, CaseIterable {
        /// Drop it here (strict CSP gateway).
        case drop
        /// Let the static ruleset's default policy decide (legacy hosts keep working as before).
        case defaultPolicy = "default-policy"
        /// Admit it like a signaled flow with `legacy-lifetime`.
        case admit
        /// Admit it when its source is inside this site (`inside`), drop it otherwise: a home or
        /// office gateway, where every LAN application works as before and nothing comes in
        /// unasked (incoming flows come through CSP, NAT-PMP or PCP).
        case admitInside = "admit-inside"
    }

    /// Which SETUPs flagged "the responder may not speak CSP" this middlebox decides and answers
    /// itself (docs/PROTOCOL.md 6.9).
    public enum LegacyResponderAnswering: String, Sendable, CaseIterable {
        /// Only for flows whose initiator is inside this site (`inside`): a host here reaching an
        /// ordinary server out there. Never for flows into the site: that would open a path to
        /// an inside server without its consent.
        case inside
        /// For every flow the policy admits (a middlebox whose whole policy is its rules).
        case any
        /// Never: flagged SETUPs are treated like any other.
        case never
    }

    // [daemon]
    public var queueNumber: UInt16 = 0
    public var queueCount: UInt16 = 1
    /// The NFQUEUE for signaling from proved addresses and answers inside conntrack (chain
    /// enqueue_proved); nil: the number after the last of `queueNumber`'s fan-out.
    public var provedQueue: UInt16?
    public var provedQueueNumber: UInt16 { provedQueue ?? queueNumber &+ queueCount }
    public var encoding: QueueEncodingPreference = .auto
    public var onDaemonAbsent: AbsentDaemonBehaviour = .defaultPolicy
    public var controlSocket = "/run/midcom/control.sock"
    /// Groups (names or numbers) whose members may read (`midctl status`, `sessions`, `show`) or
    /// also change (`delete`, `flush`) through the control socket; root always may.
    public var controlReadGroup: String?
    public var controlAdminGroup: String?
    /// Packets the kernel holds for us per queue before it drops (or, with `queueFailOpen`, accepts).
    public var queueMaximumLength: UInt32 = 4096
    /// NFQA_CFG_F_FAIL_OPEN: when the queue is full the kernel accepts instead of dropping.
    public var queueFailOpen = false
    /// Netlink receive buffer per queue socket, bytes.
    public var queueReceiveBuffer = 8 << 20
    public var cspPort: UInt16 = CSPMessage.defaultPort
    public var middleboxName = "midcom"
    /// Stable middlebox ID for records (PROTOCOL.md: SHOULD survive restarts); nil = random per start.
    public var middleboxID: UInt64?
    public var table = "midcom"
    /// Interfaces whose forwarded traffic the kernel's flowtable may carry: established connections
    /// of admitted flows between them are offloaded to its ingress fast path (nft-rules/midcom.nft,
    /// chain offload_admitted). Empty: no flowtable (the default).
    public var flowtableDevices: [String] = []

    // [policy]
    public var defaultAction: PolicyAction = .admit
    public var unsignaled: UnsignaledBehaviour = .drop
    public var defaultLifetime: UInt32 = 60
    public var maximumLifetime: UInt32 = 3600
    public var legacyLifetime: UInt32 = 30
    /// How long a SETUP may wait for its answer before the pending session is forgotten.
    public var pendingTimeout: UInt32 = 30
    /// Seconds a moved session's old admission stays after its REBIND took effect: packets
    /// still in flight from the old address pass, then it goes with its connections.
    public var rebindGrace: UInt32 = 2
    /// Seconds the kernel keeps dropping an unsignaled flow after its first packet was dropped
    /// (0: every packet of such a flow is queued and judged again).
    public var dropCacheLifetime: UInt32 = 10
    public var maximumSessions = 1_000_000
    public var legacyResponders: LegacyResponderAnswering = .inside
    /// `inside` as written; nil: [nat]'s internal prefixes (and fc00::/7), else the RFC 1918 and
    /// unique-local prefixes.
    public var insidePrefixesAsWritten: [IPPrefix]?
    /// This site's own addresses: the initiators for which `legacy-responders = inside` answers.
    public var insidePrefixes: [IPPrefix] {
        if let insidePrefixesAsWritten { return insidePrefixesAsWritten }
        let uniqueLocal = IPPrefix("fc00::/7").map { [$0] } ?? []
        if let nat { return nat.internalPrefixes + uniqueLocal }
        return ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"].compactMap(IPPrefix.init) + uniqueLocal
    }
    public func isInside(_ address: IPAddress) -> Bool { insidePrefixes.contains { $0.contains(address) } }
    public var rules: [PolicyRule] = []

    // [nat]
    public var nat: NATConfiguration?

    // [metrics]
    /// Where the Prometheus endpoint listens (`GET /metrics`); nil: no endpoint (the default).
    public var metricsListen: CSPEndpoint?

    // [trust], [[known-key]]
    public var trust = TrustConfiguration()
    public var pushback = PushbackConfiguration()
    // [relay]
    public var relay = RelayConfiguration()

    public init() {}

    public static let defaultPath = "/etc/midcom/midcomd.conf"

    /// Parses and validates a configuration file. Unknown sections and keys are errors (a typo
    /// must not silently fall back to a default on a firewall).
    public init(path: String, text: String) throws(ConfigError) {
        try self.init(file: try ConfigFile(path: path, text: text))
    }

    public init(file: ConfigFile) throws(ConfigError) {
        self.init()
        let path = file.path
        var defaultLifetimeLine: Int?
        for section in file.tables {
            var reader = TableReader(path: path, table: section)
            let repeated = ["rule", "known-key"].contains(section.name)
            if !section.name.isEmpty, section.isArrayElement != repeated {
                throw ConfigError(
                    path: path, line: section.line,
                    message: repeated ? "[\(section.name)] is a repeated table" : "[[\(section.name)]] is not a repeated table",
                    fix: repeated ? "write [[\(section.name)]]" : "write [\(section.name)]")
            }
            switch section.name {
            case "":
                if let first = section.values.first {
                    throw ConfigError(
                        path: path, line: first.value.line, message: "'\(first.key)' is outside any section",
                        fix: "put it under [daemon] or [policy]")
                }
            case "daemon":
                try readDaemon(&reader)
            case "policy":
                try readPolicy(&reader, section)
                defaultLifetimeLine = section.value("default-lifetime")?.line
            case "rule":
                rules.append(try PolicyRule(reading: &reader, index: rules.count))
                try reader.rejectUnknownKeys()
            case "nat":
                nat = try NATConfiguration(reading: &reader)
                try reader.rejectUnknownKeys()
            case "trust":
                try trust.read(&reader)
            case "pushback":
                try pushback.read(&reader)
            case "relay":
                try relay.read(&reader)
            case "metrics":
                if let v = try reader.raw("listen") {
                    guard let endpoint = CSPEndpoint(parsing: v.text), endpoint.port != 0 else {
                        throw reader.error(v, "'\(v.text)' is not an address:port", fix: "write e.g. listen = \"127.0.0.1:9727\"")
                    }
                    metricsListen = endpoint
                }
                try reader.rejectUnknownKeys()
            case "known-key":
                trust.knownKeys.append(try KnownKey(reading: &reader, index: trust.knownKeys.count))
            default:
                throw ConfigError(
                    path: path, line: section.line, message: "unknown section [\(section.name)]",
                    fix: "valid sections are [daemon], [policy], [nat], [trust], [pushback], [relay], [metrics], [[rule]] and [[known-key]]")
            }
        }
        try checkRelayRules(file)
        let needsKeys = trust.signatures == .knownKeys || rules.contains { $0.signatures == .knownKeys }
        if needsKeys, trust.knownKeys.isEmpty {
            let line = file.tables.first { $0.name == "trust" }?.value("signatures")?.line ?? 0
            throw ConfigError(
                path: path, line: line, message: "signatures = known-keys, but no [[known-key]] is listed: nothing could pass",
                fix: "add a [[known-key]] table with key = \"csp-ed25519 ...\" per trusted host, or use any-key")
        }
        if defaultLifetime > maximumLifetime {
            // An explicit default above the maximum is a contradiction; the built-in default simply
            // follows a lower maximum (a max-lifetime of 30 must not need a default-lifetime line).
            guard let line = defaultLifetimeLine else {
                defaultLifetime = maximumLifetime
                return
            }
            throw ConfigError(
                path: path, line: line, message: "default-lifetime \(defaultLifetime) exceeds max-lifetime \(maximumLifetime)",
                fix: "lower default-lifetime or raise max-lifetime in [policy]")
        }
    }

    /// What `midcomd --check` refuses about relaying (docs/ARCHITECTURE.md, "Relayed sessions"):
    /// a `relay` rule while `[relay]` is not enabled, one that is not for TCP (hops are TCP
    /// connections), and `relay-mode = "terminating"` unless `[relay] terminating` allows it.
    /// Whether `listen` names addresses of this box is midcomd's to check (it needs the kernel).
    private func checkRelayRules(_ file: ConfigFile) throws(ConfigError) {
        let path = file.path
        let tables = file.tables.filter { $0.name == "rule" }
        for (rule, table) in zip(rules, tables) where rule.action == .relay {
            let actionLine = table.value("action")?.line ?? table.line
            guard relay.enabled else {
                throw ConfigError(
                    path: path, line: actionLine, message: "[[rule]] '\(rule.name)' relays, but [relay] is not enabled",
                    fix: "add [relay] with enabled = true and listen = [\"<an address of this box>:\(RelayConfiguration.defaultPort)\"]")
            }
            guard rule.proto == .tcp else {
                throw ConfigError(
                    path: path, line: table.value("proto")?.line ?? table.line,
                    message: rule.proto.map { "[[rule]] '\(rule.name)' relays \($0) flows: relays carry TCP only" }
                        ?? "[[rule]] '\(rule.name)' relays every protocol: relays carry TCP only",
                    fix: "write proto = \"tcp\" in this rule (another rule may reject or admit the rest)")
            }
            if rule.relayMode == .terminating, !relay.terminating {
                throw ConfigError(
                    path: path, line: table.value("relay-mode")?.line ?? actionLine,
                    message: "[[rule]] '\(rule.name)' relays through a terminating relay, but [relay] terminating is false",
                    fix: "set terminating = true in [relay] (the relay then reads these flows), or use relay-mode = \"blind\"")
            }
        }
    }

    /// What Linux accepts as an interface name (dev_valid_name): 1 to 15 octets, not "." or "..",
    /// no '/', ':' or white space.
    static func isInterfaceName(_ name: String) -> Bool {
        let octets = Array(name.utf8)
        guard (1...15).contains(octets.count), name != ".", name != ".." else { return false }
        return !octets.contains { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 <= 0x20 || $0 == 0x7F }
    }

    /// `[daemon]`: queue, sockets, identity, table.
    private mutating func readDaemon(_ reader: inout TableReader) throws(ConfigError) {
        queueNumber = try reader.integer("queue", default: queueNumber)
        queueCount = try reader.integer("queue-count", default: queueCount, range: 1...64)
        if reader.table.value("proved-queue") != nil {
            provedQueue = try reader.integer("proved-queue", default: UInt16(0))
        }
        encoding = try reader.choice("nfqueue-encoding", default: encoding)
        onDaemonAbsent = try reader.choice("on-daemon-absent", default: onDaemonAbsent)
        controlSocket = try reader.string("control-socket", default: controlSocket)
        controlReadGroup = try reader.optionalString("control-read-group")
        controlAdminGroup = try reader.optionalString("control-admin-group")
        queueMaximumLength = try reader.integer("queue-max-length", default: queueMaximumLength, range: 16...1_048_576)
        queueFailOpen = try reader.boolean("queue-fail-open", default: queueFailOpen)
        queueReceiveBuffer = try reader.integer("queue-receive-buffer", default: queueReceiveBuffer, range: 65536...(1 << 30))
        cspPort = try reader.integer("csp-port", default: cspPort, range: 1...65535)
        middleboxName = try reader.string("name", default: middleboxName)
        if let v = try reader.raw("id") {
            guard v.text.count == 16, let id = UInt64(v.text, radix: 16) else {
                throw reader.error(v, "id must be 16 hex digits, found '\(v.text)'", fix: "write e.g. id = \"4d6964636f6d0001\" (unique per middlebox)")
            }
            middleboxID = id
        }
        table = try reader.string("table", default: table)
        if let (names, v) = try reader.stringList("flowtable-devices") {
            let fix = "write the interfaces the gateway forwards between, e.g. flowtable-devices = [\"lan0\", \"wan0\"]"
            for name in names where !Self.isInterfaceName(name) {
                throw reader.error(v, "'\(name)' is not an interface name (1 to 15 characters, no '/', ':' or space)", fix: fix)
            }
            if let repeated = names.first(where: { name in names.filter { $0 == name }.count > 1 }) {
                throw reader.error(v, "interface '\(repeated)' is named twice", fix: "name each interface once")
            }
            flowtableDevices = names
        }
        try reader.rejectUnknownKeys()
    }

    /// `[policy]`: defaults, lifetimes, limits.
    private mutating func readPolicy(_ reader: inout TableReader, _ section: ConfigFile.Table) throws(ConfigError) {
        defaultAction = try reader.choice("default", default: defaultAction)
        unsignaled = try reader.choice("unsignaled", default: unsignaled)
        defaultLifetime = try reader.integer("default-lifetime", default: defaultLifetime, range: 1...86400)
        maximumLifetime = try reader.integer("max-lifetime", default: maximumLifetime, range: 1...604800)
        legacyLifetime = try reader.integer("legacy-lifetime", default: legacyLifetime, range: 1...86400)
        pendingTimeout = try reader.integer("pending-timeout", default: pendingTimeout, range: 1...300)
        rebindGrace = try reader.integer("rebind-grace", default: rebindGrace, range: 0...30)
        dropCacheLifetime = try reader.integer("drop-cache", default: dropCacheLifetime, range: 0...3600)
        maximumSessions = try reader.integer("max-sessions", default: maximumSessions, range: 1...50_000_000)
        legacyResponders = try reader.choice("legacy-responders", default: legacyResponders)
        if let (parts, v) = try reader.stringList("inside") {
            var prefixes: [IPPrefix] = []
            for part in parts {
                guard let prefix = IPPrefix(part) else {
                    throw reader.error(v, "'\(part)' is not a prefix", fix: "write e.g. inside = [\"192.168.0.0/16\", \"2001:db8:1::/48\"]")
                }
                prefixes.append(prefix)
            }
            insidePrefixesAsWritten = prefixes
        }
        try reader.rejectUnknownKeys()
        if defaultAction == .redirect {
            throw ConfigError(
                path: reader.path, line: section.value("default")?.line ?? section.line,
                message: "the default action cannot be 'redirect' (it needs a target)",
                fix: "use admit or reject, and a [[rule]] with redirect-to")
        }
        if defaultAction == .relay {
            throw ConfigError(
                path: reader.path, line: section.value("default")?.line ?? section.line,
                message: "the default action cannot be 'relay' (relays carry TCP only)",
                fix: "use admit or reject, and a [[rule]] with proto = \"tcp\" and action = \"relay\"")
        }
    }
}

/// `[nat]`: this middlebox is an IPv4 NAT. Signaled flows from `internal` prefixes get an
/// explicit mapping to `externalAddress` that the host learns through MAPPED-ADDRESS.
public struct NATConfiguration: Sendable, Equatable {
    public var externalAddress: IPAddress
    /// Sources behind the NAT; flows between two internal addresses are not translated.
    public var internalPrefixes: [IPPrefix]
    /// External ports handed out when a host's own port is taken.
    public var ports: ClosedRange<UInt16>
    /// Serve NAT-PMP (RFC 6886) to inside hosts on UDP 5351 (issue 12).
    public var portMapping = true

    public init(externalAddress: IPAddress, internalPrefixes: [IPPrefix], ports: ClosedRange<UInt16> = 20000...29999) {
        self.externalAddress = externalAddress
        self.internalPrefixes = internalPrefixes
        self.ports = ports
    }

    public func isInternal(_ address: IPAddress) -> Bool { internalPrefixes.contains { $0.contains(address) } }

    init(reading reader: inout TableReader) throws(ConfigError) {
        let path = reader.path
        guard let v = try reader.raw("external-address") else {
            throw ConfigError(path: path, line: reader.table.line, message: "[nat] needs external-address", fix: "add external-address = \"<the gateway's outside IPv4 address>\"")
        }
        guard let address = IPAddress(v.text), address.family == .ipv4 else {
            throw ConfigError(path: path, line: v.line, message: "'\(v.text)' is not an IPv4 address", fix: "NAT is IPv4 only: write e.g. external-address = \"198.51.100.1\"")
        }
        externalAddress = address
        internalPrefixes = []
        if let (parts, v) = try reader.stringList("internal") {
            for part in parts {
                guard let prefix = IPPrefix(part), prefix.address.family == .ipv4 else {
                    throw ConfigError(path: path, line: v.line, message: "'\(part)' is not an IPv4 prefix", fix: "write e.g. internal = \"10.0.0.0/8, 192.168.0.0/16\"")
                }
                internalPrefixes.append(prefix)
            }
        } else {
            internalPrefixes = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"].compactMap(IPPrefix.init)
        }
        ports = 20000...29999
        if let v = try reader.raw("port-range") {
            let bounds = v.text.split(separator: "-").map { UInt16($0.trimmingSpaces) }
            guard bounds.count == 2, let low = bounds[0], let high = bounds[1], low > 0, low <= high else {
                throw ConfigError(path: path, line: v.line, message: "'\(v.text)' is not a port range", fix: "write e.g. port-range = \"20000-29999\"")
            }
            ports = low...high
        }
        portMapping = try reader.boolean("port-mapping", default: portMapping)
    }
}

/// Reads typed values out of one table, remembering which keys were used.
struct TableReader {
    let path: String
    let table: ConfigFile.Table
    private(set) var used: Set<String> = []

    init(path: String, table: ConfigFile.Table) {
        self.path = path
        self.table = table
    }

    /// A value of any kind (for the keys that take more than one: `port` 5000 or "5000-5100").
    mutating func anyValue(_ key: String) -> ConfigFile.Value? {
        used.insert(key)
        return table.value(key)
    }

    /// A string value; another kind is an error that says how to write it.
    mutating func raw(_ key: String) throws(ConfigError) -> ConfigFile.Value? {
        guard let v = anyValue(key) else { return nil }
        guard case .string = v.kind else { throw mistyped(key, v, expected: "a string", example: "\(key) = \"\(v.text)\"") }
        return v
    }

    func error(_ value: ConfigFile.Value, _ message: String, fix: String) -> ConfigError {
        ConfigError(path: path, line: value.line, message: message, fix: fix)
    }

    func mistyped(_ key: String, _ value: ConfigFile.Value, expected: String, example: String) -> ConfigError {
        error(value, "'\(key)' must be \(expected), found \(value.typeName) (\(value.text))", fix: "write \(example)")
    }

    mutating func string(_ key: String, default fallback: String) throws(ConfigError) -> String {
        guard let v = try raw(key) else { return fallback }
        guard !v.text.isEmpty else { throw error(v, "'\(key)' is empty", fix: "give it a value or remove the line") }
        return v.text
    }

    mutating func optionalString(_ key: String) throws(ConfigError) -> String? { try raw(key)?.text }

    /// Prefixes as an array of strings, or one string with commas (`"10.0.0.0/8, 192.168.0.0/16"`).
    mutating func stringList(_ key: String) throws(ConfigError) -> (items: [String], value: ConfigFile.Value)? {
        guard let v = anyValue(key) else { return nil }
        switch v.kind {
        case .string(let text):
            return (text.split(separator: ",").map(\.trimmingSpaces), v)
        case .array(let items):
            var strings: [String] = []
            for item in items {
                guard case .string(let text) = item.kind else {
                    throw mistyped(key, item, expected: "a list of strings", example: "\(key) = [\"10.0.0.0/8\", \"192.168.0.0/16\"]")
                }
                strings.append(text.trimmingSpaces)
            }
            return (strings, v)
        default:
            throw mistyped(key, v, expected: "a list of strings", example: "\(key) = [\"10.0.0.0/8\", \"192.168.0.0/16\"]")
        }
    }

    mutating func integer<T: FixedWidthInteger>(_ key: String, default fallback: T, range: ClosedRange<T>? = nil)
        throws(ConfigError) -> T
    {
        guard let v = anyValue(key) else { return fallback }
        guard case .integer(let number) = v.kind else {
            let example = Int64(v.text) != nil ? "\(key) = \(v.text) (no quotes)" : "\(key) = \(fallback)"
            throw mistyped(key, v, expected: "a whole number", example: example)
        }
        guard let n = T(exactly: number) else {
            throw error(v, "'\(key)' = \(number) is out of range", fix: "use a value from \(range?.lowerBound ?? T.min) to \(range?.upperBound ?? T.max)")
        }
        if let range, !range.contains(n) {
            throw error(v, "'\(key)' = \(n) is out of range", fix: "use a value from \(range.lowerBound) to \(range.upperBound)")
        }
        return n
    }

    mutating func boolean(_ key: String, default fallback: Bool) throws(ConfigError) -> Bool {
        guard let v = anyValue(key) else { return fallback }
        guard case .boolean(let b) = v.kind else {
            throw mistyped(key, v, expected: "true or false", example: "\(key) = \(fallback)")
        }
        return b
    }

    mutating func choice<T: RawRepresentable & CaseIterable>(_ key: String, default fallback: T) throws(ConfigError) -> T
    where T.RawValue == String {
        guard let v = anyValue(key) else { return fallback }
        let options = T.allCases.map(\.rawValue).joined(separator: ", ")
        guard case .string(let text) = v.kind else {
            throw mistyped(key, v, expected: "one of \(options) in quotes", example: "\(key) = \"\(fallback.rawValue)\"")
        }
        guard let c = T(rawValue: text) else {
            throw error(v, "'\(key)' cannot be '\(text)'", fix: "use one of: \(options)")
        }
        return c
    }

    func rejectUnknownKeys() throws(ConfigError) {
        for (key, value) in table.values where !used.contains(key) {
            let known = used.sorted().joined(separator: ", ")
            let suggestion = used.min { editDistance($0, key) < editDistance($1, key) }
            let hint = suggestion.map { editDistance($0, key) <= 2 ? "did you mean '\($0)'? " : "" } ?? ""
            throw ConfigError(
                path: path, line: value.line, message: "unknown key '\(key)' in [\(table.name)]",
                fix: "\(hint)valid keys here: \(known)")
        }
    }
}

/// Levenshtein distance, for "did you mean" hints on typos.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    var previous = Array(0...b.count)
    for i in 1...max(a.count, 1) where !a.isEmpty {
        var current = [i] + Array(repeating: 0, count: b.count)
        for j in 1...max(b.count, 1) where !b.isEmpty {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        previous = current
    }
    return a.isEmpty ? b.count : previous[b.count]
}
