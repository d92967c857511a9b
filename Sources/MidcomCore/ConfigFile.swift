/// A configuration file: TOML (v1.0), the part of it midcomd.conf needs — `[section]` and
/// `[[rule]]` tables, `key = value` with strings (basic with escapes, and literal), integers
/// (decimal, hex, octal, binary, with underscores), booleans and arrays of them, comments — read
/// exactly as the TOML specification reads it. What midcomd.conf never needs (floats, dates,
/// multi-line strings, inline tables, dotted and quoted keys) is refused by name rather than
/// guessed at, so every file midcomd accepts is valid TOML and means the same to any TOML parser
/// (`Tests/integration/config-toml.sh` checks this against Python's tomllib).
///
/// Every value remembers its line so that errors can name the file, the line and the fix. Unlike
/// TOML parsers in general it also refuses what is valid but surely a mistake in a firewall's
/// configuration, never silently keeping one of two: a key or section given twice.
public struct ConfigFile: Sendable {
    public indirect enum Kind: Sendable, Equatable {
        case string(String)
        case integer(Int64)
        case boolean(Bool)
        case array([Value])
    }

    public struct Value: Sendable, Equatable {
        public var kind: Kind
        public var line: Int

        /// The value as written for messages, and a string's content.
        public var text: String {
            switch kind {
            case .string(let s): s
            case .integer(let n): String(n)
            case .boolean(let b): b ? "true" : "false"
            case .array(let items): "[" + items.map(\.text).joined(separator: ", ") + "]"
            }
        }

        public var typeName: String {
            switch kind {
            case .string: "a string"
            case .integer: "a whole number"
            case .boolean: "true or false"
            case .array: "an array"
            }
        }
    }

    public struct Table: Sendable {
        public var name: String
        public var line: Int
        /// One of several `[[name]]` tables.
        public var isArrayElement: Bool
        public var values: [(key: String, value: Value)]

        public func value(_ key: String) -> Value? { values.first { $0.key == key }?.value }
    }

    /// Larger files are refused: a configuration is kilobytes, and reading one must not cost the
    /// daemon (or `--check`) unbounded memory.
    public static let maximumSize = 1 << 20

    public var path: String
    public var tables: [Table]

    public init(path: String, text: String) throws(ConfigError) {
        try self.init(path: path, bytes: Array(text.utf8))
    }

    public init(path: String, bytes: [UInt8]) throws(ConfigError) {
        self.path = path
        guard bytes.count <= Self.maximumSize else {
            throw ConfigError(
                path: path, line: 0, message: "the file is \(bytes.count) octets, more than \(Self.maximumSize)",
                fix: "a configuration is a few kilobytes: check that this is the right file")
        }
        var parser = Parser(path: path, bytes: bytes)
        tables = try parser.document()
    }

    /// The document as JSON with sorted keys, `[[name]]` tables as an array of objects: what a
    /// TOML parser reads from the file (`midcomd --check --print-config`).
    public var json: String {
        var sections: [(String, String)] = []
        var arrays: [String: [String]] = [:]
        var order: [String] = []
        for table in tables where !(table.name.isEmpty && table.values.isEmpty) {
            let object = Self.jsonObject(table.values.map { ($0.key, Self.json($0.value)) })
            if table.isArrayElement {
                if arrays[table.name] == nil { order.append(table.name) }
                arrays[table.name, default: []].append(object)
            } else if table.name.isEmpty {
                sections += table.values.map { ($0.key, Self.json($0.value)) }
            } else {
                sections.append((table.name, object))
            }
        }
        for name in order { sections.append((name, "[" + arrays[name]!.joined(separator: ", ") + "]")) }
        return Self.jsonObject(sections)
    }

    static func jsonObject(_ members: [(String, String)]) -> String {
        "{" + members.sorted { $0.0 < $1.0 }.map { "\(jsonString($0.0)): \($0.1)" }.joined(separator: ", ") + "}"
    }

    static func json(_ value: Value) -> String {
        switch value.kind {
        case .string(let s): jsonString(s)
        case .integer(let n): String(n)
        case .boolean(let b): b ? "true" : "false"
        case .array(let items): "[" + items.map(json).joined(separator: ", ") + "]"
        }
    }

