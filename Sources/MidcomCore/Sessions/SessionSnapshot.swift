import CSPWire

/// The sessions of a running midcomd as a compact file, so that a restart adopts them in seconds
/// instead of listing the kernel's sets (whose dump is quadratic in their size: ~90 s at a million
/// elements). midcomd writes one at a clean stop and periodically (atomically: temporary file,
/// fsync, rename), and reads it at start (docs/ARCHITECTURE.md, "Restart"). Pure: bytes in, bytes
/// out, times as wall-clock milliseconds supplied by the caller.
///
/// The file is untrusted input although it lives in a root-only directory: every length is checked
/// against what is left, the whole file against its checksum, and any doubt refuses the file as a
/// whole (the daemon then falls back on the kernel dump). Layout, all integers big endian:
///
///     header   "MIDCOMSS" · u16 version (1) · u16 flags (0x0001 written at a clean stop)
///              · u64 middlebox ID · u64 written at (ms since 1970) · str8 table
///     record   u64 id · u8 proto · u8 state (0 admitted, 1 legacy, 2 redirected) · u8 flags
///              · address source · u16 port · address destination · u16 port
///              · u64 created at (ms since 1970) · u32 granted lifetime (s)
///              · [u64 expires at (ms)]           flags & 0x01
///              · [str16 application]             flags & 0x02
///              · [endpoint mapping]              flags & 0x04
///              · [endpoint relay]                flags & 0x08
///              · [endpoint redirect target]      flags & 0x10
///              · [u8 n · n × (u8 path · address · u16 · address · u16)]   flags & 0x20
///              · [u8 origin (1 nat-pmp, 2 pcp)]  flags & 0x40
///              (incoming: flags & 0x80)
///     trailer  u8 0xFF · u32 records · u64 FNV-1a 64 of every octet before the checksum
///     address  u8 family (4 or 6) · 4 or 16 octets; endpoint: address · u16 port
///
/// Pending sessions are not written (a restart loses their requests anyway), nor replay windows,
/// keys or path lifetimes: hosts re-signal after a restart (the epoch changes).
public enum SessionSnapshot {
    public static let magic = Array("MIDCOMSS".utf8)
    public static let version: UInt16 = 1
    public static let fileName = "sessions.snapshot"
    /// A record is at most ~600 octets (two IPv6 flows, three endpoints, an application of 65535
    /// is refused earlier); a file claiming more than this per session is not ours.
    public static let maximumBytesPerSession = 2048

    public struct Header: Equatable, Sendable {
        public var middleboxID: UInt64
        public var writtenAt: UInt64
        public var table: String
        public var clean: Bool

        public init(middleboxID: UInt64, writtenAt: UInt64, table: String, clean: Bool) {
            self.middleboxID = middleboxID
            self.writtenAt = writtenAt
            self.table = table
            self.clean = clean
        }
    }

    /// Why a snapshot was refused: one sentence for the log.
    public struct Refusal: Error, Equatable, CustomStringConvertible {
        public var description: String
        init(_ description: String) { self.description = description }
    }

    /// A session as the snapshot holds it: the session, with its times still on the wall clock.
    public struct Entry: Equatable, Sendable {
        public var session: Session
        public var createdAt: UInt64
        public var expiresAt: UInt64?

        /// The session on the daemon's monotonic clock (`now` at wall-clock `wallNow`), or nil
        /// when it expired meanwhile. Ages before the daemon's start show as its start.
        public func restored(now: Instant, wallNow: UInt64) -> Session? {
            var session = self.session
            // Times from the file are clamped before they are scaled (a forged one must not
            // overflow): at most 2^32 s ahead, 2^32 s old.
            let longest = UInt64(UInt32.max) * 1000
            if let expiresAt {
                guard expiresAt > wallNow else { return nil }
                session.expiresAt = Instant(nanoseconds: now.nanoseconds &+ min(expiresAt - wallNow, longest) * 1_000_000)
            } else {
                session.expiresAt = nil
            }
            let age = wallNow > createdAt ? min(wallNow - createdAt, longest) * 1_000_000 : 0
            session.createdAt = Instant(nanoseconds: now.nanoseconds > age ? now.nanoseconds - age : 0)
            session.updatedAt = session.createdAt
            return session
        }
    }

    enum Flag {
        static let expires: UInt8 = 0x01
        static let application: UInt8 = 0x02
        static let mapping: UInt8 = 0x04
        static let relay: UInt8 = 0x08
        static let redirect: UInt8 = 0x10
        static let paths: UInt8 = 0x20
        static let origin: UInt8 = 0x40
        static let incoming: UInt8 = 0x80
    }

