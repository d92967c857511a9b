// The Linux calls Swift's Glibc module does not export: it is built without _GNU_SOURCE, so
// epoll, splice, pipe2, accept4 and a few constants are invisible to Swift. Only SystemSupport
// imports this module; everything else uses SystemSupport's typed wrappers.
#ifndef CLINUXSYSTEM_H
#define CLINUXSYSTEM_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static inline int clx_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

/// events: EPOLLIN/OUT/RDHUP/ET bits as below; data: the caller's token.
static inline int clx_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token) {
    struct epoll_event event = {.events = events, .data = {.u64 = token}};
    return epoll_ctl(epfd, op, fd, &event);
}

/// Fills parallel arrays instead of `struct epoll_event` (packed on x86-64, awkward in Swift).
static inline int clx_epoll_wait(int epfd, uint32_t *events, uint64_t *tokens, int capacity, int timeoutMs) {
    struct epoll_event buffer[64];
    if (capacity > 64) capacity = 64;
    int count = epoll_wait(epfd, buffer, capacity, timeoutMs);
    for (int i = 0; i < count; i++) {
        events[i] = buffer[i].events;
        tokens[i] = buffer[i].data.u64;
    }
    return count;
}

static const uint32_t CLX_EPOLLIN = EPOLLIN;
static const uint32_t CLX_EPOLLOUT = EPOLLOUT;
static const uint32_t CLX_EPOLLRDHUP = EPOLLRDHUP;
static const uint32_t CLX_EPOLLHUP = EPOLLHUP;
static const uint32_t CLX_EPOLLERR = EPOLLERR;
static const uint32_t CLX_EPOLLET = EPOLLET;
static const int CLX_EPOLL_CTL_ADD = EPOLL_CTL_ADD;
static const int CLX_EPOLL_CTL_MOD = EPOLL_CTL_MOD;
static const int CLX_EPOLL_CTL_DEL = EPOLL_CTL_DEL;

static inline int clx_pipe(int fds[2]) { return pipe2(fds, O_CLOEXEC | O_NONBLOCK); }
static inline int clx_set_pipe_size(int fd, int size) { return fcntl(fd, F_SETPIPE_SZ, size); }

/// splice(2) without offsets (sockets and pipes); flags: CLX_SPLICE_*.
static inline long clx_splice(int from, int to, unsigned long count, unsigned int flags) {
    return (long)splice(from, NULL, to, NULL, count, flags);
}
static const unsigned int CLX_SPLICE_MOVE = SPLICE_F_MOVE;
static const unsigned int CLX_SPLICE_NONBLOCK = SPLICE_F_NONBLOCK;
static const unsigned int CLX_SPLICE_MORE = SPLICE_F_MORE;

static inline int clx_accept(int fd, int nonBlocking) {
    return accept4(fd, NULL, NULL, SOCK_CLOEXEC | (nonBlocking ? SOCK_NONBLOCK : 0));
}

static const int CLX_TCP_USER_TIMEOUT = TCP_USER_TIMEOUT;
static const int CLX_TCP_KEEPIDLE = TCP_KEEPIDLE;
static const int CLX_TCP_KEEPINTVL = TCP_KEEPINTVL;
static const int CLX_TCP_KEEPCNT = TCP_KEEPCNT;
static const int CLX_TCP_NODELAY = TCP_NODELAY;
#endif
