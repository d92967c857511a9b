// midcom-bench: the Swift half of the Midcom benchmark. Prints one JSON object per line.
//
//   MidcomBench table N [N...] [reserved] SessionTable at N sessions: bytes per session (malloc'd bytes),
//                                         lookup by flow and by id (ns), upsert (ns), expiry (ns per session);
//                                         `reserved`: the table has room for N before the first upsert
//   MidcomBench nft add|del N MODE        admit4 elements through NFTablesClient, as midcomd programs them:
//                                         MODE per-change = one transaction per admission (one add with the
//                                         session's tag as comment: NFTChangeSet.append(.install(.admission…)))
//                                         or per revocation (add 1 s, delete: .remove), as `nftload -m`;
//                                         MODE refresh = add, delete, add (a refresh: .refresh) per transaction;
//                                         MODE bulk = 1000 elements per transaction. Keys as Benchmarks/c/nftload.c.
//   MidcomBench trust N                   the cost of trust (figure 10), single-threaded: N signed SETUPs
//                                         (each its own key, as from N hosts) verified with SignatureCheck.check
//                                         on their serialized bytes, as midcomd's packet thread does (ns each;
//                                         ceiling = 1e9 / ns verifications per second per core), also with the
//                                         parse before it (N/4 of them); and signing one middlebox record as midcomd does for
//                                         every reply (CSPMiddleboxRecord.signed(by:header:), ns each).
//   MidcomBench engine N [records]        figure 4's signaling without the queue: N sessions, each a SETUP from
//                                         the host and the responder's ACCEPT, parsed from their datagram bytes
//                                         (SignalingRequest(parsing:)) and handled by GatewayEngine behind a Mutex,
//                                         as midcomd's packet thread does (configuration as figure 4's; `records`:
//                                         the SETUPs ask for records, so both messages are rewritten). Prints ns
//                                         per session (both messages), malloc'd bytes left per session, and the
//                                         sessions admitted (must be N).
//   MidcomBench engine N [records] cold BYTES   the same with a cold cache: before each message the loop writes
//                                         BYTES of an unrelated buffer (evicting the engine's lines as the kernel's
//                                         forwarding and an idle vCPU do between two messages at window 1); only
//                                         the messages are timed.
import CBenchSupport
import CSPTrust
import CSPWire
import Glibc
import MidcomCore
import MidcomKernel
import Netfilter
import Synchronization

func nowNS() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func mallocBytes() -> Int { Int(cbs_malloc_in_use()) }

/// Flow i, as in Benchmarks/c/nftload.c: udp 10.(202+i>>16).(i>>8).(i) : 1024+i%60000 -> 10.201.2.2 : 10000+i/60000.
func flow(_ i: Int) -> FlowTuple {
    let source = UInt32(10) << 24 | UInt32(202 + (i >> 16)) << 16 | UInt32((i >> 8) & 0xff) << 8 | UInt32(i & 0xff)
    return FlowTuple(proto: .udp, source: IPAddress(ipv4: source), sourcePort: UInt16(1024 + i % 60000),
                     destination: IPAddress(ipv4: 0x0ac9_0202), destinationPort: UInt16(10000 + i / 60000))
}

func key(_ f: FlowTuple) -> NFTSetKey {
    var key = NFTSetKey()
    key.append(ipv4: f.source.ipv4Value!)
    key.append(proto: f.proto.rawValue)
    key.append(port: f.sourcePort)
    key.append(ipv4: f.destination.ipv4Value!)
    key.append(port: f.destinationPort)
    return key
}

