#if canImport(Glibc)
import Glibc
#endif
import CSPHost
import CSPSession
import CSPWire
import Foundation
import MidcomRelay
import Synchronization
import SystemSupport

/// Both hops of one relayed session on a worker: the sockets (owned here) and the splice pipes.
/// What a worker drives for one session: splice for clear hops, user space for sealed ones.
protocol RelayDataPath: AnyObject {
    func pump() -> SpliceRelay.State
    var octetBudget: UInt64 { get set }
    var octetsAToB: UInt64 { get }
    var octetsBToA: UInt64 { get }
}

extension SpliceRelay: RelayDataPath {}
extension SealedRelay: RelayDataPath {}

/// Handed from a setup thread to one worker, which alone touches it afterwards.
final class HopPair: @unchecked Sendable {
    let key: RelaySessionTable.Key
    let generation: Int
    let upstream: Int32
    let downstream: Int32
    let relay: any RelayDataPath
    var reportedUp: UInt64 = 0
    var reportedDown: UInt64 = 0

    /// `sealers`: the hops' ciphers when the hops are sealed (user space); nil: clear (splice).
    init(
        key: RelaySessionTable.Key, generation: Int, upstream: TCPSocket, downstream: TCPSocket, pipeSize: Int,
        sealers: (upstream: HopSealer, downstream: HopSealer)?
    ) throws {
        let up = upstream.release()
        let down = downstream.release()
        do {
            try TCPOptions.setNonBlocking(up)
            try TCPOptions.setNonBlocking(down)
            if let sealers {
                relay = SealedRelay(upstream: up, downstream: down, upstreamSealer: sealers.upstream, downstreamSealer: sealers.downstream)
            } else {
                relay = try SpliceRelay(upstream: up, downstream: down, pipeCapacity: pipeSize)
            }
        } catch {
            _ = Glibc.close(up)
            _ = Glibc.close(down)
            throw error
        }
        self.key = key
        self.generation = generation
        self.upstream = up
        self.downstream = down
    }

    /// Ends both hops: FIN after a clean end (already sent by the relay), RST after a break.
    func close(abortive: Bool) {
        if abortive {
            try? TCPOptions.setAbortiveClose(upstream)
            try? TCPOptions.setAbortiveClose(downstream)
        }
        _ = Glibc.close(upstream)
        _ = Glibc.close(downstream)
    }
}

/// One worker: an edge-triggered epoll loop owning whole sessions (both hops of a session on one
/// worker, so the data path takes no lock). Sessions arrive through `adopt` from the setup threads;
/// the table hears of them at the end and, once a second, for their counters.
final class RelayWorker: @unchecked Sendable {
    private let epoll: Epoll
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private let inbox = Mutex<[HopPair]>([])
    private let aborts = Mutex<[RelaySessionTable.Key]>([])
    private var slots: [HopPair?] = []
    private var freeSlots: [Int] = []
    /// The daemon holds the table (one lock for all workers and setup threads).
    private unowned let daemon: RelayDaemon

