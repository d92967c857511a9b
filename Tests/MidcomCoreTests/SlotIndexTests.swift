import XCTest

@testable import MidcomCore

/// `SlotIndex` under the way `SessionTable` uses it: keys live in a dense array, the index maps a
/// key's hash to its slot, removals move the last element into the hole.
final class SlotIndexTests: XCTestCase {
    /// A dense array of keys and its index, kept the way the session table keeps them.
    struct DenseKeys {
        var keys: [UInt64] = []
        var index = SlotIndex()
        let hash: (UInt64) -> Int

        func slot(of key: UInt64) -> Int? { index.slot(hash: hash(key)) { keys[$0] == key } }

        mutating func insert(_ key: UInt64) {
            guard slot(of: key) == nil else { return }
            index.insert(hash: hash(key), slot: keys.count)
            keys.append(key)
        }

        mutating func remove(_ key: UInt64) -> Bool {
            guard let slot = slot(of: key) else { return false }
            XCTAssertTrue(index.remove(hash: hash(key), slot: slot))
            let last = keys.count - 1
            if slot != last {
                XCTAssertTrue(index.move(hash: hash(keys[last]), from: last, to: slot))
                keys.swapAt(slot, last)
            }
            keys.removeLast()
            return true
        }
    }

    /// Random inserts and removals against a `Set`, with a hash so weak (seven values) that probe
    /// runs are long, wrap around the end of the entries and are shifted back on every removal.
    func testAgreesWithASetUnderChurnWithCollidingHashes() {
        for hash in [{ (key: UInt64) in Int(key % 7) }, { (key: UInt64) in Int(truncatingIfNeeded: key) &* 31 - 1 }, { $0.hashValue }] {
            var dense = DenseKeys(hash: hash)
            var model = Set<UInt64>()
            var random = SystemRandomNumberGenerator()
            for _ in 0..<20_000 {
                let key = UInt64.random(in: 0..<300, using: &random)
                if Bool.random(using: &random) {
                    dense.insert(key)
                    model.insert(key)
                } else {
                    XCTAssertEqual(dense.remove(key), model.remove(key) != nil)
                }
            }
            XCTAssertEqual(dense.index.count, model.count)
            XCTAssertEqual(Set(dense.keys), model)
            for key in UInt64(0)..<300 {
                let slot = dense.slot(of: key)
                XCTAssertEqual(slot != nil, model.contains(key), "key \(key)")
                if let slot { XCTAssertEqual(dense.keys[slot], key) }
            }
        }
    }

    /// Growth re-inserts the stored hashes: everything is found after many doublings, with and
    /// without room reserved first, and the index never holds more than it was given.
    func testGrowthKeepsEveryEntry() {
        for reserved in [false, true] {
            var dense = DenseKeys(hash: { $0.hashValue })
            if reserved { dense.index.reserveCapacity(50_000) }
            for key in UInt64(0)..<50_000 { dense.insert(key &* 0x9e37_79b9_7f4a_7c15) }
            XCTAssertEqual(dense.index.count, 50_000)
            for key in UInt64(0)..<50_000 { XCTAssertEqual(dense.slot(of: key &* 0x9e37_79b9_7f4a_7c15), Int(key)) }
            XCTAssertNil(dense.slot(of: 1))
        }
    }

    /// `longestRun` counts a run that wraps past the end of the entries as one, and a hash that
    /// sends every key to one place builds one run of them all (what the tests of hostile keys
    /// would see if the session table's hash were not keyed).
    func testLongestRunSeesPileUps() {
        var index = SlotIndex()
        for slot in 0..<10 { index.insert(hash: 15, slot: slot) }  // 16 entries: wraps from 15 to 0...
        XCTAssertEqual(index.longestRun, 10)
        var spread = DenseKeys(hash: { $0.hashValue })
        var piled = DenseKeys(hash: { _ in 7 })
        for key in UInt64(0)..<1000 {
            spread.insert(key << 32)
            piled.insert(key << 32)
        }
        XCTAssertEqual(piled.index.longestRun, 1000)
        XCTAssertLessThan(spread.index.longestRun, 100)
    }

    /// `set` points an existing key's entry at a new slot (no second entry), or adds one.
    func testSetReplacesTheEntryOfAKeyOrAddsOne() {
        var index = SlotIndex()
        let owners: [UInt64] = [10, 20, 10]  // slots 0 and 2 hold the same key
        index.set(hash: 5, slot: 0) { owners[$0] == 10 }
        XCTAssertEqual(index.count, 1)
        index.set(hash: 5, slot: 2) { owners[$0] == 10 }
        XCTAssertEqual(index.count, 1, "the key's entry was repointed, not doubled")
        XCTAssertEqual(index.slot(hash: 5) { owners[$0] == 10 }, 2)
        index.set(hash: 5, slot: 1) { owners[$0] == 20 }
        XCTAssertEqual(index.count, 2)
        XCTAssertEqual(index.slot(hash: 5) { owners[$0] == 20 }, 1)
        XCTAssertFalse(index.remove(hash: 5, slot: 0), "no entry points at slot 0 any more")
        XCTAssertFalse(index.move(hash: 6, from: 1, to: 0), "another hash: not this entry")
        index.removeAll()
        XCTAssertEqual(index.count, 0)
        XCTAssertNil(index.slot(hash: 5) { _ in true })
    }
}
