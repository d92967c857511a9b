#if canImport(Glibc)
import Glibc
#endif
import CSPHost
import CSPWire
import MidcomCore
import MidcomKernel
import Netfilter

/// One queued packet's walk: classify (signaling or first packet), parse outside the engine's
/// lock, one engine call, then the verdict; kernel changes wait for the burst's batch.
extension Daemon {
    /// `parseStorage`: the reader thread's message whose TLV storage each signaling message is
    /// parsed into (`CSPMessage.parse(_:into:)`), one per thread.
    func handle(_ packet: borrowing QueuedPacket, burst: BurstBatcher, parseStorage: inout CSPMessage) -> Verdict {
        let truncated = packet.originalLength > packet.payload.count
        guard let ip = try? IPPacketView(packet.payload, allowingTruncation: truncated) else {
            malformedPackets.add(1, ordering: .relaxed)
            let length = packet.payload.count
            log.limited(.warning, category: "malformed-ip", "dropped a queued packet that is not valid IPv4/IPv6 (\(length) bytes)")
            return .drop
        }
        // Ports read once: they decide signaling here and are the flow's for a first packet.
        let ports = ip.ports
        if ip.proto == .udp, let ports, isSignaling(ports, mark: packet.mark) {
            let source = CSPEndpoint(address: ip.source, port: ports.source)
            guard !ip.isTruncated else {
                // Larger than the copy range: nothing here can be judged; it travels on unprocessed
                // and creates no state (an answer to it will match nothing pending here).
                log.limited(.warning, category: "truncated", "signaling from \(source) larger than the queue copy range: forwarded unprocessed")
                return .accept(mark: signalingMark)
            }
            let udp: UDPDatagramView
            do {
                udp = try UDPDatagramView(ip)
            } catch {
                malformedPackets.add(1, ordering: .relaxed)
                log.limited(.warning, category: "malformed-ip", "dropped signaling from \(source) with a bad UDP header: \(error)")
                return .drop
            }
            return handleSignaling(
                udp, id: packet.id, burst: burst, parseStorage: &parseStorage, insideConntrack: packet.mark == cspReplyMark)
        }
        return handleFirstPacket(ip, flow: ip.flow(ports: ports), id: packet.id, burst: burst)
    }

    /// Whether anyone would see an outcome's event line: the log at info, or a `midctl monitor`.
    var wantsEventLines: Bool { events.isListened || log.threshold >= .info }

    /// Requests go to a CSP port; answers come from one, and count as signaling only inside a
    /// conntrack entry of a request that went out (queue_hook marks them).
    func isSignaling(_ ports: (source: UInt16, destination: UInt16), mark: UInt32) -> Bool {
        ports.destination == configuration.cspPort || (ports.source == configuration.cspPort && mark == cspReplyMark)
    }

    func handleSignaling(
        _ udp: UDPDatagramView, id: UInt32, burst: BurstBatcher, parseStorage: inout CSPMessage, insideConntrack: Bool = false
    ) -> Verdict {
        let source = CSPEndpoint(address: udp.packet.source, port: udp.sourcePort)
        let destination = CSPEndpoint(address: udp.packet.destination, port: udp.destinationPort)
        let now = self.now()
        let outcome: SignalingOutcome
        var described: (type: CSPMessageType, session: UInt64)?
        do {
            // Parsed and verified here, outside the engine's lock (Ed25519 costs tens of µs).
            let parseStart = metrics == nil ? nil : ContinuousClock.now
            // The storage moves into the request and back after the engine's call: a copy left
            // behind would share it, and the parse would then allocate.
            var storage = CSPMessage.empty
            swap(&storage, &parseStorage)
            var request = try SignalingRequest(
                parsing: udp.payload, source: source, entry: .intercepted(destination: destination), wallClock: wallClock(),
                reusing: consume storage)
            if let metrics, let parseStart {
                let took = parseStart.duration(to: .now)
                (request.message.flags.contains(.signed) ? metrics.parseSigned : metrics.parseUnsigned).record(took)
            }
            described = (request.message.type, request.message.sessionID)
            request.insideConntrack = insideConntrack
            let describing = wantsEventLines
            outcome = engine.withLock {
                $0.describesEvents = describing
                return $0.handle(request, now: now)
            }
            parseStorage = request.message
        } catch {
            if udp.payload.isEmpty, let probe = discoveryProbe(udp.packet) {
                // An empty datagram to a CSP port carrying the discovery option is the recommended
                // probe (docs/PROTOCOL.md 9.2): answered, then passed on like any probe.
                answerDiscovery(probe, in: udp.packet)
                return .accept(mark: signalingMark)
            }
            outcome = engine.withLock { $0.malformed(from: source, addressedToUs: false, error: error) }
        }
        if let event = outcome.event {
            log.limited(.info, category: "signaling", event)
            if let described { events.publish(Self.eventKind(of: described.type, outcome), session: described.session, event) }
        }
        var verdict: Verdict
        switch outcome.verdict {
        case .forward:
            verdict = .accept(mark: signalingMark)
        case .drop:
            verdict = .drop
        case .forwardRewritten(let message):
            do {
                verdict = .accept(mark: signalingMark, replacingPayloadWith: try PacketBuilder.replacingUDPPayload(of: udp, with: message))
            } catch {
                // Forwarding the original would pass on a message without the record the engine
                // believes it carries: the outcome's failure plan applies instead.
                log.limited(.warning, category: "rewrite", "could not rewrite signaling from \(source) (\(error)): dropped")
                return rewriteFailed(outcome, burst: burst)
            }
        }
        if !outcome.kernel.isEmpty {
            // Programmed with the rest of the burst, before any verdict of it leaves; the reply
            // (e.g. REDIRECT) waits too, so the host never acts on state that is not there yet.
            burst.add(.init(packetID: id, changes: outcome.kernel, reply: outcome.reply, plan: outcome.onKernelFailure))
        } else if let reply = outcome.reply {
            send(reply)
        }
        return verdict
    }

