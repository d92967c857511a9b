import ArgumentParser
import Foundation
import MidcomControl

struct Sessions: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the sessions (all, or those matching every filter given).",
        discussion: "Example: midctl sessions --address 10.0.1.0/24 --proto udp --state admitted")

    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Print a JSON array of session records.") var json = false
    @Option(help: "Only sessions whose source or destination is in this address or prefix.") var address: String?
    @Option(help: "Only this protocol (udp, tcp, or a number).") var proto: String?
    @Option(help: "Only sessions with this source or destination port.") var port: UInt16?
    @Option(help: "Only this state: pending, admitted, redirected, legacy.") var state: String?
    @Option(help: "Only this origin: csp, nat-pmp, pcp.") var origin: String?
    @Option(help: "Only this application (as signaled in APPLICATION).") var app: String?
    @Flag(help: "List midrelayd's relayed sessions (both hops, octets each way) instead of midcomd's sessions.")
    var relayed = false
    @Option(help: ArgumentHelp("midrelayd's control socket, for --relayed.", valueName: "path"))
    var relaySocket = "/run/midcom-relay/relay.sock"

    /// Streams the rows (ControlClient.listSessions): JSON is written as the frames arrive; the
    /// table is rendered as they arrive and written once all are in (its columns are as wide as
    /// their widest cell).
    func run() throws {
        if relayed { return try listRelayed() }
        let filter = SessionFilter(address: address, proto: proto, port: port, state: state, origin: origin, application: app)
        let request = ControlRequest(command: .sessions, filter: filter.isEmpty ? nil : filter)
        // Per piece of the answer (the first line, then each frame), not for the whole listing; an
        // older daemon answers with one line it takes up to a minute to build at a million sessions.
        let client = ControlClient(path: connection.socketPath, timeout: .seconds(120))
        let color = connection.color
        var out: [UInt8] = []
        out.reserveCapacity(1 << 20)
        var writer = SessionRowRenderer.JSONArrayWriter()
        var table = SessionRowRenderer.TableWriter(color: color)
        if json { writer.begin(into: &out) }
        let legacy: [SessionRecord]?
        do {
            legacy = try client.listSessions(request) { (reader: SessionRowReader) throws(SessionRowStreamError) in
                var rows = reader
                if json {
                    while let row = try rows.next() {
                        writer.append(row, of: reader, into: &out)
                        if out.count >= 1 << 20 { writeOut(&out) }
                    }
                } else {
                    try table.add(reader)
                }
            }
        } catch {
            printError(error.description)
            throw ExitCode(error.isRefusal ? 1 : 3)
        }
        if let legacy {
            if json { try printJSON(legacy) } else { print(SessionTableFormatter.table(legacy, color: color), terminator: "") }
            return
        }
        if json {
            writer.end(into: &out)
        } else {
            try table.finish { piece in writeOut(&piece) }
        }
        writeOut(&out)
    }

    /// `--relayed`: one row per relayed session, by its session ID, with both hops.
    private func listRelayed() throws {
        let response: ControlResponse
        do { response = try ControlClient(path: relaySocket, timeout: .seconds(10)).send(ControlRequest(command: .sessions)) } catch {
            printError("midrelayd at \(relaySocket): \(error)")
            throw ExitCode(error.isRefusal ? 1 : 3)
        }
        guard response.ok, let sessions = response.relayed else {
            printError("midrelayd at \(relaySocket): \(response.error ?? "the answer lists no relayed sessions")")
            throw ExitCode(1)
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(sessions), as: UTF8.self))
            return
        }
        func megabytes(_ octets: UInt64) -> String { String(format: "%.1f MB", Double(octets) / 1e6) }
        var rows = [["SESSION", "HOP", "FROM (upstream)", "TO (downstream)", "MODE", "UP", "DOWN", "IDLE", "RESUMED", "STATE", "KEY"]]
        for session in sessions {
            let to = session.hopOut.map { ($0.remote ?? "-") + ($0.last == true ? " (last)" : "") } ?? "-"
            let key = session.hopIn.key.map { String($0.split(separator: " ").last?.prefix(8) ?? "") + "…" } ?? "-"
            rows.append([
                session.session, "\(session.hopIn.index)→\(session.hopIn.index + 1)", session.hopIn.remote ?? "-", to, session.protection,
                megabytes(session.bytesUp), megabytes(session.bytesDown), "\(Int(session.idleSeconds))s", "\(session.resumptions)",
                session.state + (session.reason.map { " (\($0))" } ?? ""), key,
            ])
        }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        for row in rows {
            print(row.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces))
        }
    }

    private func writeOut(_ out: inout [UInt8]) {
        out.withUnsafeBytes { raw in
            var written = 0
            while written < raw.count {
                let n = Glibc.write(1, raw.baseAddress! + written, raw.count - written)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { return }  // stdout closed (`| head`): nothing more to do
                written += n
            }
        }
        out.removeAll(keepingCapacity: true)
    }
}

struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show one session.")

    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The session id: 16 hex digits, as listed by `midctl sessions`.") var id: String
    @Flag(help: "Print the session record as a JSON object.") var json = false

    func validate() throws { _ = try validatedSessionID(id) }

    func run() throws {
        let response = try connection.perform(ControlRequest(command: .show, sessionID: try validatedSessionID(id)))
        guard let session = response.sessions?.first else { throw missingField("sessions") }
        if json {
            try printJSON(session)
        } else {
            print(SessionTableFormatter.detail(session), terminator: "")
        }
    }
}

