/// TCP header flags (octet 13 of the TCP header).
public struct TCPFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let fin = TCPFlags(rawValue: 0x01)
    public static let syn = TCPFlags(rawValue: 0x02)
    public static let rst = TCPFlags(rawValue: 0x04)
    public static let psh = TCPFlags(rawValue: 0x08)
    public static let ack = TCPFlags(rawValue: 0x10)
    public static let urg = TCPFlags(rawValue: 0x20)
    public static let ece = TCPFlags(rawValue: 0x40)
    public static let cwr = TCPFlags(rawValue: 0x80)
}

/// A validated view of a TCP segment within an IP packet. The initializer checks the fixed header
/// and the data offset once; afterwards no accessor can fail. Options are not validated here
/// (a middlebox must forward segments whose options it does not understand); `TCPOptionWalker`
/// walks them on demand.
public struct TCPSegmentView {
    public let packet: IPPacketView
    public let sourcePort: UInt16
    public let destinationPort: UInt16
    public let sequenceNumber: UInt32
    public let acknowledgmentNumber: UInt32
    /// Header length in bytes (data offset × 4), 20...60.
    public let headerLength: Int
    public let flags: TCPFlags
    public let window: UInt16
    /// The options area within `packet.bytes` (empty when the data offset is 5).
    public let options: Range<Int>
    /// Offset of the payload within `packet.bytes`.
    public let payloadOffset: Int
    public let payloadLength: Int

    public init(_ packet: IPPacketView) throws(CSPWireError) {
        guard packet.proto == .tcp, !packet.isNonInitialFragment else {
            throw CSPWireError(.badTransportHeader, at: packet.transportOffset)
        }
        let start = packet.transportOffset
        let available = packet.totalLength - start
        guard available >= 20 else { throw CSPWireError(.truncated, at: start) }
        let bytes = packet.bytes
        // RFC 9293: the data offset counts 32-bit words and is at least 5.
        let length = Int(bytes[start + 12] >> 4) * 4
        guard length >= 20, length <= available else { throw CSPWireError(.badTransportHeader, at: start + 12) }
        self.packet = packet
        sourcePort = bytes.loadBigEndianUInt16(at: start)
        destinationPort = bytes.loadBigEndianUInt16(at: start + 2)
        sequenceNumber = bytes.loadBigEndianUInt32(at: start + 4)
        acknowledgmentNumber = bytes.loadBigEndianUInt32(at: start + 8)
        headerLength = length
        flags = TCPFlags(rawValue: bytes[start + 13])
        window = bytes.loadBigEndianUInt16(at: start + 14)
        options = start + 20..<start + length
        payloadOffset = start + length
        payloadLength = available - length
    }

    public var optionBytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: packet.bytes[options]) }

    public var payload: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: packet.bytes[payloadOffset..<payloadOffset + payloadLength])
    }

    /// True when the TCP checksum over the pseudo-header, header and payload verifies.
    public var checksumIsValid: Bool {
        let segment = packet.bytes[packet.transportOffset..<packet.totalLength]
        let sum = PacketBuilder.onesComplementSum(
            segment,
            initial: PacketBuilder.pseudoHeaderSum(
                source: packet.source, destination: packet.destination, proto: 6, length: segment.count))
        return PacketBuilder.fold(sum) == 0
    }
}
