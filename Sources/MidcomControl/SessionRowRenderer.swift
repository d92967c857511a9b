/// Renders streamed session rows (SessionRowStream.swift) as octets, exactly as
/// `SessionTableFormatter.table` and midctl's pretty-printed JSON render the same `SessionRecord`s
/// (the tests compare both for random records), but without a `String` per cell: at a million
/// sessions the listing must take a second, not twenty.
///
/// JSON rows can be written as they arrive. The table's columns are as wide as their widest cell,
/// so a table is rendered as its frames arrive and written once the last one is in, frames that a
/// later one widened rendered again (`TableWriter`).
public enum SessionRowRenderer {
    static let hexDigits = Array("0123456789abcdef".utf8)

    /// 16 lowercase hex digits (as CSPWire's `hex`, which this target does not depend on).
    public static func hex(_ id: UInt64) -> String {
        String(unsafeUninitializedCapacity: 16) { buffer in
            for index in 0..<16 { buffer[index] = hexDigit(of: id, at: index) }
            return 16
        }
    }

    /// The `index`th of the 16 hex digits of `id`, most significant first.
    @inline(__always)
    static func hexDigit(of id: UInt64, at index: Int) -> UInt8 { hexDigits[Int(id >> UInt64(60 - 4 * index) & 0xf)] }

    static func appendHex(_ id: UInt64, to out: inout [UInt8]) {
        for index in 0..<16 { out.append(hexDigit(of: id, at: index)) }
    }

    // MARK: - JSON (JSONEncoder with .prettyPrinted, .sortedKeys, .withoutEscapingSlashes)

    /// Writes the JSON array of rows piece by piece: `begin`, `append` per row, `end`.
    public struct JSONArrayWriter {
        private var rows = 0
        public init() {}

        public mutating func begin(into out: inout [UInt8]) { out.append(UInt8(ascii: "[")) }

        public mutating func append(_ row: SessionRowView, of reader: SessionRowReader, into out: inout [UInt8]) {
            out += rows == 0 ? Bytes.firstObject : Bytes.nextObject
            rows += 1
            let payload = reader.payload
            func string(_ field: SessionRowView.Field) { appendJSONString(payload[field], to: &out) }
            // Keys in sorted order (JSONEncoder's .sortedKeys); each constant holds the separator
            // before it, so the first one has none.
            out += Bytes.action; string(row.action)
            out += Bytes.ageSeconds; appendJSONNumber(row.ageSeconds, to: &out)
            if let application = row.application { out += Bytes.application; string(application) }
            if let bytes = row.bytes { out += Bytes.bytes; appendDecimal(bytes, to: &out) }
            out += Bytes.destination; string(row.destination)
            out += Bytes.destinationPort; appendDecimal(UInt64(row.destinationPort), to: &out)
            out += Bytes.id; appendHexString(row.id, to: &out)
            if let origin = row.origin { out += Bytes.origin; string(origin) }
            if let packets = row.packets { out += Bytes.packets; appendDecimal(packets, to: &out) }
            if row.paths != nil {
                out += Bytes.paths
                let paths = reader.paths(of: row)
                if paths.isEmpty {
                    out += Bytes.emptyPaths
                } else {
                    out.append(UInt8(ascii: "["))
                    for (index, path) in paths.enumerated() {
                        out += index == 0 ? Bytes.firstPath : Bytes.nextPath
                        out += Bytes.pathDestination; string(path.destination)
                        out += Bytes.pathDestinationPort; appendDecimal(UInt64(path.destinationPort), to: &out)
                        out += Bytes.pathID; appendDecimal(UInt64(path.id), to: &out)
                        out += Bytes.pathSource; string(path.source)
                        out += Bytes.pathSourcePort; appendDecimal(UInt64(path.sourcePort), to: &out)
                        out += Bytes.endPath
                    }
                    out += Bytes.endPaths
                }
            }
            if let peers = row.peerMiddleboxes { out += Bytes.peerMiddleboxes; appendDecimal(UInt64(peers), to: &out) }
            out += Bytes.proto; string(row.proto)
            if let remaining = row.remainingSeconds { out += Bytes.remainingSeconds; appendJSONNumber(remaining, to: &out) }
            out += Bytes.source; string(row.source)
            out += Bytes.sourcePort; appendDecimal(UInt64(row.sourcePort), to: &out)
            out += Bytes.state; string(row.state)
            out += Bytes.endObject
        }

