#if canImport(Glibc)
import Glibc
#endif
import CSPHost
import CSPSession
import CSPTrust
import CSPWire
import Foundation
import MidcomRelay
import Synchronization
import SystemSupport

/// midrelayd's runtime: acceptors on the relay endpoints, setup threads for hop handshakes and
/// the onward hop, workers for the octets (ARCHITECTURE.md, "How octets move through midrelayd").
final class RelayDaemon: @unchecked Sendable {
    struct Settings: Sendable {
        var listen: [CSPEndpoint]
        var limits = RelayLimits()
        var workers = 1
        var setupThreads = 4
        var pipeSize = 262_144
        var verbose = false
        var controlSocket: String?
    }

    let settings: Settings
    let keys: RelayKeyFile
    let table: Mutex<RelaySessionTable>
    private var workers: [RelayWorker] = []
    private let setupSlots: DispatchSemaphore
    /// Where each live session's hops are, so a resume or an operator can reach them.
    private let placement = Mutex<[RelaySessionTable.Key: RelayWorker]>([:])
    private let nextWorker = Atomic<Int>(0)
    /// OPENs refused (any reason), for `status`.
    let refusedCount = Atomic<Int>(0)
    let silentTargets = SilentTargets()

    func workerHolding(_ key: RelaySessionTable.Key) -> RelayWorker? { placement.withLock { $0[key] } }

    init(settings: Settings, keys: RelayKeyFile) {
        self.settings = settings
        self.keys = keys
        table = Mutex(RelaySessionTable(limits: settings.limits))
        setupSlots = DispatchSemaphore(value: settings.setupThreads)
    }

    func log(_ line: String) {
        FileHandle.standardError.write(Data("midrelayd: \(line)\n".utf8))
    }

    func run() throws -> Never {
        var listeners: [TCPSocket] = []
        for endpoint in settings.listen {
            do { listeners.append(try TCPSocket.listen(on: endpoint)) } catch {
                throw RelayError("cannot listen on \(endpoint): \(error)")
            }
        }
        for _ in 0..<max(1, settings.workers) {
            let worker = try RelayWorker(daemon: self)
            workers.append(worker)
            Thread.detachNewThread { worker.run() }
        }
        for listener in listeners {
            Thread.detachNewThread { [self] in acceptLoop(listener) }
        }
        if let path = settings.controlSocket {
            do { try startControl(path: path) } catch { throw RelayError("control socket \(path): \(error)") }
        }
        log("relaying on \(settings.listen.map { "\($0)" }.joined(separator: ", ")) key \(keys.identity.ed25519PublicKey.text)")
        while true {
            Thread.sleep(forTimeInterval: 1)
            let idle = table.withLock { $0.expire(now: .now) }
            for key in idle {
                table.withLock { $0.hopsEnded(key, generation: $0.sessions[key]?.generation ?? 0, clean: false, reason: "idle", now: .now) }
                placement.withLock { $0[key] }?.abort(key)
            }
        }
    }

    private func acceptLoop(_ listener: TCPSocket) {
        while true {
            guard let hop = try? listener.accept(timeout: nil) else { continue }
            setupSlots.wait()
            Thread.detachNewThread { [self] in
                defer { setupSlots.signal() }
                setUp(hop: hop)
            }
        }
    }

