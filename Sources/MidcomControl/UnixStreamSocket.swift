import Glibc
import SystemSupport

// The only code in MidcomControl that makes system calls. STYLE.md keeps C calls in the kernel-adapter target, but
// the control socket is plain POSIX that both midcomd and midctl need, and midctl must not link libnetfilter_queue;
// so the Glibc calls live here, in one file, behind these few internal types, through SystemSupport's one
// EINTR-retrying helper (`systemCall`) and its one error type (`SystemCallError`).

/// A `sockaddr_un` for a filesystem path.
struct UnixSocketAddress {
    private var storage = sockaddr_un()

    /// nil if `path` is empty, contains NUL, or does not fit in `sun_path` with its terminating NUL.
    init?(path: String) {
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: storage.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity, !bytes.contains(0) else { return nil }
        storage.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &storage.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
    }

    func withSockaddr<Result>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> Result) -> Result {
        withUnsafePointer(to: storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }
}

/// An owned SOCK_STREAM Unix-domain socket; closed when the value is destroyed.
struct UnixStreamSocket: ~Copyable, Sendable {
    let fd: Int32

    private init(adopting fd: Int32) {
        self.fd = fd
    }

    deinit {
        // close() is not retried on EINTR: on Linux the descriptor is released even then.
        _ = Glibc.close(fd)
    }

    /// A new, unconnected socket, close-on-exec so that hooks the daemon spawns do not inherit it.
    /// The corresponding C function is `socket`.
    static func make() throws(SystemCallError) -> UnixStreamSocket {
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        return UnixStreamSocket(adopting: try systemCall("socket") { Glibc.socket(AF_UNIX, type, 0) })
    }

    /// The corresponding C function is `bind`.
    func bind(to address: UnixSocketAddress) throws(SystemCallError) {
        _ = try systemCall("bind") { address.withSockaddr { Glibc.bind(fd, $0, $1) } }
    }

    /// The corresponding C function is `listen`.
    func listen(backlog: Int32) throws(SystemCallError) {
        _ = try systemCall("listen") { Glibc.listen(fd, backlog) }
    }

    /// Connects, bounded by the send timeout (Linux applies SO_SNDTIMEO to a Unix-domain connect that waits for
    /// room in the listener's backlog). The corresponding C function is `connect`.
    func connect(to address: UnixSocketAddress) throws(SystemCallError) {
        do {
            _ = try systemCall("connect") { address.withSockaddr { Glibc.connect(fd, $0, $1) } }
        } catch where error.errno == EISCONN {
            // A retry after EINTR finds the first attempt already completed.
        }
    }

    /// The next pending connection, close-on-exec. Throws EAGAIN when none is pending on a non-blocking socket.
    /// The corresponding C functions are `accept` and `fcntl`.
    func accept() throws(SystemCallError) -> UnixStreamSocket {
        // Glibc's module map hides accept4 (_GNU_SOURCE), so FD_CLOEXEC is set just after: a child forked by
        // another thread in between could inherit the descriptor, which costs it nothing but a stray fd.
        let connection = UnixStreamSocket(adopting: try systemCall("accept") { Glibc.accept(fd, nil, nil) })
        _ = try systemCall("fcntl") { Glibc.fcntl(connection.fd, F_SETFD, FD_CLOEXEC) }
        return connection
    }

    /// The corresponding C function is `fcntl`.
    func setNonBlocking() throws(SystemCallError) {
        let flags = try systemCall("fcntl") { Glibc.fcntl(fd, F_GETFL) }
        _ = try systemCall("fcntl") { Glibc.fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
    }

    /// Bounds every blocking send and receive (and connect) to `timeout`; they then fail with EAGAIN.
    /// The corresponding C function is `setsockopt` with SO_RCVTIMEO and SO_SNDTIMEO.
    func setTimeouts(_ timeout: Duration) throws(SystemCallError) {
        let (seconds, attoseconds) = timeout.components
        var value = timeval(tv_sec: Int(max(seconds, 0)), tv_usec: Int(max(attoseconds, 0) / 1_000_000_000_000))
        if value.tv_sec == 0 && value.tv_usec == 0 { value.tv_usec = 1 }  // zero would mean "no timeout"
        let length = socklen_t(MemoryLayout<timeval>.size)
        for option in [SO_RCVTIMEO, SO_SNDTIMEO] {
            _ = try systemCall("setsockopt") { Glibc.setsockopt(fd, SOL_SOCKET, option, &value, length) }
        }
    }

    /// Sends every byte. MSG_NOSIGNAL: a peer that hung up yields EPIPE instead of killing the process with SIGPIPE.
    /// The corresponding C function is `send`.
    func sendAll(_ bytes: [UInt8], deadline: ContinuousClock.Instant? = nil) throws(SystemCallError) {
        var offset = 0
        while offset < bytes.count {
            // Each send waits at most SO_SNDTIMEO; a reader that takes a few octets at a time must
            // still take the whole message by the deadline.
            if let deadline, offset > 0, ContinuousClock.now > deadline { throw SystemCallError(call: "send", errno: EAGAIN) }
            let sent = try systemCall("send") {
                bytes.withUnsafeBytes { raw in
                    Glibc.send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                }
            }
            offset += sent
        }
    }

    /// Appends up to `limit` received bytes to `buffer`; returns how many, 0 at end of stream.
    /// The corresponding C function is `recv`.
    func receive(appendingTo buffer: inout [UInt8], limit: Int) throws(SystemCallError) -> Int {
        let start = buffer.count
        buffer.append(contentsOf: repeatElement(0, count: limit))
        do {
            let received = try systemCall("recv") {
                buffer.withUnsafeMutableBytes { raw in Glibc.recv(fd, raw.baseAddress! + start, limit, 0) }
            }
            buffer.removeLast(limit - received)
            return received
        } catch {
            buffer.removeLast(limit)
            throw error
        }
    }
}

/// Which of `descriptors` are readable (or hung up, or in error: a read then reports it), or nil if `timeout`
/// passed first. A nil `timeout` waits forever. The corresponding C function is `poll`.
func pollReadable(_ descriptors: [Int32], timeout: Duration?) throws(SystemCallError) -> [Bool]? {
    var entries = descriptors.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
    let count = try systemCall("poll") { Glibc.poll(&entries, nfds_t(entries.count), pollMilliseconds(timeout)) }
    if count == 0 { return nil }
    let ready = Int16(POLLIN) | Int16(POLLHUP) | Int16(POLLERR)
    return entries.map { $0.revents & ready != 0 }
}

/// Device and inode of a filesystem object, to recognise our own socket file before removing it.
struct FileIdentity: Equatable, Sendable {
    var device: UInt64
    var inode: UInt64
    var isSocket: Bool

    /// nil if nothing exists at `path`. The corresponding C function is `lstat`.
    static func of(path: String) throws(SystemCallError) -> FileIdentity? {
        var info = stat()
        do {
            _ = try systemCall("lstat") { Glibc.lstat(path, &info) }
        } catch where error.errno == ENOENT {
            return nil
        }
        return FileIdentity(
            device: UInt64(info.st_dev), inode: UInt64(info.st_ino), isSocket: info.st_mode & S_IFMT == S_IFSOCK)
    }
}

/// The corresponding C function is `unlink`.
func unlinkFile(_ path: String) throws(SystemCallError) {
    _ = try systemCall("unlink") { Glibc.unlink(path) }
}

/// The corresponding C function is `chmod`.
func changeMode(_ path: String, _ mode: mode_t) throws(SystemCallError) {
    _ = try systemCall("chmod") { Glibc.chmod(path, mode) }
}
