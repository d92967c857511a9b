import CSPWire

/// An IPv4 address and port. The NAT maps of the ruleset are IPv4 by schema (`ipv4_addr .
/// inet_service`), so NAT rules are built from this type: an IPv6 endpoint cannot become a NAT key
/// (it used to turn into 0.0.0.0 silently).
public struct IPv4Endpoint: Hashable, Sendable, CustomStringConvertible {
    public var address: UInt32
    public var port: UInt16

    public init(address: UInt32, port: UInt16) {
        self.address = address
        self.port = port
    }

    /// nil for an IPv6 endpoint.
    public init?(_ endpoint: CSPEndpoint) {
        guard let value = endpoint.address.ipv4Value else { return nil }
        self.init(address: value, port: endpoint.port)
    }

    public var endpoint: CSPEndpoint { CSPEndpoint(address: IPAddress(ipv4: address), port: port) }
    public var description: String { endpoint.description }
}

/// Outgoing NAT traversal: packets from `internal` leave with the source `external`.
public struct SourceNAT: Hashable, Sendable {
    public var proto: IPProtocol
    public var `internal`: IPv4Endpoint
    public var external: IPv4Endpoint

    public init(proto: IPProtocol, internal: IPv4Endpoint, external: IPv4Endpoint) {
        self.proto = proto
        self.internal = `internal`
        self.external = external
    }
}

/// Incoming NAT traversal: packets to `external` are delivered to `internal`.
public struct DestinationNAT: Hashable, Sendable {
    public var proto: IPProtocol
    public var external: IPv4Endpoint
    public var `internal`: IPv4Endpoint

    public init(proto: IPProtocol, external: IPv4Endpoint, internal: IPv4Endpoint) {
        self.proto = proto
        self.external = external
        self.internal = `internal`
    }
}

/// A victim's DENY, granted (docs/PROTOCOL.md 6.8): drop what `source`/`prefixLength` sends to
/// `victim` (protocol and destination port: nil = any). Never for another destination than the
/// requester's own validated address.
public struct DenyFilter: Hashable, Sendable, CustomStringConvertible {
    /// The prefix's first address (host bits zero).
    public var source: IPAddress
    public var prefixLength: UInt8
    public var proto: IPProtocol?
    public var victim: IPAddress
    public var port: UInt16?
    /// Limit to the ruleset's rate (sets ratelimit4/6) instead of dropping everything.
    public var rateLimited: Bool

    public init(source: IPAddress, prefixLength: UInt8, proto: IPProtocol?, victim: IPAddress, port: UInt16?, rateLimited: Bool = false) {
        self.source = source.masked(to: prefixLength)
        self.prefixLength = prefixLength
        self.proto = proto
        self.victim = victim
        self.port = port
        self.rateLimited = rateLimited
    }

    /// The prefix's last address (host bits one).
    public var sourceEnd: IPAddress { source.filled(from: prefixLength) }

    public var description: String {
        "\(source)/\(prefixLength) \(proto.map { "\($0)" } ?? "any") -> \(victim)\(port.map { ":\($0)" } ?? "")\(rateLimited ? " (rate-limited)" : "")"
    }
}

/// One piece of kernel state a session needs. What a session needs is derived from its state
/// (`Session.kernelObjects`), never stored beside it, so it cannot drift from what the engine knows.
public enum KernelObject: Hashable, Sendable {
    /// An element of one of the admit/pinhole sets: packets of the flow (initiator → responder)
    /// pass; replies ride conntrack.
    case admission(FlowTuple)
    case sourceNAT(SourceNAT)
    case destinationNAT(DestinationNAT)
    /// A DENY filter (not a session's: the engine's deny table owns it).
    case denyFilter(DenyFilter)
}

/// Who an element belongs to, written into the element's comment so that a restarted midcomd
/// adopts the session under its own ID (docs/ARCHITECTURE.md, "Restart").
public struct ElementTag: Hashable, Sendable {
    public enum Kind: Character, Sendable {
        case outgoing = "o"
        case incoming = "i"
        case legacy = "l"
        case redirect = "r"
        /// Relayed for a mobile host away from home (docs/PROTOCOL.md 10.9).
        case relay = "m"
        /// A DENY filter; the ID is the DENY's session ID.
        case deny = "d"

