import CNetfilter

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Writes nf_tables transactions — NFNL_MSG_BATCH_BEGIN, the set-element messages, NFNL_MSG_BATCH_END —
/// straight into one buffer that lives as long as the client and is reused for every transaction.
///
/// Why not libnftnl: building an element through it costs an `nftnl_set`, an `nftnl_set_elem` and
/// copies of every attribute on the heap, and a batch through `nftnl_batch` a fresh page per
/// transaction; on the per-change path midcomd takes (one transaction per admission) that was most
/// of the user-space time (docs/PERFORMANCE.md, figure 6). Here an element costs a handful of stores;
/// the buffer grows only when a transaction is larger than any before it.
///
/// The bytes are exactly those libnftnl 1.2 builds for the same change, attribute order included, with one
/// `nftnl_set` per message (`NFTBatchEncoderTests` compares the two), so the kernel sees the same requests.
/// A run of adds (or deletes) of one set can share a message, as `nft` sends them (`joining`). Layout, from the
/// kernel's uapi headers (linux/netlink.h, linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h):
///
///     nlmsghdr  len u32, type u16 = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_*, flags u16 = NLM_F_REQUEST | …,
///               seq u32, pid u32 = 0                                           (host byte order)
///     nfgenmsg  family u8, version u8 = NFNETLINK_V0, res_id be16 (NFNL_SUBSYS_NFTABLES on the batch
///               delimiters, whose type is NFNL_MSG_BATCH_BEGIN/END without a subsystem)
///     NFTA_SET_ELEM_LIST_SET "name\0", NFTA_SET_ELEM_LIST_TABLE "table\0",
///     NFTA_SET_ELEM_LIST_ELEMENTS (nested; absent for a flush) {
///       NFTA_LIST_ELEM (nested; libnftnl numbers the entries 1, 2, … and so do we) {
///         NFTA_SET_ELEM_TIMEOUT be64 milliseconds, NFTA_SET_ELEM_KEY (nested) { NFTA_DATA_VALUE bytes },
///         NFTA_SET_ELEM_KEY_END (nested) { NFTA_DATA_VALUE }, NFTA_SET_ELEM_DATA (nested) { NFTA_DATA_VALUE },
///         NFTA_SET_ELEM_USERDATA (comment TLV) } }
///
/// Every attribute is `len u16, type u16, payload`, padded with zeros to 4 octets (NLA_ALIGNTO);
/// `len` counts header and payload but not the padding. Nested attributes carry NLA_F_NESTED.
///
/// All pointer arithmetic of the nftables client's element path lives here: every write is preceded by
/// `reserve` for the exact length of what follows, computed before anything is written. Not thread-safe:
/// `NFTablesClient` uses its encoder under its lock only.
final class NFTBatchEncoder {
    // nfnetlink.h and nf_tables.h values (stable kernel ABI).
    static let subsystemNFTables: UInt16 = 10  // NFNL_SUBSYS_NFTABLES
    static let batchBegin: UInt16 = 0x10  // NFNL_MSG_BATCH_BEGIN = NLMSG_MIN_TYPE
    static let batchEnd: UInt16 = 0x11  // NFNL_MSG_BATCH_END = NLMSG_MIN_TYPE + 1
    static let headerLength = 20  // nlmsghdr (16) + nfgenmsg (4)
    static let nested = UInt16(NLA_F_NESTED)

    private var base: UnsafeMutableRawPointer
    private(set) var capacity: Int
    /// Octets written since the last `reset`.
    private(set) var count = 0
    /// The capacity the encoder starts with and shrinks back to after an unusually large transaction.
    let initialCapacity: Int

    /// 16 KiB holds a transaction of ~100 admissions; larger ones grow the buffer once.
    init(capacity: Int = 16 << 10) {
        initialCapacity = capacity
        self.capacity = capacity
        base = .allocate(byteCount: capacity, alignment: 16)
    }

    deinit { base.deallocate() }

    /// The encoded transaction.
    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    /// Starts a new transaction in the same buffer. A buffer grown beyond 4 MiB by a huge
    /// transaction (a ruleset restore) is given back rather than kept for the client's lifetime.
    func reset() {
        count = 0
        open = nil
        if capacity > 4 << 20 {
            base.deallocate()
            capacity = initialCapacity
            base = .allocate(byteCount: capacity, alignment: 16)
        }
    }

