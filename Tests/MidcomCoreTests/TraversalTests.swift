import CSPTrust
import CSPWire
import XCTest

@testable import MidcomCore

/// Redirect, NAT traversal, pinholes requested from the middlebox, discovery.
final class TraversalTests: XCTestCase {
    let client = CSPEndpoint(address: IPAddress("10.0.1.2")!, port: 40000)
    let serverAgent = CSPEndpoint(address: IPAddress("198.51.100.2")!, port: 7227)
    let external = IPAddress("198.51.100.1")!
    let identity = MiddleboxIdentity(id: 7, epoch: 9, name: "nat1")

    func engine(_ configure: (inout MidcomConfiguration) -> Void = { _ in }) -> GatewayEngine {
        var config = MidcomConfiguration()
        // These tests are about what follows return routability (tested in TrustTests).
        config.trust.challenge = .never
        config.nat = NATConfiguration(externalAddress: external, internalPrefixes: [IPPrefix("10.0.0.0/8")!], ports: 20000...20001)
        configure(&config)
        return GatewayEngine(configuration: config, identity: identity)
    }

    func flow(_ proto: IPProtocol = .udp, sport: UInt16 = 4000, dport: UInt16 = 5000) -> FlowTuple {
        FlowTuple(proto: proto, source: client.address, sourcePort: sport, destination: serverAgent.address, destinationPort: dport)
    }

    func setup(_ flow: FlowTuple, session: UInt64 = 1, nonce: UInt64 = 2, action: CSPRequestedAction = [.admit, .allowRedirect]) -> [UInt8] {
        try! CSPMessage(type: .setup, flags: .recordRoute, sessionID: session, nonce: nonce,
                        tlvs: [.flow(flow), .lifetime(30), .requestedAction(action)]).serialize()
    }

    func intercept(_ e: inout GatewayEngine, _ bytes: [UInt8], from: CSPEndpoint, to: CSPEndpoint, at t: Double = 0) -> SignalingOutcome {
        bytes.withUnsafeBytes { e.handleSignaling(payload: $0, source: from, destination: to, now: .seconds(t)) }
    }

    func local(_ e: inout GatewayEngine, _ bytes: [UInt8], from: CSPEndpoint, at t: Double = 0) -> SignalingOutcome {
        bytes.withUnsafeBytes { e.handleLocalRequest(payload: $0, from: from, now: .seconds(t)) }
    }

    func testOutgoingNATRewritesFlowAndInstallsSNATOnAccept() throws {
        var e = engine()
        let out = intercept(&e, setup(flow()), from: client, to: serverAgent)
        guard case .forwardRewritten(let bytes) = out.verdict else { return XCTFail("SETUP not rewritten") }
        let forwarded = try CSPMessage.parse(bytes)
        XCTAssertEqual(forwarded.flow, flow(), "FLOW is never rewritten")
        XCTAssertEqual(forwarded.records.first?.decision, .forwarded)
        XCTAssertEqual(forwarded.records.first?.tlvs.last, .mappedAddress(CSPEndpoint(address: external, port: 4000)),
                       "the record tells upstream middleboxes the translation; the host's own port is kept when free")

        let accept = try CSPMessage(type: .accept, sessionID: 1, nonce: 2).serialize()
        let reply = intercept(&e, accept, from: serverAgent, to: client)
        let mapping = CSPEndpoint(address: external, port: 4000)
        let snat = SourceNAT(proto: .udp, internal: IPv4Endpoint(CSPEndpoint(address: client.address, port: 4000))!, external: IPv4Endpoint(mapping)!)
        XCTAssertEqual(reply.kernel.untagged, [admit(flow(), lifetime: 30), .install(.sourceNAT(snat), lifetime: 30, tag: nil)])
        XCTAssertEqual(reply.kernel.first, .install(.admission(flow()), lifetime: 30, tag: ElementTag(sessionID: 1, kind: .outgoing)),
                       "elements carry their session's tag")
        guard case .forwardRewritten(let back) = reply.verdict else { return XCTFail("ACCEPT not rewritten") }
        let record = try XCTUnwrap(CSPMessage.parse(back).records.first)
        XCTAssertTrue(record.tlvs.contains(.mappedAddress(mapping)))
        XCTAssertEqual(e.sessions[id: 1]?.actionName, "nat")
    }

