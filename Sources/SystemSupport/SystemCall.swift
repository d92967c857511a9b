#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The one syscall layer of the project: every target that makes system calls (Netfilter,
/// MidcomControl, CSPHost) goes through these few functions, so EINTR is retried in one place and
/// errno is read in one place, right after the call.

/// A failed system call: which one (and on what), and its errno.
///
/// `description` is one sentence: "bind to 10.0.0.1:7227 failed: Address already in use (errno 98)".
public struct SystemCallError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The call and what it was applied to, e.g. "bind to 10.0.0.1:7227", "socket(AF_UNIX)".
    public var call: String
    /// The positive errno the call set.
    public var errno: Int32

    public init(call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    public var description: String { "\(call) failed: \(SystemCallError.text(errno)) (errno \(errno))" }

    /// strerror's text for a code.
    public static func text(_ code: Int32) -> String { String(cString: strerror(code)) }
}

/// The outcome of one system call: its non-negative result, or the errno it set. For callers that
/// decide per errno (EAGAIN is "drained", ENOBUFS is "count and continue").
public enum SyscallResult<Value: BinaryInteger> {
    case success(Value)
    case failure(Int32)
}

/// Runs `body` (one C call that returns -1 and sets errno on failure), retrying while it fails with
/// EINTR. `@inline(never)` keeps ARC traffic of the caller out of the window between the C call and
/// the errno read. `@inlinable` lets the callers' modules specialize it: unspecialized, every call
/// (each queue poll, receive and verdict send) looked up `Value`'s generic metadata and compared
/// through protocol witnesses, about 6 % of midcomd's user time at figure 4's window 1
/// (docs/PERFORMANCE.md, "Ninth pass").
@inlinable
@inline(never)
public func syscall<Value: BinaryInteger>(_ body: () -> Value) -> SyscallResult<Value> {
    while true {
        let result = body()
        if result >= 0 { return .success(result) }
        let code = errno
        if code == EINTR { continue }
        return .failure(code)
    }
}

/// `syscall` that throws a `SystemCallError` naming `call` on failure.
@inline(never)
public func systemCall<Value: BinaryInteger>(_ call: @autoclosure () -> String, _ body: () -> Value)
    throws(SystemCallError) -> Value
{
    switch syscall(body) {
    case .success(let value): return value
    case .failure(let code): throw SystemCallError(call: call(), errno: code)
    }
}

/// Like `syscall` for C calls that return a pointer (or an opaque handle) and set errno when it is nil.
@inline(never)
public func syscallHandle<Handle>(_ body: () -> Handle?) -> (handle: Handle?, errno: Int32) {
    while true {
        if let handle = body() { return (handle, 0) }
        let code = errno
        if code == EINTR { continue }
        return (nil, code == 0 ? ENOMEM : code)
    }
}

/// An owned file descriptor, closed exactly once when the value goes away.
///
/// close() is not retried on EINTR: on Linux the descriptor is released even then, and a retry
/// could close a descriptor another thread just received.
public struct FileDescriptor: ~Copyable, Sendable {
    public let rawValue: Int32

    /// Takes ownership of `rawValue`.
    public init(adopting rawValue: Int32) { self.rawValue = rawValue }

    /// Gives the descriptor up without closing it (for an owner of another kind).
    public consuming func release() -> Int32 {
        let raw = rawValue
        discard self
        return raw
    }

    deinit { _ = close(rawValue) }
}

/// `poll`'s timeout for `timeout`: -1 (wait forever) for nil, 0 for a deadline already past (a
/// negative value would wait forever), else whole milliseconds with a positive sub-millisecond
/// remainder rounded up, so that callers looping on a deadline do not spin.
public func pollMilliseconds(_ timeout: Duration?) -> Int32 {
    guard let timeout else { return -1 }
    let (seconds, attoseconds) = timeout.components
    let total = max(0, seconds) * 1000 + max(0, attoseconds) / 1_000_000_000_000_000
    return Int32(clamping: total == 0 && timeout > .zero ? 1 : total)
}
