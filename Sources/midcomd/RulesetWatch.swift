#if canImport(Glibc)
import Glibc
#endif
import MidcomCore
import MidcomKernel
import Netfilter
import Synchronization

/// What midcomd knows about its table in the kernel (shown by `midctl status`).
enum RulesetCondition: Sendable, Equatable {
    case intact
    /// The table is gone (e.g. `flush ruleset` in an nftables.conf without the Midcom include):
    /// forwarded packets meet only the operator's own rules.
    case missing(since: ContinuousClock.Instant)
    /// The table came back from a ruleset of another revision: we cannot program it.
    case wrongRevision(Int)

    var description: String {
        switch self {
        case .intact: "intact"
        case .missing: "MISSING: table removed by an nftables reload; midcomd is bypassed until it is loaded again"
        case .wrongRevision(let revision):
            "WRONG REVISION: table loaded from ruleset revision \(revision), this midcomd needs \(NFTSchema.rulesetRevision)"
        }
    }
}

/// Notices an nftables reload that removed or replaced `table inet midcom` — an operator's
/// `nft -f /etc/nftables.conf` starting with `flush ruleset`, `systemctl restart nftables`, a
/// reload of the include (which deletes the table first), `nft flush chain … enqueue` — and puts
/// back what midcomd owns from its own table: the queue rules, every live session's elements
/// with what is left of its lifetime, DENY filters and the NAT-PMP/PCP input filter.
///
/// How it notices: it asks for the ruleset generation (one small netlink request, NFT_MSG_GETGEN)
/// every `interval`; only when the generation moved does it look at the table's handle (new
/// when the table was created again) and the queue chains. Not nftables' notification group:
/// while any socket listens to NFNLGRP_NFTABLES the kernel builds a notification for every
/// element change, and element programming measured 2–3× slower here (10k and 100k elements with
/// and without a passive listener) — the cost would fall on every admission to save a poll that
/// costs microseconds.
extension Daemon {
    static let rulesetWatchInterval: Duration = .milliseconds(200)

    func watchRuleset() {
        var generation = (try? nft.generation()) ?? 0
        var handle = (try? nft.tableState(table: configuration.table))??.handle
        while !stopping.load(ordering: .relaxed) {
            sleepFor(Self.rulesetWatchInterval)
            guard let now = try? nft.generation(), now != generation else { continue }
            generation = now
            checkTable(knownHandle: &handle)
        }
    }

