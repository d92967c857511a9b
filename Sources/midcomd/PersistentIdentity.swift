import CSPTrust
import CSPWire
import MidcomCore
import SystemSupport

/// The middlebox's identity across restarts (docs/PROTOCOL.md 3.3, 6.5), kept in the state
/// directory (`StateDirectory=midcom` in the unit):
///
///     identity.key   its Ed25519 key (KeyFile format, mode 0600), created at the first start
///     epoch          a decimal counter, incremented at every start
///
/// The ID is the key's fingerprint (unless `[daemon] id` pins one), so it survives restarts; the
/// epoch changes at every start, because every start loses the sessions' pending requests and
/// replay windows, and hosts must re-signal.
enum PersistentIdentity {
    static func keyPath(in directory: String) -> String { "\(directory)/identity.key" }

    /// Loads (or, the first time, creates) the key; fails with one sentence an operator can act on.
    static func loadKey(directory: String) throws -> SigningKey {
        do {
            try SmallFile.makeDirectories(directory, mode: 0o700)
        } catch {
            throw DaemonError("cannot create the state directory \(directory): \(error) (set state-directory in [trust] or run with StateDirectory=)")
        }
        let path = keyPath(in: directory)
        do {
            return SmallFile.exists(path) ? try KeyFile.load(path) : try KeyFile.create(path)
        } catch {
            throw DaemonError("middlebox key: \(error)")
        }
    }

    static func load(configuration: MidcomConfiguration, directory: String) throws -> MiddleboxIdentity {
        let key = try loadKey(directory: directory)
        let epochPath = "\(directory)/epoch"
        var epoch = UInt32.random(in: 1...UInt32.max)
        if let contents = try? SmallFile.read(epochPath, limit: 64),
            let previous = UInt32(String(decoding: contents.bytes, as: UTF8.self).split(separator: "\n").first ?? "")
        {
            epoch = previous &+ 1 == 0 ? 1 : previous &+ 1
        }
        do {
            try SmallFile.write(epochPath, Array("\(epoch)\n".utf8), mode: 0o600)
        } catch {
            throw DaemonError("cannot record the epoch in \(epochPath): \(error)")
        }
        return MiddleboxIdentity(
            id: configuration.middleboxID ?? key.publicKey.fingerprint, epoch: epoch, name: configuration.middleboxName,
            key: key)
    }
}