    /// One incoming hop: handshake, decision, the onward hop, then the worker.
    private func setUp(hop: TCPSocket) {
        let deadline = ContinuousClock.now + settings.limits.handshakeTimeout
        try? TCPOptions.setLiveness(hop.descriptor)
        guard let local = hop.localEndpoint, let remote = hop.remoteEndpoint else { return hop.abort() }
        var handshake = HopHandshakeDownstream(identity: keys.identity)
        let upstreamKey: PublicKey
        let open: HopOpen
        do {
            try hop.writeAll(try handshake.reply(to: try readHopFrame(from: hop, deadline: deadline)))
            (upstreamKey, open) = try handshake.read(open: try readHopFrame(from: hop, deadline: deadline))
        } catch {
            if settings.verbose { log("hop from \(remote): \(error)") }
            return hop.abort()
        }
        func refuse(_ refusal: RelaySessionTable.Refusal) {
            refusedCount.add(1, ordering: .relaxed)
            log("refused session \(hex(open.hop.sessionID)) hop \(open.hop.hopIndex) from \(remote): \(refusal.text)")
            let reason = CSPReason(retryAfter: refusal.retryAfter, text: refusal.text)
            try? hop.writeAll(handshake.refuse(HopRefuse(result: refusal.result, reason: reason, hop: open.hop)))
            hop.close()
        }
        let key = RelaySessionTable.Key(sessionID: open.hop.sessionID, hopIndex: open.hop.hopIndex)
        var session: RelayedSession
        var terminating = false
        do {
            let now = ContinuousClock.now
            let resumed = open.hop.flags.contains(.resume) ? try table.withLock { t throws(RelaySessionTable.Refusal) in try t.resume(open: open, upstreamKey: upstreamKey, now: now) } : nil
            if let resumed {
                session = resumed
                // The old hops, if the worker still has them, end now; the new ones replace them.
                placement.withLock { $0[key] }?.abort(key)
            } else {
                let token = try checkToken(open: open, upstreamKey: upstreamKey, relayEndpoint: local)
                terminating = token.modes & CSPRelayModes.terminating.rawValue != 0
                session = try table.withLock { t throws(RelaySessionTable.Refusal) in
                    try t.admit(open: open, upstreamKey: upstreamKey, upstreamAddress: remote.address, now: now)
                }
            }
        } catch {
            return refuse(error)
        }

        if terminating {
            guard open.hop.flags.contains(.allowTerminating) else {
                table.withLock { $0.forget(key, generation: session.generation) }
                return refuse(RelaySessionTable.Refusal(.terminatingRelayRequired, "this relay reads the sessions it carries: allow-terminating was not granted"))
            }
            return terminate(hop: hop, handshake: &handshake, open: open, key: key, session: session, local: local, remote: remote, refuse: refuse)
        }
        // Hop k+1: signaled like any flow (PROTOCOL.md 14.3), then opened to the target or to the
        // next relay. The END-TO-END part and the protection travel unchanged; the relay never
        // reads the end-to-end layer.
        let onward: OnwardHop
        do {
            onward = try OnwardHop.decide(for: open, signingKey: keys.signingKey, silence: silentTargets) { [self] line in if settings.verbose { log(line) } }
        } catch {
            table.withLock { $0.forget(key, generation: session.generation) }
            return refuse(error)
        }
        var onwardFlags = open.hop.flags
        if onward.isLast { onwardFlags.insert(.last) } else { onwardFlags.remove(.last) }
        let onwardOpen = HopOpen(
            hop: HopDescriptor(sessionID: open.hop.sessionID, hopIndex: open.hop.hopIndex + 1, flags: onwardFlags, protection: open.hop.protection),
            target: open.target, relayToken: onward.relayToken, endToEnd: open.endToEnd)
        let downstream: TCPSocket
        let accept: HopAccept
        var onwardSealing: (send: CipherState, receive: CipherState)?
        do {
            if let bound = onward.boundSocket {
                try bound.connect(to: onward.endpoint, timeout: settings.limits.handshakeTimeout)
                downstream = bound
            } else {
                downstream = try TCPSocket.connect(to: onward.endpoint, timeout: settings.limits.handshakeTimeout)
            }
            try? TCPOptions.setLiveness(downstream.descriptor)
            var onwardHandshake = HopHandshakeUpstream(identity: keys.identity, expectedDownstream: onward.relayKey, open: onwardOpen)
            try downstream.writeAll(try onwardHandshake.hello())
            try downstream.writeAll(try onwardHandshake.open(after: try readHopFrame(from: downstream, deadline: deadline)))
            do {
                accept = try onwardHandshake.answer(try readHopFrame(from: downstream, deadline: deadline))
                onwardSealing = onwardHandshake.sealing
            } catch HopHandshakeError.refused(let refusal) {
                table.withLock { $0.forget(key, generation: session.generation) }
                let text = "hop \(open.hop.hopIndex + 1): \(refusal.reason?.text ?? "\(refusal.result)")"
                return refuse(RelaySessionTable.Refusal(refusal.result, text, retryAfter: refusal.reason?.retryAfter ?? 0))
            }
        } catch {
            table.withLock { $0.forget(key, generation: session.generation) }
            return refuse(RelaySessionTable.Refusal(.middleboxUnavailable, "hop \(open.hop.hopIndex + 1) to \(onward.endpoint): \(error)", retryAfter: 5))
        }
        var passedUp = accept
        passedUp.chain.append(ChainEntry(hopIndex: open.hop.hopIndex, middleboxID: keys.identity.ed25519PublicKey.fingerprint))
        do {
            try hop.writeAll(try handshake.accept(passedUp))
        } catch {
            table.withLock { $0.forget(key, generation: session.generation) }
            downstream.abort()
            return hop.abort()
        }
        let now = ContinuousClock.now
        session = table.withLock { t in
            t.up(key, generation: session.generation, upstream: (local, remote),
                 downstream: (downstream.localEndpoint ?? local, onward.endpoint, onward.relayKey, onward.isLast), now: now)
            return t.sessions[key] ?? session
        }
        let worker = workers[nextWorker.wrappingAdd(1, ordering: .relaxed).oldValue % workers.count]
        do {
            var sealers: (upstream: HopSealer, downstream: HopSealer)?
            if open.hop.protection == .sealed, let up = handshake.sealing, let down = onwardSealing {
                sealers = (HopSealer(send: up.send, receive: up.receive), HopSealer(send: down.send, receive: down.receive))
            }
            let pair = try HopPair(
                key: key, generation: session.generation, upstream: hop, downstream: downstream, pipeSize: settings.pipeSize, sealers: sealers)
            placement.withLock { $0[key] = worker }
            worker.adopt(pair)
            if settings.verbose { log("session \(hex(key.sessionID)) hop \(key.hopIndex)→\(key.hopIndex + 1) up (\(remote) → \(onward.endpoint))") }
        } catch {
            table.withLock { $0.hopsEnded(key, generation: session.generation, clean: false, reason: "\(error)", now: now) }
        }
    }

    /// A first open needs the token the offering middlebox minted for this session, hop, key and
    /// target, at this relay endpoint (PROTOCOL.md 14.2).
    private func checkToken(open: HopOpen, upstreamKey: PublicKey, relayEndpoint: CSPEndpoint) throws(RelaySessionTable.Refusal) -> RelayToken {
        guard let token = open.relayToken else {
            throw RelaySessionTable.Refusal(.unknownSession, "no relay token and no such session here")
        }
        let binding = RelayToken.Binding(
            sessionID: open.hop.sessionID, hopIndex: open.hop.hopIndex, upstreamKey: upstreamKey,
            targetProtocol: open.target.proto.rawValue, target: open.target.endpoint, relayEndpoint: relayEndpoint)
        do {
            return try keys.tokenKey.check(token, for: binding, now: UInt64(Date().timeIntervalSince1970))
        } catch .expired {
            throw RelaySessionTable.Refusal(.unknownSession, "the relay token expired: signal again for a new offer")
        } catch {
            throw RelaySessionTable.Refusal(.authenticationFailed, "relay token: \(error)")
        }
    }
}

struct RelayError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
