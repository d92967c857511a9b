import CSPWire

/// What the gateway does with a signaled flow.
public enum PolicyAction: String, Sendable, CaseIterable, Equatable {
    case admit
    case reject
    case redirect
    /// The flow passes only through this middlebox's relay (docs/PROTOCOL.md 14.2): the host is
    /// offered a RELAY, or refused (67, 68) when it does not allow relaying.
    case relay
}

/// An address prefix such as `10.0.2.0/24` or `2001:db8::/32`.
public struct IPPrefix: Sendable, Hashable, CustomStringConvertible {
    public var address: IPAddress
    public var length: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1)
        guard let first = parts.first, let address = IPAddress(String(first)) else { return nil }
        let bits = address.family == .ipv4 ? 32 : 128
        if parts.count == 2 {
            guard let length = Int(parts[1]), (0...bits).contains(length) else { return nil }
            self.length = length
        } else {
            self.length = bits
        }
        self.address = address
    }

    public func contains(_ other: IPAddress) -> Bool { other.isIn(address, prefixLength: length) }
    public var description: String { "\(address)/\(length)" }
}

/// One `[[rule]]`: the first rule whose every given match holds decides.
public struct PolicyRule: Sendable, Equatable {
    public var name: String
    public var proto: IPProtocol?
    public var source: IPPrefix?
    public var destination: IPPrefix?
    public var ports: ClosedRange<UInt16>?
    public var application: String?
    /// Matches only SETUPs that open an incoming pinhole (requested action `listen`), or only outgoing ones.
    public var incoming: Bool?
    public var action: PolicyAction
    public var reason: String?
    public var redirectTarget: CSPEndpoint?
    /// Upper bound on the lifetime this rule grants (on top of the global maximum).
    public var maximumLifetime: UInt32?
    /// Signatures the flows this rule matches need; nil: the [trust] setting.
    public var signatures: SignatureRequirement?
    /// How a `relay` rule's flows pass the relay (`relay-mode`); meaningless for other actions.
    public var relayMode: RelayMode = .blind

    public init(
        name: String, proto: IPProtocol? = nil, source: IPPrefix? = nil, destination: IPPrefix? = nil,
        ports: ClosedRange<UInt16>? = nil, application: String? = nil, incoming: Bool? = nil, action: PolicyAction,
        reason: String? = nil, redirectTarget: CSPEndpoint? = nil, maximumLifetime: UInt32? = nil,
        relayMode: RelayMode = .blind
    ) {
        self.name = name
        self.proto = proto
        self.source = source
        self.destination = destination
        self.ports = ports
        self.application = application
        self.incoming = incoming
        self.action = action
        self.reason = reason
        self.redirectTarget = redirectTarget
        self.maximumLifetime = maximumLifetime
        self.relayMode = relayMode
    }

    public func matches(_ flow: FlowTuple, application app: String?, incoming isIncoming: Bool) -> Bool {
        if let proto, proto != flow.proto { return false }
        if let source, !source.contains(flow.source) { return false }
        if let destination, !destination.contains(flow.destination) { return false }
        if let ports, !ports.contains(flow.destinationPort) { return false }
        if let application, application != app { return false }
        if let incoming, incoming != isIncoming { return false }
        return true
    }

