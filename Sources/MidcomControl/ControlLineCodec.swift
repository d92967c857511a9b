import Foundation

/// Turns protocol values into newline-terminated JSON lines and back (see ControlProtocol.swift).
/// Pure: no I/O, so framing and error texts are testable without a socket.
enum ControlLineCodec {
    static let newline = UInt8(ascii: "\n")

    /// `value` as one JSON line, newline included. Keys are sorted so that lines are stable for tests and logs.
    static func encodeLine(_ value: some Encodable) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var bytes = [UInt8](try encoder.encode(value))
        bytes.append(newline)
        return bytes
    }

    /// Decodes one line (newline already removed; a trailing "\r" is tolerated for `socat -` users).
    /// Throws the reason as one sentence.
    static func decode<T: Decodable>(_ type: T.Type, line: some Collection<UInt8>, what: String) throws(DecodeFailure) -> T {
        var bytes = Array(line)
        if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }
        do {
            return try JSONDecoder().decode(type, from: Data(bytes))
        } catch let error as DecodingError {
            throw DecodeFailure(message: "malformed \(what): \(describe(error))")
        } catch {
            throw DecodeFailure(message: "malformed \(what): \(error)")
        }
    }

    struct DecodeFailure: Error, Equatable {
        var message: String
    }

    /// DecodingError's own descriptions are multi-line dumps; operators need the field and the problem.
    static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            let keys = context.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }
            return keys.isEmpty ? "the line" : "field '\(keys.joined(separator: "."))'"
        }
        switch error {
        case .keyNotFound(let key, let context):
            let parent = context.codingPath.isEmpty ? "" : " in \(path(context))"
            return "missing field '\(key.stringValue)'\(parent)"
        case .typeMismatch(let type, let context):
            if context.codingPath.isEmpty { return "not a JSON object" }
            return "\(path(context)) is not of type \(type)"
        case .valueNotFound(let type, let context):
            return "\(path(context)) is null, expected \(type)"
        case .dataCorrupted(let context):
            if context.codingPath.isEmpty {
                return "not a JSON object"
            }
            if context.codingPath.last?.stringValue == "command" {
                let known = ControlCommand.allCases.map(\.rawValue).joined(separator: ", ")
                return "unknown command (expected one of: \(known))"
            }
            return "\(path(context)) has an invalid value"
        @unknown default:
            return "\(error)"
        }
    }
}
