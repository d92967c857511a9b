import CSPTrust
import CSPWire
import XCTest

@testable import MidcomCore

final class SessionTableTests: XCTestCase {
    let flowA = FlowTuple(proto: .udp, source: IPAddress("10.0.1.2")!, sourcePort: 1, destination: IPAddress("10.0.2.2")!, destinationPort: 2)

    func session(_ id: UInt64, flow: FlowTuple? = nil, expires: Double?) -> Session {
        var f = flow ?? flowA
        f.sourcePort = UInt16(truncatingIfNeeded: id)
        return Session(id: id, flow: f, state: .admitted, createdAt: .seconds(0), expiresAt: expires.map { .seconds($0) }, grantedLifetime: 1)
    }

    func testLookupByIDAndFlow() {
        var table = SessionTable()
        let s = session(7, expires: 10)
        table.upsert(s)
        XCTAssertEqual(table[id: 7], s)
        XCTAssertEqual(table.session(for: s.flow), s)
        XCTAssertEqual(table.remove(id: 7), s)
        XCTAssertNil(table.session(for: s.flow))
        XCTAssertTrue(table.isEmpty)
    }

    /// The ID hashed once per request serves that request's ID only: every other ID is looked
    /// up, inserted, moved and removed by its own hash (fails if `hash(_:)` returns the cached hash
    /// for any ID, or the cache is filled with another ID's hash).
    func testTheRequestsHashedIDServesOnlyThatID() {
        var table = SessionTable()
        for id in 1...200 { table.upsert(session(UInt64(id), expires: 10)) }
        table.hashOnce(requestFor: 7)
        XCTAssertEqual(table[id: 7]?.id, 7)
        XCTAssertEqual(table[id: 8]?.id, 8)
        XCTAssertNil(table[id: 999])
        // Removing moves the last session (200) into the hole; each keeps its own entry.
        XCTAssertEqual(table.remove(id: 3)?.id, 3)
        table.hashOnce(requestFor: 200)
        XCTAssertEqual(table.remove(id: 7)?.id, 7)
        for id in 1...200 where id != 3 && id != 7 { XCTAssertEqual(table[id: UInt64(id)]?.id, UInt64(id), "session \(id)") }
        table.hashOnce(requestFor: 3)
        table.upsert(session(3, expires: 10))
        table.hashOnce(requestFor: 1)
        XCTAssertEqual(table[id: 3]?.id, 3)
        XCTAssertEqual(table.count, 199)
    }

    /// The owner checks every request makes, read in place: an unsigned session belongs to its
    /// owner's address, a signed one to its key alone (not to the address it was set up from).
    func testOwnershipIsReadInPlaceByAddressOrKey() {
        var table = SessionTable()
        let unsigned = session(1, expires: 10)
        var signed = session(2, expires: 10)
        let key = SigningKey().publicKey
        signed.ownerKey = key
        table.upsert(unsigned)
        table.upsert(signed)
        let owner = unsigned.owner
        let other = IPAddress("10.0.9.9")!
        XCTAssertEqual(table.owner(ofSession: 1), owner)
        XCTAssertNil(table.owner(ofSession: 3))
        XCTAssertTrue(table.isOwner(ofSession: 1, signer: nil, address: owner))
        XCTAssertFalse(table.isOwner(ofSession: 1, signer: nil, address: other))
        XCTAssertTrue(table.isOwner(ofSession: 2, signer: key, address: other), "a signed session follows its key")
        XCTAssertFalse(table.isOwner(ofSession: 2, signer: nil, address: owner), "its address alone is not enough")
        XCTAssertFalse(table.isOwner(ofSession: 2, signer: SigningKey().publicKey, address: owner))
        XCTAssertTrue(table.isOwner(ofSession: 3, signer: nil, address: other), "no session: nobody else owns it")
        // Only the owner's requests move the window, asked and noted with one lookup.
        table.recordSequence(id: 1, sequence: 5, nonce: 50, ifOwnedBy: nil, address: other)
        table.recordSequence(id: 2, sequence: 5, nonce: 50, ifOwnedBy: nil, address: owner)
        XCTAssertEqual(table.credentials(ofSession: 1)?.replay.highest, 0)
        XCTAssertEqual(table.credentials(ofSession: 2)?.replay.highest, 0)
        table.recordSequence(id: 1, sequence: 5, nonce: 50, ifOwnedBy: nil, address: owner)
        table.recordSequence(id: 2, sequence: 6, nonce: 60, ifOwnedBy: key, address: other)
        XCTAssertEqual(table.credentials(ofSession: 1)?.replay.highest, 5)
        XCTAssertEqual(table.credentials(ofSession: 2)?.replay.highest, 6)
    }

