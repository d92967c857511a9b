// cspload: CSP signaling load for the Midcom benchmark (docs/PROTOCOL.md, sections 3, 5, 6.6 and 7).
//
//   cspload respond [-p PORT] [-d SECONDS] [-C]
//       The responder: answers every SETUP and REBIND with ACCEPT (same session ID, nonce and sequence, LIFETIME
//       as requested: at most 3600 s, 30 s when the request has none) and counts TEARDOWNs. Replies leave in sendmmsg bursts. -C answers CHALLENGEs (6.6): a
//       CHALLENGE for a session it ACCEPTed is answered with a RESPONSE (token echoed) to the CHALLENGE's
//       source, then the ACCEPT is sent again (the last 65536 sessions are remembered, direct-mapped).
//   cspload setup DST [-w WINDOW] [-s SOCKETS] [-d SECONDS] [-l LIFETIME] [-i FIRST] [-L] [-t] [-C] [-R] [-S [-n POOL] [-T S]]
//       The initiators: SOCKETS signaling sockets keep WINDOW sessions in flight in total (many concurrent
//       signalers); each ACCEPT completes a session (its round trip goes into the histogram) and starts the
//       next. -L signals incoming pinholes (REQUESTED-ACTION listen, FLOW 0.0.0.0:0 -> self:port), -t sends a
//       TEARDOWN after each ACCEPT (pinhole removed). A session unanswered after 500 ms is counted lost and
//       replaced. Prints sessions/s and the setup round trip p50/p99/p99.9 (ns) as one JSON line. Session n's
//       flow has ports derived from FIRST + n (default 0): a second run against the same gateway with another
//       FIRST signals other flows (a flow signaled again under a new session ID would supersede the old one).
//       -C answers CHALLENGEs: a CHALLENGE for a session in flight (same session ID and nonce) gets a
//       RESPONSE (the token echoed) to the CHALLENGE's source from the same socket, then the SETUP is sent
//       again unchanged; the round trip is measured from the first SETUP.
//       -R sets the recordRoute flag (0x02) in every SETUP: each middlebox appends its record to the ACCEPT.
//       -S signs every SETUP (flags 0x04, IDENTITY, TIMESTAMP, SIGNATURE last; pure Ed25519 through OpenSSL's
//       EVP, docs/PROTOCOL.md 7.2) with a key made at start. Signing is not in the timed window: POOL
//       SETUPs (default 400000, a fresh session ID each, sequence 1) are built and signed first, for at most
//       -T seconds (default 15: their TIMESTAMP, the time signing began, must still be within the gateway's
//       30 s tolerance at the end of the window). When the pool runs out the window ends there
//       ("pool_exhausted": 1, sessions/s over the shortened window). Signed flows use other destination
//       ports (60001 and up) than unsigned ones, so a signed run never meets an unsigned run's flows.
//   cspload flood DST PREFIX/LEN [-d SECONDS] [-p PORT] [-f FLOWPORT]
//       Spoofed SETUPs to DST:PORT (7227) as fast as one core sends them: raw socket with IP_HDRINCL, every
//       packet from a random address of PREFIX/LEN (IPv4) and a random source port, with a random session ID
//       and nonce and a FLOW from that address to DST:FLOWPORT (5000). sendmmsg bursts of 64; the kernel fills
//       the IP checksum, the UDP checksum is 0 (none). Prints sent, seconds and per_s as one JSON line.
//   cspload rebind DST NEWADDR [-w WINDOW] [-s SOCKETS] [-d SECONDS] [-g SECONDS] [-n SESSIONS] [-r RUNS]
//                  [-l LIFETIME] [-P PID] [-W WINDOW]
//       Mobility (figure 11): one Ed25519 key; SESSIONS (default 20000) signed sessions set up from the address
//       routing picks toward DST (-W in flight, default 32), then RUNS runs (default 1) that each move the same
//       sessions twice, in alternating order: signed re-SETUPs to another flow (next sequence, the source port
//       moved to the other port of the session's pair, same address) and signed REBINDs (next sequence, FLOW
//       as it is, NEW-ADDRESS the same port at NEWADDR — or back at the first address for a session there —
//       sent from that address). Requests look like `csp keep`'s: recordRoute, FLOW, LIFETIME (default 600),
//       REQUESTED-ACTION admit|allow-redirect, [NEW-ADDRESS,] IDENTITY, TIMESTAMP, SIGNATURE. Each phase's
//       requests are built and signed first (one per live session, not timed); the phase sends one request
//       alone (a CHALLENGE is answered with a RESPONSE signed by the key from the same socket, then the
//       request is sent again), then keeps WINDOW (default 64) in flight over SOCKETS sockets per address
//       (default 8) for -g seconds (default 2.5) not counted, then SECONDS (default 3) timed; ACCEPTs end
//       requests, REJECTs and 500 ms without an answer end their sessions (never used again). -P PID: the
//       CPU time of that process (midcomd) over each timed window. Prints one JSON line for the preparation
//       and one per run (per kind: per_s, lost, rejects, challenges, rtt_p50_ns, cpu_ns_per_request, ...).
// Unsigned messages carry no recordRoute flag: the smallest valid SETUP (FLOW + LIFETIME, 54 octets).
#include "benchutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <openssl/evp.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CSP_PORT 7227
#define T_SETUP 1
#define T_ACCEPT 2
#define T_REJECT 3
#define T_CHALLENGE 6
#define T_RESPONSE 7
#define T_REBIND 8
#define T_TEARDOWN 13
#define TLV_CHALLENGE_TOKEN 0x800d

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

static uint64_t random64(void) {
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != sizeof v) v = bu_now_ns() * 0x9e3779b97f4a7c15ull;
    return v;
}

/// The value of the first top-level TLV of `type` in a message of `n` octets (NULL if it has none or the
/// message is malformed); its length in *len.
static const uint8_t *find_tlv(const uint8_t *m, size_t n, uint16_t type, uint16_t *len) {
    size_t off = 28;
    while (off + 4 <= n) {
        uint16_t t = get16(m + off), l = get16(m + off + 2);
        if (off + 4 + l > n) return NULL;
        if (t == type) {
            *len = l;
            return m + off + 4;
        }
        off += 4 + (size_t)l;
    }
    return NULL;
}

