// nfqref: the reference NFQUEUE readers the Midcom benchmark compares midcomd against.
//
//   nfqref rule QUEUE TOTAL [TABLE [CHAIN [native|compat]]]
//                                       install the queue rule into chain CHAIN (default `enqueue`) of `table inet TABLE`
//                                       (native `queue` expression, else the xtables NFQUEUE target via
//                                       nft_compat, as midcomd does; prints which), with bypass (flows spread
//                                       over TOTAL queues by hash); with an encoding named, that one or none
//                                       (figure 1q compares both on a kernel that has both)
//   nfqref batch   [options]            accept everything: recvmmsg, one NFQNL_MSG_VERDICT_BATCH per drained socket
//   nfqref perpkt  [options]            accept everything: recvmmsg, one NFQNL_MSG_VERDICT per packet
//   nfqref admit   [options] [-m]       like batch, but first inserts one `admit4` element per queued flow
//                                       (all flows of one receive burst in one nftables batch), verdict with
//                                       the admitted mark: the best possible new-flow admission. -m: the same
//                                       work as midcomd's `unsignaled = admit` besides: a session record per flow
//                                       in a hash table (160 octets, as midcomd's Session) and the session's tag
//                                       as the element's comment ("csp <id> l", as midcomd writes it)
//   nfqref csp     [options] [-k]       figure 4's C reference: the two queue crossings of a signaled session
//                                       (SETUP remembered and accepted; ACCEPT admitted with one NEWSETELEM per
//                                       burst and accepted, with a record appended when the SETUP asked for
//                                       records; -k signs it with Ed25519); copy range 2048 by default. -m: also
//                                       the state midcomd keeps per session: a record of 160 octets appended to
//                                       one array, found by session ID and by flow through two open-addressing
//                                       indexes of 8-octet entries (as SessionTable and its SlotIndexes), an
//                                       expiry entry per change, the session's tag as the element's comment
// options: -q QUEUE (0) -c COPYRANGE (128) -d MAXSECONDS (60) -t ELEMENT_TIMEOUT_S (60) -T TABLE (midcom)
// tuning (figure 14 measured each; the defaults measured fastest): -b DATAGRAMS_PER_RECVMMSG (64)
//   -p MAX_PENDING_VERDICTS (1024) -V (a batch verdict after every recvmmsg) -r RCVBUF_MIB (8; 0 = system default)
//   -E (NETLINK_NO_ENOBUFS off) -G (NFQA_CFG_F_GSO off) -F (NFQA_CFG_F_FAIL_OPEN) -L QUEUE_LENGTH (4096)
//   -w block|poll|spin (block: MSG_WAITFORONE; csp takes block or poll: poll sleeps in poll() and then reads,
//   the two system calls per wake-up of a reader of several queues, as midcomd's) -x (walk the attributes
//   instead of nfq_nlmsg_parse)
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
#include <openssl/evp.h>
#include <sys/random.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_VLEN 256
#define MAX_PENDING 1024
#define ADMITTED_MARK 0x4d430002u

static struct mnl_socket *nl;
static uint16_t queue_num = 0;
static uint32_t portid;

// MARK: queue configuration

static void nfq_config(struct nlmsghdr *nlh, const char *what) {
    if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) bu_die(what);
}

/// The knobs of the receive loop, each measured on its own in figure 14 (docs/PERFORMANCE.md); the
/// defaults are the combination that measured fastest, and every option turns one of them back.
static struct {
    int vlen;            // -b: datagrams per recvmmsg (at most MAX_VLEN)
    int max_pending;     // -p: verdicts that may wait before a flush although the socket is not drained
    int rcvbuf_mib;      // -r: receive buffer (SO_RCVBUFFORCE), 0 = the system default
    int enobufs;         // -E: leave NETLINK_NO_ENOBUFS off (an overflow then reports ENOBUFS to the reader)
    int no_gso;          // -G: leave NFQA_CFG_F_GSO off
    int fail_open;       // -F: NFQA_CFG_F_FAIL_OPEN (a full queue accepts instead of dropping)
    int wait_mode;       // -w block|poll|spin: how an empty socket is waited on
    int raw_parse;       // -x: find NFQA_PACKET_HDR by walking the attributes, no nfq_nlmsg_parse table
    int flush_every;     // -V: a batch verdict after every recvmmsg, drained or not
    uint32_t qmaxlen;    // -L: queue length (packets)
} tune = {.vlen = 64, .max_pending = 1024, .rcvbuf_mib = 8, .wait_mode = 0, .qmaxlen = 4096};

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
    nfq_nlmsg_cfg_put_qmaxlen(nlh, tune.qmaxlen);  // 4096 by default: the queue length midcomd asks for
    nfq_config(nlh, "NFQNL_CFG_PARAMS");
    uint32_t flags = (tune.no_gso ? 0 : NFQA_CFG_F_GSO) | (tune.fail_open ? NFQA_CFG_F_FAIL_OPEN : 0);
    nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, queue_num);
    mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(flags));
    mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN));
    nfq_config(nlh, "NFQA_CFG_FLAGS");

    int one = 1;
    if (!tune.enobufs) setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one);
    int size = tune.rcvbuf_mib << 20;  // 8 MiB: as midcomd
    if (size > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) != 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};  // wake up to honour the deadline
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (tune.wait_mode != 0) {  // poll and spin read without blocking
        int fl = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    }
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
static const char *chain_name = "enqueue";
static uint32_t nft_seq;
static struct mnl_socket *nft;
static uint64_t elements_added = 0, nft_batches = 0, nft_errors = 0;
static uint32_t element_timeout_ms = 60000;

