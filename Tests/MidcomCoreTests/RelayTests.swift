import CSPTrust
import CSPWire
import XCTest

@testable import MidcomCore

/// midcomd's part of relayed sessions (docs/PROTOCOL.md 14.2): every row of the relay decision's
/// table, the RELAY offer and its token (checked the way midrelayd checks it), and the leg SETUP
/// to our relay endpoint. Requests arrive serialized, signed and parsed as the daemon sees them.
final class RelayTests: XCTestCase {
    let host = CSPEndpoint(address: IPAddress("10.1.0.10")!, port: 40000)
    let server = CSPEndpoint(address: IPAddress("198.51.100.20")!, port: 7227)
    let host6 = CSPEndpoint(address: IPAddress("2001:db8:1::10")!, port: 40000)
    let server6 = CSPEndpoint(address: IPAddress("2001:db8:9::20")!, port: 7227)
    let relay4 = CSPEndpoint(address: IPAddress("10.1.0.1")!, port: 7228)
    let relay4b = CSPEndpoint(address: IPAddress("192.0.2.1")!, port: 7228)
    let relay6 = CSPEndpoint(address: IPAddress("2001:db8:1::1")!, port: 7228)
    let wall: UInt64 = 1_800_000_000
    let identity = MiddleboxIdentity(id: 7, epoch: 9, name: "gw1", key: SigningKey())
    let tokenKey = RelayTokenKey(bytes: Array(repeating: 0x42, count: 32))!
    let hostKey = SigningKey()

    func configuration(_ configure: (inout MidcomConfiguration) -> Void = { _ in }) -> MidcomConfiguration {
        var config = MidcomConfiguration()
        config.trust.challenge = .never
        config.relay.enabled = true
        config.relay.listen = [relay4, relay6, relay4b]
        config.rules = [
            PolicyRule(
                name: "outside-web", proto: .tcp, destination: IPPrefix("198.51.100.0/24"), ports: 443...443, action: .relay),
            PolicyRule(
                name: "inspected", proto: .tcp, destination: IPPrefix("198.51.100.0/24"), ports: 80...80, action: .relay,
                relayMode: .terminating),
            PolicyRule(name: "web6", proto: .tcp, destination: IPPrefix("2001:db8:9::/48"), ports: 443...443, action: .relay),
        ]
        config.relay.terminating = true
        configure(&config)
        return config
    }

    func engine(_ configure: (inout MidcomConfiguration) -> Void = { _ in }, key: RelayTokenKey? = nil) -> GatewayEngine {
        GatewayEngine(
            configuration: configuration(configure), identity: identity, challengeSecret: Array(repeating: 1, count: 32),
            startedAt: wall - 100, relayTokenKey: key ?? tokenKey)
    }

    func flow(port: UInt16 = 443, proto: IPProtocol = .tcp, from: CSPEndpoint? = nil, to: CSPEndpoint? = nil) -> FlowTuple {
        FlowTuple(
            proto: proto, source: (from ?? host).address, sourcePort: 50001, destination: (to ?? server).address,
            destinationPort: port)
    }

    func setup(
        _ flow: FlowTuple, session: UInt64 = 0x0123_4567_89ab_cdef, nonce: UInt64 = 11, sequence: UInt32 = 1,
        actions: CSPRequestedAction? = [.admit, .allowRelay], extra: [CSPTLV] = []
    ) -> CSPMessage {
        var tlvs: [CSPTLV] = [.flow(flow), .lifetime(300)]
        if let actions { tlvs.append(.requestedAction(actions)) }
        return CSPMessage(
            type: .setup, flags: .recordRoute, sessionID: session, nonce: nonce, sequence: sequence, tlvs: tlvs + extra)
    }

