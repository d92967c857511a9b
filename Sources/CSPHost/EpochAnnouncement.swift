import CSPTrust
import CSPWire

/// What a session keeper makes of a datagram on the all-hosts group's CSP port: an unsolicited
/// ANNOUNCE of a middlebox's epoch (docs/PROTOCOL.md 5.7.1) is a reason to REFRESH at once, never
/// a fact. The REFRESH's answer, through the real path, decides whether to signal again; so a
/// forged announcement costs at most one REFRESH per `minimumInterval`, and changes no state.
/// Pure: the keeper feeds it datagrams and time.
public struct EpochAnnouncementGate: Sendable {
    /// Announcements are acted on at most this often (a flood of them is one REFRESH per interval).
    public static let minimumInterval: Duration = .seconds(2)
    /// Keys an announcement must be signed with (the keeper's --pin keys); empty: any, or none.
    public var pinned: [PublicKey]
    var lastCheck: ContinuousClock.Instant?

    public init(pinned: [PublicKey] = []) { self.pinned = pinned }

    public enum Decision: Sendable, Equatable {
        /// REFRESH now: `middlebox` announced `epoch`, which the session's path does not hold.
        case refreshNow(middlebox: UInt64, epoch: UInt32)
        /// Nothing to do, and why (for the keeper's log).
        case ignore(String)
    }

    /// The decision for one datagram; `path` is the session's middleboxes and their epochs.
    public mutating func consider(_ bytes: [UInt8], path: [UInt64: UInt32], now: ContinuousClock.Instant) -> Decision {
        guard let message = try? CSPMessage.parse(bytes), message.type == .announce, message.flags.contains(.fromMiddlebox),
            message.sessionID == 0, message.nonce == 0, message.records.count == 1, let record = message.records.first
        else { return .ignore("not an epoch announcement") }
        let check = SignatureCheck.check(bytes, message: message, checkRecords: true)
        switch check.records.first?.status {
        case .invalid(let why):
            return .ignore("announcement of \(hex(record.middleboxID)) with a bad signature: \(why)")
        case .valid(let key) where !pinned.isEmpty && !pinned.contains(key):
            return .ignore("announcement of \(hex(record.middleboxID)) signed by a key not pinned")
        case .unsigned where !pinned.isEmpty, nil where !pinned.isEmpty:
            return .ignore("unsigned announcement of \(hex(record.middleboxID)) (keys are pinned)")
        default:
            break
        }
        if path[record.middleboxID] == record.epoch { return .ignore("\(hex(record.middleboxID)) epoch \(record.epoch) already known") }
        if let lastCheck, lastCheck.duration(to: now) < Self.minimumInterval {
            return .ignore("announcement of \(hex(record.middleboxID)) within \(Self.minimumInterval) of the last one acted on")
        }
        lastCheck = now
        return .refreshNow(middlebox: record.middleboxID, epoch: record.epoch)
    }
}
