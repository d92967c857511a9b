import CSPTrust
import CSPWire

/// Step 4 of the request pipeline (docs/PROTOCOL.md 6.6): before a message creates state for an
/// address, the address proves it receives what is sent to it by echoing a CHALLENGE-TOKEN.
///
/// Challenged are the two messages that make this middlebox install state for an address: a
/// SETUP (for its sender, the session's owner) and an ACCEPT (for its sender, the responder —
/// else whoever wrote the SETUP could forge the responder's ACCEPT, having chosen its nonce).
/// Tokens are stateless; what is kept is only the outcome of a proof: "this address answered for
/// this key" (or, unsigned, "for this session"), for `validated-lifetime` seconds.
extension GatewayEngine {
    /// Whether the mode challenges anything now (`auto`: only above the pending threshold).
    /// Tested in the pipeline before `needsChallenge` is called: the call from the mutating
    /// pipeline copies the whole engine (see `isFromOwner`), which is wasted when challenges are off.
    @inline(__always)
    var challengesInForce: Bool {
        switch configuration.trust.challenge {
        case .never: false
        case .auto: sessions.pendingCount >= configuration.trust.challengeThreshold
        case .newSources, .always: true
        }
    }

    /// Whether `request` must be challenged before it may create state.
    func needsChallenge(_ request: SignalingRequest, now: Instant) -> Bool {
        guard challengesInForce else { return false }
        let message = request.message
        let session = sessions[id: message.sessionID]
        switch message.type {
        case .setup:
            if let session, session.owner == request.source.address {
                // The session's own sender again: a retransmission of a request we already let
                // through, or a re-SETUP of a session whose address was proved.
                if session.state != .pending { return false }
                if session.pending?.nonce == message.nonce { return false }
            }
        case .rebind, .addPath, .deny:
            // The new address must prove itself (docs/PROTOCOL.md 6.6, 6.7), and a victim its own
            // address before it filters traffic to it (6.8); unsigned ones are refused by their
            // handlers without costing a CHALLENGE.
            if request.signer == nil { return false }
        case .accept, .mapped:
            // Only an ACCEPT that would install something here needs its sender proved: one for
            // a request we forwarded, from a responder not proved for this session yet.
            guard let session, let pending = session.pending, pending.nonce == message.nonce, !request.isAddressedToUs else {
                return false
            }
            // The owner answering its responder's REBIND proved its address when it set up.
            if pending.fromResponder, session.owner == request.source.address { return false }
            if session.state != .pending,
                Self.responder(of: pending.flow, incoming: session.incoming)
                    == Self.responder(of: session.flow, incoming: session.incoming)
            {
                return false  // a REFRESH or re-SETUP answered by the responder proved at admission
            }
        default:
            return false
        }
        return !isValidated(request.source.address, key: request.signer, sessionID: message.sessionID, now: now)
    }

    /// Whether `address` proved itself for `key` (signed) or for this session (unsigned).
    func isValidated(_ address: IPAddress, key: PublicKey?, sessionID: UInt64, now: Instant) -> Bool {
        // For this session: proved with this key, or without one (a proof of the address for the
        // session holds whoever signs the session's messages).
        for proofKey in key == nil ? [key] : [key, nil] {
            if let until = validated[ValidatedSource(address: address, key: proofKey, sessionID: sessionID)], now < until {
                return true
            }
        }
        guard let key, configuration.trust.challenge != .always else { return false }
        if let until = validated[ValidatedSource(address: address, key: key, sessionID: 0)], now < until { return true }
        return false
    }