/// Adds `n` admit4 elements (20-byte keys) in one nftables transaction.
static void admit_elements_timeouts(const uint8_t (*keys)[20], const uint32_t *timeouts_ms, int n);
static void admit_elements(const uint8_t (*keys)[20], int n) { admit_elements_timeouts(keys, NULL, n); }

// nfqref admit -m: what midcomd keeps and writes per admitted flow besides the element.
static int admit_like_midcomd = 0;
/// A session record the size of midcomd's `Session` (160 octets): key, ID, times, the rest as padding.
struct session_record {
    uint8_t key[20];
    uint32_t used;
    uint64_t id, created_ns, expires_ns;
    uint8_t rest[160 - 20 - 4 - 24];
};
_Static_assert(sizeof(struct session_record) == 160, "session record");
#define SESSION_SLOTS (1u << 22)  // open addressing, linear probing; pages are touched only when used
static struct session_record *sessions;
static uint64_t session_count;
/// The session of a flow, made when new (the ID from the key's hash, as midcomd derives a legacy session's ID).
static const struct session_record *session_for(const uint8_t key[20], uint64_t now_ns) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a: the kind of fast hash a tuned C table would use
    for (int i = 0; i < 20; i++) h = (h ^ key[i]) * 1099511628211ull;
    for (uint32_t i = (uint32_t)h & (SESSION_SLOTS - 1);; i = (i + 1) & (SESSION_SLOTS - 1)) {
        struct session_record *r = &sessions[i];
        if (!r->used) {
            memcpy(r->key, key, 20);
            r->used = 1;
            r->id = h | 1ull << 63;
            r->created_ns = now_ns;
            r->expires_ns = now_ns + (uint64_t)element_timeout_ms * 1000000u;
            session_count++;
            return r;
        }
        if (memcmp(r->key, key, 20) == 0) return r;
    }
}
static uint64_t element_ids[MAX_PENDING + MAX_VLEN];

/// Adds `n` admit4 elements in one transaction, each with its own timeout (ms) when `timeouts_ms` is given.
static void admit_elements_timeouts(const uint8_t (*keys)[20], const uint32_t *timeouts_ms, int n) {
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
        nftnl_set_elem_set_u64(e, NFTNL_SET_ELEM_TIMEOUT, timeouts_ms ? timeouts_ms[i] : element_timeout_ms);
        if (admit_like_midcomd) {
            // The session's tag, as nft stores a comment: type 0, length, text, NUL.
            uint8_t udata[2 + 32];
            int len = snprintf((char *)udata + 2, sizeof udata - 2, "csp %016llx l", (unsigned long long)element_ids[i]);
            udata[0] = 0;
            udata[1] = (uint8_t)(len + 1);
            nftnl_set_elem_set(e, NFTNL_SET_ELEM_USERDATA, udata, (uint32_t)len + 3);
        }
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
    nftnl_rule_set_str(flush, NFTNL_RULE_CHAIN, chain_name);
    struct nlmsghdr *nlh = nftnl_nlmsg_build_hdr(mnl_nlmsg_batch_current(b), NFT_MSG_DELRULE, NFPROTO_INET, 0, seq++);
    nftnl_rule_nlmsg_build_payload(nlh, flush);
    nftnl_rule_free(flush);
    mnl_nlmsg_batch_next(b);

    // More than one queue: balanced by flow hash (no cpu-fanout: one sending CPU would fill one queue only).
    uint16_t flags = NFQ_FLAG_BYPASS;
    struct nftnl_rule *r = nftnl_rule_alloc();
    nftnl_rule_set_str(r, NFTNL_RULE_TABLE, table_name);
    nftnl_rule_set_str(r, NFTNL_RULE_CHAIN, chain_name);
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

// MARK: signaling (figure 4's C reference)

// The work midcomd does for one signaled session (docs/PROTOCOL.md 6.1, 6.2), and nothing else: the SETUP
// is queued, its FLOW and LIFETIME remembered under its session ID and nonce, and it is accepted with the
// "signaling let through" mark; the ACCEPT for it is queued, its flow's admit4 element added (all elements of a
// receive burst in one NEWSETELEM of one transaction, sent before any verdict of the burst, as midcomd
// programs a burst), and it is accepted with that mark — re-injected with this middlebox's record appended
// (a verdict carrying the rewritten packet: CSP, UDP and IP lengths and both checksums fixed) when the SETUP
// asked for records (recordRoute), the record signed with Ed25519 when -k is given (midcomd signs its records
// when it has a key, as it has by default). All verdicts of a burst leave in one sendto: the payload verdicts,
// then one batch verdict for the rest (a batch verdict covers every lower packet ID still queued, so the
// rewritten ones must be decided first). No sessions table beyond pending requests: a direct-mapped cache of
// 65536 slots, enough for any window cspload keeps in flight.
#define CSP_PORT 7227
#define MARK_SIGNALING 0x4d430001u
#define CSP_SLOTS 65536
struct csp_pending { uint64_t sid, nonce; uint32_t lifetime; uint8_t key[20]; uint8_t record_route, used; };
static struct csp_pending csp_cache[CSP_SLOTS];
static uint64_t csp_setups, csp_accepts, csp_admitted, csp_rewritten, csp_unmatched, csp_other, csp_sign_errors;

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t rd32(const uint8_t *p) { return (uint32_t)rd16(p) << 16 | rd16(p + 2); }
static inline uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) << 32 | rd32(p + 4); }
static inline void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void wr32(uint8_t *p, uint32_t v) { wr16(p, (uint16_t)(v >> 16)); wr16(p + 2, (uint16_t)v); }
static inline void wr64(uint8_t *p, uint64_t v) { wr32(p, (uint32_t)(v >> 32)); wr32(p + 4, (uint32_t)v); }
static inline struct csp_pending *csp_slot(uint64_t sid) { return &csp_cache[(sid * 0x9e3779b97f4a7c15ull) >> 48]; }

