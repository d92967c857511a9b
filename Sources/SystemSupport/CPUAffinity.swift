import CLinuxSystem

/// The number of CPUs the calling thread may run on (its affinity mask), or nil when the kernel
/// will not say. A daemon sizes its thread pools by this, not by the CPUs the machine has: under
/// `taskset -c 1` or systemd's `CPUAffinity=1`, a second busy thread only takes turns with the first.
public func allowedCPUCount() -> Int? {
    let count = clx_allowed_cpu_count()
    return count > 0 ? Int(count) : nil
}
