#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import SystemSupport

/// A failed kernel interaction: which netlink operation (or syscall), on which object, with which errno.
///
/// `description` is one sentence that names the operation and object and says what to do, for example
/// "netlink NFT_MSG_NEWSETELEM on set inet midcom allowed4, element 0a000001 failed: table inet midcom or set
/// allowed4 does not exist: load nft-rules/midcom.nft first (errno 2, No such file or directory)".
/// Equality compares operation, object and errno, not the hint text.
public struct NetfilterError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The netlink message or syscall that failed, e.g. "NFT_MSG_NEWSETELEM", "NFQNL_CFG_CMD_BIND", "recv".
    public var operation: String
    /// What it was applied to, e.g. "set inet midcom allowed4, element 0a000001", "queue 0".
    public var object: String
    /// The positive errno the kernel or libc returned (0 when the failure is not an errno, see `hint`).
    public var errno: Int32
    /// What the operator should do about it; derived from operation and errno unless given explicitly.
    public var hint: String

    public init(operation: String, object: String, errno: Int32, hint: String? = nil) {
        self.operation = operation
        self.object = object
        self.errno = errno
        self.hint = hint ?? NetfilterError.defaultHint(errno: errno)
    }

    public var description: String {
        let errnoText = errno == 0 ? "" : " (errno \(errno), \(NetfilterError.errnoName(errno)))"
        return "\(operation) on \(object) failed: \(hint)\(errnoText)"
    }

    public static func == (lhs: NetfilterError, rhs: NetfilterError) -> Bool {
        lhs.operation == rhs.operation && lhs.object == rhs.object && lhs.errno == rhs.errno
    }

    /// `strerror` text for `code`.
    public static func errnoName(_ code: Int32) -> String {
        guard let text = strerror(code) else { return "errno \(code)" }
        return String(cString: text)
    }

    static func defaultHint(errno code: Int32) -> String {
        switch code {
        case EPERM, EACCES:
            return "needs CAP_NET_ADMIN (run as root or grant the capability)"
        case EPROTONOSUPPORT, EAFNOSUPPORT:
            return "the kernel lacks nfnetlink support (load the nfnetlink, nfnetlink_queue and nf_tables modules)"
        default:
            return NetfilterError.errnoName(code)
        }
    }
}
