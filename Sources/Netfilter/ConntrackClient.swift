import CNetfilter
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import SystemSupport

/// Which conntrack entries to act on, by their ORIGINAL-direction tuple (for a NATed flow: the pre-NAT tuple).
///
/// An all-zero address, a zero port and a zero protocol are wildcards. Entries of protocols without ports (ICMP)
/// report ports 0, so a filter with a port never matches them.
public struct ConntrackFilter: Sendable, Equatable, CustomStringConvertible {
    public var family: UInt8            // AF_INET (2) or AF_INET6 (10)
    public var proto: UInt8             // IPPROTO_*; 0 = any
    public var source: [UInt8]          // 4 or 16 bytes; all zero = any
    public var sourcePort: UInt16       // 0 = any
    public var destination: [UInt8]     // 4 or 16 bytes; all zero = any
    public var destinationPort: UInt16  // 0 = any

    public init(family: UInt8, proto: UInt8, source: [UInt8], sourcePort: UInt16,
                destination: [UInt8], destinationPort: UInt16) {
        self.family = family
        self.proto = proto
        self.source = source
        self.sourcePort = sourcePort
        self.destination = destination
        self.destinationPort = destinationPort
    }

    /// "udp 10.0.0.1:4000 -> 10.0.0.2:5000", "udp [::1]:* -> [::1]:5000"; `*` marks a wildcard.
    public var description: String {
        "\(ConntrackFilter.protocolName(proto)) \(endpoint(source, sourcePort)) -> \(endpoint(destination, destinationPort))"
    }

    /// Why the kernel could not be asked about this filter, or nil when it is well formed.
    var problem: String? {
        guard let length = addressLength else {
            return "family \(family) is neither AF_INET (\(AF_INET)) nor AF_INET6 (\(AF_INET6))"
        }
        let familyName = family == UInt8(AF_INET) ? "AF_INET" : "AF_INET6"
        if source.count != length {
            return "the source address has \(source.count) bytes, \(familyName) needs \(length)"
        }
        if destination.count != length {
            return "the destination address has \(destination.count) bytes, \(familyName) needs \(length)"
        }
        return nil
    }

    /// True when no field is a wildcard, so one tuple names the entry (only protocols with ports qualify).
    var isExact: Bool {
        ConntrackFilter.portProtocols.contains(proto) && sourcePort != 0 && destinationPort != 0
            && !source.allSatisfy { $0 == 0 } && !destination.allSatisfy { $0 == 0 }
    }

    /// Whether an entry's original tuple (as parsed from the kernel) falls under this filter.
    func matches(_ tuple: ConntrackFilter) -> Bool {
        tuple.family == family
            && (proto == 0 || tuple.proto == proto)
            && (source.allSatisfy { $0 == 0 } || tuple.source == source)
            && (sourcePort == 0 || tuple.sourcePort == sourcePort)
            && (destination.allSatisfy { $0 == 0 } || tuple.destination == destination)
            && (destinationPort == 0 || tuple.destinationPort == destinationPort)
    }

    var addressLength: Int? {
        switch Int32(family) {
        case AF_INET: 4
        case AF_INET6: 16
        default: nil
        }
    }

    /// TCP, UDP, DCCP, SCTP, UDP-Lite: the protocols whose conntrack tuple carries ports.
    static let portProtocols: Set<UInt8> = [6, 17, 33, 132, 136]

    static func protocolName(_ proto: UInt8) -> String {
        switch proto {
        case 0: "any"
        case 1: "icmp"
        case 6: "tcp"
        case 17: "udp"
        case 33: "dccp"
        case 58: "ipv6-icmp"
        case 132: "sctp"
        case 136: "udplite"
        default: "proto \(proto)"
        }
    }

