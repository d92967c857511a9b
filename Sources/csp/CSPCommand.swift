import ArgumentParser
import CommandLineSupport
import CSPHost
import CSPTrust
import CSPWire
import SystemSupport

#if canImport(Glibc)
import Glibc
#endif

/// `csp`: the end-host side of the Connection Signaling Protocol.
@main
struct CSPCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "csp",
        abstract: "Signal connections to the middleboxes on the path (Connection Signaling Protocol).",
        discussion: """
            Exit codes: 0 the request was accepted, 1 it was rejected (the reason is printed), \
            3 no answer, 4 redirected to a proxy (the target is printed), 5 a middlebox's record \
            failed the trust check (forged, or signed by another key than pinned or remembered), \
            2 usage error.
            """,
        version: midcomVersion,
        subcommands: [
            Setup.self, Refresh.self, Teardown.self, Rebind.self, AddPath.self, RemovePath.self, Keep.self, Listen.self,
            RendezvousService.self, Sessions.self, Deny.self, Discover.self, Keygen.self, Connect.self, Serve.self,
        ]
    )

    /// Exit 2 on usage errors, "unknown command" for a word that names none.
    static func main() { mainFollowingConventions() }
}

struct Common: ParsableArguments {
    @Option(help: "UDP port CSP agents listen on.")
    var cspPort: UInt16 = CSPMessage.defaultPort

    @Option(help: "Retransmissions before giving up.")
    var attempts: Int = 4

    @Flag(help: "Print the reply as one line of key=value pairs (for scripts).")
    var machine = false

    @Option(help: "Sign requests with this private key (made by `csp keygen`): the session belongs to it.")
    var key: String?

    @Option(help: "Trust only middleboxes whose records are signed by this key (csp-ed25519 <hex>; repeatable).")
    var pin: [String] = []

    @Option(help: "Remember each middlebox's key on first use in this file and report when it changes.")
    var knownMiddleboxes: String?

    @Option(help: "Where session sequence numbers are kept (default $CSP_STATE_DIR or ~/.local/state/csp).")
    var stateDir: String?

    func signingKey() throws -> SigningKey? {
        guard let key else { return nil }
        do { return try KeyFile.load(key) } catch { throw ValidationError("\(error)") }
    }

    func trust() throws -> MiddleboxTrust {
        let pins = try pin.map { line throws -> PublicKey in
            guard let key = PublicKey(text: line) else { throw ValidationError("--pin '\(line)' is not 'csp-ed25519 <64 hex digits>'") }
            return key
        }
        do { return try MiddleboxTrust(pinned: pins, knownFile: knownMiddleboxes) } catch { throw ValidationError("\(error)") }
    }

    var sessions: SessionStore { SessionStore(directory: stateDir) }
}

enum ExitStatus {
    static let accepted: Int32 = 0
    static let rejected: Int32 = 1
    static let noAnswer: Int32 = 3
    static let redirected: Int32 = 4
    static let untrusted: Int32 = 5
}

func parseProtocol(_ text: String) throws -> IPProtocol {
    guard let p = IPProtocol(name: text) else { throw ValidationError("unknown protocol '\(text)' (use udp, tcp, sctp or a number)") }
    return p
}

func parseEndpoint(_ text: String) throws -> CSPEndpoint {
    if let e = CSPEndpoint(parsing: text) { return e }
    throw ValidationError("'\(text)' is not address:port (IPv6 as [addr]:port)")
}


/// Sends `request` to `peer`'s CSP agent (signed with `--key`), answers CHALLENGEs on the way,
/// checks the reply's middlebox records against the trust store, prints what came back, and
/// returns the exit status.
func exchange(_ request: CSPMessage, with peer: IPAddress, from source: IPAddress? = nil, common: Common) throws -> Int32 {
    try exchangeWithReply(request, with: peer, from: source, common: common).status
}

/// Whether the responder is expected to speak CSP (docs/PROTOCOL.md 6.9).
enum ResponderMode: String, ExpressibleByArgument, CaseIterable {
    /// Ask the responder; when it stays silent for 0.75 s, ask the middleboxes to answer for it.
    case auto
    /// The responder speaks CSP: wait for it.
    case csp
    /// The responder does not speak CSP (an ordinary server): the middleboxes answer at once.
    case legacy
}

