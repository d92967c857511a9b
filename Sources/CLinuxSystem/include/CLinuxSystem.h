// The Linux calls Swift's Glibc module does not export: it is built without _GNU_SOURCE, so
// epoll, splice, pipe2, accept4, CPU_COUNT and a few constants are invisible to Swift. Only SystemSupport
// imports this module; everything else uses SystemSupport's typed wrappers.
//
// The header includes no system header: defining _GNU_SOURCE here would give this module its own
// view of glibc's types (fd_set, ...) next to SwiftGlibc's, which some builds refuse. The calls
// and the constants' values live in shims.c, compiled with _GNU_SOURCE.
#ifndef CLINUXSYSTEM_H
#define CLINUXSYSTEM_H
#include <stdint.h>

int clx_epoll_create(void);
/// events: CLX_EPOLL* bits; data: the caller's token.
int clx_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token);
/// Fills parallel arrays instead of `struct epoll_event` (packed on x86-64, awkward in Swift);
/// at most 64 events per call.
int clx_epoll_wait(int epfd, uint32_t *events, uint64_t *tokens, int capacity, int timeoutMs);

/// CPUs the calling thread may run on (its affinity mask, as `taskset` or systemd's CPUAffinity=
/// set it); -1 with errno when the kernel refuses the call.
int clx_allowed_cpu_count(void);

/// The calling thread's name as `ps -L`, `top -H` and /proc/<pid>/task/<tid>/comm show it: at most
/// 15 octets (longer names are cut). prctl(PR_SET_NAME / PR_GET_NAME) is variadic, so Swift cannot call it.
int clx_set_thread_name(const char *name);
/// Fills name (16 octets, NUL-terminated).
int clx_thread_name(char name[16]);

int clx_pipe(int fds[2]);
int clx_set_pipe_size(int fd, int size);
/// splice(2) without offsets (sockets and pipes); flags: CLX_SPLICE_*.
long clx_splice(int from, int to, unsigned long count, unsigned int flags);
int clx_accept(int fd, int nonBlocking);

extern const uint32_t CLX_EPOLLIN, CLX_EPOLLOUT, CLX_EPOLLRDHUP, CLX_EPOLLHUP, CLX_EPOLLERR, CLX_EPOLLET;
extern const int CLX_EPOLL_CTL_ADD, CLX_EPOLL_CTL_MOD, CLX_EPOLL_CTL_DEL;
extern const unsigned int CLX_SPLICE_MOVE, CLX_SPLICE_NONBLOCK, CLX_SPLICE_MORE;
extern const int CLX_TCP_USER_TIMEOUT, CLX_TCP_KEEPIDLE, CLX_TCP_KEEPINTVL, CLX_TCP_KEEPCNT, CLX_TCP_NODELAY;
#endif