func benchTable(_ n: Int, reserved: Bool) {
    let flows = (0..<n).map(flow)
    let base = mallocBytes()
    var table = SessionTable()
    // `reserved`: room for all N first, as a C table sized for its maximum is (figure 3's `cadmit-m`):
    // what the indexes' growth (each doubling re-inserts every entry) adds to upsert_ns.
    if reserved { table.reserveCapacity(n) }
    var t = nowNS()
    for i in 0..<n {
        let start = Instant(nanoseconds: UInt64(i))
        table.upsert(Session(id: UInt64(i) &* 0x9e37_79b9_7f4a_7c15 | 1, flow: flows[i], state: .admitted,
                             createdAt: start,
                             expiresAt: start.adding(seconds: UInt32(60 + i % 600)), grantedLifetime: 60))
    }
    let upsertNS = Double(nowNS() - t) / Double(n)
    let bytesPerSession = Double(mallocBytes() - base) / Double(n)

    let lookups = 1_000_000
    var rng = SystemRandomNumberGenerator()
    let probes = (0..<4096).map { _ in Int.random(in: 0..<n, using: &rng) }
    var hits = 0
    t = nowNS()
    for j in 0..<lookups { if table.session(for: flows[probes[j & 4095]]) != nil { hits += 1 } }
    let byFlowNS = Double(nowNS() - t) / Double(lookups)
    t = nowNS()
    for j in 0..<lookups { if table[id: UInt64(probes[j & 4095]) &* 0x9e37_79b9_7f4a_7c15 | 1] != nil { hits += 1 } }
    let byIDNS = Double(nowNS() - t) / Double(lookups)
    precondition(hits == 2 * lookups)

    // Expiry: the expirer runs every 250 ms; here a tenth of the table becomes due per call.
    var expired = 0
    t = nowNS()
    for step in 1...10 {
        expired += table.expire(now: Instant(nanoseconds: UInt64(n)).adding(seconds: UInt32(60 + 60 * step))).count
    }
    let expiryNS = Double(nowNS() - t) / Double(max(expired, 1))
    print("{\"sessions\":\(n),\"reserved\":\(reserved),\"bytes_per_session\":\(Int(bytesPerSession)),\"upsert_ns\":\(Int(upsertNS)),\"lookup_flow_ns\":\(Int(byFlowNS)),\"lookup_id_ns\":\(Int(byIDNS)),\"expire_ns_per_session\":\(Int(expiryNS)),\"expired\":\(expired)}")
}

func benchNFT(add: Bool, n: Int, mode: String) throws {
    let client = try NFTablesClient()
    // Warm-up, not timed: one transaction of each shape on a key outside the measured ones, so that
    // the Swift runtime's one-time work (generic metadata, protocol conformance caches: ~5 % of a
    // 0.1 s run in the profile) is not billed to the per-change figure; midcomd pays it once per life.
    for _ in 0..<50 {
        var warm = NFTChangeSet(table: "midcom")
        warm.addElement(set: "admit4", key: key(flow(n + 1_000_000)), timeout: .seconds(1), comment: ElementTag(sessionID: 1, kind: .outgoing).nftComment)
        warm.deleteElement(set: "admit4", key: key(flow(n + 1_000_000)))
        try client.apply(warm)
    }
    let t = nowNS()
    if mode != "bulk" {
        for i in 0..<n {
            var changes = NFTChangeSet(table: "midcom")
            let k = key(flow(i))
            // The session's tag, as midcomd writes it on every element it installs (ElementTag).
            let comment = add ? ElementTag(sessionID: UInt64(i) &* 0x9e37_79b9_7f4a_7c15 | 1, kind: .outgoing).nftComment : nil
            if add && mode == "refresh" {
                changes.addElement(set: "admit4", key: k, timeout: .seconds(600), comment: comment)
                changes.deleteElement(set: "admit4", key: k)
                changes.addElement(set: "admit4", key: k, timeout: .seconds(600), comment: comment)
            } else if add {
                changes.addElement(set: "admit4", key: k, timeout: .seconds(600), comment: comment)
            } else {
                changes.addElement(set: "admit4", key: k, timeout: .seconds(1))
                changes.deleteElement(set: "admit4", key: k)
            }
            try client.apply(changes)
        }
    } else {
        // One change set for all transactions, emptied after each (as nftload reuses its batch page).
        var changes = NFTChangeSet(table: "midcom")
        changes.reserveCapacity(1000)
        var first = 0
        while first < n {
            changes.removeAll()
            for i in first..<min(first + 1000, n) {
                if add { changes.addElement(set: "admit4", key: key(flow(i)), timeout: .seconds(600)) }
                else { changes.deleteElement(set: "admit4", key: key(flow(i))) }
            }
            try client.apply(changes)
            first += 1000
        }
    }
    let seconds = Double(nowNS() - t) / 1e9
    print("{\"elements\":\(n),\"seconds\":\(seconds),\"per_s\":\(Int(Double(n) / seconds))}")
}

