#if canImport(Glibc)
import Glibc
#endif
import CSPWire

/// One address of this host and the interface that has it.
struct LocalAddress {
    var address: IPAddress
    var interfaceIndex: UInt32
}

extension Daemon {
    /// This host's IPv4 and IPv6 addresses on every interface (getifaddrs), read when asked: the
    /// port-mapping and epoch announcements and the relay's `listen` check want the current ones.
    static func localAddresses() -> [LocalAddress] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let first = list else { return [] }
        defer { freeifaddrs(first) }
        var addresses: [LocalAddress] = []
        var cursor: UnsafeMutablePointer<ifaddrs>? = first
        while let entry = cursor {
            cursor = entry.pointee.ifa_next
            guard let sa = entry.pointee.ifa_addr else { continue }
            let address: IPAddress?
            switch Int32(sa.pointee.sa_family) {
            case AF_INET:
                address = IPAddress(ipv4: sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt32(bigEndian: $0.pointee.sin_addr.s_addr) })
            case AF_INET6:
                address = IPAddress(bytes: sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { withUnsafeBytes(of: $0.pointee.sin6_addr) { Array($0) } })
            default:
                address = nil
            }
            guard let address else { continue }
            addresses.append(LocalAddress(address: address, interfaceIndex: entry.pointee.ifa_name.map { if_nametoindex($0) } ?? 0))
        }
        return addresses
    }
}
