import CSPTrust
import XCTest

@testable import CSPSession

/// The end-to-end layer between two in-memory ends: what one end outputs is what the other
/// receives (the relays between them carry these octets unchanged), except where a test plays the
/// hostile relay or breaks the hop.
final class EndToEndSessionTests: XCTestCase {
    let target: [UInt8] = [6, 4, 198, 51, 100, 20, 0x23, 0x28]
    let sessionID: UInt64 = 0x0123_4567_89ab_cdef
    let hostKey = SigningKey(seed: [UInt8](repeating: 1, count: 32))!
    let serverKey = SigningKey(seed: [UInt8](repeating: 2, count: 32))!
    let start = ContinuousClock.now

    private func handshake(limits: EndToEndSession.Limits = .init()) throws -> (EndToEndSession, EndToEndSession) {
        var host = EndToEndSession(
            role: .initiator, sessionID: sessionID, target: target, identity: SessionIdentity(signingKey: hostKey), now: start, limits: limits)
        var server = EndToEndSession(
            role: .responder, sessionID: sessionID, target: target, identity: SessionIdentity(signingKey: serverKey), now: start, limits: limits)
        let first = try host.firstMessage()
        let second = try server.answer(firstMessage: first)
        XCTAssertEqual(try host.finish(secondMessage: second, now: start), serverKey.publicKey, "the host learns the server's key")
        XCTAssertEqual(server.phase, .handshaking, "the server is established only after message 3")
        deliver(&host, to: &server)
        XCTAssertEqual(server.phase, .established)
        XCTAssertEqual(server.peerIdentity, hostKey.publicKey, "the server learns the host's key")
        return (host, server)
    }

    /// Moves everything `from` has queued to `to`.
    private func deliver(_ from: inout EndToEndSession, to: inout EndToEndSession, at time: Duration = .zero) {
        let octets = from.output
        from.consumeOutput(octets.count)
        to.receive(octets, now: start + time)
    }