/// Figure 10b: what a signature costs the gateway's CPU, without the queue around it.
func benchTrust(_ n: Int) {
    // N hosts' SETUPs as `csp setup --key` sends them (IDENTITY, TIMESTAMP, SIGNATURE last), each
    // signed by its own key so that no cache of a decoded public key can help. Keys are reused
    // round robin over 256 (making a key is not what is measured).
    let keys = (0..<256).map { _ in SigningKey() }
    let timestamp = UInt64(time(nil))
    var datagrams: [[UInt8]] = []
    datagrams.reserveCapacity(n)
    for i in 0..<n {
        let setup = CSPMessage(
            type: .setup, sessionID: UInt64(i) &* 0x9e37_79b9_7f4a_7c15 | 1, nonce: UInt64(i) &+ 0x1122_3344, sequence: 1,
            tlvs: [.flow(flow(i)), .lifetime(30)])
        let signed = try! setup.signed(by: keys[i & 255], timestamp: timestamp)
        datagrams.append(try! signed.serialize())
    }
    let messages = datagrams.map { try! $0.withUnsafeBytes { try CSPMessage.parse($0) } }

    // SignatureCheck.check on pre-parsed messages: the verification midcomd adds per signed request.
    var valid = 0
    var t = nowNS()
    for i in 0..<n {
        let check = datagrams[i].withUnsafeBytes { SignatureCheck.check($0, message: messages[i]) }
        if case .valid = check.status { valid += 1 }
    }
    let verifyNS = Double(nowNS() - t) / Double(n)
    precondition(valid == n, "only \(valid) of \(n) signatures verified")

    // The same with the parse midcomd does first (SignalingRequest(parsing:)), for scale (a quarter of them).
    let quarter = max(n / 4, 1)
    t = nowNS()
    for i in 0..<quarter {
        let ok = datagrams[i].withUnsafeBytes { bytes -> Bool in
            guard let message = try? CSPMessage.parse(bytes) else { return false }
            if case .valid = SignatureCheck.check(bytes, message: message).status { return true }
            return false
        }
        if ok { valid += 1 }
    }
    let parseVerifyNS = Double(nowNS() - t) / Double(quarter)
    precondition(valid == n + quarter)

    // Unsigned parse alone, the baseline every request pays.
    let unsigned = (0..<min(n, 4096)).map { i in
        try! CSPMessage(type: .setup, sessionID: UInt64(i) | 1, nonce: UInt64(i), sequence: 1, tlvs: [.flow(flow(i)), .lifetime(30)])
            .serialize()
    }
    t = nowNS()
    var parsed = 0
    for i in 0..<n where unsigned[i % unsigned.count].withUnsafeBytes({ (try? CSPMessage.parse($0)) != nil }) { parsed += 1 }
    let parseUnsignedNS = Double(nowNS() - t) / Double(n)

    // midcomd signs its record in every reply it forwards (GatewayEngine.sealed): one Ed25519
    // signature per ACCEPT, inside the engine's lock.
    let gateway = SigningKey()
    let accept = CSPMessage(type: .accept, sessionID: 0x0123_4567_89ab_cdef, nonce: 0x1122_3344_5566_7788, sequence: 1, tlvs: [.lifetime(30)])
    let header = accept.headerForSigning
    let record = CSPMiddleboxRecord(
        middleboxID: gateway.publicKey.fingerprint, epoch: 7, decision: .admitted, grantedLifetime: 30,
        tlvs: [.middleboxName("gw1")])
    let signs = max(n / 4, 1000)
    var sink = 0
    t = nowNS()
    for _ in 0..<signs { sink &+= record.signed(by: gateway, header: header).tlvs.count }
    let recordSignNS = Double(nowNS() - t) / Double(signs)
    let input = Array(repeating: UInt8(0x5a), count: 120)
    t = nowNS()
    for _ in 0..<signs { sink &+= gateway.sign(input).count }
    let rawSignNS = Double(nowNS() - t) / Double(signs)
    precondition(sink > 0 && parsed == n)
    print(
        "{\"verifications\":\(n),\"verify_ns\":\(Int(verifyNS)),\"verify_ceiling_per_s\":\(Int(1e9 / verifyNS)),"
            + "\"parse_verify_ns\":\(Int(parseVerifyNS)),\"parse_unsigned_ns\":\(Int(parseUnsignedNS)),"
            + "\"record_sign_ns\":\(Int(recordSignNS)),\"sign_ns\":\(Int(rawSignNS)),\"signed_setup_octets\":\(datagrams[0].count)}")
}

