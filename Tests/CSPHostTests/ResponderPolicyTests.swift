import CSPHost
import CSPWire
import XCTest

final class ResponderPolicyTests: XCTestCase {
    let flow = FlowTuple(proto: .udp, source: IPAddress("10.0.1.2")!, sourcePort: 4000, destination: IPAddress("10.0.2.2")!, destinationPort: 5000)

    func testSetupAndRefreshAreAcceptedWithAClampedLifetime() {
        let policy = ResponderPolicy()
        let setup = CSPMessage(type: .setup, sessionID: 1, nonce: 2, sequence: 1, tlvs: [.flow(flow), .lifetime(999_999)])
        let reply = policy.reply(to: setup)
        XCTAssertEqual(reply?.type, .accept)
        XCTAssertEqual(reply?.nonce, 2)
        XCTAssertEqual(reply?.lifetime, policy.maximumLifetime)
    }

    /// docs/PROTOCOL.md 5.6: TEARDOWN is answered with ACCEPT and lifetime 0.
    func testTeardownIsAnsweredWithLifetimeZero() {
        let reply = ResponderPolicy().reply(to: CSPMessage(type: .teardown, sessionID: 1, nonce: 3, sequence: 3))
        XCTAssertEqual(reply?.type, .accept)
        XCTAssertEqual(reply?.lifetime, 0)
        XCTAssertEqual(reply?.sequence, 3)
    }

    func testRepliesAreNotAnswered() {
        XCTAssertNil(ResponderPolicy().reply(to: CSPMessage(type: .accept, sessionID: 1, nonce: 3)))
    }
}