/// `exchange`, also returning the reply (nil when none came). With `responder` other than
/// `.csp`, middleboxes may answer for a responder without CSP, one answer each: they are
/// checked and reported together, and one refusal among them refuses the flow (the others'
/// admissions are torn down at once, so nothing stays behind).
func exchangeWithReply(
    _ request: CSPMessage, with peer: IPAddress, from source: IPAddress? = nil, common: Common, responder: ResponderMode = .csp
) throws
    -> (status: Int32, reply: CSPMessage?)
{
    // Sent from the flow's own address: middleboxes check that a host signals only its own flows.
    let socket = try UDPSocket(family: peer.family, address: source)
    var client = SignalingClient(socket: socket)
    client.attempts = responder == .auto ? min(2, common.attempts) : common.attempts
    let destination = CSPEndpoint(address: peer, port: common.cspPort)
    let key = try common.signingKey()
    var trust = try common.trust()
    var request = request
    if responder == .legacy { request.flags.insert(.legacyResponder) }
    func sign(_ message: CSPMessage) throws -> CSPMessage {
        guard let key else { return message }
        return try message.signed(by: key, timestamp: wallClockSeconds())
    }
    do {
        var result: SignalingResult
        do {
            result = try client.exchange(try sign(request), with: destination, signer: key)
        } catch SignalingError.noAnswer where responder == .auto {
            if !common.machine {
                print("no answer from \(peer) in 0.75 s: it may not speak CSP; asking the middleboxes on the path to answer for it")
            }
            request.flags.insert(.legacyResponder)
            request.nonce = secureRandomUInt64()
            request.sequence = common.sessions.nextSequence(for: request.sessionID, peer: peer)
            client.attempts = common.attempts
            result = try client.exchange(try sign(request), with: destination, signer: key)
        }
        let answers = [SignalingAnswer(reply: result.reply, from: result.from, bytes: result.bytes)] + result.moreAnswers
        var verdictByRecord: [UInt64: MiddleboxTrust.Verdict] = [:]
        var failed: (CSPMiddleboxRecord, MiddleboxTrust.Verdict)?
        for answer in answers {
            for (record, verdict) in trust.judge(answer.bytes, message: answer.reply) {
                verdictByRecord[record.middleboxID] = verdictByRecord[record.middleboxID] ?? verdict
                if verdict.isFailure, failed == nil { failed = (record, verdict) }
            }
        }
        try trust.save()
        // One refusal among the middleboxes' answers decides; else all their records together.
        var summary = result
        if let refusal = answers.first(where: { $0.reply.type != .accept && $0.reply.type != .mapped }) {
            summary.reply = refusal.reply
            summary.from = refusal.from
            summary.bytes = refusal.bytes
        } else if answers.count > 1 {
            summary.reply = mergedAnswer(answers.map(\.reply))
        }
        let verdicts = summary.reply.records.map { verdictByRecord[$0.middleboxID] ?? .unsigned }
        print(describe(summary, verdicts: verdicts, machine: common.machine))
        if answers.count > 1 || result.reply.flags.contains(.legacyResponder), !common.machine {
            print("  answered for the responder by \(answers.count) middlebox\(answers.count == 1 ? "" : "es") (it does not speak CSP)")
        }
        let admittedSomewhere = answers.contains { $0.reply.type == .accept || $0.reply.type == .mapped }
        func tearDown() throws {
            // Whatever the path installed for us goes again: we will not use it.
            let teardown = CSPMessage(
                type: .teardown, flags: request.flags.intersection(.legacyResponder), sessionID: request.sessionID,
                nonce: secureRandomUInt64(), sequence: common.sessions.nextSequence(for: request.sessionID, peer: peer))
            try? socket.send(try sign(teardown).serialize(), to: destination)
            common.sessions.forget(request.sessionID)
            printError("session \(hex(request.sessionID)) torn down")
        }
        if let (record, verdict) = failed {
            printError("middlebox \(hex(record.middleboxID)): \(verdict)")
            if admittedSomewhere { try tearDown() }
            return (ExitStatus.untrusted, summary.reply)
        }
        if summary.reply.type != .accept, summary.reply.type != .mapped, admittedSomewhere { try tearDown() }
        if summary.reply.type == .accept, summary.reply.lifetime != 0 {
            common.sessions.update(request.sessionID) { $0.records = summary.reply.records.map { ($0.middleboxID, $0.epoch) } }
        }
        switch summary.reply.type {
        case .accept: return (ExitStatus.accepted, summary.reply)
        case .redirect: return (ExitStatus.redirected, summary.reply)
        default: return (ExitStatus.rejected, summary.reply)
        }
    } catch let error as SignalingError {
        printError("\(error)")
        return (ExitStatus.noAnswer, nil)
    }
}

/// Several middleboxes' answers as one: the answer that came through the most middleboxes (it
/// carries their records too), plus the records of any middlebox it lacks. The effective
/// lifetime is then the smallest any of them granted.
func mergedAnswer(_ answers: [CSPMessage]) -> CSPMessage {
    guard var merged = answers.max(by: { $0.records.count < $1.records.count }) else { preconditionFailure("no answers") }
    var seen = Set(merged.records.map(\.middleboxID))
    for answer in answers {
        for record in answer.records where seen.insert(record.middleboxID).inserted {
            merged.tlvs.append(.middleboxRecord(record))
        }
    }
    return merged
}

func wallClockSeconds() -> UInt64 { UInt64(max(0, time(nil))) }

