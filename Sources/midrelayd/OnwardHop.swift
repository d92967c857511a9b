#if canImport(Glibc)
import Glibc
#endif
import CSPHost
import CSPSession
import CSPTrust
import CSPWire
import MidcomRelay
import Synchronization
import SystemSupport

/// Where hop k+1 goes, decided by the relay's own SETUP for it (PROTOCOL.md 14.3): straight to
/// the target (admitted, or no CSP on the path), or to the next relay that offered itself.
struct OnwardHop {
    var endpoint: CSPEndpoint
    /// The next relay's key (from its signed offer) and token; nil when hop k+1 is the last.
    var relayKey: PublicKey?
    var relayToken: [UInt8]?
    /// The socket bound to the source port the SETUP named (a last hop connects from it).
    var boundSocket: TCPSocket?

    var isLast: Bool { relayToken == nil }

    /// Signals relay:y → target with RELAYED-SESSION (S, k+1); without a signing key the relay
    /// cannot signal and connects straight to the target.
    static func decide(
        for open: HopOpen, signingKey: SigningKey?, silence: SilentTargets, cspPort: UInt16 = CSPMessage.defaultPort,
        log: (String) -> Void
    ) throws(RelaySessionTable.Refusal) -> OnwardHop {
        let target = open.target.endpoint
        guard let signingKey else { return OnwardHop(endpoint: target) }
        // Nothing on the path to this target answered a moment ago: do not wait 0.75 s again.
        if silence.isSilent(target.address) { return OnwardHop(endpoint: target) }
        let next = open.hop.hopIndex + 1
        let socket: TCPSocket
        let flow: FlowTuple
        do {
            let local = try UDPSocket.sourceAddress(toward: target)
            socket = try TCPSocket.bound(to: CSPEndpoint(address: local, port: 0))
            guard let port = socket.localEndpoint?.port else { throw SystemCallError(call: "getsockname", errno: EINVAL) }
            flow = FlowTuple(proto: .tcp, source: local, sourcePort: port, destination: target.address, destinationPort: target.port)
        } catch {
            throw RelaySessionTable.Refusal(.middleboxUnavailable, "hop \(next): \(error)", retryAfter: 5)
        }
        var action: CSPRequestedAction = [.admit, .allowRelay]
        if open.hop.flags.contains(.allowTerminating) { action.insert(.allowTerminating) }
        let request: CSPMessage
        do {
            request = try CSPMessage(
                type: .setup, flags: [.recordRoute, .legacyResponder], sessionID: secureRandomUInt64(), nonce: secureRandomUInt64(),
                sequence: 1,
                tlvs: [
                    .flow(flow), .lifetime(300), .requestedAction(action),
                    .relayedSession(CSPRelayedSession(sessionID: open.hop.sessionID, hopIndex: next,
                        flags: open.hop.flags.contains(.allowTerminating) ? .allowTerminating : [])),
                ]
            ).signed(by: signingKey, timestamp: UInt64(max(0, time(nil))))
        } catch {
            throw RelaySessionTable.Refusal(.policyDenied, "hop \(next): cannot sign the SETUP: \(error)")
        }
        var client: SignalingClient
        do { client = SignalingClient(socket: try UDPSocket(family: target.address.family, address: flow.source)) } catch {
            throw RelaySessionTable.Refusal(.middleboxUnavailable, "hop \(next): \(error)", retryAfter: 5)
        }
        // Where nothing on the path speaks CSP, silence is the answer: two attempts (0.75 s), as
        // `csp setup --responder auto` waits, keep that from delaying every relayed session long.
        client.attempts = 2
        let outcome: Result<SignalingResult, SignalingError>
        do { outcome = .success(try client.exchange(request, with: CSPEndpoint(address: target.address, port: cspPort), signer: signingKey)) } catch {
            outcome = .failure(error)
        }
        switch outcome {
        case .failure(.noAnswer):
            silence.remember(target.address)
            log("hop \(next): no CSP answer: straight to \(target)")
            return OnwardHop(endpoint: target, boundSocket: socket)
        case .failure(let error):
            throw RelaySessionTable.Refusal(.middleboxUnavailable, "hop \(next): \(error)", retryAfter: 5)
        case .success(let result):
            let reply = result.reply
            switch reply.type {
            case .accept, .mapped:
                return OnwardHop(endpoint: target, boundSocket: socket)
            case .relay:
                guard let record = reply.relayingRecord, let endpoint = record.relayEndpoint, let token = record.relayToken,
                    case .valid(let key) = SignatureCheck.check(result.bytes, message: reply, checkRecords: true).records
                        .first(where: { $0.middleboxID == record.middleboxID })?.status
                else { throw RelaySessionTable.Refusal(.policyDenied, "hop \(next): a relay offer without a signed record") }
                log("hop \(next): relayed by middlebox \(hex(record.middleboxID)) at \(endpoint.endpoint)")
                return OnwardHop(endpoint: endpoint.endpoint, relayKey: key, relayToken: token)
            case .redirect:
                throw RelaySessionTable.Refusal(.policyDenied, "hop \(next) redirected")
            default:
                throw RelaySessionTable.Refusal(reply.result, "hop \(next): \(reply.reason?.text ?? "\(reply.result)")", retryAfter: reply.reason?.retryAfter ?? 0)
            }
        }
    }
}

/// Targets whose onward SETUP went unanswered (no CSP middlebox between the relay and them), for a
/// minute: a relay would otherwise wait 0.75 s per session on a setup thread for the same silence.
/// A middlebox that appears meanwhile refuses or drops the unsignaled hop; after a minute the relay
/// asks again.
final class SilentTargets: Sendable {
    private let until = Mutex<[IPAddress: ContinuousClock.Instant]>([:])
    static let memory: Duration = .seconds(60)

    func isSilent(_ address: IPAddress) -> Bool {
        until.withLock { table in
            guard let expiry = table[address] else { return false }
            if expiry > .now { return true }
            table.removeValue(forKey: address)
            return false
        }
    }

    func remember(_ address: IPAddress) {
        until.withLock { table in
            if table.count >= 4096 { table.removeAll() }  // bounded: a flood of targets only costs waiting
            table[address] = .now + Self.memory
        }
    }
}
