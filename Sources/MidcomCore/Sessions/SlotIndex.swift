/// A hash index from keys to slots of an array that holds the keys themselves (`SessionTable`'s
/// sessions): open addressing with linear probing over 8-octet entries, each the key's hash (its low
/// 32 bits) and the slot. The keys are not stored twice: a candidate is confirmed by the caller
/// against the element in its slot.
///
/// Why not a `Dictionary` from key to slot: growing one re-hashes every key (SipHash each) and
/// moves key and value buckets of 12 to 24 octets; at 300k sessions that growth was a third of an
/// admission's table cost (docs/PERFORMANCE.md, "Eighth pass"). Here growth re-inserts the stored
/// hashes without touching a key, a lookup reads one entry line before the element, and an entry
/// is 8 octets at a load of at most 3/4.
///
/// The hash must be keyed (the caller passes `hashValue`, SipHash with a per-process seed): keys
/// are chosen by hosts, and an unkeyed hash would let them build long probe runs.
struct SlotIndex: Sendable {
    /// 0 is an empty entry; otherwise hash (32 bits) << 32 | (slot + 1).
    private var entries: [UInt64] = []
    private(set) var count = 0

    private var mask: Int { entries.count - 1 }

    @inline(__always)
    private static func tag(_ hash: Int) -> UInt64 { UInt64(UInt32(truncatingIfNeeded: hash)) }

    @inline(__always)
    private static func slot(of entry: UInt64) -> Int { Int(UInt32(truncatingIfNeeded: entry)) - 1 }

    /// The slot of the first entry with `hash` whose element `matches`, if any.
    @inline(__always)
    func slot(hash: Int, where matches: (Int) -> Bool) -> Int? {
        position(hash: hash, where: matches).map { Self.slot(of: entries[$0]) }
    }

    @inline(__always)
    private func position(hash: Int, where matches: (Int) -> Bool) -> Int? {
        guard count > 0 else { return nil }
        let tag = Self.tag(hash)
        var position = Int(truncatingIfNeeded: tag) & mask
        // Bounded: the load never passes 3/4, so an empty entry ends every run.
        while true {
            let entry = entries[position]
            if entry == 0 { return nil }
            if entry >> 32 == tag, matches(Self.slot(of: entry)) { return position }
            position = (position + 1) & mask
        }
    }

    /// Points the entry of the key with `hash` that `matches` at `slot`, or adds one.
    mutating func set(hash: Int, slot: Int, where matches: (Int) -> Bool) {
        if let found = position(hash: hash, where: matches) {
            entries[found] = Self.tag(hash) << 32 | UInt64(slot + 1)
        } else {
            insert(hash: hash, slot: slot)
        }
    }

    /// Adds an entry; the caller knows the key is not indexed yet.
    mutating func insert(hash: Int, slot: Int) {
        precondition(slot >= 0 && slot < Int(UInt32.max), "slot out of range")
        if (count + 1) * 4 > entries.count * 3 { grow(to: max(16, entries.count * 2)) }
        let tag = Self.tag(hash)
        var position = Int(truncatingIfNeeded: tag) & mask
        while entries[position] != 0 { position = (position + 1) & mask }
        entries[position] = tag << 32 | UInt64(slot + 1)
        count += 1
    }

    /// Removes the entry with `hash` pointing at `slot`; false if there is none.
    @discardableResult
    mutating func remove(hash: Int, slot: Int) -> Bool {
        guard let found = position(hash: hash, where: { $0 == slot }) else { return false }
        entries[found] = 0
        count -= 1
        // Backward shift instead of tombstones: every entry after the hole that may live in it
        // moves up, so lookups still stop at the first empty entry and no run only grows.
        var hole = found
        var next = (found + 1) & mask
        while entries[next] != 0 {
            let home = Int(truncatingIfNeeded: entries[next] >> 32) & mask
            if (next - home) & mask >= (next - hole) & mask {
                entries[hole] = entries[next]
                entries[next] = 0
                hole = next
            }
            next = (next + 1) & mask
        }
        return true
    }

    /// Points the entry with `hash` at slot `old` to slot `new` (its element moved); false if
    /// there is none.
    @discardableResult
    mutating func move(hash: Int, from old: Int, to new: Int) -> Bool {
        guard let found = position(hash: hash, where: { $0 == old }) else { return false }
        entries[found] = Self.tag(hash) << 32 | UInt64(new + 1)
        return true
    }

    /// The longest run of occupied entries: how far a lookup may probe (tests of hostile keys).
    var longestRun: Int {
        var longest = 0
        var run = 0
        // Twice round, so a run that wraps past the end is counted whole.
        for index in 0..<(2 * entries.count) {
            run = entries[index & mask] == 0 ? 0 : run + 1
            longest = max(longest, min(run, entries.count))
        }
        return longest
    }

    /// Room for `count` keys without growing.
    mutating func reserveCapacity(_ count: Int) {
        var size = max(16, entries.count)
        while count * 4 > size * 3 { size *= 2 }
        if size > entries.count { grow(to: size) }
    }

    mutating func removeAll() {
        entries = []
        count = 0
    }

    /// Re-inserts every entry into `size` entries from its stored hash: no key is read.
    private mutating func grow(to size: Int) {
        let old = entries
        entries = [UInt64](repeating: 0, count: size)
        let mask = size - 1
        for entry in old where entry != 0 {
            var position = Int(truncatingIfNeeded: entry >> 32) & mask
            while entries[position] != 0 { position = (position + 1) & mask }
            entries[position] = entry
        }
    }
}