    /// `message` as it arrives: signed (unless `signedBy` is nil), serialized, parsed and verified.
    func arrive(
        _ e: inout GatewayEngine, _ message: CSPMessage, from: CSPEndpoint, to: CSPEndpoint?, at t: Double = 0,
        signedBy key: SigningKey??
    ) -> SignalingOutcome {
        var message = message
        if let key = key ?? hostKey { message = try! message.signed(by: key, timestamp: wall + UInt64(t)) }
        let bytes = try! message.serialize()
        let request = bytes.withUnsafeBytes {
            try! SignalingRequest(
                parsing: $0, source: from, entry: to.map { .intercepted(destination: $0) } ?? .addressedToUs,
                wallClock: wall + UInt64(t))
        }
        return e.handle(request, now: .seconds(t))
    }

    /// Signed by the host's key (the usual case).
    func arrive(_ e: inout GatewayEngine, _ message: CSPMessage, from: CSPEndpoint? = nil, to: CSPEndpoint? = nil, at t: Double = 0)
        -> SignalingOutcome
    {
        arrive(&e, message, from: from ?? host, to: to ?? server, at: t, signedBy: .some(hostKey))
    }

    /// The binding midrelayd builds from a hop's OPEN (HOP, TARGET, the handshake's key, the
    /// endpoint it accepted on): it must match what midcomd minted.
    func relayBinding(session: UInt64 = 0x0123_4567_89ab_cdef, hop: UInt8 = 1, key: PublicKey? = nil, target: FlowTuple, at endpoint: CSPEndpoint)
        -> RelayToken.Binding
    {
        RelayToken.Binding(
            sessionID: session, hopIndex: hop, upstreamKey: key ?? hostKey.publicKey, targetProtocol: target.proto.rawValue,
            target: CSPEndpoint(address: target.destination, port: target.destinationPort), relayEndpoint: endpoint)
    }

    // MARK: the table

    func testRelayRuleWithAllowRelayGetsASignedOfferInTheRespondersName() throws {
        var e = engine()
        let request = setup(flow(), sequence: 5)
        let out = arrive(&e, request)
        XCTAssertEqual(out.verdict, .drop, "the request goes no further")
        XCTAssertTrue(out.kernel.isEmpty, "the offer installs nothing")
        XCTAssertTrue(e.sessions.isEmpty)
        let reply = try XCTUnwrap(out.reply)
        XCTAssertEqual(reply.destination, host)
        XCTAssertEqual(reply.source, server, "sent like a REDIRECT: in the responder's name")
        let relay = reply.message
        XCTAssertEqual(relay.type, .relay)
        XCTAssertTrue(relay.flags.contains(.fromMiddlebox))
        XCTAssertEqual(relay.result, .success)
        XCTAssertEqual([relay.sessionID, relay.nonce], [request.sessionID, request.nonce])
        XCTAssertEqual(relay.sequence, 5)
        XCTAssertEqual(relay.lifetime, 60, "token-lifetime")
        XCTAssertNil(relay.ruleViolation)
        let record = try XCTUnwrap(relay.relayingRecord)
        XCTAssertEqual(record.middleboxID, identity.id)
        XCTAssertEqual(record.decision, .relayed)
        XCTAssertEqual(record.grantedLifetime, 60)
        XCTAssertEqual(record.relayEndpoint, CSPRelayEndpoint(transport: .tcp, modes: [.clear, .sealed], endpoint: relay4))
        XCTAssertEqual(record.relayToken?.count, RelayToken.length)
        // The record is signed (IDENTITY and SIGNATURE last), so its signature covers the
        // endpoint and the token; it survives the wire.
        XCTAssertEqual(record.tlvs.suffix(2).map(\.type), [.identity, .signature])
        let bytes = try relay.serialize()
        let parsed = try bytes.withUnsafeBytes { try CSPMessage.parse($0) }
        XCTAssertEqual(parsed, relay)
        XCTAssertEqual(SignatureCheck.check(bytes, message: parsed, checkRecords: true).records.map(\.status), [.valid(identity.key!.publicKey)])
        XCTAssertEqual(e.counters.relayOffers, 1)
        XCTAssertEqual(e.counters.asDictionary["relay_offers"], 1)
    }