    static func jsonString(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7f {
                    let digits = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - digits.count) + digits
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}

/// The TOML reader: one pass over the octets, line by line.
private struct Parser {
    let path: String
    let bytes: [UInt8]
    var position = 0
    var line = 1

    init(path: String, bytes: [UInt8]) {
        self.path = path
        // Editors on Windows start files with a byte-order mark; TOML parsers differ on it, and it
        // means nothing: it is skipped.
        self.bytes = bytes.starts(with: [0xEF, 0xBB, 0xBF]) ? Array(bytes.dropFirst(3)) : bytes
    }

    func fail(_ message: String, fix: String) -> ConfigError {
        ConfigError(path: path, line: line, message: message, fix: fix)
    }

    func unsupported(_ what: String, fix: String) -> ConfigError {
        fail("\(what) is valid TOML but not used in midcomd.conf", fix: fix)
    }

    var current: UInt8? { position < bytes.count ? bytes[position] : nil }
    func peek(_ offset: Int) -> UInt8? { position + offset < bytes.count ? bytes[position + offset] : nil }

    mutating func document() throws(ConfigError) -> [ConfigFile.Table] {
        try validateUTF8()
        var tables = [ConfigFile.Table(name: "", line: 0, isArrayElement: false, values: [])]
        var declared: [String: (line: Int, isArray: Bool)] = [:]
        while position < bytes.count {
            skipSpaces()
            guard let byte = current else { break }
            switch byte {
            case UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: "#"):
                try endOfLine()
            case UInt8(ascii: "["):
                let headerLine = line
                let isArray = peek(1) == UInt8(ascii: "[")
                position += isArray ? 2 : 1
                skipSpaces()
                let name = try key(what: "table name")
                skipSpaces()
                guard current == UInt8(ascii: "]"), !isArray || peek(1) == UInt8(ascii: "]") else {
                    if current == UInt8(ascii: ".") {
                        throw unsupported("a dotted table name", fix: "use one of the sections of docs/examples/midcomd.conf")
                    }
                    throw fail("malformed table header", fix: isArray ? "write it as [[\(name)]]" : "write it as [\(name)]")
                }
                position += isArray ? 2 : 1
                if let earlier = declared[name], !(earlier.isArray && isArray) {
                    throw fail(
                        earlier.isArray == isArray
                            ? "[\(name)] is declared twice (first on line \(earlier.line))"
                            : "\(isArray ? "[[\(name)]]" : "[\(name)]") conflicts with \(earlier.isArray ? "[[\(name)]]" : "[\(name)]") on line \(earlier.line)",
                        fix: "merge the two into one section")
                }
                declared[name] = declared[name] ?? (headerLine, isArray)
                tables.append(ConfigFile.Table(name: name, line: headerLine, isArrayElement: isArray, values: []))
                try endOfLine()
            default:
                let keyLine = line
                let name = try key(what: "key")
                skipSpaces()
                if current == UInt8(ascii: ".") {
                    throw unsupported("a dotted key", fix: "put '\(name)' under its [section] and write the last part alone")
                }
                guard current == UInt8(ascii: "=") else {
                    throw fail("expected '=' after '\(name)'", fix: "write \(name) = <value>")
                }
                position += 1
                skipSpaces()
                let value = try self.value(for: name)
                if let earlier = tables[tables.count - 1].value(name) {
                    let section = tables[tables.count - 1].name
                    throw fail(
                        "'\(name)' is set twice\(section.isEmpty ? "" : " in [\(section)]") (first on line \(earlier.line))",
                        fix: "keep one of the two lines")
                }
                tables[tables.count - 1].values.append((name, ConfigFile.Value(kind: value, line: keyLine)))
                try endOfLine()
            }
        }
        return tables
    }

