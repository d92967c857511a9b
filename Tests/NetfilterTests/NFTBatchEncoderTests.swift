import TestSupport
import XCTest

@testable import Netfilter

#if canImport(Glibc)
import Glibc
#endif

/// `NFTBatchEncoder` without a kernel: the bytes it writes for set-element transactions against
/// libnftnl's for the same change sets, one message against bytes checked by hand, and buffer reuse.
final class NFTBatchEncoderTests: XCTestCase {
    private func key(_ bytes: [UInt8]) -> NFTSetKey {
        var key = NFTSetKey()
        key.append(raw: bytes)
        return key
    }

    private func flowKey(_ source: UInt32, _ proto: UInt8, _ sourcePort: UInt16, _ destination: UInt32, _ port: UInt16) -> NFTSetKey {
        var key = NFTSetKey()
        key.append(ipv4: source)
        key.append(proto: proto)
        key.append(port: sourcePort)
        key.append(ipv4: destination)
        key.append(port: port)
        return key
    }

    /// Every shape of operation midcomd sends, with names and keys of every length modulo 4 so that
    /// all paddings occur, compared byte for byte with libnftnl's batch.
    func testBytesEqualLibnftnlForEveryOperationShape() {
        var v6 = NFTSetKey()
        v6.append(ipv6: [0xfd, 0, 0, 1] + [UInt8](repeating: 0, count: 11) + [2])
        v6.append(proto: 6)
        v6.append(port: 4000)
        v6.append(ipv6: [0xfd, 0, 0, 2] + [UInt8](repeating: 0, count: 11) + [2])
        v6.append(port: 443)
        var natData = NFTSetKey()
        natData.append(ipv4: 0xcb00_7101)
        natData.append(port: 20001)
        let longComment = String(repeating: "x", count: 200)  // cut to 127 octets, as nft does
        let utf8Comment = "csp 0123456789abcdef o vöíp ☎"

        for (family, table) in [(NFTFamily.inet, "midcom"), (.ipv4, "t"), (.ipv6, "ab"), (.inet, "abc"), (.inet, "abcd")] {
            var changes = NFTChangeSet(family: family, table: table)
            changes.addElement(set: "admit4", key: flowKey(0x0a00_0102, 17, 4000, 0x0a00_0202, 5000), timeout: .seconds(30),
                               comment: "csp 0123456789abcdef o voip")
            changes.addElement(set: "admit6", key: v6, timeout: .milliseconds(1500))
            changes.addElement(set: "snat4", key: flowKey(0x0a00_0102, 17, 4000, 0, 0), data: natData, timeout: .seconds(30), comment: "c")
            changes.addElement(set: "deny4", key: key([198, 18, 0, 0]), timeout: .seconds(10), keyEnd: key([198, 19, 255, 255]))
            changes.addElement(set: "marks", key: key([1]))  // no timeout, no comment
            changes.addElement(set: "p", key: key([1, 2]), timeout: .zero, comment: "")
            changes.addElement(set: "p3", key: key([1, 2, 3]), timeout: .nanoseconds(1), comment: NFTComment(longComment))
            changes.addElement(set: "p5", key: key([1, 2, 3, 4, 5]), data: key([9, 9, 9]), comment: NFTComment(utf8Comment))
            changes.deleteElement(set: "admit4", key: flowKey(0x0a00_0102, 17, 4000, 0x0a00_0202, 5000))
            changes.deleteElement(set: "deny4", key: key([198, 18, 0, 0]), keyEnd: key([198, 19, 255, 255]))
            changes.flushSet("drop4")
            changes.flushSet("a_set_name_of_some_length")
            // Runs that join into one message: adds of one set (with and without comments), deletes
            // of one set, then a flush of the same set (which never joins) and an add to another set.
            for port: UInt16 in 1 ... 3 {
                changes.addElement(set: "admit4", key: flowKey(0x0a00_0102, 6, port, 0x0a00_0202, 22), timeout: .seconds(9),
                                   comment: port == 2 ? nil : NFTComment("csp 00000000000000\(port) i"))
            }
            for port: UInt16 in 1 ... 3 { changes.deleteElement(set: "admit4", key: flowKey(0x0a00_0102, 6, port, 0x0a00_0202, 22)) }
            changes.flushSet("admit4")
            changes.deleteElement(set: "admit4", key: flowKey(0x0a00_0102, 6, 9, 0x0a00_0202, 22))
            changes.addElement(set: "admit6", key: v6)
            changes.addElement(set: "admit6", key: v6, timeout: .seconds(1))
            for first: UInt32 in [1000, 0xffff_fff8] {  // also across the wrap of the sequence counter
                let encoded = NFTablesClient.encodedBatch(changes, firstSequence: first)
                let reference = LibnftnlReference.batch(changes, firstSequence: first)
                XCTAssertEqual(hex(encoded), hex(reference), "family \(family), table \(table), first sequence \(first)")
                // One message per operation: what `apply` resends to name a refused element.
                XCTAssertEqual(hex(NFTablesClient.encodedBatch(changes, firstSequence: first, joining: false)),
                               hex(LibnftnlReference.batch(changes, firstSequence: first, grouping: false)), "one message per operation")
            }
        }
    }

