import CSPTrust
import CSPWire
import XCTest

@testable import MidcomCore

/// The off-path firewall of a mobile host (docs/PROTOCOL.md 10.9): a host of the site asks for
/// its flows from elsewhere; they are decided under its home address's policy and relayed.
final class OffPathTests: XCTestCase {
    let external = IPAddress("203.0.113.1")!
    let away = CSPEndpoint(address: IPAddress("192.0.2.50")!, port: 4001)
    let server = CSPEndpoint(address: IPAddress("198.51.100.2")!, port: 5000)
    let wall: UInt64 = 1_800_000_000
    let laptop = SigningKey()
    let stranger = SigningKey()

    func engine() -> GatewayEngine {
        var config = MidcomConfiguration()
        config.trust.challenge = .never
        config.nat = NATConfiguration(externalAddress: external, internalPrefixes: [IPPrefix("10.1.0.0/24")!], ports: 20000...20010)
        config.trust.knownKeys = [KnownKey(name: "laptop", key: laptop.publicKey, homeAddress: IPAddress("10.1.0.5")!)]
        // The rule names the home address: it must apply to the host wherever it is.
        config.rules = [
            PolicyRule(name: "no-25-from-home", source: IPPrefix("10.1.0.5/32")!, ports: 25...25, action: .reject, reason: "not from this host")
        ]
        return GatewayEngine(
            configuration: config, identity: MiddleboxIdentity(id: 7, epoch: 1, name: "fw"),
            challengeSecret: Array(repeating: 3, count: 32), startedAt: wall - 10)
    }

    func ask(_ e: inout GatewayEngine, port: UInt16 = 5000, key: SigningKey?, session: UInt64 = 1, sequence: UInt32 = 1) -> SignalingOutcome {
        var m = CSPMessage(
            type: .setup, flags: .recordRoute, sessionID: session, nonce: UInt64(sequence), sequence: sequence,
            tlvs: [
                .flow(FlowTuple(proto: .udp, source: away.address, sourcePort: away.port, destination: server.address, destinationPort: port)),
                .lifetime(60),
            ])
        if let key { m = try! m.signed(by: key, timestamp: wall) }
        let bytes = try! m.serialize()
        let request = bytes.withUnsafeBytes { try! SignalingRequest(parsing: $0, source: away, entry: .addressedToUs, wallClock: wall) }
        return e.handle(request, now: .seconds(0))
    }

    func testAMobileHostsFlowIsRelayedThroughTheFirewall() throws {
        var e = engine()
        let out = ask(&e, key: laptop)
        let reply = try XCTUnwrap(out.reply?.message)
        XCTAssertEqual(reply.type, .redirect)
        let relay = try XCTUnwrap(reply.redirectTarget)
        XCTAssertEqual(relay.address, external)
        let flow = FlowTuple(proto: .udp, source: away.address, sourcePort: away.port, destination: server.address, destinationPort: server.port)
        let changes = out.kernel.untagged
        XCTAssertTrue(changes.contains(admit(flow, lifetime: 60)), "\(changes)")
        XCTAssertTrue(changes.contains(.install(.destinationNAT(DestinationNAT(proto: .udp, external: IPv4Endpoint(relay)!, internal: IPv4Endpoint(server)!)), lifetime: 60, tag: nil)))
        XCTAssertTrue(changes.contains(.install(.sourceNAT(SourceNAT(proto: .udp, internal: IPv4Endpoint(away)!, external: IPv4Endpoint(relay)!)), lifetime: 60, tag: nil)))
        XCTAssertEqual(e.sessions[id: 1]?.actionName, "relay")
        XCTAssertEqual(e.sessions[id: 1]?.tag.kind, .relay)

        // The leg to the relay is answered (ACCEPT), nothing more installed.
        var leg = CSPMessage(
            type: .setup, sessionID: 1, nonce: 9, sequence: 2,
            tlvs: [.flow(FlowTuple(proto: .udp, source: away.address, sourcePort: away.port, destination: relay.address, destinationPort: relay.port))])
        leg = try leg.signed(by: laptop, timestamp: wall)
        let legBytes = try leg.serialize()
        let legRequest = legBytes.withUnsafeBytes { try! SignalingRequest(parsing: $0, source: away, entry: .addressedToUs, wallClock: wall) }
        let answered = e.handle(legRequest, now: .seconds(1))
        XCTAssertEqual(answered.reply?.message.type, .accept)
        XCTAssertTrue(answered.kernel.isEmpty)

        // Teardown gives the relay port back: the next relay may take it.
        let removed = e.discard(1)
        XCTAssertEqual(removed.count, 3)
        let again = ask(&e, key: laptop, session: 2)
        XCTAssertEqual(again.reply?.message.redirectTarget, relay)
    }

    func testTheHomeAddressesPolicyAppliesAway() {
        var e = engine()
        let out = ask(&e, port: 25, key: laptop)
        XCTAssertEqual(out.reply?.message.type, .reject)
        XCTAssertEqual(out.reply?.message.reason?.text, "not from this host")
        XCTAssertTrue(out.kernel.isEmpty)
    }

    func testOnlyTheSitesMobileHostsAreRelayed() {
        var e = engine()
        for key in [stranger, nil] as [SigningKey?] {
            let out = ask(&e, key: key)
            XCTAssertEqual(out.reply?.message.type, .reject)
            XCTAssertTrue(out.kernel.isEmpty)
        }
        XCTAssertEqual(e.sessions.count, 0)
    }

    func testARestartAdoptsTheRelay() throws {
        var e = engine()
        let out = ask(&e, key: laptop)
        let relay = try XCTUnwrap(out.reply?.message.redirectTarget)
        var restarted = engine()
        // Admissions first, then NAT elements, as the daemon feeds them.
        let installs = out.kernel.compactMap { change -> (KernelObject, ElementTag?)? in
            if case .install(let object, _, let tag) = change { return (object, tag) }
            return nil
        }.sorted { a, _ in if case .admission = a.0 { true } else { false } }
        for (object, tag) in installs { restarted.adopt(AdoptedElement(object: object, remaining: 50, tag: tag), now: .seconds(5)) }
        XCTAssertEqual(restarted.sessions[id: 1]?.relay, relay)
        XCTAssertEqual(Set(restarted.sessions[id: 1]!.kernelObjects), Set(e.sessions[id: 1]!.kernelObjects))
        // Its port is taken in the restarted engine too.
        let other = ask(&restarted, key: laptop, session: 3)
        XCTAssertNotEqual(other.reply?.message.redirectTarget, relay)
    }
}
