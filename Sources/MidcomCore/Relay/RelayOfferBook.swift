import CSPTrust
import CSPWire

/// Whether the relay service (midrelayd) can take sessions: the daemon sets it from the relay's
/// control socket; while it is not `available`, flows policy relays are refused with a retryAfter
/// instead of an offer that cannot be used (docs/PROTOCOL.md 14.2: 129 or 128).
public enum RelayServiceState: Sendable, Equatable {
    case available
    /// midrelayd does not answer: REJECT 129 middlebox-unavailable.
    case unavailable(retryAfter: UInt32)
    /// midrelayd is at `max-sessions`: REJECT 128 resources-exhausted.
    case full(retryAfter: UInt32)
}

/// The targets of the RELAY offers this middlebox made, by token, until the tokens expire.
///
/// A host's leg SETUP to our relay endpoint (docs/PROTOCOL.md 14.2, step 2) copies the offer's
/// RELAY-TOKEN, and everything the token's MAC covers is in that SETUP — the session and hop
/// (its session ID or RELAYED-SESSION), the upstream key (its IDENTITY), the relay endpoint (its
/// FLOW's destination) — except the target, which only the offered SETUP named. The target is
/// kept here so that the leg's token can be checked in full with `RelayTokenKey.check`.
///
/// This is no session state: nothing is installed for an offer, nothing here grants anything by
/// itself (a forged token still fails the MAC), and the book is bounded: the oldest offer goes
/// first. After a restart it is empty, and a leg SETUP is refused until its host signals the
/// flow again and gets a new offer.
struct RelayOfferBook: Sendable {
    static let capacity = 65536

    struct Target: Sendable, Equatable {
        var proto: UInt8
        var endpoint: CSPEndpoint
        /// Seconds since 1970 when the token expires.
        var expiry: UInt64
    }

    private struct Entry: Sendable {
        var token: [UInt8]
        var expiry: UInt64
    }

    private var targets: [[UInt8]: Target] = [:]
    private var order = FIFO<Entry>()

    var count: Int { targets.count }

    /// Remembers the target of an offer whose token is `token`.
    mutating func note(_ token: [UInt8], target: Target, now: UInt64) {
        forgetExpired(now: now)
        while targets.count >= Self.capacity, let oldest = order.removeFirst() {
            if targets[oldest.token]?.expiry == oldest.expiry { targets[oldest.token] = nil }
        }
        targets[token] = target
        order.append(Entry(token: token, expiry: target.expiry))
    }

    /// The target of the offer that carried `token`, if it was ours and has not expired at `now`.
    mutating func target(of token: [UInt8], now: UInt64) -> Target? {
        forgetExpired(now: now)
        guard let target = targets[token], now <= target.expiry else { return nil }
        return target
    }

    private mutating func forgetExpired(now: UInt64) {
        // Offers are noted in time order with one token-lifetime, so the oldest expire first (a
        // reload that shortens the lifetime leaves some behind a while: bounded all the same).
        while let first = order.first, first.expiry < now {
            order.removeFirst()
            if targets[first.token]?.expiry == first.expiry { targets[first.token] = nil }
        }
    }
}

/// The legs to our relay we answered (docs/PROTOCOL.md 14.2, step 2), by session ID, until their
/// lifetime ends. The host keeps the hop's CSP session with us as its responder (step 3: REFRESH,
/// TEARDOWN, a repeated SETUP once the offer's token expired), and middleboxes between keep the
/// hop admitted as long as we answer. Like the offer book, no kernel state and bounded: when full,
/// a new leg is answered but not remembered (its host re-signals the flow when the hop's
/// admission ends).
struct RelayLegTable: Sendable {
    static let capacity = 65536

    struct Leg: Sendable, Equatable {
        /// The key that signed the leg SETUP: only it refreshes or ends the leg.
        var key: PublicKey
        var flow: FlowTuple
        /// The relayed session and hop the leg carries (the token's `S` and hop index).
        var relayedSession: UInt64
        var hopIndex: UInt8
        var expiresAt: Instant
    }

    private var legs: [UInt64: Leg] = [:]

    var count: Int { legs.count }

    /// The leg of session `id` while it lasts.
    func leg(_ id: UInt64, now: Instant) -> Leg? {
        guard let leg = legs[id], now < leg.expiresAt else { return nil }
        return leg
    }

    mutating func note(_ id: UInt64, _ leg: Leg, now: Instant) {
        if legs[id] == nil, legs.count >= Self.capacity { legs = legs.filter { now < $0.value.expiresAt } }
        guard legs[id] != nil || legs.count < Self.capacity else { return }
        legs[id] = leg
    }

    mutating func remove(_ id: UInt64) { legs[id] = nil }
}
