// swift-tools-version: 6.1
import PackageDescription

// The Swift side of the Midcom benchmark (figures 6 and 7): it measures MidcomCore's SessionTable and
// Netfilter's NFTablesClient directly. A separate package, so that benchmarks never slow the main build.
// The main package exports neither MidcomCore nor Netfilter as a product, so this package compiles the very
// same source directories (symlinks in Sources/ to ../../Sources/...) instead of depending on it by path.
let package = Package(
    name: "midcom-bench",
    platforms: [.macOS(.v15)],
    targets: [
        .systemLibrary(name: "CNetfilter", pkgConfig: "libnetfilter_queue"),
        .target(name: "SystemSupport"),
        .target(name: "Netfilter", dependencies: ["CNetfilter", "SystemSupport"]),
        .target(name: "CSPWire"),
        .target(name: "MidcomCore", dependencies: ["CSPWire"]),
        .target(name: "CBenchSupport"),
        .executableTarget(name: "MidcomBench", dependencies: ["MidcomCore", "Netfilter", "CSPWire", "CBenchSupport"]),
    ]
)
