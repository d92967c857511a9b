// swift-tools-version: 6.1
import PackageDescription

// Targets have one role each (see docs/ARCHITECTURE.md):
//   SystemSupport  the one syscall layer: EINTR retry, errno capture, SystemCallError, FileDescriptor,
//                  epoll, pipes and splice, TCP socket options (over the tiny CLinuxSystem shim)
//   CNetfilter     C interop: system library over libnetfilter_queue, libnftnl, libmnl + tiny shim
//   Netfilter      kernel adapters: the only target that imports CNetfilter
//   CSPWire        wire codecs: pure, zero-copy packet views and CSP messages
//   MidcomCore     core logic: sessions, policy, config; pure, injectable clock, no syscalls
//   MidcomKernel   the kernel seam: NFTSchema (sets and key layouts, once), KernelProgrammer (real
//                  nftables/conntrack + a recording fake in tests), bursts, connection clean-up
//   MidcomControl  control protocol shared by midcomd (server) and midctl (client)
//   CSPTrust       keys, signatures, challenge tokens (swift-crypto); pure, no policy
//   CSPHost        host-side signaling library used by the `csp` tool
//   MidcomRelay    the relay's session table and limits; pure (midrelayd drives it)
//   CSPSession     relayed sessions (PROTOCOL.md 14): hop frames and TLVs, the end-to-end layer; pure
let package = Package(
    name: "midcom",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "midcomd", targets: ["midcomd"]),
        .executable(name: "midctl", targets: ["midctl"]),
        .executable(name: "csp", targets: ["csp"]),
        .executable(name: "midrelayd", targets: ["midrelayd"]),
        .library(name: "CSPHost", targets: ["CSPHost"]),
        .library(name: "CSPWire", targets: ["CSPWire"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // Ed25519, SHA-256 and HMAC (docs/PROTOCOL.md 7): the maintained BoringSSL-backed
        // implementation, never home-made primitives. 3.x builds offline here with swift-asn1 only.
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        // The metrics endpoint (off by default): the Prometheus text format from swift-prometheus
        // (the Swift server workgroup's implementation; with swift-metrics and swift-atomics it adds
        // little to the build) and HTTP from FlyingFox (a small server on plain sockets with no
        // dependencies: SwiftNIO-based servers such as Hummingbird cost minutes of CI build).
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swhitty/FlyingFox", from: "0.27.1"),
    ],
    targets: [
        .systemLibrary(
            name: "CNetfilter",
            pkgConfig: "libnetfilter_queue",
            providers: [.apt(["libnetfilter-queue-dev", "libnftnl-dev", "libmnl-dev"])]
        ),
        // The Linux calls Swift's Glibc module hides (epoll, splice, pipe2, accept4); SystemSupport only.
        .target(name: "CLinuxSystem"),
        .target(name: "SystemSupport", dependencies: ["CLinuxSystem"]),
        .target(name: "Netfilter", dependencies: ["CNetfilter", "SystemSupport"]),
        .target(name: "CSPWire"),
        .target(name: "CSPTrust", dependencies: ["CSPWire", "SystemSupport", .product(name: "Crypto", package: "swift-crypto")]),
        .target(name: "MidcomCore", dependencies: ["CSPWire", "CSPTrust"]),
        .target(name: "MidcomKernel", dependencies: ["MidcomCore", "Netfilter", "CSPWire"]),
        .target(name: "MidcomControl", dependencies: ["SystemSupport"]),
        .target(name: "CSPSession", dependencies: ["CSPWire", "CSPTrust"]),
        .target(name: "CSPHost", dependencies: ["CSPWire", "CSPTrust", "CSPSession", "SystemSupport"]),
        // The relay's pure logic (PROTOCOL.md 14.8): its session table, limits and decisions.
        .target(name: "MidcomRelay", dependencies: ["CSPSession", "CSPTrust", "CSPWire"]),
        // The command-line conventions the three tools share (exit codes, unknown commands, version).
        .target(name: "CommandLineSupport", dependencies: [.product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(
            name: "midcomd",
            dependencies: [
                "Netfilter", "CSPWire", "CSPTrust", "CSPHost", "MidcomCore", "MidcomKernel", "MidcomControl", "CommandLineSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "FlyingFox", package: "FlyingFox"),
                .product(name: "FlyingSocks", package: "FlyingFox"),
            ]
        ),
        .executableTarget(
            name: "midctl",
            dependencies: [
                "MidcomControl", "CommandLineSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "csp",
            dependencies: [
                "CSPHost", "CSPSession", "CSPWire", "CSPTrust", "SystemSupport", "CommandLineSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The relay daemon (ARCHITECTURE.md "Relayed sessions"): unprivileged, apart from midcomd.
        .executableTarget(
            name: "midrelayd",
            dependencies: [
                "MidcomRelay", "MidcomCore", "MidcomControl", "CSPSession", "CSPHost", "CSPTrust", "CSPWire", "SystemSupport",
                "CommandLineSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Fuzz harness for CSPWire; see Tests/wire/fuzz.sh. A plain build yields a corpus replay tool.
        .executableTarget(name: "CSPWireFuzz", dependencies: ["CSPWire"]),
        .testTarget(name: "CSPWireTests", dependencies: ["CSPWire", "CSPTrust", "TestSupport"], resources: [.copy("Vectors")]),
        .testTarget(name: "MidcomCoreTests", dependencies: ["MidcomCore", "CSPTrust"]),
        .testTarget(name: "MidcomControlTests", dependencies: ["MidcomControl"]),
        .testTarget(name: "CSPHostTests", dependencies: ["CSPHost", "CSPWire", "CSPTrust", "CSPSession", "SystemSupport", "TestSupport"]),
        .testTarget(name: "CSPTrustTests", dependencies: ["CSPTrust", "CSPWire"], resources: [.copy("Vectors")]),
        .testTarget(name: "CSPSessionTests", dependencies: ["CSPSession", "CSPTrust", "CSPWire", "TestSupport"]),
        .testTarget(name: "MidcomRelayTests", dependencies: ["MidcomRelay", "CSPSession", "CSPTrust", "CSPWire"]),
        .testTarget(name: "SystemSupportTests", dependencies: ["SystemSupport"]),
        // Runs commands (nft, ip) for the tests that use the real kernel; linked by test targets only.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "NetfilterTests", dependencies: ["Netfilter", "TestSupport"]),
        .testTarget(
            name: "MidcomKernelTests", dependencies: ["MidcomKernel", "MidcomCore", "Netfilter", "CSPWire", "TestSupport"],
            resources: [.copy("Golden")]),
    ]
)