func benchEngine(_ n: Int, records: Bool, coldBytes: Int) {
    let text = "[policy]\ndefault = \"admit\"\nunsignaled = \"drop\"\nmax-sessions = 4000000\n[trust]\nchallenge = \"never\"\n"
    let configuration: MidcomConfiguration
    do {
        configuration = try MidcomConfiguration(path: "figure-4.conf", text: text)
    } catch {
        cbs_error("MidcomBench engine: \(error)\n")
        exit(1)
    }
    let port = configuration.cspPort
    let responder = CSPEndpoint(address: IPAddress(ipv4: 0x0ac9_0202), port: port)
    // The datagrams first, as the hosts send them: the loop below times only the gateway's part.
    var setups: [[UInt8]] = []
    var accepts: [[UInt8]] = []
    setups.reserveCapacity(n)
    accepts.reserveCapacity(n)
    for i in 0..<n {
        let id = UInt64(i + 1) &* 0x9e37_79b9_7f4a_7c15 | 1
        let nonce = id &* 31
        let setup = CSPMessage(
            type: .setup, flags: records ? .recordRoute : [], sessionID: id, nonce: nonce, sequence: 1,
            tlvs: [.flow(flow(i)), .lifetime(60)])
        let accept = CSPMessage(type: .accept, sessionID: id, nonce: nonce, sequence: 1, tlvs: [.lifetime(60)])
        setups.append(try! setup.serialize())
        accepts.append(try! accept.serialize())
    }
    let engine = Mutex(GatewayEngine(configuration: configuration, identity: MiddleboxIdentity(id: 7, epoch: 1, name: "gw1")))
    engine.withLock { $0.describesEvents = false }
    // Cold mode writes one octet per cache line of `evictions` before each message and times only the messages
    // (allocated before the malloc count starts: it is not the engine's).
    var evictions = [UInt8](repeating: 0, count: coldBytes)
    let base = mallocBytes()
    var changes = 0
    var rewritten = 0
    // One datagram as the packet thread takes it: parse (outside the lock), then the engine.
    func deliver(_ bytes: [UInt8], from source: CSPEndpoint, to destination: CSPEndpoint, at now: Instant) {
        let outcome: SignalingOutcome? = bytes.withUnsafeBytes { payload in
            guard let request = try? SignalingRequest(parsing: payload, source: source, entry: .intercepted(destination: destination)) else {
                return nil
            }
            return engine.withLock { $0.handle(request, now: now) }
        }
        guard let outcome else { return }
        changes += outcome.kernel.count
        if case .forwardRewritten = outcome.verdict { rewritten += 1 }
    }
    func evict() {
        evictions.withUnsafeMutableBufferPointer { lines in
            var offset = 0
            while offset < lines.count {
                lines[offset] &+= 1
                offset += 64
            }
        }
    }
    var timedNS: UInt64 = 0
    if coldBytes == 0 {
        let t = nowNS()
        for i in 0..<n {
            let host = CSPEndpoint(address: flow(i).source, port: flow(i).sourcePort)
            let now = Instant(nanoseconds: UInt64(i) &* 1000 &+ 1)
            deliver(setups[i], from: host, to: responder, at: now)
            deliver(accepts[i], from: responder, to: host, at: now)
        }
        timedNS = nowNS() - t
    } else {
        for i in 0..<n {
            let host = CSPEndpoint(address: flow(i).source, port: flow(i).sourcePort)
            let now = Instant(nanoseconds: UInt64(i) &* 1000 &+ 1)
            evict()
            var t = nowNS()
            deliver(setups[i], from: host, to: responder, at: now)
            timedNS &+= nowNS() - t
            evict()
            t = nowNS()
            deliver(accepts[i], from: responder, to: host, at: now)
            timedNS &+= nowNS() - t
        }
    }
    let perSessionNS = Double(timedNS) / Double(n)
    let admitted = engine.withLock { Int($0.counters.admitted) }
    let bytesPerSession = Double(mallocBytes() - base) / Double(n)
    print(
        "{\"sessions\":\(n),\"records\":\(records),\"cold_bytes\":\(coldBytes),\"ns_per_session\":\(Int(perSessionNS)),\"admitted\":\(admitted),"
            + "\"kernel_changes\":\(changes),\"rewritten\":\(rewritten),\"bytes_per_session\":\(Int(bytesPerSession))}")
    if admitted != n { exit(1) }
}