/// The CHALLENGE-TOKEN of a message of `n` octets (NULL if it has none or is malformed); its length in *len.
static const uint8_t *find_token(const uint8_t *m, size_t n, uint16_t *len) {
    const uint8_t *token = find_tlv(m, n, TLV_CHALLENGE_TOKEN, len);
    return token && *len >= 8 && *len <= 32 ? token : NULL;
}

/// RESPONSE to the CHALLENGE `c` (docs/PROTOCOL.md 6.6): same session ID, nonce and sequence, the token
/// echoed as the only TLV. Writes at most 64 octets to r; returns the length, 0 if `c` has no token.
static uint16_t build_response(uint8_t *r, const uint8_t *c, size_t n) {
    uint16_t tl;
    const uint8_t *token = find_token(c, n, &tl);
    if (!token) return 0;
    uint16_t length = (uint16_t)(28 + 4 + tl);
    header(r, T_RESPONSE, length, get64(c + 8), get64(c + 16), get32(c + 24));
    put16(r + 28, TLV_CHALLENGE_TOKEN);
    put16(r + 30, tl);
    memcpy(r + 32, token, tl);
    return length;
}

// MARK: respond

/// What the responder remembers of a session it ACCEPTed, to send the ACCEPT again after a CHALLENGE.
struct accepted { uint64_t sid, nonce; uint32_t seq, lifetime; struct sockaddr_in to; uint32_t challenged; };
#define ACCEPTED_SLOTS 65536

static int cmd_respond(int argc, char **argv) {
    uint16_t port = CSP_PORT;
    double seconds = 30;
    int answer_challenges = 0;
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "p:d:C")) != -1) {
        if (opt == 'p') port = (uint16_t)atoi(optarg);
        else if (opt == 'd') seconds = atof(optarg);
        else if (opt == 'C') answer_challenges = 1;
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
    static uint8_t in[V][512], out[2 * V][64];
    static struct sockaddr_in from[V];
    static struct accepted cache[ACCEPTED_SLOTS];
    struct mmsghdr rm[V], sm[2 * V];
    struct iovec riov[V], siov[2 * V];
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
    uint64_t end = bu_now_ns() + (uint64_t)(seconds * 1e9), setups = 0, rebinds = 0, teardowns = 0, other = 0;
    uint64_t challenges = 0, unknown_challenges = 0, repeated_challenges = 0;
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
            uint64_t sid = get64(m + 8);
            if (m[3] == T_CHALLENGE && answer_challenges) {
                struct accepted *c = &cache[(sid * 0x9e3779b97f4a7c15ull) >> 48];
                uint8_t *r = out[replies];
                uint16_t rl;
                if (c->sid != sid || c->nonce != get64(m + 16) || !(rl = build_response(r, m, rm[i].msg_len))) {
                    unknown_challenges++;
                    continue;
                }
                challenges++;
                if (c->challenged++) repeated_challenges++;  // challenged again after its RESPONSE
                siov[replies] = (struct iovec){r, rl};
                sm[replies].msg_hdr.msg_iov = &siov[replies];
                sm[replies].msg_hdr.msg_iovlen = 1;
                sm[replies].msg_hdr.msg_name = &from[i];
                sm[replies].msg_hdr.msg_namelen = sizeof from[i];
                replies++;
                uint8_t *acc = out[replies];  // the ACCEPT again, unchanged
                header(acc, T_ACCEPT, 36, c->sid, c->nonce, c->seq);
                put16(acc + 28, 0x0002);
                put16(acc + 30, 4);
                put32(acc + 32, c->lifetime);
                siov[replies] = (struct iovec){acc, 36};
                sm[replies].msg_hdr.msg_iov = &siov[replies];
                sm[replies].msg_hdr.msg_iovlen = 1;
                sm[replies].msg_hdr.msg_name = &c->to;
                sm[replies].msg_hdr.msg_namelen = sizeof c->to;
                replies++;
                continue;
            }
            if (m[3] != T_SETUP && m[3] != T_REBIND) { other++; continue; }
            if (m[3] == T_SETUP) setups++;
            else rebinds++;
            // The LIFETIME asked for (at most an hour), 30 s without one.
            uint16_t ll;
            const uint8_t *lv = find_tlv(m, rm[i].msg_len, 0x0002, &ll);
            uint32_t lifetime = lv && ll == 4 ? get32(lv) : 30;
            if (lifetime > 3600) lifetime = 3600;
            uint8_t *r = out[replies];
            header(r, T_ACCEPT, 36, sid, get64(m + 16), get32(m + 24));
            put16(r + 28, 0x0002);  // LIFETIME
            put16(r + 30, 4);
            put32(r + 32, lifetime);
            siov[replies] = (struct iovec){r, 36};
            sm[replies].msg_hdr.msg_iov = &siov[replies];
            sm[replies].msg_hdr.msg_iovlen = 1;
            sm[replies].msg_hdr.msg_name = &from[i];
            sm[replies].msg_hdr.msg_namelen = sizeof from[i];
            replies++;
            if (answer_challenges) {
                struct accepted *c = &cache[(sid * 0x9e3779b97f4a7c15ull) >> 48];
                *c = (struct accepted){sid, get64(m + 16), get32(m + 24), lifetime, from[i], 0};
            }
        }
        if (replies) sendmmsg(fd, sm, (unsigned)replies, 0);
    }
    printf("{\"setups\":%llu,\"rebinds\":%llu,\"teardowns\":%llu,\"other\":%llu,\"challenges\":%llu,"
           "\"unknown_challenges\":%llu,\"repeated_challenges\":%llu}\n",
           (unsigned long long)setups, (unsigned long long)rebinds, (unsigned long long)teardowns, (unsigned long long)other,
           (unsigned long long)challenges, (unsigned long long)unknown_challenges, (unsigned long long)repeated_challenges);
    return 0;
}

// MARK: setup

/// A session in flight: `index` numbers the sessions this run started (the pool index with -S);
/// `msg` points at the SETUP as sent (for -C, which sends it again unchanged).
struct slot { uint64_t index; uint64_t sent_ns; uint64_t sid; uint64_t nonce; int sock; int idle; uint16_t len; uint8_t *msg; };

