/// `[pushback]`: what a victim's DENY may install here (docs/PROTOCOL.md 6.8). Every bound is
/// enforced and counted; the defaults are safe for a gateway that never heard of its victims.
public struct PushbackConfiguration: Sendable, Equatable {
    /// Act on DENY at all (off: DENYs travel on untouched, and to us they are refused).
    public var enabled = true
    /// Longest lifetime a filter gets (a victim refreshes to keep it).
    public var maximumLifetime: UInt32 = 600
    /// Filters one victim address may hold.
    public var filtersPerVictim = 16
    /// Filters in all (the kernel sets hold at most 65 536).
    public var maximumFilters = 4096
    /// DENYs one victim address may send per second (new, refreshed or removed alike).
    public var deniesPerSecond = 5
    /// The widest prefixes a filter may cover: shorter prefixes are refused.
    public var minimumPrefixLength4: UInt8 = 16
    public var minimumPrefixLength6: UInt8 = 48

    public init() {}

    mutating func read(_ reader: inout TableReader) throws(ConfigError) {
        enabled = try reader.boolean("enabled", default: enabled)
        maximumLifetime = try reader.integer("max-lifetime", default: maximumLifetime, range: 1...86400)
        filtersPerVictim = try reader.integer("filters-per-victim", default: filtersPerVictim, range: 1...65536)
        maximumFilters = try reader.integer("max-filters", default: maximumFilters, range: 1...65536)
        deniesPerSecond = try reader.integer("denies-per-second", default: deniesPerSecond, range: 1...10000)
        minimumPrefixLength4 = try reader.integer("min-prefix-length", default: minimumPrefixLength4, range: 0...32)
        minimumPrefixLength6 = try reader.integer("min-prefix-length6", default: minimumPrefixLength6, range: 0...128)
        try reader.rejectUnknownKeys()
    }

    /// The shortest prefix allowed for an address of this family.
    func minimumPrefixLength(ipv4: Bool) -> UInt8 { ipv4 ? minimumPrefixLength4 : minimumPrefixLength6 }
}