    func testExpiryInOrderAndRefreshPostpones() {
        var table = SessionTable()
        for id in 1...100 { table.upsert(session(UInt64(id), expires: Double(101 - id))) }
        var refreshed = table[id: 100]!
        refreshed.expiresAt = .seconds(500)
        table.upsert(refreshed)
        let firstBatch = table.expire(now: .seconds(10))
        XCTAssertEqual(Set(firstBatch.map(\.id)), Set(91...99))  // expiry 2...10; 100 was refreshed
        XCTAssertEqual(table.count, 91)
        XCTAssertEqual(table.expire(now: .seconds(100)).count, 90)
        XCTAssertEqual(table.count, 1)
        XCTAssertEqual(table.expire(now: .seconds(500)).map(\.id), [100])
        XCTAssertTrue(table.expire(now: .seconds(10_000)).isEmpty)
    }

    func testSessionsWithoutExpiryNeverExpire() {
        var table = SessionTable()
        table.upsert(session(1, expires: nil))
        XCTAssertTrue(table.expire(now: .seconds(1e6)).isEmpty)
        XCTAssertEqual(table.count, 1)
    }

    /// The dense storage moves the last session into a removed one's slot: after any mix of
    /// inserts, replacements, removals and expiries, every session is found by ID and by flow, and
    /// nothing removed is.
    func testDenseStorageAgreesWithAModelUnderRandomChurn() {
        var table = SessionTable()
        var model: [UInt64: Session] = [:]
        var random = SystemRandomNumberGenerator()
        for step in 0..<20_000 {
            let id = UInt64.random(in: 1...600, using: &random)
            switch Int.random(in: 0..<10, using: &random) {
            case 0..<5:
                var s = session(id, expires: Double(step + Int.random(in: 1...400, using: &random)))
                s.flow.destinationPort = UInt16.random(in: 1...3, using: &random)  // sometimes a new flow
                table.upsert(s)
                model[id] = s
            case 5..<9:
                XCTAssertEqual(table.remove(id: id), model.removeValue(forKey: id))
            default:
                for gone in table.expire(now: .seconds(Double(step))) {
                    XCTAssertNotNil(model.removeValue(forKey: gone.id), "expired a session the model does not hold")
                    XCTAssertLessThanOrEqual(gone.expiresAt!, .seconds(Double(step)))
                }
            }
        }
        XCTAssertEqual(table.count, model.count)
        for (id, s) in model {
            XCTAssertEqual(table[id: id], s)
            XCTAssertTrue(table.contains(id: id))
            XCTAssertEqual(table.flow(ofSession: id), s.flow)
            XCTAssertEqual(table.session(for: s.flow)?.id, id)
        }
        XCTAssertEqual(Set(table.all.map(\.id)), Set(model.keys))
        for id in UInt64(1)...600 where model[id] == nil { XCTAssertFalse(table.contains(id: id)) }
    }