    static let trailerMark: UInt8 = 0xFF
    static let trailerLength = 1 + 4 + 8

    // MARK: - Writing

    /// Builds a snapshot piece by piece: `append` sessions (a chunk at a time, taken under the
    /// engine lock by the caller), `take` the octets made so far to write them out, `finish`.
    public struct Writer: Sendable {
        private var buffer: [UInt8] = []
        private var checksum = FNV1a()
        public private(set) var count: UInt32 = 0

        public init(header: Header) {
            buffer += SessionSnapshot.magic
            put(SessionSnapshot.version)
            put(UInt16(header.clean ? 1 : 0))
            put(header.middleboxID)
            put(header.writtenAt)
            let table = Array(header.table.utf8.prefix(255))
            buffer.append(UInt8(table.count))
            buffer += table
        }

        /// Appends `session` (pending ones are skipped) with its times converted to the wall
        /// clock: `now` on the daemon's clock is `wallNow` ms since 1970.
        public mutating func append(_ session: Session, now: Instant, wallNow: UInt64) {
            let state: UInt8
            switch session.state {
            case .pending: return
            case .admitted: state = 0
            case .legacy: state = 1
            case .redirected: state = 2
            }
            put(session.id)
            buffer.append(session.flow.proto.rawValue)
            buffer.append(state)
            var flags: UInt8 = session.incoming ? Flag.incoming : 0
            let application = session.application.map { Array($0.utf8.prefix(Int(UInt16.max))) }
            if session.expiresAt != nil { flags |= Flag.expires }
            if application != nil { flags |= Flag.application }
            if session.mapping != nil { flags |= Flag.mapping }
            if session.relay != nil { flags |= Flag.relay }
            if session.redirectTarget != nil { flags |= Flag.redirect }
            if session.pathCount > 1 { flags |= Flag.paths }
            if session.origin != .csp { flags |= Flag.origin }
            buffer.append(flags)
            put(session.flow)
            func wall(_ instant: Instant) -> UInt64 {
                instant >= now
                    ? wallNow &+ (instant.nanoseconds - now.nanoseconds) / 1_000_000
                    : wallNow &- min(wallNow, (now.nanoseconds - instant.nanoseconds) / 1_000_000)
            }
            put(wall(session.createdAt))
            put(session.grantedLifetime)
            if let expiresAt = session.expiresAt { put(wall(expiresAt)) }
            if let application {
                put(UInt16(application.count))
                buffer += application
            }
            if let mapping = session.mapping { put(mapping) }
            if let relay = session.relay { put(relay) }
            if let target = session.redirectTarget { put(target) }
            if session.pathCount > 1 {
                let further = session.paths.dropFirst().prefix(255)
                buffer.append(UInt8(further.count))
                for path in further {
                    buffer.append(path.id)
                    put(path.flow.source)
                    put(path.flow.sourcePort)
                    put(path.flow.destination)
                    put(path.flow.destinationPort)
                }
            }
            if session.origin != .csp { buffer.append(session.origin == .natPMP ? 1 : 2) }
            count += 1
        }

        /// The octets made since the last call (the checksum has seen them).
        public mutating func take() -> [UInt8] {
            checksum.add(buffer)
            defer { buffer.removeAll(keepingCapacity: true) }
            return buffer
        }

        /// The last octets: what `take` has not returned yet, then the trailer.
        public mutating func finish() -> [UInt8] {
            buffer.append(SessionSnapshot.trailerMark)
            put(count)
            checksum.add(buffer)
            put(checksum.value)
            defer { buffer.removeAll() }
            return buffer
        }

        private mutating func put(_ flow: FlowTuple) {
            put(flow.source)
            put(flow.sourcePort)
            put(flow.destination)
            put(flow.destinationPort)
        }

        private mutating func put(_ address: IPAddress) {
            if let value = address.ipv4Value {
                buffer.append(4)
                put(value)
            } else {
                buffer.append(6)
                buffer += address.bytes
            }
        }

        private mutating func put(_ endpoint: CSPEndpoint) {
            put(endpoint.address)
            put(endpoint.port)
        }

        private mutating func put(_ value: UInt16) {
            buffer.append(UInt8(value >> 8))
            buffer.append(UInt8(value & 0xff))
        }

        private mutating func put(_ value: UInt32) {
            put(UInt16(value >> 16))
            put(UInt16(value & 0xffff))
        }

        private mutating func put(_ value: UInt64) {
            put(UInt32(value >> 32))
            put(UInt32(value & 0xffff_ffff))
        }
    }

