#if canImport(Glibc)
import Glibc
#endif
import SystemSupport

/// What a relay (midrelayd) needs from its middlebox's identity: the token key it shares with the
/// offering daemon (docs/PROTOCOL.md 14.2), the X25519 static key with its signed identity block
/// (14.4) and, when the relay opens its onward hops through further middleboxes (14.3: its own
/// SETUP, signed with the key its hop handshake proves), the middlebox's Ed25519 seed.
///
///     # CSP relay key (made by midcomd from its identity). Keep it secret (mode 0600).
///     relay-token-key <64 hex digits>
///     x25519-private <64 hex digits>
///     identity-block <200 hex digits>
///     csp-ed25519-private <64 hex digits>      (optional: signs the relay's onward SETUPs)
///
/// Why the seed may be here: a relay's onward SETUP must be signed by the key the next relay's
/// token is bound to, which is the key the hop handshake proves — the middlebox's. Without the
/// line the relay cannot signal onward hops (it connects straight to the target); delegating to a
/// key of the relay's own would need the offer to name that key (ARCHITECTURE.md, "Keys").
public struct RelayKeyFile: Sendable {
    public let tokenKey: RelayTokenKey
    public let identity: SessionIdentity
    public let signingKey: SigningKey?

    public init(tokenKey: RelayTokenKey, identity: SessionIdentity, signingKey: SigningKey? = nil) {
        self.tokenKey = tokenKey
        self.identity = identity
        self.signingKey = signingKey
    }

    /// A new relay key for `signingKey` (the middlebox identity) with a fresh token key.
    public init(deriving signingKey: SigningKey, includingSeed: Bool = true) {
        tokenKey = .random()
        identity = SessionIdentity(signingKey: signingKey)
        self.signingKey = includingSeed ? signingKey : nil
    }

    public var text: String {
        """
        # CSP relay key (made by midcomd from its identity). Keep it secret (mode 0600).
        relay-token-key \(hexString(tokenKey.bytes))
        x25519-private \(hexString(identity.staticKey.bytes))
        identity-block \(hexString(identity.identityBlock.bytes))
        \(signingKey.map { "\(KeyFile.privatePrefix) \(hexString($0.seed))\n" } ?? "")
        """
    }

    public static func parse(_ text: String, path: String) throws(KeyFile.Problem) -> RelayKeyFile {
        var fields: [String: [UInt8]] = [:]
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.drop(while: { $0 == " " || $0 == "\t" })
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            let parts = trimmed.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard parts.count == 2, ["relay-token-key", "x25519-private", "identity-block", KeyFile.privatePrefix].contains(String(parts[0])),
                let bytes = bytesFromHex(parts[1])
            else { throw KeyFile.Problem("\(path):\(number + 1): not a relay key line (relay-token-key, x25519-private or identity-block, then hex)") }
            fields[String(parts[0])] = bytes
        }
        guard let token = fields["relay-token-key"].flatMap(RelayTokenKey.init(bytes:)),
            let secret = fields["x25519-private"].flatMap({ X25519PrivateKey(bytes: $0) }),
            let blockBytes = fields["identity-block"], let block = try? IdentityBlock(bytes: blockBytes)
        else { throw KeyFile.Problem("\(path): incomplete relay key (needs relay-token-key, x25519-private, identity-block)") }
        let seed = fields[KeyFile.privatePrefix].flatMap { SigningKey(seed: $0) }
        if let seed, seed.publicKey != block.ed25519PublicKey {
            throw KeyFile.Problem("\(path): the \(KeyFile.privatePrefix) line is not the identity block's key")
        }
        do {
            return RelayKeyFile(tokenKey: token, identity: try SessionIdentity(staticKey: secret, identityBlock: block), signingKey: seed)
        } catch { throw KeyFile.Problem("\(path): the identity block does not belong to the x25519 key (\(error))") }
    }

    /// Loads a relay key, refusing files others can read.
    public static func load(_ path: String) throws(KeyFile.Problem) -> RelayKeyFile {
        let contents: SmallFile.Contents
        do { contents = try SmallFile.read(path, limit: 4096) } catch { throw KeyFile.Problem("cannot read relay key \(path): \(error)") }
        guard contents.mode & 0o077 == 0 else {
            throw KeyFile.Problem("\(path) is readable by others (mode \(String(contents.mode, radix: 8))): run chmod 600 \(path)")
        }
        return try parse(String(decoding: contents.bytes, as: UTF8.self), path: path)
    }

    /// The relay key at `path` if it exists and belongs to `signingKey`; else a new one written there.
    public static func loadOrCreate(_ path: String, for signingKey: SigningKey) throws(KeyFile.Problem) -> RelayKeyFile {
        if let existing = try? load(path), existing.signingKey?.publicKey == signingKey.publicKey { return existing }
        let made = RelayKeyFile(deriving: signingKey)
        _ = unlink(path)
        do { try SmallFile.write(path, Array(made.text.utf8), mode: 0o600) } catch { throw KeyFile.Problem("cannot write relay key \(path): \(error)") }
        return made
    }
}
