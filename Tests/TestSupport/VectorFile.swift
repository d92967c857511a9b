import Foundation

/// One published test vector (docs/PROTOCOL.md 13): a name, a one-line summary and the octets.
public struct TestVector {
    public var name: String
    public var summary: String
    public var bytes: () throws -> [UInt8]

    public init(name: String, summary: String, bytes: @escaping () throws -> [UInt8]) {
        self.name = name
        self.summary = summary
        self.bytes = bytes
    }
}

/// The format of `Tests/CSPWireTests/Vectors/**/<name>.hex`, shared by the test targets that
/// publish vectors (CSPWireTests for messages, CSPSessionTests for hop frames): "# name: summary",
/// "# N octets", then the octets in hex, 16 per line. PROTOCOL.md quotes the files verbatim.
public enum VectorFile {
    public static func render(_ vector: TestVector) throws -> String {
        let bytes = try vector.bytes()
        var text = "# \(vector.name): \(vector.summary)\n# \(bytes.count) octets\n"
        for start in stride(from: 0, to: bytes.count, by: 16) {
            text += bytes[start..<min(start + 16, bytes.count)].map { String(format: "%02x", $0) }.joined(separator: " ") + "\n"
        }
        return text
    }

    /// The octets of a rendered file (comment lines skipped); nil when a word is not one octet in hex.
    public static func parseHex(_ text: String) -> [UInt8]? {
        var out: [UInt8] = []
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            for word in line.split(separator: " ") {
                guard word.count == 2, let b = UInt8(word, radix: 16) else { return nil }
                out.append(b)
            }
        }
        return out
    }
}