    /// Makes room for `length` more octets.
    private func reserve(_ length: Int) {
        guard count + length > capacity else { return }
        let grown = max(capacity * 2, count + length)
        let bigger = UnsafeMutableRawPointer.allocate(byteCount: grown, alignment: 16)
        bigger.copyMemory(from: base, byteCount: count)
        base.deallocate()
        base = bigger
        capacity = grown
    }

    // MARK: Messages

    /// NFNL_MSG_BATCH_BEGIN: opens the transaction for the nf_tables subsystem.
    func appendBatchBegin(sequence: UInt32) {
        appendDelimiter(type: Self.batchBegin, sequence: sequence)
    }

    /// NFNL_MSG_BATCH_END: the kernel commits everything since BATCH_BEGIN, or nothing.
    func appendBatchEnd(sequence: UInt32) {
        appendDelimiter(type: Self.batchEnd, sequence: sequence)
    }

    private func appendDelimiter(type: UInt16, sequence: UInt32) {
        open = nil
        reserve(Self.headerLength)
        putHeader(length: Self.headerLength, type: type, flags: UInt16(NLM_F_REQUEST), sequence: sequence,
                  family: UInt8(AF_UNSPEC), resourceID: Self.subsystemNFTables)
    }

    /// One NFT_MSG_NEWSETELEM (add: NLM_F_CREATE, no NLM_F_EXCL, so an existing element takes the new
    /// timeout) or NFT_MSG_DELSETELEM (delete one element, or flush the set when it names none).
    /// With `joining`, an add or delete that follows one of the same kind on the same set goes into
    /// the open message as one more NFTA_LIST_ELEM (as `nft` and libnftnl batch elements) while the
    /// element list stays within a 16-bit attribute length; returns whether a new message was begun
    /// (and so took `sequence`).
    @discardableResult
    func appendElementOperation(_ operation: UnsafePointer<NFTChangeSet.Operation>, family: NFTFamily, table: String, sequence: UInt32,
                                joining: Bool = false) -> Bool {
        switch operation.pointee.kind {
        case .add:
            let milliseconds = operation.pointee.timeoutMilliseconds
            let commentLength = operation.pointee.comment.map { min($0.utf8Count, UserData.maximumCommentLength) }
            let length = Self.elementLength(key: operation.pointee.key, keyEnd: operation.pointee.keyEnd, data: operation.pointee.data,
                                            hasTimeout: milliseconds != nil, commentLength: commentLength)
            let begun = !(joining && canJoin(type: Self.newSetElement, set: operation.pointee.set, elementLength: length))
            if begun {
                beginMessage(type: Self.newSetElement, flags: UInt16(NLM_F_REQUEST | NLM_F_CREATE), family: family, table: table,
                             set: operation.pointee.set, sequence: sequence)
            }
            putElement(length: length, operation, timeout: milliseconds, commentLength: commentLength)
            return begun
        case .delete:
            let length = Self.elementLength(key: operation.pointee.key, keyEnd: operation.pointee.keyEnd, data: nil, hasTimeout: false,
                                            commentLength: nil)
            let begun = !(joining && canJoin(type: Self.deleteSetElement, set: operation.pointee.set, elementLength: length))
            if begun {
                beginMessage(type: Self.deleteSetElement, flags: UInt16(NLM_F_REQUEST), family: family, table: table,
                             set: operation.pointee.set, sequence: sequence)
            }
            putElement(length: length, operation, timeout: nil, commentLength: nil)
            return begun
        case .flush:
            // libnftnl leaves the element list out when there is no element: a DELSETELEM naming only
            // the set flushes it. Nothing may join it.
            beginMessage(type: Self.deleteSetElement, flags: UInt16(NLM_F_REQUEST), family: family, table: table,
                         set: operation.pointee.set, sequence: sequence)
            open = nil
            return true
        }
    }

    /// The same for an operation not stored in a change set (tests).
    @discardableResult
    func appendElementOperation(_ operation: NFTChangeSet.Operation, family: NFTFamily, table: String, sequence: UInt32,
                                joining: Bool = false) -> Bool {
        withUnsafePointer(to: operation) { appendElementOperation($0, family: family, table: table, sequence: sequence, joining: joining) }
    }

    static let newSetElement = UInt16(NFT_MSG_NEWSETELEM.rawValue)
    static let deleteSetElement = UInt16(NFT_MSG_DELSETELEM.rawValue)

