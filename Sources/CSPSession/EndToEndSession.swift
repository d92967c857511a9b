import CSPTrust

/// One end of a relayed session's end-to-end layer (docs/PROTOCOL.md 14.7): the Noise XX handshake
/// between the initiator H and the responder P, the records both ways, the acknowledgements that
/// empty the retransmission buffer, resumption after a hop broke, rekeying and keepalive.
///
/// Pure: it is fed the octets its hop delivered (`receive`) and the time (`tick`), and it produces
/// the octets to write to the hop (`output`) and what the application gets (`received`,
/// `messages`, `peerClosed`, `failure`). A socket driver (CSPHost's for the ends) moves the octets
/// and says what the application took (`delivered`): a record is acknowledged only then, so the
/// peer's send buffer is also this end's receive window and the hop can always be read.
/// The hops themselves never see inside: relays carry these octets unchanged.
public struct EndToEndSession: Sendable {
    public enum Role: Hashable, Sendable { case initiator, responder }

    public enum Phase: Hashable, Sendable {
        /// Noise messages still to exchange (1 and 2 travel in the hop handshake, 3 in the stream).
        case handshaking
        /// Records flow.
        case established
        /// Both directions closed and our CLOSE acknowledged: the hop may be closed (FIN).
        case closed
        /// Failed closed (integrity, limits, the peer's ABORT): never resumed.
        case failed
    }

    /// Why a session ended other than cleanly; what the application is told instead of end of file.
    public enum Failure: Error, Hashable, Sendable, CustomStringConvertible {
        /// A record did not decrypt, came out of sequence, had an unknown type or a bad body; a
        /// resume point or blob was wrong; the peer's identity was not the expected one.
        case integrity(String)
        /// The peer sent ABORT.
        case abortedByPeer(code: UInt8, text: String)
        /// This end aborted (the application or a limit).
        case aborted(code: UInt8, text: String)

        public var description: String {
            switch self {
            case .integrity(let why): "integrity failure: \(why)"
            case .abortedByPeer(let code, let text): "aborted by the peer (code \(code))\(text.isEmpty ? "" : ": \(text)")"
            case .aborted(let code, let text): "aborted (code \(code))\(text.isEmpty ? "" : ": \(text)")"
            }
        }
    }

    /// Tunables with the protocol's defaults.
    public struct Limits: Sendable {
        /// Ciphertext octets of DATA and MESSAGE records kept for resumption (`send-buffer`).
        public var sendBuffer = 4 << 20
        /// Further room for control records (ACK, CLOSE, ABORT, KEY-UPDATE, PING).
        public var controlReserve = 64 << 10
        /// Received octets the application has not taken before the driver stops reading the hop.
        /// A peer within its own send buffer never gets here (nothing is acknowledged before the
        /// application took it); one that ignores it is slowed by TCP, not by our memory.
        public var receiveBuffer = 8 << 20
        /// An ACK after this many eliciting octets or records since the last one ...
        public var ackAfterOctets = 64 << 10
        public var ackAfterRecords = 8
        /// ... or this long after the first one not yet acknowledged.
        public var ackDelay: Duration = .milliseconds(20)
        /// PING after this long without sending anything (nil: no keepalive).
        public var keepalive: Duration? = .seconds(25)
        /// KEY-UPDATE after this many records or this long, whichever first.
        public var rekeyRecords: UInt64 = 1 << 30
        public var rekeyInterval: Duration = .seconds(3600)
        public init() {}
    }

    public static let maximumDataLength = EndToEndRecord.maximumBodyLength

    public let role: Role
    public let sessionID: UInt64
    public private(set) var phase = Phase.handshaking
    public private(set) var failure: Failure?
    /// The peer's Ed25519 key, once its identity block verified against the handshake's `rs`.
    public private(set) var peerIdentity: PublicKey?
    public var limits: Limits

    private let identity: SessionIdentity
    private var handshake: HandshakeState?
    /// Nil until the handshake completes and again once the session failed (keys discarded).
    private var sendCipher: CipherState?
    private var receiveCipher: CipherState?
    private var resumeKey: [UInt8] = []

