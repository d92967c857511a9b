#if canImport(Glibc)
import Glibc
#endif
import SystemSupport

/// What a relay (midrelayd) needs from its middlebox's identity, and nothing more: the token key it
/// shares with the offering daemon (docs/PROTOCOL.md 14.2) and the X25519 static key with its
/// signed identity block (14.4) — never the Ed25519 seed, so a relay cannot sign records.
///
///     # CSP relay key (made by midcomd from its identity). Keep it secret (mode 0600).
///     relay-token-key <64 hex digits>
///     x25519-private <64 hex digits>
///     identity-block <200 hex digits>
public struct RelayKeyFile: Sendable {
    public let tokenKey: RelayTokenKey
    public let identity: SessionIdentity

    public init(tokenKey: RelayTokenKey, identity: SessionIdentity) {
        self.tokenKey = tokenKey
        self.identity = identity
    }

    /// A new relay key for `signingKey` (the middlebox identity) with a fresh token key.
    public init(deriving signingKey: SigningKey) {
        tokenKey = .random()
        identity = SessionIdentity(signingKey: signingKey)
    }

    public var text: String {
        """
        # CSP relay key (made by midcomd from its identity). Keep it secret (mode 0600).
        relay-token-key \(hexString(tokenKey.bytes))
        x25519-private \(hexString(identity.staticKey.bytes))
        identity-block \(hexString(identity.identityBlock.bytes))

        """
    }

    public static func parse(_ text: String, path: String) throws(KeyFile.Problem) -> RelayKeyFile {
        var fields: [String: [UInt8]] = [:]
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.drop(while: { $0 == " " || $0 == "\t" })
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            let parts = trimmed.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard parts.count == 2, ["relay-token-key", "x25519-private", "identity-block"].contains(String(parts[0])),
                let bytes = bytesFromHex(parts[1])
            else { throw KeyFile.Problem("\(path):\(number + 1): not a relay key line (relay-token-key, x25519-private or identity-block, then hex)") }
            fields[String(parts[0])] = bytes
        }
        guard let token = fields["relay-token-key"].flatMap(RelayTokenKey.init(bytes:)),
            let secret = fields["x25519-private"].flatMap({ X25519PrivateKey(bytes: $0) }),
            let blockBytes = fields["identity-block"], let block = try? IdentityBlock(bytes: blockBytes)
        else { throw KeyFile.Problem("\(path): incomplete relay key (needs relay-token-key, x25519-private, identity-block)") }
        do {
            return RelayKeyFile(tokenKey: token, identity: try SessionIdentity(staticKey: secret, identityBlock: block))
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
        if let existing = try? load(path), existing.identity.ed25519PublicKey == signingKey.publicKey { return existing }
        let made = RelayKeyFile(deriving: signingKey)
        _ = unlink(path)
        do { try SmallFile.write(path, Array(made.text.utf8), mode: 0o600) } catch { throw KeyFile.Problem("cannot write relay key \(path): \(error)") }
        return made
    }
}
