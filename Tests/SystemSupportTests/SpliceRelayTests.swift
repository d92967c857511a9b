import Foundation
import Glibc
import SystemSupport
import XCTest

/// SpliceRelay between two stream socket pairs (AF_UNIX: the test namespace of `make unit` has no
/// loopback up, and splice treats a unix stream socket like a TCP one).
final class SpliceRelayTests: XCTestCase {
    private func streamPair() throws -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        _ = try systemCall("socketpair") { socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) }
        return (fds[0], fds[1])
    }

    /// Writes `bytes` to `fd` then shuts its writing side; reads `fd` to EOF; on a thread.
    private final class Peer: @unchecked Sendable {
        let fd: Int32
        let outgoing: [UInt8]
        var received: [UInt8] = []
        let done = DispatchSemaphore(value: 0)
        init(fd: Int32, sending: [UInt8]) {
            self.fd = fd
            outgoing = sending
        }
        func start() {
            let writer = Thread { [self] in
                var sent = 0
                while sent < outgoing.count {
                    let n = outgoing.withUnsafeBytes { send(fd, $0.baseAddress! + sent, min(65536, outgoing.count - sent), Int32(MSG_NOSIGNAL)) }
                    if n <= 0 { break }
                    sent += n
                }
                shutdown(fd, Int32(SHUT_WR))
            }
            let reader = Thread { [self] in
                var buffer = [UInt8](repeating: 0, count: 65536)
                while true {
                    let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                    if n <= 0 { break }
                    received.append(contentsOf: buffer[0..<n])
                }
                done.signal()
            }
            writer.start()
            reader.start()
        }
    }

    private func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &+ ($0 >> 12)) }
    }

    func testOctetsCrossBothWaysIntactAndEndOfFileIsPassedOn() throws {
        let (client, relayUp) = try streamPair()
        let (relayDown, server) = try streamPair()
        defer { [client, relayUp, relayDown, server].forEach { close($0) } }
        for fd in [relayUp, relayDown] { try TCPOptions.setNonBlocking(fd) }
        let relay = try SpliceRelay(upstream: relayUp, downstream: relayDown, pipeCapacity: 65536)
        let epoll = try Epoll()
        let interest: Epoll.Events = [.readable, .writable, .peerClosed, .edgeTriggered]
        try epoll.add(relayUp, interest, token: 1)
        try epoll.add(relayDown, interest, token: 2)

        let upload = pattern(3 << 20, seed: 1)
        let download = pattern(1 << 20, seed: 7)
        let clientPeer = Peer(fd: client, sending: upload)
        let serverPeer = Peer(fd: server, sending: download)
        clientPeer.start()
        serverPeer.start()

        var state = relay.pump()
        let deadline = Date().addingTimeInterval(20)
        while state == .open, Date() < deadline {
            epoll.wait(timeoutMilliseconds: 100) { _, _ in }
            state = relay.pump()
        }
        XCTAssertEqual(state, .finished)
        XCTAssertEqual(clientPeer.done.wait(timeout: .now() + 10), .success)
        XCTAssertEqual(serverPeer.done.wait(timeout: .now() + 10), .success)
        XCTAssertEqual(serverPeer.received.count, upload.count)
        XCTAssertTrue(serverPeer.received == upload, "upstream octets arrive in order, unchanged")
        XCTAssertTrue(clientPeer.received == download, "downstream octets arrive in order, unchanged")
        XCTAssertEqual(relay.octetsAToB, UInt64(upload.count))
        XCTAssertEqual(relay.octetsBToA, UInt64(download.count))
    }

    /// A byte limit holds as octets move: with a budget of 200 kB the relay stops reading within
    /// one pipe's worth of it, although 3 MB are waiting, and does not finish.
    func testReadingStopsAtTheOctetBudget() throws {
        let (client, relayUp) = try streamPair()
        let (relayDown, server) = try streamPair()
        defer { [client, relayUp, relayDown, server].forEach { close($0) } }
        for fd in [relayUp, relayDown] { try TCPOptions.setNonBlocking(fd) }
        let relay = try SpliceRelay(upstream: relayUp, downstream: relayDown, pipeCapacity: 65536)
        relay.octetBudget = 200_000
        let epoll = try Epoll()
        let interest: Epoll.Events = [.readable, .writable, .peerClosed, .edgeTriggered]
        try epoll.add(relayUp, interest, token: 1)
        try epoll.add(relayDown, interest, token: 2)
        let clientPeer = Peer(fd: client, sending: pattern(3 << 20, seed: 3))
        let serverPeer = Peer(fd: server, sending: [])
        clientPeer.start()
        serverPeer.start()
        var state = relay.pump()
        let deadline = Date().addingTimeInterval(2)
        while state == .open, Date() < deadline {
            epoll.wait(timeoutMilliseconds: 50) { _, _ in }
            state = relay.pump()
        }
        XCTAssertEqual(state, .open, "a relay past its budget neither finishes nor fails: its owner ends it")
        XCTAssertGreaterThanOrEqual(relay.octetsAToB + relay.octetsBToA, 200_000)
        XCTAssertLessThanOrEqual(relay.octetsAToB + relay.octetsBToA, 200_000 + 1 << 20, "over by one pipe at most")
        shutdown(relayUp, Int32(SHUT_RDWR))
        shutdown(relayDown, Int32(SHUT_RDWR))
        _ = clientPeer.done.wait(timeout: .now() + 5)
        _ = serverPeer.done.wait(timeout: .now() + 5)
    }

    func testAPipeIsAskedForItsSizeAndKeepsAtLeastTheDefault() throws {
        let pipe = try SplicePipe(capacity: 262_144)
        XCTAssertGreaterThanOrEqual(pipe.capacity, 65536)
    }
}