    private func endpoint(_ address: [UInt8], _ port: UInt16) -> String {
        let portText = port == 0 ? "*" : String(port)
        let addressText: String
        if address.allSatisfy({ $0 == 0 }) && address.count == addressLength {
            addressText = "*"
        } else if address.count == 4 && family == UInt8(AF_INET) || address.count == 16 && family == UInt8(AF_INET6) {
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            address.withUnsafeBytes { _ = inet_ntop(Int32(family), $0.baseAddress, &text, socklen_t(text.count)) }
            addressText = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        } else {
            let digits = address.map { byte in (byte < 16 ? "0" : "") + String(byte, radix: 16) }.joined()
            addressText = "0x\(digits) (\(address.count) bytes)"
        }
        return family == UInt8(AF_INET6) && addressText != "*" ? "[\(addressText)]:\(portText)" : "\(addressText):\(portText)"
    }
}

/// Reads and deletes conntrack entries through ctnetlink (NETLINK_NETFILTER, subsystem NFNL_SUBSYS_CTNETLINK).
///
/// midcomd calls this when an admission expires or is revoked: the ruleset accepts `ct state established,related`
/// before it looks at the admission sets, so an established flow keeps passing until its entry is gone.
///
/// An exact filter is looked up with IPCTNL_MSG_CT_GET and then deleted with IPCTNL_MSG_CT_DELETE carrying the
/// entry's CTA_ID. A single DELETE by tuple would be one round trip less, but the kernel looks the tuple up in both
/// directions: "udp B:b -> A:a" would delete the flow A:a -> B:b, whose REPLY tuple it is. The GET shows the
/// original tuple, and CTA_ID makes the DELETE refuse (ENOENT) an entry that replaced the one we saw.
///
/// A filter with wildcards dumps the family's entries (with CTA_FILTER, so the kernel skips the others, when the
/// kernel accepts it; Linux >= 5.10), matches every entry again in user space, and deletes each match the same
/// way. Calls are serialized by a mutex: one socket, one request in flight.
public final class ConntrackClient: @unchecked Sendable {
    struct State {
        var sequence: UInt32
        /// nil until the first dump that needs it; false once the kernel refused CTA_FILTER.
        var kernelFilterWorks: Bool? = nil
    }

    /// One entry as the kernel reported it: the parsed original tuple plus what it takes to delete exactly it.
    struct Entry {
        var tuple: ConntrackFilter
        /// Payload of CTA_TUPLE_ORIG, sent back verbatim (it carries ICMP ids and a tuple zone, if any).
        var rawTuple: [UInt8]
        var zone: UInt16?  // CTA_ZONE, network byte order as received
        var id: UInt32?    // CTA_ID, network byte order as received
    }

    private let socket: OpaquePointer  // struct mnl_socket *
    private let receiveBuffer: UnsafeMutableRawBufferPointer
    private let state: Mutex<State>

    /// Opens and binds a NETLINK_NETFILTER socket.
    public init() throws(NetfilterError) {
        let socket = try openNetfilterSocket(object: "conntrack")
        self.socket = socket
        // Dump messages are at most 32 KiB; twice that leaves room.
        self.receiveBuffer = .allocate(byteCount: 64 << 10, alignment: 16)
        var seed = timespec()
        clock_gettime(CLOCK_MONOTONIC, &seed)
        self.state = Mutex(State(sequence: UInt32(truncatingIfNeeded: seed.tv_nsec) | 1))
    }

    deinit {
        mnl_socket_close(socket)
        receiveBuffer.deallocate()
    }

    // MARK: Public operations

    /// Deletes every conntrack entry whose ORIGINAL direction matches the filter; returns how many were deleted.
    ///
    /// Entries that vanish between being seen and being deleted (timed out, deleted by someone else) are not
    /// counted and are not an error.
    public func deleteEntries(matching filter: ConntrackFilter) throws(NetfilterError) -> Int {
        try check(filter, operation: Operation.delete)
        return try state.withLock { (state: inout State) throws(NetfilterError) -> Int in
            let candidates: [Entry]
            if filter.isExact {
                candidates = try self.get(filter, state: &state).map { [$0] } ?? []
            } else {
                candidates = try self.dump(filter, kernelSide: true, state: &state)
            }
            var deleted = 0
            for entry in candidates where filter.matches(entry.tuple) {
                if try self.delete(entry, state: &state) { deleted += 1 }
            }
            return deleted
        }
    }