    // Sending: the next record number, the records not yet acknowledged (as sent), and their size.
    private var nextSend: UInt64 = 0
    private var unacknowledged: [(sequence: UInt64, framed: [UInt8], isData: Bool)] = []
    private var unacknowledgedHead = 0
    private var bufferedDataOctets = 0
    private var bufferedControlOctets = 0
    private var closeSent = false
    private var closeSequence: UInt64?
    private var lastSendAt: ContinuousClock.Instant
    private var recordsSinceRekey: UInt64 = 0
    private var lastRekeyAt: ContinuousClock.Instant

    // Receiving: the next record number expected, undecoded octets, and what the peer is owed.
    private var nextExpected: UInt64 = 0
    private var inbound: [UInt8] = []
    private var inboundStart = 0
    private var elicitingRecordsSinceAck = 0
    private var elicitingOctetsSinceAck = 0
    private var firstUnacknowledgedAt: ContinuousClock.Instant?
    private var acksSinceOurAck = 0
    /// The nextExpected of our last ACK: what the peer may have dropped from its buffer.
    private var acknowledgedThrough: UInt64 = 0
    /// DATA and MESSAGE records whose payload the application has not taken all of, oldest first:
    /// their sequence number and where they end in the count of octets (or messages) received.
    private var undeliveredData: [(sequence: UInt64, end: UInt64)] = []
    private var undeliveredDataHead = 0
    private var undeliveredMessages: [(sequence: UInt64, end: UInt64)] = []
    private var undeliveredMessagesHead = 0
    private var octetsReceivedTotal: UInt64 = 0
    private var octetsDeliveredTotal: UInt64 = 0
    private var messagesReceivedTotal: UInt64 = 0
    private var messagesDeliveredTotal: UInt64 = 0
    public private(set) var peerClosed = false

    // Resumption.
    private var resumeEpoch: UInt32 = 0

    /// Octets to write to the current hop, in order. The driver writes a prefix and calls
    /// `consumeOutput(_:)` with how much went out.
    public private(set) var output: [UInt8] = []
    /// Application octets received and not yet taken, in order: `received[receivedStart...]`
    /// (`pendingOctets`); the driver writes a prefix to the application and calls `delivered`.
    public private(set) var received: [UInt8] = []
    private var receivedStart = 0
    /// Whole application messages received (MESSAGE records) and not yet taken:
    /// `messages[messagesStart...]` (`pendingMessages`).
    public private(set) var messages: [[UInt8]] = []
    private var messagesStart = 0

    private let prologue: [UInt8]

    /// `target` is TARGET's value as the initiator wrote it (the responder: as it received it); it
    /// and the session ID are bound into the handshake, so a relay that changes either breaks it.
    public init(role: Role, sessionID: UInt64, target: [UInt8], identity: SessionIdentity, now: ContinuousClock.Instant, limits: Limits = Limits()) {
        self.role = role
        self.sessionID = sessionID
        self.identity = identity
        self.limits = limits
        prologue = Array("CSP1 e2e".utf8) + bigEndianBytes(sessionID) + target
        handshake = HandshakeState(role: role == .initiator ? .initiator : .responder, prologue: prologue, staticKey: identity.staticKey)
        lastSendAt = now
        lastRekeyAt = now
    }

    // MARK: Handshake

    /// Initiator: Noise message 1, for HOP-OPEN's END-TO-END kind 1.
    public mutating func firstMessage() throws(Failure) -> [UInt8] {
        guard role == .initiator, var state = handshake, state.messageIndex == 0 else { throw .integrity("message 1 out of order") }
        do {
            let message = try state.writeMessage()
            handshake = state
            return message
        } catch { throw fail(.integrity("handshake: \(error)")) }
    }

    /// Responder: reads message 1 (from HOP-OPEN) and returns message 2 for HOP-ACCEPT's END-TO-END
    /// kind 2. The initiator's identity is known only after message 3.
    public mutating func answer(firstMessage: [UInt8]) throws(Failure) -> [UInt8] {
        guard role == .responder, var state = handshake, state.messageIndex == 0 else { throw .integrity("message 1 out of order") }
        do {
            _ = try state.readMessage(firstMessage)
            let message = try state.writeMessage(payload: identity.identityBlock.bytes)
            handshake = state
            return message
        } catch { throw fail(.integrity("handshake: \(error)")) }
    }