func describe(_ result: SignalingResult, verdicts: [MiddleboxTrust.Verdict] = [], machine: Bool) -> String {
    let reply = result.reply
    let middlebox = reply.flags.contains(.fromMiddlebox)
    if machine {
        var fields = [
            "type=\(reply.type)", "result=\(reply.result)", "session=\(hex(reply.sessionID))", "from=\(result.from)",
            "middlebox=\(middlebox)",
        ]
        if let lifetime = effectiveLifetime(of: reply) { fields.append("lifetime=\(lifetime)") }
        if let target = reply.redirectTarget { fields.append("redirect=\(target)") }
        if let mapped = mappedAddress(of: reply) { fields.append("mapped=\(mapped)") }
        if let reason = reply.reason { fields.append("reason=\"\(reason.text)\"") }
        fields.append("records=\(reply.records.count)")
        if !verdicts.isEmpty {
            let signers = zip(reply.records, verdicts).map { "\(hex($0.middleboxID)):\($1.word)" }
            fields.append("signers=\(signers.joined(separator: ","))")
        }
        if !result.challengedBy.isEmpty { fields.append("challenges=\(result.challengedBy.count)") }
        if case .valid(let key) = SignatureCheck.check(result.bytes, message: reply).status {
            fields.append("peer-key=\(hex(key.fingerprint))")
        }
        return fields.joined(separator: " ")
    }
    var lines: [String] = []
    let rtt = (result.roundTripSeconds * 10000).rounded() / 10
    var head = "\(reply.type) from \(result.from)\(middlebox ? " (middlebox)" : "") in \(rtt) ms"
    if reply.result != .success { head += ": \(reply.result)" }
    if let reason = reply.reason { head += ": \(reason.text)" + (reason.retryAfter > 0 ? " (retry after \(reason.retryAfter)s)" : "") }
    if reply.type == .accept, let lifetime = effectiveLifetime(of: reply) { head += ", lifetime \(lifetime)s" }
    if let target = reply.redirectTarget { head += ": redirect to \(target)" }
    lines.append(head)
    for id in result.challengedBy { lines.append("  challenged by middlebox \(hex(id)): proved our address") }
    switch SignatureCheck.check(result.bytes, message: reply).status {
    case .valid(let key): lines.append("  reply signed by \(key)")
    case .invalid(let why): lines.append("  reply signature INVALID: \(why)")
    default: break
    }
    if let mapped = mappedAddress(of: reply) { lines.append("  mapped to \(mapped)") }
    for (index, record) in reply.records.enumerated() {
        let name = record.tlvs.lazy.compactMap { if case .middleboxName(let n) = $0 { n } else { nil } }.first ?? "?"
        var line = "  middlebox \(name) id \(hex(record.middleboxID)) epoch \(record.epoch): \(record.decision)"
        if record.grantedLifetime > 0 { line += ", \(record.grantedLifetime)s" }
        if index < verdicts.count { line += "; \(verdicts[index])" }
        lines.append(line)
    }
    return lines.joined(separator: "\n")
}

/// The lifetime the whole path agreed to: the minimum of the reply's LIFETIME and every
/// middlebox's granted lifetime (docs/PROTOCOL.md 6.4); records granting 0 hold no state.
func effectiveLifetime(of reply: CSPMessage) -> UInt32? {
    let granted = reply.records.map(\.grantedLifetime).filter { $0 > 0 }
    let all = (reply.lifetime.map { [$0] } ?? []) + granted
    return all.min()
}

/// The external address a NAT on the path applied: in the reply itself when the NAT answered,
/// else in the record of the NAT nearest to the host (the last one appended on the way back).
func mappedAddress(of reply: CSPMessage) -> CSPEndpoint? {
    if let direct = reply.mappedAddress { return direct }
    for record in reply.records.reversed() {
        for case .mappedAddress(let endpoint) in record.tlvs { return endpoint }
    }
    return nil
}

func printError(_ message: String) {
    var stderr = StandardError()
    print("csp: \(message)", to: &stderr)
}

struct StandardError: TextOutputStream {
    mutating func write(_ string: String) { _ = string.withCString { Glibc.write(2, $0, strlen($0)) } }
}

