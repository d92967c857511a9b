// nfqref: the reference NFQUEUE readers the Midcom benchmark compares midcomd against.
//
//   nfqref rule QUEUE TOTAL [TABLE]     install the queue rule into chain `enqueue` of `table inet TABLE`
//                                       (native `queue` expression, else the xtables NFQUEUE target via
//                                       nft_compat, as midcomd does; prints which), with bypass (flows spread
//                                       over TOTAL queues by hash)
//   nfqref batch   [options]            accept everything: recvmmsg, one NFQNL_MSG_VERDICT_BATCH per drained socket
//   nfqref perpkt  [options]            accept everything: recvmmsg, one NFQNL_MSG_VERDICT per packet
//   nfqref admit   [options]            like batch, but first inserts one `admit4` element per queued flow
//                                       (all flows of one receive burst in one nftables batch), verdict with
//                                       the admitted mark: the best possible new-flow admission
// options: -q QUEUE (0) -c COPYRANGE (128) -d MAXSECONDS (60) -t ELEMENT_TIMEOUT_S (60) -T TABLE (midcom)
//
// What makes it fast, on purpose: recvmmsg (many datagrams per syscall), batch verdicts sent only when the
// socket is drained (or 1024 verdicts are pending), NFQA_CFG_F_GSO (no segmentation before queueing),
// NETLINK_NO_ENOBUFS (an overflow must not stall the reader; losses are read from /proc instead), a large
// receive buffer, a small copy range (only the headers cross to user space). It runs until SIGTERM or
// MAXSECONDS and prints its counters as one JSON line on stdout.
#include "benchutil.h"

#include <arpa/inet.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/xt_NFQUEUE.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <libnftnl/batch.h>
#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <netinet/ip.h>
#include <sys/socket.h>
#include <unistd.h>

#define VLEN 64
#define MAX_PENDING 1024
#define ADMITTED_MARK 0x4d430002u

static struct mnl_socket *nl;
static uint16_t queue_num = 0;
static uint32_t portid;

// MARK: queue configuration

static void nfq_config(struct nlmsghdr *nlh, const char *what) {
    if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) bu_die(what);
}

static void queue_open(uint32_t copy_range) {
    char buf[MNL_SOCKET_BUFFER_SIZE];
    nl = mnl_socket_open(NETLINK_NETFILTER);
    if (!nl) bu_die("mnl_socket_open");
    if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) bu_die("mnl_socket_bind");
    portid = mnl_socket_get_portid(nl);
    int fd = mnl_socket_get_fd(nl);

    struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue_num);
    nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, NFQNL_CFG_CMD_BIND);
    nfq_config(nlh, "NFQNL_CFG_CMD_BIND");
    nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue_num);
    nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, copy_range);
    nfq_nlmsg_cfg_put_qmaxlen(nlh, 4096);  // the same queue length midcomd asks for
    nfq_config(nlh, "NFQNL_CFG_PARAMS");
    nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue_num);
    mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(NFQA_CFG_F_GSO));
    mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(NFQA_CFG_F_GSO));
    nfq_config(nlh, "NFQA_CFG_FLAGS");

    int one = 1;
    setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one);
    int size = 8 << 20;  // as midcomd
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) != 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};  // wake up to honour the deadline
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

// MARK: verdicts

static uint64_t verdict_msgs = 0, verdict_errors = 0;

static void send_verdict(int type, uint32_t id, uint32_t mark) {
    char buf[256];
    struct nlmsghdr *nlh = nfq_nlmsg_put(buf, type, queue_num);
    nfq_nlmsg_verdict_put(nlh, (int)id, NF_ACCEPT);
    if (mark) nfq_nlmsg_verdict_put_mark(nlh, mark);
    verdict_msgs++;
    if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) verdict_errors++;
}

// MARK: admission (libnftnl)

static const char *table_name = "midcom";
static uint32_t nft_seq;
static struct mnl_socket *nft;
static uint64_t elements_added = 0, nft_batches = 0, nft_errors = 0;
static uint32_t element_timeout_ms = 60000;

