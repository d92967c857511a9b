import CSPWire
import XCTest

final class DiscoveryOptionTests: XCTestCase {
    let option = CSPDiscoveryOption(flags: [.query, .capable], replyPort: 40001, nonce: 0xdead_beef_0bad_cafe)
    let v4a = IPAddress("192.0.2.1")!, v4b = IPAddress("192.0.2.2")!
    let v6a = IPAddress("2001:db8::1")!, v6b = IPAddress("2001:db8::2")!

    func testEncodingsFieldByField() {
        let body: [UInt8] = [
            0x03,  // flags: query | capable
            0x00,  // reserved
            0x9c, 0x41,  // reply port 40001
            0xde, 0xad, 0xbe, 0xef, 0x0b, 0xad, 0xca, 0xfe,  // nonce
        ]
        XCTAssertEqual(option.ipv4Option, [0x9e, 14] + body)  // copied, class 0, number 30; length 14
        XCTAssertEqual(option.ipv4OptionsField, [0x9e, 14] + body + [0, 0])  // two EOL to a 4-octet multiple
        XCTAssertEqual(option.ipv6Option, [0x1e, 12] + body)  // act 00, chg 0, type 30; data length 12
        XCTAssertEqual(option.ipv6HopByHopHeader(nextHeader: 6), [6, 1, 0x1e, 12] + body)  // 16 octets, no padding
        XCTAssertEqual(option.tcpOption, [253, 16, 0x43, 0x53] + body)  // kind 253, length 16, ExID "CS"
        XCTAssertEqual(option.effectiveReplyPort, 40001)
        XCTAssertEqual(CSPDiscoveryOption(nonce: 1).effectiveReplyPort, 7227)
    }

    func testFindInAllThreeContainers() throws {
        let mss: [UInt8] = [2, 4, 0x05, 0xb4]
        let cases: [([UInt8], CSPDiscoveryOption.Encoding)] = [
            (PacketBuilder.udpPacket(source: v4a, sourcePort: 1, destination: v4b, destinationPort: 2, payload: [], ipv4Options: option.ipv4OptionsField), .ipv4Option),
            // After a NOP and a router-alert option: not first, still found by the parser.
            (PacketBuilder.udpPacket(source: v4a, sourcePort: 1, destination: v4b, destinationPort: 2, payload: [], ipv4Options: [1, 0x94, 4, 0, 0] + option.ipv4Option), .ipv4Option),
            (PacketBuilder.udpPacket(source: v6a, sourcePort: 1, destination: v6b, destinationPort: 2, payload: [], ipv6HopByHop: option.ipv6HopByHopHeader()), .ipv6HopByHop),
            // Behind Pad1 and a router-alert option in a 24-octet hop-by-hop header.
            (PacketBuilder.udpPacket(source: v6a, sourcePort: 1, destination: v6b, destinationPort: 2, payload: [],
                ipv6HopByHop: [0, 2, 0, 5, 2, 0, 0, 0] + option.ipv6Option + [1, 0]), .ipv6HopByHop),
            (PacketBuilder.tcpPacket(source: v4a, sourcePort: 1, destination: v4b, destinationPort: 2, options: mss + option.tcpOption), .tcpOption),
            // Another experiment's kind-253 option comes first and is skipped.
            (PacketBuilder.tcpPacket(source: v6a, sourcePort: 1, destination: v6b, destinationPort: 2, options: [253, 4, 0x12, 0x34, 1, 1] + option.tcpOption), .tcpOption),
        ]
        for (index, (packet, encoding)) in cases.enumerated() {
            try withView(packet) { p in
                let found = try CSPDiscoveryOption.find(in: p)
                XCTAssertEqual(found?.option, option, "case \(index)")
                XCTAssertEqual(found?.encoding, encoding, "case \(index)")
            }
        }
    }

    func testAbsentAndForeign() throws {
        let plain = PacketBuilder.tcpPacket(source: v4a, sourcePort: 1, destination: v4b, destinationPort: 2, options: [2, 4, 5, 0xb4, 1, 1, 1, 0])
        try withView(plain) { XCTAssertNil(try CSPDiscoveryOption.find(in: $0)) }
        // EOL ends the list: an option after it is not an option.
        let afterEOL = PacketBuilder.udpPacket(source: v4a, sourcePort: 1, destination: v4b, destinationPort: 2, payload: [], ipv4Options: [0, 0] + option.ipv4Option)
        try withView(afterEOL) { XCTAssertNil(try CSPDiscoveryOption.find(in: $0)) }
        // Kind 253 with a different ExID only.
        let foreign = PacketBuilder.tcpPacket(source: v4a, sourcePort: 1, destination: v4b, destinationPort: 2, options: [253, 4, 0xf9, 0x89])
        try withView(foreign) { XCTAssertNil(try CSPDiscoveryOption.find(in: $0)) }
    }

