import CSPTrust
import CSPWire
import XCTest

@testable import MidcomCore

/// What a NAT in front of a hidden server does (docs/PROTOCOL.md 10.7): it maps the port of a
/// listen SETUP that leaves for a rendezvous, passes relayed SETUPs untouched, answers a client's
/// SETUP to the mapping in the server's name, and proves itself when that answer is challenged.
final class RendezvousEngineTests: XCTestCase {
    let external = IPAddress("203.0.113.1")!
    let server = CSPEndpoint(address: IPAddress("10.1.0.5")!, port: 7227)
    let rendezvous = CSPEndpoint(address: IPAddress("198.51.100.7")!, port: 7227)
    let client = CSPEndpoint(address: IPAddress("192.0.2.9")!, port: 40000)
    let wall: UInt64 = 1_800_000_000
    let serverKey = SigningKey()

    func engine() -> GatewayEngine {
        var config = MidcomConfiguration()
        config.trust.challenge = .never
        config.nat = NATConfiguration(externalAddress: external, internalPrefixes: [IPPrefix("10.0.0.0/8")!], ports: 20000...20010)
        return GatewayEngine(
            configuration: config, identity: MiddleboxIdentity(id: 7, epoch: 1, name: "nat"),
            challengeSecret: Array(repeating: 3, count: 32), startedAt: wall - 10)
    }

    func arrive(
        _ e: inout GatewayEngine, _ m: CSPMessage, from: CSPEndpoint, to: CSPEndpoint?, signedBy key: SigningKey? = nil,
        insideConntrack: Bool = false
    ) -> SignalingOutcome {
        var m = m
        if let key { m = try! m.signed(by: key, timestamp: wall) }
        let bytes = try! m.serialize()
        var request = bytes.withUnsafeBytes {
            try! SignalingRequest(
                parsing: $0, source: from, entry: to.map { .intercepted(destination: $0) } ?? .addressedToUs, wallClock: wall)
        }
        request.insideConntrack = insideConntrack
        return e.handle(request, now: .seconds(0))
    }

    var listenFlow: FlowTuple {
        FlowTuple(proto: .udp, source: IPAddress(ipv4: 0), sourcePort: 0, destination: server.address, destinationPort: 5004)
    }

    /// The server's registration passes us on its way to the rendezvous, which ACCEPTs.
    func registered(_ e: inout GatewayEngine) -> CSPEndpoint? {
        let setup = CSPMessage(
            type: .setup, flags: .recordRoute, sessionID: 0x5e, nonce: 1, sequence: 1,
            tlvs: [.flow(listenFlow), .lifetime(60), .requestedAction([.admit, .listen, .wantMapping])])
        let out = arrive(&e, setup, from: server, to: rendezvous, signedBy: serverKey)
        guard case .forwardRewritten(let bytes) = out.verdict else {
            XCTFail("registration not forwarded: \(out)")
            return nil
        }
        let mapped = try! CSPMessage.parse(bytes).records.last?.tlvs.lazy.compactMap {
            if case .mappedAddress(let m) = $0 { m } else { nil }
        }.first
        _ = arrive(&e, CSPMessage(type: .accept, sessionID: 0x5e, nonce: 1, sequence: 1, tlvs: [.lifetime(60)]), from: rendezvous, to: server)
        XCTAssertEqual(e.sessions[id: 0x5e]?.state, .admitted)
        return mapped
    }

    func testAListenSetupLeavingForARendezvousIsMappedAndTheMappingFollowsARebind() throws {
        var e = engine()
        let mapped = try XCTUnwrap(registered(&e), "the forwarded registration carries our MAPPED-ADDRESS")
        XCTAssertEqual(mapped, CSPEndpoint(address: external, port: 5004))
        XCTAssertEqual(e.sessions[id: 0x5e]?.mapping, mapped)

        // The server moves inside; its REBIND keeps the public port.
        let moved = CSPEndpoint(address: IPAddress("10.1.0.6")!, port: 5004)
        let rebind = CSPMessage(
            type: .rebind, flags: .recordRoute, sessionID: 0x5e, nonce: 2, sequence: 2,
            tlvs: [.flow(listenFlow), .newAddress(moved), .requestedAction([.admit, .listen, .wantMapping])])
        let out = arrive(&e, rebind, from: CSPEndpoint(address: moved.address, port: 7227), to: rendezvous, signedBy: serverKey)
        guard case .forwardRewritten = out.verdict else { return XCTFail("REBIND not forwarded: \(out)") }
        _ = arrive(&e, CSPMessage(type: .accept, sessionID: 0x5e, nonce: 2, sequence: 2, tlvs: [.lifetime(60)]), from: rendezvous, to: moved)
        XCTAssertEqual(e.sessions[id: 0x5e]?.flow.destination, moved.address)
        XCTAssertEqual(e.sessions[id: 0x5e]?.mapping, mapped, "the mapping follows the server")
    }

