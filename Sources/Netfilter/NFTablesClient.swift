import CNetfilter
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import SystemSupport

/// Programs nftables through one netlink socket (libmnl) with messages built by libnftnl.
///
/// Every change is one transaction: NFNL_MSG_BATCH_BEGIN, the messages, NFNL_MSG_BATCH_END, sent in one sendmsg.
/// The kernel applies all of it or none of it. Every message carries its own sequence number and the client records
/// what each number stood for, because the kernel reports an error against the message that caused it (or against
/// BATCH_BEGIN when the whole batch is refused, e.g. without CAP_NET_ADMIN).
///
/// The kernel processes a batch synchronously inside sendmsg, so when sendmsg returns every error is already queued on
/// the socket; the client then drains the socket without blocking. Messages are sent without NLM_F_ACK, so a
/// successful batch produces no reply at all (the approach of `nft` itself).
///
/// Calls are serialized by a mutex: one socket, one request in flight.
public final class NFTablesClient: @unchecked Sendable {
    struct State {
        var sequence: UInt32
        /// Set once the kernel refused the native `queue` expression, so `.auto` goes straight to compat.
        var nativeQueueUnsupported = false
        var sendBufferBytes: Int = 0
    }

    private let socket: OpaquePointer  // struct mnl_socket *
    private let portID: UInt32
    private let receiveBuffer: UnsafeMutableRawBufferPointer
    private let state: Mutex<State>

    /// Opens and binds a NETLINK_NETFILTER socket.
    public init() throws(NetfilterError) {
        let socket = try openNetfilterSocket(object: "nftables")
        self.socket = socket
        self.portID = mnl_socket_get_portid(socket)
        // Dumps arrive in messages of up to 32 KiB (MNL_SOCKET_DUMP_SIZE); twice that leaves room.
        self.receiveBuffer = .allocate(byteCount: 64 << 10, alignment: 16)
        var seed = timespec()
        clock_gettime(CLOCK_MONOTONIC, &seed)
        self.state = Mutex(State(sequence: UInt32(truncatingIfNeeded: seed.tv_sec) &* 1000))
    }

    deinit {
        mnl_socket_close(socket)
        receiveBuffer.deallocate()
    }

    // MARK: Public operations

    /// Applies `changes` as one atomic batch. An empty change set sends nothing.
    ///
    /// On failure nothing was changed, and the error names the operation, the set and the element (hex key).
    public func apply(_ changes: NFTChangeSet) throws(NetfilterError) {
        if changes.isEmpty { return }
        try state.withLock { (state: inout State) throws(NetfilterError) in
            let batch = try Batch(sequence: &state.sequence)
            let family = UInt16(changes.family.rawValue)
            for operation in changes.operations {
                try batch.appendElementOperation(operation, family: family, table: changes.table,
                                                 familyName: changes.family.description)
            }
            let errors = try self.send(batch, state: &state)
            if let first = errors.first { throw first.error }
        }
    }

    /// Lists the elements of a set (NFT_MSG_GETSETELEM dump).
    public func listElements(family: NFTFamily = .inet, table: String = "midcom", set: String) throws(NetfilterError) -> [NFTSetElement] {
        try getElements(family: family, table: table, set: set, key: nil)
    }

    /// One element with its timeout, expiry and counters (NFT_MSG_GETSETELEM for one key, not a dump:
    /// the kernel's set dump restarts its walk for every chunk, so listing a big set to learn about
    /// one element costs seconds). Nil when the set has no such element.
    public func element(family: NFTFamily = .inet, table: String = "midcom", set: String, key: NFTSetKey) throws(NetfilterError)
        -> NFTSetElement?
    {
        do {
            return try getElements(family: family, table: table, set: set, key: key).first
        } catch where error.errno == ENOENT {
            // Also when the set itself is missing: for the caller both mean "no such element".
            return nil
        }
    }

