import Foundation
import Glibc
import SystemSupport
import Synchronization

/// What the daemon answers to a `sessions` stream request: a refusal (one sentence), or where
/// the rows come from.
public enum SessionRowAnswer {
    case refused(String)
    case rows(any SessionRowSource)
}

/// The rows of a session listing, a frame at a time (made on the connection's thread: a source
/// takes the daemon's locks only while it makes a frame).
public protocol SessionRowSource {
    /// The next frame's rows; nil after the last.
    mutating func nextFrame() -> SessionRowFrameBuilder?
}

/// The daemon side of the control socket (protocol in ControlProtocol.swift).
///
/// midcomd creates one, calls `run()` on a dedicated thread, and calls `stop()` from its shutdown path.
/// `run()` only accepts: each connection is served on a thread of its own, so an idle, slow or
/// hostile client holds nothing but its own connection, and an operator's command is answered
/// while it waits. Connections are bounded — per user (`connectionsPerUser`; root has a share of
/// its own), in all (`maximumConnections`) and in time (a complete request within
/// `connectionTimeout`; blank lines do not extend it) — and refusals are logged. The handler may
/// therefore run on several threads at once: midcomd's handler takes its own locks.
public final class ControlServer: Sendable {
    public let path: String
    private let listener: UnixStreamSocket
    private let wakeup: WakeupPipe
    private let identity: FileIdentity?
    private let handler: @Sendable (ControlRequest) -> ControlResponse
    /// Opens a subscription to the daemon's events for a `monitor` client; nil: not offered.
    private let subscribe: (@Sendable () -> (any EventSubscription)?)?
    /// Serves `sessions` requests with `stream` (row frames); nil: they get the single-line answer.
    private let sessionRows: (@Sendable (ControlRequest) -> SessionRowAnswer)?
    private let log: @Sendable (String) -> Void
    private let connectionTimeout: Duration
    private let maxRequestLineBytes: Int
    private let access: ControlAccess
    private let stopped = Atomic<Bool>(false)
    /// Connections being served, per user id and in all.
    private let open = Mutex<(byUser: [UInt32: Int], total: Int)>(([:], 0))
    public static let connectionsPerUser = 4
    /// Root's own share: other users filling theirs cannot lock the operator out.
    public static let connectionsForRoot = 32
    public static let maximumConnections = 64
    /// The longest a session-row stream may take: a reader that keeps taking a few octets just in
    /// time cannot hold its connection (and thread) forever.
    public static let maximumStreamDuration: Duration = .seconds(300)
    /// Refusals logged this second (a flood of connections must not become a flood of lines).
    private let refusalLog = Mutex<(second: Int, count: Int)>((0, 0))

    /// Creates the socket at `path` (mode 0660) and starts listening; connections wait in the backlog until `run()`.
    ///
    /// A socket file left at `path` by a daemon that died is removed; if a live daemon still answers there, this
    /// throws `.addressInUse` instead of stealing its socket. Anything else at `path` is left alone and reported.
    ///
    /// - Parameters:
    ///   - handler: answers each well-formed request (version and session id already checked, the id in
    ///     canonical lower case); called on the `run()` thread.
    ///   - connectionTimeout: how long a client may take to send a complete request line, and to accept the
    ///     response, before it is disconnected.
    ///   - log: receives one line per connection-level problem (timeouts, oversized lines, syscall failures).
    public init(
        path: String,
        connectionTimeout: Duration = .seconds(2),
        maxRequestLineBytes: Int = ControlProtocol.maxRequestLineBytes,
        access: ControlAccess = ControlAccess(),
        log: @escaping @Sendable (String) -> Void = { _ in },
        subscribe: (@Sendable () -> (any EventSubscription)?)? = nil,
        sessionRows: (@Sendable (ControlRequest) -> SessionRowAnswer)? = nil,
        handler: @escaping @Sendable (ControlRequest) -> ControlResponse
    ) throws(ControlError) {
        guard let address = UnixSocketAddress(path: path) else { throw .pathTooLong(path: path) }
        try Self.removeStaleSocket(at: path, address: address)

        let notifier: WakeupPipe
        do {
            notifier = try WakeupPipe()
        } catch {
            throw Self.failure(error, path: path)
        }
        let socket = try Self.makeListener(path: path, address: address, mode: access.isConfigured ? 0o666 : 0o660)
        do {
            self.identity = try FileIdentity.of(path: path)
        } catch {
            _ = try? unlinkFile(path)
            throw Self.failure(error, path: path)
        }
        self.path = path
        self.access = access
        self.listener = socket
        self.wakeup = notifier
        self.handler = handler
        self.subscribe = subscribe
        self.sessionRows = sessionRows
        self.log = log
        self.connectionTimeout = connectionTimeout
        self.maxRequestLineBytes = maxRequestLineBytes
    }

