// Shim over libnetfilter_queue (libmnl-based API), libnftnl and libmnl for the Netfilter target.
// Rules: every symbol defined here is prefixed `cnf_`; kernel macros that Swift cannot import become
// static inline functions; every kernel struct whose layout we depend on is checked with _Static_assert.
#ifndef CNETFILTER_H
#define CNETFILTER_H

#include <stdint.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <errno.h>
#include <poll.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <arpa/inet.h>
#include <linux/netlink.h>
// The kernel's nfnetlink.h must come before libnetfilter_queue: both use the _NFNETLINK_H guard and the
// kernel copy is the newer one (it has NFNL_SUBSYS_NFTABLES and the batch message types).
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/xt_NFQUEUE.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <libnftnl/batch.h>
#include <libnftnl/common.h>
#include <libnftnl/table.h>
#include <libnftnl/chain.h>
#include <libnftnl/rule.h>
#include <libnftnl/expr.h>
#include <libnftnl/set.h>
#include <libnftnl/gen.h>
#include <libnftnl/flowtable.h>

// Layouts we read or write byte for byte.
_Static_assert(sizeof(struct nlmsghdr) == 16, "struct nlmsghdr");
_Static_assert(sizeof(struct nfgenmsg) == 4, "struct nfgenmsg");
_Static_assert(sizeof(struct nlmsgerr) == 20, "struct nlmsgerr");
_Static_assert(sizeof(struct nfqnl_msg_packet_hdr) == 7, "struct nfqnl_msg_packet_hdr is packed: be32 id, be16 proto, u8 hook");
_Static_assert(sizeof(struct xt_NFQ_info_v3) == 6, "struct xt_NFQ_info_v3: u16 queuenum, u16 queues_total, u16 flags");

// MARK: netlink message helpers

/// Netlink message type of an nfnetlink message: subsystem in the high byte, message in the low byte.
static inline uint16_t cnf_nfnl_msg_type(uint8_t subsys, uint8_t msg) {
    return (uint16_t)(((uint16_t)subsys << 8) | msg);
}

/// Positive errno carried by an NLMSG_ERROR message (0 for an acknowledgement), or EBADMSG if truncated.
static inline int cnf_nlmsg_error_code(const struct nlmsghdr *nlh) {
    if (nlh->nlmsg_len < NLMSG_HDRLEN + sizeof(int)) return EBADMSG;
    const struct nlmsgerr *err = (const struct nlmsgerr *)mnl_nlmsg_get_payload(nlh);
    return -err->error;
}

static inline uint32_t cnf_nlmsg_seq(const struct nlmsghdr *nlh) { return nlh->nlmsg_seq; }
static inline uint16_t cnf_nlmsg_type(const struct nlmsghdr *nlh) { return nlh->nlmsg_type; }
static inline uint16_t cnf_nlmsg_flags(const struct nlmsghdr *nlh) { return nlh->nlmsg_flags; }
static inline void cnf_nlmsg_add_flags(struct nlmsghdr *nlh, uint16_t flags) { nlh->nlmsg_flags |= flags; }
static inline void cnf_nlmsg_set_seq(struct nlmsghdr *nlh, uint32_t seq) { nlh->nlmsg_seq = seq; }

/// MNL_SOCKET_BUFFER_SIZE (a macro over sysconf): the size libmnl recommends for netlink buffers.
static inline int cnf_mnl_socket_buffer_size(void) { return (int)MNL_SOCKET_BUFFER_SIZE; }

/// Overhead the kernel adds around a queued packet's payload (netlink + nfgenmsg + all non-payload attributes),
/// rounded up generously: libnetfilter_queue's example uses 0xffff + (MNL_SOCKET_BUFFER_SIZE / 2).
static inline size_t cnf_nfq_receive_overhead(void) { return MNL_SOCKET_BUFFER_SIZE / 2; }

