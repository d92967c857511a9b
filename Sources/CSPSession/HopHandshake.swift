import CSPTrust
import CSPWire

/// Why a hop handshake ended without a stream (docs/PROTOCOL.md 14.5): the hop is closed, and the
/// upstream end reports it (a relay passes a downstream refusal up as its own REFUSE).
public enum HopHandshakeError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A frame that does not belong here: wrong kind, bad encoding, failed Noise message.
    case protocolViolation(String)
    /// The other end's identity block did not verify, or its key is not the one expected.
    case identity(String)
    /// The downstream end refused the hop (decrypted: it read OPEN and names the hop).
    case refused(HopRefuse)
    /// A clear REFUSE before D read OPEN: informative only, an on-path attacker could have sent it.
    case refusedUnauthenticated(HopRefuse)

    public var description: String {
        switch self {
        case .protocolViolation(let why): "hop handshake: \(why)"
        case .identity(let why): "hop identity: \(why)"
        case .refused(let refuse), .refusedUnauthenticated(let refuse):
            "refused: \(refuse.result)\(refuse.reason.map { ": \($0.text)" } ?? "")"
        }
    }
}

/// The upstream end U of one hop (a host, or a relay opening its next hop): HELLO, then OPEN with
/// the HOP-OPEN TLVs once D proved its key, then ACCEPT or REFUSE. Pure: frames in, frames out.
public struct HopHandshakeUpstream {
    static let prologue = Array("CSP1 hop".utf8)

    private var noise: HandshakeState
    private let identity: SessionIdentity
    private let expectedDownstream: PublicKey?
    private let open: HopOpen
    private var downstreamToUpstream: CipherState?
    /// The hop's two transport ciphers, for sealed protection (14.6); D→U's nonce 0 went to ACCEPT.
    public private(set) var sealing: (send: CipherState, receive: CipherState)?
    /// D's Ed25519 key, after HELLO-REPLY verified.
    public private(set) var downstreamKey: PublicKey?

    /// `expectedDownstream`: the relaying record's key for a relay (a different key ends the hop);
    /// nil for the last hop, whose responder the end-to-end layer authenticates.
    public init(identity: SessionIdentity, expectedDownstream: PublicKey?, open: HopOpen) {
        self.identity = identity
        self.expectedDownstream = expectedDownstream
        self.open = open
        noise = HandshakeState(role: .initiator, prologue: Self.prologue, staticKey: identity.staticKey)
    }

    /// The HELLO frame (Noise message 1).
    public mutating func hello() throws(HopHandshakeError) -> [UInt8] {
        do {
            return try HopFrame(kind: .hello, body: try noise.writeMessage()).serialize()
        } catch { throw .protocolViolation("\(error)") }
    }

    /// Reads HELLO-REPLY (or a clear REFUSE) and returns the OPEN frame.
    public mutating func open(after frame: HopFrame) throws(HopHandshakeError) -> [UInt8] {
        if frame.kind == .refuse, let refuse = try? HopRefuse(decoding: frame.body) { throw .refusedUnauthenticated(refuse) }
        guard frame.kind == .helloReply else { throw .protocolViolation("expected HELLO-REPLY, got \(frame.kind)") }
        let payload: [UInt8]
        do { payload = try noise.readMessage(frame.body) } catch { throw .protocolViolation("HELLO-REPLY: \(error)") }
        guard let downstreamStatic = noise.remoteStatic, payload.count == IdentityBlock.length else {
            throw .identity("HELLO-REPLY carries no identity block")
        }
        let key: PublicKey
        do { key = try IdentityBlock.verify(payload, for: downstreamStatic) } catch { throw .identity("\(error)") }
        if let expectedDownstream, key != expectedDownstream {
            throw .identity("the relay answered with \(key), not the offering middlebox's \(expectedDownstream)")
        }
        downstreamKey = key
        do {
            var tlvs = identity.identityBlock.bytes
            try open.encode(into: &tlvs)
            let message = try noise.writeMessage(payload: tlvs)
            let ciphers = try noise.split()
            downstreamToUpstream = ciphers.responderToInitiator
            sealing = (ciphers.initiatorToResponder, ciphers.responderToInitiator)
            return try HopFrame(kind: .open, body: message).serialize()
        } catch { throw .protocolViolation("OPEN: \(error)") }
    }

