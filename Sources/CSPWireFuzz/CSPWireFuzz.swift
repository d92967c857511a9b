// libFuzzer harness for the CSP wire codecs (see Tests/wire/fuzz.sh).
//
//   swift build --sanitize fuzzer -Xswiftc -DCSP_FUZZ --product CSPWireFuzz   (libFuzzer provides main)
//   swift build --product CSPWireFuzz                                            (a replay tool: CSPWireFuzz FILE|DIR...)
//
// Whatever decodes must re-encode and decode to the same value; a violated property traps, which
// libFuzzer reports as a crash with the input saved.
import CSPWire

#if CSP_FUZZ
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzProperties.check(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#else
import Foundation

@main
enum ReplayMain {
    static func main() {
        var files: [String] = []
        for argument in CommandLine.arguments.dropFirst() {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: argument, isDirectory: &isDirectory) else {
                print("CSPWireFuzz: no such file: \(argument)")
                exit(2)
            }
            if isDirectory.boolValue {
                let names = (try? FileManager.default.contentsOfDirectory(atPath: argument)) ?? []
                files += names.sorted().map { argument + "/" + $0 }
            } else {
                files.append(argument)
            }
        }
        if files.isEmpty {
            print("usage: CSPWireFuzz FILE|DIR...  (replays inputs through the fuzz properties)")
            exit(2)
        }
        for file in files {
            guard let data = FileManager.default.contents(atPath: file) else { continue }
            data.withUnsafeBytes { FuzzProperties.check($0) }
        }
        print("CSPWireFuzz: \(files.count) inputs, all properties hold")
    }
}
#endif

enum FuzzProperties {
    static func check(_ bytes: UnsafeRawBufferPointer) {
        checkMessage(bytes)
        checkPacket(bytes)
        if let option = try? CSPDiscoveryOption(body: bytes) {
            var body: [UInt8] = []
            option.appendBody(to: &body)
            let again = body.withUnsafeBytes { try? CSPDiscoveryOption(body: $0) }
            precondition(again == option, "discovery body round trip")
        }
    }

    static func checkMessage(_ bytes: UnsafeRawBufferPointer) {
        guard let message = try? CSPMessage.parse(bytes) else { return }
        let encoded: [UInt8]
        do { encoded = try message.serialize() } catch { preconditionFailure("parsed message does not serialize: \(error)") }
        let reparsed = try? CSPMessage.parse(encoded)
        precondition(reparsed == message, "parse(serialize(parse(b))) != parse(b)")
        // The encoding is canonical: a second round trip is byte-identical.
        precondition((try? reparsed?.serialize()) == encoded, "serialize is not stable")
        _ = try? CSPSignatureInput.collect(from: bytes)
    }

    static func checkPacket(_ bytes: UnsafeRawBufferPointer) {
        guard let packet = try? IPPacketView(bytes) else { return }
        _ = packet.flow
        _ = packet.transportBytes
        _ = packet.ipv4HeaderChecksumIsValid
        if let found = try? CSPDiscoveryOption.find(in: packet) {
            let option = found.option
            let emitted = option.emit(found.encoding)
            // Skip the container's type/length (and the TCP experiment ID) to get the body back.
            let bodyStart = found.encoding == .tcpOption ? 4 : 2
            let back = Array(emitted[bodyStart...]).withUnsafeBytes { try? CSPDiscoveryOption(body: $0) }
            precondition(back == option, "discovery option round trip")
        }
        if let segment = try? TCPSegmentView(packet) {
            _ = segment.checksumIsValid
            _ = segment.payload
            _ = try? CSPDiscoveryOption.find(inTCPOptions: segment)
        }
        guard let datagram = try? UDPDatagramView(packet) else { return }
        _ = datagram.checksumIsValid
        checkMessage(datagram.payload)
        // A middlebox rewriting the payload must produce a packet that parses and verifies.
        let replacement = Array(datagram.payload.prefix(64)) + [0x43, 0x53]
        guard let rewritten = try? PacketBuilder.replacingUDPPayload(of: datagram, with: replacement) else { return }
        rewritten.withUnsafeBytes { raw in
            guard let p = try? IPPacketView(raw), let u = try? UDPDatagramView(p) else {
                preconditionFailure("replacingUDPPayload produced an unparsable packet")
            }
            precondition(Array(u.payload) == replacement, "replaced payload differs")
            precondition(u.checksumIsValid && p.ipv4HeaderChecksumIsValid, "replaced packet checksums")
            precondition(p.source == packet.source && p.destination == packet.destination, "addresses changed")
        }
    }
}
