#if canImport(Glibc)
import Glibc
#endif
import CSPWire
import SystemSupport

/// A host address appearing or going away, as rtnetlink reports it.
public struct AddressEvent: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case added
        case removed
    }
    public var kind: Kind
    public var address: IPAddress
    public var interfaceIndex: UInt32
    /// RT_SCOPE_*: 0 universe (global), 253 link, 254 host.
    public var scope: UInt8

    public init(kind: Kind, address: IPAddress, interfaceIndex: UInt32, scope: UInt8) {
        self.kind = kind
        self.address = address
        self.interfaceIndex = interfaceIndex
        self.scope = scope
    }

    public var isGlobal: Bool { scope == 0 }
}

/// Watches the host's addresses through rtnetlink (RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR):
/// events, not polling, so a session keeper learns of a move as the kernel makes it.
public final class AddressWatcher: Sendable {
    let fd: Int32

    public init() throws(SystemCallError) {
        let socket = FileDescriptor(
            adopting: try systemCall("socket(AF_NETLINK, NETLINK_ROUTE)") {
                Glibc.socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)  // NETLINK_ROUTE = 0
            })
        var address = NetlinkAddress(family: UInt16(AF_NETLINK), groups: 0x10 | 0x100)  // RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
        _ = try systemCall("bind rtnetlink address groups") {
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socket.rawValue, $0, socklen_t(MemoryLayout<NetlinkAddress>.size)) }
            }
        }
        fd = socket.release()
    }

    deinit { close(fd) }

    /// The events of the next datagram, or [] when `timeout` passes first.
    public func next(timeout: Duration) throws(SystemCallError) -> [AddressEvent] {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let milliseconds = Int32(max(0, timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000))
        let ready = try systemCall("poll rtnetlink") { poll(&poller, 1, milliseconds) }
        guard ready > 0 else { return [] }
        var buffer = [UInt8](repeating: 0, count: 16384)
        let count = try systemCall("recv rtnetlink") {
            buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        }
        return Self.parse(Array(buffer.prefix(count)))
    }

    /// The address events in one rtnetlink datagram (RTM_NEWADDR 20, RTM_DELADDR 21); anything
    /// malformed or of another type is skipped. Pure: unit-tested with crafted messages.
    public static func parse(_ bytes: [UInt8]) -> [AddressEvent] {
        func u16(_ at: Int) -> Int { Int(bytes[at]) | Int(bytes[at + 1]) << 8 }  // host order (little endian)
        func u32(_ at: Int) -> UInt32 { UInt32(u16(at)) | UInt32(u16(at + 2)) << 16 }
        var events: [AddressEvent] = []
        var offset = 0
        while offset + 16 <= bytes.count {
            let length = Int(u32(offset))
            guard length >= 16, offset + length <= bytes.count else { break }
            let type = u16(offset + 4)
            let body = offset + 16
            // struct ifaddrmsg { u8 family, prefixlen, flags, scope; u32 index }
            if type == 20 || type == 21, body + 8 <= offset + length {
                let family = bytes[body]
                let scope = bytes[body + 3]
                let index = u32(body + 4)
                var local: IPAddress?
                var plain: IPAddress?
                var attribute = body + 8
                while attribute + 4 <= offset + length {
                    let attributeLength = u16(attribute)
                    guard attributeLength >= 4, attribute + attributeLength <= offset + length else { break }
                    let value = Array(bytes[(attribute + 4)..<(attribute + attributeLength)])
                    let address: IPAddress? =
                        family == 2 && value.count == 4
                        ? IPAddress(ipv4: value.reduce(0) { $0 << 8 | UInt32($1) })
                        : family == 10 && value.count == 16 ? IPAddress(bytes: value) : nil
                    switch u16(attribute + 2) {
                    case 1: plain = address  // IFA_ADDRESS
                    case 2: local = address  // IFA_LOCAL (the host's own, on point-to-point links)
                    default: break
                    }
                    attribute += (attributeLength + 3) & ~3
                }
                if let address = local ?? plain {
                    events.append(AddressEvent(kind: type == 20 ? .added : .removed, address: address, interfaceIndex: index, scope: scope))
                }
            }
            offset += (length + 3) & ~3
        }
        return events
    }
}

/// The layout of `struct sockaddr_nl` (linux/netlink.h, not exported by Glibc's module).
struct NetlinkAddress {
    var family: UInt16
    var pad: UInt16 = 0
    var pid: UInt32 = 0
    var groups: UInt32
}
