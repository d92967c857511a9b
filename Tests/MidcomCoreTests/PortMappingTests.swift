import CSPWire
import XCTest

@testable import MidcomCore

/// NAT-PMP (RFC 6886) at the gateway: the codec, and mappings as sessions of the same table,
/// policy and kernel schema as CSP pinholes.
final class PortMappingTests: XCTestCase {
    let inside = IPAddress("192.168.1.2")!
    let external = IPAddress("203.0.113.1")!

    func engine(rules: [PolicyRule] = []) -> GatewayEngine {
        var config = MidcomConfiguration()
        config.nat = NATConfiguration(externalAddress: external, internalPrefixes: [IPPrefix("192.168.0.0/16")!], ports: 20000...20001)
        config.rules = rules
        return GatewayEngine(
            configuration: config, identity: MiddleboxIdentity(id: 7, epoch: 1, name: "nat"),
            challengeSecret: Array(repeating: 3, count: 32), startedAt: 1_800_000_000)
    }

    func map(_ e: inout GatewayEngine, from client: IPAddress? = nil, port: UInt16 = 5004, proto: IPProtocol = .udp, lifetime: UInt32 = 3600)
        -> PortMappingOutcome
    {
        e.handlePortMapping(
            PortMappingRequest(
                client: client ?? inside, proto: proto, internalPort: port, suggestedExternalPort: 0, lifetime: lifetime, origin: .natPMP),
            now: .seconds(0))
    }

    func testTheCodecReadsRequestsAndWritesResponses() throws {
        XCTAssertEqual(try NATPMP.parse([0, 0]), .externalAddress)
        XCTAssertEqual(
            try NATPMP.parse([0, 1, 0, 0, 0x13, 0x8c, 0x13, 0x8d, 0, 0, 0x0e, 0x10]),
            .map(proto: .udp, internalPort: 5004, suggestedExternalPort: 5005, lifetime: 3600))
        XCTAssertEqual(try NATPMP.parse([0, 2, 0, 0, 0, 80, 0, 0, 0, 0, 0, 0]), .map(proto: .tcp, internalPort: 80, suggestedExternalPort: 0, lifetime: 0))
        XCTAssertThrowsError(try NATPMP.parse([0])) { XCTAssertEqual($0 as? NATPMP.ParseError, .malformed) }
        XCTAssertThrowsError(try NATPMP.parse([0, 0, 0])) { XCTAssertEqual($0 as? NATPMP.ParseError, .malformed) }
        XCTAssertThrowsError(try NATPMP.parse([0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])) { XCTAssertEqual($0 as? NATPMP.ParseError, .malformed) }
        XCTAssertThrowsError(try NATPMP.parse([0, 128])) { XCTAssertEqual($0 as? NATPMP.ParseError, .malformed) }
        XCTAssertThrowsError(try NATPMP.parse([2, 1] + [UInt8](repeating: 0, count: 58))) {
            XCTAssertEqual($0 as? NATPMP.ParseError, .unsupportedVersion(opcode: 1))
        }
        XCTAssertThrowsError(try NATPMP.parse([0, 9])) { XCTAssertEqual($0 as? NATPMP.ParseError, .unsupportedOpcode(9)) }
        XCTAssertEqual(
            NATPMP.externalAddressResponse(.success, epoch: 70, address: external), [0, 128, 0, 0, 0, 0, 0, 70, 203, 0, 113, 1])
        XCTAssertEqual(
            NATPMP.mapResponse(.success, proto: .tcp, epoch: 1, internalPort: 80, externalPort: 20000, lifetime: 60),
            [0, 130, 0, 0, 0, 0, 0, 1, 0, 80, 0x4e, 0x20, 0, 0, 0, 60])
    }

    func testAMappingIsASessionWithADNATAndAPinhole() throws {
        var e = engine()
        let out = map(&e)
        XCTAssertEqual(out.result, .success)
        XCTAssertEqual(out.externalPort, 5004)
        let session = try XCTUnwrap(e.sessions.all.first)
        XCTAssertEqual(session.origin, .natPMP)
        XCTAssertTrue(session.incoming)
        XCTAssertEqual(session.mapping, CSPEndpoint(address: external, port: 5004))
        let pinhole = FlowTuple(proto: .udp, source: IPAddress(ipv4: 0), sourcePort: 0, destination: inside, destinationPort: 5004)
        XCTAssertTrue(out.kernel.untagged.contains(admit(pinhole, lifetime: out.lifetime)))
        XCTAssertTrue(out.kernel.contains { if case .install(.destinationNAT, _, _) = $0 { true } else { false } })
        // Renewal keeps the external port; lifetime 0 deletes.
        XCTAssertEqual(map(&e).externalPort, 5004)
        let deleted = map(&e, lifetime: 0)
        XCTAssertEqual(deleted.result, .success)
        XCTAssertEqual(deleted.externalPort, 0)
        XCTAssertTrue(deleted.kernel.contains(.remove(.admission(pinhole))))
        XCTAssertEqual(e.sessions.count, 0)
    }

    func testOnlyInsideClientsPolicyAndResourcesApply() {
        var e = engine(rules: [PolicyRule(name: "no-telnet", proto: .tcp, ports: 23...23, incoming: true, action: .reject, reason: "no")])
        XCTAssertEqual(map(&e, from: IPAddress("198.51.100.9")!).result, .notAuthorized, "outside")
        XCTAssertEqual(map(&e, port: 23, proto: .tcp).result, .notAuthorized, "policy")
        // Two ports in the range: the host's own port is taken by another host twice over.
        XCTAssertEqual(map(&e, from: IPAddress("192.168.1.3")!, port: 7000).externalPort, 7000)
        XCTAssertEqual(map(&e, from: IPAddress("192.168.1.4")!, port: 7000).externalPort, 20000)
        XCTAssertEqual(map(&e, from: IPAddress("192.168.1.5")!, port: 7000).externalPort, 20001)
        XCTAssertEqual(map(&e, from: IPAddress("192.168.1.6")!, port: 7000).result, .outOfResources)
        XCTAssertEqual(e.sessions.count, 3)
    }

    func testACSPSessionIsNotTakenOverByNATPMP() {
        var e = engine()
        let pinhole = FlowTuple(proto: .udp, source: IPAddress(ipv4: 0), sourcePort: 0, destination: inside, destinationPort: 5004)
        var csp = Session(id: 9, flow: pinhole, state: .admitted, createdAt: .seconds(0), expiresAt: .seconds(60), grantedLifetime: 60, incoming: true)
        csp.mapping = CSPEndpoint(address: external, port: 5004)
        e.sessions.upsert(csp)
        XCTAssertEqual(map(&e, lifetime: 0).result, .notAuthorized)
        XCTAssertNotNil(e.sessions[id: 9])
    }
}
