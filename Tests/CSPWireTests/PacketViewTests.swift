import CSPWire
import XCTest

func withView<T>(_ bytes: [UInt8], _ body: (IPPacketView) throws -> T) throws -> T {
    try bytes.withUnsafeBytes { raw in try body(try IPPacketView(raw)) }
}

func ipError(_ bytes: [UInt8]) -> CSPWireError? {
    bytes.withUnsafeBytes { raw -> CSPWireError? in
        do {
            _ = try IPPacketView(raw)
            return nil
        } catch { return error as? CSPWireError }
    }
}

final class PacketViewTests: XCTestCase {
    let v4a = IPAddress("192.0.2.1")!, v4b = IPAddress("192.0.2.2")!
    let v6a = IPAddress("2001:db8::1")!, v6b = IPAddress("2001:db8::2")!

    /// An IPv4/UDP packet written out by hand.
    let udp4Fixture: [UInt8] = [
        0x45, 0x00, 0x00, 0x1e,  // 0  version 4, IHL 5; TOS; total length 30
        0x00, 0x00, 0x40, 0x00,  // 4  id 0; DF, fragment offset 0
        0x40, 0x11, 0xb6, 0xcb,  // 8  TTL 64, protocol 17; header checksum
        0xc0, 0x00, 0x02, 0x01,  // 12 source 192.0.2.1
        0xc0, 0x00, 0x02, 0x02,  // 16 destination 192.0.2.2
        0x1c, 0x3b, 0x1c, 0x3b,  // 20 UDP ports 7227 -> 7227
        0x00, 0x0a, 0x00, 0x00,  // 24 UDP length 10; checksum (patched in the test)
        0x68, 0x69,  // 28 payload "hi"
    ]

    func testIPv4UDPFixture() throws {
        let built = PacketBuilder.udpPacket(source: v4a, sourcePort: 7227, destination: v4b, destinationPort: 7227, payload: Array("hi".utf8))
        XCTAssertEqual(Array(built[0..<26]), Array(udp4Fixture[0..<26]))
        try withView(built) { p in
            XCTAssertEqual(p.family, .ipv4)
            XCTAssertEqual(p.proto, .udp)
            XCTAssertEqual(p.transportOffset, 20)
            XCTAssertTrue(p.ipv4Options.isEmpty)
            XCTAssertTrue(p.ipv4HeaderChecksumIsValid)
            XCTAssertEqual(p.flow, FlowTuple(proto: .udp, source: v4a, sourcePort: 7227, destination: v4b, destinationPort: 7227))
            let u = try UDPDatagramView(p)
            XCTAssertEqual(Array(u.payload), Array("hi".utf8))
            XCTAssertTrue(u.checksumIsValid)
        }
    }

    func testImpossibleIPLengths() {
        XCTAssertEqual(ipError([]), CSPWireError(.truncated, at: 0))
        XCTAssertEqual(ipError([0x45] + Array(repeating: 0, count: 10)), CSPWireError(.truncated, at: 11))
        var p = udp4Fixture
        p[0] = 0x44  // IHL 4 < 5
        XCTAssertEqual(ipError(p), CSPWireError(.badIPHeader, at: 0))
        p = udp4Fixture
        p[0] = 0x4f  // IHL 15 = 60 octets > total
        XCTAssertEqual(ipError(p), CSPWireError(.badIPHeader, at: 0))
        p = udp4Fixture
        p[3] = 0x1f  // total length beyond the buffer
        XCTAssertEqual(ipError(p), CSPWireError(.badIPHeader, at: 0))
        p = udp4Fixture
        p[0] = 0x55  // version 5
        XCTAssertEqual(ipError(p), CSPWireError(.badIPHeader, at: 0))
        // A total length shorter than the buffer (Ethernet padding) is fine; the view stops there.
        XCTAssertEqual(try withView(udp4Fixture + [0, 0, 0]) { $0.totalLength }, 30)
        // Every truncation of a valid packet throws, never traps.
        let v6 = PacketBuilder.udpPacket(source: v6a, sourcePort: 1, destination: v6b, destinationPort: 2, payload: [1, 2, 3],
                                         ipv6HopByHop: CSPDiscoveryOption(nonce: 1).ipv6HopByHopHeader())
        for packet in [udp4Fixture, v6] {
            for n in 0..<packet.count { XCTAssertNotNil(ipError(Array(packet.prefix(n))), "prefix \(n)") }
        }
    }

