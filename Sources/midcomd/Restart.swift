#if canImport(Glibc)
import Glibc
#endif
import CSPWire
import Foundation
import MidcomCore
import MidcomKernel
import Netfilter
import Synchronization
import SystemSupport

/// Where a restart stands: how sessions came back, for `midctl status` (counters) and the log.
final class RestartState: Sendable {
    /// 1 while sessions are being adopted (snapshot, kernel dump or the sweep after a snapshot).
    let adopting = Atomic<Bool>(true)
    /// Restoring from a snapshot: no snapshot may be written meanwhile (it would hold half).
    let restoring = Atomic<Bool>(true)
    let fromSnapshot = Atomic<UInt64>(0)
    /// Snapshot sessions whose element the kernel no longer held: not adopted.
    let snapshotGone = Atomic<UInt64>(0)
    let fromKernel = Atomic<UInt64>(0)
    let snapshotsWritten = Atomic<UInt64>(0)
    let snapshotFailures = Atomic<UInt64>(0)
    /// One snapshot write at a time (the periodic one and the one at stop may meet).
    let writing = Mutex<Void>(())

    var counters: [String: UInt64] {
        [
            "adoption_running": adopting.load(ordering: .relaxed) ? 1 : 0,
            "adopted_from_snapshot": fromSnapshot.load(ordering: .relaxed),
            "adopted_from_kernel": fromKernel.load(ordering: .relaxed),
            "snapshot_sessions_gone": snapshotGone.load(ordering: .relaxed),
            "snapshots_written": snapshotsWritten.load(ordering: .relaxed),
            "snapshot_failures": snapshotFailures.load(ordering: .relaxed),
        ]
    }
}

/// Restart without the kernel's quadratic set dump (docs/ARCHITECTURE.md, "Restart"):
///
/// 1. The snapshot of the last run (`<state-directory>/sessions.snapshot`, SessionSnapshot) is
///    read and checked whole; a corrupt, foreign or outdated file is refused with one log line.
/// 2. Each snapshot session is kept only if the kernel still holds its admission: one GETSETELEM
///    per key, 128 to a datagram (O(1) each). The element's timeout wins over the snapshot's (a
///    refresh after the last periodic snapshot), and an element tagged with another session's ID
///    is adopted as that session. A million sessions take seconds.
/// 3. Then the sweep: every adoptable set is dumped in the background, and elements nobody knows
///    (added while midcomd was down, or newer than a snapshot written before a crash) are checked
///    once more and adopted. It takes as long as the old adoption did at a million elements, but
///    nothing waits for it: the sessions are back after step 2.
/// Without a usable snapshot the dump is the adoption, as before, decoded datagram by datagram.
extension Daemon {
    static let snapshotInterval: Duration = .seconds(300)

    var snapshotPath: String { "\(configuration.trust.stateDirectory)/\(SessionSnapshot.fileName)" }

    func adoptFromSnapshotAndKernel() {
        defer {
            restart.restoring.store(false, ordering: .relaxed)
            restart.adopting.store(false, ordering: .relaxed)
            // Adoption's buffers are freed; glibc keeps freed heap in its arenas unless asked.
            trimMallocArenas()
        }
        let lookup: NFTElementLookup
        do {
            lookup = try NFTElementLookup()
        } catch {
            log(.warning, "cannot open a netlink socket to adopt earlier sessions (\(error)); adopting through the main one")
            restart.restoring.store(false, ordering: .relaxed)
            adoptKernelDump(lookup: nil, quiet: false)
            return
        }
        let restored = restoreSnapshot(lookup: lookup)
        restart.restoring.store(false, ordering: .relaxed)
        trimMallocArenas()
        adoptKernelDump(lookup: lookup, quiet: restored)
    }

