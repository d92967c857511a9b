// cspload: CSP signaling load for the Midcom benchmark (docs/PROTOCOL.md, sections 3 and 5).
//
//   cspload respond [-p PORT] [-d SECONDS]
//       The responder: answers every SETUP with ACCEPT (same session ID, nonce and sequence, LIFETIME as
//       requested) and counts TEARDOWNs. Replies leave in sendmmsg bursts.
//   cspload setup DST [-w WINDOW] [-s SOCKETS] [-d SECONDS] [-l LIFETIME] [-L] [-t]
//       The initiators: SOCKETS signaling sockets keep WINDOW sessions in flight in total (many concurrent
//       signalers); each ACCEPT completes a session (its round trip goes into the histogram) and starts the
//       next. -L signals incoming pinholes (REQUESTED-ACTION listen, FLOW 0.0.0.0:0 -> self:port), -t sends a
//       TEARDOWN after each ACCEPT (pinhole removed). A session unanswered after 500 ms is counted lost and
//       replaced. Prints sessions/s and the setup round trip p50/p99/p99.9 (ns) as one JSON line.
// Messages carry no signature and no recordRoute flag: the smallest valid SETUP (FLOW + LIFETIME, 54 octets).
#include "benchutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#define CSP_PORT 7227
#define T_SETUP 1
#define T_ACCEPT 2
#define T_TEARDOWN 13

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }
static void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)(v >> 32)); put32(p + 4, (uint32_t)v); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

/// The 28-octet header: "CS" version type flags result length sessionID nonce sequence.
static void header(uint8_t *m, uint8_t type, uint16_t length, uint64_t sid, uint64_t nonce, uint32_t seq) {
    m[0] = 'C'; m[1] = 'S'; m[2] = 1; m[3] = type; m[4] = 0; m[5] = 0;
    put16(m + 6, length);
    put64(m + 8, sid);
    put64(m + 16, nonce);
    put32(m + 24, seq);
}

static int cmd_respond(int argc, char **argv) {
    uint16_t port = CSP_PORT;
    double seconds = 30;
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "p:d:")) != -1) {
        if (opt == 'p') port = (uint16_t)atoi(optarg);
        else if (opt == 'd') seconds = atof(optarg);
        else return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int one = 1, size = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) bu_die("bind");
    struct timeval tv = {0, 100000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    enum { V = 64 };
    static uint8_t in[V][512], out[V][64];
    static struct sockaddr_in from[V];
    struct mmsghdr rm[V], sm[V];
    struct iovec riov[V], siov[V];
    memset(rm, 0, sizeof rm);
    memset(sm, 0, sizeof sm);
    for (int i = 0; i < V; i++) {
        riov[i] = (struct iovec){in[i], sizeof in[i]};
        rm[i].msg_hdr.msg_iov = &riov[i];
        rm[i].msg_hdr.msg_iovlen = 1;
        rm[i].msg_hdr.msg_name = &from[i];
        rm[i].msg_hdr.msg_namelen = sizeof from[i];
    }
    bu_install_signals();
    uint64_t end = bu_now_ns() + (uint64_t)(seconds * 1e9), setups = 0, teardowns = 0, other = 0;
    printf("ready\n");
    fflush(stdout);
    while (!bu_stop && bu_now_ns() < end) {
        for (int i = 0; i < V; i++) rm[i].msg_hdr.msg_namelen = sizeof from[i];
        int n = recvmmsg(fd, rm, V, MSG_WAITFORONE, NULL);
        if (n <= 0) continue;
        int replies = 0;
        for (int i = 0; i < n; i++) {
            const uint8_t *m = in[i];
            if (rm[i].msg_len < 28 || m[0] != 'C' || m[1] != 'S') { other++; continue; }
            if (m[3] == T_TEARDOWN) { teardowns++; continue; }
            if (m[3] != T_SETUP) { other++; continue; }
            setups++;
            uint8_t *r = out[replies];
            header(r, T_ACCEPT, 36, get64(m + 8), get64(m + 16), get32(m + 24));
            put16(r + 28, 0x0002);  // LIFETIME
            put16(r + 30, 4);
            put32(r + 32, 30);
            siov[replies] = (struct iovec){r, 36};
            sm[replies].msg_hdr.msg_iov = &siov[replies];
            sm[replies].msg_hdr.msg_iovlen = 1;
            sm[replies].msg_hdr.msg_name = &from[i];
            sm[replies].msg_hdr.msg_namelen = sizeof from[i];
            replies++;
        }
        if (replies) sendmmsg(fd, sm, (unsigned)replies, 0);
    }
    printf("{\"setups\":%llu,\"teardowns\":%llu,\"other\":%llu}\n", (unsigned long long)setups,
           (unsigned long long)teardowns, (unsigned long long)other);
    return 0;
}

struct slot { uint64_t index; uint64_t sent_ns; int sock; };