    /// The whole file must be UTF-8 (TOML's rule); the error names the line of the first octet
    /// that is not.
    mutating func validateUTF8() throws(ConfigError) {
        var index = 0
        var lineNumber = 1
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\n") { lineNumber += 1 }
            let length: Int
            switch byte {
            case 0x00...0x7F: length = 1
            case 0xC2...0xDF: length = 2
            case 0xE0...0xEF: length = 3
            case 0xF0...0xF4: length = 4
            default: length = 0
            }
            guard length > 0, index + length <= bytes.count,
                bytes[(index + 1)..<(index + length)].allSatisfy({ $0 & 0xC0 == 0x80 }),
                String(validating: bytes[index..<(index + length)], as: UTF8.self) != nil
            else {
                throw ConfigError(path: path, line: lineNumber, message: "the file is not UTF-8 text", fix: "save it as UTF-8")
            }
            index += length
        }
    }

    mutating func skipSpaces() {
        while let byte = current, byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") { position += 1 }
    }

    /// After a statement: spaces, an optional comment, then the end of the line or file.
    mutating func endOfLine() throws(ConfigError) {
        skipSpaces()
        if current == UInt8(ascii: "#") {
            position += 1
            while let byte = current, byte != UInt8(ascii: "\n") {
                if byte == UInt8(ascii: "\r"), peek(1) == UInt8(ascii: "\n") { break }
                guard !Self.isControl(byte) else {
                    throw fail("a comment holds a control character (0x\(String(byte, radix: 16)))", fix: "remove it; TOML forbids it")
                }
                position += 1
            }
        }
        try newline(after: "the value")
    }

    mutating func newline(after what: String) throws(ConfigError) {
        guard let byte = current else { return }
        if byte == UInt8(ascii: "\n") {
            position += 1
            line += 1
        } else if byte == UInt8(ascii: "\r"), peek(1) == UInt8(ascii: "\n") {
            position += 2
            line += 1
        } else {
            throw fail("unexpected '\(Self.describe(byte))' after \(what)", fix: "one setting per line; start a comment with #")
        }
    }

    static func isControl(_ byte: UInt8) -> Bool { (byte < 0x20 && byte != UInt8(ascii: "\t")) || byte == 0x7F }

    static func describe(_ byte: UInt8) -> String {
        byte >= 0x20 && byte < 0x7F ? String(UnicodeScalar(byte)) : "\\x" + String(byte, radix: 16)
    }

    static func isBareKey(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "-"), UInt8(ascii: "_"):
            true
        default: false
        }
    }

    mutating func key(what: String) throws(ConfigError) -> String {
        if current == UInt8(ascii: "\"") || current == UInt8(ascii: "'") {
            throw unsupported("a quoted \(what)", fix: "write the \(what) without quotes (letters, digits, '-' and '_')")
        }
        let start = position
        while let byte = current, Self.isBareKey(byte) { position += 1 }
        guard position > start else {
            let found = current.map { "'\(Self.describe($0))'" } ?? "the end of the file"
            throw fail("expected a \(what), found \(found)", fix: "\(what)s are letters, digits, '-' and '_'")
        }
        return String(decoding: bytes[start..<position], as: UTF8.self)
    }

    mutating func value(for key: String) throws(ConfigError) -> ConfigFile.Kind {
        guard let byte = current, byte != UInt8(ascii: "\n"), byte != UInt8(ascii: "\r"), byte != UInt8(ascii: "#") else {
            throw fail("'\(key)' has no value", fix: "write \(key) = <value>")
        }
        switch byte {
        case UInt8(ascii: "\""):
            if peek(1) == UInt8(ascii: "\""), peek(2) == UInt8(ascii: "\"") {
                throw unsupported("a multi-line string", fix: "write the string on one line")
            }
            return .string(try basicString())
        case UInt8(ascii: "'"):
            if peek(1) == UInt8(ascii: "'"), peek(2) == UInt8(ascii: "'") {
                throw unsupported("a multi-line string", fix: "write the string on one line")
            }
            return .string(try literalString())
        case UInt8(ascii: "["):
            return .array(try array(for: key))
        case UInt8(ascii: "{"):
            throw unsupported("an inline table", fix: "use a [section] or [[rule]] table")
        case UInt8(ascii: "t"), UInt8(ascii: "f"):
            if matches("true") {
                position += 4
                return .boolean(true)
            }
            if matches("false") {
                position += 5
                return .boolean(false)
            }
            return try bareWord(for: key)
        case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return .integer(try integer(for: key))
        default:
            return try bareWord(for: key)
        }
    }

    func matches(_ word: String) -> Bool {
        let w = Array(word.utf8)
        guard position + w.count <= bytes.count, Array(bytes[position..<(position + w.count)]) == w else { return false }
        return position + w.count == bytes.count || !Self.isBareKey(bytes[position + w.count])
    }

    /// A word without quotes: TOML has no such value (the old midcomd.conf format had them).
    mutating func bareWord(for key: String) throws(ConfigError) -> ConfigFile.Kind {
        let start = position
        while let byte = current, Self.isBareKey(byte) || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "/") || byte == UInt8(ascii: ":") {
            position += 1
        }
        let word = String(decoding: bytes[start..<max(position, min(start + 1, bytes.count))], as: UTF8.self)
        if ["inf", "nan"].contains(word) { throw unsupported("a floating-point number", fix: "midcomd.conf uses whole numbers") }
        throw fail("'\(word)' is not a TOML value: strings are quoted", fix: "write \(key) = \"\(word)\"")
    }

    mutating func basicString() throws(ConfigError) -> String {
        position += 1
        var scalars = String.UnicodeScalarView()
        var run = position
        func flush(_ parser: Parser, _ scalars: inout String.UnicodeScalarView, upTo end: Int) {
            scalars.append(contentsOf: String(decoding: parser.bytes[run..<end], as: UTF8.self).unicodeScalars)
        }
        while true {
            guard let byte = current, byte != UInt8(ascii: "\n"), byte != UInt8(ascii: "\r") else {
                throw fail("unterminated string", fix: "close the string with \" on the same line")
            }
            if byte == UInt8(ascii: "\"") {
                flush(self, &scalars, upTo: position)
                position += 1
                return String(scalars)
            }
            guard !Self.isControl(byte) else {
                throw fail("a string holds a control character (0x\(String(byte, radix: 16)))", fix: "write it as an escape, e.g. \\t")
            }
            if byte == UInt8(ascii: "\\") {
                flush(self, &scalars, upTo: position)
                position += 1
                guard let escape = current else { throw fail("unterminated string", fix: "close the string with \"") }
                position += 1
                switch escape {
                case UInt8(ascii: "b"): scalars.append("\u{8}")
                case UInt8(ascii: "t"): scalars.append("\t")
                case UInt8(ascii: "n"): scalars.append("\n")
                case UInt8(ascii: "f"): scalars.append("\u{c}")
                case UInt8(ascii: "r"): scalars.append("\r")
                case UInt8(ascii: "\""): scalars.append("\"")
                case UInt8(ascii: "\\"): scalars.append("\\")
                case UInt8(ascii: "u"), UInt8(ascii: "U"):
                    let count = escape == UInt8(ascii: "u") ? 4 : 8
                    guard position + count <= bytes.count,
                        let value = UInt32(String(decoding: bytes[position..<(position + count)], as: UTF8.self), radix: 16),
                        bytes[position..<(position + count)].allSatisfy({ Self.isHexDigit($0) }),
                        let scalar = UnicodeScalar(value)
                    else { throw fail("invalid Unicode escape", fix: "write \\uXXXX or \\UXXXXXXXX with a valid code point") }
                    scalars.append(scalar)
                    position += count
                default:
                    throw fail("invalid escape '\\\(Self.describe(escape))' in a string", fix: "use \\\\ for a backslash, or a 'literal string'")
                }
                run = position
                continue
            }
            position += 1
        }
    }

    static func isHexDigit(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
            || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(byte)
    }

    mutating func literalString() throws(ConfigError) -> String {
        position += 1
        let start = position
        while true {
            guard let byte = current, byte != UInt8(ascii: "\n"), byte != UInt8(ascii: "\r") else {
                throw fail("unterminated string", fix: "close the string with ' on the same line")
            }
            if byte == UInt8(ascii: "'") {
                let text = String(decoding: bytes[start..<position], as: UTF8.self)
                position += 1
                return text
            }
            guard !Self.isControl(byte) else {
                throw fail("a string holds a control character (0x\(String(byte, radix: 16)))", fix: "remove it")
            }
            position += 1
        }
    }

    mutating func integer(for key: String) throws(ConfigError) -> Int64 {
        let start = position
        while let byte = current, Self.isBareKey(byte) || byte == UInt8(ascii: "+") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: ":")
            || byte == UInt8(ascii: "/")
        {
            position += 1
        }
        let word = String(decoding: bytes[start..<position], as: UTF8.self)
        // An address, a prefix or a range written without quotes: a string that lost them.
        if word.contains("/") || word.filter({ $0 == "." }).count >= 2 || (word.contains(":") && word.filter({ $0 == ":" }).count != 2)
            || (word.dropFirst().contains("-") && !word.contains(":") && word.count < 10)
        {
            throw fail("'\(word)' is not a TOML value: strings are quoted", fix: "write \(key) = \"\(word)\"")
        }
        let badNumber = fail("'\(word)' is not a whole number TOML accepts", fix: "write e.g. \(key) = 42 (no leading zeros; _ only between digits)")
        if word.contains(".") || word.contains(":") || (word.dropFirst(2).contains("e") && !word.hasPrefix("0x")) || word.hasSuffix("inf") || word.hasSuffix("nan") {
            throw unsupported("a floating-point number or a date", fix: "midcomd.conf uses whole numbers and strings")
        }
        if word.count >= 10, word.dropFirst(4).first == "-", word.prefix(4).allSatisfy(\.isNumber) {
            throw unsupported("a date", fix: "midcomd.conf uses whole numbers and strings")
        }
        var digits = Substring(word)
        var negative = false
        if digits.first == "+" || digits.first == "-" {
            negative = digits.first == "-"
            digits = digits.dropFirst()
        }
        var radix = 10
        if digits.count > 2, digits.first == "0", let marker = digits.dropFirst().first, "xob".contains(marker) {
            guard word.first != "+", word.first != "-" else { throw badNumber }
            radix = marker == "x" ? 16 : marker == "o" ? 8 : 2
            digits = digits.dropFirst(2)
        } else if digits.count > 1, digits.first == "0" {
            throw badNumber  // leading zeros
        }
        // Underscores only between two digits.
        guard !digits.isEmpty, digits.first != "_", digits.last != "_", !digits.contains("__") else { throw badNumber }
        guard let magnitude = UInt64(digits.filter { $0 != "_" }, radix: radix) else { throw badNumber }
        if negative {
            guard magnitude <= UInt64(Int64.max) + 1 else { throw badNumber }
            return magnitude == UInt64(Int64.max) + 1 ? Int64.min : -Int64(magnitude)
        }
        guard magnitude <= UInt64(Int64.max) else { throw badNumber }
        return Int64(magnitude)
    }

    /// `[ value, value, ]`, over several lines if need be, with comments between the values.
    mutating func array(for key: String) throws(ConfigError) -> [ConfigFile.Value] {
        position += 1
        var items: [ConfigFile.Value] = []
        while true {
            try skipArraySpace()
            guard let byte = current else { throw fail("unterminated array", fix: "close it with ]") }
            if byte == UInt8(ascii: "]") {
                position += 1
                return items
            }
            let itemLine = line
            items.append(ConfigFile.Value(kind: try value(for: key), line: itemLine))
            try skipArraySpace()
            if current == UInt8(ascii: ",") {
                position += 1
                continue
            }
            guard current == UInt8(ascii: "]") else { throw fail("expected ',' or ']' in the array of '\(key)'", fix: "separate values with commas") }
        }
    }

    mutating func skipArraySpace() throws(ConfigError) {
        while true {
            skipSpaces()
            guard let byte = current else { return }
            if byte == UInt8(ascii: "#") || byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r") {
                try endOfLine()
                continue
            }
            return
        }
    }
}

/// A configuration error that names the file, the line and how to fix it.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public var path: String
    public var line: Int
    public var message: String
    public var fix: String

    public init(path: String, line: Int, message: String, fix: String) {
        self.path = path
        self.line = line
        self.message = message
        self.fix = fix
    }

    public var description: String {
        line > 0 ? "\(path):\(line): \(message) (fix: \(fix))" : "\(path): \(message) (fix: \(fix))"
    }
}

extension StringProtocol {
    var trimmingSpaces: String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
            let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })
        else { return "" }
        return String(String.UnicodeScalarView(scalars[first...last]))
    }
}
