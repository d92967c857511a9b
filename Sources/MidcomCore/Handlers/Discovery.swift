import CSPWire

/// Discovery (docs/PROTOCOL.md 9.3): the answer to a discovery option with the query flag.
extension GatewayEngine {
    /// ANNOUNCE for a packet of `triggerLength` IP octets that carried the discovery option with
    /// the query flag (docs/PROTOCOL.md 9.3), or nil when it must not be sent: at most one per
    /// source per second and `announcesPerSecond` in all, within the reply budget it shares with
    /// CHALLENGE and REJECT, and never more than 3× the size of the trigger (the name is left out
    /// first, then the signature), so probes cannot turn the gateway into an amplifier.
    public mutating func announce(to destination: CSPEndpoint, nonce: UInt64, triggerLength: Int, now: Instant)
        -> OutgoingMessage?
    {
        let second = now.nanoseconds / 1_000_000_000
        if announceWindow.second != second {
            announceWindow = (second, 0)
            announcedSources.removeAll(keepingCapacity: true)
        }
        guard announceWindow.count < Self.announcesPerSecond, !announcedSources.contains(destination.address) else {
            counters.announceLimited += 1
            return nil
        }
        let record = CSPMiddleboxRecord(middleboxID: identity.id, epoch: identity.epoch, decision: .forwarded, grantedLifetime: 0)
        var message = CSPMessage(
            type: .announce, flags: .fromMiddlebox, result: .success, sessionID: 0, nonce: nonce,
            tlvs: [.epoch(identity.epoch), .middleboxName(identity.name), .middleboxRecord(record)])
        let headers = destination.address.family == .ipv4 ? 28 : 48  // IP + UDP octets of our answer
        // Signed when it fits (IDENTITY and SIGNATURE in the record); the name goes first, then
        // the signature: an unsigned ANNOUNCE only informs (docs/PROTOCOL.md 5.7).
        let unsigned = message
        message = sealed(message)
        if let size = try? message.serialize().count, size + headers > 3 * triggerLength {
            message.tlvs.removeAll { $0.type == .middleboxName }
            message = sealed(message.withoutRecordSignatures)
        }
        if let size = try? message.serialize().count, size + headers > 3 * triggerLength {
            message = unsigned
        }
        if let size = try? message.serialize().count, size + headers > 3 * triggerLength {
            message.tlvs.removeAll { $0.type == .middleboxName }
        }
        guard let size = try? message.serialize().count, size + headers <= 3 * triggerLength else {
            counters.announceLimited += 1
            return nil
        }
        // The per-destination budget is shared with CHALLENGE and REJECT: together they may not
        // aim more at one address than `replies-per-source` a second.
        guard replyBudget.spend(to: destination.address, atSecond: now.wholeSeconds) else {
            counters.announceLimited += 1
            return nil
        }
        announceWindow.count += 1
        announcedSources.insert(destination.address)
        counters.announced += 1
        return OutgoingMessage(message: message, destination: destination)
    }
}

extension GatewayEngine {
    /// The unsolicited ANNOUNCE of our epoch (docs/PROTOCOL.md 5.7.1), multicast to the inside hosts
    /// at start and when `midctl announce` asks (a HA pair's new active box): session 0 and nonce 0
    /// mark it unsolicited; EPOCH, MIDDLEBOX-NAME and our record, signed when we have a key. Hosts
    /// take it only as a reason to ask at once (a REFRESH), never as a fact: the answer's records
    /// decide whether they signal again.
    public func epochAnnouncement() -> CSPMessage {
        let record = CSPMiddleboxRecord(middleboxID: identity.id, epoch: identity.epoch, decision: .forwarded, grantedLifetime: 0)
        return sealed(
            CSPMessage(
                type: .announce, flags: .fromMiddlebox, result: .success, sessionID: 0, nonce: 0,
                tlvs: [.epoch(identity.epoch), .middleboxName(identity.name), .middleboxRecord(record)]))
    }
}

extension CSPMessage {
    /// The message with the IDENTITY and SIGNATURE of every record removed (to re-sign it).
    var withoutRecordSignatures: CSPMessage {
        var copy = self
        copy.tlvs = tlvs.map { tlv in
            guard case .middleboxRecord(var record) = tlv else { return tlv }
            record.tlvs.removeAll {
                switch $0 {
                case .identity, .signature: true
                default: false
                }
            }
            return .middleboxRecord(record)
        }
        return copy
    }
}
