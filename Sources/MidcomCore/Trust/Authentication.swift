import CSPTrust
import CSPWire

/// Step 3 of the request pipeline (docs/PROTOCOL.md 6.2, 7): signatures, clock, replay window
/// and ownership by key. What a valid signer may *do* is policy, checked by the handlers.
extension GatewayEngine {
    /// A request signed without IDENTITY (docs/PROTOCOL.md 7.1) as signed by its session's key
    /// (or, addressed to us, by the key of its leg to our relay), when that key verifies it; nil
    /// when nothing does.
    func verifiedWithSessionKey(_ request: SignalingRequest) -> SignalingRequest? {
        let id = request.message.sessionID
        let legKey = request.isAddressedToUs ? relayLegs.leg(id, now: clock)?.key : nil
        guard let key = sessions.credentials(ofSession: id)?.ownerKey ?? legKey, let deferred = request.signature.deferred,
            deferred.verify(with: key)
        else { return nil }
        var verified = request
        verified.signature.status = .valid(key)
        return verified
    }

    /// nil lets the request on; an outcome refuses it. A request signed without IDENTITY has been
    /// resolved by `verifiedWithSessionKey` before.
    mutating func authenticate(_ request: SignalingRequest) -> SignalingOutcome? {
        let message = request.message
        let id = message.sessionID
        if message.type.isReply {
            // A reply whose signature is broken was altered or forged on the way: it must neither
            // install state here nor reach the host as if it were genuine.
            guard case .invalid(let why) = request.signature.status else { return nil }
            counters.authenticationFailures += 1
            return SignalingOutcome(verdict: .drop, event: "dropped \(message.type) \(hex(id)) from \(request.source): \(why)")
        }
        let session = sessions.credentials(ofSession: id)
        switch request.signature.status {
        case .absent:
            break
        case .invalid(let why):
            return authenticationFailed(request, why)
        case .needsSessionKey:
            // Resolved by `verifiedWithSessionKey` before; one that was not is refused.
            return authenticationFailed(request, "signed without IDENTITY, and not by the session's key")
        case .valid:
            break
        }
        if request.signer != nil, let refused = checkTimestamp(request) { return refused }
        // Ownership by key: a signed session answers only to its key (6.7). An intercepted
        // TEARDOWN is judged by handleTeardown (it travels on either way: it is the peer's too).
        let movingResponder = message.type == .rebind && request.signer != nil && request.signer == session?.responderKey
        if let owner = session?.ownerKey, request.signer != owner, !movingResponder,
            message.type != .teardown || request.isAddressedToUs
        {
            counters.authenticationFailures += 1
            return rejection(
                of: request, result: .authenticationFailed, reason: "session \(hex(id)) belongs to \(owner)",
                event: "refused \(message.type) \(hex(id)) from \(request.source): not signed by the session's \(owner)")
        }
        // The window is the owner's: another host's request is refused by ownership instead.
        let fromOwner = session.map { $0.owner == request.source.address } ?? true
        let window = session?.replay ?? tombstones[id]?.window
        // A session that ended has nothing to retransmit into: its latest request seen again is
        // a replay too (else a session that expired with its SETUP as the latest request would
        // come back from one captured datagram).
        let verdict = window?.check(sequence: message.sequence, nonce: message.nonce)
        if fromOwner, verdict == .replayed || (session == nil && verdict == .retransmission) {
            counters.replays += 1
            return rejection(
                of: request, result: .authenticationFailed, reason: "sequence \(message.sequence) already seen (replay)",
                event: "refused replayed \(message.type) \(hex(id)) seq \(message.sequence) from \(request.source)")
        }
        return nil
    }

    /// TIMESTAMP within the tolerance of our clock, and not from before our start (the windows of
    /// sessions we had then are gone, so older signatures could be replays).
    private mutating func checkTimestamp(_ request: SignalingRequest) -> SignalingOutcome? {
        let now = request.wallClock
        guard now > 0 else { return nil }  // no clock given (unit tests of other stages)
        guard let stamp = request.message.timestamp else {
            return authenticationFailed(request, "signed without TIMESTAMP")
        }
        let tolerance = UInt64(configuration.trust.timestampTolerance)
        if stamp + tolerance < now || stamp > now + tolerance {
            let skew = Int64(bitPattern: stamp &- now)
            return authenticationFailed(request, "TIMESTAMP \(skew > 0 ? "+" : "")\(skew)s from our clock (allowed ±\(tolerance)s)")
        }
        if stamp < startedAtWallClock {
            return authenticationFailed(request, "signed before this middlebox started (state lost): sign it again")
        }
        return nil
    }

    mutating func authenticationFailed(_ request: SignalingRequest, _ why: String) -> SignalingOutcome {
        counters.authenticationFailures += 1
        return rejection(
            of: request, result: .authenticationFailed, reason: why,
            event: "refused \(request.message.type) \(hex(request.message.sessionID)) from \(request.source): \(why)")
    }

    /// Whether `signer` satisfies `requirement` for a flow from `source` with `application`.
    func authorizes(_ requirement: SignatureRequirement, signer: PublicKey?, source: IPAddress, application: String?)
        -> Bool
    {
        switch requirement {
        case .none: return true
        case .anyKey: return signer != nil
        case .knownKeys:
            guard let signer else { return false }
            return configuration.trust.knownKeys.contains { $0.allows(signer, from: source, application: application) }
        }
    }

    // MARK: tombstones

    /// A session that ended keeps its replay window for a while, so its old requests cannot be
    /// replayed to create it again (signed ones are stale by TIMESTAMP after that).
    mutating func bury(_ session: Session, now: Instant) {
        guard session.state != .legacy else { return }
        if tombstones.count >= Self.maximumTombstones, let oldest = tombstoneOrder.removeFirst() {
            if tombstones[oldest.id]?.until == oldest.until { tombstones[oldest.id] = nil }
        }
        let until = now.adding(seconds: configuration.trust.timestampTolerance + 5)
        tombstones[session.id] = Tombstone(window: session.replay, until: until)
        tombstoneOrder.append(TombstoneEntry(id: session.id, until: until))
    }

    mutating func expireTombstones(now: Instant) {
        while let first = tombstoneOrder.first, first.until <= now {
            tombstoneOrder.removeFirst()
            if tombstones[first.id]?.until == first.until { tombstones[first.id] = nil }
        }
    }

    static let maximumTombstones = 100_000
}

/// What is left of a session that ended: its replay window, until `until`.
struct Tombstone: Sendable {
    var window: ReplayWindow
    var until: Instant
}

struct TombstoneEntry: Sendable {
    var id: UInt64
    var until: Instant
}

/// A first-in first-out queue over an array with a moving head: O(1) at both ends, compacted
/// when the consumed prefix dominates (no per-element allocation).
struct FIFO<Element: Sendable>: Sendable {
    private var storage: [Element] = []
    private var head = 0

    var count: Int { storage.count - head }
    var first: Element? { head < storage.count ? storage[head] : nil }

    mutating func append(_ element: Element) { storage.append(element) }

    @discardableResult
    mutating func removeFirst() -> Element? {
        guard head < storage.count else { return nil }
        let element = storage[head]
        head += 1
        if head > 1024, head * 2 > storage.count {
            storage.removeFirst(head)
            head = 0
        }
        return element
    }
}
