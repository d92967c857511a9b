import CSPWire
import XCTest

@testable import MidcomCore

/// SETUPs flagged "the responder may not speak CSP" (docs/PROTOCOL.md 6.9): answered and
/// admitted at once for flows leaving the site, never for flows into it.
final class LegacyResponderTests: XCTestCase {
    let insideHost = CSPEndpoint(address: IPAddress("192.168.1.2")!, port: 40000)
    let server = CSPEndpoint(address: IPAddress("203.0.113.2")!, port: 7227)
    let wall: UInt64 = 1_800_000_000

    func engine(_ change: (inout MidcomConfiguration) -> Void = { _ in }) -> GatewayEngine {
        var config = MidcomConfiguration()
        config.trust.challenge = .never
        change(&config)
        return GatewayEngine(
            configuration: config, identity: MiddleboxIdentity(id: 9, epoch: 1, name: "gw"),
            challengeSecret: Array(repeating: 5, count: 32), startedAt: wall - 10)
    }

    func arrive(_ e: inout GatewayEngine, _ m: CSPMessage, from: CSPEndpoint, to: CSPEndpoint) -> SignalingOutcome {
        let bytes = try! m.serialize()
        let request = bytes.withUnsafeBytes {
            try! SignalingRequest(parsing: $0, source: from, entry: .intercepted(destination: to), wallClock: wall)
        }
        return e.handle(request, now: .seconds(0))
    }

    func setup(_ flow: FlowTuple, flags: CSPFlags = [.recordRoute, .legacyResponder], nonce: UInt64 = 1, sequence: UInt32 = 1) -> CSPMessage {
        CSPMessage(
            type: .setup, flags: flags, sessionID: 0x1e, nonce: nonce, sequence: sequence,
            tlvs: [.flow(flow), .lifetime(120), .requestedAction([.admit])])
    }

    var outgoing: FlowTuple {
        FlowTuple(proto: .tcp, source: insideHost.address, sourcePort: 5555, destination: server.address, destinationPort: 443)
    }

    func testAFlaggedSetupFromInsideIsAdmittedAnsweredInTheRespondersNameAndForwarded() throws {
        var e = engine()
        let out = arrive(&e, setup(outgoing), from: insideHost, to: server)
        XCTAssertEqual(e.sessions[id: 0x1e]?.state, .admitted, "admitted at once, nothing pending")
        XCTAssertTrue(out.kernel.contains(.install(.admission(outgoing), lifetime: 120, tag: e.sessions[id: 0x1e]!.tag)))
        let reply = try XCTUnwrap(out.reply)
        XCTAssertEqual(reply.destination, insideHost)
        XCTAssertEqual(reply.source, server, "sent in the responder's name, to pass nearer middleboxes' conntrack")
        XCTAssertEqual(reply.message.type, .accept)
        XCTAssertTrue(reply.message.flags.isSuperset(of: [.fromMiddlebox, .legacyResponder]))
        XCTAssertEqual(reply.message.nonce, 1)
        XCTAssertEqual(reply.message.records.first?.decision, .answeredForResponder)
        guard case .forwardRewritten(let bytes) = out.verdict else { return XCTFail("SETUP not forwarded: \(out.verdict)") }
        let forwarded = try CSPMessage.parse(bytes)
        XCTAssertTrue(forwarded.flags.contains(.legacyResponder), "middleboxes further along answer too")
        XCTAssertEqual(forwarded.records.last?.decision, .answeredForResponder)
        XCTAssertEqual(e.counters.answeredForResponders, 1)
    }

    func testAFlaggedSetupTurnsThePendingSessionOfTheUnansweredOneIntoAnAdmission() {
        var e = engine()
        _ = arrive(&e, setup(outgoing, flags: .recordRoute), from: insideHost, to: server)
        XCTAssertEqual(e.sessions[id: 0x1e]?.state, .pending)
        let out = arrive(&e, setup(outgoing, nonce: 2, sequence: 2), from: insideHost, to: server)
        XCTAssertEqual(e.sessions[id: 0x1e]?.state, .admitted)
        XCTAssertNil(e.sessions[id: 0x1e]?.pending)
        XCTAssertEqual(e.sessions.pendingCount, 0)
        XCTAssertNotNil(out.reply)
    }

