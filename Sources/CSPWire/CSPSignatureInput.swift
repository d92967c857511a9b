// Which octets a SIGNATURE covers (docs/PROTOCOL.md, "Signatures"). Verification and trust policy
// live elsewhere; this file fixes only the bytes, so signer and verifier cannot disagree.

/// The octet strings that SIGNATURE TLVs sign.
///
/// End to end (top-level SIGNATURE, header flag `signed`):
///
///     "CSP1 e2e" 0x00 || message[0 ..< s] with octets 6–7 (length) set to 0
///
/// where `s` is the offset of the SIGNATURE TLV. Middleboxes may append MIDDLEBOX-RECORDs after it
/// (and must rewrite the length), which is why the length is not covered; nothing else may follow.
///
/// A middlebox's record (SIGNATURE as the last TLV nested in its MIDDLEBOX-RECORD):
///
///     "CSP1 mbx" 0x00 || message[0 ..< 28] with octets 6–7 set to 0
///                     || record[0 ..< s'] with the record's own length (octets 2–3) set to 0
///
/// where `record` starts at the record TLV's type octet and `s'` is the nested SIGNATURE's offset
/// within it. The header binds the record to the session, nonce and message type it answers.
public enum CSPSignatureInput {
    public static let endToEndContext: [UInt8] = Array("CSP1 e2e".utf8) + [0]
    public static let recordContext: [UInt8] = Array("CSP1 mbx".utf8) + [0]

    /// Who made a signature found in a received message.
    public enum Signer: Hashable, Sendable {
        case endToEnd
        /// The record at `index` among the message's records (path order).
        case middlebox(index: Int, middleboxID: UInt64)
    }

    public struct Signed: Hashable, Sendable {
        public var signer: Signer
        public var input: [UInt8]
        public var signature: CSPKeyMaterial
    }

    /// Signer side, end to end: the input for `message`, which must not yet contain a top-level
    /// SIGNATURE. Sign it, then append `.signature(...)` last and set `.signed`
    /// (`CSPMessage.attachingEndToEndSignature` does both).
    public static func endToEnd(signing message: CSPMessage) throws(CSPWireError) -> [UInt8] {
        var unsigned = message
        unsigned.flags.insert(.signed)
        var bytes = try unsigned.serialize()
        bytes[6] = 0
        bytes[7] = 0
        return endToEndContext + bytes
    }

    /// Signer side, middlebox: the input for `record` (without its SIGNATURE) appended to the message
    /// whose first 28 octets are `header`.
    public static func record(signing record: CSPMiddleboxRecord, header: some Collection<UInt8>)
        throws(CSPWireError) -> [UInt8]
    {
        var out = recordContext + Array(header.prefix(CSPMessage.headerLength))
        guard out.count == recordContext.count + CSPMessage.headerLength else { throw CSPWireError(.truncated, at: 0) }
        out[recordContext.count + 6] = 0
        out[recordContext.count + 7] = 0
        let recordStart = out.count
        try CSPTLV.middleboxRecord(record).emit(into: &out, depth: 0)
        out[recordStart + 2] = 0
        out[recordStart + 3] = 0
        return out
    }

    /// Verifier side: every signature in a received message with the exact input it claims to sign.
    /// Throws when the message does not parse or when anything but MIDDLEBOX-RECORDs follows the
    /// end-to-end SIGNATURE (that TLV would be unsigned).
    public static func collect(from bytes: UnsafeRawBufferPointer) throws(CSPWireError) -> [Signed] {
        let message = try CSPMessage.parse(bytes)
        var header = Array(bytes[0..<CSPMessage.headerLength])
        header[6] = 0
        header[7] = 0
        var found: [Signed] = []
        var offset = CSPMessage.headerLength
        var recordIndex = 0
        var endToEndAt: Int?
        for tlv in message.tlvs {
            // parse() succeeded, so every length below is in bounds.
            let length = Int(bytes.loadBigEndianUInt16(at: offset + 2))
            switch tlv {
            case .signature(let key):
                guard endToEndAt == nil else { throw CSPWireError(.badTLVValue(type: CSPTLVType.signature.rawValue), at: offset) }
                endToEndAt = offset
                var input = endToEndContext + Array(bytes[0..<offset])
                input[endToEndContext.count + 6] = 0
                input[endToEndContext.count + 7] = 0
                found.append(Signed(signer: .endToEnd, input: input, signature: key))
            case .middleboxRecord(let record):
                if case .signature(let key)? = record.tlvs.last {
                    let signatureLength = 4 + 1 + key.bytes.count
                    var part = Array(bytes[offset..<offset + 4 + length - signatureLength])
                    part[2] = 0
                    part[3] = 0
                    found.append(
                        Signed(
                            signer: .middlebox(index: recordIndex, middleboxID: record.middleboxID),
                            input: recordContext + header + part, signature: key))
                }
                recordIndex += 1
            default:
                if let at = endToEndAt { throw CSPWireError(.badTLVValue(type: CSPTLVType.signature.rawValue), at: at) }
            }
            offset += 4 + length
        }
        return found
    }
}

extension CSPMessage {
    /// This message with `signature` appended as its last TLV and the `signed` flag set.
    public func attachingEndToEndSignature(_ signature: CSPKeyMaterial) -> CSPMessage {
        var signed = self
        signed.flags.insert(.signed)
        signed.tlvs.append(.signature(signature))
        return signed
    }
}
