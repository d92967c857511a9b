import CSPTrust
import CSPWire
import XCTest

@testable import CSPSession

final class HopHandshakeTests: XCTestCase {
    let host = SessionIdentity(signingKey: SigningKey(seed: [UInt8](repeating: 1, count: 32))!)
    let relayKey = SigningKey(seed: [UInt8](repeating: 3, count: 32))!
    lazy var relay = SessionIdentity(signingKey: relayKey)
    let open = HopOpen(
        hop: HopDescriptor(sessionID: 42, hopIndex: 1), target: TargetEndpoint(endpoint: CSPEndpoint(address: IPAddress(ipv4: 0xC633_6414), port: 9000)),
        relayToken: [UInt8](repeating: 9, count: 24), endToEnd: EndToEndPart(kind: .handshake1, data: [1, 2, 3]))

    private func frame(_ bytes: [UInt8]) throws -> HopFrame {
        guard case .complete(let frame, let consumed) = try HopFrame.parse(bytes), consumed == bytes.count else {
            throw HopHandshakeError.protocolViolation("incomplete")
        }
        return frame
    }

    func testBothEndsLearnTheOthersKeyAndTheOpenArrivesIntact() throws {
        var upstream = HopHandshakeUpstream(identity: host, expectedDownstream: relayKey.publicKey, open: open)
        var downstream = HopHandshakeDownstream(identity: relay)
        let reply = try downstream.reply(to: try frame(try upstream.hello()))
        let openFrame = try upstream.open(after: try frame(reply))
        let (key, received) = try downstream.read(open: try frame(openFrame))
        XCTAssertEqual(key, host.ed25519PublicKey)
        XCTAssertEqual(received, open)
        XCTAssertEqual(upstream.downstreamKey, relayKey.publicKey)
        let accepted = try upstream.answer(
            try frame(try downstream.accept(HopAccept(endToEnd: EndToEndPart(kind: .handshake2, data: [4]), chain: [ChainEntry(hopIndex: 1, middleboxID: 7)]))))
        XCTAssertEqual(accepted.chain, [ChainEntry(hopIndex: 1, middleboxID: 7)])
        XCTAssertEqual(accepted.endToEnd.data, [4])
        // Sealed hops continue with the split ciphers: D→U's nonce 0 was ACCEPT's.
        var send = try XCTUnwrap(upstream.sealing?.send)
        var receive = try XCTUnwrap(downstream.sealing?.receive)
        XCTAssertEqual(try receive.decryptWithAd([], ciphertext: try send.encryptWithAd([], plaintext: [9, 9])), [9, 9])
    }

    func testARelayWithAnotherKeyThanTheOffersIsRefused() throws {
        let impostor = SessionIdentity(signingKey: SigningKey(seed: [UInt8](repeating: 4, count: 32))!)
        var upstream = HopHandshakeUpstream(identity: host, expectedDownstream: relayKey.publicKey, open: open)
        var downstream = HopHandshakeDownstream(identity: impostor)
        let reply = try downstream.reply(to: try frame(try upstream.hello()))
        XCTAssertThrowsError(try upstream.open(after: try frame(reply))) { error in
            guard case HopHandshakeError.identity = error else { return XCTFail("\(error)") }
        }
    }

    func testATamperedOpenOrAnswerEndsTheHop() throws {
        var upstream = HopHandshakeUpstream(identity: host, expectedDownstream: nil, open: open)
        var downstream = HopHandshakeDownstream(identity: relay)
        let reply = try downstream.reply(to: try frame(try upstream.hello()))
        var openFrame = try upstream.open(after: try frame(reply))
        openFrame[40] ^= 0x80
        XCTAssertThrowsError(try downstream.read(open: try frame(openFrame)))
    }

    func testARefusalAfterOpenIsAuthenticatedAndNamesTheHop() throws {
        var upstream = HopHandshakeUpstream(identity: host, expectedDownstream: nil, open: open)
        var downstream = HopHandshakeDownstream(identity: relay)
        let reply = try downstream.reply(to: try frame(try upstream.hello()))
        _ = try downstream.read(open: try frame(try upstream.open(after: try frame(reply))))
        let refusal = downstream.refuse(HopRefuse(result: .resourcesExhausted, reason: CSPReason(retryAfter: 30, text: "16 relayed sessions for key"), hop: open.hop))
        XCTAssertThrowsError(try upstream.answer(try frame(refusal))) { error in
            guard case HopHandshakeError.refused(let refuse) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(refuse.result, .resourcesExhausted)
            XCTAssertEqual(refuse.reason?.retryAfter, 30)
        }
    }
}
