#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CNetfilter

/// The outcome of one system call: its non-negative result, or the errno it set.
///
/// Every syscall of this target goes through `syscall(_:)`, which retries EINTR and captures errno right after
/// the call. Callers decide what an errno means (EAGAIN is "drained", ENOBUFS is "count and continue" on the
/// queue socket) and turn the rest into a `NetfilterError` naming the operation and object.
enum SyscallResult<Value: BinaryInteger> {
    case success(Value)
    case failure(Int32)

    /// The value, or a `NetfilterError` naming `operation` on `object`.
    func get(_ operation: @autoclosure () -> String, _ object: @autoclosure () -> String) throws(NetfilterError) -> Value {
        switch self {
        case .success(let value): return value
        case .failure(let code): throw NetfilterError(operation: operation(), object: object(), errno: code)
        }
    }
}

/// Runs `body` (one C call that returns -1 and sets errno on failure), retrying while it fails with EINTR.
///
/// `@inline(never)` keeps ARC traffic of the caller out of the window between the C call and the errno read.
@inline(never)
func syscall<Value: BinaryInteger>(_ body: () -> Value) -> SyscallResult<Value> {
    while true {
        let result = body()
        if result >= 0 { return .success(result) }
        let code = errno
        if code == EINTR { continue }
        return .failure(code)
    }
}

/// Like `syscall(_:)` for C calls that return a pointer (or an opaque handle) and set errno when it is nil.
@inline(never)
func syscallHandle<Handle>(_ body: () -> Handle?) -> (handle: Handle?, errno: Int32) {
    while true {
        if let handle = body() { return (handle, 0) }
        let code = errno
        if code == EINTR { continue }
        return (nil, code == 0 ? ENOMEM : code)
    }
}

/// Opens and binds a NETLINK_NETFILTER socket (both clients use one). NETLINK_CAP_ACK: errors then
/// carry only the header of the failed message, not a copy of it — small replies, and no ENOBUFS
/// when a large batch fails on every element. `object` names the client in errors.
func openNetfilterSocket(object: String) throws(NetfilterError) -> OpaquePointer {
    let opened = syscallHandle { mnl_socket_open2(NETLINK_NETFILTER, Int32(SOCK_CLOEXEC.rawValue)) }
    guard let socket = opened.handle else {
        throw NetfilterError(operation: "socket(AF_NETLINK, NETLINK_NETFILTER)", object: object, errno: opened.errno)
    }
    if case .failure(let code) = syscall({ mnl_socket_bind(socket, 0, pid_t(MNL_SOCKET_AUTOPID)) }) {
        mnl_socket_close(socket)
        throw NetfilterError(operation: "bind(AF_NETLINK)", object: object, errno: code)
    }
    var one: Int32 = 1
    _ = setsockopt(mnl_socket_get_fd(socket), SOL_NETLINK, NETLINK_CAP_ACK, &one, socklen_t(MemoryLayout<Int32>.size))
    return socket
}
