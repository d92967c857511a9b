// udpgap: how long a UDP stream is interrupted when its sender's address changes (Midcom benchmark, figure 11).
//
//   udpgap send DST PORT [-S SPORT] [-i MICROSECONDS] [-d SECONDS]
//       One datagram every -i µs (default 1000) to DST:PORT from a socket bound to 0.0.0.0:SPORT (default 4000)
//       and not connected, so the kernel picks the source address for every datagram, as for an application
//       that does not pin its address: while the host has no usable address sendto fails (counted, the stream
//       goes on) and the next datagram leaves from the new address. Each payload carries a sequence number and
//       the CLOCK_MONOTONIC send time. Prints sent, send_errors, first_error_seq, last_error_seq and resume_ns
//       (the send time of the first datagram sent without error after the last error).
//   udpgap recv PORT [-d SECONDS]
//       Receives for SECONDS, or until 300 ms pass without a datagram after the move. At the first change of the
//       sender's address (after at least one datagram from the first address): gap_ns = arrival of the first
//       datagram from the new address - arrival of the last one from the old address, both the kernel's receive
//       time stamps (SO_TIMESTAMPNS: when the datagram reached the socket, not when this process, which shares
//       a CPU with the load, got to read it); missing = sequence numbers between the two; first_new_sent_ns =
//       the send time of that first datagram from the new address. Prints them with the datagrams counted per
//       address; moved 0 when the address never changed.
// Everything prints one JSON line on stdout. Run time is bounded by -d in both modes.
#include "benchutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

struct stamp { uint64_t seq; uint64_t sent_ns; };

static int cmd_send(int argc, char **argv) {
    if (argc < 4) return 2;
    uint16_t sport = 4000;
    double seconds = 5, interval_us = 1000;
    int opt;
    optind = 4;
    while ((opt = getopt(argc, argv, "S:i:d:")) != -1) {
        if (opt == 'S') sport = (uint16_t)atoi(optarg);
        else if (opt == 'i') interval_us = atof(optarg);
        else if (opt == 'd') seconds = atof(optarg);
        else return 2;
    }
    if (interval_us < 10 || seconds <= 0 || seconds > 600) return 2;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[3]))};
    if (inet_pton(AF_INET, argv[2], &to.sin_addr) != 1) return 2;
    int fd = socket(AF_INET, SOCK_DGRAM, 0), one = 1;
    if (fd < 0) bu_die("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in self = {.sin_family = AF_INET, .sin_port = htons(sport)};
    if (bind(fd, (struct sockaddr *)&self, sizeof self) < 0) bu_die("bind");
    bu_install_signals();
    uint64_t step = (uint64_t)(interval_us * 1000), begin = bu_now_ns(), end = begin + (uint64_t)(seconds * 1e9);
    uint64_t seq = 0, errors = 0, first_error = 0, last_error = 0, resume_ns = 0;
    int failing = 0;
    for (uint64_t next = begin; !bu_stop && next < end; next += step) {
        uint64_t now = bu_now_ns();
        // Behind by more than a step (the CPU was busy elsewhere): the missed steps are skipped, not sent
        // in a burst, so the stream keeps its rate and `missing` at the receiver keeps its meaning.
        if (now > next + step) next = now;
        if (next > now) {
            struct timespec ts = {(time_t)((next - now) / 1000000000ull), (long)((next - now) % 1000000000ull)};
            nanosleep(&ts, NULL);
        }
        struct stamp p = {++seq, bu_now_ns()};
        if (sendto(fd, &p, sizeof p, 0, (struct sockaddr *)&to, sizeof to) < 0) {
            errors++;
            if (!first_error) first_error = seq;
            last_error = seq;
            failing = 1;
        } else if (failing) {
            failing = 0;
            resume_ns = p.sent_ns;
        }
    }
    printf("{\"sent\":%llu,\"send_errors\":%llu,\"first_error_seq\":%llu,\"last_error_seq\":%llu,\"resume_ns\":%llu}\n",
           (unsigned long long)seq, (unsigned long long)errors, (unsigned long long)first_error,
           (unsigned long long)last_error, (unsigned long long)resume_ns);
    return 0;
}