    /// Sessions with several paths, IPv6 flows and pending sessions that share flows with admitted
    /// ones, churned: the flow index (slots, confirmed against the session in the slot) answers what
    /// the rules it implements say, kept here in a dictionary from flow to ID — every path indexed,
    /// except that a pending session does not take a flow from a session that is not pending, and a
    /// session's entries go when it drops the flow or leaves.
    func testFlowIndexFollowsPathsAndPendingRuleUnderChurn() {
        var table = SessionTable()
        var model: [UInt64: Session] = [:]
        var byFlow: [FlowTuple: UInt64] = [:]
        var random = SystemRandomNumberGenerator()
        let v6 = FlowTuple(proto: .tcp, source: IPAddress("fd00::2")!, sourcePort: 1, destination: IPAddress("fd00:1::2")!, destinationPort: 2)
        func flow(_ n: Int) -> FlowTuple {
            var f = n % 3 == 0 ? v6 : flowA
            f.destinationPort = UInt16(n)
            return f
        }
        func unindex(_ s: Session) { for path in s.paths where byFlow[path.flow] == s.id { byFlow[path.flow] = nil } }
        for _ in 0..<10_000 {
            let id = UInt64.random(in: 1...200, using: &random)
            if Int.random(in: 0..<3, using: &random) == 0 {
                let removed = model.removeValue(forKey: id)
                XCTAssertEqual(table.remove(id: id), removed)
                if let removed { unindex(removed) }
                continue
            }
            var s = Session(
                id: id, flow: flow(Int.random(in: 1...60, using: &random)), state: Bool.random(using: &random) ? .pending : .admitted,
                createdAt: .seconds(0), expiresAt: nil, grantedLifetime: 1)
            for path in 1...Int.random(in: 1...3, using: &random) where Bool.random(using: &random) {
                s.setPath(PathID(path), flow(Int.random(in: 1...60, using: &random)))
            }
            table.upsert(s)
            if let old = model[id], old.flow != s.flow || old.pathCount > 1 || s.pathCount > 1 { unindex(old) }
            model[id] = s
            for path in s.paths {
                if s.state == .pending, let holder = byFlow[path.flow], holder != id, model[holder]!.state != .pending { continue }
                byFlow[path.flow] = id
            }
        }
        XCTAssertEqual(table.count, model.count)
        for n in 1...60 {
            XCTAssertEqual(table.sessionID(for: flow(n)), byFlow[flow(n)], "flow \(n)")
            if let id = byFlow[flow(n)] { XCTAssertEqual(table.session(for: flow(n)), model[id]) }
        }
        for (id, s) in model { XCTAssertEqual(table[id: id], s) }
        // The pending counts per owner and in all, kept through the same churn.
        let pending = model.values.filter { $0.state == .pending }
        XCTAssertEqual(table.pendingCount, pending.count)
        for owner in Set(model.values.map(\.owner)).union([IPAddress("10.9.9.9")!]) {
            XCTAssertEqual(table.pendingSessions(of: owner), pending.filter { $0.owner == owner }.count, "owner \(owner)")
        }
    }

    /// Hosts choose session IDs and ports. IDs that agree in their low 32 bits and flows that differ
    /// only in one port (what an index keyed by truncated or unkeyed hashes would pile into one
    /// probe run) spread like random keys: the indexes hash with the per-process SipHash key.
    func testHostileIDsAndFlowsDoNotBuildLongProbeRuns() {
        var table = SessionTable()
        var flow = flowA
        for index in 0..<20_000 {
            flow.sourcePort = UInt16(1024 + index % 50_000)
            flow.destinationPort = UInt16(1 + index / 50_000)
            table.upsert(
                Session(
                    id: UInt64(index) << 32 | 0xdead, flow: flow, state: .admitted, createdAt: .seconds(0), expiresAt: nil,
                    grantedLifetime: 1))
        }
        XCTAssertEqual(table.count, 20_000)
        let runs = table.longestIndexRuns
        // Random keys at this load give runs of a few dozen; one pile-up would be 20 000 long.
        XCTAssertLessThan(runs.id, 400, "session IDs piled into one probe run")
        XCTAssertLessThan(runs.flow, 400, "flows piled into one probe run")
        XCTAssertEqual(table[id: 19_999 << 32 | 0xdead]?.id, 19_999 << 32 | 0xdead)
    }

    func testChangingFlowReindexes() {
        var table = SessionTable()
        var s = session(1, expires: 5)
        table.upsert(s)
        let old = s.flow
        s.flow.destinationPort = 99
        table.upsert(s)
        XCTAssertNil(table.session(for: old))
        XCTAssertEqual(table.session(for: s.flow)?.id, 1)
    }
}

final class GatewayEngineTests: XCTestCase {
    let client = CSPEndpoint(address: IPAddress("10.0.1.2")!, port: 40000)
    let serverAgent = CSPEndpoint(address: IPAddress("10.0.2.2")!, port: 7227)
    let identity = MiddleboxIdentity(id: 0xabc, epoch: 42, name: "gw1")
    lazy var flow = FlowTuple(proto: .udp, source: client.address, sourcePort: 4000, destination: serverAgent.address, destinationPort: 5000)

    func engine(_ configure: (inout MidcomConfiguration) -> Void = { _ in }) -> GatewayEngine {
        var config = MidcomConfiguration()
        // These tests are about what follows return routability (tested in TrustTests).
        config.trust.challenge = .never
        configure(&config)
        return GatewayEngine(configuration: config, identity: identity)
    }

    func setup(session: UInt64 = 1, nonce: UInt64 = 11, flow: FlowTuple? = nil, lifetime: UInt32 = 30, action: CSPRequestedAction = .admit) -> CSPMessage {
        CSPMessage(type: .setup, flags: .recordRoute, sessionID: session, nonce: nonce, sequence: 1,
                   tlvs: [.flow(flow ?? self.flow), .lifetime(lifetime), .requestedAction(action), .application("demo")])
    }

