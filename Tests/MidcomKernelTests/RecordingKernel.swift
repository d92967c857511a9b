import CSPWire
import MidcomCore
import MidcomKernel
import Netfilter
import Synchronization

/// A fake kernel for unit-testing midcomd's glue without root: records every batch, every
/// connection clean-up pass, and fails on demand.
final class RecordingKernel: KernelProgrammer {
    struct Failure: Error, Equatable {}

    struct State {
        var batches: [[KernelChange]] = []
        var forgotten: [[FlowTuple]] = []
        /// A batch fails when this says so.
        var failWhen: @Sendable ([KernelChange]) -> Bool = { _ in false }
        var failConntrack = false
        var sets: [String: [NFTSetElement]] = [:]
        /// Flows whose elements the fake reports as never matched.
        var unused: Set<FlowTuple> = []
    }

    let state = Mutex(State())

    var batches: [[KernelChange]] { state.withLock { $0.batches } }
    var forgotten: [[FlowTuple]] { state.withLock { $0.forgotten } }

    func failing(when condition: @escaping @Sendable ([KernelChange]) -> Bool) {
        state.withLock { $0.failWhen = condition }
    }

    func apply(_ changes: [KernelChange]) throws {
        try state.withLock { state in
            state.batches.append(changes)
            if state.failWhen(changes) { throw Failure() }
        }
    }

    func forgetConnections(of flows: [FlowTuple]) throws -> Int {
        try state.withLock { state in
            state.forgotten.append(flows)
            if state.failConntrack { throw Failure() }
            return flows.count
        }
    }

    func listElements(set: String) throws -> [NFTSetElement] {
        state.withLock { $0.sets[set] ?? [] }
    }

    func unusedWildcardAdmissions(among flows: [FlowTuple]) -> Set<FlowTuple> {
        state.withLock { state in Set(flows.filter { state.unused.contains($0) }) }
    }
}
