/// An nftables address family (the kernel's NFPROTO_* value).
public enum NFTFamily: UInt8, Sendable, CustomStringConvertible {
    case inet = 1
    case ipv4 = 2
    case ipv6 = 10

    /// The name `nft` uses: `inet`, `ip`, `ip6`.
    public var description: String {
        switch self {
        case .inet: "inet"
        case .ipv4: "ip"
        case .ipv6: "ip6"
        }
    }
}

/// Up to 64 octets kept inline (NFT_DATA_VALUE_MAXLEN, the longest key or value the kernel takes):
/// a set key or an element comment built per admitted flow costs no heap allocation (figure 3's
/// profile in docs/PERFORMANCE.md had one array per key and one string per comment).
public struct InlineOctets: Hashable, Sendable {
    public static let capacity = 64
    private var storage: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
    public private(set) var count = 0

    public init() {}

    /// Appends `bytes`; more than `capacity` in all is a programming error. Inlined into the key's
    /// appends, where the length is a constant and the copy one store.
    @inline(__always)
    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        precondition(count + bytes.count <= Self.capacity, "InlineOctets: \(count + bytes.count) octets exceed \(Self.capacity)")
        let offset = count
        Swift.withUnsafeMutableBytes(of: &storage) { destination in
            if let source = bytes.baseAddress { (destination.baseAddress! + offset).copyMemory(from: source, byteCount: bytes.count) }
        }
        count += bytes.count
    }

    /// Appends `length` zero octets (the storage beyond `count` is always zero).
    public mutating func appendZeros(_ length: Int) {
        precondition(count + length <= Self.capacity, "InlineOctets: \(count + length) octets exceed \(Self.capacity)")
        count += length
    }

    /// Writes up to `length` octets in place; `body` returns how many it wrote. Whatever `body` left
    /// in the rest of the window is cleared: `==` and `hash` rely on the storage past `count` being zero.
    public mutating func append(upTo length: Int, _ body: (UnsafeMutableRawBufferPointer) -> Int) {
        precondition(count + length <= Self.capacity, "InlineOctets: \(count + length) octets exceed \(Self.capacity)")
        let offset = count
        let written = Swift.withUnsafeMutableBytes(of: &storage) { whole in
            let window = UnsafeMutableRawBufferPointer(rebasing: whole[offset..<(offset + length)])
            let written = body(window)
            precondition(written >= 0 && written <= length, "InlineOctets: wrote \(written) of at most \(length) octets")
            if written < length { UnsafeMutableRawBufferPointer(rebasing: window[written...]).initializeMemory(as: UInt8.self, repeating: 0) }
            return written
        }
        count += written
    }

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try Swift.withUnsafeBytes(of: storage) { try body(UnsafeRawBufferPointer(start: $0.baseAddress, count: count)) }
    }

    public var array: [UInt8] { withUnsafeBytes { Array($0) } }

    public static func == (a: InlineOctets, b: InlineOctets) -> Bool {
        // Octets beyond `count` are zero in both, so the whole storage can be compared.
        a.count == b.count && a.storage.0 == b.storage.0 && a.storage.1 == b.storage.1 && a.storage.2 == b.storage.2
            && a.storage.3 == b.storage.3 && a.storage.4 == b.storage.4 && a.storage.5 == b.storage.5
            && a.storage.6 == b.storage.6 && a.storage.7 == b.storage.7
    }

    public func hash(into hasher: inout Hasher) {
        withUnsafeBytes { hasher.combine(bytes: $0) }
    }
}

/// The bytes of a set key or map value, built field by field as `nft` builds them.
///
/// A single field is stored at its natural length (`inet_proto` is 1 byte, `inet_service` 2). In a concatenation
/// (`ipv4_addr . inet_proto . inet_service`) every field starts on a 4-byte register boundary, zero padded, which is
/// how nft lays out concatenated keys (NFT_REG32_SIZE); so `bytes` pads only when there are two fields or more.
public struct NFTSetKey: Hashable, Sendable, CustomStringConvertible {
    /// The key as the kernel expects it in NFTA_SET_ELEM_KEY / NFTA_SET_ELEM_DATA, kept up to date by every
    /// `append`, inline (the longest key midcomd builds, an IPv6 flow, is 44 octets).
    public private(set) var octets = InlineOctets()
    private var fieldCount = 0