/// Ones' complement sum of `n` octets (big-endian words), folded later.
static uint32_t csum_add(uint32_t sum, const uint8_t *p, size_t n) {
    for (; n > 1; p += 2, n -= 2) sum += (uint32_t)(p[0] << 8 | p[1]);
    if (n) sum += (uint32_t)p[0] << 8;
    return sum;
}
static uint16_t csum_fold(uint32_t sum) {
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

// This middlebox's identity for its records: ID, epoch, name and (-k) an Ed25519 key.
static const uint64_t csp_mbx_id = 0x4d43424e43485245ull;  // "MCBNCHRE"
static const uint32_t csp_epoch = 1;
static EVP_PKEY *csp_key;
static EVP_MD_CTX *csp_md;
static uint8_t csp_pub[32];

/// Appends this middlebox's record (decision admitted, granted lifetime) to the CSP message `m` of `len`
/// octets (docs/PROTOCOL.md 3.3; with a key, IDENTITY and SIGNATURE nested last, the signature over
/// "CSP1 mbx" 0x00 || header with its length zeroed || record up to the signature with its length zeroed,
/// 7.2). Returns the octets appended.
static size_t csp_append_record(uint8_t *m, size_t len, uint32_t lifetime) {
    uint8_t *r = m + len, *t = r + 22;
    wr16(r, 0x0009);
    wr64(r + 4, csp_mbx_id);
    wr32(r + 12, csp_epoch);
    r[16] = 1;  // admitted
    r[17] = 0;
    wr32(r + 18, lifetime);
    wr16(t, 0x0011); wr16(t + 2, 2); t[4] = 'g'; t[5] = 'w';  // MIDDLEBOX-NAME
    t += 6;
    if (csp_key) {
        wr16(t, 0x000b); wr16(t + 2, 33); t[4] = 0x01; memcpy(t + 5, csp_pub, 32);  // IDENTITY
        t += 37;
        size_t s = (size_t)(t - r);
        uint8_t input[9 + 28 + 256];
        memcpy(input, "CSP1 mbx", 9);
        memcpy(input + 9, m, 28);
        input[9 + 6] = input[9 + 7] = 0;
        memcpy(input + 9 + 28, r, s);
        input[9 + 28 + 2] = input[9 + 28 + 3] = 0;
        uint8_t sig[64];
        size_t siglen = sizeof sig;
        if (EVP_DigestSignInit(csp_md, NULL, NULL, NULL, csp_key) != 1 || EVP_DigestSign(csp_md, sig, &siglen, input, 9 + 28 + s) != 1)
            csp_sign_errors++;
        wr16(t, 0x000c); wr16(t + 2, 65); t[4] = 0x01; memcpy(t + 5, sig, 64);  // SIGNATURE, last
        t += 69;
    }
    size_t added = (size_t)(t - r);
    wr16(r + 2, (uint16_t)(added - 4));
    wr16(m + 6, (uint16_t)(len + added));
    return added;
}

// nfqref csp -m: midcomd's per-session state, laid out as midcomd lays it out, so that the reference pays the
// same memory traffic for a table of every session (figure 4's window 1 runs after window 64 filled it with
// ~200k sessions). Sizes: the indexes as SlotIndex is at that size (2^19 entries, load at most 3/4; no growth
// here, so at most 3/4 of that many sessions are kept); the records as midcomd's Session (160 octets, dense).
#define CSP_INDEX_ENTRIES (1u << 19)
#define CSP_RECORDS (CSP_INDEX_ENTRIES / 4 * 3)
static int csp_table;
static struct session_record *csp_records;
static uint64_t *csp_by_id, *csp_by_flow;  // 0 empty, else tag << 32 | (record + 1)
static struct csp_expiry { uint64_t at_ns, sid; } *csp_expiry;
static uint32_t csp_record_count, csp_expiry_count;
static uint64_t csp_table_full;

static uint64_t csp_mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}
static uint64_t csp_flow_hash(const uint8_t key[20]) {
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < 20; i++) h = (h ^ key[i]) * 1099511628211ull;
    return h;
}
/// The record indexed under `hash` whose session ID is `sid` (flow key `key` when given), or -1 with *empty the
/// entry that ended the probe.
static int64_t csp_find(const uint64_t *index, uint64_t hash, uint64_t sid, const uint8_t *key, uint32_t *empty) {
    uint64_t tag = (hash >> 32) | 1;
    for (uint32_t i = (uint32_t)hash & (CSP_INDEX_ENTRIES - 1);; i = (i + 1) & (CSP_INDEX_ENTRIES - 1)) {
        uint64_t e = index[i];
        if (!e) { *empty = i; return -1; }
        if (e >> 32 != tag) continue;
        const struct session_record *r = &csp_records[(uint32_t)e - 1];
        if (key ? memcmp(r->key, key, 20) == 0 : r->id == sid) return (int64_t)(uint32_t)e - 1;
    }
}
/// An expiry entry, sifted up a binary min-heap as midcomd's expiry heap.
static void csp_expire_at(uint64_t at_ns, uint64_t sid) {
    if (csp_expiry_count == 2 * CSP_RECORDS) return;
    uint32_t i = csp_expiry_count++;
    while (i > 0 && csp_expiry[(i - 1) / 2].at_ns > at_ns) { csp_expiry[i] = csp_expiry[(i - 1) / 2]; i = (i - 1) / 2; }
    csp_expiry[i] = (struct csp_expiry){at_ns, sid};
}
/// A SETUP: its session found by ID (and its flow's holder by flow), else a pending record made and indexed.
static void csp_table_setup(uint64_t sid, const uint8_t key[20], uint32_t lifetime) {
    uint64_t now = bu_now_ns(), hid = csp_mix(sid), hflow = csp_flow_hash(key);
    uint32_t at_id, at_flow;
    int64_t slot = csp_find(csp_by_id, hid, sid, NULL, &at_id);
    int64_t holder = csp_find(csp_by_flow, hflow, 0, key, &at_flow);
    if (slot < 0) {
        if (csp_record_count == CSP_RECORDS) { csp_table_full++; return; }
        slot = csp_record_count++;
        csp_by_id[at_id] = ((hid >> 32) | 1) << 32 | (uint64_t)(slot + 1);
        if (holder < 0) csp_by_flow[at_flow] = ((hflow >> 32) | 1) << 32 | (uint64_t)(slot + 1);
    }
    struct session_record *r = &csp_records[slot];
    memcpy(r->key, key, 20);
    r->used = 1;  // pending
    r->id = sid;
    r->created_ns = now;
    r->expires_ns = now + (uint64_t)lifetime * 1000000000u;
    csp_expire_at(r->expires_ns, sid);
}
/// An ACCEPT: its session found by ID and admitted until the granted lifetime ends.
static void csp_table_accept(uint64_t sid, uint32_t granted) {
    uint32_t empty;
    int64_t slot = csp_find(csp_by_id, csp_mix(sid), sid, NULL, &empty);
    if (slot < 0) return;
    struct session_record *r = &csp_records[slot];
    r->used = 2;  // admitted
    r->expires_ns = bu_now_ns() + (uint64_t)granted * 1000000000u;
    csp_expire_at(r->expires_ns, sid);
}

