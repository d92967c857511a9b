/// Why a CSP message or packet could not be decoded. Equality is on `kind` and `offset` so tests
/// can assert the exact failure.
public struct CSPWireError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable {
        /// Fewer bytes than the header or a length field promises.
        case truncated
        /// The first two octets are not "CS".
        case badMagic
        case unsupportedVersion(UInt8)
        /// The header length disagrees with the bytes received.
        case lengthMismatch(declared: Int, actual: Int)
        /// A TLV length runs past the end of the message (or of its enclosing record).
        case tlvOverrun(type: UInt16)
        /// A known TLV whose value has an impossible length or content.
        case badTLVValue(type: UInt16)
        /// A critical TLV this implementation does not understand.
        case unknownCriticalTLV(type: UInt16)
        /// Records nested deeper than the protocol allows.
        case nestingTooDeep
        /// The message would exceed the 16-bit length field.
        case messageTooLong
        /// Not an IPv4/IPv6 packet we can parse.
        case badIPHeader
        case badTransportHeader
        /// A discovery option with a wrong magic, length or experiment identifier.
        case badDiscoveryOption
    }

    public var kind: Kind
    /// Byte offset (from the start of the buffer given to the decoder) where decoding failed.
    public var offset: Int

    public init(_ kind: Kind, at offset: Int) {
        self.kind = kind
        self.offset = offset
    }

    /// The result code a receiver answers with when it rejects the message.
    public var resultCode: CSPResultCode {
        switch kind {
        case .unsupportedVersion: .unsupportedVersion
        case .unknownCriticalTLV: .unknownCriticalTLV
        default: .malformedMessage
        }
    }

    public var description: String {
        switch kind {
        case .truncated: "truncated at byte \(offset)"
        case .badMagic: "not a CSP message (bad magic)"
        case .unsupportedVersion(let v): "unsupported CSP version \(v)"
        case .lengthMismatch(let declared, let actual): "header length \(declared) but \(actual) bytes received"
        case .tlvOverrun(let t): "TLV \(CSPTLVType(rawValue: t)) at byte \(offset) runs past the end"
        case .badTLVValue(let t): "TLV \(CSPTLVType(rawValue: t)) at byte \(offset) has an invalid value"
        case .unknownCriticalTLV(let t): "unknown critical TLV 0x\(String(t, radix: 16)) at byte \(offset)"
        case .nestingTooDeep: "records nested too deep at byte \(offset)"
        case .messageTooLong: "message longer than 65535 bytes"
        case .badIPHeader: "bad IP header at byte \(offset)"
        case .badTransportHeader: "bad transport header at byte \(offset)"
        case .badDiscoveryOption: "bad discovery option at byte \(offset)"
        }
    }
}
