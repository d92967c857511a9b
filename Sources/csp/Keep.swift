import ArgumentParser
import CSPHost
import CSPTrust
import CSPWire

#if canImport(Glibc)
import Glibc
#endif

extension CSPCommand {
    /// The session keeper (docs/PROTOCOL.md 6.1, 6.5, 6.7): keeps one signaled session alive for
    /// as long as it runs, and follows the host and the path.
    struct Keep: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Keep a session: refresh it, re-signal when the path changes, REBIND when the address moves.",
            discussion: """
                Refreshes at half the effective lifetime (±10 %); compares each answer's records with \
                the last ones and signals the whole session again (SETUP, same ID, next sequence) when a \
                middlebox restarted (epoch), appeared or left, or when a middlebox no longer knows the \
                session; REFRESHes at once when a middlebox multicasts an epoch the path does not \
                hold (docs/PROTOCOL.md 5.7.1: at most every 2 s, the answer decides); watches the \
                host's addresses (rtnetlink events) and sends REBIND from the new address when the \
                session's address goes away and another of its family comes up. One \
                JSON line per event on stdout. Exit 0 at the end of --duration, 1 when the session \
                could not be kept.
                """)
        @Argument(help: "Session ID (16 hex digits), set up with this csp (its flow is stored).") var session: String
        @Option(help: "Requested lifetime in seconds.") var lifetime: UInt32 = 60
        @Option(help: "Stop after this many seconds (0 = never).") var duration: Double = 0
        @OptionGroup var common: Common

        mutating func run() throws {
            let (id, entry, _) = try CSPCommand.stored(session, common)
            let key = try common.signingKey()
            var keeper = SessionKeeper(records: entry.records)
            let watcher = try AddressWatcher()
            // Unsolicited ANNOUNCEs of middlebox epochs (PROTOCOL.md 5.7.1): a reason to REFRESH at
            // once (a restarted middlebox, a HA pair's new active box), judged by the gate.
            var gate = EpochAnnouncementGate(pinned: try common.trust().pinned)
            let ownAddress = entry.flow.map { entry.incoming ? $0.destination : $0.source }
            var announcements: [UDPSocket] = []
            if let ownAddress {
                do {
                    announcements = [try UDPSocket.allHostsListener(near: ownAddress, port: common.cspPort)]
                } catch {
                    printError("epoch announcements will not be heard (the session is refreshed as usual): \(error)")
                }
            }
            let clock = ContinuousClock()
            let end = duration > 0 ? clock.now.advanced(by: .milliseconds(Int64(duration * 1000))) : nil
            var effective = lifetime
            var nextRefresh = clock.now.advanced(by: delay(effective))
            var lostAddress = false
            // The new address to REBIND to, until a REBIND from it succeeds (routes may come up
            // a moment after the address: retried every second).
            var moveTo: IPAddress?
            report(["event": "keeping", "session": hex(id)])
            while end.map({ clock.now < $0 }) ?? true {
                // A REBIND waiting to be retried (the route may come a moment after the address)
                // is retried within 100 ms, not after the next address event or refresh.
                let wait = moveTo == nil ? min(clock.now.duration(to: nextRefresh), .seconds(1)) : .milliseconds(100)
                let ready = try waitReadable(watcher, announcements, timeout: max(wait, .milliseconds(10)))
                if ready.sockets.first == true, let (bytes, from) = try? announcements[0].receive(timeout: .zero, maximumLength: 1500) {
                    if case .refreshNow(let middlebox, let epoch) = gate.consider(bytes, path: keeper.path, now: clock.now) {
                        report(["event": "announced", "session": hex(id), "middlebox": hex(middlebox), "epoch": "\(epoch)", "from": "\(from)"])
                        if !lostAddress, moveTo == nil { nextRefresh = clock.now }
                    }
                }
                for event in ready.watcher ? try watcher.next(timeout: .zero) : [] {
                    guard let flow = common.sessions.load(id)?.flow else { continue }
                    let own = entry.incoming ? flow.destination : flow.source
                    if event.kind == .removed, event.address == own {
                        // Make before break: another address of ours may be up already (added
                        // before the old one went); routing tells which one reaches the peer now.
                        let now = try? UDPSocket.sourceAddress(toward: CSPEndpoint(address: entry.peer, port: common.cspPort))
                        if let now, now != own, now.family == own.family {
                            moveTo = now
                        } else {
                            lostAddress = true
                        }
                    }
                    if event.kind == .added, lostAddress, event.isGlobal, event.address.family == own.family {
                        lostAddress = false
                        moveTo = event.address
                    }
                }
                if let target = moveTo, let flow = common.sessions.load(id)?.flow {
                    let own = entry.incoming ? flow.destination : flow.source
                    let (ok, answered) = (try? signal(.rebind, id: id, key: key, newAddress: target)) ?? (false, nil)
                    report(["event": ok ? "rebound" : "rebind-retry", "session": hex(id), "from": "\(own)", "to": "\(target)"])
                    if ok {
                        moveTo = nil
                        if let answered { effective = answered }
                        nextRefresh = clock.now.advanced(by: delay(effective))
                    }
                    continue
                }
                guard clock.now >= nextRefresh, !lostAddress else { continue }
                let (reply, reason) = (try? refresh(id: id, key: key, keeper: keeper)) ?? (nil, "REFRESH could not be sent")
                if let reason {
                    let (ok, answered) = (try? signal(.setup, id: id, key: key, newAddress: nil)) ?? (false, nil)
                    report(["event": ok ? "resignaled" : "resignal-failed", "session": hex(id), "reason": reason])
                    if ok, let answered { effective = answered }
                } else if let reply {
                    effective = reply
                    report(["event": "refreshed", "session": hex(id), "lifetime": "\(reply)"])
                }
                if let records = common.sessions.load(id)?.records {
                    keeper = SessionKeeper(records: records)
                }
                nextRefresh = clock.now.advanced(by: delay(effective))
            }
            report(["event": "stopped", "session": hex(id)])
        }

        func delay(_ lifetime: UInt32) -> Duration {
            .milliseconds(Int64(SessionKeeper.refreshDelay(lifetime: lifetime, jitter: Double.random(in: -1...1)) * 1000))
        }

        /// REFRESH; returns the effective lifetime granted, or why the session must be signaled again.
        func refresh(id: UInt64, key: SigningKey?, keeper: SessionKeeper) throws -> (UInt32?, String?) {
            guard let entry = common.sessions.load(id), let flow = entry.flow else { return (nil, "no stored flow") }
            let peer = entry.peer
            var request = CSPMessage(
                type: .refresh, flags: .recordRoute, sessionID: id, nonce: secureRandomUInt64(),
                sequence: common.sessions.nextSequence(for: id, peer: peer), tlvs: [.lifetime(lifetime)])
            // IDENTITY included: a middlebox that restarted and adopted the session from the kernel
            // no longer knows its key, and must still be able to check who refreshes it.
            if let key { request = try request.signed(by: key, timestamp: wallClockSeconds()) }
            let own = entry.incoming ? flow.destination : flow.source
            var client = SignalingClient(socket: try UDPSocket(family: peer.family, address: own))
            client.attempts = common.attempts
            guard let result = try? client.exchange(request, with: CSPEndpoint(address: peer, port: common.cspPort), signer: key) else {
                return (nil, "no answer to REFRESH")
            }
            guard result.reply.type == .accept else {
                return (nil, "REFRESH refused: \(result.reply.result)")
            }
            if let reason = keeper.reasonToResignal(result.reply.records) { return (nil, reason) }
            common.sessions.update(id) { $0.records = result.reply.records.map { ($0.middleboxID, $0.epoch) } }
            return (effectiveLifetime(of: result.reply), nil)
        }

        /// SETUP again (same ID, next sequence) or REBIND to `newAddress`; true with the lifetime on ACCEPT.
        func signal(_ type: CSPMessageType, id: UInt64, key: SigningKey?, newAddress: IPAddress?) throws -> (Bool, UInt32?) {
            guard let entry = common.sessions.load(id), let flow = entry.flow else { return (false, nil) }
            var action: CSPRequestedAction = [.admit, .allowRedirect]
            if entry.incoming { action.insert(.listen) }
            var tlvs: [CSPTLV] = [.flow(flow), .lifetime(lifetime), .requestedAction(action)]
            let end: FlowTuple.End = entry.incoming ? .destination : .source
            var moved = flow
            var from = flow.address(of: end)
            if let newAddress {
                let endpoint = CSPEndpoint(address: newAddress, port: entry.incoming ? flow.destinationPort : flow.sourcePort)
                tlvs.append(.newAddress(endpoint))
                moved = flow.moving(end, to: endpoint)
                from = newAddress
            }
            var request = CSPMessage(
                type: type, flags: .recordRoute, sessionID: id, nonce: secureRandomUInt64(),
                sequence: common.sessions.nextSequence(for: id, peer: entry.peer), tlvs: tlvs)
            if let key { request = try request.signed(by: key, timestamp: wallClockSeconds()) }
            var client = SignalingClient(socket: try UDPSocket(family: entry.peer.family, address: from))
            client.attempts = common.attempts
            guard let result = try? client.exchange(request, with: CSPEndpoint(address: entry.peer, port: common.cspPort), signer: key),
                result.reply.type == .accept
            else { return (false, nil) }
            common.sessions.update(id) {
                $0.flow = moved
                $0.records = result.reply.records.map { ($0.middleboxID, $0.epoch) }
            }
            return (true, effectiveLifetime(of: result.reply))
        }

        func report(_ fields: [String: String]) {
            if let event = fields["event"], let id = UInt64(session, radix: 16) {
                KeeperStatus(pid: getpid(), event: event, at: wallClockSeconds(), lifetime: UInt32(fields["lifetime"] ?? "") ?? lifetime)
                    .save(common.sessions, id)
            }
            // When, to the millisecond (wall clock): scripts measure how fast the keeper reacted.
            var time = timespec()
            clock_gettime(CLOCK_REALTIME, &time)
            var fields = fields
            fields["at"] = "\(time.tv_sec).\(String(1000 + time.tv_nsec / 1_000_000).dropFirst())"
            let body = fields.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\"\($0.value)\"" }.joined(separator: ",")
            print("{\(body)}")
            fflush(nil)
        }
    }
}
