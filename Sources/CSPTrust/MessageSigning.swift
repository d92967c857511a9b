import CSPWire

extension CSPMessage {
    /// This message signed end to end (docs/PROTOCOL.md 7.2): IDENTITY (unless it already has
    /// one, or `includeIdentity` is false for a later message of a session) and TIMESTAMP are
    /// added, then SIGNATURE last with the `signed` flag set.
    public func signed(by key: SigningKey, timestamp: UInt64, includeIdentity: Bool = true) throws(CSPWireError)
        -> CSPMessage
    {
        var unsigned = self
        unsigned.tlvs.removeAll {
            if case .signature = $0 { return true }
            if case .timestamp = $0 { return true }
            return false
        }
        if includeIdentity, unsigned.identity == nil { unsigned.tlvs.append(.identity(key.publicKey.material)) }
        unsigned.tlvs.append(.timestamp(timestamp))
        let input = try CSPSignatureInput.endToEnd(signing: unsigned)
        return unsigned.attachingEndToEndSignature(CSPKeyMaterial(bytes: key.sign(input)))
    }

    /// The top-level IDENTITY, if any.
    public var identity: CSPKeyMaterial? {
        tlvs.lazy.compactMap { if case .identity(let k) = $0 { k } else { nil } }.first
    }

    /// The top-level TIMESTAMP, if any.
    public var timestamp: UInt64? {
        tlvs.lazy.compactMap { if case .timestamp(let t) = $0 { t } else { nil } }.first
    }

    /// The first 28 octets as they will be sent (length as 0: signatures do not cover it).
    public var headerForSigning: [UInt8] {
        var header = self
        header.tlvs = []
        return (try? header.serialize()) ?? []
    }
}

extension CSPMiddleboxRecord {
    /// This record with the middlebox's IDENTITY and SIGNATURE nested last, bound to the header of
    /// the message it travels in (docs/PROTOCOL.md 7.2).
    public func signed(by key: SigningKey, header: [UInt8]) -> CSPMiddleboxRecord {
        var record = self
        record.tlvs.removeAll {
            if case .signature = $0 { return true }
            if case .identity = $0 { return true }
            return false
        }
        record.tlvs.append(.identity(key.publicKey.material))
        guard let input = try? CSPSignatureInput.record(signing: record, header: header) else { return self }
        record.tlvs.append(.signature(CSPKeyMaterial(bytes: key.sign(input))))
        return record
    }

    /// The IDENTITY nested in the record.
    public var identity: CSPKeyMaterial? {
        tlvs.lazy.compactMap { if case .identity(let k) = $0 { k } else { nil } }.first
    }
}