    public init() {}

    /// The key's octets as an array (for tests and error messages; the encoder reads `octets`).
    public var bytes: [UInt8] { octets.array }
    public var count: Int { octets.count }

    /// Appends an `ipv4_addr` given in host order (0x0a000001 is 10.0.0.1); stored in network order.
    public mutating func append(ipv4: UInt32) {
        withUnsafeBytes(of: ipv4.bigEndian) { appendField($0) }
    }

    /// Appends an `ipv6_addr` given as its 16 network-order bytes.
    public mutating func append(ipv6 bytes: [UInt8]) {
        precondition(bytes.count == 16, "an ipv6_addr key field is 16 bytes, got \(bytes.count)")
        bytes.withUnsafeBytes { appendField($0) }
    }

    /// Appends an `inet_proto` (IPPROTO_TCP is 6, IPPROTO_UDP 17).
    public mutating func append(proto: UInt8) {
        withUnsafeBytes(of: proto) { appendField($0) }
    }

    /// Appends an `inet_service` given in host order; stored in network order.
    public mutating func append(port: UInt16) {
        withUnsafeBytes(of: port.bigEndian) { appendField($0) }
    }

    /// Appends a `mark`; nft keeps marks in host byte order.
    public mutating func append(mark: UInt32) {
        withUnsafeBytes(of: mark) { appendField($0) }
    }

    /// Appends raw bytes as one field (for types not covered above); padded like any field in a concatenation.
    public mutating func append(raw bytes: [UInt8]) {
        bytes.withUnsafeBytes { appendField($0) }
    }

    @inline(__always)
    private mutating func appendField(_ field: UnsafeRawBufferPointer) {
        // A lone field keeps its natural length; once there are two, every field fills whole registers.
        if fieldCount == 1 { padToRegister() }
        octets.append(field)
        fieldCount += 1
        if fieldCount > 1 { padToRegister() }
    }

    private mutating func padToRegister() {
        octets.appendZeros((4 - octets.count % 4) % 4)
    }

    /// The key in lowercase hex, as error messages print it.
    public var description: String { octets.withUnsafeBytes { NFTSetKey.hex($0) } }

    static func hex<Bytes: Sequence<UInt8>>(_ bytes: Bytes) -> String {
        let digits: [Character] = Array("0123456789abcdef")
        var text = ""
        for byte in bytes {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0xf)])
        }
        return text
    }
}

/// An element's comment (`nft`'s `comment "..."`). Up to 64 octets are kept inline, so the tag
/// midcomd writes on every element it adds (22 octets) costs no allocation; longer text keeps its
/// string. Cut to 127 octets when written, as `nft` cuts it.
public struct NFTComment: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    private enum Storage: Hashable, Sendable {
        case inline(InlineOctets)
        case text(String)
    }
    private let storage: Storage

    public init(_ text: String) {
        guard text.utf8.count <= InlineOctets.capacity else {
            storage = .text(text)
            return
        }
        // Every comment that fits is stored inline, so two equal comments are equal values.
        var text = text
        text.makeContiguousUTF8()
        var octets = InlineOctets()
        _ = text.utf8.withContiguousStorageIfAvailable { octets.append(UnsafeRawBufferPointer($0)) }
        storage = .inline(octets)
    }

    public init(stringLiteral value: String) { self.init(value) }

    /// A comment of at most `length` (≤ 64) octets of UTF-8, written in place by `body`, which
    /// returns how many it wrote.
    public init(writing length: Int, _ body: (UnsafeMutableRawBufferPointer) -> Int) {
        var octets = InlineOctets()
        octets.append(upTo: length, body)
        storage = .inline(octets)
    }

    /// The comment's UTF-8 octets.
    public func withUTF8<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        switch storage {
        case .inline(let octets):
            return try octets.withUnsafeBytes(body)
        case .text(var text):
            return try text.withUTF8 { try body(UnsafeRawBufferPointer($0)) }
        }
    }

    public var utf8Count: Int {
        switch storage {
        case .inline(let octets): octets.count
        case .text(let text): text.utf8.count
        }
    }

    public var description: String { withUTF8 { String(decoding: $0, as: UTF8.self) } }
}

