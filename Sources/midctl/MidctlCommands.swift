import ArgumentParser
import MidcomControl

struct Sessions: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List all sessions.")

    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Print a JSON array of session records.") var json = false

    func run() throws {
        let response = try connection.perform(ControlRequest(command: .sessions))
        guard let sessions = response.sessions else { throw missingField("sessions") }
        if json {
            try printJSON(sessions)
        } else {
            print(SessionTableFormatter.table(sessions), terminator: "")
        }
    }
}

struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show one session.")

    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The session id: 16 hex digits, as listed by `midctl sessions`.") var id: String
    @Flag(help: "Print the session record as a JSON object.") var json = false

    func validate() throws { _ = try validatedSessionID(id) }

    func run() throws {
        let response = try connection.perform(ControlRequest(command: .show, sessionID: try validatedSessionID(id)))
        guard let session = response.sessions?.first else { throw missingField("sessions") }
        if json {
            try printJSON(session)
        } else {
            print(SessionTableFormatter.detail(session), terminator: "")
        }
    }
}

struct Delete: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Delete one session and the kernel state installed for it.")

    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The session id: 16 hex digits, as listed by `midctl sessions`.") var id: String
    @Flag(help: "Report what would be deleted; change nothing.") var dryRun = false

    func validate() throws { _ = try validatedSessionID(id) }

    func run() throws {
        let request = ControlRequest(command: .delete, sessionID: try validatedSessionID(id), dryRun: dryRun)
        let response = try connection.perform(request)
        printAffected(response.affected ?? [], dryRun: dryRun)
    }
}

struct Flush: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Delete every session and the kernel state installed for it.")

    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Report what would be deleted; change nothing.") var dryRun = false

    func run() throws {
        let response = try connection.perform(ControlRequest(command: .flush, dryRun: dryRun))
        let affected = response.affected ?? []
        printAffected(affected, dryRun: dryRun)
        let noun = affected.count == 1 ? "session" : "sessions"
        print(dryRun ? "\(affected.count) \(noun) would be deleted" : "\(affected.count) \(noun) deleted")
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the daemon's status and counters.")

    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Print the status as a JSON object.") var json = false

    func run() throws {
        let response = try connection.perform(ControlRequest(command: .status))
        guard let status = response.status else { throw missingField("status") }
        if json {
            try printJSON(status)
        } else {
            print(SessionTableFormatter.status(status), terminator: "")
        }
    }
}

struct Denies: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the DENY filters victims asked for: requester, prefix, drops, time left.")

    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Print a JSON array of filter records.") var json = false

    func run() throws {
        let response = try connection.perform(ControlRequest(command: .denies))
        let denies = response.denies ?? []
        if json {
            try printJSON(denies)
        } else {
            print(SessionTableFormatter.denies(denies), terminator: "")
        }
    }
}

struct Undeny: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove one DENY filter and its kernel element.")

    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The filter id: 16 hex digits, as listed by `midctl denies`.") var id: String
    @Flag(help: "Report what would be removed; change nothing.") var dryRun = false

    func validate() throws { _ = try validatedSessionID(id) }

    func run() throws {
        let response = try connection.perform(ControlRequest(command: .undeny, sessionID: try validatedSessionID(id), dryRun: dryRun))
        for id in response.affected ?? [] { print(dryRun ? "would remove \(id)" : "removed \(id)") }
    }
}

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read midcomd's configuration file again and take it over (as SIGHUP does).",
        discussion: """
            The file is validated completely first: on an error midcomd keeps running on the configuration in \
            effect and midctl prints the error (file, line, fix) and exits 1. Sessions the new policy refuses are \
            revoked; settings that need a restart (queues, sockets, table, [nat]) make the reload fail.
            """)

    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        let response = try connection.perform(ControlRequest(command: .reload))
        print(response.message ?? "reloaded")
    }
}

/// One line per session id, so that the output can be piped on.
private func printAffected(_ ids: [String], dryRun: Bool) {
    for id in ids { print(dryRun ? "would delete \(id)" : "deleted \(id)") }
}