    func testNATPortClashUsesTheRangeAndExhaustionRejects() throws {
        var e = engine()
        var other = CSPEndpoint(address: IPAddress("10.0.1.3")!, port: 40000)
        _ = intercept(&e, setup(flow()), from: client, to: serverAgent)
        var second = flow()
        second.source = other.address
        let out = intercept(&e, setup(second, session: 2), from: other, to: serverAgent)
        guard case .forwardRewritten(let bytes) = out.verdict else { return XCTFail() }
        XCTAssertEqual(try CSPMessage.parse(bytes).records.first?.tlvs.last, .mappedAddress(CSPEndpoint(address: external, port: 20000)))
        other.address = IPAddress("10.0.1.4")!
        second.source = other.address
        _ = intercept(&e, setup(second, session: 3), from: other, to: serverAgent)
        other.address = IPAddress("10.0.1.5")!
        second.source = other.address
        let exhausted = intercept(&e, setup(second, session: 4), from: other, to: serverAgent)
        XCTAssertEqual(exhausted.reply?.message.result, .resourcesExhausted)
        // Expiry gives ports back.
        _ = e.expire(now: .seconds(1000))
        let again = intercept(&e, setup(second, session: 5), from: other, to: serverAgent, at: 1000)
        guard case .forwardRewritten(let b2) = again.verdict else { return XCTFail() }
        XCTAssertEqual(try CSPMessage.parse(b2).records.first?.tlvs.last, .mappedAddress(CSPEndpoint(address: external, port: 4000)))
    }

    func testRedirectPreAdmitsTheProxyAndAnswersTheHost() throws {
        let proxy = CSPEndpoint(address: IPAddress("10.0.3.2")!, port: 3128)
        var e = engine { $0.rules = [PolicyRule(name: "web", proto: .tcp, ports: 80...80, action: .redirect, redirectTarget: proxy)] }
        let out = intercept(&e, setup(flow(.tcp, sport: 0, dport: 80)), from: client, to: serverAgent)
        XCTAssertEqual(out.verdict, .drop, "the SETUP does not reach the server")
        let proxyFlow = FlowTuple(proto: .tcp, source: client.address, sourcePort: 0, destination: proxy.address, destinationPort: 3128)
        XCTAssertEqual(out.kernel.untagged, [admit(proxyFlow, lifetime: 30)])
        XCTAssertEqual(out.reply?.message.type, .redirect)
        XCTAssertEqual(out.reply?.message.redirectTarget, proxy)
        XCTAssertEqual(e.sessions[id: 1]?.state, .redirected)
        XCTAssertEqual(e.delete(id: 1)?.1.untagged, [revoke(proxyFlow)])

        let refused = intercept(&e, setup(flow(.tcp, sport: 0, dport: 80), session: 2, action: .admit), from: client, to: serverAgent)
        XCTAssertEqual(refused.reply?.message.type, .reject, "a host that does not accept redirection is refused")
        XCTAssertEqual(refused.reply?.message.reason?.text, "flows of this kind must go through the proxy 10.0.3.2:3128")
    }

    func testPinholeFromAnyPeerThroughTheNAT() throws {
        var e = engine()
        let any = FlowTuple(proto: .udp, source: IPAddress(ipv4: 0), sourcePort: 0, destination: client.address, destinationPort: 6000)
        let out = local(&e, setup(any, action: [.admit, .listen]), from: client)
        let mapping = CSPEndpoint(address: external, port: 6000)
        let dnat = KernelObject.destinationNAT(DestinationNAT(
            proto: .udp, external: IPv4Endpoint(mapping)!, internal: IPv4Endpoint(CSPEndpoint(address: client.address, port: 6000))!))
        XCTAssertEqual(out.kernel.untagged, [admit(any, lifetime: 30), .install(dnat, lifetime: 30, tag: nil)])
        let reply = try XCTUnwrap(out.reply)
        XCTAssertEqual(reply.destination, client)
        XCTAssertEqual(reply.message.type, .accept)
        XCTAssertEqual(reply.message.mappedAddress, mapping)
        // Lifetime 0 in a REFRESH deletes everything the pinhole installed.
        let refresh = try CSPMessage(type: .refresh, sessionID: 1, nonce: 3, tlvs: [.lifetime(0)]).serialize()
        let removed = local(&e, refresh, from: client)
        XCTAssertEqual(removed.kernel.untagged, [revoke(any), .remove(dnat)])
        XCTAssertTrue(e.sessions.isEmpty)
    }