    /// The shapes of the figure-6 benchmark in bulk: 1000 adds, then 1000 deletes (more than the
    /// initial 16 KiB buffer, so the buffer grows in the middle of a transaction).
    func testBytesEqualLibnftnlForLargeBatches() {
        var adds = NFTChangeSet(table: "midcom"), deletes = NFTChangeSet(table: "midcom")
        for index in 0 ..< 1000 {
            let key = flowKey(0x0aca_0000 | UInt32(index), 17, UInt16(1024 + index), 0x0ac9_0202, 10000)
            adds.addElement(set: "admit4", key: key, timeout: .seconds(600))
            deletes.deleteElement(set: "admit4", key: key)
        }
        XCTAssertEqual(NFTablesClient.encodedBatch(adds, firstSequence: 7), LibnftnlReference.batch(adds, firstSequence: 7))
        XCTAssertEqual(NFTablesClient.encodedBatch(deletes, firstSequence: 7), LibnftnlReference.batch(deletes, firstSequence: 7))
        XCTAssertEqual(NFTablesClient.encodedBatch(adds, firstSequence: 7, joining: false),
                       LibnftnlReference.batch(adds, firstSequence: 7, grouping: false))
    }

    /// A change set emptied with `removeAll` and filled again encodes only what came after, as a fresh
    /// one holding the same operations does, and keeps its storage.
    func testEmptiedChangeSetEncodesOnlyItsNewOperations() {
        var reused = NFTChangeSet(table: "midcom")
        reused.reserveCapacity(1000)
        for index in 0 ..< 1000 { reused.addElement(set: "admit4", key: key([1, 2, 3, UInt8(index & 0xff)]), timeout: .seconds(600)) }
        let capacity = reused.operations.capacity
        reused.removeAll()
        XCTAssertTrue(reused.isEmpty)
        XCTAssertEqual(reused.operations.capacity, capacity, "the storage is kept")
        var fresh = NFTChangeSet(table: "midcom")
        for change in [(9 as UInt8), 8, 7] {
            reused.deleteElement(set: "admit4", key: key([4, 5, 6, change]))
            fresh.deleteElement(set: "admit4", key: key([4, 5, 6, change]))
        }
        XCTAssertEqual(reused.count, 3)
        XCTAssertEqual(reused.operations, fresh.operations)
        XCTAssertEqual(NFTablesClient.encodedBatch(reused, firstSequence: 7), NFTablesClient.encodedBatch(fresh, firstSequence: 7))
        XCTAssertEqual(NFTablesClient.encodedBatch(reused, firstSequence: 7), LibnftnlReference.batch(fresh, firstSequence: 7))
    }