extension CSPCommand {
    struct Setup: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Signal a flow (SETUP) and wait for the decision.",
            discussion: """
                Outgoing:  csp setup udp 10.0.2.2:5000 --sport 4000 --lifetime 30
                Incoming:  csp setup udp --incoming --peer 10.0.1.2 --local-port 5000
                The SETUP goes to the peer's CSP agent; middleboxes on the path intercept it.
                """)

        @Argument(help: "Transport protocol: udp, tcp, sctp or a number.")
        var proto: String
        @Argument(help: "Outgoing: the responder as address:port.")
        var destination: String?
        @Option(help: "Source port of the flow (0 = any).")
        var sport: UInt16 = 0
        @Option(help: "Source address of the flow (default: the address routing picks).")
        var source: String?
        @Option(help: "Requested lifetime in seconds.")
        var lifetime: UInt32 = 60
        @Option(help: "Application hint carried in APPLICATION.")
        var app: String?
        @Flag(help: "Open an incoming pinhole: this host is the responder of the flow.")
        var incoming = false
        @Option(help: "Incoming: the peer allowed to connect (address, address:port, or 'any').")
        var peer: String?
        @Option(help: "Incoming from any peer: the middlebox to ask (there is no peer to send the SETUP to).")
        var via: String?
        @Option(help: "Incoming: the local port peers connect to.")
        var localPort: UInt16?
        @Option(help: "Outgoing, away from home: ask this home firewall (off-path) and use the relay it gives (docs/PROTOCOL.md 10.9).")
        var home: String?
        @Option(help: "Session ID as 16 hex digits (default: random).")
        var session: String?
        @Flag(help: "Allow a middlebox to relay the flow (PROTOCOL.md 14.2): it answers RELAY with its relay endpoint; `csp connect --signal` follows it.")
        var allowRelay = false
        @Option(help: "Does the responder speak CSP? auto: ask it, and when it is silent for 0.75 s ask the middleboxes to answer for it; csp: wait for it; legacy: an ordinary server, the middleboxes answer at once (docs/PROTOCOL.md 6.9).")
        var responder: ResponderMode = .auto
        @OptionGroup var common: Common

        mutating func run() throws {
            let proto = try parseProtocol(self.proto)
            let flow: FlowTuple
            var signalTo: IPAddress
            var action: CSPRequestedAction = [.admit, .allowRedirect]
            if allowRelay { action.insert(.allowRelay) }
            if incoming {
                guard let peer, let localPort else { throw ValidationError("--incoming needs --peer and --local-port") }
                if peer == "any" {
                    guard let via, let middlebox = IPAddress(via) else {
                        throw ValidationError("--peer any needs --via MIDDLEBOX-ADDRESS (find it with `csp discover`)")
                    }
                    let local = try source.flatMap(IPAddress.init) ?? UDPSocket.sourceAddress(toward: CSPEndpoint(address: middlebox, port: common.cspPort))
                    let any = middlebox.family == .ipv4 ? IPAddress(ipv4: 0) : IPAddress(ipv6: 0, 0)
                    flow = FlowTuple(proto: proto, source: any, sourcePort: 0, destination: local, destinationPort: localPort)
                    signalTo = middlebox
                } else {
                    let peerEndpoint = CSPEndpoint(parsing: peer) ?? IPAddress(peer).map { CSPEndpoint(address: $0, port: 0) }
                    guard let peerEndpoint else { throw ValidationError("--peer '\(peer)' is not an address") }
                    let local = try source.flatMap(IPAddress.init) ?? UDPSocket.sourceAddress(toward: CSPEndpoint(address: peerEndpoint.address, port: common.cspPort))
                    flow = FlowTuple(proto: proto, source: peerEndpoint.address, sourcePort: peerEndpoint.port, destination: local, destinationPort: localPort)
                    signalTo = via.flatMap(IPAddress.init) ?? peerEndpoint.address
                }
                action.insert(.listen)
            } else {
                guard let destination else { throw ValidationError("give the responder as address:port") }
                let responder = try parseEndpoint(destination)
                let local = try source.flatMap(IPAddress.init) ?? UDPSocket.sourceAddress(toward: responder)
                flow = FlowTuple(proto: proto, source: local, sourcePort: sport, destination: responder.address, destinationPort: responder.port)
                signalTo = responder.address
                if let home {
                    guard let firewall = IPAddress(home) else { throw ValidationError("--home '\(home)' is not an address") }
                    signalTo = firewall
                }
            }
            let sessionID = try session.map { text throws -> UInt64 in
                guard let v = UInt64(text, radix: 16) else { throw ValidationError("--session must be 16 hex digits") }
                return v
            } ?? secureRandomUInt64()
            var tlvs: [CSPTLV] = [.flow(flow), .lifetime(lifetime), .requestedAction(action)]
            if let app { tlvs.append(.application(app)) }
            // A re-SETUP of a session we signaled before continues its sequence (middleboxes
            // refuse a sequence they saw: docs/PROTOCOL.md 7.3).
            let sequence = session == nil ? 1 : common.sessions.nextSequence(for: sessionID, peer: signalTo)
            let request = CSPMessage(
                type: .setup, flags: .recordRoute, sessionID: sessionID, nonce: secureRandomUInt64(), sequence: sequence,
                tlvs: tlvs)
            if !common.machine { print("session \(hex(sessionID)): \(flow)") }
            if session == nil {
                common.sessions.save(
                    SessionStore.Entry(sessionID: sessionID, lastSequence: 1, peer: signalTo, flow: flow, incoming: incoming))
            } else {
                common.sessions.update(sessionID) { $0.flow = flow; $0.incoming = incoming }
            }
            // Only an outgoing flow's responder may be an ordinary server (an incoming pinhole is
            // asked of the peer or a middlebox, which speak CSP; so does a home firewall).
            let responderMode = incoming || home != nil ? .csp : responder
            let (status, reply) = try exchangeWithReply(
                request, with: signalTo, from: source.flatMap(IPAddress.init), common: common, responder: responderMode)
            guard home != nil, status == ExitStatus.redirected, let reply, reply.flags.contains(.fromMiddlebox),
                let relay = reply.redirectTarget
            else { throw ExitCode(status) }
            // The home firewall relays the flow: signal our leg to its relay endpoint too, so the
            // middleboxes on the path we are on now admit it (the firewall answers as its responder).
            var leg = flow
            leg.destination = relay.address
            leg.destinationPort = relay.port
            var legTLVs: [CSPTLV] = [.flow(leg), .lifetime(lifetime), .requestedAction([.admit])]
            if let app { legTLVs.append(.application(app)) }
            let legRequest = CSPMessage(
                type: .setup, flags: .recordRoute, sessionID: sessionID, nonce: secureRandomUInt64(),
                sequence: common.sessions.nextSequence(for: sessionID, peer: signalTo), tlvs: legTLVs)
            if !common.machine { print("relayed by \(signalTo): send to \(relay)") }
            throw ExitCode(try exchange(legRequest, with: relay.address, from: source.flatMap(IPAddress.init), common: common))
        }
    }

    struct Refresh: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Extend a session's lifetime (REFRESH).")
        @Argument(help: "Session ID (16 hex digits).") var session: String
        @Argument(help: "The peer's address (where the SETUP went).") var peer: String
        @Option(help: "New lifetime in seconds (0 deletes).") var lifetime: UInt32 = 60
        @OptionGroup var common: Common

        mutating func run() throws {
            guard let id = UInt64(session, radix: 16) else { throw ValidationError("session must be 16 hex digits") }
            guard let peerAddress = IPAddress(peer) else { throw ValidationError("'\(peer)' is not an address") }
            let sequence = common.sessions.nextSequence(for: id, peer: peerAddress)
            let request = CSPMessage(
                type: .refresh, flags: .recordRoute, sessionID: id, nonce: secureRandomUInt64(), sequence: sequence,
                tlvs: [.lifetime(lifetime)])
            throw ExitCode(try exchange(request, with: peerAddress, common: common))
        }
    }

    struct Teardown: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "End a session (TEARDOWN); no answer is awaited.")
        @Argument(help: "Session ID (16 hex digits).") var session: String
        @Argument(help: "The peer's address.") var peer: String
        @OptionGroup var common: Common

        mutating func run() throws {
            guard let id = UInt64(session, radix: 16) else { throw ValidationError("session must be 16 hex digits") }
            guard let peerAddress = IPAddress(peer) else { throw ValidationError("'\(peer)' is not an address") }
            let sequence = common.sessions.nextSequence(for: id, peer: peerAddress)
            var request = CSPMessage(type: .teardown, sessionID: id, nonce: secureRandomUInt64(), sequence: sequence)
            if let key = try common.signingKey() { request = try request.signed(by: key, timestamp: wallClockSeconds()) }
            let socket = try UDPSocket(family: peerAddress.family)
            try socket.send(try request.serialize(), to: CSPEndpoint(address: peerAddress, port: common.cspPort))
            common.sessions.forget(id)
            print("TEARDOWN sent for \(hex(id))")
        }
    }

    struct Listen: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the responder agent: answer SETUP and REFRESH (ACCEPT or REJECT).")
        @Option(help: "Address to bind (default: all IPv4; give :: for IPv6).") var address: String?
        @Option(help: "Accept only flows to these ports (comma-separated); others get REJECT.") var acceptPorts: String?
        @Option(help: "Stop after answering this many requests (0 = never).") var count: Int = 0
        @Option(help: "Stop after this many seconds (0 = never).") var duration: Double = 0
        @Option(help: "Register a service at this rendezvous (address or address:port) and answer the SETUPs it relays.")
        var rendezvous: String?
        @Option(help: "With --rendezvous: the service, PROTOCOL/PORT (e.g. udp/5004).") var register: String?
        @Option(help: "With --rendezvous: its key (csp-ed25519 <hex>; default: learnt from its first signed answer).")
        var rendezvousKey: String?
        @Option(help: "With --rendezvous: registration lifetime in seconds (refreshed at half).") var registrationLifetime: UInt32 = 60
        @OptionGroup var common: Common

        mutating func run() throws {
            let bindAddress = try address.map { text throws -> IPAddress in
                guard let a = IPAddress(text) else { throw ValidationError("'\(text)' is not an address") }
                return a
            }
            var policy = ResponderPolicy()
            if let acceptPorts {
                policy.acceptedPorts = Set(try acceptPorts.split(separator: ",").map { text throws -> UInt16 in
                    guard let p = UInt16(text) else { throw ValidationError("'\(text)' is not a port") }
                    return p
                })
            }
            let socket = try UDPSocket(
                family: bindAddress?.family ?? .ipv4, address: bindAddress, port: common.cspPort, reuseAddress: true)
            defer { fflush(nil) }
            print("listening on \(bindAddress.map { CSPEndpoint(address: $0, port: common.cspPort).description } ?? "*:\(common.cspPort)")")
            fflush(nil)
            let clock = ContinuousClock()
            let deadline = duration > 0 ? clock.now.advanced(by: .milliseconds(Int64(duration * 1000))) : nil
            var answered = 0
            let key = try common.signingKey()
            var agent = try rendezvous.map { text throws -> RendezvousAgent in
                let endpoint = CSPEndpoint(parsing: text) ?? IPAddress(text).map { CSPEndpoint(address: $0, port: common.cspPort) }
                guard let endpoint else { throw ValidationError("--rendezvous '\(text)' is not an address") }
                guard let register else { throw ValidationError("--rendezvous needs --register PROTOCOL/PORT") }
                return try RendezvousAgent(
                    rendezvous: endpoint, service: register, key: key, lifetime: registrationLifetime, rendezvousKey: rendezvousKey)
            }
            agent?.begin(socket)
            // Replies sent lately, by session and nonce: a middlebox may CHALLENGE one (it must
            // know the ACCEPT really comes from us) and we then send it again.
            var sent: [SentKey: (reply: CSPMessage, bytes: [UInt8], to: CSPEndpoint)] = [:]
            while count == 0 || answered < count {
                if let deadline, clock.now >= deadline { break }
                agent?.tick(socket)
                guard let (bytes, from) = try socket.receive(timeout: .milliseconds(agent == nil ? 200 : 50)) else { continue }
                guard let request = try? CSPMessage.parse(bytes) else {
                    print("ignored malformed datagram from \(from)")
                    continue
                }
                if agent?.handle(request, bytes: bytes, from: from, socket: socket) == true { continue }
                if agent == nil, RendezvousRegistration.isRelayed(request) {
                    // We registered nowhere: a "relayed" SETUP is someone's attempt to make us
                    // answer a third party (docs/PROTOCOL.md 10.7).
                    print("ignored relayed SETUP \(hex(request.sessionID)) from \(from): no rendezvous registered")
                    continue
                }
                if request.type == .challenge {
                    let slot = SentKey(session: request.sessionID, nonce: request.nonce)
                    if let previous = sent[slot], var response = ResponderPolicy.response(to: request, for: previous.reply) {
                        do {
                            if let key { response = try response.signed(by: key, timestamp: wallClockSeconds()) }
                            try socket.send(try response.serialize(), to: from)
                            // The RESPONSE goes to the middlebox's own socket, the repeated reply
                            // through its queue: a moment between them lets the proof land first.
                            usleep(5_000)
                            try socket.send(previous.bytes, to: previous.to)
                            print("CHALLENGE \(hex(request.sessionID)) from \(from) -> RESPONSE, \(previous.reply.type) sent again")
                        } catch {
                            print("CHALLENGE \(hex(request.sessionID)) from \(from): cannot answer: \(error)")
                        }
                    } else {
                        print("ignored CHALLENGE \(hex(request.sessionID)) from \(from): no such reply of ours")
                    }
                    fflush(nil)
                    continue
                }
                var line = "\(request.type) \(hex(request.sessionID)) from \(from)"
                if let flow = request.flow { line += " \(flow)" }
                if !request.records.isEmpty { line += " via \(request.records.count) middlebox(es)" }
                guard var reply = policy.reply(to: request) else {
                    print(line)
                    fflush(nil)
                    continue
                }
                if let key { reply = try reply.signed(by: key, timestamp: wallClockSeconds()) }
                let replyBytes = try reply.serialize()
                do { try socket.send(replyBytes, to: from) } catch {
                    // One unreachable requester must not stop the agent.
                    print("\(line) -> \(reply.type) not sent: \(error)")
                    fflush(nil)
                    continue
                }
                if sent.count >= 4096 { sent.removeAll(keepingCapacity: true) }
                sent[SentKey(session: reply.sessionID, nonce: reply.nonce)] = (reply, replyBytes, from)
                // A signing responder remembers what it accepted: it can move its side later
                // (`csp rebind` as a mobile server).
                if key != nil, request.type == .setup, reply.type == .accept, let flow = request.flow {
                    common.sessions.save(
                        SessionStore.Entry(sessionID: request.sessionID, lastSequence: 0, peer: from.address, flow: flow, responder: true))
                }
                print("\(line) -> \(reply.type)")
                fflush(nil)  // tests and journald read this output line by line
                answered += 1
            }
        }
    }
}


