/* internal.h: declarations shared by the .c files of memory/ only.
 * Not a public header: nothing outside memory/ includes it. */
#ifndef ENGRAM_MEMORY_INTERNAL_H
#define ENGRAM_MEMORY_INTERNAL_H
#include "memory.h"
#include <stdarg.h>

/* Record a failure message for this thread and return `code`. */
int eg_mem_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* RAM cache tier: decoded blocks, LRU by bytes. Keys are (namespace, layer,
 * kv-head, segment, serial); serial changes whenever a block is rewritten,
 * so a stale entry can never be served (it just ages out). */
typedef struct eg_cache eg_cache;
typedef struct { uint64_t ns, seg, serial; uint32_t layer, kv_head; } eg_cache_key;
int eg_cache_new(size_t cap_bytes, eg_cache **out);
void eg_cache_free(eg_cache *c);
/* Copy a hit into keys (nk floats) / values (nv floats), either may be NULL.
 * Returns 1 on hit, 0 on miss. */
int eg_cache_get(eg_cache *c, const eg_cache_key *k, float *keys, size_t nk, float *values,
                 size_t nv);
/* Insert (copies). Entries larger than the capacity are not kept. */
int eg_cache_put(eg_cache *c, const eg_cache_key *k, const float *keys, size_t nk,
                 const float *values, size_t nv);
void eg_cache_counters(eg_cache *c, uint64_t *hits, uint64_t *misses, uint64_t *bytes,
                       uint64_t *entries, uint64_t *evictions);
#endif
