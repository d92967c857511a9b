/// Counters kept by the engine, exported through `midctl status`.
public struct EngineCounters: Sendable, Equatable {
    public var signalingMessages: UInt64 = 0
    public var malformedMessages: UInt64 = 0
    public var setups: UInt64 = 0
    public var admitted: UInt64 = 0
    public var rejected: UInt64 = 0
    public var refreshed: UInt64 = 0
    public var tornDown: UInt64 = 0
    public var mismatchedReplies: UInt64 = 0
    public var spoofedFlows: UInt64 = 0
    public var unknownTypes: UInt64 = 0
    /// REBIND, ADD/REMOVE-PATH, DENY, RESPONSE: passed on, not acted on yet.
    public var notActedOn: UInt64 = 0
    public var unsignaledDropped: UInt64 = 0
    public var unsignaledPassed: UInt64 = 0
    public var unsignaledAdmitted: UInt64 = 0
    public var expired: UInt64 = 0
    public var tableFull: UInt64 = 0
    public var redirected: UInt64 = 0
    public var mapped: UInt64 = 0
    public var announced: UInt64 = 0
    public var announceLimited: UInt64 = 0
    public var localRequests: UInt64 = 0
    /// Outcomes whose kernel changes (or packet rewrite) failed and whose session was forgotten.
    public var kernelFailures: UInt64 = 0
    /// Messages dropped because the record we append made them too large.
    public var rewriteFailures: UInt64 = 0
    public var adopted: UInt64 = 0
    /// Sessions replaced by a newer session of the same owner for the same flow.
    public var superseded: UInt64 = 0
    /// Signatures missing where required, wrong, stale, or of another key than the session's.
    public var authenticationFailures: UInt64 = 0
    /// Requests whose sequence was already seen (docs/PROTOCOL.md 7.3).
    public var replays: UInt64 = 0
    public var challengesSent: UInt64 = 0
    public var challengesPassed: UInt64 = 0
    /// RESPONSEs to us whose token was not ours, for that sender, or still valid.
    public var challengesFailed: UInt64 = 0
    /// Requests from unproved sources dropped because the reply budget was spent.
    public var challengesLimited: UInt64 = 0
    /// REJECTs not sent: reply budget spent, or larger than 3× the request.
    public var repliesLimited: UInt64 = 0
    /// SETUPs refused because their source holds too much pending state.
    public var pendingLimited: UInt64 = 0
    /// REBINDs acted on (pending until the peer answers), paths added and removed.
    public var rebinds: UInt64 = 0
    public var pathsAdded: UInt64 = 0
    public var pathsRemoved: UInt64 = 0
    /// DENY filters installed, refreshed, removed early (by their victim or the operator),
    /// expired, refused (any reason) and, among the refusals, over a bound.
    public var deniesInstalled: UInt64 = 0
    public var deniesRefreshed: UInt64 = 0
    public var deniesRemoved: UInt64 = 0
    public var deniesExpired: UInt64 = 0
    public var deniesRefused: UInt64 = 0
    public var deniesLimited: UInt64 = 0
    /// SETUPs and REFRESHes answered on behalf of a responder that may not speak CSP (6.9).
    public var answeredForResponders: UInt64 = 0
    /// Configuration reloads taken over, and the sessions they revoked (the new policy refused them).
    public var reloads: UInt64 = 0
    public var revoked: UInt64 = 0
    /// RELAY offers sent (docs/PROTOCOL.md 14.2), and requests for flows policy relays that were
    /// refused instead (67, 68, a chain too long, unsigned, no relay available); leg SETUPs to
    /// our relay endpoints answered with ACCEPT, and refused (no valid token).
    public var relayOffers: UInt64 = 0
    public var relayOffersRefused: UInt64 = 0
    public var relayLegsAnswered: UInt64 = 0
    public var relayLegsRefused: UInt64 = 0

    public var asDictionary: [String: UInt64] {
        [
            "signaling_messages": signalingMessages, "malformed_messages": malformedMessages, "setups": setups,
            "admitted": admitted, "rejected": rejected, "refreshed": refreshed, "torn_down": tornDown,
            "mismatched_replies": mismatchedReplies, "spoofed_flows": spoofedFlows, "unknown_types": unknownTypes,
            "not_acted_on": notActedOn,
            "unsignaled_dropped": unsignaledDropped, "unsignaled_passed": unsignaledPassed,
            "unsignaled_admitted": unsignaledAdmitted, "expired": expired, "table_full": tableFull,
            "redirected": redirected, "mapped": mapped, "announced": announced, "announce_limited": announceLimited,
            "local_requests": localRequests, "kernel_failures": kernelFailures, "rewrite_failures": rewriteFailures,
            "adopted": adopted, "superseded": superseded, "authentication_failures": authenticationFailures,
            "replays": replays, "challenges_sent": challengesSent, "challenges_passed": challengesPassed,
            "challenges_failed": challengesFailed, "challenges_limited": challengesLimited,
            "replies_limited": repliesLimited, "pending_limited": pendingLimited, "rebinds": rebinds,
            "paths_added": pathsAdded, "paths_removed": pathsRemoved, "denies_installed": deniesInstalled,
            "denies_refreshed": deniesRefreshed, "denies_removed": deniesRemoved, "denies_expired": deniesExpired,
            "denies_refused": deniesRefused, "denies_limited": deniesLimited,
            "answered_for_responders": answeredForResponders, "reloads": reloads, "revoked": revoked,
            "relay_offers": relayOffers, "relay_offers_refused": relayOffersRefused,
            "relay_legs_answered": relayLegsAnswered, "relay_legs_refused": relayLegsRefused,
        ]
    }
}