    /// Steps 1 and 2; false when there was no usable snapshot.
    func restoreSnapshot(lookup: NFTElementLookup) -> Bool {
        let path = snapshotPath
        guard SmallFile.exists(path) else { return false }
        let started = ContinuousClock.now
        let reader: SessionSnapshot.Reader
        do {
            let limit = 64 + configuration.maximumSessions * SessionSnapshot.maximumBytesPerSession
            let bytes = try readWholeFile(path, limit: limit)
            let id = engine.withLock { $0.identity.id }
            reader = try SessionSnapshot.Reader(bytes: bytes, table: configuration.table, middleboxID: id, maximumSessions: configuration.maximumSessions)
        } catch {
            log(.warning, "session snapshot \(path) refused: \(error); adopting earlier sessions from the kernel's sets instead")
            return false
        }
        let now = self.now()
        let wallNow = wallClockMilliseconds()
        engine.withLock { $0.reserveSessions(reader.count) }
        var batch: [Session] = []
        batch.reserveCapacity(4096)
        func flush() {
            restoreVerified(batch, lookup: lookup, now: now)
            batch.removeAll(keepingCapacity: true)
        }
        reader.forEach { entry in
            if let session = entry.restored(now: now, wallNow: wallNow) {
                batch.append(session)
                if batch.count == 4096 { flush() }
            }
            return !stopping.load(ordering: .relaxed)
        }
        flush()
        let elapsed = started.duration(to: .now)
        log(.notice, "restored \(restart.fromSnapshot.load(ordering: .relaxed)) session(s) from \(path) (\(reader.count) in the file, written \(reader.header.clean ? "at a clean stop" : "while running"); \(restart.snapshotGone.load(ordering: .relaxed)) no longer in the kernel) in \(elapsed); checking the kernel's sets for others in the background")
        return true
    }

    /// Keeps the sessions whose admission the kernel still holds (looked up by key).
    func restoreVerified(_ sessions: [Session], lookup: NFTElementLookup, now: Instant) {
        guard !sessions.isEmpty else { return }
        // The admission that makes each session live, grouped by set.
        var bySet: [String: [(index: Int, key: NFTSetKey)]] = [:]
        let flows = sessions.map(Self.livingAdmission)
        for (index, flow) in flows.enumerated() {
            guard let flow else { continue }
            let element = NFTSchema.element(for: .admission(flow))
            bySet[element.set, default: []].append((index, element.key))
        }
        var found = [NFTSetElement?](repeating: nil, count: sessions.count)
        for (set, keys) in bySet {
            do {
                let elements = try lookup.elements(table: configuration.table, set: set, keys: keys.map(\.key))
                for (entry, element) in zip(keys, elements) { found[entry.index] = element }
            } catch {
                log.limited(.warning, category: "adoption", "cannot look up elements of set \(set) to restore sessions: \(error)")
            }
        }
        var restored: UInt64 = 0
        var gone: UInt64 = 0
        engine.withLock { engine in
            for (index, var session) in sessions.enumerated() {
                guard let element = found[index], let flow = flows[index] else {
                    gone += 1
                    continue
                }
                let tag = element.comment.flatMap(ElementTag.init(comment:))
                let remaining = element.expiresIn.map { UInt32(clamping: $0.components.seconds) }
                if let tag, tag.sessionID != session.id {
                    // Another session holds the flow now (signaled after the snapshot was written).
                    engine.adopt(AdoptedElement(object: .admission(flow), remaining: remaining ?? .max, tag: tag), now: now)
                    continue
                }
                if let remaining { session.expiresAt = now.adding(seconds: max(1, remaining)) }
                // The file is not trusted with lifetimes beyond what policy grants (as adoption from
                // the kernel caps them).
                let cap = now.adding(seconds: max(1, engine.policy.configuration.maximumLifetime))
                if let expiresAt = session.expiresAt, expiresAt > cap { session.expiresAt = cap }
                if engine.restore(session) { restored += 1 }
            }
        }
        restart.fromSnapshot.add(restored, ordering: .relaxed)
        restart.snapshotGone.add(gone, ordering: .relaxed)
    }

    /// The admission whose element says a session is still live: path 0 (`admittedFlows.first`,
    /// without building the list).
    static func livingAdmission(_ session: Session) -> FlowTuple? {
        switch session.state {
        case .pending: nil
        case .admitted, .legacy: session.flow
        case .redirected: session.proxyFlow
        }
    }