    func testTheTokenChecksAtTheRelayWithTheSameBinding() throws {
        var e = engine()
        let out = arrive(&e, setup(flow()))
        let record = try XCTUnwrap(out.reply?.message.relayingRecord)
        let token = try XCTUnwrap(record.relayToken)
        let binding = relayBinding(target: flow(), at: relay4)
        let checked = try tokenKey.check(token, for: binding, now: wall + 30)
        XCTAssertEqual(checked.hopIndex, 1)
        XCTAssertEqual(checked.modes, CSPRelayModes([.clear, .sealed]).rawValue)
        XCTAssertEqual(checked.expiry, UInt32(wall + 60), "now + token-lifetime, UNIX seconds")
        XCTAssertThrowsError(try tokenKey.check(token, for: binding, now: wall + 61), "expired")
        // Anything else bound — target, key, session, hop, endpoint — and the MAC fails.
        var others = [binding, binding, binding, binding, binding, binding]
        others[0].target.port = 444
        others[1].upstreamKey = SigningKey().publicKey
        others[2].sessionID ^= 1
        others[3].hopIndex = 2
        others[4].relayEndpoint = relay4b
        others[5].targetProtocol = 17
        for other in others {
            XCTAssertThrowsError(try tokenKey.check(token, for: other, now: wall)) { error in
                XCTAssertEqual(error as? RelayToken.Rejection, .badMAC, "\(other)")
            }
        }
        let otherKey = RelayTokenKey(bytes: Array(repeating: 0x43, count: 32))!
        XCTAssertThrowsError(try otherKey.check(token, for: binding, now: wall))
    }

    func testWantRelayIsConsentToo() throws {
        var e = engine()
        let out = arrive(&e, setup(flow(), actions: [.admit, .wantRelay]))
        XCTAssertEqual(out.reply?.message.type, .relay)
    }

    func testRelayRuleWithoutConsentIsRelayRequiredNamingTheRuleAndTheMiddlebox() throws {
        var e = engine()
        for actions in [CSPRequestedAction.admit, nil] as [CSPRequestedAction?] {
            let out = arrive(&e, setup(flow(), nonce: 20 + UInt64(e.counters.setups), sequence: UInt32(1 + e.counters.setups), actions: actions))
            let reject = try XCTUnwrap(out.reply?.message)
            XCTAssertEqual(reject.type, .reject)
            XCTAssertEqual(reject.result, .relayRequired)
            XCTAssertEqual(
                reject.reason?.text,
                "flows to 198.51.100.0/24:443 are relayed by gw1 (rule 'outside-web'): allow relaying or do without")
            XCTAssertEqual(out.reply?.source, server)
        }
        XCTAssertEqual(e.counters.relayOffersRefused, 2)
        XCTAssertEqual(e.counters.relayOffers, 0)
        XCTAssertTrue(e.sessions.isEmpty)
    }

    func testTerminatingRuleNeedsAllowTerminating() throws {
        var e = engine()
        let refused = arrive(&e, setup(flow(port: 80), actions: [.admit, .allowRelay]))
        XCTAssertEqual(refused.reply?.message.result, .terminatingRelayRequired)
        XCTAssertTrue(refused.reply?.message.reason?.text.contains("rule 'inspected'") ?? false)
        let none = arrive(&e, setup(flow(port: 80), nonce: 12, sequence: 2, actions: [.admit]))
        XCTAssertEqual(none.reply?.message.result, .terminatingRelayRequired, "the host learns at once what it must allow")
        let offered = arrive(&e, setup(flow(port: 80), nonce: 13, sequence: 3, actions: [.admit, .allowRelay, .allowTerminating]))
        let record = try XCTUnwrap(offered.reply?.message.relayingRecord)
        XCTAssertEqual(record.relayEndpoint?.modes, [.clear, .sealed, .terminating])
        let token = try tokenKey.check(record.relayToken!, for: relayBinding(target: flow(port: 80), at: relay4), now: wall)
        XCTAssertEqual(token.modes, 0x07)
        // A blind rule takes allow-terminating as consent too.
        XCTAssertEqual(arrive(&e, setup(flow(), nonce: 14, sequence: 4, actions: [.admit, .allowTerminating])).reply?.message.type, .relay)
    }