/// A list of set-element changes applied by `NFTablesClient.apply` as one atomic netlink batch.
public struct NFTChangeSet: Sendable {
    /// One change, in the order it will be sent.
    ///
    /// A struct with a kind rather than an enum with payloads: the encoder reads each field where the
    /// operation lies in the change set's storage, where binding an enum's payload copied the whole
    /// operation (its inline key, a retain per string) and destroyed the copy, ~250 instructions per
    /// element of a 1000-element batch (docs/PERFORMANCE.md, figure 6). Build one with `add`,
    /// `delete` or `flush`.
    public struct Operation: Sendable, Equatable {
        public enum Kind: Sendable, Equatable {
            /// NFT_MSG_NEWSETELEM without NLM_F_EXCL: adds the element, or refreshes the timeout of an existing one.
            case add
            /// NFT_MSG_DELSETELEM: the batch fails (ENOENT) if the element is absent.
            case delete
            /// NFT_MSG_DELSETELEM without elements: removes every element of the set.
            case flush
        }
        public let kind: Kind
        public let set: String
        /// Inline (an add per admitted flow allocates nothing); empty for a flush.
        public let key: NFTSetKey
        /// The mapped value (maps only) and the last key of a range (sets declared with `flags
        /// interval`): arrays, since few elements have them (NAT maps, DENY ranges).
        public let data: [UInt8]?
        public let keyEnd: [UInt8]?
        /// Add only: the element's own timeout in the kernel's unit, and its comment. Milliseconds,
        /// not `Duration`: the engine grants whole seconds, and `Duration`'s conversion (its
        /// 128-bit components) was ~190 instructions per admitted flow (docs/PERFORMANCE.md,
        /// "Sixteenth pass").
        public let timeoutMilliseconds: UInt64?
        public let comment: NFTComment?

        public static func add(set: String, key: NFTSetKey, data: [UInt8]?, timeout: Duration?, comment: NFTComment? = nil,
                               keyEnd: [UInt8]? = nil) -> Operation {
            Operation(kind: .add, set: set, key: key, data: data, keyEnd: keyEnd, timeoutMilliseconds: timeout?.netfilterMilliseconds,
                      comment: comment)
        }

        public static func add(set: String, key: NFTSetKey, data: [UInt8]?, timeoutSeconds: UInt32, comment: NFTComment? = nil,
                               keyEnd: [UInt8]? = nil) -> Operation {
            Operation(kind: .add, set: set, key: key, data: data, keyEnd: keyEnd, timeoutMilliseconds: UInt64(timeoutSeconds) * 1000,
                      comment: comment)
        }

        public static func delete(set: String, key: NFTSetKey, keyEnd: [UInt8]? = nil) -> Operation {
            Operation(kind: .delete, set: set, key: key, data: nil, keyEnd: keyEnd, timeoutMilliseconds: nil, comment: nil)
        }

        public static func flush(set: String) -> Operation {
            Operation(kind: .flush, set: set, key: NFTSetKey(), data: nil, keyEnd: nil, timeoutMilliseconds: nil, comment: nil)
        }
    }

    public let family: NFTFamily
    public let table: String
    public private(set) var operations: [Operation] = []

    public init(family: NFTFamily = .inet, table: String = "midcom") {
        self.family = family
        self.table = table
    }

    /// An empty change set in the storage of `operations` (`NFTablesClient`'s reused change set).
    /// Emptied one by one: `removeAll(keepingCapacity:)` walks the generic `replaceSubrange`.
    init(family: NFTFamily, table: String, reusing operations: consuming [Operation]) {
        self.family = family
        self.table = table
        self.operations = consume operations
        while !self.operations.isEmpty { self.operations.removeLast() }
    }

