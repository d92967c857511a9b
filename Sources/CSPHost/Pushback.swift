import CSPTrust
import CSPWire

/// The victim's side of DoS pushback (docs/PROTOCOL.md 6.8, docs/PUSHBACK.md).
public enum Pushback {
    /// A signed DENY: drop what `prefix`/`length` sends to this host (protocol and destination
    /// port: nil = any) for `lifetime` seconds (0 removes). `filterID` names the filter: reuse it,
    /// with a higher `sequence`, to refresh or remove it. Send it towards the attack (an address
    /// inside the prefix), from the address to protect. `rateLimit`: ask for the middleboxes'
    /// rate limit instead of dropping everything.
    public static func deny(
        prefix: IPAddress, length: UInt8, proto: IPProtocol?, port: UInt16?, lifetime: UInt32, filterID: UInt64,
        sequence: UInt32, key: SigningKey, timestamp: UInt64, rateLimit: Bool = false
    ) throws(CSPWireError) -> CSPMessage {
        let source = CSPDenySource(
            prefix: prefix, prefixLength: length, proto: proto ?? IPProtocol(rawValue: 0), port: port ?? 0, rateLimit: rateLimit)
        return try CSPMessage(
            type: .deny, flags: .recordRoute, sessionID: filterID, nonce: secureRandomUInt64(), sequence: sequence,
            tlvs: [.denySource(source), .lifetime(lifetime)]
        ).signed(by: key, timestamp: timestamp)
    }
}
