import Glibc
import SystemSupport

/// The client side of the control socket (protocol in ControlProtocol.swift): one connection per request.
public struct ControlClient: Sendable {
    public var path: String
    /// Bounds the whole exchange: connect, send, and waiting for the complete response line.
    public var timeout: Duration

    public init(path: String = ControlProtocol.defaultSocketPath, timeout: Duration = .seconds(5)) {
        self.path = path
        self.timeout = timeout
    }

    /// Sends `request` and returns the daemon's response, whether `ok` or not.
    /// Throws if the daemon cannot be reached or does not answer with a protocol message.
    public func send(_ request: ControlRequest) throws(ControlError) -> ControlResponse {
        guard let address = UnixSocketAddress(path: path) else { throw .pathTooLong(path: path) }
        let deadline = ContinuousClock.now + timeout
        let line: [UInt8]
        do {
            line = try ControlLineCodec.encodeLine(request)
        } catch {
            throw .protocolError("cannot encode the request: \(error)")
        }

        let socket = try openSocket()
        do {
            try socket.connect(to: address)
        } catch {
            throw connectFailure(error)
        }
        do {
            try socket.sendAll(line)
        } catch where error.errno == EPIPE || error.errno == ECONNRESET {
            // The daemon hung up early, typically after refusing the request; its answer may still be readable.
        } catch {
            throw failure(error)
        }
        let response = try receiveLine(from: socket, deadline: deadline)
        do {
            return try ControlLineCodec.decode(ControlResponse.self, line: response, what: "response")
        } catch {
            throw .protocolError(error.message)
        }
    }

    /// `monitor`: sends `request`, checks the daemon's answer, then hands each event line to
    /// `onEvent` until it returns false or the daemon closes the connection (no timeout then).
    public func stream(_ request: ControlRequest, onEvent: (ControlEvent) -> Bool) throws(ControlError) {
        guard let address = UnixSocketAddress(path: path) else { throw .pathTooLong(path: path) }
        let line: [UInt8]
        do { line = try ControlLineCodec.encodeLine(request) } catch { throw .protocolError("cannot encode the request: \(error)") }
        let socket = try openSocket()
        do { try socket.connect(to: address) } catch { throw connectFailure(error) }
        do { try socket.sendAll(line) } catch { throw failure(error) }
        var buffer: [UInt8] = []
        var answered = false
        let answerDeadline = ContinuousClock.now + timeout
        while true {
            while let end = buffer.firstIndex(of: ControlLineCodec.newline) {
                let text = buffer[..<end]
                defer { buffer.removeSubrange(...end) }
                if !answered {
                    let response: ControlResponse
                    do { response = try ControlLineCodec.decode(ControlResponse.self, line: text, what: "response") } catch {
                        throw .protocolError(error.message)
                    }
                    guard response.ok else { throw .refused(response.error ?? "midcomd refused the request") }
                    answered = true
                    continue
                }
                guard let event = try? ControlLineCodec.decode(ControlEvent.self, line: text, what: "event") else { continue }
                if !onEvent(event) { return }
            }
            let ready: [Bool]?
            do {
                ready = try pollReadable([socket.fd], timeout: answered ? nil : answerDeadline - ContinuousClock.now)
            } catch {
                throw failure(error)
            }
            guard ready != nil else { throw .timeout }
            let received: Int
            do { received = try socket.receive(appendingTo: &buffer, limit: 65536) } catch where error.errno == EAGAIN {
                continue
            } catch {
                throw failure(error)
            }
            if received == 0 { return }
        }
    }