    func send(_ engine: inout GatewayEngine, _ message: CSPMessage, from: CSPEndpoint, to: CSPEndpoint, at seconds: Double = 0) -> SignalingOutcome {
        let bytes = try! message.serialize()
        return bytes.withUnsafeBytes { engine.handleSignaling(payload: $0, source: from, destination: to, now: .seconds(seconds)) }
    }

    func forwardedMessage(_ outcome: SignalingOutcome) -> CSPMessage? {
        guard case .forwardRewritten(let bytes) = outcome.verdict else { return nil }
        return try? CSPMessage.parse(bytes)
    }

    func testSetupThenAcceptAdmitsWithClampedLifetimeAndAppendsRecords() throws {
        var e = engine { $0.maximumLifetime = 20 }
        let out = send(&e, setup(lifetime: 30), from: client, to: serverAgent)
        let forwarded = try XCTUnwrap(forwardedMessage(out))
        XCTAssertEqual(forwarded.records.map(\.decision), [.forwarded])
        XCTAssertEqual(forwarded.records.first?.grantedLifetime, 20)
        XCTAssertTrue(out.kernel.isEmpty, "nothing is installed before the responder answers")
        XCTAssertEqual(e.sessions[id: 1]?.state, .pending)

        let accept = CSPMessage(type: .accept, sessionID: 1, nonce: 11, tlvs: [.lifetime(30)])
        let reply = send(&e, accept, from: serverAgent, to: client, at: 1)
        XCTAssertEqual(reply.kernel.untagged, [admit(flow, lifetime: 20)])
        let back = try XCTUnwrap(forwardedMessage(reply))
        XCTAssertEqual(back.records.map(\.decision), [.admitted])
        XCTAssertEqual(back.records.first?.epoch, 42)
        XCTAssertEqual(e.sessions[id: 1]?.state, .admitted)
        XCTAssertEqual(e.sessions[id: 1]?.expiresAt, .seconds(21))
        XCTAssertEqual(e.counters.admitted, 1)
    }

    /// Outcomes carry their log line only while someone would read it; the decisions are the same.
    func testEventLinesAreBuiltOnlyWhenDescribed() throws {
        var described = engine()
        var silent = engine()
        silent.describesEvents = false
        let accept = CSPMessage(type: .accept, sessionID: 1, nonce: 11, tlvs: [.lifetime(30)])
        let setupDescribed = send(&described, setup(), from: client, to: serverAgent)
        let setupSilent = send(&silent, setup(), from: client, to: serverAgent)
        XCTAssertEqual(setupDescribed.event, "SETUP 0000000000000001 \(flow) pending")
        XCTAssertNil(setupSilent.event)
        let acceptDescribed = send(&described, accept, from: serverAgent, to: client, at: 1)
        let acceptSilent = send(&silent, accept, from: serverAgent, to: client, at: 1)
        XCTAssertEqual(acceptDescribed.event?.hasPrefix("admitted 0000000000000001"), true)
        XCTAssertNil(acceptSilent.event)
        XCTAssertEqual(acceptSilent.kernel, acceptDescribed.kernel)
        XCTAssertEqual(silent.sessions[id: 1]?.state, .admitted)
    }

    func testRejectedByPolicyAnswersTheHostAndInstallsNothing() throws {
        var e = engine { $0.rules = [PolicyRule(name: "no-udp-5000", ports: 5000...5000, action: .reject, reason: "closed")] }
        let out = send(&e, setup(), from: client, to: serverAgent)
        XCTAssertEqual(out.verdict, .drop)
        XCTAssertTrue(out.kernel.isEmpty)
        let reply = try XCTUnwrap(out.reply)
        XCTAssertEqual(reply.destination, client)
        XCTAssertEqual(reply.source, serverAgent, "answered as if from the responder")
        XCTAssertEqual(reply.message.sequence, 1, "the request's sequence is echoed")
        XCTAssertEqual(reply.message.type, .reject)
        XCTAssertEqual(reply.message.result, .policyDenied)
        XCTAssertEqual(reply.message.nonce, 11)
        XCTAssertTrue(reply.message.flags.contains(.fromMiddlebox))
        XCTAssertEqual(reply.message.reason?.text, "closed")
        XCTAssertTrue(e.sessions.isEmpty)
    }

    func testSpoofedFlowIsRejected() {
        var e = engine()
        var spoofed = flow
        spoofed.source = IPAddress("10.0.1.99")!
        let out = send(&e, setup(flow: spoofed), from: client, to: serverAgent)
        XCTAssertEqual(out.reply?.message.result, .sourceDenied)
        XCTAssertEqual(e.counters.spoofedFlows, 1)
        XCTAssertTrue(e.sessions.isEmpty)
    }

