import CSPWire
import MidcomControl
import MidcomCore

/// Reload (SIGHUP, `midctl reload`, systemd's ExecReload): the configuration file is read and
/// validated completely first; on any error midcomd keeps running on the configuration in effect
/// and says why (file:line and the fix). Settings that live in the kernel, in sockets or in other
/// hosts' state (`MidcomConfiguration.restartOnlyChanges`) need a restart and make the reload
/// fail. Otherwise the policy is swapped under the engine lock — no packet sees half of each —
/// and every session is judged again: those the new policy refuses are revoked.
extension Daemon {
    /// One line for the operator: what changed, or why nothing did.
    func reload(trigger: String) -> Result<String, ReloadFailure> {
        reloading.withLock { _ in
            notifier.notify("RELOADING=1")
            defer { notifier.notify("READY=1") }
            let result = takeOver(trigger: trigger)
            switch result {
            case .success(let summary):
                log(.notice, "\(trigger): \(summary)")
                events.publish("reload", "\(trigger): \(summary)")
            case .failure(let failure):
                reloadFailures.add(1, ordering: .relaxed)
                log(.error, "\(trigger): configuration not reloaded, still running on the previous one: \(failure)")
            }
            return result
        }
    }

    private func takeOver(trigger: String) -> Result<String, ReloadFailure> {
        let new: MidcomConfiguration
        do {
            new = try source.load()
            _ = try controlAccess(new)
        } catch {
            return .failure(ReloadFailure(description: "\(error)"))
        }
        let now = self.now()
        let result: Result<ReloadOutcome, ReloadFailure> = engine.withLock { engine in
            let changed = engine.policy.configuration.restartOnlyChanges(to: new)
            guard changed.isEmpty else {
                return .failure(ReloadFailure(
                    description: "\(source.path): \(changed.joined(separator: ", ")) changed: restart midcomd to apply \(changed.count == 1 ? "it" : "them") (systemctl restart midcomd)"))
            }
            return .success(engine.reload(new, now: now))
        }
        switch result {
        case .failure(let failure):
            return .failure(failure)
        case .success(let outcome):
            for (session, why) in outcome.revoked.prefix(20) {
                log(.notice, "revoked session \(hex(session.id)) \(session.flow): \(why)")
            }
            for (session, why) in outcome.revoked {
                events.publish("revoke", session: session.id, "revoked session \(hex(session.id)) \(session.flow): \(why)")
            }
            if outcome.revoked.count > 20 { log(.notice, "revoked \(outcome.revoked.count - 20) more session(s)") }
            var summary = "reloaded \(source.path): \(new.rules.count) rule(s)"
            summary += ", \(outcome.revoked.count) session(s) revoked"
            if outcome.shortened > 0 { summary += ", \(outcome.shortened) lifetime(s) shortened" }
            if outcome.filtersRemoved > 0 { summary += ", \(outcome.filtersRemoved) DENY filter(s) removed (pushback disabled)" }
            do {
                try apply(outcome.kernel)
            } catch {
                // The table no longer holds them; the kernel elements expire with their timeouts.
                summary += "; removing their kernel state failed (\(error)): it expires on its own"
            }
            return .success(summary)
        }
    }
}

struct ReloadFailure: Error, CustomStringConvertible {
    var description: String
}
