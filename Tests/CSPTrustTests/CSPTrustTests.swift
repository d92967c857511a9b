import CSPTrust
import Foundation
import CSPWire
import XCTest

final class Ed25519VectorTests: XCTestCase {
    /// RFC 8032 section 7.1, TESTs 1–3: seed → public key, deterministic signature, verification.
    static let rfc8032: [(seed: String, publicKey: String, message: String, signature: String)] = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"
        ),
    ]

    func testRFC8032Vectors() throws {
        for vector in Self.rfc8032 {
            let key = try XCTUnwrap(SigningKey(seed: try XCTUnwrap(bytesFromHex(vector.seed))))
            XCTAssertEqual(hexString(key.publicKey.bytes), vector.publicKey)
            let message = try XCTUnwrap(bytesFromHex(vector.message))
            let signature = key.sign(message)
            XCTAssertEqual(hexString(signature), vector.signature)
            XCTAssertTrue(key.publicKey.isValidSignature(signature, for: message))
            var altered = signature
            altered[10] ^= 1
            XCTAssertFalse(key.publicKey.isValidSignature(altered, for: message))
            XCTAssertFalse(key.publicKey.isValidSignature(signature, for: message + [0]))
        }
    }

    func testPublicKeyTextRoundTrips() throws {
        let key = SigningKey()
        let line = key.publicKey.text
        XCTAssertTrue(line.hasPrefix("csp-ed25519 "))
        XCTAssertEqual(PublicKey(text: line + " laptop of ana"), key.publicKey)
        XCTAssertNil(PublicKey(text: "csp-ed25519 abcd"))
        XCTAssertNil(PublicKey(text: "ssh-ed25519 " + hexString(key.publicKey.bytes)))
    }

    func testKeyFileParsesAndRejectsMismatch() throws {
        let key = SigningKey()
        let text = KeyFile.text(of: key)
        XCTAssertEqual(try KeyFile.parse(text, path: "k").publicKey, key.publicKey)
        let other = SigningKey()
        let tampered = text.replacingOccurrences(of: key.publicKey.text, with: other.publicKey.text)
        XCTAssertThrowsError(try KeyFile.parse(tampered, path: "k"))
        XCTAssertThrowsError(try KeyFile.parse("hello\n", path: "k"))
    }
}

final class MessageSignatureTests: XCTestCase {
    let flow = FlowTuple(
        proto: .udp, source: IPAddress("192.0.2.10")!, sourcePort: 40000, destination: IPAddress("198.51.100.20")!,
        destinationPort: 5004)

    func setup() -> CSPMessage {
        CSPMessage(
            type: .setup, flags: .recordRoute, sessionID: 0x0123_4567_89ab_cdef, nonce: 0x1122_3344_5566_7788,
            sequence: 1, tlvs: [.flow(flow), .lifetime(300)])
    }

    func testSignedMessageVerifiesAndSurvivesAppendedRecords() throws {
        let key = SigningKey()
        let signed = try setup().signed(by: key, timestamp: 1_700_000_000)
        var bytes = try signed.serialize()
        XCTAssertEqual(SignatureCheck.check(bytes, message: signed).status, .valid(key.publicKey))
        // A middlebox appends its (signed) record in transit: the end-to-end signature still holds.
        let box = SigningKey()
        var forwarded = signed
        let record = CSPMiddleboxRecord(middleboxID: box.publicKey.fingerprint, epoch: 7, decision: .forwarded, grantedLifetime: 60)
        forwarded.tlvs.append(.middleboxRecord(record.signed(by: box, header: forwarded.headerForSigning)))
        bytes = try forwarded.serialize()
        let check = SignatureCheck.check(bytes, message: forwarded, checkRecords: true)
        XCTAssertEqual(check.status, .valid(key.publicKey))
        XCTAssertEqual(check.records.map(\.status), [.valid(box.publicKey)])
    }

