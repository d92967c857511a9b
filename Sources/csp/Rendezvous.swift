import ArgumentParser
import CSPHost
import CSPTrust
import CSPWire

#if canImport(Glibc)
import Glibc
#endif

extension CSPCommand {
    /// The rendezvous service for hidden servers (docs/PROTOCOL.md 10.7). It runs on a host with
    /// a stable address (any host: it is an end host, not a middlebox); clients name a hidden
    /// server by that address and the server's port.
    struct RendezvousService: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rendezvous",
            abstract: "Run a rendezvous: hidden servers register here; clients' SETUPs are relayed to them.",
            discussion: """
                A server registers with `csp listen --rendezvous THIS-HOST --register udp/5004 --key K` \
                (signed; its agent's endpoint must answer a CHALLENGE). A client then signals \
                `csp setup udp THIS-HOST:5004`: the SETUP is relayed to the server's agent with this \
                rendezvous's signed record, and the server's answer (a signed REDIRECT to where it \
                can be reached, e.g. its NAT's mapping) comes back through here. Data flows directly. \
                One line per event on stdout.
                """)
        @Option(help: "Address to bind (default: all IPv4; give :: for IPv6).") var address: String?
        @Option(help: "This rendezvous's key (made by `csp keygen`): it signs answers and relayed requests.") var key: String
        @Option(help: "Only servers with this key may register (csp-ed25519 <hex>; repeatable; default: any key, first come per service).")
        var allowKey: [String] = []
        @Option(help: "Longest registration granted, in seconds.") var maximumLifetime: UInt32 = 3600
        @Option(help: "Stop after this many seconds (0 = never).") var duration: Double = 0
        @Option(help: "UDP port CSP agents listen on.") var cspPort: UInt16 = CSPMessage.defaultPort

        mutating func run() throws {
            let bindAddress = try address.map { text throws -> IPAddress in
                guard let a = IPAddress(text) else { throw ValidationError("'\(text)' is not an address") }
                return a
            }
            let signing: SigningKey
            do { signing = try KeyFile.load(key) } catch { throw ValidationError("\(error)") }
            var rendezvous = Rendezvous(
                key: signing, epoch: UInt32(truncatingIfNeeded: wallClockSeconds()),
                tokenSecret: (0..<4).flatMap { _ in withUnsafeBytes(of: secureRandomUInt64()) { Array($0) } })
            rendezvous.maximumLifetime = maximumLifetime
            if !allowKey.isEmpty {
                rendezvous.allowedKeys = Set(try allowKey.map { line throws -> PublicKey in
                    guard let key = PublicKey(text: line) else { throw ValidationError("--allow-key '\(line)' is not 'csp-ed25519 <64 hex digits>'") }
                    return key
                })
            }
            let socket = try UDPSocket(family: bindAddress?.family ?? .ipv4, address: bindAddress, port: cspPort, reuseAddress: true)
            print("rendezvous on \(bindAddress.map { CSPEndpoint(address: $0, port: cspPort).description } ?? "*:\(cspPort)"), \(signing.publicKey.text)")
            fflush(nil)
            let clock = ContinuousClock()
            let deadline = duration > 0 ? clock.now.advanced(by: .milliseconds(Int64(duration * 1000))) : nil
            while deadline.map({ clock.now < $0 }) ?? true {
                guard let (bytes, from) = try socket.receive(timeout: .milliseconds(200)) else { continue }
                let (outputs, event) = rendezvous.handle(bytes, from: from, now: wallClockSeconds())
                for (index, output) in outputs.enumerated() {
                    // A RESPONSE goes to the challenger's own socket, the answer again through its
                    // queue: a moment between them lets the proof land first.
                    if index > 0 { usleep(5_000) }
                    do { try socket.send(output.bytes, to: output.destination) } catch { print("cannot send to \(output.destination): \(error)") }
                }
                if let event { print(event) }
                fflush(nil)
            }
            let c = rendezvous.counters
            print(
                "stopped: \(rendezvous.registrations.count) service(s) registered, \(c.registered) registrations, "
                    + "\(c.relayedRequests) requests and \(c.relayedAnswers) answers relayed, \(c.challenges) challenges, "
                    + "\(c.refused) refused, \(c.dropped) dropped")
        }
    }
}