    /// The kernel's sets, dumped set by set: the adoption itself without a snapshot, the sweep
    /// for strangers after one (`quiet`: only strangers are counted and logged).
    func adoptKernelDump(lookup: NFTElementLookup?, quiet: Bool) {
        if quiet {
            // The sweep is housekeeping: the packet loop goes first (this thread only).
            _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, 19)  // 0: the calling thread, on Linux
        }
        let now = self.now()
        var adopted = 0
        var tagged = 0
        var decoded: [AdoptedElement] = []
        var strangers: [AdoptedElement] = []
        func feed(_ set: String, _ elements: [NFTSetElement]) {
            decoded.removeAll(keepingCapacity: true)
            for element in elements {
                guard let object = NFTSchema.object(set: set, key: element.key, data: element.data, keyEnd: element.keyEnd) else { continue }
                let remaining = element.expiresIn.map { UInt32(clamping: $0.components.seconds) } ?? UInt32.max
                decoded.append(AdoptedElement(object: object, remaining: remaining, tag: element.comment.flatMap(ElementTag.init(comment:))))
            }
            if quiet {
                // After a snapshot nearly every element is known: keep the strangers, to check
                // each once more when the set's dump is over (it may have gone meanwhile; the
                // socket is busy with the dump until then).
                strangers += engine.withLock { engine in decoded.filter { !engine.knows($0) } }
                if strangers.count > 65536 {
                    // Many strangers (a snapshot much older than the kernel's state): adopt
                    // them as the dump found them rather than hold them all.
                    adopt(strangers)
                    strangers.removeAll()
                }
                return
            }
            adopt(decoded)
        }
        func adopt(_ decoded: [AdoptedElement]) {
            guard !decoded.isEmpty else { return }
            let before = engine.withLock { engine in
                let before = engine.counters.adopted
                for element in decoded { engine.adopt(element, now: now) }
                return engine.counters.adopted - before
            }
            adopted += Int(before)
            tagged += decoded.reduce(0) { $0 + ($1.tag == nil ? 0 : 1) }
            restart.fromKernel.add(before, ordering: .relaxed)
        }
        for spec in NFTSchema.adoptable {
            guard !stopping.load(ordering: .relaxed) else { return }
            do {
                if let lookup {
                    try lookup.forEachElement(table: configuration.table, set: spec.name) { feed(spec.name, $0) }
                    if !strangers.isEmpty {
                        let keys = strangers.map { NFTSchema.element(for: $0.object).key }
                        let still = try lookup.elements(table: configuration.table, set: spec.name, keys: keys)
                        adopt(zip(strangers, still).compactMap { $1 == nil ? nil : $0 })
                        strangers.removeAll()
                    }
                } else {
                    feed(spec.name, try kernel.listElements(set: spec.name))
                }
            } catch {
                log(.warning, "cannot list set \(spec.name) to adopt earlier sessions: \(error)")
            }
        }
        if adopted > 0 || !quiet {
            log(.notice, quiet
                ? "adopted \(adopted) kernel element(s) the session snapshot did not know (\(tagged) with their session ID)"
                : "adopted \(adopted) kernel element(s) left by a previous run (\(tagged) with their session ID)")
        }
    }

    // MARK: - Writing

    /// Writes the snapshot (atomically: temporary file, fsync, rename, fsync of the directory).
    /// Sessions are copied a few thousand at a time under the engine lock.
    func writeSessionSnapshot(clean: Bool) {
        guard !restart.restoring.load(ordering: .relaxed) else {
            log(.info, "session snapshot not written: the previous one is still being restored")
            return
        }
        restart.writing.withLock { _ in
            let started = ContinuousClock.now
            let (id, order) = engine.withLock { engine -> (UInt64, [UInt64]) in
                var ids: [UInt64] = []
                ids.reserveCapacity(engine.sessions.count)
                for session in engine.sessions.all where session.state != .pending { ids.append(session.id) }
                return (engine.identity.id, ids)
            }
            let now = self.now()
            let wallNow = wallClockMilliseconds()
            var writer = SessionSnapshot.Writer(header: .init(middleboxID: id, writtenAt: wallNow, table: configuration.table, clean: clean))
            do {
                try SmallFile.makeDirectories(configuration.trust.stateDirectory, mode: 0o700)
                let file = try SnapshotFile(path: snapshotPath)
                var position = 0
                while position < order.count {
                    let chunk = order[position..<min(position + 4096, order.count)]
                    position = chunk.endIndex
                    let sessions = engine.withLock { engine in chunk.compactMap { engine.sessions[id: $0] } }
                    for session in sessions { writer.append(session, now: now, wallNow: wallNow) }
                    try file.write(writer.take())
                }
                try file.write(writer.finish())
                try file.commit()
                restart.snapshotsWritten.add(1, ordering: .relaxed)
                log(clean ? .notice : .info, "wrote \(writer.count) session(s) to \(snapshotPath) in \(started.duration(to: .now))")
            } catch {
                restart.snapshotFailures.add(1, ordering: .relaxed)
                log(.warning, "could not write the session snapshot \(snapshotPath): \(error) (a restart adopts from the kernel's sets instead)")
            }
        }
    }

    /// Every `snapshotInterval`, so that a crash loses at most that much (what is newer is
    /// found by the sweep at the next start).
    func writeSnapshotsPeriodically() {
        var next = ContinuousClock.now + Self.snapshotInterval
        while !stopping.load(ordering: .relaxed) {
            Thread.sleep(forTimeInterval: 1)
            guard ContinuousClock.now >= next, !stopping.load(ordering: .relaxed) else { continue }
            if !restart.restoring.load(ordering: .relaxed) { writeSessionSnapshot(clean: false) }
            next = ContinuousClock.now + Self.snapshotInterval
        }
    }
}