    /// Deletes every entry that matches any of the filters; returns how many were deleted.
    ///
    /// Exact filters are looked up one by one; all wildcard filters of a family share ONE dump of the
    /// table, matched in user space through an index on (protocol, destination, destination port) when
    /// every wildcard filter has those fields. So a mass expiry of N wildcard admissions costs one pass
    /// over the conntrack table instead of N.
    public func deleteEntries(matchingAny filters: [ConntrackFilter]) throws(NetfilterError) -> Int {
        for filter in filters { try check(filter, operation: Operation.delete) }
        return try state.withLock { (state: inout State) throws(NetfilterError) -> Int in
            var deleted = 0
            var wildcards: [UInt8: [ConntrackFilter]] = [:]
            for filter in filters {
                if filter.isExact {
                    if let entry = try self.get(filter, state: &state), filter.matches(entry.tuple),
                       try self.delete(entry, state: &state) { deleted += 1 }
                } else {
                    wildcards[filter.family, default: []].append(filter)
                }
            }
            for (family, group) in wildcards {
                let index = WildcardIndex(group)
                // One filter narrows the dump in the kernel; many are matched here.
                let dumpFilter = group.count == 1
                    ? group[0]
                    : ConntrackFilter(family: family, proto: 0, source: [UInt8](repeating: 0, count: group[0].source.count),
                                      sourcePort: 0, destination: [UInt8](repeating: 0, count: group[0].destination.count),
                                      destinationPort: 0)
                for entry in try self.dump(dumpFilter, kernelSide: group.count == 1, state: &state)
                where index.matches(entry.tuple) {
                    if try self.delete(entry, state: &state) { deleted += 1 }
                }
            }
            return deleted
        }
    }

    /// Lists entries (original tuples) matching the filter.
    public func entries(matching filter: ConntrackFilter) throws(NetfilterError) -> [ConntrackFilter] {
        try check(filter, operation: Operation.dump)
        return try state.withLock { (state: inout State) throws(NetfilterError) -> [ConntrackFilter] in
            try self.dump(filter, kernelSide: true, state: &state).map(\.tuple).filter(filter.matches)
        }
    }

    /// The family's entries as the kernel returns them, without matching in user space; `kernelSide` sends the
    /// filter as CTA_FILTER. For tests that check what the kernel filters by itself.
    func dumpedEntries(_ filter: ConntrackFilter, kernelSide: Bool) throws(NetfilterError) -> [ConntrackFilter] {
        try check(filter, operation: Operation.dump)
        return try state.withLock { (state: inout State) throws(NetfilterError) -> [ConntrackFilter] in
            try self.dump(filter, kernelSide: kernelSide, state: &state).map(\.tuple)
        }
    }

    /// Whether the kernel accepted CTA_FILTER on a dump (nil until a dump needed it).
    var kernelFilterWorks: Bool? { state.withLock { $0.kernelFilterWorks } }

    // MARK: Requests

    enum Operation {
        static let get = "IPCTNL_MSG_CT_GET"
        static let dump = "IPCTNL_MSG_CT_GET (dump)"
        static let delete = "IPCTNL_MSG_CT_DELETE"
    }

    private func check(_ filter: ConntrackFilter, operation: String) throws(NetfilterError) {
        if let problem = filter.problem {
            throw NetfilterError(operation: operation, object: filter.description, errno: EINVAL,
                                 hint: "malformed conntrack filter: \(problem)")
        }
    }