    func testAnotherHostCannotTakeOverASession() {
        var e = engine()
        _ = send(&e, setup(), from: client, to: serverAgent)
        let intruder = CSPEndpoint(address: IPAddress("10.0.1.66")!, port: 40000)
        var theirs = flow
        theirs.source = intruder.address
        let out = send(&e, setup(nonce: 99, flow: theirs), from: intruder, to: serverAgent)
        XCTAssertEqual(out.reply?.message.result, .sourceDenied)
        XCTAssertEqual(e.sessions[id: 1]?.flow, flow, "the owner's session is untouched")
        XCTAssertEqual(e.sessions[id: 1]?.pending?.nonce, 11)
    }

    func testIncomingPinholeIsOwnedByTheResponder() {
        var e = engine()
        let pinhole = FlowTuple(proto: .tcp, source: IPAddress("0.0.0.0")!, sourcePort: 0, destination: client.address, destinationPort: 8080)
        let out = send(&e, setup(flow: pinhole, action: [.admit, .listen]), from: client, to: serverAgent)
        XCTAssertNotNil(forwardedMessage(out))
        // Any peer: the answer may come from whoever received the SETUP.
        let accept = send(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 11), from: serverAgent, to: client)
        XCTAssertEqual(accept.kernel.untagged, [admit(pinhole, lifetime: 30)])
    }

    func testMalformedAndForgedRepliesInstallNothing() {
        var e = engine()
        let garbage: [UInt8] = [0x43, 0x53, 1, 1, 0, 0, 0, 99] + Array(repeating: 0, count: 20)
        let out = garbage.withUnsafeBytes { e.handleSignaling(payload: $0, source: client, destination: serverAgent, now: .seconds(0)) }
        XCTAssertEqual(out.verdict, .drop)
        XCTAssertNil(out.reply, "malformed input is never answered (no reflection)")
        XCTAssertEqual(e.counters.malformedMessages, 1)

        _ = send(&e, setup(), from: client, to: serverAgent)
        let wrongNonce = send(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 12), from: serverAgent, to: client)
        XCTAssertEqual(wrongNonce.verdict, .forward, "passed on unchanged for the host to judge")
        XCTAssertTrue(wrongNonce.kernel.isEmpty)
        let wrongSource = send(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 11), from: CSPEndpoint(address: IPAddress("10.9.9.9")!, port: 7227), to: client)
        XCTAssertTrue(wrongSource.kernel.isEmpty)
        XCTAssertEqual(e.counters.mismatchedReplies, 2)
        XCTAssertEqual(e.sessions[id: 1]?.state, .pending)
    }

    func testRefreshExtendsAndTeardownRevokes() {
        var e = engine()
        _ = send(&e, setup(lifetime: 10), from: client, to: serverAgent)
        _ = send(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 11), from: serverAgent, to: client)
        let refresh = CSPMessage(type: .refresh, sessionID: 1, nonce: 21, sequence: 2, tlvs: [.lifetime(15)])
        XCTAssertEqual(send(&e, refresh, from: client, to: serverAgent, at: 8).verdict, .forward)
        let accepted = send(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 21, tlvs: [.lifetime(15)]), from: serverAgent, to: client, at: 8)
        XCTAssertEqual(accepted.kernel.untagged, [readmit(flow, lifetime: 15)], "a refresh replaces the element's timeout")
        XCTAssertEqual(e.sessions[id: 1]?.expiresAt, .seconds(23))
        XCTAssertEqual(e.counters.refreshed, 1)
        let teardown = send(&e, CSPMessage(type: .teardown, sessionID: 1, nonce: 31), from: client, to: serverAgent, at: 9)
        XCTAssertEqual(teardown.kernel.untagged, [revoke(flow)])
        XCTAssertTrue(e.sessions.isEmpty)
    }

    func testRefreshForUnknownSessionIsAnswered() {
        var e = engine()
        let out = send(&e, CSPMessage(type: .refresh, sessionID: 5, nonce: 1, tlvs: [.lifetime(5)]), from: client, to: serverAgent)
        XCTAssertEqual(out.reply?.message.result, .unknownSession)
    }

    func testPendingSessionsExpireAndAdmittedOnesExpireAtTheirLifetime() {
        var e = engine { $0.pendingTimeout = 5 }
        _ = send(&e, setup(session: 1), from: client, to: serverAgent)
        var other = flow
        other.sourcePort = 4001
        _ = send(&e, setup(session: 2, nonce: 22, flow: other, lifetime: 8), from: client, to: serverAgent)
        _ = send(&e, CSPMessage(type: .accept, sessionID: 2, nonce: 22), from: serverAgent, to: client, at: 1)
        XCTAssertEqual(e.expire(now: .seconds(5)).sessions.map(\.id), [1])
        XCTAssertEqual(e.expire(now: .seconds(9)).sessions.map(\.id), [2])
        XCTAssertEqual(e.counters.expired, 2)
    }

    func testRoutingLoopIsDropped() {
        var e = engine()
        var looped = setup()
        looped.tlvs.append(.middleboxRecord(CSPMiddleboxRecord(middleboxID: identity.id, epoch: 42, decision: .forwarded, grantedLifetime: 30)))
        XCTAssertEqual(send(&e, looped, from: client, to: serverAgent).verdict, .drop)
        XCTAssertTrue(e.sessions.isEmpty)
    }

    func testUpstreamNATRecordGivesTheEffectiveFlow() throws {
        // A NAT nearer the host mapped 10.0.1.2:4000 to 198.51.100.1:61000; we sit beyond it and see
        // the signaling from the mapped address.
        var e = engine()
        let mapped = CSPEndpoint(address: IPAddress("198.51.100.1")!, port: 61000)
        var request = setup()
        request.tlvs.append(.middleboxRecord(CSPMiddleboxRecord(middleboxID: 99, epoch: 1, decision: .forwarded, grantedLifetime: 30, tlvs: [.mappedAddress(mapped)])))
        let out = send(&e, request, from: CSPEndpoint(address: mapped.address, port: 1024), to: serverAgent)
        let forwarded = try XCTUnwrap(forwardedMessage(out))
        XCTAssertEqual(forwarded.flow, flow, "FLOW itself is never rewritten")
        var expected = flow
        expected.source = mapped.address
        expected.sourcePort = 61000
        XCTAssertEqual(e.sessions[id: 1]?.flow, expected)
    }

    func testUnknownMessageTypesAreForwardedUntouched() {
        var e = engine()
        let future = CSPMessage(type: CSPMessageType(rawValue: 200), sessionID: 1, nonce: 1)
        XCTAssertEqual(send(&e, future, from: client, to: serverAgent).verdict, .forward)
        XCTAssertEqual(e.counters.unknownTypes, 1)
    }

    func testUnsignaledModes() throws {
        var drop = engine()
        XCTAssertEqual(drop.handleUnsignaled(flow: flow, now: .seconds(0)), .drop(cache: .block(flow, lifetime: 10)))
        var icmp = flow
        icmp.proto = .icmp
        XCTAssertEqual(drop.handleUnsignaled(flow: icmp, now: .seconds(0)), .drop(cache: nil), "portless flows cannot be cached by 5-tuple")
        var noCache = engine { $0.dropCacheLifetime = 0 }
        XCTAssertEqual(noCache.handleUnsignaled(flow: flow, now: .seconds(0)), .drop(cache: nil))
        var pass = engine { $0.unsignaled = .defaultPolicy }
        XCTAssertEqual(pass.handleUnsignaled(flow: flow, now: .seconds(0)), .defaultPolicy)
        var admit = engine { $0.unsignaled = .admit; $0.legacyLifetime = 7 }
        let legacy = admit.handleUnsignaled(flow: flow, now: .seconds(0))
        let session = try XCTUnwrap(admit.sessions.session(for: flow))
        XCTAssertEqual(session.state, .legacy)
        XCTAssertEqual(legacy, .admit(.install(.admission(flow), lifetime: 7, tag: ElementTag(sessionID: session.id, kind: .legacy))))
    }

    func testFullTableRejectsWithRetry() {
        var e = engine { $0.maximumSessions = 1 }
        _ = send(&e, setup(session: 1), from: client, to: serverAgent)
        var other = flow
        other.sourcePort = 9
        let out = send(&e, setup(session: 2, nonce: 2, flow: other), from: client, to: serverAgent)
        XCTAssertEqual(out.reply?.message.result, .resourcesExhausted)
        XCTAssertEqual(out.reply?.message.reason?.retryAfter, 30)
        XCTAssertEqual(e.counters.tableFull, 1)
    }

    func testOperatorDeleteAndFlush() {
        var e = engine()
        _ = send(&e, setup(), from: client, to: serverAgent)
        _ = send(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 11), from: serverAgent, to: client)
        XCTAssertEqual(e.delete(id: 1, dryRun: true)?.1.untagged, [revoke(flow)])
        XCTAssertEqual(e.sessions.count, 1, "dry run changes nothing")
        XCTAssertEqual(e.flush().1.untagged, [revoke(flow)])
        XCTAssertTrue(e.sessions.isEmpty)
        XCTAssertNil(e.delete(id: 1))
    }

    func testKernelFailurePlanRefusesInTheRespondersNameAndForgetsTheSession() throws {
        var e = engine()
        _ = send(&e, setup(), from: client, to: serverAgent)
        let accept = send(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 11), from: serverAgent, to: client)
        guard case .refuseAnswer = accept.onKernelFailure, let (id, refusal) = accept.onKernelFailure.refusal else {
            return XCTFail("no failure plan")
        }
        XCTAssertEqual(id, 1)
        let reply = try XCTUnwrap(refusal)
        XCTAssertEqual(reply.message.result, .middleboxUnavailable)
        XCTAssertEqual(reply.destination, client)
        XCTAssertEqual(reply.source, serverAgent, "sent as from the responder, like the ACCEPT it replaces")
        XCTAssertEqual(reply.message.type, .reject)
        XCTAssertEqual([reply.message.sessionID, reply.message.nonce], [1, 11])
        XCTAssertEqual(reply.message.reason?.retryAfter, 5)
        XCTAssertEqual(reply.message.records.map(\.decision), [.rejected])
        XCTAssertEqual(reply.message.records.first?.middleboxID, e.identity.id)
        XCTAssertEqual(e.forgetFailed(sessionID: 1).untagged, [revoke(flow)], "undo whatever the session may hold")
        XCTAssertTrue(e.sessions.isEmpty)
        XCTAssertEqual(e.counters.kernelFailures, 1)
    }
}