/// The value of the first top-level TLV `type` of the CSP message m[0 ..< n], NULL if none or malformed.
static const uint8_t *csp_tlv(const uint8_t *m, size_t n, uint16_t type, uint16_t *len) {
    for (size_t off = 28; off + 4 <= n;) {
        uint16_t t = rd16(m + off), l = rd16(m + off + 2);
        if (off + 4 + l > n) return NULL;
        if (t == type) { *len = l; return m + off + 4; }
        off += 4 + (size_t)l;
    }
    return NULL;
}

enum csp_verdict { CSP_ACCEPT, CSP_REWRITE };

/// Decides one queued IPv4 packet p[0 ..< len]; for CSP_REWRITE the new packet is in out (its length in *outlen),
/// for an ACCEPT the element to add is appended to keys/timeouts (*nkeys).
static enum csp_verdict csp_decide(const uint8_t *p, size_t len, uint8_t *out, size_t *outlen, uint8_t (*keys)[20],
                                   uint32_t *timeouts, int *nkeys) {
    if (len < 20 || (p[0] >> 4) != 4 || p[9] != 17) { csp_other++; return CSP_ACCEPT; }
    size_t ihl = (size_t)(p[0] & 0x0f) * 4;
    if (len < ihl + 8 + 28) { csp_other++; return CSP_ACCEPT; }
    const uint8_t *u = p + ihl, *m = u + 8;
    size_t mlen = len - ihl - 8;
    if (m[0] != 'C' || m[1] != 'S' || rd16(m + 6) != mlen) { csp_other++; return CSP_ACCEPT; }
    uint64_t sid = rd64(m + 8), nonce = rd64(m + 16);
    if (m[3] == 1 && rd16(u + 2) == CSP_PORT) {  // SETUP toward a responder
        uint16_t fl, ll;
        const uint8_t *f = csp_tlv(m, mlen, 0x8001, &fl), *lt = csp_tlv(m, mlen, 0x0002, &ll);
        if (!f || fl != 14 || f[1] != 4) { csp_other++; return CSP_ACCEPT; }
        struct csp_pending *e = csp_slot(sid);
        e->sid = sid;
        e->nonce = nonce;
        uint32_t lifetime = lt && ll == 4 ? rd32(lt) : 30;
        e->lifetime = lifetime > 3600 ? 3600 : lifetime;  // midcomd's default clamp
        memset(e->key, 0, 20);
        memcpy(e->key, f + 6, 4);       // source address
        e->key[4] = f[0];               // protocol
        memcpy(e->key + 8, f + 2, 2);   // source port
        memcpy(e->key + 12, f + 10, 4); // destination address
        memcpy(e->key + 16, f + 4, 2);  // destination port
        e->record_route = (m[4] & 0x02) != 0;
        e->used = 1;
        if (csp_table) csp_table_setup(sid, e->key, e->lifetime);
        csp_setups++;
        return CSP_ACCEPT;
    }
    if (m[3] == 2 && rd16(u) == CSP_PORT) {  // ACCEPT from the responder
        csp_accepts++;
        struct csp_pending *e = csp_slot(sid);
        if (!e->used || e->sid != sid || e->nonce != nonce) { csp_unmatched++; return CSP_ACCEPT; }
        e->used = 0;
        uint16_t ll;
        const uint8_t *lt = csp_tlv(m, mlen, 0x0002, &ll);
        uint32_t granted = e->lifetime;
        if (lt && ll == 4 && rd32(lt) && rd32(lt) < granted) granted = rd32(lt);
        memcpy(keys[*nkeys], e->key, 20);
        timeouts[*nkeys] = granted * 1000u;
        if (csp_table) {
            csp_table_accept(sid, granted);
            element_ids[*nkeys] = sid;  // the element's comment (admit_like_midcomd)
        }
        (*nkeys)++;
        csp_admitted++;
        if (!e->record_route) return CSP_ACCEPT;
        // The rewritten packet: the record appended to the CSP message, then every length and checksum fixed.
        memcpy(out, p, len);
        size_t added = csp_append_record(out + ihl + 8, mlen, granted);
        size_t total = len + added;
        uint8_t *ip = out, *udp = out + ihl;
        wr16(ip + 2, (uint16_t)total);
        wr16(ip + 10, 0);
        wr16(ip + 10, csum_fold(csum_add(0, ip, ihl)));
        wr16(udp + 4, (uint16_t)(total - ihl));
        wr16(udp + 6, 0);
        uint32_t sum = csum_add(0, ip + 12, 8);  // pseudo header: addresses, protocol, UDP length
        sum += 17 + (uint32_t)(total - ihl);
        uint16_t c = csum_fold(csum_add(sum, udp, total - ihl));
        wr16(udp + 6, c ? c : 0xffff);
        *outlen = total;
        csp_rewritten++;
        return CSP_REWRITE;
    }
    csp_other++;
    return CSP_ACCEPT;
}