    /// The entry whose original or reply tuple is `filter` (the kernel looks both up), or nil.
    private func get(_ filter: ConntrackFilter, state: inout State) throws(NetfilterError) -> Entry? {
        var found: Entry? = nil
        do throws(NetfilterError) {
            try request(Operation.get, object: filter.description, type: IPCTNL_MSG_CT_GET, flags: NLM_F_ACK,
                        family: filter.family, state: &state,
                        build: { nlh in Self.putTuple(nlh, filter, fields: .all) },
                        reply: { nlh in
                            guard let entry = Self.parseEntry(nlh) else { return EBADMSG }
                            found = entry
                            return 0
                        })
        } catch {
            if error.errno == ENOENT { return nil }
            throw error
        }
        return found
    }

    /// The entries of the filter's family. With `kernelSide`, the kernel skips non-matching entries itself when it
    /// supports CTA_FILTER; the caller still matches every entry.
    private func dump(_ filter: ConntrackFilter, kernelSide: Bool, state: inout State) throws(NetfilterError) -> [Entry] {
        let fields = TupleFields(filter)
        let useFilter = kernelSide && state.kernelFilterWorks != false && fields.orFlags != 0
        var entries: [Entry] = []
        do throws(NetfilterError) {
            try request(Operation.dump, object: "\(filter.description) (family \(filter.family))", type: IPCTNL_MSG_CT_GET,
                        flags: NLM_F_DUMP, family: filter.family, state: &state,
                        build: { nlh in
                            guard useFilter else { return }
                            Self.putTuple(nlh, filter, fields: fields)
                            let nest = mnl_attr_nest_start(nlh, UInt16(CTA_FILTER.rawValue))
                            mnl_attr_put_u32(nlh, UInt16(CTA_FILTER_ORIG_FLAGS.rawValue), fields.orFlags)
                            mnl_attr_nest_end(nlh, nest)
                        },
                        reply: { nlh in
                            // An entry we cannot parse is skipped, not fatal: one odd entry must not stop a revocation.
                            if let entry = Self.parseEntry(nlh) { entries.append(entry) }
                            return 0
                        })
            if useFilter { state.kernelFilterWorks = true }
        } catch {
            // Kernels before 5.10 answer a CTA_FILTER they do not know with EOPNOTSUPP (or EINVAL for the tuple).
            guard useFilter, error.errno == EOPNOTSUPP || error.errno == EINVAL else { throw error }
            state.kernelFilterWorks = false
            return try dump(filter, kernelSide: false, state: &state)
        }
        return entries
    }

    /// Deletes exactly `entry`; false when it no longer exists.
    private func delete(_ entry: Entry, state: inout State) throws(NetfilterError) -> Bool {
        do throws(NetfilterError) {
            try request(Operation.delete, object: entry.tuple.description, type: IPCTNL_MSG_CT_DELETE, flags: NLM_F_ACK,
                        family: entry.tuple.family, state: &state,
                        build: { nlh in
                            entry.rawTuple.withUnsafeBytes {
                                mnl_attr_put(nlh, UInt16(CTA_TUPLE_ORIG.rawValue) | UInt16(NLA_F_NESTED), $0.count, $0.baseAddress)
                            }
                            if let zone = entry.zone { mnl_attr_put_u16(nlh, UInt16(CTA_ZONE.rawValue), zone) }
                            if let id = entry.id { mnl_attr_put_u32(nlh, UInt16(CTA_ID.rawValue), id) }
                        },
                        reply: { _ in 0 })
            return true
        } catch {
            if error.errno == ENOENT { return false }
            throw error
        }
    }

    // MARK: Transport

