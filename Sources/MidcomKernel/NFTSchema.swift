import CSPWire
import MidcomCore
import Netfilter

/// The sets and maps of `table inet midcom` that midcomd programs, defined once: their names, the
/// nft types of their keys (and data), and how a `KernelObject` becomes an element and back.
/// `NFTSchemaTests` loads nft-rules/midcom.nft and checks every set here exists with these types.
public enum NFTSchema {
    /// The revision of nft-rules/midcom.nft this midcomd needs, carried in the table's comment
    /// ("midcom ruleset revision N"). Raised when the rules change in a way the daemon relies on
    /// (2: answers from a CSP port are enqueued only inside conntrack, with mark 0x4d430003;
    /// 3: anti-spoofing, proved sources; 4: DENY filters, sets deny4/deny6 and chain pushback;
    /// 5: NAT-PMP/PCP input filter; 6: chains established, offload_admitted and to_flowtable for
    /// the flowtable).
    public static let rulesetRevision = 6

    /// The flowtable midcomd creates when `flowtable-devices` is set, and the chains of the ruleset
    /// that lead to it: `established` (empty, or `goto offload_admitted` while the flowtable is
    /// linked), `offload_admitted` (the ruleset's admission lookups) and `to_flowtable` (empty, or
    /// `flow add @fastpath`).
    public enum Flowtable {
        public static let name = "fastpath"
        public static let entryChain = "established"
        public static let candidatesChain = "offload_admitted"
        public static let offloadChain = "to_flowtable"
    }

    /// The revision a table comment names; 1 for a table without one (rulesets before revisions).
    public static func revision(ofTableComment comment: String) -> Int {
        let prefix = "midcom ruleset revision "
        guard comment.hasPrefix(prefix), let number = Int(comment.dropFirst(prefix.count)) else { return 1 }
        return number
    }

    /// One field of a concatenated key, as `nft` names its type.
    public enum Field: String, Sendable {
        case ipv4 = "ipv4_addr"
        case ipv6 = "ipv6_addr"
        case proto = "inet_proto"
        case port = "inet_service"

        /// Octets the field takes in a key (each field is padded to 4 octets).
        public var paddedLength: Int { self == .ipv6 ? 16 : 4 }
    }

    public struct SetSpec: Sendable {
        public var name: String
        public var key: [Field]
        /// The mapped value's fields for a map, nil for a set.
        public var data: [Field]?
        public var keyLength: Int { key.reduce(0) { $0 + $1.paddedLength } }
        public var dataLength: Int? { data.map { $0.reduce(0) { $0 + $1.paddedLength } } }
    }

    public static let admit4 = SetSpec(name: "admit4", key: [.ipv4, .proto, .port, .ipv4, .port])
    public static let admit6 = SetSpec(name: "admit6", key: [.ipv6, .proto, .port, .ipv6, .port])
    public static let admit4AnyPort = SetSpec(name: "admit4_anyport", key: [.ipv4, .proto, .ipv4, .port])
    public static let admit6AnyPort = SetSpec(name: "admit6_anyport", key: [.ipv6, .proto, .ipv6, .port])
    public static let pinhole4 = SetSpec(name: "pinhole4", key: [.proto, .ipv4, .port])
    public static let pinhole6 = SetSpec(name: "pinhole6", key: [.proto, .ipv6, .port])
    public static let drop4 = SetSpec(name: "drop4", key: admit4.key)
    public static let drop6 = SetSpec(name: "drop6", key: admit6.key)
    public static let snat4 = SetSpec(name: "snat4", key: [.ipv4, .proto, .port], data: [.ipv4, .port])
    public static let dnat4 = SetSpec(name: "dnat4", key: [.ipv4, .proto, .port], data: [.ipv4, .port])
    /// Addresses that answered a CHALLENGE (their signaling is queued ahead of unproved requests).
    public static let proved4 = SetSpec(name: "csp_proved4", key: [.ipv4])
    public static let proved6 = SetSpec(name: "csp_proved6", key: [.ipv6])
    /// DENY filters: interval sets (source prefix . protocol range . victim . port range).
    public static let deny4 = SetSpec(name: "deny4", key: [.ipv4, .proto, .ipv4, .port])
    public static let deny6 = SetSpec(name: "deny6", key: [.ipv6, .proto, .ipv6, .port])
    /// The same for filters that limit to the ruleset's rate instead of dropping everything.
    public static let rateLimit4 = SetSpec(name: "ratelimit4", key: deny4.key)
    public static let rateLimit6 = SetSpec(name: "ratelimit6", key: deny6.key)