    /// The element message being written: where its header and its element list start, so that
    /// both lengths can be patched when an element joins.
    private var open: (type: UInt16, set: String, message: Int, elements: Int, count: UInt16)? = nil

    private func canJoin(type: UInt16, set: String, elementLength: Int) -> Bool {
        guard let open, open.type == type, open.set == set else { return false }
        return count - open.elements + elementLength <= Int(UInt16.max)
    }

    /// Header, set and table of an element message; the element list starts empty and grows with
    /// every `putElement`.
    private func beginMessage(type: UInt16, flags: UInt16, family: NFTFamily, table: String, set: String, sequence: UInt32) {
        let length = Self.headerLength + Self.attributeLength(set.utf8.count + 1) + Self.attributeLength(table.utf8.count + 1)
        reserve(length)
        let start = count
        putHeader(length: length, type: Self.subsystemNFTables << 8 | type, flags: flags, sequence: sequence,
                  family: family.rawValue, resourceID: 0)
        putString(UInt16(NFTA_SET_ELEM_LIST_SET.rawValue), set)
        putString(UInt16(NFTA_SET_ELEM_LIST_TABLE.rawValue), table)
        open = (type, set, start, -1, 0)
    }

    /// NFTA_LIST_ELEM with its attributes, header included.
    private static func elementLength(key: NFTSetKey, keyEnd: [UInt8]?, data: [UInt8]?, hasTimeout: Bool, commentLength: Int?) -> Int {
        var length = 4 + 4 + attributeLength(key.count)
        if hasTimeout { length += attributeLength(8) }
        if let keyEnd { length += 4 + attributeLength(keyEnd.count) }
        if let data { length += 4 + attributeLength(data.count) }
        if let commentLength { length += attributeLength(commentLength + 3) }
        return length
    }

    /// One NFTA_LIST_ELEM at the end of the open message (opening its element list first), then
    /// the message's and the list's lengths brought up to date.
    private func putElement(length: Int, _ operation: UnsafePointer<NFTChangeSet.Operation>, timeout: UInt64?, commentLength: Int?) {
        guard var open else { preconditionFailure("NFTBatchEncoder: an element outside an element message") }
        reserve(4 + length)  // one exact reservation, then stores without further checks
        if open.elements < 0 {
            open.elements = count
            putAttributeHeader(UInt16(NFTA_SET_ELEM_LIST_ELEMENTS.rawValue) | Self.nested, length: 4)
        }
        open.count += 1
        self.open = open
        let start = count
        // libnftnl numbers the list's entries 1, 2, … (NFTA_LIST_ELEM is 1); the kernel reads any type.
        putAttributeHeader(open.count | Self.nested, length: length)
        if let timeout { putBigEndian64(UInt16(NFTA_SET_ELEM_TIMEOUT.rawValue), timeout) }
        operation.pointee.key.octets.withUnsafeBytes { putValue(UInt16(NFTA_SET_ELEM_KEY.rawValue), $0) }
        if let keyEnd = operation.pointee.keyEnd { keyEnd.withUnsafeBytes { putValue(UInt16(NFTA_SET_ELEM_KEY_END.rawValue), $0) } }
        if let data = operation.pointee.data { data.withUnsafeBytes { putValue(UInt16(NFTA_SET_ELEM_DATA.rawValue), $0) } }
        if let commentLength, let comment = operation.pointee.comment { putComment(comment, length: commentLength) }
        assert(count - start == length, "NFTBatchEncoder: computed \(length) octets, wrote \(count - start)")
        (base + open.elements).storeBytes(of: UInt16(count - open.elements), as: UInt16.self)
        (base + open.message).storeBytes(of: UInt32(count - open.message), as: UInt32.self)
    }

    /// A message built by libnftnl (rules: rare, not worth an encoder of their own). `build` gets
    /// `room` zeroed octets at the write position (zeroed so that libnftnl's padding is reproducible)
    /// and returns the length of the message it wrote, or nil when it could not build it.
    func appendBuilt(room: Int, _ build: (UnsafeMutablePointer<CChar>) -> Int?) -> Bool {
        open = nil
        reserve(room)
        let position = base + count
        memset(position, 0, room)
        guard let length = build(position.assumingMemoryBound(to: CChar.self)), length <= room else { return false }
        count += Self.aligned(length)
        return true
    }

    // MARK: Attributes

    /// Header plus payload, padded to NLA_ALIGNTO.
    @inline(__always)
    static func attributeLength(_ payload: Int) -> Int { aligned(4 + payload) }

