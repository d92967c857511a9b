// udpblast: bounded UDP load for the Midcom benchmark (sendmmsg / recvmmsg).
//
//   udpblast send DST PORT [-s IPSIZE] [-r PPS] [-d SECONDS] [-S SPORT] [-B SOURCE]
//       One flow [SOURCE:]SPORT -> DST:PORT, IPv4 packets of IPSIZE bytes (default 64; payload = IPSIZE - 28, at least 16),
//       at PPS packets/s (0 = as fast as possible) for SECONDS. Every payload carries a sequence number and the
//       CLOCK_MONOTONIC send time, so a receiver in another namespace of this machine can measure one-way latency.
//   udpblast flows DST PORTBASE -f FLOWS [-k PKTS_PER_FLOW] [-l LAG] [-r FLOWS_PER_S] [-S SPORT] [-d SECONDS]
//       FLOWS distinct flows (SPORT+n . DST . PORTBASE+m, 60000 destination ports per source port). The first
//       packet of flow j is sent at step j, its k-th packet at step j + (k-1)*LAG, so a gateway has LAG steps to
//       admit a flow before its next packet arrives.
//   udpblast spoof DST PORT PREFIX/LEN [-s IPSIZE] [-d SECONDS] [-P SPORTS]
//       A spoofed flood: raw socket (IP_HDRINCL), sendmmsg of 64, as fast as the CPU goes. Every datagram's
//       source is a random host address of PREFIX/LEN (never the network or broadcast address) and a random
//       source port of 1024..1024+SPORTS-1 (default 64000: nearly every datagram is a new flow to a stateful
//       gateway), destination DST:PORT, IPv4 size IPSIZE (default 64). The kernel fills the IP checksum, the
//       UDP checksum is 0 (none). Prints sent, seconds, offered_pps and short_bursts (sendmmsg calls that
//       sent fewer than 64: a full device queue; the flood is best effort).
//   udpblast recv PORT [-d SECONDS]
//       Counts datagrams on PORT until SECONDS pass (or 1 s of silence after the first datagram) and prints
//       packets, the rate between the first and the last datagram, and one-way latency percentiles.
// Everything prints one JSON line on stdout. Run time is bounded by -d in every mode.
#include "benchutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#define VLEN 32

struct stamp { uint64_t seq; uint64_t sent_ns; };

/// A UDP socket bound to SPORT (0: any) on SOURCE (NULL: any address).
static int udp_socket_from(const char *source, uint16_t sport) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) bu_die("socket");
    int size = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    if (sport || source) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(sport)};
        if (source && inet_pton(AF_INET, source, &a.sin_addr) != 1) bu_die("source address");
        if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) bu_die("bind");
    }
    return fd;
}

static int udp_socket(uint16_t sport) { return udp_socket_from(NULL, sport); }

/// Sleeps until `target` (busy-waits the last 50 µs); used for rate limiting.
static void wait_until(uint64_t target) {
    for (;;) {
        uint64_t now = bu_now_ns();
        if (now >= target) return;
        if (target - now > 60000) {
            struct timespec ts = {0, (long)(target - now - 50000)};
            nanosleep(&ts, NULL);
        }
    }
}