/// Adds `n` admit4 elements (20-byte keys) in one nftables transaction.
static void admit_elements(const uint8_t (*keys)[20], int n) {
    if (n == 0) return;
    // One preallocated buffer for every transaction: BATCH_BEGIN, one NEWSETELEM with all elements, BATCH_END.
    static char page[4 << 20];
    struct mnl_nlmsg_batch *b = mnl_nlmsg_batch_start(page, sizeof page);
    nftnl_batch_begin(mnl_nlmsg_batch_current(b), nft_seq++);
    mnl_nlmsg_batch_next(b);
    struct nftnl_set *s = nftnl_set_alloc();
    nftnl_set_set_str(s, NFTNL_SET_TABLE, table_name);
    nftnl_set_set_str(s, NFTNL_SET_NAME, "admit4");
    for (int i = 0; i < n; i++) {
        struct nftnl_set_elem *e = nftnl_set_elem_alloc();
        nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, keys[i], 20);
        nftnl_set_elem_set_u64(e, NFTNL_SET_ELEM_TIMEOUT, element_timeout_ms);
        nftnl_set_elem_add(s, e);
    }
    struct nlmsghdr *nlh = nftnl_nlmsg_build_hdr(mnl_nlmsg_batch_current(b), NFT_MSG_NEWSETELEM, NFPROTO_INET,
                                                 NLM_F_CREATE, nft_seq++);
    nftnl_set_elems_nlmsg_build_payload(nlh, s);
    nftnl_set_free(s);
    mnl_nlmsg_batch_next(b);
    nftnl_batch_end(mnl_nlmsg_batch_current(b), nft_seq++);
    mnl_nlmsg_batch_next(b);
    if (mnl_socket_sendto(nft, mnl_nlmsg_batch_head(b), mnl_nlmsg_batch_size(b)) < 0) nft_errors++;
    mnl_nlmsg_batch_stop(b);
    nft_batches++;
    elements_added += (uint64_t)n;
    // No NLM_F_ACK: a successful batch answers nothing; drain errors without blocking.
    char rbuf[8192];
    while (recv(mnl_socket_get_fd(nft), rbuf, sizeof rbuf, MSG_DONTWAIT) > 0) {
        struct nlmsghdr *r = (struct nlmsghdr *)rbuf;
        if (r->nlmsg_type == NLMSG_ERROR && ((struct nlmsgerr *)mnl_nlmsg_get_payload(r))->error != 0) nft_errors++;
    }
}

/// The admit4 key of an IPv4 UDP/TCP packet: saddr . proto . sport . daddr . dport, each field padded to 4 bytes.
static int admit4_key(const uint8_t *p, size_t len, uint8_t key[20]) {
    if (len < 20 || (p[0] >> 4) != 4) return 0;
    size_t ihl = (size_t)(p[0] & 0x0f) * 4;
    if (len < ihl + 4) return 0;
    memset(key, 0, 20);
    memcpy(key, p + 12, 4);
    key[4] = p[9];
    memcpy(key + 8, p + ihl, 2);
    memcpy(key + 12, p + 16, 4);
    memcpy(key + 16, p + ihl + 2, 2);
    return 1;
}

// MARK: rule installation