    func testAListenSetupBetweenInsideHostsIsNotMapped() {
        var e = engine()
        let setup = CSPMessage(
            type: .setup, flags: .recordRoute, sessionID: 0x5f, nonce: 1, sequence: 1,
            tlvs: [.flow(listenFlow), .lifetime(60), .requestedAction([.admit, .listen])])
        _ = arrive(&e, setup, from: server, to: CSPEndpoint(address: IPAddress("10.2.0.9")!, port: 7227), signedBy: serverKey)
        XCTAssertNil(e.sessions[id: 0x5f]?.pending?.mapping)
    }

    func testARelayedSetupPassesUntouchedAndInstallsNothing() throws {
        var e = engine()
        _ = registered(&e)
        var setup = CSPMessage(
            type: .setup, flags: .recordRoute, sessionID: 0xc1, nonce: 9, sequence: 1,
            tlvs: [.flow(FlowTuple(proto: .udp, source: client.address, sourcePort: 40000, destination: rendezvous.address, destinationPort: 5004))])
        setup.tlvs.append(.middleboxRecord(CSPMiddleboxRecord(middleboxID: 99, epoch: 1, decision: .rendezvous, grantedLifetime: 0, tlvs: [.hostAddress(client)])))
        let out = arrive(&e, setup, from: rendezvous, to: server, insideConntrack: true)
        guard case .forward = out.verdict else { return XCTFail("\(out.verdict)") }
        XCTAssertNil(e.sessions[id: 0xc1])
        XCTAssertTrue(out.kernel.isEmpty)
        XCTAssertNil(out.reply)
        // The same record on a SETUP that did not come inside a registration's conntrack entry
        // earns nothing: it is judged like any SETUP (pending state, bounded like any other).
        _ = arrive(&e, setup, from: client, to: server)
        XCTAssertEqual(e.sessions[id: 0xc1]?.state, .pending)
    }

    func testAClientsSetupToTheMappingIsAnsweredForTheServerAndItsChallengeIsAnswered() throws {
        var e = engine()
        let mapped = try XCTUnwrap(registered(&e))
        let setup = CSPMessage(
            type: .setup, flags: .recordRoute, sessionID: 0xc2, nonce: 5, sequence: 1,
            tlvs: [
                .flow(FlowTuple(proto: .udp, source: client.address, sourcePort: 40000, destination: mapped.address, destinationPort: mapped.port)),
                .lifetime(30),
            ])
        let out = arrive(&e, setup, from: client, to: nil)
        let reply = try XCTUnwrap(out.reply)
        XCTAssertEqual(reply.message.type, .accept)
        XCTAssertTrue(reply.message.flags.contains(.fromMiddlebox))
        XCTAssertEqual(reply.message.lifetime, 30)
        XCTAssertTrue(out.kernel.isEmpty, "the pinhole is there already")
        XCTAssertNil(e.sessions[id: 0xc2])

        // Another port, or a flow the client does not own, is refused as before.
        var other = setup
        other.tlvs[0] = .flow(FlowTuple(proto: .udp, source: client.address, sourcePort: 40000, destination: external, destinationPort: 5999))
        XCTAssertEqual(arrive(&e, other, from: client, to: nil).reply?.message.type, .reject)
        var spoofed = setup
        spoofed.tlvs[0] = .flow(FlowTuple(proto: .udp, source: IPAddress("192.0.2.66")!, sourcePort: 1, destination: mapped.address, destinationPort: mapped.port))
        XCTAssertEqual(arrive(&e, spoofed, from: client, to: nil).reply?.message.result, .sourceDenied)

        // The client's firewall challenges our ACCEPT: we echo the token.
        let challenge = CSPMessage(
            type: .challenge, flags: .fromMiddlebox, result: .challengeRequired, sessionID: 0xc2, nonce: 5, sequence: 1,
            tlvs: [.challengeToken(Array(repeating: 7, count: 20))])
        let firewall = CSPEndpoint(address: IPAddress("192.0.2.1")!, port: 33000)
        let answered = arrive(&e, challenge, from: firewall, to: nil)
        XCTAssertEqual(answered.reply?.message.type, .response)
        XCTAssertEqual(answered.reply?.message.challengeToken, Array(repeating: 7, count: 20))
        XCTAssertEqual(answered.reply?.destination, firewall)
        // A flood of such CHALLENGEs to one address is held to the reply budget.
        var sent = 0
        for _ in 0..<50 where arrive(&e, challenge, from: firewall, to: nil).reply != nil { sent += 1 }
        XCTAssertLessThan(sent, 10)
    }
}
