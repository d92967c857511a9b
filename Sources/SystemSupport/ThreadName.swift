import CLinuxSystem

/// Names the calling thread for the operator: `ps -L`, `top -H` and /proc/<pid>/task/<tid>/comm show
/// it, so a busy or often-woken thread of a daemon can be told apart from its others. The kernel
/// keeps at most 15 octets and cuts longer names.
public func nameCurrentThread(_ name: String) {
    _ = clx_set_thread_name(name)
}

/// The calling thread's name as the kernel holds it (at most 15 octets).
public func currentThreadName() -> String {
    var buffer = [CChar](repeating: 0, count: 16)
    guard clx_thread_name(&buffer) == 0 else { return "" }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
