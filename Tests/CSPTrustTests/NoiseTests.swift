import Crypto
import Foundation
import XCTest

@testable import CSPTrust

/// A JSON file of Vectors/ (see its README for where each came from).
struct VectorFile {
    let root: [String: Any]

    init(_ name: String) throws {
        let directory = try XCTUnwrap(Bundle.module.url(forResource: "Vectors", withExtension: nil))
        let data = try Data(contentsOf: directory.appendingPathComponent(name))
        root = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any], "\(name): not an object")
    }
}

/// The octets of a hex string in a vector file.
func octets(_ value: Any?, file: StaticString = #filePath, line: UInt = #line) throws -> [UInt8] {
    let text = try XCTUnwrap(value as? String, "not a string: \(String(describing: value))", file: file, line: line)
    return try XCTUnwrap(bytesFromHex(text), "not hex: \(text)", file: file, line: line)
}

func object(_ value: Any?, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
    try XCTUnwrap(value as? [String: Any], "not an object", file: file, line: line)
}

func objects(_ value: Any?, file: StaticString = #filePath, line: UInt = #line) throws -> [[String: Any]] {
    try XCTUnwrap(value as? [[String: Any]], "not an array of objects", file: file, line: line)
}

func integer(_ value: Any?, file: StaticString = #filePath, line: UInt = #line) throws -> UInt64 {
    try XCTUnwrap((value as? NSNumber)?.uint64Value, "not an integer", file: file, line: line)
}

/// The primitives under Noise, from swift-crypto, against the RFCs' own vectors (PROTOCOL.md 14.13),
/// through the wrappers CSPTrust puts around them wherever there is one.
final class PrimitiveVectorTests: XCTestCase {
    func testX25519FunctionVectorsOfRFC7748() throws {
        let vectors = try objects(try VectorFile("x25519-rfc7748.json").root["function"])
        XCTAssertEqual(vectors.count, 2)
        for vector in vectors {
            let scalar = try XCTUnwrap(X25519PrivateKey(bytes: try octets(vector["scalar"])))
            // The second u-coordinate has its top bit set: X25519 must ignore it (RFC 7748 5).
            let u = try XCTUnwrap(X25519PublicKey(bytes: try octets(vector["u"])))
            XCTAssertEqual(try scalar.sharedSecret(with: u), try octets(vector["output"]))
        }
    }

    func testX25519IteratedOnceAndAThousandTimes() throws {
        let iterated = try object(try VectorFile("x25519-rfc7748.json").root["iterated"])
        var k = try octets(iterated["start"])
        var u = k
        for i in 1...1000 {
            let result = try XCTUnwrap(X25519PrivateKey(bytes: k)).sharedSecret(with: XCTUnwrap(X25519PublicKey(bytes: u)))
            u = k
            k = result
            if i == 1 { XCTAssertEqual(k, try octets(iterated["after1"])) }
        }
        XCTAssertEqual(k, try octets(iterated["after1000"]))
    }

    func testX25519DiffieHellmanOfRFC7748() throws {
        let dh = try object(try VectorFile("x25519-rfc7748.json").root["diffieHellman"])
        let alice = try XCTUnwrap(X25519PrivateKey(bytes: try octets(dh["alicePrivate"])))
        let bob = try XCTUnwrap(X25519PrivateKey(bytes: try octets(dh["bobPrivate"])))
        XCTAssertEqual(alice.publicKey.bytes, try octets(dh["alicePublic"]))
        XCTAssertEqual(bob.publicKey.bytes, try octets(dh["bobPublic"]))
        XCTAssertEqual(try alice.sharedSecret(with: bob.publicKey), try octets(dh["shared"]))
        XCTAssertEqual(try bob.sharedSecret(with: alice.publicKey), try octets(dh["shared"]))
        XCTAssertEqual(alice.bytes, try octets(dh["alicePrivate"]), "the scalar is kept as given, unclamped")
    }

