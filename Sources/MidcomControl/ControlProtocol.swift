// The Midcom control protocol, version 1: how `midctl` (and scripts) talk to `midcomd`.
//
// Transport
//   A SOCK_STREAM Unix-domain socket, by default /run/midcom/control.sock (systemd creates /run/midcom through
//   RuntimeDirectory=midcom). The daemon creates the socket with mode 0660, so access is granted through the
//   socket file's group.
//
// Framing
//   Newline-delimited JSON: each request is one JSON object on one line terminated by "\n" (0x0A), and the daemon
//   answers every request line with exactly one response line. JSON strings escape control characters, so a
//   newline never appears inside a message. A client may send several requests on one connection; midctl sends one
//   and closes. Empty lines are ignored. A request line longer than `ControlProtocol.maxRequestLineBytes` (64 KiB,
//   not counting the newline) is answered with an error response and the connection is closed, because the
//   daemon cannot tell where the next request would begin. Responses have no size limit on the wire; clients cap
//   what they accept at `ControlProtocol.maxResponseBytes`.
//
// Streams
//   `monitor` answers, then sends one event line at a time. `sessions` with "stream":true answers with
//   {"ok":true,"stream":"session-rows"}, then binary frames of rows and an end frame (SessionRowStream.swift), then
//   closes: the daemon copies a few thousand sessions under its engine lock at a time and sends each frame before it
//   makes the next, so a listing of a million sessions neither holds the lock nor builds one giant reply.
//
// Timeouts
//   Each connection is bounded: a connection that does not complete a request line within the server's connection
//   timeout (2 s by default), or does not drain a response (or, in a stream, each frame) within it, is closed; a
//   stream also ends after `ControlServer.maximumStreamDuration`. Clients should bound their wait as well (midctl:
//   5 s; for a `sessions` stream 5 s without progress, 120 s for the single-line answer of an older daemon).
//
// Request object (field names are the Swift property names below)
//   version    integer, optional, default 1. A daemon rejects versions it does not speak with an error response
//              naming the versions it supports. Additions that old peers can ignore keep the version; anything that
//              changes the meaning of an existing field bumps it.
//   command    "sessions" | "show" | "delete" | "flush" | "status" | "denies" | "undeny"
//   sessionID  string, 16 hex digits; required by "show", "delete" and "undeny" (a DENY filter's id),
//              ignored otherwise
//   dryRun     boolean, optional, default false; for "delete" and "flush": report what would be deleted, change
//              nothing (in the daemon's table or in the kernel)
//   stream     boolean, optional, for "sessions": answer with row frames (see Streams) instead of one line
//
// Response object
//   ok         boolean
//   error      string, present when ok is false: one sentence for the operator
//   sessions   array of session records; "sessions" returns all, "show" returns exactly one
//   status     daemon status object, for "status"
//   affected   array of session ids: deleted, or with dryRun the ones that would be deleted ("delete", "flush",
//              "undeny")
//   denies     array of DENY filter records, for "denies"
//   stream     "session-rows" when row frames follow the line
//   Absent optional values are omitted rather than encoded as null.
//
// Example
//   > {"command":"show","dryRun":false,"sessionID":"00000000000000a1","version":1}
//   < {"ok":true,"sessions":[{"action":"admit","ageSeconds":12.5,"destination":"2001:db8::2", ...}]}
//   > {"command":"show","sessionID":"ffffffffffffffff"}
//   < {"error":"no session with id ffffffffffffffff","ok":false}

/// Constants of the control protocol.
public enum ControlProtocol {
    /// The protocol version this library speaks; sent in every request.
    public static let version = 1
    /// Where `midcomd` listens unless configured otherwise.
    public static let defaultSocketPath = "/run/midcom/control.sock"
    /// The longest request line a server accepts, newline excluded.
    public static let maxRequestLineBytes = 64 * 1024
    /// The longest response line a client accepts: room for well over 100 000 session records.
    /// About 4 million sessions as JSON: a cap against a runaway peer, not a working limit.
    public static let maxResponseBytes = 1024 * 1024 * 1024
}

