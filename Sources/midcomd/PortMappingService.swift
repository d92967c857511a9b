#if canImport(Glibc)
import Glibc
#endif
import CSPHost
import CSPWire
import MidcomCore
import SystemSupport

/// NAT-PMP (RFC 6886) and PCP (RFC 6887) for hosts that do not speak CSP (issue 12): requests on
/// UDP 5351 from inside addresses become sessions of the same table, through the same policy and
/// kernel schema as a pinhole a CSP host asks of us. The first octet (the version) says which
/// protocol: 0 NAT-PMP, anything else PCP (which answers versions it does not speak with its
/// own). Its own thread; one engine call per request.
extension Daemon {
    func servePortMapping(on socket: UDPSocket) {
        var consecutiveErrors = 0
        // RFC 6886 3.2.1: after a restart (state lost) the gateway tells its hosts its address and
        // new epoch, to 224.0.0.1:5350 on each inside interface, ten times, 250 ms apart doubling.
        var announcements = 0
        var nextAnnouncement = ContinuousClock.now
        while !stopping.load(ordering: .relaxed) {
            if announceRequested.exchange(false, ordering: .relaxed) {
                announcements = 0
                nextAnnouncement = .now
            }
            if announcements < 10, ContinuousClock.now >= nextAnnouncement {
                announce(on: socket)
                announcements += 1
                nextAnnouncement = ContinuousClock.now.advanced(by: .milliseconds(250 << (announcements - 1)))
            }
            // Sleep until a request comes, the next announcement is due, or `midctl announce` or
            // `stop` wakes us (portMappingWake): an idle gateway's CPU is not woken for nothing.
            let received: (bytes: [UInt8], from: CSPEndpoint)?
            do {
                let timeout = announcements < 10 ? nextAnnouncement - ContinuousClock.now : nil
                received = try socket.receive(timeout: timeout, maximumLength: 1100, wakingOn: portMappingWake.fd)
                consecutiveErrors = 0
            } catch {
                consecutiveErrors += 1
                log.limited(.warning, category: "nat-pmp", "receiving on the NAT-PMP socket failed: \(error)")
                if consecutiveErrors > 10 { usleep(100_000) }  // a persistent error must not spin
                continue
            }
            guard let (bytes, from) = received else {
                // Timed out or woken. Drained before the loop reads `announceRequested` again: a
                // request stored after that read signals after this drain, so it wakes the next wait.
                portMappingWake.drain()
                continue
            }
            let answer = bytes.first == NATPMP.version ? answerPortMapping(bytes, from: from) : answerPCP(bytes, from: from)
            if let answer {
                do { try socket.send(answer, to: from) } catch {
                    failedReplies.add(1, ordering: .relaxed)
                    log.limited(.warning, category: "nat-pmp", "cannot answer \(from): \(error)")
                }
            }
        }
    }