    private func getElements(family: NFTFamily, table: String, set: String, key: NFTSetKey?) throws(NetfilterError) -> [NFTSetElement] {
        try state.withLock { (state: inout State) throws(NetfilterError) -> [NFTSetElement] in
            let target = Target.listElements(family: family, table: table, set: set)
            let sequence = state.next()
            guard let request = nftnl_set_alloc() else { throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM) }
            defer { nftnl_set_free(request) }
            nftnl_set_set_str(request, attr(NFTNL_SET_TABLE), table)
            nftnl_set_set_str(request, attr(NFTNL_SET_NAME), set)
            if let key {
                guard let element = nftnl_set_elem_alloc() else { throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM) }
                key.bytes.withUnsafeBytes { _ = nftnl_set_elem_set(element, attr(NFTNL_SET_ELEM_KEY), $0.baseAddress, UInt32($0.count)) }
                nftnl_set_elem_add(request, element)  // the set owns the element from here
            }
            guard let collected = nftnl_set_alloc() else { throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM) }
            defer { nftnl_set_free(collected) }

            // A dump ends with NLMSG_DONE; a single GET is answered by the element and, asked for
            // with NLM_F_ACK, an acknowledgement that ends the wait.
            let flags = key == nil ? UInt16(NLM_F_DUMP) : UInt16(NLM_F_ACK)
            var message = [UInt8](repeating: 0, count: Int(cnf_mnl_socket_buffer_size()))
            let length = message.withUnsafeMutableBytes { buffer -> Int in
                let nlh = nftnl_nlmsg_build_hdr(buffer.baseAddress!.assumingMemoryBound(to: CChar.self),
                                                msgType(NFT_MSG_GETSETELEM), UInt16(family.rawValue),
                                                flags, sequence)!
                nftnl_set_elems_nlmsg_build_payload(nlh, request)
                return Int(nlh.pointee.nlmsg_len)
            }
            try self.sendRequest(message, length: length, target: target)
            try self.receiveReplies(sequence: sequence, target: target) { nlh in
                if nftnl_set_elems_nlmsg_parse(nlh, collected) < 0 {
                    return EBADMSG
                }
                return 0
            }
            return SetElementReader.elements(of: collected)
        }
    }

    /// Whether `table` exists in `family` (NFT_MSG_GETTABLE).
    public func tableExists(family: NFTFamily = .inet, table: String) throws(NetfilterError) -> Bool {
        try tableComment(family: family, table: table) != nil
    }

    /// The table's comment (`table inet midcom { comment "…" }`): "" when it has none, nil when the
    /// table does not exist.
    public func tableComment(family: NFTFamily = .inet, table: String) throws(NetfilterError) -> String? {
        try tableState(family: family, table: table)?.comment
    }

    /// The table's kernel handle and comment; nil when the table does not exist. A table deleted
    /// and loaded again (`nft -f` of an include that deletes it first) has a new handle.
    public func tableState(family: NFTFamily = .inet, table: String) throws(NetfilterError) -> NFTTableState? {
        try state.withLock { (state: inout State) throws(NetfilterError) -> NFTTableState? in
            let target = Target.getTable(family: family, table: table)
            let sequence = state.next()
            guard let request = nftnl_table_alloc() else { throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM) }
            defer { nftnl_table_free(request) }
            nftnl_table_set_str(request, attr(NFTNL_TABLE_NAME), table)
            var message = [UInt8](repeating: 0, count: Int(cnf_mnl_socket_buffer_size()))
            let length = message.withUnsafeMutableBytes { buffer -> Int in
                let nlh = nftnl_nlmsg_build_hdr(buffer.baseAddress!.assumingMemoryBound(to: CChar.self),
                                                msgType(NFT_MSG_GETTABLE), UInt16(family.rawValue),
                                                UInt16(NLM_F_ACK), sequence)!
                nftnl_table_nlmsg_build_payload(nlh, request)
                return Int(nlh.pointee.nlmsg_len)
            }
            try self.sendRequest(message, length: length, target: target)
            var comment = ""
            var handle: UInt64 = 0
            do throws(NetfilterError) {
                try self.receiveReplies(sequence: sequence, target: target) { nlh in
                    guard let found = nftnl_table_alloc() else { return ENOMEM }
                    defer { nftnl_table_free(found) }
                    guard nftnl_table_nlmsg_parse(nlh, found) >= 0 else { return EBADMSG }
                    handle = nftnl_table_get_u64(found, attr(NFTNL_TABLE_HANDLE))
                    if nftnl_table_is_set(found, attr(NFTNL_TABLE_USERDATA)) {
                        var length: UInt32 = 0
                        if let data = nftnl_table_get_data(found, attr(NFTNL_TABLE_USERDATA), &length) {
                            let bytes = Array(UnsafeRawBufferPointer(start: data, count: Int(length)))
                            comment = UserData.comment(in: bytes) ?? ""
                        }
                    }
                    return 0
                }
                return NFTTableState(handle: handle, comment: comment)
            } catch {
                if error.errno == ENOENT { return nil }
                throw error
            }
        }
    }

    /// How many rules `chain` holds (NFT_MSG_GETRULE dump of that chain): 0 also when the chain
    /// or its table does not exist.
    public func ruleCount(family: NFTFamily = .inet, table: String, chain: String) throws(NetfilterError) -> Int {
        try state.withLock { (state: inout State) throws(NetfilterError) -> Int in
            let target = Target.listRules(family: family, table: table, chain: chain)
            let sequence = state.next()
            guard let request = nftnl_rule_alloc() else { throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM) }
            defer { nftnl_rule_free(request) }
            nftnl_rule_set_str(request, attr(NFTNL_RULE_TABLE), table)
            nftnl_rule_set_str(request, attr(NFTNL_RULE_CHAIN), chain)
            var message = [UInt8](repeating: 0, count: Int(cnf_mnl_socket_buffer_size()))
            let length = message.withUnsafeMutableBytes { buffer -> Int in
                let nlh = nftnl_nlmsg_build_hdr(buffer.baseAddress!.assumingMemoryBound(to: CChar.self),
                                                msgType(NFT_MSG_GETRULE), UInt16(family.rawValue),
                                                UInt16(NLM_F_DUMP), sequence)!
                nftnl_rule_nlmsg_build_payload(nlh, request)
                return Int(nlh.pointee.nlmsg_len)
            }
            try self.sendRequest(message, length: length, target: target)
            var count = 0
            do throws(NetfilterError) {
                try self.receiveReplies(sequence: sequence, target: target) { _ in
                    count += 1
                    return 0
                }
            } catch {
                if error.errno == ENOENT { return 0 }
                throw error
            }
            return count
        }
    }

    /// The ruleset generation (NFT_MSG_GETGEN): every commit, by anyone, increments it. One small
    /// request: cheap enough to ask several times a second.
    public func generation() throws(NetfilterError) -> UInt32 {
        try state.withLock { (state: inout State) throws(NetfilterError) -> UInt32 in
            let target = Target.getGeneration
            let sequence = state.next()
            var message = [UInt8](repeating: 0, count: Int(cnf_mnl_socket_buffer_size()))
            let length = message.withUnsafeMutableBytes { buffer -> Int in
                let nlh = nftnl_nlmsg_build_hdr(buffer.baseAddress!.assumingMemoryBound(to: CChar.self),
                                                msgType(NFT_MSG_GETGEN), UInt16(AF_UNSPEC), UInt16(NLM_F_ACK), sequence)!
                return Int(nlh.pointee.nlmsg_len)
            }
            try self.sendRequest(message, length: length, target: target)
            var generation: UInt32 = 0
            try self.receiveReplies(sequence: sequence, target: target) { nlh in
                guard let gen = nftnl_gen_alloc() else { return ENOMEM }
                defer { nftnl_gen_free(gen) }
                guard nftnl_gen_nlmsg_parse(nlh, gen) >= 0 else { return EBADMSG }
                generation = nftnl_gen_get_u32(gen, UInt16(NFTNL_GEN_ID))
                return 0
            }
            return generation
        }
    }

    /// Replaces the whole content of `chain` with one rule that queues to `spec`, in one batch (flush chain, add rule).
    ///
    /// `.auto` tries the native `queue` expression first and falls back to the xtables NFQUEUE target (nft_compat)
    /// when the kernel answers ENOENT or EOPNOTSUPP for it; the answer is remembered for later calls.
    /// Returns the encoding that was installed.
    @discardableResult
    public func installQueueRule(family: NFTFamily = .inet, table: String = "midcom", chain: String,
                                 spec: QueueRuleSpec, encoding: QueueEncodingPreference = .auto) throws(NetfilterError) -> QueueEncoding {
        precondition(spec.queueCount >= 1, "QueueRuleSpec.queueCount must be at least 1")
        return try state.withLock { (state: inout State) throws(NetfilterError) -> QueueEncoding in
            let first: QueueEncoding
            switch encoding {
            case .native: first = .native
            case .compat: first = .compat
            case .auto: first = state.nativeQueueUnsupported ? .compat : .native
            }
            let batch = try Batch(sequence: &state.sequence)
            try batch.appendFlushChain(family: family, table: table, chain: chain)
            try batch.appendQueueRule(family: family, table: table, chain: chain, spec: spec, encoding: first)
            let errors = try self.send(batch, state: &state)
            guard let error = errors.first else { return first }
            guard first == .native, case .queueRule = error.target,
                  error.error.errno == ENOENT || error.error.errno == EOPNOTSUPP else { throw error.error }
            state.nativeQueueUnsupported = true
            guard encoding == .auto else { throw error.error }

            let retry = try Batch(sequence: &state.sequence)
            try retry.appendFlushChain(family: family, table: table, chain: chain)
            try retry.appendQueueRule(family: family, table: table, chain: chain, spec: spec, encoding: .compat)
            if let retryError = try self.send(retry, state: &state).first { throw retryError.error }
            return .compat
        }
    }

    /// Deletes every rule of `chain` (NFT_MSG_DELRULE without a handle), in one batch.
    public func flushChain(family: NFTFamily = .inet, table: String = "midcom", chain: String) throws(NetfilterError) {
        try state.withLock { (state: inout State) throws(NetfilterError) in
            let batch = try Batch(sequence: &state.sequence)
            try batch.appendFlushChain(family: family, table: table, chain: chain)
            if let error = try self.send(batch, state: &state).first { throw error.error }
        }
    }

    // MARK: Transport

    /// The key and data lengths (octets) of a set or map (NFT_MSG_GETSET for that one object: its
    /// elements are not listed, so this is cheap however large the set is); nil when it does not exist.
    public func setLayout(family: NFTFamily = .inet, table: String, set: String) throws(NetfilterError) -> NFTSetLayout? {
        try state.withLock { (state: inout State) throws(NetfilterError) -> NFTSetLayout? in
            let target = Target.getSet(family: family, table: table, set: set)
            let sequence = state.next()
            guard let request = nftnl_set_alloc() else { throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM) }
            defer { nftnl_set_free(request) }
            nftnl_set_set_str(request, attr(NFTNL_SET_TABLE), table)
            nftnl_set_set_str(request, attr(NFTNL_SET_NAME), set)
            var message = [UInt8](repeating: 0, count: Int(cnf_mnl_socket_buffer_size()))
            let length = message.withUnsafeMutableBytes { buffer -> Int in
                let nlh = nftnl_nlmsg_build_hdr(buffer.baseAddress!.assumingMemoryBound(to: CChar.self),
                                                msgType(NFT_MSG_GETSET), UInt16(family.rawValue), UInt16(NLM_F_ACK), sequence)!
                nftnl_set_nlmsg_build_payload(nlh, request)
                return Int(nlh.pointee.nlmsg_len)
            }
            try self.sendRequest(message, length: length, target: target)
            var layout: NFTSetLayout?
            do throws(NetfilterError) {
                try self.receiveReplies(sequence: sequence, target: target) { nlh in
                    guard let found = nftnl_set_alloc() else { return ENOMEM }
                    defer { nftnl_set_free(found) }
                    guard nftnl_set_nlmsg_parse(nlh, found) >= 0 else { return EBADMSG }
                    let hasData = nftnl_set_is_set(found, attr(NFTNL_SET_DATA_LEN))
                    layout = NFTSetLayout(
                        keyLength: Int(nftnl_set_get_u32(found, attr(NFTNL_SET_KEY_LEN))),
                        dataLength: hasData ? Int(nftnl_set_get_u32(found, attr(NFTNL_SET_DATA_LEN))) : nil)
                    return 0
                }
                return layout
            } catch {
                if error.errno == ENOENT { return nil }
                throw error
            }
        }
    }

    /// The netlink bytes `apply` would send for `changes` (BATCH_BEGIN, one message per operation,
    /// BATCH_END), numbered from `firstSequence`. No socket is involved: tests compare these bytes with
    /// golden files, as google/nftables does.
    public static func encodedBatch(_ changes: NFTChangeSet, firstSequence: UInt32) throws(NetfilterError) -> [UInt8] {
        var sequence = firstSequence &- 1
        let batch = try Batch(sequence: &sequence)
        let family = UInt16(changes.family.rawValue)
        for operation in changes.operations {
            try batch.appendElementOperation(operation, family: family, table: changes.table,
                                             familyName: changes.family.description)
        }
        try batch.finish()
        let count = Int(nftnl_batch_iovec_len(batch.handle))
        var iovecs = [iovec](repeating: iovec(), count: count)
        nftnl_batch_iovec(batch.handle, &iovecs, UInt32(count))
        var bytes: [UInt8] = []
        for vector in iovecs {
            bytes += UnsafeRawBufferPointer(start: vector.iov_base, count: vector.iov_len)
        }
        return bytes
    }

    /// Sends a batch in one sendmsg and returns the errors the kernel reported for it, in sequence order.
    private func send(_ batch: Batch, state: inout State) throws(NetfilterError) -> [(target: Target, error: NetfilterError)] {
        try batch.finish()
        let fd = mnl_socket_get_fd(socket)
        let iovecCount = Int(nftnl_batch_iovec_len(batch.handle))
        var iovecs = [iovec](repeating: iovec(), count: iovecCount)
        nftnl_batch_iovec(batch.handle, &iovecs, UInt32(iovecCount))
        let total = iovecs.reduce(0) { $0 + $1.iov_len }
        if total + 4096 > state.sendBufferBytes {
            // A batch must arrive in one datagram; the default socket send buffer (~200 KiB) caps its size.
            var size = Int32(clamping: total + 65536)
            if setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
                _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            }
            state.sendBufferBytes = Int(size)
        }
        var address = sockaddr_nl()
        address.nl_family = sa_family_t(AF_NETLINK)
        let sent = withUnsafeMutablePointer(to: &address) { addressPointer in
            iovecs.withUnsafeMutableBufferPointer { iovecBuffer in
                var header = msghdr()
                header.msg_name = UnsafeMutableRawPointer(addressPointer)
                header.msg_namelen = socklen_t(MemoryLayout<sockaddr_nl>.size)
                header.msg_iov = iovecBuffer.baseAddress
                header.msg_iovlen = iovecBuffer.count
                return syscall { sendmsg(fd, &header, 0) }
            }
        }
        _ = try sent.get("sendmsg(NFNL_MSG_BATCH)", "nftables batch of \(batch.entries.count - 2) messages")

        var errors: [(sequence: UInt32, target: Target, error: NetfilterError)] = []
        while true {
            let received = syscall { recv(fd, receiveBuffer.baseAddress, receiveBuffer.count, Int32(MSG_DONTWAIT)) }
            let length: Int
            switch received {
            case .success(let count): length = count
            case .failure(let code) where code == EAGAIN || code == EWOULDBLOCK:
                return errors.sorted { $0.sequence < $1.sequence }.map { (target: $0.target, error: $0.error) }
            case .failure(let code):
                throw NetfilterError(operation: "recv", object: "nftables batch acknowledgements", errno: code)
            }
            forEachMessage(length: length) { nlh in
                guard Int32(cnf_nlmsg_type(nlh)) == NLMSG_ERROR else { return }
                let code = cnf_nlmsg_error_code(nlh)
                guard code != 0, let target = batch.target(for: cnf_nlmsg_seq(nlh)) else { return }
                errors.append((cnf_nlmsg_seq(nlh), target, target.error(errno: code)))
            }
        }
    }

    private func sendRequest(_ message: [UInt8], length: Int, target: Target) throws(NetfilterError) {
        let result = message.withUnsafeBytes { bytes in syscall { mnl_socket_sendto(socket, bytes.baseAddress, length) } }
        _ = try result.get("sendto(\(target.operation))", target.object)
    }

    /// Receives the replies to request `sequence` until NLMSG_DONE or its acknowledgement, handing every data
    /// message to `body` (which returns 0 or an errno).
    private func receiveReplies(sequence: UInt32, target: Target,
                                _ body: (UnsafePointer<nlmsghdr>) -> Int32) throws(NetfilterError) {
        let fd = mnl_socket_get_fd(socket)
        var finished = false
        var failure: Int32 = 0
        while !finished {
            let length = try syscall { recv(fd, receiveBuffer.baseAddress, receiveBuffer.count, 0) }
                .get("recv(\(target.operation))", target.object)
            forEachMessage(length: length) { nlh in
                guard !finished, cnf_nlmsg_seq(nlh) == sequence else { return }  // stale replies of earlier requests
                switch Int32(cnf_nlmsg_type(nlh)) {
                case NLMSG_DONE:
                    finished = true
                case NLMSG_ERROR:
                    failure = cnf_nlmsg_error_code(nlh)
                    finished = true
                default:
                    let code = body(nlh)
                    if code != 0 && failure == 0 { failure = code }
                }
            }
        }
        if failure != 0 { throw target.error(errno: failure) }
    }

    private func forEachMessage(length: Int, _ body: (UnsafeMutablePointer<nlmsghdr>) -> Void) {
        var remaining = Int32(length)
        var current = receiveBuffer.baseAddress?.assumingMemoryBound(to: nlmsghdr.self)
        while let nlh = current, mnl_nlmsg_ok(nlh, remaining) {
            body(nlh)
            current = mnl_nlmsg_next(nlh, &remaining)
        }
    }
}