    /// The packet could not carry the engine's rewrite: nothing of the outcome is programmed, and
    /// its failure plan (e.g. forget the session and refuse in the responder's name) applies.
    func rewriteFailed(_ outcome: SignalingOutcome, burst: BurstBatcher) -> Verdict {
        engine.withLock { $0.countRewriteFailure() }
        return burst.carryOut(outcome.onKernelFailure, reply: nil) ?? .drop
    }

    func handleFirstPacket(_ ip: IPPacketView, flow: FlowTuple, id: UInt32, burst: BurstBatcher) -> Verdict {
        // Discovery rides on first packets, which are queued anyway: answer, then decide the
        // packet like any other.
        if let probe = discoveryProbe(ip) { answerDiscovery(probe, in: ip) }
        let decision = engine.withLock { $0.handleUnsignaled(flow: flow, now: now()) }
        if events.isListened || log.threshold >= .debug {
            let what: String =
                switch decision {
                case .drop: "dropped"
                case .defaultPolicy: "handed to the default policy"
                case .admit: "admitted (legacy)"
                }
            log.limited(.debug, category: "unsignaled", "unsignaled \(flow) \(what)")
            events.publish("unsignaled", "unsignaled \(flow) \(what)")
        }
        switch decision {
        case .drop(let cache):
            // The kernel drops the rest of the flow; a failure only costs more queued packets.
            if let cache { burst.add(.init(packetID: id, change: cache, reply: nil, plan: .ignore)) }
            return .drop
        case .defaultPolicy:
            return .accept
        case .admit(let change):
            burst.add(.init(packetID: id, change: change, reply: nil, plan: .defaultPolicy))
            return .accept(mark: admittedMark)
        }
    }

    /// The discovery option with the query flag, if the packet carries one. A malformed option
    /// list is not our business: the packet is judged on its flow alone.
    func discoveryProbe(_ ip: IPPacketView) -> (option: CSPDiscoveryOption, encoding: CSPDiscoveryOption.Encoding)? {
        guard let found = try? CSPDiscoveryOption.find(in: ip), found.option.flags.contains(.query) else { return nil }
        return found
    }

    func answerDiscovery(_ found: (option: CSPDiscoveryOption, encoding: CSPDiscoveryOption.Encoding), in ip: IPPacketView) {
        let destination = CSPEndpoint(address: ip.source, port: found.option.effectiveReplyPort)
        let now = self.now()
        if let announce = engine.withLock({ $0.announce(to: destination, nonce: found.option.nonce, triggerLength: ip.totalLength, now: now) }) {
            send(announce)
            log.limited(.info, category: "discovery", "ANNOUNCE to \(destination) (\(found.encoding) discovery option)")
        }
    }

    /// Queues an answer for the reply thread (bounded: a flood of answers is counted, not queued).
    func send(_ outgoing: OutgoingMessage) {
        if !replies.enqueue(outgoing) {
            failedReplies.add(1, ordering: .relaxed)
            log.limited(.warning, category: "reply", "reply queue full: \(outgoing.message.type) to \(outgoing.destination) not sent")
        }
    }

    /// The mark of answers sent in another host's name (0x4d43 "MC", 4).
    static let answerMark: UInt32 = 0x4d43_0004

