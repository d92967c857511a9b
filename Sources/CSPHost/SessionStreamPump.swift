#if canImport(Glibc)
import Glibc
#endif
import CSPSession
import SystemSupport

/// Runs the stream phase of one end of a relayed session over its current hop: application octets
/// from `input` become DATA records, records from the hop become octets on `output`, timers fire.
/// Returns when the session ended (cleanly or failed) or the hop broke (the caller resumes).
///
/// One thread, poll(2) on the hop, the input and the output: the hop socket is non-blocking (writes
/// wait for POLLOUT, so two ends writing large blocks at each other cannot deadlock). The
/// application's descriptors above 2 are made non-blocking too: the output is written as the
/// application takes octets while the hop is still read, so an application that waits for us to
/// read what it writes before it reads more (an echo, a server answering pipelined requests)
/// never waits on us while we wait on it. What it has not taken is not acknowledged
/// (EndToEndSession.delivered): the peer's send buffer bounds it. Standard descriptors (a
/// terminal, a shell's pipe, shared with other processes) stay blocking: a reader that stops
/// stops the session, as with a plain socket.
public enum SessionStreamPump {
    public enum Outcome: Equatable, Sendable {
        /// Both directions closed; the hop was shut down (FIN).
        case finished
        /// The hop ended before the session did (EOF, RST, timeout): resume on a new hop.
        case hopBroke(String)
        /// The session failed closed; the reason is the session's `failure`.
        case failed
        /// The responder read message 3 (asked for with `untilEstablished`): the initiator's key is
        /// known, so the application can be chosen.
        case established
    }

    /// State that outlives one hop: input read but not yet taken by the session, and whether the
    /// input has ended (so a resumed hop does not read it again).
    public struct Input: Sendable {
        public let descriptor: Int32?
        /// Each read of the descriptor is one application message (a SOCK_SEQPACKET socket):
        /// carried as a MESSAGE record, delivered whole (the datagram API, PROTOCOL.md 14.11).
        public let messages: Bool
        var pending: [UInt8] = []
        var pendingMessage: [UInt8]?
        var ended = false
        var closeSent = false
        public init(descriptor: Int32?, messages: Bool = false) {
            self.descriptor = descriptor
            self.messages = messages
            ended = descriptor == nil
        }
    }

