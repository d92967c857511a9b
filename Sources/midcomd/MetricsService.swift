import CSPWire
import FlyingFox
import FlyingSocks
import Foundation
import MidcomControl
import MidcomCore
import Prometheus
import Synchronization

/// The Prometheus endpoint (`[metrics] listen`, off by default): `GET /metrics` in the text
/// exposition format. Counters are the engine's and the daemon's (as `midctl status` shows
/// them), read at scrape time; sessions by state and origin; each rule's hits; the kernel queue
/// counters; histograms of nft batch latency and of the cost of parsing (and verifying) a
/// signaling message, measured only while the endpoint is on.
final class MetricsService: Sendable {
    let registry = PrometheusCollectorRegistry()
    let batchLatency: DurationHistogram
    let parseSigned: DurationHistogram
    let parseUnsigned: DurationHistogram
    /// What each exported counter showed at the last scrape (counters only go up: the engine's
    /// values are turned into increments); the session gauges seen before (set to 0 when gone).
    static var sessions: MetricNameDescriptor { name("sessions", "", "Sessions by state and origin") }
    private let seen = Mutex<(counters: [String: UInt64], gauges: Set<[String]>)>(([:], []))

    init() {
        let micro: [Duration] = [10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000].map { .microseconds($0) }
        batchLatency = registry.makeDurationHistogram(
            descriptor: Self.name("nft_batch", "seconds", "Time to program one nftables batch"), buckets: micro)
        let parse = Self.name("signaling_parse", "seconds", "Time to parse a signaling message and verify its signatures")
        parseSigned = registry.makeDurationHistogram(descriptor: parse, labels: [("signed", "true")], buckets: micro)
        parseUnsigned = registry.makeDurationHistogram(descriptor: parse, labels: [("signed", "false")], buckets: micro)
    }

    /// midcom_METRIC_UNIT, with its help line.
    static func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "midcom", metricName: metric, unitName: unit, helpText: help)
    }

    /// Serves until the daemon stops; a failure to listen is one log line (the gateway goes on).
    func serve(at endpoint: CSPEndpoint, daemon: Daemon) {
        Task.detached { [self] in
            do {
                let address: any SocketAddress =
                    endpoint.address.family == .ipv4
                    ? try sockaddr_in.inet(ip4: endpoint.address.description, port: endpoint.port)
                    : try sockaddr_in6.inet6(ip6: endpoint.address.description, port: endpoint.port)
                let server = HTTPServer(address: address, timeout: 5, logger: .disabled)
                await server.appendRoute("GET /metrics") { [self, daemon] _ in
                    HTTPResponse(
                        statusCode: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                        body: Data(scrape(daemon)))
                }
                await server.appendRoute("*") { _ in HTTPResponse(statusCode: .notFound) }
                daemon.log(.notice, "metrics: http://\(endpoint)/metrics")
                try await server.run()
            } catch {
                daemon.log(.error, "metrics: cannot serve on \(endpoint): \(error) (check [metrics] listen)")
            }
        }
    }

    /// The exposition, with every value read now.
    func scrape(_ daemon: Daemon) -> [UInt8] {
        let status = daemon.status()
        let (sessions, rules, hits) = daemon.engine.withLock { engine -> ([String: Int], [PolicyRule], [UInt64]) in
            var counts: [String: Int] = [:]
            for session in engine.sessions.all { counts["\(session.state.rawValue)\t\(session.origin.rawValue)", default: 0] += 1 }
            return (counts, engine.policy.configuration.rules, engine.ruleHits)
        }
        seen.withLock { seen in
            func count(_ metric: String, labels: [(String, String)] = [], _ value: UInt64, help: String) {
                let key = ([metric] + labels.map { "\($0.0)=\($0.1)" }).joined(separator: ",")
                let previous = seen.counters[key] ?? 0
                // A value below the last one was reset (a reload resets the rules' hits).
                let increment = value >= previous ? value - previous : value
                seen.counters[key] = value
                let counter = registry.makeCounter(descriptor: Self.name(metric, "total", help), labels: labels)
                if increment > 0 { counter.increment(by: Int64(clamping: increment)) }
            }
            for (name, value) in status.counters {
                count(name, value, help: "midctl status counter \(name)")
            }
            for (index, rule) in rules.enumerated() {
                count(
                    "rule_hits", labels: [("rule", rule.name), ("action", rule.action.rawValue)],
                    index < hits.count ? hits[index] : 0, help: "Requests a policy rule decided, since start or reload")
            }
            count("rule_hits", labels: [("rule", "(default)"), ("action", "default")], hits.last ?? 0,
                help: "Requests a policy rule decided, since start or reload")
            var current: Set<[String]> = []
            for (key, value) in sessions {
                let parts = key.split(separator: "\t").map(String.init)
                current.insert(parts)
                registry.makeGauge(descriptor: Self.sessions, labels: [("state", parts[0]), ("origin", parts[1])]).set(to: Double(value))
            }
            for gone in seen.gauges.subtracting(current) {
                registry.makeGauge(descriptor: Self.sessions, labels: [("state", gone[0]), ("origin", gone[1])]).set(to: 0)
            }
            seen.gauges.formUnion(current)
        }
        registry.makeGauge(descriptor: Self.name("uptime", "seconds", "Seconds since midcomd started")).set(to: status.uptimeSeconds)
        registry.makeGauge(descriptor: Self.name("ruleset_intact", "", "1 while table inet midcom is loaded and intact"))
            .set(to: status.ruleset == "intact" ? 1 : 0)
        return registry.emitToBuffer()
    }
}
