import CSPWire
import MidcomCore
import Netfilter
import Synchronization

/// The kernel as midcomd's glue sees it: program a batch of engine decisions, end the connections
/// of removed admissions, list what is there. `NFTKernelProgrammer` is the real one; tests use a
/// recording fake, so bursts, fallbacks, adoption and clean-up are tested without root.
public protocol KernelProgrammer: AnyObject, Sendable {
    /// Programs the changes as one atomic batch: all of them or none.
    func apply(_ changes: [KernelChange]) throws
    /// Deletes the conntrack entries whose original tuple falls under any of the flows (a zero
    /// address or port is a wildcard); returns how many were deleted.
    func forgetConnections(of flows: [FlowTuple]) throws -> Int
    /// The elements of one set or map of the schema.
    func listElements(set: String) throws -> [NFTSetElement]
    /// Of these admissions (still in the kernel), the wildcard ones whose element never matched a
    /// packet: they let no connection in, so removing them needs no conntrack walk.
    func unusedWildcardAdmissions(among flows: [FlowTuple]) -> Set<FlowTuple>
}

extension KernelProgrammer {
    /// Hands every object of the schema's sets to `body` in chunks of at most `chunk`, one set at a
    /// time (admissions first: the order `GatewayEngine.adopt` needs), with its remaining time and
    /// tag. Decoding chunk by chunk keeps a million listed elements from sitting in memory twice.
    /// Sets that cannot be listed are reported to `failed`.
    public func forEachAdoptableSet(
        chunk: Int = 4096, failed: (String, any Error) -> Void, _ body: (ArraySlice<AdoptedElement>) -> Void
    ) {
        var decoded: [AdoptedElement] = []
        decoded.reserveCapacity(chunk)
        for spec in NFTSchema.adoptable {
            let elements: [NFTSetElement]
            do {
                elements = try listElements(set: spec.name)
            } catch {
                failed(spec.name, error)
                continue
            }
            for element in elements {
                guard let object = NFTSchema.object(set: spec.name, key: element.key, data: element.data, keyEnd: element.keyEnd)
                else { continue }
                let remaining = element.expiresIn.map { UInt32(clamping: $0.components.seconds) } ?? UInt32.max
                decoded.append(AdoptedElement(object: object, remaining: remaining, tag: element.comment.flatMap(ElementTag.init(comment:))))
                if decoded.count == chunk {
                    body(decoded[...])
                    decoded.removeAll(keepingCapacity: true)
                }
            }
            if !decoded.isEmpty {
                body(decoded[...])
                decoded.removeAll(keepingCapacity: true)
            }
        }
    }

    /// All adoptable elements at once (tests and small tables).
    public func adoptableElements(failed: (String, any Error) -> Void) -> [AdoptedElement] {
        var all: [AdoptedElement] = []
        forEachAdoptableSet(failed: failed) { all += $0 }
        return all
    }
}

/// The flows whose connections must end when these changes are applied: removed admissions, and
/// for a DNAT installed or removed every connection to its external endpoint (conntrack keys a
/// translated connection by its original, external tuple: entries made before the mapping would
/// never be translated, and connections through a removed mapping must stop with it).
public func connectionsToForget(after changes: [KernelChange]) -> [FlowTuple] {
    var flows: [FlowTuple] = []
    for change in changes {
        switch change {
        case .remove(.admission(let flow)):
            flows.append(flow)
        case .install(.destinationNAT(let rule), _, _), .remove(.destinationNAT(let rule)):
            flows.append(FlowTuple(
                proto: rule.proto, source: IPAddress(ipv4: 0), sourcePort: 0, destination: rule.external.endpoint.address,
                destinationPort: rule.external.port))
        default:
            break
        }
    }
    return flows
}

/// The real kernel: nftables through `NFTablesClient`, conntrack through `ConntrackClient`.
public final class NFTKernelProgrammer: KernelProgrammer {
    let nft: NFTablesClient
    let conntrack: ConntrackClient
    let table: String

