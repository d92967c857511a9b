// `sessions` as a stream (control protocol version 1, an addition old peers ignore).
//
// A request {"command":"sessions","stream":true,...} is answered with one JSON line as usual; when
// it is ok and carries "stream":"session-rows", binary frames follow on the same connection until
// the end frame, and then the daemon closes it:
//
//   frame   u32 length (big endian, of kind + payload) · u8 kind · payload
//   kind 1  rows:  u16 count · count × row
//   kind 0  end:   u64 rows sent in all (the client checks it)
//   kind 2  error: UTF-8 text (the daemon could not go on; the listing is incomplete)
//
//   row     u64 id · str8 proto · str8 source · u16 sourcePort · str8 destination · u16 destinationPort
//           · str8 state · str8 action · f64 ageSeconds · u8 flags
//           · [f64 remainingSeconds]   flags & 0x01
//           · [u64 packets]            flags & 0x02
//           · [u64 bytes]              flags & 0x04
//           · [str16 application]      flags & 0x08
//           · [str8 origin]            flags & 0x10
//           · [u32 peerMiddleboxes]    flags & 0x20
//           · [u8 count · count × (u8 id · str8 source · u16 port · str8 destination · u16 port)]  flags & 0x40
//   str8 / str16: a u8 / u16 length, then that many UTF-8 octets; f64: IEEE 754 bits as a u64;
//   all integers big endian.
//
// Why not JSON lines: at a million sessions JSONEncoder and JSONDecoder cost seconds each
// (docs/PERFORMANCE.md, figure 7); a row here is ~60 octets the client renders straight into the
// table or the JSON midctl prints. Rows arrive in the daemon's order (oldest session first).

/// Constants and the frame layout of the session-row stream.
public enum SessionRowStream {
    /// The `stream` value of the answer line that announces row frames.
    public static let marker = "session-rows"
    /// The largest frame a client accepts (a daemon sends a few hundred KiB).
    public static let maximumFrameBytes = 16 << 20
    /// Rows per frame the daemon aims for: a few thousand sessions are copied under the engine lock
    /// at a time, and each frame is sent before the next is made, so a slow reader holds one frame.
    public static let rowsPerFrame = 2048

    public enum Kind: UInt8, Sendable {
        case end = 0
        case rows = 1
        case error = 2
    }

    enum Flag {
        static let remaining: UInt8 = 0x01
        static let packets: UInt8 = 0x02
        static let bytes: UInt8 = 0x04
        static let application: UInt8 = 0x08
        static let origin: UInt8 = 0x10
        static let peers: UInt8 = 0x20
        static let paths: UInt8 = 0x40
    }
}

/// Builds one frame of rows (the daemon side). Values are appended field by field, with no
/// intermediate `SessionRecord`, so that a million rows cost no allocation each.
public struct SessionRowFrameBuilder: Sendable {
    public private(set) var bytes: [UInt8] = []
    public private(set) var count = 0

    public init(capacity: Int = SessionRowStream.rowsPerFrame * 64) {
        bytes.reserveCapacity(capacity + 7)
        bytes += [0, 0, 0, 0, SessionRowStream.Kind.rows.rawValue, 0, 0]
    }

    /// One further path of a session.
    public struct Path: Sendable {
        public var id: UInt8
        public var source: String
        public var sourcePort: UInt16
        public var destination: String
        public var destinationPort: UInt16
        public init(id: UInt8, source: String, sourcePort: UInt16, destination: String, destinationPort: UInt16) {
            self.id = id
            self.source = source
            self.sourcePort = sourcePort
            self.destination = destination
            self.destinationPort = destinationPort
        }
    }

    /// Appends one row; at most 65535 per frame.
    public mutating func append(
        id: UInt64, proto: String, source: String, sourcePort: UInt16, destination: String, destinationPort: UInt16,
        state: String, action: String, ageSeconds: Double, remainingSeconds: Double?, packets: UInt64?, bytes byteCount: UInt64?,
        application: String?, origin: String?, peerMiddleboxes: Int? = nil, paths: [Path]? = nil
    ) {
        precondition(count < Int(UInt16.max), "a frame holds at most 65535 rows")
        put(id)
        putString8(proto)
        putString8(source)
        put(sourcePort)
        putString8(destination)
        put(destinationPort)
        putString8(state)
        putString8(action)
        put(ageSeconds.bitPattern)
        var flags: UInt8 = 0
        if remainingSeconds != nil { flags |= SessionRowStream.Flag.remaining }
        if packets != nil { flags |= SessionRowStream.Flag.packets }
        if byteCount != nil { flags |= SessionRowStream.Flag.bytes }
        if application != nil { flags |= SessionRowStream.Flag.application }
        if origin != nil { flags |= SessionRowStream.Flag.origin }
        if peerMiddleboxes != nil { flags |= SessionRowStream.Flag.peers }
        if paths != nil { flags |= SessionRowStream.Flag.paths }
        bytes.append(flags)
        if let remainingSeconds { put(remainingSeconds.bitPattern) }
        if let packets { put(packets) }
        if let byteCount { put(byteCount) }
        if let application {
            let utf8 = Self.prefix(application, maximum: Int(UInt16.max))
            put(UInt16(utf8.count))
            bytes += utf8
        }
        if let origin { putString8(origin) }
        if let peerMiddleboxes { put(UInt32(clamping: max(0, peerMiddleboxes))) }
        if let paths {
            let shown = paths.prefix(255)
            bytes.append(UInt8(shown.count))
            for path in shown {
                bytes.append(path.id)
                putString8(path.source)
                put(path.sourcePort)
                putString8(path.destination)
                put(path.destinationPort)
            }
        }
        count += 1
    }

