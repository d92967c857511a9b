import CSPTrust
import CSPWire
import SystemSupport

/// The outcome of one signaling exchange, as the initiating host sees it.
public struct SignalingResult: Sendable {
    public var reply: CSPMessage
    /// Where the reply came from: the peer, or a middlebox that answered itself.
    public var from: CSPEndpoint
    public var attempts: Int
    public var roundTripSeconds: Double
    /// Middleboxes that made us prove our address on the way (their IDs), in order.
    public var challengedBy: [UInt64] = []
    /// The reply's raw bytes (to check its signatures).
    public var bytes: [UInt8] = []
    /// When middleboxes answered for a responder that may not speak CSP (docs/PROTOCOL.md 6.9):
    /// the answers after the first, one per further middlebox, in arrival order.
    public var moreAnswers: [SignalingAnswer] = []
}

/// One more answer to the same request (same session ID and nonce).
public struct SignalingAnswer: Sendable {
    public var reply: CSPMessage
    public var from: CSPEndpoint
    public var bytes: [UInt8]
    public init(reply: CSPMessage, from: CSPEndpoint, bytes: [UInt8]) {
        self.reply = reply
        self.from = from
        self.bytes = bytes
    }
}

public enum SignalingError: Error, CustomStringConvertible, Sendable {
    case noAnswer(destination: CSPEndpoint, attempts: Int)
    case socket(SystemCallError)
    case encoding(CSPWireError)

    public var description: String {
        switch self {
        case .noAnswer(let d, let n):
            "no answer from \(d) after \(n) attempts (is `csp listen` running there, and does the path forward UDP port \(d.port)?)"
        case .socket(let e): "\(e)"
        case .encoding(let e): "cannot encode message: \(e)"
        }
    }
}

/// Sends CSP requests and waits for the matching reply (same session ID and nonce), retransmitting
/// with exponential backoff. Replies from middleboxes count: a firewall's REJECT ends the wait.
public struct SignalingClient: Sendable {
    public var socket: UDPSocket
    public var initialTimeout: Duration = .milliseconds(250)
    public var attempts = 4

    public init(socket: UDPSocket) { self.socket = socket }

    public func exchange(_ request: CSPMessage, with destination: CSPEndpoint) throws(SignalingError) -> SignalingResult {
        try exchange(request, with: destination, signer: nil)
    }

    /// Sends `request` and waits for its answer. A CHALLENGE for it (docs/PROTOCOL.md 6.6) is
    /// answered at once, transparently: RESPONSE with the token from this same socket (signed by
    /// `signer` when given, so the middlebox binds the proof to our key), then the request again.
    public func exchange(_ request: CSPMessage, with destination: CSPEndpoint, signer: SigningKey?) throws(SignalingError)
        -> SignalingResult
    {
        let bytes: [UInt8]
        do { bytes = try request.serialize() } catch { throw .encoding(error) }
        let clock = ContinuousClock()
        let start = clock.now
        var timeout = initialTimeout
        var challengedBy: [UInt64] = []
        var attempt = 1
        do {
            try socket.send(bytes, to: destination)
            var deadline = clock.now.advanced(by: timeout)
            while true {
                guard let (data, from) = try socket.receive(timeout: max(.zero, clock.now.duration(to: deadline))) else {
                    guard attempt < attempts else { break }
                    attempt += 1
                    timeout = timeout * 2
                    try socket.send(bytes, to: destination)
                    deadline = clock.now.advanced(by: timeout)
                    continue
                }
                guard let reply = try? CSPMessage.parse(data), reply.sessionID == request.sessionID,
                    reply.nonce == request.nonce, reply.type != request.type
                else { continue }  // stray or forged datagrams do not end the exchange
                if reply.type == .challenge, let token = reply.challengeToken, challengedBy.count < Self.maximumChallenges {
                    challengedBy.append(reply.records.first?.middleboxID ?? 0)
                    try answerChallenge(token, of: request, signer: signer, to: from)
                    try socket.send(bytes, to: destination)
                    deadline = clock.now.advanced(by: timeout)
                    continue
                }
                let elapsed = start.duration(to: clock.now)
                var result = SignalingResult(
                    reply: reply, from: from, attempts: attempt,
                    roundTripSeconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18,
                    challengedBy: challengedBy, bytes: data)
                if reply.flags.contains(.legacyResponder) {
                    result.moreAnswers = try collectMoreAnswers(
                        to: request, bytes: bytes, destination: destination, signer: signer, first: reply, firstAfter: elapsed,
                        challengesLeft: Self.maximumChallenges - challengedBy.count, clock: clock)
                }
                return result
            }
        } catch let error as SystemCallError {
            throw .socket(error)
        } catch {
            throw .encoding(error as? CSPWireError ?? CSPWireError(.truncated, at: 0))
        }
        throw .noAnswer(destination: destination, attempts: attempts)
    }

    /// At most this many CHALLENGEs answered per exchange (one per middlebox on a long path).
    public static let maximumChallenges = 8

