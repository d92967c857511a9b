import Foundation
import Glibc
import Synchronization
import SystemSupport
import XCTest

/// The self-pipe that wakes a thread blocked in `poll`, and the thread names an operator sees.
final class WakeupPipeTests: XCTestCase {
    private func readable(_ fd: Int32) -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, 0) == 1
    }

    func testASignalStaysReadableUntilDrainedAndManySignalsDrainAtOnce() throws {
        let wake = try WakeupPipe()
        XCTAssertFalse(readable(wake.fd), "not signaled yet")
        wake.signal()
        XCTAssertTrue(readable(wake.fd))
        XCTAssertTrue(readable(wake.fd), "polling does not consume the signal")
        wake.drain()
        XCTAssertFalse(readable(wake.fd), "drained")
        for _ in 0..<1000 { wake.signal() }
        wake.drain()
        XCTAssertFalse(readable(wake.fd), "one drain takes every pending signal")
        wake.drain()  // draining an empty pipe returns at once (non-blocking)
        wake.signal()
        XCTAssertTrue(readable(wake.fd), "a signal after the drain wakes the next wait")
    }

    func testASignalFromAnotherThreadEndsABlockingPoll() throws {
        let wake = try WakeupPipe()
        let fd = wake.fd
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&entry, 1, 10_000)
            done.signal()
        }
        usleep(50_000)
        wake.signal()
        XCTAssertEqual(done.wait(timeout: .now() + 5), .success, "the poll returned on the signal, not its 10 s timeout")
    }

    func testAThreadNameIsWhatTheKernelShowsCutTo15Octets() throws {
        let done = DispatchSemaphore(value: 0)
        let names = Mutex<[String]>([])
        Thread.detachNewThread {
            nameCurrentThread("port-mapping")
            let short = currentThreadName()
            let comm = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)) ?? ""
            nameCurrentThread("a-name-longer-than-fifteen")
            names.withLock { $0 = [short, comm.trimmingCharacters(in: .newlines), currentThreadName()] }
            done.signal()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 5), .success)
        XCTAssertEqual(names.withLock { $0 }, ["port-mapping", "port-mapping", "a-name-longer-t"])
    }
}
