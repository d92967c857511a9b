import ArgumentParser
import Foundation
import CommandLineSupport
import MidcomControl

/// `midctl`: the operator's view of midcomd. Thin on purpose: parse arguments, send one request, print the answer.
/// Rendering lives in MidcomControl's SessionTableFormatter, where it is unit-tested.
@main
struct Midctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "midctl",
        abstract: "List and manage the sessions of the Midcom gateway daemon (midcomd).",
        discussion: """
            midctl talks to midcomd over its control socket. Without a subcommand it runs `sessions`.

            Output: tables for people by default; --json prints the records alone, pretty-printed with sorted \
            keys, for scripts and jq. `sessions` with no sessions prints just the header line. In the table, \
            '-' marks a value midcomd does not know, and in the LEFT column a session that never expires.

            Exit status:
              0  success
              1  midcomd answered with an error (for example an unknown session id)
              2  usage error (bad option or argument)
              3  midcomd could not be reached or gave no valid answer
                 (not running, permission denied, timeout)
            """,
        version: midcomVersion,
        subcommands: [Sessions.self, Show.self, Delete.self, Flush.self, Status.self, Denies.self, Undeny.self, Reload.self, Rules.self, ShowConfig.self, Monitor.self, Announce.self],
        defaultSubcommand: Sessions.self
    )

    @OptionGroup var connection: ConnectionOptions

    /// Exit 2 on usage errors, "unknown command" for a word that names none.
    static func main() { mainFollowingConventions(rootOptionsWithValues: ["--socket"]) }
}

/// Options every subcommand shares; accepted before or after the subcommand name.
struct ConnectionOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "The control socket of midcomd (default: $MIDCOM_SOCKET, else \(ControlProtocol.defaultSocketPath)).",
            valueName: "path"))
    var socket: String?

    @Flag(help: "Never color the output (also: the NO_COLOR environment variable; colors are only used on a terminal).")
    var noColor = false

    /// States and kinds in color: on a terminal, unless turned off.
    var color: Bool {
        !noColor && isatty(1) != 0 && (ProcessInfo.processInfo.environment["NO_COLOR"] ?? "").isEmpty
    }

    var socketPath: String {
        if let socket { return socket }
        if let fromEnvironment = ProcessInfo.processInfo.environment["MIDCOM_SOCKET"], !fromEnvironment.isEmpty {
            return fromEnvironment
        }
        return ControlProtocol.defaultSocketPath
    }

    /// Sends `request`, and turns every failure into a message on stderr and midctl's exit status.
    func perform(_ request: ControlRequest) throws -> ControlResponse {
        let response: ControlResponse
        do {
            // Listing a very large table takes the daemon a while (about 3 s per 100k sessions in a
            // debug build); everything else must answer quickly or the daemon is stuck.
            let timeout: Duration = request.command == .sessions ? .seconds(120) : .seconds(5)
            response = try ControlClient(path: socketPath, timeout: timeout).send(request)
        } catch {
            printError(error.description)
            throw ExitCode(3)
        }
        guard response.ok else {
            printError(response.error ?? "midcomd refused the request without saying why")
            throw ExitCode(1)
        }
        return response
    }
}

/// midcomd said ok but left out what the command needs: a daemon bug or a version mismatch.
func missingField(_ field: String) -> ExitCode {
    printError(ControlError.protocolError("midcomd's response has no '\(field)'").description)
    return ExitCode(3)
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data("midctl: \(message)\n".utf8))
}

/// `value` as pretty-printed JSON with sorted keys, newline-terminated.
func printJSON(_ value: some Encodable) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    let data = try encoder.encode(value)
    print(String(decoding: data, as: UTF8.self))
}

/// A session id argument: 16 hex digits, case-insensitive.
func validatedSessionID(_ text: String) throws -> String {
    guard let id = SessionRecord.normalizedID(text) else {
        throw ValidationError("session id '\(text)' is not 16 hex digits (see `midctl sessions`)")
    }
    return id
}
