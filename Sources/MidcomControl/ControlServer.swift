import Glibc
import SystemSupport
import Synchronization

/// The daemon side of the control socket (protocol in ControlProtocol.swift).
///
/// midcomd creates one, calls `run()` on a dedicated thread, and calls `stop()` from its shutdown path.
/// Connections are served one at a time on the `run()` thread: requests are rare and cheap, and serial service
/// means the handler never runs concurrently with itself. The price is that one client can delay the next, so
/// each connection is bounded by `connectionTimeout`.
public final class ControlServer: Sendable {
    public let path: String
    private let listener: UnixStreamSocket
    private let wakeup: WakeupPipe
    private let identity: FileIdentity?
    private let handler: @Sendable (ControlRequest) -> ControlResponse
    private let log: @Sendable (String) -> Void
    private let connectionTimeout: Duration
    private let maxRequestLineBytes: Int
    private let access: ControlAccess
    private let stopped = Atomic<Bool>(false)

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
                if !serve(connection) { return }
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

    /// Answers the requests of one connection until it ends; false if `stop()` interrupted it.
    private func serve(_ connection: borrowing UnixStreamSocket) -> Bool {
        do {
            // A backstop: every wait below is bounded by poll() against the deadline anyway, except send().
            try connection.setTimeouts(connectionTimeout)
        } catch {
            log("control socket \(path): setsockopt failed: \(ControlError.errnoText(error.errno))")
            return true
        }
        let peer: PeerCredentials
        do {
            peer = try connection.peerCredentials()
        } catch {
            log("control socket \(path): cannot read the peer's credentials: \(error)")
            return true
        }
        let newline = ControlLineCodec.newline
        var pending: [UInt8] = []
        var deadline = ContinuousClock.now + connectionTimeout
        while true {
            while let end = pending.firstIndex(of: newline) {
                guard end <= maxRequestLineBytes else { return refuseOversizedLine(on: connection) }
                let line = pending[..<end]
                if !Self.isBlank(line) {
                    guard respond(to: line, on: connection, peer: peer) else { return true }
                }
                pending.removeSubrange(...end)
                deadline = ContinuousClock.now + connectionTimeout
            }
            if pending.count > maxRequestLineBytes { return refuseOversizedLine(on: connection) }

            let ready: [Bool]?
            do {
                ready = try pollReadable([connection.fd, wakeup.fd], timeout: deadline - ContinuousClock.now)
            } catch {
                log("control socket \(path): poll failed: \(ControlError.errnoText(error.errno))")
                return true
            }
            guard let ready else {
                if !pending.isEmpty { log("control socket \(path): client sent no complete request in time") }
                return true
            }
            if ready[1] { return false }
            do {
                let received = try connection.receive(appendingTo: &pending, limit: 4096)
                if received == 0 {
                    // A last request without its newline (`printf '...' | socat`) is still answered.
                    if !Self.isBlank(pending[...]) { _ = respond(to: pending[...], on: connection, peer: peer) }
                    return true
                }
            } catch where error.errno == EAGAIN || error.errno == EWOULDBLOCK {
                continue
            } catch {
                return true  // ECONNRESET and the like: the client is gone
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

    /// The line cannot be resynchronised (its end may be far away or never come), so answer and hang up.
    private func refuseOversizedLine(on connection: borrowing UnixStreamSocket) -> Bool {
        log("control socket \(path): request line longer than \(maxRequestLineBytes) bytes, connection closed")
        _ = send(.failure("request line exceeds \(maxRequestLineBytes) bytes"), on: connection)
        return true
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
