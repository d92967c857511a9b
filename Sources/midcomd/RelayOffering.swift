#if canImport(Glibc)
import Glibc
#endif
import CSPTrust
import CSPWire
import MidcomCore
import SystemSupport

/// What midcomd needs to offer relays (`[relay] enabled`, docs/ARCHITECTURE.md "Relayed
/// sessions"): the token key, from `relay.key` in the state directory (made at the first start
/// with relaying on, next to identity.key; midrelayd gets the same file by LoadCredential=), and
/// the check that `listen` names addresses this box has.
enum RelayOffering {
    static func keyPath(in directory: String) -> String { "\(directory)/relay.key" }

    /// The token key of `relay.key`, created for `signingKey` (the middlebox identity) when the
    /// file is missing or belongs to another identity key. midrelayd must be restarted after a
    /// new one is made: it holds the old token key.
    static func loadTokenKey(directory: String, signingKey: SigningKey, log: Log) throws -> RelayTokenKey {
        let path = keyPath(in: directory)
        let existed = SmallFile.exists(path)
        do {
            let file = try RelayKeyFile.loadOrCreate(path, for: signingKey)
            if !existed { log(.notice, "made the relay key \(path) (give it to midrelayd: LoadCredential=relay.key:\(path))") }
            return file.tokenKey
        } catch {
            throw DaemonError("relay key: \(error)")
        }
    }

    /// The `listen` endpoints whose address is not one of this box's (getifaddrs): an offer
    /// naming one would send hosts nowhere.
    static func foreignListenEndpoints(_ relay: RelayConfiguration) -> [CSPEndpoint] {
        let local = Set(Daemon.localAddresses().map(\.address))
        return relay.listen.filter { !local.contains($0.address) }
    }

    /// `midcomd --check`'s refusal of a `listen` address the box does not have, with the line of
    /// `listen` in `path` (nil when every address is here, or relaying is off).
    static func checkListen(_ configuration: MidcomConfiguration, path: String) -> ConfigError? {
        guard configuration.relay.enabled else { return nil }
        let foreign = foreignListenEndpoints(configuration.relay)
        guard !foreign.isEmpty else { return nil }
        let file = try? readConfigurationFile(path: path)
        let line = file?.tables.first { $0.name == "relay" }?.value("listen")?.line ?? 0
        return ConfigError(
            path: path, line: line,
            message: "[relay] listen: \(foreign.map(\.description).joined(separator: ", ")) \(foreign.count == 1 ? "is not an address" : "are not addresses") of this box",
            fix: "list addresses this box has (ip -brief address), or add them first")
    }
}