    private func pattern(_ count: Int) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) } }

    func testDataCrossesBothWaysAndAcknowledgementsEmptyTheBuffer() throws {
        var (host, server) = try handshake()
        let upload = pattern(200_000)
        XCTAssertEqual(host.write(upload, now: start), upload.count)
        XCTAssertEqual(host.output.count, upload.count + 13 * (2 + 1 + 16), "13 DATA records of at most 16 KiB")
        deliver(&host, to: &server)
        XCTAssertEqual(server.takeReceived(), upload)
        XCTAssertGreaterThan(host.unacknowledgedOctets, 0)
        deliver(&server, to: &host)  // the ACKs the 64 KiB / 8 record rule produced
        server.tick(now: start + .milliseconds(25))  // and the delayed one for the rest
        deliver(&server, to: &host)
        XCTAssertEqual(host.unacknowledgedOctets, 0, "every DATA record acknowledged")

        XCTAssertEqual(server.write(Array("reply".utf8), now: start), 5)
        deliver(&server, to: &host)
        XCTAssertEqual(host.takeReceived(), Array("reply".utf8))
    }

    func testAWriteWaitsWhenTheRetransmissionBufferIsFull() throws {
        var limits = EndToEndSession.Limits()
        limits.sendBuffer = 64 << 10
        var (host, _) = try handshake(limits: limits)
        let taken = host.write(pattern(1 << 20), now: start)
        XCTAssertEqual(taken, 4 * 16384, "stops once 64 KiB of ciphertext wait for an ACK")
        XCTAssertFalse(host.canWrite)
    }

    /// An ACK covers a record only once the application took what it carried, so a slow
    /// application holds the peer to its send buffer (the window) while the hop is still read.
    func testOnlyWhatTheApplicationTookIsAcknowledged() throws {
        var limits = EndToEndSession.Limits()
        limits.sendBuffer = 64 << 10
        var (host, server) = try handshake(limits: limits)
        let upload = pattern(1 << 20)
        var sent = host.write(upload, now: start)
        XCTAssertEqual(sent, 4 * 16384)
        deliver(&host, to: &server)
        server.tick(now: start + .seconds(1))
        deliver(&server, to: &host)
        XCTAssertFalse(host.canWrite, "nothing the application has not taken is acknowledged")
        XCTAssertEqual(server.pendingOctets.count, sent)
        XCTAssertFalse(server.nextDeadline.map { $0 <= start + .seconds(1) } ?? false, "no ACK timer spins meanwhile")

        var taken = Array(server.pendingOctets.prefix(20_000))
        server.delivered(octets: taken.count, now: start + .seconds(1))
        server.tick(now: start + .seconds(2))
        deliver(&server, to: &host)
        XCTAssertTrue(host.canWrite, "the record the application finished is acknowledged")
        XCTAssertEqual(host.unacknowledgedOctets, 3 * (16384 + 19), "the partly taken record and the later ones are kept")

        for round in 0..<200 where sent < upload.count {
            let now = start + .seconds(2) + .milliseconds(25 * round)
            sent += host.write(upload[sent...], now: now)
            deliver(&host, to: &server)
            taken += server.takeReceived(now: now)
            server.tick(now: now + .milliseconds(21))
            deliver(&server, to: &host)
        }
        taken += server.takeReceived(now: start + .seconds(2))
        XCTAssertEqual(taken, upload, "all of it, in order, through a 64 KiB window")
    }

    func testCloseBothWaysEndsCleanly() throws {
        var (host, server) = try handshake()
        _ = host.write(Array("last words".utf8), now: start)
        host.close(now: start)
        deliver(&host, to: &server)
        XCTAssertTrue(server.peerClosed)
        XCTAssertEqual(server.takeReceived(), Array("last words".utf8))
        server.close(now: start)
        deliver(&server, to: &host)
        XCTAssertTrue(host.peerClosed)
        XCTAssertEqual(host.phase, .closed, "host's CLOSE was acknowledged with the server's")
        deliver(&host, to: &server)
        XCTAssertEqual(server.phase, .closed)
    }

    func testAFlippedBitFailsTheSessionClosed() throws {
        var (host, server) = try handshake()
        _ = host.write(Array("secret".utf8), now: start)
        var octets = host.output
        host.consumeOutput(octets.count)
        octets[5] ^= 0x01  // a hostile relay
        server.receive(octets, now: start)
        XCTAssertEqual(server.phase, .failed)
        guard case .integrity = server.failure else { return XCTFail("\(String(describing: server.failure))") }
        XCTAssertTrue(server.takeReceived().isEmpty, "nothing forged reaches the application")
        deliver(&server, to: &host)
        XCTAssertEqual(host.phase, .failed, "the ABORT tells the host why")
        guard case .abortedByPeer(code: 1, _) = host.failure else { return XCTFail("\(String(describing: host.failure))") }
    }

    func testARepeatedOrDroppedRecordFailsTheSession() throws {
        var (host, server) = try handshake()
        _ = host.write(Array("one".utf8), now: start)
        let first = host.output
        host.consumeOutput(first.count)
        server.receive(first, now: start)
        server.receive(first, now: start)  // replayed by a relay
        XCTAssertEqual(server.phase, .failed)

        var (host2, server2) = try handshake()
        _ = host2.write(Array("one".utf8), now: start)
        host2.consumeOutput(host2.output.count)  // dropped
        _ = host2.write(Array("two".utf8), now: start)
        deliver(&host2, to: &server2)
        XCTAssertEqual(server2.phase, .failed)
    }

    func testAnotherTargetOrSessionBreaksTheHandshake() throws {
        var host = EndToEndSession(role: .initiator, sessionID: sessionID, target: target, identity: SessionIdentity(signingKey: hostKey), now: start)
        var server = EndToEndSession(
            role: .responder, sessionID: sessionID, target: [6, 4, 10, 0, 0, 1, 0, 80], identity: SessionIdentity(signingKey: serverKey), now: start)
        let second = try server.answer(firstMessage: try host.firstMessage())
        XCTAssertThrowsError(try host.finish(secondMessage: second, now: start), "a relay that rewrote TARGET")
        XCTAssertEqual(host.phase, .failed)
    }

    func testResumeRetransmitsWhatThePeerMissedAndNothingTwice() throws {
        var (host, server) = try handshake()
        _ = host.write(pattern(50_000), now: start)
        deliver(&host, to: &server)  // arrives
        _ = host.write(pattern(30_000), now: start)
        host.consumeOutput(host.output.count)  // lost with the broken hop
        _ = server.write(Array("pong".utf8), now: start)
        server.consumeOutput(server.output.count)  // lost too

        let blob = try host.resumeBlob()
        let (answer, hostNext) = try server.answerResume(blob: blob)
        let serverNext = try host.readResumeAnswer(answer)
        try host.resume(peerNextExpected: serverNext, now: start)
        try server.resume(peerNextExpected: hostNext, now: start)
        deliver(&host, to: &server)
        deliver(&server, to: &host)
        XCTAssertEqual(server.takeReceived(), pattern(50_000) + pattern(30_000), "complete and in order")
        XCTAssertEqual(host.takeReceived(), Array("pong".utf8))
        XCTAssertEqual(server.phase, .established)

        XCTAssertThrowsError(try server.answerResume(blob: blob), "an old resume blob is a replay")
    }

    func testAResumePointOutsideTheBufferFails() throws {
        var (host, _) = try handshake()
        _ = host.write(pattern(1000), now: start)
        XCTAssertThrowsError(try host.resume(peerNextExpected: 5, now: start))
        XCTAssertEqual(host.phase, .failed)
    }

    func testKeyUpdateAndPingKeepTheStreamGoing() throws {
        var limits = EndToEndSession.Limits()
        limits.rekeyRecords = 3
        var (host, server) = try handshake(limits: limits)
        for round in 0..<5 {
            _ = host.write([UInt8(round)], now: start)
            host.tick(now: start)
            deliver(&host, to: &server)
        }
        XCTAssertEqual(server.takeReceived(), [0, 1, 2, 3, 4])
        host.tick(now: start + .seconds(26))  // keepalive
        deliver(&host, to: &server)
        let before = host.unacknowledgedOctets
        deliver(&server, to: &host)  // the PING's immediate ACK
        XCTAssertLessThan(host.unacknowledgedOctets, before)
        XCTAssertEqual(server.phase, .established)
        XCTAssertEqual(host.phase, .established)
    }
}