final class SessionStorageTests: XCTestCase {
    let flow = FlowTuple(proto: .udp, source: IPAddress("10.0.1.2")!, sourcePort: 1, destination: IPAddress("10.0.2.2")!, destinationPort: 2)

    /// `soleAdmission` (the store's short cut) is set exactly when the objects are one admission, of that flow.
    func assertSoleAdmission(_ session: Session, _ expected: Bool, line: UInt = #line) {
        XCTAssertEqual(session.soleAdmission != nil, expected, line: line)
        if let flow = session.soleAdmission { XCTAssertEqual(session.kernelObjects, [.admission(flow)], line: line) }
    }

    func testKernelObjectsFollowTheState() {
        var session = Session(id: 1, flow: flow, state: .pending, createdAt: .seconds(0), expiresAt: nil, grantedLifetime: 1)
        XCTAssertEqual(session.kernelObjects, [], "nothing is installed while pending")
        assertSoleAdmission(session, false)
        session.state = .admitted
        XCTAssertEqual(session.kernelObjects, [.admission(flow)])
        assertSoleAdmission(session, true)
        var second = flow
        second.destinationPort = 3
        session.setPath(1, second)
        XCTAssertEqual(session.kernelObjects, [.admission(flow), .admission(second)], "one admission per path")
        assertSoleAdmission(session, false)
        session.mapping = CSPEndpoint(address: IPAddress("198.51.100.1")!, port: 4000)
        XCTAssertEqual(session.actionName, "nat")
        assertSoleAdmission(session, false)
        session.state = .redirected
        session.redirectTarget = CSPEndpoint(address: IPAddress("10.0.3.2")!, port: 3128)
        XCTAssertEqual(session.kernelObjects, [.admission(session.proxyFlow!)])
        assertSoleAdmission(session, false)
        var legacy = Session(id: 2, flow: flow, state: .legacy, createdAt: .seconds(0), expiresAt: nil, grantedLifetime: 1)
        assertSoleAdmission(legacy, true)
        legacy.mapping = CSPEndpoint(address: IPAddress("198.51.100.1")!, port: 4001)
        XCTAssertEqual(legacy.kernelObjects, [.admission(flow)], "a legacy session installs its admission only")
        assertSoleAdmission(legacy, true)
        var mapped = Session(id: 3, flow: flow, state: .admitted, createdAt: .seconds(0), expiresAt: nil, grantedLifetime: 1)
        mapped.mapping = CSPEndpoint(address: IPAddress("198.51.100.1")!, port: 4002)
        XCTAssertEqual(mapped.kernelObjects.count, 2, "an admission and its NAT rule")
        assertSoleAdmission(mapped, false)
    }