    func testOnRequestRelaysAdmittedFlowsThatWantIt() throws {
        var e = engine { $0.relay.onRequest = true }
        let elsewhere = flow(port: 22, to: CSPEndpoint(address: IPAddress("203.0.113.5")!, port: 7227))
        let out = arrive(&e, setup(elsewhere, actions: [.admit, .wantRelay]))
        let record = try XCTUnwrap(out.reply?.message.relayingRecord)
        XCTAssertEqual(record.relayEndpoint?.modes, [.clear, .sealed], "on request: blind")
        XCTAssertNil(out.reply?.message.reason)
        XCTAssertNoThrow(try tokenKey.check(record.relayToken!, for: relayBinding(target: elsewhere, at: relay4), now: wall))
        // allow-relay alone is no request: admitted and forwarded as usual.
        let direct = arrive(&e, setup(elsewhere, session: 2, nonce: 2, actions: [.admit, .allowRelay]))
        XCTAssertNil(direct.reply)
        XCTAssertEqual(e.sessions[id: 2]?.state, .pending)
        // Not TCP: no relay for it.
        let udp = arrive(&e, setup(flow(port: 53, proto: .udp), session: 3, nonce: 3, actions: [.admit, .wantRelay]))
        XCTAssertNil(udp.reply)
        XCTAssertEqual(e.sessions[id: 3]?.state, .pending)
    }

    func testWithoutOnRequestWantRelayIsIgnored() throws {
        var e = engine()
        let elsewhere = flow(port: 22, to: CSPEndpoint(address: IPAddress("203.0.113.5")!, port: 7227))
        let out = arrive(&e, setup(elsewhere, actions: [.admit, .wantRelay]), to: CSPEndpoint(address: elsewhere.destination, port: 7227))
        XCTAssertNil(out.reply, "forwarded: the host sees the responder's ACCEPT")
        XCTAssertNotEqual(out.verdict, .drop)
        XCTAssertEqual(e.sessions.count, 1)
        XCTAssertEqual(e.counters.relayOffers, 0)
    }

    func testRelayServiceDownOrFullIsRefusedWithRetryAfter() throws {
        var e = engine()
        e.relayService = .unavailable(retryAfter: 10)
        let down = try XCTUnwrap(arrive(&e, setup(flow())).reply?.message)
        XCTAssertEqual(down.result, .middleboxUnavailable)
        XCTAssertEqual(down.reason?.retryAfter, 10)
        e.relayService = .full(retryAfter: 30)
        let full = try XCTUnwrap(arrive(&e, setup(flow(), nonce: 12, sequence: 2)).reply?.message)
        XCTAssertEqual(full.result, .resourcesExhausted)
        XCTAssertEqual(full.reason?.retryAfter, 30)
        var keyless = GatewayEngine(configuration: configuration(), identity: identity, startedAt: wall - 100)
        XCTAssertEqual(arrive(&keyless, setup(flow())).reply?.message.result, .middleboxUnavailable, "no relay.key loaded")
    }

    func testRelayedSessionBindsTheOfferToItsSessionAndHop() throws {
        var e = engine()
        let relayKey = SigningKey()
        let onward = setup(
            flow(), session: 0xfeed, actions: [.admit, .allowRelay],
            extra: [.relayedSession(CSPRelayedSession(sessionID: 0x0123_4567_89ab_cdef, hopIndex: 3))])
        let out = arrive(&e, onward, from: host, to: server, signedBy: .some(relayKey))
        let record = try XCTUnwrap(out.reply?.message.relayingRecord)
        XCTAssertEqual(out.reply?.message.sessionID, 0xfeed, "the RELAY answers the relay's own SETUP")
        let token = try tokenKey.check(
            record.relayToken!, for: relayBinding(session: 0x0123_4567_89ab_cdef, hop: 3, key: relayKey.publicKey, target: flow(), at: relay4),
            now: wall)
        XCTAssertEqual(token.hopIndex, 3)
    }