static int cmd_setup(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *dst = argv[2];
    int window = 64, nsock = 8, listen_mode = 0, teardown = 0;
    double seconds = 5;
    uint32_t lifetime = 30;
    int opt;
    optind = 3;
    while ((opt = getopt(argc, argv, "w:s:d:l:Lt")) != -1) {
        switch (opt) {
        case 'w': window = atoi(optarg); break;
        case 's': nsock = atoi(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 'l': lifetime = (uint32_t)atoi(optarg); break;
        case 'L': listen_mode = 1; break;
        case 't': teardown = 1; break;
        default: return 2;
        }
    }
    if (window < 1 || window > 65535 || nsock < 1 || nsock > 256) return 2;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(CSP_PORT)};
    inet_pton(AF_INET, dst, &to.sin_addr);
    int *fds = calloc((size_t)nsock, sizeof(int));
    struct pollfd *pfd = calloc((size_t)nsock, sizeof(struct pollfd));
    uint32_t self = 0;
    for (int i = 0; i < nsock; i++) {
        fds[i] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (connect(fds[i], (struct sockaddr *)&to, sizeof to) < 0) bu_die("connect");
        struct sockaddr_in local;
        socklen_t len = sizeof local;
        getsockname(fds[i], (struct sockaddr *)&local, &len);
        self = local.sin_addr.s_addr;
        pfd[i] = (struct pollfd){fds[i], POLLIN, 0};
    }
    uint32_t remote = to.sin_addr.s_addr;
    uint64_t tag = (bu_now_ns() & 0xffff) | 1;
    struct slot *slots = calloc((size_t)window, sizeof *slots);
    static bu_hist hist;
    uint64_t next_index = 0, completed = 0, lost = 0;

    // SETUP: header + FLOW (0x8001, 14) + LIFETIME (0x0002, 4) [+ REQUESTED-ACTION (0x0004, 1) listen]
    void start(int k) {
        struct slot *s = &slots[k];
        s->index = next_index++;
        s->sock = k % nsock;
        uint8_t m[64];
        uint16_t length = (uint16_t)(28 + 18 + 8 + (listen_mode ? 5 : 0));
        uint64_t sid = tag << 48 | (uint64_t)k << 32 | (s->index & 0xffffffffu);
        header(m, T_SETUP, length, sid, sid * 0x9e3779b97f4a7c15ull, 1);
        uint8_t *f = m + 28;
        put16(f, 0x8001); put16(f + 2, 14);
        f[4] = 17; f[5] = 4;  // udp, IPv4
        if (listen_mode) {
            put16(f + 6, 0);                                           // any source port
            put16(f + 8, (uint16_t)(1024 + s->index % 64000));         // our port
            memset(f + 10, 0, 4);                                      // any peer
            memcpy(f + 14, &self, 4);
        } else {
            put16(f + 6, (uint16_t)(1024 + s->index % 64000));
            put16(f + 8, (uint16_t)(10000 + (s->index / 64000) % 50000));
            memcpy(f + 10, &self, 4);
            memcpy(f + 14, &remote, 4);
        }
        uint8_t *l = f + 18;
        put16(l, 0x0002); put16(l + 2, 4); put32(l + 4, lifetime);
        if (listen_mode) { put16(l + 8, 0x0004); put16(l + 10, 1); l[12] = 0x08; }
        s->sent_ns = bu_now_ns();
        send(fds[s->sock], m, length, 0);
    }

    bu_install_signals();
    uint64_t begin = bu_now_ns(), end = begin + (uint64_t)(seconds * 1e9), last_scan = begin;
    for (int k = 0; k < window; k++) start(k);
    uint8_t buf[1024];
    while (!bu_stop) {
        uint64_t now = bu_now_ns();
        if (now >= end) break;
        if (poll(pfd, (nfds_t)nsock, 50) < 0 && errno != EINTR) bu_die("poll");
        for (int i = 0; i < nsock; i++) {
            if (!(pfd[i].revents & POLLIN)) continue;
            for (int burst = 0; burst < 64; burst++) {
                ssize_t n = recv(fds[i], buf, sizeof buf, 0);
                if (n < 28) break;
                if (buf[0] != 'C' || buf[1] != 'S' || buf[3] != T_ACCEPT) continue;
                uint64_t sid = get64(buf + 8);
                int k = (int)((sid >> 32) & 0xffff);
                if ((sid >> 48) != tag || k >= window || (slots[k].index & 0xffffffffu) != (sid & 0xffffffffu)) continue;
                uint64_t t = bu_now_ns();
                bu_hist_record(&hist, t - slots[k].sent_ns);
                completed++;
                if (teardown) {
                    uint8_t m[28];
                    header(m, T_TEARDOWN, 28, sid, sid * 0x9e3779b97f4a7c15ull + 1, 2);
                    send(fds[slots[k].sock], m, 28, 0);
                }
                start(k);
            }
        }
        now = bu_now_ns();
        if (now - last_scan > 50000000ull) {
            last_scan = now;
            for (int k = 0; k < window; k++)
                if (now - slots[k].sent_ns > 500000000ull) { lost++; start(k); }
        }
    }
    double elapsed = (double)(bu_now_ns() - begin) / 1e9;
    printf("{\"completed\":%llu,\"lost\":%llu,\"seconds\":%.3f,\"sessions_per_s\":%.0f,\"rtt_p50_ns\":%.0f,"
           "\"rtt_p99_ns\":%.0f,\"rtt_p999_ns\":%.0f,\"rtt_max_ns\":%llu}\n",
           (unsigned long long)completed, (unsigned long long)lost, elapsed, (double)completed / elapsed,
           bu_hist_percentile(&hist, 50), bu_hist_percentile(&hist, 99), bu_hist_percentile(&hist, 99.9),
           (unsigned long long)hist.max);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "respond") == 0) return cmd_respond(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "setup") == 0) return cmd_setup(argc, argv);
    fprintf(stderr, "usage: cspload respond [-p PORT] [-d S] | cspload setup DST [-w WINDOW] [-s SOCKETS] [-d S] [-l LIFETIME] [-L] [-t]\n");
    return 2;
}
