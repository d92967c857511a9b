import XCTest

@testable import Netfilter

/// `InlineOctets`, the fixed 64-octet storage behind set keys and element comments: what it holds
/// after each kind of append, and the invariant `==` and `hash` rely on (octets past `count` are
/// zero, whatever path built the value). The overflow precondition is not exercised: it traps.
final class InlineOctetsTests: XCTestCase {
    private func octets(_ bytes: [UInt8]) -> InlineOctets {
        var value = InlineOctets()
        bytes.withUnsafeBytes { value.append($0) }
        return value
    }

    func testAppendsKeepTheirOrderAndCount() {
        var value = InlineOctets()
        XCTAssertEqual(value.count, 0)
        XCTAssertEqual(value.array, [])
        ([1, 2, 3] as [UInt8]).withUnsafeBytes { value.append($0) }
        value.appendZeros(2)
        ([0xff] as [UInt8]).withUnsafeBytes { value.append($0) }
        XCTAssertEqual(value.count, 6)
        XCTAssertEqual(value.array, [1, 2, 3, 0, 0, 0xff])
        value.withUnsafeBytes { XCTAssertEqual($0.count, 6) }
    }

    func testAnEmptyAppendChangesNothing() {
        var value = octets([7])
        value.append(UnsafeRawBufferPointer(start: nil, count: 0))
        value.appendZeros(0)
        XCTAssertEqual(value, octets([7]))
    }

    func testFillsExactlyToCapacity() {
        let full = (0..<InlineOctets.capacity).map { UInt8($0 + 1) }
        let value = octets(full)
        XCTAssertEqual(value.count, 64)
        XCTAssertEqual(value.array, full)
        var split = octets(Array(full[..<33]))
        Array(full[33...]).withUnsafeBytes { split.append($0) }
        XCTAssertEqual(split, value)
    }

    func testValuesBuiltDifferentlyAreEqualAndHashEqual() {
        var zeros = octets([9])
        zeros.appendZeros(3)
        let literal = octets([9, 0, 0, 0])
        XCTAssertEqual(zeros, literal)
        XCTAssertEqual(zeros.hashValue, literal.hashValue)
        XCTAssertEqual(Set([zeros, literal]).count, 1)
    }

    func testEqualityDistinguishesLengthAndContent() {
        XCTAssertNotEqual(octets([1, 2]), octets([1, 2, 0]))
        XCTAssertNotEqual(octets([1, 2]), octets([1, 3]))
        XCTAssertNotEqual(octets([]), octets([0]))
        // A difference in the last word of storage counts too.
        var last = Array(repeating: UInt8(0), count: 64)
        last[63] = 1
        XCTAssertNotEqual(octets(last), octets(Array(repeating: 0, count: 64)))
    }

    func testAppendInPlaceKeepsWhatTheWriterReports() {
        var value = octets([0xaa])
        value.append(upTo: 10) { window in
            XCTAssertEqual(window.count, 10)
            window[0] = 1
            window[1] = 2
            return 2
        }
        XCTAssertEqual(value.array, [0xaa, 1, 2])
    }

    /// A writer that scribbles past what it reports (a longer candidate it then trims) must not
    /// leave octets behind `count`: the value would then differ from an equal one built cleanly.
    func testAppendInPlaceClearsWhatTheWriterLeftBeyondItsCount() {
        var scribbled = octets([5])
        scribbled.append(upTo: 20) { window in
            for index in window.indices { window[index] = 0xee }
            return 3
        }
        XCTAssertEqual(scribbled.array, [5, 0xee, 0xee, 0xee])
        let clean = octets([5, 0xee, 0xee, 0xee])
        XCTAssertEqual(scribbled, clean)
        XCTAssertEqual(scribbled.hashValue, clean.hashValue)
        // And a later append lands on zeros, not on the scribble.
        scribbled.appendZeros(2)
        XCTAssertEqual(scribbled.array, [5, 0xee, 0xee, 0xee, 0, 0])
    }

    func testAppendInPlaceMayWriteNothingOrEverything() {
        var value = InlineOctets()
        value.append(upTo: 64) { _ in 0 }
        XCTAssertEqual(value, InlineOctets())
        value.append(upTo: 64) { window in
            for index in window.indices { window[index] = 0x11 }
            return window.count
        }
        XCTAssertEqual(value.array, Array(repeating: 0x11, count: 64))
    }

    /// Set keys pad concatenated fields to 4-octet registers through `appendZeros`.
    func testSetKeyPaddingIsInlineZeros() {
        var key = NFTSetKey()
        key.append(ipv4: 0x0a00_0001)
        key.append(proto: 6)
        key.append(port: 443)
        XCTAssertEqual(key.bytes, [10, 0, 0, 1, 6, 0, 0, 0, 0x01, 0xbb, 0, 0])
        XCTAssertEqual(key.octets, octets([10, 0, 0, 1, 6, 0, 0, 0, 0x01, 0xbb, 0, 0]))
    }
}