    /// The finished frame (length and row count filled in).
    public var frame: [UInt8] {
        var frame = bytes
        Self.storeLength(&frame)
        frame[5] = UInt8(count >> 8)
        frame[6] = UInt8(count & 0xff)
        return frame
    }

    /// The end frame: `total` rows were sent.
    public static func endFrame(total: UInt64) -> [UInt8] {
        var frame: [UInt8] = [0, 0, 0, 0, SessionRowStream.Kind.end.rawValue]
        for shift in stride(from: 56, through: 0, by: -8) { frame.append(UInt8(truncatingIfNeeded: total >> UInt64(shift))) }
        storeLength(&frame)
        return frame
    }

    /// An error frame: the listing stops here, incomplete.
    public static func errorFrame(_ message: String) -> [UInt8] {
        var frame: [UInt8] = [0, 0, 0, 0, SessionRowStream.Kind.error.rawValue]
        frame += prefix(message, maximum: 4096)
        storeLength(&frame)
        return frame
    }

    private static func storeLength(_ frame: inout [UInt8]) {
        let length = UInt32(frame.count - 4)
        frame[0] = UInt8(length >> 24)
        frame[1] = UInt8(length >> 16 & 0xff)
        frame[2] = UInt8(length >> 8 & 0xff)
        frame[3] = UInt8(length & 0xff)
    }

    /// At most `maximum` octets of `text`, cut at a character boundary.
    static func prefix(_ text: String, maximum: Int) -> [UInt8] {
        var utf8 = Array(text.utf8)
        guard utf8.count > maximum else { return utf8 }
        var end = maximum
        while end > 0, utf8[end] & 0xC0 == 0x80 { end -= 1 }  // not inside a multi-octet character
        utf8.removeSubrange(end...)
        return utf8
    }

    private mutating func putString8(_ text: String) {
        var text = text
        let fits = text.withUTF8 { utf8 -> Bool in
            guard utf8.count <= 255 else { return false }
            bytes.append(UInt8(utf8.count))
            bytes.append(contentsOf: utf8)
            return true
        }
        if !fits {
            let cut = Self.prefix(text, maximum: 255)
            bytes.append(UInt8(cut.count))
            bytes += cut
        }
    }

