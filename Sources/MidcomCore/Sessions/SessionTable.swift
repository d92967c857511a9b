import CSPTrust
import CSPWire

/// Sessions keyed by session ID and by flow (every path of a session: many flows → one session),
/// with expiry ordered by a min-heap so that expiring is O(log n) per session however large the
/// table grows.
///
/// The sessions live in one dense array (`slots`); the ID and flow indexes map an ID or a flow to
/// its slot. A new session is appended, a removed one is replaced by the last (whose index entries
/// follow it), so the array never has holes and growing it moves sessions once, with one `memcpy`:
/// the figure-3 profile (docs/PERFORMANCE.md) had a third of midcomd's user time in a dictionary of
/// 160-octet `Session` values (buckets moved on every growth, values copied in and out per lookup).
/// The indexes are `SlotIndex`es of 8-octet entries that do not hold the keys (the session in the
/// slot does); updates happen in place.
///
/// Heap entries are not removed when a session is refreshed or deleted; they carry the expiry
/// they were pushed with and are discarded when they no longer match the session (lazy deletion).
public struct SessionTable: Sendable {
    private var slots: [Session] = []
    private var slotByID = SlotIndex()
    /// Every path's flow to the session holding it; a flow held by two sessions (a pending one and
    /// the one admitted in the kernel) points at one of them (`index`).
    private var slotByFlow = SlotIndex()
    private var expiryHeap = MinHeap<ExpiryEntry>()
    /// Pending sessions per owner address and in all: the per-source limit on pending state
    /// (docs/PROTOCOL.md 11) needs them for every SETUP, so they are kept, not counted.
    private var pendingByOwner: [IPAddress: Int32] = [:]
    public private(set) var pendingCount = 0
    /// Admitted incoming pinholes with a NAT mapping, by public protocol and port: a client that
    /// signals a flow to the mapping is answered by us on the server's behalf (few entries).
    private var listeners: [ListenerKey: UInt64] = [:]
    /// A session ID and its `hashValue` (`hashOnce(requestFor:)`): a cache of a pure function of
    /// the ID, so it can never be stale, only unused.
    private var hashedID: (id: UInt64, hash: Int) = (0, UInt64(0).hashValue)

    struct ListenerKey: Hashable, Sendable {
        var proto: IPProtocol
        var port: UInt16
        init?(_ session: Session) {
            guard session.incoming, session.state == .admitted, let mapping = session.mapping else { return nil }
            proto = session.flow.proto
            port = mapping.port
        }
        init(proto: IPProtocol, port: UInt16) {
            self.proto = proto
            self.port = port
        }
    }

    struct ExpiryEntry: Comparable, Sendable {
        var at: Instant
        var id: UInt64
        static func < (a: ExpiryEntry, b: ExpiryEntry) -> Bool { (a.at, a.id) < (b.at, b.id) }
    }

    public init() {}

    /// Room for `count` sessions without growing (a restart adopts them all at once).
    public mutating func reserveCapacity(_ count: Int) {
        slots.reserveCapacity(count)
        slotByID.reserveCapacity(count)
        slotByFlow.reserveCapacity(count)
    }

    public var count: Int { slots.count }
    public var isEmpty: Bool { slots.isEmpty }
    /// Every session, in no particular order (removals reorder it).
    public var all: [Session] { slots }

    /// The longest probe runs of the ID and flow indexes (tests of hostile keys).
    var longestIndexRuns: (id: Int, flow: Int) { (slotByID.longestRun, slotByFlow.longestRun) }

    private func slot(of id: UInt64) -> Int? { slot(of: id, hash: hash(id)) }

    /// `id`'s keyed hash for the ID index, from `hashedID` when it is the request's session.
    @inline(__always)
    private func hash(_ id: UInt64) -> Int { id == hashedID.id ? hashedID.hash : id.hashValue }

    /// Hashes the session ID of the request about to be handled, once: the request then looks
    /// its session up five to eight times (authentication, ownership, the handler, the store, the
    /// replay window), and each was a SipHash of the same ID (docs/PERFORMANCE.md "Ninth pass").
    public mutating func hashOnce(requestFor id: UInt64) { hashedID = (id, id.hashValue) }