    func testChaCha20Poly1305OfRFC8439() throws {
        let vectors = try objects(try VectorFile("chacha20poly1305-rfc8439.json").root["rfc8439"])
        XCTAssertEqual(vectors.count, 2)
        for vector in vectors {
            let key = SymmetricKey(data: try octets(vector["key"]))
            let nonce = try ChaChaPoly.Nonce(data: try octets(vector["nonce"]))
            let aad = try octets(vector["aad"])
            let sealed = try ChaChaPoly.seal(try octets(vector["plaintext"]), using: key, nonce: nonce, authenticating: aad)
            XCTAssertEqual(Array(sealed.ciphertext), try octets(vector["ciphertext"]), "\(vector["name"]!)")
            XCTAssertEqual(Array(sealed.tag), try octets(vector["tag"]), "\(vector["name"]!)")
            let box = try ChaChaPoly.SealedBox(
                nonce: nonce, ciphertext: try octets(vector["ciphertext"]), tag: try octets(vector["tag"]))
            XCTAssertEqual(Array(try ChaChaPoly.open(box, using: key, authenticating: aad)), try octets(vector["plaintext"]))
        }
    }

    /// A.5's nonce, 00000000 0102030405060708, is Noise's layout for n = 0x0807060504030201: the
    /// RFC's decryption vector goes through CipherState unchanged.
    func testRFC8439DecryptionVectorThroughCipherState() throws {
        let vectors = try objects(try VectorFile("chacha20poly1305-rfc8439.json").root["rfc8439"])
        let a5 = try XCTUnwrap(vectors.first { $0["name"] as? String == "A.5" })
        let n: UInt64 = 0x0807_0605_0403_0201
        XCTAssertEqual(CipherState.nonceBytes(n), try octets(a5["nonce"]))
        let cipher = try XCTUnwrap(CipherState(key: try octets(a5["key"])))
        let ciphertext = try octets(a5["ciphertext"]) + octets(a5["tag"])
        XCTAssertEqual(
            try cipher.decrypt(nonce: n, ad: try octets(a5["aad"]), ciphertext: ciphertext), try octets(a5["plaintext"]))
    }

    func testNoiseNonceLayout() throws {
        XCTAssertEqual(hexString(CipherState.nonceBytes(1)), "000000000100000000000000")
        let vectors = try objects(try VectorFile("chacha20poly1305-rfc8439.json").root["noiseNonce"])
        XCTAssertEqual(vectors.count, 2)
        for vector in vectors {
            let n = try integer(vector["n"])
            XCTAssertEqual(CipherState.nonceBytes(n), try octets(vector["nonce"]))
            var cipher = try XCTUnwrap(CipherState(key: try octets(vector["key"])))
            let expected = try octets(vector["ciphertextAndTag"])
            XCTAssertEqual(
                try cipher.encrypt(nonce: n, ad: try octets(vector["aad"]), plaintext: try octets(vector["plaintext"])), expected)
            cipher.nonce = n
            XCTAssertEqual(
                try cipher.encryptWithAd(try octets(vector["aad"]), plaintext: try octets(vector["plaintext"])), expected)
            XCTAssertEqual(cipher.nonce, n + 1)
        }
    }

    func testHMACSHA256OfRFC4231() throws {
        let cases = try objects(try VectorFile("hmac-sha256-rfc4231.json").root["cases"])
        XCTAssertEqual(cases.count, 7)
        for vector in cases {
            let code = HMAC<SHA256>.authenticationCode(
                for: try octets(vector["data"]), using: SymmetricKey(data: try octets(vector["key"])))
            let expected = try octets(vector["hmac"])
            // Test case 5 publishes the first 128 bits only.
            XCTAssertEqual(Array(code.prefix(expected.count)), expected, "test case \(vector["case"]!)")
        }
    }

