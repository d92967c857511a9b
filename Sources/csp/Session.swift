import ArgumentParser
import CSPHost
import CSPSession
import CSPTrust
import CSPWire
import Foundation

/// `csp connect` and `csp serve`: the session layer of docs/PROTOCOL.md 14 for any program, in the
/// spirit of ncat/socat — stdin and stdout (or a command's) carried end to end encrypted, over hops
/// that may break and resume without the program noticing.

/// The identity a session end uses: `--key`, or a fresh key for this run only.
private func sessionIdentity(_ common: Common, verbose: Bool) throws -> SessionIdentity {
    if let key = try common.signingKey() { return SessionIdentity(signingKey: key) }
    let ephemeral = SigningKey()
    if verbose { FileHandle.standardError.write(Data("csp: no --key: this run's key is \(ephemeral.publicKey.text)\n".utf8)) }
    return SessionIdentity(signingKey: ephemeral)
}

private func parseKey(_ text: String, option: String) throws -> PublicKey {
    guard let key = PublicKey(text: text) else { throw ValidationError("\(option) '\(text)' is not 'csp-ed25519 <64 hex digits>'") }
    return key
}

extension CSPCommand {
    struct Connect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Open an end-to-end encrypted session to a `csp serve` and carry stdin/stdout over it.",
            discussion: """
                The session survives its transport connection: when the connection breaks, csp \
                reconnects and resumes, and the stream stays complete and in order. Exit status: 0 \
                both directions closed cleanly, 1 refused (by a middlebox, a relay or the \
                responder: the reason is printed), 3 the first hop could not be opened, 5 the \
                relay's or the responder's key is not the expected one, 6 the session failed \
                closed (integrity), 7 it could not be resumed in time.
                """)

        @Argument(help: "The responder: address:port.") var target: String
        @Option(help: "Accept only a responder with this key (csp-ed25519 <hex>).") var peerKey: String?
        @Flag(help: "Accept any responder key (the session is then encrypted but not authenticated to a known peer).")
        var anyPeer = false
        @Option(help: "Protection of each hop: clear (the relays splice the end-to-end records) or sealed.")
        var protection: String = "clear"
        @Option(help: "Session ID as 16 hex digits (default: random).") var session: String?
        @Option(help: "Give up resuming after this many seconds.") var resumeTimeout: Double = 60
        @Flag(help: "Signal the flow first (SETUP, signed with --key, allowing a relay): middleboxes may admit it, refuse it or offer a relay.")
        var signal = false
        @Flag(help: "With --signal: ask to be relayed even where policy would admit the flow.") var wantRelay = false
        @Flag(help: "With --signal: accept a relay that ends the end-to-end layer and reads the stream (for targets without the session layer); the relay's key is then the responder's.")
        var allowTerminating = false
        @Flag(name: .shortAndLong, help: "Report hop breaks and resumptions on stderr.") var verbose = false
        @OptionGroup var common: Common

        mutating func validate() throws {
            if peerKey == nil, !anyPeer, !allowTerminating {
                throw ValidationError("name the responder's key (--peer-key) or accept any (--any-peer)")
            }
            if !["clear", "sealed"].contains(protection) { throw ValidationError("--protection is clear or sealed") }
        }

        mutating func run() throws {
            _ = Glibc.signal(SIGPIPE, SIG_IGN)  // a closed hop or stdout is an error to report, not a signal
            let identity = try sessionIdentity(common, verbose: verbose)
            let target = try parseEndpoint(self.target)
            let sessionID = try session.map { text throws -> UInt64 in
                guard let id = UInt64(text, radix: 16) else { throw ValidationError("--session is 16 hex digits") }
                return id
            } ?? secureRandomUInt64()
            var firstHop = FirstHop(endpoint: target)
            var boundSource: TCPSocket?
            if signal {
                guard let key = try common.signingKey() else { throw ValidationError("--signal needs --key: relaying needs a signed SETUP") }
                (firstHop, boundSource) = try signalFlow(sessionID: sessionID, target: target, key: key)
            }
            let initiator = SessionInitiator(
                identity: identity, sessionID: sessionID, target: TargetEndpoint(endpoint: target), firstHop: firstHop,
                protection: protection == "sealed" ? .sealed : .clear, responderKey: try peerKey.map { try parseKey($0, option: "--peer-key") })
            initiator.resumeTimeout = .milliseconds(Int64(resumeTimeout * 1000))
            let verbose = verbose
            initiator.log = { line in if verbose { FileHandle.standardError.write(Data("csp: \(line)\n".utf8)) } }
            initiator.firstSocket = boundSource
            initiator.allowTerminating = allowTerminating
            if firstHop.terminating {
                initiator.responderKey = firstHop.relayKey
            } else if peerKey == nil, !anyPeer {
                throw ValidationError("no terminating relay answers for \(target): name the responder's key (--peer-key) or accept any (--any-peer)")
            }
            if signal, let key = try common.signingKey() {
                // A relay that forgot the session needs a new offer: the same SETUP again, next sequence.
                let connect = self
                var sequence: UInt32 = 1
                initiator.reoffer = {
                    sequence += 1
                    return try connect.signalFlow(sessionID: sessionID, target: target, key: key, sequence: sequence).0
                }
            }
            do {
                try initiator.run(input: STDIN_FILENO, output: STDOUT_FILENO)
                if verbose { FileHandle.standardError.write(Data("csp: session \(hex(sessionID)) closed, \(initiator.resumptions) resumption(s)\n".utf8)) }
            } catch {
                FileHandle.standardError.write(Data("csp: \(error)\n".utf8))
                switch error.kind {
                case .refused: throw ExitCode(1)
                case .unreachable: throw ExitCode(3)
                case .keyMismatch: throw ExitCode(5)
                case .integrity: throw ExitCode(6)
                case .resumeTimedOut: throw ExitCode(7)
                }
            }
        }
    }
}

