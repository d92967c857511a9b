import CSPTrust
import CSPWire

/// Who this middlebox is on the wire: its records and ANNOUNCEs carry these.
public struct MiddleboxIdentity: Sendable, Equatable {
    public var id: UInt64
    /// Chosen anew at every start; hosts that see it change know state was lost and re-signal.
    public var epoch: UInt32
    public var name: String
    /// Signs our records (docs/PROTOCOL.md 7.2); nil: records go unsigned.
    public var key: SigningKey?

    public init(id: UInt64, epoch: UInt32, name: String, key: SigningKey? = nil) {
        self.id = id
        self.epoch = epoch
        self.name = name
        self.key = key
    }

    public static func == (a: MiddleboxIdentity, b: MiddleboxIdentity) -> Bool {
        a.id == b.id && a.epoch == b.epoch && a.name == b.name && a.key?.publicKey == b.key?.publicKey
    }
}

/// What to do with an intercepted signaling packet.
public enum SignalingVerdict: Sendable, Equatable {
    /// Let it continue unchanged.
    case forward
    /// Let it continue with this CSP message as its new UDP payload (a record was appended).
    case forwardRewritten([UInt8])
    case drop
}

/// A CSP message this middlebox sends itself (e.g. REJECT), to the given endpoint.
public struct OutgoingMessage: Sendable, Equatable {
    public var message: CSPMessage
    public var destination: CSPEndpoint
    /// The source to send from: the responder's address and CSP port when the middlebox answers an
    /// intercepted request in the responder's place (docs/PROTOCOL.md 2.3), so the reply passes the
    /// conntrack and NAT state between the host and us; nil = the middlebox's own address.
    public var source: CSPEndpoint? = nil

    public init(message: CSPMessage, destination: CSPEndpoint, source: CSPEndpoint? = nil) {
        self.message = message
        self.destination = destination
        self.source = source
    }
}

/// What the daemon does when the kernel refuses an outcome's changes, or when the packet that
/// carries the outcome cannot be rewritten. Decided by the engine together with the outcome, so
/// the daemon carries it out without re-deciding anything.
public enum KernelFailurePlan: Sendable, Equatable {
    /// Nothing depends on the changes (removals, drop-cache elements): they time out anyway.
    case ignore
    /// A legacy admission: the packet meets the operator's default policy instead.
    case defaultPolicy
    /// The packet or reply would claim state that does not exist: tell the engine to forget the
    /// session (`forgetFailed`), drop the packet and send `reply` instead of the outcome's reply.
    indirect case refuse(sessionID: UInt64, reply: OutgoingMessage?)
    /// `refuse` for an intercepted ACCEPT: the REJECT that replaces it is described, and built
    /// only when the kernel does refuse (building it for every ACCEPT was six allocations per
    /// admitted session, figure 4).
    indirect case refuseAnswer(sessionID: UInt64, rejection: AnswerRejection)

    /// What `refuse` and `refuseAnswer` say: the session to forget and the message to send.
    public var refusal: (sessionID: UInt64, reply: OutgoingMessage?)? {
        switch self {
        case .ignore, .defaultPolicy: nil
        case .refuse(let sessionID, let reply): (sessionID, reply)
        case .refuseAnswer(let sessionID, let rejection): (sessionID, rejection.outgoing)
        }
    }
}

/// REJECT (middlebox-unavailable) in the responder's name for an answer whose state the kernel
/// refused: the host must not act on an ACCEPT for state that is not there.
public struct AnswerRejection: Sendable, Equatable {
    /// The refused answer's session, nonce and sequence.
    public var sessionID: UInt64
    public var nonce: UInt64
    public var sequence: UInt32
    /// The host the answer was going to, and the responder it came from.
    public var host: CSPEndpoint
    public var responder: CSPEndpoint
    /// Ours, for the record.
    public var middleboxID: UInt64
    public var epoch: UInt32
    public var middleboxName: String
    /// Signs the record when we sign records (`GatewayEngine.sealed`): a host that pins our key
    /// checks the REJECT's record as it would have checked the ACCEPT's.
    public var signer: SigningKey?

    public init(
        sessionID: UInt64, nonce: UInt64, sequence: UInt32, host: CSPEndpoint, responder: CSPEndpoint, middleboxID: UInt64,
        epoch: UInt32, middleboxName: String, signer: SigningKey? = nil
    ) {
        self.sessionID = sessionID
        self.nonce = nonce
        self.sequence = sequence
        self.host = host
        self.responder = responder
        self.middleboxID = middleboxID
        self.epoch = epoch
        self.middleboxName = middleboxName
        self.signer = signer
    }

