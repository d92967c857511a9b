// natpmpload: NAT-PMP (RFC 6886) pinhole load against miniupnpd, for the Midcom benchmark (figure 8).
//
//   natpmpload GATEWAY [-d SECONDS] [-n MAX]
//       One request at a time (NAT-PMP has no request id, so answers are matched by opcode and port):
//       map UDP internal port p to external port p for 60 s (opcode 1), wait for the answer, then remove
//       it (same request, lifetime 0), wait again. One pinhole created and removed per iteration, ports
//       cycling over 20000-59999. Prints {"cycles":N,"seconds":S,"per_s":R,"errors":E,"timeouts":T}.
#include "benchutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

static int request(int fd, uint16_t port, uint32_t lifetime, uint64_t *errors) {
    uint8_t m[12] = {0, 1, 0, 0};  // version 0, opcode 1 (map UDP), reserved
    m[4] = (uint8_t)(port >> 8); m[5] = (uint8_t)port;   // internal port
    m[6] = (uint8_t)(port >> 8); m[7] = (uint8_t)port;   // suggested external port
    m[8] = (uint8_t)(lifetime >> 24); m[9] = (uint8_t)(lifetime >> 16); m[10] = (uint8_t)(lifetime >> 8); m[11] = (uint8_t)lifetime;
    if (send(fd, m, sizeof m, 0) < 0) { (*errors)++; return -1; }
    struct pollfd p = {fd, POLLIN, 0};
    for (;;) {
        if (poll(&p, 1, 250) <= 0) return -2;  // RFC 6886 retransmits after 250 ms; we count a timeout
        uint8_t r[16];
        ssize_t n = recv(fd, r, sizeof r, 0);
        if (n < 16 || r[1] != 129) continue;
        if (((uint16_t)r[8] << 8 | r[9]) != port) continue;  // a late answer to an earlier request
        uint16_t result = (uint16_t)(r[2] << 8 | r[3]);
        if (result != 0) (*errors)++;
        return result;
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: natpmpload GATEWAY [-d SECONDS] [-n MAX]\n");
        return 2;
    }
    double seconds = 3;
    long max = 1000000;
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "d:n:")) != -1) {
        if (opt == 'd') seconds = atof(optarg);
        else if (opt == 'n') max = atol(optarg);
        else return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in gw = {.sin_family = AF_INET, .sin_port = htons(5351)};
    inet_pton(AF_INET, argv[1], &gw.sin_addr);
    if (connect(fd, (struct sockaddr *)&gw, sizeof gw) < 0) bu_die("connect");
    bu_install_signals();
    uint64_t start = bu_now_ns(), end = start + (uint64_t)(seconds * 1e9), cycles = 0, errors = 0, timeouts = 0;
    for (long i = 0; i < max && !bu_stop && bu_now_ns() < end; i++) {
        uint16_t port = (uint16_t)(20000 + i % 40000);
        if (request(fd, port, 60, &errors) == -2) { timeouts++; continue; }
        if (request(fd, port, 0, &errors) == -2) { timeouts++; continue; }
        cycles++;
    }
    double elapsed = (double)(bu_now_ns() - start) / 1e9;
    printf("{\"cycles\":%llu,\"seconds\":%.3f,\"per_s\":%.0f,\"errors\":%llu,\"timeouts\":%llu}\n",
           (unsigned long long)cycles, elapsed, (double)cycles / elapsed, (unsigned long long)errors,
           (unsigned long long)timeouts);
    return 0;
}
