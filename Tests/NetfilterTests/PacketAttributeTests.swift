import CNetfilter
import XCTest

/// cnf_nfq_parse_packet, the reader's attribute walk (instead of nfq_nlmsg_parse): what the kernel
/// sends is taken, anything that would make a reader run past the message or read a short value
/// is refused. Crafted messages; the kernel's own are covered by NetfilterQueueTests.
final class PacketAttributeTests: XCTestCase {
    func attribute(_ type: Int, _ payload: [UInt8]) -> [UInt8] {
        let length = 4 + payload.count
        var bytes = [UInt8(length & 0xff), UInt8(length >> 8), UInt8(type & 0xff), UInt8(type >> 8)] + payload
        while bytes.count % 4 != 0 { bytes.append(0) }
        return bytes
    }

    /// nlmsghdr (host order) + nfgenmsg + `body`; `length` overrides nlmsg_len.
    func message(_ body: [UInt8], length: Int? = nil) -> [UInt8] {
        let total = length ?? 20 + body.count
        func le32(_ v: Int) -> [UInt8] { (0..<4).map { UInt8((v >> (8 * $0)) & 0xff) } }
        return le32(total) + [0x01, 0x03, 0, 0] + le32(1) + le32(0) + [2, 0, 0, 0] + body
    }

    func parse(_ bytes: [UInt8]) -> (Int32, [Int]) {
        var attrs = [UnsafeMutablePointer<nlattr>?](repeating: nil, count: Int(__NFQA_MAX.rawValue))
        var copy = bytes
        return copy.withUnsafeMutableBytes { raw in
            let status = cnf_nfq_parse_packet(raw.baseAddress!.assumingMemoryBound(to: nlmsghdr.self), &attrs, Int32(attrs.count))
            let present = attrs.indices.filter { attrs[$0] != nil }
            if let header = attrs[Int(NFQA_PACKET_HDR.rawValue)] { XCTAssertEqual(cnf_nfq_packet_id(header), 0x0102_0304) }
            if let mark = attrs[Int(NFQA_MARK.rawValue)] { XCTAssertEqual(cnf_attr_get_be32(mark), 0x4d43_0002) }
            return (status, present)
        }
    }

    let header = [0x01, 0x02, 0x03, 0x04, 0x08, 0x00, 0x01] as [UInt8]  // id, ETH_P_IP, hook
    let mark = [0x4d, 0x43, 0x00, 0x02] as [UInt8]

    func testTheKernelsAttributesAreFound() {
        let body = attribute(Int(NFQA_PACKET_HDR.rawValue), header) + attribute(Int(NFQA_MARK.rawValue), mark)
            + attribute(Int(NFQA_PAYLOAD.rawValue), [0x45, 0, 0, 20]) + attribute(200, [1, 2, 3, 4])
        let (status, present) = parse(message(body))
        XCTAssertEqual(status, 0)
        XCTAssertEqual(present, [Int(NFQA_PACKET_HDR.rawValue), Int(NFQA_MARK.rawValue), Int(NFQA_PAYLOAD.rawValue)], "type 200 skipped")
    }

    func testMalformedMessagesAreRefused() {
        let good = attribute(Int(NFQA_PACKET_HDR.rawValue), header)
        XCTAssertEqual(parse(message(good + attribute(Int(NFQA_MARK.rawValue), [1, 2]))).0, -1, "a short u32")
        XCTAssertEqual(parse(message(attribute(Int(NFQA_PACKET_HDR.rawValue), [1, 2, 3]))).0, -1, "a short packet header")
        var beyond = good + attribute(Int(NFQA_PAYLOAD.rawValue), [1, 2, 3, 4])
        beyond[good.count] = 200  // the payload attribute claims 200 octets
        XCTAssertEqual(parse(message(beyond)).0, -1, "an attribute past the message")
        XCTAssertEqual(parse(message(good + [2, 0, 1, 0])).0, -1, "an attribute shorter than its header")
        XCTAssertEqual(parse(message(good, length: 12)).0, -1, "a message shorter than its headers")
        XCTAssertEqual(parse(message(good + [9, 9], length: 20 + good.count + 2)).1, [Int(NFQA_PACKET_HDR.rawValue)], "trailing octets shorter than a header end the walk")
    }
}
