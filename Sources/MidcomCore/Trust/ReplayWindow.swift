/// The per-session sequence window of docs/PROTOCOL.md 7.3: the highest sequence seen and a
/// 64-entry bitmap below it. A request with a sequence already seen, or older than the window,
/// is a replay; the same sequence *and* nonce as the latest request is a retransmission (answered
/// again, never refused). 20 octets, inline in every session.
public struct ReplayWindow: Sendable, Equatable {
    public enum Verdict: Sendable, Equatable {
        case new
        case retransmission
        case replayed
    }

    public private(set) var highest: UInt32 = 0
    /// Bit i: sequence `highest - i` was seen (bit 0 is `highest` itself once anything was seen).
    private var seen: UInt64 = 0
    /// The nonce of the latest request: its answer, seen again, is a retransmission.
    public private(set) var latestNonce: UInt64 = 0

    public init() {}

    public static let size: UInt32 = 64

    public func check(sequence: UInt32, nonce: UInt64) -> Verdict {
        if seen == 0 { return .new }
        if sequence > highest { return .new }
        let age = highest - sequence
        guard age < Self.size else { return .replayed }
        if seen & (1 << UInt64(age)) == 0 { return .new }
        return age == 0 && nonce == latestNonce ? .retransmission : .replayed
    }

    public mutating func record(sequence: UInt32, nonce: UInt64) {
        if seen == 0 || sequence > highest {
            let shift = seen == 0 ? 64 : UInt64(sequence - highest)
            seen = shift >= 64 ? 1 : (seen << shift) | 1
            highest = sequence
            latestNonce = nonce
        } else {
            let age = highest - sequence
            if age < Self.size { seen |= 1 << UInt64(age) }
        }
    }
}
