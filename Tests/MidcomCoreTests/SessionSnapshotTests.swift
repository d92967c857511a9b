import CSPWire
import XCTest

@testable import MidcomCore

/// The session snapshot codec: what a restart adopts from. It is read as untrusted input: every
/// truncation, flipped octet, other version, other table or middlebox and oversized count is
/// refused with a sentence, never a crash.
final class SessionSnapshotTests: XCTestCase {
    let header = SessionSnapshot.Header(middleboxID: 0xabad_1dea, writtenAt: 1_700_000_000_000, table: "midcom", clean: true)
    let now = Instant(nanoseconds: 500_000_000_000)  // the daemon has run 500 s
    let wallNow: UInt64 = 1_700_000_000_000

    func flow(_ index: Int, v6: Bool = false) -> FlowTuple {
        FlowTuple(
            proto: index % 2 == 0 ? .udp : .tcp,
            source: v6 ? IPAddress(ipv6: 0x2001_0db8_0000_0000, UInt64(index)) : IPAddress(ipv4: 0x0AC8_0100 | UInt32(index & 0xff)),
            sourcePort: UInt16(4000 + index), destination: v6 ? IPAddress(ipv6: 0x2001_0db8_0001_0000, 2) : IPAddress(ipv4: 0x0AC8_0202),
            destinationPort: 5000)
    }

    func sessions() -> [Session] {
        var plain = Session(
            id: 1, flow: flow(1), state: .admitted, createdAt: Instant(nanoseconds: 400_000_000_000),
            expiresAt: Instant(nanoseconds: 560_000_000_000), grantedLifetime: 60)
        plain.recordRoute = false
        var rich = Session(
            id: 0xffff_ffff_ffff_fff2, flow: flow(2, v6: true), state: .admitted, application: "voip ✓",
            createdAt: Instant(nanoseconds: 100_000_000_000), expiresAt: nil, grantedLifetime: 3600, incoming: true)
        rich.mapping = CSPEndpoint(address: IPAddress(ipv4: 0xCB00_7101), port: 40000)
        rich.relay = CSPEndpoint(address: IPAddress(ipv4: 0xCB00_7102), port: 40001)
        rich.setPath(3, flow(8))  // paths share path 0's protocol
        rich.origin = .pcp
        var redirected = Session(
            id: 3, flow: flow(3), state: .redirected, createdAt: Instant(nanoseconds: 499_000_000_000),
            expiresAt: Instant(nanoseconds: 501_000_000_000), grantedLifetime: 30)
        redirected.redirectTarget = CSPEndpoint(address: IPAddress(ipv4: 0x0AC8_0203), port: 3128)
        let legacy = Session(
            id: 1 << 63 | 4, flow: flow(4), state: .legacy, createdAt: now, expiresAt: Instant(nanoseconds: 530_000_000_000), grantedLifetime: 30)
        return [plain, rich, redirected, legacy]
    }

    func encoded(_ sessions: [Session]? = nil) -> [UInt8] {
        SessionSnapshot.encode(header: header, sessions: sessions ?? self.sessions(), now: now, wallNow: wallNow)
    }

    func read(_ bytes: [UInt8], table: String = "midcom", id: UInt64 = 0xabad_1dea, maximum: Int = 1000) throws -> SessionSnapshot.Reader {
        try SessionSnapshot.Reader(bytes: bytes, table: table, middleboxID: id, maximumSessions: maximum)
    }

    func entries(_ reader: SessionSnapshot.Reader) -> [SessionSnapshot.Entry] {
        var all: [SessionSnapshot.Entry] = []
        reader.forEach { all.append($0); return true }
        return all
    }

