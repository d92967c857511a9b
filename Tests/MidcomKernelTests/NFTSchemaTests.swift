import CSPWire
import Foundation
import MidcomCore
import MidcomKernel
import Netfilter
import TestSupport
import XCTest

/// The schema against the shipped ruleset and the real kernel, the netlink bytes against golden
/// files, and adoption from listed elements.
final class NFTSchemaTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    let v4 = FlowTuple(proto: .udp, source: IPAddress("10.0.1.2")!, sourcePort: 4000, destination: IPAddress("10.0.2.2")!, destinationPort: 5000)
    let v6 = FlowTuple(proto: .tcp, source: IPAddress("fd00:1::2")!, sourcePort: 4000, destination: IPAddress("fd00:2::2")!, destinationPort: 443)

    /// One object for every set and map of the schema.
    var samples: [KernelObject] {
        var anyPort4 = v4
        anyPort4.sourcePort = 0
        var anyPort6 = v6
        anyPort6.sourcePort = 0
        let pinhole4 = FlowTuple(proto: .udp, source: IPAddress(ipv4: 0), sourcePort: 0, destination: v4.source, destinationPort: 6000)
        let pinhole6 = FlowTuple(proto: .tcp, source: IPAddress(ipv6: 0, 0), sourcePort: 0, destination: v6.source, destinationPort: 22)
        let host = IPv4Endpoint(address: 0x0a00_0102, port: 4000), external = IPv4Endpoint(address: 0xcb00_7101, port: 20001)
        return [
            .admission(v4), .admission(v6), .admission(anyPort4), .admission(anyPort6), .admission(pinhole4), .admission(pinhole6),
            .sourceNAT(SourceNAT(proto: .udp, internal: host, external: external)),
            .destinationNAT(DestinationNAT(proto: .tcp, external: external, internal: host)),
            .denyFilter(DenyFilter(source: IPAddress("203.0.113.77")!, prefixLength: 24, proto: .udp, victim: v4.destination, port: 53)),
            .denyFilter(DenyFilter(source: IPAddress("2001:db8:66::")!, prefixLength: 48, proto: nil, victim: v6.destination, port: nil)),
            .denyFilter(DenyFilter(source: IPAddress("198.18.0.0")!, prefixLength: 15, proto: .tcp, victim: v4.destination, port: 443, rateLimited: true)),
            .denyFilter(DenyFilter(source: IPAddress("2001:db8:77::")!, prefixLength: 64, proto: .udp, victim: v6.destination, port: nil, rateLimited: true)),
        ]
    }

    func testEveryObjectRoundTripsThroughItsElement() {
        for object in samples {
            let element = NFTSchema.element(for: object)
            let spec = NFTSchema.all.first { $0.name == element.set }!
            XCTAssertEqual(element.key.bytes.count, spec.keyLength, "\(object)")
            XCTAssertEqual(
                NFTSchema.object(set: element.set, key: element.key.bytes, data: element.data?.bytes, keyEnd: element.keyEnd?.bytes), object)
        }
        XCTAssertNil(NFTSchema.object(set: "admit4", key: [1, 2, 3], data: nil), "a key of the wrong length is refused")
        XCTAssertNil(NFTSchema.object(set: "operator_set", key: [], data: nil))
        XCTAssertEqual(NFTSchema.blocking(v4).set, "drop4")
    }

    /// The comment written in place (no application) and the one built as a string are the same
    /// octets, and both read back as the tag.
    func testInlineElementCommentsEqualTheTagsComment() throws {
        for kind in [ElementTag.Kind.outgoing, .incoming, .legacy, .redirect, .relay, .deny] {
            for application in [nil, "", "voip", String(repeating: "x", count: 120)] {
                let tag = ElementTag(sessionID: 0x0123_4567_89ab_cdef, kind: kind, application: application)
                var changes = NFTChangeSet()
                changes.append(.install(.admission(v4), lifetime: 30, tag: tag))
                guard let operation = changes.operations.first, operation.kind == .add, let comment = operation.comment else {
                    return XCTFail("no comment")
                }
                XCTAssertEqual(comment.description, tag.comment)
                let read = try XCTUnwrap(ElementTag(comment: comment.description))
                XCTAssertEqual(read.sessionID, tag.sessionID)
                XCTAssertEqual(read.kind, kind)
            }
        }
    }

    func testBatchBytesMatchTheGoldenFile() throws {
        var changes = NFTChangeSet(table: "midcom")
        let tag = ElementTag(sessionID: 0x0123_4567_89ab_cdef, kind: .outgoing, application: "voip")
        for change: KernelChange in [
            .install(.admission(v4), lifetime: 30, tag: tag), .refresh(samples[6], lifetime: 30, tag: tag), .remove(.admission(v6)),
            .block(v4, lifetime: 10),
        ] {
            changes.append(change)
        }
        let bytes = NFTablesClient.encodedBatch(changes, firstSequence: 1000)
        let golden = Self.root.appendingPathComponent("Tests/MidcomKernelTests/Golden/element-batch.hex")
        if ProcessInfo.processInfo.environment["MIDCOM_UPDATE_GOLDEN"] == "1" {
            try (hex(bytes) + "\n").write(to: golden, atomically: true, encoding: .utf8)
        }
        let expected = try String(contentsOf: golden, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(hex(bytes), expected, "netlink bytes changed: check them, then MIDCOM_UPDATE_GOLDEN=1 swift test")
    }

    /// Runs as root inside `unshare -n` (make unit): loads nft-rules/midcom.nft and checks that every
    /// set the code programs exists with the key (and data) types the code encodes, and that the
    /// kernel takes every sample object with its tag and gives both back.
    func testTheShippedRulesetHasEverySetWithTheEncodedTypes() throws {
        guard Host.requireRoot() else { return }
        let ruleset = try String(contentsOf: Self.root.appendingPathComponent("nft-rules/midcom.nft"), encoding: .utf8)
        try Host.nft(ruleset)
        defer { Host.deleteTable("inet", "midcom") }
        for spec in NFTSchema.all {
            let listed = try Host.nftJSON(["list", spec.data == nil ? "set" : "map", "inet", "midcom", spec.name])
            let set = try XCTUnwrap(listed.compactMap { $0[spec.data == nil ? "set" : "map"] as? [String: Any] }.first, spec.name)
            XCTAssertEqual(Self.types(set["type"]), spec.key.map(\.rawValue), "key of \(spec.name)")
            if let data = spec.data { XCTAssertEqual(Self.types(set["map"]), data.map(\.rawValue), "data of \(spec.name)") }
        }
        // What midcomd checks at start (one GETSET per set, no element dump).
        let client = try NFTablesClient()
        for spec in NFTSchema.all {
            XCTAssertEqual(
                try client.setLayout(table: "midcom", set: spec.name), NFTSetLayout(keyLength: spec.keyLength, dataLength: spec.dataLength),
                spec.name)
        }
        XCTAssertNil(try client.setLayout(table: "midcom", set: "no_such_set"))
        XCTAssertEqual(NFTSchema.revision(ofTableComment: try XCTUnwrap(client.tableComment(table: "midcom"))), NFTSchema.rulesetRevision)
        let kernel = NFTKernelProgrammer(nft: client, conntrack: try ConntrackClient(), table: "midcom")
        // The flowtable's chains: the candidates are the ruleset's (one lookup per admission set),
        // the two links midcomd's. Without devices, linking leaves (and makes) both links empty.
        XCTAssertEqual(try client.ruleCount(table: "midcom", chain: NFTSchema.Flowtable.candidatesChain), NFTSchema.admissionSets.count)
        try kernel.linkFlowtable()
        XCTAssertEqual(try client.ruleCount(table: "midcom", chain: NFTSchema.Flowtable.entryChain), 0)
        XCTAssertEqual(try client.ruleCount(table: "midcom", chain: NFTSchema.Flowtable.offloadChain), 0)
        let tag = ElementTag(sessionID: 0xfeed, kind: .incoming, application: "ssh")
        try kernel.apply(samples.map { .install($0, lifetime: 60, tag: tag) })
        let adopted = kernel.adoptableElements { set, error in XCTFail("\(set): \(error)") }
        XCTAssertEqual(Set(adopted.map(\.object)), Set(samples))
        XCTAssertTrue(adopted.allSatisfy { $0.tag == tag && $0.remaining > 50 && $0.remaining <= 60 })
        let firstNAT = try XCTUnwrap(adopted.firstIndex { if case .admission = $0.object { false } else { true } })
        XCTAssertTrue(adopted[firstNAT...].allSatisfy { if case .admission = $0.object { false } else { true } }, "admissions first")
        // Removal never fails on an element that is already gone.
        try kernel.apply(samples.map { .remove($0) })
        try kernel.apply(samples.map { .remove($0) })
        XCTAssertTrue(kernel.adoptableElements { _, _ in }.isEmpty)
    }

    static func types(_ value: Any?) -> [String] {
        // A concatenation is a list of types for keys, one "a . b" string for map data.
        if let one = value as? String { return one.components(separatedBy: " . ") }
        return (value as? [String]) ?? []
    }

    func testAdoptionThroughTheFakeKernelRestoresSessionsAndNATPorts() {
        let kernel = RecordingKernel()
        let tag = ElementTag(sessionID: 0xabc, kind: .outgoing, application: "voip")
        let snat = NFTSchema.element(for: samples[6])
        let admission = NFTSchema.element(for: .admission(FlowTuple(
            proto: .udp, source: IPAddress("10.0.1.2")!, sourcePort: 4000, destination: IPAddress("10.0.2.2")!, destinationPort: 5000)))
        kernel.state.withLock {
            $0.sets["snat4"] = [NFTSetElement(key: snat.key.bytes, data: snat.data?.bytes, expiresIn: .seconds(20), comment: tag.comment)]
            $0.sets["admit4"] = [NFTSetElement(key: admission.key.bytes, expiresIn: .seconds(20), comment: tag.comment)]
        }
        var config = MidcomConfiguration()
        // These tests are about what follows return routability (tested in TrustTests).
        config.trust.challenge = .never
        config.nat = NATConfiguration(
            externalAddress: IPAddress("203.0.113.1")!, internalPrefixes: [IPPrefix("10.0.0.0/8")!], ports: 20001...20002)
        var engine = GatewayEngine(configuration: config, identity: MiddleboxIdentity(id: 1, epoch: 1, name: "gw"))
        for element in kernel.adoptableElements(failed: { _, _ in }) { engine.adopt(element, now: .seconds(0)) }
        let session = engine.sessions[id: 0xabc]
        XCTAssertEqual(session?.application, "voip")
        XCTAssertEqual(session?.mapping?.port, 20001)
        XCTAssertEqual(engine.counters.adopted, 1)
    }

    /// The NAT-PMP/PCP input filter refuses exactly the IPv4 addresses outside the inside
    /// prefixes (overlapping and unsorted prefixes merged), and all of IPv6.
    func testPortMappingRefusalsAreTheComplementOfTheInside() {
        func ranges(_ inside: [String]) -> [String] {
            NFTSchema.portMappingRefusals(inside: inside.compactMap(IPPrefix.init), port: 5351)
                .filter { $0.set == "portmap_refused4" }
                .map { element in
                    let start = element.key.bytes.prefix(4).map(String.init).joined(separator: ".")
                    let end = element.keyEnd!.bytes.prefix(4).map(String.init).joined(separator: ".")
                    XCTAssertEqual(Array(element.key.bytes[4..<6]), [0x14, 0xe7], "port 5351")
                    return "\(start)-\(end)"
                }
        }
        XCTAssertEqual(
            ranges(["192.168.0.0/16", "10.0.0.0/8", "10.1.0.0/16"]),
            ["0.0.0.0-9.255.255.255", "11.0.0.0-192.167.255.255", "192.169.0.0-255.255.255.255"])
        XCTAssertEqual(ranges(["0.0.0.0/1", "128.0.0.0/1"]), [])
        XCTAssertEqual(ranges(["255.255.255.255/32"]), ["0.0.0.0-255.255.255.254"])
        XCTAssertEqual(ranges([]), ["0.0.0.0-255.255.255.255"])
        let v6 = NFTSchema.portMappingRefusals(inside: [], port: 5351).filter { $0.set == "portmap_refused6" }
        XCTAssertEqual(v6.count, 1)
        XCTAssertEqual(Array(v6[0].key.bytes.prefix(16)), [UInt8](repeating: 0, count: 16))
        XCTAssertEqual(Array(v6[0].keyEnd!.bytes.prefix(16)), [UInt8](repeating: 0xff, count: 16))
    }
}
