import CSPHost
import CSPWire
import XCTest

final class SessionKeeperTests: XCTestCase {
    func record(_ id: UInt64, _ epoch: UInt32) -> CSPMiddleboxRecord {
        CSPMiddleboxRecord(middleboxID: id, epoch: epoch, decision: .admitted, grantedLifetime: 60)
    }

    func testResignalWhenAMiddleboxRestartsAppearsOrLeaves() {
        var keeper = SessionKeeper(records: [(1, 10), (2, 20)])
        XCTAssertNil(keeper.reasonToResignal([record(2, 20), record(1, 10)]))
        XCTAssertEqual(keeper.reasonToResignal([record(1, 11), record(2, 20)]), "middlebox 0000000000000001 restarted (epoch 10 -> 11)")
        XCTAssertEqual(keeper.reasonToResignal([record(1, 10), record(2, 20), record(3, 1)]), "middlebox 0000000000000003 appeared on the path")
        XCTAssertEqual(keeper.reasonToResignal([record(1, 10)]), "middlebox 0000000000000002 left the path")
        keeper.remember([record(1, 11)])
        XCTAssertNil(keeper.reasonToResignal([record(1, 11)]))
    }

    func testRefreshAtHalfTheLifetimeWithJitter() {
        XCTAssertEqual(SessionKeeper.refreshDelay(lifetime: 60, jitter: 0), 30)
        XCTAssertEqual(SessionKeeper.refreshDelay(lifetime: 60, jitter: 1), 33, accuracy: 1e-9)
        XCTAssertEqual(SessionKeeper.refreshDelay(lifetime: 60, jitter: -5), 27, accuracy: 1e-9)
        XCTAssertEqual(SessionKeeper.refreshDelay(lifetime: 1, jitter: 0), 1)
    }
}

final class AddressWatcherParseTests: XCTestCase {
    /// An RTM_DELADDR for 10.0.1.2 on interface 3 (global scope), as the kernel sends it.
    func testParsesAddressEvents() {
        var message: [UInt8] = []
        func le16(_ v: Int) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8)] }
        func le32(_ v: Int) -> [UInt8] { le16(v & 0xffff) + le16(v >> 16) }
        let attributes = le16(8) + le16(1) + [10, 0, 1, 2] + le16(8) + le16(2) + [10, 0, 1, 2]
        let body: [UInt8] = [2, 24, 0, 0] + le32(3) + attributes
        message = le32(16 + body.count) + le16(21) + le16(0) + le32(0) + le32(0) + body
        XCTAssertEqual(
            AddressWatcher.parse(message),
            [AddressEvent(kind: .removed, address: IPAddress("10.0.1.2")!, interfaceIndex: 3, scope: 0)])
        XCTAssertEqual(AddressWatcher.parse(Array(message.prefix(20))), [], "truncated")
        XCTAssertEqual(AddressWatcher.parse([]), [])
    }
}
