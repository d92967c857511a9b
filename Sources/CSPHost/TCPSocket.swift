#if canImport(Glibc)
import Glibc
#endif
import CSPWire
import SystemSupport

/// A TCP socket for the hops of a relayed session (docs/PROTOCOL.md 14.5). Handshakes use the
/// blocking calls with deadlines (`readExactly`, `writeAll`); a relay's data path takes the
/// descriptor (`descriptor`) into its epoll loop and calls splice or read/write itself.
public final class TCPSocket: @unchecked Sendable {
    /// The descriptor; -1 once closed. Owned by this object: closed by `close()`, `abort()` or deinit.
    public private(set) var descriptor: Int32

    private init(adopting fd: Int32) { descriptor = fd }

    deinit { if descriptor >= 0 { _ = Glibc.close(descriptor) } }

    /// A socket bound to `local` (port 0: the kernel picks one) and listening.
    public static func listen(on local: CSPEndpoint, backlog: Int32 = 512) throws(SystemCallError) -> TCPSocket {
        let socket = try make(family: local.address.family)
        var one: Int32 = 1
        _ = try systemCall("setsockopt(SO_REUSEADDR)") {
            setsockopt(socket.descriptor, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        try socket.bind(local)
        _ = try systemCall("listen on \(local)") { Glibc.listen(socket.descriptor, backlog) }
        return socket
    }

    /// An unconnected socket bound to `local` before it connects: the relay signals its onward flow
    /// (source port included) before it opens it (14.3). `reuseAddress` lets a resumed hop take
    /// the port of the connection it replaces.
    public static func bound(to local: CSPEndpoint, reuseAddress: Bool = false) throws(SystemCallError) -> TCPSocket {
        let socket = try make(family: local.address.family)
        if reuseAddress {
            var one: Int32 = 1
            _ = try systemCall("setsockopt(SO_REUSEADDR)") {
                setsockopt(socket.descriptor, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            }
        }
        try socket.bind(local)
        return socket
    }

    /// Connects (from an ephemeral port unless bound first) within `timeout`.
    public static func connect(to remote: CSPEndpoint, timeout: Duration) throws(SystemCallError) -> TCPSocket {
        let socket = try make(family: remote.address.family)
        try socket.connect(to: remote, timeout: timeout)
        return socket
    }

    public func connect(to remote: CSPEndpoint, timeout: Duration) throws(SystemCallError) {
        try TCPOptions.setNonBlocking(descriptor)
        let fd = descriptor
        let started = try UDPSocket.withSockaddr(remote) { sa, len throws(SystemCallError) -> Bool in
            switch syscall({ Glibc.connect(fd, sa, len) }) {
            case .success: return true
            case .failure(let code) where code == EINPROGRESS: return false
            case .failure(let code): throw SystemCallError(call: "connect to \(remote)", errno: code)
            }
        }
        if !started {
            guard try wait(for: Int16(POLLOUT), timeout: timeout) else {
                throw SystemCallError(call: "connect to \(remote)", errno: ETIMEDOUT)
            }
            var code: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            _ = getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length)
            if code != 0 { throw SystemCallError(call: "connect to \(remote)", errno: code) }
        }
        try TCPOptions.setNonBlocking(descriptor, false)
    }

    /// The next pending connection, blocking until `timeout` passes (nil then).
    public func accept(timeout: Duration?) throws(SystemCallError) -> TCPSocket? {
        if let timeout, try !wait(for: Int16(POLLIN), timeout: timeout) { return nil }
        let fd = descriptor
        switch TCPOptions.accept(fd, nonBlocking: false) {
        case .success(let accepted): return TCPSocket(adopting: accepted)
        case .failure(let code) where code == EAGAIN || code == ECONNABORTED: return nil
        case .failure(let code): throw SystemCallError(call: "accept", errno: code)
        }
    }

    /// Reads exactly `count` octets before `deadline`; nil if the peer closed first. Used for hop
    /// frames: the header, then exactly the body, so no octet after the handshake is consumed.
    public func readExactly(_ count: Int, deadline: ContinuousClock.Instant) throws(SystemCallError) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var filled = 0
        while filled < count {
            let left = deadline - .now
            guard left > .zero, try wait(for: Int16(POLLIN), timeout: left) else {
                throw SystemCallError(call: "read", errno: ETIMEDOUT)
            }
            let fd = descriptor
            let got = try systemCall("read") {
                bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + filled, count - filled, 0) }
            }
            if got == 0 { return nil }
            filled += got
        }
        return bytes
    }

    /// Reads what is there (at most `maximum` octets), waiting up to `timeout` for the first.
    /// Empty: the peer closed; nil: nothing arrived in time.
    public func read(maximum: Int, timeout: Duration) throws(SystemCallError) -> [UInt8]? {
        guard try wait(for: Int16(POLLIN), timeout: timeout) else { return nil }
        var bytes = [UInt8](repeating: 0, count: maximum)
        let fd = descriptor
        let got = try systemCall("read") { bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress, maximum, 0) } }
        bytes.removeLast(maximum - got)
        return bytes
    }

    /// Writes all of `bytes` (blocking; MSG_NOSIGNAL: a closed peer is an error, not SIGPIPE).
    public func writeAll(_ bytes: [UInt8]) throws(SystemCallError) {
        try Self.sendAll(bytes, to: descriptor)
    }

    /// `send` until every octet went, on any stream socket (a session stream's socketpair too).
    static func sendAll(_ bytes: [UInt8], to fd: Int32) throws(SystemCallError) {
        var sent = 0
        while sent < bytes.count {
            sent += try systemCall("send") {
                bytes.withUnsafeBytes { send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            }
        }
    }

    /// FIN: no more octets from this side; the peer may go on sending.
    public func shutdownWrite() { _ = shutdown(descriptor, Int32(SHUT_WR)) }

    /// RST: ends the connection as broken (SO_LINGER 0, then close).
    public func abort() {
        guard descriptor >= 0 else { return }
        try? TCPOptions.setAbortiveClose(descriptor)
        close()
    }

    /// FIN, then reads and drops what the peer still sends (for at most `drainFor`) before closing:
    /// closing with unread octets would send RST, and an RST can destroy the last octets we sent
    /// (an ABORT that tells the peer why) before the peer reads them.
    public func closeAfterDraining(for limit: Duration = .seconds(2)) {
        guard descriptor >= 0 else { return }
        shutdownWrite()
        let deadline = ContinuousClock.now + limit
        var sink = [UInt8](repeating: 0, count: 16384)
        while ContinuousClock.now < deadline {
            guard let ready = try? wait(for: Int16(POLLIN), timeout: deadline - .now), ready else { break }
            let got = sink.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR) { break }
        }
        close()
    }

    public func close() {
        guard descriptor >= 0 else { return }
        _ = Glibc.close(descriptor)
        descriptor = -1
    }

    /// Gives the descriptor to another owner (a relay worker); this object no longer closes it.
    public func release() -> Int32 {
        let fd = descriptor
        descriptor = -1
        return fd
    }

    public var localEndpoint: CSPEndpoint? { name(getsockname) }
    public var remoteEndpoint: CSPEndpoint? { name(getpeername) }

    private func name(_ call: (Int32, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32) -> CSPEndpoint? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call(descriptor, $0, &length) }
        }
        return result == 0 ? UDPSocket.endpoint(from: storage) : nil
    }

    private static func make(family: IPAddress.Family) throws(SystemCallError) -> TCPSocket {
        let domain = family == .ipv4 ? AF_INET : AF_INET6
        let fd = try systemCall("socket(TCP)") {
            Glibc.socket(domain, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        let socket = TCPSocket(adopting: fd)
        if family == .ipv6 {
            var one: Int32 = 1
            _ = setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        return socket
    }

    private func bind(_ local: CSPEndpoint) throws(SystemCallError) {
        let fd = descriptor
        try UDPSocket.withSockaddr(local) { sa, len throws(SystemCallError) in
            _ = try systemCall("bind to \(local)") { Glibc.bind(fd, sa, len) }
        }
    }

    private func wait(for events: Int16, timeout: Duration) throws(SystemCallError) -> Bool {
        var pfd = pollfd(fd: descriptor, events: events, revents: 0)
        return try systemCall("poll") { poll(&pfd, 1, pollMilliseconds(timeout)) } > 0
    }
}
