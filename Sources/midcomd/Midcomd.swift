#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CSPWire
import Dispatch
import MidcomCore

let midcomVersion = "0.1.0"

/// `midcomd`: the Midcom gateway daemon.
@main
struct Midcomd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "midcomd",
        abstract: "Midcom gateway daemon: Connection Signaling Protocol middlebox on NFQUEUE and nftables.",
        discussion: """
            Needs the ruleset nft-rules/midcom.nft loaded (table inet midcom) and CAP_NET_ADMIN.
            Exit codes: 0 clean stop, 1 runtime failure, 2 usage, 78 configuration error (EX_CONFIG).
            """)

    @Option(name: .shortAndLong, help: "Configuration file.")
    var config: String = MidcomConfiguration.defaultPath

    @Flag(name: [.customShort("n"), .long], help: "Check the configuration and exit; touch nothing (like pfctl -n).")
    var check = false

    @Option(help: "Override the control socket path.")
    var controlSocket: String?

    @Option(help: "Override the NFQUEUE number.")
    var queue: UInt16?

    @Option(help: "Log level: error, warning, notice, info, debug.")
    var logLevel: String = "info"

    @Option(help: "Override the state directory (middlebox key and epoch; [trust] state-directory).")
    var stateDir: String?

    @Flag(help: "Print the middlebox's public key (creating it on first use) and exit.")
    var showKey = false

    mutating func run() throws {
        let levels: [String: Log.Level] = ["error": .error, "warning": .warning, "notice": .notice, "info": .info, "debug": .debug]
        guard let level = levels[logLevel] else { throw ValidationError("--log-level must be one of error, warning, notice, info, debug") }
        let log = Log(threshold: level)

        var configuration: MidcomConfiguration
        do {
            configuration = try loadConfiguration(path: config)
        } catch {
            log(.error, "\(error)")
            throw ExitCode(78)
        }
        if let controlSocket { configuration.controlSocket = controlSocket }
        if let queue { configuration.queueNumber = queue }
        if let stateDir { configuration.trust.stateDirectory = stateDir }
        if showKey {
            do {
                let key = try PersistentIdentity.loadKey(directory: configuration.trust.stateDirectory)
                print("\(key.publicKey.text) midcomd \(configuration.middleboxName) id \(hex(configuration.middleboxID ?? key.publicKey.fingerprint))")
            } catch {
                log(.error, "\(error)")
                throw ExitCode(1)
            }
            return
        }
        if check {
            do { _ = try controlAccess(configuration) } catch {
                log(.error, "\(config): \(error)")
                throw ExitCode(78)
            }
            print("\(config): configuration OK (\(configuration.rules.count) rule(s), queue \(configuration.queueNumber))")
            return
        }

        let notifier = SystemdNotifier(environment: ProcessEnvironment.all)
        let daemon: Daemon
        do {
            daemon = try Daemon(configuration: configuration, log: log, notifier: notifier)
        } catch {
            log(.error, "cannot start: \(error)")
            throw ExitCode(1)
        }
        // Signals are taken synchronously on a dispatch queue so the handler may do real work.
        signal(SIGTERM, SIG_IGN)
        signal(SIGINT, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
        let sources = [SIGTERM, SIGINT].map { number -> DispatchSourceSignal in
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { daemon.stop() }
            source.resume()
            return source
        }
        // Reload is not implemented yet (docs: operations issue). SIGHUP used to kill the daemon
        // (exit 129) and leave its queue rule behind; until reload exists it is ignored, loudly.
        signal(SIGHUP, SIG_IGN)
        let hangup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        hangup.setEventHandler {
            log(.notice, "SIGHUP ignored: reloading is not implemented yet; restart midcomd to apply a new configuration")
        }
        hangup.resume()
        defer {
            sources.forEach { $0.cancel() }
            hangup.cancel()
        }
        do {
            try daemon.run()
        } catch {
            log(.error, "packet loop failed: \(error)")
            daemon.shutdown()
            throw ExitCode(1)
        }
        daemon.shutdown()
        log(.notice, "midcomd stopped")
    }
}

/// Reads the configuration; a missing file at the default path means "all defaults".
func loadConfiguration(path: String) throws -> MidcomConfiguration {
    guard let file = fopen(path, "r") else {
        if errno == ENOENT, path == MidcomConfiguration.defaultPath { return MidcomConfiguration() }
        throw ConfigError(path: path, line: 0, message: "cannot read: \(String(cString: strerror(errno)))", fix: "check the path given with --config")
    }
    defer { fclose(file) }
    var text = ""
    var buffer = [CChar](repeating: 0, count: 4096)
    while fgets(&buffer, Int32(buffer.count), file) != nil {
        text += String(cString: buffer)
    }
    return try MidcomConfiguration(path: path, text: text)
}

enum ProcessEnvironment {
    static var all: [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            pointer += 1
        }
        return result
    }
}
