#if canImport(Glibc)
import Glibc
#endif
import CSPSession
import Foundation
import CSPTrust
import CSPWire
import Synchronization
import SystemSupport

/// Errors of an end of a relayed session that the application sees (`csp connect` prints them
/// and exits with the kind's status).
public struct SessionEndError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable {
        /// A relay or the responder refused (REFUSE: `refusal` says who and why).
        case refused
        /// The relay's or the responder's key is not the one expected.
        case keyMismatch
        /// The session failed closed (a record that does not decrypt, a bad resume point, an ABORT).
        case integrity
        /// The chain could not be rebuilt within the resume timeout.
        case resumeTimedOut
        /// The first hop could not be opened (connect, handshake).
        case unreachable
    }

    public var kind: Kind
    public var description: String
    /// The hop layer's refusal, when a middlebox or the responder refused.
    public var refusal: HopRefuse?
    public init(_ kind: Kind, _ description: String, refusal: HopRefuse? = nil) {
        self.kind = kind
        self.description = description
        self.refusal = refusal
    }
}

/// The blocking frame reader of hop handshakes: the 6-octet header, then exactly the body, so no
/// octet of the stream that follows is read here.
public func readHopFrame(from socket: TCPSocket, deadline: ContinuousClock.Instant) throws -> HopFrame {
    guard let header = try socket.readExactly(HopFrameHeader.length, deadline: deadline) else {
        throw SessionEndError(.unreachable, "the hop closed during its handshake")
    }
    let parsed = try header.withUnsafeBytes { buffer throws(SessionWireError) in try HopFrameHeader.parse(buffer) }
    guard case .complete(let head, _) = parsed else { throw SessionEndError(.unreachable, "short hop frame header") }
    guard let body = try socket.readExactly(head.bodyLength, deadline: deadline) else {
        throw SessionEndError(.unreachable, "the hop closed during its handshake")
    }
    return HopFrame(kind: head.kind, body: body)
}

/// Where the initiator's first hop goes: straight to the target (one hop), or to a relay that
/// offered itself (RELAY: its endpoint, token and key).
public struct FirstHop: Sendable {
    public var endpoint: CSPEndpoint
    public var relayKey: PublicKey?
    public var relayToken: [UInt8]?
    /// The offer said the relay ends the end-to-end layer (RELAY-ENDPOINT mode terminating).
    public var terminating: Bool
    public init(endpoint: CSPEndpoint, relayKey: PublicKey? = nil, relayToken: [UInt8]? = nil, terminating: Bool = false) {
        self.endpoint = endpoint
        self.relayKey = relayKey
        self.relayToken = relayToken
        self.terminating = terminating
    }
    public var isRelay: Bool { relayToken != nil }
}

/// The initiator H of a relayed session (docs/PROTOCOL.md 14.5, 14.7): opens hop 1, runs the
/// end-to-end handshake through it, moves the application's octets, and resumes on a new hop when
/// one breaks — the application's stream continues, complete and in order.
public final class SessionInitiator {
    public let sessionID: UInt64
    public let target: TargetEndpoint
    public private(set) var firstHop: FirstHop
    /// Asks the middleboxes again for the first hop (a new SETUP, a new offer): called when a relay
    /// answers a resume with unknown-session — it forgot the session (restart, grace over) and
    /// needs a new token; the end-to-end session resumes through the new offer (PROTOCOL.md 14.7).
    public var reoffer: (() throws -> FirstHop)?
    public let protection: HopProtection
    /// Accept only this responder key (nil: any, the caller said so). For a terminating relay
    /// (PROTOCOL.md 14.9) it is the relay's own key: the relay answers as the responder.
    public var responderKey: PublicKey?
    /// The host agreed that a relay may end the end-to-end layer (HOP flag allow-terminating).
    public var allowTerminating = false
    public var resumeTimeout: Duration = .seconds(60)
    public var handshakeTimeout: Duration = .seconds(10)
    /// What happened, for `-v` and the tests ("hop 1 broke: …", "resumed (epoch 1)").
    public var log: (String) -> Void = { _ in }
    public private(set) var resumptions = 0
    public private(set) var chain: [ChainEntry] = []
    /// A socket already bound to the source port the flow was signaled for (a direct first hop);
    /// used for the first connection only.
    public var firstSocket: TCPSocket?