    init(daemon: RelayDaemon) throws {
        self.daemon = daemon
        epoll = try Epoll()
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw SystemCallError(call: "pipe", errno: errno) }
        wakeRead = ends[0]
        wakeWrite = ends[1]
        try TCPOptions.setNonBlocking(wakeRead)
        try epoll.add(wakeRead, [.readable, .edgeTriggered], token: 0)
    }

    /// Takes a session whose ACCEPT went upstream; the worker thread moves its octets from now on.
    func adopt(_ pair: HopPair) {
        inbox.withLock { $0.append(pair) }
        var one: UInt8 = 1
        _ = write(wakeWrite, &one, 1)
    }

    /// Aborts a session's hops (idle, byte limit, operator): the worker does it on its thread.
    func abort(_ key: RelaySessionTable.Key) {
        aborts.withLock { $0.append(key) }
        var one: UInt8 = 1
        _ = write(wakeWrite, &one, 1)
    }

    func run() {
        var lastReport = ContinuousClock.now
        var drain = [UInt8](repeating: 0, count: 64)
        while true {
            epoll.wait(timeoutMilliseconds: 1000) { token, _ in
                if token == 0 {
                    while read(wakeRead, &drain, drain.count) > 0 {}
                    return
                }
                let slot = Int(token >> 1) - 1
                guard slot < slots.count, let pair = slots[slot] else { return }
                pump(pair, slot: slot)
            }
            for pair in inbox.withLock({ list -> [HopPair] in defer { list.removeAll() }; return list }) { place(pair) }
            for key in aborts.withLock({ list -> [RelaySessionTable.Key] in defer { list.removeAll() }; return list }) {
                if let index = slots.firstIndex(where: { $0?.key == key }), let pair = slots[index] {
                    end(pair, slot: index, abortive: true, clean: false, reason: daemon.table.withLock { $0.sessions[key]?.endReason } ?? "aborted")
                }
            }
            let now = ContinuousClock.now
            if now - lastReport >= .seconds(1) {
                lastReport = now
                report(now: now)
            }
        }
    }

    private func place(_ pair: HopPair) {
        let slot = freeSlots.popLast() ?? { slots.append(nil); return slots.count - 1 }()
        slots[slot] = pair
        let limit = daemon.settings.limits.bytesPerSession
        if limit > 0 {
            // What these hops may still move: the limit less what earlier hops of the session moved.
            let moved = daemon.table.withLock { $0.sessions[pair.key].map { $0.octetsUp + $0.octetsDown } ?? 0 }
            pair.relay.octetBudget = limit > moved ? limit - moved : 0
        }
        let interest: Epoll.Events = [.readable, .writable, .peerClosed, .edgeTriggered]
        do {
            try epoll.add(pair.upstream, interest, token: UInt64(slot + 1) << 1)
            try epoll.add(pair.downstream, interest, token: UInt64(slot + 1) << 1 | 1)
        } catch {
            end(pair, slot: slot, abortive: true, clean: false, reason: "epoll: \(error)")
            return
        }
        pump(pair, slot: slot)  // octets may have arrived before the sockets were watched
    }

    private func pump(_ pair: HopPair, slot: Int) {
        switch pair.relay.pump() {
        case .open:
            // The byte limit holds as the octets move, not only in the once-a-second report (at
            // line rate a second is gigabytes past it): the relay stops reading at its budget, one
            // pipe (splice) or one 64 KiB read (sealed) over at most, and the session ends here.
            if pair.relay.octetBudget != .max, pair.relay.octetsAToB + pair.relay.octetsBToA >= pair.relay.octetBudget {
                end(pair, slot: slot, abortive: true, clean: false, reason: "byte limit reached")
            }
        case .finished: end(pair, slot: slot, abortive: false, clean: true, reason: "closed")
        case .failed(let code, let onUpstream):
            end(pair, slot: slot, abortive: true, clean: false, reason: "hop \(onUpstream ? "upstream" : "downstream") broke: \(SystemCallError.text(code))")
        }
    }

    private func end(_ pair: HopPair, slot: Int, abortive: Bool, clean: Bool, reason: String) {
        slots[slot] = nil
        freeSlots.append(slot)
        pair.close(abortive: abortive)
        let up = pair.relay.octetsAToB - pair.reportedUp
        let down = pair.relay.octetsBToA - pair.reportedDown
        let now = ContinuousClock.now
        daemon.table.withLock {
            _ = $0.count(pair.key, generation: pair.generation, up: up, down: down, now: now)
            $0.hopsEnded(pair.key, generation: pair.generation, clean: clean, reason: reason, now: now)
        }
        if daemon.settings.verbose { daemon.log("session \(hex(pair.key.sessionID)) hop \(pair.key.hopIndex): \(reason)") }
    }

    /// Once a second: counters to the table; a session past its byte limit is aborted.
    private func report(now: ContinuousClock.Instant) {
        for (slot, pair) in slots.enumerated() {
            guard let pair else { continue }
            let up = pair.relay.octetsAToB - pair.reportedUp
            let down = pair.relay.octetsBToA - pair.reportedDown
            pair.reportedUp = pair.relay.octetsAToB
            pair.reportedDown = pair.relay.octetsBToA
            let withinLimit = daemon.table.withLock { $0.count(pair.key, generation: pair.generation, up: up, down: down, now: now) }
            if !withinLimit {
                daemon.table.withLock { $0.hopsEnded(pair.key, generation: pair.generation, clean: false, reason: "byte limit reached", now: now) }
                end(pair, slot: slot, abortive: true, clean: false, reason: "byte limit reached")
            }
        }
    }
}