/// `csp listen --rendezvous`: the hidden server's side, run inside the listen loop so that
/// everything goes from the agent's own socket (the rendezvous relays to where it came from).
struct RendezvousAgent {
    var registration: RendezvousRegistration
    let watcher: AddressWatcher
    let clock = ContinuousClock()
    let start: ContinuousClock.Instant
    /// Our registered address went away: REBIND when another of its family comes up.
    var lostAddress = false

    init(rendezvous: CSPEndpoint, service: String, key: SigningKey?, lifetime: UInt32, rendezvousKey: String?) throws {
        guard let key else { throw ValidationError("--rendezvous needs --key: registrations are signed") }
        let parts = service.split(separator: "/")
        guard parts.count == 2, let proto = IPProtocol(name: String(parts[0])), let port = UInt16(parts[1]), port != 0 else {
            throw ValidationError("--register '\(service)' is not PROTOCOL/PORT (e.g. udp/5004)")
        }
        let pinned = try rendezvousKey.map { text throws -> PublicKey in
            guard let k = PublicKey(text: text) else { throw ValidationError("--rendezvous-key '\(text)' is not 'csp-ed25519 <64 hex digits>'") }
            return k
        }
        registration = RendezvousRegistration(
            rendezvous: rendezvous, proto: proto, port: port, address: try UDPSocket.sourceAddress(toward: rendezvous), key: key,
            lifetime: lifetime, rendezvousKey: pinned, sessionID: secureRandomUInt64())
        watcher = try AddressWatcher()
        start = clock.now
    }

    var now: Double {
        let elapsed = start.duration(to: clock.now)
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }

    mutating func begin(_ socket: UDPSocket) {
        send(registration.register(now: now, wall: wallClockSeconds()), socket)
    }

    /// Retransmissions, refreshes, and our address moving.
    mutating func tick(_ socket: UDPSocket) {
        for event in (try? watcher.next(timeout: .zero)) ?? [] {
            if event.kind == .removed, event.address == registration.address { lostAddress = true }
            if event.kind == .added, lostAddress, event.isGlobal, event.address.family == registration.address.family {
                lostAddress = false
                report("moved from \(registration.address) to \(event.address): REBIND")
                send(registration.moved(to: event.address, now: now, wall: wallClockSeconds()), socket)
            }
        }
        if !lostAddress { send(registration.due(now: now, wall: wallClockSeconds()), socket) }
    }

    /// Handles `message` if it concerns the registration or was relayed by the rendezvous.
    mutating func handle(_ message: CSPMessage, bytes: [UInt8], from: CSPEndpoint, socket: UDPSocket) -> Bool {
        if message.sessionID == registration.sessionID, message.type.isReply {
            let (sends, event) = registration.handle(message, bytes: bytes, from: from, now: now, wall: wallClockSeconds())
            send(sends, socket)
            if let event { report(event) }
            return true
        }
        guard RendezvousRegistration.isRelayed(message) else { return false }
        if let redirect = registration.answerRelayed(message, bytes: bytes, from: from, wall: wallClockSeconds()),
            let out = try? redirect.serialize()
        {
            try? socket.send(out, to: from)
            let client = message.records.last { $0.decision == .rendezvous }?.tlvs.lazy.compactMap {
                if case .hostAddress(let e) = $0 { e } else { nil }
            }.first
            report("relayed SETUP \(hex(message.sessionID)) from \(client.map { "\($0)" } ?? "?") -> REDIRECT to \(registration.location!)")
        } else {
            report("ignored relayed SETUP \(hex(message.sessionID)) from \(from): not our rendezvous, service or key")
        }
        return true
    }

    func send(_ sends: [RendezvousRegistration.Send], _ socket: UDPSocket) {
        for item in sends {
            do { try socket.send(item.bytes, to: item.destination) } catch { report("cannot send to \(item.destination): \(error)") }
        }
    }

    func report(_ line: String) {
        print("rendezvous: \(line)")
        fflush(nil)
    }
}