    @inline(never)
    private func slot(of id: UInt64, hash: Int) -> Int? { slotByID.slot(hash: hash) { slots[$0].id == id } }

    private func slot(holding flow: FlowTuple) -> Int? { slot(holding: flow, hash: Self.hash(flow)) }

    @inline(never)
    private func slot(holding flow: FlowTuple, hash: Int) -> Int? {
        slotByFlow.slot(hash: hash) { Self.session(in: slots, at: $0, holds: flow) }
    }

    /// Whether the session in `slot` holds `flow`. Path 0 is compared first, as a field: a method
    /// call on `slots[slot]` (`holds`) copies the whole session out of the array, and path 0 is
    /// what nearly every probe that reaches a session is about. Static, on the array alone: the
    /// flow index's `set` calls it while it changes `slotByFlow`.
    @inline(__always)
    private static func session(in slots: [Session], at slot: Int, holds flow: FlowTuple) -> Bool {
        slots[slot].flow == flow || slots[slot].holds(flow)
    }

    /// A flow's keyed hash for the flow index. Nearly every flow is IPv4 at both ends: its 13 octets
    /// packed into 16 hash in two words instead of the tuple's field by field.
    @inline(never)
    static func hash(_ flow: FlowTuple) -> Int {
        guard let source = flow.source.ipv4Value, let destination = flow.destination.ipv4Value else { return flow.hashValue }
        var hasher = Hasher()
        hasher.combine(UInt64(source) << 32 | UInt64(destination))
        hasher.combine(UInt64(flow.sourcePort) << 32 | UInt64(flow.destinationPort) << 16 | UInt64(flow.proto.rawValue))
        return hasher.finalize()
    }

    public subscript(id id: UInt64) -> Session? {
        // Not `map { slots[$0] }`: the closure's result was copied once more on its way out.
        guard let slot = slot(of: id) else { return nil }
        return slots[slot]
    }

    /// Whether session `id` exists, without copying it out.
    public func contains(id: UInt64) -> Bool { slot(of: id) != nil }

    /// The flow (path 0) of session `id`, without copying the session out.
    public func flow(ofSession id: UInt64) -> FlowTuple? { slot(of: id).map { slots[$0].flow } }

    /// Who owns session `id` and its replay window: what authenticating a request and judging
    /// its ownership read (docs/PROTOCOL.md 7), without copying the session out (every request asks).
    public func credentials(ofSession id: UInt64) -> SessionCredentials? {
        guard let slot = slot(of: id) else { return nil }
        return SessionCredentials(
            owner: slots[slot].owner, ownerKey: slots[slot].ownerKey, responderKey: slots[slot].responderKey,
            replay: slots[slot].replay)
    }

    /// The address that owns session `id`, without copying the session out.
    public func owner(ofSession id: UInt64) -> IPAddress? { slot(of: id).map { slots[$0].owner } }

    /// Whether a request signed by `signer` (nil: unsigned) from `address` comes from session
    /// `id`'s owner: its key for a signed session, its address for an unsigned one; true when
    /// there is no such session. Read in place.
    public func isOwner(ofSession id: UInt64, signer: PublicKey?, address: IPAddress) -> Bool {
        guard let slot = slot(of: id) else { return true }
        return isOwner(slot: slot, signer: signer, address: address)
    }

    private func isOwner(slot: Int, signer: PublicKey?, address: IPAddress) -> Bool {
        if let key = slots[slot].ownerKey { return signer == key }
        return slots[slot].owner == address
    }

    public func session(for flow: FlowTuple) -> Session? {
        guard let slot = slot(holding: flow) else { return nil }
        return slots[slot]
    }

    /// The ID of the session that holds `flow`, without copying the session out.
    public func sessionID(for flow: FlowTuple) -> UInt64? { slot(holding: flow).map { slots[$0].id } }

    /// The admitted incoming pinhole whose NAT mapping is `proto` `port`, if any.
    public func listener(proto: IPProtocol, mappedPort port: UInt16) -> Session? {
        listeners[ListenerKey(proto: proto, port: port)].flatMap { self[id: $0] }
    }

