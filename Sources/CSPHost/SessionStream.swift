#if canImport(Glibc)
import Glibc
#endif
import CSPSession
import CSPTrust
import CSPWire
import Foundation
import Synchronization
import SystemSupport

/// A relayed session as a byte stream for Swift programs (docs/PROTOCOL.md 14): plaintext in and
/// out, end-to-end encrypted underneath, over hops that may break and resume without the program
/// noticing. The session runs on a thread of its own; the program holds one end of a socket pair
/// (`fileDescriptor`), so it can also hand the stream to anything that takes a socket.
///
///     let initiator = SessionInitiator(identity: …, sessionID: …, target: …, firstHop: …, responderKey: key)
///     let stream = try SessionStream.open(initiator)
///     try stream.write(Array("hello".utf8)); stream.closeWrite()
///     while let chunk = try stream.read(), !chunk.isEmpty { … }
///     try stream.finish()   // how the session ended: nil error = both directions closed cleanly
public final class SessionStream: @unchecked Sendable {
    /// The program's end of the socket pair carrying the plaintext.
    public let fileDescriptor: Int32
    private let outcome = Mutex<Result<Void, SessionEndError>?>(nil)
    private let done = DispatchSemaphore(value: 0)

    private init(fileDescriptor: Int32) { self.fileDescriptor = fileDescriptor }

    deinit { _ = Glibc.close(fileDescriptor) }

    /// Starts the session: the first hop is opened on the session's thread; a refusal or an
    /// unreachable first hop shows as end of file on `read` and as the error of `finish()`.
    public static func open(_ initiator: SessionInitiator) throws(SystemCallError) -> SessionStream {
        try start(initiator, messages: false)
    }

    /// The datagram variant (PROTOCOL.md 14.11): each `send` is one MESSAGE record, each
    /// `receiveMessage` one whole message, in order and reliably (1–16384 octets; the socket pair
    /// is SOCK_SEQPACKET, so `fileDescriptor` keeps message boundaries too).
    public static func openMessages(_ initiator: SessionInitiator) throws(SystemCallError) -> SessionStream {
        try start(initiator, messages: true)
    }

    /// One whole message of the peer; nil at the end.
    public func receiveMessage() throws(SystemCallError) -> [UInt8]? {
        let message = try read(maximum: EndToEndSession.maximumDataLength)
        return message.isEmpty ? nil : message
    }

    private static func start(_ initiator: SessionInitiator, messages: Bool) throws(SystemCallError) -> SessionStream {
        let kind = messages ? Int32(SOCK_SEQPACKET.rawValue) : Int32(SOCK_STREAM.rawValue)
        var ends: [Int32] = [-1, -1]
        _ = try systemCall("socketpair") { socketpair(AF_UNIX, kind | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) }
        let stream = SessionStream(fileDescriptor: ends[0])
        let sessionSide = ends[1]
        // The session writes received octets to a second descriptor of its end, so it can half-close
        // (FIN to the program) while it still reads what the program writes.
        let output = dup(sessionSide)
        // The initiator is used by this thread only from here on.
        nonisolated(unsafe) let initiator = initiator
        Thread.detachNewThread {
            var result: Result<Void, SessionEndError> = .success(())
            do throws(SessionEndError) { try initiator.run(input: sessionSide, output: output, messages: messages) } catch {
                result = .failure(error)
            }
            // `output` was closed by run (a second close could hit a descriptor reused meanwhile).
            _ = Glibc.shutdown(sessionSide, Int32(SHUT_RDWR))
            _ = Glibc.close(sessionSide)
            stream.outcome.withLock { $0 = result }
            stream.done.signal()
        }
        return stream
    }

    /// Up to `maximum` octets of the peer's stream; empty at its end (the peer's CLOSE, or the
    /// session's end: `finish()` says which).
    public func read(maximum: Int = 65536) throws(SystemCallError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: maximum)
        let fd = fileDescriptor
        let got = try systemCall("read") { bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, maximum) } }
        bytes.removeLast(maximum - got)
        return bytes
    }

    /// Writes all of `bytes` (on a message session: one message, at most 16384 octets); waits
    /// while the session's send buffer is full.
    public func write(_ bytes: [UInt8]) throws(SystemCallError) {
        try TCPSocket.sendAll(bytes, to: fileDescriptor)
    }

    /// No more octets from this program (the session sends CLOSE once all written ones are sealed).
    public func closeWrite() { _ = Glibc.shutdown(fileDescriptor, Int32(SHUT_WR)) }

    /// Waits for the session to end and reports how: returns after a clean end, throws otherwise.
    public func finish(timeout: Duration = .seconds(120)) throws(SessionEndError) {
        let (seconds, attoseconds) = timeout.components
        guard done.wait(timeout: .now() + Double(seconds) + Double(attoseconds) / 1e18) == .success else {
            throw SessionEndError(.resumeTimedOut, "the session did not end within \(timeout)")
        }
        done.signal()  // later calls return at once
        if case .failure(let error) = outcome.withLock({ $0 }) ?? .success(()) { throw error }
    }
}