    /// Initiator: reads message 2 (from HOP-ACCEPT), verifies the responder's identity block against
    /// the static key the handshake authenticated, queues message 3 as the stream's first item and
    /// returns the responder's Ed25519 key for the caller to judge (pinned, remembered, any).
    public mutating func finish(secondMessage: [UInt8], now: ContinuousClock.Instant) throws(Failure) -> PublicKey {
        guard role == .initiator, var state = handshake, state.messageIndex == 1 else { throw .integrity("message 2 out of order") }
        do {
            let payload = try state.readMessage(secondMessage)
            guard let responderStatic = state.remoteStatic, payload.count >= IdentityBlock.length else {
                throw fail(.integrity("the responder sent no identity block"))
            }
            let key = try IdentityBlock.verify(payload.prefix(IdentityBlock.length), for: responderStatic)
            let third = try state.writeMessage(payload: identity.identityBlock.bytes)
            let keys = try state.splitWithResumeKey()
            sendCipher = keys.initiatorToResponder
            receiveCipher = keys.responderToInitiator
            resumeKey = keys.resumeKey
            handshake = nil
            peerIdentity = key
            try EndToEndRecordFraming.appendHandshake(message: third, to: &output)
            phase = .established
            lastSendAt = now
            lastRekeyAt = now
            return key
        } catch let failure as Failure {
            throw failure
        } catch {
            throw fail(.integrity("handshake: \(error)"))
        }
    }

    // MARK: Application side

    /// Whether `write` would take octets now (the retransmission buffer has room).
    public var canWrite: Bool {
        phase == .established && !closeSent && bufferedDataOctets < limits.sendBuffer
    }

    /// Seals as much of `data` as the send buffer takes, in DATA records of up to 16 KiB; returns
    /// how many octets were taken (0: wait until acknowledgements free room).
    @discardableResult
    public mutating func write(_ data: some Collection<UInt8>, now: ContinuousClock.Instant) -> Int {
        guard phase == .established, !closeSent else { return 0 }
        var taken = 0
        var rest = data[...]
        while !rest.isEmpty, bufferedDataOctets < limits.sendBuffer {
            let chunk = rest.prefix(Self.maximumDataLength)
            send(.data(Array(chunk)), now: now)
            taken += chunk.count
            rest = rest.dropFirst(chunk.count)
        }
        return taken
    }

    /// One application message (the datagram API): delivered whole, in order; false when the
    /// send buffer is full.
    public mutating func send(message: [UInt8], now: ContinuousClock.Instant) -> Bool {
        guard phase == .established, !closeSent, message.count <= Self.maximumDataLength, bufferedDataOctets < limits.sendBuffer else { return false }
        send(.message(message), now: now)
        return true
    }

    /// No more application octets from this end (half-close).
    public mutating func close(now: ContinuousClock.Instant) {
        guard phase == .established, !closeSent else { return }
        closeSent = true
        closeSequence = nextSend
        send(.close, now: now)
        checkClosed()
    }

    /// Ends the session now: ABORT to the peer, then nothing more.
    public mutating func abort(code: UInt8, text: String, now: ContinuousClock.Instant) {
        guard phase == .established || phase == .handshaking else { return }
        if phase == .established { send(.abort(code: EndToEndAbortCode(rawValue: code), text: String(text.utf8.prefix(200)) ?? ""), now: now) }
        fail(.aborted(code: code, text: text), notifyPeer: false)
    }

    /// Received octets the application has not taken yet.
    public var pendingOctets: ArraySlice<UInt8> { received[receivedStart...] }
    /// Received messages the application has not taken yet.
    public var pendingMessages: ArraySlice<[UInt8]> { messages[messagesStart...] }
    /// Octets (messages counted by size) received and not taken: past `limits.receiveBuffer` the
    /// driver stops reading the hop.
    public private(set) var undeliveredOctets = 0
    public var receiveWindowFull: Bool { undeliveredOctets >= limits.receiveBuffer }