    /// A whole snapshot at once (tests, small tables).
    public static func encode(header: Header, sessions: some Sequence<Session>, now: Instant, wallNow: UInt64) -> [UInt8] {
        var writer = Writer(header: header)
        var bytes: [UInt8] = []
        for session in sessions { writer.append(session, now: now, wallNow: wallNow) }
        bytes += writer.take()
        bytes += writer.finish()
        return bytes
    }

    // MARK: - Reading

    /// A checked snapshot: `init` verifies the header, the trailer, the checksum and every record
    /// once (after which reading cannot fail); `forEach` then yields the records.
    public struct Reader {
        public let header: Header
        public let count: Int
        private let bytes: [UInt8]
        private let recordsStart: Int
        private let recordsEnd: Int

        /// - Parameters:
        ///   - table, middleboxID: what this daemon is; a snapshot of another table or middlebox is
        ///     refused (the state directory may be shared or copied).
        ///   - maximumSessions: more records than this are refused (`max-sessions`).
        public init(bytes: [UInt8], table: String, middleboxID: UInt64, maximumSessions: Int) throws(Refusal) {
            var cursor = Cursor(bytes: bytes, offset: 0, end: bytes.count)
            guard bytes.count >= magic.count + 4, Array(bytes[0..<magic.count]) == magic else {
                throw Refusal("not a midcomd session snapshot (no MIDCOMSS header)")
            }
            cursor.offset = magic.count
            let version = try cursor.u16()
            guard version == SessionSnapshot.version else {
                throw Refusal("snapshot version \(version), this midcomd reads version \(SessionSnapshot.version)")
            }
            let flags = try cursor.u16()
            let id = try cursor.u64()
            let writtenAt = try cursor.u64()
            let tableName = String(decoding: try cursor.take(Int(try cursor.u8())), as: UTF8.self)
            header = Header(middleboxID: id, writtenAt: writtenAt, table: tableName, clean: flags & 1 != 0)
            guard tableName == table else { throw Refusal("snapshot of table \(tableName), this midcomd runs table \(table)") }
            guard id == middleboxID else {
                throw Refusal("snapshot of middlebox \(hex(id)), this is middlebox \(hex(middleboxID))")
            }
            guard bytes.count - cursor.offset >= SessionSnapshot.trailerLength else { throw Refusal("snapshot truncated (no trailer)") }
            let trailer = bytes.count - SessionSnapshot.trailerLength
            var tail = Cursor(bytes: bytes, offset: trailer, end: bytes.count)
            guard try tail.u8() == SessionSnapshot.trailerMark else { throw Refusal("snapshot truncated or corrupt (no trailer)") }
            let announced = Int(try tail.u32())
            let stored = try tail.u64()
            var checksum = FNV1a()
            checksum.add(bytes[0..<(bytes.count - 8)])
            guard checksum.value == stored else { throw Refusal("snapshot corrupt (checksum mismatch)") }
            guard announced <= maximumSessions else {
                throw Refusal("snapshot holds \(announced) sessions, more than max-sessions (\(maximumSessions))")
            }
            guard bytes.count <= 64 + announced * SessionSnapshot.maximumBytesPerSession + SessionSnapshot.trailerLength else {
                throw Refusal("snapshot of \(bytes.count) octets is too large for \(announced) sessions")
            }
            recordsStart = cursor.offset
            recordsEnd = trailer
            self.bytes = bytes
            // Every record once, so that adopting cannot stop half-way on a bad one.
            var records = Cursor(bytes: bytes, offset: recordsStart, end: recordsEnd)
            var seen = 0
            while records.offset < recordsEnd {
                _ = try Self.record(&records, index: seen)
                seen += 1
            }
            guard seen == announced else { throw Refusal("snapshot announces \(announced) sessions and holds \(seen)") }
            count = seen
        }

        /// Every record in the file's order; `body` returns false to stop.
        public func forEach(_ body: (Entry) -> Bool) {
            var cursor = Cursor(bytes: bytes, offset: recordsStart, end: recordsEnd)
            var index = 0
            while cursor.offset < recordsEnd, let entry = try? Self.record(&cursor, index: index) {
                index += 1
                guard body(entry) else { return }
            }
        }

