#if canImport(Glibc)
import Glibc
#endif

/// The data path between two connected TCP sockets whose octets the relay does not read (a clear
/// hop pair, docs/PROTOCOL.md 14.6): per direction one pipe, `splice(2)` from the receiving socket
/// into it and from it to the sending socket. Non-blocking and driven by edge-triggered epoll:
/// `pump()` moves everything that can move now, and says whether the pair is still open.
///
/// Backpressure is TCP's own: when the sending socket would block, nothing more is read from the
/// receiving one, its receive window closes and the sender slows down.
public final class SpliceRelay {
    /// The two sockets: `a` is the upstream hop, `b` the downstream one. Not owned: the caller
    /// closes them (and decides between FIN and RST).
    public let a: Int32
    public let b: Int32
    private let aToB: SplicePipe
    private let bToA: SplicePipe
    private var aReadEnded = false
    private var bReadEnded = false
    private var aWriteShut = false
    private var bWriteShut = false
    /// Octets moved a → b and b → a (what the receiving socket gave).
    public private(set) var octetsAToB: UInt64 = 0
    public private(set) var octetsBToA: UInt64 = 0
    /// Reading stops (both ways) once this many octets moved in all: a byte limit holds to within
    /// one pipe's worth instead of whatever arrives before the caller looks.
    public var octetBudget: UInt64 = .max

    public enum State: Equatable, Sendable {
        /// Both directions may still carry octets.
        case open
        /// Both directions ended cleanly (EOF read and passed on as FIN, nothing left in the pipes).
        case finished
        /// A socket failed (RST, timeout, ...): the caller aborts both with RST.
        case failed(errno: Int32, onUpstream: Bool)
    }

    public init(upstream: Int32, downstream: Int32, pipeCapacity: Int) throws(SystemCallError) {
        let forward = try SplicePipe(capacity: pipeCapacity)
        let backward = try SplicePipe(capacity: pipeCapacity)
        a = upstream
        b = downstream
        aToB = forward
        bToA = backward
    }

    /// Moves every octet that can move now, both ways.
    public func pump() -> State {
        if let failure = Self.move(
            from: a, to: b, through: aToB, readEnded: &aReadEnded, writeShut: &bWriteShut, octets: &octetsAToB,
            allowed: octetBudget &- min(octetBudget, octetsBToA))
        {
            return .failed(errno: failure.errno, onUpstream: failure.onSource)
        }
        if let failure = Self.move(
            from: b, to: a, through: bToA, readEnded: &bReadEnded, writeShut: &aWriteShut, octets: &octetsBToA,
            allowed: octetBudget &- min(octetBudget, octetsAToB))
        {
            return .failed(errno: failure.errno, onUpstream: !failure.onSource)
        }
        return aWriteShut && bWriteShut ? .finished : .open
    }

    /// One direction until it would block; nil, or the failure and whether the source socket had it.
    private static func move(
        from source: Int32, to destination: Int32, through pipe: SplicePipe, readEnded: inout Bool,
        writeShut: inout Bool, octets: inout UInt64, allowed: UInt64
    ) -> (errno: Int32, onSource: Bool)? {
        // Bounded: each round moves octets or ends; a pipe of 64 KiB–1 MiB empties in a few rounds,
        // and 1024 rounds per call keep one busy session from starving the worker's others.
        for _ in 0..<1024 {
            if pipe.pending > 0 {
                // MORE (TCP may hold a partial segment) only when the pipe came back full, i.e.
                // more is surely waiting: on every splice it would delay the end of each burst
                // (a request/response's last segment) by TCP's cork timeout, ~200 ms.
                switch pipe.drain(to: destination, more: !readEnded && pipe.pending == pipe.capacity) {
                case .success: continue
                case .failure(let code) where code == EAGAIN: return nil  // EPOLLOUT on destination resumes
                case .failure(let code): return (code, false)
                }
            }
            if readEnded {
                if !writeShut {
                    _ = shutdown(destination, Int32(SHUT_WR))
                    writeShut = true
                }
                return nil
            }
            if octets >= allowed { return nil }  // the budget is spent: the caller ends the session
            switch pipe.fill(from: source) {
            case .success(0): readEnded = true
            case .success(let moved): octets += UInt64(moved)
            case .failure(let code) where code == EAGAIN: return nil  // EPOLLIN on source resumes
            case .failure(let code): return (code, true)
            }
        }
        return nil
    }
}