    private let identity: SessionIdentity
    private var session: EndToEndSession

    public init(
        identity: SessionIdentity, sessionID: UInt64, target: TargetEndpoint, firstHop: FirstHop, protection: HopProtection = .clear,
        responderKey: PublicKey?
    ) {
        self.identity = identity
        self.sessionID = sessionID
        self.target = target
        self.firstHop = firstHop
        self.protection = protection
        self.responderKey = responderKey
        session = EndToEndSession(role: .initiator, sessionID: sessionID, target: target.encodedValue, identity: identity, now: .now)
    }

    /// Opens the session and moves `input` → session → `output` until both directions closed.
    /// Throws when the session fails (integrity, refusal, resume timeout).
    /// `messages`: `input` and `output` are SOCK_SEQPACKET sockets, one application message per
    /// read and write (MESSAGE records) instead of a byte stream.
    /// `output` is closed when run returns (or earlier: at the peer's CLOSE, or when the
    /// application stopped taking octets), so the caller must not close it again.
    public func run(input: Int32?, output: Int32, messages: Bool = false) throws(SessionEndError) {
        var outputClosed = false
        defer { if !outputClosed { _ = close(output) } }
        var (hop, sealer): (TCPSocket, HopSealer?)
        do { (hop, sealer) = try openHop(resume: false) } catch let error as SessionEndError { throw error } catch HopHandshakeError.identity(let why) {
            throw SessionEndError(.keyMismatch, "the relay's key: \(why)")
        } catch { throw SessionEndError(.unreachable, "\(firstHop.endpoint): \(error)") }
        var pumpInput = SessionStreamPump.Input(descriptor: input, messages: messages)
        while true {
            switch SessionStreamPump.run(
                session: &session, hop: hop, input: &pumpInput, output: output, outputClosed: &outputClosed, sealer: &sealer)
            {
            case .finished, .established:
                hop.close()
                return
            case .failed:
                hop.closeAfterDraining()
                throw SessionEndError(.integrity, "session failed: \(session.failure.map { "\($0)" } ?? "unknown")")
            case .hopBroke(let why):
                hop.abort()
                log("hop 1 broke: \(why)")
                (hop, sealer) = try resume()
            }
        }
    }

    private func resume() throws(SessionEndError) -> (TCPSocket, HopSealer?) {
        let started = ContinuousClock.now
        var wait: Duration = .zero
        while ContinuousClock.now - started < resumeTimeout {
            if wait > .zero { sleep(for: wait) }
            wait = wait == .zero ? .milliseconds(250) : min(wait * 2, .seconds(4))
            do {
                let hop = try openHop(resume: true)
                resumptions += 1
                log("resumed (attempt \(resumptions))")
                return hop
            } catch let error as SessionEndError where error.refusal?.result == .unknownSession && firstHop.isRelay && reoffer != nil {
                // The relay forgot the session: signal again for a new offer, and resume through it.
                do {
                    firstHop = try reoffer!()
                    log("the relay forgot the session: new offer from \(firstHop.endpoint)")
                    wait = .zero
                } catch {
                    log("signaling again: \(error)")
                }
            } catch let error as SessionEndError where error.kind != .unreachable {
                throw error  // a refusal or a failure is an answer: the session is gone there
            } catch {
                log("resume: \(error)")
            }
        }
        throw SessionEndError(.resumeTimedOut, "the session could not be resumed within \(resumeTimeout)")
    }