/// SETUP: header + FLOW (0x8001, 14) + LIFETIME (0x0002, 4) [+ REQUESTED-ACTION (0x0004, 1) listen].
/// Session `index`'s ports: source 1024 + index % 64000, destination dport_base + (index / 64000) % dport_span.
/// Returns the length (at most 59 octets). With -R (record_route) the recordRoute flag is set.
static int record_route = 0;
static uint16_t build_setup(uint8_t *m, uint64_t index, uint64_t sid, uint64_t nonce, int listen_mode, uint32_t self,
                            uint32_t remote, uint32_t lifetime, uint16_t dport_base, uint16_t dport_span) {
    uint16_t length = (uint16_t)(28 + 18 + 8 + (listen_mode ? 5 : 0));
    header(m, T_SETUP, length, sid, nonce, 1);
    uint8_t *f = m + 28;
    put16(f, 0x8001); put16(f + 2, 14);
    f[4] = 17; f[5] = 4;  // udp, IPv4
    uint16_t p1 = (uint16_t)(1024 + index % 64000), p2 = (uint16_t)(dport_base + (index / 64000) % dport_span);
    if (listen_mode) {
        put16(f + 6, 0);          // any source port
        put16(f + 8, p1);         // our port
        memset(f + 10, 0, 4);     // any peer
        memcpy(f + 14, &self, 4);
    } else {
        put16(f + 6, p1);
        put16(f + 8, p2);
        memcpy(f + 10, &self, 4);
        memcpy(f + 14, &remote, 4);
    }
    uint8_t *l = f + 18;
    put16(l, 0x0002); put16(l + 2, 4); put32(l + 4, lifetime);
    if (listen_mode) { put16(l + 8, 0x0004); put16(l + 10, 1); l[12] = 0x08; }
    if (record_route) m[4] |= 0x02;
    return length;
}

#define SIGNED_EXTRA (37 + 12 + 69)  // IDENTITY, TIMESTAMP, SIGNATURE
#define POOL_STRIDE 192

/// Signs the message of `length` octets in m (room for SIGNED_EXTRA more, at most POOL_STRIDE in all) end to
/// end: sets the signed flag, appends IDENTITY and TIMESTAMP, signs "CSP1 e2e" 0x00 || m[0 ..< s] with the
/// length octets as 0, and appends SIGNATURE (docs/PROTOCOL.md 7.2). Returns the new length, 0 on failure.
static uint16_t sign_message(uint8_t *m, uint16_t length, EVP_PKEY *key, EVP_MD_CTX *ctx, const uint8_t pub[32],
                           uint64_t timestamp) {
    m[4] |= 0x04;
    uint8_t *t = m + length;
    put16(t, 0x000b); put16(t + 2, 33); t[4] = 0x01; memcpy(t + 5, pub, 32);  // IDENTITY
    t += 37;
    put16(t, 0x0012); put16(t + 2, 8); put64(t + 4, timestamp);                 // TIMESTAMP
    t += 12;
    uint16_t s = (uint16_t)(t - m), total = (uint16_t)(s + 69);
    uint8_t input[9 + POOL_STRIDE];
    memcpy(input, "CSP1 e2e", 9);  // with its 0x00
    memcpy(input + 9, m, s);
    input[9 + 6] = 0;
    input[9 + 7] = 0;
    uint8_t sig[64];
    size_t siglen = sizeof sig;
    if (EVP_DigestSignInit(ctx, NULL, NULL, NULL, key) != 1 || EVP_DigestSign(ctx, sig, &siglen, input, 9 + (size_t)s) != 1
        || siglen != 64)
        return 0;
    put16(t, 0x000c); put16(t + 2, 65); t[4] = 0x01; memcpy(t + 5, sig, 64);   // SIGNATURE, last
    put16(m + 6, total);
    return total;
}