    /// CHALLENGE for `request`, sent to its sender in the name of the other end (so it passes
    /// the conntrack and NAT state between us and the sender), within the reply budget and at
    /// most 3× the request's size. The request itself goes no further: the sender repeats it
    /// after its RESPONSE.
    mutating func challenge(_ request: SignalingRequest) -> SignalingOutcome {
        let message = request.message
        // A responder is challenged from our own address: in the initiator's name the CHALLENGE
        // would carry an address the responder may have no route to (the inside address behind
        // a NAT). Its RESPONSE then comes to us on a new 5-tuple, which a NAT on its side may
        // map to another port: the token is bound to its address only.
        let responder = message.type.isReply
        let token = challengeTokens.mint(
            sessionID: message.sessionID, nonce: message.nonce, address: request.source.address,
            port: responder ? 0 : request.source.port, now: request.wallClock)
        let record = CSPMiddleboxRecord(middleboxID: identity.id, epoch: identity.epoch, decision: .challenged, grantedLifetime: 0)
        let challenge = CSPMessage(
            type: .challenge, flags: .fromMiddlebox, result: .challengeRequired, sessionID: message.sessionID,
            nonce: message.nonce, sequence: message.sequence, tlvs: [.challengeToken(token), .middleboxRecord(record)])
        // A CHALLENGE (at most 28 + 36 + 22 octets) is never larger than 3x a request that
        // parsed (a SETUP has at least 46): only the budget applies.
        let second = clock.wholeSeconds
        if challengeLog.second != second { challengeLog = (second, 0) }
        challengeLog.count += 1
        let describe = describesEvents && challengeLog.count <= 10
        guard hasAnswered(request.source.address) || replyBudget.spend(to: request.source.address, atSecond: clock.wholeSeconds)
        else {
            counters.challengesLimited += 1
            return SignalingOutcome(
                verdict: .drop,
                event: describe ? "dropped \(message.type) \(hex(message.sessionID)) from \(request.source): unproved source, challenge budget spent" : nil)
        }
        counters.challengesSent += 1
        return SignalingOutcome(
            verdict: .drop,
            reply: OutgoingMessage(message: challenge, destination: request.source, source: responder ? nil : request.destination),
            event: describe ? "challenged \(message.type) \(hex(message.sessionID)) from \(request.source)" : nil)
    }

    /// A middlebox nearer a host challenged an answer we gave in our own name (an ACCEPT for a
    /// pinhole or for a listening server behind us, docs/PROTOCOL.md 6.6): we echo the token, and
    /// the host's retransmitted request gets our answer again, now from a proved address. Stateless
    /// (nothing tells a forged CHALLENGE from a real one), so the RESPONSE, never larger than the
    /// CHALLENGE, is within the reply budget like every answer to an unproved address.
    mutating func answerChallenge(_ request: SignalingRequest) -> SignalingOutcome {
        let challenge = request.message
        guard challenge.flags.contains(.fromMiddlebox), let token = challenge.challengeToken else {
            return SignalingOutcome(verdict: .drop, event: "dropped CHALLENGE \(hex(challenge.sessionID)) addressed to us by \(request.source)")
        }
        guard hasAnswered(request.source.address) || replyBudget.spend(to: request.source.address, atSecond: clock.wholeSeconds) else {
            counters.repliesLimited += 1
            return SignalingOutcome(verdict: .drop)
        }
        let response = CSPMessage(
            type: .response, sessionID: challenge.sessionID, nonce: challenge.nonce, sequence: challenge.sequence,
            tlvs: [.challengeToken(token)])
        return SignalingOutcome(
            verdict: .drop, reply: OutgoingMessage(message: response, destination: request.source),
            event: "CHALLENGE \(hex(challenge.sessionID)) from \(request.source) for our answer: RESPONSE sent")
    }

    /// RESPONSE: if its token is ours and was minted for this very sender, the sender's address
    /// is proved; the RESPONSE ends here. Someone else's token (a middlebox further along, or
    /// the peer) travels on unchanged.
    mutating func handleResponse(_ request: SignalingRequest, now: Instant) -> SignalingOutcome {
        let message = request.message
        if case .invalid = request.signature.status {
            counters.authenticationFailures += 1
            return SignalingOutcome(verdict: .drop, event: "dropped RESPONSE \(hex(message.sessionID)) with a bad signature")
        }
        let source = request.source
        guard let token = message.challengeToken,
            [source.port, 0].contains(where: {
                challengeTokens.verify(
                    token, sessionID: message.sessionID, nonce: message.nonce, address: source.address, port: $0,
                    now: request.wallClock)
            })
        else {
            if request.isAddressedToUs {
                counters.challengesFailed += 1
                return SignalingOutcome(verdict: .drop, event: "dropped RESPONSE \(hex(message.sessionID)) from \(request.source): not our token")
            }
            return SignalingOutcome(verdict: .forward)
        }
        let trust = configuration.trust
        let until = now.adding(seconds: trust.validatedLifetime)
        if validated.count >= Self.maximumValidated { pruneValidated(now: now) }
        if validated.count < Self.maximumValidated {
            let address = request.source.address
            validated[ValidatedSource(address: address, key: request.signer, sessionID: message.sessionID)] =
                now.adding(seconds: configuration.pendingTimeout)
            if let key = request.signer { validated[ValidatedSource(address: address, key: key, sessionID: 0)] = until }
        }
        counters.challengesPassed += 1
        if answered.count < Self.maximumValidated || answered[request.source.address] != nil {
            answered[request.source.address] = until
        }
        let signer = request.signer.map { " for \($0)" } ?? ""
        // The kernel queues this address's signaling ahead of unproved requests from now on.
        return SignalingOutcome(
            verdict: .drop, kernel: [.prove(request.source.address, lifetime: trust.validatedLifetime)],
            event: "\(request.source.address) proved its address\(signer)")
    }

