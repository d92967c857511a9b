#if canImport(Glibc)
import Glibc
#endif
import CLinuxSystem

/// An epoll instance: the readiness loop of a relay worker. Tokens are the caller's (a slot and a
/// side, say); events come back in a reused buffer, so waiting allocates nothing.
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
    private var events = [UInt32](repeating: 0, count: Epoll.batch)
    private var tokens = [UInt64](repeating: 0, count: Epoll.batch)

    public init() throws(SystemCallError) {
        descriptor = try systemCall("epoll_create1") { clx_epoll_create() }
    }

    deinit { _ = close(descriptor) }

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

    /// Waits up to `timeoutMilliseconds` (-1: forever) and calls `handle` for each ready descriptor's
    /// token and events. Returns how many there were (0 on timeout or a signal).
    @discardableResult
    public func wait(timeoutMilliseconds: Int32, _ handle: (UInt64, Events) throws -> Void) rethrows -> Int {
        let count = events.withUnsafeMutableBufferPointer { eventBuffer in
            tokens.withUnsafeMutableBufferPointer { tokenBuffer in
                clx_epoll_wait(descriptor, eventBuffer.baseAddress, tokenBuffer.baseAddress, Int32(Epoll.batch), timeoutMilliseconds)
            }
        }
        guard count > 0 else { return 0 }
        for index in 0..<Int(count) { try handle(tokens[index], Events(rawValue: events[index])) }
        return Int(count)
    }
}
