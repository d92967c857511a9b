import CSPHost
import CSPTrust
import CSPWire
import XCTest

/// What a session keeper does with datagrams on the all-hosts group (PROTOCOL.md 5.7.1): only a
/// well-formed unsolicited ANNOUNCE of an epoch the session does not hold makes it REFRESH, at
/// most once per interval; forged, replayed and flooded variants change nothing.
final class EpochAnnouncementTests: XCTestCase {
    let middleboxKey = SigningKey(seed: [UInt8](repeating: 0x31, count: 32))!
    let otherKey = SigningKey(seed: [UInt8](repeating: 0x32, count: 32))!
    let start = ContinuousClock.now

    func announcement(id: UInt64 = 5, epoch: UInt32 = 2, nonce: UInt64 = 0, key: SigningKey?, tamper: Bool = false) throws -> [UInt8] {
        var record = CSPMiddleboxRecord(middleboxID: id, epoch: epoch, decision: .forwarded, grantedLifetime: 0)
        var message = CSPMessage(
            type: .announce, flags: .fromMiddlebox, result: .success, sessionID: 0, nonce: nonce,
            tlvs: [.epoch(epoch), .middleboxName("gw")])
        if let key { record = record.signed(by: key, header: message.headerForSigning) }
        message.tlvs.append(.middleboxRecord(record))
        var bytes = try message.serialize()
        if tamper { bytes[bytes.count - 1] ^= 1 }  // a bit of the signature
        return bytes
    }

    func testAnUnknownEpochMeansRefreshNowAtMostOncePerInterval() throws {
        var gate = EpochAnnouncementGate()
        let path: [UInt64: UInt32] = [5: 1]
        XCTAssertEqual(gate.consider(try announcement(key: middleboxKey), path: path, now: start), .refreshNow(middlebox: 5, epoch: 2))
        // A flood (or the same datagram sent again) within the interval: nothing more.
        for step in 1...50 {
            XCTAssertNotEqual(
                gate.consider(try announcement(id: UInt64(100 + step), key: nil), path: path, now: start + .milliseconds(step * 30)),
                .refreshNow(middlebox: UInt64(100 + step), epoch: 2))
        }
        XCTAssertEqual(
            gate.consider(try announcement(id: 9, key: nil), path: path, now: start + EpochAnnouncementGate.minimumInterval),
            .refreshNow(middlebox: 9, epoch: 2), "a middlebox not on the path (the HA partner) after the interval")
    }

    func testAKnownEpochChangesNothing() throws {
        var gate = EpochAnnouncementGate()
        guard case .ignore = gate.consider(try announcement(epoch: 1, key: middleboxKey), path: [5: 1], now: start) else {
            return XCTFail("the path already holds epoch 1 of middlebox 5")
        }
        // ... and does not use up the interval.
        XCTAssertEqual(gate.consider(try announcement(epoch: 3, key: nil), path: [5: 1], now: start), .refreshNow(middlebox: 5, epoch: 3))
    }

    func testForgedOrMalformedAnnouncementsAreIgnored() throws {
        var gate = EpochAnnouncementGate()
        let path: [UInt64: UInt32] = [5: 1]
        let refused: [(String, [UInt8])] = [
            ("bad signature", try announcement(key: middleboxKey, tamper: true)),
            ("a solicited ANNOUNCE (nonce) is not ours to act on", try announcement(nonce: 77, key: nil)),
            ("garbage", [0x43, 0x53, 0x50, 0x31, 0xff]),
            ("empty", []),
            ("a SETUP", try CSPMessage(type: .setup, sessionID: 1, nonce: 0, tlvs: [.lifetime(1)]).serialize()),
        ]
        for (what, bytes) in refused {
            guard case .ignore = gate.consider(bytes, path: path, now: start) else { return XCTFail(what) }
        }
    }

    func testPinnedKeysAreRequiredWhenGiven() throws {
        var gate = EpochAnnouncementGate(pinned: [middleboxKey.publicKey])
        let path: [UInt64: UInt32] = [5: 1]
        guard case .ignore = gate.consider(try announcement(key: nil), path: path, now: start) else { return XCTFail("unsigned") }
        guard case .ignore = gate.consider(try announcement(key: otherKey), path: path, now: start) else { return XCTFail("other key") }
        XCTAssertEqual(gate.consider(try announcement(key: middleboxKey), path: path, now: start), .refreshNow(middlebox: 5, epoch: 2))
    }
}