static int cmd_setup(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *dst = argv[2];
    int window = 64, nsock = 8, listen_mode = 0, teardown = 0, answer_challenges = 0, sign = 0;
    double seconds = 5, sign_limit_s = 15;
    uint32_t lifetime = 30;
    uint64_t pool_want = 400000, first = 0;
    int opt;
    optind = 3;
    while ((opt = getopt(argc, argv, "w:s:d:l:i:LtCSn:T:R")) != -1) {
        switch (opt) {
        case 'w': window = atoi(optarg); break;
        case 's': nsock = atoi(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 'l': lifetime = (uint32_t)atoi(optarg); break;
        case 'i': first = strtoull(optarg, NULL, 10); break;
        case 'L': listen_mode = 1; break;
        case 't': teardown = 1; break;
        case 'C': answer_challenges = 1; break;
        case 'S': sign = 1; break;
        case 'n': pool_want = strtoull(optarg, NULL, 10); break;
        case 'T': sign_limit_s = atof(optarg); break;
        case 'R': record_route = 1; break;
        default: return 2;
        }
    }
    if (window < 1 || window > 65535 || nsock < 1 || nsock > 256) return 2;
    // A signed request's RESPONSE would have to be signed too (the proof binds the address to the key):
    // this load generator answers CHALLENGEs of unsigned sessions only.
    if (sign && answer_challenges) { fprintf(stderr, "cspload: -S and -C together are not supported\n"); return 2; }
    if (sign && (pool_want < 1 || pool_want > 0xffffffffull)) return 2;
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
    uint64_t tag = (random64() & 0xffff) | 1;
    struct slot *slots = calloc((size_t)window, sizeof *slots);
    uint8_t (*bufs)[64] = calloc((size_t)window, 64);
    static bu_hist hist;
    uint64_t next_index = 0, completed = 0, lost = 0, started = 0, challenges = 0, unknown_challenges = 0, rejects = 0;

    // -S: the pool of signed SETUPs, built before the timed window.
    uint8_t *pool = NULL;
    int32_t *slot_of = NULL;  // pool index -> slot that sent it
    uint64_t pool_n = 0;
    double sign_s = 0;
    if (sign) {
        uint8_t seed[32], pub[32];
        size_t publen = sizeof pub;
        if (getrandom(seed, sizeof seed, 0) != sizeof seed) bu_die("getrandom");
        EVP_PKEY *key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, sizeof seed);
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        if (!key || !ctx || EVP_PKEY_get_raw_public_key(key, pub, &publen) != 1 || publen != 32) {
            fprintf(stderr, "cspload: OpenSSL has no Ed25519\n");
            return 1;
        }
        pool = malloc((size_t)pool_want * POOL_STRIDE);
        slot_of = malloc((size_t)pool_want * sizeof *slot_of);
        if (!pool || !slot_of) bu_die("malloc");
        // Seconds since 1970 when signing began: not older than the gateway's start (it runs already), and
        // within its ±30 s tolerance until the window ends (signing stops after -T seconds).
        uint64_t timestamp = (uint64_t)time(NULL);
        uint64_t t0 = bu_now_ns(), limit = t0 + (uint64_t)(sign_limit_s * 1e9);
        for (; pool_n < pool_want; pool_n++) {
            if ((pool_n & 1023) == 0 && bu_now_ns() > limit) break;
            uint8_t *m = pool + pool_n * POOL_STRIDE;
            uint64_t sid = tag << 48 | (1ull << 47) | pool_n;
            uint16_t len = build_setup(m, first + pool_n, sid, sid * 0x9e3779b97f4a7c15ull, listen_mode, self, remote, lifetime,
                                       60001, 5000);
            len = sign_message(m, len, key, ctx, pub, timestamp);
            if (!len) { fprintf(stderr, "cspload: EVP_DigestSign failed\n"); return 1; }
        }
        sign_s = (double)(bu_now_ns() - t0) / 1e9;
        EVP_MD_CTX_free(ctx);
        EVP_PKEY_free(key);
    }
    int pool_exhausted = 0;

    void start(int k) {
        struct slot *s = &slots[k];
        s->sock = k % nsock;
        if (sign) {
            if (next_index >= pool_n) { s->idle = 1; pool_exhausted = 1; return; }
            s->index = next_index++;
            s->msg = pool + s->index * POOL_STRIDE;
            s->len = get16(s->msg + 6);
            slot_of[s->index] = k;
        } else {
            s->index = next_index++;
            s->msg = bufs[k];
            uint64_t sid = tag << 48 | (uint64_t)k << 32 | (s->index & 0xffffffffu);
            s->len = build_setup(s->msg, first + s->index, sid, sid * 0x9e3779b97f4a7c15ull, listen_mode, self, remote, lifetime,
                                 10000, 50000);
        }
        s->sid = get64(s->msg + 8);
        s->nonce = get64(s->msg + 16);
        s->sent_ns = bu_now_ns();
        started++;
        send(fds[s->sock], s->msg, s->len, 0);
    }

    /// The slot whose session in flight is `sid`, -1 if none.
    int slot_for(uint64_t sid) {
        if ((sid >> 48) != tag) return -1;
        int k;
        if (sign) {
            uint64_t i = sid & 0xffffffffu;
            if (!(sid & (1ull << 47)) || i >= pool_n || i >= next_index) return -1;
            k = slot_of[i];
        } else {
            k = (int)((sid >> 32) & 0xffff);
        }
        if (k >= window || slots[k].idle || slots[k].sid != sid) return -1;
        return k;
    }

    bu_install_signals();
    uint64_t begin = bu_now_ns(), end = begin + (uint64_t)(seconds * 1e9), last_scan = begin, stopped = 0;
    for (int k = 0; k < window; k++) start(k);
    uint8_t buf[1024];
    while (!bu_stop && !pool_exhausted) {
        uint64_t now = bu_now_ns();
        if (now >= end) break;
        if (poll(pfd, (nfds_t)nsock, 50) < 0 && errno != EINTR) bu_die("poll");
        for (int i = 0; i < nsock && !pool_exhausted; i++) {
            if (!(pfd[i].revents & POLLIN)) continue;
            for (int burst = 0; burst < 64; burst++) {
                struct sockaddr_in from;
                socklen_t fromlen = sizeof from;
                ssize_t n = recvfrom(fds[i], buf, sizeof buf, 0, (struct sockaddr *)&from, &fromlen);
                if (n < 28) break;
                if (buf[0] != 'C' || buf[1] != 'S') continue;
                uint64_t sid = get64(buf + 8);
                int k = slot_for(sid);
                if (buf[3] == T_CHALLENGE && answer_challenges) {
                    uint8_t r[64];
                    uint16_t rl;
                    if (k < 0 || slots[k].nonce != get64(buf + 16) || !(rl = build_response(r, buf, (size_t)n))) {
                        unknown_challenges++;
                        continue;
                    }
                    challenges++;
                    sendto(fds[i], r, rl, 0, (struct sockaddr *)&from, fromlen);
                    send(fds[slots[k].sock], slots[k].msg, slots[k].len, 0);
                    continue;
                }
                if (buf[3] == T_REJECT && k >= 0) { rejects++; continue; }  // counted; the session is lost later
                if (buf[3] != T_ACCEPT || k < 0) continue;
                uint64_t t = bu_now_ns();
                bu_hist_record(&hist, t - slots[k].sent_ns);
                completed++;
                if (teardown) {
                    uint8_t m[28];
                    header(m, T_TEARDOWN, 28, sid, sid * 0x9e3779b97f4a7c15ull + 1, 2);
                    send(fds[slots[k].sock], m, 28, 0);
                }
                start(k);
                if (pool_exhausted) break;
            }
        }
        now = bu_now_ns();
        if (now - last_scan > 50000000ull) {
            last_scan = now;
            for (int k = 0; k < window && !pool_exhausted; k++)
                if (!slots[k].idle && now - slots[k].sent_ns > 500000000ull) { lost++; start(k); }
        }
    }
    stopped = bu_now_ns();
    double elapsed = (double)(stopped - begin) / 1e9;
    printf("{\"completed\":%llu,\"lost\":%llu,\"started\":%llu,\"success_rate\":%.4f,\"seconds\":%.3f,\"sessions_per_s\":%.0f,"
           "\"rtt_p50_ns\":%.0f,\"rtt_p99_ns\":%.0f,\"rtt_p999_ns\":%.0f,\"rtt_max_ns\":%llu,\"challenges\":%llu,"
           "\"unknown_challenges\":%llu,\"rejects\":%llu,\"signed\":%d,\"pool\":%llu,\"pool_exhausted\":%d,\"sign_s\":%.3f}\n",
           (unsigned long long)completed, (unsigned long long)lost, (unsigned long long)started,
           started ? (double)completed / (double)started : 0.0, elapsed, (double)completed / elapsed,
           bu_hist_percentile(&hist, 50), bu_hist_percentile(&hist, 99), bu_hist_percentile(&hist, 99.9),
           (unsigned long long)hist.max, (unsigned long long)challenges, (unsigned long long)unknown_challenges,
           (unsigned long long)rejects, sign, (unsigned long long)pool_n, pool_exhausted, sign_s);
    return 0;
}

// MARK: rebind

