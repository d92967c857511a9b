#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Small files the programs keep: keys, the middlebox's epoch counter, a host's pinned middlebox
/// keys. Read whole, written whole (to a temporary file renamed over the old one, so a crash
/// leaves the old or the new content, never half of it).
public enum SmallFile {
    /// What a small file held, and who may read it.
    public struct Contents: Sendable {
        public var bytes: [UInt8]
        /// Permission bits (`st_mode & 0o777`).
        public var mode: UInt32
        public var owner: UInt32
    }

    /// Reads `path` whole; files larger than `limit` are refused (a key file is a few lines).
    public static func read(_ path: String, limit: Int = 1 << 20) throws(SystemCallError) -> Contents {
        let fd = FileDescriptor(adopting: try systemCall("open \(path)") { open(path, O_RDONLY | O_CLOEXEC) })
        var status = stat()
        _ = try systemCall("stat \(path)") { fstat(fd.rawValue, &status) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let result = chunk.withUnsafeMutableBytes { buffer in
                syscall { Glibc.read(fd.rawValue, buffer.baseAddress, buffer.count) }
            }
            guard case .success(let n) = result else {
                if case .failure(let code) = result { throw SystemCallError(call: "read \(path)", errno: code) }
                return Contents(bytes: [], mode: 0, owner: 0)
            }
            if n == 0 { break }
            bytes += chunk[0..<n]
            if bytes.count > limit { throw SystemCallError(call: "read \(path) (over \(limit) bytes)", errno: EFBIG) }
        }
        return Contents(bytes: bytes, mode: UInt32(status.st_mode) & 0o777, owner: status.st_uid)
    }

    /// Replaces `path` with `bytes`, created with `mode` (the umask cannot widen it: fchmod).
    public static func write(_ path: String, _ bytes: [UInt8], mode: UInt32) throws(SystemCallError) {
        let temporary = "\(path).tmp.\(getpid())"
        do throws(SystemCallError) {
            let fd = FileDescriptor(
                adopting: try systemCall("create \(temporary)") {
                    open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode_t(mode))
                })
            _ = try systemCall("chmod \(temporary)") { fchmod(fd.rawValue, mode_t(mode)) }
            var written = 0
            while written < bytes.count {
                let result = bytes.withUnsafeBytes { buffer in
                    syscall { Glibc.write(fd.rawValue, buffer.baseAddress! + written, buffer.count - written) }
                }
                switch result {
                case .success(let n): written += n
                case .failure(let code): throw SystemCallError(call: "write \(temporary)", errno: code)
                }
            }
            _ = try systemCall("fsync \(temporary)") { fsync(fd.rawValue) }
            _ = try systemCall("rename \(temporary) to \(path)") { rename(temporary, path) }
        } catch {
            unlink(temporary)
            throw error
        }
    }

    /// Creates `path` (and missing parents) as directories with `mode`; existing ones are kept.
    public static func makeDirectories(_ path: String, mode: UInt32 = 0o700) throws(SystemCallError) {
        var prefix = path.hasPrefix("/") ? "/" : ""
        for part in path.split(separator: "/") {
            prefix += part
            if mkdir(prefix, mode_t(mode)) != 0, errno != EEXIST {
                throw SystemCallError(call: "mkdir \(prefix)", errno: errno)
            }
            prefix += "/"
        }
    }

    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// The names in directory `path` ending in `suffix`, sorted (none when it cannot be read),
    /// at most `limit` of them.
    public static func names(in path: String, suffix: String, limit: Int = 65536) -> [String] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while names.count < limit, let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name.hasSuffix(suffix) { names.append(name) }
        }
        return names.sorted()
    }
}