        /// The constant pieces, made once.
        enum Bytes {
            static let firstObject = Array("\n  {\n".utf8)
            static let nextObject = Array(",\n  {\n".utf8)
            static let endObject = Array("\n  }".utf8)
            static func key(_ name: String, first: Bool = false) -> [UInt8] { Array(((first ? "" : ",\n") + "    \"\(name)\" : ").utf8) }
            static let action = key("action", first: true)
            static let ageSeconds = key("ageSeconds")
            static let application = key("application")
            static let bytes = key("bytes")
            static let destination = key("destination")
            static let destinationPort = key("destinationPort")
            static let id = key("id")
            static let origin = key("origin")
            static let packets = key("packets")
            static let paths = key("paths")
            static let peerMiddleboxes = key("peerMiddleboxes")
            static let proto = key("proto")
            static let remainingSeconds = key("remainingSeconds")
            static let source = key("source")
            static let sourcePort = key("sourcePort")
            static let state = key("state")
            static let emptyPaths = Array("[\n\n    ]".utf8)
            static let firstPath = Array("\n      {\n".utf8)
            static let nextPath = Array(",\n      {\n".utf8)
            static let pathDestination = Array("        \"destination\" : ".utf8)
            static let pathDestinationPort = Array(",\n        \"destinationPort\" : ".utf8)
            static let pathID = Array(",\n        \"id\" : ".utf8)
            static let pathSource = Array(",\n        \"source\" : ".utf8)
            static let pathSourcePort = Array(",\n        \"sourcePort\" : ".utf8)
            static let endPath = Array("\n      }".utf8)
            static let endPaths = Array("\n    ]".utf8)
        }

        /// Closes the array; midctl's `print` adds the final newline.
        public mutating func end(into out: inout [UInt8]) {
            out += Array((rows == 0 ? "\n\n]\n" : "\n]\n").utf8)
        }
    }

