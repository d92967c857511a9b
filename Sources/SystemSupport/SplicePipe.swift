#if canImport(Glibc)
import Glibc
#endif
import CLinuxSystem

/// A kernel pipe used as the buffer between two sockets: `splice(2)` moves a socket's received
/// pages into it and from it to the other socket's send queue, so relayed octets never enter user
/// space. Both ends non-blocking and close-on-exec.
public final class SplicePipe {
    public let readEnd: Int32
    public let writeEnd: Int32
    /// The pipe's capacity in octets (the kernel rounds a request up to pages, caps it at
    /// /proc/sys/fs/pipe-max-size, and keeps 64 KiB when the request fails).
    public let capacity: Int
    /// Octets spliced in and not yet spliced out.
    public private(set) var pending = 0

    public init(capacity requested: Int) throws(SystemCallError) {
        var ends: [Int32] = [-1, -1]
        let created = ends.withUnsafeMutableBufferPointer { buffer in syscall { clx_pipe(buffer.baseAddress) } }
        if case .failure(let code) = created { throw SystemCallError(call: "pipe2", errno: code) }
        readEnd = ends[0]
        writeEnd = ends[1]
        let granted = clx_set_pipe_size(ends[1], Int32(clamping: requested))
        capacity = granted > 0 ? Int(granted) : 65536
    }

    deinit {
        _ = close(readEnd)
        _ = close(writeEnd)
    }

    /// Moves up to the pipe's free space from `socket` into the pipe.
    public func fill(from socket: Int32) -> SyscallResult<Int> {
        let free = capacity - pending
        guard free > 0 else { return .success(0) }
        let result = splice(from: socket, to: writeEnd, count: free, more: false)
        if case .success(let moved) = result { pending += moved }
        return result
    }

    /// Moves what the pipe holds to `socket`; `more` tells TCP further octets follow at once.
    public func drain(to socket: Int32, more: Bool) -> SyscallResult<Int> {
        guard pending > 0 else { return .success(0) }
        let result = splice(from: readEnd, to: socket, count: pending, more: more)
        if case .success(let moved) = result { pending -= moved }
        return result
    }
}

/// One splice(2) between descriptors without offsets, non-blocking: `.success(0)` from a socket is
/// its end of file; `.failure(EAGAIN)` is "nothing now".
public func splice(from source: Int32, to destination: Int32, count: Int, more: Bool) -> SyscallResult<Int> {
    let flags = CLX_SPLICE_MOVE | CLX_SPLICE_NONBLOCK | (more ? CLX_SPLICE_MORE : 0)
    return syscall { clx_splice(source, destination, UInt(count), flags) }.map { Int($0) }
}

extension SyscallResult {
    /// The same outcome with the value converted.
    public func map<Other: BinaryInteger>(_ transform: (Value) -> Other) -> SyscallResult<Other> {
        switch self {
        case .success(let value): .success(transform(value))
        case .failure(let code): .failure(code)
        }
    }
}
