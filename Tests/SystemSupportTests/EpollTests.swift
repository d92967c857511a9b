import Glibc
import SystemSupport
import XCTest

/// The readiness wait the queue readers and the relay workers block in.
final class EpollTests: XCTestCase {
    func testReadyDescriptorsComeBackWithTheirTokensAndATimeoutWithNone() throws {
        let epoll = try Epoll()
        var ends: [Int32] = [0, 0]
        var quiet: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&ends), 0)
        XCTAssertEqual(pipe(&quiet), 0)
        defer { for fd in ends + quiet { close(fd) } }
        try epoll.add(ends[0], .readable, token: 7)
        try epoll.add(quiet[0], .readable, token: 9)

        var seen: [UInt64] = []
        guard case .success(0) = epoll.wait(timeoutMilliseconds: 10, { token, _ in seen.append(token) }) else {
            return XCTFail("nothing is readable yet: the wait times out with no events")
        }
        XCTAssertEqual(seen, [])

        var one: UInt8 = 1
        XCTAssertEqual(write(ends[1], &one, 1), 1)
        guard case .success(1) = epoll.wait(timeoutMilliseconds: 1000, { token, events in
            seen.append(token)
            XCTAssertTrue(events.contains(.readable))
        }) else { return XCTFail("the pipe is readable") }
        XCTAssertEqual(seen, [7], "only the readable descriptor's token, not the quiet pipe's")
    }

    func testBootTimeNeverGoesBackAndKeepsPaceWithContinuousClock() {
        let clockStart = ContinuousClock.now
        let first = bootTimeNanoseconds()
        usleep(20_000)
        let second = bootTimeNanoseconds()
        let clockElapsed = clockStart.duration(to: .now)
        XCTAssertGreaterThanOrEqual(second, first + 20_000_000, "at least the 20 ms slept")
        let elapsed = Duration.nanoseconds(Int64(second - first))
        XCTAssertLessThanOrEqual(elapsed, clockElapsed, "the same clock, read inside ContinuousClock's window")
    }
}