    func testMalformedLists() throws {
        // IPv4: an option whose length runs past the options area.
        let overrun = PacketBuilder.udpPacket(source: v4a, sourcePort: 1, destination: v4b, destinationPort: 2, payload: [], ipv4Options: [1, 0x9e, 40, 0])
        try withView(overrun) { p in
            XCTAssertThrowsError(try CSPDiscoveryOption.find(in: p)) { XCTAssertEqual($0 as? CSPWireError, CSPWireError(.badIPHeader, at: 21)) }
        }
        // IPv4: our type but a 4-octet option.
        let short = PacketBuilder.udpPacket(source: v4a, sourcePort: 1, destination: v4b, destinationPort: 2, payload: [], ipv4Options: [0x9e, 4, 0, 0])
        try withView(short) { p in
            XCTAssertThrowsError(try CSPDiscoveryOption.find(in: p)) { XCTAssertEqual($0 as? CSPWireError, CSPWireError(.badDiscoveryOption, at: 20)) }
        }
        // IPv4: length octet 1 (less than the minimum 2).
        let tiny = PacketBuilder.udpPacket(source: v4a, sourcePort: 1, destination: v4b, destinationPort: 2, payload: [], ipv4Options: [0x44, 1, 0, 0])
        try withView(tiny) { p in
            XCTAssertThrowsError(try CSPDiscoveryOption.find(in: p)) { XCTAssertEqual($0 as? CSPWireError, CSPWireError(.badIPHeader, at: 20)) }
        }
        // IPv6: option data length beyond the header.
        let hbh: [UInt8] = [0, 0, 0x1e, 12, 0, 0, 0, 0]
        let bad6 = PacketBuilder.udpPacket(source: v6a, sourcePort: 1, destination: v6b, destinationPort: 2, payload: [], ipv6HopByHop: hbh)
        try withView(bad6) { p in
            XCTAssertThrowsError(try CSPDiscoveryOption.find(in: p)) { XCTAssertEqual($0 as? CSPWireError, CSPWireError(.badIPHeader, at: 42)) }
        }
        // TCP: ours, but cut to 8 octets.
        let cut = PacketBuilder.tcpPacket(source: v4a, sourcePort: 1, destination: v4b, destinationPort: 2, options: [253, 8, 0x43, 0x53, 3, 0, 0, 0])
        try withView(cut) { p in
            XCTAssertThrowsError(try CSPDiscoveryOption.find(in: p)) { XCTAssertEqual($0 as? CSPWireError, CSPWireError(.badDiscoveryOption, at: 40)) }
        }
        // TCP: option length runs past the header.
        let runs = PacketBuilder.tcpPacket(source: v4a, sourcePort: 1, destination: v4b, destinationPort: 2, options: [253, 30, 0x43, 0x53])
        try withView(runs) { p in
            XCTAssertThrowsError(try CSPDiscoveryOption.find(in: p)) { XCTAssertEqual($0 as? CSPWireError, CSPWireError(.badTransportHeader, at: 40)) }
        }
    }

    func testLongerBodyIsAcceptedAndReservedIgnored() throws {
        var body = [UInt8](repeating: 0, count: 12)
        option.appendBody(to: &body)
        body.removeFirst(12)
        body[1] = 0x55  // reserved octet set
        body += [9, 9, 9, 9]  // a later revision's extension
        let ipv4 = [0x9e, UInt8(2 + body.count)] + body
        let packet = PacketBuilder.udpPacket(source: v4a, sourcePort: 1, destination: v4b, destinationPort: 2, payload: [], ipv4Options: ipv4)
        try withView(packet) { XCTAssertEqual(try CSPDiscoveryOption.find(inIPv4Options: $0), option) }
    }

    func testEveryTruncatedBodyThrows() {
        let body = Array(option.ipv4Option.dropFirst(2))
        for n in 0..<body.count {
            let error = Array(body.prefix(n)).withUnsafeBytes { raw -> CSPWireError? in
                do {
                    _ = try CSPDiscoveryOption(body: raw, at: 0)
                    return nil
                } catch { return error as? CSPWireError }
            }
            XCTAssertEqual(error, CSPWireError(.badDiscoveryOption, at: 0))
        }
    }
}
