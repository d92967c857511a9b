import CSPTrust
import CSPWire
import XCTest

@testable import MidcomCore

/// The trust issue's findings, each as the engine sees it: spoofed and forged requests get no
/// state, replays change nothing, signatures bind sessions to keys, and what we send to unproved
/// addresses is bounded. The same attacks run for real in Tests/integration/trust-*.sh.
final class TrustTests: XCTestCase {
    let inside = CSPEndpoint(address: IPAddress("10.0.1.2")!, port: 40000)
    let attacker = CSPEndpoint(address: IPAddress("203.0.113.66")!, port: 40000)
    let server = CSPEndpoint(address: IPAddress("198.51.100.2")!, port: 7227)
    let wall: UInt64 = 1_800_000_000
    let identity = MiddleboxIdentity(id: 7, epoch: 9, name: "gw", key: SigningKey())

    func engine(_ configure: (inout MidcomConfiguration) -> Void = { _ in }) -> GatewayEngine {
        var config = MidcomConfiguration()
        configure(&config)
        return GatewayEngine(
            configuration: config, identity: identity, challengeSecret: Array(repeating: 1, count: 32), startedAt: wall - 100)
    }

    func flow(_ host: CSPEndpoint, dport: UInt16 = 5000) -> FlowTuple {
        FlowTuple(proto: .udp, source: host.address, sourcePort: 4000, destination: server.address, destinationPort: dport)
    }

    /// A request as it arrives: serialized, parsed and verified like the daemon does.
    func arrive(
        _ e: inout GatewayEngine, _ message: CSPMessage, from: CSPEndpoint, to: CSPEndpoint?, at t: Double = 0,
        signedBy key: SigningKey? = nil, stamp: UInt64? = nil
    ) -> SignalingOutcome {
        var message = message
        if let key { message = try! message.signed(by: key, timestamp: stamp ?? wall + UInt64(t)) }
        let bytes = try! message.serialize()
        let request = bytes.withUnsafeBytes {
            try! SignalingRequest(
                parsing: $0, source: from, entry: to.map { .intercepted(destination: $0) } ?? .addressedToUs,
                wallClock: wall + UInt64(t))
        }
        return e.handle(request, now: .seconds(t))
    }

    func setup(_ flow: FlowTuple, session: UInt64 = 1, nonce: UInt64, sequence: UInt32, listen: Bool = false) -> CSPMessage {
        var tlvs: [CSPTLV] = [.flow(flow), .lifetime(60)]
        if listen { tlvs.append(.requestedAction([.admit, .listen])) }
        return CSPMessage(type: .setup, flags: .recordRoute, sessionID: session, nonce: nonce, sequence: sequence, tlvs: tlvs)
    }

    /// Answers `challenge` from `from` as an honest host does: RESPONSE with the token.
    func respond(_ e: inout GatewayEngine, to challenge: OutgoingMessage, from: CSPEndpoint, signedBy key: SigningKey? = nil)
        -> SignalingOutcome
    {
        let c = challenge.message
        let response = CSPMessage(
            type: .response, sessionID: c.sessionID, nonce: c.nonce, sequence: c.sequence,
            tlvs: [.challengeToken(c.challengeToken ?? [])])
        return arrive(&e, response, from: from, to: challenge.source, signedBy: key)
    }

    // MARK: return routability