    /// Sends one ctnetlink request and reads its replies until the acknowledgement or NLMSG_DONE, handing every data
    /// message to `reply` (which returns 0 or an errno).
    private func request(_ operation: String, object: String, type: cntl_msg_types, flags: Int32, family: UInt8,
                         state: inout State, build: (UnsafeMutablePointer<nlmsghdr>) -> Void,
                         reply: (UnsafePointer<nlmsghdr>) -> Int32) throws(NetfilterError) {
        state.sequence &+= 1
        let sequence = state.sequence
        var message = [UInt8](repeating: 0, count: Int(cnf_mnl_socket_buffer_size()))
        let length = message.withUnsafeMutableBytes { buffer -> Int in
            let nlh = mnl_nlmsg_put_header(buffer.baseAddress)!
            nlh.pointee.nlmsg_type = cnf_nfnl_msg_type(UInt8(NFNL_SUBSYS_CTNETLINK), UInt8(type.rawValue))
            nlh.pointee.nlmsg_flags = UInt16(NLM_F_REQUEST | flags)
            nlh.pointee.nlmsg_seq = sequence
            cnf_nfnl_put_nfgenmsg(nlh, family)
            build(nlh)
            return Int(nlh.pointee.nlmsg_len)
        }
        let sent = message.withUnsafeBytes { bytes in syscall { mnl_socket_sendto(socket, bytes.baseAddress, length) } }
        _ = try sent.get("sendto(\(operation))", object)

        let fd = mnl_socket_get_fd(socket)
        var finished = false
        var failure: Int32 = 0
        while !finished {
            let received = try syscall { recv(fd, receiveBuffer.baseAddress, receiveBuffer.count, 0) }
                .get("recv(\(operation))", object)
            var remaining = Int32(received)
            var current = receiveBuffer.baseAddress?.assumingMemoryBound(to: nlmsghdr.self)
            while let nlh = current, mnl_nlmsg_ok(nlh, remaining) {
                defer { current = mnl_nlmsg_next(nlh, &remaining) }
                guard !finished, cnf_nlmsg_seq(nlh) == sequence else { continue }  // stale replies of earlier requests
                switch Int32(cnf_nlmsg_type(nlh)) {
                case NLMSG_DONE:
                    if failure == 0 { failure = cnf_nlmsg_done_error(nlh) }
                    finished = true
                case NLMSG_ERROR:
                    let code = cnf_nlmsg_error_code(nlh)
                    if failure == 0 { failure = code }
                    finished = true
                default:
                    let code = reply(nlh)
                    if code != 0 && failure == 0 { failure = code }
                }
            }
        }
        if failure != 0 {
            throw NetfilterError(operation: operation, object: object, errno: failure, hint: Self.hint(operation, failure))
        }
    }

    private static func hint(_ operation: String, _ code: Int32) -> String? {
        switch code {
        case EPERM, EACCES:
            return nil  // the default: needs CAP_NET_ADMIN
        case EOPNOTSUPP, EPROTONOSUPPORT, EAFNOSUPPORT:
            return "the kernel lacks ctnetlink (load the nf_conntrack and nf_conntrack_netlink modules)"
        case ENOENT:
            return "no such conntrack entry"
        case EINVAL:
            return "the kernel refused the conntrack tuple"
        case EBADMSG:
            return "the kernel's reply could not be parsed"
        default:
            return nil
        }
    }

    // MARK: Encoding and decoding

    /// Which fields of a filter go into a CTA_TUPLE_ORIG, and the matching CTA_FILTER_ORIG_FLAGS.
    struct TupleFields {
        var orFlags: UInt32 = 0
        static let all = TupleFields(flags: cnf_cta_filter_ip_src | cnf_cta_filter_ip_dst | cnf_cta_filter_proto_num
                                     | cnf_cta_filter_proto_src_port | cnf_cta_filter_proto_dst_port)

        init(flags: UInt32) { orFlags = flags }

        /// The non-wildcard fields of `filter` the kernel compares correctly. Ports need the protocol number (the
        /// kernel refuses them without it).
        ///
        /// IPv6 addresses are left to the user-space match: ctnetlink_filter_match_tuple tests them with
        /// `!ipv6_addr_cmp(...)`, i.e. it skips exactly the entries whose address EQUALS the filter's (seen on
        /// Linux 6.18; ConntrackClientTests.testIPv6ExactAndWildcard catches it if this is ever sent again).
        init(_ filter: ConntrackFilter) {
            if filter.family == UInt8(AF_INET) {
                if !filter.source.allSatisfy({ $0 == 0 }) { orFlags |= cnf_cta_filter_ip_src }
                if !filter.destination.allSatisfy({ $0 == 0 }) { orFlags |= cnf_cta_filter_ip_dst }
            }
            if filter.proto != 0 {
                orFlags |= cnf_cta_filter_proto_num
                if ConntrackFilter.portProtocols.contains(filter.proto) {
                    if filter.sourcePort != 0 { orFlags |= cnf_cta_filter_proto_src_port }
                    if filter.destinationPort != 0 { orFlags |= cnf_cta_filter_proto_dst_port }
                }
            }
        }

