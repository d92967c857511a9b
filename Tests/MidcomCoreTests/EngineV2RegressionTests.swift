import CSPWire
import XCTest

@testable import MidcomCore

/// Regression tests for the defects the engine v2 issue lists (each failed on the engine before it).
final class EngineV2RegressionTests: XCTestCase {
    let hostA = CSPEndpoint(address: IPAddress("10.0.1.2")!, port: 40000)
    let hostB = CSPEndpoint(address: IPAddress("10.0.1.3")!, port: 40000)
    let server = CSPEndpoint(address: IPAddress("198.51.100.2")!, port: 7227)
    let external = IPAddress("198.51.100.1")!
    let identity = MiddleboxIdentity(id: 7, epoch: 9, name: "gw")

    func engine(nat: Bool = false, _ configure: (inout MidcomConfiguration) -> Void = { _ in }) -> GatewayEngine {
        var config = MidcomConfiguration()
        // These tests are about what follows return routability (tested in TrustTests).
        config.trust.challenge = .never
        if nat {
            config.nat = NATConfiguration(externalAddress: external, internalPrefixes: [IPPrefix("10.0.0.0/8")!], ports: 20000...20010)
        }
        configure(&config)
        return GatewayEngine(configuration: config, identity: identity)
    }

    func flow(from host: CSPEndpoint, sport: UInt16 = 4000, dport: UInt16 = 5000) -> FlowTuple {
        FlowTuple(proto: .udp, source: host.address, sourcePort: sport, destination: server.address, destinationPort: dport)
    }

    func pinhole(for host: CSPEndpoint, port: UInt16) -> FlowTuple {
        FlowTuple(proto: .udp, source: IPAddress(ipv4: 0), sourcePort: 0, destination: host.address, destinationPort: port)
    }

    func request(_ type: CSPMessageType, session: UInt64 = 1, nonce: UInt64, flags: CSPFlags = .recordRoute, _ tlvs: [CSPTLV])
        -> CSPMessage
    {
        CSPMessage(type: type, flags: flags, sessionID: session, nonce: nonce, tlvs: tlvs)
    }

    func intercept(_ e: inout GatewayEngine, _ message: CSPMessage, from: CSPEndpoint, to: CSPEndpoint, at t: Double = 0)
        -> SignalingOutcome
    {
        e.handle(SignalingRequest(message: message.sequencedLikeAHost, source: from, entry: .intercepted(destination: to)), now: .seconds(t))
    }

    func local(_ e: inout GatewayEngine, _ message: CSPMessage, from: CSPEndpoint, at t: Double = 0) -> SignalingOutcome {
        e.handle(SignalingRequest(message: message.sequencedLikeAHost, source: from, entry: .addressedToUs), now: .seconds(t))
    }

    func admitted(_ e: inout GatewayEngine, _ flow: FlowTuple, session: UInt64 = 1, nonce: UInt64 = 1, from host: CSPEndpoint) {
        _ = intercept(&e, request(.setup, session: session, nonce: nonce, [.flow(flow), .lifetime(30)]), from: host, to: server)
        _ = intercept(&e, CSPMessage(type: .accept, sessionID: session, nonce: nonce), from: server, to: host)
        XCTAssertEqual(e.sessions[id: session]?.state, .admitted)
    }

    // 1. Another host could re-point a pinhole requested from the middlebox.
    func testAnotherHostCannotReplaceAPinholeRequestedFromTheMiddlebox() {
        var e = engine()
        let listenA = request(.setup, nonce: 1, [.flow(pinhole(for: hostA, port: 6000)), .requestedAction([.admit, .listen])])
        XCTAssertEqual(local(&e, listenA, from: hostA).reply?.message.type, .accept)
        let listenB = request(.setup, nonce: 2, [.flow(pinhole(for: hostB, port: 6000)), .requestedAction([.admit, .listen])])
        let out = local(&e, listenB, from: hostB)
        XCTAssertEqual(out.reply?.message.result, .sourceDenied)
        XCTAssertTrue(out.kernel.isEmpty, "nothing of A's is removed, nothing of B's installed")
        XCTAssertEqual(e.sessions[id: 1]?.flow, pinhole(for: hostA, port: 6000))
    }

