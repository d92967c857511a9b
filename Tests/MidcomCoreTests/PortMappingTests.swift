import CSPTrust
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

    func testASignedCSPSessionIsNotTakenOverButAnUnsignedOneOfTheSameHostIs() {
        var e = engine()
        let pinhole = FlowTuple(proto: .udp, source: IPAddress(ipv4: 0), sourcePort: 0, destination: inside, destinationPort: 5004)
        var csp = Session(id: 9, flow: pinhole, state: .admitted, createdAt: .seconds(0), expiresAt: .seconds(60), grantedLifetime: 60, incoming: true)
        csp.mapping = CSPEndpoint(address: external, port: 5004)
        csp.ownerKey = SigningKey().publicKey
        e.sessions.upsert(csp)
        XCTAssertEqual(map(&e, lifetime: 0).result, .notAuthorized, "a signed session belongs to its key")
        XCTAssertNotNil(e.sessions[id: 9])
        // Without a key (an unsigned pinhole, or a mapping a restarted midcomd adopted from the
        // kernel) the client's own address owns its own port: its re-mapping claims it.
        csp.ownerKey = nil
        e.sessions.upsert(csp)
        let claimed = map(&e)
        XCTAssertEqual(claimed.result, .success)
        XCTAssertEqual(claimed.externalPort, 5004)
        XCTAssertEqual(e.sessions[id: 9]?.origin, .natPMP)
    }

    // MARK: PCP (RFC 6887)

    let nonce: [UInt8] = Array(1...12)

    func pcpMap(
        opcode: UInt8 = 1, lifetime: UInt32 = 3600, client: IPAddress? = nil, proto: UInt8 = 17, port: UInt16 = 5004,
        suggested: UInt16 = 0, peer: CSPEndpoint? = nil, options: [UInt8] = []
    ) -> [UInt8] {
        var b: [UInt8] = [2, opcode, 0, 0] + NATPMP.bigEndian(lifetime) + PCP.mapped(client ?? inside)
        b += nonce + [proto, 0, 0, 0] + NATPMP.bigEndian16(port) + NATPMP.bigEndian16(suggested) + PCP.mapped(IPAddress(ipv4: 0))
        if let peer { b += NATPMP.bigEndian16(peer.port) + [0, 0] + PCP.mapped(peer.address) }
        return b + options
    }

    func testThePCPCodec() throws {
        let request = try PCP.parse(pcpMap(suggested: 6000))
        XCTAssertEqual(request.opcode, .map)
        XCTAssertEqual(request.requestedLifetime, 3600)
        XCTAssertEqual(request.clientAddress, inside)
        XCTAssertEqual(request.mapping?.internalPort, 5004)
        XCTAssertEqual(request.mapping?.suggestedExternalPort, 6000)
        XCTAssertEqual(request.mapping?.nonce, PCP.Nonce(high: 0x0102_0304_0506_0708, low: 0x090a_0b0c))
        XCTAssertTrue(request.mapping!.suggestedExternalAddress.isUnspecified)
        let peer = CSPEndpoint(address: IPAddress("198.51.100.7")!, port: 443)
        XCTAssertEqual(try PCP.parse(pcpMap(opcode: 2, proto: 6, peer: peer)).mapping?.peer, peer)
        XCTAssertTrue(try PCP.parse(pcpMap(options: [2, 0, 0, 0])).options.preferFailure)
        XCTAssertTrue(try PCP.parse(pcpMap(options: [1, 0, 0, 16] + [UInt8](repeating: 0, count: 16))).options.thirdParty)
        XCTAssertEqual(try PCP.parse(pcpMap(options: [3, 0, 0, 20] + [UInt8](repeating: 0, count: 20))).options.unsupported, 3)
        XCTAssertNil(try PCP.parse(pcpMap(options: [200, 0, 0, 4, 1, 2, 3, 4])).options.unsupported, "optional options are ignored")
        func fails(_ bytes: [UInt8], _ expected: PCP.ParseError, line: UInt = #line) {
            XCTAssertThrowsError(try PCP.parse(bytes), line: line) { XCTAssertEqual($0 as? PCP.ParseError, expected, line: line) }
        }
        fails([2, 1], .dropped)
        fails([2, 0x81, 0, 0] + [UInt8](repeating: 0, count: 20), .dropped)
        fails([UInt8](repeating: 0, count: 1101), .dropped)
        fails([1, 1, 0, 0] + [UInt8](repeating: 0, count: 56), .answer(.unsupportedVersion, opcode: 1))
        fails(Array(pcpMap().prefix(40)), .answer(.malformedRequest, opcode: 1))
        fails(pcpMap() + [0, 0], .answer(.malformedRequest, opcode: 1))
        fails([2, 9, 0, 0] + [UInt8](repeating: 0, count: 20), .answer(.unsupportedOpcode, opcode: 9))
        fails(pcpMap(options: [2, 0, 0, 8, 0, 0, 0, 0]), .answer(.malformedOption, opcode: 1))
        fails(pcpMap(options: [1, 0, 0, 16]), .answer(.malformedOption, opcode: 1))
        // A response echoes the request's fields with what was assigned.
        let m = try XCTUnwrap(request.mapping)
        let response = PCP.response(opcode: 1, result: .success, lifetime: 60, epoch: 7, mapping: m, externalPort: 20000, externalAddress: external)
        XCTAssertEqual(response.count, 60)
        XCTAssertEqual(Array(response[0..<12]), [2, 0x81, 0, 0, 0, 0, 0, 60, 0, 0, 0, 7])
        XCTAssertEqual(Array(response[24..<36]), nonce)
        XCTAssertEqual(Array(response[42..<44]), [0x4e, 0x20])
        XCTAssertEqual(Array(response[44..<60]), PCP.mapped(external))
        XCTAssertEqual(PCP.response(opcode: 0, result: .success, lifetime: 0, epoch: 1, mapping: nil).count, 24)
    }

    func pcp(
        _ e: inout GatewayEngine, nonce: PCP.Nonce = PCP.Nonce(high: 1, low: 2), lifetime: UInt32 = 600, suggested: UInt16 = 0,
        preferFailure: Bool = false, peer: CSPEndpoint? = nil, port: UInt16 = 5004
    ) -> PortMappingOutcome {
        var request = PortMappingRequest(
            client: inside, proto: .udp, internalPort: port, suggestedExternalPort: suggested, lifetime: lifetime, origin: .pcp,
            nonce: nonce, peer: peer)
        request.preferFailure = preferFailure
        return e.handlePortMapping(request, now: .seconds(0))
    }

    func testAPCPMappingBelongsToItsNonce() {
        var e = engine()
        XCTAssertEqual(pcp(&e).result, .success)
        XCTAssertEqual(e.sessions.all.first?.origin, .pcp)
        XCTAssertEqual(pcp(&e).externalPort, 5004, "renewal with the same nonce")
        let thief = PCP.Nonce(high: 9, low: 9)
        XCTAssertEqual(pcp(&e, nonce: thief).result, .notAuthorized, "another nonce may not renew it")
        XCTAssertEqual(pcp(&e, nonce: thief, lifetime: 0).result, .notAuthorized, "nor delete it")
        XCTAssertEqual(map(&e, lifetime: 0).result, .notAuthorized, "nor may NAT-PMP, which has no nonce")
        XCTAssertEqual(e.sessions.count, 1)
        XCTAssertEqual(pcp(&e, lifetime: 0).result, .success)
        XCTAssertEqual(e.sessions.count, 0)
    }

    func testPreferFailureAndPeer() throws {
        var e = engine()
        XCTAssertEqual(map(&e, from: IPAddress("192.168.1.9")!, port: 6000).externalPort, 6000)
        XCTAssertEqual(pcp(&e, suggested: 6000, preferFailure: true).result, .cannotProvideExternal, "6000 is taken")
        XCTAssertEqual(e.sessions.count, 1, "nothing reserved for the refused request")
        let other = pcp(&e, suggested: 6000)
        XCTAssertEqual(other.result, .success, "without PREFER_FAILURE another port")
        XCTAssertTrue((20000...20001).contains(other.externalPort), "\(other.externalPort)")
        // PEER: an outgoing flow from the client's port to its peer, translated (SNAT) and admitted.
        let peer = CSPEndpoint(address: IPAddress("198.51.100.7")!, port: 443)
        let out = pcp(&e, nonce: PCP.Nonce(high: 5, low: 5), peer: peer, port: 7000)
        XCTAssertEqual(out.result, .success)
        let flow = FlowTuple(proto: .udp, source: inside, sourcePort: 7000, destination: peer.address, destinationPort: 443)
        let session = try XCTUnwrap(e.sessions.session(for: flow))
        XCTAssertFalse(session.incoming)
        XCTAssertEqual(session.mapping?.port, out.externalPort)
        XCTAssertTrue(out.kernel.untagged.contains(admit(flow, lifetime: out.lifetime)))
        XCTAssertTrue(out.kernel.contains { if case .install(.sourceNAT, _, _) = $0 { true } else { false } })
    }
}
