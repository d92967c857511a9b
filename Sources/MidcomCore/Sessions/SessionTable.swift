import CSPTrust
import CSPWire

/// Sessions keyed by session ID and by flow (every path of a session: many flows → one session),
/// with expiry ordered by a min-heap so that expiring is O(log n) per session however large the
/// table grows.
///
/// The sessions live in one dense array (`slots`); the ID index maps an ID to its slot. A new
/// session is appended, a removed one is replaced by the last (whose index entry follows it), so
/// the array never has holes and growing it moves sessions once, with one `memcpy`: the figure-3
/// profile (docs/PERFORMANCE.md) had a third of midcomd's user time in a dictionary of 160-octet
/// `Session` values (buckets moved on every growth, values copied in and out per lookup). Indexes
/// hold 12-octet entries; updates happen in place.
///
/// Heap entries are not removed when a session is refreshed or deleted; they carry the expiry
/// they were pushed with and are discarded when they no longer match the session (lazy deletion).
public struct SessionTable: Sendable {
    private var slots: [Session] = []
    private var slotByID: [UInt64: Int32] = [:]
    private var byFlow = FlowIndex()
    private var expiryHeap = MinHeap<ExpiryEntry>()
    /// Pending sessions per owner address and in all: the per-source limit on pending state
    /// (docs/PROTOCOL.md 11) needs them for every SETUP, so they are kept, not counted.
    private var pendingByOwner: [IPAddress: Int32] = [:]
    public private(set) var pendingCount = 0
    /// Admitted incoming pinholes with a NAT mapping, by public protocol and port: a client that
    /// signals a flow to the mapping is answered by us on the server's behalf (few entries).
    private var listeners: [ListenerKey: UInt64] = [:]

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
        byFlow.reserveCapacity(count)
    }

    public var count: Int { slots.count }
    public var isEmpty: Bool { slots.isEmpty }
    /// Every session, in no particular order (removals reorder it).
    public var all: [Session] { slots }

    public subscript(id id: UInt64) -> Session? {
        // Not `map { slots[$0] }`: the closure's result was copied once more on its way out.
        guard let slot = slotByID[id] else { return nil }
        return slots[Int(slot)]
    }

    /// Whether session `id` exists, without copying it out.
    public func contains(id: UInt64) -> Bool { slotByID[id] != nil }

    /// The flow (path 0) of session `id`, without copying the session out.
    public func flow(ofSession id: UInt64) -> FlowTuple? { slotByID[id].map { slots[Int($0)].flow } }

    /// Who owns session `id` and its replay window: what authenticating a request and judging
    /// its ownership read (docs/PROTOCOL.md 7), without copying the session out (every request asks).
    public func credentials(ofSession id: UInt64) -> SessionCredentials? {
        guard let slot = slotByID[id].map(Int.init) else { return nil }
        return SessionCredentials(
            owner: slots[slot].owner, ownerKey: slots[slot].ownerKey, responderKey: slots[slot].responderKey,
            replay: slots[slot].replay)
    }

    /// The address that owns session `id`, without copying the session out.
    public func owner(ofSession id: UInt64) -> IPAddress? { slotByID[id].map { slots[Int($0)].owner } }

    /// Whether a request signed by `signer` (nil: unsigned) from `address` comes from session
    /// `id`'s owner: its key for a signed session, its address for an unsigned one; true when
    /// there is no such session. Read in place.
    public func isOwner(ofSession id: UInt64, signer: PublicKey?, address: IPAddress) -> Bool {
        guard let slot = slotByID[id].map(Int.init) else { return true }
        return isOwner(slot: slot, signer: signer, address: address)
    }

    private func isOwner(slot: Int, signer: PublicKey?, address: IPAddress) -> Bool {
        if let key = slots[slot].ownerKey { return signer == key }
        return slots[slot].owner == address
    }

    public func session(for flow: FlowTuple) -> Session? { byFlow[flow].flatMap { self[id: $0] } }

    /// The ID of the session that holds `flow`, without copying the session out.
    public func sessionID(for flow: FlowTuple) -> UInt64? { byFlow[flow] }

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
        // One hash lookup finds the slot or claims the next one.
        let (claimed, isNew) = Self.claim(&slotByID[session.id, default: -1], next: Int32(slots.count))
        let slot = Int(claimed)
        if isNew {
            slots.append(session)
            countPending(session, +1)
            if let at = session.expiresAt { expiryHeap.push(ExpiryEntry(at: at, id: session.id)) }
            if session.incoming { reindexListener(old: nil, new: session) }
            indexPaths(of: session)
            return
        }
        let old = slots[slot]
        countPending(old, -1)
        countPending(session, +1)
        if old.flow != session.flow || old.pathCount > 1 || session.pathCount > 1 { unindex(old) }
        // Pushing an unchanged expiry again would only grow the heap.
        if old.expiresAt != session.expiresAt, let at = session.expiresAt {
            expiryHeap.push(ExpiryEntry(at: at, id: session.id))
        }
        if old.incoming || session.incoming { reindexListener(old: old, new: session) }
        slots[slot] = session
        indexPaths(of: session)
    }

    private static func adjust(_ count: inout Int32, by delta: Int32) -> Int32 {
        count += delta
        return count
    }

    private static func claim(_ slot: inout Int32, next: Int32) -> (Int32, Bool) {
        if slot >= 0 { return (slot, false) }
        slot = next
        return (next, true)
    }

    private mutating func indexPaths(of session: Session) {
        if session.pathCount == 1 {
            index(session.flow, session)
        } else {
            for path in session.paths { index(path.flow, session) }
        }
    }

    /// A pending session does not take the index from a session that holds the flow in the
    /// kernel: that one stays findable until the new one is admitted and supersedes it.
    private mutating func index(_ flow: FlowTuple, _ session: Session) {
        if session.state == .pending, let holder = byFlow[flow], holder != session.id, let slot = slotByID[holder],
            slots[Int(slot)].state != .pending
        {
            return
        }
        byFlow[flow] = session.id
    }

    @discardableResult
    public mutating func remove(id: UInt64) -> Session? {
        guard let slot = slotByID.removeValue(forKey: id).map(Int.init) else { return nil }
        // The last session fills the hole: the array stays dense.
        let last = slots.count - 1
        if slot != last {
            slots.swapAt(slot, last)
            slotByID[slots[slot].id] = Int32(slot)
        }
        let session = slots.removeLast()
        if session.incoming { reindexListener(old: session, new: nil) }
        countPending(session, -1)
        unindex(session)
        return session
    }

    /// Pending sessions `owner` holds.
    public func pendingSessions(of owner: IPAddress) -> Int { Int(pendingByOwner[owner] ?? 0) }

    private mutating func countPending(_ session: Session, _ delta: Int32) {
        guard session.state == .pending else { return }
        let owner = session.owner
        // One hash lookup for the count (in place); a second only when it drops to zero.
        if Self.adjust(&pendingByOwner[owner, default: 0], by: delta) <= 0 { pendingByOwner[owner] = nil }
        pendingCount += Int(delta)
    }

    /// Marks the pending request of session `id` as a REBIND.
    public mutating func markPendingRebind(id: UInt64, fromResponder: Bool = false) {
        guard let slot = slotByID[id].map(Int.init) else { return }
        slots[slot].pending?.rebind = true
        slots[slot].pending?.fromResponder = fromResponder
    }

    /// Notes a request's sequence in its session's replay window, in place.
    public mutating func recordSequence(id: UInt64, sequence: UInt32, nonce: UInt64) {
        guard let slot = slotByID[id].map(Int.init) else { return }
        slots[slot].replay.record(sequence: sequence, nonce: nonce)
    }

    /// `recordSequence` for a request from `signer` at `address` that only its session's owner may
    /// move the window with (`isOwner`), asked and done with one lookup.
    public mutating func recordSequence(
        id: UInt64, sequence: UInt32, nonce: UInt64, ifOwnedBy signer: PublicKey?, address: IPAddress
    ) {
        guard let slot = slotByID[id].map(Int.init), isOwner(slot: slot, signer: signer, address: address) else { return }
        slots[slot].replay.record(sequence: sequence, nonce: nonce)
    }

    private mutating func unindex(_ session: Session) {
        if session.pathCount == 1 {
            if byFlow[session.flow] == session.id { byFlow[session.flow] = nil }
            return
        }
        for path in session.paths where byFlow[path.flow] == session.id { byFlow[path.flow] = nil }
    }

    public mutating func removeAll() -> [Session] {
        let sessions = slots
        slots = []
        slotByID.removeAll()
        pendingByOwner.removeAll()
        pendingCount = 0
        byFlow.removeAll()
        listeners.removeAll()
        expiryHeap = MinHeap()
        return sessions
    }

    /// Removes and returns every session whose expiry is at or before `now`.
    public mutating func expire(now: Instant) -> [Session] {
        var expired: [Session] = []
        while let top = expiryHeap.peek, top.at <= now {
            expiryHeap.pop()
            guard let slot = slotByID[top.id], slots[Int(slot)].expiresAt == top.at else { continue }
            if let session = remove(id: top.id) { expired.append(session) }
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

/// Flow → session ID. Nearly every flow is IPv4 at both ends: those are keyed by 13 octets packed
/// into 16 (a dictionary bucket of 24 octets instead of 80 with `FlowTuple` as the key, about 120
/// octets less per session at a million: docs/PERFORMANCE.md, figure 7); the others by the tuple.
struct FlowIndex: Sendable {
    private var v4: [PackedFlow: UInt64] = [:]
    private var other: [FlowTuple: UInt64] = [:]

    struct PackedFlow: Hashable, Sendable {
        var addresses: UInt64
        var rest: UInt64

        init?(_ flow: FlowTuple) {
            guard let source = flow.source.ipv4Value, let destination = flow.destination.ipv4Value else { return nil }
            addresses = UInt64(source) << 32 | UInt64(destination)
            rest = UInt64(flow.sourcePort) << 32 | UInt64(flow.destinationPort) << 16 | UInt64(flow.proto.rawValue)
        }
    }

    subscript(flow: FlowTuple) -> UInt64? {
        get {
            if let packed = PackedFlow(flow) { return v4[packed] }
            return other[flow]
        }
        set {
            if let packed = PackedFlow(flow) { v4[packed] = newValue } else { other[flow] = newValue }
        }
    }

    mutating func reserveCapacity(_ count: Int) { v4.reserveCapacity(count) }

    mutating func removeAll() {
        v4.removeAll()
        other.removeAll()
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