    public static func == (a: AnswerRejection, b: AnswerRejection) -> Bool {
        a.sessionID == b.sessionID && a.nonce == b.nonce && a.sequence == b.sequence && a.host == b.host
            && a.responder == b.responder && a.middleboxID == b.middleboxID && a.epoch == b.epoch
            && a.middleboxName == b.middleboxName && a.signer?.publicKey == b.signer?.publicKey
    }

    /// The REJECT, built now.
    public var outgoing: OutgoingMessage {
        var record = GatewayEngine.record(middleboxID: middleboxID, epoch: epoch, name: middleboxName, decision: .rejected, lifetime: 0)
        var reject = CSPMessage(
            type: .reject, flags: .fromMiddlebox, result: .middleboxUnavailable, sessionID: sessionID, nonce: nonce,
            sequence: sequence, tlvs: [.reason(CSPReason(retryAfter: 5, text: "middlebox could not install state")), .epoch(epoch)])
        if let signer { record = record.signed(by: signer, header: reject.headerForSigning) }
        reject.tlvs.append(.middleboxRecord(record))
        return OutgoingMessage(message: reject, destination: host, source: responder)
    }
}

public struct SignalingOutcome: Sendable, Equatable {
    public var verdict: SignalingVerdict
    public var kernel: [KernelChange] = []
    /// Sent once `kernel` is programmed (a host must never act on state that is not there yet).
    public var reply: OutgoingMessage? = nil
    public var onKernelFailure: KernelFailurePlan = .ignore
    /// A human-readable line for the log, nil when the event is not worth logging.
    public var event: String? = nil
}

/// What the gateway does with the first packet of a flow nobody signaled.
public enum UnsignaledDecision: Sendable, Equatable {
    /// Drop this packet; `cache` (if any) drops the rest of the flow in the kernel.
    case drop(cache: KernelChange?)
    /// Leave it to the static ruleset's default policy.
    case defaultPolicy
    /// Admit it; if `change` fails, the packet meets the default policy.
    case admit(KernelChange)
}

/// The middlebox's signaling logic: pure, deterministic, no syscalls. The daemon parses requests,
/// feeds them and the time in, and carries out the verdicts, kernel changes and failure plans it
/// returns.
///
/// One pipeline for every request (docs/PROTOCOL.md 6.2), intercepted or addressed to us: loop
/// check → authentication → return routability → the message's handler (which asks policy).
/// Handlers live in Handlers/, one file per message family.
public struct GatewayEngine: Sendable {
    public internal(set) var sessions = SessionTable()
    public internal(set) var counters = EngineCounters()
    var natPorts: NATPortPool?
    /// ANNOUNCEs sent in the current second: discovery must not turn the gateway into a reflector.
    var announceWindow: (second: UInt64, count: Int) = (0, 0)
    /// Sources answered in the current second (at most one ANNOUNCE per source per second).
    var announcedSources: Set<IPAddress> = []
    public static let announcesPerSecond = 100
    public let identity: MiddleboxIdentity
    public internal(set) var policy: Policy {
        didSet { ruleHits = Array(repeating: 0, count: policy.configuration.rules.count + 1) }
    }
    /// How often each rule decided a request (by position), the default action last; counted
    /// from start or the last reload (the rules may have changed).
    public private(set) var ruleHits: [UInt64] = []

    /// The policy's decision for a request, counted for `midctl rules`.
    mutating func decidePolicy(flow: FlowTuple, application: String?, incoming: Bool, requestedLifetime: UInt32?) -> PolicyDecision {
        let decision = policy.decide(flow: flow, application: application, incoming: incoming, requestedLifetime: requestedLifetime)
        let slot = decision.ruleIndex ?? ruleHits.count - 1
        if slot >= 0, slot < ruleHits.count { ruleHits[slot] &+= 1 }
        return decision
    }
    var configuration: MidcomConfiguration { policy.configuration }
    /// Stateless CHALLENGE tokens (docs/PROTOCOL.md 6.6).
    var challengeTokens: ChallengeTokens
    /// Whether outcomes carry their log line (`SignalingOutcome.event`). The daemon turns it off
    /// while neither the log (info) nor a `midctl monitor` would show the lines: formatting a
    /// flow and an ID per message cost ~5 % of a signaled session's CPU (bench figure 4 profile).
    public var describesEvents = true