    func testIPv6ExtensionWalk() throws {
        let hbh = CSPDiscoveryOption(nonce: 7).ipv6HopByHopHeader()
        let packet = PacketBuilder.udpPacket(source: v6a, sourcePort: 1000, destination: v6b, destinationPort: 7227, payload: [9], ipv6HopByHop: hbh)
        try withView(packet) { p in
            XCTAssertEqual(p.family, .ipv6)
            XCTAssertEqual(p.proto, .udp)
            XCTAssertEqual(p.transportOffset, 56)
            XCTAssertEqual(p.hopByHopOptions, 42..<56)
            XCTAssertEqual(try UDPDatagramView(p).destinationPort, 7227)
            XCTAssertTrue(try UDPDatagramView(p).checksumIsValid)
        }
        // Hop-by-hop length running past the payload.
        var bad = packet
        bad[41] = 5
        XCTAssertEqual(ipError(bad), CSPWireError(.badIPHeader, at: 40))
        // Payload length beyond the buffer.
        bad = packet
        bad[5] = 0xff
        XCTAssertEqual(ipError(bad), CSPWireError(.badIPHeader, at: 4))
        // Hop-by-hop after a destination-options header is illegal (RFC 8200 4.1).
        var twice: [UInt8] = Array(packet[0..<40]) + [0, 0, 1, 4, 0, 0, 0, 0] + [17, 0, 1, 4, 0, 0, 0, 0] + Array(packet[56...])
        twice[6] = 60
        twice[5] = UInt8(twice.count - 40)
        XCTAssertEqual(ipError(twice), CSPWireError(.badIPHeader, at: 48))
    }

