import CSPTrust
import CSPWire

/// Which signatures a request needs (docs/PROTOCOL.md 7; `signatures` in [trust] or a [[rule]]).
public enum SignatureRequirement: String, Sendable, CaseIterable, Equatable {
    /// Unsigned requests are fine; a session without a key belongs to its flow's addresses.
    case none
    /// Signed by some key: the session belongs to that key (ownership, no authorization).
    case anyKey = "any-key"
    /// Signed by a key listed in a [[known-key]] whose source and application match.
    case knownKeys = "known-keys"
}

/// When a middlebox makes an address prove it receives what is sent to it (docs/PROTOCOL.md 6.6).
public enum ChallengePolicy: String, Sendable, CaseIterable, Equatable {
    /// Never: any source address is believed (only where every path to us is anti-spoofed).
    case never
    /// Every new session from an address not yet validated for the signing key; unsigned
    /// requests have no key to bind the proof to, so each of their new sessions is challenged.
    case newSources = "new-sources"
    /// Every new session, whatever the cache holds.
    case always
    /// Never while pending state is below `challenge-threshold`, then as new-sources (the
    /// SYN-cookie idea: stateless only when state is under pressure).
    case auto
}

/// A host key the operator trusts: `[[known-key]]` in midcomd.conf.
public struct KnownKey: Sendable, Equatable {
    public var name: String
    public var key: PublicKey
    /// The key is trusted only for requests from this prefix (nil: from anywhere).
    public var source: IPPrefix?
    /// The key is trusted only for this APPLICATION (nil: any).
    public var application: String?
    /// A mobile host of this site: its address at home. Away from home, it asks this middlebox
    /// for its flows and they are relayed here under the policy of that address
    /// (docs/PROTOCOL.md 10.9, off-path firewall for a mobile host).
    public var homeAddress: IPAddress?

    public init(name: String, key: PublicKey, source: IPPrefix? = nil, application: String? = nil, homeAddress: IPAddress? = nil) {
        self.name = name
        self.key = key
        self.source = source
        self.application = application
        self.homeAddress = homeAddress
    }

    public func allows(_ key: PublicKey, from address: IPAddress, application app: String?) -> Bool {
        guard key == self.key else { return false }
        if let source, !source.contains(address) { return false }
        if let application, application != app { return false }
        return true
    }

    init(reading reader: inout TableReader, index: Int) throws(ConfigError) {
        let path = reader.path
        name = try reader.optionalString("name") ?? "key-\(index + 1)"
        guard let v = try reader.raw("key") else {
            throw ConfigError(
                path: path, line: reader.table.line, message: "[[known-key]] '\(name)' has no key",
                fix: "add key = \"csp-ed25519 <64 hex digits>\" (what `csp keygen` printed)")
        }
        guard let parsed = PublicKey(text: v.text) else {
            throw reader.error(
                v, "'\(v.text)' is not a CSP public key", fix: "paste the line `csp keygen` printed: csp-ed25519 <64 hex digits>")
        }
        key = parsed
        if let v = try reader.raw("source") {
            guard let p = IPPrefix(v.text) else {
                throw reader.error(v, "'\(v.text)' is not an address prefix", fix: "write e.g. source = \"10.0.1.0/24\"")
            }
            source = p
        }
        application = try reader.optionalString("application")
        if let v = try reader.raw("home-address") {
            guard let a = IPAddress(v.text), a.family == .ipv4 else {
                throw reader.error(
                    v, "'\(v.text)' is not an IPv4 address",
                    fix: "write the mobile host's address at home, e.g. home-address = \"10.1.0.5\" (relays are IPv4: the NAT maps are)")
            }
            homeAddress = a
        }
        try reader.rejectUnknownKeys()
    }
}

/// `[trust]` and `[[known-key]]`: signatures, return routability and abuse limits.
public struct TrustConfiguration: Sendable, Equatable {
    /// The home address of a mobile host of this site, by its key (nil: not one of ours).
    public func homeAddress(of key: PublicKey?) -> IPAddress? {
        guard let key else { return nil }
        return knownKeys.first { $0.key == key && $0.homeAddress != nil }?.homeAddress
    }

    public var signatures: SignatureRequirement = .none
    public var knownKeys: [KnownKey] = []
    public var challenge: ChallengePolicy = .newSources
    /// Pending sessions above which `auto` starts challenging.
    public var challengeThreshold = 1000
    /// How long an address stays validated for a key after it answered a CHALLENGE.
    public var validatedLifetime: UInt32 = 300
    /// Pending sessions one source address may hold (state exhaustion, PROTOCOL.md 11).
    public var pendingPerSource = 64
    /// Pending sessions in all; beyond it new SETUPs get `resources-exhausted`.
    public var maximumPending = 65536
    /// Messages we originate (REJECT, CHALLENGE, ANNOUNCE) per destination address per second.
    public var repliesPerSource = 5
    /// ... and in all per second.
    public var repliesPerSecond = 50_000
    /// Accepted clock difference for TIMESTAMP, seconds (docs/PROTOCOL.md 7.3).
    public var timestampTolerance: UInt32 = 30
    /// Where the middlebox keeps its key and epoch (the unit's StateDirectory=).
    public var stateDirectory = "/var/lib/midcom"
    /// Sign our records and ANNOUNCEs.
    public var signRecords = true

    public init() {}

    mutating func read(_ reader: inout TableReader) throws(ConfigError) {
        signatures = try reader.choice("signatures", default: signatures)
        challenge = try reader.choice("challenge", default: challenge)
        challengeThreshold = try reader.integer("challenge-threshold", default: challengeThreshold, range: 0...10_000_000)
        validatedLifetime = try reader.integer("validated-lifetime", default: validatedLifetime, range: 1...86400)
        pendingPerSource = try reader.integer("pending-per-source", default: pendingPerSource, range: 1...1_000_000)
        maximumPending = try reader.integer("max-pending", default: maximumPending, range: 1...50_000_000)
        repliesPerSource = try reader.integer("replies-per-source", default: repliesPerSource, range: 1...10_000)
        repliesPerSecond = try reader.integer("replies-per-second", default: repliesPerSecond, range: 1...10_000_000)
        timestampTolerance = try reader.integer("timestamp-tolerance", default: timestampTolerance, range: 1...3600)
        stateDirectory = try reader.string("state-directory", default: stateDirectory)
        signRecords = try reader.boolean("sign-records", default: signRecords)
        try reader.rejectUnknownKeys()
    }
}
