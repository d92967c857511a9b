import CSPTrust
import CSPWire
import XCTest

@testable import MidcomCore

/// REBIND, ADD-PATH and REMOVE-PATH at the middlebox (docs/PROTOCOL.md 6.7): only the session's
/// key moves a session, only to an address that proved itself, and the kernel gets the diff.
final class MobilityTests: XCTestCase {
    let home = CSPEndpoint(address: IPAddress("10.0.1.2")!, port: 4000)
    let away = CSPEndpoint(address: IPAddress("10.0.1.77")!, port: 4000)
    let server = CSPEndpoint(address: IPAddress("198.51.100.2")!, port: 7227)
    let wall: UInt64 = 1_800_000_000
    let owner = SigningKey()

    func engine(challenge: ChallengePolicy = .never) -> GatewayEngine {
        var config = MidcomConfiguration()
        config.trust.challenge = challenge
        return GatewayEngine(
            configuration: config, identity: MiddleboxIdentity(id: 7, epoch: 1, name: "gw"),
            challengeSecret: Array(repeating: 3, count: 32), startedAt: wall - 10)
    }

    var flow: FlowTuple {
        FlowTuple(proto: .udp, source: home.address, sourcePort: 4000, destination: server.address, destinationPort: 5000)
    }

    func arrive(_ e: inout GatewayEngine, _ m: CSPMessage, from: CSPEndpoint, signedBy key: SigningKey? = nil) -> SignalingOutcome {
        var m = m
        if let key { m = try! m.signed(by: key, timestamp: wall) }
        let bytes = try! m.serialize()
        let request = bytes.withUnsafeBytes {
            try! SignalingRequest(parsing: $0, source: from, entry: .intercepted(destination: server), wallClock: wall)
        }
        return e.handle(request, now: .seconds(0))
    }

    func admitted(_ e: inout GatewayEngine) {
        _ = arrive(&e, CSPMessage(type: .setup, flags: .recordRoute, sessionID: 1, nonce: 1, sequence: 1, tlvs: [.flow(flow), .lifetime(60)]), from: home, signedBy: owner)
        let accept = CSPMessage(type: .accept, sessionID: 1, nonce: 1, sequence: 1, tlvs: [.lifetime(60)])
        let bytes = try! accept.serialize()
        let request = bytes.withUnsafeBytes {
            try! SignalingRequest(parsing: $0, source: server, entry: .intercepted(destination: home), wallClock: wall)
        }
        _ = e.handle(request, now: .seconds(0))
        XCTAssertEqual(e.sessions[id: 1]?.state, .admitted)
    }

    func rebind(nonce: UInt64, sequence: UInt32) -> CSPMessage {
        CSPMessage(type: .rebind, flags: .recordRoute, sessionID: 1, nonce: nonce, sequence: sequence, tlvs: [.flow(flow), .newAddress(away)])
    }

    func accept(_ e: inout GatewayEngine, nonce: UInt64, to: CSPEndpoint) -> SignalingOutcome {
        let bytes = try! CSPMessage(type: .accept, sessionID: 1, nonce: nonce, sequence: 2, tlvs: [.lifetime(60)]).serialize()
        let request = bytes.withUnsafeBytes {
            try! SignalingRequest(parsing: $0, source: server, entry: .intercepted(destination: to), wallClock: wall)
        }
        return e.handle(request, now: .seconds(1))
    }

    func testRebindMovesTheAdmissionWhenThePeerAccepts() throws {
        var e = engine()
        admitted(&e)
        let out = arrive(&e, rebind(nonce: 2, sequence: 2), from: away, signedBy: owner)
        guard case .forwardRewritten = out.verdict else { return XCTFail("REBIND not forwarded: \(out)") }
        XCTAssertEqual(e.sessions[id: 1]?.flow.source, home.address, "the old flow stays until the peer answers")
        let answered = accept(&e, nonce: 2, to: away)
        var moved = flow
        moved.source = away.address
        XCTAssertEqual(e.sessions[id: 1]?.flow, moved)
        XCTAssertFalse(answered.kernel.contains(.remove(.admission(flow))), "the old admission stays for rebind-grace: \(answered.kernel)")
        XCTAssertEqual(e.expire(now: .seconds(2)).kernel, [], "not yet")
        XCTAssertEqual(e.expire(now: .seconds(3)).kernel, [.remove(.admission(flow))], "then it goes, with its connections")
        XCTAssertTrue(answered.kernel.untagged.contains(admit(moved, lifetime: 60)), "\(answered.kernel)")
        guard case .forwardRewritten(let bytes) = answered.verdict else { return XCTFail("not rewritten") }
        XCTAssertEqual(try CSPMessage.parse(bytes).records.last?.decision, .rebound)
        XCTAssertEqual(e.counters.rebinds, 1)
    }

