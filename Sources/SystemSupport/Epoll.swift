#if canImport(Glibc)
import Glibc
#endif
import CLinuxSystem

/// An epoll instance: the readiness loop of a relay worker. Tokens are the caller's (a slot and a
/// side, say); events come back in a reused buffer, so waiting allocates nothing. (The queue readers
/// poll instead: a registration stays on the socket and costs the kernel a callback per queued packet,
/// NetfilterQueue.run.)
public final class Epoll {
    /// Readiness and interest bits (epoll_ctl(2)).
    public struct Events: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let readable = Events(rawValue: CLX_EPOLLIN)
        public static let writable = Events(rawValue: CLX_EPOLLOUT)
        /// The peer shut down its writing side (interest and readiness).
        public static let peerClosed = Events(rawValue: CLX_EPOLLRDHUP)
        /// Always reported, never asked for.
        public static let hangUp = Events(rawValue: CLX_EPOLLHUP)
        public static let error = Events(rawValue: CLX_EPOLLERR)
        /// Report each readiness change once: the owner drains until EAGAIN.
        public static let edgeTriggered = Events(rawValue: CLX_EPOLLET)
    }

    /// Most events one wait returns (the shim's stack buffer).
    public static let batch = 64

    public let descriptor: Int32
    /// Raw buffers, not arrays: an array in a class property is reached through a dynamic
    /// exclusivity check and a uniqueness check on every wait (~250 instructions per wake-up, measured
    /// when the queue readers used epoll, docs/PERFORMANCE.md, "Tenth pass"). Only `wait` touches them.
    private let events = UnsafeMutablePointer<UInt32>.allocate(capacity: Epoll.batch)
    private let tokens = UnsafeMutablePointer<UInt64>.allocate(capacity: Epoll.batch)

    public init() throws(SystemCallError) {
        events.initialize(repeating: 0, count: Epoll.batch)
        tokens.initialize(repeating: 0, count: Epoll.batch)
        do {
            descriptor = try systemCall("epoll_create1") { clx_epoll_create() }
        } catch {
            events.deallocate()
            tokens.deallocate()
            throw error
        }
    }

    deinit {
        _ = close(descriptor)
        events.deallocate()
        tokens.deallocate()
    }

    public func add(_ fd: Int32, _ interest: Events, token: UInt64) throws(SystemCallError) {
        _ = try systemCall("epoll_ctl(ADD, \(fd))") { clx_epoll_ctl(descriptor, CLX_EPOLL_CTL_ADD, fd, interest.rawValue, token) }
    }

    public func modify(_ fd: Int32, _ interest: Events, token: UInt64) throws(SystemCallError) {
        _ = try systemCall("epoll_ctl(MOD, \(fd))") { clx_epoll_ctl(descriptor, CLX_EPOLL_CTL_MOD, fd, interest.rawValue, token) }
    }

    /// Removing a descriptor that is about to be closed is optional (close removes it); done
    /// explicitly where another reference to the open file may live on.
    public func remove(_ fd: Int32) {
        _ = clx_epoll_ctl(descriptor, CLX_EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeoutMilliseconds` (-1: forever; restarted after a signal) and calls `handle`
    /// for each ready descriptor's token and events. How many there were (0 on timeout), or the errno
    /// of a failed wait, for loops that must not spin on a wait that fails at once every time.
    @discardableResult
    public func wait(timeoutMilliseconds: Int32, _ handle: (UInt64, Events) throws -> Void) rethrows -> SyscallResult<Int32> {
        // Captured as values: a closure capturing `self` retains and releases it per wait.
        let descriptor = self.descriptor, events = self.events, tokens = self.tokens
        let waited = syscall { clx_epoll_wait(descriptor, events, tokens, Int32(Epoll.batch), timeoutMilliseconds) }
        guard case .success(let count) = waited else { return waited }
        for index in 0..<Int(count) { try handle(tokens[index], Events(rawValue: events[index])) }
        return waited
    }
}