    /// The extras live in a box that copies of a session share and that is changed in place only
    /// while one session holds it, the request in flight in an immutable box of its own: a change
    /// to one copy never shows in another.
    func testExtrasChangedInPlaceStayPrivateToTheirCopy() {
        let mapped = CSPEndpoint(address: IPAddress("198.51.100.1")!, port: 4000)
        let pending = PendingRequest(nonce: 7, flow: flow, lifetime: 30, recordRoute: false, mapping: mapped)
        var first = Session(id: 1, flow: flow, state: .pending, createdAt: .seconds(0), expiresAt: nil, grantedLifetime: 1)
        first.mapping = mapped
        first.pending = pending  // in place: `first` alone holds its box
        let snapshot = first
        first.pending = nil  // shared with `snapshot` now: must copy
        first.application = "web"
        XCTAssertEqual(snapshot.pending, pending, "the copy keeps what it had")
        XCTAssertNil(snapshot.application)
        XCTAssertEqual(snapshot.mapping, mapped)
        XCTAssertNil(first.pending)
        XCTAssertEqual(first.application, "web")
        var second = snapshot
        second.mapping = nil
        second.pending = nil  // emptied: the box goes, the snapshot's stays
        XCTAssertEqual(second, Session(id: 1, flow: flow, state: .pending, createdAt: .seconds(0), expiresAt: nil, grantedLifetime: 1))
        XCTAssertEqual(snapshot.mapping, mapped)
        XCTAssertEqual(snapshot.pending, pending)
        // The request in flight has a box of its own: a field changed in one copy (a REBIND
        // marks its request) does not show in another.
        var third = snapshot
        third.pending?.rebind = true
        XCTAssertEqual(third.pending?.rebind, true)
        XCTAssertEqual(snapshot.pending?.rebind, false)
        XCTAssertEqual(third.mapping, mapped)
    }