static int cmd_recv(int argc, char **argv) {
    if (argc < 3) return 2;
    double seconds = 10;
    int opt;
    optind = 3;
    while ((opt = getopt(argc, argv, "d:")) != -1) {
        if (opt == 'd') seconds = atof(optarg);
        else return 2;
    }
    if (seconds <= 0 || seconds > 600) return 2;
    int fd = socket(AF_INET, SOCK_DGRAM, 0), one = 1, size = 4 << 20;
    if (fd < 0) bu_die("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    struct sockaddr_in self = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (bind(fd, (struct sockaddr *)&self, sizeof self) < 0) bu_die("bind");
    struct timeval tv = {0, 50000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    bu_install_signals();
    printf("ready\n");
    fflush(stdout);
    uint64_t end = bu_now_ns() + (uint64_t)(seconds * 1e9), last_ns = 0;
    uint64_t count[2] = {0, 0}, last_old_ns = 0, last_old_seq = 0, gap_ns = 0, first_new_seq = 0, first_new_sent = 0;
    uint32_t address[2] = {0, 0};
    int moved = 0, other = 0;
    while (!bu_stop && bu_now_ns() < end) {
        struct stamp p;
        struct sockaddr_in from;
        union { char buf[CMSG_SPACE(sizeof(struct timespec))]; struct cmsghdr align; } control;
        struct iovec iov = {&p, sizeof p};
        struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1,
                             .msg_control = control.buf, .msg_controllen = sizeof control.buf};
        ssize_t n = recvmsg(fd, &msg, 0);
        uint64_t mono = bu_now_ns();
        if (n != (ssize_t)sizeof p) {
            if (moved && mono - last_ns > 300000000ull) break;  // the stream ended
            continue;
        }
        last_ns = mono;
        uint64_t now = 0;  // the kernel's receive time (CLOCK_REALTIME: only differences are used)
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                struct timespec ts;
                memcpy(&ts, CMSG_DATA(c), sizeof ts);
                now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
            }
        }
        if (!now) bu_die("no SO_TIMESTAMPNS receive time");
        uint32_t a = from.sin_addr.s_addr;
        if (!count[0]) address[0] = a;
        if (a == address[0] && !moved) {
            count[0]++;
            last_old_ns = now;
            last_old_seq = p.seq;
        } else if (!moved) {
            moved = 1;
            address[1] = a;
            count[1] = 1;
            gap_ns = now - last_old_ns;
            first_new_seq = p.seq;
            first_new_sent = p.sent_ns;
        } else if (a == address[1]) {
            count[1]++;
        } else {
            other++;  // a third address, or the first one again: not this measurement's
        }
    }
    char old_text[INET_ADDRSTRLEN] = "-", new_text[INET_ADDRSTRLEN] = "-";
    if (count[0]) inet_ntop(AF_INET, &address[0], old_text, sizeof old_text);
    if (moved) inet_ntop(AF_INET, &address[1], new_text, sizeof new_text);
    printf("{\"moved\":%d,\"old\":\"%s\",\"new\":\"%s\",\"from_old\":%llu,\"from_new\":%llu,\"other\":%d,"
           "\"gap_ns\":%llu,\"gap_ms\":%.3f,\"last_old_seq\":%llu,\"first_new_seq\":%llu,\"missing\":%lld,"
           "\"first_new_sent_ns\":%llu}\n",
           moved, old_text, new_text, (unsigned long long)count[0], (unsigned long long)count[1], other,
           (unsigned long long)gap_ns, (double)gap_ns / 1e6, (unsigned long long)last_old_seq,
           (unsigned long long)first_new_seq, moved ? (long long)first_new_seq - (long long)last_old_seq - 1 : 0,
           (unsigned long long)first_new_sent);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "send") == 0) return cmd_send(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "recv") == 0) return cmd_recv(argc, argv);
    fprintf(stderr, "usage: udpgap send DST PORT [-S SPORT] [-i MICROSECONDS] [-d SECONDS]\n"
                    "       udpgap recv PORT [-d SECONDS]\n");
    return 2;
}