    /// Connects hop 1 and runs its handshake; on a resume, the end-to-end resume blobs too.
    private func openHop(resume: Bool) throws -> (TCPSocket, HopSealer?) {
        let deadline = ContinuousClock.now + handshakeTimeout
        let socket: TCPSocket
        if !resume, let bound = firstSocket {
            firstSocket = nil
            try bound.connect(to: firstHop.endpoint, timeout: handshakeTimeout)
            socket = bound
        } else {
            socket = try TCPSocket.connect(to: firstHop.endpoint, timeout: handshakeTimeout)
        }
        try? TCPOptions.setLiveness(socket.descriptor)
        try? TCPOptions.setNoDelay(socket.descriptor)
        let part: EndToEndPart
        if resume {
            part = EndToEndPart(kind: .resumeBlob, data: try session.resumeBlob())
        } else {
            part = EndToEndPart(kind: .handshake1, data: try session.firstMessage())
        }
        var flags: HopFlags = resume ? [.resume] : []
        if !firstHop.isRelay { flags.insert(.last) }
        if allowTerminating { flags.insert(.allowTerminating) }
        let open = HopOpen(
            hop: HopDescriptor(sessionID: sessionID, hopIndex: 1, flags: flags, protection: protection), target: target,
            relayToken: firstHop.relayToken, endToEnd: part)
        var handshake = HopHandshakeUpstream(identity: identity, expectedDownstream: firstHop.relayKey, open: open)
        try socket.writeAll(try handshake.hello())
        try socket.writeAll(try handshake.open(after: try readHopFrame(from: socket, deadline: deadline)))
        let accept: HopAccept
        do {
            accept = try handshake.answer(try readHopFrame(from: socket, deadline: deadline))
        } catch HopHandshakeError.refused(let refuse) {
            throw SessionEndError(.refused, "refused by \(firstHop.isRelay ? "the relay chain" : "the responder"): \(refuse.result)\(refuse.reason.map { ": \($0.text)" } ?? "")", refusal: refuse)
        }
        chain = accept.chain
        if resume {
            guard accept.endToEnd.kind == .resumeBlob else { throw SessionEndError(.integrity, "the resumed hop's answer carries no resume blob") }
            let peerNext = try session.readResumeAnswer(accept.endToEnd.data)
            try session.resume(peerNextExpected: peerNext, now: .now)
        } else {
            guard accept.endToEnd.kind == .handshake2 else { throw SessionEndError(.integrity, "the answer carries no end-to-end handshake") }
            let key = try session.finish(secondMessage: accept.endToEnd.data, now: .now)
            if let responderKey, key != responderKey {
                session.abort(code: 1, text: "unexpected responder key", now: .now)
                throw SessionEndError(.keyMismatch, "the responder's key is \(key.text), not the expected \(responderKey.text)")
            }
            log("responder \(key.text)")
        }
        return (socket, protection == .sealed ? handshake.sealing.map { HopSealer(send: $0.send, receive: $0.receive) } : nil)
    }
}

/// The responder P: accepts hops on its service port (the last hop of each chain), answers the
/// end-to-end handshake, and takes a session's resumed hop over from the broken one.
public final class SessionResponder: @unchecked Sendable {
    /// One application connection per session: the descriptors its octets go to and come from,
    /// and what to do when the session fails (an application must learn of an integrity failure
    /// other than by end of file: `csp serve --exec` terminates the command). `from` is the last
    /// hop's upstream end (a relay's address when the session is relayed).
    public typealias Attach = @Sendable (_ sessionID: UInt64, _ initiator: PublicKey, _ from: CSPEndpoint?) -> Application?

    public struct Application: Sendable {
        public var input: Int32?
        public var output: Int32
        /// SOCK_SEQPACKET descriptors: one message per read and write (MESSAGE records).
        public var messages: Bool
        public var onFailure: (@Sendable (String) -> Void)?
        public init(input: Int32?, output: Int32, messages: Bool = false, onFailure: (@Sendable (String) -> Void)? = nil) {
            self.input = input
            self.output = output
            self.messages = messages
            self.onFailure = onFailure
        }
    }

    private let identity: SessionIdentity
    private let listener: TCPSocket
    /// Initiator keys accepted (nil: any).
    private let allowedInitiators: Set<PublicKey>?
    public var handshakeTimeout: Duration = .seconds(10)
    public var resumeTimeout: Duration = .seconds(70)
    public var log: @Sendable (String) -> Void = { _ in }

    /// Sessions by ID: the slot a broken session parks in until its resumed hop arrives.
    private let sessions = Mutex<[UInt64: ServedSession]>([:])

    public init(identity: SessionIdentity, listener: TCPSocket, allowedInitiators: Set<PublicKey>?) {
        self.identity = identity
        self.listener = listener
        self.allowedInitiators = allowedInitiators
    }

