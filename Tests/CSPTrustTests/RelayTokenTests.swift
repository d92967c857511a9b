import CSPTrust
import CSPWire
import XCTest

final class RelayTokenTests: XCTestCase {
    private let key = RelayTokenKey(bytes: [UInt8](0xa0..<0xc0))!
    private let upstream = SigningKey(seed: [UInt8](repeating: 1, count: 32))!.publicKey
    private let now: UInt64 = 1_700_000_000

    private var binding: RelayToken.Binding {
        RelayToken.Binding(
            sessionID: 0x0123_4567_89ab_cdef, hopIndex: 1, upstreamKey: upstream, targetProtocol: 6,
            target: CSPEndpoint(parsing: "198.51.100.7:443")!, relayEndpoint: CSPEndpoint(parsing: "[2001:db8::1]:7228")!)
    }

    /// The token the independent Python implementation computed for the same inputs.
    func testMatchesTheIndependentImplementation() throws {
        let vector = try object(try VectorFile("noise-xx-crosscheck.json").root["relay_token"])
        let key = try XCTUnwrap(RelayTokenKey(bytes: try octets(vector["key"])))
        let binding = RelayToken.Binding(
            sessionID: try integer(vector["session_id"]), hopIndex: UInt8(try integer(vector["hop_index"])),
            upstreamKey: try XCTUnwrap(PublicKey(bytes: try octets(vector["upstream_key"]))),
            targetProtocol: UInt8(try integer(vector["target_protocol"])),
            target: try XCTUnwrap(CSPEndpoint(parsing: try XCTUnwrap(vector["target"] as? String))),
            relayEndpoint: try XCTUnwrap(CSPEndpoint(parsing: try XCTUnwrap(vector["relay_endpoint"] as? String))))
        XCTAssertEqual(binding, self.binding)
        let token = key.mint(
            for: binding, modes: UInt8(try integer(vector["modes"])), expiry: UInt32(try integer(vector["expiry"])))
        XCTAssertEqual(token.bytes, try octets(vector["token"]))
    }

    func testLayout() throws {
        let token = key.mint(for: binding, modes: 0x03, expiry: 0x6553_f13c)
        let bytes = token.bytes
        XCTAssertEqual(bytes.count, 24)
        XCTAssertEqual(
            Array(bytes[0..<8]),
            [
                0x01,  // version
                0x01,  // hopIndex
                0x03,  // modes: clear | sealed
                0x00,  // reserved
                0x65, 0x53, 0xf1, 0x3c,  // expiry
            ])
        XCTAssertEqual(Array(bytes[8...]), token.mac)
        XCTAssertEqual(try RelayToken(bytes: bytes), token)
    }

    func testAValidTokenChecks() throws {
        let token = key.mint(for: binding, modes: 0x02, expiry: UInt32(now + 60))
        let checked = try key.check(token.bytes, for: binding, now: now)
        XCTAssertEqual(checked.modes, 0x02)
        XCTAssertEqual(checked.hopIndex, 1)
        XCTAssertEqual(try key.check(token.bytes, for: binding, now: now + 60).expiry, UInt32(now + 60), "valid until its expiry")
    }

    func testExpired() {
        let token = key.mint(for: binding, modes: 0x01, expiry: UInt32(now + 60))
        XCTAssertThrowsError(try key.check(token.bytes, for: binding, now: now + 61)) {
            XCTAssertEqual($0 as? RelayToken.Rejection, .expired(expiry: UInt32(now + 60), now: now + 61))
        }
    }

    func testBoundToEverythingItNames() {
        let token = key.mint(for: binding, modes: 0x01, expiry: UInt32(now + 60)).bytes
        var others: [(String, RelayToken.Binding)] = []
        var b = binding
        b.sessionID ^= 1
        others.append(("other session", b))
        b = binding
        b.hopIndex = 2
        others.append(("other hop", b))
        b = binding
        b.upstreamKey = SigningKey().publicKey
        others.append(("other upstream key", b))
        b = binding
        b.target = CSPEndpoint(parsing: "198.51.100.8:443")!
        others.append(("other target address", b))
        b = binding
        b.target = CSPEndpoint(parsing: "198.51.100.7:444")!
        others.append(("other target port", b))
        b = binding
        b.targetProtocol = 17
        others.append(("other target protocol", b))
        b = binding
        b.relayEndpoint = CSPEndpoint(parsing: "192.0.2.1:7228")!
        others.append(("other relay endpoint", b))
        for (what, other) in others {
            XCTAssertThrowsError(try key.check(token, for: other, now: now), what) {
                XCTAssertEqual($0 as? RelayToken.Rejection, .badMAC, what)
            }
        }
        XCTAssertThrowsError(try RelayTokenKey.random().check(token, for: binding, now: now), "other token key") {
            XCTAssertEqual($0 as? RelayToken.Rejection, .badMAC)
        }
    }

    func testEveryFlippedBitFails() {
        let token = key.mint(for: binding, modes: 0x01, expiry: UInt32(now + 60)).bytes
        for index in token.indices {
            for bit in 0..<8 {
                var altered = token
                altered[index] ^= UInt8(1) << UInt8(bit)
                XCTAssertThrowsError(try key.check(altered, for: binding, now: now), "octet \(index) bit \(bit)")
            }
        }
    }

    func testMalformed() {
        let token = key.mint(for: binding, modes: 0x01, expiry: UInt32(now + 60)).bytes
        XCTAssertThrowsError(try key.check(Array(token.dropLast()), for: binding, now: now)) {
            XCTAssertEqual($0 as? RelayToken.Rejection, .malformed("23 octets, expected 24"))
        }
        XCTAssertThrowsError(try key.check(token + [0], for: binding, now: now)) {
            XCTAssertEqual($0 as? RelayToken.Rejection, .malformed("25 octets, expected 24"))
        }
        var version2 = token
        version2[0] = 2
        XCTAssertThrowsError(try key.check(version2, for: binding, now: now)) {
            XCTAssertEqual($0 as? RelayToken.Rejection, .unsupportedVersion(2))
        }
        var reserved = token
        reserved[3] = 0x40
        XCTAssertThrowsError(try key.check(reserved, for: binding, now: now)) {
            XCTAssertEqual($0 as? RelayToken.Rejection, .malformed("reserved octet is 64, not 0"))
        }
        XCTAssertNil(RelayTokenKey(bytes: [1, 2, 3]))
    }
}
