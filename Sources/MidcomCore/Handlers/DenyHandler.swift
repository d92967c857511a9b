import CSPTrust
import CSPWire

/// DENY (docs/PROTOCOL.md 6.8): a victim asks the middleboxes upstream to drop an attack. Only
/// traffic to the requester's own address (the DENY's source, proved by a CHALLENGE for its key
/// before this handler runs) can be filtered, within every bound of `[pushback]`. The filter is a
/// kernel set element that drops before conntrack; the DENY travels on upstream, and the victim
/// gets our ACCEPT with our record (decision denied), sent in the name of the DENY's destination so
/// it passes the middleboxes nearer the victim inside the DENY's conntrack entry.
extension GatewayEngine {
    mutating func handleDeny(_ request: SignalingRequest, now: Instant) -> SignalingOutcome {
        let deny = request.message
        let bounds = configuration.pushback
        guard bounds.enabled else {
            counters.notActedOn += 1
            guard request.isAddressedToUs else { return SignalingOutcome(verdict: .forward) }
            return refuseDeny(request, .administrativelyProhibited, "this middlebox does not act on DENY")
        }
        guard let signer = request.signer else {
            counters.authenticationFailures += 1
            return refuseDeny(request, .authenticationFailed, "DENY must be signed")
        }
        guard let asked = deny.denySource else {
            counters.malformedMessages += 1
            return refuseDeny(request, .malformedMessage, "DENY without DENY-SOURCE")
        }
        let victim = request.source.address
        let ipv4 = victim.family == .ipv4
        guard asked.prefix.family == victim.family, asked.prefixLength <= (ipv4 ? 32 : 128) else {
            counters.malformedMessages += 1
            return refuseDeny(request, .malformedMessage, "DENY-SOURCE must be a prefix of the victim's address family")
        }
        let narrowest = bounds.minimumPrefixLength(ipv4: ipv4)
        guard asked.prefixLength >= narrowest else {
            return refuseDeny(request, .policyDenied, "/\(asked.prefixLength) is wider than this middlebox allows (/\(narrowest) at most)")
        }
        guard denies.admitRate(of: victim, second: now.wholeSeconds, limit: bounds.deniesPerSecond) else {
            counters.deniesLimited += 1
            return refuseDeny(request, .resourcesExhausted, "more than \(bounds.deniesPerSecond) DENYs per second from \(victim)", retryAfter: 1)
        }
        let filter = DenyFilter(
            source: asked.prefix, prefixLength: asked.prefixLength, proto: asked.proto.rawValue == 0 ? nil : asked.proto,
            victim: victim, port: asked.port == 0 ? nil : asked.port, rateLimited: asked.rateLimit)
        let lifetime = min(deny.lifetime ?? 60, bounds.maximumLifetime)
        let existing = denies.entries[deny.sessionID]
        if let existing, existing.owner.map({ $0 != signer }) ?? false || existing.filter.victim != victim {
            counters.authenticationFailures += 1
            return refuseDeny(request, .authenticationFailed, "filter \(hex(deny.sessionID)) belongs to another requester")
        }
        var kernel: [KernelChange] = []
        let tag = ElementTag(sessionID: deny.sessionID, kind: .deny)
        if lifetime == 0 {
            // Early removal by the same key; an unknown ID is simply gone already.
            if let existing {
                denies.remove(existing.id)
                kernel.append(.remove(.denyFilter(existing.filter)))
                counters.deniesRemoved += 1
            }
            return grantDeny(request, lifetime: 0, kernel: kernel, event: "DENY \(hex(deny.sessionID)) removed by \(victim)")
        }
        if let other = denies.overlapping(filter, except: deny.sessionID) {
            return refuseDeny(request, .policyDenied, "overlaps filter \(hex(other.id)) (\(other.filter)): refresh or remove it")
        }
        if existing == nil {
            guard denies.filters(of: victim) < bounds.filtersPerVictim else {
                counters.deniesLimited += 1
                return refuseDeny(request, .resourcesExhausted, "\(victim) holds \(bounds.filtersPerVictim) filters already", retryAfter: 30)
            }
            guard denies.count < bounds.maximumFilters else {
                counters.deniesLimited += 1
                return refuseDeny(request, .resourcesExhausted, "filter table full", retryAfter: 30)
            }
        }
        if let existing, existing.filter != filter { kernel.append(.remove(.denyFilter(existing.filter))) }
        kernel.append(
            existing?.filter == filter
                ? .refresh(.denyFilter(filter), lifetime: lifetime, tag: tag) : .install(.denyFilter(filter), lifetime: lifetime, tag: tag))
        denies.put(
            DenyEntry(
                id: deny.sessionID, filter: filter, owner: signer, createdAt: existing?.createdAt ?? now,
                expiresAt: now.adding(seconds: lifetime), lifetime: lifetime))
        if existing == nil { counters.deniesInstalled += 1 } else { counters.deniesRefreshed += 1 }
        return grantDeny(
            request, lifetime: lifetime, kernel: kernel,
            event: "DENY \(hex(deny.sessionID)) \(existing == nil ? "installed" : "refreshed"): drop \(filter) for \(lifetime)s (\(signer))")
    }