// MARK: - Batch

extension NFTablesClient.State {
    mutating func next() -> UInt32 {
        sequence &+= 1
        return sequence
    }
}

/// What a message of a batch (or a request) stood for, to turn a kernel errno into a useful sentence.
enum Target {
    case batchBegin
    case batchEnd
    case addElement(family: String, table: String, set: String, key: String, hasTimeout: Bool, keyLength: Int)
    case deleteElement(family: String, table: String, set: String, key: String)
    case flushSet(family: String, table: String, set: String)
    case flushChain(family: NFTFamily, table: String, chain: String)
    case queueRule(family: NFTFamily, table: String, chain: String, encoding: QueueEncoding)
    case listElements(family: NFTFamily, table: String, set: String)
    case getTable(family: NFTFamily, table: String)
    case getSet(family: NFTFamily, table: String, set: String)
    case listRules(family: NFTFamily, table: String, chain: String)
    case getGeneration

    var operation: String {
        switch self {
        case .batchBegin: "NFNL_MSG_BATCH_BEGIN"
        case .batchEnd: "NFNL_MSG_BATCH_END"
        case .addElement: "NFT_MSG_NEWSETELEM"
        case .deleteElement, .flushSet: "NFT_MSG_DELSETELEM"
        case .flushChain: "NFT_MSG_DELRULE"
        case .queueRule(_, _, _, let encoding): "NFT_MSG_NEWRULE (\(encoding == .native ? "queue expression" : "xt NFQUEUE target rev 3"))"
        case .listElements: "NFT_MSG_GETSETELEM"
        case .getTable: "NFT_MSG_GETTABLE"
        case .getSet: "NFT_MSG_GETSET"
        case .listRules: "NFT_MSG_GETRULE"
        case .getGeneration: "NFT_MSG_GETGEN"
        }
    }

