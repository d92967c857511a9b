// nftload: the C libnftnl reference for nftables element programming (Midcom benchmark, figures 6 and 7).
//
//   nftload add|del N [-b PER_BATCH] [-t TIMEOUT_S] [-T TABLE] [-o OFFSET] [-m]
//       Adds (or deletes) N admit4 elements of `table inet TABLE`, PER_BATCH elements per NEWSETELEM /
//       DELSETELEM message and one message per transaction (BATCH_BEGIN, message, BATCH_END), sent over one
//       netlink socket with a preallocated buffer; errors are read back without blocking after every batch.
//       Element i is udp 10.202.(i>>8 & 255).(i & 255) + (i>>16) : 1024 + i % 60000 -> 10.201.2.2 : 10000 + i / 60000.
//       -m: one transaction per element shaped as midcomd's (figure 6 "C per-change", the same kernel work as
//       `MidcomBench nft … per-change`): add = one NEWSETELEM with the timeout and the session's tag as comment
//       ("csp <16 hex digits> o", user data as nft writes it); del = a revocation, NEWSETELEM with a 1 s timeout
//       then DELSETELEM of the same element, in one transaction.
//   nftload keys N [-o OFFSET]
//       Prints the same N elements in `nft` syntax (for the `nft -f` comparison).
// Prints {"elements":N,"seconds":S,"per_s":R,"errors":E} for add/del.
#include "benchutil.h"

#include <arpa/inet.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <libmnl/libmnl.h>
#include <libnftnl/common.h>
#include <libnftnl/set.h>
#include <sys/socket.h>
#include <unistd.h>

static void element_key(uint64_t i, uint8_t key[20], uint8_t src[4], uint16_t *sport, uint16_t *dport) {
    src[0] = 10;
    src[1] = (uint8_t)(202 + (i >> 16));
    src[2] = (uint8_t)(i >> 8);
    src[3] = (uint8_t)i;
    *sport = (uint16_t)(1024 + i % 60000);
    *dport = (uint16_t)(10000 + i / 60000);
    uint8_t dst[4] = {10, 201, 2, 2};
    memset(key, 0, 20);
    memcpy(key, src, 4);
    key[4] = 17;
    key[8] = (uint8_t)(*sport >> 8); key[9] = (uint8_t)*sport;
    memcpy(key + 12, dst, 4);
    key[16] = (uint8_t)(*dport >> 8); key[17] = (uint8_t)*dport;
}