    private mutating func put(_ value: UInt16) {
        bytes.append(UInt8(value >> 8))
        bytes.append(UInt8(value & 0xff))
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

/// Why a frame or row could not be read: the stream is not what the daemon should send.
public struct SessionRowStreamError: Error, Equatable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// One row, read in place from a frame's payload: string fields are ranges of the payload, so
/// rendering copies octets without making a `String` per cell. The checked reader validates every
/// length once; after that no accessor can fail.
public struct SessionRowView {
    public typealias Field = Range<Int>

    public var id: UInt64
    public var proto: Field
    public var source: Field
    public var sourcePort: UInt16
    public var destination: Field
    public var destinationPort: UInt16
    public var state: Field
    public var action: Field
    public var ageSeconds: Double
    public var remainingSeconds: Double?
    public var packets: UInt64?
    public var bytes: UInt64?
    public var application: Field?
    public var origin: Field?
    public var peerMiddleboxes: UInt32?
    /// Where the paths start (count octet) and how many there are.
    public var paths: (start: Int, count: Int)?
}

/// Reads the rows of one `rows` frame payload (after the kind octet), bounds-checked.
public struct SessionRowReader {
    public let payload: [UInt8]
    private var offset: Int
    public let count: Int
    private var read = 0

    /// `payload`: the frame without its length and kind.
    public init(payload: [UInt8]) throws(SessionRowStreamError) {
        guard payload.count >= 2 else { throw SessionRowStreamError("rows frame of \(payload.count) octets has no row count") }
        self.payload = payload
        count = Int(payload[0]) << 8 | Int(payload[1])
        offset = 2
    }

    /// The next row, nil after the last; throws if a row runs past the frame.
    public mutating func next() throws(SessionRowStreamError) -> SessionRowView? {
        guard read < count else {
            guard offset == payload.count else { throw SessionRowStreamError("rows frame has \(payload.count - offset) octets after its \(count) rows") }
            return nil
        }
        read += 1
        let id = try u64()
        let proto = try string8()
        let source = try string8()
        let sourcePort = try u16()
        let destination = try string8()
        let destinationPort = try u16()
        let state = try string8()
        let action = try string8()
        let age = Double(bitPattern: try u64())
        let flags = try u8()
        var row = SessionRowView(
            id: id, proto: proto, source: source, sourcePort: sourcePort, destination: destination, destinationPort: destinationPort,
            state: state, action: action, ageSeconds: age)
        if flags & SessionRowStream.Flag.remaining != 0 { row.remainingSeconds = Double(bitPattern: try u64()) }
        if flags & SessionRowStream.Flag.packets != 0 { row.packets = try u64() }
        if flags & SessionRowStream.Flag.bytes != 0 { row.bytes = try u64() }
        if flags & SessionRowStream.Flag.application != 0 { row.application = try take(Int(try u16())) }
        if flags & SessionRowStream.Flag.origin != 0 { row.origin = try string8() }
        if flags & SessionRowStream.Flag.peers != 0 { row.peerMiddleboxes = UInt32(try u16()) << 16 | UInt32(try u16()) }
        if flags & SessionRowStream.Flag.paths != 0 {
            let start = offset
            let paths = Int(try u8())
            for _ in 0..<paths {
                _ = try u8()
                _ = try string8()
                _ = try u16()
                _ = try string8()
                _ = try u16()
            }
            row.paths = (start, paths)
        }
        return row
    }

    /// The further paths of `row` (id, source, port, destination, port).
    public func paths(of row: SessionRowView) -> [(id: UInt8, source: SessionRowView.Field, sourcePort: UInt16, destination: SessionRowView.Field, destinationPort: UInt16)] {
        guard let (start, count) = row.paths else { return [] }
        var cursor = start + 1
        func field() -> SessionRowView.Field {
            let length = Int(payload[cursor])
            defer { cursor += 1 + length }
            return (cursor + 1)..<(cursor + 1 + length)
        }
        func port() -> UInt16 {
            defer { cursor += 2 }
            return UInt16(payload[cursor]) << 8 | UInt16(payload[cursor + 1])
        }
        return (0..<count).map { _ in
            let id = payload[cursor]
            cursor += 1
            let source = field()
            let sourcePort = port()
            let destination = field()
            return (id, source, sourcePort, destination, port())
        }
    }

    public func string(_ field: SessionRowView.Field) -> String { String(decoding: payload[field], as: UTF8.self) }

    /// The row as the protocol's record (tests, and clients that want values).
    public func record(_ row: SessionRowView) -> SessionRecord {
        var record = SessionRecord(
            id: SessionRowRenderer.hex(row.id), proto: string(row.proto), source: string(row.source), sourcePort: row.sourcePort,
            destination: string(row.destination), destinationPort: row.destinationPort, state: string(row.state),
            action: string(row.action), ageSeconds: row.ageSeconds, remainingSeconds: row.remainingSeconds, packets: row.packets,
            bytes: row.bytes, application: row.application.map(string), peerMiddleboxes: row.peerMiddleboxes.map { Int($0) })
        record.origin = row.origin.map(string)
        if row.paths != nil {
            record.paths = paths(of: row).map {
                PathRecord(id: $0.id, source: string($0.source), sourcePort: $0.sourcePort, destination: string($0.destination), destinationPort: $0.destinationPort)
            }
        }
        return record
    }

    private mutating func u8() throws(SessionRowStreamError) -> UInt8 {
        guard offset < payload.count else { throw truncated() }
        defer { offset += 1 }
        return payload[offset]
    }

    private mutating func u16() throws(SessionRowStreamError) -> UInt16 {
        guard payload.count - offset >= 2 else { throw truncated() }
        defer { offset += 2 }
        return UInt16(payload[offset]) << 8 | UInt16(payload[offset + 1])
    }

    private mutating func u64() throws(SessionRowStreamError) -> UInt64 {
        guard payload.count - offset >= 8 else { throw truncated() }
        var value: UInt64 = 0
        for index in offset..<offset + 8 { value = value << 8 | UInt64(payload[index]) }
        offset += 8
        return value
    }

    private mutating func string8() throws(SessionRowStreamError) -> SessionRowView.Field {
        try take(Int(try u8()))
    }

    private mutating func take(_ length: Int) throws(SessionRowStreamError) -> SessionRowView.Field {
        guard payload.count - offset >= length else { throw truncated() }
        defer { offset += length }
        return offset..<offset + length
    }

    private func truncated() -> SessionRowStreamError {
        SessionRowStreamError("row \(read) of \(count) runs past the end of its frame (\(payload.count) octets)")
    }
}
