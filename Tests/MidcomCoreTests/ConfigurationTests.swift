import Foundation
import CSPWire
import XCTest

@testable import MidcomCore

final class ConfigurationTests: XCTestCase {
    func testExampleConfigurationParses() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
            "../../docs/examples/midcomd.conf")
        let text = try String(contentsOf: url, encoding: .utf8)
        let config = try MidcomConfiguration(path: "midcomd.conf", text: text)
        XCTAssertEqual(config.middleboxName, "gw1")
        XCTAssertEqual(config.rules.count, 2)
        XCTAssertEqual(config.rules[0].action, .reject)
        XCTAssertEqual(config.rules[0].ports, 23...23)
        XCTAssertEqual(config.rules[1].maximumLifetime, 30)
        XCTAssertEqual(config.onDaemonAbsent, .defaultPolicy)
        XCTAssertEqual(config.queueMaximumLength, 4096)
        XCTAssertFalse(config.queueFailOpen)
        XCTAssertEqual(config.dropCacheLifetime, 10)
    }

    func testBooleans() throws {
        XCTAssertTrue(try MidcomConfiguration(path: "x", text: "[daemon]\nqueue-fail-open = true\n").queueFailOpen)
        assertConfigError("[daemon]\nqueue-fail-open = \"yes\"\n", line: 2, contains: "must be true or false, found a string")
        assertConfigError("[daemon]\nqueue-fail-open = yes\n", line: 2, contains: "'yes' is not a TOML value")
    }

    func testFlowtableDevices() throws {
        XCTAssertEqual(MidcomConfiguration().flowtableDevices, [])
        let config = try MidcomConfiguration(path: "x", text: "[daemon]\nflowtable-devices = [\"lan0\", \"wan0.100\"]\n")
        XCTAssertEqual(config.flowtableDevices, ["lan0", "wan0.100"])
        // Shown as it is read back; changing it needs a restart (the flowtable is made at start).
        XCTAssertEqual(try MidcomConfiguration(path: "shown", text: config.tomlText).flowtableDevices, ["lan0", "wan0.100"])
        XCTAssertEqual(try MidcomConfiguration(path: "shown", text: MidcomConfiguration().tomlText).flowtableDevices, [])
        XCTAssertEqual(MidcomConfiguration().restartOnlyChanges(to: config), ["[daemon] flowtable-devices"])
        assertConfigError("[daemon]\nflowtable-devices = [\"a-very-long-name0\"]\n", line: 2, contains: "'a-very-long-name0' is not an interface name")
        assertConfigError("[daemon]\nflowtable-devices = [\"eth0/1\"]\n", line: 2, contains: "is not an interface name")
        assertConfigError("[daemon]\nflowtable-devices = [\"\"]\n", line: 2, contains: "'' is not an interface name")
        assertConfigError("[daemon]\nflowtable-devices = [\"lan0\", \"lan0\"]\n", line: 2, contains: "interface 'lan0' is named twice")
        assertConfigError("[daemon]\nflowtable-devices = [1]\n", line: 2, contains: "a list of strings")
    }

    func testEmptyFileGivesDefaults() throws {
        XCTAssertEqual(try MidcomConfiguration(path: "x", text: ""), MidcomConfiguration())
    }

    func assertConfigError(_ text: String, line: Int, contains fragment: String, file: StaticString = #filePath, lineNumber: UInt = #line) {
        XCTAssertThrowsError(try MidcomConfiguration(path: "/etc/midcom/midcomd.conf", text: text), file: file, line: lineNumber) { error in
            guard let error = error as? ConfigError else { return XCTFail("not a ConfigError: \(error)", file: file, line: lineNumber) }
            XCTAssertEqual(error.line, line, "\(error)", file: file, line: lineNumber)
            XCTAssertTrue(error.description.contains(fragment), "\(error)", file: file, line: lineNumber)
            XCTAssertTrue(error.description.hasPrefix("/etc/midcom/midcomd.conf:"), "\(error)", file: file, line: lineNumber)
        }
    }

    func testErrorsNameFileLineAndFix() {
        assertConfigError("[daemon]\nqueue = 0\nqeue-count = 2\n", line: 3, contains: "unknown key 'qeue-count'")
        assertConfigError("[daemon]\nqueue-cont = 2\n", line: 2, contains: "did you mean 'queue-count'")
        assertConfigError("[daemon]\nqueue = \"many\"\n", line: 2, contains: "must be a whole number")
        assertConfigError("[daemon]\nqueue = 70000\n", line: 2, contains: "is out of range")
        assertConfigError("[daemon]\nqueue = \"3\"\n", line: 2, contains: "must be a whole number, found a string")
        assertConfigError("[daemon]\nqueue-count = 0\n", line: 2, contains: "use a value from 1 to 64")
        assertConfigError("[policy]\nunsignaled = \"maybe\"\n", line: 2, contains: "use one of: drop, default-policy, admit")
        assertConfigError("queue = 1\n", line: 1, contains: "outside any section")
        assertConfigError("[daemon\n", line: 1, contains: "malformed table header")
        assertConfigError("[deamon]\n", line: 1, contains: "unknown section [deamon]")
        assertConfigError("[daemon]\nname = \"gw\n", line: 2, contains: "unterminated string")
        assertConfigError("[daemon]\nname\n", line: 2, contains: "expected '=' after 'name'")
        assertConfigError("\n\n[[rule]]\nproto = \"udp\"\n", line: 3, contains: "has no action")
        assertConfigError("[[rule]]\naction = \"redirect\"\n", line: 1, contains: "has no target")
        assertConfigError("[[rule]]\naction = \"admit\"\nproto = \"udpp\"\n", line: 3, contains: "unknown protocol")
        assertConfigError("[[rule]]\naction = \"admit\"\ndestination = \"10.0.0.0/33\"\n", line: 3, contains: "not an address prefix")
        assertConfigError("[[rule]]\naction = \"admit\"\ndestination = 10.0.0.0/8\n", line: 3, contains: "is not a TOML value: strings are quoted")
        assertConfigError("[[rule]]\naction = \"admit\"\nport = \"90-80\"\n", line: 3, contains: "port range")
        assertConfigError("[[rule]]\naction = \"redirect\"\nredirect-to = \"10.0.0.1\"\n", line: 3, contains: "not an address:port")
        assertConfigError("[policy]\ndefault-lifetime = 100\nmax-lifetime = 50\n", line: 2, contains: "exceeds max-lifetime")
    }

    /// Before the trust work no key was accepted anywhere (`midcomd --check` rejected every one).
    func testTrustSectionAndKnownKeys() throws {
        let key = "csp-ed25519 8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
        let text = """
            [trust]
            signatures = \"known-keys\"
            challenge = \"auto\"
            challenge-threshold = 500

            [[rule]]
            name = "open"
            direction = \"outgoing\"
            action = \"admit\"
            signatures = \"none\"

            [[known-key]]
            name = "ana"
            key = "\(key) ana's laptop"
            source = "10.0.1.0/24"
            application = "ssh"
            """
        let config = try MidcomConfiguration(path: "x", text: text)
        XCTAssertEqual(config.trust.signatures, .knownKeys)
        XCTAssertEqual(config.trust.challenge, .auto)
        XCTAssertEqual(config.trust.challengeThreshold, 500)
        XCTAssertEqual(config.rules.first?.signatures, SignatureRequirement.none)
        XCTAssertEqual(config.trust.knownKeys.first?.name, "ana")
        XCTAssertEqual(config.trust.knownKeys.first?.key.text, key)
        XCTAssertEqual(config.trust.knownKeys.first?.source, IPPrefix("10.0.1.0/24"))
        assertConfigError("[trust]\nsignatures = \"some\"\n", line: 2, contains: "use one of: none, any-key, known-keys")
        assertConfigError("[trust]\nsignatures = \"known-keys\"\n", line: 2, contains: "no [[known-key]] is listed")
        assertConfigError("[[known-key]]\nname = \"x\"\n", line: 1, contains: "has no key")
        assertConfigError("[[known-key]]\nkey = \"ssh-ed25519 AAAA\"\n", line: 2, contains: "paste the line `csp keygen` printed")
        assertConfigError("[[known-key]]\nkey = \"\(key)\"\nsource = \"10.0.1/24\"\n", line: 3, contains: "not an address prefix")
        assertConfigError("[trust]\nchalenge = \"never\"\n", line: 2, contains: "did you mean 'challenge'")
    }

    func testCommentsAndQuotedHashes() throws {
        let config = try MidcomConfiguration(path: "x", text: "[daemon]  # comment\nname = \"gw#1\" # trailing\n")
        XCTAssertEqual(config.middleboxName, "gw#1")
    }

    func testRedirectRuleParsesIPv6Target() throws {
        let config = try MidcomConfiguration(
            path: "x", text: "[[rule]]\nproto = \"tcp\"\nport = \"80-81\"\naction = \"redirect\"\nredirect-to = \"[2001:db8::3]:3128\"\n")
        XCTAssertEqual(config.rules[0].redirectTarget, CSPEndpoint(address: IPAddress("2001:db8::3")!, port: 3128))
        XCTAssertEqual(config.rules[0].ports, 80...81)
    }

    /// `midctl show-config` prints the configuration in effect; reading it back gives it again.
    func testTheConfigurationInEffectReadsBackTheSame() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        for name in ["midcomd.conf", "home-gateway.conf"] {
            let text = try String(contentsOf: root.appendingPathComponent("docs/examples/\(name)"), encoding: .utf8)
            var original = try MidcomConfiguration(path: name, text: text)
            let shown = original.tomlText
            var again = try MidcomConfiguration(path: "shown", text: shown)
            // `inside` is written out in full even where it followed [nat]'s prefixes.
            original.insidePrefixesAsWritten = original.insidePrefixes
            again.insidePrefixesAsWritten = again.insidePrefixes
            XCTAssertEqual(again, original, "\(name):\n\(shown)")
        }
        var config = MidcomConfiguration()
        config.rules = [
            PolicyRule(name: "a \"quoted\" name", proto: IPProtocol(rawValue: 47), ports: 5000...5100, incoming: false, action: .reject, reason: "no")
        ]
        XCTAssertEqual(try MidcomConfiguration(path: "x", text: config.tomlText).rules, config.rules)
    }

    /// TOML as TOML reads it, and the mistakes a firewall's configuration must not swallow.
    func testTOML() throws {
        let text = "\u{FEFF}[daemon]\r\nname = 'gw-edge' # literal\r\nqueue = 0x3\r\nqueue-max-length = 1_024\r\ncontrol-socket = \"/run/x\\u00e9.sock\"\r\n\r\n[nat]\r\nexternal-address = \"203.0.113.1\"\r\ninternal = [\r\n  \"10.0.0.0/8\", # office\r\n  \"192.168.0.0/16\",\r\n]\r\n"
        let config = try MidcomConfiguration(path: "x", text: text)
        XCTAssertEqual(config.middleboxName, "gw-edge", "a literal string keeps no quotes")
        XCTAssertEqual(config.queueNumber, 3)
        XCTAssertEqual(config.queueMaximumLength, 1024)
        XCTAssertEqual(config.controlSocket, "/run/x\u{e9}.sock")
        XCTAssertEqual(config.nat?.internalPrefixes.map(\.description), ["10.0.0.0/8", "192.168.0.0/16"])
        assertConfigError("[daemon]\n# a comment \u{0}\nqueue = 1\n", line: 2, contains: "control character")
        assertConfigError("[daemon]\nqueue = 1\nqueue = 2\n", line: 3, contains: "'queue' is set twice in [daemon] (first on line 2)")
        assertConfigError("[daemon]\nqueue = 1\n[policy]\n[daemon]\n", line: 4, contains: "[daemon] is declared twice (first on line 1)")
        assertConfigError("[[rule]]\naction = \"admit\"\n[rule]\n", line: 3, contains: "conflicts with [[rule]]")
        assertConfigError("[rule]\naction = \"admit\"\n", line: 1, contains: "write [[rule]]")
        assertConfigError("[[daemon]]\n", line: 1, contains: "write [daemon]")
        assertConfigError("[daemon]\nqueue = 1.5\n", line: 2, contains: "not used in midcomd.conf")
        assertConfigError("[daemon]\nname = { a = 1 }\n", line: 2, contains: "an inline table is valid TOML but not used")
        assertConfigError("[daemon]\nname.x = \"a\"\n", line: 2, contains: "a dotted key is valid TOML but not used")
        assertConfigError("[daemon]\nname = \"a\" \"b\"\n", line: 2, contains: "unexpected")
        assertConfigError("[daemon]\nqueue = 01\n", line: 2, contains: "not a whole number TOML accepts")
        assertConfigError("[daemon]\nname = \"bad \\q escape\"\n", line: 2, contains: "invalid escape")
        assertConfigError("[daemon]\r[policy]\n", line: 1, contains: "unexpected")
        XCTAssertThrowsError(try ConfigFile(path: "x", bytes: Array("[daemon]\nname = \"".utf8) + [0xFF, 0x22, 0x0A])) {
            XCTAssertTrue("\($0)".contains("x:2: the file is not UTF-8"), "\($0)")
        }
        XCTAssertThrowsError(try ConfigFile(path: "x", text: String(repeating: "#\n", count: ConfigFile.maximumSize))) {
            XCTAssertTrue("\($0)".contains("more than \(ConfigFile.maximumSize)"), "\($0)")
        }
        XCTAssertEqual(
            try ConfigFile(path: "x", text: "[b]\nk = [1, \"x\", true]\n[[r]]\nn = 1\n[[r]]\nn = 2\n").json,
            #"{"b": {"k": [1, "x", true]}, "r": [{"n": 1}, {"n": 2}]}"#)
    }
}