    var object: String {
        switch self {
        case .batchBegin, .batchEnd: "nftables batch"
        case .addElement(let family, let table, let set, let key, _, _), .deleteElement(let family, let table, let set, let key):
            "set \(family) \(table) \(set), element \(key)"
        case .flushSet(let family, let table, let set): "set \(family) \(table) \(set)"
        case .flushChain(let family, let table, let chain), .queueRule(let family, let table, let chain, _):
            "chain \(family) \(table) \(chain)"
        case .listElements(let family, let table, let set): "set \(family) \(table) \(set)"
        case .getTable(let family, let table): "table \(family) \(table)"
        case .getSet(let family, let table, let set): "set \(family) \(table) \(set)"
        case .listRules(let family, let table, let chain): "chain \(family) \(table) \(chain)"
        case .getGeneration: "the nftables ruleset"
        }
    }

    func error(errno code: Int32) -> NetfilterError {
        NetfilterError(operation: operation, object: object, errno: code, hint: hint(errno: code))
    }

    private func hint(errno code: Int32) -> String? {
        switch (self, code) {
        case (_, EPERM), (_, EACCES):
            return nil  // the default: needs CAP_NET_ADMIN
        case (.addElement(let family, let table, let set, _, _, _), ENOENT), (.flushSet(let family, let table, let set), ENOENT):
            return "table \(family) \(table) or set \(set) does not exist: load nft-rules/midcom.nft first"
        case (.listElements(let family, let table, let set), ENOENT):
            return "table \(family) \(table) or set \(set) does not exist: load nft-rules/midcom.nft first"
        case (.deleteElement(let family, let table, let set, _), ENOENT):
            return "the element is not in the set (it may have timed out already), or table \(family) \(table) or set \(set) does not exist"
        case (.flushChain(let family, let table, let chain), ENOENT):
            return "table \(family) \(table) or chain \(chain) does not exist: load nft-rules/midcom.nft first"
        case (.queueRule(_, _, _, .native), ENOENT), (.queueRule(_, _, _, .native), EOPNOTSUPP):
            return "this kernel has no nft queue expression (nft_queue); use the compat encoding"
        case (.queueRule(_, _, _, .compat), ENOENT), (.queueRule(_, _, _, .compat), EOPNOTSUPP):
            return "this kernel has no xtables NFQUEUE target for nf_tables (load the nft_compat and xt_NFQUEUE modules)"
        case (.queueRule, EINVAL):
            return "the kernel refused the queue numbers or flags (queueNumber + queueCount must stay below 65536)"
        case (.addElement(_, _, let set, _, true, _), EOPNOTSUPP):
            return "set \(set) was declared without `flags timeout`, so elements cannot carry a timeout"
        case (.addElement(_, _, let set, _, _, let keyLength), EINVAL):
            return "the \(keyLength)-byte key or its data does not match the type of set \(set) (check the NFTSetKey fields against the set declaration)"
        case (.addElement(_, _, let set, _, _, _), ENFILE), (.addElement(_, _, let set, _, _, _), ENOSPC):
            return "set \(set) is full: raise its size in nft-rules/midcom.nft or shorten timeouts"
        case (.getTable, ENOENT):
            return "the table does not exist"
        case (.getSet, ENOENT):
            return "the set does not exist"
        case (.batchBegin, _):
            return "the kernel refused the whole batch (\(NetfilterError.errnoName(code)))"
        default:
            return nil
        }
    }
}