        func has(_ flag: UInt32) -> Bool { orFlags & flag != 0 }
    }

    /// Appends CTA_TUPLE_ORIG { CTA_TUPLE_IP { src, dst }, CTA_TUPLE_PROTO { num, sport, dport } } with the
    /// fields selected by `fields`.
    private static func putTuple(_ nlh: UnsafeMutablePointer<nlmsghdr>, _ filter: ConntrackFilter, fields: TupleFields) {
        let v4 = filter.family == UInt8(AF_INET)
        let tuple = mnl_attr_nest_start(nlh, UInt16(CTA_TUPLE_ORIG.rawValue))
        let ip = mnl_attr_nest_start(nlh, UInt16(CTA_TUPLE_IP.rawValue))
        if fields.has(cnf_cta_filter_ip_src) {
            let type = v4 ? CTA_IP_V4_SRC : CTA_IP_V6_SRC
            filter.source.withUnsafeBytes { mnl_attr_put(nlh, UInt16(type.rawValue), $0.count, $0.baseAddress) }
        }
        if fields.has(cnf_cta_filter_ip_dst) {
            let type = v4 ? CTA_IP_V4_DST : CTA_IP_V6_DST
            filter.destination.withUnsafeBytes { mnl_attr_put(nlh, UInt16(type.rawValue), $0.count, $0.baseAddress) }
        }
        mnl_attr_nest_end(nlh, ip)
        if fields.has(cnf_cta_filter_proto_num) {
            let proto = mnl_attr_nest_start(nlh, UInt16(CTA_TUPLE_PROTO.rawValue))
            mnl_attr_put_u8(nlh, UInt16(CTA_PROTO_NUM.rawValue), filter.proto)
            if fields.has(cnf_cta_filter_proto_src_port) {
                mnl_attr_put_u16(nlh, UInt16(CTA_PROTO_SRC_PORT.rawValue), filter.sourcePort.bigEndian)
            }
            if fields.has(cnf_cta_filter_proto_dst_port) {
                mnl_attr_put_u16(nlh, UInt16(CTA_PROTO_DST_PORT.rawValue), filter.destinationPort.bigEndian)
            }
            mnl_attr_nest_end(nlh, proto)
        }
        mnl_attr_nest_end(nlh, tuple)
    }

    /// An IPCTNL_MSG_CT_NEW message of a dump or GET reply as an `Entry`; nil if its original tuple is incomplete.
    static func parseEntry(_ nlh: UnsafePointer<nlmsghdr>) -> Entry? {
        let family = cnf_nfnl_family(nlh)
        guard family == UInt8(AF_INET) || family == UInt8(AF_INET6),
              let start = mnl_nlmsg_get_payload_offset(nlh, MemoryLayout<nfgenmsg>.size),
              let end = mnl_nlmsg_get_payload_tail(nlh) else { return nil }
        var tuple = ConntrackFilter(family: family, proto: 0, source: [], sourcePort: 0, destination: [], destinationPort: 0)
        var rawTuple: [UInt8]? = nil
        var zone: UInt16? = nil
        var id: UInt32? = nil
        forEachAttribute(UnsafeRawPointer(start), UnsafeRawPointer(end)) { type, payload in
            switch Int(type) {
            case Int(CTA_TUPLE_ORIG.rawValue):
                rawTuple = Array(payload)
                parseTuple(payload, into: &tuple)
            case Int(CTA_ZONE.rawValue) where payload.count >= 2:
                zone = payload.loadUnaligned(as: UInt16.self)
            case Int(CTA_ID.rawValue) where payload.count >= 4:
                id = payload.loadUnaligned(as: UInt32.self)
            default:
                break
            }
        }
        guard let rawTuple, tuple.problem == nil, tuple.proto != 0 else { return nil }
        return Entry(tuple: tuple, rawTuple: rawTuple, zone: zone, id: id)
    }

