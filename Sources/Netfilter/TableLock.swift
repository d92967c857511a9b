#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CNetfilter
import SystemSupport

/// Proof that this process is the one midcomd serving an nft table in this network namespace.
///
/// Two daemons on one table fight over its `enqueue` chain: the second replaced the first one's
/// queue rule, and flushed the chain when it stopped, leaving the first deaf. The lock is a Unix
/// socket bound to an abstract name (`@midcomd/table/NAME`): abstract names belong to the network
/// namespace (two labs or containers on one host do not collide), need no file, and are released by
/// the kernel when the process dies, however it dies, so a crash never leaves a stale lock.
public final class TableLock: Sendable {
    let descriptor: FileDescriptor
    public let name: String

    /// Takes the lock for `table`; throws EADDRINUSE when another process holds it.
    public init(table: String) throws(NetfilterError) {
        name = "midcomd/table/\(table)"
        let object = "abstract Unix socket @\(name)"
        let owned: FileDescriptor
        switch syscall({ socket(AF_UNIX, cnf_unix_stream_cloexec(), 0) }) {
        case .success(let value): owned = FileDescriptor(adopting: value)
        case .failure(let code): throw NetfilterError(operation: "socket(AF_UNIX)", object: object, errno: code)
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array(name.utf8.prefix(MemoryLayout.size(ofValue: address.sun_path) - 1))
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw[0] = 0  // abstract: the name follows a NUL, no file is created
            for (offset, byte) in path.enumerated() { raw[offset + 1] = byte }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + 1 + path.count)
        let fd = owned.rawValue  // closures below must not capture the owner itself
        let bound = syscall {
            withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        }
        if case .failure(let code) = bound {
            throw NetfilterError(
                operation: "bind(AF_UNIX)", object: object, errno: code,
                hint: code == EADDRINUSE
                    ? "another midcomd already serves table inet \(table) in this network namespace: stop it first, or give this instance its own table"
                    : nil)
        }
        descriptor = owned
    }
}