    func testHKDFSHA256OfRFC5869() throws {
        let cases = try objects(try VectorFile("hkdf-sha256-rfc5869.json").root["cases"])
        XCTAssertEqual(cases.count, 3)
        for vector in cases {
            let ikm = SymmetricKey(data: try octets(vector["ikm"]))
            let salt = try octets(vector["salt"])
            let info = try octets(vector["info"])
            let length = Int(try integer(vector["length"]))
            let prk = HKDF<SHA256>.extract(inputKeyMaterial: ikm, salt: salt)
            XCTAssertEqual(Array(prk), try octets(vector["prk"]), "\(vector["case"]!)")
            let okm = HKDF<SHA256>.deriveKey(inputKeyMaterial: ikm, salt: salt, info: info, outputByteCount: length)
            XCTAssertEqual(okm.withUnsafeBytes { Array($0) }, try octets(vector["okm"]), "\(vector["case"]!)")
        }
    }

    /// Noise's HKDF is RFC 5869's with the chaining key as salt and empty info: A.3 (empty salt and
    /// info) pins it down, two outputs covering the 42 octets.
    func testNoiseHKDFIsRFC5869() throws {
        let cases = try objects(try VectorFile("hkdf-sha256-rfc5869.json").root["cases"])
        let a3 = try XCTUnwrap(cases.first { $0["case"] as? String == "A.3" })
        let outputs = noiseHKDF(chainingKey: [], inputKeyMaterial: try octets(a3["ikm"]), outputs: 2)
        XCTAssertEqual(Array((outputs[0] + outputs[1]).prefix(42)), try octets(a3["okm"]))
        let three = noiseHKDF(chainingKey: [1, 2, 3], inputKeyMaterial: [4], outputs: 3)
        XCTAssertEqual(Array(three.prefix(2)), noiseHKDF(chainingKey: [1, 2, 3], inputKeyMaterial: [4], outputs: 2))
    }
}

final class NoiseTests: XCTestCase {
    // MARK: The Noise community's vectors

    /// cacophony's Noise_XX_25519_ChaChaPoly_SHA256: each side writes its messages and reads the
    /// other's; messages 4–6 are transport messages, alternating from the initiator.
    func testCacophonyVector() throws {
        let vector = try object(try VectorFile("noise-xx-cacophony.json").root["vector"])
        XCTAssertEqual(vector["protocol_name"] as? String, HandshakeState.protocolName)
        var initiator = HandshakeState(
            role: .initiator, prologue: try octets(vector["init_prologue"]),
            staticKey: try XCTUnwrap(X25519PrivateKey(bytes: try octets(vector["init_static"]))),
            ephemeralKey: X25519PrivateKey(bytes: try octets(vector["init_ephemeral"])))
        var responder = HandshakeState(
            role: .responder, prologue: try octets(vector["resp_prologue"]),
            staticKey: try XCTUnwrap(X25519PrivateKey(bytes: try octets(vector["resp_static"]))),
            ephemeralKey: X25519PrivateKey(bytes: try octets(vector["resp_ephemeral"])))
        let messages = try objects(vector["messages"])
        XCTAssertEqual(messages.count, 6)
        for (i, message) in messages.prefix(3).enumerated() {
            let payload = try octets(message["payload"])
            let written = try i % 2 == 0 ? initiator.writeMessage(payload: payload) : responder.writeMessage(payload: payload)
            XCTAssertEqual(hexString(written), message["ciphertext"] as? String, "handshake message \(i + 1)")
            let read = try i % 2 == 0 ? responder.readMessage(written) : initiator.readMessage(written)
            XCTAssertEqual(read, payload)
        }
        XCTAssertTrue(initiator.isComplete && responder.isComplete)
        XCTAssertEqual(initiator.handshakeHash, try octets(vector["handshake_hash"]))
        XCTAssertEqual(responder.handshakeHash, try octets(vector["handshake_hash"]))
        XCTAssertEqual(
            initiator.remoteStatic, try XCTUnwrap(X25519PrivateKey(bytes: try octets(vector["resp_static"]))).publicKey)
        XCTAssertEqual(
            responder.remoteStatic, try XCTUnwrap(X25519PrivateKey(bytes: try octets(vector["init_static"]))).publicKey)

        var (initiatorSend, initiatorReceive) = try initiator.split()
        var (responderReceive, responderSend) = try responder.split()
        for (i, message) in messages.enumerated().dropFirst(3) {
            let payload = try octets(message["payload"])
            let fromInitiator = i % 2 == 0
            let ciphertext =
                try fromInitiator
                ? initiatorSend.encryptWithAd([], plaintext: payload) : responderSend.encryptWithAd([], plaintext: payload)
            XCTAssertEqual(hexString(ciphertext), message["ciphertext"] as? String, "transport message \(i + 1)")
            let plaintext =
                try fromInitiator
                ? responderReceive.decryptWithAd([], ciphertext: ciphertext)
                : initiatorReceive.decryptWithAd([], ciphertext: ciphertext)
            XCTAssertEqual(plaintext, payload)
        }
    }