    /// An element list is one attribute with a 16-bit length: a long run of adds is split into
    /// messages whose lists stay within 65535 octets, every element in one of them, in order.
    func testLongRunsAreSplitBelowTheAttributeLimit() {
        var adds = NFTChangeSet(table: "midcom")
        for index in 0 ..< 3000 {
            adds.addElement(set: "admit4", key: flowKey(UInt32(index), 17, 1, 2, 3), timeout: .seconds(600), comment: "csp 0123456789abcdef o")
        }
        let bytes = NFTablesClient.encodedBatch(adds, firstSequence: 1)
        var offset = 20, messages = 0, elements: [UInt8] = []
        func u16(_ at: Int) -> Int { Int(bytes[at]) | Int(bytes[at + 1]) << 8 }
        func u32(_ at: Int) -> Int { u16(at) | u16(at + 2) << 16 }
        while offset < bytes.count - 20 {
            let length = u32(offset)
            XCTAssertEqual(u32(offset + 8), 2 + messages, "consecutive sequence numbers")
            // set "admit4" (12) and table "midcom" (12), then the element list
            let list = offset + 20 + 24
            XCTAssertEqual(u16(list + 2), 0x8003)
            XCTAssertLessThanOrEqual(u16(list), 0xffff)
            XCTAssertEqual(u16(list), length - 44, "the list is the rest of the message")
            var element = list + 4
            while element < offset + length {
                elements.append(bytes[element + 4 + 12 + 8 + 3])  // the low octet of the source address in the key
                element += u16(element)
            }
            offset += length
            messages += 1
        }
        XCTAssertEqual(elements, (0 ..< 3000).map { UInt8(truncatingIfNeeded: $0) })
        XCTAssertGreaterThan(messages, 1)
        XCTAssertEqual(messages, (3000 * 76 + 0xfffb) / 0xfffc, "each message as full as the limit allows")
    }

    /// One admission, every field checked by hand against nf_tables.h.
    func testOneAdmissionFieldByField() {
        var changes = NFTChangeSet(table: "mc")
        var key = NFTSetKey()
        key.append(ipv4: 0x0a00_0001)
        key.append(port: 80)
        changes.addElement(set: "s", key: key, timeout: .seconds(2), comment: "hi")
        let expected: [UInt8] =
            // NFNL_MSG_BATCH_BEGIN: nlmsghdr len 20, type 0x10, flags NLM_F_REQUEST, seq 5, pid 0
            [20, 0, 0, 0, 0x10, 0, 0x01, 0, 5, 0, 0, 0, 0, 0, 0, 0]
            // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id NFNL_SUBSYS_NFTABLES (big endian)
            + [0, 0, 0x00, 0x0a]
            // NFT_MSG_NEWSETELEM: len 84, type 0x0a0c (subsystem 10, message 12), NLM_F_REQUEST | NLM_F_CREATE, seq 6
            + [84, 0, 0, 0, 0x0c, 0x0a, 0x01, 0x04, 6, 0, 0, 0, 0, 0, 0, 0]
            // nfgenmsg: NFPROTO_INET, V0, res_id 0
            + [1, 0, 0, 0]
            // NFTA_SET_ELEM_LIST_SET (2) "s\0" len 6, 2 octets padding
            + [6, 0, 2, 0, 0x73, 0, 0, 0]
            // NFTA_SET_ELEM_LIST_TABLE (1) "mc\0" len 7, 1 octet padding
            + [7, 0, 1, 0, 0x6d, 0x63, 0, 0]
            // NFTA_SET_ELEM_LIST_ELEMENTS (3 | NLA_F_NESTED) len 48
            + [48, 0, 0x03, 0x80]
            // NFTA_LIST_ELEM (1 | NLA_F_NESTED) len 44: timeout 12 + key 16 + user data 12 + this header
            + [44, 0, 0x01, 0x80]
            // NFTA_SET_ELEM_TIMEOUT (4) be64 2000 ms
            + [12, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0x07, 0xd0]
            // NFTA_SET_ELEM_KEY (1 | nested) len 16 { NFTA_DATA_VALUE (1) len 12: 0a000001 . 0050 padded }
            + [16, 0, 0x01, 0x80, 12, 0, 1, 0, 10, 0, 0, 1, 0, 80, 0, 0]
            // NFTA_SET_ELEM_USERDATA (6) len 9: comment record type 0, length 3, "hi\0"; 3 octets padding
            + [9, 0, 6, 0, 0, 3, 0x68, 0x69, 0, 0, 0, 0]
            // NFNL_MSG_BATCH_END: type 0x11, seq 7
            + [20, 0, 0, 0, 0x11, 0, 0x01, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x0a]
        XCTAssertEqual(NFTablesClient.encodedBatch(changes, firstSequence: 5), expected)
    }

