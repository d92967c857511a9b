import CSPWire
import XCTest

final class SignatureInputTests: XCTestCase {
    func testEndToEndInputSurvivesAppendedRecords() throws {
        var unsigned = TestVectors.messages[0].2
        guard case .signature(let signature) = unsigned.tlvs.removeLast() else { return XCTFail("no SIGNATURE last") }
        unsigned.flags.remove(.signed)
        let input = try CSPSignatureInput.endToEnd(signing: unsigned)
        XCTAssertEqual(Array(input.prefix(9)), Array("CSP1 e2e".utf8) + [0])
        XCTAssertEqual(input[9 + 6], 0)
        XCTAssertEqual(input[9 + 7], 0)
        let signed = unsigned.attachingEndToEndSignature(signature)
        XCTAssertEqual(signed, TestVectors.messages[0].2)
        // A middlebox appends its record in transit; the end-to-end input does not change.
        for message in [signed, TestVectors.messages[1].2] {
            let found = try message.serialize().withUnsafeBytes { try CSPSignatureInput.collect(from: $0) }
            XCTAssertEqual(found.first?.signer, .endToEnd)
            XCTAssertEqual(found.first?.input, input)
            XCTAssertEqual(found.first?.signature, signature)
        }
    }

    func testOnlyRecordsMayFollowTheEndToEndSignature() throws {
        var m = TestVectors.messages[0].2
        m.tlvs.append(.lifetime(1))
        let bytes = try m.serialize()
        let signatureOffset = bytes.count - 8 - 69
        XCTAssertThrowsError(try bytes.withUnsafeBytes { try CSPSignatureInput.collect(from: $0) }) {
            XCTAssertEqual($0 as? CSPWireError, CSPWireError(.badTLVValue(type: 0x000c), at: signatureOffset))
        }
    }

    func testRecordInputMatchesSignerSide() throws {
        let reply = TestVectors.messages[3].2  // ACCEPT with two records
        var header = try reply.serialize()
        let record = CSPMiddleboxRecord(middleboxID: 9, epoch: 3, decision: .admitted, grantedLifetime: 60, tlvs: [.identity(TestVectors.middleboxKey)])
        let input = try CSPSignatureInput.record(signing: record, header: header.prefix(28))
        var signedRecord = record
        signedRecord.tlvs.append(.signature(TestVectors.placeholderSignature))
        var forwarded = reply
        forwarded.tlvs.append(.middleboxRecord(signedRecord))
        header = try forwarded.serialize()
        let found = try header.withUnsafeBytes { try CSPSignatureInput.collect(from: $0) }
        XCTAssertEqual(found.count, 2, "the vector's own signed record, and ours")
        XCTAssertEqual(found.last?.signer, .middlebox(index: 2, middleboxID: 9))
        XCTAssertEqual(found.last?.input, input)
        XCTAssertEqual(Array(input.prefix(9)), Array("CSP1 mbx".utf8) + [0])
    }
}
