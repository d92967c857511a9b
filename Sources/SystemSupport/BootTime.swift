#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// CLOCK_BOOTTIME (what ContinuousClock reads on Linux) in nanoseconds, as an integer. On the packet
/// path `ContinuousClock.now` and `Duration` arithmetic (128-bit attoseconds, comparisons through
/// generic witnesses) cost hundreds of instructions per call: the daemon's engine clock and the
/// queue loop's tick deadline both read this instead (docs/PERFORMANCE.md, "Tenth pass").
@inlinable
public func bootTimeNanoseconds() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_BOOTTIME, &time)
    return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
}