static int cmd_send(int argc, char **argv) {
    if (argc < 4) return 2;
    const char *dst = argv[2];
    uint16_t port = (uint16_t)atoi(argv[3]);
    int ipsize = 64;
    double pps = 0, seconds = 5;
    uint16_t sport = 40000;
    const char *source = NULL;
    int opt;
    optind = 4;
    while ((opt = getopt(argc, argv, "s:r:d:S:B:")) != -1) {
        switch (opt) {
        case 's': ipsize = atoi(optarg); break;
        case 'r': pps = atof(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 'S': sport = (uint16_t)atoi(optarg); break;
        case 'B': source = optarg; break;
        default: return 2;
        }
    }
    int payload = ipsize - 28;
    if (payload < (int)sizeof(struct stamp)) payload = sizeof(struct stamp);
    int fd = udp_socket_from(source, sport);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, dst, &to.sin_addr);
    if (connect(fd, (struct sockaddr *)&to, sizeof to) < 0) bu_die("connect");
    char *bufs = calloc(VLEN, (size_t)payload);
    struct mmsghdr msgs[VLEN];
    struct iovec iov[VLEN];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < VLEN; i++) {
        iov[i].iov_base = bufs + (size_t)i * (size_t)payload;
        iov[i].iov_len = (size_t)payload;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    bu_install_signals();
    uint64_t start = bu_now_ns(), end = start + (uint64_t)(seconds * 1e9), seq = 0, sent = 0, errors = 0;
    // At a fixed rate, send in small bursts (8 packets) so that latency is measured on an even load.
    int burst = pps > 0 ? (pps < 20000 ? 1 : 8) : VLEN;
    while (!bu_stop) {
        uint64_t now = bu_now_ns();
        if (now >= end) break;
        if (pps > 0) wait_until(start + (uint64_t)((double)seq * 1e9 / pps));
        uint64_t t = bu_now_ns();
        for (int i = 0; i < burst; i++) {
            struct stamp s = {seq + (uint64_t)i, t};
            memcpy(iov[i].iov_base, &s, sizeof s);
        }
        int n = sendmmsg(fd, msgs, (unsigned)burst, 0);
        if (n < 0) {
            errors++;
            if (errno == ENOBUFS || errno == EAGAIN || errno == ECONNREFUSED) continue;
            if (errno == EINTR) continue;
            bu_die("sendmmsg");
        }
        seq += (uint64_t)n;
        sent += (uint64_t)n;
    }
    double elapsed = (double)(bu_now_ns() - start) / 1e9;
    printf("{\"sent\":%llu,\"errors\":%llu,\"seconds\":%.3f,\"offered_pps\":%.0f}\n", (unsigned long long)sent,
           (unsigned long long)errors, elapsed, (double)sent / elapsed);
    return 0;
}

static int cmd_flows(int argc, char **argv) {
    if (argc < 4) return 2;
    const char *dst = argv[2];
    uint16_t portbase = (uint16_t)atoi(argv[3]);
    long flows = 10000, k = 1, lag = 256;
    double rate = 0, seconds = 30;
    uint16_t sport = 20000;
    int opt;
    optind = 4;
    while ((opt = getopt(argc, argv, "f:k:l:r:S:d:")) != -1) {
        switch (opt) {
        case 'f': flows = atol(optarg); break;
        case 'k': k = atol(optarg); break;
        case 'l': lag = atol(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'S': sport = (uint16_t)atoi(optarg); break;
        case 'd': seconds = atof(optarg); break;
        default: return 2;
        }
    }
    const long per_socket = 60000;
    if (portbase + 0L + per_socket > 65535) portbase = 65535 - per_socket;
    int nsock = (int)((flows + per_socket - 1) / per_socket);
    int *fds = calloc((size_t)nsock, sizeof(int));
    for (int i = 0; i < nsock; i++) fds[i] = udp_socket((uint16_t)(sport + i));
    struct in_addr daddr;
    inet_pton(AF_INET, dst, &daddr);
    bu_install_signals();
    char payload[36] = {0};
    uint64_t start = bu_now_ns(), end = start + (uint64_t)(seconds * 1e9), sent = 0, errors = 0;
    long steps = flows + (k - 1) * lag, step;
    for (step = 0; step < steps && !bu_stop; step++) {
        if ((step & 255) == 0 && bu_now_ns() >= end) break;
        if (rate > 0) wait_until(start + (uint64_t)((double)step * 1e9 / rate));
        for (long p = 0; p < k; p++) {
            long flow = step - p * lag;
            if (flow < 0 || flow >= flows) continue;
            struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr = daddr,
                                     .sin_port = htons((uint16_t)(portbase + flow % per_socket))};
            struct stamp s = {(uint64_t)flow, bu_now_ns()};
            memcpy(payload, &s, sizeof s);
            if (sendto(fds[flow / per_socket], payload, sizeof payload, 0, (struct sockaddr *)&to, sizeof to) < 0) errors++;
            else sent++;
        }
    }
    double elapsed = (double)(bu_now_ns() - start) / 1e9;
    long flows_started = step < flows ? step : flows;
    printf("{\"flows\":%ld,\"packets\":%llu,\"errors\":%llu,\"seconds\":%.3f,\"offered_flows_per_s\":%.0f}\n",
           flows_started, (unsigned long long)sent, (unsigned long long)errors, elapsed, (double)flows_started / elapsed);
    return 0;
}

