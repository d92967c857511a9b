#if canImport(Glibc)
import Glibc
#endif
import CSPHost
import CSPWire
import Dispatch
import MidcomCore

/// The unsolicited ANNOUNCE of our epoch (docs/PROTOCOL.md 5.7.1) to the all-hosts groups
/// (224.0.0.1, ff02::1; link-local, one hop) on the CSP port, out of every interface that has an
/// inside address: at start, and again whenever `midctl announce` asks (the new active box of a
/// HA pair). Hosts' session keepers then REFRESH at once instead of at their next refresh, and the
/// answer's records (our new epoch, or our ID where another box was) make them signal again.
/// Three times, 0, 0.5 and 1.5 s after the trigger: a multicast datagram may be lost, and keepers
/// act on one announcement per two seconds at most.
extension Daemon {
    static let epochAnnouncementSchedule: [Duration] = [.zero, .milliseconds(500), .milliseconds(1500)]

    func announceEpochOnRequest() {
        let sockets = Self.announcementSockets(log: { [log] in log.limited(.warning, category: "announce", $0) })
        guard !sockets.isEmpty else { return }
        var seen: UInt64 = 0
        var trigger = ContinuousClock.now
        var sent = 0
        while !stopping.load(ordering: .relaxed) {
            let requested = epochAnnouncementRequests.load(ordering: .relaxed)
            if requested != seen {
                seen = requested
                trigger = .now
                sent = 0
            }
            if sent < Self.epochAnnouncementSchedule.count, ContinuousClock.now >= trigger + Self.epochAnnouncementSchedule[sent] {
                announceEpoch(on: sockets)
                sent += 1
            }
            // Asleep until the schedule's next announcement is due, or until `midctl announce` or
            // `stop` signals: an idle gateway wakes this thread for nothing (a 100 ms poll before,
            // ten wake-ups a second on the reader's CPU).
            if sent < Self.epochAnnouncementSchedule.count {
                let (seconds, attoseconds) = ContinuousClock.now.duration(to: trigger + Self.epochAnnouncementSchedule[sent]).components
                let nanoseconds = max(0, Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000))
                _ = epochAnnouncementWake.wait(timeout: .now() + .nanoseconds(nanoseconds))
            } else {
                epochAnnouncementWake.wait()
            }
        }
    }

    /// One announcement out of each inside interface, per family.
    func announceEpoch(on sockets: [IPAddress.Family: UDPSocket]) {
        let (message, inside) = engine.withLock { ($0.epochAnnouncement(), $0.policy.configuration) }
        guard let bytes = try? message.serialize() else { return }
        // Once per interface and family, however many inside addresses it has (a HA pair's
        // virtual address sits next to the box's own).
        var done = Set<[UInt32]>()
        for local in Self.localAddresses() where inside.isInside(local.address) {
            let interface = [local.interfaceIndex, UInt32(local.address.family.rawValue)]
            guard let socket = sockets[local.address.family], done.insert(interface).inserted else { continue }
            do {
                if local.address.family == .ipv4 {
                    // IP_MULTICAST_IF (32) by address: the datagram leaves from it.
                    try socket.setOption(level: Int32(IPPROTO_IP), name: 32, bytes: local.address.bytes)
                    try socket.send(bytes, to: CSPEndpoint(address: UDPSocket.allHostsIPv4, port: configuration.cspPort))
                } else {
                    // IPV6_MULTICAST_IF (17) by interface index: one per interface, not per address.
                    try socket.setOption(level: Int32(IPPROTO_IPV6), name: 17, bytes: Self.int32Bytes(Int32(bitPattern: local.interfaceIndex)))
                    try socket.send(bytes, to: CSPEndpoint(address: UDPSocket.allNodesIPv6, port: configuration.cspPort))
                }
                epochAnnouncements.add(1, ordering: .relaxed)
            } catch {
                failedReplies.add(1, ordering: .relaxed)
                log.limited(.warning, category: "announce", "cannot announce our epoch via \(local.address): \(error)")
            }
        }
    }

    /// One socket per family on an ephemeral port, our own multicast not looped back to us
    /// (IP_MULTICAST_LOOP 34, IPV6_MULTICAST_LOOP 19): our CSP sockets would only count it.
    static func announcementSockets(log: (String) -> Void) -> [IPAddress.Family: UDPSocket] {
        var sockets: [IPAddress.Family: UDPSocket] = [:]
        for family in [IPAddress.Family.ipv4, .ipv6] {
            do {
                let socket = try UDPSocket(family: family)
                if family == .ipv4 {
                    try socket.setOption(level: Int32(IPPROTO_IP), name: 34, bytes: [0])
                } else {
                    try socket.setOption(level: Int32(IPPROTO_IPV6), name: 19, bytes: int32Bytes(0))
                }
                sockets[family] = socket
            } catch {
                log("no socket to announce our epoch to \(family) hosts: \(error)")
            }
        }
        return sockets
    }

    static func int32Bytes(_ value: Int32) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }
}