    /// The application took the first `octets` of `pendingOctets` and the first `messages` of
    /// `pendingMessages`: the records they came in may now be acknowledged.
    public mutating func delivered(octets: Int = 0, messages count: Int = 0, now: ContinuousClock.Instant) {
        let octets = min(octets, received.count - receivedStart)
        let count = min(count, messages.count - messagesStart)
        guard octets > 0 || count > 0 else { return }
        receivedStart += octets
        octetsDeliveredTotal += UInt64(octets)
        undeliveredOctets -= octets
        if receivedStart == received.count || receivedStart > 1 << 20 {
            received.removeFirst(receivedStart)
            receivedStart = 0
        }
        for index in messagesStart..<(messagesStart + count) { undeliveredOctets -= messages[index].count }
        messagesStart += count
        messagesDeliveredTotal += UInt64(count)
        if messagesStart == messages.count || messagesStart > 1024 {
            messages.removeFirst(messagesStart)
            messagesStart = 0
        }
        Self.dropDelivered(&undeliveredData, head: &undeliveredDataHead, through: octetsDeliveredTotal)
        Self.dropDelivered(&undeliveredMessages, head: &undeliveredMessagesHead, through: messagesDeliveredTotal)
        // What the peer waits for may be free now: acknowledge as if it had just arrived.
        guard phase == .established || phase == .closed, acknowledgeable > acknowledgedThrough else { return }
        if elicitingRecordsSinceAck >= limits.ackAfterRecords || elicitingOctetsSinceAck >= limits.ackAfterOctets || peerClosed {
            sendAck(now: now)
        } else if firstUnacknowledgedAt == nil {
            firstUnacknowledgedAt = now
        }
    }

    /// Takes every pending octet at once (a driver that writes them all, and tests).
    public mutating func takeReceived(now: ContinuousClock.Instant = .now) -> [UInt8] {
        let taken = Array(pendingOctets)
        delivered(octets: taken.count, now: now)
        return taken
    }

    /// Takes every pending message at once.
    public mutating func takeMessages(now: ContinuousClock.Instant = .now) -> [[UInt8]] {
        let taken = Array(pendingMessages)
        delivered(messages: taken.count, now: now)
        return taken
    }

    private static func dropDelivered(_ records: inout [(sequence: UInt64, end: UInt64)], head: inout Int, through total: UInt64) {
        while head < records.count, records[head].end <= total { head += 1 }
        if head == records.count || head > 1024 {
            records.removeFirst(head)
            head = 0
        }
    }

    /// The nextExpected an ACK may say: below the first record whose payload the application has
    /// not taken all of (so the peer keeps it: our window), else every record that arrived.
    private var acknowledgeable: UInt64 {
        var through = nextExpected
        if undeliveredDataHead < undeliveredData.count { through = min(through, undeliveredData[undeliveredDataHead].sequence) }
        if undeliveredMessagesHead < undeliveredMessages.count {
            through = min(through, undeliveredMessages[undeliveredMessagesHead].sequence)
        }
        return through
    }

    public mutating func consumeOutput(_ count: Int) {
        output.removeFirst(min(count, output.count))
    }

    /// Ciphertext octets waiting for an acknowledgement (a test and `midctl` figure).
    public var unacknowledgedOctets: Int { bufferedDataOctets + bufferedControlOctets }

    // MARK: Hop side

    /// Feeds octets the hop delivered. Records are decrypted in order; whatever fails ends the
    /// session (fail closed) and is reported through `failure`.
    public mutating func receive(_ bytes: some Collection<UInt8>, now: ContinuousClock.Instant) {
        guard phase != .failed else { return }
        inbound.append(contentsOf: bytes)
        while phase != .failed {
            // The responder's first stream item is Noise message 3, framed like a record but longer.
            let handshaking = phase == .handshaking
            let parsed: IncrementalParse<Range<Int>>
            do {
                parsed = try inbound.withUnsafeBytes { raw throws(SessionWireError) in
                    let pending = UnsafeRawBufferPointer(rebasing: raw[inboundStart...])
                    return handshaking ? try EndToEndRecordFraming.parseHandshake(pending) : try EndToEndRecordFraming.parseRecord(pending)
                }
            } catch {
                fail(.integrity("\(error)"))
                break
            }
            guard case .complete(let range, let consumed) = parsed else { break }
            let item = Array(inbound[(inboundStart + range.lowerBound)..<(inboundStart + range.upperBound)])
            inboundStart += consumed
            if handshaking {
                readThirdMessage(item, now: now)
            } else {
                open(record: item, now: now)
            }
        }
        if inboundStart > 0, inboundStart == inbound.count || inboundStart > 65536 {
            inbound.removeFirst(inboundStart)
            inboundStart = 0
        }
    }