/// What the mobility load knows of one of its sessions: where its owner is now (`at`: 0 the first address,
/// 1 the second), its flow's ports, the last sequence it used, and the slot of its request in flight (-1: none).
/// A session whose request was refused or left unanswered is dead: what the gateway made of it is unknown.
struct msession { uint64_t sid; uint32_t seq; int32_t slot; uint16_t sport, dport; uint8_t at, dead; };

/// A request in flight: the pool entry sent, from which socket, and how often it was CHALLENGEd.
struct mslot { uint64_t sent_ns, nonce, pool_index; uint32_t session; int fd, busy, challenged; };

enum move_kind { MOVE_SETUP, MOVE_RESETUP, MOVE_REBIND };
static const char *const move_name[] = {"setup", "resetup", "rebind"};

/// One phase's outcome: the timed window's (the warm-up and the drain are not counted), except `challenges`,
/// every CHALLENGE the phase answered (a new address is challenged by its first request, in the warm-up).
struct move_result {
    uint64_t completed, lost, rejects, challenges, abandoned, pool, cpu_ns;
    double seconds, sign_s;
    int pool_exhausted;
    bu_hist hist;
};

struct mobility {
    struct msession *sess;
    uint64_t n, tag, rng, pool_n, next;
    uint32_t addr[2], dst, lifetime;
    int nsock, window, pid;
    int *fds[2];
    struct pollfd *pfd;  // fds[0][*] then fds[1][*]
    uint8_t *pool;       // POOL_STRIDE octets per pre-signed request
    uint32_t *pool_session;
    struct mslot *slots;
    EVP_PKEY *key;
    EVP_MD_CTX *ctx;
    uint8_t pub[32];
};

static uint64_t xorshift(uint64_t *x) {
    *x ^= *x >> 12; *x ^= *x << 25; *x ^= *x >> 27;
    return *x * 0x2545f4914f6cdd1dull;
}

/// User + system CPU time of process `pid` (all threads) in nanoseconds, 0 if unknown.
static uint64_t process_cpu_ns(int pid) {
    if (pid <= 0) return 0;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')');  // the command name may hold spaces
    unsigned long long utime = 0, stime = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2) return 0;
    return (utime + stime) * (1000000000ull / (uint64_t)sysconf(_SC_CLK_TCK));
}

/// The request of one move as `csp keep` sends it: recordRoute, FLOW, LIFETIME, REQUESTED-ACTION admit |
/// allow-redirect, and for a REBIND NEW-ADDRESS (the same port at the other address); unsigned. Returns
/// the length (at most 71 octets).
static uint16_t build_move(uint8_t *m, uint8_t type, uint64_t sid, uint64_t nonce, uint32_t seq, uint32_t src,
                           uint16_t sport, uint32_t dst, uint16_t dport, uint32_t lifetime, const uint32_t *new_address) {
    uint16_t length = (uint16_t)(28 + 18 + 8 + 5 + (new_address ? 12 : 0));
    header(m, type, length, sid, nonce, seq);
    m[4] = 0x02;  // recordRoute
    uint8_t *t = m + 28;
    put16(t, 0x8001); put16(t + 2, 14); t[4] = 17; t[5] = 4;
    put16(t + 6, sport); put16(t + 8, dport); memcpy(t + 10, &src, 4); memcpy(t + 14, &dst, 4);
    t += 18;
    put16(t, 0x0002); put16(t + 2, 4); put32(t + 4, lifetime);
    t += 8;
    put16(t, 0x0004); put16(t + 2, 1); t[4] = 0x03;
    t += 5;
    if (new_address) { put16(t, 0x800e); put16(t + 2, 8); t[4] = 4; t[5] = 0; put16(t + 6, sport); memcpy(t + 8, new_address, 4); }
    return length;
}

/// Builds and signs the next request of every live session for one kind of move (not timed: the load
/// generator must not spend the window signing). Each gets the session's next sequence and a TIMESTAMP of
/// now. Returns the seconds spent.
static double fill_moves(struct mobility *g, enum move_kind kind) {
    uint64_t t0 = bu_now_ns(), timestamp = (uint64_t)time(NULL);
    g->pool_n = g->next = 0;
    for (uint64_t i = 0; i < g->n; i++) {
        struct msession *s = &g->sess[i];
        if (s->dead) continue;
        uint8_t *m = g->pool + g->pool_n * POOL_STRIDE;
        uint32_t seq = s->seq + 1, src = g->addr[s->at];
        uint64_t nonce = xorshift(&g->rng);
        uint16_t len;
        if (kind == MOVE_REBIND)
            len = build_move(m, T_REBIND, s->sid, nonce, seq, src, s->sport, g->dst, s->dport, g->lifetime, &g->addr[!s->at]);
        else  // a re-SETUP moves the flow to the other port of the session's pair (sport ^ 1)
            len = build_move(m, T_SETUP, s->sid, nonce, seq, src, kind == MOVE_RESETUP ? s->sport ^ 1 : s->sport, g->dst,
                             s->dport, g->lifetime, NULL);
        if (!sign_message(m, len, g->key, g->ctx, g->pub, timestamp)) { fprintf(stderr, "cspload: EVP_DigestSign failed\n"); exit(1); }
        g->pool_session[g->pool_n++] = (uint32_t)i;
    }
    return (double)(bu_now_ns() - t0) / 1e9;
}

/// Sends the next pool entry from slot k; 0 when the pool is used up.
static int start_move(struct mobility *g, int k, enum move_kind kind) {
    struct mslot *sl = &g->slots[k];
    sl->busy = 0;
    if (g->next >= g->pool_n) return 0;
    uint64_t p = g->next++;
    uint32_t i = g->pool_session[p];
    struct msession *s = &g->sess[i];
    const uint8_t *m = g->pool + p * POOL_STRIDE;
    int from = kind == MOVE_REBIND ? !s->at : s->at;  // a REBIND comes from the new address
    *sl = (struct mslot){.sent_ns = bu_now_ns(), .nonce = get64(m + 16), .pool_index = p, .session = i,
                         .fd = g->fds[from][k % g->nsock], .busy = 1};
    s->seq = get32(m + 24);  // spent, whatever becomes of the request
    s->slot = k;
    send(sl->fd, m, get16(m + 6), 0);
    return 1;
}

/// The end of slot k's request: the session takes its new place (answered) or is given up.
static void finish_move(struct mobility *g, int k, enum move_kind kind, int answered) {
    struct mslot *sl = &g->slots[k];
    struct msession *s = &g->sess[sl->session];
    if (answered) {
        if (kind == MOVE_RESETUP) s->sport ^= 1;
        if (kind == MOVE_REBIND) s->at ^= 1;
    } else {
        s->dead = 1;
    }
    s->slot = -1;
    sl->busy = 0;
}

