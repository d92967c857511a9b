import CSPWire

/// What the signatures in a received message prove (docs/PROTOCOL.md 7). Computed from the
/// datagram's bytes, outside any lock; what to *trust* is the caller's policy.
public struct SignatureCheck: Sendable, Equatable {
    public enum Status: Sendable, Equatable {
        /// Not signed end to end (no SIGNATURE, `signed` flag clear).
        case absent
        /// Signed by this key, which the message names in IDENTITY.
        case valid(PublicKey)
        /// Signed, without IDENTITY: valid only if `deferred` verifies with the session's key.
        case needsSessionKey
        /// A signature that proves nothing: wrong, of an unsupported key type, flag without
        /// signature, or a non-record TLV after it.
        case invalid(String)
    }

    /// A signature to verify once the signer's key is known (a later message of a session).
    public struct Deferred: Sendable, Equatable {
        public var input: [UInt8]
        public var signature: [UInt8]
        public func verify(with key: PublicKey) -> Bool { key.isValidSignature(signature, for: input) }
    }

    /// One middlebox record's signature.
    public struct Record: Sendable, Equatable {
        public enum Status: Sendable, Equatable {
            case unsigned
            case valid(PublicKey)
            case invalid(String)
        }
        public var index: Int
        public var middleboxID: UInt64
        public var status: Status
    }

    public var status: Status
    public var deferred: Deferred?
    public var records: [Record] = []

    public init(status: Status, deferred: Deferred? = nil, records: [Record] = []) {
        self.status = status
        self.deferred = deferred
        self.records = records
    }

    /// Nothing signed.
    public static let unsigned = SignatureCheck(status: .absent)

    /// Checks the end-to-end signature of `message` (parsed from `bytes`), and with
    /// `checkRecords` every record's nested signature against the record's nested IDENTITY.
    public static func check(_ bytes: UnsafeRawBufferPointer, message: CSPMessage, checkRecords: Bool = false)
        -> SignatureCheck
    {
        let hasSignature = message.tlvs.contains { if case .signature = $0 { true } else { false } }
        let flagged = message.flags.contains(.signed)
        if !hasSignature, !flagged, !checkRecords { return SignatureCheck(status: .absent) }
        guard hasSignature == flagged else {
            return SignatureCheck(status: .invalid(flagged ? "signed flag without a SIGNATURE" : "SIGNATURE without the signed flag"))
        }
        let signed: [CSPSignatureInput.Signed]
        do { signed = try CSPSignatureInput.collect(from: bytes) } catch {
            return SignatureCheck(status: .invalid("a TLV other than a record follows the SIGNATURE"))
        }
        var result = SignatureCheck(status: .absent)
        for item in signed {
            switch item.signer {
            case .endToEnd:
                guard item.signature.keyType == CSPKeyMaterial.ed25519 else {
                    result.status = .invalid("unsupported key type \(item.signature.keyType)")
                    continue
                }
                guard let identity = message.identity else {
                    result.status = .needsSessionKey
                    result.deferred = Deferred(input: item.input, signature: item.signature.bytes)
                    continue
                }
                guard let key = PublicKey(identity) else {
                    result.status = .invalid("IDENTITY of unsupported key type \(identity.keyType)")
                    continue
                }
                result.status =
                    key.isValidSignature(item.signature.bytes, for: item.input)
                    ? .valid(key) : .invalid("signature does not verify with \(key)")
            case .middlebox(let index, let id):
                guard checkRecords else { continue }
                let record = message.records[index]
                let status: Record.Status
                if let identity = record.identity, let key = PublicKey(identity) {
                    status =
                        key.isValidSignature(item.signature.bytes, for: item.input)
                        ? .valid(key) : .invalid("record signature does not verify with \(key)")
                } else {
                    status = .invalid("signed record without an Ed25519 IDENTITY")
                }
                result.records.append(Record(index: index, middleboxID: id, status: status))
            }
        }
        if checkRecords {
            let signedIndexes = Set(result.records.map(\.index))
            for (index, record) in message.records.enumerated() where !signedIndexes.contains(index) {
                result.records.append(Record(index: index, middleboxID: record.middleboxID, status: .unsigned))
            }
            result.records.sort { $0.index < $1.index }
        }
        return result
    }

    /// Convenience for callers holding the bytes as an array.
    public static func check(_ bytes: [UInt8], message: CSPMessage, checkRecords: Bool = false) -> SignatureCheck {
        bytes.withUnsafeBytes { check($0, message: message, checkRecords: checkRecords) }
    }
}
