// The calls and constants CLinuxSystem.h declares, with the _GNU_SOURCE view of glibc.
#define _GNU_SOURCE 1
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "CLinuxSystem.h"

int clx_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int clx_set_thread_name(const char *name) { return prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0); }

int clx_thread_name(char name[16]) { return prctl(PR_GET_NAME, (unsigned long)name, 0, 0, 0); }

int clx_allowed_cpu_count(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return -1;
    return CPU_COUNT(&set);
}

int clx_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token) {
    struct epoll_event event = {.events = events, .data = {.u64 = token}};
    return epoll_ctl(epfd, op, fd, &event);
}

int clx_epoll_wait(int epfd, uint32_t *events, uint64_t *tokens, int capacity, int timeoutMs) {
    struct epoll_event buffer[64];
    if (capacity > 64) capacity = 64;
    int count = epoll_wait(epfd, buffer, capacity, timeoutMs);
    for (int i = 0; i < count; i++) {
        events[i] = buffer[i].events;
        tokens[i] = buffer[i].data.u64;
    }
    return count;
}

int clx_pipe(int fds[2]) { return pipe2(fds, O_CLOEXEC | O_NONBLOCK); }
int clx_set_pipe_size(int fd, int size) { return fcntl(fd, F_SETPIPE_SZ, size); }

long clx_splice(int from, int to, unsigned long count, unsigned int flags) {
    return (long)splice(from, NULL, to, NULL, count, flags);
}

int clx_accept(int fd, int nonBlocking) {
    return accept4(fd, NULL, NULL, SOCK_CLOEXEC | (nonBlocking ? SOCK_NONBLOCK : 0));
}

const uint32_t CLX_EPOLLIN = EPOLLIN, CLX_EPOLLOUT = EPOLLOUT, CLX_EPOLLRDHUP = EPOLLRDHUP, CLX_EPOLLHUP = EPOLLHUP,
               CLX_EPOLLERR = EPOLLERR, CLX_EPOLLET = EPOLLET;
const int CLX_EPOLL_CTL_ADD = EPOLL_CTL_ADD, CLX_EPOLL_CTL_MOD = EPOLL_CTL_MOD, CLX_EPOLL_CTL_DEL = EPOLL_CTL_DEL;
const unsigned int CLX_SPLICE_MOVE = SPLICE_F_MOVE, CLX_SPLICE_NONBLOCK = SPLICE_F_NONBLOCK, CLX_SPLICE_MORE = SPLICE_F_MORE;
const int CLX_TCP_USER_TIMEOUT = TCP_USER_TIMEOUT, CLX_TCP_KEEPIDLE = TCP_KEEPIDLE, CLX_TCP_KEEPINTVL = TCP_KEEPINTVL,
          CLX_TCP_KEEPCNT = TCP_KEEPCNT, CLX_TCP_NODELAY = TCP_NODELAY;
