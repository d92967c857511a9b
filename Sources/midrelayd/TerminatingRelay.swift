#if canImport(Glibc)
import Glibc
#endif
import CSPHost
import CSPSession
import CSPTrust
import CSPWire
import Foundation
import MidcomRelay
import SystemSupport

/// A terminating relay (PROTOCOL.md 14.9): for a target without the session layer, the relay whose
/// offer said so (token modes 0x04) and whose host allowed it (HOP flag allow-terminating) is the
/// end-to-end responder itself — it answers message 1 with its own key (the host checks it is the
/// offering record's) and carries the session's octets to and from a plain TCP connection to the
/// target. It reads the stream: that is what the host agreed to.
extension RelayDaemon {
    func terminate(
        hop: TCPSocket, handshake: inout HopHandshakeDownstream, open: HopOpen, key: RelaySessionTable.Key, session: RelayedSession,
        local: CSPEndpoint, remote: CSPEndpoint, refuse: (RelaySessionTable.Refusal) -> Void
    ) {
        guard open.endToEnd.kind == .handshake1, !open.hop.flags.contains(.resume) else {
            // The end-to-end state lives here; a restart or a broken hop loses it (not resumable yet).
            table.withLock { $0.forget(key, generation: session.generation) }
            return refuse(RelaySessionTable.Refusal(.unknownSession, "a terminating relay does not resume sessions yet"))
        }
        var endToEnd = EndToEndSession(
            role: .responder, sessionID: open.hop.sessionID, target: open.target.encodedValue, identity: keys.identity, now: .now)
        let target: TCPSocket
        do {
            target = try TCPSocket.connect(to: open.target.endpoint, timeout: settings.limits.handshakeTimeout)
            let second = try endToEnd.answer(firstMessage: open.endToEnd.data)
            try hop.writeAll(
                try handshake.accept(
                    HopAccept(
                        endToEnd: EndToEndPart(kind: .handshake2, data: second),
                        chain: [ChainEntry(hopIndex: open.hop.hopIndex, middleboxID: keys.identity.ed25519PublicKey.fingerprint)])))
        } catch {
            table.withLock { $0.forget(key, generation: session.generation) }
            return refuse(RelaySessionTable.Refusal(.middleboxUnavailable, "target \(open.target.endpoint): \(error)", retryAfter: 5))
        }
        let now = ContinuousClock.now
        table.withLock {
            $0.up(key, generation: session.generation, upstream: (local, remote),
                  downstream: (target.localEndpoint ?? local, open.target.endpoint, nil, true), now: now)
        }
        if settings.verbose { log("session \(hex(key.sessionID)) hop \(key.hopIndex) terminated here → \(open.target.endpoint) (plain TCP)") }
        let hopSealer = open.hop.protection == .sealed ? handshake.sealing.map { HopSealer(send: $0.send, receive: $0.receive) } : nil
        // The session's own thread: it lives as long as the session, unlike the setup slot.
        let started = endToEnd
        let generation = session.generation
        Thread.detachNewThread { [self] in
            var session = started
            var sealer = hopSealer
            let fd = target.release()
            var input = SessionStreamPump.Input(descriptor: fd)
            var outputClosed = false
            var outcome = SessionStreamPump.run(
                session: &session, hop: hop, input: &input, output: -1, outputClosed: &outputClosed, sealer: &sealer, untilEstablished: true)
            if outcome == .established {
                let output = dup(fd)
                outcome = SessionStreamPump.run(
                    session: &session, hop: hop, input: &input, output: output, outputClosed: &outputClosed, sealer: &sealer)
                if !outputClosed { _ = Glibc.close(output) }  // the pump closes it only at the peer's CLOSE
            }
            let clean = outcome == .finished
            if clean { hop.close() } else { hop.closeAfterDraining() }
            _ = Glibc.close(fd)
            table.withLock {
                // Not resumable here (the end-to-end state ends with this thread): ended either way.
                $0.hopsEnded(key, generation: generation, clean: true, reason: clean ? "closed" : "\(outcome)", now: .now)
            }
            if settings.verbose { log("session \(hex(key.sessionID)) hop \(key.hopIndex): terminated session ended (\(outcome))") }
        }
    }
}
