import Foundation
import TestSupport
import XCTest

@testable import Netfilter

#if canImport(Glibc)
import Glibc
#endif

/// ConntrackClient against the real kernel. Conntrack tracks nothing in a namespace until a ruleset uses it, so every
/// test loads a table whose output chain counts `ct state new` packets; UDP datagrams over loopback then create
/// entries, which `conntrack -L` confirms independently of the client.
final class ConntrackClientTests: XCTestCase {
    private var client: ConntrackClient!

    override func setUpWithError() throws {
        guard Host.requireRoot() else { throw XCTSkip("not root (already reported as a failure)") }
        try Host.loopbackUp()
        let table = Host.uniqueTableName("ctc")
        addTeardownBlock { Host.deleteTable("inet", table) }
        try Host.nft("""
            table inet \(table) {
                chain out {
                    type filter hook output priority 0; policy accept;
                    ct state new counter
                }
            }
            """)
        client = try ConntrackClient()
    }

    private static let v4Local: [UInt8] = [127, 0, 0, 1]
    private static let v4Other: [UInt8] = [127, 0, 0, 2]
    private static let v6Loopback: [UInt8] = [UInt8](repeating: 0, count: 15) + [1]
    private static let any4: [UInt8] = [0, 0, 0, 0]

    private func udp(_ from: UDPSocket, _ to: UDPSocket) -> ConntrackFilter {
        ConntrackFilter(family: UInt8(from.family), proto: UInt8(IPPROTO_UDP), source: from.address, sourcePort: from.port,
                        destination: to.address, destinationPort: to.port)
    }

