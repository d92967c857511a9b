import CSPWire
import XCTest

@testable import MidcomCore

/// Reload: the new policy judges every session again; restart-only settings are named.
final class ReloadTests: XCTestCase {
    let host = IPAddress("10.0.0.2")!
    let peer = IPAddress("198.51.100.7")!

    func session(_ id: UInt64, port: UInt16, state: SessionState = .admitted, lifetime: UInt32 = 600) -> Session {
        let flow = FlowTuple(proto: .udp, source: host, sourcePort: 4000 + port % 100, destination: peer, destinationPort: port)
        return Session(
            id: id, flow: flow, state: state, createdAt: .seconds(0), expiresAt: .seconds(Double(lifetime)), grantedLifetime: lifetime)
    }

    func engine(_ configuration: MidcomConfiguration = MidcomConfiguration()) -> GatewayEngine {
        GatewayEngine(configuration: configuration, identity: MiddleboxIdentity(id: 1, epoch: 1, name: "gw"))
    }

    func testARuleThatNowRejectsRevokesAndAShorterMaximumShortens() {
        var e = engine()
        e.sessions.upsert(session(1, port: 5000))
        e.sessions.upsert(session(2, port: 6000))
        var new = MidcomConfiguration()
        new.maximumLifetime = 120
        new.rules = [PolicyRule(name: "no-5000", proto: .udp, ports: 5000...5000, action: .reject, reason: "closed")]
        let outcome = e.reload(new, now: .seconds(10))
        XCTAssertEqual(outcome.revoked.map(\.session.id), [1])
        XCTAssertEqual(outcome.revoked.first?.why, "rule 'no-5000' rejects it: closed")
        XCTAssertNil(e.sessions[id: 1])
        XCTAssertTrue(outcome.kernel.contains(.remove(.admission(session(1, port: 5000).flow))))
        XCTAssertEqual(outcome.shortened, 1)
        XCTAssertEqual(e.sessions[id: 2]?.grantedLifetime, 120)
        XCTAssertEqual(e.sessions[id: 2]?.expiresAt, .seconds(130))
        XCTAssertEqual(e.policy.configuration.maximumLifetime, 120, "the new policy is in effect")
        XCTAssertEqual(e.counters.revoked, 1)
        XCTAssertEqual(e.counters.reloads, 1)
    }

    func testUnsignaledAdmissionsFollowTheUnsignaledSetting() {
        var old = MidcomConfiguration()
        old.unsignaled = .admit
        var e = engine(old)
        e.sessions.upsert(session(1, port: 5000, state: .legacy, lifetime: 30))
        var outsider = session(2, port: 5001, state: .legacy, lifetime: 30)
        outsider.flow.source = IPAddress("192.0.2.9")!
        e.sessions.upsert(outsider)
        var new = old
        new.unsignaled = .admitInside
        let outcome = e.reload(new, now: .seconds(1))
        XCTAssertEqual(outcome.revoked.map(\.session.id), [2], "only the outside source loses its admission")
        XCTAssertNotNil(e.sessions[id: 1])
    }

    func testPushbackDisabledRemovesItsFilters() {
        var e = engine()
        let filter = DenyFilter(source: IPAddress("192.0.2.0")!, prefixLength: 24, proto: nil, victim: host, port: nil)
        e.denies.put(DenyEntry(id: 7, filter: filter, owner: nil, createdAt: .seconds(0), expiresAt: .seconds(60), lifetime: 60))
        var new = MidcomConfiguration()
        new.pushback.enabled = false
        let outcome = e.reload(new, now: .seconds(1))
        XCTAssertEqual(outcome.filtersRemoved, 1)
        XCTAssertTrue(outcome.kernel.contains(.remove(.denyFilter(filter))))
        XCTAssertEqual(e.denies.count, 0)
    }

    func testRestartOnlyChangesAreNamed() {
        let old = MidcomConfiguration()
        var new = old
        new.maximumLifetime = 10
        new.rules = [PolicyRule(name: "x", action: .reject)]
        XCTAssertEqual(old.restartOnlyChanges(to: new), [], "policy is reloadable")
        new.queueNumber = 3
        new.nat = NATConfiguration(externalAddress: IPAddress("203.0.113.1")!, internalPrefixes: [])
        new.trust.stateDirectory = "/elsewhere"
        XCTAssertEqual(old.restartOnlyChanges(to: new), ["[daemon] queue", "[trust] state-directory", "[nat]"])
    }
}