    func testAFlaggedSetupIntoTheSiteIsNotHonoured() {
        var e = engine()
        // An outside host asks for a flow to an inside server: only the server may consent.
        let outsider = CSPEndpoint(address: IPAddress("198.51.100.9")!, port: 40000)
        let inward = FlowTuple(proto: .tcp, source: outsider.address, sourcePort: 5555, destination: insideHost.address, destinationPort: 22)
        let out = arrive(&e, setup(inward), from: outsider, to: CSPEndpoint(address: insideHost.address, port: 7227))
        XCTAssertEqual(e.sessions[id: 0x1e]?.state, .pending, "an ordinary SETUP: it waits for the server")
        XCTAssertNil(out.reply)
        XCTAssertFalse(out.kernel.contains { if case .install(.admission, _, _) = $0 { true } else { false } })
        XCTAssertEqual(e.counters.answeredForResponders, 0)
    }

    func testNeverAndAnyAndAnExplicitInside() {
        var never = engine { $0.legacyResponders = .never }
        _ = arrive(&never, setup(outgoing), from: insideHost, to: server)
        XCTAssertEqual(never.sessions[id: 0x1e]?.state, .pending)

        var notInside = engine { $0.insidePrefixesAsWritten = [IPPrefix("10.0.0.0/8")!] }
        _ = arrive(&notInside, setup(outgoing), from: insideHost, to: server)
        XCTAssertEqual(notInside.sessions[id: 0x1e]?.state, .pending, "192.168.1.2 is not inside 10/8")

        var any = engine {
            $0.legacyResponders = .any
            $0.insidePrefixesAsWritten = [IPPrefix("10.0.0.0/8")!]
        }
        _ = arrive(&any, setup(outgoing), from: insideHost, to: server)
        XCTAssertEqual(any.sessions[id: 0x1e]?.state, .admitted)
    }

    func testPolicyStillDecides() {
        var e = engine {
            $0.rules = [PolicyRule(name: "no-443", proto: .tcp, ports: 443...443, action: .reject, reason: "no")]
        }
        let out = arrive(&e, setup(outgoing), from: insideHost, to: server)
        XCTAssertNil(e.sessions[id: 0x1e])
        XCTAssertEqual(out.reply?.message.type, .reject)
        XCTAssertEqual(out.verdict, .drop)
    }

    func testRefreshAndTeardownOfSuchASessionAreAnsweredHere() throws {
        var e = engine()
        _ = arrive(&e, setup(outgoing), from: insideHost, to: server)
        let refresh = CSPMessage(type: .refresh, flags: .recordRoute, sessionID: 0x1e, nonce: 3, sequence: 2, tlvs: [.lifetime(300)])
        let refreshed = arrive(&e, refresh, from: insideHost, to: server)
        XCTAssertEqual(refreshed.reply?.message.type, .accept)
        XCTAssertEqual(refreshed.reply?.message.lifetime, 300)
        XCTAssertEqual(e.sessions[id: 0x1e]?.grantedLifetime, 300)
        XCTAssertNil(e.sessions[id: 0x1e]?.pending, "not waiting for a responder that will never answer")
        XCTAssertEqual(refreshed.verdict, .forward)

        let teardown = CSPMessage(type: .teardown, sessionID: 0x1e, nonce: 4, sequence: 3)
        let gone = arrive(&e, teardown, from: insideHost, to: server)
        XCTAssertNil(e.sessions[id: 0x1e])
        XCTAssertEqual(gone.reply?.message.lifetime, 0)
        XCTAssertEqual(gone.reply?.source, server)
    }

    func testConfiguration() throws {
        let text = """
            [policy]
            legacy-responders = \"any\"
            inside = "10.1.0.0/16, 2001:db8:1::/48"
            """
        let config = try MidcomConfiguration(path: "t.conf", text: text)
        XCTAssertEqual(config.legacyResponders, .any)
        XCTAssertTrue(config.isInside(IPAddress("2001:db8:1::5")!))
        XCTAssertFalse(config.isInside(IPAddress("192.168.1.1")!))
        XCTAssertThrowsError(try MidcomConfiguration(path: "t.conf", text: "[policy]\ninside = \"10.1.0.0/33\"\n")) {
            XCTAssertTrue("\($0)".contains("t.conf:2"), "\($0)")
        }
        // Without `inside`, a NAT's internal prefixes are the site.
        let nat = try MidcomConfiguration(path: "t.conf", text: "[nat]\nexternal-address = \"203.0.113.1\"\ninternal = \"100.64.0.0/10\"\n")
        XCTAssertTrue(nat.isInside(IPAddress("100.64.3.4")!))
        XCTAssertFalse(nat.isInside(IPAddress("192.168.1.1")!))
        XCTAssertTrue(MidcomConfiguration().isInside(IPAddress("192.168.1.1")!))
        XCTAssertTrue(MidcomConfiguration().isInside(IPAddress("fd00::1")!))
    }
}