    func testSpoofedPinholeRequestToTheMiddleboxIsChallengedAtTheRealOwnerAndCreatesNothing() {
        var e = engine()
        let pinhole = FlowTuple(proto: .tcp, source: IPAddress(ipv4: 0), sourcePort: 0, destination: inside.address, destinationPort: 22)
        // The attacker writes the inside host's address as source; the CHALLENGE goes there.
        let out = arrive(&e, setup(pinhole, nonce: 1, sequence: 1, listen: true), from: inside, to: nil)
        XCTAssertEqual(out.reply?.message.type, .challenge)
        XCTAssertEqual(out.reply?.destination, inside)
        XCTAssertTrue(out.kernel.isEmpty)
        XCTAssertTrue(e.sessions.isEmpty, "no state for an unproved address")
        // A RESPONSE with a guessed token, from anywhere, proves nothing.
        var guessed = out.reply!
        guessed.message.tlvs = [.challengeToken(Array(repeating: 0, count: 20))]
        _ = respond(&e, to: guessed, from: inside)
        XCTAssertEqual(e.counters.challengesFailed, 1)
        XCTAssertEqual(arrive(&e, setup(pinhole, nonce: 1, sequence: 1, listen: true), from: inside, to: nil).reply?.message.type, .challenge)
        XCTAssertTrue(e.sessions.isEmpty)
    }

    func testTheRealHostAnswersTheChallengeAndItsSetupGoesThrough() {
        var e = engine()
        let first = arrive(&e, setup(flow(inside), nonce: 1, sequence: 1), from: inside, to: server)
        XCTAssertEqual(first.reply?.message.type, .challenge)
        XCTAssertEqual(first.reply?.source, server, "sent in the responder's name")
        XCTAssertLessThanOrEqual(try first.reply!.message.serialize().count, 3 * (try setup(flow(inside), nonce: 1, sequence: 1).serialize().count))
        XCTAssertEqual(respond(&e, to: first.reply!, from: inside).verdict, .drop, "the RESPONSE ends here")
        XCTAssertEqual(e.counters.challengesPassed, 1)
        // The host repeats its SETUP: now it is forwarded and pending.
        let again = arrive(&e, setup(flow(inside), nonce: 1, sequence: 1), from: inside, to: server)
        guard case .forwardRewritten = again.verdict else { return XCTFail("not forwarded: \(again)") }
        XCTAssertEqual(e.sessions[id: 1]?.state, .pending)
    }

