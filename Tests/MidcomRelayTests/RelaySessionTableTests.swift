import CSPSession
import CSPTrust
import CSPWire
import XCTest

@testable import MidcomRelay

final class RelaySessionTableTests: XCTestCase {
    let start = ContinuousClock.now
    let host = SigningKey(seed: [UInt8](repeating: 1, count: 32))!.publicKey
    let other = SigningKey(seed: [UInt8](repeating: 2, count: 32))!.publicKey
    let address = IPAddress(ipv4: 0x0A01_000A)
    let target = TargetEndpoint(endpoint: CSPEndpoint(address: IPAddress(ipv4: 0xC633_6414), port: 9000))

    func open(_ session: UInt64, hop: UInt8 = 1, flags: HopFlags = [], protection: HopProtection = .clear) -> HopOpen {
        HopOpen(
            hop: HopDescriptor(sessionID: session, hopIndex: hop, flags: flags, protection: protection), target: target,
            endToEnd: EndToEndPart(kind: .handshake1, data: [1]))
    }

    func testLimitsPerKeyPerAddressAndInAllRefuseTheNextWithRetryAfter() throws {
        var limits = RelayLimits()
        limits.sessionsPerKey = 2
        limits.sessionsPerAddress = 3
        limits.maxSessions = 4
        var table = RelaySessionTable(limits: limits)
        _ = try table.admit(open: open(1), upstreamKey: host, upstreamAddress: address, now: start)
        _ = try table.admit(open: open(2), upstreamKey: host, upstreamAddress: address, now: start)
        XCTAssertThrowsError(try table.admit(open: open(3), upstreamKey: host, upstreamAddress: address, now: start)) { error in
            XCTAssertEqual((error as? RelaySessionTable.Refusal)?.result, .resourcesExhausted)
            XCTAssertEqual((error as? RelaySessionTable.Refusal)?.retryAfter, 30)
            XCTAssertTrue((error as? RelaySessionTable.Refusal)?.text.contains("2 relayed sessions for key") ?? false)
        }
        _ = try table.admit(open: open(3), upstreamKey: other, upstreamAddress: address, now: start)
        XCTAssertThrowsError(try table.admit(open: open(4), upstreamKey: other, upstreamAddress: address, now: start), "per address")
        _ = try table.admit(open: open(4), upstreamKey: other, upstreamAddress: IPAddress(ipv4: 0x0A01_000B), now: start)
        XCTAssertThrowsError(try table.admit(open: open(5), upstreamKey: other, upstreamAddress: IPAddress(ipv4: 0x0A01_000C), now: start), "in all")
    }

    func testLoopsLongChainsAndUnsupportedProtectionAreRefused() {
        var limits = RelayLimits()
        limits.acceptsSealed = false
        var table = RelaySessionTable(limits: limits)
        XCTAssertNoThrow(try table.admit(open: open(7, hop: 1), upstreamKey: host, upstreamAddress: address, now: start))
        XCTAssertThrowsError(try table.admit(open: open(7, hop: 3), upstreamKey: host, upstreamAddress: address, now: start)) {
            XCTAssertTrue(($0 as? RelaySessionTable.Refusal)?.text.hasPrefix("relay loop") ?? false)
        }
        XCTAssertThrowsError(try table.admit(open: open(8, hop: 9), upstreamKey: host, upstreamAddress: address, now: start))
        XCTAssertThrowsError(try table.admit(open: open(9, protection: .sealed), upstreamKey: host, upstreamAddress: address, now: start)) {
            XCTAssertEqual(($0 as? RelaySessionTable.Refusal)?.text, "this relay requires clear hops")
        }
    }

    func testABrokenSessionResumesOnlyForItsKeyAndWithinGrace() throws {
        var table = RelaySessionTable(limits: RelayLimits())
        let key = RelaySessionTable.Key(sessionID: 11, hopIndex: 1)
        _ = try table.admit(open: open(11), upstreamKey: host, upstreamAddress: address, now: start)
        table.hopsEnded(key, generation: 0, clean: false, reason: "hop upstream broke", now: start)
        XCTAssertEqual(table.sessions[key]?.state, .broken)
        XCTAssertThrowsError(try table.resume(open: open(11, flags: .resume), upstreamKey: other, now: start)) {
            XCTAssertEqual(($0 as? RelaySessionTable.Refusal)?.result, .authenticationFailed)
        }
        let resumed = try XCTUnwrap(try table.resume(open: open(11, flags: .resume), upstreamKey: host, now: start))
        XCTAssertEqual(resumed.generation, 1)
        XCTAssertEqual(resumed.resumptions, 1)
        // A late report about the old hops does not end the new ones.
        table.hopsEnded(key, generation: 0, clean: true, reason: "closed", now: start)
        XCTAssertEqual(table.sessions[key]?.state, .settingUp)

        table.hopsEnded(key, generation: 1, clean: false, reason: "hop downstream broke", now: start)
        _ = table.expire(now: start + .seconds(31))
        XCTAssertThrowsError(try table.resume(open: open(11, flags: .resume), upstreamKey: host, now: start + .seconds(31))) {
            XCTAssertEqual(($0 as? RelaySessionTable.Refusal)?.result, .unknownSession)
            XCTAssertTrue(($0 as? RelaySessionTable.Refusal)?.text.hasPrefix("not resumed within") ?? false, "the tombstone says why")
        }
        _ = table.expire(now: start + .seconds(62))
        XCTAssertNil(table.sessions[key], "the tombstone goes after another grace")
        XCTAssertNil(try table.resume(open: open(11, flags: .resume), upstreamKey: host, now: start + .seconds(62)))
    }

    func testByteLimitAndIdleTimeEndSessions() throws {
        var limits = RelayLimits()
        limits.bytesPerSession = 1000
        var table = RelaySessionTable(limits: limits)
        let key = RelaySessionTable.Key(sessionID: 12, hopIndex: 1)
        _ = try table.admit(open: open(12), upstreamKey: host, upstreamAddress: address, now: start)
        let endpoint = CSPEndpoint(address: address, port: 1)
        table.up(key, generation: 0, upstream: (endpoint, endpoint), downstream: (endpoint, endpoint, nil, true), now: start)
        XCTAssertTrue(table.count(key, generation: 0, up: 600, down: 300, now: start))
        XCTAssertFalse(table.count(key, generation: 0, up: 100, down: 0, now: start), "1000 octets reached")
        XCTAssertEqual(table.expire(now: start + .seconds(299)), [])
        XCTAssertEqual(table.expire(now: start + .seconds(300)), [key], "idle for 300 s")
        // Ended by the relay's decision: a resume is refused for good (policy), not "unknown" (which
        // sends the host to the middleboxes for a new offer, back to this tombstone until it gives up).
        table.hopsEnded(key, generation: 0, clean: false, reason: "idle", now: start + .seconds(300))
        XCTAssertEqual(table.sessions[key]?.state, .ended)
        XCTAssertThrowsError(try table.resume(open: open(12, flags: .resume), upstreamKey: host, now: start + .seconds(301))) {
            XCTAssertEqual(($0 as? RelaySessionTable.Refusal)?.result, .policyDenied)
            XCTAssertEqual(($0 as? RelaySessionTable.Refusal)?.text, "idle")
        }
    }
}
