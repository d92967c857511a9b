import CSPWire

/// What a reload did: the sessions the new policy no longer allows (revoked: their kernel state
/// goes with them), those whose lifetime it shortened, and the kernel changes for both.
public struct ReloadOutcome: Sendable {
    public var revoked: [(session: Session, why: String)] = []
    public var shortened = 0
    public var filtersRemoved = 0
    public var kernel: [KernelChange] = []
}

extension MidcomConfiguration {
    /// The settings a running midcomd cannot take over, named as in the file, that differ
    /// between `self` (in effect) and `new`: they name its sockets, queues, table, key and NAT
    /// addresses and ports, which live in the kernel and in other hosts' state. Empty: `new`
    /// may be swapped in.
    public func restartOnlyChanges(to new: MidcomConfiguration) -> [String] {
        var changed: [String] = []
        func check<T: Equatable>(_ name: String, _ path: KeyPath<MidcomConfiguration, T>) {
            if self[keyPath: path] != new[keyPath: path] { changed.append(name) }
        }
        check("[daemon] queue", \.queueNumber)
        check("[daemon] queue-count", \.queueCount)
        check("[daemon] proved-queue", \.provedQueue)
        check("[daemon] nfqueue-encoding", \.encoding)
        check("[daemon] on-daemon-absent", \.onDaemonAbsent)
        check("[daemon] control-socket", \.controlSocket)
        check("[daemon] control-read-group", \.controlReadGroup)
        check("[daemon] control-admin-group", \.controlAdminGroup)
        check("[daemon] queue-max-length", \.queueMaximumLength)
        check("[daemon] queue-fail-open", \.queueFailOpen)
        check("[daemon] queue-receive-buffer", \.queueReceiveBuffer)
        check("[daemon] csp-port", \.cspPort)
        check("[daemon] name", \.middleboxName)
        check("[daemon] id", \.middleboxID)
        check("[daemon] table", \.table)
        check("[daemon] flowtable-devices", \.flowtableDevices)
        check("[trust] state-directory", \.trust.stateDirectory)
        check("[nat]", \.nat)
        check("[metrics] listen", \.metricsListen)
        // The token key is loaded (relay.key) at start, and the offers must name the endpoints
        // midrelayd listens on, which it binds at its start.
        check("[relay] enabled", \.relay.enabled)
        check("[relay] listen", \.relay.listen)
        check("[relay] control-socket", \.relay.controlSocket)
        return changed
    }
}

extension GatewayEngine {
    /// Swaps in `new` (validated, with no restart-only change) and judges every session again
    /// under it, as if it were signaled now: a session the new policy refuses — its rule now
    /// rejects or redirects the flow, or requires a key the session does not have — is revoked
    /// (docs: README "Reload"); one that may stay keeps its admission, its lifetime cut to the
    /// new maximum. DENY filters stay unless pushback is now disabled. Counters, proofs, replay
    /// windows and the reply budget's current second carry over.
    public mutating func reload(_ new: MidcomConfiguration, now: Instant) -> ReloadOutcome {
        clock = now
        policy = Policy(configuration: new)
        replyBudget = ReplyBudget(perSource: new.trust.repliesPerSource, perSecond: new.trust.repliesPerSecond)
        var outcome = ReloadOutcome()
        for session in Array(sessions.all) {
            switch judgedAgain(session) {
            case .keep(let lifetime):
                guard let expiresAt = session.expiresAt, expiresAt.seconds(since: now) > Double(lifetime) + 1 else { continue }
                var shortened = session
                shortened.grantedLifetime = lifetime
                shortened.expiresAt = now.adding(seconds: lifetime)
                outcome.kernel += store(shortened, previous: session, refresh: true)
                outcome.shortened += 1
            case .revoke(let why):
                outcome.kernel += discard(session.id, now: now)
                outcome.revoked.append((session, why))
            }
        }
        counters.revoked += UInt64(outcome.revoked.count)
        if !new.pushback.enabled {
            for id in Array(denies.entries.keys) {
                if let (_, kernel) = removeDeny(id: id) {
                    outcome.kernel += kernel
                    outcome.filtersRemoved += 1
                }
            }
        }
        counters.reloads += 1
        return outcome
    }

    enum Judgement {
        case keep(lifetime: UInt32)
        case revoke(String)
    }

    /// `session` judged by the policy in effect, the way its request would be now.
    func judgedAgain(_ session: Session) -> Judgement {
        if session.state == .legacy {
            // Admitted unsignaled: by `unsignaled`, not by the rules.
            switch configuration.unsignaled {
            case .admit: return .keep(lifetime: configuration.legacyLifetime)
            case .admitInside where configuration.isInside(session.flow.source): return .keep(lifetime: configuration.legacyLifetime)
            default: return .revoke("unsignaled = \(configuration.unsignaled.rawValue)")
            }
        }
        let flow = session.relay == nil ? session.flow : policyView(session.flow, relayedFor: session.ownerKey)
        let decision = policy.decide(
            flow: flow, application: session.application, incoming: session.incoming, requestedLifetime: .max)
        let rule = decision.ruleName.map { "rule '\($0)'" } ?? "the default action"
        switch decision.action {
        case .reject:
            return .revoke("\(rule) rejects it" + (decision.reason.map { ": \($0)" } ?? ""))
        case .redirect where session.state != .redirected:
            return .revoke("\(rule) redirects it to a proxy")
        case .admit where session.state == .redirected:
            return .revoke("\(rule) no longer redirects it")
        case .relay:
            // Relayed flows hold no session here (the offer installs nothing): one that does was
            // admitted directly, which the rule no longer allows.
            return .revoke("\(rule) relays it")
        case .admit, .redirect:
            break
        }
        let signer = session.origin == .csp ? session.ownerKey : nil
        guard authorizes(decision.signatures, signer: signer, source: session.owner, application: session.application) else {
            return .revoke("\(rule) needs \(decision.signatures == .knownKeys ? "a known key" : "a signature")")
        }
        return .keep(lifetime: max(decision.lifetime, 1))
    }
}
