import CSPTrust
import CSPWire
import XCTest

@testable import MidcomCore

/// DENY at a middlebox (docs/PROTOCOL.md 6.8): only for the requester's own proved address,
/// within every bound, refreshed and removed by the same key, expired by the engine.
final class PushbackTests: XCTestCase {
    let victim = CSPEndpoint(address: IPAddress("10.30.0.5")!, port: 40000)
    let attacker = CSPEndpoint(address: IPAddress("203.0.113.7")!, port: 7227)
    let wall: UInt64 = 1_800_000_000
    let victimKey = SigningKey()

    func engine(_ change: (inout PushbackConfiguration) -> Void = { _ in }) -> GatewayEngine {
        var config = MidcomConfiguration()
        config.trust.challenge = .never
        // The victim would be proved (and exempt from the reply budget) after its first CHALLENGE.
        config.trust.repliesPerSource = 100
        change(&config.pushback)
        return GatewayEngine(
            configuration: config, identity: MiddleboxIdentity(id: 7, epoch: 1, name: "gw"),
            challengeSecret: Array(repeating: 3, count: 32), startedAt: wall - 10)
    }

    func deny(
        _ e: inout GatewayEngine, _ prefix: String = "203.0.113.0", length: UInt8 = 24, lifetime: UInt32 = 60, id: UInt64 = 1,
        sequence: UInt32 = 1, key: SigningKey? = nil, signed: Bool = true, from: CSPEndpoint? = nil, at seconds: Double = 0
    ) -> SignalingOutcome {
        var m = CSPMessage(
            type: .deny, sessionID: id, nonce: UInt64(sequence) << 8 | id, sequence: sequence,
            tlvs: [.denySource(CSPDenySource(prefix: IPAddress(prefix)!, prefixLength: length, proto: .udp, port: 53)), .lifetime(lifetime)])
        if signed { m = try! m.signed(by: key ?? victimKey, timestamp: wall) }
        let bytes = try! m.serialize()
        let request = bytes.withUnsafeBytes {
            try! SignalingRequest(parsing: $0, source: from ?? victim, entry: .intercepted(destination: attacker), wallClock: wall)
        }
        return e.handle(request, now: .seconds(seconds))
    }

    var filter: DenyFilter { DenyFilter(source: IPAddress("203.0.113.0")!, prefixLength: 24, proto: .udp, victim: victim.address, port: 53) }

    func testADenyInstallsAFilterForTheVictimOnlyAnswersAndTravelsOn() throws {
        var e = engine()
        let out = deny(&e)
        XCTAssertEqual(out.verdict, .forward, "it travels on upstream")
        XCTAssertEqual(out.kernel.untagged, [.install(.denyFilter(filter), lifetime: 60, tag: nil)])
        let reply = try XCTUnwrap(out.reply)
        XCTAssertEqual(reply.message.type, .accept)
        XCTAssertEqual(reply.message.records.last?.decision, .denied)
        XCTAssertEqual(reply.destination, victim)
        XCTAssertEqual(reply.source, attacker, "sent in the name of the DENY's destination")
        XCTAssertEqual(e.denies.entries[1]?.filter.victim, victim.address)
        XCTAssertEqual(e.counters.deniesInstalled, 1)
    }

    func testRefreshRemovalAndExpiry() {
        var e = engine()
        _ = deny(&e, lifetime: 10)
        XCTAssertEqual(deny(&e, lifetime: 20, sequence: 2, at: 5).kernel.untagged, [.refresh(.denyFilter(filter), lifetime: 20, tag: nil)])
        XCTAssertEqual(e.expire(now: .seconds(11)).kernel, [], "refreshed: still there")
        XCTAssertEqual(e.expire(now: .seconds(25)).kernel, [.remove(.denyFilter(filter))])
        XCTAssertEqual(e.counters.deniesExpired, 1)
        _ = deny(&e, id: 2, sequence: 3, at: 30)
        XCTAssertEqual(deny(&e, lifetime: 0, id: 2, sequence: 4, at: 31).kernel, [.remove(.denyFilter(filter))], "lifetime 0 removes")
        XCTAssertEqual(e.denies.count, 0)
    }

