import CSPHost
import CSPSession
import CSPTrust
import CSPWire
import Foundation
import Glibc
import Synchronization
import TestSupport
import XCTest

/// SessionStream against a SessionResponder on loopback: the Swift API of relayed sessions, one
/// hop (no relay), real TCP, real Noise.
final class SessionStreamTests: XCTestCase {
    let serverKey = SigningKey(seed: [UInt8](repeating: 7, count: 32))!
    let clientKey = SigningKey(seed: [UInt8](repeating: 8, count: 32))!

    /// A responder on 127.0.0.1 whose application echoes every octet (or, with `messages`, every
    /// message) back: a thread per session.
    /// `copies`: how many times each octet read is written back (2: an application that answers
    /// with more than it is sent, so it waits on the session's reading while the session writes).
    private func echoResponder(messages: Bool = false, copies: Int = 1) throws -> (SessionResponder, CSPEndpoint, stop: () -> Void) {
        try Host.loopbackUp()
        let listener = try TCPSocket.listen(on: CSPEndpoint(address: IPAddress(ipv4: 0x7F00_0001), port: 0))
        let endpoint = try XCTUnwrap(listener.localEndpoint)
        let responder = SessionResponder(identity: SessionIdentity(signingKey: serverKey), listener: listener, allowedInitiators: nil)
        let stopped = Atomic<Bool>(false)
        Thread.detachNewThread {
            responder.serve(once: false, attach: { _, _, _ in
                var ends: [Int32] = [-1, -1]
                let kind = messages ? Int32(SOCK_SEQPACKET.rawValue) : Int32(SOCK_STREAM.rawValue)
                guard socketpair(AF_UNIX, kind, 0, &ends) == 0 else { return nil }
                let echo = ends[1]
                Thread.detachNewThread {
                    var buffer = [UInt8](repeating: 0, count: 65536)
                    while true {
                        let got = buffer.withUnsafeMutableBytes { read(echo, $0.baseAddress, $0.count) }
                        if got <= 0 { break }
                        for _ in 0..<copies {
                            var sent = 0
                            while sent < got {
                                let n = buffer.withUnsafeBytes { write(echo, $0.baseAddress! + sent, got - sent) }
                                if n <= 0 { break }
                                sent += n
                            }
                        }
                    }
                    shutdown(echo, Int32(SHUT_WR))
                }
                return SessionResponder.Application(input: ends[0], output: dup(ends[0]), messages: messages)
            }, shouldStop: { stopped.load(ordering: .relaxed) })
        }
        return (responder, endpoint, { stopped.store(true, ordering: .relaxed) })
    }

    func testAStreamCarriesOctetsBothWaysAndEndsCleanly() throws {
        guard Host.requireRoot() else { return }
        let (_, endpoint, stop) = try echoResponder()
        defer { stop() }
        let initiator = SessionInitiator(
            identity: SessionIdentity(signingKey: clientKey), sessionID: 0x5e55_1011, target: TargetEndpoint(endpoint: endpoint),
            firstHop: FirstHop(endpoint: endpoint), responderKey: serverKey.publicKey)
        let stream = try SessionStream.open(initiator)
        let payload = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let writer = Thread { try? stream.write(payload); stream.closeWrite() }
        writer.start()
        var echoed: [UInt8] = []
        while true {
            let chunk = try stream.read()
            if chunk.isEmpty { break }
            echoed += chunk
        }
        XCTAssertEqual(echoed.count, payload.count)
        XCTAssertTrue(echoed == payload, "the echo is what was written, in order")
        XCTAssertNoThrow(try stream.finish(timeout: .seconds(10)))
    }

    /// The session's end must never wait on its application while the application waits on it: an
    /// application that writes back twice what it reads blocks on writing until the session reads
    /// it, so a session end that blocked on writing to the application (as the first version did)
    /// stopped both for good (seen in CI as a relay-series failure: 30 s still, then the hops' TCP
    /// user timeout and a resume the stuck responder could not take).
    func testAnApplicationThatAnswersMoreThanItReadsDoesNotStallTheSession() throws {
        guard Host.requireRoot() else { return }
        let (_, endpoint, stop) = try echoResponder(copies: 2)
        defer { stop() }
        let initiator = SessionInitiator(
            identity: SessionIdentity(signingKey: clientKey), sessionID: 0x5e55_1014, target: TargetEndpoint(endpoint: endpoint),
            firstHop: FirstHop(endpoint: endpoint), responderKey: serverKey.publicKey)
        let stream = try SessionStream.open(initiator)
        let payload = (0..<(6 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let writer = Thread { try? stream.write(payload); stream.closeWrite() }
        writer.start()
        var echoed = 0
        let deadline = ContinuousClock.now + .seconds(30)
        var poller = pollfd(fd: stream.fileDescriptor, events: Int16(POLLIN), revents: 0)
        while ContinuousClock.now < deadline {
            guard poll(&poller, 1, 1000) > 0 else { continue }
            let chunk = try stream.read()
            if chunk.isEmpty { break }
            echoed += chunk.count
        }
        XCTAssertEqual(echoed, 2 * payload.count, "every octet came back twice within 30 s")
        XCTAssertNoThrow(try stream.finish(timeout: .seconds(10)))
    }

    func testAnotherResponderKeyEndsTheStreamWithAKeyMismatch() throws {
        guard Host.requireRoot() else { return }
        let (_, endpoint, stop) = try echoResponder()
        defer { stop() }
        let initiator = SessionInitiator(
            identity: SessionIdentity(signingKey: clientKey), sessionID: 0x5e55_1012, target: TargetEndpoint(endpoint: endpoint),
            firstHop: FirstHop(endpoint: endpoint), responderKey: clientKey.publicKey)
        let stream = try SessionStream.open(initiator)
        XCTAssertEqual(try stream.read(), [], "nothing is delivered")
        XCTAssertThrowsError(try stream.finish(timeout: .seconds(10))) { error in
            XCTAssertEqual((error as? SessionEndError)?.kind, .keyMismatch)
        }
    }

    func testTheDatagramVariantDeliversWholeMessagesInOrder() throws {
        guard Host.requireRoot() else { return }
        let (_, endpoint, stop) = try echoResponder(messages: true)
        defer { stop() }
        let initiator = SessionInitiator(
            identity: SessionIdentity(signingKey: clientKey), sessionID: 0x5e55_1013, target: TargetEndpoint(endpoint: endpoint),
            firstHop: FirstHop(endpoint: endpoint), responderKey: serverKey.publicKey)
        let stream = try SessionStream.openMessages(initiator)
        let sent: [[UInt8]] = [[1], Array(repeating: 2, count: 1000), Array(repeating: 3, count: 16384), [4, 4]]
        for message in sent { try stream.write(message) }
        var received: [[UInt8]] = []
        while received.count < sent.count, let message = try stream.receiveMessage() { received.append(message) }
        XCTAssertEqual(received, sent, "each message whole, in order, boundaries kept")
        stream.closeWrite()
        XCTAssertNil(try stream.receiveMessage(), "the end after the peer's CLOSE")
        XCTAssertNoThrow(try stream.finish(timeout: .seconds(10)))
    }
}
