#if canImport(Glibc)
import Glibc
#endif

/// Why a control-socket operation failed. Each description is one sentence that says what to do.
public enum ControlError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Nothing listens at `path` (the file is missing, or is a stale socket: ENOENT, ECONNREFUSED).
    case daemonNotRunning(path: String)
    /// The socket exists but this user may not connect to it (EACCES, EPERM).
    case permissionDenied(path: String)
    /// The peer sent something that is not a protocol message.
    case protocolError(String)
    /// The peer did not connect, answer or drain in time.
    case timeout
    /// `path` does not fit in `sockaddr_un.sun_path` (107 bytes plus the terminating NUL).
    case pathTooLong(path: String)
    /// A server found another live daemon already answering at `path`.
    case addressInUse(path: String)
    /// Another system call failed; `call` names it, `errno` is its error number.
    case systemCallFailed(call: String, path: String, errno: Int32)
    /// The daemon answered the request with an error (for a stream, before any event).
    case refused(String)

    /// The daemon answered with an error, as opposed to not being reachable.
    public var isRefusal: Bool { if case .refused = self { true } else { false } }

    public var description: String {
        switch self {
        case .daemonNotRunning(let path):
            return "midcomd is not running: no control socket at \(path) "
                + "(start it with `systemctl start midcomd`, or pass --socket)"
        case .permissionDenied(let path):
            return "permission denied on the control socket \(path) "
                + "(run as root, or as a member of the socket's group)"
        case .protocolError(let message):
            return "control protocol error: \(message) (are midctl and midcomd the same version?)"
        case .timeout:
            return "midcomd did not answer in time (check `systemctl status midcomd` and its log)"
        case .pathTooLong(let path):
            return "control socket path is longer than 107 bytes: \(path) (choose a shorter path)"
        case .addressInUse(let path):
            return "another midcomd is already listening on \(path) (stop it first, or configure another socket path)"
        case .systemCallFailed(let call, let path, let code):
            return "\(call) on \(path) failed: \(Self.errnoText(code)) (errno \(code))"
        case .refused(let message):
            return message
        }
    }

    static func errnoText(_ code: Int32) -> String {
        #if canImport(Glibc)
        guard let text = strerror(code) else { return "unknown error" }
        return String(cString: text)
        #else
        return "error"
        #endif
    }
}