    /// The devices of the flowtable (`flowtable-devices`); empty: no flowtable.
    public let flowtableDevices: [String]
    /// Told when the flowtable could not be emptied after a DoS pushback filter was installed.
    let flowtableEmptyFailed: (@Sendable (any Error) -> Void)?
    /// Times the flowtable was emptied for new pushback filters, and times that failed.
    public let flowtableEmptied = Atomic<UInt64>(0)
    public let flowtableEmptyFailures = Atomic<UInt64>(0)

    public init(nft: NFTablesClient, conntrack: ConntrackClient, table: String, flowtableDevices: [String] = [],
                flowtableEmptyFailed: (@Sendable (any Error) -> Void)? = nil,
                observeBatch: (@Sendable (Duration, Int) -> Void)? = nil) {
        self.nft = nft
        self.conntrack = conntrack
        self.table = table
        self.flowtableDevices = flowtableDevices
        self.flowtableEmptyFailed = flowtableEmptyFailed
        self.observeBatch = observeBatch
    }

    /// Creates the flowtable on `flowtableDevices` and links it (chain established), or with no
    /// devices removes what an earlier start with them left. Creating it anew also empties it.
    public func linkFlowtable() throws {
        try nft.installOffload(
            table: table, flowtable: NFTSchema.Flowtable.name, devices: flowtableDevices, entry: NFTSchema.Flowtable.entryChain,
            candidates: NFTSchema.Flowtable.candidatesChain, offload: NFTSchema.Flowtable.offloadChain)
    }

    /// Told how long each batch took and how many changes it carried (the metrics endpoint's
    /// histogram); nil: not measured.
    public let observeBatch: (@Sendable (Duration, Int) -> Void)?

    public func apply(_ changes: [KernelChange]) throws {
        // Written into the client's reused change set: no change set allocated per burst.
        let build = { (batch: inout NFTChangeSet) in for change in changes { batch.append(change) } }
        if let observeBatch {
            let start = ContinuousClock.now
            defer { observeBatch(start.duration(to: .now), changes.count) }
            try nft.apply(table: table, building: build)
        } else {
            try nft.apply(table: table, building: build)
        }
        // An offloaded flow's packets reach no hook before `forward`, chain pushback's among them:
        // a new filter would not stop an attack that is offloaded already. Emptying the flowtable
        // sends every flow through the slow path again (the filter drops its packets there; the
        // others are offloaded again at their next packet). Filters come rarely and in bursts.
        if !flowtableDevices.isEmpty, changes.contains(where: \.installsDenyFilter) {
            do {
                try linkFlowtable()
                flowtableEmptied.add(1, ordering: .relaxed)
            } catch {
                flowtableEmptyFailures.add(1, ordering: .relaxed)
                flowtableEmptyFailed?(error)
            }
        }
    }

    public func forgetConnections(of flows: [FlowTuple]) throws -> Int {
        let filters = flows.map { flow in
            ConntrackFilter(
                family: flow.source.family == .ipv4 ? 2 : 10, proto: flow.proto.rawValue, source: flow.source.bytes,
                sourcePort: flow.sourcePort, destination: flow.destination.bytes, destinationPort: flow.destinationPort)
        }
        return try conntrack.deleteEntries(matchingAny: filters)
    }

    public func listElements(set: String) throws -> [NFTSetElement] {
        try nft.listElements(table: table, set: set)
    }

    /// One element GET per wildcard flow (exact flows are cheap for conntrack: one lookup each).
    public func unusedWildcardAdmissions(among flows: [FlowTuple]) -> Set<FlowTuple> {
        var unused: Set<FlowTuple> = []
        for flow in flows where flow.sourcePort == 0 || flow.source.isUnspecified {
            let element = NFTSchema.element(for: .admission(flow))
            // A failed look-up counts as used: the walk is the safe side.
            if let found = try? nft.element(table: table, set: element.set, key: element.key), found.packets == 0 {
                unused.insert(flow)
            }
        }
        return unused
    }
}

extension KernelChange {
    /// A DoS pushback filter put into the kernel for the first time.
    var installsDenyFilter: Bool {
        if case .install(.denyFilter, _, _) = self { return true }
        return false
    }
}
