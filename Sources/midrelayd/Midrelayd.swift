import ArgumentParser
import CSPTrust
import CSPWire
import CommandLineSupport
import Foundation
import MidcomCore

/// midrelayd: the relay of relayed sessions (docs/PROTOCOL.md 14). midcomd offers it (RELAY, with a
/// token minted by the key both share); midrelayd accepts the host's hop, opens the next one and
/// moves the octets — spliced in the kernel when the hops are clear.
@main
struct Midrelayd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "midrelayd",
        abstract: "Relay CSP sessions offered by midcomd: accept hops, open the next, move the octets.",
        discussion: """
            Reads the [relay] section of midcomd's configuration (--config); options given here \
            override it. The relay key (--relay-key) is made by midcomd in its state directory.
            """,
        version: midcomVersion)

    @Option(help: "midcomd's configuration file; its [relay] section configures the relay.") var config: String?
    @Option(help: "Relay endpoint to listen on (address:port; repeatable; default: [relay] listen).") var listen: [String] = []
    @Option(help: "The relay key midcomd made (token key, X25519 key, identity block).")
    var relayKey: String = "/var/lib/midcom/relay.key"
    @Option(help: "Control socket for midctl (default: [relay] control-socket; 'none' for no socket).") var controlSocket: String?
    @Option(help: "Relayed sessions per upstream key.") var sessionsPerKey: Int?
    @Option(help: "Relayed sessions per upstream address (IPv4 /32, IPv6 /64).") var sessionsPerAddress: Int?
    @Option(help: "Relayed sessions in all.") var maxSessions: Int?
    @Option(help: "Octets per session, both ways (0: no limit).") var bytesPerSession: UInt64?
    @Option(help: "Seconds without an octet either way before both hops are cut.") var idleTimeout: Int?
    @Option(help: "Seconds a broken session is kept for the host's resume.") var resumeGrace: Int?
    @Option(help: "Worker threads moving octets (0: half the CPUs, at least 1).") var workers: Int?
    @Option(help: "Pipe size per direction for splice, octets.") var pipeSize: Int?
    @Option(help: "Hop protection accepted: clear (spliced), sealed (encrypted per hop, user space) or either.")
    var protection: String?
    @Flag(name: .shortAndLong, help: "Log every session's start, end and refusal.") var verbose = false

    static func main() { mainFollowingConventions() }

    mutating func run() throws {
        // A hop that breaks while splice or send writes to it must be an error to handle (EPIPE),
        // not a signal that ends every session of the relay.
        signal(SIGPIPE, SIG_IGN)
        var relay = RelayConfiguration()
        if let config {
            do {
                let text = try String(contentsOfFile: config, encoding: .utf8)
                relay = try MidcomConfiguration(path: config, text: text).relay
            } catch {
                FileHandle.standardError.write(Data("midrelayd: \(error)\n".utf8))
                throw ExitCode(1)
            }
        }
        let keys: RelayKeyFile
        do { keys = try RelayKeyFile.load(relayKey) } catch {
            FileHandle.standardError.write(Data("midrelayd: \(error)\n".utf8))
            throw ExitCode(1)
        }
        let endpoints = try listen.isEmpty ? relay.listen : listen.map { text throws -> CSPEndpoint in
            guard let endpoint = CSPEndpoint(parsing: text) else { throw ValidationError("--listen '\(text)' is not address:port") }
            return endpoint
        }
        guard !endpoints.isEmpty else { throw ValidationError("nothing to listen on: give --listen address:port or [relay] listen in --config") }
        let accepted = protection ?? relay.protection.rawValue
        guard ["clear", "sealed", "either"].contains(accepted) else { throw ValidationError("--protection is clear, sealed or either") }
        var settings = RelayDaemon.Settings(listen: endpoints)
        settings.limits.sessionsPerKey = sessionsPerKey ?? relay.sessionsPerKey
        settings.limits.sessionsPerAddress = sessionsPerAddress ?? relay.sessionsPerAddress
        settings.limits.maxSessions = maxSessions ?? relay.maximumSessions
        settings.limits.bytesPerSession = bytesPerSession ?? relay.bytesPerSession
        settings.limits.idleTimeout = .seconds(idleTimeout ?? Int(relay.idleTimeout))
        settings.limits.resumeGrace = .seconds(resumeGrace ?? Int(relay.resumeGrace))
        settings.limits.handshakeTimeout = .seconds(Int(relay.handshakeTimeout))
        settings.limits.acceptsClear = accepted != "sealed"
        settings.limits.acceptsSealed = accepted != "clear"
        let threads = workers ?? relay.workers
        settings.workers = threads > 0 ? threads : max(1, ProcessInfo.processInfo.activeProcessorCount / 2)
        settings.setupThreads = max(1, relay.setupThreads)
        settings.pipeSize = pipeSize ?? relay.pipeSize
        let socket = controlSocket ?? relay.controlSocket
        settings.controlSocket = socket == "none" ? nil : socket
        settings.verbose = verbose
        do { try RelayDaemon(settings: settings, keys: keys).run() } catch {
            FileHandle.standardError.write(Data("midrelayd: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}