        /// The kind's letter as an ASCII octet (a switch: `Character.asciiValue` per element cost).
        var octet: UInt8 {
            switch self {
            case .outgoing: UInt8(ascii: "o")
            case .incoming: UInt8(ascii: "i")
            case .legacy: UInt8(ascii: "l")
            case .redirect: UInt8(ascii: "r")
            case .relay: UInt8(ascii: "m")
            case .deny: UInt8(ascii: "d")
            }
        }
    }

    public var sessionID: UInt64
    public var kind: Kind
    public var application: String?

    public init(sessionID: UInt64, kind: Kind, application: String? = nil) {
        self.sessionID = sessionID
        self.kind = kind
        self.application = application
    }

    /// nft limits a comment to 128 octets; the application is cut to keep the tag within it.
    static let maximumApplicationLength = 96

    /// "csp <16 hex digits> <kind>[ <application>]"; the application keeps printable ASCII only.
    public var comment: String {
        // Written in place, not interpolated: one per element midcomd installs.
        var text = String(unsafeUninitializedCapacity: Self.fixedCommentLength) { writeFixedComment(into: $0) }
        if let application, !application.isEmpty {
            let printable = application.unicodeScalars.filter { $0.value >= 0x20 && $0.value < 0x7f }
            text += " " + String(String.UnicodeScalarView(printable.prefix(Self.maximumApplicationLength)))
        }
        return text
    }

    /// "csp <16 hex digits> <kind>": the comment without an application.
    public static let fixedCommentLength = 22

    /// Writes the comment's first `fixedCommentLength` octets into `buffer`; returns how many.
    public func writeFixedComment(into buffer: UnsafeMutableBufferPointer<UInt8>) -> Int {
        (buffer[0], buffer[1], buffer[2], buffer[3]) = (0x63, 0x73, 0x70, 0x20)  // "csp "
        writeHex(sessionID, into: buffer, at: 4)
        (buffer[20], buffer[21]) = (0x20, kind.octet)
        return Self.fixedCommentLength
    }

    public init?(comment: String) {
        let parts = comment.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)
        guard parts.count >= 3, parts[0] == "csp", parts[1].count == 16, let id = UInt64(parts[1], radix: 16),
            parts[2].count == 1, let kind = Kind(rawValue: parts[2].first!)
        else { return nil }
        self.init(sessionID: id, kind: kind, application: parts.count == 4 ? String(parts[3]) : nil)
    }
}

/// A change the kernel adapter must make. The engine decides; the daemon programs nftables.
public enum KernelChange: Hashable, Sendable {
    /// Put the object into the kernel with this lifetime (the first time for this session).
    case install(KernelObject, lifetime: UInt32, tag: ElementTag?)
    /// The object is already there: replace its timeout (a refresh).
    case refresh(KernelObject, lifetime: UInt32, tag: ElementTag?)
    /// Take it out. Removing an admission also ends the connections it let in (conntrack).
    case remove(KernelObject)
    /// Drop the flow's packets in the kernel for a while (the drop cache): an unsignaled flow that
    /// was refused once must not send every further packet to user space.
    case block(FlowTuple, lifetime: UInt32)
    /// The address answered a CHALLENGE: its signaling goes to the proved-sources queue for the
    /// lifetime, ahead of the unproved (possibly spoofed) requests a flood would fill the first
    /// queue with (nft-rules/midcom.nft, sets csp_proved4/6).
    case prove(IPAddress, lifetime: UInt32)

    /// The changes that take the kernel from `old` to `new`: removals first (a NAT key that moves
    /// to another host must be free before it is added again), then new objects; objects in both
    /// are refreshed when `refreshKept`, else left alone.
    public static func diff(
        from old: [KernelObject], to new: [KernelObject], lifetime: UInt32, tag: ElementTag?, refreshKept: Bool
    ) -> [KernelChange] {
        var changes: [KernelChange] = []
        for object in old where !new.contains(object) { changes.append(.remove(object)) }
        for object in new {
            if !old.contains(object) {
                changes.append(.install(object, lifetime: lifetime, tag: tag))
            } else if refreshKept {
                changes.append(.refresh(object, lifetime: lifetime, tag: tag))
            }
        }
        return changes
    }
}