    deinit {
        if !stopped.load(ordering: .acquiring) { removeSocketFile() }
    }

    /// Serves connections until `stop()` is called; returns promptly then, even in the middle of a connection.
    /// Never throws: a failing client or a failing accept is logged and the loop goes on.
    public func run() {
        while !stopped.load(ordering: .acquiring) {
            let ready: [Bool]?
            do {
                ready = try pollReadable([listener.fd, wakeup.fd], timeout: nil)
            } catch {
                log("control socket \(path): poll failed: \(ControlError.errnoText(error.errno))")
                if pause() { return }
                continue
            }
            guard let ready, !ready[1] else { return }
            guard ready[0] else { continue }
            do {
                let connection = try listener.accept()
                admit(connection)
            } catch {
                switch error.errno {
                case EAGAIN, EWOULDBLOCK, ECONNABORTED:
                    continue  // the client went away before we accepted it
                default:
                    // EMFILE and friends: pause instead of spinning on a listener that stays readable.
                    log("control socket \(path): accept failed: \(ControlError.errnoText(error.errno))")
                    if pause() { return }
                }
            }
        }
    }

    /// Makes `run()` return and removes the socket file. Safe from any thread, any number of times.
    public func stop() {
        guard stopped.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
        else { return }
        wakeup.signal()
        removeSocketFile()
    }

    // MARK: - Connections

    /// A connection handed to its own thread.
    private final class Connection: Sendable {
        let socket: UnixStreamSocket
        let peer: PeerCredentials
        init(_ socket: consuming UnixStreamSocket, peer: PeerCredentials) {
            self.socket = socket
            self.peer = peer
        }
    }

    /// Serves `socket` on a thread of its own if its user and the server have room; otherwise
    /// answers one error line at once and closes it.
    private func admit(_ socket: consuming UnixStreamSocket) {
        let peer: PeerCredentials
        do {
            try socket.setTimeouts(connectionTimeout)
            peer = try socket.peerCredentials()
        } catch {
            log("control socket \(path): cannot set up a connection: \(error)")
            return
        }
        let share = peer.uid == 0 ? Self.connectionsForRoot : Self.connectionsPerUser
        let admitted = open.withLock { open -> Bool in
            // Root's share is counted apart from the total: the others cannot exhaust it.
            guard open.byUser[peer.uid, default: 0] < share, peer.uid == 0 || open.total < Self.maximumConnections else { return false }
            open.byUser[peer.uid, default: 0] += 1
            if peer.uid != 0 { open.total += 1 }
            return true
        }
        guard admitted else {
            let message = "too many control connections from uid \(peer.uid) (at most \(share) at a time, \(Self.maximumConnections) in all)"
            logRefusal("control socket \(path): refused a connection: \(message)")
            _ = send(.failure(message), on: socket)
            return
        }
        let connection = Connection(socket, peer: peer)
        Thread.detachNewThread { [self] in
            serve(connection.socket, peer: connection.peer)
            open.withLock { open in
                open.byUser[connection.peer.uid, default: 1] -= 1
                if open.byUser[connection.peer.uid] == 0 { open.byUser[connection.peer.uid] = nil }
                if connection.peer.uid != 0 { open.total -= 1 }
            }
        }
    }

    private func logRefusal(_ line: String) {
        let now = Int(time(nil))
        let first = refusalLog.withLock { state -> Bool in
            if state.second != now { state = (now, 0) }
            state.count += 1
            return state.count <= 5
        }
        if first { log(line) }
    }

    /// Answers the requests of one connection until it ends, is idle too long, or `stop()`.
    private func serve(_ connection: borrowing UnixStreamSocket, peer: PeerCredentials) {
        let newline = ControlLineCodec.newline
        var pending: [UInt8] = []
        // A complete request must arrive within `connectionTimeout` of the connection or of the
        // last answer; blank lines do not extend it (one blank line a second would hold the
        // connection forever).
        var deadline = ContinuousClock.now + connectionTimeout
        while true {
            while let end = pending.firstIndex(of: newline) {
                guard end <= maxRequestLineBytes else { return refuseOversizedLine(on: connection) }
                let line = pending[..<end]
                let blank = Self.isBlank(line)
                if !blank {
                    if subscribe != nil || sessionRows != nil,
                        let request = try? ControlLineCodec.decode(ControlRequest.self, line: line, what: "request"),
                        request.validationError == nil
                    {
                        if let subscribe, request.command == .monitor { return stream(subscribe, on: connection, peer: peer) }
                        if let sessionRows, request.command == .sessions, request.stream == true {
                            return streamSessions(request, sessionRows, on: connection, peer: peer)
                        }
                    }
                    guard respond(to: line, on: connection, peer: peer) else { return }
                }
                pending.removeSubrange(...end)
                if !blank { deadline = ContinuousClock.now + connectionTimeout }
            }
            if pending.count > maxRequestLineBytes { return refuseOversizedLine(on: connection) }

            let ready: [Bool]?
            do {
                ready = try pollReadable([connection.fd, wakeup.fd], timeout: max(.zero, deadline - ContinuousClock.now))
            } catch {
                log("control socket \(path): poll failed: \(ControlError.errnoText(error.errno))")
                return
            }
            guard let ready else {
                logRefusal("control socket \(path): closed a connection of uid \(peer.uid) that sent no complete request within \(connectionTimeout)")
                return
            }
            if ready[1] { return }
            do {
                let received = try connection.receive(appendingTo: &pending, limit: 4096)
                if received == 0 {
                    // A last request without its newline (`printf '...' | socat`) is still answered.
                    if !Self.isBlank(pending[...]) { _ = respond(to: pending[...], on: connection, peer: peer) }
                    return
                }
            } catch where error.errno == EAGAIN || error.errno == EWOULDBLOCK {
                continue
            } catch {
                return  // ECONNRESET and the like: the client is gone
            }
        }
    }