final class PolicyTests: XCTestCase {
    let client = IPAddress("10.0.1.2")!
    let server = IPAddress("10.0.2.2")!

    func flow(_ proto: IPProtocol = .udp, port: UInt16) -> FlowTuple {
        FlowTuple(proto: proto, source: client, sourcePort: 4000, destination: server, destinationPort: port)
    }

    func testFirstMatchingRuleWins() throws {
        var config = MidcomConfiguration()
        config.rules = [
            PolicyRule(name: "telnet", proto: .tcp, ports: 23...23, action: .reject, reason: "no telnet"),
            PolicyRule(name: "all-tcp", proto: .tcp, action: .admit),
        ]
        let policy = Policy(configuration: config)
        let telnet = policy.decide(flow: flow(.tcp, port: 23), application: nil, incoming: false, requestedLifetime: 10)
        XCTAssertEqual(telnet.action, .reject)
        XCTAssertEqual(telnet.reason, "no telnet")
        XCTAssertEqual(policy.decide(flow: flow(.tcp, port: 22), application: nil, incoming: false, requestedLifetime: 10).ruleName, "all-tcp")
    }

    func testDefaultActionAndReason() {
        var config = MidcomConfiguration()
        config.defaultAction = .reject
        let decision = Policy(configuration: config).decide(flow: flow(port: 1), application: nil, incoming: false, requestedLifetime: nil)
        XCTAssertEqual(decision.action, .reject)
        XCTAssertEqual(decision.reason, "not admitted by default policy")
    }

