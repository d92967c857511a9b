// swift-tools-version: 6.1
import PackageDescription

// The Swift side of the Midcom benchmark (figures 6, 7 and 10): it measures MidcomCore's SessionTable,
// Netfilter's NFTablesClient (elements and comments built by MidcomKernel, as midcomd builds them) and CSPTrust's
// signatures directly. A separate package, so that benchmarks never
// slow the main build. The main package exports none of these targets as a product, so this package compiles
// the very same source directories (symlinks in Sources/ to ../../Sources/...) instead of depending on it by
// path; the external dependency (swift-crypto, for CSPTrust) is declared as in the main Package.swift.
let package = Package(
    name: "midcom-bench",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        .systemLibrary(name: "CNetfilter", pkgConfig: "libnetfilter_queue"),
        .target(name: "CLinuxSystem"),
        .target(name: "SystemSupport", dependencies: ["CLinuxSystem"]),
        .target(name: "Netfilter", dependencies: ["CNetfilter", "SystemSupport"]),
        .target(name: "CSPWire"),
        .target(name: "CSPTrust", dependencies: ["CSPWire", "SystemSupport", .product(name: "Crypto", package: "swift-crypto")]),
        .target(name: "MidcomCore", dependencies: ["CSPWire", "CSPTrust"]),
        .target(name: "MidcomKernel", dependencies: ["MidcomCore", "Netfilter", "CSPWire"]),
        .target(name: "CBenchSupport"),
        .executableTarget(
            name: "MidcomBench", dependencies: ["MidcomCore", "MidcomKernel", "Netfilter", "CSPWire", "CSPTrust", "CBenchSupport"]),
    ]
)
