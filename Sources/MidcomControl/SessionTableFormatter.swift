import Foundation
/// Renders control-protocol values for people, in the manner of `ip`, `conntrack` and `wg`: one aligned table for
/// many sessions, `key: value` lines for one. Pure (no I/O, no locale, no clock) so output is golden-tested.
///
/// Conventions: an IPv6 endpoint is `[addr]:port`; port 0 (any port) is `*`; durations are `12s`, `3m04s`,
/// `1h02m`, `2d03h`, truncated to the unit shown; `-` is a value the daemon does not know (or, for LEFT, a session
/// that never expires); BYTES uses binary units (`1.5KiB`), PACKETS is exact. Every line ends in "\n" and carries
/// no trailing blanks.
public enum SessionTableFormatter {
    static let columns: [(title: String, rightAligned: Bool)] = [
        ("ID", false), ("PROTO", false), ("SOURCE", false), ("DESTINATION", false), ("STATE", false),
        ("ACTION", false), ("AGE", true), ("LEFT", true), ("PACKETS", true), ("BYTES", true), ("APP", false),
        ("ORIGIN", false),
    ]

    /// The session table: a header line, then one line per session in the given order, each
    /// further path of a session on a line of its own below it (`+path N`).
    public static func table(_ sessions: [SessionRecord], color: Bool = false) -> String {
        let rows: [[String]] = sessions.flatMap { session -> [[String]] in
            let main: [String] = [
                session.id,
                session.proto,
                endpoint(session.source, port: session.sourcePort),
                endpoint(session.destination, port: session.destinationPort),
                session.state,
                session.action,
                duration(session.ageSeconds),
                duration(session.remainingSeconds),
                session.packets.map(String.init) ?? unknown,
                session.bytes.map(byteCount) ?? unknown,
                session.application ?? unknown,
                session.origin ?? "csp",
            ]
            let paths: [[String]] = (session.paths ?? []).map { path in
                [
                    "  +path \(path.id)", session.proto, endpoint(path.source, port: path.sourcePort),
                    endpoint(path.destination, port: path.destinationPort), "", "", "", "", "", "", "", "",
                ]
            }
            return [main] + paths
        }
        let state = columns.firstIndex { $0.title == "STATE" }
        return aligned([columns.map(\.title)] + rows, rightAligned: columns.map(\.rightAligned)) { row, column, cell in
            guard color, row > 0, column == state else { return cell }
            return paint(cell, stateColor(cell.trimmingCharacters(in: .whitespaces)))
        }
    }

    // MARK: - Colors (only on a terminal: midctl decides; --no-color and NO_COLOR turn them off)

    static func paint(_ text: String, _ code: String?) -> String {
        guard let code else { return text }
        return "\u{1B}[\(code)m\(text)\u{1B}[0m"
    }

    static func stateColor(_ state: String) -> String? {
        switch state {
        case "admitted": "32"  // green
        case "pending": "33"  // yellow
        case "redirected": "35"  // magenta
        case "legacy": "36"  // cyan
        default: nil
        }
    }

    static func kindColor(_ kind: String) -> String? {
        switch kind {
        case "admit", "map": "32"
        case "reject", "revoke", "deny", "lost", "ruleset": "31"  // red
        case "setup", "challenge", "refresh", "rebind", "path": "33"
        case "expire", "teardown", "delete", "unsignaled": "2"  // dim
        default: nil
        }
    }

    /// The DENY filters (`midctl denies`): who asked, what is dropped, how much so far, time left.
    public static func denies(_ denies: [DenyRecord]) -> String {
        let titles: [(String, Bool)] = [
            ("ID", false), ("VICTIM", false), ("KEY", false), ("SOURCE", false), ("PROTO", false), ("PORT", true),
            ("ACTION", false), ("AGE", true), ("LEFT", true), ("DROPPED", true), ("BYTES", true),
        ]
        let rows = denies.map { deny -> [String] in
            [
                deny.id, deny.victim, deny.key ?? unknown, deny.source, deny.proto, deny.port.map(String.init) ?? "*",
                deny.action, duration(deny.ageSeconds), duration(deny.remainingSeconds), deny.packets.map(String.init) ?? unknown,
                deny.bytes.map(byteCount) ?? unknown,
            ]
        }
        return aligned([titles.map(\.0)] + rows, rightAligned: titles.map(\.1))
    }

    /// One live event as a line: `clock` (the caller's rendering of its time), kind, session, text.
    public static func event(_ event: ControlEvent, clock: String, color: Bool = false) -> String {
        var kind = event.kind.padding(toLength: 10, withPad: " ", startingAt: 0)
        if color { kind = paint(kind, kindColor(event.kind)) }
        return "\(clock) \(kind) \(event.session ?? "-               ") \(event.text)"
    }

    /// The policy rules in order, the default action last, for `midctl rules`.
    public static func rules(_ rules: [RuleRecord], color: Bool = false) -> String {
        let titles: [(String, Bool)] = [("#", true), ("NAME", false), ("MATCH", false), ("ACTION", false), ("HITS", true)]
        let rows = rules.map { rule -> [String] in
            [rule.position == 0 ? "-" : String(rule.position), rule.name, rule.match, rule.action, String(rule.hits)]
        }
        return aligned([titles.map(\.0)] + rows, rightAligned: titles.map(\.1)) { row, column, cell in
            guard color, row > 0, column == 3 else { return cell }
            let action = cell.trimmingCharacters(in: .whitespaces)
            return paint(cell, action == "reject" ? "31" : action == "admit" ? "32" : "35")
        }
    }

