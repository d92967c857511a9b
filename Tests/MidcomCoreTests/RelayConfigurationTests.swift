import CSPWire
import XCTest

@testable import MidcomCore

/// `[relay]` and relay rules in midcomd.conf (docs/ARCHITECTURE.md, "Relayed sessions"): the
/// defaults, every key, and what `midcomd --check` refuses, each with file:line and the fix.
final class RelayConfigurationTests: XCTestCase {
    let path = "/etc/midcom/midcomd.conf"

    func assertConfigError(_ text: String, line: Int, contains fragment: String, file: StaticString = #filePath, lineNumber: UInt = #line) {
        XCTAssertThrowsError(try MidcomConfiguration(path: path, text: text), file: file, line: lineNumber) { error in
            guard let error = error as? ConfigError else { return XCTFail("not a ConfigError: \(error)", file: file, line: lineNumber) }
            XCTAssertEqual(error.line, line, "\(error)", file: file, line: lineNumber)
            XCTAssertTrue(error.description.contains(fragment), "\(error)", file: file, line: lineNumber)
            XCTAssertTrue(error.description.hasPrefix("\(path):\(line): "), "\(error)", file: file, line: lineNumber)
        }
    }

    func testDefaults() throws {
        let relay = try MidcomConfiguration(path: path, text: "").relay
        XCTAssertFalse(relay.enabled)
        XCTAssertEqual(relay.listen, [])
        XCTAssertFalse(relay.onRequest)
        XCTAssertEqual(relay.tokenLifetime, 60)
        XCTAssertEqual(relay.protection, .either)
        XCTAssertFalse(relay.terminating)
        XCTAssertEqual([relay.sessionsPerKey, relay.sessionsPerAddress, relay.maximumSessions], [16, 64, 4096])
        XCTAssertEqual(relay.bytesPerSession, 0)
        XCTAssertEqual([relay.idleTimeout, relay.resumeGrace, relay.handshakeTimeout], [300, 30, 10])
        XCTAssertEqual([relay.workers, relay.setupThreads, relay.pipeSize], [0, 4, 262_144])
        XCTAssertEqual(relay.controlSocket, "/run/midcom-relay/relay.sock")
        XCTAssertEqual(relay, RelayConfiguration())
    }

    /// The block of docs/ARCHITECTURE.md, "Configuration", as written there.
    func testTheArchitectureExampleParses() throws {
        let text = """
            [relay]
            enabled = true
            listen = ["10.1.0.1:7228", "[2001:db8:1::1]:7228"]
            on-request = true
            token-lifetime = 90
            protection = "sealed"
            terminating = true
            sessions-per-key = 8
            sessions-per-address = 32
            max-sessions = 1000
            bytes-per-session = 10_000_000_000
            idle-timeout = 600
            resume-grace = 45
            handshake-timeout = 5
            workers = 2
            setup-threads = 8
            pipe-size = 1048576
            control-socket = "/run/midcom/r.sock"

            [[rule]]
            name = "outside-web-through-the-relay"
            destination = "0.0.0.0/0"
            proto = "tcp"
            port = 443
            action = "relay"
            relay-mode = "terminating"

            [[rule]]
            name = "blind"
            proto = "tcp"
            action = "relay"
            """
        let config = try MidcomConfiguration(path: path, text: text)
        let relay = config.relay
        XCTAssertTrue(relay.enabled)
        XCTAssertEqual(relay.listen, [CSPEndpoint(parsing: "10.1.0.1:7228")!, CSPEndpoint(parsing: "[2001:db8:1::1]:7228")!])
        XCTAssertTrue(relay.onRequest)
        XCTAssertEqual(relay.tokenLifetime, 90)
        XCTAssertEqual(relay.protection, .sealed)
        XCTAssertTrue(relay.terminating)
        XCTAssertEqual([relay.sessionsPerKey, relay.sessionsPerAddress, relay.maximumSessions], [8, 32, 1000])
        XCTAssertEqual(relay.bytesPerSession, 10_000_000_000)
        XCTAssertEqual([relay.idleTimeout, relay.resumeGrace, relay.handshakeTimeout], [600, 45, 5])
        XCTAssertEqual([relay.workers, relay.setupThreads, relay.pipeSize], [2, 8, 1_048_576])
        XCTAssertEqual(relay.controlSocket, "/run/midcom/r.sock")
        XCTAssertEqual(config.rules.map(\.action), [.relay, .relay])
        XCTAssertEqual(config.rules.map(\.relayMode), [.terminating, .blind], "blind by default")
        XCTAssertEqual(relay.modes(for: .blind), [.sealed])
        XCTAssertEqual(relay.modes(for: .terminating), [.sealed, .terminating])
        XCTAssertEqual(relay.endpoint(for: .ipv6), CSPEndpoint(parsing: "[2001:db8:1::1]:7228"))
        // What `midctl show-config` prints reads back the same.
        let shown = try MidcomConfiguration(path: "shown", text: config.tomlText)
        XCTAssertEqual(shown.relay, config.relay)
        XCTAssertEqual(shown.rules, config.rules)
        XCTAssertEqual(relay.restartOnlyChanges(to: RelayConfiguration()), ["[relay] listen", "[relay] workers", "[relay] setup-threads", "[relay] control-socket"])
    }