    /// A timeout given in whole seconds (as the engine grants lifetimes) is the same element as the
    /// same `Duration`, at 0, at the largest lifetime and in between; a fraction of a millisecond
    /// still rounds up, never to 0 ("no timeout").
    func testTimeoutInSecondsEqualsTheSameDuration() {
        for seconds: UInt32 in [0, 1, 2, 3600, .max] {
            var inSeconds = NFTChangeSet(table: "mc")
            var asDuration = NFTChangeSet(table: "mc")
            inSeconds.addElement(set: "s", key: key([1, 2, 3, 4]), timeoutSeconds: seconds, comment: "c")
            asDuration.addElement(set: "s", key: key([1, 2, 3, 4]), timeout: .seconds(seconds), comment: "c")
            XCTAssertEqual(inSeconds.operations, asDuration.operations, "\(seconds) s")
            XCTAssertEqual(inSeconds.operations.first?.timeoutMilliseconds, UInt64(seconds) * 1000)
        }
        var fraction = NFTChangeSet(table: "mc")
        fraction.addElement(set: "s", key: key([1, 2, 3, 4]), timeout: .microseconds(1))
        XCTAssertEqual(fraction.operations.first?.timeoutMilliseconds, 1)
    }

    /// A delete and a flush: no timeout, no NLM_F_CREATE; the flush has no element list.
    func testDeleteAndFlushFieldByField() {
        var changes = NFTChangeSet(family: .ipv4, table: "mc")
        changes.deleteElement(set: "s", key: key([6]))
        changes.flushSet("s")
        let bytes = NFTablesClient.encodedBatch(changes, firstSequence: 1)
        let delete = Array(bytes[20 ..< 20 + 56]), flush = Array(bytes[76 ..< 76 + 36])
        XCTAssertEqual(delete,
            // NFT_MSG_DELSETELEM (14), NLM_F_REQUEST, seq 2; NFPROTO_IPV4
            [56, 0, 0, 0, 0x0e, 0x0a, 0x01, 0x00, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]
            + [6, 0, 2, 0, 0x73, 0, 0, 0] + [7, 0, 1, 0, 0x6d, 0x63, 0, 0]
            // ELEMENTS len 20 { LIST_ELEM len 16 { KEY len 12 { VALUE len 5: 06, 3 octets padding } } }
            + [20, 0, 0x03, 0x80, 16, 0, 0x01, 0x80, 12, 0, 0x01, 0x80, 5, 0, 1, 0, 6, 0, 0, 0])
        XCTAssertEqual(flush,
            [36, 0, 0, 0, 0x0e, 0x0a, 0x01, 0x00, 3, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]
            + [6, 0, 2, 0, 0x73, 0, 0, 0] + [7, 0, 1, 0, 0x6d, 0x63, 0, 0])
        XCTAssertEqual(bytes.count, 20 + 56 + 36 + 20)
    }

