import SystemSupport

/// Keys on disk. A private key file is text, mode 0600, owned by whoever uses it:
///
///     # CSP Ed25519 private key. Keep it secret.
///     csp-ed25519-private <64 hex digits: the seed>
///     csp-ed25519 <64 hex digits: the public key>
///
/// The public line is a convenience (it is what `csp keygen` and `midcomd --show-key` print and
/// what an operator pastes into a policy); the seed alone defines the key, and a file whose public
/// line does not match its seed is refused.
public enum KeyFile {
    public static let privatePrefix = "csp-ed25519-private"

    public struct Problem: Error, CustomStringConvertible, Sendable {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    public static func text(of key: SigningKey) -> String {
        """
        # CSP Ed25519 private key. Keep it secret (mode 0600).
        \(privatePrefix) \(hexString(key.seed))
        \(key.publicKey.text)

        """
    }

    /// Parses the text of a private key file.
    public static func parse(_ text: String, path: String) throws(Problem) -> SigningKey {
        var key: SigningKey?
        var declared: PublicKey?
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.drop(while: { $0 == " " || $0 == "\t" })
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            let parts = trimmed.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if parts[0] == privatePrefix, parts.count >= 2, let seed = bytesFromHex(parts[1]), let parsed = SigningKey(seed: seed) {
                key = parsed
            } else if let publicKey = PublicKey(text: trimmed) {
                declared = publicKey
            } else {
                throw Problem("\(path):\(number + 1): not a key line (expected '\(privatePrefix) <64 hex digits>')")
            }
        }
        guard let key else { throw Problem("\(path): no '\(privatePrefix)' line: not a CSP private key file") }
        if let declared, declared != key.publicKey {
            throw Problem("\(path): the public key line does not belong to the private key (file edited by hand?)")
        }
        return key
    }

    /// Loads a private key, refusing files that others can read (a key they can read is theirs).
    public static func load(_ path: String) throws(Problem) -> SigningKey {
        let contents: SmallFile.Contents
        do { contents = try SmallFile.read(path, limit: 4096) } catch { throw Problem("cannot read key \(path): \(error)") }
        guard contents.mode & 0o077 == 0 else {
            let mode = String(contents.mode, radix: 8)
            throw Problem("\(path) is readable by others (mode \(mode)): run chmod 600 \(path)")
        }
        return try parse(String(decoding: contents.bytes, as: UTF8.self), path: path)
    }

    /// Writes a new key file with mode 0600; never overwrites an existing key.
    public static func create(_ path: String, key: SigningKey = SigningKey()) throws(Problem) -> SigningKey {
        guard !SmallFile.exists(path) else { throw Problem("\(path) exists: remove it first if you really want a new key") }
        do { try SmallFile.write(path, Array(text(of: key).utf8), mode: 0o600) } catch {
            throw Problem("cannot write key \(path): \(error)")
        }
        return key
    }
}