/// Handles one datagram that arrived on socket `fd` from `from`. Returns the slot whose request ended
/// (ACCEPT: answered; REJECT: refused, *refused set), -1 for anything else.
static int on_move_reply(struct mobility *g, struct move_result *r, const uint8_t *buf, size_t n, int fd,
                         const struct sockaddr_in *from, int *refused) {
    *refused = 0;
    if (n < 28 || buf[0] != 'C' || buf[1] != 'S') return -1;
    uint64_t sid = get64(buf + 8), i = sid & 0xffffffffffffull;
    if ((sid >> 48) != g->tag || i >= g->n || g->sess[i].slot < 0) return -1;
    int k = g->sess[i].slot;
    struct mslot *sl = &g->slots[k];
    if (!sl->busy || sl->session != i || sl->nonce != get64(buf + 16)) return -1;  // a late answer to an older request
    const uint8_t *m = g->pool + sl->pool_index * POOL_STRIDE;
    if (buf[3] == T_CHALLENGE) {
        // The address must prove itself for our key (docs/PROTOCOL.md 6.6): a RESPONSE signed by it, from
        // this socket to the CHALLENGE's source, then the request again, unchanged.
        uint8_t resp[POOL_STRIDE];
        uint16_t rl = build_response(resp, buf, n);
        if (!rl || sl->challenged >= 3) return -1;
        rl = sign_message(resp, rl, g->key, g->ctx, g->pub, (uint64_t)time(NULL));
        if (!rl) return -1;
        sl->challenged++;
        r->challenges++;
        sendto(fd, resp, rl, 0, (const struct sockaddr *)from, sizeof *from);
        send(sl->fd, m, get16(m + 6), 0);
        return -1;
    }
    if (buf[3] == T_REJECT) { *refused = 1; return k; }
    return buf[3] == T_ACCEPT ? k : -1;
}

/// One phase: pool entries of `kind`, `window` in flight. First one request alone (its address may have to
/// answer a CHALLENGE first: a host proves an address once per key, not once per session); then the full window
/// for `warm` seconds, not counted, so that the timed window sees the gateway in its steady state (midcomd
/// removes the admission a REBIND replaced `rebind-grace` seconds later, in its housekeeping: that work must
/// fall inside the window as it would under a sustained load); then the timed window of `seconds` (0: until
/// the pool is done), ending early when the pool runs out; then up to 600 ms for the answers still due, which
/// move their sessions but are not counted. midcomd's CPU time (-P) is read at both ends of the timed window.
static void run_moves(struct mobility *g, enum move_kind kind, double seconds, double warm, int window,
                      struct move_result *r) {
    enum { ALONE, WARM, TIMED, DRAIN, DONE };
    uint8_t buf[2048];
    int total = 2 * g->nsock, step = ALONE, counting = 0, refill = 1;
    uint64_t begin = bu_now_ns(), stop = begin + 3000000000ull, last_scan = begin, cpu0 = 0;
    start_move(g, 0, kind);
    while (step != DONE && !bu_stop) {
        int busy = 0;
        for (int k = 0; k < window; k++) busy += g->slots[k].busy;
        uint64_t now = bu_now_ns();
        int next = (now >= stop || (step == ALONE && !busy) || (step == WARM && r->pool_exhausted)
                    || (step == TIMED && r->pool_exhausted) || (step == TIMED && seconds <= 0 && !busy) || (step == DRAIN && !busy));
        if (next) {
            step++;
            if (step == WARM) {
                stop = now + (uint64_t)(warm * 1e9);
                for (int k = 0; k < window; k++) if (!g->slots[k].busy && !start_move(g, k, kind)) break;
            } else if (step == TIMED) {
                if (r->pool_exhausted) { step = DRAIN; stop = now + 600000000ull; refill = 0; continue; }
                counting = 1;
                cpu0 = process_cpu_ns(g->pid);
                begin = bu_now_ns();
                stop = seconds > 0 ? begin + (uint64_t)(seconds * 1e9) : begin + 600000000000ull;
                for (int k = 0; k < window; k++) if (!g->slots[k].busy && !start_move(g, k, kind)) break;
            } else if (step == DRAIN) {
                r->seconds = (double)(now - begin) / 1e9;
                uint64_t cpu1 = process_cpu_ns(g->pid);
                r->cpu_ns = cpu1 > cpu0 ? cpu1 - cpu0 : 0;
                counting = 0;
                refill = 0;
                stop = now + 600000000ull;
            }
            continue;
        }
        if (poll(g->pfd, (nfds_t)total, 20) < 0 && errno != EINTR) bu_die("poll");
        for (int j = 0; j < total; j++) {
            if (!(g->pfd[j].revents & POLLIN)) continue;
            for (int burst = 0; burst < 64; burst++) {
                struct sockaddr_in from;
                socklen_t fromlen = sizeof from;
                ssize_t n = recvfrom(g->pfd[j].fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fromlen);
                if (n < 0) break;
                int refused, k = on_move_reply(g, r, buf, (size_t)n, g->pfd[j].fd, &from, &refused);
                if (k < 0) continue;
                if (counting) {
                    if (refused) r->rejects++;
                    else { r->completed++; bu_hist_record(&r->hist, bu_now_ns() - g->slots[k].sent_ns); }
                }
                finish_move(g, k, kind, !refused);
                if (step != ALONE && refill && !start_move(g, k, kind) && seconds > 0) r->pool_exhausted = 1;
            }
        }
        now = bu_now_ns();
        if (now - last_scan > 50000000ull) {  // unanswered after 500 ms: lost, the session given up
            last_scan = now;
            for (int k = 0; k < window; k++) {
                if (!g->slots[k].busy || now - g->slots[k].sent_ns < 500000000ull) continue;
                if (counting) r->lost++;
                finish_move(g, k, kind, 0);
                if (refill && !start_move(g, k, kind) && step != ALONE && seconds > 0) r->pool_exhausted = 1;
            }
        }
    }
    for (int k = 0; k < window; k++) if (g->slots[k].busy) { r->abandoned++; finish_move(g, k, kind, 0); }
}

