import Glibc
import SystemSupport
import XCTest

final class SystemCallTests: XCTestCase {
    func testAFailedCallNamesItselfAndItsErrno() {
        XCTAssertThrowsError(try systemCall("close(-1)") { close(-1) }) { error in
            let failure = error as? SystemCallError
            XCTAssertEqual(failure?.errno, EBADF)
            XCTAssertEqual(failure?.description, "close(-1) failed: Bad file descriptor (errno 9)")
        }
    }

    func testADescriptorIsClosedExactlyOnceOrHandedOver() throws {
        let raw: Int32
        do {
            let owned = FileDescriptor(adopting: try systemCall("open") { open("/dev/null", O_RDONLY | O_CLOEXEC) })
            raw = owned.rawValue
            XCTAssertGreaterThanOrEqual(fcntl(raw, F_GETFD), 0)
        }
        XCTAssertEqual(fcntl(raw, F_GETFD), -1, "closed when its owner went away")
        let kept = FileDescriptor(adopting: try systemCall("open") { open("/dev/null", O_RDONLY | O_CLOEXEC) }).release()
        XCTAssertGreaterThanOrEqual(fcntl(kept, F_GETFD), 0, "released, not closed")
        close(kept)
    }

    /// poll's timeout: nil waits forever, a deadline already past does not (a negative poll timeout
    /// would), and a sub-millisecond remainder is not rounded down to a busy 0.
    func testPollMillisecondsForEveryKindOfTimeout() {
        XCTAssertEqual(pollMilliseconds(nil), -1)
        XCTAssertEqual(pollMilliseconds(.zero), 0)
        XCTAssertEqual(pollMilliseconds(.milliseconds(-1500)), 0)
        XCTAssertEqual(pollMilliseconds(.microseconds(-300)), 0)
        XCTAssertEqual(pollMilliseconds(.microseconds(300)), 1)
        XCTAssertEqual(pollMilliseconds(.microseconds(2500)), 2)
        XCTAssertEqual(pollMilliseconds(.seconds(3)), 3000)
        XCTAssertEqual(pollMilliseconds(.seconds(86_400 * 365)), Int32.max)
    }
}