/// What a request asks the daemon to do.
public enum ControlCommand: String, Codable, Sendable, CaseIterable {
    /// List every session.
    case sessions
    /// One session by id.
    case show
    /// Delete one session (and its kernel state) by id.
    case delete
    /// Delete every session.
    case flush
    /// Daemon status and counters.
    case status
    /// List the DENY filters victims asked for (docs/PROTOCOL.md 6.8).
    case denies
    /// Remove one DENY filter (and its kernel element) by id.
    case undeny
    /// Read the configuration file again and take it over (as SIGHUP does).
    case reload
    /// Each policy rule with how often it decided.
    case rules
    /// The configuration in effect, as midcomd.conf text.
    case showConfig = "show-config"
    /// Stream session events live: after the `ok` response, one `ControlEvent` line each.
    /// Restart the NAT-PMP/PCP epoch and announce it again (a HA pair's new active box).
    case announce
        case monitor

    /// Whether the command names one session through `ControlRequest.sessionID`.
    public var needsSessionID: Bool { self == .show || self == .delete || self == .undeny }
}

/// One request line.
public struct ControlRequest: Codable, Sendable, Equatable {
    public var version: Int = ControlProtocol.version
    public var command: ControlCommand
    public var sessionID: String?
    public var dryRun: Bool = false
    /// `sessions`: only the sessions that match every given field.
    public var filter: SessionFilter?
    /// `sessions`: answer with row frames after the answer line (SessionRowStream.swift) instead of
    /// one JSON line holding every record. Absent (nil) for the single line, as before.
    public var stream: Bool?

    public init(command: ControlCommand, sessionID: String? = nil, dryRun: Bool = false, filter: SessionFilter? = nil, stream: Bool? = nil) {
        self.command = command
        self.sessionID = sessionID
        self.dryRun = dryRun
        self.filter = filter
        self.stream = stream
    }

    private enum CodingKeys: String, CodingKey { case version, command, sessionID, dryRun, filter, stream }

    // Written by hand so that `version` and `dryRun` may be omitted by hand-written requests (`socat`, scripts);
    // the synthesized decoder would require every key.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        version = try container.decodeIfPresent(Int.self, forKey: .version) ?? ControlProtocol.version
        command = try container.decode(ControlCommand.self, forKey: .command)
        sessionID = try container.decodeIfPresent(String.self, forKey: .sessionID)
        dryRun = try container.decodeIfPresent(Bool.self, forKey: .dryRun) ?? false
        filter = try container.decodeIfPresent(SessionFilter.self, forKey: .filter)
        stream = try container.decodeIfPresent(Bool.self, forKey: .stream)
    }

    /// The reason this request cannot be served by a version-1 daemon, or nil if it is well formed.
    /// Servers check this before calling their handler, so handlers may rely on it.
    public var validationError: String? {
        if version != ControlProtocol.version {
            return "unsupported control protocol version \(version); this midcomd speaks version \(ControlProtocol.version)"
        }
        if command.needsSessionID {
            guard let sessionID else {
                return "command '\(command.rawValue)' needs a sessionID"
            }
            guard SessionRecord.normalizedID(sessionID) != nil else {
                return "session id '\(sessionID)' is not 16 hex digits"
            }
        }
        return nil
    }
}

/// Which sessions `midctl sessions` lists: each given field must match.
public struct SessionFilter: Codable, Sendable, Equatable {
    /// An address or prefix the session's source or destination is in.
    public var address: String?
    /// "udp", "tcp", or a number.
    public var proto: String?
    /// The source or destination port.
    public var port: UInt16?
    /// "pending", "admitted", "redirected", "legacy".
    public var state: String?
    /// "csp", "nat-pmp", "pcp".
    public var origin: String?
    public var application: String?

    public init(
        address: String? = nil, proto: String? = nil, port: UInt16? = nil, state: String? = nil, origin: String? = nil,
        application: String? = nil
    ) {
        self.address = address
        self.proto = proto
        self.port = port
        self.state = state
        self.origin = origin
        self.application = application
    }

    public var isEmpty: Bool { self == SessionFilter() }
}

