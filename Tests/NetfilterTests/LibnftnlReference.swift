import CNetfilter

@testable import Netfilter

#if canImport(Glibc)
import Glibc
#endif

/// The set-element batch as libnftnl builds it: the encoder NFTablesClient used before
/// `NFTBatchEncoder` (an `nftnl_set` and `nftnl_set_elem` per operation, `nftnl_batch` pages), kept
/// as the reference `NFTBatchEncoderTests` compares the encoder's bytes with. `grouping`: consecutive
/// adds (or deletes) of one set become the elements of one `nftnl_set`, i.e. one message, as `nft`
/// and Benchmarks/c/nftload.c send them (no limit on the group: keep test groups below 64 KiB).
enum LibnftnlReference {
    static func batch(_ changes: NFTChangeSet, firstSequence: UInt32, grouping: Bool = true) -> [UInt8] {
        // Room for the largest message: a grouped element list may reach 64 KiB.
        let room = 128 << 10
        let batch = nftnl_batch_alloc(256 << 10, UInt32(room))!
        defer { nftnl_batch_free(batch) }
        var sequence = firstSequence

        func append(_ build: (UnsafeMutablePointer<CChar>, UInt32) -> Void) {
            // Zeroed room, so that libmnl's padding is reproducible.
            let buffer = nftnl_batch_buffer(batch)!
            memset(buffer, 0, room)
            build(buffer.assumingMemoryBound(to: CChar.self), sequence)
            sequence &+= 1
            precondition(nftnl_batch_update(batch) >= 0)
        }

        append { buffer, sequence in _ = nftnl_batch_begin(buffer, sequence) }
        var open: (set: OpaquePointer, type: UInt32, flags: UInt16, name: String)? = nil
        func flush() {
            guard let group = open else { return }
            append { buffer, sequence in
                let nlh = nftnl_nlmsg_build_hdr(buffer, UInt16(group.type), UInt16(changes.family.rawValue), group.flags, sequence)!
                nftnl_set_elems_nlmsg_build_payload(nlh, group.set)
            }
            nftnl_set_free(group.set)
            open = nil
        }
        for operation in changes.operations {
            let set = nftnl_set_alloc()!
            nftnl_set_set_str(set, attr(NFTNL_SET_TABLE), changes.table)
            let type: UInt32
            var flags: UInt16 = 0
            var element: OpaquePointer? = nil
            var name = ""
            func bytes(_ value: [UInt8], _ attribute: Int) {
                value.withUnsafeBytes { _ = nftnl_set_elem_set(element, attr(attribute), $0.baseAddress, UInt32($0.count)) }
            }
            name = operation.set
            nftnl_set_set_str(set, attr(NFTNL_SET_NAME), name)
            switch operation.kind {
            case .add:
                type = NFT_MSG_NEWSETELEM.rawValue
                flags = UInt16(NLM_F_CREATE)
                element = nftnl_set_elem_alloc()
                bytes(operation.key.bytes, NFTNL_SET_ELEM_KEY)
                if let keyEnd = operation.keyEnd { bytes(keyEnd, NFTNL_SET_ELEM_KEY_END) }
                if let data = operation.data { bytes(data, NFTNL_SET_ELEM_DATA) }
                if let timeout = operation.timeoutMilliseconds { nftnl_set_elem_set_u64(element, attr(NFTNL_SET_ELEM_TIMEOUT), timeout) }
                if let comment = operation.comment { bytes(UserData.encode(comment: comment.description), NFTNL_SET_ELEM_USERDATA) }
            case .delete:
                type = NFT_MSG_DELSETELEM.rawValue
                element = nftnl_set_elem_alloc()
                bytes(operation.key.bytes, NFTNL_SET_ELEM_KEY)
                if let keyEnd = operation.keyEnd { bytes(keyEnd, NFTNL_SET_ELEM_KEY_END) }
            case .flush:
                type = NFT_MSG_DELSETELEM.rawValue
            }
            if grouping, let element, let group = open, group.type == type, group.name == name {
                nftnl_set_elem_add(group.set, element)  // joins the open message
                nftnl_set_free(set)
                continue
            }
            flush()
            if let element { nftnl_set_elem_add(set, element) }  // the set owns it from here
            open = (set, type, flags, name)
            if element == nil { flush() }  // a flush takes no company
        }
        flush()
        append { buffer, sequence in _ = nftnl_batch_end(buffer, sequence) }

        let count = Int(nftnl_batch_iovec_len(batch))
        var iovecs = [iovec](repeating: iovec(), count: count)
        nftnl_batch_iovec(batch, &iovecs, UInt32(count))
        return iovecs.flatMap { Array(UnsafeRawBufferPointer(start: $0.iov_base, count: $0.iov_len)) }
    }
}
