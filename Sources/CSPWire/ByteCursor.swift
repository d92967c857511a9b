/// Bounds-checked big-endian reads over a borrowed byte buffer.
///
/// Every read either succeeds or returns `nil` without moving the cursor, so a decoder can report
/// "truncated" at the exact field it was reading.
@usableFromInline
struct ByteCursor {
    @usableFromInline let bytes: UnsafeRawBufferPointer
    @usableFromInline private(set) var offset: Int

    @inlinable init(_ bytes: UnsafeRawBufferPointer, offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    @inlinable var remaining: Int { bytes.count - offset }

    @inlinable mutating func readUInt8() -> UInt8? {
        guard remaining >= 1 else { return nil }
        defer { offset += 1 }
        return bytes[offset]
    }

    @inlinable mutating func readUInt16() -> UInt16? {
        guard remaining >= 2 else { return nil }
        defer { offset += 2 }
        return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    @inlinable mutating func readUInt32() -> UInt32? {
        guard remaining >= 4 else { return nil }
        defer { offset += 4 }
        return bytes.loadBigEndianUInt32(at: offset)
    }

    @inlinable mutating func readUInt64() -> UInt64? {
        guard remaining >= 8 else { return nil }
        let high = UInt64(bytes.loadBigEndianUInt32(at: offset))
        let low = UInt64(bytes.loadBigEndianUInt32(at: offset + 4))
        offset += 8
        return high << 32 | low
    }

    @inlinable mutating func readBytes(_ count: Int) -> UnsafeRawBufferPointer? {
        guard count >= 0, remaining >= count else { return nil }
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count])
    }
}

/// Big-endian loads at an offset the caller has checked (as the buffer's subscript, they check
/// bounds in debug builds only). One unaligned load and a byte swap: assembled from single octets
/// the 32-bit load was ~17 instructions and was not inlined into the IP view's getters
/// (docs/PERFORMANCE.md, "Twelfth pass").
extension UnsafeRawBufferPointer {
    @inlinable @inline(__always) func loadBigEndianUInt16(at offset: Int) -> UInt16 {
        assert(offset >= 0 && offset + 2 <= count, "big-endian load beyond the buffer")
        return UInt16(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    @inlinable @inline(__always) func loadBigEndianUInt32(at offset: Int) -> UInt32 {
        assert(offset >= 0 && offset + 4 <= count, "big-endian load beyond the buffer")
        return UInt32(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }
}

/// Big-endian appends used by every `emit`.
extension Array where Element == UInt8 {
    @inlinable mutating func appendBigEndian(_ value: UInt16) {
        append(UInt8(value >> 8))
        append(UInt8(truncatingIfNeeded: value))
    }

    @inlinable mutating func appendBigEndian(_ value: UInt32) {
        append(UInt8(value >> 24))
        append(UInt8(truncatingIfNeeded: value >> 16))
        append(UInt8(truncatingIfNeeded: value >> 8))
        append(UInt8(truncatingIfNeeded: value))
    }

    @inlinable mutating func appendBigEndian(_ value: UInt64) {
        appendBigEndian(UInt32(value >> 32))
        appendBigEndian(UInt32(truncatingIfNeeded: value))
    }

    @inlinable mutating func writeBigEndian(_ value: UInt16, at offset: Int) {
        self[offset] = UInt8(value >> 8)
        self[offset + 1] = UInt8(truncatingIfNeeded: value)
    }
}
