#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser

/// The release the three tools report with `--version`.
public let midcomVersion = "0.2.0"

/// The conventions midcomd, midctl and csp share on the command line: usage errors exit with 2
/// (like grep and ip; the argument parser's default is 64), the message names the tool, and an
/// unknown command says so and lists the commands instead of printing the default
/// subcommand's usage.
extension ParsableCommand {
    /// Parses the process's arguments and runs the command under these conventions.
    /// `rootOptionsWithValues`: the root's options that take a value (so their value is not
    /// mistaken for a command name).
    public static func mainFollowingConventions(rootOptionsWithValues: Set<String> = []) -> Never {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if let unknown = unknownCommand(in: arguments, rootOptionsWithValues: rootOptionsWithValues) {
            let names = configuration.subcommands.map { $0.configuration.commandName ?? "\($0)".lowercased() }
            writeError("\(toolName): unknown command '\(unknown)'; the commands are: \(names.joined(separator: ", ")) (see '\(toolName) --help')")
            Glibc.exit(2)
        }
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
            Glibc.exit(0)
        } catch {
            guard exitCode(for: error) == .validationFailure else { exit(withError: error) }
            var message = fullMessage(for: error)
            if message.hasPrefix("Error: ") { message = String(message.dropFirst("Error: ".count)) }
            writeError("\(toolName): \(message)")
            Glibc.exit(2)
        }
    }

    static var toolName: String { configuration.commandName ?? "\(Self.self)".lowercased() }

    /// The first word that should name a command but names none (nil: fine, or no commands).
    static func unknownCommand(in arguments: [String], rootOptionsWithValues: Set<String>) -> String? {
        guard !configuration.subcommands.isEmpty else { return nil }
        // The argument parser's own options that take a value.
        let rootOptionsWithValues = rootOptionsWithValues.union(["--generate-completion-script"])
        var skipNext = false
        for argument in arguments {
            if skipNext {
                skipNext = false
                continue
            }
            if argument == "--" { return nil }
            if argument.hasPrefix("-") {
                skipNext = rootOptionsWithValues.contains(argument)
                continue
            }
            let names = configuration.subcommands.map { $0.configuration.commandName ?? "\($0)".lowercased() } + ["help"]
            return names.contains(argument) ? nil : argument
        }
        return nil
    }

    static func writeError(_ text: String) {
        let line = text.hasSuffix("\n") ? text : text + "\n"
        _ = line.withCString { Glibc.write(2, $0, strlen($0)) }
    }
}