    /// Whether `conntrack -L` lists an entry whose original tuple is `flow`.
    private func conntrackLists(_ flow: ConntrackFilter) throws -> Bool {
        let familyName = flow.family == UInt8(AF_INET6) ? "ipv6" : "ipv4"
        let result = try Host.run(["conntrack", "-L", "-f", familyName])
        guard result.status == 0 else { throw TestFailure("conntrack -L failed: \(result.stderr)") }
        func text(_ bytes: [UInt8]) -> String {
            var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            bytes.withUnsafeBytes { _ = inet_ntop(Int32(flow.family), $0.baseAddress, &buffer, socklen_t(buffer.count)) }
            return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        let original = "src=\(text(flow.source)) dst=\(text(flow.destination)) sport=\(flow.sourcePort) dport=\(flow.destinationPort)"
        return result.stdout.split(separator: "\n").contains { line in
            line.hasPrefix("udp") && line.range(of: "src=").map { line[$0.lowerBound...].hasPrefix(original) } == true
        }
    }

    /// Sends one datagram along each flow and waits (bounded) until `conntrack -L` shows all of them.
    private func establish(_ flows: [(UDPSocket, UDPSocket)]) throws {
        for (from, to) in flows { try from.send(to: to) }
        let all = flows.map { udp($0.0, $0.1) }
        let seen = try Host.wait(timeout: 5) { try all.allSatisfy { try conntrackLists($0) } }
        guard seen else { throw TestFailure("conntrack -L does not show \(all); is conntrack active in this namespace?") }
    }

    // MARK: Exact filters

    func testExactDeleteRemovesOnlyThatEntry() throws {
        let receiver = try UDPSocket(family: AF_INET, address: Self.v4Other)
        let first = try UDPSocket(family: AF_INET, address: Self.v4Local)
        let second = try UDPSocket(family: AF_INET, address: Self.v4Local)
        try establish([(first, receiver), (second, receiver)])

        XCTAssertEqual(try client.deleteEntries(matching: udp(first, receiver)), 1)

        XCTAssertFalse(try conntrackLists(udp(first, receiver)))
        XCTAssertTrue(try conntrackLists(udp(second, receiver)))
        let toReceiver = ConntrackFilter(family: UInt8(AF_INET), proto: UInt8(IPPROTO_UDP), source: Self.any4, sourcePort: 0,
                                         destination: Self.v4Other, destinationPort: receiver.port)
        XCTAssertEqual(try client.entries(matching: toReceiver), [udp(second, receiver)])
    }

    /// The kernel finds a tuple in either direction; a filter that is only an entry's REPLY tuple must not delete it.
    func testReplyTupleDoesNotMatchAnEntry() throws {
        let receiver = try UDPSocket(family: AF_INET, address: Self.v4Other)
        let sender = try UDPSocket(family: AF_INET, address: Self.v4Local)
        try establish([(sender, receiver)])

        XCTAssertEqual(try client.deleteEntries(matching: udp(receiver, sender)), 0)
        XCTAssertTrue(try conntrackLists(udp(sender, receiver)))
        XCTAssertEqual(try client.entries(matching: udp(receiver, sender)), [])
    }

    func testDeletingAMissingExactEntryReturnsZero() throws {
        let missing = ConntrackFilter(family: UInt8(AF_INET), proto: UInt8(IPPROTO_UDP), source: [10, 9, 8, 7], sourcePort: 4000,
                                      destination: [10, 9, 8, 6], destinationPort: 5000)
        XCTAssertEqual(try client.deleteEntries(matching: missing), 0)
        XCTAssertEqual(try client.entries(matching: missing), [])
    }

    // MARK: Wildcards

    func testWildcardSourcePortDeletesEveryEntryOfTheFourTuple() throws {
        let receiver = try UDPSocket(family: AF_INET, address: Self.v4Other)
        let bystander = try UDPSocket(family: AF_INET, address: Self.v4Other)
        let senders = try (0 ..< 3).map { _ in try UDPSocket(family: AF_INET, address: Self.v4Local) }
        let other = try UDPSocket(family: AF_INET, address: Self.v4Local)
        try establish(senders.map { ($0, receiver) } + [(other, bystander)])

        var filter = udp(senders[0], receiver)
        filter.sourcePort = 0
        XCTAssertEqual(Set(try client.entries(matching: filter).map(\.sourcePort)), Set(senders.map(\.port)))

        // The kernel filters the dump itself (CTA_FILTER), and only the user-space match sees the rest without it.
        XCTAssertEqual(Set(try client.dumpedEntries(filter, kernelSide: true).map(\.sourcePort)), Set(senders.map(\.port)))
        XCTAssertEqual(client.kernelFilterWorks, true)
        XCTAssertTrue(try client.dumpedEntries(filter, kernelSide: false).contains(udp(other, bystander)))

        XCTAssertEqual(try client.deleteEntries(matching: filter), 3)
        for sender in senders { XCTAssertFalse(try conntrackLists(udp(sender, receiver))) }
        XCTAssertTrue(try conntrackLists(udp(other, bystander)))
        XCTAssertEqual(try client.entries(matching: filter), [])
        XCTAssertEqual(try client.deleteEntries(matching: filter), 0)
    }

    // MARK: IPv6

    func testIPv6ExactAndWildcard() throws {
        let receiver = try UDPSocket(family: AF_INET6, address: Self.v6Loopback)
        let first = try UDPSocket(family: AF_INET6, address: Self.v6Loopback)
        let second = try UDPSocket(family: AF_INET6, address: Self.v6Loopback)
        try establish([(first, receiver), (second, receiver)])

        var anySource = udp(first, receiver)
        anySource.source = [UInt8](repeating: 0, count: 16)
        anySource.sourcePort = 0
        XCTAssertEqual(Set(try client.entries(matching: anySource).map(\.sourcePort)), [first.port, second.port])

        XCTAssertEqual(try client.deleteEntries(matching: udp(first, receiver)), 1)
        XCTAssertFalse(try conntrackLists(udp(first, receiver)))
        XCTAssertTrue(try conntrackLists(udp(second, receiver)))

        XCTAssertEqual(try client.deleteEntries(matching: anySource), 1)
        XCTAssertFalse(try conntrackLists(udp(second, receiver)))
    }

    // MARK: Malformed filters

    func testMalformedFilterThrowsAnErrorNamingIt() throws {
        let malformed = ConntrackFilter(family: UInt8(AF_INET), proto: UInt8(IPPROTO_UDP), source: [10, 0, 0], sourcePort: 4000,
                                        destination: [10, 0, 0, 2], destinationPort: 5000)
        XCTAssertEqual(malformed.description, "udp 0x0a0000 (3 bytes):4000 -> 10.0.0.2:5000")
        let attempts: [(String, Result<Int, NetfilterError>)] = [
            ("delete", Result { () throws(NetfilterError) -> Int in try client.deleteEntries(matching: malformed) }),
            ("list", Result { () throws(NetfilterError) -> Int in try client.entries(matching: malformed).count }),
        ]
        for (operation, result) in attempts {
            guard case .failure(let error) = result else {
                XCTFail("\(operation) accepted a 3-byte address")
                continue
            }
            XCTAssertEqual(error.object, malformed.description, operation)
            XCTAssertEqual(error.errno, EINVAL, operation)
            XCTAssertTrue(error.description.contains("source address has 3 bytes, AF_INET needs 4"), error.description)
        }
        let badFamily = ConntrackFilter(family: 7, proto: 17, source: [], sourcePort: 0, destination: [], destinationPort: 0)
        XCTAssertThrowsError(try client.entries(matching: badFamily)) { error in
            XCTAssertTrue("\(error)".contains("family 7"), "\(error)")
        }
    }

    func testFilterDescriptions() {
        let exact = ConntrackFilter(family: UInt8(AF_INET), proto: 17, source: [10, 0, 0, 1], sourcePort: 4000,
                                    destination: [10, 0, 0, 2], destinationPort: 5000)
        XCTAssertEqual(exact.description, "udp 10.0.0.1:4000 -> 10.0.0.2:5000")
        XCTAssertTrue(exact.isExact)
        let wildcard = ConntrackFilter(family: UInt8(AF_INET6), proto: 6, source: Self.v6Loopback, sourcePort: 0,
                                       destination: [UInt8](repeating: 0, count: 16), destinationPort: 443)
        XCTAssertEqual(wildcard.description, "tcp [::1]:* -> *:443")
        XCTAssertFalse(wildcard.isExact)
    }
}

/// A UDP socket bound to `address` and an ephemeral port.
private final class UDPSocket {
    let family: Int32
    let address: [UInt8]
    let fd: Int32
    private(set) var port: UInt16 = 0