/// One live event (`midctl monitor`): what happened to which session, when.
public struct ControlEvent: Codable, Sendable, Equatable {
    /// Seconds since 1970 (wall clock).
    public var time: Double
    /// setup, admit, reject, redirect, challenge, refresh, teardown, rebind, path, deny, map,
    /// expire, revoke, delete, unsignaled, ruleset, reload, lost (events a slow reader missed).
    public var kind: String
    /// 16 hex digits, when the event concerns one session.
    public var session: String?
    public var text: String

    public init(time: Double, kind: String, session: String? = nil, text: String) {
        self.time = time
        self.kind = kind
        self.session = session
        self.text = text
    }
}

/// A subscriber's view of the daemon's events (the server streams them to a `monitor` client).
public protocol EventSubscription: Sendable {
    /// The events since the last call (empty when none).
    func take() -> [ControlEvent]
    /// No more events: the client went away.
    func cancel()
}

/// A policy rule as `midctl rules` shows it.
public struct RuleRecord: Codable, Sendable, Equatable {
    /// 1-based position in the configuration; 0 for the default action.
    public var position: Int
    public var name: String
    /// What it matches, as written ("tcp port 23 incoming"); "any" for the default action.
    public var match: String
    public var action: String
    /// Requests it decided since start or the last reload.
    public var hits: UInt64

    public init(position: Int, name: String, match: String, action: String, hits: UInt64) {
        self.position = position
        self.name = name
        self.match = match
        self.action = action
        self.hits = hits
    }
}

/// A further path of a session (docs/PROTOCOL.md 6.7): its ID and flow.
public struct PathRecord: Codable, Sendable, Equatable {
    public var id: UInt8
    public var source: String
    public var sourcePort: UInt16
    public var destination: String
    public var destinationPort: UInt16

    public init(id: UInt8, source: String, sourcePort: UInt16, destination: String, destinationPort: UInt16) {
        self.id = id
        self.source = source
        self.sourcePort = sourcePort
        self.destination = destination
        self.destinationPort = destinationPort
    }
}

/// One signaled session as the daemon reports it.
public struct SessionRecord: Codable, Sendable, Equatable {
    /// 16 lowercase hex digits.
    public var id: String
    /// "udp", "tcp", ...
    public var proto: String
    public var source: String
    public var sourcePort: UInt16
    public var destination: String
    public var destinationPort: UInt16
    /// e.g. "pending", "admitted", "rejected", "redirected", "mapped".
    public var state: String
    /// What the gateway installed: "admit", "redirect", "nat", "deny", "none".
    public var action: String
    public var ageSeconds: Double
    /// nil: the session does not expire.
    public var remainingSeconds: Double?
    /// From the kernel element counters; nil if unknown.
    public var packets: UInt64?
    public var bytes: UInt64?
    public var application: String?
    public var peerMiddleboxes: Int?
    /// The session's further paths (multihoming: path ID > 0); nil or empty when it has one.
    public var paths: [PathRecord]?
    /// Where the session came from: "nat-pmp", "pcp"; nil for CSP.
    public var origin: String?

    public init(
        id: String, proto: String,
        source: String, sourcePort: UInt16,
        destination: String, destinationPort: UInt16,
        state: String, action: String,
        ageSeconds: Double, remainingSeconds: Double? = nil,
        packets: UInt64? = nil, bytes: UInt64? = nil,
        application: String? = nil, peerMiddleboxes: Int? = nil
    ) {
        self.id = id
        self.proto = proto
        self.source = source
        self.sourcePort = sourcePort
        self.destination = destination
        self.destinationPort = destinationPort
        self.state = state
        self.action = action
        self.ageSeconds = ageSeconds
        self.remainingSeconds = remainingSeconds
        self.packets = packets
        self.bytes = bytes
        self.application = application
        self.peerMiddleboxes = peerMiddleboxes
    }

    /// `text` as a session id in canonical form (16 lowercase hex digits), or nil if it is not 16 hex digits.
    /// Operators copy ids from tables and logs, so upper case is accepted.
    public static func normalizedID(_ text: String) -> String? {
        guard text.utf8.count == 16, text.utf8.allSatisfy({ isHexDigit($0) }) else { return nil }
        return text.lowercased()
    }