        static func record(_ cursor: inout Cursor, index: Int) throws(Refusal) -> Entry {
            let id = try cursor.u64()
            let proto = IPProtocol(rawValue: try cursor.u8())
            let stateCode = try cursor.u8()
            let flags = try cursor.u8()
            let state: SessionState
            switch stateCode {
            case 0: state = .admitted
            case 1: state = .legacy
            case 2: state = .redirected
            default: throw Refusal("snapshot record \(index): unknown state \(stateCode)")
            }
            let flow = FlowTuple(
                proto: proto, source: try cursor.address(), sourcePort: try cursor.u16(), destination: try cursor.address(),
                destinationPort: try cursor.u16())
            let createdAt = try cursor.u64()
            let granted = try cursor.u32()
            let expiresAt = flags & Flag.expires != 0 ? try cursor.u64() : nil
            var session = Session(
                id: id, flow: flow, state: state, createdAt: Instant(nanoseconds: 0), expiresAt: nil, grantedLifetime: granted,
                incoming: flags & Flag.incoming != 0)
            if flags & Flag.application != 0 {
                session.application = String(decoding: try cursor.take(Int(try cursor.u16())), as: UTF8.self)
            }
            if flags & Flag.mapping != 0 { session.mapping = try cursor.endpoint() }
            if flags & Flag.relay != 0 { session.relay = try cursor.endpoint() }
            if flags & Flag.redirect != 0 { session.redirectTarget = try cursor.endpoint() }
            if flags & Flag.paths != 0 {
                let count = try cursor.u8()
                for _ in 0..<count {
                    let path = try cursor.u8()
                    guard path != 0 else { throw Refusal("snapshot record \(index): a further path with ID 0") }
                    let further = FlowTuple(
                        proto: proto, source: try cursor.address(), sourcePort: try cursor.u16(), destination: try cursor.address(),
                        destinationPort: try cursor.u16())
                    session.setPath(path, further)
                }
            }
            if flags & Flag.origin != 0 {
                switch try cursor.u8() {
                case 1: session.origin = .natPMP
                case 2: session.origin = .pcp
                case let code: throw Refusal("snapshot record \(index): unknown origin \(code)")
                }
            }
            return Entry(session: session, createdAt: createdAt, expiresAt: expiresAt)
        }
    }

    /// Reads fields within `offset..<end`; every read checks what is left first.
    struct Cursor {
        let bytes: [UInt8]
        var offset: Int
        let end: Int

        mutating func take(_ count: Int) throws(Refusal) -> ArraySlice<UInt8> {
            guard count >= 0, end - offset >= count else { throw Refusal("snapshot truncated or corrupt (a field runs past octet \(end))") }
            defer { offset += count }
            return bytes[offset..<offset + count]
        }

        mutating func u8() throws(Refusal) -> UInt8 { try take(1).first! }

        mutating func u16() throws(Refusal) -> UInt16 {
            let two = try take(2)
            return UInt16(two[two.startIndex]) << 8 | UInt16(two[two.startIndex + 1])
        }

        mutating func u32() throws(Refusal) -> UInt32 { try take(4).reduce(0) { $0 << 8 | UInt32($1) } }
        mutating func u64() throws(Refusal) -> UInt64 { try take(8).reduce(0) { $0 << 8 | UInt64($1) } }

        mutating func address() throws(Refusal) -> IPAddress {
            switch try u8() {
            case 4: return IPAddress(ipv4: try u32())
            case 6: return IPAddress(bytes: try take(16))!
            case let family: throw Refusal("snapshot corrupt (address family \(family))")
            }
        }

        mutating func endpoint() throws(Refusal) -> CSPEndpoint {
            CSPEndpoint(address: try address(), port: try u16())
        }
    }
}

/// FNV-1a, 64 bits: catches a torn or flipped file; not a defence against a forger (one who can
/// write root's state directory can do worse than forge a snapshot).
struct FNV1a: Sendable {
    private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    mutating func add(_ bytes: some Sequence<UInt8>) {
        var hash = value
        for byte in bytes {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        value = hash
    }
}

extension GatewayEngine {
    /// Room for `count` more sessions without rehashing the table while a restart adopts them.
    public mutating func reserveSessions(_ count: Int) {
        sessions.reserveCapacity(sessions.count + count)
    }

    /// Takes over a session from the snapshot whose kernel state was checked by the caller:
    /// kept with its ID, flows, mapping and lifetime; its NAT ports are reserved. A session
    /// signaled (or adopted) again meanwhile wins. Returns whether it was taken.
    @discardableResult
    public mutating func restore(_ session: Session) -> Bool {
        guard sessions[id: session.id] == nil else { return false }
        for path in session.paths where sessions.session(for: path.flow) != nil { return false }
        if let mapping = session.mapping { _ = natPorts?.reserve(session.flow.proto, mapping.port) }
        if let relay = session.relay { _ = natPorts?.reserve(session.flow.proto, relay.port) }
        sessions.upsert(session)
        counters.adopted += 1
        return true
    }
}