/// The signaling reader: recvmmsg bursts; per burst one nftables transaction, then all verdicts in one sendto.
static void run_csp(uint32_t copy_range, double max_seconds) {
    int fd = mnl_socket_get_fd(nl);
    const int vlen = tune.vlen;
    size_t slot = copy_range + 1024;
    char *bufs = aligned_alloc(64, slot * (size_t)vlen);
    static struct mmsghdr msgs[MAX_VLEN];
    static struct iovec iov[MAX_VLEN];
    for (int i = 0; i < vlen; i++) {
        iov[i] = (struct iovec){bufs + slot * (size_t)i, slot};
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    static uint8_t keys[MAX_VLEN][20];
    static uint32_t timeouts[MAX_VLEN];
    // The verdicts of one burst: payload verdicts (at most one packet of 2 KiB + record each), then the batch verdict.
    static char vbuf[MAX_VLEN * (2048 + 512) + 256];
    static uint8_t rewritten[2048 + 512];
    const uint16_t packet_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET;
    uint64_t deadline = bu_now_ns() + (uint64_t)(max_seconds * 1e9), received = 0, sends = 0;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    while (!bu_stop) {
        // -w poll: sleep in poll() and read without blocking, as a reader of several queues must
        // (midcomd); block (the default): recvmmsg sleeps for the first datagram itself.
        if (tune.wait_mode == 1 && poll(&pfd, 1, 200) <= 0) {
            if (bu_now_ns() >= deadline) break;
            continue;
        }
        int n = recvmmsg(fd, msgs, (unsigned)vlen, tune.wait_mode == 0 ? MSG_WAITFORONE : MSG_DONTWAIT, NULL);
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ENOBUFS) bu_die("recvmmsg");
            if (bu_now_ns() >= deadline) break;
            continue;
        }
        int nkeys = 0, accepted = 0;
        size_t voff = 0;
        uint32_t last_id = 0;
        for (int i = 0; i < n; i++) {
            int len = (int)msgs[i].msg_len;
            for (struct nlmsghdr *nlh = (struct nlmsghdr *)iov[i].iov_base; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
                if (nlh->nlmsg_type != packet_type) continue;
                struct nlattr *attr[NFQA_MAX + 1] = {0};
                if (nfq_nlmsg_parse(nlh, attr) < 0 || !attr[NFQA_PACKET_HDR]) continue;
                uint32_t id = ntohl(((struct nfqnl_msg_packet_hdr *)mnl_attr_get_payload(attr[NFQA_PACKET_HDR]))->packet_id);
                received++;
                size_t outlen = 0;
                enum csp_verdict v = CSP_ACCEPT;
                if (attr[NFQA_PAYLOAD])
                    v = csp_decide(mnl_attr_get_payload(attr[NFQA_PAYLOAD]), mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]),
                                   rewritten, &outlen, keys, timeouts, &nkeys);
                if (v == CSP_REWRITE) {
                    struct nlmsghdr *vh = nfq_nlmsg_put(vbuf + voff, NFQNL_MSG_VERDICT, queue_num);
                    nfq_nlmsg_verdict_put(vh, (int)id, NF_ACCEPT);
                    nfq_nlmsg_verdict_put_mark(vh, MARK_SIGNALING);
                    nfq_nlmsg_verdict_put_pkt(vh, rewritten, (uint32_t)outlen);
                    voff += NLMSG_ALIGN(vh->nlmsg_len);
                } else {
                    accepted++;
                    last_id = id;
                }
            }
        }
        // The burst's admissions first: the ACCEPTs must not reach the initiator before their flows are admitted.
        admit_elements_timeouts((const uint8_t (*)[20])keys, timeouts, nkeys);
        if (accepted) {
            struct nlmsghdr *vh = nfq_nlmsg_put(vbuf + voff, NFQNL_MSG_VERDICT_BATCH, queue_num);
            nfq_nlmsg_verdict_put(vh, (int)last_id, NF_ACCEPT);
            nfq_nlmsg_verdict_put_mark(vh, MARK_SIGNALING);
            voff += NLMSG_ALIGN(vh->nlmsg_len);
        }
        if (voff) {
            verdict_msgs++;
            sends++;
            if (mnl_socket_sendto(nl, vbuf, voff) < 0) verdict_errors++;
        }
        if (bu_now_ns() >= deadline) break;
    }
    printf("{\"mode\":\"csp\",\"received\":%llu,\"setups\":%llu,\"accepts\":%llu,\"admitted\":%llu,\"rewritten\":%llu,"
           "\"unmatched\":%llu,\"other\":%llu,\"sign_errors\":%llu,\"verdict_sends\":%llu,\"verdict_errors\":%llu,"
           "\"elements_added\":%llu,\"nft_batches\":%llu,\"nft_errors\":%llu,\"table_sessions\":%llu,"
           "\"table_full\":%llu,\"cpu_ns\":%llu}\n",
           (unsigned long long)received, (unsigned long long)csp_setups, (unsigned long long)csp_accepts,
           (unsigned long long)csp_admitted, (unsigned long long)csp_rewritten, (unsigned long long)csp_unmatched,
           (unsigned long long)csp_other, (unsigned long long)csp_sign_errors, (unsigned long long)sends,
           (unsigned long long)verdict_errors, (unsigned long long)elements_added, (unsigned long long)nft_batches,
           (unsigned long long)nft_errors, (unsigned long long)csp_record_count, (unsigned long long)csp_table_full,
           (unsigned long long)bu_cpu_ns());
    fflush(stdout);
}