    /// NAT-PMP and PCP requests the kernel drops on input (chain port_mapping_input): while
    /// midcomd serves them, every IPv4 source outside `[nat] internal` and every IPv6 source
    /// (not served); empty otherwise, so another port-mapping daemon is not disturbed.
    public static let portMappingRefused4 = SetSpec(name: "portmap_refused4", key: [.ipv4, .port])
    public static let portMappingRefused6 = SetSpec(name: "portmap_refused6", key: [.ipv6, .port])

    /// The elements of the port-mapping input filter: the IPv4 ranges between the inside
    /// prefixes (their complement), and all of IPv6, each for `port` only.
    public static func portMappingRefusals(inside: [IPPrefix], port: UInt16) -> [Element] {
        let ranges = inside.compactMap { prefix -> ClosedRange<UInt32>? in
            guard let base = prefix.address.ipv4Value, prefix.length >= 0, prefix.length <= 32 else { return nil }
            let size = prefix.length == 0 ? UInt32.max : (UInt32(1) << (32 - prefix.length)) - 1
            let start = base & ~size
            return start...(start | size)
        }.sorted { $0.lowerBound < $1.lowerBound }
        var gaps: [ClosedRange<UInt32>] = []
        var next: UInt32? = 0  // the first address not yet covered; nil: past the end
        for range in ranges {
            guard let from = next else { break }
            if range.lowerBound > from { gaps.append(from...(range.lowerBound - 1)) }
            if range.upperBound >= from { next = range.upperBound == .max ? nil : range.upperBound + 1 }
        }
        if let from = next { gaps.append(from...UInt32.max) }
        func key(_ address: UInt32) -> NFTSetKey {
            var key = NFTSetKey()
            key.append(ipv4: address)
            key.append(port: port)
            return key
        }
        var elements = gaps.map { Element(set: portMappingRefused4.name, key: key($0.lowerBound), data: nil, keyEnd: key($0.upperBound)) }
        var allStart = NFTSetKey()
        allStart.append(ipv6: [UInt8](repeating: 0, count: 16))
        allStart.append(port: port)
        var allEnd = NFTSetKey()
        allEnd.append(ipv6: [UInt8](repeating: 0xff, count: 16))
        allEnd.append(port: port)
        elements.append(Element(set: portMappingRefused6.name, key: allStart, data: nil, keyEnd: allEnd))
        return elements
    }

    /// The sets holding admissions, in the order adoption reads them.
    public static let admissionSets = [admit4, admit6, admit4AnyPort, admit6AnyPort, pinhole4, pinhole6]
    /// Everything midcomd programs. Admissions come before the NAT maps: adoption needs that order.
    public static let all =
        admissionSets + [
            drop4, drop6, snat4, dnat4, proved4, proved6, deny4, deny6, rateLimit4, rateLimit6, portMappingRefused4, portMappingRefused6,
        ]
    /// What a restart adopts, in this order.
    public static let adoptable = admissionSets + [snat4, dnat4, deny4, deny6, rateLimit4, rateLimit6]

    /// A set element: where an object lives and its key (and data, for a map).
    public struct Element: Hashable, Sendable {
        public var set: String
        public var key: NFTSetKey
        public var data: NFTSetKey?
        /// The range's end, for interval sets.
        public var keyEnd: NFTSetKey? = nil
    }

    public static func element(for object: KernelObject) -> Element {
        switch object {
        case .admission(let flow):
            return admission(flow)
        case .sourceNAT(let rule):
            return Element(set: snat4.name, key: natKey(rule.internal, rule.proto), data: natData(rule.external))
        case .destinationNAT(let rule):
            return Element(set: dnat4.name, key: natKey(rule.external, rule.proto), data: natData(rule.internal))
        case .denyFilter(let filter):
            return deny(filter)
        }
    }

    /// A DENY filter: the ranges it covers, as key and key end.
    static func deny(_ filter: DenyFilter) -> Element {
        var start = NFTSetKey()
        var end = NFTSetKey()
        func address(_ key: inout NFTSetKey, _ a: IPAddress) {
            if let value = a.ipv4Value { key.append(ipv4: value) } else { key.append(ipv6: a.bytes) }
        }
        address(&start, filter.source)
        address(&end, filter.sourceEnd)
        start.append(proto: filter.proto?.rawValue ?? 0)
        end.append(proto: filter.proto?.rawValue ?? 255)
        address(&start, filter.victim)
        address(&end, filter.victim)
        start.append(port: filter.port ?? 0)
        end.append(port: filter.port ?? 65535)
        let set = filter.victim.family == .ipv4 ? (filter.rateLimited ? rateLimit4 : deny4) : (filter.rateLimited ? rateLimit6 : deny6)
        return Element(set: set.name, key: start, data: nil, keyEnd: end)
    }