    // MARK: The independent Python implementation (Tests/crypto/noise_xx_crosscheck.py)

    func testReproducesTheIndependentImplementation() throws {
        let vector = try VectorFile("noise-xx-crosscheck.json").root
        let prologue = try octets(vector["prologue"])
        let sessionID = try integer(vector["session_id"])
        XCTAssertEqual(prologue, Array("CSP1 e2e".utf8) + bigEndian(sessionID) + (try octets(vector["target"])))

        func party(_ name: String, _ role: HandshakeState.Role) throws -> (HandshakeState, SessionIdentity) {
            let fields = try object(vector[name])
            let identity = SessionIdentity(signingKey: try XCTUnwrap(SigningKey(seed: try octets(fields["seed"]))))
            XCTAssertEqual(identity.staticKey.bytes, try octets(fields["static_private"]), "\(name): 14.4 derivation")
            XCTAssertEqual(identity.staticKey.publicKey.bytes, try octets(fields["static_public"]))
            XCTAssertEqual(identity.identityBlock.bytes, try octets(fields["identity_block"]), "\(name): identity block")
            let state = HandshakeState(
                role: role, prologue: prologue, staticKey: identity.staticKey,
                ephemeralKey: X25519PrivateKey(bytes: try octets(fields["ephemeral_private"])))
            return (state, identity)
        }
        var (initiator, initiatorIdentity) = try party("initiator", .initiator)
        var (responder, responderIdentity) = try party("responder", .responder)

        let handshake = try objects(vector["handshake"])
        XCTAssertEqual(handshake.count, 3)
        for (i, message) in handshake.enumerated() {
            let payload = try octets(message["payload"])
            let written = try i % 2 == 0 ? initiator.writeMessage(payload: payload) : responder.writeMessage(payload: payload)
            XCTAssertEqual(hexString(written), message["message"] as? String, "handshake message \(i + 1)")
            XCTAssertEqual(try i % 2 == 0 ? responder.readMessage(written) : initiator.readMessage(written), payload)
        }
        XCTAssertEqual(initiator.handshakeHash, try octets(vector["handshake_hash"]))
        XCTAssertEqual(responder.handshakeHash, initiator.handshakeHash)
        // Each side's identity block verifies against the key the handshake authenticated.
        XCTAssertEqual(
            try initiatorIdentity.identityBlock.verify(for: try XCTUnwrap(responder.remoteStatic)),
            initiatorIdentity.ed25519PublicKey)
        XCTAssertEqual(
            try responderIdentity.identityBlock.verify(for: try XCTUnwrap(initiator.remoteStatic)),
            responderIdentity.ed25519PublicKey)

        let split = try object(vector["split"])
        let initiatorSplit = try initiator.splitWithResumeKey()
        let responderSplit = try responder.splitWithResumeKey()
        let resumeKey = initiatorSplit.resumeKey
        XCTAssertEqual(resumeKey, try octets(split["k_resume"]))
        XCTAssertEqual(responderSplit.resumeKey, resumeKey)
        let firstKey = try XCTUnwrap(CipherState(key: try octets(split["initiator_to_responder"])))
        let secondKey = try XCTUnwrap(CipherState(key: try octets(split["responder_to_initiator"])))
        // Each direction: the sender's CipherState and the receiver's.
        var initiatorToResponder = (initiatorSplit.initiatorToResponder, responderSplit.initiatorToResponder)
        var responderToInitiator = (responderSplit.responderToInitiator, initiatorSplit.responderToInitiator)
        var rekeyed = false
        let records = try objects(vector["transport"])
        XCTAssertEqual(records.count, 7)
        for record in records {
            let plaintext = try octets(record["plaintext"])
            let expected = try octets(record["ciphertext"])
            let nonce = try integer(record["nonce"])
            if record["rekeyed"] as? Bool == true, !rekeyed {
                // KEY-UPDATE was the previous record: both ends of that direction rekey.
                initiatorToResponder.0.rekey()
                initiatorToResponder.1.rekey()
                rekeyed = true
            }
            let fromInitiator = record["direction"] as? String == "initiator-to-responder"
            var (send, receive) = fromInitiator ? initiatorToResponder : responderToInitiator
            let explicit = fromInitiator ? firstKey : secondKey
            if nonce == send.nonce {
                XCTAssertEqual(try send.encryptWithAd([], plaintext: plaintext), expected, "record \(nonce)")
                XCTAssertEqual(try receive.decryptWithAd([], ciphertext: expected), plaintext)
            } else {
                XCTAssertEqual(try send.encrypt(nonce: nonce, plaintext: plaintext), expected, "explicit nonce \(nonce)")
                XCTAssertEqual(try receive.decrypt(nonce: nonce, ciphertext: expected), plaintext)
            }
            if !(fromInitiator && rekeyed) {
                XCTAssertEqual(try explicit.encrypt(nonce: nonce, plaintext: plaintext), expected, "Split's key")
            }
            if fromInitiator { initiatorToResponder = (send, receive) } else { responderToInitiator = (send, receive) }
        }
        XCTAssertTrue(rekeyed)

        let blob = try object(vector["resume_blob"])
        let epoch = UInt32(try integer(blob["epoch"]))
        let d = try integer(blob["d"])
        let resumeCipher = try XCTUnwrap(CipherState(key: resumeKey))
        let sealed = try resumeCipher.encrypt(
            nonce: 2 * UInt64(epoch) + d, ad: Array("CSP1 resume".utf8) + bigEndian(sessionID),
            plaintext: bigEndian(try integer(blob["next_expected"])))
        XCTAssertEqual(bigEndian(epoch) + sealed, try octets(blob["blob"]))
    }

