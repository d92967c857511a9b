#if canImport(Glibc)
import Glibc
#endif
import CSPSession
import SystemSupport

/// Runs the stream phase of one end of a relayed session over its current hop: application octets
/// from `input` become DATA records, records from the hop become octets on `output`, timers fire.
/// Returns when the session ended (cleanly or failed) or the hop broke (the caller resumes).
///
/// One thread, poll(2) on the hop and the input: the hop socket is non-blocking (writes wait for
/// POLLOUT, so two ends writing large blocks at each other cannot deadlock); `output` is written
/// blocking — an application that stops reading stops the session, as with a plain socket.
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
            // Deliver what arrived.
            let received = session.takeReceived()
            if !received.isEmpty, !outputClosed { writeAll(output, received) }
            for message in session.takeMessages() where !outputClosed { writeAll(output, message) }
            if session.peerClosed, !outputClosed {
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
            case .closed where !outputPending:
                hop.shutdownWrite()
                return .finished
            default: break
            }

            var polls = [pollfd(fd: fd, events: Int16(POLLIN) | (outputPending ? Int16(POLLOUT) : 0), revents: 0)]
            let wantsInput = !input.ended && input.pending.isEmpty && input.pendingMessage == nil && session.canWrite
            if wantsInput, let descriptor = input.descriptor { polls.append(pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)) }
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
            if polls.count > 1, polls[1].revents != 0, let descriptor = input.descriptor {
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

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + written, bytes.count - written) }
            if n < 0, errno == EINTR { continue }
            if n <= 0 { return }
            written += n
        }
    }
}
