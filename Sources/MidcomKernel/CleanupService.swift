import CSPWire
import Dispatch
#if canImport(Glibc)
import Glibc
#endif
import MidcomCore
import Synchronization

/// Ends the connections of removed admissions (conntrack), off the packet thread.
///
/// Deleting a wildcard flow's entries means walking the whole conntrack table; doing that once per
/// expired session on the packet loop stalled verdicts and the watchdog during a mass expiry. Here
/// flows wait in a bounded queue and a service thread handles everything queued in one pass
/// (`KernelProgrammer.forgetConnections` walks the table once for all wildcard flows).
///
/// Element removals are not done here: they stay on the queue reader's thread, in order with the
/// admissions of later bursts, so a late removal can never delete a newer admission of the flow.
public final class CleanupService: Sendable {
    /// Flows waiting; beyond this many, new ones are counted and left to conntrack's own timeouts.
    public let capacity: Int
    let kernel: any KernelProgrammer
    private let state = Mutex(State())
    private let wake = DispatchSemaphore(value: 0)

    struct State {
        var waiting: [FlowTuple] = []
        var counters = Counters()
    }

    public struct Counters: Sendable, Equatable {
        /// Conntrack entries deleted.
        public var deleted: UInt64 = 0
        /// Passes over the queue, and passes that failed.
        public var passes: UInt64 = 0
        public var failures: UInt64 = 0
        /// Flows not queued because the queue was full.
        public var overflowed: UInt64 = 0
    }

    public init(kernel: any KernelProgrammer, capacity: Int = 1 << 16) {
        self.kernel = kernel
        self.capacity = capacity
    }

    public var counters: Counters { state.withLock { $0.counters } }
    public var waiting: Int { state.withLock { $0.waiting.count } }

    /// Queues flows without blocking; false when some did not fit.
    @discardableResult
    public func enqueue(_ flows: [FlowTuple]) -> Bool {
        guard !flows.isEmpty else { return true }
        let fitted = state.withLock { state -> Bool in
            let room = max(capacity - state.waiting.count, 0)
            state.waiting.append(contentsOf: flows.prefix(room))
            state.counters.overflowed += UInt64(flows.count - min(room, flows.count))
            return room >= flows.count
        }
        wake.signal()
        return fitted
    }

    /// Handles everything queued so far in one pass; the error of a failed pass, if any.
    @discardableResult
    public func runOnce() -> (any Error)? {
        let flows = state.withLock { state -> [FlowTuple] in
            defer { state.waiting.removeAll(keepingCapacity: true) }
            return Array(Set(state.waiting))
        }
        guard !flows.isEmpty else { return nil }
        do {
            let deleted = try kernel.forgetConnections(of: flows)
            state.withLock {
                $0.counters.passes += 1
                $0.counters.deleted += UInt64(deleted)
            }
            return nil
        } catch {
            state.withLock {
                $0.counters.passes += 1
                $0.counters.failures += 1
            }
            return error
        }
    }

    /// The service loop: waits for work (at most `poll` at a time, to notice `shouldStop`; nil
    /// waits until work comes, for a detached thread that ends with the process), and
    /// lets at least `gap` pass between two passes. A conntrack walk costs milliseconds even on a
    /// nearly empty table (the kernel walks every hash bucket, and every entry is parsed here), and
    /// midcomd's threads share the packet loop's CPU: a pass per removal cost a quarter of the
    /// teardown rate (bench figure 8). A first removal after a quiet spell is handled at once;
    /// under a stream of them, one walk a second takes all removals made meanwhile, so a removed
    /// admission's connections end within about a second.
    public func run(
        poll: DispatchTimeInterval? = nil, gap: Duration = .seconds(1), shouldStop: () -> Bool,
        failed: (any Error) -> Void
    ) {
        while !shouldStop() {
            if let poll { _ = wake.wait(timeout: .now() + poll) } else { wake.wait() }
            guard waiting > 0 else { continue }
            if let error = runOnce() { failed(error) }
            // Earlier wake-ups were for flows this pass took already; later ones wait for the gap.
            while wake.wait(timeout: .now()) == .success {}
            usleep(UInt32(clamping: gap.components.seconds * 1_000_000 + gap.components.attoseconds / 1_000_000_000_000))
        }
    }
}
