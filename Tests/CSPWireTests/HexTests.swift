import CSPWire
import XCTest

final class HexTests: XCTestCase {
    func testSixteenLowerCaseDigitsZeroPadded() {
        XCTAssertEqual(hex(0), "0000000000000000")
        XCTAssertEqual(hex(0xad0b_7ed1_d000_0001), "ad0b7ed1d0000001")
        XCTAssertEqual(hex(.max), "ffffffffffffffff")
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<1000 {
            let value = UInt64.random(in: 0...(.max), using: &generator) >> UInt64.random(in: 0...63, using: &generator)
            let reference = String(value, radix: 16)
            XCTAssertEqual(hex(value), String(repeating: "0", count: 16 - reference.count) + reference)
        }
    }

    /// Every digit value in every position, written at an unaligned offset between other bytes
    /// that must stay as they were.
    func testWriteHexPutsEachDigitInItsPlaceAndNothingElse() {
        let digits = Array("0123456789abcdef".utf8)
        var buffer = [UInt8](repeating: 0xee, count: 21)
        for position in 0..<16 {
            for digit in 0..<16 {
                let value = UInt64(digit) << UInt64(4 * (15 - position))
                buffer.withUnsafeMutableBufferPointer { writeHex(value, into: $0, at: 3) }
                var expected = [UInt8](repeating: 0x30, count: 16)
                expected[position] = digits[digit]
                XCTAssertEqual(Array(buffer[3..<19]), expected, "digit \(digit) at \(position)")
                XCTAssertEqual(buffer[0..<3] + buffer[19...], [0xee, 0xee, 0xee, 0xee, 0xee])
            }
        }
    }
}