    /// Each middlebox that answers for a responder without CSP answers on its own; the farther
    /// ones a little later, and one may CHALLENGE us first (answered as in `exchange`; the
    /// nearer ones then see our request again and answer again: one answer per middlebox is
    /// kept, by the record of the middlebox that sent it). We listen until none came for twice
    /// the first answer's round trip (at least 150 ms), at most 2 s and 16 answers: enough for a
    /// path of CSP middleboxes, bounded against a flood of forged answers.
    func collectMoreAnswers(
        to request: CSPMessage, bytes: [UInt8], destination: CSPEndpoint, signer: SigningKey?, first: CSPMessage,
        firstAfter: Duration, challengesLeft: Int, clock: ContinuousClock
    ) throws -> [SignalingAnswer] {
        let quiet = max(.milliseconds(150), firstAfter * 2)
        let end = clock.now.advanced(by: .seconds(2))
        var deadline = min(end, clock.now.advanced(by: quiet))
        var answers: [SignalingAnswer] = []
        var answered: Set<UInt64> = [first.records.first?.middleboxID ?? 0]
        var challengesLeft = challengesLeft
        while answers.count < 16, let (data, from) = try socket.receive(timeout: max(.zero, clock.now.duration(to: deadline))) {
            if let reply = try? CSPMessage.parse(data), reply.sessionID == request.sessionID, reply.nonce == request.nonce,
                reply.type != request.type
            {
                if reply.type == .challenge {
                    if let token = reply.challengeToken, challengesLeft > 0 {
                        challengesLeft -= 1
                        try answerChallenge(token, of: request, signer: signer, to: from)
                        try socket.send(bytes, to: destination)
                        deadline = min(end, clock.now.advanced(by: quiet))
                    }
                } else if answered.insert(reply.records.first?.middleboxID ?? 0).inserted {
                    answers.append(SignalingAnswer(reply: reply, from: from, bytes: data))
                    deadline = min(end, clock.now.advanced(by: quiet))
                }
            }
            if clock.now >= deadline { break }
        }
        return answers
    }

    /// RESPONSE with `token` from this socket, signed like the request when it was.
    func answerChallenge(_ token: [UInt8], of request: CSPMessage, signer: SigningKey?, to middlebox: CSPEndpoint) throws {
        var response = CSPMessage(
            type: .response, sessionID: request.sessionID, nonce: request.nonce, sequence: request.sequence,
            tlvs: [.challengeToken(token)])
        if let signer, let timestamp = request.timestamp {
            response = try response.signed(by: signer, timestamp: timestamp)
        }
        try socket.send(try response.serialize(), to: middlebox)
    }
}

/// How a responding host answers requests (the `csp listen` agent): pure, so it is unit-tested.
public struct ResponderPolicy: Sendable {
    /// Ports this host accepts flows to; nil = all.
    public var acceptedPorts: Set<UInt16>?
    public var maximumLifetime: UInt32 = 3600
    public var rejectReason = "not accepted by the responder"

    public init(acceptedPorts: Set<UInt16>? = nil) { self.acceptedPorts = acceptedPorts }

    /// The reply to a received request, or nil when none is due (replies). TEARDOWN is answered with
    /// ACCEPT and lifetime 0 (docs/PROTOCOL.md 5.6).
    public func reply(to request: CSPMessage) -> CSPMessage? {
        switch request.type {
        case .setup, .refresh:
            // A REFRESH names its session only; the FLOW was checked when the session was set up.
            if request.type == .setup {
                guard let flow = request.flow else {
                    return answer(
                        request, type: .reject, result: .malformedMessage, tlvs: [.reason(CSPReason(text: "SETUP without FLOW"))])
                }
                let listening = request.requestedAction?.contains(.listen) ?? false
                if let ports = acceptedPorts, !listening, !ports.contains(flow.destinationPort) {
                    return answer(request, type: .reject, result: .policyDenied, tlvs: [.reason(CSPReason(text: rejectReason))])
                }
            }
            let lifetime = min(request.lifetime ?? 60, maximumLifetime)
            return answer(request, type: .accept, result: .success, tlvs: [.lifetime(lifetime)])
        case .teardown:
            return answer(request, type: .accept, result: .success, tlvs: [.lifetime(0)])
        case .rebind, .addPath, .removePath:
            // The session moves or gains a path; this agent keeps no per-session state to update.
            let lifetime = min(request.lifetime ?? 60, maximumLifetime)
            return answer(request, type: .accept, result: .success, tlvs: [.lifetime(lifetime)])
        default:
            return nil
        }
    }

    /// The RESPONSE to a middlebox's CHALLENGE of a reply we sent (`sent`): same session, nonce
    /// and sequence, the token echoed. The caller sends it to the CHALLENGE's source, then sends
    /// `sent` again.
    public static func response(to challenge: CSPMessage, for sent: CSPMessage) -> CSPMessage? {
        guard challenge.type == .challenge, let token = challenge.challengeToken, challenge.sessionID == sent.sessionID,
            challenge.nonce == sent.nonce
        else { return nil }
        return CSPMessage(
            type: .response, sessionID: sent.sessionID, nonce: sent.nonce, sequence: sent.sequence, tlvs: [.challengeToken(token)])
    }

    func answer(_ request: CSPMessage, type: CSPMessageType, result: CSPResultCode, tlvs: [CSPTLV]) -> CSPMessage {
        CSPMessage(type: type, result: result, sessionID: request.sessionID, nonce: request.nonce, sequence: request.sequence, tlvs: tlvs)
    }
}
