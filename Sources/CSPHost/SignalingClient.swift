import CSPWire
import SystemSupport

/// The outcome of one signaling exchange, as the initiating host sees it.
public struct SignalingResult: Sendable {
    public var reply: CSPMessage
    /// Where the reply came from: the peer, or a middlebox that answered itself.
    public var from: CSPEndpoint
    public var attempts: Int
    public var roundTripSeconds: Double
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
        let bytes: [UInt8]
        do { bytes = try request.serialize() } catch { throw .encoding(error) }
        let clock = ContinuousClock()
        let start = clock.now
        var timeout = initialTimeout
        for attempt in 1...attempts {
            do {
                try socket.send(bytes, to: destination)
                let deadline = clock.now.advanced(by: timeout)
                while clock.now < deadline {
                    guard let (data, from) = try socket.receive(timeout: clock.now.duration(to: deadline)) else { break }
                    guard let reply = try? CSPMessage.parse(data), reply.sessionID == request.sessionID,
                        reply.nonce == request.nonce, reply.type != request.type
                    else { continue }  // stray or forged datagrams do not end the exchange
                    let elapsed = start.duration(to: clock.now)
                    return SignalingResult(
                        reply: reply, from: from, attempts: attempt,
                        roundTripSeconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
                }
            } catch {
                throw .socket(error)
            }
            timeout = timeout * 2
        }
        throw .noAnswer(destination: destination, attempts: attempts)
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
        default:
            return nil
        }
    }

    func answer(_ request: CSPMessage, type: CSPMessageType, result: CSPResultCode, tlvs: [CSPTLV]) -> CSPMessage {
        CSPMessage(type: type, result: result, sessionID: request.sessionID, nonce: request.nonce, sequence: request.sequence, tlvs: tlvs)
    }
}
