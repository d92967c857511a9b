import CSPHost
import CSPTrust
import CSPWire
import XCTest

/// The rendezvous and a hidden server's registration, wired to each other in memory: what each
/// sends is handed to the other as the network would (docs/PROTOCOL.md 10.7).
final class RendezvousTests: XCTestCase {
    let rendezvousKey = SigningKey(seed: [UInt8](repeating: 0x03, count: 32))!
    let serverKey = SigningKey(seed: [UInt8](repeating: 0x04, count: 32))!
    let otherKey = SigningKey(seed: [UInt8](repeating: 0x05, count: 32))!
    let rendezvousEndpoint = CSPEndpoint(address: IPAddress("198.51.100.7")!, port: 7227)
    let agentEndpoint = CSPEndpoint(address: IPAddress("203.0.113.1")!, port: 40001)
    let client = CSPEndpoint(address: IPAddress("192.0.2.9")!, port: 50000)
    let wall: UInt64 = 1_800_000_000

    func makeRendezvous() -> Rendezvous {
        Rendezvous(key: rendezvousKey, epoch: 1, tokenSecret: [UInt8](repeating: 9, count: 32))
    }

    func makeServer(key: SigningKey? = nil, session: UInt64 = 0x5e) -> RendezvousRegistration {
        RendezvousRegistration(
            rendezvous: rendezvousEndpoint, proto: .udp, port: 5004, address: IPAddress("10.1.0.5")!, key: key ?? serverKey,
            lifetime: 60, rendezvousKey: nil, sessionID: session)
    }

    /// Runs the server's registration against the rendezvous until neither has anything to send.
    @discardableResult
    func register(_ server: inout RendezvousRegistration, at rendezvous: inout Rendezvous, from agent: CSPEndpoint) -> [String] {
        var events: [String] = []
        var toRendezvous = server.register(now: 0, wall: wall).map(\.bytes)
        for _ in 0..<10 where !toRendezvous.isEmpty {
            var next: [[UInt8]] = []
            for bytes in toRendezvous {
                let (outputs, event) = rendezvous.handle(bytes, from: agent, now: wall)
                if let event { events.append(event) }
                for output in outputs {
                    XCTAssertEqual(output.destination, agent)
                    let reply = try! CSPMessage.parse(output.bytes)
                    let (sends, event) = server.handle(reply, bytes: output.bytes, from: rendezvousEndpoint, now: 0, wall: wall)
                    if let event { events.append(event) }
                    next += sends.map(\.bytes)
                }
            }
            toRendezvous = next
        }
        return events
    }

    func clientSetup(nonce: UInt64 = 77) -> CSPMessage {
        CSPMessage(
            type: .setup, flags: .recordRoute, sessionID: 0xc1, nonce: nonce, sequence: 1,
            tlvs: [
                .flow(FlowTuple(proto: .udp, source: client.address, sourcePort: 50000, destination: rendezvousEndpoint.address, destinationPort: 5004)),
                .lifetime(30),
            ])
    }

    func testRegistrationNeedsAProvedAgentAndThenRelaysClientsBothWays() throws {
        var rendezvous = makeRendezvous()
        var server = makeServer()
        let events = register(&server, at: &rendezvous, from: agentEndpoint)
        XCTAssertTrue(events.contains { $0.hasPrefix("CHALLENGE") }, "the agent proves its endpoint first: \(events)")
        XCTAssertEqual(server.location, CSPEndpoint(address: IPAddress("10.1.0.5")!, port: 5004))
        XCTAssertEqual(server.rendezvousKey, rendezvousKey.publicKey)
        XCTAssertEqual(rendezvous.registrations[Rendezvous.Service(proto: .udp, port: 5004)]?.agent, agentEndpoint)

        // A client's SETUP goes to the agent with the rendezvous's signed record.
        let setup = try clientSetup().serialize()
        let (relayed, _) = rendezvous.handle(setup, from: client, now: wall)
        XCTAssertEqual(relayed.count, 1)
        XCTAssertEqual(relayed[0].destination, agentEndpoint)
        let relayedMessage = try CSPMessage.parse(relayed[0].bytes)
        XCTAssertEqual(relayedMessage.records.last?.decision, .rendezvous)
        XCTAssertTrue(relayedMessage.records.last!.tlvs.contains(.hostAddress(client)))

        // The server answers with a signed REDIRECT to where it is reached; it goes to the client.
        let redirect = try XCTUnwrap(server.answerRelayed(relayedMessage, bytes: relayed[0].bytes, from: rendezvousEndpoint, wall: wall))
        XCTAssertEqual(redirect.redirectTarget, server.location)
        XCTAssertEqual(SignatureCheck.check(try redirect.serialize(), message: redirect).status, .valid(serverKey.publicKey))
        let (back, _) = rendezvous.handle(try redirect.serialize(), from: agentEndpoint, now: wall)
        XCTAssertEqual(back.map(\.destination), [client])
        // Once only: a second copy finds nothing waiting.
        XCTAssertTrue(rendezvous.handle(try redirect.serialize(), from: agentEndpoint, now: wall).outputs.isEmpty)
    }

