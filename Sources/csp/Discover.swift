import ArgumentParser
import CSPHost
import CSPTrust
import CSPWire

extension CSPCommand {
    struct Discover: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Find the CSP middleboxes on the path toward a destination (discovery option → ANNOUNCE).",
            discussion: """
                Sends one packet carrying the discovery option (in an IPv4 option, an IPv6 hop-by-hop \
                option, or a TCP SYN option) toward DEST; every CSP middlebox on the path answers with \
                ANNOUNCE (its name, identity and epoch). Exit 0 when at least one answered, 3 when none did.
                The ipv6 and tcp encodings need CAP_NET_RAW.
                """)

        @Argument(help: "A destination beyond the middleboxes: address or address:port (port 9 if omitted).")
        var destination: String
        @Option(help: "Where the option travels: ipv4, ipv6 or tcp (default: ipv4 or ipv6 by address family).")
        var encoding: String?
        @Option(help: "Seconds to wait for ANNOUNCEs.")
        var timeout: Double = 1

        mutating func run() throws {
            let target: CSPEndpoint
            if let endpoint = CSPEndpoint(parsing: destination) {
                target = endpoint
            } else if let address = IPAddress(destination) {
                target = CSPEndpoint(address: address, port: 9)
            } else {
                throw ValidationError("'\(destination)' is not an address or address:port")
            }
            let chosen: CSPDiscoveryOption.Encoding
            switch encoding ?? (target.address.family == .ipv4 ? "ipv4" : "ipv6") {
            case "ipv4": chosen = .ipv4Option
            case "ipv6": chosen = .ipv6HopByHop
            case "tcp": chosen = .tcpOption
            case let other: throw ValidationError("unknown encoding '\(other)' (use ipv4, ipv6 or tcp)")
            }
            if chosen == .ipv4Option, target.address.family != .ipv4 { throw ValidationError("the ipv4 encoding needs an IPv4 destination") }
            if chosen == .ipv6HopByHop, target.address.family != .ipv6 { throw ValidationError("the ipv6 encoding needs an IPv6 destination") }
            var probe = DiscoveryProbe(destination: target, encoding: chosen)
            probe.timeout = .milliseconds(Int64(timeout * 1000))
            let answers = try probe.run()
            guard !answers.isEmpty else {
                printError("no CSP middlebox answered toward \(target) within \(timeout)s")
                throw ExitCode(ExitStatus.noAnswer)
            }
            for answer in answers {
                let name = answer.announce.tlvs.lazy.compactMap { if case .middleboxName(let n) = $0 { n } else { nil } }.first ?? "?"
                let id = answer.announce.records.first.map { hex($0.middleboxID) } ?? "-"
                let epoch = answer.announce.epoch.map(String.init) ?? "-"
                // An ANNOUNCE informs; a signed one also says whose key it is (the ID is that key's
                // fingerprint). The name is the first thing left out to fit 3x the probe.
                var signer = "unsigned"
                if let bytes = try? answer.announce.serialize(),
                    let record = SignatureCheck.check(bytes, message: answer.announce, checkRecords: true).records.first
                {
                    switch record.status {
                    case .valid(let key): signer = "signed by \(key)"
                    case .invalid(let why): signer = "INVALID signature (\(why))"
                    case .unsigned: break
                    }
                }
                print("ANNOUNCE from \(answer.from.address): middlebox \(name) id \(id) epoch \(epoch); \(signer)")
            }
        }
    }
}