    func testAbuseIsRefusedAndInstallsNothing() {
        var e = engine { $0.filtersPerVictim = 2 }
        // Unsigned.
        XCTAssertEqual(deny(&e, signed: false).reply?.message.result, .authenticationFailed)
        // Wider than allowed.
        XCTAssertEqual(deny(&e, "203.0.0.0", length: 8).reply?.message.result, .policyDenied)
        // Another key cannot refresh or remove the victim's filter.
        _ = deny(&e, id: 5)
        XCTAssertEqual(deny(&e, lifetime: 0, id: 5, sequence: 2, key: SigningKey()).reply?.message.result, .authenticationFailed)
        // Filters per victim.
        _ = deny(&e, "198.51.100.0", id: 6, sequence: 3)
        XCTAssertEqual(deny(&e, "192.0.2.0", id: 7, sequence: 4).reply?.message.result, .resourcesExhausted)
        // Overlapping a filter of the same victim.
        var f = engine()
        _ = deny(&f, id: 8)
        XCTAssertEqual(deny(&f, "203.0.113.128", length: 25, id: 9, sequence: 2).reply?.message.result, .policyDenied)
        XCTAssertEqual(e.denies.count, 2)
        XCTAssertEqual(e.counters.deniesRefused, 4)
    }

    func testDeniesPerSecondPerVictim() {
        var e = engine { $0.deniesPerSecond = 2 }
        XCTAssertEqual(deny(&e, id: 1, sequence: 1).reply?.message.type, .accept)
        XCTAssertEqual(deny(&e, id: 1, sequence: 2).reply?.message.type, .accept)
        XCTAssertEqual(deny(&e, id: 1, sequence: 3).reply?.message.result, .resourcesExhausted)
        XCTAssertEqual(deny(&e, id: 1, sequence: 4, at: 1.5).reply?.message.type, .accept, "the next second")
    }

    func testAnUnprovedRequesterIsChallengedFirst() {
        var config = MidcomConfiguration()
        config.trust.challenge = .newSources
        var e = GatewayEngine(
            configuration: config, identity: MiddleboxIdentity(id: 7, epoch: 1, name: "gw"),
            challengeSecret: Array(repeating: 3, count: 32), startedAt: wall - 10)
        let out = deny(&e)
        XCTAssertEqual(out.reply?.message.type, .challenge)
        XCTAssertTrue(out.kernel.isEmpty)
        XCTAssertEqual(e.denies.count, 0)
    }

    func testANATKeepsAnInsideVictimsDenyToItself() {
        var config = MidcomConfiguration()
        config.trust.challenge = .never
        config.nat = NATConfiguration(externalAddress: IPAddress("198.51.100.1")!, internalPrefixes: [IPPrefix("10.30.0.0/16")!])
        var e = GatewayEngine(
            configuration: config, identity: MiddleboxIdentity(id: 7, epoch: 1, name: "nat"),
            challengeSecret: Array(repeating: 3, count: 32), startedAt: wall - 10)
        let out = deny(&e)
        XCTAssertEqual(out.verdict, .drop, "not forwarded: upstream it would protect, and cut off, everyone behind the NAT")
        XCTAssertEqual(out.kernel.untagged, [.install(.denyFilter(filter), lifetime: 60, tag: nil)], "filtered here")
        XCTAssertEqual(out.reply?.message.type, .accept)
    }

    func testARestartAdoptsTheFilterAndTheVictimsKeyClaimsIt() {
        var e = engine()
        e.adopt(AdoptedElement(object: .denyFilter(filter), remaining: 30, tag: ElementTag(sessionID: 1, kind: .deny)), now: .seconds(0))
        XCTAssertNil(e.denies.entries[1]?.owner)
        XCTAssertEqual(deny(&e, lifetime: 60).kernel.untagged, [.refresh(.denyFilter(filter), lifetime: 60, tag: nil)])
        XCTAssertEqual(e.denies.entries[1]?.owner, victimKey.publicKey)
    }
}