    func testRoundTrip() throws {
        let original = sessions()
        let reader = try read(encoded())
        XCTAssertEqual(reader.header, header)
        XCTAssertEqual(reader.count, 4)
        // Restored at a later start: the daemon's clock began again, 10 s of wall time passed.
        let later = Instant(nanoseconds: 2_000_000_000)
        let restored = entries(reader).compactMap { $0.restored(now: later, wallNow: wallNow + 10_000) }
        XCTAssertEqual(restored.map(\.id), [1, 0xffff_ffff_ffff_fff2, 1 << 63 | 4], "the redirected one (1 s left) expired meanwhile")
        for session in restored {
            let before = original.first { $0.id == session.id }!
            XCTAssertEqual(session.flow, before.flow)
            XCTAssertEqual(session.paths.map(\.flow), before.paths.map(\.flow))
            XCTAssertEqual(session.state, before.state)
            XCTAssertEqual(session.incoming, before.incoming)
            XCTAssertEqual(session.application, before.application)
            XCTAssertEqual(session.mapping, before.mapping)
            XCTAssertEqual(session.relay, before.relay)
            XCTAssertEqual(session.origin, before.origin)
            XCTAssertEqual(session.grantedLifetime, before.grantedLifetime)
            // Lifetime left: as before, less the 10 s of down time.
            if let expiresAt = before.expiresAt {
                XCTAssertEqual(session.expiresAt, Instant(nanoseconds: later.nanoseconds + expiresAt.nanoseconds - now.nanoseconds - 10_000_000_000))
            } else {
                XCTAssertNil(session.expiresAt)
            }
        }
        XCTAssertEqual(restored[0].createdAt, Instant(nanoseconds: 0), "an age older than the new run shows as its start")
        let redirected = entries(reader)[2].restored(now: later, wallNow: wallNow)
        XCTAssertEqual(redirected?.redirectTarget, original[2].redirectTarget)
        XCTAssertEqual(redirected?.proxyFlow, original[2].proxyFlow)
    }

    func testPendingSessionsAreNotWritten() throws {
        let pending = Session(id: 9, flow: flow(9), state: .pending, createdAt: now, expiresAt: nil, grantedLifetime: 0)
        XCTAssertEqual(try read(encoded([pending] + sessions())).count, 4)
    }

    func testEmptySnapshot() throws {
        XCTAssertEqual(try read(encoded([])).count, 0)
    }

    func testWrittenInPiecesIsTheSame() throws {
        var writer = SessionSnapshot.Writer(header: header)
        var bytes: [UInt8] = []
        for session in sessions() {
            writer.append(session, now: now, wallNow: wallNow)
            bytes += writer.take()
        }
        bytes += writer.finish()
        XCTAssertEqual(bytes, encoded())
    }

    func testEveryTruncationIsRefused() {
        let bytes = encoded()
        for length in 0..<bytes.count {
            XCTAssertThrowsError(try read(Array(bytes[..<length])), "cut at \(length)")
        }
    }

    func testEveryFlippedOctetIsRefused() {
        let bytes = encoded()
        for index in 0..<bytes.count {
            var corrupt = bytes
            corrupt[index] ^= 0x5a
            XCTAssertThrowsError(try read(corrupt), "octet \(index) flipped")
        }
    }

    func testCorruptMiddleNamesTheChecksum() {
        var bytes = encoded()
        bytes[bytes.count / 2] ^= 0xa5
        XCTAssertThrowsError(try read(bytes)) { error in
            XCTAssertEqual("\(error)", "snapshot corrupt (checksum mismatch)")
        }
    }

    func testWrongVersionIsRefused() {
        var bytes = encoded()
        bytes[9] = 2
        XCTAssertThrowsError(try read(bytes)) { error in
            XCTAssertEqual("\(error)", "snapshot version 2, this midcomd reads version 1")
        }
    }

