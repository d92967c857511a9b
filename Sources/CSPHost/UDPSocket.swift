#if canImport(Glibc)
import Glibc
#endif
import CSPWire
import SystemSupport

/// A UDP socket for one address family. CSP hosts and middleboxes use it to send and receive
/// signaling messages; it is not on the packet fast path.
public final class UDPSocket: Sendable {
    public let family: IPAddress.Family
    let fd: Int32

    /// Opens a socket bound to `address` (nil = any) and `port` (0 = ephemeral).
    /// `transparent` (IP_TRANSPARENT / IPV6_TRANSPARENT, needs CAP_NET_ADMIN) allows binding a
    /// non-local address: a middlebox answering in a peer's place sends from the peer's address.
    /// `interfaceIndex` scopes an IPv6 link-local or link-scope multicast `address` (ff02::1 on eth0).
    public init(
        family: IPAddress.Family, address: IPAddress? = nil, port: UInt16 = 0, reuseAddress: Bool = false,
        transparent: Bool = false, interfaceIndex: UInt32 = 0
    ) throws(SystemCallError) {
        self.family = family
        // The socket is configured through a local owner and handed to `fd` only when it is ready: a
        // class whose init throws after `fd` is set would also run deinit, closing the descriptor a
        // second time (possibly one another thread just opened).
        let domain = family == .ipv4 ? AF_INET : AF_INET6
        let socket = FileDescriptor(adopting: try systemCall("socket") {
            Glibc.socket(domain, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        })
        var one: Int32 = 1
        let size = socklen_t(MemoryLayout<Int32>.size)
        if reuseAddress { _ = try systemCall("setsockopt(SO_REUSEADDR)") { setsockopt(socket.rawValue, SOL_SOCKET, SO_REUSEADDR, &one, size) } }
        if family == .ipv6 { _ = try systemCall("setsockopt(IPV6_V6ONLY)") { setsockopt(socket.rawValue, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, size) } }
        if transparent {
            // IP_TRANSPARENT = 19 (SOL_IP), IPV6_TRANSPARENT = 75 (SOL_IPV6): linux/in.h, linux/in6.h.
            let (level, name) = family == .ipv4 ? (Int32(IPPROTO_IP), Int32(19)) : (Int32(IPPROTO_IPV6), Int32(75))
            _ = try systemCall("setsockopt(IP_TRANSPARENT) (needs CAP_NET_ADMIN)") { setsockopt(socket.rawValue, level, name, &one, size) }
        }
        let local = CSPEndpoint(address: address ?? (family == .ipv4 ? IPAddress(ipv4: 0) : IPAddress(ipv6: 0, 0)), port: port)
        try Self.withSockaddr(local, scope: interfaceIndex) { sa, len throws(SystemCallError) in
            _ = try systemCall("bind to \(local)") { bind(socket.rawValue, sa, len) }
        }
        fd = socket.release()
    }

    deinit { close(fd) }

    /// The locally bound port (useful after binding port 0).
    public var localPort: UInt16 {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return Self.endpoint(from: storage)?.port ?? 0
    }

    /// Sets a raw socket option (e.g. IP_OPTIONS for the discovery option).
    public func setOption(level: Int32, name: Int32, bytes: [UInt8]) throws(SystemCallError) {
        _ = try systemCall("setsockopt(\(level), \(name))") {
            bytes.withUnsafeBytes { setsockopt(fd, level, name, $0.baseAddress, socklen_t($0.count)) }
        }
    }

    public func send(_ bytes: [UInt8], to destination: CSPEndpoint) throws(SystemCallError) {
        try Self.withSockaddr(destination) { sa, len throws(SystemCallError) in
            _ = try systemCall("sendto \(destination)") {
                bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, sa, len) }
            }
        }
    }

    /// Waits up to `timeout` (nil: until one comes) for one datagram; nil on timeout. With a `wake`
    /// descriptor (a `WakeupPipe`'s `fd`), also nil as soon as that is readable and no datagram is
    /// waiting: another thread can then reach this one without a timeout to poll on.
    public func receive(
        timeout: Duration?, maximumLength: Int = 65535, wakingOn wake: Int32 = -1
    ) throws(SystemCallError) -> (bytes: [UInt8], from: CSPEndpoint)? {
        // poll ignores an entry whose descriptor is negative: without `wake`, only the socket counts.
        var entries = (pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wake, events: Int16(POLLIN), revents: 0))
        let milliseconds = pollMilliseconds(timeout)
        let ready = try withUnsafeMutableBytes(of: &entries) { raw throws(SystemCallError) in
            let table = raw.baseAddress!.assumingMemoryBound(to: pollfd.self)
            return try systemCall("poll") { poll(table, 2, milliseconds) }
        }
        // Readable, or an error that recvfrom reports; otherwise only the wake (or nothing) came.
        guard ready > 0, entries.0.revents != 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: maximumLength)
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let count = try systemCall("recvfrom") {
            buffer.withUnsafeMutableBytes { raw in
                withUnsafeMutablePointer(to: &storage) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        recvfrom(fd, raw.baseAddress, raw.count, 0, $0, &length)
                    }
                }
            }
        }
        guard let from = Self.endpoint(from: storage) else { return nil }
        return (Array(buffer[0..<count]), from)
    }

    static func withSockaddr<R>(
        _ endpoint: CSPEndpoint, scope: UInt32 = 0, _ body: (UnsafePointer<sockaddr>, socklen_t) throws(SystemCallError) -> R
    ) throws(SystemCallError) -> R {
        var storage = sockaddr_storage()
        let bytes = endpoint.address.bytes
        let length: Int
        if endpoint.address.family == .ipv4 {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = endpoint.port.bigEndian
            withUnsafeMutableBytes(of: &sin.sin_addr) { $0.copyBytes(from: bytes) }
            withUnsafeMutableBytes(of: &storage) { dst in withUnsafeBytes(of: sin) { dst.copyMemory(from: $0) } }
            length = MemoryLayout<sockaddr_in>.size
        } else {
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = endpoint.port.bigEndian
            sin6.sin6_scope_id = scope
            withUnsafeMutableBytes(of: &sin6.sin6_addr) { $0.copyBytes(from: bytes) }
            withUnsafeMutableBytes(of: &storage) { dst in withUnsafeBytes(of: sin6) { dst.copyMemory(from: $0) } }
            length = MemoryLayout<sockaddr_in6>.size
        }
        return try withUnsafePointer(to: &storage) { pointer throws(SystemCallError) -> R in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa throws(SystemCallError) -> R in
                try body(sa, socklen_t(length))
            }
        }
    }

    static func endpoint(from storage: sockaddr_storage) -> CSPEndpoint? {
        let family = Int32(storage.ss_family)
        return withUnsafeBytes(of: storage) { raw -> CSPEndpoint? in
            switch family {
            case AF_INET:
                let sin = raw.load(as: sockaddr_in.self)
                let address = withUnsafeBytes(of: sin.sin_addr) { IPAddress(bytes: Array($0)) }
                return address.map { CSPEndpoint(address: $0, port: UInt16(bigEndian: sin.sin_port)) }
            case AF_INET6:
                let sin6 = raw.load(as: sockaddr_in6.self)
                let address = withUnsafeBytes(of: sin6.sin6_addr) { IPAddress(bytes: Array($0)) }
                return address.map { CSPEndpoint(address: $0, port: UInt16(bigEndian: sin6.sin6_port)) }
            default:
                return nil
            }
        }
    }
}