/// A libnftnl batch (nftnl_batch) being filled, with the meaning of every sequence number in it.
private final class Batch {
    let handle: OpaquePointer  // struct nftnl_batch *
    private(set) var entries: [(sequence: UInt32, target: Target)] = []
    private var sequence: UInt32 = 0

    /// Starts a batch with NFNL_MSG_BATCH_BEGIN; sequence numbers are taken from (and written back to) `counter`.
    init(sequence counter: inout UInt32) throws(NetfilterError) {
        // Pages of 16 KiB (more are chained for big batches); a single message may overrun a page by
        // up to MNL_SOCKET_BUFFER_SIZE. Small pages matter: most batches carry one admission, and
        // a 128 KiB page is above glibc's mmap threshold, i.e. an mmap/munmap per transaction.
        let allocated = syscallHandle { nftnl_batch_alloc(16 << 10, UInt32(cnf_mnl_socket_buffer_size())) }
        guard let handle = allocated.handle else {
            throw NetfilterError(operation: "nftnl_batch_alloc", object: "nftables batch", errno: allocated.errno)
        }
        self.handle = handle
        self.sequence = counter &+ 1
        counter &+= 1 << 20  // reserve a range; batches never hold a million messages
        try append(.batchBegin) { buffer, sequence in nftnl_batch_begin(buffer, sequence) != nil }
    }