    /// A JSON string as JSONEncoder writes it: quotes, backslashes and control characters
    /// escaped, everything else (slashes, non-ASCII) as is.
    static func appendJSONString(_ utf8: ArraySlice<UInt8>, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in utf8 {
            switch byte {
            case UInt8(ascii: "\""): out.append(UInt8(ascii: "\\")); out.append(UInt8(ascii: "\""))
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case 0x0A: out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
            case 0x0D: out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
            case 0x09: out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
            case 0x08: out += [UInt8(ascii: "\\"), UInt8(ascii: "b")]
            case 0x0C: out += [UInt8(ascii: "\\"), UInt8(ascii: "f")]
            case 0..<0x20: out += Array("\\u00".utf8) + [hexDigits[Int(byte >> 4)], hexDigits[Int(byte & 0xf)]]
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    static func appendHexString(_ id: UInt64, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        appendHex(id, to: &out)
        out.append(UInt8(ascii: "\""))
    }

    /// A Double as JSONEncoder writes it: Swift's shortest description, without a trailing ".0".
    static func appendJSONNumber(_ value: Double, to out: inout [UInt8]) {
        if value.isFinite, value == value.rounded(), abs(value) < 1e15 {
            // Whole numbers are the common case (and print without ".0").
            if value < 0 || (value == 0 && value.sign == .minus) { out.append(UInt8(ascii: "-")) }
            appendDecimal(UInt64(abs(value)), to: &out)
            return
        }
        var text = value.description
        if text.hasSuffix(".0") { text.removeLast(2) }
        out += Array(text.utf8)
    }

    static func appendDecimal(_ value: UInt64, to out: inout [UInt8]) {
        if value < 10 {
            out.append(UInt8(ascii: "0") + UInt8(value))
            return
        }
        var digits: (UInt64, UInt64) = (0, 0)  // up to 20 digits, written backwards into 16 octets
        var count = 0
        var rest = value
        withUnsafeMutableBytes(of: &digits) { buffer in
            while rest > 0 {
                buffer[15 - count % 16] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
                count += 1
                if count == 16 { break }
            }
        }
        if rest > 0 { appendDecimal(rest, to: &out) }  // more than 16 digits: the head first
        withUnsafeBytes(of: &digits) { buffer in out += buffer[(16 - min(count, 16))...] }
    }

    // MARK: - Table (SessionTableFormatter.table)

    static let columnCount = SessionTableFormatter.columns.count
    static let csp = Array("csp".utf8)
    static let rightAligned = SessionTableFormatter.columns.map(\.rightAligned)

    /// Column widths so far; start with `Widths()` (the header's), then `measure` every row.
    public struct Widths: Equatable {
        var columns: [Int] = SessionTableFormatter.columns.map { $0.title.utf8.count }
        public init() {}
    }

    /// Widens `widths` to fit `row` (and its path lines). Widths are counted, not rendered, where
    /// that is simple (a million rows are measured before the first is written).
    public static func measure(_ row: SessionRowView, of reader: SessionRowReader, into widths: inout Widths, scratch: inout [UInt8]) {
        let payload = reader.payload
        func widen(_ column: Int, _ width: Int) {
            if width > widths.columns[column] { widths.columns[column] = width }
        }
        widen(1, displayWidth(payload[row.proto]))
        widen(2, endpointWidth(payload[row.source], port: row.sourcePort))
        widen(3, endpointWidth(payload[row.destination], port: row.destinationPort))
        widen(4, displayWidth(payload[row.state]))
        widen(5, displayWidth(payload[row.action]))
        widen(6, durationWidth(row.ageSeconds))
        widen(7, durationWidth(row.remainingSeconds))
        widen(8, row.packets.map(decimalWidth) ?? 1)
        widen(9, row.bytes.map { SessionTableFormatter.byteCount($0).count } ?? 1)
        widen(10, row.application.map { displayWidth(payload[$0]) } ?? 1)
        widen(11, row.origin.map { displayWidth(payload[$0]) } ?? 3)
        widen(0, 16)
        if row.paths != nil {
            for path in reader.paths(of: row) {
                scratch.removeAll(keepingCapacity: true)
                appendPathCell(0, path: path, row: row, reader: reader, to: &scratch)
                widen(0, displayWidth(scratch[...]))
                widen(2, endpointWidth(payload[path.source], port: path.sourcePort))
                widen(3, endpointWidth(payload[path.destination], port: path.destinationPort))
            }
        }
    }

    static func decimalWidth(_ value: UInt64) -> Int {
        var width = 1
        var rest = value
        while rest >= 10 {
            rest /= 10
            width += 1
        }
        return width
    }

    static func endpointWidth(_ address: ArraySlice<UInt8>, port: UInt16) -> Int {
        let host = address.isEmpty ? 1 : displayWidth(address) + (address.contains(UInt8(ascii: ":")) ? 2 : 0)
        return host + 1 + (port == 0 ? 1 : decimalWidth(UInt64(port)))
    }

    static func durationWidth(_ seconds: Double?) -> Int {
        guard let seconds, seconds.isFinite else { return 1 }
        let total = seconds <= 0 ? 0 : UInt64(min(seconds, Double(UInt32.max) * 1000))
        switch total {
        case ..<60: return decimalWidth(total) + 1
        case ..<3600: return decimalWidth(total / 60) + 4
        case ..<86400: return decimalWidth(total / 3600) + 4
        default: return decimalWidth(total / 86400) + 4
        }
    }

    /// A table written while its frames arrive. Each frame is measured, then rendered at once with
    /// the widths so far and kept; `finish` writes the header and the frames, rendering again only
    /// those whose widths changed after them. Widths settle within the first frames of a large
    /// listing, so nearly all of the rendering overlaps the daemon's sending: rendered only after
    /// the last frame, it was a third of `midctl sessions` at a million sessions
    /// (docs/PERFORMANCE.md, "The seventh full run"). Memory: the rendered table (about the size
    /// of the output) and the frames are kept until `finish`.
    public struct TableWriter {
        private var widths = Widths()
        private var frames: [(reader: SessionRowReader, widths: Widths, rendered: [UInt8])] = []
        private var scratch: [UInt8] = []
        private let color: Bool

        public init(color: Bool) { self.color = color }

        public mutating func add(_ reader: SessionRowReader) throws(SessionRowStreamError) {
            var rows = reader
            while let row = try rows.next() { measure(row, of: reader, into: &widths, scratch: &scratch) }
            var rendered: [UInt8] = []
            try SessionRowRenderer.render(reader, widths: widths, color: color, to: &rendered, scratch: &scratch)
            frames.append((reader, widths, rendered))
        }

        /// The header and every row, handed to `write` in order (a frame at a time).
        public mutating func finish(write: (inout [UInt8]) -> Void) throws(SessionRowStreamError) {
            var out: [UInt8] = []
            appendHeader(widths: widths, to: &out)
            write(&out)
            for index in frames.indices {
                var rendered = frames[index].rendered
                frames[index].rendered = []
                if frames[index].widths != widths {
                    rendered.removeAll(keepingCapacity: true)
                    try SessionRowRenderer.render(frames[index].reader, widths: widths, color: color, to: &rendered, scratch: &scratch)
                }
                write(&rendered)
            }
            frames = []
        }
    }

    /// Every row of one frame (and their path lines), padded to `widths`.
    static func render(
        _ reader: SessionRowReader, widths: Widths, color: Bool, to out: inout [UInt8], scratch: inout [UInt8]
    ) throws(SessionRowStreamError) {
        var rows = reader
        while let row = try rows.next() { appendRow(row, of: reader, widths: widths, color: color, to: &out, scratch: &scratch) }
    }

    /// The header line.
    public static func appendHeader(widths: Widths, to out: inout [UInt8]) {
        let titles = SessionTableFormatter.columns.map { Array($0.title.utf8) }
        var scratch: [UInt8] = []
        appendLine(widths: widths, color: false, to: &out, scratch: &scratch) { column, cell in cell += titles[column] }
    }

    /// The row's line (and one per further path), padded to `widths`.
    public static func appendRow(
        _ row: SessionRowView, of reader: SessionRowReader, widths: Widths, color: Bool, to out: inout [UInt8], scratch: inout [UInt8]
    ) {
        appendLine(widths: widths, color: color, to: &out, scratch: &scratch) { column, cell in
            appendCell(column, of: row, reader: reader, to: &cell)
        }
        guard row.paths != nil else { return }
        for path in reader.paths(of: row) {
            appendLine(widths: widths, color: false, to: &out, scratch: &scratch) { column, cell in
                appendPathCell(column, path: path, row: row, reader: reader, to: &cell)
            }
        }
    }

    /// One line: each cell padded (left- or right-aligned), two blanks between columns, trailing
    /// blanks removed, the STATE cell painted when `color`.
    private static func appendLine(
        widths: Widths, color: Bool, to out: inout [UInt8], scratch: inout [UInt8], cell makeCell: (Int, inout [UInt8]) -> Void
    ) {
        let lineStart = out.count
        for column in 0..<columnCount {
            if column > 0 {
                out.append(32)
                out.append(32)
            }
            if !rightAligned[column], !(color && column == 4) {
                // Straight into the line, then padded.
                let start = out.count
                makeCell(column, &out)
                if column < columnCount - 1 {
                    let padding = widths.columns[column] - displayWidth(out[start...])
                    if padding > 0 { out.append(contentsOf: repeatElement(32, count: padding)) }
                }
                continue
            }
            scratch.removeAll(keepingCapacity: true)
            makeCell(column, &scratch)
            let padding = max(0, widths.columns[column] - displayWidth(scratch[...]))
            let code = color && column == 4 ? stateColor(scratch) : nil
            if let code { out += Array("\u{1B}[\(code)m".utf8) }
            if rightAligned[column] {
                out += repeatElement(32, count: padding)
                out += scratch
            } else {
                out += scratch
                if column < columnCount - 1 { out += repeatElement(32, count: padding) }
            }
            if code != nil { out += Array("\u{1B}[0m".utf8) }
        }
        while out.count > lineStart, out.last == 32 { out.removeLast() }
        out.append(UInt8(ascii: "\n"))
    }

    private static func stateColor(_ cell: [UInt8]) -> String? {
        SessionTableFormatter.stateColor(String(decoding: cell, as: UTF8.self))
    }

    /// Characters on the screen: octets for ASCII, characters otherwise (as `String.count`).
    static func displayWidth(_ cell: ArraySlice<UInt8>) -> Int {
        for byte in cell where byte >= 0x80 { return String(decoding: cell, as: UTF8.self).count }
        return cell.count
    }

    static func appendCell(_ column: Int, of row: SessionRowView, reader: SessionRowReader, to cell: inout [UInt8]) {
        let payload = reader.payload
        switch column {
        case 0: appendHex(row.id, to: &cell)
        case 1: cell += payload[row.proto]
        case 2: appendEndpoint(payload[row.source], port: row.sourcePort, to: &cell)
        case 3: appendEndpoint(payload[row.destination], port: row.destinationPort, to: &cell)
        case 4: cell += payload[row.state]
        case 5: cell += payload[row.action]
        case 6: appendDuration(row.ageSeconds, to: &cell)
        case 7: appendDuration(row.remainingSeconds, to: &cell)
        case 8: if let packets = row.packets { appendDecimal(packets, to: &cell) } else { cell.append(UInt8(ascii: "-")) }
        case 9: if let bytes = row.bytes { cell += Array(SessionTableFormatter.byteCount(bytes).utf8) } else { cell.append(UInt8(ascii: "-")) }
        case 10: if let application = row.application { cell += payload[application] } else { cell.append(UInt8(ascii: "-")) }
        default: if let origin = row.origin { cell += payload[origin] } else { cell += csp }
        }
    }

    private static func appendPathCell(
        _ column: Int, path: (id: UInt8, source: SessionRowView.Field, sourcePort: UInt16, destination: SessionRowView.Field, destinationPort: UInt16),
        row: SessionRowView, reader: SessionRowReader, to cell: inout [UInt8]
    ) {
        switch column {
        case 0: cell += Array("  +path ".utf8); appendDecimal(UInt64(path.id), to: &cell)
        case 1: cell += reader.payload[row.proto]
        case 2: appendEndpoint(reader.payload[path.source], port: path.sourcePort, to: &cell)
        case 3: appendEndpoint(reader.payload[path.destination], port: path.destinationPort, to: &cell)
        default: break
        }
    }

    /// `addr:port`, `[addr]:port` for IPv6, `*` for an empty address or port 0.
    static func appendEndpoint(_ address: ArraySlice<UInt8>, port: UInt16, to cell: inout [UInt8]) {
        if address.isEmpty {
            cell.append(UInt8(ascii: "*"))
        } else if address.contains(UInt8(ascii: ":")) {
            cell.append(UInt8(ascii: "["))
            cell += address
            cell.append(UInt8(ascii: "]"))
        } else {
            cell += address
        }
        cell.append(UInt8(ascii: ":"))
        if port == 0 { cell.append(UInt8(ascii: "*")) } else { appendDecimal(UInt64(port), to: &cell) }
    }

    /// `SessionTableFormatter.duration`, into octets.
    static func appendDuration(_ seconds: Double?, to cell: inout [UInt8]) {
        guard let seconds, seconds.isFinite else { return cell.append(UInt8(ascii: "-")) }
        let total = seconds <= 0 ? 0 : UInt64(min(seconds, Double(UInt32.max) * 1000))
        func two(_ value: UInt64) {
            if value < 10 { cell.append(UInt8(ascii: "0")) }
            appendDecimal(value, to: &cell)
        }
        switch total {
        case ..<60:
            appendDecimal(total, to: &cell); cell.append(UInt8(ascii: "s"))
        case ..<3600:
            appendDecimal(total / 60, to: &cell); cell.append(UInt8(ascii: "m")); two(total % 60); cell.append(UInt8(ascii: "s"))
        case ..<86400:
            appendDecimal(total / 3600, to: &cell); cell.append(UInt8(ascii: "h")); two(total / 60 % 60); cell.append(UInt8(ascii: "m"))
        default:
            appendDecimal(total / 86400, to: &cell); cell.append(UInt8(ascii: "d")); two(total / 3600 % 24); cell.append(UInt8(ascii: "h"))
        }
    }
}