    // 3. Kernel state outlives its session.
    func testReSetupWithAnotherFlowReplacesTheOldAdmissionOnAccept() {
        var e = engine()
        admitted(&e, flow(from: hostA), from: hostA)
        let moved = flow(from: hostA, dport: 5001)
        XCTAssertTrue(intercept(&e, request(.setup, nonce: 2, [.flow(moved), .lifetime(30)]), from: hostA, to: server).kernel.isEmpty)
        XCTAssertEqual(e.sessions[id: 1]?.flow, flow(from: hostA), "the old flow stays admitted until the answer")
        let accept = intercept(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 2), from: server, to: hostA)
        XCTAssertEqual(accept.kernel.untagged, [revoke(flow(from: hostA)), admit(moved, lifetime: 30)])
        XCTAssertNil(e.sessions.session(for: flow(from: hostA)))
    }

    func testReSetupRefusedByPolicyRemovesTheOldAdmission() {
        var e = engine { $0.rules = [PolicyRule(name: "no-5999", ports: 5999...5999, action: .reject)] }
        admitted(&e, flow(from: hostA), from: hostA)
        let out = intercept(&e, request(.setup, nonce: 2, [.flow(flow(from: hostA, dport: 5999))]), from: hostA, to: server)
        XCTAssertEqual(out.reply?.message.result, .policyDenied)
        XCTAssertEqual(out.kernel.untagged, [revoke(flow(from: hostA))])
        XCTAssertTrue(e.sessions.isEmpty)
    }

    func testLocalPinholeMovedToAnotherPortRemovesTheOldOneAndItsMapping() {
        var e = engine(nat: true)
        _ = local(&e, request(.setup, nonce: 1, [.flow(pinhole(for: hostA, port: 6000)), .requestedAction(.listen)]), from: hostA)
        let out = local(&e, request(.setup, nonce: 2, [.flow(pinhole(for: hostA, port: 6001)), .requestedAction(.listen)]), from: hostA)
        let removed = out.kernel.compactMap { if case .remove(let object) = $0 { object } else { nil } }
        XCTAssertEqual(removed.count, 2, "the old admission and its DNAT go: \(out.kernel)")
        XCTAssertTrue(removed.contains(.admission(pinhole(for: hostA, port: 6000))))
        XCTAssertEqual(out.reply?.message.mappedAddress, CSPEndpoint(address: external, port: 6001))
        // Port 6000 is free again for another host.
        let b = local(&e, request(.setup, session: 2, nonce: 3, [.flow(pinhole(for: hostB, port: 6000)), .requestedAction(.listen)]), from: hostB)
        XCTAssertEqual(b.reply?.message.mappedAddress, CSPEndpoint(address: external, port: 6000))
    }

    func testEveryRemovalReturnsItsUndo() {
        var e = engine()
        admitted(&e, flow(from: hostA), from: hostA)
        XCTAssertEqual(e.expire(now: .seconds(31)).kernel.untagged, [revoke(flow(from: hostA))], "expiry")
        admitted(&e, flow(from: hostA), session: 2, from: hostA)
        let teardown = local(&e, request(.teardown, session: 2, nonce: 5, []), from: hostA)
        XCTAssertEqual(teardown.kernel.untagged, [revoke(flow(from: hostA))], "teardown addressed to us")
        XCTAssertEqual(teardown.reply?.message.type, .accept, "TEARDOWN to us is answered (PROTOCOL.md 5.6)")
        XCTAssertEqual(teardown.reply?.message.lifetime, 0)
    }

    // 7. NAT with any source port reported success for a dead flow.
    func testNATRefusesAnySourcePortWithAReasonTheHostCanActOn() {
        var e = engine(nat: true)
        let out = intercept(&e, request(.setup, nonce: 1, [.flow(flow(from: hostA, sport: 0))]), from: hostA, to: server)
        XCTAssertEqual(out.reply?.message.result, .sourcePortRequired)
        XCTAssertTrue(out.reply?.message.reason?.text.contains("source port") ?? false, "\(String(describing: out.reply?.message.reason))")
        XCTAssertTrue(e.sessions.isEmpty)
    }

    // 2 and 8. Adoption keeps identity and reserves NAT ports.
    func testAdoptionKeepsTheSessionIDAndReservesNATPorts() {
        var e = engine(nat: true)
        let f = flow(from: hostA)
        let tag = ElementTag(sessionID: 0xabc, kind: .outgoing, application: "voip")
        e.adopt(AdoptedElement(object: .admission(f), remaining: 20, tag: tag), now: .seconds(0))
        let snat = SourceNAT(proto: .udp, internal: IPv4Endpoint(CSPEndpoint(address: hostA.address, port: 4000))!,
                             external: IPv4Endpoint(CSPEndpoint(address: external, port: 4000))!)
        e.adopt(AdoptedElement(object: .sourceNAT(snat), remaining: 20, tag: tag), now: .seconds(0))
        let session = e.sessions[id: 0xabc]
        XCTAssertEqual(session?.application, "voip")
        XCTAssertEqual(session?.mapping, CSPEndpoint(address: external, port: 4000))
        XCTAssertEqual(session?.kernelObjects, [.admission(f), .sourceNAT(snat)], "what it derives is what the kernel holds")
        // Another host asking for port 4000 gets another one.
        let b = intercept(&e, request(.setup, session: 2, nonce: 1, [.flow(flow(from: hostB))]), from: hostB, to: server)
        guard case .forwardRewritten(let bytes) = b.verdict, let forwarded = try? CSPMessage.parse(bytes) else {
            return XCTFail("not forwarded")
        }
        XCTAssertEqual(forwarded.records.last?.tlvs.last, .mappedAddress(CSPEndpoint(address: external, port: 20000)))
        // The owner tears the adopted session down under its own ID.
        let teardown = intercept(&e, request(.teardown, session: 0xabc, nonce: 9, []), from: hostA, to: server)
        XCTAssertEqual(teardown.kernel.count, 2)
        XCTAssertNil(e.sessions[id: 0xabc])
    }

    func testUntaggedNATElementsStillReserveTheirPorts() {
        var e = engine(nat: true)
        let dnat = DestinationNAT(proto: .udp, external: IPv4Endpoint(CSPEndpoint(address: external, port: 6000))!,
                                  internal: IPv4Endpoint(CSPEndpoint(address: hostA.address, port: 6000))!)
        e.adopt(AdoptedElement(object: .destinationNAT(dnat), remaining: 20, tag: nil), now: .seconds(0))
        let b = local(&e, request(.setup, nonce: 1, [.flow(pinhole(for: hostB, port: 6000)), .requestedAction(.listen)]), from: hostB)
        XCTAssertEqual(b.reply?.message.mappedAddress, CSPEndpoint(address: external, port: 20000))
    }

    // Spec agreements.
    func testRecordsOnlyWhenAskedForOrTranslated() {
        var e = engine()
        let out = intercept(&e, request(.setup, nonce: 1, flags: [], [.flow(flow(from: hostA))]), from: hostA, to: server)
        XCTAssertEqual(out.verdict, .forward, "no record-route, nothing to report: forwarded unchanged")
        XCTAssertEqual(intercept(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 1), from: server, to: hostA).verdict, .forward)
    }

    func testARefusedRefreshKeepsTheAdmissionUntilItExpires() {
        var e = engine()
        admitted(&e, flow(from: hostA), from: hostA)
        _ = intercept(&e, request(.refresh, nonce: 2, [.lifetime(60)]), from: hostA, to: server)
        let reject = CSPMessage(type: .reject, result: .unknownSession, sessionID: 1, nonce: 2)
        let out = intercept(&e, reject, from: server, to: hostA)
        XCTAssertTrue(out.kernel.isEmpty)
        XCTAssertEqual(e.sessions[id: 1]?.state, .admitted)
        XCTAssertNil(e.sessions[id: 1]?.pending)
        XCTAssertEqual(e.expire(now: .seconds(31)).sessions.map(\.id), [1], "its own lifetime still ends it")
    }

    func testRepliesAddressedToUsAreNeverAnswered() {
        var e = engine()
        let out = local(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 1), from: hostA)
        XCTAssertEqual(out.verdict, .drop)
        XCTAssertNil(out.reply)
    }

    func testMessagesNotActedOnTravelOnUnchanged() {
        var e = engine()
        // Paths of sessions we do not hold are the peer's business; an unsigned DENY installs
        // nothing and goes no further (PushbackTests has the rest).
        for type in [CSPMessageType.addPath, .removePath] {
            XCTAssertEqual(intercept(&e, request(type, nonce: 1, []), from: hostA, to: server).verdict, .forward)
        }
        let deny = intercept(&e, request(.deny, nonce: 1, []), from: hostA, to: server)
        XCTAssertEqual(deny.reply?.message.result, .authenticationFailed)
        XCTAssertTrue(deny.kernel.isEmpty)
        // An unsigned REBIND moves nothing (MobilityTests has the rest).
        let rebind = intercept(&e, request(.rebind, nonce: 2, []), from: hostA, to: server)
        XCTAssertEqual(rebind.reply?.message.result, .authenticationFailed)
    }

    // 5. A message that no longer fits after our record is dropped, never forwarded without it.
    func testAMessageTooLargeForOurRecordIsDroppedAndCounted() {
        var e = engine()
        let big = [UInt8](repeating: 0x61, count: 64_950)
        let out = intercept(&e, request(.setup, nonce: 1, [.flow(flow(from: hostA)), .unknown(type: 0x7001, value: big)]), from: hostA, to: server)
        XCTAssertEqual(out.verdict, .drop)
        XCTAssertEqual(e.counters.rewriteFailures, 1)
    }

    // A flow belongs to one session: the same owner admitting it under a new ID supersedes the old
    // session without removing the element both need (the adopted twin after a restart).
    func testANewSessionForTheSameFlowSupersedesTheOldOneAndKeepsItsElement() {
        var e = engine()
        let f = flow(from: hostA)
        e.adopt(AdoptedElement(object: .admission(f), remaining: 20, tag: nil), now: .seconds(0))
        XCTAssertEqual(e.sessions.count, 1)
        _ = intercept(&e, request(.setup, session: 0x77, nonce: 1, [.flow(f), .lifetime(30)]), from: hostA, to: server)
        let accept = intercept(&e, CSPMessage(type: .accept, sessionID: 0x77, nonce: 1), from: server, to: hostA)
        XCTAssertEqual(accept.kernel.untagged, [readmit(f, lifetime: 30)], "kept and refreshed, never removed")
        XCTAssertEqual(e.sessions.count, 1)
        XCTAssertEqual(e.sessions.session(for: f)?.id, 0x77)
        XCTAssertEqual(e.counters.superseded, 1)
    }

    // A NAT session re-signaled from another source port keeps its translation until the answer,
    // then swaps it; a refresh keeps it.
    func testNATMappingChangesOnlyWithTheAnswerAndRefreshKeepsIt() throws {
        var e = engine(nat: true)
        admitted(&e, flow(from: hostA), from: hostA)
        let first = try XCTUnwrap(e.sessions[id: 1]?.mapping)
        XCTAssertEqual(first.port, 4000)
        let snatBefore = e.sessions[id: 1]!.kernelObjects
        XCTAssertEqual(snatBefore.count, 2)

        let moved = flow(from: hostA, sport: 4001)
        let setup = intercept(&e, request(.setup, nonce: 2, [.flow(moved), .lifetime(30)]), from: hostA, to: server)
        XCTAssertTrue(setup.kernel.isEmpty, "nothing changes before the answer")
        XCTAssertEqual(e.sessions[id: 1]?.mapping, first)
        let accept = intercept(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 2), from: server, to: hostA)
        XCTAssertEqual(accept.kernel.filter { if case .remove = $0 { true } else { false } }.count, 2, "old admission and SNAT out")
        XCTAssertEqual(e.sessions[id: 1]?.mapping?.port, 4001)

        _ = intercept(&e, request(.refresh, nonce: 3, [.lifetime(30)]), from: hostA, to: server)
        let refreshed = intercept(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 3), from: server, to: hostA)
        XCTAssertEqual(e.sessions[id: 1]?.mapping?.port, 4001, "a refresh keeps the mapping")
        XCTAssertTrue(refreshed.kernel.allSatisfy { if case .refresh = $0 { true } else { false } }, "\(refreshed.kernel)")
        XCTAssertEqual(refreshed.kernel.count, 2)

        // Port 4000 was given back: another host gets it.
        let b = intercept(&e, request(.setup, session: 2, nonce: 1, [.flow(flow(from: hostB))]), from: hostB, to: server)
        guard case .forwardRewritten(let bytes) = b.verdict, let forwarded = try? CSPMessage.parse(bytes) else {
            return XCTFail("not forwarded")
        }
        XCTAssertEqual(forwarded.records.last?.tlvs.last, .mappedAddress(CSPEndpoint(address: external, port: 4000)))
    }

    func testARefusedReSetupGivesItsReservedPortBack() {
        var e = engine(nat: true)
        admitted(&e, flow(from: hostA), from: hostA)
        _ = intercept(&e, request(.setup, nonce: 2, [.flow(flow(from: hostA, sport: 4001))]), from: hostA, to: server)
        _ = intercept(&e, CSPMessage(type: .reject, result: .policyDenied, sessionID: 1, nonce: 2), from: server, to: hostA)
        XCTAssertEqual(e.sessions[id: 1]?.mapping?.port, 4000, "the admission keeps its own mapping")
        let b = intercept(&e, request(.setup, session: 2, nonce: 1, [.flow(flow(from: hostB, sport: 4001))]), from: hostB, to: server)
        guard case .forwardRewritten(let bytes) = b.verdict, let forwarded = try? CSPMessage.parse(bytes) else {
            return XCTFail("not forwarded")
        }
        XCTAssertEqual(forwarded.records.last?.tlvs.last, .mappedAddress(CSPEndpoint(address: external, port: 4001)))
    }
}
