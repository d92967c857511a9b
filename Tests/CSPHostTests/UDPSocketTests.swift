import CSPHost
import CSPWire
import Foundation
import Synchronization
import SystemSupport
import TestSupport
import XCTest

/// `UDPSocket.receive`'s waits: a wake descriptor lets another thread end a wait that has no
/// timeout (midcomd's port-mapping thread sleeps so), a datagram goes before the wake, and a
/// deadline already past does not block.
final class UDPSocketTests: XCTestCase {
    private let loopback = IPAddress(ipv4: 0x7F00_0001)

    func testAWakeEndsAWaitWithoutTimeoutAndADatagramGoesFirst() throws {
        try Host.loopbackUp()
        let socket = try UDPSocket(family: .ipv4, address: loopback)
        let wake = try WakeupPipe()
        let fd = wake.fd
        let outcome = Mutex<String>("still waiting")
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            let result: String
            do {
                let received = try socket.receive(timeout: nil, maximumLength: 100, wakingOn: fd)
                result = received == nil ? "woken" : "a datagram"
            } catch { result = "error \(error)" }
            outcome.withLock { $0 = result }
            done.signal()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 0.2), .timedOut, "no timeout: it waits")
        wake.signal()
        XCTAssertEqual(done.wait(timeout: .now() + 5), .success, "the wake ended the wait")
        XCTAssertEqual(outcome.withLock { $0 }, "woken")

        // Still signaled, and a datagram is waiting: the datagram comes back, not the wake.
        let sender = try UDPSocket(family: .ipv4, address: loopback)
        try sender.send([1, 2, 3], to: CSPEndpoint(address: loopback, port: socket.localPort))
        let first = try socket.receive(timeout: .seconds(5), maximumLength: 100, wakingOn: fd)
        XCTAssertEqual(first?.bytes, [1, 2, 3])
        XCTAssertEqual(first?.from.port, sender.localPort)
        XCTAssertNil(try socket.receive(timeout: .seconds(5), maximumLength: 100, wakingOn: fd), "then the pending wake")
        wake.drain()
        let start = ContinuousClock.now
        XCTAssertNil(try socket.receive(timeout: .milliseconds(100), maximumLength: 100, wakingOn: fd))
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - start, .milliseconds(90), "drained: the wait ran to its timeout")
    }

    func testADeadlineAlreadyPastDoesNotBlock() throws {
        try Host.loopbackUp()
        let socket = try UDPSocket(family: .ipv4, address: loopback)
        // A port-mapping announcement overdue by the time the thread waits: the remaining time is
        // negative. It used to reach poll as a negative timeout, which waits forever.
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            _ = try? socket.receive(timeout: .milliseconds(-1500), maximumLength: 100)
            done.signal()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 5), .success, "a negative timeout returns at once")
    }
}