    func testIPv6NonInitialFragmentStopsTheWalk() throws {
        // Fragment header (offset 8, next header "destination options") followed by data that is
        // not a header: the walk must stop at the fragment header.
        var p: [UInt8] = [0x60, 0, 0, 0, 0, 16, 44, 64] + v6a.bytes + v6b.bytes
        p += [60, 0, 0x00, 0x40, 0, 0, 0, 1]  // next 60, offset 8 (x8 octets), id 1
        p += [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        try withView(p) { v in
            XCTAssertTrue(v.isNonInitialFragment)
            XCTAssertEqual(v.proto.rawValue, 60)
            XCTAssertNil(v.ports)
            XCTAssertThrowsError(try UDPDatagramView(v))
        }
    }

    func testUDPViewImpossibleLengths() throws {
        func udpError(_ bytes: [UInt8]) -> CSPWireError? {
            bytes.withUnsafeBytes { raw -> CSPWireError? in
                do {
                    _ = try UDPDatagramView(try IPPacketView(raw))
                    return nil
                } catch { return error as? CSPWireError }
            }
        }
        var p = udp4Fixture
        p[25] = 7  // UDP length < 8
        XCTAssertEqual(udpError(p), CSPWireError(.badTransportHeader, at: 24))
        p[25] = 11  // UDP length > IP payload
        XCTAssertEqual(udpError(p), CSPWireError(.badTransportHeader, at: 24))
        p = Array(udp4Fixture[0..<26])
        p[3] = 26  // only 6 octets of UDP header
        p[10] = 0; p[11] = 0
        XCTAssertEqual(udpError(p), CSPWireError(.truncated, at: 20))
        p = udp4Fixture
        p[9] = 6
        XCTAssertEqual(udpError(p), CSPWireError(.badTransportHeader, at: 20))
    }

    func testTCPSegmentView() throws {
        let options: [UInt8] = [2, 4, 0x05, 0xb4] + CSPDiscoveryOption(nonce: 1).tcpOption  // MSS 1460 + discovery
        for (src, dst) in [(v4a, v4b), (v6a, v6b)] {
            let packet = PacketBuilder.tcpPacket(source: src, sourcePort: 40000, destination: dst, destinationPort: 443,
                sequenceNumber: 0x0102_0304, acknowledgmentNumber: 0, flags: [.syn, .ece, .cwr], options: options, payload: [0xaa, 0xbb])
            try withView(packet) { p in
                let t = try TCPSegmentView(p)
                XCTAssertEqual(t.sourcePort, 40000)
                XCTAssertEqual(t.destinationPort, 443)
                XCTAssertEqual(t.sequenceNumber, 0x0102_0304)
                XCTAssertEqual(t.flags, [.syn, .ece, .cwr])
                XCTAssertEqual(t.headerLength, 40)
                XCTAssertEqual(Array(t.optionBytes), options)
                XCTAssertEqual(Array(t.payload), [0xaa, 0xbb])
                XCTAssertEqual(t.window, 65535)
                XCTAssertTrue(t.checksumIsValid)
            }
            // Flip one payload bit: the checksum must fail.
            var corrupt = packet
            corrupt[corrupt.count - 1] ^= 1
            try withView(corrupt) { XCTAssertFalse(try TCPSegmentView($0).checksumIsValid) }
        }
    }

    func testTCPImpossibleLengths() throws {
        func tcpError(_ bytes: [UInt8]) -> CSPWireError? {
            bytes.withUnsafeBytes { raw -> CSPWireError? in
                do {
                    _ = try TCPSegmentView(try IPPacketView(raw))
                    return nil
                } catch { return error as? CSPWireError }
            }
        }
        let packet = PacketBuilder.tcpPacket(source: v4a, sourcePort: 1, destination: v4b, destinationPort: 2)
        var p = packet
        p[32] = 0x40  // data offset 4
        XCTAssertEqual(tcpError(p), CSPWireError(.badTransportHeader, at: 32))
        p[32] = 0x60  // data offset 6 = 24 octets > 20 available
        XCTAssertEqual(tcpError(p), CSPWireError(.badTransportHeader, at: 32))
        p = Array(packet[0..<39])
        p[3] = 39
        XCTAssertEqual(tcpError(p), CSPWireError(.truncated, at: 20))
        let udp = PacketBuilder.udpPacket(source: v4a, sourcePort: 1, destination: v4b, destinationPort: 2, payload: [])
        XCTAssertEqual(tcpError(udp), CSPWireError(.badTransportHeader, at: 20))
    }

    func testChecksumEdges() throws {
        // Odd length: the last octet is padded with a zero octet.
        XCTAssertEqual(PacketBuilder.onesComplementSum([0x01, 0x02, 0x03]), 0x0102 + 0x0300)
        XCTAssertEqual(PacketBuilder.fold(0x0001_fffe), 0x0000)  // 0xfffe + 1 = 0xffff, inverted
        XCTAssertEqual(PacketBuilder.fold(0), 0xffff)
        // A UDP datagram whose computed checksum is 0 must carry 0xffff (RFC 768).
        var packet = PacketBuilder.udpPacket(source: v4a, sourcePort: 1, destination: v4b, destinationPort: 2, payload: [0, 0])
        let checksum = UInt16(packet[26]) << 8 | UInt16(packet[27])
        // Writing the checksum into the last payload word makes the full sum 0xffff, i.e. checksum 0.
        packet[28] = UInt8(checksum >> 8)
        packet[29] = UInt8(checksum & 0xff)
        packet[26] = 0
        packet[27] = 0
        let computed = PacketBuilder.udpChecksum(source: v4a, destination: v4b, udp: packet[20...])
        XCTAssertEqual(computed, 0xffff)
        packet[26] = 0xff
        packet[27] = 0xff
        try withView(packet) { XCTAssertTrue(try UDPDatagramView($0).checksumIsValid) }
        // Odd-length payload.
        let odd = PacketBuilder.udpPacket(source: v6a, sourcePort: 1, destination: v6b, destinationPort: 2, payload: [1, 2, 3])
        try withView(odd) { XCTAssertTrue(try UDPDatagramView($0).checksumIsValid) }
        // Checksum 0 means "none" over IPv4 but is invalid over IPv6.
        var none4 = PacketBuilder.udpPacket(source: v4a, sourcePort: 1, destination: v4b, destinationPort: 2, payload: [1])
        none4[26] = 0; none4[27] = 0
        try withView(none4) { XCTAssertTrue(try UDPDatagramView($0).checksumIsValid) }
        var none6 = odd
        none6[46] = 0; none6[47] = 0
        try withView(none6) { XCTAssertFalse(try UDPDatagramView($0).checksumIsValid) }
    }

    func testReplacingUDPPayloadKeepsOptionsAndVerifies() throws {
        let option = CSPDiscoveryOption(nonce: 0x1234)
        let message = try TestVectors.messages[0].2.serialize()
        let longer = try TestVectors.messages[1].2.serialize()
        let packets = [
            PacketBuilder.udpPacket(source: v4a, sourcePort: 40000, destination: v4b, destinationPort: 7227, payload: message, ipv4Options: option.ipv4OptionsField),
            PacketBuilder.udpPacket(source: v6a, sourcePort: 40000, destination: v6b, destinationPort: 7227, payload: message, ipv6HopByHop: option.ipv6HopByHopHeader()),
        ]
        for packet in packets {
            let rewritten = try withView(packet) { p in try PacketBuilder.replacingUDPPayload(of: try UDPDatagramView(p), with: longer) }
            try withView(rewritten) { p in
                XCTAssertTrue(p.ipv4HeaderChecksumIsValid)
                XCTAssertEqual(p.totalLength, rewritten.count)
                let u = try UDPDatagramView(p)
                XCTAssertTrue(u.checksumIsValid)
                XCTAssertEqual(Array(u.payload), longer)
                XCTAssertEqual(try CSPDiscoveryOption.find(in: p)?.option, option)
                XCTAssertEqual(try CSPMessage.parse(u.payload), TestVectors.messages[1].2)
            }
        }
    }

    func testBuilderPadsIPv4Options() throws {
        let packet = PacketBuilder.udpPacket(source: v4a, sourcePort: 1, destination: v4b, destinationPort: 2, payload: [], ipv4Options: [1, 1, 1])
        try withView(packet) { p in
            XCTAssertEqual(p.ipv4Options, 20..<24)
            XCTAssertTrue(p.ipv4HeaderChecksumIsValid)
        }
    }
}

final class EndpointParsingTests: XCTestCase {
    func testParsesWhatDescriptionPrints() {
        for text in ["10.0.0.1:80", "[2001:db8::1]:443", "[::]:0", "255.255.255.255:65535"] {
            XCTAssertEqual(CSPEndpoint(parsing: text)?.description, text)
        }
        for bad in ["10.0.0.1", "10.0.0.1:", "10.0.0.1:65536", "[2001:db8::1]", "2001:db8::1:80x", "[::1:80", "host:80", ""] {
            XCTAssertNil(CSPEndpoint(parsing: bad), bad)
        }
    }
}
