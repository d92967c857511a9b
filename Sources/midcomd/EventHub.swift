#if canImport(Glibc)
import Glibc
#endif
import CSPWire
import MidcomControl
import MidcomCore
import Synchronization

/// Live events for `midctl monitor`. Publishing costs one atomic load while nobody listens; a
/// subscriber's queue is bounded, and a reader too slow for it loses the oldest events and is
/// told how many (a `lost` event) instead of growing the daemon's memory.
final class EventHub: Sendable {
    static let queueLimit = 4096
    static let maximumSubscribers = 16

    private struct Queue {
        var events: [ControlEvent] = []
        var lost = 0
    }

    private let subscribers = Mutex<(next: Int, queues: [Int: Queue])>((0, [:]))
    private let count = Atomic<Int>(0)

    var isListened: Bool { count.load(ordering: .relaxed) > 0 }

    func publish(_ kind: String, session: UInt64? = nil, _ text: @autoclosure () -> String) {
        guard isListened else { return }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let event = ControlEvent(
            time: Double(now.tv_sec) + Double(now.tv_nsec) / 1e9, kind: kind, session: session.map(hex), text: text())
        subscribers.withLock { state in
            for id in state.queues.keys {
                if state.queues[id]!.events.count >= Self.queueLimit {
                    state.queues[id]!.events.removeFirst()
                    state.queues[id]!.lost += 1
                }
                state.queues[id]!.events.append(event)
            }
        }
    }

    /// A new reader's subscription; nil when `maximumSubscribers` already read.
    func subscribe() -> (any EventSubscription)? {
        let id: Int? = subscribers.withLock { state in
            guard state.queues.count < Self.maximumSubscribers else { return nil }
            state.next += 1
            state.queues[state.next] = Queue()
            return state.next
        }
        guard let id else { return nil }
        count.add(1, ordering: .relaxed)
        return Subscription(hub: self, id: id)
    }

    fileprivate func take(_ id: Int) -> [ControlEvent] {
        let (events, lost) = subscribers.withLock { state -> ([ControlEvent], Int) in
            guard let queue = state.queues[id] else { return ([], 0) }
            state.queues[id] = Queue()
            return (queue.events, queue.lost)
        }
        guard lost > 0 else { return events }
        return [ControlEvent(time: events.first?.time ?? 0, kind: "lost", text: "\(lost) event(s) dropped: this reader was too slow")] + events
    }

    fileprivate func cancel(_ id: Int) {
        let removed = subscribers.withLock { $0.queues.removeValue(forKey: id) != nil }
        if removed { count.add(-1, ordering: .relaxed) }
    }

    private struct Subscription: EventSubscription {
        let hub: EventHub
        let id: Int
        func take() -> [ControlEvent] { hub.take(id) }
        func cancel() { hub.cancel(id) }
    }
}

extension Daemon {
    /// The event kind of a signaling outcome, from the message and what was done with it.
    static func eventKind(of type: CSPMessageType, _ outcome: SignalingOutcome) -> String {
        switch outcome.reply?.message.type {
        case .reject?: return "reject"
        case .redirect?: return "redirect"
        case .challenge?: return "challenge"
        default: break
        }
        switch type {
        case .setup: return outcome.reply?.message.type == .accept ? "admit" : "setup"
        case .accept, .mapped: return outcome.kernel.isEmpty ? "answer" : "admit"
        case .reject, .redirect: return "refused-upstream"
        case .refresh: return "refresh"
        case .teardown: return "teardown"
        case .rebind: return "rebind"
        case .addPath, .removePath: return "path"
        case .deny: return "deny"
        case .response: return "challenge"
        default: return "signal"
        }
    }
}
