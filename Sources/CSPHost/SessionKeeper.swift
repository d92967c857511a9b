import CSPWire

/// What a host keeps about a session between its requests, and the rules of docs/PROTOCOL.md 6.1
/// and 6.5 that decide when to refresh and when to signal the whole session again. Pure: the
/// `csp keep` loop feeds it replies and time.
public struct SessionKeeper: Sendable {
    /// Middlebox ID → epoch, from the records of the last answer.
    public private(set) var path: [UInt64: UInt32]

    public init(records: [(id: UInt64, epoch: UInt32)]) {
        path = Dictionary(records.map { ($0.id, $0.epoch) }, uniquingKeysWith: { _, last in last })
    }

    /// Why an answer's records require a full SETUP again (6.5), nil when the path is unchanged.
    public func reasonToResignal(_ records: [CSPMiddleboxRecord]) -> String? {
        var seen = Set<UInt64>()
        for record in records {
            seen.insert(record.middleboxID)
            guard let epoch = path[record.middleboxID] else {
                return "middlebox \(hex(record.middleboxID)) appeared on the path"
            }
            if epoch != record.epoch {
                return "middlebox \(hex(record.middleboxID)) restarted (epoch \(epoch) -> \(record.epoch))"
            }
        }
        if let gone = path.keys.sorted().first(where: { !seen.contains($0) }) {
            return "middlebox \(hex(gone)) left the path"
        }
        return nil
    }

    /// Remembers the path an answer reported.
    public mutating func remember(_ records: [CSPMiddleboxRecord]) {
        path = Dictionary(records.map { ($0.middleboxID, $0.epoch) }, uniquingKeysWith: { _, last in last })
    }

    /// When to refresh next: half the effective lifetime, ±10 % (6.1), at least one second.
    public static func refreshDelay(lifetime: UInt32, jitter: Double) -> Double {
        max(1, Double(lifetime) / 2 * (1 + 0.1 * max(-1, min(1, jitter))))
    }
}
