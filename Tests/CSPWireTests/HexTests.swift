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
}