    func testAlteredOrForgedMessagesFail() throws {
        let key = SigningKey()
        let signed = try setup().signed(by: key, timestamp: 1_700_000_000)
        var bytes = try signed.serialize()
        bytes[bytes.count - 70] ^= 0x01  // inside the signed TLVs (the timestamp)
        let altered = try CSPMessage.parse(bytes)
        guard case .invalid = SignatureCheck.check(bytes, message: altered).status else {
            return XCTFail("an altered message verified")
        }
        // The attacker's own key in IDENTITY, the victim's signature: fails too.
        var swapped = signed
        let attacker = SigningKey()
        swapped.tlvs = swapped.tlvs.map { if case .identity = $0 { .identity(attacker.publicKey.material) } else { $0 } }
        let swappedBytes = try swapped.serialize()
        guard case .invalid = SignatureCheck.check(swappedBytes, message: swapped).status else {
            return XCTFail("a signature verified under another IDENTITY")
        }
        // Flag without signature, and a TLV smuggled after the signature.
        var flagged = setup()
        flagged.flags.insert(.signed)
        guard case .invalid = SignatureCheck.check(try flagged.serialize(), message: flagged).status else {
            return XCTFail("signed flag without signature accepted")
        }
        var smuggled = signed
        smuggled.tlvs.append(.lifetime(999_999))
        guard case .invalid = SignatureCheck.check(try smuggled.serialize(), message: smuggled).status else {
            return XCTFail("TLV after the signature accepted")
        }
    }

    func testRecordBoundToItsMessageHeader() throws {
        let box = SigningKey()
        var accept = CSPMessage(type: .accept, sessionID: 1, nonce: 2, sequence: 3, tlvs: [.lifetime(60)])
        let record = CSPMiddleboxRecord(middleboxID: box.publicKey.fingerprint, epoch: 1, decision: .admitted, grantedLifetime: 60)
        accept.tlvs.append(.middleboxRecord(record.signed(by: box, header: accept.headerForSigning)))
        XCTAssertEqual(SignatureCheck.check(try accept.serialize(), message: accept, checkRecords: true).records.map(\.status), [.valid(box.publicKey)])
        // The same record copied into another session's reply does not verify.
        var other = accept
        other.sessionID = 99
        guard case .invalid = SignatureCheck.check(try other.serialize(), message: other, checkRecords: true).records.first?.status
        else { return XCTFail("a record verified in another session's message") }
    }

    func testWithoutIdentityTheSessionKeyDecides() throws {
        let key = SigningKey()
        let refresh = try CSPMessage(type: .refresh, sessionID: 5, nonce: 6, sequence: 2, tlvs: [.lifetime(60)])
            .signed(by: key, timestamp: 1_700_000_000, includeIdentity: false)
        let check = SignatureCheck.check(try refresh.serialize(), message: refresh)
        XCTAssertEqual(check.status, .needsSessionKey)
        XCTAssertTrue(try XCTUnwrap(check.deferred).verify(with: key.publicKey))
        XCTAssertFalse(try XCTUnwrap(check.deferred).verify(with: SigningKey().publicKey))
    }
}

final class ChallengeTokenTests: XCTestCase {
    let tokens = ChallengeTokens(secret: Array(repeating: 7, count: 32))
    let address = IPAddress("192.0.2.10")!

    func testTokenVerifiesOnlyForItsValuesAndUntilExpiry() {
        var tokens = self.tokens
        let now: UInt64 = 1_700_000_059  // one second before a key rotation
        let token = tokens.mint(sessionID: 1, nonce: 2, address: address, port: 4000, now: now)
        XCTAssertEqual(token.count, ChallengeTokens.tokenLength)
        XCTAssertTrue(tokens.verify(token, sessionID: 1, nonce: 2, address: address, port: 4000, now: now))
        // After the rotation (previous key) and until expiry.
        XCTAssertTrue(tokens.verify(token, sessionID: 1, nonce: 2, address: address, port: 4000, now: now + 29))
        XCTAssertFalse(tokens.verify(token, sessionID: 1, nonce: 2, address: address, port: 4000, now: now + 31))
        XCTAssertFalse(tokens.verify(token, sessionID: 1, nonce: 3, address: address, port: 4000, now: now))
        XCTAssertFalse(tokens.verify(token, sessionID: 1, nonce: 2, address: IPAddress("192.0.2.11")!, port: 4000, now: now))
        XCTAssertFalse(tokens.verify(token, sessionID: 1, nonce: 2, address: address, port: 4001, now: now))
        let otherGateway = ChallengeTokens(secret: Array(repeating: 8, count: 32))
        XCTAssertFalse(otherGateway.verify(token, sessionID: 1, nonce: 2, address: address, port: 4000, now: now))
        var forged = token
        forged[0] &+= 1  // a later expiry the attacker chose
        XCTAssertFalse(tokens.verify(forged, sessionID: 1, nonce: 2, address: address, port: 4000, now: now))
    }
}