    /// Accepts hops until `shouldStop` says so (checked every 0.5 s) — each on a thread of its own.
    /// `once`: return when the first session has ended.
    public func serve(once: Bool, attach: @escaping Attach, shouldStop: @escaping @Sendable () -> Bool = { false }) {
        let finished = Atomic<Bool>(false)
        while !shouldStop() && !(once && finished.load(ordering: .relaxed)) {
            guard let hop = try? listener.accept(timeout: .milliseconds(500)) else { continue }
            Thread.detachNewThread { [self] in
                if handle(hop: hop, attach: attach), once { finished.store(true, ordering: .relaxed) }
            }
        }
    }

    /// One incoming hop: a new session (runs it to its end, returns true) or a resume (hands the
    /// hop to the parked session, returns false).
    private func handle(hop: TCPSocket, attach: Attach) -> Bool {
        let deadline = ContinuousClock.now + handshakeTimeout
        try? TCPOptions.setLiveness(hop.descriptor)
        try? TCPOptions.setNoDelay(hop.descriptor)
        var handshake = HopHandshakeDownstream(identity: identity)
        let opened: (upstreamKey: PublicKey, open: HopOpen)
        do {
            try hop.writeAll(try handshake.reply(to: try readHopFrame(from: hop, deadline: deadline)))
            opened = try handshake.read(open: try readHopFrame(from: hop, deadline: deadline))
        } catch {
            log("hop handshake: \(error)")
            hop.abort()
            return false
        }
        let open = opened.open
        func refuse(_ code: CSPResultCode, _ text: String) -> Bool {
            log("refused hop for session \(hex(open.hop.sessionID)): \(text)")
            try? hop.writeAll(handshake.refuse(HopRefuse(result: code, reason: CSPReason(text: text), hop: open.hop)))
            hop.close()
            return false
        }
        if open.hop.flags.contains(.resume) {
            guard let served = sessions.withLock({ $0[open.hop.sessionID] }) else { return refuse(.unknownSession, "no such session") }
            return served.resume(on: hop, handshake: &handshake, open: open) ? false : refuse(.authenticationFailed, "resume refused")
        }
        guard open.endToEnd.kind == .handshake1 else { return refuse(.malformedMessage, "no end-to-end handshake") }
        var session = EndToEndSession(role: .responder, sessionID: open.hop.sessionID, target: open.target.encodedValue, identity: identity, now: .now)
        do {
            let second = try session.answer(firstMessage: open.endToEnd.data)
            try hop.writeAll(try handshake.accept(HopAccept(endToEnd: EndToEndPart(kind: .handshake2, data: second))))
        } catch {
            log("end-to-end handshake: \(error)")
            hop.abort()
            return false
        }
        // Message 3 is the stream's first item: the pump reads it; the initiator is known then.
        let sealer = open.hop.protection == .sealed ? handshake.sealing.map { HopSealer(send: $0.send, receive: $0.receive) } : nil
        let served = ServedSession(
            sessionID: open.hop.sessionID, session: session, hop: hop, sealer: sealer, resumeTimeout: resumeTimeout, log: log)
        sessions.withLock { $0[open.hop.sessionID] = served }
        defer { sessions.withLock { _ = $0.removeValue(forKey: open.hop.sessionID) } }
        served.run(allowedInitiators: allowedInitiators, attach: attach)
        return true
    }
}

/// A session at the responder, with the hop it currently runs on; parks when the hop breaks.
final class ServedSession: @unchecked Sendable {
    let sessionID: UInt64
    private let state: Mutex<(session: EndToEndSession?, hop: TCPSocket?, sealer: HopSealer?, parked: Bool)>
    private let resumeTimeout: Duration
    private let log: @Sendable (String) -> Void

    init(
        sessionID: UInt64, session: EndToEndSession, hop: TCPSocket, sealer: HopSealer?, resumeTimeout: Duration,
        log: @escaping @Sendable (String) -> Void
    ) {
        self.sessionID = sessionID
        state = Mutex((session, hop, sealer, false))
        self.resumeTimeout = resumeTimeout
        self.log = log
    }