static int install_rule(uint16_t qnum, uint16_t total, int native) {
    struct mnl_socket *s = mnl_socket_open(NETLINK_NETFILTER);
    if (!s || mnl_socket_bind(s, 0, MNL_SOCKET_AUTOPID) < 0) bu_die("nftables socket");
    static char page[65536];
    struct mnl_nlmsg_batch *b = mnl_nlmsg_batch_start(page, sizeof page);
    uint32_t seq = (uint32_t)time(NULL);
    nftnl_batch_begin(mnl_nlmsg_batch_current(b), seq++);
    mnl_nlmsg_batch_next(b);
    struct nftnl_rule *flush = nftnl_rule_alloc();
    nftnl_rule_set_str(flush, NFTNL_RULE_TABLE, table_name);
    nftnl_rule_set_str(flush, NFTNL_RULE_CHAIN, "enqueue");
    struct nlmsghdr *nlh = nftnl_nlmsg_build_hdr(mnl_nlmsg_batch_current(b), NFT_MSG_DELRULE, NFPROTO_INET, 0, seq++);
    nftnl_rule_nlmsg_build_payload(nlh, flush);
    nftnl_rule_free(flush);
    mnl_nlmsg_batch_next(b);

    // More than one queue: balanced by flow hash (no cpu-fanout: one sending CPU would fill one queue only).
    uint16_t flags = NFQ_FLAG_BYPASS;
    struct nftnl_rule *r = nftnl_rule_alloc();
    nftnl_rule_set_str(r, NFTNL_RULE_TABLE, table_name);
    nftnl_rule_set_str(r, NFTNL_RULE_CHAIN, "enqueue");
    nftnl_rule_set_u32(r, NFTNL_RULE_FAMILY, NFPROTO_INET);
    struct nftnl_expr *e;
    if (native) {
        e = nftnl_expr_alloc("queue");
        nftnl_expr_set_u16(e, NFTNL_EXPR_QUEUE_NUM, qnum);
        nftnl_expr_set_u16(e, NFTNL_EXPR_QUEUE_TOTAL, total);
        // nft's queue flags: NFT_QUEUE_FLAG_BYPASS 1, NFT_QUEUE_FLAG_CPU_FANOUT 2 (same bits as xtables)
        nftnl_expr_set_u16(e, NFTNL_EXPR_QUEUE_FLAGS, flags);
    } else {
        e = nftnl_expr_alloc("target");
        nftnl_expr_set_str(e, NFTNL_EXPR_TG_NAME, "NFQUEUE");
        nftnl_expr_set_u32(e, NFTNL_EXPR_TG_REV, 3);
        size_t sz = (sizeof(struct xt_NFQ_info_v3) + 7) & ~(size_t)7;
        struct xt_NFQ_info_v3 *info = calloc(1, sz);
        info->queuenum = qnum;
        info->queues_total = total;
        info->flags = flags;
        nftnl_expr_set(e, NFTNL_EXPR_TG_INFO, info, (uint32_t)sz);  // libnftnl owns info now
    }
    nftnl_rule_add_expr(r, e);
    uint32_t rule_seq = seq++;
    nlh = nftnl_nlmsg_build_hdr(mnl_nlmsg_batch_current(b), NFT_MSG_NEWRULE, NFPROTO_INET, NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK, rule_seq);
    nftnl_rule_nlmsg_build_payload(nlh, r);
    nftnl_rule_free(r);
    mnl_nlmsg_batch_next(b);
    nftnl_batch_end(mnl_nlmsg_batch_current(b), seq++);
    mnl_nlmsg_batch_next(b);
    if (mnl_socket_sendto(s, mnl_nlmsg_batch_head(b), mnl_nlmsg_batch_size(b)) < 0) bu_die("sendto(nftables batch)");
    mnl_nlmsg_batch_stop(b);
    char rbuf[8192];
    int result = 0;
    for (;;) {
        ssize_t n = recv(mnl_socket_get_fd(s), rbuf, sizeof rbuf, 0);
        if (n <= 0) break;
        int done = 0;
        for (struct nlmsghdr *m = (struct nlmsghdr *)rbuf; mnl_nlmsg_ok(m, (int)n); m = mnl_nlmsg_next(m, (int *)&n)) {
            if (m->nlmsg_type == NLMSG_ERROR) {
                int err = -((struct nlmsgerr *)mnl_nlmsg_get_payload(m))->error;
                if (err != 0) result = err;
                if (m->nlmsg_seq == rule_seq || err != 0) done = 1;
            }
        }
        if (done) break;
    }
    mnl_socket_close(s);
    return result;
}