// One NEWSETELEM (timeout_ms > 0: with that timeout; udata: with that user data) or DELSETELEM message of one
// admit4 element, built with libnftnl at the batch's write position.
static void put_elements(struct mnl_nlmsg_batch *b, const char *table, int type, const uint8_t key[20], uint64_t timeout_ms,
                         const uint8_t *udata, uint32_t udata_len, uint32_t seq) {
    struct nftnl_set *s = nftnl_set_alloc();
    nftnl_set_set_str(s, NFTNL_SET_TABLE, table);
    nftnl_set_set_str(s, NFTNL_SET_NAME, "admit4");
    struct nftnl_set_elem *e = nftnl_set_elem_alloc();
    nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, key, 20);
    if (timeout_ms) nftnl_set_elem_set_u64(e, NFTNL_SET_ELEM_TIMEOUT, timeout_ms);
    if (udata) nftnl_set_elem_set(e, NFTNL_SET_ELEM_USERDATA, udata, udata_len);
    nftnl_set_elem_add(s, e);
    struct nlmsghdr *nlh = nftnl_nlmsg_build_hdr(mnl_nlmsg_batch_current(b), (uint16_t)type, NFPROTO_INET,
                                                 type == NFT_MSG_NEWSETELEM ? NLM_F_CREATE : 0, seq);
    nftnl_set_elems_nlmsg_build_payload(nlh, s);
    nftnl_set_free(s);
    mnl_nlmsg_batch_next(b);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: nftload add|del|keys N [-b PER_BATCH] [-t TIMEOUT_S] [-T TABLE] [-o OFFSET] [-m]\n");
        return 2;
    }
    const char *mode = argv[1];
    long n = atol(argv[2]), per_batch = 1000, offset = 0;
    uint64_t timeout_ms = 600000;
    const char *table = "midcom";
    int opt, midcomd = 0;
    optind = 3;
    while ((opt = getopt(argc, argv, "b:t:T:o:m")) != -1) {
        switch (opt) {
        case 'm': midcomd = 1; break;
        case 'b': per_batch = atol(optarg); break;
        case 't': timeout_ms = (uint64_t)atol(optarg) * 1000; break;
        case 'T': table = optarg; break;
        case 'o': offset = atol(optarg); break;
        default: return 2;
        }
    }
    uint8_t key[20], src[4];
    uint16_t sport, dport;
    if (strcmp(mode, "keys") == 0) {
        for (long i = offset; i < offset + n; i++) {
            element_key((uint64_t)i, key, src, &sport, &dport);
            printf("%s%u.%u.%u.%u . udp . %u . 10.201.2.2 . %u", i == offset ? "" : ",\n", src[0], src[1], src[2], src[3], sport, dport);
        }
        printf("\n");
        return 0;
    }
    int add = strcmp(mode, "add") == 0;
    if (!add && strcmp(mode, "del") != 0) return 2;
    if (per_batch < 1 || midcomd) per_batch = 1;
    struct mnl_socket *nl = mnl_socket_open(NETLINK_NETFILTER);
    if (!nl || mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) bu_die("nftables socket");
    int fd = mnl_socket_get_fd(nl);
    int size = 64 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
    int one = 1;
    setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
    size_t page_size = (size_t)per_batch * 128 + 65536;
    char *page = malloc(page_size);
    uint32_t seq = (uint32_t)time(NULL) * 1000u;
    uint64_t errors = 0, start = bu_now_ns();
    char rbuf[65536];
    for (long first = offset; first < offset + n; first += per_batch) {
        long count = first + per_batch > offset + n ? offset + n - first : per_batch;
        struct mnl_nlmsg_batch *b = mnl_nlmsg_batch_start(page, page_size);
        nftnl_batch_begin(mnl_nlmsg_batch_current(b), seq++);
        mnl_nlmsg_batch_next(b);
        if (midcomd) {
            element_key((uint64_t)first, key, src, &sport, &dport);
            if (add) {
                // The session's tag, as nft stores a comment: type 0, length, text, NUL.
                uint8_t udata[2 + 32];
                int len = snprintf((char *)udata + 2, sizeof udata - 2, "csp %016llx o",
                                   (unsigned long long)((uint64_t)first * 0x9e3779b97f4a7c15ull | 1));
                udata[0] = 0;
                udata[1] = (uint8_t)(len + 1);
                put_elements(b, table, NFT_MSG_NEWSETELEM, key, timeout_ms, udata, (uint32_t)len + 3, seq++);
            } else {
                put_elements(b, table, NFT_MSG_NEWSETELEM, key, 1000, NULL, 0, seq++);
                put_elements(b, table, NFT_MSG_DELSETELEM, key, 0, NULL, 0, seq++);
            }
        } else {
            struct nftnl_set *s = nftnl_set_alloc();
            nftnl_set_set_str(s, NFTNL_SET_TABLE, table);
            nftnl_set_set_str(s, NFTNL_SET_NAME, "admit4");
            for (long i = first; i < first + count; i++) {
                element_key((uint64_t)i, key, src, &sport, &dport);
                struct nftnl_set_elem *e = nftnl_set_elem_alloc();
                nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, key, 20);
                if (add) nftnl_set_elem_set_u64(e, NFTNL_SET_ELEM_TIMEOUT, timeout_ms);
                nftnl_set_elem_add(s, e);
            }
            struct nlmsghdr *nlh = nftnl_nlmsg_build_hdr(mnl_nlmsg_batch_current(b), add ? NFT_MSG_NEWSETELEM : NFT_MSG_DELSETELEM,
                                                         NFPROTO_INET, add ? NLM_F_CREATE : 0, seq++);
            nftnl_set_elems_nlmsg_build_payload(nlh, s);
            nftnl_set_free(s);
            mnl_nlmsg_batch_next(b);
        }
        nftnl_batch_end(mnl_nlmsg_batch_current(b), seq++);
        mnl_nlmsg_batch_next(b);
        if (mnl_socket_sendto(nl, mnl_nlmsg_batch_head(b), mnl_nlmsg_batch_size(b)) < 0) bu_die("sendto(nftables batch)");
        mnl_nlmsg_batch_stop(b);
        ssize_t got;
        while ((got = recv(fd, rbuf, sizeof rbuf, MSG_DONTWAIT)) > 0) {
            int len = (int)got;
            for (struct nlmsghdr *m = (struct nlmsghdr *)rbuf; mnl_nlmsg_ok(m, len); m = mnl_nlmsg_next(m, &len))
                if (m->nlmsg_type == NLMSG_ERROR && ((struct nlmsgerr *)mnl_nlmsg_get_payload(m))->error != 0) {
                    if (errors++ == 0) fprintf(stderr, "nftload: kernel error %s (batch at element %ld)\n", strerror(-((struct nlmsgerr *)mnl_nlmsg_get_payload(m))->error), first);
                }
        }
    }
    double seconds = (double)(bu_now_ns() - start) / 1e9;
    printf("{\"elements\":%ld,\"seconds\":%.4f,\"per_s\":%.0f,\"errors\":%llu}\n", n, seconds, (double)n / seconds,
           (unsigned long long)errors);
    mnl_socket_close(nl);
    return errors ? 1 : 0;
}