    /// The proved-sources element of an address.
    public static func proving(_ address: IPAddress) -> Element {
        var key = NFTSetKey()
        if let value = address.ipv4Value { key.append(ipv4: value) } else { key.append(ipv6: address.bytes) }
        return Element(set: address.family == .ipv4 ? proved4.name : proved6.name, key: key, data: nil)
    }

    /// The drop-cache element of a refused unsignaled flow (same key layout as admit4/admit6).
    public static func blocking(_ flow: FlowTuple) -> Element {
        var element = admission(flow)
        element.set = flow.source.family == .ipv4 ? drop4.name : drop6.name
        return element
    }

    static func admission(_ flow: FlowTuple) -> Element {
        let v4 = flow.source.family == .ipv4
        var key = NFTSetKey()
        func address(_ a: IPAddress) {
            if let value = a.ipv4Value { key.append(ipv4: value) } else { key.append(ipv6: a.bytes) }
        }
        let set: SetSpec
        if flow.source.isUnspecified {
            set = v4 ? pinhole4 : pinhole6
            key.append(proto: flow.proto.rawValue)
            address(flow.destination)
            key.append(port: flow.destinationPort)
        } else if flow.sourcePort == 0 {
            set = v4 ? admit4AnyPort : admit6AnyPort
            address(flow.source)
            key.append(proto: flow.proto.rawValue)
            address(flow.destination)
            key.append(port: flow.destinationPort)
        } else {
            set = v4 ? admit4 : admit6
            address(flow.source)
            key.append(proto: flow.proto.rawValue)
            key.append(port: flow.sourcePort)
            address(flow.destination)
            key.append(port: flow.destinationPort)
        }
        return Element(set: set.name, key: key, data: nil)
    }

    static func natKey(_ endpoint: IPv4Endpoint, _ proto: IPProtocol) -> NFTSetKey {
        var key = NFTSetKey()
        key.append(ipv4: endpoint.address)
        key.append(proto: proto.rawValue)
        key.append(port: endpoint.port)
        return key
    }

    static func natData(_ endpoint: IPv4Endpoint) -> NFTSetKey {
        var data = NFTSetKey()
        data.append(ipv4: endpoint.address)
        data.append(port: endpoint.port)
        return data
    }

    /// Decodes an element listed from the kernel back into the object it holds (the inverse of
    /// `element(for:)`); nil for a set this schema does not know or a key of the wrong length.
    public static func object(set: String, key: [UInt8], data: [UInt8]?, keyEnd: [UInt8]? = nil) -> KernelObject? {
        guard let spec = all.first(where: { $0.name == set }), key.count == spec.keyLength else { return nil }
        var reader = FieldReader(bytes: key)
        let any = spec.key.contains(.ipv6) ? IPAddress(ipv6: 0, 0) : IPAddress(ipv4: 0)
        switch set {
        case admit4.name, admit6.name:
            let s = reader.address(spec.key[0]), p = reader.proto(), sp = reader.port(), d = reader.address(spec.key[3])
            return .admission(FlowTuple(proto: p, source: s, sourcePort: sp, destination: d, destinationPort: reader.port()))
        case admit4AnyPort.name, admit6AnyPort.name:
            let s = reader.address(spec.key[0]), p = reader.proto(), d = reader.address(spec.key[2])
            return .admission(FlowTuple(proto: p, source: s, sourcePort: 0, destination: d, destinationPort: reader.port()))
        case pinhole4.name, pinhole6.name:
            let p = reader.proto(), d = reader.address(spec.key[1])
            return .admission(FlowTuple(proto: p, source: any, sourcePort: 0, destination: d, destinationPort: reader.port()))
        case snat4.name, dnat4.name:
            guard let data, data.count == 8 else { return nil }
            let keyEndpoint = IPv4Endpoint(address: reader.ipv4(), port: 0)
            let proto = reader.proto()
            let keyPort = reader.port()
            var dataReader = FieldReader(bytes: data)
            let value = IPv4Endpoint(address: dataReader.ipv4(), port: dataReader.port())
            let keyed = IPv4Endpoint(address: keyEndpoint.address, port: keyPort)
            return set == snat4.name
                ? .sourceNAT(SourceNAT(proto: proto, internal: keyed, external: value))
                : .destinationNAT(DestinationNAT(proto: proto, external: keyed, internal: value))
        case deny4.name, deny6.name, rateLimit4.name, rateLimit6.name:
            guard let keyEnd, keyEnd.count == key.count else { return nil }
            var endReader = FieldReader(bytes: keyEnd)
            let field = spec.key[0]
            let source = reader.address(field), sourceEnd = endReader.address(field)
            let proto = reader.proto(), protoEnd = endReader.proto()
            let victim = reader.address(field)
            _ = endReader.address(field)
            let port = reader.port(), portEnd = endReader.port()
            // The prefix length: the leading bits start and end share (the rest runs 0…0 to 1…1).
            let a = source.bytes, b = sourceEnd.bytes
            var length = 0
            while length < a.count * 8, (a[length / 8] ^ b[length / 8]) & (0x80 >> UInt8(length % 8)) == 0 { length += 1 }
            return .denyFilter(DenyFilter(
                source: source, prefixLength: UInt8(length), proto: proto.rawValue == 0 && protoEnd.rawValue == 255 ? nil : proto,
                victim: victim, port: port == 0 && portEnd == 65535 ? nil : port,
                rateLimited: set == rateLimit4.name || set == rateLimit6.name))
        default:
            return nil
        }
    }

