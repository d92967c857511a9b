import CNetfilter
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import SystemSupport

/// Programs nftables through one netlink socket (libmnl).
///
/// Every change is one transaction: NFNL_MSG_BATCH_BEGIN, the messages, NFNL_MSG_BATCH_END, sent in one sendto.
/// The kernel applies all of it or none of it. Set-element transactions (`apply`, the hot path: one per admission)
/// are encoded by `NFTBatchEncoder` into one buffer reused for every transaction; rules and requests are built by
/// libnftnl. Every message carries its own sequence number, consecutive from the transaction's first, because the
/// kernel reports an error against the message that caused it (or against BATCH_BEGIN when the whole batch is
/// refused, e.g. without CAP_NET_ADMIN); the message is described (operation, set, element in hex) only then.
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
        /// The one buffer every transaction is encoded into (used under the lock only).
        let encoder = NFTBatchEncoder()
        /// The storage of `apply(family:table:building:)`'s change set, kept between transactions
        /// up to `reusableOperationsLimit` operations.
        var reusableOperations: [NFTChangeSet.Operation] = []
    }

    /// A burst's changes fit (a burst is at most 256 packets, mostly one operation each); the
    /// storage of a larger transaction (a mass expiry, a reload's revocations: ~220 B per
    /// operation) is given back instead of held for the life of the process.
    static let reusableOperationsLimit = 1024

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
    /// Nothing is allocated per element or per transaction: the messages are encoded into the client's buffer.
    ///
    /// Consecutive adds (or deletes) of one set travel as one message with many elements, as `nft` sends
    /// them: the kernel's cost is per message as much as per element. The kernel names only the message
    /// it refused, so when a message of several elements is refused, the transaction (which the kernel
    /// aborted whole) is sent again with one message per operation, to name the element; that second
    /// attempt is the error path's only cost, and it is what `apply` always sent before.
    public func apply(_ changes: NFTChangeSet) throws(NetfilterError) {
        if changes.isEmpty { return }
        try state.withLock { (state: inout State) throws(NetfilterError) in try self.apply(changes, locked: &state) }
    }

    /// `apply` of the change set that `build` writes into a change set the client keeps: its
    /// storage is reused from transaction to transaction, where a change set made per transaction
    /// was an allocation per signaled session (docs/PERFORMANCE.md, "Sixteenth pass"). `build`
    /// runs under the client's lock and must not call the client.
    public func apply(family: NFTFamily = .inet, table: String, building build: (inout NFTChangeSet) -> Void)
        throws(NetfilterError)
    {
        try state.withLock { (state: inout State) throws(NetfilterError) in
            var taken: [NFTChangeSet.Operation] = []
            swap(&taken, &state.reusableOperations)
            var changes = NFTChangeSet(family: family, table: table, reusing: consume taken)
            build(&changes)
            // The storage goes back even after a throw: an error is described when it is thrown
            // and holds none of it.
            defer {
                let operations = changes.takeOperations()
                if operations.capacity <= Self.reusableOperationsLimit { state.reusableOperations = operations }
            }
            if changes.isEmpty { return }
            try self.apply(changes, locked: &state)
        }
    }

    /// How many operations the kept change set has room for (tests).
    var reusableCapacity: Int { state.withLock { $0.reusableOperations.capacity } }

    private func apply(_ changes: NFTChangeSet, locked state: inout State) throws(NetfilterError) {
        let first = state.reserveSequences()
        let messages = Self.encode(changes, firstSequence: first, into: state.encoder, joining: true)
        guard let failure = try send(state.encoder, messages: messages, firstSequence: first, state: &state) else { return }
        if messages == changes.count + 2 || failure.index == 0 {
            throw Target.inElementBatch(changes, index: failure.index).error(errno: failure.errno)
        }
        let again = state.reserveSequences()
        let single = Self.encode(changes, firstSequence: again, into: state.encoder, joining: false)
        if let failure = try send(state.encoder, messages: single, firstSequence: again, state: &state) {
            throw Target.inElementBatch(changes, index: failure.index).error(errno: failure.errno)
        }
    }

    /// BATCH_BEGIN (`firstSequence`), the element messages, BATCH_END; returns how many messages. Without
    /// `joining`, message i + 1 is operation i.
    @discardableResult
    private static func encode(_ changes: NFTChangeSet, firstSequence: UInt32, into encoder: NFTBatchEncoder, joining: Bool) -> Int {
        encoder.reset()
        encoder.appendBatchBegin(sequence: firstSequence)
        var sequence = firstSequence
        // Each operation is read where it lies (see NFTChangeSet.Operation): a for-in over the
        // array would copy every operation out and destroy the copy.
        changes.operations.withUnsafeBufferPointer { operations in
            for index in operations.indices {
                if encoder.appendElementOperation(operations.baseAddress! + index, family: changes.family, table: changes.table,
                                                  sequence: sequence &+ 1, joining: joining) {
                    sequence &+= 1
                }
            }
        }
        encoder.appendBatchEnd(sequence: sequence &+ 1)
        return Int(sequence &- firstSequence) + 2
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
            var batch = RuleBatch(encoder: state.encoder, firstSequence: state.reserveSequences())
            try batch.appendFlushChain(family: family, table: table, chain: chain)
            try batch.appendQueueRule(family: family, table: table, chain: chain, spec: spec, encoding: first)
            guard let error = try self.send(&batch, state: &state) else { return first }
            guard first == .native, case .queueRule = error.target,
                  error.error.errno == ENOENT || error.error.errno == EOPNOTSUPP else { throw error.error }
            state.nativeQueueUnsupported = true
            guard encoding == .auto else { throw error.error }

            var retry = RuleBatch(encoder: state.encoder, firstSequence: state.reserveSequences())
            try retry.appendFlushChain(family: family, table: table, chain: chain)
            try retry.appendQueueRule(family: family, table: table, chain: chain, spec: spec, encoding: .compat)
            if let retryError = try self.send(&retry, state: &state) { throw retryError.error }
            return .compat
        }
    }

    /// Offloads the established connections of admitted flows to an nftables flowtable on `devices`
    /// (empty: removes that), in one transaction: flush chains `entry` and `offload`, delete the
    /// flowtable if it exists, and with devices create it again (hook ingress, priority filter,
    /// counters on), put `flow add @flowtable` into `offload` and `goto candidates` into `entry`.
    ///
    /// The ruleset decides which connections are candidates (chain `candidates`: the admission sets,
    /// each match going to chain `offload`); this only links the chains, because a rule naming a flowtable cannot
    /// be loaded where the flowtable does not exist. Deleting and creating the flowtable again also
    /// ends every flow offloaded so far: their next packets take the slow path again (its pushback
    /// filters and admission lookups), and only flows still admitted are offloaded anew.
    public func installOffload(family: NFTFamily = .inet, table: String = "midcom", flowtable: String, devices: [String],
                               entry: String, candidates: String, offload: String) throws(NetfilterError) {
        try state.withLock { (state: inout State) throws(NetfilterError) in
            func batch(deleting: Bool) throws(NetfilterError) -> RuleBatch {
                var batch = RuleBatch(encoder: state.encoder, firstSequence: state.reserveSequences())
                try batch.appendFlushChain(family: family, table: table, chain: entry)
                try batch.appendFlushChain(family: family, table: table, chain: offload)
                if deleting { try batch.appendDeleteFlowtable(family: family, table: table, name: flowtable) }
                if !devices.isEmpty {
                    try batch.appendNewFlowtable(family: family, table: table, name: flowtable, devices: devices)
                    try batch.appendFlowOffloadRule(family: family, table: table, chain: offload, flowtable: flowtable)
                    try batch.appendGotoRule(family: family, table: table, chain: entry, target: candidates)
                }
                return batch
            }
            var first = try batch(deleting: true)
            guard let error = try self.send(&first, state: &state) else { return }
            // Nothing to delete (the usual case at the first start and after a ruleset reload).
            guard case .deleteFlowtable = error.target, error.error.errno == ENOENT else { throw error.error }
            var second = try batch(deleting: false)
            if let retryError = try self.send(&second, state: &state) { throw retryError.error }
        }
    }

    /// Deletes every rule of `chain` (NFT_MSG_DELRULE without a handle), in one batch.
    public func flushChain(family: NFTFamily = .inet, table: String = "midcom", chain: String) throws(NetfilterError) {
        try state.withLock { (state: inout State) throws(NetfilterError) in
            var batch = RuleBatch(encoder: state.encoder, firstSequence: state.reserveSequences())
            try batch.appendFlushChain(family: family, table: table, chain: chain)
            if let error = try self.send(&batch, state: &state) { throw error.error }
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
    public static func encodedBatch(_ changes: NFTChangeSet, firstSequence: UInt32) -> [UInt8] {
        encodedBatch(changes, firstSequence: firstSequence, joining: true)
    }

    /// `joining: false`: one message per operation, as `apply` resends a refused transaction.
    static func encodedBatch(_ changes: NFTChangeSet, firstSequence: UInt32, joining: Bool) -> [UInt8] {
        let encoder = NFTBatchEncoder()
        encode(changes, firstSequence: firstSequence, into: encoder, joining: joining)
        return Array(encoder.bytes)
    }

    /// Finishes a rule batch, sends it and names the first message the kernel refused.
    private func send(_ batch: inout RuleBatch, state: inout State) throws(NetfilterError) -> (target: Target, error: NetfilterError)? {
        batch.finish()
        guard let failure = try send(batch.encoder, messages: batch.targets.count, firstSequence: batch.firstSequence, state: &state) else {
            return nil
        }
        let target = batch.targets[failure.index]
        return (target, target.error(errno: failure.errno))
    }

    /// Sends the transaction in `encoder` (`messages` messages numbered from `firstSequence`) in one sendto and
    /// returns the first message the kernel refused (its index in the transaction and the errno), if any.
    ///
    /// The kernel processes a batch inside sendto and queues its errors before sendto returns, so the socket is
    /// then drained without blocking; a successful batch (no NLM_F_ACK) leaves nothing to read.
    private func send(_ encoder: NFTBatchEncoder, messages: Int, firstSequence: UInt32,
                      state: inout State) throws(NetfilterError) -> (index: Int, errno: Int32)? {
        let fd = mnl_socket_get_fd(socket)
        let bytes = encoder.bytes
        if bytes.count + 4096 > state.sendBufferBytes {
            // A batch must arrive in one datagram; the default socket send buffer (~200 KiB) caps its size.
            var size = Int32(clamping: bytes.count + 65536)
            if setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
                _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            }
            state.sendBufferBytes = Int(size)
        }
        let sent = syscall { mnl_socket_sendto(socket, bytes.baseAddress, bytes.count) }
        _ = try sent.get("sendto(NFNL_MSG_BATCH)", "nftables batch of \(messages - 2) messages")

        var first: (index: Int, errno: Int32)? = nil
        while true {
            let received = syscall { recv(fd, receiveBuffer.baseAddress, receiveBuffer.count, Int32(MSG_DONTWAIT)) }
            let length: Int
            switch received {
            case .success(let count): length = count
            case .failure(let code) where code == EAGAIN || code == EWOULDBLOCK:
                return first
            case .failure(let code):
                throw NetfilterError(operation: "recv", object: "nftables batch acknowledgements", errno: code)
            }
            forEachMessage(length: length) { nlh in
                guard Int32(cnf_nlmsg_type(nlh)) == NLMSG_ERROR else { return }
                let code = cnf_nlmsg_error_code(nlh)
                // Sequence numbers of this transaction are consecutive; anything else is a stale reply.
                let index = Int(cnf_nlmsg_seq(nlh) &- firstSequence)
                guard code != 0, index < messages else { return }
                if first == nil || index < first!.index { first = (index, code) }
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

    /// The first sequence number of a transaction; the range after it is its own (batches never
    /// hold a million messages), so the kernel's error replies map back to a message by subtraction.
    mutating func reserveSequences() -> UInt32 {
        let first = sequence &+ 1
        sequence &+= 1 << 20
        return first
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
    case deleteFlowtable(family: NFTFamily, table: String, name: String)
    case newFlowtable(family: NFTFamily, table: String, name: String, devices: [String])
    case offloadRule(family: NFTFamily, table: String, chain: String)
    case listElements(family: NFTFamily, table: String, set: String)
    case getTable(family: NFTFamily, table: String)
    case getSet(family: NFTFamily, table: String, set: String)
    case listRules(family: NFTFamily, table: String, chain: String)
    case getGeneration

    /// Message `index` of the transaction `apply` sends for `changes`: 0 is BATCH_BEGIN, then one
    /// message per operation, then BATCH_END. Built only when the kernel refused that message.
    static func inElementBatch(_ changes: NFTChangeSet, index: Int) -> Target {
        guard index > 0 else { return .batchBegin }
        guard index <= changes.count else { return .batchEnd }
        let family = changes.family.description, table = changes.table
        let operation = changes.operations[index - 1]
        switch operation.kind {
        case .add:
            return .addElement(family: family, table: table, set: operation.set, key: operation.key.description,
                               hasTimeout: operation.timeoutMilliseconds != nil, keyLength: operation.key.count)
        case .delete:
            return .deleteElement(family: family, table: table, set: operation.set, key: operation.key.description)
        case .flush:
            return .flushSet(family: family, table: table, set: operation.set)
        }
    }

    var operation: String {
        switch self {
        case .batchBegin: "NFNL_MSG_BATCH_BEGIN"
        case .batchEnd: "NFNL_MSG_BATCH_END"
        case .addElement: "NFT_MSG_NEWSETELEM"
        case .deleteElement, .flushSet: "NFT_MSG_DELSETELEM"
        case .flushChain: "NFT_MSG_DELRULE"
        case .queueRule(_, _, _, let encoding): "NFT_MSG_NEWRULE (\(encoding == .native ? "queue expression" : "xt NFQUEUE target rev 3"))"
        case .deleteFlowtable: "NFT_MSG_DELFLOWTABLE"
        case .newFlowtable: "NFT_MSG_NEWFLOWTABLE"
        case .offloadRule: "NFT_MSG_NEWRULE"
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
        case .offloadRule(let family, let table, let chain): "chain \(family) \(table) \(chain)"
        case .deleteFlowtable(let family, let table, let name): "flowtable \(family) \(table) \(name)"
        case .newFlowtable(let family, let table, let name, let devices):
            "flowtable \(family) \(table) \(name) on \(devices.joined(separator: ", "))"
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
        case (.newFlowtable, ENOENT), (.newFlowtable, EOPNOTSUPP), (.offloadRule, ENOENT), (.offloadRule, EOPNOTSUPP):
            return "this kernel has no nftables flowtables (CONFIG_NF_FLOW_TABLE, nf_flow_table_inet): remove flowtable-devices from [daemon] in midcomd.conf"
        case (.newFlowtable, EBUSY), (.newFlowtable, EEXIST):
            return "a device is already in another flowtable (a device can be in one flowtable per family): remove it from that flowtable or from flowtable-devices"
        case (.newFlowtable, EINVAL):
            return "the kernel refused the flowtable's hook or devices (flowtable-devices must name existing network interfaces)"
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

/// A transaction of rule messages built by libnftnl into the client's encoder (cold path: at start
/// and after a ruleset reload), with what each message stood for.
private struct RuleBatch {
    let encoder: NFTBatchEncoder
    let firstSequence: UInt32
    private(set) var targets: [Target] = [.batchBegin]

    init(encoder: NFTBatchEncoder, firstSequence: UInt32) {
        self.encoder = encoder
        self.firstSequence = firstSequence
        encoder.reset()
        encoder.appendBatchBegin(sequence: firstSequence)
    }

    mutating func finish() {
        encoder.appendBatchEnd(sequence: firstSequence &+ UInt32(targets.count))
        targets.append(.batchEnd)
    }

    /// Builds one message at the write position with `build` (libnftnl) and records its meaning.
    private mutating func append(_ target: Target, build: (UnsafeMutablePointer<CChar>, UInt32) -> Int?) throws(NetfilterError) {
        let sequence = firstSequence &+ UInt32(targets.count)
        guard encoder.appendBuilt(room: Int(cnf_mnl_socket_buffer_size()), { build($0, sequence) }) else {
            throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM,
                                 hint: "could not build the netlink message (out of memory)")
        }
        targets.append(target)
    }

    mutating func appendFlushChain(family: NFTFamily, table: String, chain: String) throws(NetfilterError) {
        let target = Target.flushChain(family: family, table: table, chain: chain)
        guard let rule = nftnl_rule_alloc() else {
            throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM)
        }
        defer { nftnl_rule_free(rule) }
        nftnl_rule_set_str(rule, attr(NFTNL_RULE_TABLE), table)
        nftnl_rule_set_str(rule, attr(NFTNL_RULE_CHAIN), chain)
        try append(target) { buffer, sequence in
            guard let nlh = nftnl_nlmsg_build_hdr(buffer, msgType(NFT_MSG_DELRULE), UInt16(family.rawValue), 0, sequence) else { return nil }
            nftnl_rule_nlmsg_build_payload(nlh, rule)
            return Int(nlh.pointee.nlmsg_len)
        }
    }

    mutating func appendQueueRule(family: NFTFamily, table: String, chain: String, spec: QueueRuleSpec,
                                  encoding: QueueEncoding) throws(NetfilterError) {
        let target = Target.queueRule(family: family, table: table, chain: chain, encoding: encoding)
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
        try appendRule(target, family: family, table: table, chain: chain, expression: expression)
    }

    mutating func appendDeleteFlowtable(family: NFTFamily, table: String, name: String) throws(NetfilterError) {
        let target = Target.deleteFlowtable(family: family, table: table, name: name)
        guard let flowtable = nftnl_flowtable_alloc() else {
            throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM)
        }
        defer { nftnl_flowtable_free(flowtable) }
        nftnl_flowtable_set_str(flowtable, attr(NFTNL_FLOWTABLE_TABLE), table)
        nftnl_flowtable_set_str(flowtable, attr(NFTNL_FLOWTABLE_NAME), name)
        try append(target) { buffer, sequence in
            guard let nlh = nftnl_nlmsg_build_hdr(buffer, msgType(NFT_MSG_DELFLOWTABLE), UInt16(family.rawValue), 0, sequence) else { return nil }
            nftnl_flowtable_nlmsg_build_payload(nlh, flowtable)
            return Int(nlh.pointee.nlmsg_len)
        }
    }

    /// A flowtable on the ingress hook of `devices` at priority filter (0), with counters, so
    /// conntrack's accounting (where nf_conntrack_acct is on) keeps counting what the fast path forwards.
    mutating func appendNewFlowtable(family: NFTFamily, table: String, name: String, devices: [String]) throws(NetfilterError) {
        let target = Target.newFlowtable(family: family, table: table, name: name, devices: devices)
        guard let flowtable = nftnl_flowtable_alloc() else {
            throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM)
        }
        defer { nftnl_flowtable_free(flowtable) }
        nftnl_flowtable_set_str(flowtable, attr(NFTNL_FLOWTABLE_TABLE), table)
        nftnl_flowtable_set_str(flowtable, attr(NFTNL_FLOWTABLE_NAME), name)
        nftnl_flowtable_set_u32(flowtable, attr(NFTNL_FLOWTABLE_HOOKNUM), UInt32(NF_NETDEV_INGRESS.rawValue))
        nftnl_flowtable_set_s32(flowtable, attr(NFTNL_FLOWTABLE_PRIO), 0)
        nftnl_flowtable_set_u32(flowtable, attr(NFTNL_FLOWTABLE_FLAGS), UInt32(NFT_FLOWTABLE_COUNTER.rawValue))
        // libnftnl copies the names; the C strings only live for this call.
        let names = devices.map { strdup($0) }
        defer { names.forEach { free($0) } }
        var array: [UnsafePointer<CChar>?] = names.map { UnsafePointer($0) } + [nil]
        let stored = array.withUnsafeMutableBufferPointer { nftnl_flowtable_set_array(flowtable, attr(NFTNL_FLOWTABLE_DEVICES), $0.baseAddress) }
        guard stored == 0, !names.contains(nil) else {
            throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM)
        }
        try append(target) { buffer, sequence in
            let flags = UInt16(NLM_F_CREATE | NLM_F_EXCL)
            guard let nlh = nftnl_nlmsg_build_hdr(buffer, msgType(NFT_MSG_NEWFLOWTABLE), UInt16(family.rawValue), flags, sequence) else { return nil }
            nftnl_flowtable_nlmsg_build_payload(nlh, flowtable)
            return Int(nlh.pointee.nlmsg_len)
        }
    }

    /// `flow add @flowtable`, appended to `chain`.
    mutating func appendFlowOffloadRule(family: NFTFamily, table: String, chain: String, flowtable: String) throws(NetfilterError) {
        let target = Target.offloadRule(family: family, table: table, chain: chain)
        guard let expression = nftnl_expr_alloc("flow_offload") else {
            throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM)
        }
        nftnl_expr_set_str(expression, attr(NFTNL_EXPR_FLOW_TABLE_NAME), flowtable)
        try appendRule(target, family: family, table: table, chain: chain, expression: expression)
    }

    /// `goto destination`, appended to `chain`.
    mutating func appendGotoRule(family: NFTFamily, table: String, chain: String, target destination: String) throws(NetfilterError) {
        let target = Target.offloadRule(family: family, table: table, chain: chain)
        guard let expression = nftnl_expr_alloc("immediate") else {
            throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM)
        }
        nftnl_expr_set_u32(expression, attr(NFTNL_EXPR_IMM_DREG), UInt32(NFT_REG_VERDICT.rawValue))
        nftnl_expr_set_u32(expression, attr(NFTNL_EXPR_IMM_VERDICT), UInt32(bitPattern: NFT_GOTO.rawValue))
        nftnl_expr_set_str(expression, attr(NFTNL_EXPR_IMM_CHAIN), destination)
        try appendRule(target, family: family, table: table, chain: chain, expression: expression)
    }

    /// A rule of one expression (which the rule takes over, also when this throws).
    private mutating func appendRule(_ target: Target, family: NFTFamily, table: String, chain: String,
                                     expression: OpaquePointer) throws(NetfilterError) {
        guard let rule = nftnl_rule_alloc() else {
            nftnl_expr_free(expression)
            throw NetfilterError(operation: target.operation, object: target.object, errno: ENOMEM)
        }
        defer { nftnl_rule_free(rule) }
        nftnl_rule_set_str(rule, attr(NFTNL_RULE_TABLE), table)
        nftnl_rule_set_str(rule, attr(NFTNL_RULE_CHAIN), chain)
        nftnl_rule_set_u32(rule, attr(NFTNL_RULE_FAMILY), UInt32(family.rawValue))
        nftnl_rule_add_expr(rule, expression)
        try append(target) { buffer, sequence in
            let flags = UInt16(NLM_F_CREATE | NLM_F_APPEND)
            guard let nlh = nftnl_nlmsg_build_hdr(buffer, msgType(NFT_MSG_NEWRULE), UInt16(family.rawValue), flags, sequence) else { return nil }
            nftnl_rule_nlmsg_build_payload(nlh, rule)
            return Int(nlh.pointee.nlmsg_len)
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