    private mutating func reindexListener(old: Session?, new: Session?) {
        if let old, let key = ListenerKey(old), listeners[key] == old.id { listeners[key] = nil }
        if let new, let key = ListenerKey(new) { listeners[key] = new.id }
    }

    /// Inserts or replaces a session, keeping the flow index and expiry heap consistent.
    public mutating func upsert(_ session: Session) {
        // The ID hashed once: for the lookup and, for a new session, its entry.
        let idHash = hash(session.id)
        guard let slot = slot(of: session.id, hash: idHash) else {
            let slot = slots.count
            slotByID.insert(hash: idHash, slot: slot)
            slots.append(session)
            countPending(session, +1)
            if let at = session.expiresAt { expiryHeap.push(ExpiryEntry(at: at, id: session.id)) }
            if session.incoming { reindexListener(old: nil, new: session) }
            indexPaths(ofSlot: slot)
            return
        }
        // The old session is read where it lies, not copied out (a copy was ~100 instructions and
        // two retains per update); only a listener's change copies it.
        let oldState = slots[slot].state
        let oldOwner = slots[slot].owner
        // A pending session that stays pending for the same owner leaves the counts as they are.
        if oldState != .pending || session.state != .pending || oldOwner != session.owner {
            countPending(state: oldState, owner: oldOwner, -1)
            countPending(session, +1)
        }
        // While the slot still holds the old session: the flow index confirms entries against the slot.
        if slots[slot].flow != session.flow || slots[slot].pathCount > 1 || session.pathCount > 1 { unindexPaths(ofSlot: slot) }
        // Pushing an unchanged expiry again would only grow the heap.
        if slots[slot].expiresAt != session.expiresAt, let at = session.expiresAt {
            expiryHeap.push(ExpiryEntry(at: at, id: session.id))
        }
        if slots[slot].incoming || session.incoming {
            let old = slots[slot]
            reindexListener(old: old, new: session)
        }
        slots[slot] = session
        indexPaths(ofSlot: slot)
    }

    private mutating func indexPaths(ofSlot slot: Int) {
        if slots[slot].pathCount == 1 {
            index(slots[slot].flow, slot: slot)
        } else {
            for path in slots[slot].paths { index(path.flow, slot: slot) }
        }
    }

    /// A pending session does not take the index from a session that holds the flow in the
    /// kernel: that one stays findable until the new one is admitted and supersedes it.
    private mutating func index(_ flow: FlowTuple, slot: Int) {
        let hash = Self.hash(flow)
        if slots[slot].state == .pending, let holder = self.slot(holding: flow, hash: hash), holder != slot,
            slots[holder].state != .pending
        {
            return
        }
        slotByFlow.set(hash: hash, slot: slot) { Self.session(in: slots, at: $0, holds: flow) }
    }

    /// Removes the flow entries that point at `slot`, while it still holds the session they index.
    private mutating func unindexPaths(ofSlot slot: Int) {
        if slots[slot].pathCount == 1 {
            slotByFlow.remove(hash: Self.hash(slots[slot].flow), slot: slot)
            return
        }
        for path in slots[slot].paths { slotByFlow.remove(hash: Self.hash(path.flow), slot: slot) }
    }

    @discardableResult
    public mutating func remove(id: UInt64) -> Session? {
        let idHash = hash(id)
        guard let slot = slot(of: id, hash: idHash) else { return nil }
        return remove(slot: slot, idHash: idHash)
    }

    private mutating func remove(slot: Int, idHash: Int) -> Session {
        unindexPaths(ofSlot: slot)
        slotByID.remove(hash: idHash, slot: slot)
        // The last session fills the hole (the array stays dense); its entries follow it.
        let last = slots.count - 1
        if slot != last {
            slotByID.move(hash: hash(slots[last].id), from: last, to: slot)
            if slots[last].pathCount == 1 {
                slotByFlow.move(hash: Self.hash(slots[last].flow), from: last, to: slot)
            } else {
                for path in slots[last].paths { slotByFlow.move(hash: Self.hash(path.flow), from: last, to: slot) }
            }
            slots.swapAt(slot, last)
        }
        let session = slots.removeLast()
        if session.incoming { reindexListener(old: session, new: nil) }
        countPending(session, -1)
        return session
    }

