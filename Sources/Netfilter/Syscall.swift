#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CNetfilter
import SystemSupport

extension SyscallResult {
    /// The value, or a `NetfilterError` naming `operation` on `object`.
    func get(_ operation: @autoclosure () -> String, _ object: @autoclosure () -> String) throws(NetfilterError) -> Value {
        switch self {
        case .success(let value): return value
        case .failure(let code): throw NetfilterError(operation: operation(), object: object(), errno: code)
        }
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
