#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Line logger to stderr (journald adds timestamps and the unit name). Lines carry a syslog
/// priority prefix (`<3>` error … `<7>` debug) that journald understands.
///
/// Per-packet events go through `limited`, which allows a burst and then at most one line per
/// interval per category, and reports how many were suppressed, so a flood of malformed packets
/// cannot flood the journal.
final class Log: Sendable {
    enum Level: Int, Comparable, Sendable {
        case error = 3, warning = 4, notice = 5, info = 6, debug = 7
        static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
    }

    let threshold: Level
    private let limiter = Mutex<[String: (windowStart: UInt64, count: Int, suppressed: Int)]>([:])
    static let burst = 10
    static let windowNanoseconds: UInt64 = 5_000_000_000

    init(threshold: Level) { self.threshold = threshold }

    func callAsFunction(_ level: Level, _ message: String) {
        guard level <= threshold else { return }
        let line = "<\(level.rawValue)>\(message)\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
    }

    /// Logs at most `burst` lines per category every 5 s.
    func limited(_ level: Level, category: String, _ message: @autoclosure () -> String) {
        guard level <= threshold else { return }
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let nanoseconds = UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
        let (emit, suppressed) = limiter.withLock { table -> (Bool, Int) in
            var entry = table[category] ?? (nanoseconds, 0, 0)
            var reported = 0
            if nanoseconds - entry.windowStart > Self.windowNanoseconds {
                reported = entry.suppressed
                entry = (nanoseconds, 0, 0)
            }
            entry.count += 1
            let emit = entry.count <= Self.burst
            if !emit { entry.suppressed += 1 }
            table[category] = entry
            return (emit, reported)
        }
        if suppressed > 0 { self(level, "(\(suppressed) more \(category) messages suppressed)") }
        if emit { self(level, message()) }
    }
}
