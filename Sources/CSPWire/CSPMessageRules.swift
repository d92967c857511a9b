// Per-message-type rules of docs/PROTOCOL.md section 5 that depend only on the message itself.

extension CSPMessageType {
    /// TLVs a message of this type must carry at top level (PROTOCOL.md, table in section 5).
    /// Unknown types require nothing.
    public var requiredTLVs: [CSPTLVType] {
        switch self {
        case .setup: [.flow, .lifetime]
        case .accept: [.lifetime]
        case .redirect: [.redirectTarget]
        case .mapped: [.mappedAddress, .lifetime]
        case .challenge, .response: [.challengeToken]
        case .rebind: [.flow, .newAddress]
        case .addPath, .removePath: [.path]
        case .deny: [.denySource, .lifetime]
        case .refresh: [.lifetime]
        case .announce: [.middleboxRecord]
        // And a `relayed` record nesting RELAY-ENDPOINT and RELAY-TOKEN: checked by `ruleViolation`.
        case .relay: [.lifetime]
        default: []
        }
    }
}

extension CSPMessage {
    /// The first rule of section 5 this message breaks, or nil: a required TLV is missing, a RELAY
    /// lacks its relaying record (14.2), a REJECT or CHALLENGE carries result 0, a request carries a
    /// non-zero result, or a middlebox-originated reply lacks its record. A receiver answers a
    /// violation with `malformed-message`.
    public var ruleViolation: String? {
        for required in type.requiredTLVs where !tlvs.contains(where: { $0.type == required }) {
            return "\(type) requires \(required)"
        }
        if type == .relay, relayingRecord == nil {
            return "RELAY requires a record with decision relayed nesting RELAY-ENDPOINT and RELAY-TOKEN"
        }
        if type == .reject || type == .challenge, result == .success { return "\(type) requires a non-zero result" }
        if CSPMessageType.allKnown.contains(type), !type.isReply, result != .success {
            return "a request carries result 0, not \(result)"
        }
        if flags.contains(.fromMiddlebox), type.isReply, records.isEmpty {
            return "a middlebox-originated \(type) requires the middlebox's record"
        }
        return nil
    }
}
