import CSPWire

/// Sessions keyed by session ID and by flow (every path of a session: many flows → one session),
/// with expiry ordered by a min-heap so that expiring is O(log n) per session however large the
/// table grows.
///
/// Heap entries are not removed when a session is refreshed or deleted; they carry the expiry
/// they were pushed with and are discarded when they no longer match the session (lazy deletion).
public struct SessionTable: Sendable {
    private var byID: [UInt64: Session] = [:]
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

    /// Room for `count` sessions without rehashing (a restart adopts them all at once).
    public mutating func reserveCapacity(_ count: Int) {
        byID.reserveCapacity(count)
        byFlow.reserveCapacity(count)
    }

    public var count: Int { byID.count }
    public var isEmpty: Bool { byID.isEmpty }
    public var all: Dictionary<UInt64, Session>.Values { byID.values }

    public subscript(id id: UInt64) -> Session? { byID[id] }

    public func session(for flow: FlowTuple) -> Session? { byFlow[flow].flatMap { byID[$0] } }

    /// The admitted incoming pinhole whose NAT mapping is `proto` `port`, if any.
    public func listener(proto: IPProtocol, mappedPort port: UInt16) -> Session? {
        listeners[ListenerKey(proto: proto, port: port)].flatMap { byID[$0] }
    }

    private mutating func reindexListener(old: Session?, new: Session?) {
        if let old, let key = ListenerKey(old), listeners[key] == old.id { listeners[key] = nil }
        if let new, let key = ListenerKey(new) { listeners[key] = new.id }
    }

    /// Inserts or replaces a session, keeping the flow index and expiry heap consistent.
    public mutating func upsert(_ session: Session) {
        // One lookup (a Session is 160 octets, copied out each time): the bench's figure 4 profile
        // had three per upsert, two upserts per signaled session.
        let previous = byID[session.id]
        countPending(previous, -1)
        countPending(session, +1)
        if let old = previous {
            if old.flow != session.flow || old.pathCount > 1 || session.pathCount > 1 { unindex(old) }
            // Pushing an unchanged expiry again would only grow the heap.
            if old.expiresAt != session.expiresAt, let at = session.expiresAt {
                expiryHeap.push(ExpiryEntry(at: at, id: session.id))
            }
        } else if let at = session.expiresAt {
            expiryHeap.push(ExpiryEntry(at: at, id: session.id))
        }
        reindexListener(old: previous, new: session)
        byID[session.id] = session
        if session.pathCount == 1 {
            index(session.flow, session)
        } else {
            for path in session.paths { index(path.flow, session) }
        }
    }

    /// A pending session does not take the index from a session that holds the flow in the
    /// kernel: that one stays findable until the new one is admitted and supersedes it.
    private mutating func index(_ flow: FlowTuple, _ session: Session) {
        if session.state == .pending, let holder = byFlow[flow], holder != session.id, let other = byID[holder],
            other.state != .pending
        {
            return
        }
        byFlow[flow] = session.id
    }

    @discardableResult
    public mutating func remove(id: UInt64) -> Session? {
        guard let session = byID.removeValue(forKey: id) else { return nil }
        reindexListener(old: session, new: nil)
        countPending(session, -1)
        unindex(session)
        return session
    }

    /// Pending sessions `owner` holds.
    public func pendingSessions(of owner: IPAddress) -> Int { Int(pendingByOwner[owner] ?? 0) }

    private mutating func countPending(_ session: Session?, _ delta: Int32) {
        guard let session, session.state == .pending else { return }
        let owner = session.owner
        let count = (pendingByOwner[owner] ?? 0) + delta
        pendingByOwner[owner] = count > 0 ? count : nil
        pendingCount += Int(delta)
    }

    /// Marks the pending request of session `id` as a REBIND.
    public mutating func markPendingRebind(id: UInt64, fromResponder: Bool = false) {
        byID[id]?.pending?.rebind = true
        byID[id]?.pending?.fromResponder = fromResponder
    }

    /// Notes a request's sequence in its session's replay window, in place.
    public mutating func recordSequence(id: UInt64, sequence: UInt32, nonce: UInt64) {
        byID[id]?.replay.record(sequence: sequence, nonce: nonce)
    }

    private mutating func unindex(_ session: Session) {
        if session.pathCount == 1 {
            if byFlow[session.flow] == session.id { byFlow[session.flow] = nil }
            return
        }
        for path in session.paths where byFlow[path.flow] == session.id { byFlow[path.flow] = nil }
    }

    public mutating func removeAll() -> [Session] {
        let sessions = Array(byID.values)
        byID.removeAll()
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
            guard let session = byID[top.id], session.expiresAt == top.at else { continue }
            remove(id: top.id)
            expired.append(session)
        }
        // Refreshes leave stale entries behind; rebuild when they dominate so memory stays bounded.
        if expiryHeap.count > 4 * max(byID.count, 1024) { rebuildHeap() }
        return expired
    }

    private mutating func rebuildHeap() {
        expiryHeap = MinHeap()
        for session in byID.values { if let at = session.expiresAt { expiryHeap.push(ExpiryEntry(at: at, id: session.id)) } }
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
