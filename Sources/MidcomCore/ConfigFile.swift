/// A parsed configuration file in the small TOML subset midcomd uses:
/// `[section]`, `[[rule]]` (repeated tables), and `key = value` where value is a quoted string,
/// an integer, `true`/`false`, or a bare word. Comments start with `#`.
///
/// Every value remembers its line so that errors can name the file, the line and the fix.
public struct ConfigFile: Sendable {
    public struct Value: Sendable, Equatable {
        public var text: String
        public var line: Int
        public var wasQuoted: Bool
    }

    public struct Table: Sendable {
        public var name: String
        public var line: Int
        public var values: [(key: String, value: Value)]

        public func value(_ key: String) -> Value? { values.last { $0.key == key }?.value }
    }

    public var path: String
    public var tables: [Table]

    public init(path: String, text: String) throws(ConfigError) {
        self.path = path
        var tables = [Table(name: "", line: 0, values: [])]
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = index + 1
            let content = Self.stripComment(rawLine).trimmingSpaces
            if content.isEmpty { continue }
            if content.hasPrefix("[[") {
                guard content.hasSuffix("]]"), content.count > 4 else {
                    throw ConfigError(path: path, line: line, message: "malformed table header '\(content)'", fix: "write it as [[rule]]")
                }
                tables.append(Table(name: String(content.dropFirst(2).dropLast(2)).trimmingSpaces, line: line, values: []))
            } else if content.hasPrefix("[") {
                guard content.hasSuffix("]"), content.count > 2 else {
                    throw ConfigError(path: path, line: line, message: "malformed section header '\(content)'", fix: "write it as [daemon] or [policy]")
                }
                tables.append(Table(name: String(content.dropFirst().dropLast()).trimmingSpaces, line: line, values: []))
            } else {
                guard let equals = content.firstIndex(of: "=") else {
                    throw ConfigError(path: path, line: line, message: "expected 'key = value', found '\(content)'", fix: "add '= value' or remove the line")
                }
                let key = String(content[..<equals]).trimmingSpaces
                var valueText = String(content[content.index(after: equals)...]).trimmingSpaces
                guard !key.isEmpty, key.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
                    throw ConfigError(path: path, line: line, message: "invalid key '\(key)'", fix: "keys are letters, digits, '-' and '_'")
                }
                var quoted = false
                if valueText.hasPrefix("\"") {
                    guard valueText.count >= 2, valueText.hasSuffix("\"") else {
                        throw ConfigError(path: path, line: line, message: "unterminated string for '\(key)'", fix: "close the string with \"")
                    }
                    valueText = String(valueText.dropFirst().dropLast())
                    quoted = true
                } else if valueText.isEmpty {
                    throw ConfigError(path: path, line: line, message: "'\(key)' has no value", fix: "write \(key) = <value>")
                }
                tables[tables.count - 1].values.append((key, Value(text: valueText, line: line, wasQuoted: quoted)))
            }
        }
        self.tables = tables
    }

    /// Drops a `#` comment that is not inside a quoted string.
    static func stripComment(_ line: Substring) -> Substring {
        var inString = false
        for index in line.indices {
            switch line[index] {
            case "\"": inString.toggle()
            case "#" where !inString: return line[..<index]
            default: break
            }
        }
        return line
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