    func testLifetimeIsClampedAndZeroMeansDefault() {
        var config = MidcomConfiguration()
        config.defaultLifetime = 60
        config.maximumLifetime = 600
        config.rules = [PolicyRule(name: "dns", proto: .udp, ports: 53...53, action: .admit, maximumLifetime: 30)]
        let policy = Policy(configuration: config)
        XCTAssertEqual(policy.decide(flow: flow(port: 1), application: nil, incoming: false, requestedLifetime: 9999).lifetime, 600)
        XCTAssertEqual(policy.decide(flow: flow(port: 1), application: nil, incoming: false, requestedLifetime: 0).lifetime, 60)
        XCTAssertEqual(policy.decide(flow: flow(port: 1), application: nil, incoming: false, requestedLifetime: nil).lifetime, 60)
        XCTAssertEqual(policy.decide(flow: flow(port: 53), application: nil, incoming: false, requestedLifetime: 300).lifetime, 30)
    }

    func testPrefixApplicationAndDirectionMatches() {
        let rule = PolicyRule(
            name: "r", source: IPPrefix("10.0.1.0/24"), destination: IPPrefix("10.0.2.0/25"), application: "voip",
            incoming: false, action: .admit)
        XCTAssertTrue(rule.matches(flow(port: 5), application: "voip", incoming: false))
        XCTAssertFalse(rule.matches(flow(port: 5), application: "web", incoming: false))
        XCTAssertFalse(rule.matches(flow(port: 5), application: "voip", incoming: true))
        var other = flow(port: 5)
        other.destination = IPAddress("10.0.2.200")!
        XCTAssertFalse(rule.matches(other, application: "voip", incoming: false))
        XCTAssertFalse(IPPrefix("10.0.0.0/8")!.contains(IPAddress("2001:db8::1")!))
        XCTAssertTrue(IPPrefix("2001:db8::/32")!.contains(IPAddress("2001:db8:ffff::1")!))
        XCTAssertTrue(IPPrefix("0.0.0.0/0")!.contains(client))
    }

    func testTheBuiltInDefaultLifetimeFollowsALowerMaximum() throws {
        let config = try MidcomConfiguration(path: "c", text: "[policy]\nmax-lifetime = 30\n")
        XCTAssertEqual(config.defaultLifetime, 30)
        XCTAssertThrowsError(try MidcomConfiguration(path: "c", text: "[policy]\ndefault-lifetime = 60\nmax-lifetime = 30\n")) { error in
            XCTAssertTrue("\(error)".contains("c:2:"), "an explicit contradiction names its line: \(error)")
        }
    }

}