    /// ACCEPT with our `denied` record to the victim; the DENY goes on upstream.
    private mutating func grantDeny(_ request: SignalingRequest, lifetime: UInt32, kernel: [KernelChange], event: String)
        -> SignalingOutcome
    {
        let deny = request.message
        var extra: [CSPTLV] = []
        if let asked = deny.denySource { extra.append(.denySource(asked)) }
        let accept = ownAccept(deny, lifetime: lifetime, decision: .denied, extra: extra)
        let reply = budgeted(accept, for: request).map {
            OutgoingMessage(message: $0, destination: request.source, source: request.destination)
        }
        if reply == nil { counters.repliesLimited += 1 }
        // Beyond a NAT the victim would be the external address every inside host shares: a
        // DENY from one of them would cut all of them off. It ends at the NAT, which filters.
        let behindOurNAT = configuration.nat.map { $0.isInternal(request.source.address) } ?? false
        return SignalingOutcome(
            verdict: request.isAddressedToUs || behindOurNAT ? .drop : .forward, kernel: kernel, reply: reply,
            onKernelFailure: .refuse(sessionID: 0, reply: nil), event: event)
    }

    private mutating func refuseDeny(_ request: SignalingRequest, _ result: CSPResultCode, _ reason: String, retryAfter: UInt32 = 0)
        -> SignalingOutcome
    {
        counters.deniesRefused += 1
        return rejection(
            of: request, result: result, reason: reason, retryAfter: retryAfter,
            event: "refused DENY \(hex(request.message.sessionID)) from \(request.source): \(reason)")
    }

    /// Filters whose lifetime ended: the kernel times their elements out by itself; removing
    /// them too keeps the table and the kernel in step.
    mutating func expireDenies(now: Instant) -> [KernelChange] {
        let ended = denies.expire(now: now)
        counters.deniesExpired += UInt64(ended.count)
        return ended.map { .remove(.denyFilter($0.filter)) }
    }

    /// Operator removal (`midctl undeny`).
    public mutating func removeDeny(id: UInt64) -> (DenyEntry, [KernelChange])? {
        guard let entry = denies.remove(id) else { return nil }
        counters.deniesRemoved += 1
        return (entry, [.remove(.denyFilter(entry.filter))])
    }

    /// A filter found in the kernel at start-up: kept, without an owner until its victim's next
    /// signed DENY for it.
    mutating func adoptDeny(_ filter: DenyFilter, id: UInt64, remaining: UInt32, now: Instant) {
        guard denies.entries[id] == nil, denies.count < configuration.pushback.maximumFilters else { return }
        let lifetime = min(remaining, configuration.pushback.maximumLifetime)
        denies.put(DenyEntry(id: id, filter: filter, owner: nil, createdAt: now, expiresAt: now.adding(seconds: lifetime), lifetime: lifetime))
    }
}