    // MARK: Failing closed

    func testTamperedHandshakeMessageFailsAndEndsTheHandshake() throws {
        var (initiator, responder) = pair()
        try responder.readMessage(initiator.writeMessage())
        var message2 = try responder.writeMessage(payload: Array("identity".utf8))
        message2[40] ^= 0x01  // inside the encrypted static key
        XCTAssertThrowsError(try initiator.readMessage(message2)) { XCTAssertEqual($0 as? NoiseError, .decryptionFailed) }
        XCTAssertThrowsError(try initiator.writeMessage()) { XCTAssertEqual($0 as? NoiseError, .handshakeFailed) }
        XCTAssertThrowsError(try initiator.split()) { XCTAssertEqual($0 as? NoiseError, .handshakeFailed) }

        // The payload's tag, too, and the ephemeral key (it changes every derived key).
        for index in [0, 95, 100] {
            var (initiator, responder) = pair()
            try responder.readMessage(initiator.writeMessage())
            var message = try responder.writeMessage(payload: Array("identity".utf8))
            message[index] ^= 0x80
            XCTAssertThrowsError(try initiator.readMessage(message), "octet \(index)")
        }
    }

    func testTamperedTransportCiphertextFailsAndKeepsTheNonce() throws {
        var (send, receive) = try completedPair()
        let record = try send.encryptWithAd([], plaintext: Array("DATA".utf8))
        for index in record.indices {
            var altered = record
            altered[index] ^= 0x04
            XCTAssertThrowsError(try receive.decryptWithAd([], ciphertext: altered)) {
                XCTAssertEqual($0 as? NoiseError, .decryptionFailed)
            }
        }
        XCTAssertThrowsError(try receive.decryptWithAd([1], ciphertext: record), "other associated data")
        XCTAssertThrowsError(try receive.decryptWithAd([], ciphertext: Array(record.dropLast()))) {
            XCTAssertEqual($0 as? NoiseError, .decryptionFailed)
        }
        XCTAssertThrowsError(try receive.decryptWithAd([], ciphertext: Array(record.prefix(15)))) {
            XCTAssertEqual($0 as? NoiseError, .messageTooShort(length: 15, minimum: 16))
        }
        XCTAssertEqual(receive.nonce, 0, "a failed decryption does not consume the nonce")
        XCTAssertEqual(try receive.decryptWithAd([], ciphertext: record), Array("DATA".utf8))
        XCTAssertEqual(receive.nonce, 1)
        XCTAssertThrowsError(try receive.decryptWithAd([], ciphertext: record), "a replay is the wrong nonce")
    }