extension CSPCommand.Connect {
    /// SETUP for the flow this session would be (FLOW = tcp source:port → target) with allow-relay
    /// (PROTOCOL.md 14.2): an ACCEPT, or silence, means connect straight from that source port; a
    /// RELAY names the relay, its token and its key; a REJECT ends here (exit 1).
    func signalFlow(sessionID: UInt64, target: CSPEndpoint, key: SigningKey, sequence: UInt32 = 1) throws -> (FirstHop, TCPSocket?) {
        let local = try UDPSocket.sourceAddress(toward: target)
        let source = try TCPSocket.bound(to: CSPEndpoint(address: local, port: 0))
        guard let sourcePort = source.localEndpoint?.port else { throw ValidationError("cannot bind a local TCP port") }
        let flow = FlowTuple(proto: .tcp, source: local, sourcePort: sourcePort, destination: target.address, destinationPort: target.port)
        var action: CSPRequestedAction = [.admit, .allowRelay]
        if wantRelay { action.insert(.wantRelay) }
        if allowTerminating { action.insert(.allowTerminating) }
        // The responder is a `csp serve`, which answers hops, not CSP datagrams: the middleboxes
        // on the path answer for it (6.9).
        let request = try CSPMessage(
            type: .setup, flags: [.recordRoute, .legacyResponder], sessionID: sessionID, nonce: secureRandomUInt64(), sequence: sequence,
            tlvs: [.flow(flow), .lifetime(300), .requestedAction(action)]
        ).signed(by: key, timestamp: wallClockSeconds())
        let socket = try UDPSocket(family: target.address.family, address: local)
        var client = SignalingClient(socket: socket)
        client.attempts = common.attempts
        let outcome: Result<SignalingResult, SignalingError>
        do { outcome = .success(try client.exchange(request, with: CSPEndpoint(address: target.address, port: common.cspPort), signer: key)) } catch {
            outcome = .failure(error)
        }
        let result: SignalingResult
        switch outcome {
        case .success(let answer): result = answer
        case .failure(.noAnswer):
            if verbose { FileHandle.standardError.write(Data("csp: no CSP answer: connecting straight to \(target)\n".utf8)) }
            return (FirstHop(endpoint: target), source)
        case .failure(let error): throw error
        }
        let reply = result.reply
        switch reply.type {
        case .relay:
            guard let record = reply.records.first(where: { $0.decision == .relayed }), let endpoint = record.relayEndpoint,
                let token = record.relayToken
            else { throw ValidationError("a RELAY without a usable offer (no relayed record with endpoint and token)") }
            var trust = try common.trust()
            let verdict = trust.judge(result.bytes, message: reply).first(where: { $0.0.middleboxID == record.middleboxID })?.1
            try trust.save()
            let relayKey: PublicKey
            switch verdict {
            case .pinned(let key), .known(let key), .firstUse(let key), .untrusted(let key): relayKey = key
            default:
                FileHandle.standardError.write(Data("csp: the relay offer's record is \(verdict.map { "\($0)" } ?? "unsigned"): not used\n".utf8))
                throw ExitCode(5)
            }
            if verbose {
                FileHandle.standardError.write(Data("csp: relayed by middlebox \(hex(record.middleboxID)) at \(endpoint.endpoint) (\(relayKey.text))\n".utf8))
            }
            if endpoint.modes.contains(.terminating) {
                FileHandle.standardError.write(Data("csp: the relay at \(endpoint.endpoint) ends the end-to-end layer: it reads this session (allowed by --allow-terminating)\n".utf8))
            }
            return (FirstHop(endpoint: endpoint.endpoint, relayKey: relayKey, relayToken: token, terminating: endpoint.modes.contains(.terminating)), nil)
        case .accept, .mapped:
            if verbose { FileHandle.standardError.write(Data("csp: admitted: connecting straight to \(target)\n".utf8)) }
            return (FirstHop(endpoint: target), source)
        default:
            let reason = reply.reason.map { ": \($0.text)" } ?? ""
            FileHandle.standardError.write(Data("csp: \(reply.type) \(reply.result)\(reason)\n".utf8))
            throw ExitCode(1)
        }
    }
}