    /// Timers: the delayed ACK, keepalive, rekeying. Call at `nextDeadline` (or sooner).
    public mutating func tick(now: ContinuousClock.Instant) {
        guard phase == .established || phase == .closed else { return }
        if let first = firstUnacknowledgedAt, now - first >= limits.ackDelay, acknowledgeable > acknowledgedThrough { sendAck(now: now) }
        guard phase == .established else { return }
        if let keepalive = limits.keepalive, now - lastSendAt >= keepalive {
            send(.ping(token: nextSend), now: now)
        }
        if recordsSinceRekey >= limits.rekeyRecords || now - lastRekeyAt >= limits.rekeyInterval {
            send(.keyUpdate, now: now)
            sendCipher?.rekey()
            recordsSinceRekey = 0
            lastRekeyAt = now
        }
    }

    /// When `tick` has something to do next (nil: nothing timed is pending).
    public var nextDeadline: ContinuousClock.Instant? {
        guard phase == .established || phase == .closed else { return nil }
        // The delayed ACK only when it would say something new (else it waits for `delivered`).
        var deadline = acknowledgeable > acknowledgedThrough ? firstUnacknowledgedAt.map { $0 + limits.ackDelay } : nil
        if phase == .established {
            if let keepalive = limits.keepalive { deadline = min(deadline ?? lastSendAt + keepalive, lastSendAt + keepalive) }
            let rekey = lastRekeyAt + limits.rekeyInterval
            deadline = min(deadline ?? rekey, rekey)
        }
        return deadline
    }

    // MARK: Resumption

    /// Initiator, when its hop broke: the next resume blob for HOP-OPEN's END-TO-END kind 3. The
    /// octets of the broken hop still queued are dropped: what matters is what the peer got.
    public mutating func resumeBlob() throws(Failure) -> [UInt8] {
        guard role == .initiator, phase == .established || phase == .closed else { throw .integrity("nothing to resume") }
        resumeEpoch += 1
        return try sealResumeBlob(epoch: resumeEpoch, direction: 0)
    }

    /// Responder: checks the initiator's blob (a newer epoch, our key) and returns its own; then
    /// both ends call `resume(peerNextExpected:)` with what the other's blob said.
    public mutating func answerResume(blob: [UInt8]) throws(Failure) -> (answer: [UInt8], peerNextExpected: UInt64) {
        guard role == .responder, phase == .established || phase == .closed else { throw .integrity("nothing to resume") }
        let (epoch, peerNext) = try openResumeBlob(blob, direction: 0)
        guard epoch > resumeEpoch else { throw .integrity("resume epoch \(epoch) replayed (last \(resumeEpoch))") }
        resumeEpoch = epoch
        return (try sealResumeBlob(epoch: epoch, direction: 1), peerNext)
    }

    /// Initiator: reads the responder's answer blob (same epoch) and returns its nextExpected.
    public mutating func readResumeAnswer(_ blob: [UInt8]) throws(Failure) -> UInt64 {
        let (epoch, peerNext) = try openResumeBlob(blob, direction: 1)
        guard epoch == resumeEpoch else { throw fail(.integrity("resume answer for epoch \(epoch), expected \(resumeEpoch)")) }
        return peerNext
    }

    /// Continues on a new hop: drops what was queued for the old one, queues every buffered record
    /// from the peer's `nextExpected` (the stored ciphertext, same numbers), and an ACK.
    public mutating func resume(peerNextExpected: UInt64, now: ContinuousClock.Instant) throws(Failure) {
        let oldest = unacknowledgedHead < unacknowledged.count ? unacknowledged[unacknowledgedHead].sequence : nextSend
        guard peerNextExpected >= oldest, peerNextExpected <= nextSend else {
            throw fail(.integrity("resume point \(peerNextExpected) outside \(oldest)...\(nextSend)"))
        }
        acknowledge(upTo: peerNextExpected)
        output.removeAll(keepingCapacity: true)
        inbound.removeAll(keepingCapacity: true)
        inboundStart = 0
        for index in unacknowledgedHead..<unacknowledged.count { output += unacknowledged[index].framed }
        sendAck(now: now)
    }