static void print_moves(const char *prefix, const struct move_result *r) {
    printf("\"%s_completed\":%llu,\"%s_lost\":%llu,\"%s_rejects\":%llu,\"%s_challenges\":%llu,\"%s_abandoned\":%llu,"
           "\"%s_seconds\":%.3f,\"%s_per_s\":%.0f,\"%s_rtt_p50_ns\":%.0f,\"%s_rtt_p99_ns\":%.0f,\"%s_pool\":%llu,"
           "\"%s_pool_exhausted\":%d,\"%s_sign_s\":%.3f,\"%s_cpu_ns_per_request\":%.0f",
           prefix, (unsigned long long)r->completed, prefix, (unsigned long long)r->lost, prefix,
           (unsigned long long)r->rejects, prefix, (unsigned long long)r->challenges, prefix,
           (unsigned long long)r->abandoned, prefix, r->seconds, prefix, r->seconds > 0 ? (double)r->completed / r->seconds : 0.0,
           prefix, bu_hist_percentile(&r->hist, 50), prefix, bu_hist_percentile(&r->hist, 99), prefix,
           (unsigned long long)r->pool, prefix, r->pool_exhausted, prefix, r->sign_s, prefix,
           r->completed ? (double)r->cpu_ns / (double)r->completed : 0.0);
}

static int cmd_rebind(int argc, char **argv) {
    if (argc < 4) return 2;
    struct mobility g0 = {0}, *g = &g0;
    int runs = 1, prep_window = 32;
    double seconds = 3, warm = 2.5;
    g->window = 64; g->nsock = 8; g->n = 20000; g->lifetime = 600;
    int opt;
    optind = 4;
    while ((opt = getopt(argc, argv, "w:s:d:g:n:r:l:P:W:")) != -1) {
        switch (opt) {
        case 'w': g->window = atoi(optarg); break;
        case 's': g->nsock = atoi(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 'g': warm = atof(optarg); break;
        case 'n': g->n = strtoull(optarg, NULL, 10); break;
        case 'r': runs = atoi(optarg); break;
        case 'l': g->lifetime = (uint32_t)atoi(optarg); break;
        case 'P': g->pid = atoi(optarg); break;
        case 'W': prep_window = atoi(optarg); break;
        default: return 2;
        }
    }
    // Sessions: 50 000 destination ports per pair of source ports, 4 pairs at most.
    if (g->window < 1 || g->window > 4096 || g->nsock < 1 || g->nsock > 64 || g->n < (uint64_t)g->window || g->n > 200000
        || runs < 1 || runs > 50 || seconds <= 0 || warm < 0 || warm > 30 || prep_window < 1)
        return 2;
    if (prep_window > g->window) prep_window = g->window;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(CSP_PORT)};
    if (inet_pton(AF_INET, argv[2], &to.sin_addr) != 1 || inet_pton(AF_INET, argv[3], &g->addr[1]) != 1) return 2;
    g->dst = to.sin_addr.s_addr;
    // The first address: the one routing picks toward DST (the host's address before it moves).
    int probe = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in local;
    socklen_t llen = sizeof local;
    if (connect(probe, (struct sockaddr *)&to, sizeof to) < 0 || getsockname(probe, (struct sockaddr *)&local, &llen) < 0)
        bu_die("connect");
    close(probe);
    g->addr[0] = local.sin_addr.s_addr;
    if (g->addr[0] == g->addr[1]) { fprintf(stderr, "cspload: the new address is the one routing picks already\n"); return 2; }
    g->pfd = calloc(2 * (size_t)g->nsock, sizeof *g->pfd);
    for (int a = 0; a < 2; a++) {
        g->fds[a] = calloc((size_t)g->nsock, sizeof(int));
        for (int i = 0; i < g->nsock; i++) {
            int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0), size = 4 << 20;
            setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
            struct sockaddr_in self = {.sin_family = AF_INET, .sin_addr.s_addr = g->addr[a]};
            if (bind(fd, (struct sockaddr *)&self, sizeof self) < 0) bu_die("bind (is the new address configured?)");
            if (connect(fd, (struct sockaddr *)&to, sizeof to) < 0) bu_die("connect");
            g->fds[a][i] = fd;
            g->pfd[a * g->nsock + i] = (struct pollfd){fd, POLLIN, 0};
        }
    }
    uint8_t seed[32];
    size_t publen = sizeof g->pub;
    if (getrandom(seed, sizeof seed, 0) != sizeof seed) bu_die("getrandom");
    g->key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, sizeof seed);
    g->ctx = EVP_MD_CTX_new();
    if (!g->key || !g->ctx || EVP_PKEY_get_raw_public_key(g->key, g->pub, &publen) != 1 || publen != 32) {
        fprintf(stderr, "cspload: OpenSSL has no Ed25519\n");
        return 1;
    }
    g->tag = (random64() & 0xffff) | 1;
    g->rng = random64() | 1;
    g->sess = calloc(g->n, sizeof *g->sess);
    g->pool = malloc(g->n * POOL_STRIDE);
    g->pool_session = malloc(g->n * sizeof *g->pool_session);
    g->slots = calloc((size_t)g->window, sizeof *g->slots);
    if (!g->sess || !g->pool || !g->pool_session || !g->slots) bu_die("malloc");
    for (uint64_t i = 0; i < g->n; i++)
        g->sess[i] = (struct msession){.sid = g->tag << 48 | i, .slot = -1, .sport = (uint16_t)(20000 + 2 * (i / 50000)),
                                       .dport = (uint16_t)(10000 + i % 50000)};
    bu_install_signals();

    // The sessions, set up once (not timed as a figure: the responder's every ACCEPT is CHALLENGEd).
    static struct move_result prep;
    prep.pool = g->n;
    prep.sign_s = fill_moves(g, MOVE_SETUP);
    run_moves(g, MOVE_SETUP, 0, 0, prep_window, &prep);
    uint64_t alive = 0;
    for (uint64_t i = 0; i < g->n; i++) alive += !g->sess[i].dead;
    printf("{\"phase\":\"prep\",\"alive\":%llu,", (unsigned long long)alive);
    print_moves("setup", &prep);
    printf("}\n");
    fflush(stdout);

    // Runs: signed re-SETUPs to another flow and REBINDs of the same sessions, the order alternating.
    for (int run = 1; run <= runs && !bu_stop; run++) {
        static struct move_result res[2];
        memset(res, 0, sizeof res);
        for (int step = 0; step < 2; step++) {
            enum move_kind kind = (step == 0) == (run % 2 == 1) ? MOVE_RESETUP : MOVE_REBIND;
            struct move_result *r = &res[kind == MOVE_REBIND];
            r->sign_s = fill_moves(g, kind);
            r->pool = g->pool_n;
            run_moves(g, kind, seconds, warm, g->window, r);
        }
        alive = 0;
        for (uint64_t i = 0; i < g->n; i++) alive += !g->sess[i].dead;
        printf("{\"run\":%d,\"first\":\"%s\",\"alive\":%llu,", run, run % 2 ? move_name[MOVE_RESETUP] : move_name[MOVE_REBIND],
               (unsigned long long)alive);
        print_moves(move_name[MOVE_RESETUP], &res[0]);
        printf(",");
        print_moves(move_name[MOVE_REBIND], &res[1]);
        printf("}\n");
        fflush(stdout);
    }
    EVP_MD_CTX_free(g->ctx);
    EVP_PKEY_free(g->key);
    return 0;
}

