#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CommandLineSupport
import CSPWire
import Dispatch
import MidcomCore

/// `midcomd`: the Midcom gateway daemon.
@main
struct Midcomd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "midcomd",
        abstract: "Midcom gateway daemon: Connection Signaling Protocol middlebox on NFQUEUE and nftables.",
        discussion: """
            Needs the ruleset nft-rules/midcom.nft loaded (table inet midcom) and CAP_NET_ADMIN.
            Exit codes: 0 clean stop, 1 runtime failure, 2 usage, 78 configuration error (EX_CONFIG).
            """,
        version: midcomVersion)

    /// Exit 2 on usage errors (the argument parser's default is 64).
    static func main() { mainFollowingConventions() }

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

    @Flag(help: "With --check: also print the file as a TOML parser reads it (JSON, sorted keys).")
    var printConfig = false

    mutating func run() throws {
        let levels: [String: Log.Level] = ["error": .error, "warning": .warning, "notice": .notice, "info": .info, "debug": .debug]
        guard let level = levels[logLevel] else { throw ValidationError("--log-level must be one of error, warning, notice, info, debug") }
        let log = Log(threshold: level)

        let source = ConfigurationSource(path: config, controlSocket: controlSocket, queue: queue, stateDirectory: stateDir)
        let configuration: MidcomConfiguration
        do {
            configuration = try source.load()
        } catch {
            log(.error, "\(error)")
            throw ExitCode(78)
        }
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
            if let refused = RelayOffering.checkListen(configuration, path: config) {
                log(.error, "\(refused)")
                throw ExitCode(78)
            }
            if printConfig {
                do { print(try readConfigurationFile(path: config)?.json ?? "{}") } catch {
                    log(.error, "\(error)")
                    throw ExitCode(78)
                }
            }
            print("\(config): configuration OK (\(configuration.rules.count) rule(s), queue \(configuration.queueNumber))")
            return
        }

        let notifier = SystemdNotifier(environment: ProcessEnvironment.all)
        let daemon: Daemon
        do {
            daemon = try Daemon(configuration: configuration, source: source, log: log, notifier: notifier)
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
        // SIGHUP reloads the configuration (as `midctl reload` does; its default action would
        // kill the daemon and leave its queue rule behind). SIGUSR1/SIGUSR2 would kill it too:
        // they are ignored, loudly.
        signal(SIGHUP, SIG_IGN)
        let hangup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        hangup.setEventHandler { _ = daemon.reload(trigger: "SIGHUP") }
        hangup.resume()
        signal(SIGUSR1, SIG_IGN)
        signal(SIGUSR2, SIG_IGN)
        let ignored = [SIGUSR1, SIGUSR2].map { number -> DispatchSourceSignal in
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { log(.notice, "signal \(number) ignored (SIGHUP reloads, SIGTERM stops)") }
            source.resume()
            return source
        }
        defer {
            sources.forEach { $0.cancel() }
            ignored.forEach { $0.cancel() }
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

/// Where the configuration comes from: the file, and the command line's overrides, applied
/// again at every reload.
struct ConfigurationSource: Sendable {
    var path: String
    var controlSocket: String?
    var queue: UInt16?
    var stateDirectory: String?

    func load() throws -> MidcomConfiguration {
        var configuration = try loadConfiguration(path: path)
        if let controlSocket { configuration.controlSocket = controlSocket }
        if let queue { configuration.queueNumber = queue }
        if let stateDirectory { configuration.trust.stateDirectory = stateDirectory }
        return configuration
    }
}

/// Reads the configuration; a missing file at the default path means "all defaults". Anything
/// but a regular file of at most `ConfigFile.maximumSize` octets is refused with the reason.
func loadConfiguration(path: String) throws -> MidcomConfiguration {
    try MidcomConfiguration(file: try readConfigurationFile(path: path) ?? ConfigFile(path: path, text: ""))
}

/// The parsed file; nil when the default path does not exist.
func readConfigurationFile(path: String) throws -> ConfigFile? {
    func failure(_ message: String, _ fix: String) -> ConfigError { ConfigError(path: path, line: 0, message: message, fix: fix) }
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else {
        if errno == ENOENT, path == MidcomConfiguration.defaultPath { return nil }
        throw failure("cannot read: \(String(cString: strerror(errno)))", "check the path given with --config")
    }
    defer { close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0 else { throw failure("cannot read: \(String(cString: strerror(errno)))", "check the file") }
    // /dev/null (an empty configuration: all defaults) is a character device; a directory is not.
    guard info.st_mode & S_IFMT == S_IFREG || info.st_mode & S_IFMT == S_IFCHR else {
        throw failure(info.st_mode & S_IFMT == S_IFDIR ? "is a directory, not a file" : "is not a regular file", "give the configuration file, e.g. --config /etc/midcom/midcomd.conf")
    }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0, errno == EINTR { continue }
        guard count >= 0 else { throw failure("cannot read: \(String(cString: strerror(errno)))", "check the file") }
        if count == 0 { break }
        bytes += buffer[0..<count]
        guard bytes.count <= ConfigFile.maximumSize else {
            throw failure("the file is larger than \(ConfigFile.maximumSize) octets", "a configuration is a few kilobytes: check that this is the right file")
        }
    }
    return try ConfigFile(path: path, bytes: bytes)
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