struct SentKey: Hashable {
    var session: UInt64
    var nonce: UInt64
}

extension CSPCommand {
    struct Keygen: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create an Ed25519 key for signing requests and print its public key.",
            discussion: """
                The private key file (mode 0600) is never overwritten. The printed line \
                (csp-ed25519 <64 hex digits>) is what an operator lists in a [[known-key]] of \
                midcomd.conf. Use it with `csp setup --key FILE`.
                """)
        @Option(help: "Where to write the private key.") var key: String
        @Flag(help: "Only print the public key of an existing key file.") var show = false

        mutating func run() throws {
            do {
                let signing = show ? try KeyFile.load(key) : try KeyFile.create(key)
                print("\(signing.publicKey.text) id \(hex(signing.publicKey.fingerprint))")
            } catch {
                printError("\(error)")
                throw ExitCode(1)
            }
        }
    }
}

/// What `csp` remembers of the sessions this user signaled, one small file per session: the last
/// sequence (docs/PROTOCOL.md 3.1: one per new request, increasing; middleboxes refuse a sequence
/// they saw), the peer, and the flow (REBIND and ADD-PATH name it).
struct SessionStore {
    struct Entry {
        var sessionID: UInt64
        var lastSequence: UInt32
        var peer: IPAddress
        var flow: FlowTuple? = nil
        var incoming = false
        /// This host answered the session (it is the flow's responder, e.g. a server): a REBIND
        /// moves the responder's side and goes to `peer`, the initiator.
        var responder = false
        /// Middlebox ID and epoch of each record of the last answer (docs/PROTOCOL.md 6.5).
        var records: [(id: UInt64, epoch: UInt32)] = []
    }