// MARK: main loop

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: nfqref rule QUEUE TOTAL [TABLE [CHAIN [native|compat]]] | nfqref batch|perpkt|admit|csp [-q N] [-c COPY] [-d SECONDS]"
                        " [-t TIMEOUT_S] [-T TABLE] [-b N] [-p N] [-V] [-r MIB] [-E] [-G] [-F] [-L N] [-w block|poll|spin] [-x] [-k]\n");
        return 2;
    }
    const char *mode = argv[1];
    if (strcmp(mode, "rule") == 0) {
        if (argc < 4) return 2;
        if (argc > 4) table_name = argv[4];
        if (argc > 5) chain_name = argv[5];
        const char *only = argc > 6 ? argv[6] : NULL;
        if (only && strcmp(only, "native") != 0 && strcmp(only, "compat") != 0) return 2;
        uint16_t q = (uint16_t)atoi(argv[2]), total = (uint16_t)atoi(argv[3]);
        int err = 0;
        if (!only || strcmp(only, "native") == 0) {
            err = install_rule(q, total, 1);
            if (err == 0) { printf("native\n"); return 0; }
        }
        if (!only || strcmp(only, "compat") == 0) {
            err = install_rule(q, total, 0);
            if (err == 0) { printf("compat\n"); return 0; }
        }
        fprintf(stderr, "nfqref rule: %s\n", strerror(err));
        return 1;
    }
    int batch = strcmp(mode, "perpkt") != 0;
    int admit = strcmp(mode, "admit") == 0, csp = strcmp(mode, "csp") == 0, sign = 0;
    if (strcmp(mode, "batch") != 0 && strcmp(mode, "perpkt") != 0 && !admit && !csp) return 2;
    uint32_t copy_range = csp ? 2048 : 128;  // csp: as midcomd, whole signaling messages
    double max_seconds = 60;
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "q:c:d:t:T:b:p:r:EGFw:xVL:km")) != -1) {
        switch (opt) {
        case 'q': queue_num = (uint16_t)atoi(optarg); break;
        case 'c': copy_range = (uint32_t)atoi(optarg); break;
        case 'd': max_seconds = atof(optarg); break;
        case 't': element_timeout_ms = (uint32_t)atoi(optarg) * 1000u; break;
        case 'T': table_name = optarg; break;
        case 'b': tune.vlen = atoi(optarg); break;
        case 'p': tune.max_pending = atoi(optarg); break;
        case 'r': tune.rcvbuf_mib = atoi(optarg); break;
        case 'E': tune.enobufs = 1; break;
        case 'G': tune.no_gso = 1; break;
        case 'F': tune.fail_open = 1; break;
        case 'w':
            if (strcmp(optarg, "block") == 0) tune.wait_mode = 0;
            else if (strcmp(optarg, "poll") == 0) tune.wait_mode = 1;
            else if (strcmp(optarg, "spin") == 0) tune.wait_mode = 2;
            else return 2;
            break;
        case 'x': tune.raw_parse = 1; break;
        case 'V': tune.flush_every = 1; break;
        case 'L': tune.qmaxlen = (uint32_t)atoi(optarg); break;
        case 'k': sign = 1; break;
        case 'm': admit_like_midcomd = 1; break;
        default: return 2;
        }
    }
    if (tune.vlen < 1 || tune.vlen > MAX_VLEN || tune.max_pending < 1 || tune.max_pending > MAX_PENDING) return 2;
    bu_install_signals();
    queue_open(copy_range);
    if (admit_like_midcomd && admit) {
        sessions = calloc(SESSION_SLOTS, sizeof *sessions);
        if (!sessions) bu_die("calloc sessions");
    } else if (admit_like_midcomd && csp) {
        csp_table = 1;
        csp_records = calloc(CSP_RECORDS, sizeof *csp_records);
        csp_by_id = calloc(CSP_INDEX_ENTRIES, sizeof *csp_by_id);
        csp_by_flow = calloc(CSP_INDEX_ENTRIES, sizeof *csp_by_flow);
        csp_expiry = calloc(2 * (size_t)CSP_RECORDS, sizeof *csp_expiry);
        if (!csp_records || !csp_by_id || !csp_by_flow || !csp_expiry) bu_die("calloc session table");
    } else if (admit_like_midcomd) {
        return 2;
    }
    if (admit || csp) {
        nft = mnl_socket_open(NETLINK_NETFILTER);
        if (!nft || mnl_socket_bind(nft, 0, MNL_SOCKET_AUTOPID) < 0) bu_die("nftables socket");
        nft_seq = (uint32_t)time(NULL) * 1000u;
    }
    if (csp) {
        if (sign) {
            uint8_t seed[32];
            size_t publen = sizeof csp_pub;
            if (getrandom(seed, sizeof seed, 0) != sizeof seed) bu_die("getrandom");
            csp_key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, sizeof seed);
            csp_md = EVP_MD_CTX_new();
            if (!csp_key || !csp_md || EVP_PKEY_get_raw_public_key(csp_key, csp_pub, &publen) != 1) {
                fprintf(stderr, "nfqref: OpenSSL has no Ed25519\n");
                return 1;
            }
        }
        run_csp(copy_range, max_seconds);
        mnl_socket_close(nl);
        return 0;
    }
    int fd = mnl_socket_get_fd(nl);
    const int vlen = tune.vlen;
    size_t slot = copy_range + 1024;
    char *bufs = aligned_alloc(64, slot * (size_t)vlen);
    static struct mmsghdr msgs[MAX_VLEN];
    static struct iovec iov[MAX_VLEN];
    for (int i = 0; i < vlen; i++) {
        iov[i].iov_base = bufs + slot * (size_t)i;
        iov[i].iov_len = slot;
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    static uint8_t keys[MAX_PENDING + MAX_VLEN][20];
    int nkeys = 0;
    uint64_t received = 0, recv_calls = 0, enobufs = 0, empty_calls = 0;
    uint32_t pending_last = 0;
    int pending = 0;
    uint64_t start = bu_now_ns(), deadline = start + (uint64_t)(max_seconds * 1e9);
    uint64_t cpu_start = bu_cpu_ns();
    const uint16_t packet_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};

    while (!bu_stop) {
        int flags;
        if (tune.wait_mode == 0) {
            // Block for the first datagram only; take whatever else is already there.
            flags = pending ? MSG_DONTWAIT : MSG_WAITFORONE;
        } else {
            flags = MSG_DONTWAIT;
            // poll: sleep in poll() when there is nothing to flush and nothing to read; spin: never sleep.
            if (tune.wait_mode == 1 && !pending && poll(&pfd, 1, 200) <= 0) {
                if (bu_now_ns() >= deadline) break;
                continue;
            }
        }
        int n = recvmmsg(fd, msgs, (unsigned)vlen, flags, NULL);
        recv_calls++;
        if (n < 0) {
            if (errno == ENOBUFS) { enobufs++; continue; }
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) bu_die("recvmmsg");
            n = 0;
            empty_calls++;
            if (!pending && bu_now_ns() >= deadline) break;
        }
        for (int i = 0; i < n; i++) {
            int len = (int)msgs[i].msg_len;
            for (struct nlmsghdr *nlh = (struct nlmsghdr *)iov[i].iov_base; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
                if (nlh->nlmsg_type != packet_type) continue;
                struct nfqnl_msg_packet_hdr *ph = NULL;
                const struct nlattr *payload = NULL;
                if (tune.raw_parse) {
                    // NFQA_PACKET_HDR is the first attribute the kernel puts (nfqnl_build_packet_message).
                    const struct nlattr *at;
                    mnl_attr_for_each(at, nlh, sizeof(struct nfgenmsg)) {
                        uint16_t t = mnl_attr_get_type(at);
                        if (t == NFQA_PACKET_HDR) ph = mnl_attr_get_payload(at);
                        else if (t == NFQA_PAYLOAD) payload = at;
                        if (ph && (!admit || payload)) break;
                    }
                    if (!ph) continue;
                } else {
                    struct nlattr *attr[NFQA_MAX + 1] = {0};
                    if (nfq_nlmsg_parse(nlh, attr) < 0 || !attr[NFQA_PACKET_HDR]) continue;
                    ph = mnl_attr_get_payload(attr[NFQA_PACKET_HDR]);
                    payload = attr[NFQA_PAYLOAD];
                }
                uint32_t id = ntohl(ph->packet_id);
                received++;
                if (admit && payload &&
                    admit4_key(mnl_attr_get_payload(payload), mnl_attr_get_payload_len(payload), keys[nkeys])) {
                    if (admit_like_midcomd) element_ids[nkeys] = session_for(keys[nkeys], bu_now_ns())->id;
                    nkeys++;
                }
                if (batch) {
                    pending_last = id;
                    pending++;
                } else {
                    send_verdict(NFQNL_MSG_VERDICT, id, 0);
                }
            }
        }
        // Flush when the socket is drained (fewer datagrams than asked for) or too many verdicts wait.
        if (pending && (n < vlen || pending >= tune.max_pending || tune.flush_every)) {
            admit_elements((const uint8_t (*)[20])keys, nkeys);
            nkeys = 0;
            send_verdict(NFQNL_MSG_VERDICT_BATCH, pending_last, admit ? ADMITTED_MARK : 0);
            pending = 0;
            if (bu_now_ns() >= deadline) break;
        } else if (!batch && bu_now_ns() >= deadline) {
            break;
        }
    }
    uint64_t elapsed = bu_now_ns() - start, cpu = bu_cpu_ns() - cpu_start;
    printf("{\"mode\":\"%s\",\"received\":%llu,\"verdict_messages\":%llu,\"verdict_errors\":%llu,\"recvmmsg_calls\":%llu,"
           "\"empty_calls\":%llu,\"enobufs\":%llu,\"elements_added\":%llu,\"nft_batches\":%llu,\"nft_errors\":%llu,\"cpu_ns\":%llu,\"elapsed_ns\":%llu}\n",
           mode, (unsigned long long)received, (unsigned long long)verdict_msgs, (unsigned long long)verdict_errors,
           (unsigned long long)recv_calls, (unsigned long long)empty_calls, (unsigned long long)enobufs, (unsigned long long)elements_added,
           (unsigned long long)nft_batches, (unsigned long long)nft_errors, (unsigned long long)cpu, (unsigned long long)elapsed);
    fflush(stdout);
    mnl_socket_close(nl);
    return 0;
}
