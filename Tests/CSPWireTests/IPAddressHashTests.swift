import CSPWire
import XCTest

/// `IPAddress.hash(into:)` is hand-written (one word for IPv4, two for IPv6): equal addresses must
/// hash alike however they were made, and the words of an IPv4 address must not coincide with an
/// IPv6 address whose low word carries the same bits.
final class IPAddressHashTests: XCTestCase {
    func testEqualAddressesHashAlikeWhateverMadeThem() throws {
        let fromValue = IPAddress(ipv4: 0xC000_0201)
        let fromBytes = try XCTUnwrap(IPAddress(bytes: [192, 0, 2, 1]))
        XCTAssertEqual(fromValue, fromBytes)
        XCTAssertEqual(fromValue.hashValue, fromBytes.hashValue)

        let v6Value = IPAddress(ipv6: 0x2001_0db8_0000_0000, 0x0000_0000_0000_0001)
        let v6Bytes = try XCTUnwrap(IPAddress(bytes: [0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 11) + [1]))
        XCTAssertEqual(v6Value, v6Bytes)
        XCTAssertEqual(v6Value.hashValue, v6Bytes.hashValue)
    }

    /// The IPv4 word is the address with bit 32 set; an IPv6 address with that very value as its
    /// low word, or the bare IPv4 value, feeds two words. All three are distinct keys.
    func testIPv4AndIPv6WithTheSameLowBitsAreDistinctKeys() {
        let value: UInt32 = 0x0A00_0001
        let v4 = IPAddress(ipv4: value)
        let lookalikes = [IPAddress(ipv6: 0, UInt64(value) | 1 << 32), IPAddress(ipv6: 0, UInt64(value)),
                          IPAddress(ipv6: 0, 0xffff_0000_0000 | UInt64(value))]  // ::ffff:10.0.0.1, IPv4-mapped
        for other in lookalikes {
            XCTAssertNotEqual(v4, other)
            XCTAssertNotEqual(v4.hashValue, other.hashValue, "\(v4) and \(other) hash alike")
        }
        XCTAssertEqual(Set([v4] + lookalikes).count, 4)
    }

    /// Every IPv4 address of a /16 as a set key: the one-word hash spreads them (no two of the
    /// 65 536 collide in the full hash value, which a per-field mistake such as hashing only the
    /// family would make all alike).
    func testIPv4AddressesOfAPrefixSpreadOverTheHash() {
        var hashes = Set<Int>()
        for host in 0 ..< 65_536 { hashes.insert(IPAddress(ipv4: 0x0A0A_0000 | UInt32(host)).hashValue) }
        XCTAssertGreaterThan(hashes.count, 65_530, "distinct addresses hashed alike")
    }
}
