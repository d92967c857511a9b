/// How a `NetfilterQueue` binds and configures its NFQUEUE.
public struct QueueConfiguration: Sendable, Equatable {
    public var queueNumber: UInt16
    /// Bytes of each packet copied to user space (NFQA_CFG_PARAMS copy range); at most 0xffff.
    public var copyRange: UInt32 = 0xffff
    /// Packets the kernel holds for this queue before it drops (or, with `failOpen`, accepts) new ones.
    public var maxQueueLength: UInt32 = 4096
    /// Socket receive buffer; set with SO_RCVBUFFORCE (needs CAP_NET_ADMIN), falling back to SO_RCVBUF.
    public var receiveBufferBytes: Int = 8 << 20
    /// NFQA_CFG_F_FAIL_OPEN: the kernel accepts packets instead of dropping them when the queue is full.
    public var failOpen: Bool = false
    /// NFQA_CFG_F_GSO: the kernel may hand over unsegmented GSO packets (up to 64 KiB) instead of segmenting them
    /// first. Such packets can have partial checksums (`QueuedPacket.checksumNotReady`).
    public var gso: Bool = true

    public init(queueNumber: UInt16) {
        self.queueNumber = queueNumber
    }
}

/// What a queue reader has seen and done since it was opened.
public struct QueueCounters: Sendable, Equatable {
    /// Packets handed to the handler.
    public var received: UInt64 = 0
    /// Verdicts NF_ACCEPT (with or without mark or payload).
    public var accepted: UInt64 = 0
    /// Verdicts NF_DROP.
    public var dropped: UInt64 = 0
    /// Verdicts NF_REPEAT.
    public var repeated: UInt64 = 0
    /// Accepted packets whose payload was replaced.
    public var modified: UInt64 = 0
    /// Times recv reported ENOBUFS: the socket overflowed and the kernel dropped packets it could not deliver
    /// (counted in `KernelQueueStatistics.queueDropped`/`userDropped`, or accepted with fail-open).
    public var enobufs: UInt64 = 0
    /// Packets longer than the copy range (NFQA_CAP_LEN present).
    public var truncated: UInt64 = 0
    /// Verdict messages the kernel refused or that could not be sent (unknown id, payload too large, ...).
    public var verdictErrors: UInt64 = 0
    /// Verdict messages sent; fewer than `received` when runs of plain verdicts were batched.
    public var verdictMessages: UInt64 = 0

    public init() {}
}

/// The decision for one queued packet.
public struct Verdict: Sendable, Equatable {
    @usableFromInline enum Kind: UInt32, Sendable {
        case drop = 0    // NF_DROP
        case accept = 1  // NF_ACCEPT
        case `repeat` = 4  // NF_REPEAT
    }

    @usableFromInline let kind: Kind
    @usableFromInline let mark: UInt32?
    @usableFromInline let payload: [UInt8]?

    @usableFromInline init(kind: Kind, mark: UInt32?, payload: [UInt8]?) {
        self.kind = kind
        self.mark = mark
        self.payload = payload
    }

    // Built where they are used, not stored: a stored static is reached through its lazy
    // initializer's accessor and retained, for every plain packet (docs/PERFORMANCE.md, "Twelfth pass").
    /// Lets the packet continue.
    @inlinable public static var accept: Verdict { Verdict(kind: .accept, mark: nil, payload: nil) }
    /// Drops the packet.
    @inlinable public static var drop: Verdict { Verdict(kind: .drop, mark: nil, payload: nil) }

    /// Lets the packet continue with its mark set to `mark` (visible to later rules as `meta mark`).
    @inlinable public static func accept(mark: UInt32) -> Verdict {
        Verdict(kind: .accept, mark: mark, payload: nil)
    }

    /// Lets the packet continue with `payload` (a complete L3 packet, at most 65531 bytes) instead of the original.
    /// The caller is responsible for lengths and checksums inside the new bytes.
    public static func accept(mark: UInt32?, replacingPayloadWith payload: [UInt8]) -> Verdict {
        Verdict(kind: .accept, mark: mark, payload: payload)
    }

    /// Re-injects the packet at the start of the same hook with its mark set to `mark`; rules can then match
    /// the mark (e.g. to skip the queue rule on the second pass).
    public static func `repeat`(mark: UInt32) -> Verdict {
        Verdict(kind: .repeat, mark: mark, payload: nil)
    }

    /// Accepts and drops of consecutive ids with the same mark (or none) can share one
    /// NFQNL_MSG_VERDICT_BATCH: the kernel applies a batch verdict's mark to every packet it covers.
    var isBatchable: Bool { payload == nil && kind != .repeat }
}