    func testLocalRequestsAreCheckedForOwnershipAndPolicy() throws {
        var e = engine { $0.nat = nil; $0.rules = [PolicyRule(name: "no-incoming", incoming: true, action: .reject, reason: "no servers here")] }
        let any = FlowTuple(proto: .tcp, source: IPAddress(ipv4: 0), sourcePort: 0, destination: client.address, destinationPort: 22)
        XCTAssertEqual(local(&e, setup(any, action: [.listen]), from: client).reply?.message.reason?.text, "no servers here")
        let stranger = CSPEndpoint(address: IPAddress("10.0.1.66")!, port: 1)
        XCTAssertEqual(local(&e, setup(any, action: [.listen]), from: stranger).reply?.message.result, .sourceDenied)
        XCTAssertEqual(local(&e, setup(flow()), from: client).reply?.message.result, .malformedMessage, "outgoing SETUPs go to the peer")
        XCTAssertTrue(e.sessions.isEmpty)
    }

    func testAnnounceIsLimitedPerSourceInAllAndBySize() {
        var e = engine()
        XCTAssertNotNil(e.announce(to: client, nonce: 1, triggerLength: 60, now: .seconds(1)))
        XCTAssertNil(e.announce(to: client, nonce: 2, triggerLength: 60, now: .seconds(1.5)), "one per source per second")
        let next = e.announce(to: client, nonce: 42, triggerLength: 60, now: .seconds(2))
        XCTAssertEqual(next?.message.type, .announce)
        XCTAssertEqual(next?.message.nonce, 42)
        XCTAssertEqual(next?.message.epoch, 9)
        XCTAssertTrue(next?.message.tlvs.contains(.middleboxName("nat1")) ?? false)

        var sent = 0
        for host in 0..<(GatewayEngine.announcesPerSecond + 5) {
            let source = CSPEndpoint(address: IPAddress(ipv4: 0x0a00_0000 + UInt32(host)), port: 7227)
            if e.announce(to: source, nonce: 1, triggerLength: 60, now: .seconds(3)) != nil { sent += 1 }
        }
        XCTAssertEqual(sent, GatewayEngine.announcesPerSecond, "budget for all sources")

        // A tiny trigger: the name goes first; below that nothing is sent (no amplification > 3x).
        let small = e.announce(to: serverAgent, nonce: 5, triggerLength: 30, now: .seconds(4))
        XCTAssertNotNil(small)
        XCTAssertFalse(small?.message.tlvs.contains(.middleboxName("nat1")) ?? true)
        XCTAssertNil(e.announce(to: client, nonce: 6, triggerLength: 20, now: .seconds(5)))
    }

    /// The unsolicited ANNOUNCE of our epoch (PROTOCOL.md 5.7.1): nonce and session 0, our record,
    /// signed with our key, the signature valid over what goes on the wire.
    func testEpochAnnouncementIsUnsolicitedAndSigned() throws {
        let key = SigningKey(seed: [UInt8](repeating: 0x21, count: 32))!
        let signing = GatewayEngine(configuration: MidcomConfiguration(), identity: MiddleboxIdentity(id: 7, epoch: 9, name: "nat1", key: key))
        let message = signing.epochAnnouncement()
        XCTAssertEqual(message.type, .announce)
        XCTAssertEqual(message.nonce, 0)
        XCTAssertEqual(message.sessionID, 0)
        XCTAssertTrue(message.flags.contains(.fromMiddlebox))
        XCTAssertEqual(message.records.map(\.middleboxID), [7])
        XCTAssertEqual(message.records.map(\.epoch), [9])
        let bytes = try message.serialize()
        let parsed = try CSPMessage.parse(bytes)
        XCTAssertEqual(SignatureCheck.check(bytes, message: parsed, checkRecords: true).records.map(\.status), [.valid(key.publicKey)])
        // Without a key: the same announcement, unsigned (it only informs).
        let plain = try engine().epochAnnouncement().serialize()
        XCTAssertEqual(SignatureCheck.check(plain, message: try CSPMessage.parse(plain), checkRecords: true).records.map(\.status), [.unsigned])
    }

    func testNATConfigurationErrors() {
        XCTAssertThrowsError(try MidcomConfiguration(path: "c", text: "[nat]\ninternal = \"10.0.0.0/8\"\n")) { error in
            XCTAssertTrue("\(error)".contains("needs external-address"), "\(error)")
        }
        XCTAssertThrowsError(try MidcomConfiguration(path: "c", text: "[nat]\nexternal-address = \"2001:db8::1\"\n")) { error in
            XCTAssertTrue("\(error)".contains("c:2:"), "\(error)")
        }
        let ok = try? MidcomConfiguration(path: "c", text: "[nat]\nexternal-address = \"198.51.100.1\"\nport-range = \"30000-30010\"\n")
        XCTAssertEqual(ok?.nat?.ports, 30000...30010)
    }
}