    let directory: String

    init(directory: String?) {
        let environment = ProcessEnvironment.value("CSP_STATE_DIR")
        let home = ProcessEnvironment.value("HOME") ?? "/tmp"
        self.directory = directory ?? environment ?? "\(home)/.local/state/csp"
    }

    func path(_ id: UInt64) -> String { "\(directory)/\(hex(id)).session" }

    func save(_ entry: Entry) {
        try? SmallFile.makeDirectories(directory)
        var text = "sequence \(entry.lastSequence)\npeer \(entry.peer)\n"
        if let flow = entry.flow {
            text += "flow \(flow.proto.rawValue) \(flow.source) \(flow.sourcePort) \(flow.destination) \(flow.destinationPort)\n"
        }
        if entry.incoming { text += "incoming\n" }
        if entry.responder { text += "responder\n" }
        for record in entry.records { text += "record \(hex(record.id)) \(record.epoch)\n" }
        try? SmallFile.write(path(entry.sessionID), Array(text.utf8), mode: 0o600)
    }

    func load(_ id: UInt64) -> Entry? {
        guard let contents = try? SmallFile.read(path(id), limit: 4096) else { return nil }
        var entry = Entry(sessionID: id, lastSequence: 1, peer: IPAddress(ipv4: 0))
        for line in String(decoding: contents.bytes, as: UTF8.self).split(separator: "\n") {
            let parts = line.split(separator: " ").map(String.init)
            switch parts.first {
            case "sequence": entry.lastSequence = parts.count == 2 ? UInt32(parts[1]) ?? 1 : 1
            case "peer": if parts.count == 2, let a = IPAddress(parts[1]) { entry.peer = a }
            case "incoming": entry.incoming = true
            case "responder": entry.responder = true
            case "record":
                if parts.count == 3, let id = UInt64(parts[1], radix: 16), let epoch = UInt32(parts[2]) {
                    entry.records.append((id, epoch))
                }
            case "flow":
                if parts.count == 6, let p = UInt8(parts[1]), let s = IPAddress(parts[2]), let sp = UInt16(parts[3]),
                    let d = IPAddress(parts[4]), let dp = UInt16(parts[5])
                {
                    entry.flow = FlowTuple(proto: IPProtocol(rawValue: p), source: s, sourcePort: sp, destination: d, destinationPort: dp)
                }
            default: break
            }
        }
        return entry
    }

