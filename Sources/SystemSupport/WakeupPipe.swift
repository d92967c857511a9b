#if canImport(Glibc)
import Glibc
#endif

/// A self-pipe that wakes a thread blocked in `poll` on `fd`. Once signaled it stays readable until
/// `drain()`: a thread that only needs one wake (to stop) never drains it; one that is woken again and
/// again drains it before it looks at what it was woken for, so that no signal is lost between the two.
/// A pipe rather than an eventfd because Glibc's module map does not export <sys/eventfd.h>.
public struct WakeupPipe: ~Copyable, Sendable {
    /// The read end, to poll.
    public let fd: Int32
    private let writeEnd: Int32

    /// The corresponding C functions are `pipe` and `fcntl`.
    public init() throws(SystemCallError) {
        var ends: [Int32] = [-1, -1]
        _ = try systemCall("pipe") { Glibc.pipe(&ends) }
        do {
            for end in ends {
                _ = try systemCall("fcntl") { Glibc.fcntl(end, F_SETFD, FD_CLOEXEC) }
                _ = try systemCall("fcntl") { Glibc.fcntl(end, F_SETFL, O_NONBLOCK) }
            }
        } catch {
            _ = Glibc.close(ends[0])
            _ = Glibc.close(ends[1])
            throw error
        }
        fd = ends[0]
        writeEnd = ends[1]
    }

    deinit {
        _ = Glibc.close(fd)
        _ = Glibc.close(writeEnd)
    }

    /// The corresponding C function is `write`.
    public func signal() {
        // EAGAIN means the pipe is full, and then it is already readable.
        var byte: UInt8 = 1
        _ = try? systemCall("write") { Glibc.write(writeEnd, &byte, 1) }
    }

    /// Reads every pending signal, so that `fd` is readable again only after the next `signal()`.
    /// The corresponding C function is `read`.
    public func drain() {
        var bytes = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        // A bounded loop: the pipe holds at most its capacity, and EAGAIN (empty) ends it.
        for _ in 0..<4096 {
            let count = withUnsafeMutableBytes(of: &bytes) { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count <= 0 { return }
        }
    }
}