    /// The buffer is reused: a transaction after a larger one holds only its own messages, and
    /// padding left from the larger one never shows through.
    func testBufferIsReusedWithoutStaleBytes() {
        let encoder = NFTBatchEncoder(capacity: 64)
        var big = NFTChangeSet(table: "midcom")
        for index in 0 ..< 50 { big.addElement(set: "admit4", key: key([0xff, 0xff, 0xff, UInt8(index)]), comment: "zzzzz") }
        var small = NFTChangeSet(table: "midcom")
        small.addElement(set: "admit4", key: key([1]), comment: "a")

        func encode(_ changes: NFTChangeSet) -> [UInt8] {
            encoder.reset()
            encoder.appendBatchBegin(sequence: 1)
            for (index, operation) in changes.operations.enumerated() {
                encoder.appendElementOperation(operation, family: changes.family, table: changes.table, sequence: UInt32(2 + index))
            }
            encoder.appendBatchEnd(sequence: UInt32(2 + changes.count))
            return Array(encoder.bytes)
        }
        XCTAssertEqual(encode(big), LibnftnlReference.batch(big, firstSequence: 1, grouping: false))
        XCTAssertGreaterThan(encoder.capacity, 64, "the buffer grew")
        let grown = encoder.capacity
        XCTAssertEqual(encode(small), LibnftnlReference.batch(small, firstSequence: 1, grouping: false))
        XCTAssertEqual(encoder.capacity, grown, "and stayed")
    }

    /// Keys as `nft` lays them out: a lone field unpadded, every field of a concatenation padded to 4.
    func testSetKeyPadding() {
        var proto = NFTSetKey()
        proto.append(proto: 17)
        XCTAssertEqual(proto.bytes, [17])
        var pair = NFTSetKey()
        pair.append(proto: 17)
        pair.append(port: 53)
        XCTAssertEqual(pair.bytes, [17, 0, 0, 0, 0, 53, 0, 0])
        XCTAssertEqual(flowKey(0x0a00_0001, 17, 1234, 0xc0a8_0102, 80).description, "0a000001" + "11000000" + "04d20000" + "c0a80102" + "00500000")
        var raw = NFTSetKey()
        raw.append(raw: [1, 2, 3, 4, 5])
        XCTAssertEqual(raw.bytes, [1, 2, 3, 4, 5])
        raw.append(raw: [6])
        XCTAssertEqual(raw.bytes, [1, 2, 3, 4, 5, 0, 0, 0, 6, 0, 0, 0])
    }

    /// A refused message is described only when the kernel names it: index 0 is BATCH_BEGIN, then
    /// one per operation, then BATCH_END; the description is the one `apply` always gave.
    func testErrorTargetsAreWorkedOutFromTheIndex() {
        var changes = NFTChangeSet(table: "midcom")
        changes.addElement(set: "admit4", key: key([1, 2, 3, 4]), timeout: .seconds(1))
        changes.deleteElement(set: "admit4", key: key([1, 2, 3, 4]))
        changes.flushSet("drop4")
        XCTAssertEqual(Target.inElementBatch(changes, index: 0).operation, "NFNL_MSG_BATCH_BEGIN")
        let add = Target.inElementBatch(changes, index: 1).error(errno: EINVAL)
        XCTAssertEqual(add.operation, "NFT_MSG_NEWSETELEM")
        XCTAssertEqual(add.object, "set inet midcom admit4, element 01020304")
        XCTAssertTrue(add.hint.contains("4-byte key"), add.hint)
        let delete = Target.inElementBatch(changes, index: 2).error(errno: ENOENT)
        XCTAssertEqual(delete.operation, "NFT_MSG_DELSETELEM")
        XCTAssertTrue(delete.description.contains("may have timed out"), delete.description)
        XCTAssertEqual(Target.inElementBatch(changes, index: 3).object, "set inet midcom drop4")
        XCTAssertEqual(Target.inElementBatch(changes, index: 4).operation, "NFNL_MSG_BATCH_END")
    }
}