    /// Looks at the table after the ruleset changed, and repairs what an nftables reload undid.
    func checkTable(knownHandle: inout UInt64?) {
        let table = configuration.table
        let state: NFTTableState?
        do { state = try nft.tableState(table: table) } catch {
            log.limited(.warning, category: "ruleset", "cannot look at table inet \(table): \(error)")
            return
        }
        guard let state else {
            if case .missing = rulesetCondition.withLock({ $0 }) { return }
            rulesetCondition.withLock { $0 = .missing(since: .now) }
            rulesetLost.add(1, ordering: .relaxed)
            notifier.notify("STATUS=table inet \(table) missing: bypassed")
            events.publish("ruleset", "table inet \(table) was removed: midcomd is bypassed until it is loaded again")
            log(.error, "table inet \(table) was removed (an nftables reload without the Midcom include, or `flush ruleset`?): midcomd is bypassed — forwarded packets meet only your own rules. Its \(engine.withLock { $0.sessions.count }) session(s) are kept and put back as soon as the table is loaded again (nft -f /etc/nftables.d/midcom.nft)")
            return
        }
        let revision = NFTSchema.revision(ofTableComment: state.comment)
        guard revision == NFTSchema.rulesetRevision else {
            if rulesetCondition.withLock({ $0 }) != .wrongRevision(revision) {
                rulesetCondition.withLock { $0 = .wrongRevision(revision) }
                log(.error, "table inet \(table) was loaded again from ruleset revision \(revision); this midcomd needs revision \(NFTSchema.rulesetRevision): load nft-rules/midcom.nft of this release")
            }
            return
        }
        let replaced = state.handle != knownHandle
        let queueRulesMissing = ["enqueue", "enqueue_proved"].contains { ((try? nft.ruleCount(table: table, chain: $0)) ?? 0) == 0 }
        guard replaced || queueRulesMissing || rulesetCondition.withLock({ $0 }) != .intact else { return }
        let started = ContinuousClock.now
        do {
            // Stopping removes the queue rules on purpose: putting them back then would leave a
            // queue rule with no reader once this process is gone (a race seen under emulation).
            // Under the lock shutdown takes to remove them, so the check and the install are one
            // step: either the rules go in before shutdown flushes them, or not at all.
            let installed = try queueRulesRemovedForGood.withLock { removed throws -> Bool in
                guard !removed, !stopping.load(ordering: .relaxed) else { return false }
                try installQueueRules()
                return true
            }
            guard installed else { return }
            var restored = 0
            if replaced {
                try filterPortMappingInput(serving: portMappingSocket != nil)
                let changes = engine.withLock { $0.kernelState(now: self.now()) }
                var start = 0
                while start < changes.count {
                    let end = min(start + 4096, changes.count)
                    try apply(Array(changes[start..<end]))
                    start = end
                }
                restored = changes.count
                // After the sessions, and on its own: the flowtable only speeds up flows that pass
                // anyway, so failing to link it (an interface removed since the start) must not keep
                // the sessions' elements out of the kernel. Until it is linked they take the
                // ordinary path.
                do {
                    try linkFlowtable()
                } catch {
                    log.limited(.error, category: "flowtable", "after an nftables reload: \(error); admitted flows take the ordinary path")
                }
            }
            knownHandle = state.handle
            rulesetCondition.withLock { $0 = .intact }
            rulesetRestored.add(1, ordering: .relaxed)
            notifier.notify("STATUS=serving")
            let took = started.duration(to: .now)
            let what = replaced ? "table inet \(table) was replaced by an nftables reload" : "the queue rules were removed"
            events.publish("ruleset", "\(what): put back the queue rules and \(restored) kernel element(s)")
            log(.notice, "\(what): put back the queue rules\(replaced ? " and \(restored) kernel element(s) of live sessions" : "") in \(took)")
        } catch {
            log.limited(.error, category: "ruleset", "could not put back midcomd's kernel state after an nftables reload: \(error)")
        }
    }

    /// The flowtable of `flowtable-devices` and the rules that lead to it, or (none configured)
    /// none left from an earlier start. Every device must exist: the kernel's answer for a missing
    /// one is the same as for a kernel without flowtables.
    func linkFlowtable() throws {
        for device in configuration.flowtableDevices where if_nametoindex(device) == 0 {
            throw DaemonError(
                "flowtable-devices in [daemon] names '\(device)', which is not an interface here: name the interfaces the gateway forwards between (ip link), or remove flowtable-devices")
        }
        do {
            try kernel.linkFlowtable()
        } catch {
            throw DaemonError("cannot set up the flowtable on \(configuration.flowtableDevices.joined(separator: ", ")): \(error)")
        }
    }

    /// The rules of chains enqueue and enqueue_proved (replacing whatever they hold).
    func installQueueRules() throws {
        let bypass = configuration.onDaemonAbsent == .defaultPolicy
        let preference = QueueEncodingPreference(rawValue: encoding.rawValue) ?? .auto
        try nft.installQueueRule(
            table: configuration.table, chain: "enqueue",
            spec: QueueRuleSpec(queueNumber: configuration.queueNumber, queueCount: configuration.queueCount, cpuFanout: false, bypass: bypass),
            encoding: preference)
        try nft.installQueueRule(
            table: configuration.table, chain: "enqueue_proved",
            spec: QueueRuleSpec(queueNumber: configuration.provedQueueNumber, queueCount: 1, cpuFanout: false, bypass: bypass),
            encoding: preference)
    }
}

func sleepFor(_ duration: Duration) {
    let (seconds, attoseconds) = duration.components
    var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
    var remaining = timespec()
    while nanosleep(&request, &remaining) == -1, errno == EINTR { request = remaining }
}
