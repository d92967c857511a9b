import CSPTrust
import XCTest

final class IdentityBlockTests: XCTestCase {
    /// PROTOCOL.md 14.13's own vector: the seed of 32 octets 01, its derived X25519 key and its
    /// identity block, as computed by the independent Python implementation.
    func testSeedOfOnesMatchesTheIndependentImplementation() throws {
        let initiator = try object(try VectorFile("noise-xx-crosscheck.json").root["initiator"])
        XCTAssertEqual(try octets(initiator["seed"]), [UInt8](repeating: 1, count: 32))
        let key = try XCTUnwrap(SigningKey(seed: [UInt8](repeating: 1, count: 32)))
        XCTAssertEqual(key.x25519StaticKey().bytes, try octets(initiator["static_private"]))
        let identity = SessionIdentity(signingKey: key)
        XCTAssertEqual(identity.staticKey.publicKey.bytes, try octets(initiator["static_public"]))
        XCTAssertEqual(identity.identityBlock.bytes, try octets(initiator["identity_block"]))
    }

    func testLayout() throws {
        let key = try XCTUnwrap(SigningKey(seed: [UInt8](repeating: 1, count: 32)))
        let x25519 = key.x25519StaticKey(generation: 0x0102_0304).publicKey
        let block = IdentityBlock(binding: x25519, generation: 0x0102_0304, signingKey: key)
        let bytes = block.bytes
        XCTAssertEqual(bytes.count, 100)
        XCTAssertEqual(Array(bytes[0..<32]), key.publicKey.bytes)  // ed25519Public(32)
        XCTAssertEqual(Array(bytes[32..<36]), [1, 2, 3, 4])  // generation(4), big-endian
        let signed = Array("CSP1 x25519".utf8) + [0] + key.publicKey.bytes + [1, 2, 3, 4] + x25519.bytes
        XCTAssertEqual(Array(bytes[36..<100]), key.sign(signed))  // signature(64), deterministic
        XCTAssertEqual(try IdentityBlock(bytes: bytes), block)
    }

    func testVerifiesAgainstTheAuthenticatedKeyOnly() throws {
        let key = SigningKey()
        let identity = SessionIdentity(signingKey: key)
        let block = identity.identityBlock.bytes
        XCTAssertEqual(try IdentityBlock.verify(block, for: identity.staticKey.publicKey), key.publicKey)

        // Another X25519 key: a block copied from another party's handshake, or another generation.
        let other = X25519PrivateKey().publicKey
        XCTAssertThrowsError(try IdentityBlock.verify(block, for: other)) {
            XCTAssertEqual($0 as? IdentityBlockError, .badSignature(signer: key.publicKey, x25519: other))
        }
        XCTAssertThrowsError(try IdentityBlock.verify(block, for: key.x25519StaticKey(generation: 1).publicKey))
    }

    func testEveryFlippedBitFails() throws {
        let identity = SessionIdentity(signingKey: SigningKey())
        let block = identity.identityBlock.bytes
        for index in block.indices {
            for bit in [0x01, 0x80] as [UInt8] {
                var altered = block
                altered[index] ^= bit
                XCTAssertThrowsError(try IdentityBlock.verify(altered, for: identity.staticKey.publicKey), "octet \(index)")
            }
        }
    }

    func testWrongLength() {
        XCTAssertThrowsError(try IdentityBlock(bytes: [UInt8](repeating: 0, count: 99))) {
            XCTAssertEqual($0 as? IdentityBlockError, .wrongLength(99))
        }
        XCTAssertThrowsError(try IdentityBlock.verify([UInt8](repeating: 0, count: 101), for: X25519PrivateKey().publicKey)) {
            XCTAssertEqual($0 as? IdentityBlockError, .wrongLength(101))
        }
    }

    func testGenerationsDeriveDifferentKeys() throws {
        let key = SigningKey()
        XCTAssertEqual(key.x25519StaticKey().bytes, key.x25519StaticKey(generation: 0).bytes)
        XCTAssertNotEqual(key.x25519StaticKey(generation: 0).bytes, key.x25519StaticKey(generation: 1).bytes)
        XCTAssertNotEqual(key.x25519StaticKey().bytes, SigningKey().x25519StaticKey().bytes)
        let rotated = SessionIdentity(signingKey: key, generation: 7)
        XCTAssertEqual(rotated.identityBlock.generation, 7)
        XCTAssertEqual(try rotated.identityBlock.verify(for: rotated.staticKey.publicKey), key.publicKey)
    }

    /// What a relay holds: the derived key and its block, never the seed.
    func testARelaysIdentityIsBuiltFromKeyAndBlock() throws {
        let full = SessionIdentity(signingKey: SigningKey())
        let staticKey = try XCTUnwrap(X25519PrivateKey(bytes: full.staticKey.bytes))
        let block = try IdentityBlock(bytes: full.identityBlock.bytes)
        let relay = try SessionIdentity(staticKey: staticKey, identityBlock: block)
        XCTAssertEqual(relay.ed25519PublicKey, full.ed25519PublicKey)
        XCTAssertEqual(relay.staticKey.publicKey, full.staticKey.publicKey)
        XCTAssertThrowsError(try SessionIdentity(staticKey: X25519PrivateKey(), identityBlock: block))
    }

    /// The identity blocks as payloads of a handshake (PROTOCOL.md 14.5): each side learns the
    /// other's Ed25519 key only through the block and the key Noise authenticated.
    func testIdentitiesThroughAHandshake() throws {
        let host = SessionIdentity(signingKey: SigningKey())
        let relay = SessionIdentity(signingKey: SigningKey())
        var u = HandshakeState(role: .initiator, prologue: Array("CSP1 hop".utf8), staticKey: host.staticKey)
        var d = HandshakeState(role: .responder, prologue: Array("CSP1 hop".utf8), staticKey: relay.staticKey)
        try d.readMessage(u.writeMessage())
        let helloReply = try u.readMessage(d.writeMessage(payload: relay.identityBlock.bytes))
        XCTAssertEqual(try IdentityBlock.verify(helloReply, for: XCTUnwrap(u.remoteStatic)), relay.ed25519PublicKey)
        let open = try d.readMessage(u.writeMessage(payload: host.identityBlock.bytes + [0x80, 0x16]))
        XCTAssertEqual(try IdentityBlock.verify(open.prefix(100), for: XCTUnwrap(d.remoteStatic)), host.ed25519PublicKey)
        XCTAssertEqual(Array(open.dropFirst(100)), [0x80, 0x16])

        // A relay that presents the host's block with its own key is caught.
        XCTAssertThrowsError(try IdentityBlock.verify(host.identityBlock.bytes, for: XCTUnwrap(u.remoteStatic)))
    }
}