    deinit { nftnl_batch_free(handle) }

    func target(for sequence: UInt32) -> Target? {
        entries.first { $0.sequence == sequence }?.target
    }

    func finish() throws(NetfilterError) {
        try append(.batchEnd) { buffer, sequence in nftnl_batch_end(buffer, sequence) != nil }
    }

    /// Builds one message at the batch's write position with `build` and records its sequence number.
    private func append(_ target: Target, build: (UnsafeMutablePointer<CChar>, UInt32) -> Bool) throws(NetfilterError) {
        let current = sequence
        sequence &+= 1
        // libmnl before 1.0.5 leaves attribute padding as it finds it: zero the room a message may
        // use, so no heap garbage reaches the kernel and a batch's bytes are reproducible (golden tests).
        if let room = nftnl_batch_buffer(handle) { memset(room, 0, Int(cnf_mnl_socket_buffer_size())) }
        guard let buffer = nftnl_batch_buffer(handle), build(buffer.assumingMemoryBound(to: CChar.self), current),
              nftnl_batch_update(handle) >= 0 else {
            throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM,
                                 hint: "could not build the netlink message (out of memory)")
        }
        entries.append((current, target))
    }

    func appendElementOperation(_ operation: NFTChangeSet.Operation, family: UInt16, table: String,
                                         familyName: String) throws(NetfilterError) {
        let target: Target
        let type: UInt16
        var flags: UInt16 = 0
        let setName: String
        var key: [UInt8]? = nil
        var keyEnd: [UInt8]? = nil
        var data: [UInt8]? = nil
        var timeout: UInt64? = nil
        var userData: [UInt8]? = nil
        switch operation {
        case .add(let set, let elementKey, let elementData, let elementTimeout, let comment, let elementKeyEnd):
            keyEnd = elementKeyEnd
            userData = comment.map(UserData.encode(comment:))
            let milliseconds = elementTimeout?.netfilterMilliseconds
            target = .addElement(family: familyName, table: table, set: set, key: NFTSetKey.hex(elementKey),
                                 hasTimeout: milliseconds != nil, keyLength: elementKey.count)
            type = msgType(NFT_MSG_NEWSETELEM)
            flags = UInt16(NLM_F_CREATE)
            (setName, key, data, timeout) = (set, elementKey, elementData, milliseconds)
        case .delete(let set, let elementKey, let elementKeyEnd):
            keyEnd = elementKeyEnd
            target = .deleteElement(family: familyName, table: table, set: set, key: NFTSetKey.hex(elementKey))
            type = msgType(NFT_MSG_DELSETELEM)
            (setName, key) = (set, elementKey)
        case .flush(let set):
            target = .flushSet(family: familyName, table: table, set: set)
            type = msgType(NFT_MSG_DELSETELEM)
            setName = set
        }
        guard let set = nftnl_set_alloc() else {
            throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM)
        }
        defer { nftnl_set_free(set) }
        nftnl_set_set_str(set, attr(NFTNL_SET_TABLE), table)
        nftnl_set_set_str(set, attr(NFTNL_SET_NAME), setName)
        if let key {
            guard let element = nftnl_set_elem_alloc() else {
                throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM)
            }
            key.withUnsafeBytes { _ = nftnl_set_elem_set(element, attr(NFTNL_SET_ELEM_KEY), $0.baseAddress, UInt32($0.count)) }
            if let keyEnd {
                keyEnd.withUnsafeBytes { _ = nftnl_set_elem_set(element, attr(NFTNL_SET_ELEM_KEY_END), $0.baseAddress, UInt32($0.count)) }
            }
            if let data {
                data.withUnsafeBytes { _ = nftnl_set_elem_set(element, attr(NFTNL_SET_ELEM_DATA), $0.baseAddress, UInt32($0.count)) }
            }
            if let timeout { nftnl_set_elem_set_u64(element, attr(NFTNL_SET_ELEM_TIMEOUT), timeout) }
            if let userData {
                userData.withUnsafeBytes { _ = nftnl_set_elem_set(element, attr(NFTNL_SET_ELEM_USERDATA), $0.baseAddress, UInt32($0.count)) }
            }
            nftnl_set_elem_add(set, element)  // the set owns the element from here
        }
        try append(target) { buffer, sequence in
            guard let nlh = nftnl_nlmsg_build_hdr(buffer, type, family, flags, sequence) else { return false }
            nftnl_set_elems_nlmsg_build_payload(nlh, set)
            return true
        }
    }

    func appendFlushChain(family: NFTFamily, table: String, chain: String) throws(NetfilterError) {
        let target = Target.flushChain(family: family, table: table, chain: chain)
        guard let rule = nftnl_rule_alloc() else {
            throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM)
        }
        defer { nftnl_rule_free(rule) }
        nftnl_rule_set_str(rule, attr(NFTNL_RULE_TABLE), table)
        nftnl_rule_set_str(rule, attr(NFTNL_RULE_CHAIN), chain)
        try append(target) { buffer, sequence in
            guard let nlh = nftnl_nlmsg_build_hdr(buffer, msgType(NFT_MSG_DELRULE), UInt16(family.rawValue), 0, sequence) else { return false }
            nftnl_rule_nlmsg_build_payload(nlh, rule)
            return true
        }
    }

    func appendQueueRule(family: NFTFamily, table: String, chain: String, spec: QueueRuleSpec,
                                  encoding: QueueEncoding) throws(NetfilterError) {
        let target = Target.queueRule(family: family, table: table, chain: chain, encoding: encoding)
        guard let rule = nftnl_rule_alloc() else {
            throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM)
        }
        defer { nftnl_rule_free(rule) }
        nftnl_rule_set_str(rule, attr(NFTNL_RULE_TABLE), table)
        nftnl_rule_set_str(rule, attr(NFTNL_RULE_CHAIN), chain)
        nftnl_rule_set_u32(rule, attr(NFTNL_RULE_FAMILY), UInt32(family.rawValue))
        let expression: OpaquePointer?
        switch encoding {
        case .native:
            expression = nftnl_expr_alloc("queue")
            if let expression {
                nftnl_expr_set_u16(expression, attr(NFTNL_EXPR_QUEUE_NUM), spec.queueNumber)
                nftnl_expr_set_u16(expression, attr(NFTNL_EXPR_QUEUE_TOTAL), spec.queueCount)
                nftnl_expr_set_u16(expression, attr(NFTNL_EXPR_QUEUE_FLAGS), spec.flags)
            }
        case .compat:
            expression = nftnl_expr_alloc("target")
            if let expression {
                nftnl_expr_set_str(expression, attr(NFTNL_EXPR_TG_NAME), "NFQUEUE")
                nftnl_expr_set_u32(expression, attr(NFTNL_EXPR_TG_REV), 3)
                if cnf_nftnl_expr_set_nfqueue_v3(expression, spec.queueNumber, spec.queueCount, spec.flags) < 0 {
                    nftnl_expr_free(expression)
                    throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM)
                }
            }
        }
        guard let expression else {
            throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM)
        }
        nftnl_rule_add_expr(rule, expression)  // the rule owns the expression from here
        try append(target) { buffer, sequence in
            let flags = UInt16(NLM_F_CREATE | NLM_F_APPEND)
            guard let nlh = nftnl_nlmsg_build_hdr(buffer, msgType(NFT_MSG_NEWRULE), UInt16(family.rawValue), flags, sequence) else { return false }
            nftnl_rule_nlmsg_build_payload(nlh, rule)
            return true
        }
    }
}