// MARK: main loop

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: nfqref rule QUEUE TOTAL [TABLE] | nfqref batch|perpkt|admit [-q N] [-c COPY] [-d SECONDS] [-t TIMEOUT_S] [-T TABLE]\n");
        return 2;
    }
    const char *mode = argv[1];
    if (strcmp(mode, "rule") == 0) {
        if (argc < 4) return 2;
        if (argc > 4) table_name = argv[4];
        uint16_t q = (uint16_t)atoi(argv[2]), total = (uint16_t)atoi(argv[3]);
        int err = install_rule(q, total, 1);
        if (err == 0) { printf("native\n"); return 0; }
        err = install_rule(q, total, 0);
        if (err == 0) { printf("compat\n"); return 0; }
        fprintf(stderr, "nfqref rule: %s\n", strerror(err));
        return 1;
    }
    int batch = strcmp(mode, "perpkt") != 0;
    int admit = strcmp(mode, "admit") == 0;
    uint32_t copy_range = 128;
    double max_seconds = 60;
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "q:c:d:t:T:")) != -1) {
        switch (opt) {
        case 'q': queue_num = (uint16_t)atoi(optarg); break;
        case 'c': copy_range = (uint32_t)atoi(optarg); break;
        case 'd': max_seconds = atof(optarg); break;
        case 't': element_timeout_ms = (uint32_t)atoi(optarg) * 1000u; break;
        case 'T': table_name = optarg; break;
        default: return 2;
        }
    }
    bu_install_signals();
    queue_open(copy_range);
    if (admit) {
        nft = mnl_socket_open(NETLINK_NETFILTER);
        if (!nft || mnl_socket_bind(nft, 0, MNL_SOCKET_AUTOPID) < 0) bu_die("nftables socket");
        nft_seq = (uint32_t)time(NULL) * 1000u;
    }
    int fd = mnl_socket_get_fd(nl);
    size_t slot = copy_range + 1024;
    char *bufs = aligned_alloc(64, slot * VLEN);
    struct mmsghdr msgs[VLEN];
    struct iovec iov[VLEN];
    for (int i = 0; i < VLEN; i++) {
        iov[i].iov_base = bufs + slot * (size_t)i;
        iov[i].iov_len = slot;
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    static uint8_t keys[MAX_PENDING + VLEN][20];
    int nkeys = 0;
    uint64_t received = 0, recv_calls = 0, enobufs = 0;
    uint32_t pending_last = 0;
    int pending = 0;
    uint64_t start = bu_now_ns(), deadline = start + (uint64_t)(max_seconds * 1e9);
    uint64_t cpu_start = bu_cpu_ns();
    const uint16_t packet_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET;

    while (!bu_stop && bu_now_ns() < deadline) {
        // Block for the first datagram only; take whatever else is already there.
        int n = recvmmsg(fd, msgs, VLEN, pending ? MSG_DONTWAIT : MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == ENOBUFS) { enobufs++; continue; }
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) bu_die("recvmmsg");
            n = 0;
        }
        recv_calls++;
        for (int i = 0; i < n; i++) {
            int len = (int)msgs[i].msg_len;
            for (struct nlmsghdr *nlh = (struct nlmsghdr *)iov[i].iov_base; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
                if (nlh->nlmsg_type != packet_type) continue;
                struct nlattr *attr[NFQA_MAX + 1] = {0};
                if (nfq_nlmsg_parse(nlh, attr) < 0 || !attr[NFQA_PACKET_HDR]) continue;
                struct nfqnl_msg_packet_hdr *ph = mnl_attr_get_payload(attr[NFQA_PACKET_HDR]);
                uint32_t id = ntohl(ph->packet_id);
                received++;
                if (admit && attr[NFQA_PAYLOAD] &&
                    admit4_key(mnl_attr_get_payload(attr[NFQA_PAYLOAD]), mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]), keys[nkeys]))
                    nkeys++;
                if (batch) {
                    pending_last = id;
                    pending++;
                } else {
                    send_verdict(NFQNL_MSG_VERDICT, id, 0);
                }
            }
        }
        // Flush when the socket is drained (fewer datagrams than asked for) or too many verdicts wait.
        if (pending && (n < VLEN || pending >= MAX_PENDING)) {
            admit_elements((const uint8_t (*)[20])keys, nkeys);
            nkeys = 0;
            send_verdict(NFQNL_MSG_VERDICT_BATCH, pending_last, admit ? ADMITTED_MARK : 0);
            pending = 0;
        }
    }
    uint64_t elapsed = bu_now_ns() - start, cpu = bu_cpu_ns() - cpu_start;
    printf("{\"mode\":\"%s\",\"received\":%llu,\"verdict_messages\":%llu,\"verdict_errors\":%llu,\"recvmmsg_calls\":%llu,"
           "\"enobufs\":%llu,\"elements_added\":%llu,\"nft_batches\":%llu,\"nft_errors\":%llu,\"cpu_ns\":%llu,\"elapsed_ns\":%llu}\n",
           mode, (unsigned long long)received, (unsigned long long)verdict_msgs, (unsigned long long)verdict_errors,
           (unsigned long long)recv_calls, (unsigned long long)enobufs, (unsigned long long)elements_added,
           (unsigned long long)nft_batches, (unsigned long long)nft_errors, (unsigned long long)cpu, (unsigned long long)elapsed);
    fflush(stdout);
    mnl_socket_close(nl);
    return 0;
}
