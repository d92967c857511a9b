#if canImport(Glibc)
import Glibc
#endif
import CSPSession
import SystemSupport

/// The data path between two *sealed* hops (PROTOCOL.md 14.6): what one hop brings is opened with
/// that hop's key and sealed with the other's, in user space (no splice: the octets change).
/// Same contract as SpliceRelay: non-blocking, edge-triggered, `pump()` moves what can move now.
final class SealedRelay {
    let a: Int32
    let b: Int32
    private var upstream: HopSealer
    private var downstream: HopSealer
    private var toB: [UInt8] = []
    private var toA: [UInt8] = []
    private var aReadEnded = false
    private var bReadEnded = false
    private var aWriteShut = false
    private var bWriteShut = false
    private(set) var octetsAToB: UInt64 = 0
    private(set) var octetsBToA: UInt64 = 0
    /// Reading stops once this many plaintext octets moved in all (one read's worth over at most).
    var octetBudget: UInt64 = .max
    private var buffer = [UInt8](repeating: 0, count: 65536)
    private var plain: [UInt8] = []
    /// Sealed octets waiting for a slow hop before the other one is read again (TCP's backpressure
    /// then reaches the sender, as with splice's pipe).
    static let highWater = 256 << 10

    init(upstream: Int32, downstream: Int32, upstreamSealer: HopSealer, downstreamSealer: HopSealer) {
        a = upstream
        b = downstream
        self.upstream = upstreamSealer
        self.downstream = downstreamSealer
    }

    func pump() -> SpliceRelay.State {
        if let failure = move(towardB: true) { return .failed(errno: failure.errno, onUpstream: failure.onSource) }
        if let failure = move(towardB: false) { return .failed(errno: failure.errno, onUpstream: !failure.onSource) }
        return aWriteShut && bWriteShut ? .finished : .open
    }

    private func move(towardB: Bool) -> (errno: Int32, onSource: Bool)? {
        let source = towardB ? a : b
        let destination = towardB ? b : a
        for _ in 0..<1024 {
            let pending = towardB ? toB.count : toA.count
            if pending > 0 {
                let sent = (towardB ? toB : toA).withUnsafeBytes { send(destination, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
                if sent < 0 {
                    if errno == EAGAIN || errno == EINTR { return nil }
                    return (errno, false)
                }
                if towardB { toB.removeFirst(sent) } else { toA.removeFirst(sent) }
                if sent < pending { continue }
            }
            if towardB ? aReadEnded : bReadEnded {
                if towardB ? !bWriteShut : !aWriteShut {
                    _ = shutdown(destination, Int32(SHUT_WR))
                    if towardB { bWriteShut = true } else { aWriteShut = true }
                }
                return nil
            }
            if octetsAToB + octetsBToA >= octetBudget { return nil }  // spent: the worker ends the session
            let got = buffer.withUnsafeMutableBytes { recv(source, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if got == 0 {
                if towardB { aReadEnded = true } else { bReadEnded = true }
                continue
            }
            if got < 0 {
                if errno == EAGAIN || errno == EINTR { return nil }
                return (errno, true)
            }
            do {
                plain.removeAll(keepingCapacity: true)
                if towardB {
                    try upstream.open(buffer[0..<got], into: &plain)
                    try downstream.seal(plain, into: &toB)
                    octetsAToB += UInt64(plain.count)
                } else {
                    try downstream.open(buffer[0..<got], into: &plain)
                    try upstream.seal(plain, into: &toA)
                    octetsBToA += UInt64(plain.count)
                }
            } catch {
                // A record that does not open: the hop it came on is broken (tampered or not).
                return (EBADMSG, true)
            }
            if (towardB ? toB.count : toA.count) > Self.highWater { continue }
        }
        return nil
    }
}
