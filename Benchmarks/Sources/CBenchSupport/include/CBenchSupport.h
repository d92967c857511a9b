// glibc's malloc statistics for the Swift benchmark (malloc.h is not part of Swift's Glibc module).
#ifndef CBENCHSUPPORT_H
#define CBENCHSUPPORT_H
#include <malloc.h>
#include <stddef.h>
#include <stdio.h>

/// Bytes currently allocated with malloc (mallinfo2's uordblks + hblkhd).
static inline size_t cbs_malloc_in_use(void) {
    struct mallinfo2 info = mallinfo2();
    return info.uordblks + info.hblkhd;
}

static inline void cbs_error(const char *message) { fputs(message, stderr); }
#endif
