import CNetfilter
import Glibc
import SystemSupport

/// Reads set elements for restart adoption on a netlink socket of its own, so that neither a long
/// walk nor thousands of look-ups wait on (or hold up) `NFTablesClient`, which the packet loop
/// programs through.
///
/// - `elements(set:keys:)`: many NFT_MSG_GETSETELEM requests for one key each, sent back to back
///   in one `sendto` (the kernel answers every message of a datagram in turn): O(1) per key,
///   whatever the set's size.
/// - `forEachElement(set:)`: a dump, decoded and handed on datagram by datagram, so a million
///   elements never sit in memory at once. The kernel still restarts its walk for every ~32 KiB
///   chunk (quadratic in the set's size): use it only when nothing better is known.
public final class NFTElementLookup: @unchecked Sendable {
    private let socket: OpaquePointer  // struct mnl_socket *
    private let receiveBuffer: UnsafeMutableRawBufferPointer
    private var sequence: UInt32
    /// Requests per datagram: each answer is a reply (about 4 KiB of socket buffer in the kernel's
    /// accounting) and an acknowledgement, which must all fit the receive buffer.
    static let lookupsPerDatagram = 128

    /// Calls are not serialized: one owner (the adopting thread) uses an instance.
    public init() throws(NetfilterError) {
        socket = try openNetfilterSocket(object: "nftables (element look-up)")
        var size: Int32 = 8 << 20
        // Root may exceed rmem_max (FORCE); otherwise the kernel caps the plain request.
        if setsockopt(mnl_socket_get_fd(socket), SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            _ = setsockopt(mnl_socket_get_fd(socket), SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        receiveBuffer = .allocate(byteCount: 256 << 10, alignment: 16)
        var seed = timespec()
        clock_gettime(CLOCK_MONOTONIC, &seed)
        sequence = UInt32(truncatingIfNeeded: seed.tv_nsec) | 1
    }

    deinit {
        mnl_socket_close(socket)
        receiveBuffer.deallocate()
    }

    /// The element of each key (nil where the set has none), in the order of `keys`.
    public func elements(family: NFTFamily = .inet, table: String, set: String, keys: [NFTSetKey]) throws(NetfilterError) -> [NFTSetElement?] {
        var found = [NFTSetElement?](repeating: nil, count: keys.count)
        var start = 0
        while start < keys.count {
            let end = min(start + Self.lookupsPerDatagram, keys.count)
            try lookUp(family: family, table: table, set: set, keys: keys[start..<end], into: &found)
            start = end
        }
        return found
    }

    private func lookUp(family: NFTFamily, table: String, set: String, keys: ArraySlice<NFTSetKey>, into found: inout [NFTSetElement?]) throws(NetfilterError) {
        let operation = "NFT_MSG_GETSETELEM", object = "set \(family) \(table) \(set)"
        let first = sequence &+ 1
        var message = [UInt8](repeating: 0, count: keys.count * 256 + 4096)
        var length = 0
        for (offset, key) in keys.enumerated() {
            guard let request = nftnl_set_alloc(), let element = nftnl_set_elem_alloc() else {
                throw NetfilterError(operation: operation, object: object, errno: ENOMEM)
            }
            defer { nftnl_set_free(request) }
            nftnl_set_set_str(request, attr(NFTNL_SET_TABLE), table)
            nftnl_set_set_str(request, attr(NFTNL_SET_NAME), set)
            key.bytes.withUnsafeBytes { _ = nftnl_set_elem_set(element, attr(NFTNL_SET_ELEM_KEY), $0.baseAddress, UInt32($0.count)) }
            nftnl_set_elem_add(request, element)
            let written = message.withUnsafeMutableBytes { buffer -> Int in
                let nlh = nftnl_nlmsg_build_hdr(
                    (buffer.baseAddress! + length).assumingMemoryBound(to: CChar.self), msgType(NFT_MSG_GETSETELEM),
                    UInt16(family.rawValue), UInt16(NLM_F_ACK), first &+ UInt32(offset))!
                nftnl_set_elems_nlmsg_build_payload(nlh, request)
                return Int(nlh.pointee.nlmsg_len)
            }
            length += (written + 3) & ~3
        }
        sequence = first &+ UInt32(keys.count - 1)
        let sent = message.withUnsafeBytes { bytes in syscall { mnl_socket_sendto(socket, bytes.baseAddress, length) } }
        _ = try sent.get("sendto(\(operation))", object)
        var answered = 0
        var failure: Int32 = 0
        let fd = mnl_socket_get_fd(socket)
        while answered < keys.count {
            let received = try syscall { recv(fd, receiveBuffer.baseAddress, receiveBuffer.count, 0) }.get("recv(\(operation))", object)
            forEachMessage(length: received) { nlh in
                let index = Int(cnf_nlmsg_seq(nlh) &- first)
                guard index >= 0, index < keys.count else { return }  // stale answers of an earlier call
                switch Int32(cnf_nlmsg_type(nlh)) {
                case NLMSG_ERROR:
                    answered += 1
                    let code = cnf_nlmsg_error_code(nlh)
                    // ENOENT: no such element (or set): the answer is "none".
                    if code != 0, code != ENOENT, failure == 0 { failure = code }
                default:
                    if let element = Self.decode(nlh).first { found[keys.startIndex + index] = element }
                }
            }
        }
        if failure != 0 { throw NetfilterError(operation: operation, object: object, errno: failure) }
    }

    /// Walks the set (a dump), handing its elements to `body` a datagram (up to ~32 KiB) at a time.
    public func forEachElement(family: NFTFamily = .inet, table: String, set: String, _ body: ([NFTSetElement]) -> Void) throws(NetfilterError) {
        let operation = "NFT_MSG_GETSETELEM (dump)", object = "set \(family) \(table) \(set)"
        sequence &+= 1
        let current = sequence
        guard let request = nftnl_set_alloc() else { throw NetfilterError(operation: operation, object: object, errno: ENOMEM) }
        defer { nftnl_set_free(request) }
        nftnl_set_set_str(request, attr(NFTNL_SET_TABLE), table)
        nftnl_set_set_str(request, attr(NFTNL_SET_NAME), set)
        var message = [UInt8](repeating: 0, count: 4096)
        let length = message.withUnsafeMutableBytes { buffer -> Int in
            let nlh = nftnl_nlmsg_build_hdr(
                buffer.baseAddress!.assumingMemoryBound(to: CChar.self), msgType(NFT_MSG_GETSETELEM), UInt16(family.rawValue),
                UInt16(NLM_F_DUMP), current)!
            nftnl_set_elems_nlmsg_build_payload(nlh, request)
            return Int(nlh.pointee.nlmsg_len)
        }
        let sent = message.withUnsafeBytes { bytes in syscall { mnl_socket_sendto(socket, bytes.baseAddress, length) } }
        _ = try sent.get("sendto(\(operation))", object)
        let fd = mnl_socket_get_fd(socket)
        var finished = false
        var failure: Int32 = 0
        var batch: [NFTSetElement] = []
        while !finished {
            let received = try syscall { recv(fd, receiveBuffer.baseAddress, receiveBuffer.count, 0) }.get("recv(\(operation))", object)
            batch.removeAll(keepingCapacity: true)
            forEachMessage(length: received) { nlh in
                guard !finished, cnf_nlmsg_seq(nlh) == current else { return }
                switch Int32(cnf_nlmsg_type(nlh)) {
                case NLMSG_DONE: finished = true
                case NLMSG_ERROR:
                    failure = cnf_nlmsg_error_code(nlh)
                    finished = true
                default: batch += Self.decode(nlh)
                }
            }
            if !batch.isEmpty { body(batch) }
        }
        if failure != 0 { throw NetfilterError(operation: operation, object: object, errno: failure) }
    }

    private func forEachMessage(length: Int, _ body: (UnsafeMutablePointer<nlmsghdr>) -> Void) {
        var remaining = Int32(length)
        var current = receiveBuffer.baseAddress?.assumingMemoryBound(to: nlmsghdr.self)
        while let nlh = current, mnl_nlmsg_ok(nlh, remaining) {
            body(nlh)
            current = mnl_nlmsg_next(nlh, &remaining)
        }
    }

    /// The elements of one NEWSETELEM message (key, data, key end, timeout, expiry, comment).
    static func decode(_ nlh: UnsafeMutablePointer<nlmsghdr>) -> [NFTSetElement] {
        guard let set = nftnl_set_alloc() else { return [] }
        defer { nftnl_set_free(set) }
        guard nftnl_set_elems_nlmsg_parse(nlh, set) >= 0, let iterator = nftnl_set_elems_iter_create(set) else { return [] }
        defer { nftnl_set_elems_iter_destroy(iterator) }
        var elements: [NFTSetElement] = []
        while let element = nftnl_set_elems_iter_next(iterator) {
            func bytesOf(_ attribute: UInt16) -> [UInt8]? {
                guard nftnl_set_elem_is_set(element, attribute) else { return nil }
                var length: UInt32 = 0
                guard let pointer = nftnl_set_elem_get(element, attribute, &length) else { return nil }
                return Array(UnsafeRawBufferPointer(start: pointer, count: Int(length)))
            }
            func milliseconds(_ attribute: UInt16) -> Duration? {
                guard nftnl_set_elem_is_set(element, attribute) else { return nil }
                return .milliseconds(Int64(clamping: nftnl_set_elem_get_u64(element, attribute)))
            }
            var decoded = NFTSetElement(
                key: bytesOf(attr(NFTNL_SET_ELEM_KEY)) ?? [], data: bytesOf(attr(NFTNL_SET_ELEM_DATA)),
                timeout: milliseconds(attr(NFTNL_SET_ELEM_TIMEOUT)), expiresIn: milliseconds(attr(NFTNL_SET_ELEM_EXPIRATION)),
                comment: bytesOf(attr(NFTNL_SET_ELEM_USERDATA)).flatMap(UserData.comment(in:)))
            decoded.keyEnd = bytesOf(attr(NFTNL_SET_ELEM_KEY_END))
            elements.append(decoded)
        }
        return elements
    }
}