    @inline(__always)
    static func aligned(_ length: Int) -> Int { (length + 3) & ~3 }

    private func putHeader(length: Int, type: UInt16, flags: UInt16, sequence: UInt32, family: UInt8, resourceID: UInt16) {
        let header = base + count
        header.storeBytes(of: UInt32(length), toByteOffset: 0, as: UInt32.self)
        header.storeBytes(of: type, toByteOffset: 4, as: UInt16.self)
        header.storeBytes(of: flags, toByteOffset: 6, as: UInt16.self)
        header.storeBytes(of: sequence, toByteOffset: 8, as: UInt32.self)
        header.storeBytes(of: 0, toByteOffset: 12, as: UInt32.self)  // nlmsg_pid: the kernel
        header.storeBytes(of: family, toByteOffset: 16, as: UInt8.self)
        header.storeBytes(of: 0, toByteOffset: 17, as: UInt8.self)  // NFNETLINK_V0
        header.storeBytes(of: resourceID.bigEndian, toByteOffset: 18, as: UInt16.self)
        count += Self.headerLength
    }

    private func putAttributeHeader(_ type: UInt16, length: Int) {
        (base + count).storeBytes(of: UInt16(length), toByteOffset: 0, as: UInt16.self)
        (base + count).storeBytes(of: type, toByteOffset: 2, as: UInt16.self)
        count += 4
    }

    /// Zeros from the end of a payload of `length` octets up to the next 4-octet boundary.
    private func pad(_ length: Int) {
        let padding = Self.aligned(length) - length
        if padding > 0 { memset(base + count, 0, padding) }
        count += padding
    }

    private func putBytes(_ type: UInt16, _ bytes: UnsafeRawBufferPointer) {
        putAttributeHeader(type, length: 4 + bytes.count)
        if let source = bytes.baseAddress { (base + count).copyMemory(from: source, byteCount: bytes.count) }
        count += bytes.count
        pad(bytes.count)
    }

    /// NLA_STRING with its terminating NUL, as libmnl's mnl_attr_put_strz.
    private func putString(_ type: UInt16, _ string: String) {
        let length = string.utf8.count
        putAttributeHeader(type, length: 4 + length + 1)
        copyUTF8(string, count: length)
        (base + count).storeBytes(of: 0, as: UInt8.self)
        count += 1
        pad(length + 1)
    }

    /// Copies the first `count` UTF-8 octets of `string`; native strings (all of ours) are copied
    /// from their storage without a temporary array.
    private func copyUTF8(_ string: String, count length: Int) {
        let destination = base + count
        let copied = string.utf8.withContiguousStorageIfAvailable { source -> Bool in
            if let address = source.baseAddress { destination.copyMemory(from: address, byteCount: length) }
            return true
        }
        if copied == nil {
            for (offset, byte) in string.utf8.prefix(length).enumerated() {
                destination.storeBytes(of: byte, toByteOffset: offset, as: UInt8.self)
            }
        }
        count += length
    }

    private func putBigEndian64(_ type: UInt16, _ value: UInt64) {
        putAttributeHeader(type, length: 12)
        (base + count).storeBytes(of: value.bigEndian, as: UInt64.self)  // unaligned stores are allowed
        count += 8
    }

    /// A nested nft_data holding NFTA_DATA_VALUE.
    private func putValue(_ type: UInt16, _ value: UnsafeRawBufferPointer) {
        putAttributeHeader(type | Self.nested, length: 4 + Self.attributeLength(value.count))
        putBytes(UInt16(NFTA_DATA_VALUE.rawValue), value)
    }

    /// NFTA_SET_ELEM_USERDATA holding one comment record as `nft` writes it (see `UserData`): type 0,
    /// length, the text cut to 127 octets, a NUL.
    private func putComment(_ comment: NFTComment, length: Int) {
        putAttributeHeader(UInt16(NFTA_SET_ELEM_USERDATA.rawValue), length: 4 + length + 3)
        (base + count).storeBytes(of: UserData.commentType, toByteOffset: 0, as: UInt8.self)
        (base + count).storeBytes(of: UInt8(length + 1), toByteOffset: 1, as: UInt8.self)
        count += 2
        comment.withUTF8 { text in
            if let source = text.baseAddress { (base + count).copyMemory(from: source, byteCount: length) }
        }
        count += length
        (base + count).storeBytes(of: 0, as: UInt8.self)
        count += 1
        pad(length + 3)
    }
}
