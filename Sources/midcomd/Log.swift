#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Line logger to stderr. Under systemd (stderr is not a terminal) lines carry a syslog
/// priority prefix (`<3>` error … `<7>` debug) that journald understands, and journald adds the
/// time and the unit; on a terminal they start with the local time and the level's name instead.
///
/// Per-packet events go through `limited`, which allows a burst and then at most one line per
/// interval per category, and reports how many were suppressed, so a flood of malformed packets
/// cannot flood the journal.
final class Log: Sendable {
    enum Level: Int, Comparable, Sendable {
        case error = 3, warning = 4, notice = 5, info = 6, debug = 7
        static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
        var name: String {
            switch self {
            case .error: "error"
            case .warning: "warning"
            case .notice: "notice"
            case .info: "info"
            case .debug: "debug"
            }
        }
    }

    let threshold: Level
    private let limiter = Mutex<[String: (windowStart: UInt64, count: Int, suppressed: Int)]>([:])
    static let burst = 10
    static let windowNanoseconds: UInt64 = 5_000_000_000

    let toTerminal: Bool

    init(threshold: Level) {
        self.threshold = threshold
        toTerminal = isatty(2) != 0
    }

    func callAsFunction(_ level: Level, _ message: String) {
        guard level <= threshold else { return }
        let line = toTerminal ? "\(Self.localTime()) \(level.name): \(message)\n" : "<\(level.rawValue)>\(message)\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
    }

    /// YYYY-MM-DD HH:MM:SS.mmm, local time.
    static func localTime() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var parts = tm()
        var seconds = now.tv_sec
        localtime_r(&seconds, &parts)
        func pad(_ n: Int, _ width: Int) -> String {
            let digits = String(n)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(Int(parts.tm_year) + 1900, 4))-\(pad(Int(parts.tm_mon) + 1, 2))-\(pad(Int(parts.tm_mday), 2)) "
            + "\(pad(Int(parts.tm_hour), 2)):\(pad(Int(parts.tm_min), 2)):\(pad(Int(parts.tm_sec), 2)).\(pad(now.tv_nsec / 1_000_000, 3))"
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