    private func sealResumeBlob(epoch: UInt32, direction: UInt64) throws(Failure) -> [UInt8] {
        guard let cipher = CipherState(key: resumeKey) else { throw .integrity("no resume key") }
        do {
            let sealed = try cipher.encrypt(
                nonce: 2 * UInt64(epoch) + direction, ad: Array("CSP1 resume".utf8) + bigEndianBytes(sessionID),
                plaintext: bigEndianBytes(nextExpected))
            return bigEndianBytes(epoch) + sealed
        } catch { throw .integrity("resume blob: \(error)") }
    }

    private mutating func openResumeBlob(_ blob: [UInt8], direction: UInt64) throws(Failure) -> (UInt32, UInt64) {
        guard blob.count == 4 + 8 + CipherState.tagLength, let cipher = CipherState(key: resumeKey) else {
            throw fail(.integrity("resume blob of \(blob.count) octets"))
        }
        let epoch = UInt32(blob[0]) << 24 | UInt32(blob[1]) << 16 | UInt32(blob[2]) << 8 | UInt32(blob[3])
        guard epoch > 0,
            let plain = try? cipher.decrypt(
                nonce: 2 * UInt64(epoch) + direction, ad: Array("CSP1 resume".utf8) + bigEndianBytes(sessionID),
                ciphertext: Array(blob[4...]))
        else { throw fail(.integrity("resume blob does not decrypt")) }
        return (epoch, plain.reduce(0) { $0 << 8 | UInt64($1) })
    }

    // MARK: Records

    private mutating func send(_ record: EndToEndRecord, now: ContinuousClock.Instant) {
        let sequence = nextSend
        let framed: [UInt8]
        do {
            guard let sendCipher else { return }
            let ciphertext = try sendCipher.encrypt(nonce: sequence, plaintext: try record.plaintext())
            var out: [UInt8] = []
            try EndToEndRecordFraming.appendRecord(ciphertext: ciphertext, to: &out)
            framed = out
        } catch {
            fail(.integrity("seal: \(error)"))
            return
        }
        nextSend += 1
        recordsSinceRekey += 1
        output += framed
        let isData = record.type == .data || record.type == .message
        unacknowledged.append((sequence, framed, isData))
        if isData { bufferedDataOctets += framed.count } else { bufferedControlOctets += framed.count }
        lastSendAt = now
        if record.type == .ack {
            elicitingRecordsSinceAck = 0
            elicitingOctetsSinceAck = 0
            firstUnacknowledgedAt = nil
            acksSinceOurAck = 0
        }
    }

    private mutating func sendAck(now: ContinuousClock.Instant) {
        let through = acknowledgeable
        send(.ack(nextExpected: through), now: now)
        acknowledgedThrough = through
    }

    private mutating func readThirdMessage(_ message: [UInt8], now: ContinuousClock.Instant) {
        guard role == .responder, var state = handshake, state.messageIndex == 2 else {
            fail(.integrity("stream before the handshake finished"))
            return
        }
        do {
            let payload = try state.readMessage(message)
            guard let initiatorStatic = state.remoteStatic, payload.count >= IdentityBlock.length else {
                fail(.integrity("the initiator sent no identity block"))
                return
            }
            peerIdentity = try IdentityBlock.verify(payload.prefix(IdentityBlock.length), for: initiatorStatic)
            let keys = try state.splitWithResumeKey()
            receiveCipher = keys.initiatorToResponder
            sendCipher = keys.responderToInitiator
            resumeKey = keys.resumeKey
            handshake = nil
            phase = .established
            lastSendAt = now
            lastRekeyAt = now
        } catch {
            fail(.integrity("handshake: \(error)"))
        }
    }

