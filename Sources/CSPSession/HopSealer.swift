import CSPTrust

/// One party's side of a *sealed* hop (docs/PROTOCOL.md 14.6): everything after ACCEPT is cut into
/// chunks, each encrypted with the hop's transport cipher of its direction (from the hop
/// handshake's Split) and framed `length(2) ‖ ciphertext`. The ends seal the end-to-end records
/// once more for the hop; a relay opens what one hop brought and seals it for the other.
public struct HopSealer: Sendable {
    /// Chunks are cut at 16 KiB: bigger chunks save little and delay the first octet.
    public static let chunkLength = 16384

    private var sendCipher: CipherState
    private var receiveCipher: CipherState
    private var inbound: [UInt8] = []
    private var inboundStart = 0

    public init(send: CipherState, receive: CipherState) {
        sendCipher = send
        receiveCipher = receive
    }

    /// Appends `plaintext` to `out` as hop records.
    public mutating func seal(_ plaintext: some Collection<UInt8>, into out: inout [UInt8]) throws(NoiseError) {
        var rest = plaintext[...]
        while !rest.isEmpty {
            let chunk = Array(rest.prefix(Self.chunkLength))
            rest = rest.dropFirst(chunk.count)
            let ciphertext = try sendCipher.encryptWithAd([], plaintext: chunk)
            out.append(UInt8(ciphertext.count >> 8))
            out.append(UInt8(ciphertext.count & 0xff))
            out.append(contentsOf: ciphertext)
        }
    }

    /// Feeds octets the hop delivered; appends the plaintext of every complete record to `out`.
    /// A record that does not decrypt (or a malformed length) throws: the hop is broken — an
    /// attacker's doing or not — and the session resumes on a new one.
    public mutating func open(_ bytes: some Collection<UInt8>, into out: inout [UInt8]) throws(HopSealerError) {
        inbound.append(contentsOf: bytes)
        while true {
            let parsed: IncrementalParse<Range<Int>>
            do {
                parsed = try inbound.withUnsafeBytes { raw throws(SessionWireError) in
                    try SealedHopRecordFraming.parseRecord(UnsafeRawBufferPointer(rebasing: raw[inboundStart...]))
                }
            } catch { throw .malformed("\(error)") }
            guard case .complete(let range, let consumed) = parsed else { break }
            let ciphertext = Array(inbound[(inboundStart + range.lowerBound)..<(inboundStart + range.upperBound)])
            inboundStart += consumed
            do { out.append(contentsOf: try receiveCipher.decryptWithAd([], ciphertext: ciphertext)) } catch {
                throw .integrity
            }
        }
        if inboundStart == inbound.count || inboundStart > 65536 {
            inbound.removeFirst(inboundStart)
            inboundStart = 0
        }
    }
}

public enum HopSealerError: Error, Hashable, Sendable, CustomStringConvertible {
    case malformed(String)
    case integrity

    public var description: String {
        switch self {
        case .malformed(let why): "sealed hop record: \(why)"
        case .integrity: "a sealed hop record did not decrypt"
        }
    }
}