    /// The announcement of our (new) epoch, once on each interface with an inside address: the
    /// NAT-PMP external-address response (RFC 6886 3.2.1) and the PCP ANNOUNCE (RFC 6887 14.1.3),
    /// so clients of either protocol re-map what a restart may have lost.
    func announce(on socket: UDPSocket) {
        guard let nat = configuration.nat else { return }
        let epoch = engine.withLock { $0.portMappingEpoch(wallClock: wallClock()) }
        let natPMP = NATPMP.externalAddressResponse(.success, epoch: epoch, address: nat.externalAddress)
        let pcp = PCP.response(opcode: PCP.Opcode.announce.rawValue, result: .success, lifetime: 0, epoch: epoch, mapping: nil)
        let group = CSPEndpoint(address: IPAddress(ipv4: 0xe000_0001), port: NATPMP.clientPort)
        for address in Self.localAddresses().map(\.address) where address.family == .ipv4 && nat.isInternal(address) {
            do {
                // IP_MULTICAST_IF (32): leave by the interface that has this address.
                try socket.setOption(level: Int32(IPPROTO_IP), name: 32, bytes: address.bytes)
                try socket.send(natPMP, to: group)
                try socket.send(pcp, to: group)
            } catch {
                log.limited(.warning, category: "nat-pmp", "cannot announce the external address via \(address): \(error)")
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
            // Only version-0 datagrams come here (every other version goes to PCP); the parser checks anyway.
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
            if let event = outcome.event {
                log.limited(.info, category: "nat-pmp", event)
                events.publish("map", event)
            }
            installed(&outcome, flow: FlowTuple(proto: proto, source: IPAddress(ipv4: 0), sourcePort: 0, destination: from.address, destinationPort: internalPort))
            let result: NATPMP.Result =
                switch outcome.result {
                case .success: .success
                case .notAuthorized, .cannotProvideExternal: .notAuthorized
                case .outOfResources: .outOfResources
                case .networkFailure: .networkFailure
                }
            return NATPMP.mapResponse(
                result, proto: proto, epoch: epoch, internalPort: internalPort, externalPort: outcome.externalPort,
                lifetime: outcome.lifetime)
        }
    }

    /// Applies a mapping's kernel changes; when they fail, what the engine believes is installed
    /// is not: the session is forgotten and the client told we are out of resources.
    func installed(_ outcome: inout PortMappingOutcome, flow: FlowTuple) {
        do {
            try apply(outcome.kernel)
        } catch {
            let undo = engine.withLock { engine in
                engine.sessions.session(for: flow).map { engine.forgetFailed(sessionID: $0.id) } ?? []
            }
            try? apply(undo)
            outcome = PortMappingOutcome(result: .outOfResources)
        }
    }

    /// The answer to one PCP datagram (RFC 6887; nil: dropped, counted). Errors are answered
    /// with the request's own fields and a 30 s error lifetime.
    func answerPCP(_ bytes: [UInt8], from: CSPEndpoint) -> [UInt8]? {
        let epoch = engine.withLock { $0.portMappingEpoch(wallClock: wallClock()) }
        guard configuration.nat?.isInternal(from.address) ?? false else {
            malformedPackets.add(1, ordering: .relaxed)
            log.limited(.info, category: "pcp", "PCP request from \(from) (not inside): ignored")
            return nil
        }
        let request: PCP.Request
        do {
            request = try PCP.parse(bytes)
        } catch .answer(let result, let opcode) {
            malformedPackets.add(1, ordering: .relaxed)
            log.limited(.info, category: "pcp", "PCP request from \(from): \(result)")
            return PCP.response(opcode: opcode, result: result, lifetime: 30, epoch: epoch, mapping: nil)
        } catch {
            malformedPackets.add(1, ordering: .relaxed)
            log.limited(.info, category: "pcp", "malformed PCP datagram from \(from) (\(bytes.count) bytes): dropped")
            return nil
        }
        let opcode = request.opcode.rawValue
        func refuse(_ result: PCP.Result) -> [UInt8] {
            PCP.response(opcode: opcode, result: result, lifetime: 30, epoch: epoch, mapping: request.mapping)
        }
        // Only a client's own address is mapped: no THIRD_PARTY, and the address it wrote must be
        // the one we see (a NAT between it and us would make the mapping useless to it).
        guard request.clientAddress == from.address else { return refuse(.addressMismatch) }
        if request.options.thirdParty { return refuse(.notAuthorized) }
        if request.options.unsupported != nil { return refuse(.unsupportedOption) }
        guard let mapping = request.mapping else {
            return PCP.response(opcode: opcode, result: .success, lifetime: 0, epoch: epoch, mapping: nil)
        }
        guard mapping.proto == IPProtocol.udp.rawValue || mapping.proto == IPProtocol.tcp.rawValue else {
            return refuse(.unsupportedProtocol)
        }
        // Internal port 0 would map every port of the client: not offered.
        guard mapping.internalPort != 0 else { return refuse(.notAuthorized) }
        if let peer = mapping.peer, peer.port == 0 || peer.address.isUnspecified { return refuse(.malformedRequest) }
        let suggested = mapping.suggestedExternalAddress
        var portMapping = PortMappingRequest(
            client: from.address, proto: IPProtocol(rawValue: mapping.proto), internalPort: mapping.internalPort,
            suggestedExternalPort: mapping.suggestedExternalPort, lifetime: request.requestedLifetime, origin: .pcp,
            nonce: mapping.nonce, peer: mapping.peer)
        portMapping.preferFailure = request.options.preferFailure
        portMapping.suggestedExternalAddress = suggested.isUnspecified ? nil : suggested
        let now = self.now()
        var outcome = engine.withLock { $0.handlePortMapping(portMapping, now: now) }
        if let event = outcome.event {
            log.limited(.info, category: "pcp", event)
            events.publish("map", event)
        }
        installed(&outcome, flow: portMapping.flow)
        switch outcome.result {
        case .success:
            let external = engine.withLock { $0.externalAddress }
            let deleted = request.requestedLifetime == 0
            return PCP.response(
                opcode: opcode, result: .success, lifetime: outcome.lifetime, epoch: epoch, mapping: mapping,
                externalPort: deleted ? mapping.suggestedExternalPort : outcome.externalPort,
                externalAddress: deleted ? nil : external)
        case .notAuthorized: return refuse(.notAuthorized)
        case .outOfResources: return refuse(.noResources)
        case .networkFailure: return refuse(.networkFailure)
        case .cannotProvideExternal: return refuse(.cannotProvideExternal)
        }
    }
}
