import CSPWire
import MidcomCore
import Netfilter

/// Where a flow's admission lives in `table inet midcom` (see nft-rules/midcom.nft): the set that
/// matches its shape and the key in that set's field order.
struct AdmissionElement: Hashable {
    var set: String
    var key: NFTSetKey

    init(admitting flow: FlowTuple) {
        let v4 = flow.source.family == .ipv4
        var key = NFTSetKey()
        func address(_ a: IPAddress) {
            if let value = a.ipv4Value { key.append(ipv4: value) } else { key.append(ipv6: a.bytes) }
        }
        if flow.source.isUnspecified {
            set = v4 ? "pinhole4" : "pinhole6"
            key.append(proto: flow.proto.rawValue)
            address(flow.destination)
            key.append(port: flow.destinationPort)
        } else if flow.sourcePort == 0 {
            set = v4 ? "admit4_anyport" : "admit6_anyport"
            address(flow.source)
            key.append(proto: flow.proto.rawValue)
            address(flow.destination)
            key.append(port: flow.destinationPort)
        } else {
            set = v4 ? "admit4" : "admit6"
            address(flow.source)
            key.append(proto: flow.proto.rawValue)
            key.append(port: flow.sourcePort)
            address(flow.destination)
            key.append(port: flow.destinationPort)
        }
        self.key = key
    }

    static let allSets = ["admit4", "admit6", "admit4_anyport", "admit6_anyport", "pinhole4", "pinhole6"]

    /// The drop-cache element of a refused unsignaled flow (same key layout as admit4/admit6).
    init(blocking flow: FlowTuple) {
        self.init(admitting: flow)
        set = flow.source.family == .ipv4 ? "drop4" : "drop6"
    }

    /// Decodes a key listed from the kernel back into the flow it admits (the inverse of init).
    static func flow(set: String, key: [UInt8]) -> FlowTuple? {
        let v4 = set.hasSuffix("4") || set == "admit4_anyport"
        let width = v4 ? 4 : 16
        var offset = 0
        func take(_ n: Int, padded: Bool = true) -> ArraySlice<UInt8>? {
            let stride = (n + 3) / 4 * 4
            guard offset + stride <= key.count else { return nil }
            defer { offset += stride }
            return key[offset..<offset + n]
        }
        func address() -> IPAddress? { take(width).flatMap { IPAddress(bytes: $0) } }
        func port() -> UInt16? { take(2).map { UInt16($0.first!) << 8 | UInt16($0.last!) } }
        func proto() -> IPProtocol? { take(1).map { IPProtocol(rawValue: $0.first!) } }
        let any = v4 ? IPAddress(ipv4: 0) : IPAddress(ipv6: 0, 0)
        switch set {
        case "admit4", "admit6":
            guard let s = address(), let p = proto(), let sp = port(), let d = address(), let dp = port() else { return nil }
            return FlowTuple(proto: p, source: s, sourcePort: sp, destination: d, destinationPort: dp)
        case "admit4_anyport", "admit6_anyport":
            guard let s = address(), let p = proto(), let d = address(), let dp = port() else { return nil }
            return FlowTuple(proto: p, source: s, sourcePort: 0, destination: d, destinationPort: dp)
        case "pinhole4", "pinhole6":
            guard let p = proto(), let d = address(), let dp = port() else { return nil }
            return FlowTuple(proto: p, source: any, sourcePort: 0, destination: d, destinationPort: dp)
        default:
            return nil
        }
    }
}

extension NFTChangeSet {
    /// Translates the engine's decisions into one batch. Re-installing replaces the timeout: the
    /// element is added (a no-op if present), deleted and added again with the new timeout, all in
    /// the same atomic batch; removal adds before deleting. So neither ever fails on "exists" or
    /// "does not exist" (e.g. when the element just timed out on its own).
    mutating func append(_ change: KernelChange) {
        switch change {
        case .admit(let flow, let lifetime):
            // A new element: one add. (If a stale one exists, the add still succeeds; kernels
            // from 6.10 on even take the new timeout.)
            let element = AdmissionElement(admitting: flow)
            addElement(set: element.set, key: element.key, timeout: .seconds(lifetime))
        case .readmit(let flow, let lifetime):
            let element = AdmissionElement(admitting: flow)
            replace(set: element.set, key: element.key, data: nil, lifetime: lifetime)
        case .revoke(let flow):
            let element = AdmissionElement(admitting: flow)
            remove(set: element.set, key: element.key, data: nil)
        case .snat(let flow, let to, let lifetime):
            replace(set: "snat4", key: Self.snatKey(flow), data: Self.endpointData(to), lifetime: lifetime)
        case .removeSNAT(let flow, let to):
            // Re-adding a map element only succeeds with the data it has, hence `to`.
            remove(set: "snat4", key: Self.snatKey(flow), data: Self.endpointData(to))
        case .dnat(let proto, let external, let to, let lifetime):
            replace(set: "dnat4", key: Self.dnatKey(proto, external), data: Self.endpointData(to), lifetime: lifetime)
        case .removeDNAT(let proto, let external, let to):
            remove(set: "dnat4", key: Self.dnatKey(proto, external), data: Self.endpointData(to))
        case .block(let flow, let lifetime):
            let element = AdmissionElement(blocking: flow)
            addElement(set: element.set, key: element.key, timeout: .seconds(lifetime))
        }
    }

    private mutating func replace(set: String, key: NFTSetKey, data: NFTSetKey?, lifetime: UInt32) {
        addElement(set: set, key: key, data: data, timeout: .seconds(lifetime))
        deleteElement(set: set, key: key)
        addElement(set: set, key: key, data: data, timeout: .seconds(lifetime))
    }

    private mutating func remove(set: String, key: NFTSetKey, data: NFTSetKey?) {
        addElement(set: set, key: key, data: data, timeout: .seconds(1))
        deleteElement(set: set, key: key)
    }

    /// snat4: ipv4_addr . inet_proto . inet_service (the internal source)
    static func snatKey(_ flow: FlowTuple) -> NFTSetKey {
        var key = NFTSetKey()
        key.append(ipv4: flow.source.ipv4Value ?? 0)
        key.append(proto: flow.proto.rawValue)
        key.append(port: flow.sourcePort)
        return key
    }

    /// dnat4: ipv4_addr . inet_proto . inet_service (the external destination)
    static func dnatKey(_ proto: IPProtocol, _ external: CSPEndpoint) -> NFTSetKey {
        var key = NFTSetKey()
        key.append(ipv4: external.address.ipv4Value ?? 0)
        key.append(proto: proto.rawValue)
        key.append(port: external.port)
        return key
    }

    /// Map data: ipv4_addr . inet_service
    static func endpointData(_ endpoint: CSPEndpoint) -> NFTSetKey {
        var data = NFTSetKey()
        data.append(ipv4: endpoint.address.ipv4Value ?? 0)
        data.append(port: endpoint.port)
        return data
    }
}
