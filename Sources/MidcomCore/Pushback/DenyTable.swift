import CSPTrust
import CSPWire

/// One granted DENY: its filter, who asked (the key, bound to the victim address it protects)
/// and until when.
public struct DenyEntry: Sendable, Equatable {
    /// The DENY's session ID: the victim refreshes or removes the filter under it.
    public var id: UInt64
    public var filter: DenyFilter
    /// nil for a filter adopted from the kernel after a restart: the victim's next signed DENY
    /// for it (from the victim's address) claims it.
    public var owner: PublicKey?
    public var createdAt: Instant
    public var expiresAt: Instant
    public var lifetime: UInt32
}

/// The filters this middlebox holds for victims, with the per-victim counts and rates the bounds
/// need. At most `maximumFilters` entries (a few thousand): expiry scans them when one is due.
public struct DenyTable: Sendable {
    public private(set) var entries: [UInt64: DenyEntry] = [:]
    private var perVictim: [IPAddress: Int] = [:]
    /// DENYs per victim in the current second (cleared when the second changes).
    private var rate: (second: UInt64, counts: [IPAddress: Int]) = (0, [:])
    private var nextExpiry: Instant?

    public init() {}

    public var count: Int { entries.count }
    public func filters(of victim: IPAddress) -> Int { perVictim[victim] ?? 0 }

    /// Counts one DENY from `victim`; false when it is over `limit` this second.
    mutating func admitRate(of victim: IPAddress, second: UInt64, limit: Int) -> Bool {
        if rate.second != second { rate = (second, [:]) }
        let seen = rate.counts[victim, default: 0]
        guard seen < limit else { return false }
        // Bounded by the victims that passed authentication this second.
        rate.counts[victim] = seen + 1
        return true
    }

    mutating func put(_ entry: DenyEntry) {
        if let old = entries[entry.id] { perVictim[old.filter.victim, default: 1] -= 1 }
        entries[entry.id] = entry
        perVictim[entry.filter.victim, default: 0] += 1
        if nextExpiry.map({ entry.expiresAt < $0 }) ?? true { nextExpiry = entry.expiresAt }
    }

    @discardableResult
    mutating func remove(_ id: UInt64) -> DenyEntry? {
        guard let entry = entries.removeValue(forKey: id) else { return nil }
        let left = (perVictim[entry.filter.victim] ?? 1) - 1
        perVictim[entry.filter.victim] = left > 0 ? left : nil
        return entry
    }

    /// Removes and returns the entries whose lifetime ended.
    mutating func expire(now: Instant) -> [DenyEntry] {
        guard let due = nextExpiry, due <= now else { return [] }
        let ended = entries.values.filter { $0.expiresAt <= now }
        for entry in ended { remove(entry.id) }
        nextExpiry = entries.values.map(\.expiresAt).min()
        return ended
    }

    /// An entry of the same victim whose filter overlaps `filter` (another ID).
    func overlapping(_ filter: DenyFilter, except id: UInt64) -> DenyEntry? {
        entries.values.first { $0.id != id && $0.filter.overlaps(filter) }
    }
}

extension DenyFilter {
    /// Whether some packet could match both filters (the kernel keeps one element per range).
    func overlaps(_ other: DenyFilter) -> Bool {
        guard victim == other.victim, source.family == other.source.family else { return false }
        if let proto, let otherProto = other.proto, proto != otherProto { return false }
        if let port, let otherPort = other.port, port != otherPort { return false }
        let shorter = min(prefixLength, other.prefixLength)
        return source.masked(to: shorter) == other.source.masked(to: shorter)
    }
}