// recvmmsg(2) is declared by glibc only under _GNU_SOURCE, which the Swift Glibc module is built
// without: the same layout under our own name, and the system call itself.
struct cnf_mmsghdr {
    struct msghdr msg_hdr;
    unsigned int msg_len;
};
_Static_assert(sizeof(struct cnf_mmsghdr) == 64, "struct mmsghdr layout (x86-64/arm64)");

/// Reads up to `count` datagrams without blocking beyond what the socket's own mode says.
static inline int cnf_recvmmsg(int fd, struct cnf_mmsghdr *messages, unsigned int count) {
    return (int)syscall(SYS_recvmmsg, fd, messages, count, 0, NULL);
}

// MARK: NFQUEUE attributes

/// The attributes of one NFQNL_MSG_PACKET into `attrs` (indexed by type, `count` entries, cleared
/// first): a plain walk instead of nfq_nlmsg_parse, whose per-attribute callback and mnl validation
/// calls cost ~4 % of the reader's CPU at 600k packets/s (bench figure 14's profile). Same checks:
/// every attribute lies within the message; the fixed-size ones (the packet header, the u32s read
/// below) are long enough, or the message is refused (-1) as nfq_nlmsg_parse refuses it; types
/// beyond `count` are skipped. Returns 0 or -1.
static inline int cnf_nfq_parse_packet(const struct nlmsghdr *nlh, struct nlattr **attrs, int count) {
    for (int i = 0; i < count; i++) attrs[i] = NULL;
    const size_t start = MNL_ALIGN(sizeof(struct nlmsghdr)) + MNL_ALIGN(sizeof(struct nfgenmsg));
    if (nlh->nlmsg_len < start) return -1;
    const char *base = (const char *)nlh;
    size_t offset = start;
    while (offset + sizeof(struct nlattr) <= nlh->nlmsg_len) {
        struct nlattr *attr = (struct nlattr *)(base + offset);
        size_t length = attr->nla_len;
        if (length < sizeof(struct nlattr) || offset + length > nlh->nlmsg_len) return -1;
        int type = attr->nla_type & NLA_TYPE_MASK;
        size_t payload = length - sizeof(struct nlattr);
        switch (type) {
        case NFQA_PACKET_HDR:
            if (payload < sizeof(struct nfqnl_msg_packet_hdr)) return -1;
            break;
        case NFQA_MARK: case NFQA_IFINDEX_INDEV: case NFQA_IFINDEX_OUTDEV: case NFQA_IFINDEX_PHYSINDEV:
        case NFQA_IFINDEX_PHYSOUTDEV: case NFQA_CAP_LEN: case NFQA_SKB_INFO: case NFQA_UID: case NFQA_GID:
            if (payload < sizeof(uint32_t)) return -1;
            break;
        default:
            break;
        }
        if (type < count) attrs[type] = attr;
        offset += MNL_ALIGN(length);
    }
    return 0;
}

// Readers of attributes cnf_nfq_parse_packet accepted.

static inline uint32_t cnf_nfq_packet_id(const struct nlattr *hdr_attr) {
    const struct nfqnl_msg_packet_hdr *ph = (const struct nfqnl_msg_packet_hdr *)mnl_attr_get_payload(hdr_attr);
    return ntohl(ph->packet_id);
}
static inline uint16_t cnf_nfq_hw_protocol(const struct nlattr *hdr_attr) {
    const struct nfqnl_msg_packet_hdr *ph = (const struct nfqnl_msg_packet_hdr *)mnl_attr_get_payload(hdr_attr);
    return ntohs(ph->hw_protocol);
}
static inline uint8_t cnf_nfq_hook(const struct nlattr *hdr_attr) {
    const struct nfqnl_msg_packet_hdr *ph = (const struct nfqnl_msg_packet_hdr *)mnl_attr_get_payload(hdr_attr);
    return ph->hook;
}
/// A big-endian u32 attribute (NFQA_MARK, NFQA_IFINDEX_*, NFQA_CAP_LEN, NFQA_SKB_INFO) in host order.
static inline uint32_t cnf_attr_get_be32(const struct nlattr *attr) { return ntohl(mnl_attr_get_u32(attr)); }

