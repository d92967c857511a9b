import ArgumentParser
import CSPHost
import CSPWire

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
            3 no answer, 4 redirected to a proxy (the target is printed), 2 usage error.
            """,
        subcommands: [Setup.self, Refresh.self, Teardown.self, Listen.self, Discover.self]
    )
}

struct Common: ParsableArguments {
    @Option(help: "UDP port CSP agents listen on.")
    var cspPort: UInt16 = CSPMessage.defaultPort

    @Option(help: "Retransmissions before giving up.")
    var attempts: Int = 4

    @Flag(help: "Print the reply as one line of key=value pairs (for scripts).")
    var machine = false
}

enum ExitStatus {
    static let accepted: Int32 = 0
    static let rejected: Int32 = 1
    static let noAnswer: Int32 = 3
    static let redirected: Int32 = 4
}

func parseProtocol(_ text: String) throws -> IPProtocol {
    guard let p = IPProtocol(name: text) else { throw ValidationError("unknown protocol '\(text)' (use udp, tcp, sctp or a number)") }
    return p
}

func parseEndpoint(_ text: String) throws -> CSPEndpoint {
    if let e = CSPEndpoint(parsing: text) { return e }
    throw ValidationError("'\(text)' is not address:port (IPv6 as [addr]:port)")
}


/// Sends `request` to `peer`'s CSP agent and prints what came back; returns the exit status.
func exchange(_ request: CSPMessage, with peer: IPAddress, from source: IPAddress? = nil, common: Common) throws -> Int32 {
    // Sent from the flow's own address: middleboxes check that a host signals only its own flows.
    let socket = try UDPSocket(family: peer.family, address: source)
    var client = SignalingClient(socket: socket)
    client.attempts = common.attempts
    let destination = CSPEndpoint(address: peer, port: common.cspPort)
    do {
        let result = try client.exchange(request, with: destination)
        print(describe(result, machine: common.machine))
        switch result.reply.type {
        case .accept: return ExitStatus.accepted
        case .redirect: return ExitStatus.redirected
        default: return ExitStatus.rejected
        }
    } catch {
        printError("\(error)")
        return ExitStatus.noAnswer
    }
}

func describe(_ result: SignalingResult, machine: Bool) -> String {
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
    if let mapped = mappedAddress(of: reply) { lines.append("  mapped to \(mapped)") }
    for record in reply.records {
        let name = record.tlvs.lazy.compactMap { if case .middleboxName(let n) = $0 { n } else { nil } }.first ?? "?"
        var line = "  middlebox \(name) id \(hex(record.middleboxID)) epoch \(record.epoch): \(record.decision)"
        if record.grantedLifetime > 0 { line += ", \(record.grantedLifetime)s" }
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
        @Option(help: "Session ID as 16 hex digits (default: random).")
        var session: String?
        @OptionGroup var common: Common

        mutating func run() throws {
            let proto = try parseProtocol(self.proto)
            let flow: FlowTuple
            let signalTo: IPAddress
            var action: CSPRequestedAction = [.admit, .allowRedirect]
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
            }
            let sessionID = try session.map { text throws -> UInt64 in
                guard let v = UInt64(text, radix: 16) else { throw ValidationError("--session must be 16 hex digits") }
                return v
            } ?? secureRandomUInt64()
            var tlvs: [CSPTLV] = [.flow(flow), .lifetime(lifetime), .requestedAction(action)]
            if let app { tlvs.append(.application(app)) }
            let request = CSPMessage(
                type: .setup, flags: .recordRoute, sessionID: sessionID, nonce: secureRandomUInt64(), sequence: 1, tlvs: tlvs)
            if !common.machine { print("session \(hex(sessionID)): \(flow)") }
            throw ExitCode(try exchange(request, with: signalTo, from: source.flatMap(IPAddress.init), common: common))
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
            let request = CSPMessage(
                type: .refresh, flags: .recordRoute, sessionID: id, nonce: secureRandomUInt64(), sequence: 2,
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
            let request = CSPMessage(type: .teardown, sessionID: id, nonce: secureRandomUInt64(), sequence: 3)
            let socket = try UDPSocket(family: peerAddress.family)
            try socket.send(try request.serialize(), to: CSPEndpoint(address: peerAddress, port: common.cspPort))
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
            let clock = ContinuousClock()
            let deadline = duration > 0 ? clock.now.advanced(by: .milliseconds(Int64(duration * 1000))) : nil
            var answered = 0
            while count == 0 || answered < count {
                if let deadline, clock.now >= deadline { break }
                guard let (bytes, from) = try socket.receive(timeout: .milliseconds(200)) else { continue }
                guard let request = try? CSPMessage.parse(bytes) else {
                    print("ignored malformed datagram from \(from)")
                    continue
                }
                var line = "\(request.type) \(hex(request.sessionID)) from \(from)"
                if let flow = request.flow { line += " \(flow)" }
                if !request.records.isEmpty { line += " via \(request.records.count) middlebox(es)" }
                guard let reply = policy.reply(to: request) else {
                    print(line)
                    fflush(nil)
                    continue
                }
                try socket.send(try reply.serialize(), to: from)
                print("\(line) -> \(reply.type)")
                fflush(nil)  // tests and journald read this output line by line
                answered += 1
            }
        }
    }
}