// MARK: - Reading set elements

/// Turns the elements libnftnl parsed from a GETSETELEM dump into `NFTSetElement`s.
private final class SetElementReader {
    var elements: [NFTSetElement] = []
    var packets: UInt64? = nil
    var bytes: UInt64? = nil

    static func elements(of set: OpaquePointer) -> [NFTSetElement] {
        let reader = SetElementReader()
        let context = Unmanaged.passUnretained(reader).toOpaque()
        _ = nftnl_set_elem_foreach(set, { element, context in
            guard let element, let context else { return 0 }
            Unmanaged<SetElementReader>.fromOpaque(context).takeUnretainedValue().read(element)
            return 0
        }, context)
        return withExtendedLifetime(reader) { reader.elements }
    }

    private func read(_ element: OpaquePointer) {
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
        packets = nil
        bytes = nil
        let context = Unmanaged.passUnretained(self).toOpaque()
        _ = nftnl_set_elem_expr_foreach(element, { expression, context in
            guard let expression, let context,
                  let name = nftnl_expr_get_str(expression, attr(NFTNL_EXPR_NAME)),
                  String(cString: name) == "counter" else { return 0 }
            let reader = Unmanaged<SetElementReader>.fromOpaque(context).takeUnretainedValue()
            reader.packets = nftnl_expr_get_u64(expression, attr(NFTNL_EXPR_CTR_PACKETS))
            reader.bytes = nftnl_expr_get_u64(expression, attr(NFTNL_EXPR_CTR_BYTES))
            return 0
        }, context)
        var listed = NFTSetElement(
            key: bytesOf(attr(NFTNL_SET_ELEM_KEY)) ?? [],
            data: bytesOf(attr(NFTNL_SET_ELEM_DATA)),
            timeout: milliseconds(attr(NFTNL_SET_ELEM_TIMEOUT)),
            expiresIn: milliseconds(attr(NFTNL_SET_ELEM_EXPIRATION)),
            packets: packets,
            bytes: bytes,
            comment: bytesOf(attr(NFTNL_SET_ELEM_USERDATA)).flatMap(UserData.comment(in:)))
        listed.keyEnd = bytesOf(attr(NFTNL_SET_ELEM_KEY_END))
        elements.append(listed)
    }
}

// MARK: - C constant helpers

/// A libnftnl attribute number from a named C enum.
@inline(__always)
func attr<T: RawRepresentable>(_ value: T) -> UInt16 where T.RawValue: BinaryInteger {
    UInt16(truncatingIfNeeded: value.rawValue)
}

/// A libnftnl attribute number from an anonymous C enum (imported as Int).
@inline(__always)
func attr(_ value: Int) -> UInt16 {
    UInt16(truncatingIfNeeded: value)
}

/// An nf_tables message type (libnftnl adds the subsystem).
@inline(__always)
func msgType(_ value: nf_tables_msg_types) -> UInt16 {
    UInt16(truncatingIfNeeded: value.rawValue)
}
