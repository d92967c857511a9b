import CSPWire
import XCTest

@testable import MidcomCore

/// The session table's flow hash packs an IPv4 flow's 13 octets into two words (SessionTable.hash).
/// Every field must count: a flow that differs from another in one field only, or is the other
/// turned around, is another key, and the index's probe runs depend on their hashes differing.
final class FlowHashTests: XCTestCase {
    let base = FlowTuple(proto: .udp, source: IPAddress(ipv4: 0x0A00_0002), sourcePort: 40000,
                         destination: IPAddress(ipv4: 0xC633_6407), destinationPort: 7227)

    func testEqualFlowsHashAlike() {
        let same = FlowTuple(proto: .udp, source: IPAddress(ipv4: 0x0A00_0002), sourcePort: 40000,
                             destination: IPAddress(ipv4: 0xC633_6407), destinationPort: 7227)
        XCTAssertEqual(SessionTable.hash(base), SessionTable.hash(same))
    }

    func testEachFieldAndTheDirectionChangeTheHash() {
        var variants: [(String, FlowTuple)] = []
        var flow = base
        flow.source = IPAddress(ipv4: 0x0A00_0003); variants.append(("source", flow))
        flow = base; flow.destination = IPAddress(ipv4: 0xC633_6408); variants.append(("destination", flow))
        flow = base; flow.sourcePort = 40001; variants.append(("source port", flow))
        flow = base; flow.destinationPort = 7228; variants.append(("destination port", flow))
        flow = base; flow.proto = .tcp; variants.append(("protocol", flow))
        // Ports swapped with each other, and the whole flow turned around.
        flow = base; (flow.sourcePort, flow.destinationPort) = (base.destinationPort, base.sourcePort); variants.append(("ports swapped", flow))
        variants.append(("reversed", FlowTuple(proto: .udp, source: base.destination, sourcePort: base.destinationPort,
                                               destination: base.source, destinationPort: base.sourcePort)))
        for (what, variant) in variants {
            XCTAssertNotEqual(variant, base)
            XCTAssertNotEqual(SessionTable.hash(variant), SessionTable.hash(base), "a different \(what) hashed alike")
        }
        XCTAssertEqual(Set(variants.map { SessionTable.hash($0.1) } + [SessionTable.hash(base)]).count, variants.count + 1)
    }

    /// IPv6 (or mixed) flows take the tuple's own hash; an IPv6 flow is never confused with the
    /// IPv4 flow whose addresses share its low bits.
    func testIPv6FlowsTakeTheTuplesHash() {
        let v6 = FlowTuple(proto: .udp, source: IPAddress(ipv6: 0, 0x0A00_0002), sourcePort: 40000,
                           destination: IPAddress(ipv6: 0, 0xC633_6407), destinationPort: 7227)
        XCTAssertEqual(SessionTable.hash(v6), v6.hashValue)
        XCTAssertNotEqual(SessionTable.hash(v6), SessionTable.hash(base))
    }
}
