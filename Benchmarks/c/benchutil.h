// Shared helpers of the Midcom benchmark programs: monotonic time, a log-linear latency histogram
// (HDR-style: 64 sub-buckets per power of two, so every recorded value is kept within 1.6 %),
// bounded run time, and CPU time of the calling process.
#ifndef MIDCOM_BENCHUTIL_H
#define MIDCOM_BENCHUTIL_H

#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static inline uint64_t bu_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/// User + system CPU time of this process in nanoseconds.
static inline uint64_t bu_cpu_ns(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ull
         + (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ull;
}

static volatile sig_atomic_t bu_stop = 0;
static void bu_on_signal(int sig) { (void)sig; bu_stop = 1; }
/// SIGTERM/SIGINT end the run gracefully (counters are still printed).
static inline void bu_install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = bu_on_signal;  // no SA_RESTART: blocking calls return EINTR and the loop checks bu_stop
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

// MARK: histogram

#define BU_HIST_BUCKETS 4096
typedef struct { uint64_t counts[BU_HIST_BUCKETS]; uint64_t total; uint64_t max; } bu_hist;

static inline int bu_hist_index(uint64_t v) {
    if (v < 128) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - 6;
    int idx = 128 + (shift - 1) * 64 + (int)((v >> shift) - 64);
    return idx < BU_HIST_BUCKETS ? idx : BU_HIST_BUCKETS - 1;
}

/// The middle of bucket `idx`.
static inline double bu_hist_value(int idx) {
    if (idx < 128) return idx;
    int shift = (idx - 128) / 64 + 1;
    uint64_t low = (uint64_t)((idx - 128) % 64 + 64) << shift;
    return (double)low + (double)((1ull << shift) - 1) / 2.0;
}

static inline void bu_hist_record(bu_hist *h, uint64_t v) {
    h->counts[bu_hist_index(v)]++;
    h->total++;
    if (v > h->max) h->max = v;
}

static inline double bu_hist_percentile(const bu_hist *h, double p) {
    if (h->total == 0) return 0;
    uint64_t rank = (uint64_t)(p / 100.0 * (double)h->total);
    if (rank >= h->total) rank = h->total - 1;
    uint64_t seen = 0;
    for (int i = 0; i < BU_HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen > rank) return bu_hist_value(i);
    }
    return (double)h->max;
}

static inline void bu_die(const char *what) {
    fprintf(stderr, "%s: %s\n", what, strerror(errno));
    exit(1);
}

#endif