// MARK: flood

static int cmd_flood(int argc, char **argv) {
    if (argc < 4) return 2;
    const char *dst = argv[2];
    char prefix_text[64];
    snprintf(prefix_text, sizeof prefix_text, "%s", argv[3]);
    char *slash = strchr(prefix_text, '/');
    if (!slash) return 2;
    *slash = 0;
    int plen = atoi(slash + 1);
    double seconds = 5;
    uint16_t port = CSP_PORT, flow_port = 5000;
    int opt;
    optind = 4;
    while ((opt = getopt(argc, argv, "d:p:f:")) != -1) {
        if (opt == 'd') seconds = atof(optarg);
        else if (opt == 'p') port = (uint16_t)atoi(optarg);
        else if (opt == 'f') flow_port = (uint16_t)atoi(optarg);
        else return 2;
    }
    struct in_addr base, daddr;
    if (plen < 8 || plen > 30 || inet_pton(AF_INET, prefix_text, &base) != 1 || inet_pton(AF_INET, dst, &daddr) != 1) return 2;
    uint32_t host_mask = (1u << (32 - plen)) - 1, net = ntohl(base.s_addr) & ~host_mask;
    int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    if (fd < 0) bu_die("socket(SOCK_RAW)");
    int one = 1, size = 8 << 20;
    setsockopt(fd, IPPROTO_IP, IP_HDRINCL, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr = daddr};
    enum { V = 64, PAYLOAD = 54, PKT = 20 + 8 + PAYLOAD };
    static uint8_t pkts[V][PKT];
    struct mmsghdr sm[V];
    struct iovec iov[V];
    memset(sm, 0, sizeof sm);
    for (int i = 0; i < V; i++) {
        uint8_t *p = pkts[i];
        p[0] = 0x45; p[1] = 0; put16(p + 2, PKT); put16(p + 4, 0); put16(p + 6, 0x4000);  // DF
        p[8] = 64; p[9] = 17; put16(p + 10, 0);  // checksum: the kernel's
        memcpy(p + 16, &daddr, 4);
        uint8_t *u = p + 20;
        put16(u + 2, port); put16(u + 4, 8 + PAYLOAD); put16(u + 6, 0);
        uint8_t *m = u + 8;
        header(m, T_SETUP, PAYLOAD, 0, 0, 1);
        m[4] = 0x02;  // recordRoute, as a real host would
        uint8_t *f = m + 28;
        put16(f, 0x8001); put16(f + 2, 14); f[4] = 17; f[5] = 4;
        put16(f + 8, flow_port);
        memcpy(f + 14, &daddr, 4);
        put16(f + 18, 0x0002); put16(f + 20, 4); put32(f + 22, 60);
        iov[i] = (struct iovec){p, PKT};
        sm[i].msg_hdr.msg_iov = &iov[i];
        sm[i].msg_hdr.msg_iovlen = 1;
        sm[i].msg_hdr.msg_name = &to;
        sm[i].msg_hdr.msg_namelen = sizeof to;
    }
    uint64_t x = random64() | 1;  // xorshift64*
#define NEXT() (x ^= x >> 12, x ^= x << 25, x ^= x >> 27, x * 0x2545f4914f6cdd1dull)
    bu_install_signals();
    uint64_t begin = bu_now_ns(), end = begin + (uint64_t)(seconds * 1e9), sent = 0, errors = 0;
    while (!bu_stop && bu_now_ns() < end) {
        for (int i = 0; i < V; i++) {
            uint8_t *p = pkts[i];
            uint64_t r = NEXT();
            uint32_t host = (uint32_t)r & host_mask;
            if (host == 0 || host == host_mask) host = 1;  // neither the network nor the broadcast address
            uint32_t src = htonl(net | host);
            memcpy(p + 12, &src, 4);
            uint8_t *u = p + 20, *m = u + 8, *f = m + 28;
            put16(u, (uint16_t)(1024 + (r >> 32) % 64000));
            put64(m + 8, NEXT());
            put64(m + 16, NEXT());
            put16(f + 6, (uint16_t)(1024 + (r >> 48) % 64000));
            memcpy(f + 10, &src, 4);
        }
        int n = sendmmsg(fd, sm, V, 0);
        if (n > 0) sent += (uint64_t)n;
        if (n < V) errors++;  // a full device queue: the flood is best effort
    }
#undef NEXT
    double elapsed = (double)(bu_now_ns() - begin) / 1e9;
    printf("{\"sent\":%llu,\"seconds\":%.3f,\"per_s\":%.0f,\"short_bursts\":%llu}\n", (unsigned long long)sent, elapsed,
           (double)sent / elapsed, (unsigned long long)errors);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "respond") == 0) return cmd_respond(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "setup") == 0) return cmd_setup(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "flood") == 0) return cmd_flood(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "rebind") == 0) return cmd_rebind(argc, argv);
    fprintf(stderr, "usage: cspload respond [-p PORT] [-d S] [-C]\n"
                    "       cspload setup DST [-w WINDOW] [-s SOCKETS] [-d S] [-l LIFETIME] [-i FIRST] [-L] [-t] [-C] [-S [-n POOL] [-T S]]\n"
                    "       cspload flood DST PREFIX/LEN [-d S] [-p PORT] [-f FLOWPORT]\n"
                    "       cspload rebind DST NEWADDR [-w WINDOW] [-s SOCKETS] [-d S] [-g S] [-n SESSIONS] [-r RUNS] [-l LIFETIME] [-P PID] [-W WINDOW]\n");
    return 2;
}