    /// Pending sessions `owner` holds.
    public func pendingSessions(of owner: IPAddress) -> Int { Int(pendingByOwner[owner] ?? 0) }

    private mutating func countPending(_ session: Session, _ delta: Int32) {
        countPending(state: session.state, owner: session.owner, delta)
    }

    private mutating func countPending(state: SessionState, owner: IPAddress, _ delta: Int32) {
        guard state == .pending else { return }
        pendingCount += Int(delta)
        // One hash lookup either way: in place for an increment, by index for a decrement (an
        // owner whose count reaches zero leaves the dictionary without being looked up again).
        if delta > 0 {
            pendingByOwner[owner, default: 0] += delta
        } else if let index = pendingByOwner.index(forKey: owner) {
            if pendingByOwner.values[index] <= -delta {
                pendingByOwner.remove(at: index)
            } else {
                pendingByOwner.values[index] += delta
            }
        }
    }

    /// Marks the pending request of session `id` as a REBIND.
    public mutating func markPendingRebind(id: UInt64, fromResponder: Bool = false) {
        guard let slot = slot(of: id) else { return }
        slots[slot].pending?.rebind = true
        slots[slot].pending?.fromResponder = fromResponder
    }

    /// Notes a request's sequence in its session's replay window, in place, when the request comes
    /// from the session's owner (`isOwner`: only the owner moves the window), asked and done with
    /// one lookup.
    public mutating func recordSequence(
        id: UInt64, sequence: UInt32, nonce: UInt64, ifOwnedBy signer: PublicKey?, address: IPAddress
    ) {
        guard let slot = slot(of: id), isOwner(slot: slot, signer: signer, address: address) else { return }
        slots[slot].replay.record(sequence: sequence, nonce: nonce)
    }

    public mutating func removeAll() -> [Session] {
        let sessions = slots
        slots = []
        slotByID.removeAll()
        pendingByOwner.removeAll()
        pendingCount = 0
        slotByFlow.removeAll()
        listeners.removeAll()
        expiryHeap = MinHeap()
        return sessions
    }

    /// Removes and returns every session whose expiry is at or before `now`.
    public mutating func expire(now: Instant) -> [Session] {
        var expired: [Session] = []
        while let top = expiryHeap.peek, top.at <= now {
            expiryHeap.pop()
            let idHash = hash(top.id)
            guard let slot = slot(of: top.id, hash: idHash), slots[slot].expiresAt == top.at else { continue }
            expired.append(remove(slot: slot, idHash: idHash))
        }
        // Refreshes leave stale entries behind; rebuild when they dominate so memory stays bounded.
        if expiryHeap.count > 4 * max(slots.count, 1024) { rebuildHeap() }
        return expired
    }

    private mutating func rebuildHeap() {
        expiryHeap = MinHeap()
        for session in slots { if let at = session.expiresAt { expiryHeap.push(ExpiryEntry(at: at, id: session.id)) } }
    }
}

/// A binary min-heap over an array.
struct MinHeap<Element: Comparable & Sendable>: Sendable {
    private var storage: [Element] = []

    var count: Int { storage.count }
    var peek: Element? { storage.first }

    mutating func push(_ element: Element) {
        storage.append(element)
        var child = storage.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard storage[child] < storage[parent] else { break }
            storage.swapAt(child, parent)
            child = parent
        }
    }

    @discardableResult
    mutating func pop() -> Element? {
        guard !storage.isEmpty else { return nil }
        storage.swapAt(0, storage.count - 1)
        let top = storage.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < storage.count, storage[left] < storage[smallest] { smallest = left }
            if right < storage.count, storage[right] < storage[smallest] { smallest = right }
            guard smallest != parent else { break }
            storage.swapAt(parent, smallest)
            parent = smallest
        }
        return top
    }
}

/// A session's owner, keys and replay window: what authentication and ownership checks read.
public struct SessionCredentials: Sendable {
    public var owner: IPAddress
    public var ownerKey: PublicKey?
    public var responderKey: PublicKey?
    public var replay: ReplayWindow
}