    func testForeignFilesAreRefused() {
        XCTAssertThrowsError(try read(Array("not a snapshot at all".utf8))) { error in
            XCTAssertEqual("\(error)", "not a midcomd session snapshot (no MIDCOMSS header)")
        }
        XCTAssertThrowsError(try read(encoded(), table: "other")) { error in
            XCTAssertEqual("\(error)", "snapshot of table midcom, this midcomd runs table other")
        }
        XCTAssertThrowsError(try read(encoded(), id: 7)) { error in
            XCTAssertEqual("\(error)", "snapshot of middlebox 00000000abad1dea, this is middlebox 0000000000000007")
        }
    }

    func testOversizedIsRefused() {
        XCTAssertThrowsError(try read(encoded(), maximum: 3)) { error in
            XCTAssertEqual("\(error)", "snapshot holds 4 sessions, more than max-sessions (3)")
        }
        // A file far larger than its records could be (trailing garbage with a valid checksum).
        var bytes = Array(encoded().dropLast(SessionSnapshot.trailerLength))
        bytes += [UInt8](repeating: 0, count: 4 * SessionSnapshot.maximumBytesPerSession + 100)
        bytes.append(SessionSnapshot.trailerMark)
        bytes += [0, 0, 0, 4]
        var checksum = FNV1a()
        checksum.add(bytes)
        bytes += withUnsafeBytes(of: checksum.value.bigEndian) { Array($0) }
        XCTAssertThrowsError(try read(bytes)) { error in
            XCTAssertTrue("\(error)".contains("too large for 4 sessions"), "\(error)")
        }
    }

    func testCountMustMatchTheRecords() {
        var bytes = Array(encoded().dropLast(SessionSnapshot.trailerLength))
        bytes.append(SessionSnapshot.trailerMark)
        bytes += [0, 0, 0, 5]
        var checksum = FNV1a()
        checksum.add(bytes)
        bytes += withUnsafeBytes(of: checksum.value.bigEndian) { Array($0) }
        XCTAssertThrowsError(try read(bytes)) { error in
            XCTAssertEqual("\(error)", "snapshot announces 5 sessions and holds 4")
        }
    }

    /// Arbitrary octets behind a valid header and checksum: refused or read, never a crash.
    func testRandomRecordsNeverCrash() {
        var random = SystemRandomNumberGenerator()
        let head = Array(encoded([]).dropLast(SessionSnapshot.trailerLength))
        for _ in 0..<2000 {
            var bytes = head + (0..<Int.random(in: 0..<200, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            bytes.append(SessionSnapshot.trailerMark)
            bytes += [0, 0, 0, UInt8.random(in: 0...3, using: &random)]
            var checksum = FNV1a()
            checksum.add(bytes)
            bytes += withUnsafeBytes(of: checksum.value.bigEndian) { Array($0) }
            if let reader = try? read(bytes) { _ = entries(reader) }
        }
    }

    /// Forged times (far future, far past) are clamped, not overflowed.
    func testForgedTimesDoNotOverflow() {
        let entry = SessionSnapshot.Entry(session: sessions()[0], createdAt: 0, expiresAt: .max)
        let restored = entry.restored(now: now, wallNow: wallNow)
        XCTAssertEqual(restored?.expiresAt, Instant(nanoseconds: now.nanoseconds &+ UInt64(UInt32.max) * 1000 * 1_000_000))
        XCTAssertEqual(restored?.createdAt, Instant(nanoseconds: 0))
    }

    func testRestoreKeepsIDsAndReservesNATPorts() throws {
        var engine = GatewayEngine(configuration: MidcomConfiguration(), identity: MiddleboxIdentity(id: 1, epoch: 1, name: "t"))
        let session = sessions()[0]
        XCTAssertTrue(engine.restore(session))
        XCTAssertEqual(engine.sessions[id: 1]?.flow, session.flow)
        XCTAssertFalse(engine.restore(session), "a session known already wins")
        var twin = session
        twin.id = 77
        XCTAssertFalse(engine.restore(twin), "a flow held by another session wins")
        XCTAssertEqual(engine.counters.adopted, 1)
    }
}