    func testAnswersFromAnyoneButTheAgentAreNotRelayed() throws {
        var rendezvous = makeRendezvous()
        var server = makeServer()
        register(&server, at: &rendezvous, from: agentEndpoint)
        let (relayed, _) = rendezvous.handle(try clientSetup().serialize(), from: client, now: wall)
        let relayedMessage = try CSPMessage.parse(relayed[0].bytes)
        let forged = CSPMessage(
            type: .redirect, sessionID: relayedMessage.sessionID, nonce: relayedMessage.nonce,
            tlvs: [.redirectTarget(CSPEndpoint(address: IPAddress("192.0.2.66")!, port: 1))])
        let attacker = CSPEndpoint(address: IPAddress("192.0.2.66")!, port: 7227)
        XCTAssertTrue(rendezvous.handle(try forged.serialize(), from: attacker, now: wall).outputs.isEmpty)
    }

    func testAnotherKeyCannotTakeARegisteredServiceNorMoveIt() throws {
        var rendezvous = makeRendezvous()
        var server = makeServer()
        register(&server, at: &rendezvous, from: agentEndpoint)
        var intruder = makeServer(key: otherKey, session: 0x66)
        let intruderAgent = CSPEndpoint(address: IPAddress("192.0.2.66")!, port: 7227)
        let events = register(&intruder, at: &rendezvous, from: intruderAgent)
        XCTAssertTrue(events.contains { $0.contains("registered by another server") }, "\(events)")
        XCTAssertNil(intruder.location)
        XCTAssertEqual(rendezvous.registrations[Rendezvous.Service(proto: .udp, port: 5004)]?.agent, agentEndpoint)
        // A REBIND of the server's registration signed by another key is refused.
        let rebind = try CSPMessage(
            type: .rebind, sessionID: 0x5e, nonce: 5, sequence: 9,
            tlvs: [
                .flow(FlowTuple(proto: .udp, source: IPAddress(ipv4: 0), sourcePort: 0, destination: IPAddress("10.1.0.5")!, destinationPort: 5004)),
                .newAddress(CSPEndpoint(address: IPAddress("192.0.2.66")!, port: 5004)),
            ]
        ).signed(by: otherKey, timestamp: wall)
        let (_, event) = rendezvous.handle(try rebind.serialize(), from: intruderAgent, now: wall)
        XCTAssertTrue(event?.contains("another key") ?? false, event ?? "")
        XCTAssertEqual(rendezvous.registrations[Rendezvous.Service(proto: .udp, port: 5004)]?.agent, agentEndpoint)
    }

    func testAReplayedRegistrationIsDropped() throws {
        var rendezvous = makeRendezvous()
        var server = makeServer()
        var captured: [UInt8] = []
        var toRendezvous = server.register(now: 0, wall: wall).map(\.bytes)
        for _ in 0..<5 where !toRendezvous.isEmpty {
            var next: [[UInt8]] = []
            for bytes in toRendezvous {
                if (try? CSPMessage.parse(bytes))?.type == .setup { captured = bytes }
                for output in rendezvous.handle(bytes, from: agentEndpoint, now: wall).outputs {
                    let reply = try CSPMessage.parse(output.bytes)
                    next += server.handle(reply, bytes: output.bytes, from: rendezvousEndpoint, now: 0, wall: wall).sends.map(\.bytes)
                }
            }
            toRendezvous = next
        }
        XCTAssertNotNil(server.location)
        let (outputs, event) = rendezvous.handle(captured, from: agentEndpoint, now: wall)
        XCTAssertTrue(outputs.isEmpty)
        XCTAssertTrue(event?.contains("replayed") ?? false, event ?? "")
        // Too old a TIMESTAMP is refused even for a new session.
        var late = makeServer(session: 0x77)
        let old = late.register(now: 0, wall: wall - 600)[0].bytes
        XCTAssertTrue(rendezvous.handle(old, from: agentEndpoint, now: wall).event?.contains("TIMESTAMP") ?? false)
    }

    func testTheServerIgnoresRelayedSetupsWithoutTheRendezvousSignature() throws {
        var rendezvous = makeRendezvous()
        var server = makeServer()
        register(&server, at: &rendezvous, from: agentEndpoint)
        var forged = clientSetup()
        let record = CSPMiddleboxRecord(
            middleboxID: otherKey.publicKey.fingerprint, epoch: 1, decision: .rendezvous, grantedLifetime: 0, tlvs: [.hostAddress(client)])
        forged.tlvs.append(.middleboxRecord(record.signed(by: otherKey, header: forged.headerForSigning)))
        XCTAssertNil(server.answerRelayed(forged, bytes: try forged.serialize(), from: rendezvousEndpoint, wall: wall))
        // Right signature, wrong sender address: ignored too (the agent answers only its rendezvous).
        let (relayed, _) = rendezvous.handle(try clientSetup().serialize(), from: client, now: wall)
        let genuine = try CSPMessage.parse(relayed[0].bytes)
        XCTAssertNil(server.answerRelayed(genuine, bytes: relayed[0].bytes, from: client, wall: wall))
        XCTAssertNotNil(server.answerRelayed(genuine, bytes: relayed[0].bytes, from: rendezvousEndpoint, wall: wall))
    }

    func testAServiceNobodyRegisteredIsRefused() throws {
        var rendezvous = makeRendezvous()
        let (outputs, event) = rendezvous.handle(try clientSetup().serialize(), from: client, now: wall)
        XCTAssertEqual(outputs.count, 1)
        XCTAssertEqual(try CSPMessage.parse(outputs[0].bytes).type, .reject)
        XCTAssertTrue(event?.contains("no server registered for udp/5004") ?? false, event ?? "")
    }
}
