import ArgumentParser
import CSPTrust
import CSPWire
import CommandLineSupport
import Foundation

/// midrelayd: the relay of relayed sessions (docs/PROTOCOL.md 14). midcomd offers it (RELAY, with a
/// token minted by the key both share); midrelayd accepts the host's hop, opens the next one and
/// moves the octets — spliced in the kernel when the hops are clear.
@main
struct Midrelayd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "midrelayd",
        abstract: "Relay CSP sessions offered by midcomd: accept hops, open the next, move the octets.",
        version: midcomVersion)

    @Option(help: "Relay endpoint to listen on (address:port; repeatable).") var listen: [String] = []
    @Option(help: "The relay key midcomd made (token key, X25519 key, identity block).")
    var relayKey: String = "/var/lib/midcom/relay.key"
    @Option(help: "Relayed sessions per upstream key.") var sessionsPerKey = 16
    @Option(help: "Relayed sessions per upstream address (IPv4 /32, IPv6 /64).") var sessionsPerAddress = 64
    @Option(help: "Relayed sessions in all.") var maxSessions = 4096
    @Option(help: "Octets per session, both ways (0: no limit).") var bytesPerSession: UInt64 = 0
    @Option(help: "Seconds without an octet either way before both hops are cut.") var idleTimeout = 300
    @Option(help: "Seconds a broken session is kept for the host's resume.") var resumeGrace = 30
    @Option(help: "Worker threads moving octets (0: half the CPUs, at least 1).") var workers = 0
    @Option(help: "Pipe size per direction for splice, octets.") var pipeSize = 262_144
    @Option(help: "Hop protection accepted: clear (spliced), sealed (encrypted per hop, user space) or either.")
    var protection = "either"
    @Flag(name: .shortAndLong, help: "Log every session's start, end and refusal.") var verbose = false

    static func main() { mainFollowingConventions() }

    mutating func run() throws {
        // A hop that breaks while splice or send writes to it must be an error to handle (EPIPE),
        // not a signal that ends every session of the relay.
        signal(SIGPIPE, SIG_IGN)
        let keys: RelayKeyFile
        do { keys = try RelayKeyFile.load(relayKey) } catch {
            FileHandle.standardError.write(Data("midrelayd: \(error)\n".utf8))
            throw ExitCode(1)
        }
        guard !listen.isEmpty else { throw ValidationError("give at least one --listen address:port") }
        guard ["clear", "sealed", "either"].contains(protection) else { throw ValidationError("--protection is clear, sealed or either") }
        var settings = RelayDaemon.Settings(listen: try listen.map { text throws -> CSPEndpoint in
            guard let endpoint = CSPEndpoint(parsing: text) else { throw ValidationError("--listen '\(text)' is not address:port") }
            return endpoint
        })
        settings.limits.sessionsPerKey = sessionsPerKey
        settings.limits.sessionsPerAddress = sessionsPerAddress
        settings.limits.maxSessions = maxSessions
        settings.limits.bytesPerSession = bytesPerSession
        settings.limits.idleTimeout = .seconds(idleTimeout)
        settings.limits.resumeGrace = .seconds(resumeGrace)
        settings.limits.acceptsClear = protection != "sealed"
        settings.limits.acceptsSealed = protection != "clear"
        settings.workers = workers > 0 ? workers : max(1, ProcessInfo.processInfo.activeProcessorCount / 2)
        settings.pipeSize = pipeSize
        settings.verbose = verbose
        do { try RelayDaemon(settings: settings, keys: keys).run() } catch {
            FileHandle.standardError.write(Data("midrelayd: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}