    /// `text` when outcomes are described, else nil (not even formatted).
    func describe(_ text: @autoclosure () -> String) -> String? { describesEvents ? text() : nil }

    /// CHALLENGEs described in the log this second: under a flood, building a line per spoofed
    /// request would cost more than answering it.
    var challengeLog: (second: UInt64, count: Int) = (0, 0)
    /// Addresses that answered a CHALLENGE, until when: for a key or a session, and (`answered`)
    /// as addresses the reply budget no longer needs to protect.
    var validated: [ValidatedSource: Instant] = [:]
    var answered: [IPAddress: Instant] = [:]
    /// Replay windows of sessions that ended recently.
    var tombstones: [UInt64: Tombstone] = [:]
    /// Admissions a REBIND replaced, kept until `at` (`rebind-grace`): in-flight packets from
    /// the old address still pass; then they go, with their connections. Oldest first.
    var retiring: [(at: Instant, flow: FlowTuple)] = []
    static let maximumRetiring = 65536
    /// DENY filters granted to victims (docs/PROTOCOL.md 6.8).
    public internal(set) var denies = DenyTable()
    /// Paths with a lifetime of their own, by deadline (lazy: an entry whose path was renewed
    /// or removed meanwhile is skipped when it comes up).
    var pathDeadlines = MinHeap<PathDeadline>()
    /// Beyond this many pending deadlines (renewals leave old entries until they come up), new
    /// paths simply live as long as their sessions.
    static let maximumPathDeadlines = 1 << 20

    struct PathDeadline: Comparable, Sendable {
        var at: Instant
        var sessionID: UInt64
        var pathID: PathID
        static func < (a: PathDeadline, b: PathDeadline) -> Bool { (a.at, a.sessionID, a.pathID) < (b.at, b.sessionID, b.pathID) }
    }
    var tombstoneOrder = FIFO<TombstoneEntry>()
    /// What we may still send to unproved addresses this second.
    var replyBudget: ReplyBudget
    /// The time of the message being handled (for checks deep in the handlers).
    var clock = Instant(nanoseconds: 0)
    /// Wall-clock second of our start: signed requests stamped earlier are refused (7.3).
    let startedAtWallClock: UInt64
    /// Where the NAT-PMP/PCP epoch counts from (RFC 6887 8.5): the start, or the moment an
    /// operator (a HA pair's new active box) said the mappings' state may be gone.
    var portMappingEpochStart: UInt64
    /// The key RELAY-TOKENs are minted with (relay.key, shared with midrelayd; docs/PROTOCOL.md
    /// 14.2); nil: no relay offers (a relayed flow is refused with middlebox-unavailable).
    let relayTokenKey: RelayTokenKey?
    /// Whether midrelayd can take sessions; set by the daemon.
    public var relayService: RelayServiceState = .available
    /// The targets of recent offers, for checking a leg SETUP's token (Relay/RelayOfferBook.swift).
    var relayOffers = RelayOfferBook()
    /// Legs to our relay answered, for their REFRESH and TEARDOWN.
    var relayLegs = RelayLegTable()

