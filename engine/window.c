/* window.c: the active window, decoded segments kept across queries.
 * A chained hash on (layer, kv-head, segment) and an LRU list, one mutex;
 * decoding happens outside it (the caller pages in, then puts). */
#include "en_internal.h"
#include <stdlib.h>

#define NBUCKETS 4096u

struct en_window {
    pthread_mutex_t mu;
    size_t cap, entry_bytes, bytes;
    uint64_t entries, hits, evictions;
    en_wentry *head, *tail;          /* most recent first */
    en_wentry *bucket[NBUCKETS];
};

static unsigned hash(uint32_t layer, uint32_t kvh, uint64_t seg)
{
    uint64_t h = (seg * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)layer << 20) ^ ((uint64_t)kvh << 8);
    h ^= h >> 29;
    return (unsigned)(h % NBUCKETS);
}

int en_window_create(size_t cap, size_t entry_bytes, en_window **out)
{
    en_window *w = calloc(1, sizeof *w);
    if (!w) return en_fail(EG_EN_ENOMEM, "window: out of memory");
    pthread_mutex_init(&w->mu, NULL);
    w->cap = cap;
    w->entry_bytes = entry_bytes;
    *out = w;
    return 0;
}

en_wentry *en_wentry_alloc(size_t nk, size_t nv)
{
    en_wentry *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->k = malloc((nk + nv) * sizeof(float));
    if (!e->k) { free(e); return NULL; }
    e->v = e->k + nk;
    return e;
}

void en_wentry_free(en_wentry *e)
{
    if (!e) return;
    free(e->k);
    free(e);
}

static void lru_unlink(en_window *w, en_wentry *e)
{
    if (e->prev) e->prev->next = e->next; else w->head = e->next;
    if (e->next) e->next->prev = e->prev; else w->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_front(en_window *w, en_wentry *e)
{
    e->next = w->head;
    e->prev = NULL;
    if (w->head) w->head->prev = e;
    w->head = e;
    if (!w->tail) w->tail = e;
}

static void hash_remove(en_window *w, en_wentry *e)
{
    en_wentry **p = &w->bucket[hash(e->layer, e->kvh, e->seg)];
    while (*p && *p != e) p = &(*p)->hnext;
    if (*p) *p = e->hnext;
}

static void remove_entry(en_window *w, en_wentry *e)
{
    lru_unlink(w, e);
    hash_remove(w, e);
    w->bytes -= w->entry_bytes;
    w->entries--;
    en_wentry_free(e);
}

/* Evict unpinned entries from the cold end until within the budget. */
static void evict(en_window *w)
{
    en_wentry *e = w->tail;
    while (w->bytes > w->cap && e) {
        en_wentry *prev = e->prev;
        if (!e->pins) { remove_entry(w, e); w->evictions++; }
        e = prev;
    }
}

static en_wentry *find(en_window *w, uint32_t layer, uint32_t kvh, uint64_t seg)
{
    for (en_wentry *e = w->bucket[hash(layer, kvh, seg)]; e; e = e->hnext)
        if (e->seg == seg && e->layer == layer && e->kvh == kvh) return e;
    return NULL;
}

en_wentry *en_window_get(en_window *w, uint32_t layer, uint32_t kvh, uint64_t seg)
{
    pthread_mutex_lock(&w->mu);
    en_wentry *e = find(w, layer, kvh, seg);
    if (e) {
        e->pins++;
        w->hits++;
        lru_unlink(w, e);
        lru_front(w, e);
    }
    pthread_mutex_unlock(&w->mu);
    return e;
}

en_wentry *en_window_put(en_window *w, en_wentry *e)
{
    pthread_mutex_lock(&w->mu);
    en_wentry *old = find(w, e->layer, e->kvh, e->seg);
    if (old) {
        old->pins++;
        pthread_mutex_unlock(&w->mu);
        en_wentry_free(e);
        return old;
    }
    e->pins = 1;
    unsigned b = hash(e->layer, e->kvh, e->seg);
    e->hnext = w->bucket[b];
    w->bucket[b] = e;
    lru_front(w, e);
    w->bytes += w->entry_bytes;
    w->entries++;
    evict(w);
    pthread_mutex_unlock(&w->mu);
    return e;
}

void en_window_unpin(en_window *w, en_wentry *e)
{
    if (!e) return;
    pthread_mutex_lock(&w->mu);
    e->pins--;
    if (w->bytes > w->cap) evict(w);
    pthread_mutex_unlock(&w->mu);
}

void en_window_drop_from(en_window *w, uint64_t first_seg)
{
    pthread_mutex_lock(&w->mu);
    en_wentry *e = w->head;
    while (e) {
        en_wentry *next = e->next;
        if (e->seg >= first_seg && !e->pins) remove_entry(w, e);
        e = next;
    }
    pthread_mutex_unlock(&w->mu);
}

void en_window_counters(en_window *w, uint64_t *hits, uint64_t *bytes, uint64_t *entries,
                        uint64_t *evictions)
{
    pthread_mutex_lock(&w->mu);
    *hits = w->hits;
    *bytes = w->bytes;
    *entries = w->entries;
    *evictions = w->evictions;
    pthread_mutex_unlock(&w->mu);
}

void en_window_free(en_window *w)
{
    if (!w) return;
    en_wentry *e = w->head;
    while (e) { en_wentry *n = e->next; en_wentry_free(e); e = n; }
    pthread_mutex_destroy(&w->mu);
    free(w);
}
