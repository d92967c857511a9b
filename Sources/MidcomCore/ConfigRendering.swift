import CSPWire

extension MidcomConfiguration {
    /// The configuration in effect as midcomd.conf text: every setting with its value, defaults
    /// included (`midctl show-config`). Reading it back gives the same configuration, so it can
    /// be saved as a starting point.
    public var tomlText: String {
        var out = "# the configuration in effect (defaults included)\n"
        func section(_ name: String, _ entries: [(String, String?)]) {
            out += "\n[\(name)]\n"
            for (key, value) in entries { if let value { out += "\(key) = \(value)\n" } }
        }
        func q(_ text: String) -> String { ConfigFile.jsonString(text) }  // a JSON string is a TOML basic string
        func list(_ prefixes: [IPPrefix]) -> String { "[" + prefixes.map { q($0.description) }.joined(separator: ", ") + "]" }
        section("daemon", [
            ("queue", "\(queueNumber)"), ("queue-count", "\(queueCount)"), ("proved-queue", provedQueue.map { "\($0)" }),
            ("nfqueue-encoding", q(encoding.rawValue)), ("on-daemon-absent", q(onDaemonAbsent.rawValue)),
            ("control-socket", q(controlSocket)), ("control-read-group", controlReadGroup.map(q)),
            ("control-admin-group", controlAdminGroup.map(q)), ("queue-max-length", "\(queueMaximumLength)"),
            ("queue-fail-open", "\(queueFailOpen)"), ("queue-receive-buffer", "\(queueReceiveBuffer)"), ("csp-port", "\(cspPort)"),
            ("name", q(middleboxName)), ("id", middleboxID.map { q(hex($0)) }), ("table", q(table)),
            ("flowtable-devices", "[" + flowtableDevices.map(q).joined(separator: ", ") + "]"),
        ])
        section("policy", [
            ("default", q(defaultAction.rawValue)), ("unsignaled", q(unsignaled.rawValue)), ("default-lifetime", "\(defaultLifetime)"),
            ("max-lifetime", "\(maximumLifetime)"), ("legacy-lifetime", "\(legacyLifetime)"), ("pending-timeout", "\(pendingTimeout)"),
            ("rebind-grace", "\(rebindGrace)"), ("drop-cache", "\(dropCacheLifetime)"), ("max-sessions", "\(maximumSessions)"),
            ("legacy-responders", q(legacyResponders.rawValue)), ("inside", list(insidePrefixes)),
        ])
        section("trust", [
            ("signatures", q(trust.signatures.rawValue)), ("challenge", q(trust.challenge.rawValue)),
            ("challenge-threshold", "\(trust.challengeThreshold)"), ("validated-lifetime", "\(trust.validatedLifetime)"),
            ("pending-per-source", "\(trust.pendingPerSource)"), ("max-pending", "\(trust.maximumPending)"),
            ("replies-per-source", "\(trust.repliesPerSource)"), ("replies-per-second", "\(trust.repliesPerSecond)"),
            ("timestamp-tolerance", "\(trust.timestampTolerance)"), ("sign-records", "\(trust.signRecords)"),
            ("state-directory", q(trust.stateDirectory)),
        ])
        section("pushback", [
            ("enabled", "\(pushback.enabled)"), ("max-lifetime", "\(pushback.maximumLifetime)"),
            ("filters-per-victim", "\(pushback.filtersPerVictim)"), ("max-filters", "\(pushback.maximumFilters)"),
            ("denies-per-second", "\(pushback.deniesPerSecond)"), ("min-prefix-length", "\(pushback.minimumPrefixLength4)"),
            ("min-prefix-length6", "\(pushback.minimumPrefixLength6)"),
        ])
        section("relay", [
            ("enabled", "\(relay.enabled)"), ("listen", "[" + relay.listen.map { q($0.description) }.joined(separator: ", ") + "]"),
            ("on-request", "\(relay.onRequest)"), ("token-lifetime", "\(relay.tokenLifetime)"),
            ("protection", q(relay.protection.rawValue)), ("terminating", "\(relay.terminating)"),
            ("sessions-per-key", "\(relay.sessionsPerKey)"), ("sessions-per-address", "\(relay.sessionsPerAddress)"),
            ("max-sessions", "\(relay.maximumSessions)"), ("bytes-per-session", "\(relay.bytesPerSession)"),
            ("idle-timeout", "\(relay.idleTimeout)"), ("resume-grace", "\(relay.resumeGrace)"),
            ("handshake-timeout", "\(relay.handshakeTimeout)"), ("workers", "\(relay.workers)"),
            ("setup-threads", "\(relay.setupThreads)"), ("pipe-size", "\(relay.pipeSize)"),
            ("control-socket", q(relay.controlSocket)),
        ])
        if let nat {
            section("nat", [
                ("external-address", q(nat.externalAddress.description)), ("internal", list(nat.internalPrefixes)),
                ("port-range", q("\(nat.ports.lowerBound)-\(nat.ports.upperBound)")), ("port-mapping", "\(nat.portMapping)"),
            ])
        }
        if let listen = metricsListen { section("metrics", [("listen", q(listen.description))]) }
        for rule in rules {
            out += "\n[[rule]]\n"
            var entries: [(String, String?)] = [("name", q(rule.name))]
            entries.append(("proto", rule.proto.map { IPProtocol(name: $0.description) == $0 ? q($0.description) : "\($0.rawValue)" }))
            entries.append(("source", rule.source.map { q($0.description) }))
            entries.append(("destination", rule.destination.map { q($0.description) }))
            entries.append(("port", rule.ports.map { $0.count == 1 ? "\($0.lowerBound)" : q("\($0.lowerBound)-\($0.upperBound)") }))
            entries.append(("application", rule.application.map(q)))
            entries.append(("direction", rule.incoming.map { q($0 ? "incoming" : "outgoing") }))
            entries.append(("action", q(rule.action.rawValue)))
            entries.append(("reason", rule.reason.map(q)))
            entries.append(("redirect-to", rule.redirectTarget.map { q($0.description) }))
            entries.append(("relay-mode", rule.action == .relay ? q(rule.relayMode.rawValue) : nil))
            entries.append(("max-lifetime", rule.maximumLifetime.map { "\($0)" }))
            entries.append(("signatures", rule.signatures.map { q($0.rawValue) }))
            for (key, value) in entries { if let value { out += "\(key) = \(value)\n" } }
        }
        for key in trust.knownKeys {
            out += "\n[[known-key]]\nname = \(q(key.name))\nkey = \(q(key.key.text))\n"
            if let source = key.source { out += "source = \(q(source.description))\n" }
            if let application = key.application { out += "application = \(q(application))\n" }
            if let home = key.homeAddress { out += "home-address = \(q(home.description))\n" }
        }
        return out
    }
}