    /// `challengeSecret`: 32 random octets for the challenge tokens (random when nil);
    /// `startedAt`: the wall clock at start, seconds since 1970; `relayTokenKey`: relay.key's
    /// token key, with `[relay] enabled`.
    public init(
        configuration: MidcomConfiguration, identity: MiddleboxIdentity, challengeSecret: [UInt8]? = nil,
        startedAt: UInt64 = 0, relayTokenKey: RelayTokenKey? = nil
    ) {
        self.policy = Policy(configuration: configuration)
        self.ruleHits = Array(repeating: 0, count: configuration.rules.count + 1)
        self.identity = identity
        self.natPorts = configuration.nat.map { NATPortPool(range: $0.ports) }
        var generator = SystemRandomNumberGenerator()
        self.challengeTokens = ChallengeTokens(
            secret: challengeSecret ?? (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) })
        self.replyBudget = ReplyBudget(
            perSource: configuration.trust.repliesPerSource, perSecond: configuration.trust.repliesPerSecond)
        self.startedAtWallClock = startedAt
        self.portMappingEpochStart = startedAt
        self.relayTokenKey = relayTokenKey
    }

    // MARK: the request pipeline

    /// Acts on one parsed CSP message.
    public mutating func handle(_ request: SignalingRequest, now: Instant) -> SignalingOutcome {
        counters.signalingMessages += 1
        clock = now
        sessions.hashOnce(requestFor: request.message.sessionID)
        if request.isAddressedToUs { counters.localRequests += 1 }
        if let refused = checkLoop(request) { return refused }
        // A RESPONSE proves an address; it is not a request of its own (docs/PROTOCOL.md 6.6).
        if request.message.type == .response { return handleResponse(request, now: now) }
        // A SETUP a rendezvous relays to a hidden server travels off its flow's path: it is the
        // server's to answer, and nothing here may be installed for it (docs/PROTOCOL.md 10.7).
        // It comes inside the conntrack entry of the server's registration; a `rendezvous` record
        // on anything else is ignored (the SETUP is judged, and challenged, like any other).
        if request.message.type == .setup, !request.isAddressedToUs, request.insideConntrack,
            request.message.records.contains(where: { $0.decision == .rendezvous })
        {
            return SignalingOutcome(
                verdict: .forward, event: "SETUP \(hex(request.message.sessionID)) relayed by a rendezvous: passed on untouched")
        }
        // A request signed without IDENTITY goes on as signed by its session's key, verified here;
        // every other request goes on as it came (not copied: 176 octets, a dozen references).
        if !request.message.type.isReply, case .needsSessionKey = request.signature.status {
            guard let verified = verifiedWithSessionKey(request) else {
                return authenticationFailed(request, "signed without IDENTITY, and not by the session's key")
            }
            return authenticated(verified, now: now)
        }
        return authenticated(request, now: now)
    }

    /// Steps 3 to 5 for a request whose signature status is resolved.
    @inline(__always)
    private mutating func authenticated(_ request: SignalingRequest, now: Instant) -> SignalingOutcome {
        if let refused = authenticate(request) { return refused }
        if challengesInForce, needsChallenge(request, now: now) { return challenge(request) }
        let message = request.message
        guard !message.type.isReply else { return dispatch(request, now: now) }
        // Noted before the handler (a TEARDOWN's sequence must be in the window the session
        // leaves behind) and after it (a new session starts with this request's sequence).
        // Only the owner's requests move the window: a refused TEARDOWN from the owner's address
        // but not its key must not burn the owner's sequences.
        noteSequenceIfFromOwner(request)
        let outcome = dispatch(request, now: now)
        noteSequenceIfFromOwner(request)
        return outcome
    }

    /// Notes `request`'s sequence in its session's replay window when it comes from the owner
    /// (one lookup of the session for both questions). Not inlined: its two calls share the code.
    @inline(never)
    private mutating func noteSequenceIfFromOwner(_ request: SignalingRequest) {
        let message = request.message
        sessions.recordSequence(
            id: message.sessionID, sequence: message.sequence, nonce: message.nonce, ifOwnedBy: request.signer,
            address: request.source.address)
    }

    /// Whether `request` comes from its session's owner: its key for a signed session, its
    /// address for an unsigned one (true when there is no session yet).
    ///
    /// Inlined, like `checkLoop`: a non-mutating method that stays a call from a mutating one
    /// gets a copy of the whole engine (hundreds of octets, every reference in it retained and
    /// released) on every request (figure 4's memmove, docs/PERFORMANCE.md "Fifth pass").
    @inline(__always)
    func isFromOwner(_ request: SignalingRequest) -> Bool {
        sessions.isOwner(ofSession: request.message.sessionID, signer: request.signer, address: request.source.address)
    }

    /// Step 5: the message's handler.
    private mutating func dispatch(_ request: SignalingRequest, now: Instant) -> SignalingOutcome {
        let type = request.message.type
        if request.isAddressedToUs, type == .challenge { return answerChallenge(request) }
        if request.isAddressedToUs, type.isReply {
            // Replies are never answered with an error (docs/PROTOCOL.md 8); one sent to us is stray.
            return SignalingOutcome(verdict: .drop, event: "dropped \(type) addressed to us by \(request.source)")
        }
        switch type {
        case .setup: return handleSetup(request, now: now)
        case .accept, .mapped: return handleAccept(request, now: now)
        // A RELAY from a middlebox further along ends our pending state like a REDIRECT
        // (docs/PROTOCOL.md 14.2): the host's hop is signaled as a flow of its own.
        case .reject, .redirect, .challenge, .relay: return handleRefusal(request)
        case .refresh: return handleRefresh(request, now: now)
        case .teardown: return handleTeardown(request, now: now)
        case .rebind: return handleRebind(request, now: now)
        case .addPath: return handleAddPath(request, now: now)
        case .removePath: return handleRemovePath(request, now: now)
        case .deny: return handleDeny(request, now: now)
        default:
            counters.unknownTypes += 1
            if request.isAddressedToUs { return SignalingOutcome(verdict: .drop) }
            // Messages this version does not know still reach the far end: Midcom never breaks
            // end-to-end signaling it does not understand.
            return SignalingOutcome(verdict: .forward)
        }
    }

    /// Counts a datagram that did not parse as CSP. Malformed signaling is never answered: the
    /// sender cannot be told apart from a spoofed victim (docs/PROTOCOL.md 8).
    public mutating func malformed(from source: CSPEndpoint, addressedToUs: Bool, error: any Error) -> SignalingOutcome {
        counters.signalingMessages += 1
        counters.malformedMessages += 1
        let whose = addressedToUs ? "sent to us" : "from"
        return SignalingOutcome(verdict: .drop, event: "dropped malformed CSP \(whose) \(source): \(error)")
    }

    /// A request that already carries our record came round a routing loop.
    @inline(__always)
    func checkLoop(_ request: SignalingRequest) -> SignalingOutcome? {
        let message = request.message
        guard !message.type.isReply, message.records.contains(where: { $0.middleboxID == identity.id }) else { return nil }
        return SignalingOutcome(
            verdict: .drop, event: "dropped \(message.type) \(hex(message.sessionID)): routing loop (our record is in it)")
    }

    // MARK: sessions and their kernel state

    /// Stores `session` and returns the kernel changes from what `previous` needed to what it
    /// needs now; `refresh` also replaces the timeouts of objects it keeps.
    mutating func store(_ session: Session, previous: borrowing Session?, refresh: Bool = false) -> [KernelChange] {
        var before: [KernelObject] = []
        switch previous {
        case .some(let previous):
            if let old = previous.mapping, old != session.mapping { natPorts?.release(previous.flow.proto, old.port) }
            before = previous.kernelObjects
        case .none:
            break
        }
        before += supersede(by: session)
        sessions.upsert(session)
        // Nearly every new admission: nothing installed before, one element to install. The diff
        // would build the session's object array only to find that (an allocation per session).
        if before.isEmpty, let flow = session.soleAdmission {
            return [.install(.admission(flow), lifetime: session.grantedLifetime, tag: session.tag)]
        }
        return KernelChange.diff(
            from: before, to: session.kernelObjects, lifetime: session.grantedLifetime, tag: session.tag,
            refreshKept: refresh)
    }

    /// A flow belongs to one session: when its owner admits it under another session ID (say, a
    /// restarted host, or a session adopted without its tag), the older session gives way. Its
    /// objects are returned so the diff keeps what the new session shares with it instead of
    /// removing an element the new session needs.
    mutating func supersede(by session: Session) -> [KernelObject] {
        guard session.state != .pending else { return [] }
        // Nearly always the flow is held by this session or by none: asked by ID, without copying a
        // session out or building the path list.
        if session.pathCount == 1 {
            guard let holder = sessions.sessionID(for: session.flow), holder != session.id else { return [] }
        }
        var objects: [KernelObject] = []
        for path in session.paths {
            guard let other = sessions.session(for: path.flow), other.id != session.id, other.owner == session.owner else { continue }
            sessions.remove(id: other.id)
            bury(other, now: clock)
            releasePendingMapping(of: other)
            if let mapping = other.mapping { natPorts?.release(other.flow.proto, mapping.port) }
            objects += other.kernelObjects
            counters.superseded += 1
        }
        return objects
    }

    /// Removes a session, gives back its NAT port, and returns the changes that undo what it
    /// installed. Every way a session ends goes through here.
    @discardableResult
    mutating func discard(_ id: UInt64, now: Instant? = nil) -> [KernelChange] {
        guard let session = sessions.remove(id: id) else { return [] }
        return released(session, now: now)
    }

    mutating func released(_ session: Session, now: Instant? = nil) -> [KernelChange] {
        bury(session, now: now ?? clock)
        releasePendingMapping(of: session)
        if let mapping = session.mapping { natPorts?.release(session.flow.proto, mapping.port) }
        if let relay = session.relay { natPorts?.release(session.flow.proto, relay.port) }
        return session.kernelObjects.map { .remove($0) }
    }

    /// The kernel refused an outcome's changes (`KernelFailurePlan.refuse`): forget the session
    /// and return the removals of whatever it had installed before (best effort: they may fail too
    /// and then time out).
    public mutating func forgetFailed(sessionID: UInt64) -> [KernelChange] {
        counters.kernelFailures += 1
        return discard(sessionID)
    }

    /// The daemon could not put a rewritten message into its packet (the packet was dropped).
    public mutating func countRewriteFailure() { counters.rewriteFailures += 1 }

    // MARK: messages we send

    func record(_ decision: CSPDecision, lifetime: UInt32, extra: [CSPTLV] = []) -> CSPMiddleboxRecord {
        Self.record(middleboxID: identity.id, epoch: identity.epoch, name: identity.name, decision: decision, lifetime: lifetime, extra: extra)
    }

    /// Our record, from the identity's parts (for a REJECT built after the engine's call, `AnswerRejection`).
    static func record(
        middleboxID: UInt64, epoch: UInt32, name: String, decision: CSPDecision, lifetime: UInt32, extra: [CSPTLV] = []
    ) -> CSPMiddleboxRecord {
        CSPMiddleboxRecord(
            middleboxID: middleboxID, epoch: epoch, decision: decision, grantedLifetime: lifetime, tlvs: [.middleboxName(name)] + extra)
    }

    /// `message` with our records signed (IDENTITY and SIGNATURE nested last, docs/PROTOCOL.md
    /// 7.2), bound to its header. Only messages that travel to a host are sealed: replies and our
    /// own answers, whose records the host checks against the key it pins.
    func sealed(_ message: CSPMessage) -> CSPMessage {
        guard let key = identity.key, configuration.trust.signRecords else { return message }
        var sealed = message
        let header = message.headerForSigning
        sealed.tlvs = message.tlvs.map { tlv in
            guard case .middleboxRecord(let record) = tlv, record.middleboxID == identity.id, record.identity == nil else {
                return tlv
            }
            return .middleboxRecord(record.signed(by: key, header: header))
        }
        return sealed
    }

    /// The verdict for a message we changed: the new bytes, or a drop when the message no longer
    /// fits a datagram (forwarding the original would let the peer see a message without the
    /// record the engine believes it carries).
    mutating func rewritten(original: CSPMessage, _ forwarded: CSPMessage) -> SignalingVerdict {
        guard forwarded != original else { return .forward }
        let forwarded = forwarded.type.isReply ? sealed(forwarded) : forwarded
        guard let bytes = try? forwarded.serialize(), bytes.count <= Self.maximumMessageLength else {
            counters.rewriteFailures += 1
            return .drop
        }
        return .forwardRewritten(bytes)
    }

    /// The largest CSP message we forward after appending a record: a UDP payload that still fits
    /// an IPv6 datagram of 64 KiB with its headers.
    static let maximumMessageLength = 65_000

    /// REJECT for `request`. An intercepted request is answered in the responder's name (from
    /// its address and port), a request to us from our own address. The sender is not proved:
    /// the REJECT is sent within the reply budget and 3× the request's size, or not at all.
    mutating func rejection(
        of request: SignalingRequest, result: CSPResultCode, reason: String, retryAfter: UInt32 = 0, event: String,
        kernel: [KernelChange] = []
    ) -> SignalingOutcome {
        let message = request.message
        let reject = CSPMessage(
            type: .reject, flags: .fromMiddlebox, result: result, sessionID: message.sessionID, nonce: message.nonce,
            sequence: message.sequence,
            tlvs: [
                .reason(CSPReason(retryAfter: retryAfter, text: reason)), .epoch(identity.epoch),
                .middleboxRecord(record(.rejected, lifetime: 0)),
            ])
        guard let bounded = budgeted(sealed(reject), for: request) else {
            counters.repliesLimited += 1
            return SignalingOutcome(verdict: .drop, kernel: kernel, event: event.isEmpty ? nil : event + " (REJECT not sent: reply budget)")
        }
        return SignalingOutcome(
            verdict: .drop, kernel: kernel,
            reply: OutgoingMessage(message: bounded, destination: request.source, source: request.destination),
            event: event)
    }
}

extension IPAddress {
    /// 0.0.0.0 or ::, used in FLOW for "any peer".
    public var isUnspecified: Bool { self == IPAddress(ipv4: 0) || self == IPAddress(ipv6: 0, 0) }
}