    func testWithoutGraceTheOldAdmissionGoesAtOnceAndAMoveBackKeepsIt() {
        var config = MidcomConfiguration()
        config.trust.challenge = .never
        config.rebindGrace = 0
        var e = GatewayEngine(
            configuration: config, identity: MiddleboxIdentity(id: 7, epoch: 1, name: "gw"),
            challengeSecret: Array(repeating: 3, count: 32), startedAt: wall - 10)
        admitted(&e)
        _ = arrive(&e, rebind(nonce: 2, sequence: 2), from: away, signedBy: owner)
        XCTAssertTrue(accept(&e, nonce: 2, to: away).kernel.contains(.remove(.admission(flow))))

        // With grace, a host that moves back before the grace ends keeps its admission.
        var g = engine()
        admitted(&g)
        _ = arrive(&g, rebind(nonce: 2, sequence: 2), from: away, signedBy: owner)
        _ = accept(&g, nonce: 2, to: away)
        var moved = flow
        moved.source = away.address
        let back = CSPMessage(
            type: .rebind, flags: .recordRoute, sessionID: 1, nonce: 3, sequence: 3, tlvs: [.flow(moved), .newAddress(home)])
        _ = arrive(&g, back, from: home, signedBy: owner)
        _ = accept(&g, nonce: 3, to: home)
        XCTAssertEqual(g.sessions[id: 1]?.flow, flow)
        XCTAssertFalse(g.expire(now: .seconds(5)).kernel.contains(.remove(.admission(flow))), "the flow it moved back to stays")
    }

    /// Regression (found by the figure 11 bench work): a REBIND for a session this middlebox does
    /// not know sets a session up, so it must pass everything a SETUP passes — the signature
    /// policy (known-keys), the table size and the pending limits — and a REBIND of a known
    /// session must name the session's own flow (it moves one end, it does not re-aim the session).
    func testARebindNewHereMeetsEverySetupCheck() {
        var config = MidcomConfiguration()
        config.trust.challenge = .never
        config.trust.signatures = .knownKeys
        config.trust.knownKeys = [KnownKey(name: "someone", key: SigningKey().publicKey)]
        var e = GatewayEngine(
            configuration: config, identity: MiddleboxIdentity(id: 7, epoch: 1, name: "gw"),
            challengeSecret: Array(repeating: 3, count: 32), startedAt: wall - 10)
        let out = arrive(&e, rebind(nonce: 2, sequence: 2), from: away, signedBy: owner)
        XCTAssertEqual(out.reply?.message.result, .authenticationFailed, "an unlisted key cannot open a flow by REBIND")
        XCTAssertNil(e.sessions[id: 1])

        var limits = MidcomConfiguration()
        limits.trust.challenge = .never
        limits.trust.pendingPerSource = 1
        var f = GatewayEngine(
            configuration: limits, identity: MiddleboxIdentity(id: 7, epoch: 1, name: "gw"),
            challengeSecret: Array(repeating: 3, count: 32), startedAt: wall - 10)
        _ = arrive(&f, rebind(nonce: 2, sequence: 2), from: away, signedBy: owner)
        var second = rebind(nonce: 3, sequence: 2)
        second.sessionID = 2
        XCTAssertEqual(arrive(&f, second, from: away, signedBy: owner).reply?.message.result, .resourcesExhausted, "pending per source")
        XCTAssertNil(f.sessions[id: 2])
    }

    func testARebindMustNameTheSessionsFlow() {
        var e = engine()
        admitted(&e)
        var other = flow
        other.destinationPort = 22
        let aimed = CSPMessage(
            type: .rebind, flags: .recordRoute, sessionID: 1, nonce: 2, sequence: 2, tlvs: [.flow(other), .newAddress(away)])
        let out = arrive(&e, aimed, from: away, signedBy: owner)
        XCTAssertEqual(out.reply?.message.result, .malformedMessage)
        XCTAssertEqual(e.sessions[id: 1]?.flow, flow)
        XCTAssertNil(e.sessions[id: 1]?.pending)
    }

