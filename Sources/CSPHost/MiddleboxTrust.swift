import CSPTrust
import CSPWire
import SystemSupport

/// Which middlebox keys a host trusts (docs/PROTOCOL.md 7.3, 11): keys pinned by the user, and
/// keys remembered per middlebox ID the first time they were seen (trust on first use, like
/// SSH's known_hosts). A record is judged by its nested signature.
public struct MiddleboxTrust: Sendable {
    /// What a host concludes about one record of a reply.
    public enum Verdict: Sendable, Equatable, CustomStringConvertible {
        /// No signature: it informs, it proves nothing.
        case unsigned
        /// A signature that does not verify: altered, or forged.
        case invalid(String)
        /// Signed by a pinned key.
        case pinned(PublicKey)
        /// Signed by the key remembered for this middlebox ID.
        case known(PublicKey)
        /// Signed by a key seen for the first time for this ID (now remembered).
        case firstUse(PublicKey)
        /// Signed, but not by a pinned key (while keys are pinned), or by another key than the one
        /// remembered for this ID: a substituted middlebox, or a re-keyed one.
        case mismatch(PublicKey, expected: String)
        /// Signed by a key nobody pinned or remembered (no trust store in use).
        case untrusted(PublicKey)

        public var isFailure: Bool {
            switch self {
            case .invalid, .mismatch: true
            default: false
            }
        }

        public var description: String {
            switch self {
            case .unsigned: "unsigned"
            case .invalid(let why): "INVALID signature (\(why))"
            case .pinned(let k): "signed by \(k) (pinned)"
            case .known(let k): "signed by \(k) (known)"
            case .firstUse(let k): "signed by \(k) (new: trusted on first use and remembered)"
            case .mismatch(let k, let expected): "signed by \(k), EXPECTED \(expected): substituted or re-keyed middlebox"
            case .untrusted(let k): "signed by \(k) (not pinned)"
            }
        }

        public var word: String {
            switch self {
            case .unsigned: "unsigned"
            case .invalid: "invalid"
            case .pinned: "pinned"
            case .known: "known"
            case .firstUse: "first-use"
            case .mismatch: "mismatch"
            case .untrusted: "untrusted"
            }
        }
    }

    public var pinned: [PublicKey] = []
    /// middlebox ID → key, from the known-middleboxes file.
    public private(set) var remembered: [UInt64: PublicKey] = [:]
    public var knownFile: String?
    private var changed = false

    public init(pinned: [PublicKey] = [], knownFile: String? = nil) throws(KeyFile.Problem) {
        self.pinned = pinned
        self.knownFile = knownFile
        guard let knownFile, SmallFile.exists(knownFile) else { return }
        let contents: SmallFile.Contents
        do { contents = try SmallFile.read(knownFile) } catch { throw KeyFile.Problem("cannot read \(knownFile): \(error)") }
        for (number, line) in String(decoding: contents.bytes, as: UTF8.self).split(separator: "\n").enumerated() {
            let trimmed = line.drop(while: { $0 == " " })
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            let parts = trimmed.split(separator: " ", maxSplits: 1)
            guard parts.count == 2, let id = UInt64(parts[0], radix: 16), let key = PublicKey(text: parts[1]) else {
                throw KeyFile.Problem("\(knownFile):\(number + 1): expected '<16 hex digits> csp-ed25519 <key>'")
            }
            remembered[id] = key
        }
    }

    /// Judges every record of a received reply (`bytes` parsed as `message`).
    public mutating func judge(_ bytes: [UInt8], message: CSPMessage) -> [(record: CSPMiddleboxRecord, verdict: Verdict)] {
        let check = SignatureCheck.check(bytes, message: message, checkRecords: true)
        return check.records.map { item in
            let record = message.records[item.index]
            return (record, verdict(for: item, record: record))
        }
    }

    private mutating func verdict(for item: SignatureCheck.Record, record: CSPMiddleboxRecord) -> Verdict {
        switch item.status {
        case .unsigned: return .unsigned
        case .invalid(let why): return .invalid(why)
        case .valid(let key):
            if !pinned.isEmpty {
                return pinned.contains(key) ? .pinned(key) : .mismatch(key, expected: "a pinned key")
            }
            guard knownFile != nil else { return .untrusted(key) }
            if let known = remembered[record.middleboxID] {
                return known == key ? .known(key) : .mismatch(key, expected: "\(known) remembered for \(hex(record.middleboxID))")
            }
            remembered[record.middleboxID] = key
            changed = true
            return .firstUse(key)
        }
    }

    /// Writes newly remembered keys back to the known-middleboxes file.
    public func save() throws(KeyFile.Problem) {
        guard changed, let knownFile else { return }
        var text = "# middlebox ID, its key: remembered by csp on first use (docs/PROTOCOL.md 7.3)\n"
        for (id, key) in remembered.sorted(by: { $0.key < $1.key }) { text += "\(hex(id)) \(key.text)\n" }
        do { try SmallFile.write(knownFile, Array(text.utf8), mode: 0o600) } catch {
            throw KeyFile.Problem("cannot write \(knownFile): \(error)")
        }
    }
}