extension GatewayEngine {
    /// Whether a listed element is one the engine already has (by its tag's session, or its flow).
    func knows(_ element: AdoptedElement) -> Bool {
        switch element.object {
        case .admission(let flow):
            if let tag = element.tag, sessions[id: tag.sessionID] != nil { return true }
            return sessions.session(for: flow) != nil
        case .denyFilter:
            if let tag = element.tag { return denies.entries[tag.sessionID] != nil }
            return false
        case .sourceNAT, .destinationNAT:
            // Mappings come with their sessions; adopting one again only re-reserves its port.
            guard let tag = element.tag else { return false }
            return sessions[id: tag.sessionID] != nil
        }
    }
}

/// The snapshot being written: a temporary file in the same directory, renamed over the old one
/// only once complete and on disk.
struct SnapshotFile: ~Copyable {
    let path: String
    let temporary: String
    let fd: Int32

    init(path: String) throws(SystemCallError) {
        self.path = path
        temporary = "\(path).tmp"
        unlink(temporary)  // left by a run that died while writing
        fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemCallError(call: "create \(temporary)", errno: errno) }
    }

    deinit {
        close(fd)
        if SmallFile.exists(temporary) { unlink(temporary) }
    }

    func write(_ bytes: [UInt8]) throws(SystemCallError) {
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, $0.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemCallError(call: "write \(temporary)", errno: errno)
            }
            written += n
        }
    }

    func commit() throws(SystemCallError) {
        guard fsync(fd) == 0 else { throw SystemCallError(call: "fsync \(temporary)", errno: errno) }
        guard rename(temporary, path) == 0 else { throw SystemCallError(call: "rename \(temporary) to \(path)", errno: errno) }
        let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        let dirfd = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirfd >= 0 {
            _ = fsync(dirfd)
            close(dirfd)
        }
    }
}

/// The file whole, refused above `limit` octets (an untrusted size is never allocated up front).
func readWholeFile(_ path: String, limit: Int) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
    guard fd >= 0 else { throw SystemCallError(call: "open \(path)", errno: errno) }
    defer { close(fd) }
    var status = stat()
    guard fstat(fd, &status) == 0 else { throw SystemCallError(call: "stat \(path)", errno: errno) }
    guard status.st_mode & S_IFMT == S_IFREG else { throw DaemonError("\(path) is not a regular file") }
    guard Int(status.st_size) <= limit else { throw DaemonError("\(path) has \(status.st_size) octets, more than \(limit) (max-sessions)") }
    var bytes = [UInt8](repeating: 0, count: Int(status.st_size))
    var filled = 0
    while filled < bytes.count {
        let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + filled, $0.count - filled) }
        if n < 0, errno == EINTR { continue }
        guard n > 0 else { break }
        filled += n
    }
    guard filled == bytes.count else { throw DaemonError("\(path) shrank while it was read") }
    return bytes
}

/// glibc's `malloc_trim(0)`: returns the free memory of malloc's arenas to the kernel (RSS
/// otherwise keeps what adoption's buffers once took). Looked up at run time: <malloc.h> is not
/// in Glibc's module map, and another C library may not have it.
func trimMallocArenas() {
    typealias Trim = @convention(c) (Int) -> Int32
    guard let symbol = dlsym(nil, "malloc_trim") else { return }
    _ = unsafeBitCast(symbol, to: Trim.self)(0)
}

func wallClockMilliseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return UInt64(max(0, now.tv_sec)) * 1000 + UInt64(now.tv_nsec / 1_000_000)
}