    func testAChainOfEightHopsIsNotRelayedAgain() throws {
        var e = engine()
        for (nonce, index): (UInt64, UInt8) in [(1, 8), (2, 9)] {
            let onward = setup(
                flow(), session: 0xfeed + nonce, nonce: nonce, actions: [.admit, .allowRelay],
                extra: [.relayedSession(CSPRelayedSession(sessionID: 0x0123, hopIndex: index))])
            let reject = try XCTUnwrap(arrive(&e, onward).reply?.message)
            XCTAssertEqual(reject.result, .policyDenied)
            XCTAssertEqual(reject.reason?.text, "relay chain longer than 8 hops")
        }
        // Whatever the bits say.
        let bare = setup(flow(), session: 0xfe, nonce: 3, actions: [.admit], extra: [.relayedSession(CSPRelayedSession(sessionID: 1, hopIndex: 8))])
        XCTAssertEqual(arrive(&e, bare).reply?.message.reason?.text, "relay chain longer than 8 hops")
    }

    func testAnUnsignedSetupThatWouldBeRelayedIsAuthenticationFailed() throws {
        var e = engine()
        let out = arrive(&e, setup(flow()), from: host, to: server, signedBy: .some(nil))
        let reject = try XCTUnwrap(out.reply?.message)
        XCTAssertEqual(reject.result, .authenticationFailed)
        XCTAssertEqual(reject.reason?.text, "relaying needs a signed SETUP")
        XCTAssertEqual(e.counters.relayOffersRefused, 1)
        XCTAssertEqual(e.counters.authenticationFailures, 1)
        // So is one that asks for a relay on request.
        var asking = engine { $0.relay.onRequest = true }
        let wanted = setup(flow(port: 22), actions: [.admit, .wantRelay])
        XCTAssertEqual(arrive(&asking, wanted, from: host, to: server, signedBy: .some(nil)).reply?.message.reason?.text, "relaying needs a signed SETUP")
    }

    func testTheRulesSignatureRequirementHoldsForOffersToo() throws {
        var e = engine {
            $0.rules[0].signatures = .knownKeys
            $0.trust.knownKeys = [KnownKey(name: "other", key: SigningKey().publicKey)]
        }
        XCTAssertEqual(arrive(&e, setup(flow())).reply?.message.result, .authenticationFailed)
        XCTAssertEqual(e.counters.relayOffers, 0)
    }

    func testTheOfferNamesTheFirstEndpointOfTheFlowsFamily() throws {
        var e = engine()
        let flow6 = flow(from: host6, to: server6)
        let out = arrive(&e, setup(flow6), from: host6, to: server6)
        XCTAssertEqual(out.reply?.message.relayingRecord?.relayEndpoint?.endpoint, relay6)
        var v4only = engine { $0.relay.listen = [self.relay4] }
        let refused = try XCTUnwrap(arrive(&v4only, setup(flow6), from: host6, to: server6).reply?.message)
        XCTAssertEqual(refused.result, .policyDenied)
        XCTAssertTrue(refused.reason?.text.contains("no IPv6 relay endpoint") ?? false, refused.reason?.text ?? "")
    }

    func testIncomingPinholesForRelayedFlowsAreRefused() throws {
        var e = engine {
            $0.rules.insert(PolicyRule(name: "no-pinholes", proto: .tcp, incoming: true, action: .relay), at: 0)
        }
        let pinhole = FlowTuple(proto: .tcp, source: IPAddress("0.0.0.0")!, sourcePort: 0, destination: host.address, destinationPort: 8080)
        let out = arrive(&e, setup(pinhole, actions: [.admit, .listen, .allowRelay]), from: host, to: nil, signedBy: .some(hostKey))
        XCTAssertEqual(out.reply?.message.result, .policyDenied)
        XCTAssertTrue(e.sessions.isEmpty)
    }

