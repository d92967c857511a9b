import CSPWire

@testable import MidcomCore

/// What the daemon does before the engine: parse outside the lock, then one `handle` call.
extension GatewayEngine {
    mutating func handleSignaling(payload: UnsafeRawBufferPointer, source: CSPEndpoint, destination: CSPEndpoint, now: Instant)
        -> SignalingOutcome
    {
        do {
            var request = try SignalingRequest(parsing: payload, source: source, entry: .intercepted(destination: destination))
            request.message = request.message.sequencedLikeAHost
            return handle(request, now: now)
        } catch {
            return malformed(from: source, addressedToUs: false, error: error)
        }
    }

    mutating func handleLocalRequest(payload: UnsafeRawBufferPointer, from source: CSPEndpoint, now: Instant) -> SignalingOutcome {
        do {
            var request = try SignalingRequest(parsing: payload, source: source, entry: .addressedToUs)
            request.message = request.message.sequencedLikeAHost
            return handle(request, now: now)
        } catch {
            return malformed(from: source, addressedToUs: true, error: error)
        }
    }
}

extension Array where Element == KernelChange {
    /// The changes without their element tags, for comparing shapes.
    var untagged: [KernelChange] {
        map { change in
            switch change {
            case .install(let object, let lifetime, _): .install(object, lifetime: lifetime, tag: nil)
            case .refresh(let object, let lifetime, _): .refresh(object, lifetime: lifetime, tag: nil)
            default: change
            }
        }
    }
}

func admit(_ flow: FlowTuple, lifetime: UInt32) -> KernelChange { .install(.admission(flow), lifetime: lifetime, tag: nil) }
func readmit(_ flow: FlowTuple, lifetime: UInt32) -> KernelChange { .refresh(.admission(flow), lifetime: lifetime, tag: nil) }
func revoke(_ flow: FlowTuple) -> KernelChange { .remove(.admission(flow)) }

extension CSPMessage {
    /// The message as a host that counts its requests would send it: tests give each request a
    /// new nonce, and a request without a sequence gets its nonce's low bits as one, so that the
    /// replay window (docs/PROTOCOL.md 7.3) sees a new sequence per new request.
    var sequencedLikeAHost: CSPMessage {
        guard !type.isReply, sequence == 0 else { return self }
        var copy = self
        copy.sequence = UInt32(truncatingIfNeeded: nonce)
        return copy
    }
}