    func update(_ id: UInt64, _ change: (inout Entry) -> Void) {
        guard var entry = load(id) else { return }
        change(&entry)
        save(entry)
    }

    /// The next sequence for a session (2 for one we have no record of: its SETUP was 1), recorded.
    func nextSequence(for id: UInt64, peer: IPAddress) -> UInt32 {
        var entry = load(id) ?? Entry(sessionID: id, lastSequence: 1, peer: peer)
        entry.lastSequence &+= 1
        save(entry)
        return entry.lastSequence
    }

    func forget(_ id: UInt64) {
        _ = unlink(path(id))
        _ = unlink(KeeperStatus.path(self, id))
    }
}

enum ProcessEnvironment {
    static func value(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
}

extension CSPCommand {
    /// The state a mobility command needs: the session's stored flow and peer.
    static func stored(_ text: String, _ common: Common) throws -> (UInt64, SessionStore.Entry, FlowTuple) {
        guard let id = UInt64(text, radix: 16) else { throw ValidationError("session must be 16 hex digits") }
        guard let entry = common.sessions.load(id), let flow = entry.flow else {
            throw ValidationError("no stored flow for session \(hex(id)) in \(common.sessions.directory): set it up with this csp first")
        }
        return (id, entry, flow)
    }

    struct Rebind: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move a session to this host's new address (REBIND, signed by the session's key).",
            discussion: """
                Sent from the new address to the peer, so middleboxes on the new path see it; each \
                makes the new address prove itself (CHALLENGE, answered here) and moves the admission \
                when the peer accepts. The session must have been set up with --key.
                """)
        @Argument(help: "Session ID (16 hex digits).") var session: String
        @Option(help: "The new address (default: the address routing picks toward the peer now).") var from: String?
        @Option(help: "The new source port (default: the session's).") var sport: UInt16?
        @Option(help: "Requested lifetime in seconds.") var lifetime: UInt32 = 60
        @OptionGroup var common: Common

        mutating func run() throws {
            let (id, entry, flow) = try CSPCommand.stored(session, common)
            guard common.key != nil else { throw ValidationError("REBIND must be signed: give the session's --key") }
            if entry.responder { throw ExitCode(try moveResponder(id: id, entry: entry, flow: flow)) }
            let peer = entry.incoming ? flow.source : flow.destination
            let signalTo = entry.peer == IPAddress(ipv4: 0) ? peer : entry.peer
            let newAddress = try from.flatMap(IPAddress.init)
                ?? UDPSocket.sourceAddress(toward: CSPEndpoint(address: signalTo, port: common.cspPort))
            let port = sport ?? (entry.incoming ? flow.destinationPort : flow.sourcePort)
            var action: CSPRequestedAction = [.admit]
            if entry.incoming { action.insert(.listen) }
            let request = CSPMessage(
                type: .rebind, flags: .recordRoute, sessionID: id, nonce: secureRandomUInt64(),
                sequence: common.sessions.nextSequence(for: id, peer: signalTo),
                tlvs: [.flow(flow), .newAddress(CSPEndpoint(address: newAddress, port: port)), .lifetime(lifetime), .requestedAction(action)])
            if !common.machine { print("session \(hex(id)): \(flow) moves to \(newAddress)") }
            let status = try exchange(request, with: signalTo, from: newAddress, common: common)
            if status == ExitStatus.accepted {
                let moved = flow.moving(entry.incoming ? .destination : .source, to: CSPEndpoint(address: newAddress, port: port))
                common.sessions.update(id) { $0.flow = moved }
            }
            throw ExitCode(status)
        }
    }

}

