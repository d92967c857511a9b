import ArgumentParser
import CSPHost
import CSPTrust
import CSPWire

#if canImport(Glibc)
import Glibc
#endif

extension CSPCommand {
    /// DoS pushback (docs/PROTOCOL.md 6.8), the victim's side.
    struct Deny: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Ask the middleboxes upstream to drop traffic from a prefix to this host (DENY, signed).",
            discussion: """
                The DENY goes towards the attack (to an address inside PREFIX, --toward), so every CSP \
                middlebox between here and there sees it; each checks the signature and that this host \
                proved its address, installs a filter for traffic from PREFIX to this host only, and \
                answers with its record. The answers are collected for --wait seconds: one line per \
                middlebox. Refresh with the same --session before the lifetime ends; --lifetime 0 \
                removes the filters. Exit 0 when a middlebox installed (or removed) the filter, 1 when \
                all refused, 3 when none answered.
                """)
        @Argument(help: "The attacking prefix, e.g. 203.0.113.0/24.") var prefix: String
        @Option(help: "Where the DENY is sent: an address the attack comes from (default: one in the middle of the prefix).")
        var toward: String?
        @Option(help: "Protocol to drop: udp, tcp, a number, or any.") var proto: String = "any"
        @Option(help: "This host's port the attack goes to (0 = any).") var port: UInt16 = 0
        @Option(help: "Seconds the filters last (0 removes them).") var lifetime: UInt32 = 60
        @Option(help: "Filter ID to refresh or remove (16 hex digits; default: a new one).") var session: String?
        @Option(help: "The address to protect, one of this host's (default: the one routing picks): the DENY is sent from it.")
        var from: String?
        @Option(help: "Seconds to collect answers.") var wait: Double = 1.5
        @Flag(help: "Ask for the middleboxes' rate limit instead of dropping everything.") var rateLimit = false
        @OptionGroup var common: Common

        mutating func run() throws {
            guard let key = try common.signingKey() else { throw ValidationError("DENY must be signed: give --key") }
            let parts = prefix.split(separator: "/")
            guard parts.count == 2, let network = IPAddress(String(parts[0])), let length = UInt8(parts[1]),
                length <= (network.family == .ipv4 ? 32 : 128)
            else { throw ValidationError("'\(prefix)' is not a prefix (address/length)") }
            let protocolNumber: IPProtocol = proto == "any" ? IPProtocol(rawValue: 0) : try parseProtocol(proto)
            let destination: IPAddress
            if let toward {
                guard let address = IPAddress(toward) else { throw ValidationError("--toward '\(toward)' is not an address") }
                destination = address
            } else {
                // An address in the middle of the prefix (not .1, often a router: a DENY addressed
                // to a middlebox stops there). Better: --toward an address the attack comes from.
                let middle = network.masked(to: length).filled(from: min(length + 1, UInt8(network.bytes.count * 8)))
                var bytes = middle.bytes
                if length < UInt8(bytes.count * 8) - 1 { bytes[bytes.count - 1] &= 0xfe }
                destination = IPAddress(bytes: bytes) ?? network
            }
            let id = try session.map { text throws -> UInt64 in
                guard let v = UInt64(text, radix: 16) else { throw ValidationError("--session must be 16 hex digits") }
                return v
            } ?? secureRandomUInt64()
            let sequence = session == nil ? 1 : common.sessions.nextSequence(for: id, peer: destination)
            if session == nil { common.sessions.save(SessionStore.Entry(sessionID: id, lastSequence: 1, peer: destination)) }
            let request = try Pushback.deny(
                prefix: network, length: length, proto: protocolNumber.rawValue == 0 ? nil : protocolNumber, port: port == 0 ? nil : port,
                lifetime: lifetime, filterID: id, sequence: sequence, key: key, timestamp: wallClockSeconds(), rateLimit: rateLimit)
            let bytes = try request.serialize()
            let target = CSPEndpoint(address: destination, port: common.cspPort)
            let local = try from.map { text throws -> IPAddress in
                guard let address = IPAddress(text) else { throw ValidationError("--from '\(text)' is not an address") }
                return address
            }
            let socket = try UDPSocket(family: destination.family, address: local)
            if !common.machine {
                print("filter \(hex(id)): \(rateLimit ? "rate-limit" : "drop") \(prefix) \(proto)\(port == 0 ? "" : " port \(port)") to this host for \(lifetime)s")
            }
            let clock = ContinuousClock()
            let start = clock.now
            let end = start.advanced(by: .milliseconds(Int64(wait * 1000)))
            var resendAt = start.advanced(by: .milliseconds(250))
            var granted = 0
            var refused = 0
            var challenges = 0
            var answered = Set<UInt64>()
            try socket.send(bytes, to: target)
            while clock.now < end {
                let timeout = min(clock.now.duration(to: end), clock.now.duration(to: resendAt))
                guard let (data, from) = try socket.receive(timeout: max(.milliseconds(1), timeout)) else {
                    // Nobody answered yet: the DENY or its answers were lost; send it again.
                    if granted + refused == 0, clock.now >= resendAt {
                        try socket.send(bytes, to: target)
                        resendAt = clock.now.advanced(by: .milliseconds(500))
                    }
                    continue
                }
                guard let reply = try? CSPMessage.parse(data), reply.sessionID == id, reply.nonce == request.nonce else { continue }
                let elapsed = start.duration(to: clock.now)
                let ms = Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15
                let record = reply.records.last
                let middlebox = record.map { hex($0.middleboxID) } ?? "?"
                switch reply.type {
                case .challenge where challenges < SignalingClient.maximumChallenges:
                    guard let token = reply.challengeToken else { continue }
                    challenges += 1
                    let response = try CSPMessage(
                        type: .response, sessionID: id, nonce: request.nonce, sequence: request.sequence, tlvs: [.challengeToken(token)]
                    ).signed(by: key, timestamp: wallClockSeconds())
                    try socket.send(try response.serialize(), to: from)
                    try socket.send(bytes, to: target)
                    if !common.machine { print("  challenged by middlebox \(middlebox): proved our address") }
                case .accept where record?.decision == .denied:
                    guard answered.insert(record!.middleboxID).inserted else { continue }
                    granted += 1
                    let lifetimeText = reply.lifetime.map { "\($0)s" } ?? "?"
                    if common.machine {
                        print("type=ACCEPT middlebox=\(middlebox) decision=denied lifetime=\(reply.lifetime ?? 0) ms=\(String(format: "%.1f", ms)) from=\(from)")
                    } else {
                        let name = record!.tlvs.lazy.compactMap { if case .middleboxName(let n) = $0 { n } else { nil } }.first ?? "?"
                        print("  middlebox \(name) id \(middlebox): \(lifetime == 0 ? "removed" : "denied, \(lifetimeText)") in \(String(format: "%.1f", ms)) ms")
                    }
                case .reject:
                    guard answered.insert(record?.middleboxID ?? 0).inserted else { continue }
                    refused += 1
                    let reason = reply.reason?.text ?? "\(reply.result)"
                    if common.machine {
                        print("type=REJECT middlebox=\(middlebox) result=\(reply.result) reason=\"\(reason)\" ms=\(String(format: "%.1f", ms))")
                    } else {
                        print("  REJECT from middlebox \(middlebox): \(reply.result): \(reason)")
                    }
                default:
                    continue
                }
                fflush(nil)
            }
            if granted + refused == 0 { printError("no middlebox answered the DENY to \(target)") }
            throw ExitCode(granted > 0 ? 0 : refused > 0 ? 1 : ExitStatus.noAnswer)
        }
    }
}