    /// Reads ACCEPT (returns HOP-ACCEPT) or REFUSE (throws it).
    public mutating func answer(_ frame: HopFrame) throws(HopHandshakeError) -> HopAccept {
        guard var cipher = downstreamToUpstream else { throw .protocolViolation("answer before OPEN") }
        guard frame.kind == .accept || frame.kind == .refuse else { throw .protocolViolation("expected ACCEPT or REFUSE, got \(frame.kind)") }
        let plain: [UInt8]
        do { plain = try cipher.decryptWithAd([], ciphertext: frame.body) } catch {
            if frame.kind == .refuse, let refuse = try? HopRefuse(decoding: frame.body) { throw .refusedUnauthenticated(refuse) }
            throw .protocolViolation("\(frame.kind) does not decrypt")
        }
        downstreamToUpstream = cipher
        sealing?.receive = cipher
        if frame.kind == .refuse {
            guard let refuse = try? HopRefuse(decoding: plain) else { throw .protocolViolation("malformed REFUSE") }
            throw .refused(refuse)
        }
        do { return try HopAccept(decoding: plain) } catch { throw .protocolViolation("ACCEPT: \(error)") }
    }
}

/// The downstream end D of one hop (a relay, or the responder): answers HELLO with its identity,
/// reads OPEN (U's identity and HOP-OPEN), then sends ACCEPT or REFUSE.
public struct HopHandshakeDownstream {
    private var noise: HandshakeState
    private let identity: SessionIdentity
    private var downstreamToUpstream: CipherState?
    /// See `HopHandshakeUpstream.sealing`; here `send` is D→U (nonce 0 is ACCEPT's).
    public private(set) var sealing: (send: CipherState, receive: CipherState)?
    public private(set) var upstreamKey: PublicKey?

    public init(identity: SessionIdentity) {
        self.identity = identity
        noise = HandshakeState(role: .responder, prologue: HopHandshakeUpstream.prologue, staticKey: identity.staticKey)
    }

    /// Reads HELLO and returns HELLO-REPLY (Noise message 2, D's identity block as payload).
    public mutating func reply(to frame: HopFrame) throws(HopHandshakeError) -> [UInt8] {
        guard frame.kind == .hello else { throw .protocolViolation("expected HELLO, got \(frame.kind)") }
        do {
            _ = try noise.readMessage(frame.body)
            return try HopFrame(kind: .helloReply, body: try noise.writeMessage(payload: identity.identityBlock.bytes)).serialize()
        } catch { throw .protocolViolation("HELLO: \(error)") }
    }

    /// Reads OPEN: U's verified Ed25519 key and its HOP-OPEN.
    public mutating func read(open frame: HopFrame) throws(HopHandshakeError) -> (upstreamKey: PublicKey, open: HopOpen) {
        guard frame.kind == .open else { throw .protocolViolation("expected OPEN, got \(frame.kind)") }
        let payload: [UInt8]
        do { payload = try noise.readMessage(frame.body) } catch { throw .protocolViolation("OPEN: \(error)") }
        guard let upstreamStatic = noise.remoteStatic, payload.count > IdentityBlock.length else {
            throw .identity("OPEN carries no identity block")
        }
        let key: PublicKey
        do { key = try IdentityBlock.verify(payload.prefix(IdentityBlock.length), for: upstreamStatic) } catch { throw .identity("\(error)") }
        let open: HopOpen
        do { open = try HopOpen(decoding: Array(payload.dropFirst(IdentityBlock.length))) } catch { throw .protocolViolation("HOP-OPEN: \(error)") }
        do {
            let ciphers = try noise.split()
            downstreamToUpstream = ciphers.responderToInitiator
            sealing = (ciphers.responderToInitiator, ciphers.initiatorToResponder)
        } catch { throw .protocolViolation("\(error)") }
        upstreamKey = key
        return (key, open)
    }

    /// The ACCEPT frame.
    public mutating func accept(_ accept: HopAccept) throws(HopHandshakeError) -> [UInt8] {
        do { return try answer(kind: .accept, plaintext: try accept.serialize()) } catch let error as HopHandshakeError { throw error } catch {
            throw .protocolViolation("\(error)")
        }
    }

    /// The REFUSE frame: encrypted once OPEN was read, clear before.
    public mutating func refuse(_ refuse: HopRefuse) -> [UInt8] {
        guard let plain = try? refuse.serialize() else { return [] }
        if downstreamToUpstream != nil, let frame = try? answer(kind: .refuse, plaintext: plain) { return frame }
        return (try? HopFrame(kind: .refuse, body: plain).serialize()) ?? []
    }

    private mutating func answer(kind: HopFrameKind, plaintext: [UInt8]) throws(HopHandshakeError) -> [UInt8] {
        guard var cipher = downstreamToUpstream else { throw .protocolViolation("\(kind) before OPEN") }
        do {
            let body = try cipher.encryptWithAd([], plaintext: plaintext)
            downstreamToUpstream = cipher
            sealing?.send = cipher
            return try HopFrame(kind: kind, body: body).serialize()
        } catch { throw .protocolViolation("\(error)") }
    }
}