extension CSPCommand.Rebind {
    /// A mobile server: this host answered the session; its side moves to the new address, and
    /// the REBIND goes to the initiator (whose agent answers it).
    func moveResponder(id: UInt64, entry: SessionStore.Entry, flow: FlowTuple) throws -> Int32 {
        let newAddress = try from.flatMap(IPAddress.init)
            ?? UDPSocket.sourceAddress(toward: CSPEndpoint(address: entry.peer, port: common.cspPort))
        let port = sport ?? flow.destinationPort
        let request = CSPMessage(
            type: .rebind, flags: .recordRoute, sessionID: id, nonce: secureRandomUInt64(),
            sequence: common.sessions.nextSequence(for: id, peer: entry.peer),
            tlvs: [.flow(flow), .newAddress(CSPEndpoint(address: newAddress, port: port)), .lifetime(lifetime)])
        if !common.machine { print("session \(hex(id)): \(flow): this responder moves to \(newAddress)") }
        let status = try exchange(request, with: entry.peer, from: newAddress, common: common)
        if status == ExitStatus.accepted {
            let moved = flow.moving(.destination, to: CSPEndpoint(address: newAddress, port: port))
            common.sessions.update(id) { $0.flow = moved }
        }
        return status
    }
}

extension CSPCommand {
    struct AddPath: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add-path", abstract: "Add a path to a session (ADD-PATH over the new path, signed).")
        @Argument(help: "Session ID (16 hex digits).") var session: String
        @Option(help: "Path ID (1-255).") var pathID: UInt8
        @Option(help: "This host's address on the new path.") var from: String
        @Option(help: "Source port on the new path (default: the session's).") var sport: UInt16?
        @Option(help: "The path's own lifetime in seconds (renew with add-path again; default: the session's).")
        var lifetime: UInt32?
        @OptionGroup var common: Common

        mutating func run() throws {
            let (id, entry, flow) = try CSPCommand.stored(session, common)
            guard pathID > 0 else { throw ValidationError("path 0 is the session's own flow: use 1-255") }
            guard let address = IPAddress(from) else { throw ValidationError("'\(from)' is not an address") }
            let port = sport ?? (entry.incoming ? flow.destinationPort : flow.sourcePort)
            let peer = entry.incoming ? flow.source : flow.destination
            let request = CSPMessage(
                type: .addPath, flags: .recordRoute, sessionID: id, nonce: secureRandomUInt64(),
                sequence: common.sessions.nextSequence(for: id, peer: peer),
                tlvs: [
                    // FLOW lets a middlebox on the new path that never saw the session set the path up.
                    .flow(flow), .path(CSPPath(pathID: pathID, endpoint: CSPEndpoint(address: address, port: port))),
                ] + (lifetime.map { [CSPTLV.lifetime($0)] } ?? []))
            throw ExitCode(try exchange(request, with: peer, from: address, common: common))
        }
    }

    struct RemovePath: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "remove-path", abstract: "Remove a path from a session (REMOVE-PATH, signed).")
        @Argument(help: "Session ID (16 hex digits).") var session: String
        @Option(help: "Path ID (1-255).") var pathID: UInt8
        @OptionGroup var common: Common

        mutating func run() throws {
            let (id, entry, flow) = try CSPCommand.stored(session, common)
            let peer = entry.incoming ? flow.source : flow.destination
            let request = CSPMessage(
                type: .removePath, sessionID: id, nonce: secureRandomUInt64(),
                sequence: common.sessions.nextSequence(for: id, peer: peer),
                tlvs: [.path(CSPPath(pathID: pathID, endpoint: CSPEndpoint(address: flow.source, port: 0)))])
            throw ExitCode(try exchange(request, with: peer, common: common))
        }
    }
}