    public static func run(
        session: inout EndToEndSession, hop: TCPSocket, input: inout Input, output: Int32,
        outputClosed: inout Bool, sealer: inout HopSealer?, untilEstablished: Bool = false
    ) -> Outcome {
        let fd = hop.descriptor
        try? TCPOptions.setNonBlocking(fd)
        if output > STDERR_FILENO { try? TCPOptions.setNonBlocking(output) }
        if let descriptor = input.descriptor, descriptor > STDERR_FILENO { try? TCPOptions.setNonBlocking(descriptor) }
        var buffer = [UInt8](repeating: 0, count: 65536)
        // A sealed hop: the session's octets sealed once more for this hop, waiting to be sent.
        var sealedOut: [UInt8] = []
        var opened: [UInt8] = []
        while true {
            // Before anything is delivered: records that arrived with message 3 wait for the
            // application the caller attaches now.
            if untilEstablished, session.phase != .handshaking, session.phase != .failed { return .established }
            let now = ContinuousClock.now
            session.tick(now: now)
            feedInput(&session, &input, now: now)
            // Deliver what arrived, as far as the application takes it now.
            deliver(&session, to: output, outputClosed: &outputClosed, now: now)
            let undelivered = !session.pendingOctets.isEmpty || !session.pendingMessages.isEmpty
            if session.peerClosed, !undelivered, !outputClosed, output >= 0 {
                outputClosed = true
                // The application reads end of file: the peer's clean CLOSE. A socket (csp serve
                // --forward) gets a FIN even if another descriptor still refers to it.
                _ = shutdown(output, Int32(SHUT_WR))
                _ = close(output)
            }
            // Send what is queued (sealed for the hop first, when it is a sealed hop).
            if sealer != nil, !session.output.isEmpty {
                do { try sealer!.seal(session.output, into: &sealedOut) } catch { return .hopBroke("seal: \(error)") }
                session.consumeOutput(session.output.count)
            }
            if sealer != nil ? !sealedOut.isEmpty : !session.output.isEmpty {
                let sent =
                    sealer != nil
                    ? sealedOut.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
                    : session.output.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
                if sent > 0 {
                    if sealer != nil { sealedOut.removeFirst(sent) } else { session.consumeOutput(sent) }
                } else if sent < 0, errno != EAGAIN, errno != EINTR {
                    if session.phase == .failed { return .failed }
                    return .hopBroke("send: \(SystemCallError.text(errno))")
                }
            }
            let outputPending = !session.output.isEmpty || !sealedOut.isEmpty
            switch session.phase {
            case .failed where !outputPending:
                hop.shutdownWrite()
                return .failed
            case .closed where !outputPending && (!undelivered || outputClosed):
                hop.shutdownWrite()
                return .finished
            default: break
            }

            // The hop is read unless the application left a receive buffer's worth untaken (a
            // peer within its send buffer never gets there); the output is watched while it lags.
            let hopEvents = (session.receiveWindowFull ? 0 : Int16(POLLIN)) | (outputPending ? Int16(POLLOUT) : 0)
            var polls = [pollfd(fd: fd, events: hopEvents, revents: 0)]
            let wantsInput = !input.ended && input.pending.isEmpty && input.pendingMessage == nil && session.canWrite
            var inputIndex: Int?
            if wantsInput, let descriptor = input.descriptor {
                inputIndex = polls.count
                polls.append(pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0))
            }
            if undelivered, output >= 0, !outputClosed { polls.append(pollfd(fd: output, events: Int16(POLLOUT), revents: 0)) }
            var timeout: Int32 = 1000
            if let deadline = session.nextDeadline {
                let left = deadline - ContinuousClock.now
                timeout = Int32(clamping: max(0, min(1000, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)))
            }
            let ready = poll(&polls, nfds_t(polls.count), timeout)
            if ready < 0, errno != EINTR { return .hopBroke("poll: \(SystemCallError.text(errno))") }
            if ready <= 0 { continue }

            if polls[0].revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                let got = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                if got > 0, sealer != nil {
                    do { try sealer!.open(buffer[0..<got], into: &opened) } catch {
                        // Tampering on a sealed link breaks the hop; resumption repairs it (14.6).
                        return .hopBroke("\(error)")
                    }
                    session.receive(opened, now: .now)
                    opened.removeAll(keepingCapacity: true)
                } else if got > 0 {
                    session.receive(buffer[0..<got], now: .now)
                } else if got == 0 {
                    if session.phase == .closed || session.phase == .failed { return session.phase == .failed ? .failed : .finished }
                    session.tick(now: .now)
                    return .hopBroke("end of file before the session's CLOSE")
                } else if errno != EAGAIN, errno != EINTR {
                    return .hopBroke("receive: \(SystemCallError.text(errno))")
                }
            }
            if let inputIndex, polls[inputIndex].revents != 0, let descriptor = input.descriptor {
                let limit = input.messages ? EndToEndSession.maximumDataLength : buffer.count
                let got = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, limit) }
                if got > 0, input.messages {
                    input.pendingMessage = Array(buffer[0..<got])
                } else if got > 0 {
                    input.pending = Array(buffer[0..<got])
                } else if got == 0 || (errno != EAGAIN && errno != EINTR) {
                    input.ended = true
                }
            }
        }
    }

    /// Hands pending input to the session, and the input's end as CLOSE once all of it is sealed.
    private static func feedInput(_ session: inout EndToEndSession, _ input: inout Input, now: ContinuousClock.Instant) {
        guard session.phase == .established else { return }
        if let message = input.pendingMessage, session.send(message: message, now: now) {
            input.pendingMessage = nil
        }
        if !input.pending.isEmpty {
            let taken = session.write(input.pending, now: now)
            input.pending.removeFirst(taken)
        }
        if input.ended, input.pending.isEmpty, input.pendingMessage == nil, !input.closeSent {
            input.closeSent = true
            session.close(now: now)
        }
    }

    /// Writes what the session received to the application until it would block (EAGAIN on a
    /// non-blocking output) and tells the session what was taken. An application that went away
    /// (EPIPE, any other error) has its output closed; what arrives afterwards is dropped (and
    /// acknowledged: the peer must not wait for a reader that is gone).
    private static func deliver(_ session: inout EndToEndSession, to output: Int32, outputClosed: inout Bool, now: ContinuousClock.Instant) {
        guard output >= 0 else { return }  // no application attached yet: records wait in the session
        if outputClosed {
            session.delivered(octets: session.pendingOctets.count, messages: session.pendingMessages.count, now: now)
            return
        }
        var octets = 0
        var broken = false
        let pending = session.pendingOctets
        while octets < pending.count {
            let n = pending.withUnsafeBytes { write(output, $0.baseAddress! + octets, $0.count - octets) }
            if n > 0 {
                octets += n
            } else if n < 0, errno == EINTR {
                continue
            } else {
                broken = n == 0 || errno != EAGAIN
                break
            }
        }
        var messages = 0
        if !broken {
            for message in session.pendingMessages {
                let n = message.withUnsafeBytes { write(output, $0.baseAddress, $0.count) }
                if n < 0, errno == EAGAIN || errno == EINTR { break }
                if n < 0 {
                    broken = true
                    break
                }
                messages += 1
            }
        }
        session.delivered(octets: octets, messages: messages, now: now)
        if broken {
            outputClosed = true
            _ = close(output)
            session.delivered(octets: session.pendingOctets.count, messages: session.pendingMessages.count, now: now)
        }
    }
}