    private static func parseTuple(_ payload: UnsafeRawBufferPointer, into tuple: inout ConntrackFilter) {
        guard let base = payload.baseAddress else { return }
        forEachAttribute(base, base + payload.count) { type, nested in
            switch Int(type) {
            case Int(CTA_TUPLE_IP.rawValue):
                forEachAttribute(nested.baseAddress!, nested.baseAddress! + nested.count) { type, value in
                    switch Int(type) {
                    case Int(CTA_IP_V4_SRC.rawValue) where value.count == 4, Int(CTA_IP_V6_SRC.rawValue) where value.count == 16:
                        tuple.source = Array(value)
                    case Int(CTA_IP_V4_DST.rawValue) where value.count == 4, Int(CTA_IP_V6_DST.rawValue) where value.count == 16:
                        tuple.destination = Array(value)
                    default:
                        break
                    }
                }
            case Int(CTA_TUPLE_PROTO.rawValue):
                forEachAttribute(nested.baseAddress!, nested.baseAddress! + nested.count) { type, value in
                    switch Int(type) {
                    case Int(CTA_PROTO_NUM.rawValue) where value.count >= 1:
                        tuple.proto = value[0]
                    case Int(CTA_PROTO_SRC_PORT.rawValue) where value.count >= 2:
                        tuple.sourcePort = UInt16(bigEndian: value.loadUnaligned(as: UInt16.self))
                    case Int(CTA_PROTO_DST_PORT.rawValue) where value.count >= 2:
                        tuple.destinationPort = UInt16(bigEndian: value.loadUnaligned(as: UInt16.self))
                    default:
                        break
                    }
                }
            default:
                break
            }
        }
    }

    /// Calls `body` with the type (NLA_F_* bits cleared) and payload of every well-formed attribute in [start, end).
    private static func forEachAttribute(_ start: UnsafeRawPointer, _ end: UnsafeRawPointer,
                                         _ body: (UInt16, UnsafeRawBufferPointer) -> Void) {
        var current = start.assumingMemoryBound(to: nlattr.self)
        while mnl_attr_ok(current, Int32(end - UnsafeRawPointer(current))) {
            let payload = UnsafeRawBufferPointer(start: mnl_attr_get_payload(current), count: Int(mnl_attr_get_payload_len(current)))
            body(mnl_attr_get_type(current), payload)
            guard let next = mnl_attr_next(current) else { return }
            current = UnsafePointer(next)
        }
    }
}

/// Wildcard filters indexed by what conntrack filters of admissions always name: protocol, destination
/// address and destination port. Filters without those fields are matched one by one.
private struct WildcardIndex {
    struct Key: Hashable {
        var proto: UInt8
        var destination: [UInt8]
        var port: UInt16
    }

    var indexed: [Key: [ConntrackFilter]] = [:]
    var others: [ConntrackFilter] = []

    init(_ filters: [ConntrackFilter]) {
        for filter in filters {
            if filter.proto != 0, filter.destinationPort != 0, !filter.destination.allSatisfy({ $0 == 0 }) {
                indexed[Key(proto: filter.proto, destination: filter.destination, port: filter.destinationPort), default: []]
                    .append(filter)
            } else {
                others.append(filter)
            }
        }
    }

    func matches(_ tuple: ConntrackFilter) -> Bool {
        let key = Key(proto: tuple.proto, destination: tuple.destination, port: tuple.destinationPort)
        if let candidates = indexed[key], candidates.contains(where: { $0.matches(tuple) }) { return true }
        return others.contains { $0.matches(tuple) }
    }
}