    init(family: Int32, address: [UInt8]) throws {
        self.family = family
        self.address = address
        fd = socket(family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: \(String(cString: strerror(errno)))") }
        var storage = Self.socketAddress(family: family, address: address, port: 0)
        let bound = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, Self.length(family)) }
        }
        guard bound == 0 else { throw TestFailure("bind: \(String(cString: strerror(errno)))") }
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        port = withUnsafeBytes(of: &storage) { UInt16(bigEndian: $0.loadUnaligned(fromByteOffset: 2, as: UInt16.self)) }
    }

    deinit { close(fd) }

    func send(to other: UDPSocket) throws {
        var storage = Self.socketAddress(family: other.family, address: other.address, port: other.port)
        let sent = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, "x", 1, 0, $0, Self.length(other.family)) }
        }
        guard sent == 1 else { throw TestFailure("sendto port \(other.port): \(String(cString: strerror(errno)))") }
    }

    private static func length(_ family: Int32) -> socklen_t {
        socklen_t(family == AF_INET6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size)
    }

    private static func socketAddress(family: Int32, address: [UInt8], port: UInt16) -> sockaddr_storage {
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { raw in
            if family == AF_INET6 {
                var v6 = sockaddr_in6()
                v6.sin6_family = sa_family_t(AF_INET6)
                v6.sin6_port = port.bigEndian
                withUnsafeMutableBytes(of: &v6.sin6_addr) { $0.copyBytes(from: address) }
                withUnsafeBytes(of: v6) { raw.copyMemory(from: $0) }
            } else {
                var v4 = sockaddr_in()
                v4.sin_family = sa_family_t(AF_INET)
                v4.sin_port = port.bigEndian
                withUnsafeMutableBytes(of: &v4.sin_addr) { $0.copyBytes(from: address) }
                withUnsafeBytes(of: v4) { raw.copyMemory(from: $0) }
            }
        }
        return storage
    }
}