    func testAForgedResponderAcceptIsChallengedAtTheRealResponderAndOpensNothing() {
        var e = engine { $0.trust.challenge = .newSources }
        // The attacker (outside) signals its own incoming flow to the inside victim's port 22 ...
        let victim = CSPEndpoint(address: inside.address, port: 7227)
        let flow = FlowTuple(proto: .tcp, source: attacker.address, sourcePort: 5555, destination: inside.address, destinationPort: 22)
        let c = arrive(&e, setup(flow, nonce: 1, sequence: 1), from: attacker, to: victim)
        _ = respond(&e, to: c.reply!, from: attacker)  // its own address is real
        _ = arrive(&e, setup(flow, nonce: 1, sequence: 1), from: attacker, to: victim)
        XCTAssertEqual(e.sessions[id: 1]?.state, .pending)
        // ... then forges the victim's ACCEPT (it wrote the SETUP, so it knows ID and nonce).
        let forged = arrive(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 1, tlvs: [.lifetime(60)]), from: victim, to: attacker)
        XCTAssertEqual(forged.verdict, .drop)
        XCTAssertEqual(forged.reply?.message.type, .challenge)
        XCTAssertEqual(forged.reply?.destination, victim, "the CHALLENGE goes to the real responder")
        XCTAssertTrue(forged.kernel.isEmpty)
        XCTAssertEqual(e.sessions[id: 1]?.state, .pending, "nothing admitted")
        // A real responder that did answer proves its address, repeats its ACCEPT, and is admitted.
        _ = respond(&e, to: forged.reply!, from: victim)
        let accepted = arrive(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 1, tlvs: [.lifetime(60)]), from: victim, to: attacker)
        XCTAssertEqual(e.sessions[id: 1]?.state, .admitted)
        XCTAssertFalse(accepted.kernel.isEmpty)
    }

    func testRepliesToUnprovedSourcesAreBudgetedPerSource() {
        var e = engine { $0.trust.repliesPerSource = 3 }
        var challenges = 0
        for n in 1...10 {
            let out = arrive(&e, setup(flow(inside), session: UInt64(n), nonce: UInt64(n), sequence: 1), from: inside, to: server)
            if out.reply != nil { challenges += 1 }
        }
        XCTAssertEqual(challenges, 3)
        XCTAssertEqual(e.counters.challengesLimited, 7)
        // Another source still gets its answer; the next second the budget is back.
        XCTAssertNotNil(arrive(&e, setup(flow(attacker), session: 50, nonce: 50, sequence: 1), from: attacker, to: server).reply)
        XCTAssertNotNil(arrive(&e, setup(flow(inside), session: 51, nonce: 51, sequence: 1), from: inside, to: server, at: 1).reply)
        XCTAssertTrue(e.sessions.isEmpty)
    }

    /// Found by the bench: with the budget on every CHALLENGE, a server whose unsigned sessions
    /// are each proved anew could take only five new sessions a second through the gateway.
    func testAnAddressThatAnsweredIsNoLongerBudgeted() {
        var e = engine { $0.trust.repliesPerSource = 2 }
        let first = arrive(&e, setup(flow(inside), session: 1, nonce: 1, sequence: 1), from: inside, to: server)
        _ = respond(&e, to: first.reply!, from: inside)
        var challenges = 0
        for n in 2...12 {
            if arrive(&e, setup(flow(inside), session: UInt64(n), nonce: UInt64(n), sequence: 1), from: inside, to: server).reply?.message.type == .challenge {
                challenges += 1
            }
        }
        XCTAssertEqual(challenges, 11, "each new unsigned session is still challenged, none is dropped for the budget")
        XCTAssertEqual(e.counters.challengesLimited, 0)
    }

    func testPendingStateIsBoundedPerSource() {
        var e = engine {
            $0.trust.challenge = .never
            $0.trust.pendingPerSource = 2
        }
        for n in 1...3 {
            _ = arrive(&e, setup(flow(inside, dport: UInt16(5000 + n)), session: UInt64(n), nonce: UInt64(n), sequence: 1), from: inside, to: server)
        }
        XCTAssertEqual(e.sessions.count, 2)
        XCTAssertEqual(e.counters.pendingLimited, 1)
    }

    func testRejectsStayWithinThreeTimesTheRequest() {
        var e = engine {
            $0.trust.challenge = .never
            $0.defaultAction = .reject
        }
        let request = CSPMessage(type: .setup, sessionID: 1, nonce: 1, sequence: 1, tlvs: [.flow(flow(inside))])
        let out = arrive(&e, request, from: inside, to: server)
        let size = try! out.reply!.message.serialize().count
        XCTAssertLessThanOrEqual(size, 3 * (try! request.serialize().count))
        XCTAssertEqual(out.reply?.message.result, .policyDenied)
    }

    // MARK: signatures and ownership

    func testSignaturePolicyAnyKeyAndKnownKeys() {
        let ana = SigningKey()
        let stranger = SigningKey()
        var e = engine {
            $0.trust.challenge = .never
            $0.trust.signatures = .knownKeys
            $0.trust.knownKeys = [KnownKey(name: "ana", key: ana.publicKey, source: IPPrefix("10.0.1.0/24"))]
        }
        XCTAssertEqual(arrive(&e, setup(flow(inside), session: 1, nonce: 1, sequence: 1), from: inside, to: server).reply?.message.result, .authenticationFailed)
        XCTAssertEqual(arrive(&e, setup(flow(inside), session: 2, nonce: 2, sequence: 1), from: inside, to: server, signedBy: stranger).reply?.message.result, .authenticationFailed)
        let outside = CSPEndpoint(address: IPAddress("10.0.9.2")!, port: 40000)
        XCTAssertEqual(arrive(&e, setup(flow(outside), session: 3, nonce: 3, sequence: 1), from: outside, to: server, signedBy: ana).reply?.message.result, .authenticationFailed, "ana's key only from her prefix")
        XCTAssertNil(arrive(&e, setup(flow(inside), session: 4, nonce: 4, sequence: 1), from: inside, to: server, signedBy: ana).reply)
        XCTAssertEqual(e.sessions[id: 4]?.ownerKey, ana.publicKey)
        XCTAssertEqual(e.sessions.count, 1)
    }

    func testForgedOrAlteredSignaturesAreRefusedEvenWhereNotRequired() {
        var e = engine { $0.trust.challenge = .never }
        let key = SigningKey()
        var bytes = try! setup(flow(inside), nonce: 1, sequence: 1).signed(by: key, timestamp: wall).serialize()
        bytes[40] ^= 1  // inside FLOW: the port the signer asked for
        let request = bytes.withUnsafeBytes {
            try! SignalingRequest(parsing: $0, source: inside, entry: .intercepted(destination: server), wallClock: wall)
        }
        XCTAssertEqual(e.handle(request, now: .seconds(0)).reply?.message.result, .authenticationFailed)
        XCTAssertTrue(e.sessions.isEmpty)
    }

    func testASignedSessionAnswersOnlyToItsKey() {
        let owner = SigningKey()
        let other = SigningKey()
        var e = engine { $0.trust.challenge = .never }
        _ = arrive(&e, setup(flow(inside), nonce: 1, sequence: 1), from: inside, to: server, signedBy: owner)
        _ = arrive(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 1, tlvs: [.lifetime(60)]), from: server, to: inside)
        XCTAssertEqual(e.sessions[id: 1]?.state, .admitted)
        // Same address, another key (or none): refused, the session survives.
        let refresh = CSPMessage(type: .refresh, sessionID: 1, nonce: 2, sequence: 2, tlvs: [.lifetime(60)])
        XCTAssertEqual(arrive(&e, refresh, from: inside, to: server, signedBy: other).reply?.message.result, .authenticationFailed)
        let teardown = CSPMessage(type: .teardown, sessionID: 1, nonce: 3, sequence: 3)
        _ = arrive(&e, teardown, from: inside, to: server)
        _ = arrive(&e, teardown, from: inside, to: nil, signedBy: other)
        XCTAssertEqual(e.sessions[id: 1]?.state, .admitted, "still there")
        // The owner's REFRESH without IDENTITY verifies against the session's key.
        let own = try! refresh.signed(by: owner, timestamp: wall, includeIdentity: false)
        let out = arrive(&e, own, from: inside, to: server)
        XCTAssertEqual(out.verdict, .forward)
        XCTAssertEqual(e.counters.authenticationFailures, 3)
    }

    func testStaleAndPreStartTimestampsAreRefused() {
        let key = SigningKey()
        var e = engine { $0.trust.challenge = .never }
        XCTAssertEqual(arrive(&e, setup(flow(inside), session: 1, nonce: 1, sequence: 1), from: inside, to: server, signedBy: key, stamp: wall - 31).reply?.message.result, .authenticationFailed)
        XCTAssertEqual(arrive(&e, setup(flow(inside), session: 2, nonce: 2, sequence: 1), from: inside, to: server, signedBy: key, stamp: wall + 31).reply?.message.result, .authenticationFailed)
        var restarted = GatewayEngine(configuration: { var c = MidcomConfiguration(); c.trust.challenge = .never; return c }(), identity: identity, startedAt: wall)
        XCTAssertEqual(arrive(&restarted, setup(flow(inside), session: 3, nonce: 3, sequence: 1), from: inside, to: server, signedBy: key, stamp: wall - 5).reply?.message.result, .authenticationFailed, "signed before a restart: could be a capture")
        XCTAssertTrue(e.sessions.isEmpty && restarted.sessions.isEmpty)
    }

    /// The REJECT that replaces an ACCEPT whose state the kernel refused is built only then
    /// (`KernelFailurePlan.refuseAnswer`); its record must be signed like the ACCEPT's would have
    /// been, over the REJECT's own header, so a host that pins our key believes the refusal.
    func testTheRejectBuiltForARefusedAcceptCarriesOurSignedRecord() throws {
        for signRecords in [true, false] {
            var e = engine {
                $0.trust.signRecords = signRecords
                $0.trust.challenge = .never
            }
            _ = arrive(&e, setup(flow(inside), nonce: 5, sequence: 1), from: inside, to: server)
            let accept = arrive(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 5, sequence: 1), from: server, to: inside)
            guard case .refuseAnswer(_, let rejection) = accept.onKernelFailure else { return XCTFail("no lazy REJECT planned") }
            let reject = rejection.outgoing.message
            XCTAssertEqual(reject.type, .reject)
            XCTAssertEqual(reject.result, .middleboxUnavailable)
            let bytes = try reject.serialize()
            let check = bytes.withUnsafeBytes { SignatureCheck.check($0, message: reject, checkRecords: true) }
            XCTAssertEqual(check.records.count, 1)
            XCTAssertEqual(check.records.first?.middleboxID, identity.id)
            if signRecords {
                XCTAssertEqual(check.records.first?.status, .valid(identity.key!.publicKey), "signed by our key over its own header")
                // The signature covers the header: the same record on another session's REJECT is refused.
                var moved = reject
                moved.sessionID = 2
                let movedBytes = try moved.serialize()
                let movedCheck = movedBytes.withUnsafeBytes { SignatureCheck.check($0, message: moved, checkRecords: true) }
                guard case .invalid = movedCheck.records.first?.status else {
                    return XCTFail("a record moved to another header must not verify: \(String(describing: movedCheck.records.first))")
                }
            } else {
                XCTAssertEqual(check.records.first?.status, .unsigned, "sign-records = false")
            }
        }
    }

    // MARK: replay

    func testReplaysAfterTeardownAndOfAnOldTeardownChangeNothing() {
        var e = engine { $0.trust.challenge = .never }
        let setupMessage = setup(flow(inside), nonce: 1, sequence: 1)
        let accept = CSPMessage(type: .accept, sessionID: 1, nonce: 1, tlvs: [.lifetime(60)])
        _ = arrive(&e, setupMessage, from: inside, to: server)
        _ = arrive(&e, accept, from: server, to: inside)
        let teardown = CSPMessage(type: .teardown, sessionID: 1, nonce: 2, sequence: 2)
        _ = arrive(&e, teardown, from: inside, to: server, at: 1)
        XCTAssertTrue(e.sessions.isEmpty)
        // Captured SETUP + ACCEPT replayed after the teardown.
        XCTAssertEqual(arrive(&e, setupMessage, from: inside, to: server, at: 2).reply?.message.result, .authenticationFailed)
        XCTAssertEqual(arrive(&e, accept, from: server, to: inside, at: 2).kernel, [])
        XCTAssertTrue(e.sessions.isEmpty)
        XCTAssertEqual(e.counters.replays, 1)
        // The owner re-signals with its next sequence; the old TEARDOWN replayed does not end it.
        _ = arrive(&e, setup(flow(inside), nonce: 3, sequence: 3), from: inside, to: server, at: 3)
        _ = arrive(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 3, tlvs: [.lifetime(60)]), from: server, to: inside, at: 3)
        XCTAssertEqual(e.sessions[id: 1]?.state, .admitted)
        _ = arrive(&e, teardown, from: inside, to: server, at: 4)
        XCTAssertEqual(e.sessions[id: 1]?.state, .admitted, "an old TEARDOWN is a replay")
        XCTAssertEqual(e.counters.replays, 2)
    }

    func testARetransmissionIsNotAReplay() {
        var e = engine { $0.trust.challenge = .never }
        let message = setup(flow(inside), nonce: 1, sequence: 1)
        _ = arrive(&e, message, from: inside, to: server)
        let again = arrive(&e, message, from: inside, to: server)
        guard case .forwardRewritten = again.verdict else { return XCTFail("retransmission refused: \(again)") }
        XCTAssertEqual(e.counters.replays, 0)
    }

    /// Found by the replay scenario: a TEARDOWN refused for its key still moved the window, so
    /// one datagram with sequence 0xffffffff from the owner's address locked the owner out.
    func testARefusedRequestDoesNotBurnTheOwnersSequences() {
        let owner = SigningKey()
        var e = engine { $0.trust.challenge = .never }
        _ = arrive(&e, setup(flow(inside), nonce: 1, sequence: 1), from: inside, to: server, signedBy: owner)
        _ = arrive(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 1, tlvs: [.lifetime(60)]), from: server, to: inside)
        _ = arrive(&e, CSPMessage(type: .teardown, sessionID: 1, nonce: 2, sequence: .max), from: inside, to: server)
        let refresh = CSPMessage(type: .refresh, sessionID: 1, nonce: 3, sequence: 2, tlvs: [.lifetime(60)])
        XCTAssertEqual(arrive(&e, refresh, from: inside, to: server, signedBy: owner).verdict, .forward)
        XCTAssertEqual(e.counters.replays, 0)
    }

    /// Found by the replay scenario: a session that expired with its SETUP as the latest request
    /// came back from that one captured SETUP (the tombstone took it for a retransmission).
    func testTheLatestRequestOfAnEndedSessionIsAReplay() {
        var e = engine { $0.trust.challenge = .never }
        let captured = setup(flow(inside), nonce: 1, sequence: 1)
        _ = arrive(&e, captured, from: inside, to: server)
        _ = arrive(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 1, tlvs: [.lifetime(3)]), from: server, to: inside)
        _ = e.expire(now: .seconds(4))
        XCTAssertTrue(e.sessions.isEmpty)
        XCTAssertEqual(arrive(&e, captured, from: inside, to: server, at: 5).reply?.message.result, .authenticationFailed)
        XCTAssertTrue(e.sessions.isEmpty)
    }

    /// Found by the replay scenario: a superseded session left no window behind, so its SETUP
    /// replayed brought it back and displaced its successor.
    func testASupersededSessionCannotBeReplayed() {
        var e = engine { $0.trust.challenge = .never }
        let old = setup(flow(inside), session: 1, nonce: 1, sequence: 1)
        _ = arrive(&e, old, from: inside, to: server)
        _ = arrive(&e, CSPMessage(type: .accept, sessionID: 1, nonce: 1, tlvs: [.lifetime(60)]), from: server, to: inside)
        _ = arrive(&e, setup(flow(inside), session: 2, nonce: 2, sequence: 1), from: inside, to: server)
        _ = arrive(&e, CSPMessage(type: .accept, sessionID: 2, nonce: 2, tlvs: [.lifetime(60)]), from: server, to: inside)
        XCTAssertNil(e.sessions[id: 1], "superseded")
        XCTAssertEqual(arrive(&e, old, from: inside, to: server).reply?.message.result, .authenticationFailed)
        XCTAssertEqual(e.sessions[id: 2]?.state, .admitted)
    }

    func testReplayWindow() {
        var w = ReplayWindow()
        XCTAssertEqual(w.check(sequence: 5, nonce: 1), .new)
        w.record(sequence: 5, nonce: 1)
        XCTAssertEqual(w.check(sequence: 5, nonce: 1), .retransmission)
        XCTAssertEqual(w.check(sequence: 5, nonce: 2), .replayed)
        XCTAssertEqual(w.check(sequence: 3, nonce: 9), .new, "out of order, inside the window")
        w.record(sequence: 3, nonce: 9)
        XCTAssertEqual(w.check(sequence: 3, nonce: 9), .replayed, "only the latest request is retransmitted")
        w.record(sequence: 100, nonce: 4)
        XCTAssertEqual(w.check(sequence: 36, nonce: 7), .replayed, "older than the window")
        XCTAssertEqual(w.check(sequence: 37, nonce: 7), .new)
    }
}
