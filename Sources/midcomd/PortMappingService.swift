#if canImport(Glibc)
import Glibc
#endif
import CSPHost
import CSPWire
import MidcomCore

/// NAT-PMP (RFC 6886) for hosts that do not speak CSP (issue 12): requests on UDP 5351 from
/// inside addresses become sessions of the same table, through the same policy and kernel schema
/// as a pinhole a CSP host asks of us. Its own thread; one engine call per request.
extension Daemon {
    func servePortMapping(on socket: UDPSocket) {
        var consecutiveErrors = 0
        while !stopping.load(ordering: .relaxed) {
            let received: (bytes: [UInt8], from: CSPEndpoint)?
            do {
                received = try socket.receive(timeout: .milliseconds(250), maximumLength: 1100)
                consecutiveErrors = 0
            } catch {
                consecutiveErrors += 1
                log.limited(.warning, category: "nat-pmp", "receiving on the NAT-PMP socket failed: \(error)")
                if consecutiveErrors > 10 { usleep(100_000) }  // a persistent error must not spin
                continue
            }
            guard let (bytes, from) = received else { continue }
            if let answer = answerPortMapping(bytes, from: from) {
                do { try socket.send(answer, to: from) } catch {
                    failedReplies.add(1, ordering: .relaxed)
                    log.limited(.warning, category: "nat-pmp", "cannot answer \(from): \(error)")
                }
            }
        }
    }

    /// The answer to one NAT-PMP datagram (nil: dropped, counted).
    func answerPortMapping(_ bytes: [UInt8], from: CSPEndpoint) -> [UInt8]? {
        let epoch = engine.withLock { $0.portMappingEpoch(wallClock: wallClock()) }
        // Only inside hosts are served (the ruleset's anti-spoofing keeps outside sources from
        // claiming inside addresses); to anyone else we say nothing.
        guard configuration.nat?.isInternal(from.address) ?? false else {
            malformedPackets.add(1, ordering: .relaxed)
            log.limited(.info, category: "nat-pmp", "NAT-PMP request from \(from) (not inside): ignored")
            return nil
        }
        let request: NATPMP.Request
        do {
            request = try NATPMP.parse(bytes)
        } catch .unsupportedVersion(let opcode) {
            // PCP (version 2) comes here too until it is served: the client falls back or gives up.
            return NATPMP.errorResponse(opcode: opcode, .unsupportedVersion, epoch: epoch)
        } catch .unsupportedOpcode(let opcode) {
            return NATPMP.errorResponse(opcode: opcode, .unsupportedOpcode, epoch: epoch)
        } catch {
            malformedPackets.add(1, ordering: .relaxed)
            log.limited(.info, category: "nat-pmp", "malformed NAT-PMP datagram from \(from) (\(bytes.count) bytes): dropped")
            return nil
        }
        switch request {
        case .externalAddress:
            let address = engine.withLock { $0.externalAddress }
            return NATPMP.externalAddressResponse(address == nil ? .networkFailure : .success, epoch: epoch, address: address)
        case .map(let proto, let internalPort, let suggested, let lifetime):
            let now = self.now()
            var outcome = engine.withLock {
                $0.handlePortMapping(
                    PortMappingRequest(
                        client: from.address, proto: proto, internalPort: internalPort, suggestedExternalPort: suggested,
                        lifetime: lifetime, origin: .natPMP),
                    now: now)
            }
            if let event = outcome.event { log.limited(.info, category: "nat-pmp", event) }
            do {
                try apply(outcome.kernel)
            } catch {
                // What the engine believes is installed is not: forget it, and say so.
                let undo = engine.withLock { engine in
                    engine.sessions.session(
                        for: FlowTuple(proto: proto, source: IPAddress(ipv4: 0), sourcePort: 0, destination: from.address, destinationPort: internalPort)
                    ).map { engine.forgetFailed(sessionID: $0.id) } ?? []
                }
                try? apply(undo)
                outcome = PortMappingOutcome(result: .outOfResources)
            }
            let result: NATPMP.Result =
                switch outcome.result {
                case .success: .success
                case .notAuthorized: .notAuthorized
                case .outOfResources: .outOfResources
                case .networkFailure: .networkFailure
                }
            return NATPMP.mapResponse(
                result, proto: proto, epoch: epoch, internalPort: internalPort, externalPort: outcome.externalPort,
                lifetime: outcome.lifetime)
        }
    }
}