    func testIPv6SessionsNeverGetANATRule() {
        let v6 = FlowTuple(proto: .udp, source: IPAddress("fd00::2")!, sourcePort: 1, destination: IPAddress("fd00:1::2")!, destinationPort: 2)
        var session = Session(id: 1, flow: v6, state: .admitted, createdAt: .seconds(0), expiresAt: nil, grantedLifetime: 1)
        session.mapping = CSPEndpoint(address: IPAddress("198.51.100.1")!, port: 4000)
        XCTAssertEqual(session.kernelObjects, [.admission(v6)], "the NAT maps are IPv4 by schema")
        XCTAssertNil(IPv4Endpoint(CSPEndpoint(address: IPAddress("fd00::2")!, port: 1)))
    }

    func testDiffRemovesFirstThenInstallsAndRefreshesWhatItKeeps() {
        var other = flow
        other.destinationPort = 9
        let changes = KernelChange.diff(from: [.admission(flow)], to: [.admission(flow), .admission(other)], lifetime: 5, tag: nil, refreshKept: true)
        XCTAssertEqual(changes, [readmit(flow, lifetime: 5), admit(other, lifetime: 5)])
        XCTAssertEqual(KernelChange.diff(from: [.admission(flow)], to: [.admission(other)], lifetime: 5, tag: nil, refreshKept: false),
                       [revoke(flow), admit(other, lifetime: 5)])
    }

    func testTagsRoundTripThroughTheComment() {
        let tag = ElementTag(sessionID: 0xad0b_7ed1_d000_0001, kind: .incoming, application: "voip call")
        XCTAssertEqual(tag.comment, "csp ad0b7ed1d0000001 i voip call")
        XCTAssertEqual(ElementTag(comment: tag.comment), tag)
        XCTAssertNil(ElementTag(comment: "operator's own element"))
        XCTAssertLessThanOrEqual(ElementTag(sessionID: 1, kind: .outgoing, application: String(repeating: "x", count: 500)).comment.utf8.count, 127)
    }

    func testRareFieldsKeepValueSemantics() {
        var original = Session(id: 1, flow: flow, state: .pending, application: "voip", createdAt: .seconds(0), expiresAt: nil, grantedLifetime: 1)
        original.pending = PendingRequest(nonce: 7, flow: flow, lifetime: 1, recordRoute: true)
        var copy = original
        copy.pending = nil
        copy.application = "web"
        XCTAssertEqual(original.pending?.nonce, 7)
        XCTAssertEqual(original.application, "voip")
        XCTAssertNotEqual(copy, original)
        copy.application = nil
        XCTAssertEqual(copy, Session(id: 1, flow: flow, state: .pending, createdAt: .seconds(0), expiresAt: nil, grantedLifetime: 1))
    }
}
