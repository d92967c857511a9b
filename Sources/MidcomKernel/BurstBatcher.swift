import MidcomCore
import Netfilter

/// Kernel work collected while one queue reader handles a burst of packets, programmed in one
/// batch before the burst's verdicts leave (`flush`). Owned by that reader's thread: it never
/// crosses threads, so it needs no lock.
///
/// If the batch fails, each packet's changes are tried alone, and the packets whose changes fail
/// get what their outcome's `KernelFailurePlan` says — decided by the engine, carried out here.
public final class BurstBatcher {
    public struct Entry {
        public var packetID: UInt32
        /// The first change inline: most packets make one (a new flow's admission), and an array
        /// of one per packet was an allocation per admitted flow.
        private var first: KernelChange?
        private var rest: [KernelChange]
        /// Sent once the changes are programmed.
        public var reply: OutgoingMessage?
        public var plan: KernelFailurePlan

        public init(packetID: UInt32, changes: [KernelChange], reply: OutgoingMessage?, plan: KernelFailurePlan) {
            self.packetID = packetID
            self.first = changes.first
            self.rest = changes.count > 1 ? Array(changes.dropFirst()) : []
            self.reply = reply
            self.plan = plan
        }

        public init(packetID: UInt32, change: KernelChange, reply: OutgoingMessage?, plan: KernelFailurePlan) {
            self.packetID = packetID
            self.first = change
            self.rest = []
            self.reply = reply
            self.plan = plan
        }

        public var changes: [KernelChange] {
            guard let first else { return rest }
            return rest.isEmpty ? [first] : [first] + rest
        }

        func appendChanges(to all: inout [KernelChange]) {
            if let first { all.append(first) }
            if !rest.isEmpty { all.append(contentsOf: rest) }
        }
    }

    /// What the batcher needs from the daemon; closures so that tests can record them.
    public struct Hooks {
        public var send: (OutgoingMessage) -> Void
        /// `GatewayEngine.forgetFailed` under the engine's lock.
        public var forgetSession: (UInt64) -> [KernelChange]
        /// A batch or a single packet's changes failed (for counting and a rate-limited log line).
        public var failed: (any Error, _ single: Bool) -> Void

        public init(
            send: @escaping (OutgoingMessage) -> Void, forgetSession: @escaping (UInt64) -> [KernelChange],
            failed: @escaping (any Error, Bool) -> Void
        ) {
            self.send = send
            self.forgetSession = forgetSession
            self.failed = failed
        }
    }

    let kernel: any KernelProgrammer
    let cleanup: CleanupService
    let hooks: Hooks
    // Unchecked exclusivity: the batcher is owned by one reader thread (type comment) and no method
    // hands out an access that could overlap another, so the runtime's check on every access (a
    // `swift_beginAccess`, ~75 instructions, even for the empty-burst test of each `flush`) guards
    // nothing here (docs/PERFORMANCE.md, "Eleventh pass").
    @exclusivity(unchecked) public private(set) var entries: [Entry] = []
    /// Empty between bursts; `flush` fills and empties it, keeping its capacity.
    @exclusivity(unchecked) private var burstChanges: [KernelChange] = []

    public init(kernel: any KernelProgrammer, cleanup: CleanupService, hooks: Hooks) {
        self.kernel = kernel
        self.cleanup = cleanup
        self.hooks = hooks
        entries.reserveCapacity(64)
    }

    /// Consuming: the caller's new entry moves into the burst (a borrowed one was copied, its
    /// changes, reply and plan retained, and the original destroyed; docs/PERFORMANCE.md
    /// "Fourteenth pass").
    public func add(_ entry: consuming Entry) { entries.append(entry) }

    /// Changes tied to no packet (expiry): programmed at once on the reader's thread, between
    /// bursts, so they stay in order with the admissions of later bursts. They only remove what
    /// times out anyway: a failure is reported and otherwise ignored.
    public func programNow(_ changes: [KernelChange]) {
        guard !changes.isEmpty else { return }
        do {
            try kernel.apply(changes)
            cleanup.enqueue(connectionsToForget(after: changes))
        } catch {
            hooks.failed(error, false)
        }
    }