    mutating func pruneValidated(now: Instant) {
        validated = validated.filter { now < $0.value }
        answered = answered.filter { now < $0.value }
    }

    /// Whether `address` answered one of our CHALLENGEs lately: it receives what we send and
    /// takes part in CSP, so what we send it is no reflection; the reply budget, which protects
    /// addresses that never asked, does not apply (else a busy server, whose every unsigned
    /// session is proved anew, could take only a few new sessions a second through us). The
    /// proof itself still binds to a key or a session (`validated`).
    func hasAnswered(_ address: IPAddress) -> Bool {
        guard let until = answered[address] else { return false }
        return clock < until
    }

    /// Whether the sender of `request` proved its address: by a CHALLENGE (for its key or this
    /// session), or as the owner of a session that is past pending (admitted after its proof).
    func isProved(_ request: SignalingRequest) -> Bool {
        let id = request.message.sessionID
        if configuration.trust.challenge != .never, let session = sessions[id: id], session.state != .pending,
            session.owner == request.source.address
        {
            return true
        }
        return isValidated(request.source.address, key: request.signer, sessionID: id, now: clock)
    }

    /// The most address proofs kept (about 100 octets each).
    static let maximumValidated = 262_144

    /// `reply` to the sender of `request` if the reply budget allows, trimmed to 3× the
    /// request's size (docs/PROTOCOL.md 6.6): the record's name and signature go first, then
    /// EPOCH, then REASON's text (a host can act on the result code alone). nil: nothing may be sent.
    mutating func budgeted(_ reply: CSPMessage, for request: SignalingRequest) -> CSPMessage? {
        if isProved(request) { return reply }
        let limit = 3 * request.wireLength
        var trimmed = reply
        var size = (try? trimmed.serialize().count) ?? .max
        let cuts: [(inout CSPMessage) -> Void] = [
            { m in m.tlvs = m.tlvs.map(Self.withoutRecordDetails) },
            { m in m.tlvs.removeAll { if case .epoch = $0 { true } else { false } } },
        ]
        for cut in cuts where size > limit {
            cut(&trimmed)
            size = (try? trimmed.serialize().count) ?? .max
        }
        if size > limit {
            // Last, REASON's text is shortened to what fits (a host can act on the code alone).
            let excess = size - limit
            trimmed.tlvs = trimmed.tlvs.map {
                guard case .reason(var reason) = $0 else { return $0 }
                var text = Substring(reason.text)
                while !text.isEmpty, reason.text.utf8.count - text.utf8.count < excess { text = text.dropLast() }
                reason.text = String(text)
                return .reason(reason)
            }
            size = (try? trimmed.serialize().count) ?? .max
        }
        guard size <= limit else { return nil }
        guard hasAnswered(request.source.address) || replyBudget.spend(to: request.source.address, atSecond: clock.wholeSeconds)
        else { return nil }
        return trimmed
    }

    private static func withoutRecordDetails(_ tlv: CSPTLV) -> CSPTLV {
        guard case .middleboxRecord(var record) = tlv else { return tlv }
        record.tlvs.removeAll {
            switch $0 {
            case .middleboxName, .identity, .signature: true
            default: false
            }
        }
        return .middleboxRecord(record)
    }
}

/// An address that answered a CHALLENGE: for a key (sessionID 0, any session of that key), or
/// for one session (unsigned requests have nothing else to bind the proof to).
struct ValidatedSource: Hashable, Sendable {
    var address: IPAddress
    var key: PublicKey?
    var sessionID: UInt64
}