    func run(allowedInitiators: Set<PublicKey>?, attach: SessionResponder.Attach) {
        var session = state.withLock { $0.session.take()! }
        var hop = state.withLock { $0.hop! }
        var sealer = state.withLock { $0.sealer }
        var input = SessionStreamPump.Input(descriptor: nil)
        var output: Int32 = -1
        var outputClosed = false
        var attached = false
        var onFailure: (@Sendable (String) -> Void)?
        while true {
            // Until message 3 arrived the pump only reads; then the application is attached.
            let outcome = SessionStreamPump.run(
                session: &session, hop: hop, input: &input, output: output, outputClosed: &outputClosed, sealer: &sealer,
                untilEstablished: !attached)
            switch outcome {
            case .established: break
            case .finished, .failed:
                if outcome == .failed {
                    let why = session.failure.map { "\($0)" } ?? "failed"
                    log("session \(hex(sessionID)) failed: \(why)")
                    onFailure?(why)
                    hop.closeAfterDraining()
                }
                hop.close()
                if attached, !outputClosed { _ = close(output) }
                if let fd = input.descriptor { _ = close(fd) }
                return
            case .hopBroke(let why) where !attached:
                // Broken before message 3: no keys were agreed, nothing can resume it.
                log("session \(hex(sessionID)): hop broke during the handshake: \(why)")
                hop.close()
                return
            case .hopBroke(let why):
                log("session \(hex(sessionID)): hop broke: \(why)")
                hop.abort()
                state.withLock {
                    $0.session = session
                    $0.hop = nil
                    $0.parked = true
                }
                guard let resumed = waitForResume() else {
                    log("session \(hex(sessionID)): not resumed in time")
                    onFailure?("not resumed in time")
                    if attached, !outputClosed { _ = close(output) }
                    return
                }
                (session, hop, sealer) = resumed
            }
            if !attached, let key = session.peerIdentity {
                if let allowedInitiators, !allowedInitiators.contains(key) {
                    session.abort(code: 2, text: "initiator not allowed", now: .now)
                    continue
                }
                guard let ends = attach(sessionID, key, hop.remoteEndpoint) else {
                    session.abort(code: 2, text: "no application", now: .now)
                    continue
                }
                attached = true
                input = SessionStreamPump.Input(descriptor: ends.input, messages: ends.messages)
                output = ends.output
                onFailure = ends.onFailure
            }
        }
    }

    private func waitForResume() -> (EndToEndSession, TCPSocket, HopSealer?)? {
        let deadline = ContinuousClock.now + resumeTimeout
        while ContinuousClock.now < deadline {
            if let resumed = state.withLock({ s -> (EndToEndSession, TCPSocket, HopSealer?)? in
                guard !s.parked, let session = s.session.take(), let hop = s.hop else { return nil }
                return (session, hop, s.sealer)
            }) { return resumed }
            sleep(for: .milliseconds(20))
        }
        state.withLock { $0.session = nil }
        return nil
    }

    /// The acceptor's side of a resume: checks the blob against the parked session, answers, and
    /// hands the new hop over. A session still running on a hop that did not break yet (a dead
    /// path nobody noticed) is made to notice.
    func resume(on hop: TCPSocket, handshake: inout HopHandshakeDownstream, open: HopOpen) -> Bool {
        guard open.endToEnd.kind == .resumeBlob else { return false }
        let waitUntil = ContinuousClock.now + .seconds(3)
        while ContinuousClock.now < waitUntil {
            let parked = state.withLock { s -> Bool in
                if !s.parked, let old = s.hop { _ = shutdown(old.descriptor, Int32(SHUT_RDWR)) }
                return s.parked
            }
            if parked { break }
            sleep(for: .milliseconds(10))
        }
        return state.withLock { s -> Bool in
            guard s.parked, var session = s.session.take() else { return false }
            do {
                let (answer, peerNext) = try session.answerResume(blob: open.endToEnd.data)
                try hop.writeAll(try handshake.accept(HopAccept(endToEnd: EndToEndPart(kind: .resumeBlob, data: answer))))
                try session.resume(peerNextExpected: peerNext, now: .now)
            } catch {
                s.session = session
                return false
            }
            s.session = session
            s.hop = hop
            s.sealer = open.hop.protection == .sealed ? handshake.sealing.map { HopSealer(send: $0.send, receive: $0.receive) } : nil
            s.parked = false
            return true
        }
    }
}

private func sleep(for duration: Duration) {
    let (seconds, attoseconds) = duration.components
    Thread.sleep(forTimeInterval: Double(seconds) + Double(attoseconds) / 1e18)
}