    /// Decodes, validates and answers one line; false if the client can no longer be written to.
    private func respond(to line: ArraySlice<UInt8>, on connection: borrowing UnixStreamSocket, peer: PeerCredentials) -> Bool {
        var response: ControlResponse
        do {
            var request = try ControlLineCodec.decode(ControlRequest.self, line: line, what: "request")
            if let problem = request.validationError {
                response = .failure(problem)
            } else if let refusal = access.refusal(of: request.command, by: peer) {
                log("control socket \(path): \(refusal)")
                response = .failure(refusal)
            } else {
                if request.command.needsSessionID {
                    request.sessionID = request.sessionID.flatMap(SessionRecord.normalizedID)
                }
                response = handler(request)
            }
        } catch {
            response = .failure(error.message)
        }
        return send(response, on: connection)
    }

    /// `monitor`: after the `ok` answer, the daemon's events as they come, until the client hangs
    /// up or the server stops. Events are taken every 100 ms (the client's hang-up is noticed
    /// meanwhile); a client that does not read its events in time is disconnected.
    private func stream(_ subscribe: @Sendable () -> (any EventSubscription)?, on connection: borrowing UnixStreamSocket, peer: PeerCredentials) {
        if let refusal = access.refusal(of: .monitor, by: peer) {
            log("control socket \(path): \(refusal)")
            _ = send(.failure(refusal), on: connection)
            return
        }
        guard let subscription = subscribe() else {
            logRefusal("control socket \(path): refused a monitor of uid \(peer.uid): too many monitors")
            _ = send(.failure("too many monitors are running (at most 16): stop one first"), on: connection)
            return
        }
        defer { subscription.cancel() }
        guard send(ControlResponse(ok: true, message: "monitoring"), on: connection) else { return }
        while !stopped.load(ordering: .acquiring) {
            for event in subscription.take() {
                guard let line = try? ControlLineCodec.encodeLine(event), (try? connection.sendAll(line)) != nil else { return }
            }
            // Readable here means the client closed (or sent something it should not): stop.
            let ready = (try? pollReadable([connection.fd, wakeup.fd], timeout: .milliseconds(100))) ?? nil
            if ready != nil { return }
        }
    }

    /// `sessions` with `stream`: the answer line, then one frame of rows at a time as the daemon
    /// makes them, then the end frame; the connection closes after it. Each frame must be taken
    /// within `connectionTimeout`, the whole stream within `maximumStreamDuration`; a reader that
    /// falls behind is disconnected (the daemon holds one frame for it, never the engine lock).
    private func streamSessions(
        _ request: ControlRequest, _ sessionRows: @Sendable (ControlRequest) -> SessionRowAnswer, on connection: borrowing UnixStreamSocket,
        peer: PeerCredentials
    ) {
        if let refusal = access.refusal(of: .sessions, by: peer) {
            log("control socket \(path): \(refusal)")
            _ = send(.failure(refusal), on: connection)
            return
        }
        switch sessionRows(request) {
        case .refused(let message):
            _ = send(.failure(message), on: connection)
        case .rows(var source):
            guard send(ControlResponse(ok: true, stream: SessionRowStream.marker), on: connection) else { return }
            let end = ContinuousClock.now + Self.maximumStreamDuration
            var total: UInt64 = 0
            while let frame = source.nextFrame() {
                let now = ContinuousClock.now
                if stopped.load(ordering: .acquiring) || now > end {
                    let reason = now > end ? "the listing took longer than \(Self.maximumStreamDuration)" : "midcomd is stopping"
                    _ = try? connection.sendAll(SessionRowFrameBuilder.errorFrame(reason), deadline: now + connectionTimeout)
                    return
                }
                total += UInt64(frame.count)
                do {
                    try connection.sendAll(frame.frame, deadline: now + connectionTimeout)
                } catch {
                    if error.errno == EAGAIN || error.errno == EWOULDBLOCK {
                        logRefusal("control socket \(path): closed a session listing of uid \(peer.uid): its reader did not keep up (\(total) rows sent)")
                    }
                    return
                }
            }
            _ = try? connection.sendAll(SessionRowFrameBuilder.endFrame(total: total), deadline: ContinuousClock.now + connectionTimeout)
        }
    }