    /// Reads padded key fields in order; the caller checked the key's length against the schema.
    private struct FieldReader {
        let bytes: [UInt8]
        var offset = 0

        mutating func take(_ count: Int) -> ArraySlice<UInt8> {
            defer { offset += (count + 3) / 4 * 4 }
            return bytes[offset..<offset + count]
        }
        mutating func ipv4() -> UInt32 { take(4).reduce(0) { $0 << 8 | UInt32($1) } }
        mutating func address(_ field: Field) -> IPAddress {
            field == .ipv6 ? IPAddress(bytes: take(16))! : IPAddress(ipv4: ipv4())
        }
        mutating func proto() -> IPProtocol { IPProtocol(rawValue: take(1).first!) }
        mutating func port() -> UInt16 {
            let two = take(2)
            return UInt16(two.first!) << 8 | UInt16(two.last!)
        }
    }
}

extension NFTChangeSet {
    /// Translates engine decisions into this batch. A refresh replaces the element (add, delete,
    /// add with the new timeout, atomically: kernels before 6.10 keep the old timeout on a re-add);
    /// removal adds before deleting. So neither fails on "exists" or "does not exist" (e.g. when
    /// the element just timed out on its own). Elements carry their session's tag as comment.
    public mutating func append(_ change: KernelChange) {
        switch change {
        case .install(let object, let lifetime, let tag):
            let element = NFTSchema.element(for: object)
            if case .admission = object {
                // A new admission: one add (a stale element of the same flow takes the new timeout
                // from 6.10 on; before, it keeps its own, which only ever follows an earlier expiry).
                addElement(set: element.set, key: element.key, timeoutSeconds: lifetime, comment: tag?.nftComment)
            } else {
                // A map element that exists with other data cannot be added again: replace it.
                replace(element, lifetime: lifetime, comment: tag?.nftComment)
            }
        case .refresh(let object, let lifetime, let tag):
            replace(NFTSchema.element(for: object), lifetime: lifetime, comment: tag?.nftComment)
        case .remove(let object):
            let element = NFTSchema.element(for: object)
            addElement(set: element.set, key: element.key, data: element.data, timeoutSeconds: 1, keyEnd: element.keyEnd)
            deleteElement(set: element.set, key: element.key, keyEnd: element.keyEnd)
        case .block(let flow, let lifetime):
            let element = NFTSchema.blocking(flow)
            addElement(set: element.set, key: element.key, timeoutSeconds: lifetime)
        case .prove(let address, let lifetime):
            let element = NFTSchema.proving(address)
            addElement(set: element.set, key: element.key, timeoutSeconds: lifetime)
        }
    }

    private mutating func replace(_ element: NFTSchema.Element, lifetime: UInt32, comment: NFTComment?) {
        let end = element.keyEnd
        addElement(set: element.set, key: element.key, data: element.data, timeoutSeconds: lifetime, comment: comment, keyEnd: end)
        deleteElement(set: element.set, key: element.key, keyEnd: end)
        addElement(set: element.set, key: element.key, data: element.data, timeoutSeconds: lifetime, comment: comment, keyEnd: end)
    }
}

extension ElementTag {
    /// `comment` as the element's comment, written in place when there is no application (every
    /// legacy admission: one per new flow under `unsignaled = "admit"`).
    public var nftComment: NFTComment {
        guard application?.isEmpty ?? true else { return NFTComment(comment) }
        return NFTComment(writing: ElementTag.fixedCommentLength) { destination in
            // Typed octets on the stack, copied as raw bytes: the inline storage is not rebound.
            withUnsafeTemporaryAllocation(of: UInt8.self, capacity: ElementTag.fixedCommentLength) { octets in
                let written = writeFixedComment(into: octets)
                destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(octets)[..<written]))
                return written
            }
        }
    }
}
