import CSPTrust
import CSPWire
import Foundation
import TestSupport
import XCTest

/// The files under Vectors/ (published in docs/PROTOCOL.md) are exactly what the codec emits, and
/// every message vector parses back to its value.
final class VectorFileTests: XCTestCase {
    func vectorDirectory() throws -> URL {
        try XCTUnwrap(Bundle.module.url(forResource: "Vectors", withExtension: nil))
    }

    func testFilesMatchTheCodec() throws {
        if ProcessInfo.processInfo.environment["CSP_REGENERATE_VECTORS"] == "1" {
            let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Vectors")
            for vector in TestVectors.all {
                try VectorFile.render(vector).write(to: source.appendingPathComponent(vector.name + ".hex"), atomically: true, encoding: .utf8)
            }
            return
        }
        let directory = try vectorDirectory()
        for vector in TestVectors.all {
            let url = directory.appendingPathComponent(vector.name + ".hex")
            let text = try String(contentsOf: url, encoding: .utf8)
            XCTAssertEqual(text, try VectorFile.render(vector), vector.name)
            XCTAssertEqual(VectorFile.parseHex(text), try vector.bytes(), vector.name)
        }
        // No stale files.
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".hex") }
        XCTAssertEqual(Set(names), Set(TestVectors.all.map { $0.name + ".hex" }))
    }

    func testMessageVectorsParse() throws {
        let directory = try vectorDirectory()
        for (name, _, message) in TestVectors.messages {
            let bytes = try XCTUnwrap(VectorFile.parseHex(try String(contentsOf: directory.appendingPathComponent(name + ".hex"), encoding: .utf8)))
            XCTAssertEqual(try CSPMessage.parse(bytes), message, name)
        }
    }

    /// docs/PROTOCOL.md quotes every vector file verbatim (run Tests/wire/update-protocol-vectors.py).
    func testProtocolDocumentQuotesEveryVector() throws {
        let doc = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../docs/PROTOCOL.md")
        guard let text = try? String(contentsOf: doc, encoding: .utf8) else {
            throw XCTSkip("docs/PROTOCOL.md not reachable from \(doc.path)")
        }
        for vector in TestVectors.all {
            XCTAssertTrue(text.contains("```\n" + (try VectorFile.render(vector)) + "```\n"), "PROTOCOL.md lacks vector \(vector.name)")
        }
    }
}

/// The published vectors carry real signatures: each verifies with the vectors' public keys (and
/// the primitive itself is checked against RFC 8032 in CSPTrustTests).
final class SignedVectorTests: XCTestCase {
    func testEverySignatureInTheVectorsVerifies() throws {
        var endToEnd = 0
        var records = 0
        for (name, _, message) in TestVectors.messages {
            let bytes = try message.serialize()
            let check = SignatureCheck.check(bytes, message: message, checkRecords: true)
            switch check.status {
            case .absent: break
            case .valid(let key):
                XCTAssertEqual(key.material, TestVectors.hostKey, name)
                endToEnd += 1
            case .needsSessionKey:
                XCTAssertTrue(try XCTUnwrap(check.deferred).verify(with: TestVectors.hostSigningKey.publicKey), name)
                endToEnd += 1
            case .invalid(let why):
                XCTFail("\(name): \(why)")
            }
            for record in check.records {
                switch record.status {
                case .unsigned: break
                case .valid(let key):
                    XCTAssertEqual(key.material, TestVectors.middleboxKey, name)
                    XCTAssertEqual(record.middleboxID, key.fingerprint, "\(name): the ID is the key's fingerprint")
                    records += 1
                case .invalid(let why): XCTFail("\(name): record: \(why)")
                }
            }
        }
        XCTAssertEqual(endToEnd, 6, "signed end to end: SETUP (2), RESPONSE, REBIND, ADD-PATH, DENY")
        XCTAssertEqual(records, 5, "signed records: in transit, ACCEPT, REJECT, ANNOUNCE, RELAY")
    }
}