    /// Hands the storage on to the next change set (`init(family:table:reusing:)`).
    mutating func takeOperations() -> [Operation] {
        var taken: [Operation] = []
        swap(&taken, &operations)
        return taken
    }

    /// Room for `count` operations, for callers that know how many they will add.
    public mutating func reserveCapacity(_ count: Int) {
        operations.reserveCapacity(count)
    }

    /// Most change sets hold one to three operations (an admission, a refresh, a removal): room for
    /// four at the first append saves the reallocations of growing one by one.
    private mutating func appendOperation(_ operation: consuming Operation) {
        if operations.capacity == 0 { operations.reserveCapacity(4) }
        operations.append(operation)
    }

    /// Adds `key` (mapping to `data` in a map) to `set`; `timeout` overrides the set's default timeout and needs a
    /// set declared with `flags timeout`. Re-adding an existing element refreshes its timeout.
    /// `comment` is stored with the element (as `nft` stores `comment "..."`) and read back by `listElements`.
    /// `keyEnd` makes the element the range `key`...`keyEnd` of an interval set.
    public mutating func addElement(set: String, key: NFTSetKey, data: NFTSetKey? = nil, timeout: Duration? = nil,
                                    comment: NFTComment? = nil, keyEnd: NFTSetKey? = nil) {
        appendOperation(.add(set: set, key: key, data: data?.bytes, timeout: timeout, comment: comment, keyEnd: keyEnd?.bytes))
    }

    /// `addElement` with a timeout of whole seconds, as the engine grants lifetimes: the same
    /// element as `timeout: .seconds(timeoutSeconds)`, without `Duration`'s conversion.
    public mutating func addElement(set: String, key: NFTSetKey, data: NFTSetKey? = nil, timeoutSeconds: UInt32,
                                    comment: NFTComment? = nil, keyEnd: NFTSetKey? = nil) {
        appendOperation(.add(set: set, key: key, data: data?.bytes, timeoutSeconds: timeoutSeconds, comment: comment,
                             keyEnd: keyEnd?.bytes))
    }

    /// Deletes `key` (the range `key`...`keyEnd` of an interval set) from `set`. The whole change set
    /// fails if the element does not exist (it may have timed out).
    public mutating func deleteElement(set: String, key: NFTSetKey, keyEnd: NFTSetKey? = nil) {
        appendOperation(.delete(set: set, key: key, keyEnd: keyEnd?.bytes))
    }

    /// Removes every element of `set`.
    public mutating func flushSet(_ set: String) {
        appendOperation(.flush(set: set))
    }

    /// Empties the change set and keeps its storage, for a caller that sends many in a row: a
    /// thousand operations take ~220 KiB, and allocating that afresh per transaction had glibc
    /// grow and trim its heap each time, ~75 page faults per transaction (docs/PERFORMANCE.md,
    /// figure 6).
    public mutating func removeAll() {
        operations.removeAll(keepingCapacity: true)
    }

    public var isEmpty: Bool { operations.isEmpty }
    public var count: Int { operations.count }
}

/// The shape of a set as the kernel reports it: key and data lengths in octets (each field of a
/// concatenation padded to 4).
public struct NFTSetLayout: Sendable, Equatable {
    public var keyLength: Int
    /// nil for a plain set, the mapped value's length for a map.
    public var dataLength: Int?

    public init(keyLength: Int, dataLength: Int?) {
        self.keyLength = keyLength
        self.dataLength = dataLength
    }
}

/// One element of a set as the kernel reports it.
public struct NFTSetElement: Sendable, Equatable {
    public var key: [UInt8]
    /// The range's last key, for elements of interval sets.
    public var keyEnd: [UInt8]? = nil
    /// The mapped value for maps, nil for plain sets.
    public var data: [UInt8]?
    /// The element's timeout (its own, or nil when it uses the set's default or has none).
    public var timeout: Duration?
    /// Time left before the kernel removes the element; nil when it does not expire.
    public var expiresIn: Duration?
    /// From the element's `counter` expression, present when the set was declared with `counter`.
    public var packets: UInt64?
    public var bytes: UInt64?
    /// The element's comment, if it has one.
    public var comment: String?