static int cmd_spoof(int argc, char **argv) {
    if (argc < 5) return 2;
    const char *dst = argv[2];
    uint16_t port = (uint16_t)atoi(argv[3]);
    char prefix_text[64];
    snprintf(prefix_text, sizeof prefix_text, "%s", argv[4]);
    char *slash = strchr(prefix_text, '/');
    if (!slash) return 2;
    *slash = 0;
    int plen = atoi(slash + 1);
    int ipsize = 64;
    long sports = 64000;
    double seconds = 5;
    int opt;
    optind = 5;
    while ((opt = getopt(argc, argv, "s:d:P:")) != -1) {
        switch (opt) {
        case 's': ipsize = atoi(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 'P': sports = atol(optarg); break;
        default: return 2;
        }
    }
    struct in_addr base, daddr;
    if (plen < 8 || plen > 30 || inet_pton(AF_INET, prefix_text, &base) != 1 || inet_pton(AF_INET, dst, &daddr) != 1) return 2;
    if (ipsize < 28 + (int)sizeof(struct stamp) || ipsize > 1500 || sports < 1 || sports > 64511) return 2;
    uint32_t host_mask = (1u << (32 - plen)) - 1, net = ntohl(base.s_addr) & ~host_mask;
    int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    if (fd < 0) bu_die("socket(SOCK_RAW)");
    int one = 1, size = 8 << 20;
    setsockopt(fd, IPPROTO_IP, IP_HDRINCL, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr = daddr};
    enum { V = 64 };
    uint8_t *pkts = calloc(V, (size_t)ipsize);
    struct mmsghdr sm[V];
    struct iovec iov[V];
    memset(sm, 0, sizeof sm);
    for (int i = 0; i < V; i++) {
        uint8_t *p = pkts + (size_t)i * (size_t)ipsize;
        p[0] = 0x45;  // IPv4, 20-octet header; ToS 0, ID 0 (the kernel fills it), DF, TTL 64, UDP
        p[2] = (uint8_t)(ipsize >> 8); p[3] = (uint8_t)ipsize;
        p[6] = 0x40;
        p[8] = 64; p[9] = 17;
        memcpy(p + 16, &daddr, 4);
        uint8_t *u = p + 20;
        u[2] = (uint8_t)(port >> 8); u[3] = (uint8_t)port;
        u[4] = (uint8_t)((ipsize - 20) >> 8); u[5] = (uint8_t)(ipsize - 20);
        iov[i] = (struct iovec){p, (size_t)ipsize};
        sm[i].msg_hdr.msg_iov = &iov[i];
        sm[i].msg_hdr.msg_iovlen = 1;
        sm[i].msg_hdr.msg_name = &to;
        sm[i].msg_hdr.msg_namelen = sizeof to;
    }
    uint64_t x = 0;
    if (getrandom(&x, sizeof x, 0) != sizeof x) x = bu_now_ns();
    x |= 1;  // xorshift64*: never 0
#define NEXT() (x ^= x >> 12, x ^= x << 25, x ^= x >> 27, x * 0x2545f4914f6cdd1dull)
    bu_install_signals();
    uint64_t begin = bu_now_ns(), end = begin + (uint64_t)(seconds * 1e9), sent = 0, short_bursts = 0, seq = 0;
    while (!bu_stop && bu_now_ns() < end) {
        uint64_t t = bu_now_ns();
        for (int i = 0; i < V; i++) {
            uint8_t *p = pkts + (size_t)i * (size_t)ipsize;
            uint64_t r = NEXT();
            uint32_t host = (uint32_t)r & host_mask;
            if (host == 0 || host == host_mask) host = 1;
            uint32_t src = htonl(net | host);
            memcpy(p + 12, &src, 4);
            uint16_t sport = (uint16_t)(1024 + (r >> 32) % (uint64_t)sports);
            p[20] = (uint8_t)(sport >> 8); p[21] = (uint8_t)sport;
            struct stamp s = {seq++, t};
            memcpy(p + 28, &s, sizeof s);
        }
        int n = sendmmsg(fd, sm, V, 0);
        if (n > 0) sent += (uint64_t)n;
        if (n < V) short_bursts++;
    }
#undef NEXT
    double elapsed = (double)(bu_now_ns() - begin) / 1e9;
    printf("{\"sent\":%llu,\"seconds\":%.3f,\"offered_pps\":%.0f,\"short_bursts\":%llu}\n", (unsigned long long)sent,
           elapsed, (double)sent / elapsed, (unsigned long long)short_bursts);
    return 0;
}

static int cmd_recv(int argc, char **argv) {
    if (argc < 3) return 2;
    uint16_t port = (uint16_t)atoi(argv[2]);
    double seconds = 10;
    int opt;
    optind = 3;
    while ((opt = getopt(argc, argv, "d:")) != -1) {
        if (opt == 'd') seconds = atof(optarg);
        else return 2;
    }
    int fd = udp_socket(port);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    static char bufs[VLEN][2048];
    struct mmsghdr msgs[VLEN];
    struct iovec iov[VLEN];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < VLEN; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = sizeof bufs[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    static bu_hist hist;
    bu_install_signals();
    uint64_t start = bu_now_ns(), end = start + (uint64_t)(seconds * 1e9), first = 0, last = 0, count = 0, bytes = 0;
    printf("ready\n");
    fflush(stdout);
    while (!bu_stop) {
        uint64_t now = bu_now_ns();
        if (now >= end || (count > 0 && now - last > 1000000000ull)) break;
        int n = recvmmsg(fd, msgs, VLEN, MSG_WAITFORONE, NULL);
        if (n <= 0) continue;
        now = bu_now_ns();
        if (count == 0) first = now;
        last = now;
        for (int i = 0; i < n; i++) {
            count++;
            bytes += msgs[i].msg_len;
            if (msgs[i].msg_len >= sizeof(struct stamp)) {
                struct stamp s;
                memcpy(&s, bufs[i], sizeof s);
                if (s.sent_ns <= now) bu_hist_record(&hist, now - s.sent_ns);
            }
        }
    }
    double window = count > 1 ? (double)(last - first) / 1e9 : 0;
    printf("{\"received\":%llu,\"bytes\":%llu,\"window_s\":%.3f,\"pps\":%.0f,\"lat_p50_ns\":%.0f,\"lat_p99_ns\":%.0f,"
           "\"lat_p999_ns\":%.0f,\"lat_max_ns\":%llu}\n",
           (unsigned long long)count, (unsigned long long)bytes, window, window > 0 ? (double)count / window : 0,
           bu_hist_percentile(&hist, 50), bu_hist_percentile(&hist, 99), bu_hist_percentile(&hist, 99.9),
           (unsigned long long)hist.max);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "send") == 0) return cmd_send(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "flows") == 0) return cmd_flows(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "spoof") == 0) return cmd_spoof(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "recv") == 0) return cmd_recv(argc, argv);
    fprintf(stderr, "usage: udpblast send DST PORT [-s IPSIZE] [-r PPS] [-d S] [-S SPORT] | flows DST PORTBASE -f N [-k K] [-l LAG] [-r R] | spoof DST PORT PREFIX/LEN [-s IPSIZE] [-d S] [-P SPORTS] | recv PORT [-d S]\n");
    return 2;
}