    func testAReloadThatRelaysADirectFlowRevokesItsSession() throws {
        var e = engine { $0.rules = [] }
        _ = arrive(&e, setup(flow()))
        _ = arrive(&e, CSPMessage(type: .accept, sessionID: 0x0123_4567_89ab_cdef, nonce: 11, tlvs: [.lifetime(60)]), from: server, to: host, signedBy: .some(nil))
        XCTAssertEqual(e.sessions[id: 0x0123_4567_89ab_cdef]?.state, .admitted)
        let outcome = e.reload(configuration(), now: .seconds(1))
        XCTAssertEqual(outcome.revoked.map(\.why), ["rule 'outside-web' relays it"])
        XCTAssertTrue(e.sessions.isEmpty)
        XCTAssertEqual(MidcomConfiguration().restartOnlyChanges(to: configuration()), ["[relay] enabled", "[relay] listen"])
    }

    // MARK: the leg SETUP to our relay endpoint

    func leg(token: [UInt8]?, session: UInt64 = 0x0123_4567_89ab_cdef, nonce: UInt64 = 12, sequence: UInt32 = 2, to endpoint: CSPEndpoint? = nil)
        -> CSPMessage
    {
        let hop = FlowTuple(
            proto: .tcp, source: host.address, sourcePort: 50002, destination: (endpoint ?? relay4).address,
            destinationPort: (endpoint ?? relay4).port)
        return setup(hop, session: session, nonce: nonce, sequence: sequence, actions: [.admit], extra: token.map { [.relayToken($0)] } ?? [])
    }

    func offeredToken(_ e: inout GatewayEngine) throws -> [UInt8] {
        try XCTUnwrap(arrive(&e, setup(flow())).reply?.message.relayingRecord?.relayToken)
    }

    func testTheLegSetupWithTheOffersTokenIsAcceptedByUsAndInstallsNothing() throws {
        var e = engine()
        let token = try offeredToken(&e)
        let out = arrive(&e, leg(token: token), from: host, to: nil, at: 5, signedBy: .some(hostKey))
        let accept = try XCTUnwrap(out.reply?.message)
        XCTAssertEqual(accept.type, .accept)
        XCTAssertTrue(accept.flags.contains(.fromMiddlebox))
        XCTAssertEqual(accept.lifetime, 300, "the granted lifetime")
        XCTAssertEqual(accept.records.map(\.decision), [.admitted])
        XCTAssertEqual(accept.records.first?.middleboxID, identity.id)
        XCTAssertEqual(out.reply?.destination, host)
        XCTAssertNil(out.reply?.source, "from our own address: the SETUP was addressed to us")
        XCTAssertTrue(out.kernel.isEmpty)
        XCTAssertTrue(e.sessions.isEmpty)
        XCTAssertEqual(e.counters.relayLegsAnswered, 1)
    }