    func testUnsignedOrForeignRebindsAreRefused() {
        var e = engine()
        admitted(&e)
        XCTAssertEqual(arrive(&e, rebind(nonce: 2, sequence: 2), from: away).reply?.message.result, .authenticationFailed)
        XCTAssertEqual(arrive(&e, rebind(nonce: 3, sequence: 3), from: away, signedBy: SigningKey()).reply?.message.result, .authenticationFailed)
        XCTAssertEqual(e.sessions[id: 1]?.flow, flow)
        XCTAssertNil(e.sessions[id: 1]?.pending)
        // NEW-ADDRESS must be where the REBIND comes from.
        let elsewhere = CSPEndpoint(address: IPAddress("10.0.1.99")!, port: 4000)
        XCTAssertEqual(arrive(&e, rebind(nonce: 4, sequence: 4), from: elsewhere, signedBy: owner).reply?.message.result, .sourceDenied)
    }

    func testTheNewAddressIsChallengedFirst() {
        // The session was set up while challenges were off; now they are on (a restart with a
        // new policy would do the same): the REBIND's new address has not proved anything.
        var set = engine(challenge: .never)
        admitted(&set)
        var e = engine(challenge: .newSources)
        e.sessions = set.sessions
        let out = arrive(&e, rebind(nonce: 2, sequence: 2), from: away, signedBy: owner)
        XCTAssertEqual(out.reply?.message.type, .challenge)
        XCTAssertEqual(out.reply?.destination, away)
        XCTAssertNil(e.sessions[id: 1]?.pending, "nothing moves before the new address answers")
    }

    func testPathsAreAddedAndRemovedByTheSessionsKey() {
        var e = engine()
        admitted(&e)
        let second = CSPEndpoint(address: IPAddress("10.0.2.2")!, port: 4000)
        let add = CSPMessage(
            type: .addPath, sessionID: 1, nonce: 5, sequence: 5,
            tlvs: [.path(CSPPath(pathID: 2, endpoint: second)), .lifetime(60)])
        XCTAssertEqual(arrive(&e, add, from: second).reply?.message.result, .authenticationFailed, "unsigned")
        let out = arrive(&e, add, from: second, signedBy: owner)
        var pathFlow = flow
        pathFlow.source = second.address
        XCTAssertEqual(out.kernel.untagged, [admit(pathFlow, lifetime: 60)])
        XCTAssertEqual(e.sessions[id: 1]?.pathCount, 2)
        XCTAssertEqual(e.sessions.session(for: pathFlow)?.id, 1)
        let remove = CSPMessage(type: .removePath, sessionID: 1, nonce: 6, sequence: 6, tlvs: [.path(CSPPath(pathID: 2, endpoint: second))])
        XCTAssertEqual(arrive(&e, remove, from: home, signedBy: SigningKey()).reply?.message.result, .authenticationFailed)
        let removed = arrive(&e, remove, from: home, signedBy: owner)
        XCTAssertEqual(removed.kernel, [.remove(.admission(pathFlow))])
        XCTAssertEqual(e.sessions[id: 1]?.pathCount, 1)
    }

    func testAPathWithItsOwnLifetimeEndsAloneAndIsRenewedByAddPath() {
        var e = engine()
        admitted(&e)
        let second = CSPEndpoint(address: IPAddress("10.0.2.2")!, port: 4000)
        var pathFlow = flow
        pathFlow.source = second.address
        func add(nonce: UInt64, lifetime: UInt32) -> SignalingOutcome {
            let message = CSPMessage(
                type: .addPath, sessionID: 1, nonce: nonce, sequence: UInt32(nonce),
                tlvs: [.path(CSPPath(pathID: 2, endpoint: second)), .lifetime(lifetime)])
            return arrive(&e, message, from: second, signedBy: owner)
        }
        XCTAssertEqual(add(nonce: 5, lifetime: 10).kernel.untagged, [admit(pathFlow, lifetime: 10)], "the path's own lifetime")
        XCTAssertEqual(e.expire(now: .seconds(9)).kernel, [])
        // Renewed before it ends: the element's timeout is replaced, the old deadline is void.
        XCTAssertEqual(add(nonce: 6, lifetime: 20).kernel.untagged, [readmit(pathFlow, lifetime: 20)])
        XCTAssertEqual(e.expire(now: .seconds(11)).kernel, [], "the first deadline no longer applies")
        XCTAssertEqual(e.expire(now: .seconds(21)).kernel, [.remove(.admission(pathFlow))], "the path ends alone")
        XCTAssertEqual(e.sessions[id: 1]?.pathCount, 1)
        XCTAssertEqual(e.sessions[id: 1]?.state, .admitted, "the session lives on")
    }

