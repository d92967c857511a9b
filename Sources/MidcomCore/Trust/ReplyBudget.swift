import CSPWire

/// Limits what we send to addresses nobody has validated (REJECT, CHALLENGE, ANNOUNCE): so many
/// per destination address per second, and so many in all, so that spoofed requests cannot aim
/// the middlebox at a victim (docs/PROTOCOL.md 6.6, 8).
///
/// Per-address counts live in a fixed table of 8-bit counters indexed by a keyed hash of the
/// address and cleared every second: memory is constant whatever the number of (spoofed)
/// sources, and nothing is allocated per packet. Two addresses sharing a slot share a budget,
/// which errs on the side of sending less.
struct ReplyBudget: Sendable {
    static let slots = 1 << 16
    private var counts: [UInt8]
    private var second: UInt64 = .max
    private var total = 0
    private let perSource: Int
    private let perSecond: Int
    private let seed: Int

    init(perSource: Int, perSecond: Int, seed: Int = Int.random(in: .min ... .max)) {
        counts = [UInt8](repeating: 0, count: Self.slots)
        self.perSource = min(perSource, 255)
        self.perSecond = perSecond
        self.seed = seed
    }

    /// Takes one message's worth of budget for `address`; false when the budget is spent.
    mutating func spend(to address: IPAddress, atSecond now: UInt64) -> Bool {
        if now != second {
            second = now
            total = 0
            for i in counts.indices { counts[i] = 0 }
        }
        guard total < perSecond else { return false }
        var hasher = Hasher()
        hasher.combine(seed)
        hasher.combine(address)
        let slot = hasher.finalize() & (Self.slots - 1)
        guard Int(counts[slot]) < perSource else { return false }
        counts[slot] += 1
        total += 1
        return true
    }
}
