#if canImport(Glibc)
import Glibc
#endif
import CLinuxSystem

/// Socket settings for long-lived TCP connections that nobody reads for liveness: the hops of a
/// relayed session (docs/PROTOCOL.md 14.5, "Liveness").
public enum TCPOptions {
    /// Keepalive probes after `idle` seconds of silence, every `interval` seconds, `count` times;
    /// and TCP_USER_TIMEOUT, so unacknowledged data also ends a black-holed connection in time.
    public static func setLiveness(
        _ fd: Int32, idle: Int32 = 15, interval: Int32 = 5, count: Int32 = 3, userTimeoutMilliseconds: Int32 = 30_000
    ) throws(SystemCallError) {
        try set(fd, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE")
        try set(fd, Int32(IPPROTO_TCP), CLX_TCP_KEEPIDLE, idle, "TCP_KEEPIDLE")
        try set(fd, Int32(IPPROTO_TCP), CLX_TCP_KEEPINTVL, interval, "TCP_KEEPINTVL")
        try set(fd, Int32(IPPROTO_TCP), CLX_TCP_KEEPCNT, count, "TCP_KEEPCNT")
        try set(fd, Int32(IPPROTO_TCP), CLX_TCP_USER_TIMEOUT, userTimeoutMilliseconds, "TCP_USER_TIMEOUT")
    }

    /// The next close sends RST instead of FIN: how a relay passes a broken hop on as broken.
    public static func setAbortiveClose(_ fd: Int32) throws(SystemCallError) {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        _ = try systemCall("setsockopt(SO_LINGER)") {
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        }
    }

    public static func setNoDelay(_ fd: Int32) throws(SystemCallError) {
        try set(fd, Int32(IPPROTO_TCP), CLX_TCP_NODELAY, 1, "TCP_NODELAY")
    }

    /// O_NONBLOCK on (a descriptor driven by epoll) or off.
    public static func setNonBlocking(_ fd: Int32, _ on: Bool = true) throws(SystemCallError) {
        let flags = try systemCall("fcntl(F_GETFL)") { fcntl(fd, F_GETFL) }
        _ = try systemCall("fcntl(F_SETFL)") { fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) }
    }

    /// accept4 with close-on-exec (and O_NONBLOCK for an epoll-driven socket); `.failure(EAGAIN)`
    /// when a non-blocking listener has none pending.
    public static func accept(_ listener: Int32, nonBlocking: Bool) -> SyscallResult<Int32> {
        syscall { clx_accept(listener, nonBlocking ? 1 : 0) }
    }

    private static func set(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32, _ label: String) throws(SystemCallError) {
        var value = value
        _ = try systemCall("setsockopt(\(label))") { setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size)) }
    }
}