struct Delete: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Delete one session and the kernel state installed for it.")

    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The session id: 16 hex digits, as listed by `midctl sessions`.") var id: String
    @Flag(help: "Report what would be deleted; change nothing.") var dryRun = false

    func validate() throws { _ = try validatedSessionID(id) }

    func run() throws {
        let request = ControlRequest(command: .delete, sessionID: try validatedSessionID(id), dryRun: dryRun)
        let response = try connection.perform(request)
        printAffected(response.affected ?? [], dryRun: dryRun)
    }
}

struct Flush: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Delete every session and the kernel state installed for it.")

    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Report what would be deleted; change nothing.") var dryRun = false

    func run() throws {
        let response = try connection.perform(ControlRequest(command: .flush, dryRun: dryRun))
        let affected = response.affected ?? []
        printAffected(affected, dryRun: dryRun)
        let noun = affected.count == 1 ? "session" : "sessions"
        print(dryRun ? "\(affected.count) \(noun) would be deleted" : "\(affected.count) \(noun) deleted")
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the daemon's status and counters.")

    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Print the status as a JSON object.") var json = false

    func run() throws {
        let response = try connection.perform(ControlRequest(command: .status))
        guard let status = response.status else { throw missingField("status") }
        if json {
            try printJSON(status)
        } else {
            print(SessionTableFormatter.status(status), terminator: "")
        }
    }
}

struct Denies: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the DENY filters victims asked for: requester, prefix, drops, time left.")

    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Print a JSON array of filter records.") var json = false

    func run() throws {
        let response = try connection.perform(ControlRequest(command: .denies))
        let denies = response.denies ?? []
        if json {
            try printJSON(denies)
        } else {
            print(SessionTableFormatter.denies(denies), terminator: "")
        }
    }
}

struct Undeny: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove one DENY filter and its kernel element.")

    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The filter id: 16 hex digits, as listed by `midctl denies`.") var id: String
    @Flag(help: "Report what would be removed; change nothing.") var dryRun = false

    func validate() throws { _ = try validatedSessionID(id) }

    func run() throws {
        let response = try connection.perform(ControlRequest(command: .undeny, sessionID: try validatedSessionID(id), dryRun: dryRun))
        for id in response.affected ?? [] { print(dryRun ? "would remove \(id)" : "removed \(id)") }
    }
}

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read midcomd's configuration file again and take it over (as SIGHUP does).",
        discussion: """
            The file is validated completely first: on an error midcomd keeps running on the configuration in \
            effect and midctl prints the error (file, line, fix) and exits 1. Sessions the new policy refuses are \
            revoked; settings that need a restart (queues, sockets, table, [nat]) make the reload fail.
            """)

    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        let response = try connection.perform(ControlRequest(command: .reload))
        print(response.message ?? "reloaded")
    }
}

struct Announce: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start the NAT-PMP/PCP epoch again and announce it to the inside hosts (after a HA takeover).",
        discussion: """
            A box that took over a HA pair's addresses may lack some mappings; clients that see the \
            epoch go back re-map (RFC 6887 8.5, RFC 6886 3.2.1). keepalived's notify script runs it.
            """)

    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        let response = try connection.perform(ControlRequest(command: .announce))
        print(response.message ?? "announced")
    }
}

struct Monitor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Follow session events live: setup, admit, reject (with the rule), refresh, expire, teardown, rebind, …",
        discussion: "Like `conntrack -E` or `nft monitor`; stop with Ctrl-C. --kind filters (repeatable).")

    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "One JSON object per line.") var json = false
    @Option(help: "Only events of this kind (setup, admit, reject, expire, unsignaled, ...; repeatable).") var kind: [String] = []
    @Option(help: "Stop after this many events.") var count: Int?

    func run() throws {
        var seen = 0
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do {
            try ControlClient(path: connection.socketPath, timeout: .seconds(5)).stream(ControlRequest(command: .monitor)) { event in
                guard kind.isEmpty || kind.contains(event.kind) else { return true }
                if json {
                    if let data = try? encoder.encode(event), let line = String(data: data, encoding: .utf8) { print(line) }
                } else {
                    print(SessionTableFormatter.event(event, clock: Self.localClock(event.time), color: connection.color))
                }
                fflush(nil)  // all output streams: each event leaves at once, also into a pipe
                seen += 1
                return count.map { seen < $0 } ?? true
            }
        } catch {
            printError(error.description)
            throw ExitCode(error.isRefusal ? 1 : 3)
        }
    }
}

extension Monitor {
    /// HH:MM:SS.mmm in local time.
    static func localClock(_ time: Double) -> String {
        var seconds = time_t(time)
        var parts = tm()
        localtime_r(&seconds, &parts)
        let milliseconds = min(999, max(0, Int((time - Double(seconds)) * 1000)))
        return String(format: "%02d:%02d:%02d.%03d", parts.tm_hour, parts.tm_min, parts.tm_sec, milliseconds)
    }
}

struct Rules: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the policy rules in effect, in order, with how often each decided (since start or the last reload).")

    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Print a JSON array of rule records.") var json = false

    func run() throws {
        let response = try connection.perform(ControlRequest(command: .rules))
        let rules = response.rules ?? []
        if json {
            try printJSON(rules)
        } else {
            print(SessionTableFormatter.rules(rules, color: connection.color), terminator: "")
        }
    }
}

struct ShowConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show-config",
        abstract: "Print the configuration in effect (defaults included), as midcomd.conf text.")

    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        let response = try connection.perform(ControlRequest(command: .showConfig))
        print(response.message ?? "", terminator: "")
    }
}

/// One line per session id, so that the output can be piped on.
private func printAffected(_ ids: [String], dryRun: Bool) {
    for id in ids { print(dryRun ? "would delete \(id)" : "deleted \(id)") }
}