    private static func isHexDigit(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "f"),
            UInt8(ascii: "A")...UInt8(ascii: "F"):
            return true
        default:
            return false
        }
    }
}

/// What `status` reports about the running daemon.
public struct DaemonStatus: Codable, Sendable, Equatable {
    public var version: String
    public var pid: Int32
    public var uptimeSeconds: Double
    public var epoch: UInt32
    public var queueNumbers: [UInt16]
    public var queueEncoding: String
    public var sessions: Int
    /// Named event counters; printed in key order.
    public var counters: [String: UInt64]
    /// The daemon's table in the kernel: "intact", or what an nftables reload did to it.
    public var ruleset: String?
    /// The flowtable admitted flows are offloaded to ("fastpath on lan0, wan0"), or "off".
    public var flowtable: String?

    public init(
        version: String, pid: Int32, uptimeSeconds: Double, epoch: UInt32,
        queueNumbers: [UInt16], queueEncoding: String, sessions: Int, counters: [String: UInt64]
    ) {
        self.version = version
        self.pid = pid
        self.uptimeSeconds = uptimeSeconds
        self.epoch = epoch
        self.queueNumbers = queueNumbers
        self.queueEncoding = queueEncoding
        self.sessions = sessions
        self.counters = counters
    }
}

/// One response line.
/// One DENY filter as the daemon reports it.
public struct DenyRecord: Codable, Sendable, Equatable {
    /// The DENY's session ID (16 hex digits): the victim refreshes or removes it under this.
    public var id: String
    /// The requester: the victim address the filter protects, and the key that asked (its
    /// 16-hex-digit ID; nil for a filter adopted after a restart and not claimed again yet).
    public var victim: String
    public var key: String?
    /// "203.0.113.0/24"
    public var source: String
    /// "udp", "tcp", ... or "any"
    public var proto: String
    /// nil: any destination port.
    public var port: UInt16?
    /// "drop", or "rate-limit" (the ruleset's rate passes, the rest is dropped).
    public var action: String = "drop"
    public var ageSeconds: Double
    public var remainingSeconds: Double
    /// Dropped so far, from the kernel element's counter; nil if unknown.
    public var packets: UInt64?
    public var bytes: UInt64?

    public init(
        id: String, victim: String, key: String?, source: String, proto: String, port: UInt16?, ageSeconds: Double,
        remainingSeconds: Double, packets: UInt64?, bytes: UInt64?
    ) {
        self.id = id
        self.victim = victim
        self.key = key
        self.source = source
        self.proto = proto
        self.port = port
        self.ageSeconds = ageSeconds
        self.remainingSeconds = remainingSeconds
        self.packets = packets
        self.bytes = bytes
    }
}

public struct ControlResponse: Codable, Sendable, Equatable {
    public var ok: Bool
    public var error: String?
    public var sessions: [SessionRecord]?
    public var status: DaemonStatus?
    /// Ids deleted, or with `dryRun` the ids that would be deleted.
    public var affected: [String]?
    public var denies: [DenyRecord]?
    /// One line for the operator (e.g. what a reload changed), or the configuration text.
    public var message: String?
    public var rules: [RuleRecord]?
    /// `SessionRowStream.marker` when row frames follow this line (a `sessions` request with `stream`).
    public var stream: String?
    /// midrelayd's answer to `sessions`: its relayed sessions.
    public var relayed: [RelayedSessionRecord]?

    public init(
        ok: Bool, error: String? = nil, sessions: [SessionRecord]? = nil,
        status: DaemonStatus? = nil, affected: [String]? = nil, denies: [DenyRecord]? = nil, message: String? = nil,
        rules: [RuleRecord]? = nil, stream: String? = nil, relayed: [RelayedSessionRecord]? = nil
    ) {
        self.relayed = relayed
        self.stream = stream
        self.message = message
        self.rules = rules
        self.ok = ok
        self.error = error
        self.sessions = sessions
        self.status = status
        self.affected = affected
        self.denies = denies
    }

    /// A failed request, with one sentence for the operator.
    public static func failure(_ message: String) -> ControlResponse {
        ControlResponse(ok: false, error: message)
    }
}