/// Cryptographically random 64-bit values (session IDs, nonces): the standard library's system
/// generator reads the kernel's getrandom(2) on Linux.
public func secureRandomUInt64() -> UInt64 {
    var generator = SystemRandomNumberGenerator()
    return generator.next()
}

extension UDPSocket {
    /// The source address the kernel's routing would pick to reach `destination` (a connected
    /// UDP socket sends nothing; getsockname reveals the choice).
    public static func sourceAddress(toward destination: CSPEndpoint) throws(SystemCallError) -> IPAddress {
        let probe = try UDPSocket(family: destination.address.family)
        try withSockaddr(destination) { sa, len throws(SystemCallError) in
            _ = try systemCall("connect to \(destination)") { connect(probe.fd, sa, len) }
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(probe.fd, $0, &length) }
        }
        guard let local = endpoint(from: storage) else { throw SystemCallError(call: "getsockname", errno: EINVAL) }
        return local.address
    }
}

extension UDPSocket {
    /// The all-hosts groups an unsolicited ANNOUNCE goes to (docs/PROTOCOL.md 5.7.1).
    public static let allHostsIPv4 = IPAddress(ipv4: 0xe000_0001)
    public static let allNodesIPv6 = IPAddress(bytes: [0xff, 0x02] + [UInt8](repeating: 0, count: 13) + [1])!

    /// A socket that hears the all-hosts group of `near`'s family on `port` (and nothing sent to
    /// this host's own addresses: it is bound to the group, so it never takes a unicast datagram
    /// from another socket of the port). IPv6 listens on the interface that has `near`.
    public static func allHostsListener(near: IPAddress, port: UInt16) throws(SystemCallError) -> UDPSocket {
        if near.family == .ipv4 {
            return try UDPSocket(family: .ipv4, address: allHostsIPv4, port: port, reuseAddress: true)
        }
        return try UDPSocket(family: .ipv6, address: allNodesIPv6, port: port, reuseAddress: true, interfaceIndex: interfaceIndex(of: near))
    }

    /// The index of the interface that has `address` (getifaddrs), 0 when none has it.
    public static func interfaceIndex(of address: IPAddress) -> UInt32 {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let first = list else { return 0 }
        defer { freeifaddrs(first) }
        var cursor: UnsafeMutablePointer<ifaddrs>? = first
        while let entry = cursor {
            cursor = entry.pointee.ifa_next
            guard let sa = entry.pointee.ifa_addr, Int32(sa.pointee.sa_family) == AF_INET6, address.family == .ipv6 else { continue }
            let bytes = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { withUnsafeBytes(of: $0.pointee.sin6_addr) { Array($0) } }
            if bytes == address.bytes, let name = entry.pointee.ifa_name { return if_nametoindex(name) }
        }
        return 0
    }
}

/// Waits until the address watcher or one of `sockets` has something to read, or `timeout`
/// passes: one poll(2) over all of them, so a keeper sleeps until an event instead of polling.
/// Returns whether the watcher is readable and which sockets are.
public func waitReadable(_ watcher: AddressWatcher, _ sockets: [UDPSocket], timeout: Duration) throws(SystemCallError)
    -> (watcher: Bool, sockets: [Bool])
{
    var fds = [pollfd(fd: watcher.fd, events: Int16(POLLIN), revents: 0)] + sockets.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
    let milliseconds = Int32(clamping: max(0, timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000))
    let ready = try systemCall("poll") { poll(&fds, nfds_t(fds.count), milliseconds) }
    guard ready > 0 else { return (false, sockets.map { _ in false }) }
    return (fds[0].revents != 0, fds.dropFirst().map { $0.revents != 0 })
}