/// One packet handed to the `NetfilterQueue` handler.
///
/// A view valid only inside the handler call: `payload` points into the reader's receive buffer, which the next
/// packet overwrites. Copy what must outlive the call.
public struct QueuedPacket {
    /// The kernel's packet id (NFQA_PACKET_HDR); the reader issues exactly one verdict for it.
    public let id: UInt32
    /// The L3 packet (IPv4 or IPv6), at most `copyRange` bytes.
    public let payload: UnsafeRawBufferPointer
    /// Length of the whole packet: NFQA_CAP_LEN when the copy was truncated, else `payload.count`.
    public let originalLength: Int
    /// The packet's mark (0 when it has none).
    public let mark: UInt32
    /// Input and output interface index (0 when not known at this hook).
    public let inInterface: UInt32
    public let outInterface: UInt32
    /// Ethertype of the packet: 0x0800 IPv4, 0x86dd IPv6.
    public let hwProtocol: UInt16
    /// The netfilter hook the packet was queued from (NF_INET_PRE_ROUTING is 0 ... NF_INET_POST_ROUTING is 4).
    public let hook: UInt8
    /// NFQA_SKB_INFO bits: NFQA_SKB_CSUMNOTREADY (1), NFQA_SKB_GSO (2), NFQA_SKB_CSUM_NOTVERIFIED (4).
    public let skbInfo: UInt32

    public init(id: UInt32, payload: UnsafeRawBufferPointer, originalLength: Int, mark: UInt32 = 0,
                inInterface: UInt32 = 0, outInterface: UInt32 = 0, hwProtocol: UInt16, hook: UInt8 = 0, skbInfo: UInt32 = 0) {
        self.id = id
        self.payload = payload
        self.originalLength = originalLength
        self.mark = mark
        self.inInterface = inInterface
        self.outInterface = outInterface
        self.hwProtocol = hwProtocol
        self.hook = hook
        self.skbInfo = skbInfo
    }

    /// True when the copy holds less than the whole packet.
    public var isTruncated: Bool { originalLength > payload.count }
    /// The transport checksum is not computed yet (locally generated or GSO packet): do not verify it.
    public var checksumNotReady: Bool { skbInfo & 1 != 0 }
    /// The packet is an unsegmented GSO packet (only with `QueueConfiguration.gso`).
    public var isGSO: Bool { skbInfo & 2 != 0 }
}

@available(*, unavailable, message: "a QueuedPacket points into the reader's receive buffer; copy the bytes instead")
extension QueuedPacket: Sendable {}

/// One line of /proc/net/netfilter/nfnetlink_queue (per network namespace).
public struct KernelQueueStatistics: Sendable, Equatable {
    public var queueNumber: UInt16
    /// Netlink port id of the bound reader.
    public var portID: UInt32
    /// Packets waiting for a verdict now.
    public var queueTotal: UInt32
    public var copyMode: UInt8
    public var copyRange: UInt32
    /// Packets dropped because the queue was full (maxQueueLength).
    public var queueDropped: UInt64
    /// Packets dropped because the reader's socket buffer was full (ENOBUFS on our side).
    public var userDropped: UInt64
    /// The last packet id handed out.
    public var idSequence: UInt32

    public init(queueNumber: UInt16, portID: UInt32, queueTotal: UInt32, copyMode: UInt8, copyRange: UInt32,
                queueDropped: UInt64, userDropped: UInt64, idSequence: UInt32) {
        self.queueNumber = queueNumber
        self.portID = portID
        self.queueTotal = queueTotal
        self.copyMode = copyMode
        self.copyRange = copyRange
        self.queueDropped = queueDropped
        self.userDropped = userDropped
        self.idSequence = idSequence
    }

    /// Parses one line: "queue portid total copy_mode copy_range queue_dropped user_dropped id_sequence 1".
    /// Returns nil for a line that does not have that shape.
    public init?(line: Substring) {
        let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard fields.count >= 8,
              let queue = UInt16(fields[0]), let port = UInt32(fields[1]), let total = UInt32(fields[2]),
              let mode = UInt8(fields[3]), let range = UInt32(fields[4]), let queueDropped = UInt64(fields[5]),
              let userDropped = UInt64(fields[6]), let sequence = UInt32(fields[7]) else { return nil }
        self.init(queueNumber: queue, portID: port, queueTotal: total, copyMode: mode, copyRange: range,
                  queueDropped: queueDropped, userDropped: userDropped, idSequence: sequence)
    }
}
