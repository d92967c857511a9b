import Dispatch
import MidcomCore
import Synchronization

/// Answers waiting for the reply thread. The packet thread only appends; sockets (one per reply
/// sent in a responder's name) are opened on the reply thread, so a burst of refusals cannot slow
/// verdicts. Bounded: past `capacity` waiting answers, new ones are refused and counted by the caller.
final class ReplyQueue: Sendable {
    let capacity: Int
    private let waiting = Mutex<[OutgoingMessage]>([])
    private let wake = DispatchSemaphore(value: 0)

    init(capacity: Int = 4096) { self.capacity = capacity }

    /// False when the queue is full.
    func enqueue(_ message: OutgoingMessage) -> Bool {
        let (queued, first) = waiting.withLock { queue -> (Bool, Bool) in
            guard queue.count < capacity else { return (false, false) }
            queue.append(message)
            return (true, queue.count == 1)
        }
        // The reply thread drains the whole queue per wake-up: only the first answer of a batch
        // needs to wake it (a wake-up per answer would cost the packet thread a futex call each
        // under a CHALLENGE flood).
        if first { wake.signal() }
        return queued
    }

    /// The reply thread: sends everything queued, in order, until `shouldStop`. Sleeps until an
    /// answer is queued (an idle gateway wakes no thread for nothing); the thread is detached, so
    /// at exit it simply ends where it waits.
    func run(shouldStop: () -> Bool, send: (OutgoingMessage) -> Void) {
        while !shouldStop() {
            wake.wait()
            let batch = waiting.withLock { queue -> [OutgoingMessage] in
                defer { queue.removeAll(keepingCapacity: true) }
                return queue
            }
            for message in batch { send(message) }
        }
    }
}