    /// Sends one answer; runs on the reply thread.
    func transmit(_ outgoing: OutgoingMessage, sockets: inout TransparentSockets) {
        do {
            let bytes = try outgoing.message.serialize()
            let family = outgoing.destination.address.family
            if let source = outgoing.source, source.address.family == family {
                // Answering in the responder's place: from its address, so the reply passes the
                // conntrack/NAT state of the middleboxes nearer the host (docs/PROTOCOL.md 2.3).
                // One socket per answering endpoint, kept: a flood of CHALLENGEs to spoofed sources
                // all leave in the name of the few servers they were addressed to.
                do {
                    try sockets.socket(for: source).send(bytes, to: outgoing.destination)
                    return
                } catch {
                    log.limited(.warning, category: "reply", "cannot answer as \(source) (\(error)); answering from our own address")
                }
            }
            guard let socket = agents[family] else {
                throw DaemonError("no CSP socket for \(family)")
            }
            try socket.send(bytes, to: outgoing.destination)
        } catch {
            failedReplies.add(1, ordering: .relaxed)
            log.limited(.warning, category: "reply", "could not send \(outgoing.message.type) to \(outgoing.destination): \(error)")
        }
    }

    /// Serves CSP requests addressed to this middlebox (incoming pinholes from any peer) through
    /// the same pipeline as intercepted ones. Waits for a datagram without a timeout: an idle
    /// gateway wakes this thread for nothing (a 250 ms timeout before, four wake-ups a second per
    /// family); the thread is detached and ends with the process, and one woken after `stop`
    /// serves nothing.
    func serveLocalRequests(on socket: UDPSocket) {
        var consecutiveErrors = 0
        while !stopping.load(ordering: .relaxed) {
            let received: (bytes: [UInt8], from: CSPEndpoint)?
            do {
                received = try socket.receive(timeout: nil)
                consecutiveErrors = 0
            } catch {
                consecutiveErrors += 1
                log.limited(.warning, category: "agent", "receiving on the CSP socket failed: \(error)")
                if consecutiveErrors > 10 { usleep(100_000) }  // a persistent error must not spin
                continue
            }
            guard let received, !stopping.load(ordering: .relaxed) else { continue }
            let now = self.now()
            let outcome: SignalingOutcome
            var described: (type: CSPMessageType, session: UInt64)?
            do {
                let request = try received.bytes.withUnsafeBytes {
                    try SignalingRequest(parsing: $0, source: received.from, entry: .addressedToUs, wallClock: wallClock())
                }
                described = (request.message.type, request.message.sessionID)
                let describing = wantsEventLines
                outcome = engine.withLock {
                    $0.describesEvents = describing
                    return $0.handle(request, now: now)
                }
            } catch {
                outcome = engine.withLock { $0.malformed(from: received.from, addressedToUs: true, error: error) }
            }
            if let event = outcome.event {
                log.limited(.info, category: "signaling", event)
                if let described { events.publish(Self.eventKind(of: described.type, outcome), session: described.session, event) }
            }
            do {
                try apply(outcome.kernel)
            } catch {
                agentFailure(outcome.onKernelFailure)
                continue
            }
            if let reply = outcome.reply { send(reply) }
        }
    }

    /// An agent request's changes failed: carry out its plan (there is no packet to re-verdict).
    func agentFailure(_ plan: KernelFailurePlan) {
        guard let (sessionID, refusal) = plan.refusal else { return }
        let undo = engine.withLock { $0.forgetFailed(sessionID: sessionID) }
        try? apply(undo)  // best effort; counted and logged by apply
        if let refusal { send(refusal) }
    }
}

/// The reply thread's IP_TRANSPARENT sockets, one per endpoint we answer in the name of (bounded;
/// all are closed when the bound is reached, which a flood of distinct responders can cause).
struct TransparentSockets {
    private var byEndpoint: [CSPEndpoint: UDPSocket] = [:]
    static let limit = 256

    mutating func socket(for endpoint: CSPEndpoint) throws -> UDPSocket {
        if let socket = byEndpoint[endpoint] { return socket }
        if byEndpoint.count >= Self.limit { byEndpoint.removeAll() }
        let socket = try UDPSocket(
            family: endpoint.address.family, address: endpoint.address, port: endpoint.port, reuseAddress: true, transparent: true)
        // Untracked (nft-rules/midcom.nft, chain answers_untracked): a conntrack entry made by
        // these datagrams would capture the host's next packets of the same 5-tuple, e.g. the
        // SETUP it repeats after a CHALLENGE, and keep them from NAT.
        try socket.setOption(level: SOL_SOCKET, name: SO_MARK, bytes: withUnsafeBytes(of: Daemon.answerMark) { Array($0) })
        byEndpoint[endpoint] = socket
        return socket
    }
}