/// Adds NFQA_CFG_FLAGS and NFQA_CFG_MASK (both big-endian) to a config message.
static inline void cnf_nfq_cfg_put_flags(struct nlmsghdr *nlh, uint32_t flags, uint32_t mask) {
    mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(flags));
    mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(mask));
}

// MARK: nftables

/// Size of the NFQUEUE target info nft_compat expects: XT_ALIGN(sizeof(struct xt_NFQ_info_v3)), as iptables-nft sends.
static inline size_t cnf_xt_nfq_info_v3_size(void) { return (sizeof(struct xt_NFQ_info_v3) + 7) & ~(size_t)7; }

/// Sets NFTNL_EXPR_TG_INFO of a "target" expression to an xt_NFQ_info_v3. libnftnl takes ownership of the info
/// buffer (it frees it with the expression), so it must come from malloc. Returns -1 with errno ENOMEM on failure.
static inline int cnf_nftnl_expr_set_nfqueue_v3(struct nftnl_expr *expr, uint16_t queuenum, uint16_t queues_total,
                                                uint16_t flags) {
    struct xt_NFQ_info_v3 *info = (struct xt_NFQ_info_v3 *)calloc(1, cnf_xt_nfq_info_v3_size());
    if (info == NULL) { errno = ENOMEM; return -1; }
    info->queuenum = queuenum;
    info->queues_total = queues_total;
    info->flags = flags;
    return nftnl_expr_set(expr, NFTNL_EXPR_TG_INFO, info, (uint32_t)cnf_xt_nfq_info_v3_size());
}

// MARK: ctnetlink (conntrack)

#include <linux/netfilter/nfnetlink_conntrack.h>

// Bits of CTA_FILTER_ORIG_FLAGS: which fields of the CTA_TUPLE_ORIG sent with a dump the kernel compares.
// The kernel defines them in net/netfilter/nf_internals.h, not in a uapi header, so they are spelled out here;
// they are ABI all the same (conntrack-tools sends them). Supported since Linux 5.10.
static const uint32_t cnf_cta_filter_ip_src = 1u << 0;
static const uint32_t cnf_cta_filter_ip_dst = 1u << 1;
static const uint32_t cnf_cta_filter_proto_num = 1u << 3;
static const uint32_t cnf_cta_filter_proto_src_port = 1u << 4;
static const uint32_t cnf_cta_filter_proto_dst_port = 1u << 5;

/// Appends the nfgenmsg header of an nfnetlink request (family, NFNETLINK_V0, res_id 0) after `nlh`.
static inline void cnf_nfnl_put_nfgenmsg(struct nlmsghdr *nlh, uint8_t family) {
    struct nfgenmsg *nfg = (struct nfgenmsg *)mnl_nlmsg_put_extra_header(nlh, sizeof(struct nfgenmsg));
    nfg->nfgen_family = family;
    nfg->version = NFNETLINK_V0;
    nfg->res_id = 0;
}

/// The family (nfgen_family) of an nfnetlink message, or 0 if it is too short to carry an nfgenmsg.
static inline uint8_t cnf_nfnl_family(const struct nlmsghdr *nlh) {
    if (nlh->nlmsg_len < NLMSG_HDRLEN + sizeof(struct nfgenmsg)) return 0;
    return ((const struct nfgenmsg *)mnl_nlmsg_get_payload(nlh))->nfgen_family;
}

/// The errno carried by NLMSG_DONE of a dump (0 when the dump ended normally).
static inline int cnf_nlmsg_done_error(const struct nlmsghdr *nlh) {
    if (nlh->nlmsg_len < NLMSG_HDRLEN + sizeof(int)) return 0;
    int code = *(const int *)mnl_nlmsg_get_payload(nlh);
    return code < 0 ? -code : 0;
}

/* The socket type of TableLock: SOCK_STREAM | SOCK_CLOEXEC. glibc declares both as members of an enum that
 * Swift resolves differently depending on which modules a target imports, so one function gives the value. */
static inline int cnf_unix_stream_cloexec(void) { return SOCK_STREAM | SOCK_CLOEXEC; }

#endif