    func testAnAddPathThroughAnotherMiddleboxSetsThePathUpThere() {
        // This middlebox never saw the session: the path's flow is set up here, owned by the key.
        var e = engine()
        let second = CSPEndpoint(address: IPAddress("10.0.2.2")!, port: 4000)
        let add = CSPMessage(
            type: .addPath, sessionID: 1, nonce: 5, sequence: 5,
            tlvs: [.flow(flow), .path(CSPPath(pathID: 1, endpoint: second)), .lifetime(60)])
        _ = arrive(&e, add, from: second, signedBy: owner)
        var pathFlow = flow
        pathFlow.source = second.address
        XCTAssertEqual(e.sessions[id: 1]?.state, .pending)
        XCTAssertEqual(e.sessions[id: 1]?.ownerKey, owner.publicKey)
        let answered = accept(&e, nonce: 5, to: second)
        XCTAssertEqual(e.sessions[id: 1]?.flow, pathFlow)
        XCTAssertTrue(answered.kernel.untagged.contains(admit(pathFlow, lifetime: 60)))
        XCTAssertEqual(e.counters.pathsAdded, 1)
    }

    func testAMobileServerMovesItsSideWithTheKeyThatSignedItsAnswer() {
        var e = engine()
        let serverKey = SigningKey()
        _ = arrive(&e, CSPMessage(type: .setup, flags: .recordRoute, sessionID: 1, nonce: 1, sequence: 1, tlvs: [.flow(flow), .lifetime(60)]), from: home, signedBy: owner)
        // The server signs its ACCEPT: the middlebox learns the responder's key.
        let signedAccept = try! CSPMessage(type: .accept, sessionID: 1, nonce: 1, sequence: 1, tlvs: [.lifetime(60)]).signed(by: serverKey, timestamp: wall)
        let bytes = try! signedAccept.serialize()
        _ = e.handle(bytes.withUnsafeBytes { try! SignalingRequest(parsing: $0, source: server, entry: .intercepted(destination: home), wallClock: wall) }, now: .seconds(0))
        XCTAssertEqual(e.sessions[id: 1]?.responderKey, serverKey.publicKey)
        let newServer = CSPEndpoint(address: IPAddress("198.51.100.77")!, port: 7227)
        let move = CSPMessage(type: .rebind, flags: .recordRoute, sessionID: 1, nonce: 9, sequence: 1, tlvs: [.flow(flow), .newAddress(CSPEndpoint(address: newServer.address, port: 5000))])
        // Another key cannot move the server's side.
        let foreign = try! move.signed(by: SigningKey(), timestamp: wall).serialize()
        let refused = e.handle(foreign.withUnsafeBytes { try! SignalingRequest(parsing: $0, source: newServer, entry: .intercepted(destination: home), wallClock: wall) }, now: .seconds(1))
        XCTAssertEqual(refused.reply?.message.result, .authenticationFailed)
        let real = try! move.signed(by: serverKey, timestamp: wall).serialize()
        _ = e.handle(real.withUnsafeBytes { try! SignalingRequest(parsing: $0, source: newServer, entry: .intercepted(destination: home), wallClock: wall) }, now: .seconds(1))
        XCTAssertEqual(e.sessions[id: 1]?.pending?.fromResponder, true)
        // The owner (the client) answers.
        let answer = try! CSPMessage(type: .accept, sessionID: 1, nonce: 9, sequence: 1, tlvs: [.lifetime(60)]).serialize()
        let out = e.handle(answer.withUnsafeBytes { try! SignalingRequest(parsing: $0, source: home, entry: .intercepted(destination: newServer), wallClock: wall) }, now: .seconds(1))
        var moved = flow
        moved.destination = newServer.address
        XCTAssertEqual(e.sessions[id: 1]?.flow, moved)
        XCTAssertFalse(out.kernel.contains(.remove(.admission(flow))), "the old admission stays for rebind-grace")
        XCTAssertEqual(e.expire(now: .seconds(3)).kernel, [.remove(.admission(flow))])
    }
}