    /// One session as `key: value` lines, for `midctl show`.
    public static func detail(_ session: SessionRecord) -> String {
        var bytes = unknown
        if let count = session.bytes {
            bytes = count < 1024 ? "\(count)" : "\(count) (\(byteCount(count)))"
        }
        return keyValueLines([
            ("id", session.id),
            ("protocol", session.proto),
            ("source", endpoint(session.source, port: session.sourcePort)),
            ("destination", endpoint(session.destination, port: session.destinationPort)),
            ("state", session.state),
            ("action", session.action),
            ("age", duration(session.ageSeconds)),
            ("remaining", session.remainingSeconds == nil ? "no expiry" : duration(session.remainingSeconds)),
            ("packets", session.packets.map(String.init) ?? unknown),
            ("bytes", bytes),
            ("application", session.application ?? unknown),
            ("peer middleboxes", session.peerMiddleboxes.map(String.init) ?? unknown),
        ])
    }

    /// Daemon status as `key: value` lines, then the counters sorted by name, for `midctl status`.
    public static func status(_ status: DaemonStatus) -> String {
        let queues = status.queueNumbers.isEmpty ? "none" : status.queueNumbers.map(String.init).joined(separator: " ")
        var text = keyValueLines([
            ("version", status.version),
            ("pid", String(status.pid)),
            ("uptime", duration(status.uptimeSeconds)),
            ("epoch", String(status.epoch)),
            ("queues", queues),
            ("queue encoding", status.queueEncoding),
            ("ruleset", status.ruleset ?? unknown),
            ("flowtable", status.flowtable ?? unknown),
            ("sessions", String(status.sessions)),
            ("counters", status.counters.isEmpty ? "none" : ""),
        ])
        if !status.counters.isEmpty {
            let rows = status.counters.sorted { $0.key < $1.key }.map { ["", $0.key, String($0.value)] }
            text += aligned(rows, rightAligned: [false, false, true])
        }
        return text
    }

    // MARK: - Cells

    static let unknown = "-"

    /// `addr:port`, `[addr]:port` for IPv6, `*` for port 0.
    public static func endpoint(_ address: String, port: UInt16) -> String {
        let host = address.contains(":") ? "[\(address)]" : (address.isEmpty ? "*" : address)
        return "\(host):\(port == 0 ? "*" : String(port))"
    }

    /// `12s`, `3m04s`, `1h02m`, `2d03h`; `-` for nil or a non-finite value; negative (overdue) shows as `0s`.
    public static func duration(_ seconds: Double?) -> String {
        guard let seconds, seconds.isFinite else { return unknown }
        let total = seconds <= 0 ? 0 : UInt64(min(seconds, Double(UInt32.max) * 1000))
        func two(_ value: UInt64) -> String { value < 10 ? "0\(value)" : "\(value)" }
        switch total {
        case ..<60: return "\(total)s"
        case ..<3600: return "\(total / 60)m\(two(total % 60))s"
        case ..<86400: return "\(total / 3600)h\(two(total / 60 % 60))m"
        default: return "\(total / 86400)d\(two(total / 3600 % 24))h"
        }
    }

    /// `512B`, `1.5KiB`, `23MiB`: one decimal below 10 units, whole units from 10 on.
    public static func byteCount(_ count: UInt64) -> String {
        let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        guard count >= 1024 else { return "\(count)B" }
        var value = Double(count) / 1024
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        let tenths = UInt64((value * 10).rounded())
        if tenths < 100 { return "\(tenths / 10).\(tenths % 10)\(units[unit])" }
        let whole = UInt64(value.rounded())
        if whole >= 1024 && unit < units.count - 1 { return "1.0\(units[unit + 1])" }  // 1023.6KiB rounds up
        return "\(whole)\(units[unit])"
    }

    // MARK: - Layout

    /// Columns separated by two blanks and padded to their widest cell; trailing blanks removed.
    /// Columns padded to their widest cell; `paint` may wrap a padded cell in color codes (which
    /// take no room on the screen, so they are added after the padding).
    static func aligned(
        _ rows: [[String]], rightAligned: [Bool], paint: (_ row: Int, _ column: Int, _ cell: String) -> String = { $2 }
    ) -> String {
        guard let first = rows.first else { return "" }
        var widths = [Int](repeating: 0, count: first.count)
        for row in rows {
            for (column, cell) in row.enumerated() { widths[column] = max(widths[column], cell.count) }
        }
        var text = ""
        for (index, row) in rows.enumerated() {
            var line = ""
            for (column, cell) in row.enumerated() {
                if column > 0 { line += "  " }
                let padding = String(repeating: " ", count: widths[column] - cell.count)
                let padded = rightAligned[column] ? padding + cell : cell + padding
                // The last column is not padded on the right (trailing blanks are trimmed).
                line += column == row.count - 1 ? paint(index, column, trimmingTrailingBlanks(padded)) : paint(index, column, padded)
            }
            text += trimmingTrailingBlanks(line) + "\n"
        }
        return text
    }

    private static func keyValueLines(_ pairs: [(String, String)]) -> String {
        let width = pairs.map { $0.0.count }.max() ?? 0
        return pairs.map { key, value in
            trimmingTrailingBlanks(key + ":" + String(repeating: " ", count: width - key.count + 1) + value) + "\n"
        }.joined()
    }

    private static func trimmingTrailingBlanks(_ line: String) -> String {
        var line = line
        while line.last == " " { line.removeLast() }
        return line
    }
}
