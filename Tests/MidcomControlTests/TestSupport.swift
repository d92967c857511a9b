import Foundation
import Glibc
import Synchronization
import XCTest

@testable import MidcomControl

/// Records shared by the server, client and CLI tests: one IPv4 session with every field, one IPv6 session with
/// a wildcard port and unknown counters.
enum Fixtures {
    static let admitted = SessionRecord(
        id: "00000000000000a1", proto: "udp",
        source: "192.0.2.10", sourcePort: 5060,
        destination: "198.51.100.7", destinationPort: 5060,
        state: "admitted", action: "admit",
        ageSeconds: 184.7, remainingSeconds: 3600,
        packets: 1234, bytes: 567_890,
        application: "sip", peerMiddleboxes: 1)

    static let pending = SessionRecord(
        id: "00000000000000b2", proto: "tcp",
        source: "2001:db8::1", sourcePort: 0,
        destination: "2001:db8:ffff::2", destinationPort: 443,
        state: "pending", action: "none",
        ageSeconds: 3.2, remainingSeconds: nil,
        packets: nil, bytes: nil,
        application: nil, peerMiddleboxes: nil)

    static let sessions = [admitted, pending]

    static let status = DaemonStatus(
        version: "0.1.0", pid: 4242, uptimeSeconds: 3723, epoch: 7,
        queueNumbers: [0, 1], queueEncoding: "fanout", sessions: 2,
        counters: ["requests": 10, "admitted": 7, "rejected_policy": 3])

    /// A daemon stand-in: answers from `sessions`, reports deletions without performing them.
    static func respond(to request: ControlRequest) -> ControlResponse {
        switch request.command {
        case .sessions:
            return ControlResponse(ok: true, sessions: sessions)
        case .show:
            guard let session = sessions.first(where: { $0.id == request.sessionID }) else {
                return .failure("no session with id \(request.sessionID ?? "")")
            }
            return ControlResponse(ok: true, sessions: [session])
        case .delete:
            guard sessions.contains(where: { $0.id == request.sessionID }) else {
                return .failure("no session with id \(request.sessionID ?? "")")
            }
            return ControlResponse(ok: true, affected: [request.sessionID!])
        case .flush:
            return ControlResponse(ok: true, affected: sessions.map(\.id))
        case .status:
            return ControlResponse(ok: true, status: status)
        case .denies:
            return ControlResponse(ok: true, denies: [])
        case .undeny:
            return .failure("no DENY filter \(request.sessionID ?? "")")
        case .reload:
            return ControlResponse(ok: true, message: "reloaded")
        case .announce:
            return ControlResponse(ok: true, message: "epoch 0: announcing")
        case .rules:
            return ControlResponse(ok: true, rules: [])
        case .showConfig:
            return ControlResponse(ok: true, message: "[daemon]\n")
        case .monitor:
            return .failure("monitor is a stream")
        }
    }
}

/// A private directory for one test's socket, short enough for `sun_path`, removed on `deinit`.
final class TemporaryDirectory {
    let path: String

    init() throws {
        var template = Array("/tmp/midctl-test-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else {
            throw ControlError.systemCallFailed(call: "mkdtemp", path: "/tmp", errno: errno)
        }
        path = String(cString: made)
    }

    var socketPath: String { path + "/control.sock" }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Every request a server handed to its handler, in order.
final class RequestRecorder: Sendable {
    private let storage = Mutex<[ControlRequest]>([])

    func append(_ request: ControlRequest) { storage.withLock { $0.append(request) } }
    var requests: [ControlRequest] { storage.withLock { $0 } }
}

/// A ControlServer running `run()` on its own thread, as midcomd does, recording every request it handles.
final class RunningServer: Sendable {
    let server: ControlServer
    let recorder = RequestRecorder()
    private let finished = DispatchSemaphore(value: 0)

    init(
        path: String, connectionTimeout: Duration = .seconds(2),
        handler: @escaping @Sendable (ControlRequest) -> ControlResponse = Fixtures.respond
    ) throws {
        let recorder = self.recorder
        server = try ControlServer(path: path, connectionTimeout: connectionTimeout) { request in
            recorder.append(request)
            return handler(request)
        }
        let server = self.server
        let finished = self.finished
        Thread {
            server.run()
            finished.signal()
        }.start()
    }

    var requests: [ControlRequest] { recorder.requests }

    /// Stops the server; true if `run()` returned within `timeout`.
    @discardableResult
    func stop(within timeout: Double = 2) -> Bool {
        server.stop()
        return hasFinished(within: timeout)
    }

    /// Whether `run()` has returned, waiting at most `timeout`.
    func hasFinished(within timeout: Double) -> Bool {
        guard finished.wait(timeout: .now() + timeout) == .success else { return false }
        finished.signal()  // keep it signaled for the next waiter
        return true
    }

    deinit {
        _ = stop()
    }
}

/// A client that speaks raw bytes, to send what ControlClient never would.
final class RawClient {
    let socket: UnixStreamSocket
    private var received: [UInt8] = []

    init(path: String, timeout: Duration = .seconds(2)) throws {
        socket = try Self.connected(path: path, timeout: timeout)
    }

    private static func connected(path: String, timeout: Duration) throws -> UnixStreamSocket {
        let address = try XCTUnwrap(UnixSocketAddress(path: path))
        let socket = try UnixStreamSocket.make()
        try socket.setTimeouts(timeout)
        try socket.connect(to: address)
        return socket
    }

    func send(_ text: String) throws {
        try socket.sendAll(Array(text.utf8))
    }

    func send(bytes: [UInt8]) throws {
        try socket.sendAll(bytes)
    }

    /// The next response line, decoded; fails on timeout (SO_RCVTIMEO) or end of stream.
    func receiveResponse() throws -> ControlResponse {
        while !received.contains(ControlLineCodec.newline) {
            guard try socket.receive(appendingTo: &received, limit: 4096) > 0 else {
                throw ControlError.protocolError("end of stream after \(received.count) bytes")
            }
        }
        let end = received.firstIndex(of: ControlLineCodec.newline)!
        defer { received.removeSubrange(...end) }
        return try ControlLineCodec.decode(ControlResponse.self, line: received[..<end], what: "response")
    }

    /// True if the server closed the connection (within the socket timeout).
    func receivesEndOfStream() throws -> Bool {
        guard received.isEmpty else { return false }
        return try socket.receive(appendingTo: &received, limit: 4096) == 0
    }
}
