import Glibc
import SystemSupport

/// Who may use the control socket (docs: README, "Control socket access"): root and the daemon's
/// own user may do everything; members of `adminGroups` too; members of `readGroups` may only
/// read (status, sessions, show). Decided per connection from the kernel's record of the peer
/// (SO_PEERCRED, SO_PEERGROUPS), which a client cannot forge.
public struct ControlAccess: Sendable, Equatable {
    public var readGroups: Set<UInt32>
    public var adminGroups: Set<UInt32>

    public init(readGroups: Set<UInt32> = [], adminGroups: Set<UInt32> = []) {
        self.readGroups = readGroups
        self.adminGroups = adminGroups
    }

    /// Whether groups are configured: then the socket is reachable by everyone (mode 0666) and
    /// this check decides; otherwise only root and the daemon's group reach it (mode 0660).
    public var isConfigured: Bool { !readGroups.isEmpty || !adminGroups.isEmpty }

    /// nil: allowed; otherwise the refusal to send.
    public func refusal(of command: ControlCommand, by peer: PeerCredentials) -> String? {
        if peer.uid == 0 || peer.uid == getuid() { return nil }
        if !adminGroups.isDisjoint(with: peer.groups) { return nil }
        if command.isReadOnly, !readGroups.isDisjoint(with: peer.groups) { return nil }
        let needed = command.isReadOnly ? "root, or a member of control-read-group or control-admin-group" : "root, or a member of control-admin-group"
        return "permission denied: '\(command.rawValue)' needs \(needed) (uid \(peer.uid))"
    }
}

/// The user and groups of the process at the other end of a Unix socket.
public struct PeerCredentials: Sendable, Equatable {
    public var uid: UInt32
    /// Primary and supplementary groups.
    public var groups: Set<UInt32>

    public init(uid: UInt32, groups: Set<UInt32>) {
        self.uid = uid
        self.groups = groups
    }
}

extension ControlCommand {
    /// Commands that change nothing.
    public var isReadOnly: Bool {
        switch self {
        case .sessions, .show, .status, .denies, .rules, .showConfig, .monitor: true
        case .delete, .flush, .undeny, .reload, .announce: false
        }
    }
}

extension UnixStreamSocket {
    /// The connected peer's credentials, from the kernel.
    func peerCredentials() throws(SystemCallError) -> PeerCredentials {
        // struct ucred { pid_t pid; uid_t uid; gid_t gid; } (Glibc hides it behind _GNU_SOURCE).
        var credentials = PeerCredentialRecord()
        var length = socklen_t(MemoryLayout<PeerCredentialRecord>.size)
        let peerCredentialOption: Int32 = 17  // SO_PEERCRED, asm-generic/socket.h
        _ = try systemCall("getsockopt(SO_PEERCRED)") { getsockopt(fd, SOL_SOCKET, peerCredentialOption, &credentials, &length) }
        var groups: Set<UInt32> = [credentials.gid]
        // SO_PEERGROUPS (Linux 4.13): the supplementary groups.
        var buffer = [gid_t](repeating: 0, count: 256)
        var size = socklen_t(buffer.count * MemoryLayout<gid_t>.size)
        let peerGroups: Int32 = 59
        let result = buffer.withUnsafeMutableBytes { getsockopt(fd, SOL_SOCKET, peerGroups, $0.baseAddress, &size) }
        if result == 0 {
            groups.formUnion(buffer.prefix(Int(size) / MemoryLayout<gid_t>.size))
        }
        return PeerCredentials(uid: credentials.uid, groups: groups)
    }
}

/// The layout of Linux's `struct ucred`.
struct PeerCredentialRecord {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}