    func testTheLegSetupIsRefusedWithoutAValidTokenForThisSessionAndKey() throws {
        var e = engine()
        let token = try offeredToken(&e)
        // One a second: the REJECTs go to an unproved address, within the reply budget.
        var t = 1.0
        func refused(_ message: CSPMessage, by key: SigningKey?, at when: Double? = nil, file: StaticString = #filePath, line: UInt = #line) {
            t += 1
            let out = arrive(&e, message, from: host, to: nil, at: when ?? t, signedBy: .some(key))
            XCTAssertEqual(out.reply?.message.type, .reject, file: file, line: line)
            XCTAssertEqual(out.reply?.message.result, .policyDenied, "\(out.reply?.message.reason?.text ?? "")", file: file, line: line)
        }
        refused(leg(token: nil), by: hostKey)
        refused(leg(token: token, session: 0x99, nonce: 13), by: hostKey)  // another session
        refused(leg(token: token, nonce: 14, sequence: 3), by: SigningKey())  // another key
        refused(leg(token: token, nonce: 15, sequence: 4), by: nil)  // unsigned
        refused(leg(token: token, nonce: 16, sequence: 5, to: relay4b), by: hostKey)  // another relay endpoint
        var forged = token
        forged[23] ^= 1
        refused(leg(token: forged, nonce: 17, sequence: 6), by: hostKey)
        XCTAssertEqual(e.counters.relayLegsRefused, 6)
        XCTAssertEqual(arrive(&e, leg(token: token, nonce: 19, sequence: 8), from: host, to: nil, at: 30, signedBy: .some(hostKey)).reply?.message.type, .accept)
        // The offer expired before the host signaled its leg.
        var late = engine()
        let lateToken = try offeredToken(&late)
        let expired = arrive(&late, leg(token: lateToken), from: host, to: nil, at: 61, signedBy: .some(hostKey))
        XCTAssertEqual(expired.reply?.message.result, .policyDenied)
        // After a restart (same relay key, no offers remembered) the host must signal again.
        var restarted = engine()
        let out = arrive(&restarted, leg(token: token), from: host, to: nil, at: 2, signedBy: .some(hostKey))
        XCTAssertEqual(out.reply?.message.result, .policyDenied)
        XCTAssertTrue(out.reply?.message.reason?.text.contains("signal the flow again") ?? false)
    }

    /// The host keeps the hop's CSP session with us as its responder (docs/PROTOCOL.md 14.2,
    /// step 3): REFRESH, a repeated SETUP after the offer's token expired, TEARDOWN.
    func testTheLegsCSPSessionIsRefreshedAndEndedHere() throws {
        var e = engine()
        let token = try offeredToken(&e)
        XCTAssertEqual(arrive(&e, leg(token: token), from: host, to: nil, at: 1, signedBy: .some(hostKey)).reply?.message.type, .accept)
        let id: UInt64 = 0x0123_4567_89ab_cdef
        let refresh = CSPMessage(type: .refresh, sessionID: id, nonce: 30, sequence: 3, tlvs: [.lifetime(120)])
        let refreshed = try XCTUnwrap(arrive(&e, refresh, from: host, to: nil, at: 200, signedBy: .some(hostKey)).reply?.message)
        XCTAssertEqual(refreshed.type, .accept)
        XCTAssertEqual(refreshed.lifetime, 120)
        // Signed without IDENTITY: checked against the key of the leg.
        let lean = try CSPMessage(type: .refresh, sessionID: id, nonce: 31, sequence: 4, tlvs: [.lifetime(60)])
            .signed(by: hostKey, timestamp: wall + 250, includeIdentity: false)
        XCTAssertEqual(arrive(&e, lean, from: host, to: nil, at: 250, signedBy: .some(nil)).reply?.message.type, .accept)
        // Another key: not the leg's; an unknown session as before.
        let stranger = CSPMessage(type: .refresh, sessionID: id, nonce: 32, sequence: 5, tlvs: [.lifetime(60)])
        XCTAssertEqual(arrive(&e, stranger, from: host, to: nil, at: 251, signedBy: .some(SigningKey())).reply?.message.result, .unknownSession)
        // The SETUP again, long after the offer expired: the session has its leg here.
        XCTAssertEqual(arrive(&e, leg(token: token, nonce: 33, sequence: 6), from: host, to: nil, at: 260, signedBy: .some(hostKey)).reply?.message.type, .accept)
        let teardown = CSPMessage(type: .teardown, sessionID: id, nonce: 34, sequence: 7)
        let ended = try XCTUnwrap(arrive(&e, teardown, from: host, to: nil, at: 270, signedBy: .some(hostKey)).reply?.message)
        XCTAssertEqual(ended.type, .accept)
        XCTAssertEqual(ended.lifetime, 0)
        XCTAssertEqual(arrive(&e, leg(token: token, nonce: 35, sequence: 8), from: host, to: nil, at: 280, signedBy: .some(hostKey)).reply?.message.result, .policyDenied, "ended: a new offer is needed")
        XCTAssertTrue(e.sessions.isEmpty)
    }