    func testListenForms() throws {
        let relay = try MidcomConfiguration(path: path, text: "[relay]\nenabled = true\nlisten = \"10.1.0.1, 2001:db8::1, [2001:db8::2]:9000, 192.0.2.1:7300\"\n").relay
        XCTAssertEqual(relay.listen.map(\.description), ["10.1.0.1:7228", "[2001:db8::1]:7228", "[2001:db8::2]:9000", "192.0.2.1:7300"])
    }

    func testRelaySectionErrors() {
        assertConfigError("[relay]\nenabled = true\n", line: 2, contains: "has no listen endpoint")
        assertConfigError("[relay]\nlisten = [\"0.0.0.0:7228\"]\n", line: 2, contains: "is a wildcard")
        assertConfigError("[relay]\nlisten = [\"[::]:7228\"]\n", line: 2, contains: "is a wildcard")
        assertConfigError("[relay]\nlisten = [\"relay.example:7228\"]\n", line: 2, contains: "is not an address:port")
        assertConfigError("[relay]\n\nlisten = [\"10.0.0.1:0\"]\n", line: 3, contains: "has port 0")
        assertConfigError("[relay]\nlisten = 7228\n", line: 2, contains: "must be a list of strings")
        assertConfigError("[relay]\ntoken-lifetime = 0\n", line: 2, contains: "use a value from 5 to 3600")
        assertConfigError("[relay]\nprotection = \"tls\"\n", line: 2, contains: "use one of: clear, sealed, either")
        assertConfigError("[relay]\npipe-size = 2097152\n", line: 2, contains: "out of range")
        assertConfigError("[relay]\nenabled = \"yes\"\n", line: 2, contains: "must be true or false")
        assertConfigError("[relay]\ntoken-lifetme = 30\n", line: 2, contains: "did you mean 'token-lifetime'")
        assertConfigError("[[relay]]\n", line: 1, contains: "write [relay]")
    }

    func testCheckRefusesRelayRulesItCannotServe() {
        let enabled = "[relay]\nenabled = true\nlisten = [\"10.1.0.1:7228\"]\n"
        // A relay rule without [relay] enabled: the line of its action.
        assertConfigError("[[rule]]\nname = \"web\"\nproto = \"tcp\"\naction = \"relay\"\n", line: 4, contains: "[[rule]] 'web' relays, but [relay] is not enabled")
        assertConfigError("[relay]\nenabled = false\n[[rule]]\nproto = \"tcp\"\naction = \"relay\"\n", line: 5, contains: "is not enabled")
        // A non-TCP proto, or none: the line of proto, else of the rule.
        assertConfigError(enabled + "[[rule]]\nname = \"dns\"\nproto = \"udp\"\naction = \"relay\"\n", line: 6, contains: "relays udp flows: relays carry TCP only")
        assertConfigError(enabled + "\n[[rule]]\nname = \"all\"\naction = \"relay\"\n", line: 5, contains: "relays every protocol")
        // relay-mode = "terminating" without terminating = true: the line of relay-mode.
        assertConfigError(
            enabled + "[[rule]]\nproto = \"tcp\"\naction = \"relay\"\nrelay-mode = \"terminating\"\n", line: 7,
            contains: "through a terminating relay, but [relay] terminating is false")
        XCTAssertNoThrow(try MidcomConfiguration(
            path: path, text: enabled + "terminating = true\n[[rule]]\nproto = \"tcp\"\naction = \"relay\"\nrelay-mode = \"terminating\"\n"))
        // [relay] may come after the rules: the checks see the whole file.
        XCTAssertNoThrow(try MidcomConfiguration(path: path, text: "[[rule]]\nproto = \"tcp\"\naction = \"relay\"\n" + enabled))
        assertConfigError(enabled + "[[rule]]\nproto = \"tcp\"\naction = \"relay\"\nrelay-mode = \"open\"\n", line: 7, contains: "use one of: blind, terminating")
        assertConfigError(enabled + "[[rule]]\nproto = \"tcp\"\naction = \"admit\"\nrelay-mode = \"blind\"\n", line: 7, contains: "has relay-mode but its action is 'admit'")
        assertConfigError("[policy]\ndefault = \"relay\"\n", line: 2, contains: "the default action cannot be 'relay'")
        assertConfigError("[[rule]]\nproto = \"tcp\"\naction = \"relai\"\n", line: 3, contains: "use one of: admit, reject, redirect, relay")
    }
}