    private mutating func open(record ciphertext: [UInt8], now: ContinuousClock.Instant) {
        let record: EndToEndRecord
        do {
            guard let receiveCipher else { return }
            record = try EndToEndRecord(plaintext: try receiveCipher.decrypt(nonce: nextExpected, ciphertext: ciphertext))
        } catch let error as SessionWireError {
            fail(.integrity("record \(nextExpected): \(error)"))
            return
        } catch {
            fail(.integrity("record \(nextExpected) does not decrypt"))
            return
        }
        nextExpected += 1
        switch record {
        case .data(let body):
            guard !peerClosed else { fail(.integrity("DATA after CLOSE")); return }
            received.append(contentsOf: body)
            if !body.isEmpty {
                octetsReceivedTotal += UInt64(body.count)
                undeliveredOctets += body.count
                undeliveredData.append((nextExpected - 1, octetsReceivedTotal))
            }
        case .message(let body):
            guard !peerClosed else { fail(.integrity("MESSAGE after CLOSE")); return }
            messages.append(body)
            messagesReceivedTotal += 1
            undeliveredOctets += body.count
            undeliveredMessages.append((nextExpected - 1, messagesReceivedTotal))
        case .ack(let upTo):
            guard upTo <= nextSend else { fail(.integrity("ACK for record \(upTo) never sent")); return }
            acknowledge(upTo: upTo)
            acksSinceOurAck += 1
            if acksSinceOurAck >= 64, acknowledgeable > acknowledgedThrough { sendAck(now: now) }
            checkClosed()
            return
        case .close:
            peerClosed = true
        case .abort(let code, let text):
            fail(.abortedByPeer(code: code.rawValue, text: text), notifyPeer: false)
            return
        case .keyUpdate:
            receiveCipher?.rekey()
        case .ping:
            elicitingRecordsSinceAck += 1
            sendAck(now: now)
            return
        }
        // An eliciting record: acknowledge after enough of them, or soon.
        elicitingRecordsSinceAck += 1
        elicitingOctetsSinceAck += ciphertext.count
        if firstUnacknowledgedAt == nil { firstUnacknowledgedAt = now }
        // Records the application has not taken are not acknowledged yet: `delivered` does it.
        if elicitingRecordsSinceAck >= limits.ackAfterRecords || elicitingOctetsSinceAck >= limits.ackAfterOctets || record == .close,
            acknowledgeable > acknowledgedThrough
        {
            sendAck(now: now)
        }
        checkClosed()
    }

    private mutating func acknowledge(upTo next: UInt64) {
        while unacknowledgedHead < unacknowledged.count, unacknowledged[unacknowledgedHead].sequence < next {
            let record = unacknowledged[unacknowledgedHead]
            if record.isData { bufferedDataOctets -= record.framed.count } else { bufferedControlOctets -= record.framed.count }
            unacknowledged[unacknowledgedHead].framed = []
            unacknowledgedHead += 1
        }
        if unacknowledgedHead > 1024 || unacknowledgedHead == unacknowledged.count {
            unacknowledged.removeFirst(unacknowledgedHead)
            unacknowledgedHead = 0
        }
    }

    private mutating func checkClosed() {
        guard phase == .established, closeSent, peerClosed, let closeSequence else { return }
        let oldest = unacknowledgedHead < unacknowledged.count ? unacknowledged[unacknowledgedHead].sequence : nextSend
        if oldest > closeSequence { phase = .closed }
    }

    /// Fails closed: an ABORT with code 1 for an integrity failure (our sending direction is
    /// intact, so the peer learns why), then nothing; keys and buffers are dropped.
    @discardableResult
    private mutating func fail(_ failure: Failure, notifyPeer: Bool = true) -> Failure {
        guard phase != .failed else { return self.failure ?? failure }
        if notifyPeer, phase == .established, case .integrity = failure {
            send(.abort(code: .integrityFailure, text: String(failure.description.utf8.prefix(200)) ?? "integrity failure"), now: lastSendAt)
        }
        self.failure = failure
        phase = .failed
        let pending = output
        unacknowledged.removeAll()
        unacknowledgedHead = 0
        bufferedDataOctets = 0
        bufferedControlOctets = 0
        handshake = nil
        sendCipher = nil
        receiveCipher = nil
        resumeKey = []
        output = pending  // what was queued (the ABORT last) still goes out
        return failure
    }
}

func bigEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.bigEndian) { Array($0) }
}