    func testARelaysLegToTheNextRelayIsCheckedForItsHop() throws {
        var e = engine()
        let relayKey = SigningKey()
        let relayed = CSPTLV.relayedSession(CSPRelayedSession(sessionID: 0x5555, hopIndex: 2))
        let onward = setup(flow(), session: 0xfeed, actions: [.admit, .allowRelay], extra: [relayed])
        let token = try XCTUnwrap(arrive(&e, onward, from: host, to: server, signedBy: .some(relayKey)).reply?.message.relayingRecord?.relayToken)
        var hopSetup = leg(token: token, session: 0xfeed)
        hopSetup.tlvs.append(relayed)
        XCTAssertEqual(arrive(&e, hopSetup, from: host, to: nil, at: 1, signedBy: .some(relayKey)).reply?.message.type, .accept)
        var otherHop = leg(token: token, session: 0xfeed, nonce: 13, sequence: 3)
        otherHop.tlvs.append(.relayedSession(CSPRelayedSession(sessionID: 0x5555, hopIndex: 3)))
        XCTAssertEqual(arrive(&e, otherHop, from: host, to: nil, at: 1, signedBy: .some(relayKey)).reply?.message.result, .policyDenied)
    }

    /// docs/PROTOCOL.md 14.2: a middlebox nearer the host treats RELAY like REDIRECT.
    func testAMiddleboxNearerTheHostReleasesItsPendingStateOnRelay() throws {
        var near = engine { $0.rules = [] }
        _ = arrive(&near, setup(flow()))
        XCTAssertEqual(near.sessions[id: 0x0123_4567_89ab_cdef]?.state, .pending)
        var far = engine()
        let offer = try XCTUnwrap(arrive(&far, setup(flow())).reply?.message)
        let bytes = try offer.serialize()
        let request = try bytes.withUnsafeBytes {
            try SignalingRequest(parsing: $0, source: server, entry: .intercepted(destination: host), wallClock: wall)
        }
        let out = near.handle(request, now: .seconds(1))
        XCTAssertTrue(near.sessions.isEmpty, "pending state released")
        guard case .forwardRewritten(let forwarded) = out.verdict else { return XCTFail("\(out.verdict)") }
        let passed = try forwarded.withUnsafeBytes { try CSPMessage.parse($0) }
        XCTAssertEqual(passed.type, .relay)
        XCTAssertEqual(passed.records.map(\.decision), [.relayed, .forwarded], "our record after the relaying one (recordRoute)")
        XCTAssertEqual(passed.relayingRecord, offer.relayingRecord, "the offer itself passes unchanged")
    }

    func testOfferBookForgetsExpiredOffersAndStaysBounded() {
        var book = RelayOfferBook()
        let target = RelayOfferBook.Target(proto: 6, endpoint: relay4, expiry: 100)
        book.note([1], target: target, now: 40)
        book.note([2], target: RelayOfferBook.Target(proto: 6, endpoint: relay4, expiry: 130), now: 70)
        XCTAssertEqual(book.target(of: [1], now: 100), target)
        XCTAssertNil(book.target(of: [1], now: 101))
        XCTAssertEqual(book.count, 1)
        for i in 0..<(RelayOfferBook.capacity + 10) {
            book.note(withUnsafeBytes(of: UInt32(i)) { Array($0) }, target: RelayOfferBook.Target(proto: 6, endpoint: relay4, expiry: 200), now: 71)
        }
        XCTAssertEqual(book.count, RelayOfferBook.capacity)
        XCTAssertNil(book.target(of: [2], now: 72), "the oldest went first")
    }
}