    public init(key: [UInt8], data: [UInt8]? = nil, timeout: Duration? = nil, expiresIn: Duration? = nil,
                packets: UInt64? = nil, bytes: UInt64? = nil, comment: String? = nil) {
        self.comment = comment
        self.key = key
        self.data = data
        self.timeout = timeout
        self.expiresIn = expiresIn
        self.packets = packets
        self.bytes = bytes
    }
}

/// How a rule sends packets to an NFQUEUE.
public enum QueueEncoding: String, Sendable {
    /// The nf_tables `queue` expression (module nft_queue).
    case native
    /// The xtables NFQUEUE target, revision 3 (struct xt_NFQ_info_v3), through nft_compat. `nft list` shows it as
    /// `queue num N bypass` and warns that the table "is managed by iptables-nft".
    case compat
}

/// Which encoding `installQueueRule` should use.
public enum QueueEncodingPreference: String, Sendable {
    /// Native first; compat when the kernel answers ENOENT or EOPNOTSUPP for the `queue` expression.
    case auto
    case native
    case compat
}

/// The queue a rule sends packets to.
public struct QueueRuleSpec: Sendable, Equatable {
    /// The first (or only) queue.
    public var queueNumber: UInt16
    /// When greater than 1 the kernel balances over queues queueNumber ..< queueNumber + queueCount. By default it
    /// picks the queue from a symmetric hash of the addresses, so both directions of a flow reach the same reader.
    public var queueCount: UInt16 = 1
    /// Balance by the CPU that handles the packet instead of by flow hash (NFQ_FLAG_CPU_FANOUT). Only with queueCount > 1.
    public var cpuFanout: Bool = false
    /// Accept packets when no program is bound to the queue instead of dropping them (NFQ_FLAG_BYPASS).
    public var bypass: Bool = false

    public init(queueNumber: UInt16, queueCount: UInt16 = 1, cpuFanout: Bool = false, bypass: Bool = false) {
        self.queueNumber = queueNumber
        self.queueCount = queueCount
        self.cpuFanout = cpuFanout
        self.bypass = bypass
    }

    /// NFT_QUEUE_FLAG_* / NFQ_FLAG_* (same values).
    var flags: UInt16 {
        (bypass ? 0x01 : 0) | (cpuFanout && queueCount > 1 ? 0x02 : 0)
    }
}

extension Duration {
    /// Whole milliseconds, rounded up so that a positive duration never becomes 0 ("no timeout").
    var netfilterMilliseconds: UInt64 {
        let (seconds, attoseconds) = components
        if seconds < 0 { return 0 }
        let fraction = (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return UInt64(seconds) * 1000 + UInt64(fraction)
    }
}

/// The user data `nft` writes and reads on tables and set elements: type-length-value records, the
/// comment being type 0 (NFTNL_UDATA_TABLE_COMMENT, NFTNL_UDATA_SET_ELEM_COMMENT) holding a
/// NUL-terminated string of at most 127 octets.
enum UserData {
    static let commentType: UInt8 = 0
    static let maximumCommentLength = 127

    static func encode(comment: String) -> [UInt8] {
        let text = Array(comment.utf8.prefix(maximumCommentLength))
        return [commentType, UInt8(text.count + 1)] + text + [0]
    }

    static func comment(in bytes: [UInt8]) -> String? {
        var offset = 0
        while offset + 2 <= bytes.count {
            let type = bytes[offset], length = Int(bytes[offset + 1])
            let end = offset + 2 + length
            guard end <= bytes.count else { return nil }
            if type == commentType {
                let value = bytes[(offset + 2)..<end].prefix { $0 != 0 }
                return String(decoding: value, as: UTF8.self)
            }
            offset = end
        }
        return nil
    }
}

/// A table as the kernel knows it: its handle (new whenever the table is created again) and its
/// comment ("" when it has none).
public struct NFTTableState: Equatable, Sendable {
    public var handle: UInt64
    public var comment: String
    public init(handle: UInt64, comment: String) {
        self.handle = handle
        self.comment = comment
    }
}
