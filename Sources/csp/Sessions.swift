import ArgumentParser
import CSPWire
import SystemSupport

#if canImport(Glibc)
import Glibc
#endif

/// What `csp keep` is doing for a session, written next to the session's file at each event so
/// that `csp sessions` (and scripts) can see it without talking to the keeper.
struct KeeperStatus {
    var pid: Int32
    var event: String
    var at: UInt64
    var lifetime: UInt32

    static func path(_ store: SessionStore, _ id: UInt64) -> String { "\(store.directory)/\(hex(id)).keeper" }

    func save(_ store: SessionStore, _ id: UInt64) {
        let text = "pid \(pid)\nevent \(event)\nat \(at)\nlifetime \(lifetime)\n"
        try? SmallFile.write(Self.path(store, id), Array(text.utf8), mode: 0o600)
    }

    static func load(_ store: SessionStore, _ id: UInt64) -> KeeperStatus? {
        guard let contents = try? SmallFile.read(path(store, id), limit: 4096) else { return nil }
        var status = KeeperStatus(pid: 0, event: "?", at: 0, lifetime: 0)
        for line in String(decoding: contents.bytes, as: UTF8.self).split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { continue }
            switch parts[0] {
            case "pid": status.pid = Int32(parts[1]) ?? 0
            case "event": status.event = parts[1]
            case "at": status.at = UInt64(parts[1]) ?? 0
            case "lifetime": status.lifetime = UInt32(parts[1]) ?? 0
            default: break
            }
        }
        return status
    }

    /// Whether the keeper that wrote this still runs.
    var isRunning: Bool { pid > 0 && (kill(pid, 0) == 0 || errno == EPERM) }
}

extension CSPCommand {
    struct Sessions: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the sessions this csp signaled (and what their keepers do).",
            discussion: """
                Reads the state directory (--state-dir, $CSP_STATE_DIR, ~/.local/state/csp): one \
                line per session with its role, flow, peer, last sequence, the middleboxes of the \
                last answer, and, for a session kept by `csp keep`, the keeper's last event and \
                whether it still runs. --json prints one array for scripts. Exit 0.
                """)
        @Flag(help: "Print a JSON array.") var json = false
        @OptionGroup var common: Common

        mutating func run() throws {
            let store = common.sessions
            let ids = SmallFile.names(in: store.directory, suffix: ".session").compactMap { UInt64($0.dropLast(8), radix: 16) }
            let entries = ids.compactMap { store.load($0) }
            if json {
                print("[" + entries.map { jsonObject($0, keeper: KeeperStatus.load(store, $0.sessionID)) }.joined(separator: ",") + "]")
                return
            }
            if entries.isEmpty {
                print("no sessions in \(store.directory)")
                return
            }
            print("ID                ROLE       FLOW                                              PEER             SEQ  KEEPER")
            for entry in entries {
                let flow = entry.flow.map { "\($0)" } ?? "-"
                var keeper = "-"
                if let status = KeeperStatus.load(store, entry.sessionID) {
                    keeper = "\(status.isRunning ? "running" : "stopped") pid \(status.pid): \(status.event) \(age(status.at)) ago"
                }
                print(
                    [
                        hex(entry.sessionID), pad(role(entry), 10), pad(flow, 49), pad("\(entry.peer)", 16),
                        pad("\(entry.lastSequence)", 4), keeper,
                    ].joined(separator: " "))
            }
        }

        func role(_ entry: SessionStore.Entry) -> String {
            entry.responder ? "responder" : entry.incoming ? "listener" : "initiator"
        }

        func age(_ at: UInt64) -> String {
            let now = wallClockSeconds()
            return "\(now >= at ? now - at : 0)s"
        }

        func pad(_ text: String, _ width: Int) -> String { text.count >= width ? text : text + String(repeating: " ", count: width - text.count) }

        func jsonObject(_ entry: SessionStore.Entry, keeper: KeeperStatus?) -> String {
            var fields = [
                "\"id\":\"\(hex(entry.sessionID))\"", "\"role\":\"\(role(entry))\"", "\"peer\":\"\(entry.peer)\"",
                "\"sequence\":\(entry.lastSequence)",
            ]
            if let flow = entry.flow {
                fields.append(
                    "\"flow\":{\"proto\":\(flow.proto.rawValue),\"source\":\"\(flow.source)\",\"source_port\":\(flow.sourcePort),"
                        + "\"destination\":\"\(flow.destination)\",\"destination_port\":\(flow.destinationPort)}")
            }
            fields.append("\"middleboxes\":[" + entry.records.map { "{\"id\":\"\(hex($0.id))\",\"epoch\":\($0.epoch)}" }.joined(separator: ",") + "]")
            if let keeper {
                fields.append(
                    "\"keeper\":{\"pid\":\(keeper.pid),\"running\":\(keeper.isRunning),\"event\":\"\(keeper.event)\",\"at\":\(keeper.at),\"lifetime\":\(keeper.lifetime)}")
            }
            return "{" + fields.joined(separator: ",") + "}"
        }
    }
}