/// The inline sizes of the values the signaling path copies (a copy of one of more than ~128 octets is a
/// `memmove`, and at window 1 every octet copied lands in a cold line: docs/PERFORMANCE.md "Seventh pass").
func benchSizes() {
    func size<T>(_ name: String, _ type: T.Type) -> String { "\"\(name)\":\(MemoryLayout<T>.stride)" }
    let sizes = [
        size("Session", Session.self), size("Session?", Session?.self), size("SessionCredentials", SessionCredentials.self),
        size("PendingRequest", PendingRequest.self), size("SignalingRequest", SignalingRequest.self),
        size("CSPMessage", CSPMessage.self), size("SignalingOutcome", SignalingOutcome.self),
        size("KernelChange", KernelChange.self), size("KernelObject", KernelObject.self), size("FlowTuple", FlowTuple.self),
        size("PolicyDecision", PolicyDecision.self), size("CSPTLV", CSPTLV.self), size("GatewayEngine", GatewayEngine.self),
    ]
    print("{" + sizes.joined(separator: ",") + "}")
}

let arguments = CommandLine.arguments
switch arguments.count > 1 ? arguments[1] : "" {
case "table":
    let reserved = arguments.contains("reserved")
    for n in arguments.dropFirst(2).compactMap({ Int($0) }) { benchTable(n, reserved: reserved) }
case "nft" where arguments.count == 5:
    do {
        try benchNFT(add: arguments[2] == "add", n: Int(arguments[3]) ?? 1000, mode: arguments[4])
    } catch {
        cbs_error("MidcomBench nft: \(error)\n")
        exit(1)
    }
case "trust":
    benchTrust(arguments.count > 2 ? Int(arguments[2]) ?? 20000 : 20000)
case "sizes":
    benchSizes()
case "engine":
    let options = Array(arguments.dropFirst(3))
    let coldBytes = options.firstIndex(of: "cold").flatMap { $0 + 1 < options.count ? Int(options[$0 + 1]) : nil } ?? 0
    benchEngine(arguments.count > 2 ? Int(arguments[2]) ?? 100_000 : 100_000, records: options.contains("records"), coldBytes: coldBytes)
default:
    cbs_error("usage: MidcomBench table N [N...] [reserved] | MidcomBench nft add|del N per-change|refresh|bulk | MidcomBench trust [N] | MidcomBench engine [N] [records] [cold BYTES] | MidcomBench sizes\n")
    exit(2)
}