    /// Programs the burst; returns the verdicts that replace the ones already given to packets
    /// whose changes could not be programmed.
    public func flush() -> [(id: UInt32, verdict: Verdict)] {
        guard !entries.isEmpty else { return [] }
        // The burst and the buffer for its changes move into locals for the flush and come back
        // emptied, capacity kept: every access to a class's stored array is a dynamic exclusivity
        // check (five per burst before), and a changes array made per burst was an allocation per
        // signaled session at window 1 (docs/PERFORMANCE.md, "Tenth pass").
        var burst: [Entry] = []
        swap(&burst, &entries)
        var all: [KernelChange] = []
        swap(&all, &burstChanges)
        defer {
            // Emptied one by one: `removeAll(keepingCapacity:)` walks the generic `replaceSubrange`,
            // ~690 instructions per signaled session at window 1 for these two arrays
            // (docs/PERFORMANCE.md, "Sixteenth pass").
            while !burst.isEmpty { burst.removeLast() }
            while !all.isEmpty { all.removeLast() }
            entries = burst
            burstChanges = all
        }
        // The entries are read in place through the buffer: `for entry in burst` copied each one
        // (every reference in it retained, then released) twice per flush.
        burst.withUnsafeBufferPointer { entries in
            for index in entries.indices { entries[index].appendChanges(to: &all) }
        }
        do {
            let forget = connectionsToForget(after: all)
            // Asked while the elements still exist: a wildcard admission that never matched a
            // packet let no connection in, and a conntrack walk for it would cost milliseconds.
            let unused = forget.isEmpty ? [] : kernel.unusedWildcardAdmissions(among: forget)
            try kernel.apply(all)
            cleanup.enqueue(unused.isEmpty ? forget : forget.filter { !unused.contains($0) })
            burst.withUnsafeBufferPointer { entries in
                for index in entries.indices { if let reply = entries[index].reply { hooks.send(reply) } }
            }
            return []
        } catch {
            hooks.failed(error, false)
        }
        var overrides: [(id: UInt32, verdict: Verdict)] = []
        for entry in burst {
            if let verdict = applyAlone(entry, inBurstOf: burst.count) { overrides.append((entry.packetID, verdict)) }
        }
        return overrides
    }

    /// One entry's changes on their own; the verdict that replaces the packet's, if any.
    func applyAlone(_ entry: Entry, inBurstOf burstSize: Int) -> Verdict? {
        // A burst of one already failed as the batch: that failure is this entry's, and its plan
        // applies without a retry (falling through here would send an ACCEPT for state that is
        // not there).
        if burstSize > 1 {
            do {
                try kernel.apply(entry.changes)
                cleanup.enqueue(connectionsToForget(after: entry.changes))
                if let reply = entry.reply { hooks.send(reply) }
                return nil
            } catch {
                hooks.failed(error, true)
            }
        }
        return carryOut(entry.plan, reply: entry.reply)
    }

    /// Carries out a failure plan (also used by the daemon when a packet cannot be rewritten);
    /// returns the verdict the packet gets instead, nil to keep its own.
    public func carryOut(_ plan: KernelFailurePlan, reply: OutgoingMessage?) -> Verdict? {
        switch plan {
        case .ignore:
            // Nothing depends on the changes (they time out by themselves); the answer still goes.
            if let reply { hooks.send(reply) }
            return nil
        case .defaultPolicy:
            return .accept
        case .refuse, .refuseAnswer:
            guard let (sessionID, refusal) = plan.refusal else { return .drop }
            let undo = hooks.forgetSession(sessionID)
            if !undo.isEmpty {
                // Best effort: what the session had before may still be there; elements time out anyway.
                do { try kernel.apply(undo) } catch { hooks.failed(error, true) }
                cleanup.enqueue(connectionsToForget(after: undo))
            }
            if let refusal { hooks.send(refusal) }
            return .drop
        }
    }
}