    /// `sessions` as a stream (SessionRowStream.swift): sends `request` with `stream` set and hands
    /// each frame of rows to `onRows` as it arrives. `timeout` bounds the wait for each piece (the
    /// answer line, then every frame), not the whole listing. Returns nil once the end frame came
    /// (after checking its row count), or the records of a single-line answer: a daemon from before
    /// streams ignores `stream` and answers as it always did.
    public func listSessions(
        _ request: ControlRequest, onRows: (SessionRowReader) throws(SessionRowStreamError) -> Void
    ) throws(ControlError) -> [SessionRecord]? {
        guard let address = UnixSocketAddress(path: path) else { throw .pathTooLong(path: path) }
        var request = request
        request.stream = true
        let line: [UInt8]
        do { line = try ControlLineCodec.encodeLine(request) } catch { throw .protocolError("cannot encode the request: \(error)") }
        let socket = try openSocket()
        do { try socket.connect(to: address) } catch { throw connectFailure(error) }
        do {
            try socket.sendAll(line)
        } catch where error.errno == EPIPE || error.errno == ECONNRESET {
            // Refused early; the answer may still be readable.
        } catch {
            throw failure(error)
        }
        var buffer: [UInt8] = []
        var start = 0
        var scanned = 0
        // The answer line.
        while true {
            if let end = buffer[scanned...].firstIndex(of: ControlLineCodec.newline) {
                let response: ControlResponse
                do { response = try ControlLineCodec.decode(ControlResponse.self, line: buffer[..<end], what: "response") } catch {
                    throw .protocolError(error.message)
                }
                guard response.ok else { throw .refused(response.error ?? "midcomd refused the request") }
                guard response.stream == SessionRowStream.marker else {
                    guard let sessions = response.sessions else { throw .protocolError("midcomd's response has no 'sessions'") }
                    return sessions
                }
                start = end + 1
                break
            }
            scanned = buffer.count
            guard buffer.count <= ControlProtocol.maxResponseBytes else {
                throw .protocolError("response exceeds \(ControlProtocol.maxResponseBytes) bytes")
            }
            guard try receiveMore(from: socket, into: &buffer) else {
                throw .protocolError(buffer.isEmpty ? "midcomd closed the connection without answering" : "midcomd closed the connection in the middle of a response")
            }
        }
        // The frames.
        var rows: UInt64 = 0
        while true {
            if buffer.count - start >= 5 {
                let length = buffer[start..<start + 4].reduce(0) { $0 << 8 | Int($1) }
                guard length >= 1, length <= SessionRowStream.maximumFrameBytes else {
                    throw .protocolError("session row frame of \(length) octets (at most \(SessionRowStream.maximumFrameBytes))")
                }
                if buffer.count - start >= 4 + length {
                    let kind = buffer[start + 4]
                    let payload = Array(buffer[(start + 5)..<(start + 4 + length)])
                    start += 4 + length
                    switch SessionRowStream.Kind(rawValue: kind) {
                    case .rows:
                        do {
                            let reader = try SessionRowReader(payload: payload)
                            rows += UInt64(reader.count)
                            try onRows(reader)
                        } catch {
                            throw .protocolError("malformed session rows: \(error)")
                        }
                    case .end:
                        guard payload.count == 8 else { throw .protocolError("end frame of \(payload.count) octets") }
                        let total = payload.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                        guard total == rows else { throw .protocolError("midcomd sent \(rows) session rows but announced \(total)") }
                        return nil
                    case .error:
                        throw .refused("the session listing stopped: \(String(decoding: payload, as: UTF8.self))")
                    case nil:
                        throw .protocolError("unknown session row frame kind \(kind)")
                    }
                    continue
                }
            }
            if start > 1 << 20 {
                buffer.removeSubrange(..<start)
                start = 0
            }
            guard try receiveMore(from: socket, into: &buffer) else {
                throw .protocolError("midcomd closed the connection in the middle of the session listing (\(rows) rows read)")
            }
        }
    }

    /// Waits up to `timeout` for more octets; false at end of stream.
    private func receiveMore(from socket: borrowing UnixStreamSocket, into buffer: inout [UInt8]) throws(ControlError) -> Bool {
        let ready: [Bool]?
        do { ready = try pollReadable([socket.fd], timeout: timeout) } catch { throw failure(error) }
        guard ready != nil else { throw .timeout }
        do {
            return try socket.receive(appendingTo: &buffer, limit: 1 << 18) > 0
        } catch where error.errno == EAGAIN || error.errno == EWOULDBLOCK {
            return true
        } catch {
            throw failure(error)
        }
    }

    private func openSocket() throws(ControlError) -> UnixStreamSocket {
        do {
            let socket = try UnixStreamSocket.make()
            try socket.setTimeouts(timeout)
            return socket
        } catch {
            throw failure(error)
        }
    }

    private func receiveLine(from socket: borrowing UnixStreamSocket, deadline: ContinuousClock.Instant)
        throws(ControlError) -> ArraySlice<UInt8>
    {
        var buffer: [UInt8] = []
        var scanned = 0
        while true {
            if let end = buffer[scanned...].firstIndex(of: ControlLineCodec.newline) {
                return buffer[..<end]
            }
            scanned = buffer.count
            guard buffer.count <= ControlProtocol.maxResponseBytes else {
                throw .protocolError("response exceeds \(ControlProtocol.maxResponseBytes) bytes")
            }
            let ready: [Bool]?
            do {
                ready = try pollReadable([socket.fd], timeout: deadline - ContinuousClock.now)
            } catch {
                throw failure(error)
            }
            guard ready != nil else { throw .timeout }
            let received: Int
            do {
                received = try socket.receive(appendingTo: &buffer, limit: 65536)
            } catch {
                throw failure(error)
            }
            if received == 0 {
                throw .protocolError(
                    buffer.isEmpty
                        ? "midcomd closed the connection without answering"
                        : "midcomd closed the connection in the middle of a response")
            }
        }
    }

    private func connectFailure(_ error: SystemCallError) -> ControlError {
        switch error.errno {
        // ENOTDIR: a path component is a file, which equally means no daemon made this socket.
        case ENOENT, ECONNREFUSED, ENOTDIR: .daemonNotRunning(path: path)
        // Backlog full for the whole timeout: the daemon is stuck rather than absent.
        case EAGAIN, ETIMEDOUT: .timeout
        default: failure(error)
        }
    }

    private func failure(_ error: SystemCallError) -> ControlError {
        switch error.errno {
        case EACCES, EPERM: .permissionDenied(path: path)
        case EAGAIN, EWOULDBLOCK: .timeout
        default: .systemCallFailed(call: error.call, path: path, errno: error.errno)
        }
    }
}
