import CSPWire
import Foundation
import MidcomControl
import MidcomRelay

/// midrelayd's control socket (the JSON-lines protocol of midcomd's): `sessions` lists the relayed
/// sessions with both hops and their counters, `delete SESSION` ends one at the relay (both hops
/// aborted; a resume learns "deleted by operator"), `status` gives the counts.
extension RelayDaemon {
    func startControl(path: String) throws {
        let server = try ControlServer(path: path, log: { [self] line in log("control: \(line)") }) { [self] request in
            answer(request)
        }
        Thread.detachNewThread { server.run() }
    }

    func answer(_ request: ControlRequest) -> ControlResponse {
        let now = ContinuousClock.now
        switch request.command {
        case .sessions:
            let sessions = table.withLock { Array($0.sessions.values) }.sorted { $0.started < $1.started }
            return ControlResponse(ok: true, relayed: sessions.map { record(of: $0, now: now) })
        case .delete:
            guard let id = request.sessionID, let sessionID = UInt64(id, radix: 16) else {
                return ControlResponse(ok: false, error: "delete needs a session ID (16 hex digits)")
            }
            let keys = table.withLock { t -> [RelaySessionTable.Key] in
                let matching = t.sessions.keys.filter { $0.sessionID == sessionID }
                for key in matching {
                    t.hopsEnded(key, generation: t.sessions[key]?.generation ?? 0, clean: false, reason: "deleted by operator", now: now)
                }
                return matching
            }
            guard !keys.isEmpty else { return ControlResponse(ok: false, error: "no relayed session \(id)") }
            for key in keys { workerHolding(key)?.abort(key) }
            return ControlResponse(ok: true, affected: [id])
        case .status:
            let sessions = table.withLock { Array($0.sessions.values) }
            let up = sessions.count(where: { $0.state == .up })
            let broken = sessions.count(where: { $0.state == .broken })
            let octets = sessions.reduce(UInt64(0)) { $0 + $1.octetsUp + $1.octetsDown }
            let resumed = sessions.reduce(0) { $0 + $1.resumptions }
            return ControlResponse(
                ok: true,
                message: "relay_sessions \(up) relay_sessions_broken \(broken) relay_resumptions \(resumed) relay_bytes \(octets) relay_refused \(refusedCount.load(ordering: .relaxed))")
        default:
            return ControlResponse(ok: false, error: "midrelayd answers sessions, delete and status")
        }
    }

    private func record(of session: RelayedSession, now: ContinuousClock.Instant) -> RelayedSessionRecord {
        let hopIn = RelayedSessionRecord.Hop(
            index: Int(session.hopIndex), local: session.upstream.map { "\($0.local)" }, remote: session.upstream.map { "\($0.remote)" },
            key: session.upstreamKey.text)
        let hopOut = session.downstream.map {
            RelayedSessionRecord.Hop(index: Int(session.hopIndex) + 1, local: "\($0.local)", remote: "\($0.remote)", key: $0.key?.text, last: $0.last)
        }
        return RelayedSessionRecord(
            session: hex(session.sessionID), hopIn: hopIn, hopOut: hopOut, protection: session.protection == .sealed ? "sealed" : "clear",
            bytesUp: session.octetsUp, bytesDown: session.octetsDown, idleSeconds: seconds(now - session.lastActivity),
            ageSeconds: seconds(now - session.started), resumptions: session.resumptions, state: session.state.rawValue,
            reason: session.endReason)
    }

    private func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}
