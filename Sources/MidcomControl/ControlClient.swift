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