    /// The line cannot be resynchronised (its end may be far away or never come), so answer and hang up.
    private func refuseOversizedLine(on connection: borrowing UnixStreamSocket) {
        logRefusal("control socket \(path): request line longer than \(maxRequestLineBytes) bytes, connection closed")
        _ = send(.failure("request line exceeds \(maxRequestLineBytes) bytes"), on: connection)
    }

    private func send(_ response: ControlResponse, on connection: borrowing UnixStreamSocket) -> Bool {
        let line: [UInt8]
        do {
            line = try ControlLineCodec.encodeLine(response)
        } catch {
            // For example a NaN or infinite Double from the handler, which JSON cannot carry.
            log("control socket \(path): cannot encode response: \(error)")
            line = (try? ControlLineCodec.encodeLine(ControlResponse.failure("midcomd could not encode its response")))
                ?? Array(#"{"ok":false}"#.utf8) + [ControlLineCodec.newline]
        }
        do {
            try connection.sendAll(line)
            return true
        } catch {
            if error.errno == EAGAIN || error.errno == EWOULDBLOCK {
                log("control socket \(path): client did not read its response in time")
            }
            return false
        }
    }

    // MARK: - Helpers

    private static func isBlank(_ line: ArraySlice<UInt8>) -> Bool {
        line.allSatisfy { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") || $0 == UInt8(ascii: "\r") }
    }

    /// Waits 100 ms or until `stop()`; true if stopped.
    private func pause() -> Bool {
        let woken = (try? pollReadable([wakeup.fd], timeout: .milliseconds(100))) ?? nil
        return woken != nil || stopped.load(ordering: .acquiring)
    }

    /// Removes the socket file only if it is still ours: a newer daemon may already have replaced it.
    private func removeSocketFile() {
        guard let identity, let current = try? FileIdentity.of(path: path), current == identity else { return }
        _ = try? unlinkFile(path)
    }

    /// A listening, non-blocking socket bound at `path` with mode 0660; the file is removed again on failure.
    private static func makeListener(path: String, address: UnixSocketAddress, mode: mode_t) throws(ControlError) -> UnixStreamSocket {
        let socket: UnixStreamSocket
        do {
            socket = try UnixStreamSocket.make()
        } catch {
            throw failure(error, path: path)
        }
        do {
            try socket.bind(to: address)
        } catch {
            throw failure(error, path: path)
        }
        do {
            // 0660: only root and the daemon's group. 0666 only when control groups are configured:
            // then every request is checked against the peer's credentials (ControlAccess).
            try changeMode(path, mode)
            try socket.listen(backlog: 16)
            // Non-blocking so that accept() cannot hang when a client gives up between poll() and accept().
            try socket.setNonBlocking()
            return socket
        } catch {
            _ = try? unlinkFile(path)
            throw failure(error, path: path)
        }
    }

    private static func removeStaleSocket(at path: String, address: UnixSocketAddress) throws(ControlError) {
        let existing: FileIdentity?
        do {
            existing = try FileIdentity.of(path: path)
        } catch {
            throw failure(error, path: path)
        }
        guard let existing else { return }
        guard existing.isSocket else {
            throw .systemCallFailed(call: "bind", path: path, errno: EEXIST)
        }
        let refused: Bool
        do {
            let probe = try UnixStreamSocket.make()
            try probe.setTimeouts(.milliseconds(500))
            try probe.connect(to: address)
            refused = false
        } catch {
            switch error.errno {
            case ECONNREFUSED: refused = true  // nobody listens: left by a daemon that did not shut down cleanly
            case EAGAIN: refused = false  // a live daemon with a full backlog
            default: throw failure(error, path: path)
            }
        }
        guard refused else { throw .addressInUse(path: path) }
        do {
            try unlinkFile(path)
        } catch where error.errno == ENOENT {
            // Another process removed it meanwhile; fine.
        } catch {
            throw failure(error, path: path)
        }
    }

    private static func failure(_ error: SystemCallError, path: String) -> ControlError {
        switch error.errno {
        case EACCES, EPERM: .permissionDenied(path: path)
        case EADDRINUSE: .addressInUse(path: path)
        default: .systemCallFailed(call: error.call, path: path, errno: error.errno)
        }
    }
}
