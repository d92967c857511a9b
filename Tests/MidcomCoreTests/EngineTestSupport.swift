import CSPWire

@testable import MidcomCore

/// What the daemon does before the engine: parse outside the lock, then one `handle` call.
extension GatewayEngine {
    mutating func handleSignaling(payload: UnsafeRawBufferPointer, source: CSPEndpoint, destination: CSPEndpoint, now: Instant)
        -> SignalingOutcome
    {
        do {
            return handle(try SignalingRequest(parsing: payload, source: source, entry: .intercepted(destination: destination)), now: now)
        } catch {
            return malformed(from: source, addressedToUs: false, error: error)
        }
    }

    mutating func handleLocalRequest(payload: UnsafeRawBufferPointer, from source: CSPEndpoint, now: Instant) -> SignalingOutcome {
        do {
            return handle(try SignalingRequest(parsing: payload, source: source, entry: .addressedToUs), now: now)
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