    init(reading reader: inout TableReader, index: Int) throws(ConfigError) {
        let path = reader.path
        func fail(_ value: ConfigFile.Value, _ message: String, _ fix: String) -> ConfigError {
            ConfigError(path: path, line: value.line, message: message, fix: fix)
        }
        name = try reader.optionalString("name") ?? "rule-\(index + 1)"
        if let v = reader.anyValue("proto") {
            switch v.kind {
            case .string(let name):
                guard let p = IPProtocol(name: name) else { throw fail(v, "unknown protocol '\(name)'", "use \"tcp\", \"udp\", \"sctp\" or a number") }
                proto = p
            case .integer(let number):
                guard let n = UInt8(exactly: number) else { throw fail(v, "protocol \(number) is out of range", "use a number from 0 to 255") }
                proto = IPProtocol(rawValue: n)
            default:
                throw fail(v, "'proto' must be a protocol name or number, found \(v.typeName)", "write proto = \"tcp\"")
            }
        }
        if let v = try reader.raw("source") {
            guard let p = IPPrefix(v.text) else { throw fail(v, "'\(v.text)' is not an address prefix", "write e.g. 10.0.1.0/24 or 2001:db8::/64") }
            source = p
        }
        if let v = try reader.raw("destination") {
            guard let p = IPPrefix(v.text) else { throw fail(v, "'\(v.text)' is not an address prefix", "write e.g. 10.0.2.0/24 or 2001:db8::/64") }
            destination = p
        }
        if let v = reader.anyValue("port") {
            switch v.kind {
            case .integer(let number):
                guard let port = UInt16(exactly: number) else { throw fail(v, "port \(number) is out of range", "use 0 to 65535") }
                ports = port...port
            case .string(let text):
                let bounds = text.split(separator: "-", maxSplits: 1).map { UInt16($0.trimmingSpaces) }
                guard let low = bounds.first ?? nil, let high = bounds.last ?? nil, low <= high else {
                    throw fail(v, "'\(text)' is not a port or port range", "write e.g. port = 5000 or port = \"5000-5100\"")
                }
                ports = low...high
            default:
                throw fail(v, "'port' must be a number or a range in quotes, found \(v.typeName)", "write e.g. port = 5000 or port = \"5000-5100\"")
            }
        }
        application = try reader.optionalString("application")
        if let v = try reader.raw("direction") {
            switch v.text {
            case "incoming": incoming = true
            case "outgoing": incoming = false
            case "any": incoming = nil
            default: throw fail(v, "direction cannot be '\(v.text)'", "use incoming, outgoing or any")
            }
        }
        guard table(reader).value("action") != nil else {
            throw ConfigError(path: path, line: reader.table.line, message: "[[rule]] '\(name)' has no action", fix: "add action = \"admit\", \"reject\", \"redirect\" or \"relay\"")
        }
        action = try reader.choice("action", default: PolicyAction.admit)
        reason = try reader.optionalString("reason")
        if let v = try reader.raw("redirect-to") {
            guard let e = CSPEndpoint(parsing: v.text) else {
                throw fail(v, "'\(v.text)' is not an address:port", "write e.g. redirect-to = \"10.0.3.2:3128\" or \"[2001:db8::3]:3128\"")
            }
            redirectTarget = e
        }
        if action == .redirect, redirectTarget == nil {
            throw ConfigError(path: path, line: reader.table.line, message: "[[rule]] '\(name)' redirects but has no target", fix: "add redirect-to = \"address:port\"")
        }
        if reader.table.value("max-lifetime") != nil {
            maximumLifetime = try reader.integer("max-lifetime", default: UInt32(300), range: 1...604800)
        }
        if reader.table.value("signatures") != nil {
            signatures = try reader.choice("signatures", default: SignatureRequirement.none)
        }
        if let v = reader.table.value("relay-mode") {
            relayMode = try reader.choice("relay-mode", default: relayMode)
            guard action == .relay else {
                throw fail(v, "[[rule]] '\(name)' has relay-mode but its action is '\(action.rawValue)'", "remove relay-mode, or write action = \"relay\"")
            }
        }
    }
}

private func table(_ reader: TableReader) -> ConfigFile.Table { reader.table }

/// The decision of the policy for one SETUP.
public struct PolicyDecision: Sendable, Equatable {
    public var action: PolicyAction
    public var ruleName: String?
    /// The deciding rule's position in the configuration; nil: the default action decided.
    public var ruleIndex: Int?
    public var lifetime: UInt32
    public var reason: String?
    public var redirectTarget: CSPEndpoint?
    /// What signatures the flow needs (the rule's, else the [trust] default).
    public var signatures: SignatureRequirement = .none
    /// For `relay`: the deciding rule's relay mode.
    public var relayMode: RelayMode = .blind
}

/// First-match rule evaluation with lifetime clamping (PCP-style: the middlebox, not the host,
/// has the last word on how long state lives).
///
/// A class holding the configuration immutably: the engine reads it for every request, and a
/// struct of 544 octets read through the engine's `inout self` was copied whole (every reference
/// in it retained and released) at each non-inlined use — figure 4's profile, docs/PERFORMANCE.md.
/// A reload replaces the policy, never changes it.
public final class Policy: Sendable {
    public let configuration: MidcomConfiguration

    public init(configuration: MidcomConfiguration) { self.configuration = configuration }

    public func decide(flow: FlowTuple, application: String?, incoming: Bool, requestedLifetime: UInt32?) -> PolicyDecision {
        let index = configuration.rules.firstIndex { $0.matches(flow, application: application, incoming: incoming) }
        let rule = index.map { configuration.rules[$0] }
        let action = rule?.action ?? configuration.defaultAction
        var lifetime = requestedLifetime ?? configuration.defaultLifetime
        if lifetime == 0 { lifetime = configuration.defaultLifetime }
        lifetime = min(lifetime, configuration.maximumLifetime, rule?.maximumLifetime ?? .max)
        let reason: String? =
            switch action {
            case .reject: rule?.reason ?? (rule == nil ? "not admitted by default policy" : "forbidden by rule '\(rule!.name)'")
            default: rule?.reason
            }
        var decision = PolicyDecision(
            action: action, ruleName: rule?.name, lifetime: lifetime, reason: reason, redirectTarget: rule?.redirectTarget,
            signatures: rule?.signatures ?? configuration.trust.signatures)
        decision.ruleIndex = index
        decision.relayMode = rule?.relayMode ?? .blind
        return decision
    }
}