    func testWrongPrologueFailsTheHandshake() throws {
        var initiator = HandshakeState(role: .initiator, prologue: Array("CSP1 hop".utf8), staticKey: X25519PrivateKey())
        var responder = HandshakeState(role: .responder, prologue: Array("CSP1 e2e".utf8), staticKey: X25519PrivateKey())
        // Message 1 is clear and cannot fail; message 2 is the first under keys that bind the prologue.
        try responder.readMessage(initiator.writeMessage())
        XCTAssertThrowsError(try initiator.readMessage(responder.writeMessage())) {
            XCTAssertEqual($0 as? NoiseError, .decryptionFailed)
        }
    }

    // MARK: Rekey, nonces, limits

    /// Noise 4.2/11.3: REKEY(k) = the first 32 octets of ENCRYPT(k, 2^64−1, empty, 32 zeros), and
    /// the nonce goes on counting.
    func testRekeyMatchesTheSpecification() throws {
        let key = (0..<32).map { UInt8($0 * 7 & 0xff) }
        var cipher = try XCTUnwrap(CipherState(key: key, nonce: 41))
        cipher.rekey()
        XCTAssertEqual(cipher.nonce, 41)
        let sealed = try ChaChaPoly.seal(
            [UInt8](repeating: 0, count: 32), using: SymmetricKey(data: key),
            nonce: ChaChaPoly.Nonce(data: [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), authenticating: [UInt8]()
        )
        let expectedKey = Array(sealed.ciphertext)
        XCTAssertEqual(expectedKey.count, 32)
        let reference = try XCTUnwrap(CipherState(key: expectedKey))
        let plaintext = Array("after KEY-UPDATE".utf8)
        XCTAssertEqual(try cipher.encryptWithAd([], plaintext: plaintext), try reference.encrypt(nonce: 41, plaintext: plaintext))
        XCTAssertNotEqual(
            try XCTUnwrap(CipherState(key: key)).encrypt(nonce: 41, plaintext: plaintext),
            try reference.encrypt(nonce: 41, plaintext: plaintext))
    }

    func testTheLastNonceIsReserved() throws {
        var cipher = try XCTUnwrap(CipherState(key: [UInt8](repeating: 9, count: 32), nonce: UInt64.max - 1))
        let last = try cipher.encryptWithAd([], plaintext: [1])
        XCTAssertEqual(cipher.nonce, UInt64.max)
        XCTAssertThrowsError(try cipher.encryptWithAd([], plaintext: [2])) { XCTAssertEqual($0 as? NoiseError, .nonceExhausted) }
        XCTAssertThrowsError(try cipher.decryptWithAd([], ciphertext: last)) {
            XCTAssertEqual($0 as? NoiseError, .nonceExhausted)
        }
        XCTAssertThrowsError(try cipher.encrypt(nonce: .max, plaintext: [])) {
            XCTAssertEqual($0 as? NoiseError, .nonceExhausted)
        }
        XCTAssertEqual(try cipher.decrypt(nonce: .max - 1, ciphertext: last), [1])
    }

    func testExplicitNoncesLeaveTheCounterAlone() throws {
        var (send, receive) = try completedPair()
        let record7 = try send.encrypt(nonce: 7, plaintext: [7])
        XCTAssertEqual(send.nonce, 0)
        XCTAssertEqual(try receive.decrypt(nonce: 7, ciphertext: record7), [7])
        XCTAssertThrowsError(try receive.decrypt(nonce: 8, ciphertext: record7))
        XCTAssertEqual(receive.nonce, 0)
        // A retransmission is the stored ciphertext: the same octets at the same nonce.
        XCTAssertEqual(try send.encrypt(nonce: 7, plaintext: [7]), record7)
        _ = try send.encryptWithAd([], plaintext: [0])
        XCTAssertEqual(send.nonce, 1)
        XCTAssertThrowsError(try CipherState(optionalKey: nil).encrypt(nonce: 0, plaintext: [])) {
            XCTAssertEqual($0 as? NoiseError, .missingKey)
        }
        XCTAssertNil(CipherState(key: [1, 2, 3]))
    }

    func testMessagesAreLimitedTo65535Octets() throws {
        var (initiator, responder) = pair()
        XCTAssertThrowsError(try initiator.writeMessage(payload: [UInt8](repeating: 0, count: 65535 - 32 + 1))) {
            XCTAssertEqual($0 as? NoiseError, .messageTooLong(length: 65536))
        }
        let largest = try initiator.writeMessage(payload: [UInt8](repeating: 0x5a, count: 65535 - 32))
        XCTAssertEqual(largest.count, 65535)
        XCTAssertEqual(try responder.readMessage(largest).count, 65503)
        XCTAssertThrowsError(try responder.writeMessage(payload: [UInt8](repeating: 0, count: 65535 - 96 + 1))) {
            XCTAssertEqual($0 as? NoiseError, .messageTooLong(length: 65536))
        }
        let message2 = try responder.writeMessage(payload: [UInt8](repeating: 1, count: 65535 - 96))
        XCTAssertEqual(message2.count, 65535)
        XCTAssertEqual(try initiator.readMessage(message2).count, 65535 - 96)
        var (initiator2, responder2) = pair()
        try responder2.readMessage(initiator2.writeMessage())
        XCTAssertThrowsError(try initiator2.readMessage(message2 + [0])) {
            XCTAssertEqual($0 as? NoiseError, .messageTooLong(length: 65536))
        }

        let cipher = try XCTUnwrap(CipherState(key: [UInt8](repeating: 3, count: 32)))
        XCTAssertEqual(try cipher.encrypt(nonce: 0, plaintext: [UInt8](repeating: 0, count: 65519)).count, 65535)
        XCTAssertThrowsError(try cipher.encrypt(nonce: 0, plaintext: [UInt8](repeating: 0, count: 65520))) {
            XCTAssertEqual($0 as? NoiseError, .messageTooLong(length: 65536))
        }
    }

    func testShortMessagesAreRefused() throws {
        var (initiator, responder) = pair()
        let message1 = try initiator.writeMessage()
        XCTAssertThrowsError(try responder.readMessage(Array(message1.prefix(31)))) {
            XCTAssertEqual($0 as? NoiseError, .messageTooShort(length: 31, minimum: 32))
        }
        XCTAssertThrowsError(try responder.readMessage(message1), "a bad message ends the handshake") {
            XCTAssertEqual($0 as? NoiseError, .handshakeFailed)
        }
        var (initiator2, responder2) = pair()
        try responder2.readMessage(initiator2.writeMessage())
        let message2 = try responder2.writeMessage()
        XCTAssertEqual(message2.count, 96)
        XCTAssertThrowsError(try initiator2.readMessage(Array(message2.prefix(95)))) {
            XCTAssertEqual($0 as? NoiseError, .messageTooShort(length: 95, minimum: 96))
        }
    }

    func testCallsOutOfTurn() throws {
        var (initiator, responder) = pair()
        XCTAssertThrowsError(try responder.writeMessage()) { XCTAssertEqual($0 as? NoiseError, .notOurTurn) }
        XCTAssertThrowsError(try initiator.readMessage([UInt8](repeating: 0, count: 32))) {
            XCTAssertEqual($0 as? NoiseError, .notPeersTurn)
        }
        XCTAssertThrowsError(try initiator.split()) { XCTAssertEqual($0 as? NoiseError, .handshakeNotComplete) }
        XCTAssertTrue(initiator.isOurTurnToWrite)
        XCTAssertFalse(responder.isOurTurnToWrite)
        try responder.readMessage(initiator.writeMessage())
        try initiator.readMessage(responder.writeMessage())
        XCTAssertNotNil(initiator.remoteStatic, "the initiator learns the responder's key from message 2")
        XCTAssertNil(responder.remoteStatic)
        try responder.readMessage(initiator.writeMessage())
        XCTAssertEqual(responder.remoteStatic, initiator.localStaticPublicKey)
        XCTAssertThrowsError(try initiator.writeMessage()) { XCTAssertEqual($0 as? NoiseError, .handshakeAlreadyComplete) }
        XCTAssertThrowsError(try responder.readMessage([])) { XCTAssertEqual($0 as? NoiseError, .handshakeAlreadyComplete) }
    }

    func testFreshEphemeralKeysMakeEveryHandshakeDifferent() throws {
        let initiatorKey = X25519PrivateKey()
        let responderKey = X25519PrivateKey()
        var transcripts: [[UInt8]] = []
        var resumeKeys: [[UInt8]] = []
        for _ in 0..<2 {
            var initiator = HandshakeState(role: .initiator, prologue: [], staticKey: initiatorKey)
            var responder = HandshakeState(role: .responder, prologue: [], staticKey: responderKey)
            let message1 = try initiator.writeMessage()
            try responder.readMessage(message1)
            try initiator.readMessage(responder.writeMessage())
            try responder.readMessage(initiator.writeMessage())
            XCTAssertEqual(initiator.handshakeHash, responder.handshakeHash)
            let a = try initiator.splitWithResumeKey()
            let b = try responder.splitWithResumeKey()
            XCTAssertEqual(a.resumeKey, b.resumeKey)
            let plain = try initiator.split()
            XCTAssertEqual(
                try plain.initiatorToResponder.encrypt(nonce: 3, plaintext: [1]),
                try a.initiatorToResponder.encrypt(nonce: 3, plaintext: [1]))
            XCTAssertEqual(
                try plain.responderToInitiator.encrypt(nonce: 3, plaintext: [1]),
                try b.responderToInitiator.encrypt(nonce: 3, plaintext: [1]))
            XCTAssertEqual(
                try b.initiatorToResponder.decrypt(
                    nonce: 3, ciphertext: try plain.initiatorToResponder.encrypt(nonce: 3, plaintext: [1])), [1])
            transcripts.append(message1 + initiator.handshakeHash)
            resumeKeys.append(a.resumeKey)
        }
        XCTAssertNotEqual(transcripts[0], transcripts[1])
        XCTAssertNotEqual(resumeKeys[0], resumeKeys[1])
    }

    // MARK: Helpers

    private func pair() -> (HandshakeState, HandshakeState) {
        (
            HandshakeState(role: .initiator, prologue: Array("CSP1 hop".utf8), staticKey: X25519PrivateKey()),
            HandshakeState(role: .responder, prologue: Array("CSP1 hop".utf8), staticKey: X25519PrivateKey())
        )
    }

    /// The initiator's sending and the responder's receiving CipherState of a completed handshake.
    private func completedPair() throws -> (CipherState, CipherState) {
        var (initiator, responder) = pair()
        try responder.readMessage(initiator.writeMessage())
        try initiator.readMessage(responder.writeMessage())
        try responder.readMessage(initiator.writeMessage())
        return (try initiator.split().initiatorToResponder, try responder.split().initiatorToResponder)
    }
}