extension CSPCommand {
    struct Serve: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Answer `csp connect` sessions on a TCP port: stdin/stdout for one session, or a command per session.",
            discussion: """
                Prints 'listening on ADDRESS:PORT key csp-ed25519 <hex>' on stderr once ready. With \
                --exec, every session runs the command under /bin/sh with the session as its \
                stdin and stdout; without it, one session uses csp's own and csp exits after it.
                """)

        @Argument(help: "TCP port to listen on.") var port: UInt16
        @Option(help: "Address to bind (default: all IPv4; give :: for IPv6).") var address: String?
        @Option(help: "Accept only initiators with this key (csp-ed25519 <hex>; repeatable; default: any).")
        var allow: [String] = []
        @Option(help: "Run this command (via /bin/sh -c) for each session.") var exec: String?
        @Option(help: "Connect each session to this plain TCP service (address:port): any server becomes reachable end to end.")
        var forward: String?
        @Flag(name: .shortAndLong, help: "Report sessions, hop breaks and resumptions on stderr.") var verbose = false
        @OptionGroup var common: Common

        mutating func run() throws {
            _ = Glibc.signal(SIGPIPE, SIG_IGN)  // a closed hop or a command that exited is an error to report, not a signal
            let identity = try sessionIdentity(common, verbose: false)
            let bind = try address.map { text throws -> IPAddress in
                guard let address = IPAddress(text) else { throw ValidationError("--address '\(text)' is not an IP address") }
                return address
            } ?? IPAddress(ipv4: 0)
            let listener: TCPSocket
            do { listener = try TCPSocket.listen(on: CSPEndpoint(address: bind, port: port)) } catch {
                throw ValidationError("\(error)")
            }
            let allowed = allow.isEmpty ? nil : Set(try allow.map { try parseKey($0, option: "--allow") })
            let responder = SessionResponder(identity: identity, listener: listener, allowedInitiators: allowed)
            let verbose = verbose
            responder.log = { line in if verbose { FileHandle.standardError.write(Data("csp: \(line)\n".utf8)) } }
            FileHandle.standardError.write(
                Data("listening on \(listener.localEndpoint.map { "\($0)" } ?? "?") key \(identity.ed25519PublicKey.text)\n".utf8))
            if let forward {
                let service = try parseEndpoint(forward)
                responder.serve(once: false) { sessionID, key, from in
                    if verbose { FileHandle.standardError.write(Data("csp: session \(hex(sessionID)) from \(key.text) via \(from.map { "\($0)" } ?? "?") to \(service)\n".utf8)) }
                    guard let socket = try? TCPSocket.connect(to: service, timeout: .seconds(5)) else { return nil }
                    let fd = socket.release()
                    return SessionResponder.Application(input: fd, output: dup(fd)) { _ in _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
                }
            } else if let command = exec {
                responder.serve(once: false) { sessionID, key, from in
                    if verbose { FileHandle.standardError.write(Data("csp: session \(hex(sessionID)) from \(key.text) via \(from.map { "\($0)" } ?? "?")\n".utf8)) }
                    return spawnShell(command, verbose: verbose)
                }
            } else {
                responder.serve(once: true) { sessionID, key, from in
                    if verbose { FileHandle.standardError.write(Data("csp: session \(hex(sessionID)) from \(key.text) via \(from.map { "\($0)" } ?? "?")\n".utf8)) }
                    return SessionResponder.Application(input: STDIN_FILENO, output: STDOUT_FILENO) { why in
                        FileHandle.standardError.write(Data("csp: session \(hex(sessionID)) failed: \(why)\n".utf8))
                        Foundation.exit(7)
                    }
                }
            }
        }
    }
}

/// Runs `/bin/sh -c command` with pipes as stdin and stdout; returns our ends (input: what the
/// command writes, output: what it reads). The child is reaped by a thread; a failed session
/// terminates it (SIGTERM), so it never takes a truncated stream for a complete one.
private func spawnShell(_ command: String, verbose: Bool) -> SessionResponder.Application? {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", command]
    let toChild = Pipe()
    let fromChild = Pipe()
    process.standardInput = toChild
    process.standardOutput = fromChild
    // Reaped by Foundation when it exits (a waitUntilExit thread would spin on the run loop).
    process.terminationHandler = { _ in }
    do { try process.run() } catch { return nil }
    let input = dup(fromChild.fileHandleForReading.fileDescriptor)
    let output = dup(toChild.fileHandleForWriting.fileDescriptor)
    try? fromChild.fileHandleForReading.close()
    try? toChild.fileHandleForWriting.close()
    let pid = process.processIdentifier
    return SessionResponder.Application(input: input, output: output) { why in
        if verbose { FileHandle.standardError.write(Data("csp: terminating the session's command (\(why))\n".utf8)) }
        kill(pid, SIGTERM)
    }
}
