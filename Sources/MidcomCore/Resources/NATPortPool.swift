import CSPWire

/// External ports of the NAT in use, per protocol. Every mapping a session holds has its port
/// reserved here; a restarted midcomd reserves the ports of the mappings it finds in the kernel
/// before it hands out new ones, so a live mapping's port is never given to another host.
struct NATPortPool: Sendable {
    let range: ClosedRange<UInt16>
    private var inUse: [IPProtocol: Set<UInt16>] = [:]
    private var cursor: UInt16 = 0

    init(range: ClosedRange<UInt16>) { self.range = range }

    /// The host's own port when free (so port-preserving applications keep working), else the
    /// next free port of the range; nil when the range is exhausted.
    mutating func allocate(_ proto: IPProtocol, preferred: UInt16) -> UInt16? {
        if preferred != 0, reserve(proto, preferred) { return preferred }
        let size = Int(range.upperBound - range.lowerBound) + 1
        for step in 0..<size {
            let port = range.lowerBound &+ UInt16((Int(cursor) + step) % size)
            if reserve(proto, port) {
                cursor = UInt16((Int(cursor) + step + 1) % size)
                return port
            }
        }
        return nil
    }

    /// Marks `port` as taken; false when it already was.
    @discardableResult
    mutating func reserve(_ proto: IPProtocol, _ port: UInt16) -> Bool {
        inUse[proto, default: []].insert(port).inserted
    }

    mutating func release(_ proto: IPProtocol, _ port: UInt16) {
        inUse[proto]?.remove(port)
    }

    mutating func releaseAll() { inUse.removeAll() }
}
