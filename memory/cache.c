/* cache.c: the RAM cache tier. Decoded blocks, least recently used evicted
 * first when the bytes held pass the capacity. A chained hash table finds
 * entries; a doubly linked list keeps recency. One mutex: every operation is
 * a lookup and a copy, short next to a block decode. */
#include "internal.h"
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    eg_cache_key key;
    struct entry *hnext, *prev, *next;
    size_t nk, nv;        /* floats */
    float data[];         /* keys then values */
} entry;

struct eg_cache {
    pthread_mutex_t mu;
    size_t cap, bytes;
    entry **table;
    size_t nbuckets, count;
    entry *head, *tail;   /* head = most recent */
    uint64_t hits, misses, evictions;
};

static uint64_t key_hash(const eg_cache_key *k)
{
    uint64_t h = k->ns * 0x9E3779B97F4A7C15ull;
    h ^= (k->seg + 0x632BE59BD9B4E019ull) * 0xC2B2AE3D27D4EB4Full;
    h ^= ((uint64_t)k->layer << 32 | k->kv_head) * 0x165667B19E3779F9ull;
    h ^= k->serial * 0x27D4EB2F165667C5ull;
    return h ^ (h >> 29);
}

static int key_eq(const eg_cache_key *a, const eg_cache_key *b)
{
    return a->ns == b->ns && a->seg == b->seg && a->serial == b->serial &&
           a->layer == b->layer && a->kv_head == b->kv_head;
}

static size_t entry_bytes(const entry *e) { return sizeof *e + (e->nk + e->nv) * 4; }

int eg_cache_new(size_t cap, eg_cache **out)
{
    eg_cache *c = calloc(1, sizeof *c);
    if (!c) return eg_mem_fail(EG_ENOMEM, "cache: out of memory");
    c->cap = cap;
    c->nbuckets = 1024;
    c->table = calloc(c->nbuckets, sizeof *c->table);
    if (!c->table) { free(c); return eg_mem_fail(EG_ENOMEM, "cache: out of memory"); }
    pthread_mutex_init(&c->mu, NULL);
    *out = c;
    return 0;
}

void eg_cache_free(eg_cache *c)
{
    if (!c) return;
    for (entry *e = c->head, *n; e; e = n) { n = e->next; free(e); }
    free(c->table);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static entry **find_slot(eg_cache *c, const eg_cache_key *k)
{
    entry **pp = &c->table[key_hash(k) & (c->nbuckets - 1)];
    while (*pp && !key_eq(&(*pp)->key, k)) pp = &(*pp)->hnext;
    return pp;
}

static void lru_unlink(eg_cache *c, entry *e)
{
    if (e->prev) e->prev->next = e->next; else c->head = e->next;
    if (e->next) e->next->prev = e->prev; else c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push(eg_cache *c, entry *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head) c->head->prev = e; else c->tail = e;
    c->head = e;
}

static void remove_entry(eg_cache *c, entry *e)
{
    entry **pp = find_slot(c, &e->key);
    if (*pp == e) *pp = e->hnext;
    lru_unlink(c, e);
    c->bytes -= entry_bytes(e);
    c->count--;
    free(e);
}

static void grow_table(eg_cache *c)
{
    size_t nb = c->nbuckets * 2;
    entry **t = calloc(nb, sizeof *t);
    if (!t) return;   /* keep the old table: slower, still correct */
    for (size_t i = 0; i < c->nbuckets; i++)
        for (entry *e = c->table[i], *n; e; e = n) {
            n = e->hnext;
            entry **pp = &t[key_hash(&e->key) & (nb - 1)];
            e->hnext = *pp;
            *pp = e;
        }
    free(c->table);
    c->table = t;
    c->nbuckets = nb;
}

int eg_cache_get(eg_cache *c, const eg_cache_key *k, float *keys, size_t nk, float *values, size_t nv)
{
    pthread_mutex_lock(&c->mu);
    entry *e = *find_slot(c, k);
    if (!e || e->nk != nk || e->nv != nv) {
        c->misses++;
        pthread_mutex_unlock(&c->mu);
        return 0;
    }
    lru_unlink(c, e);
    lru_push(c, e);
    if (keys) memcpy(keys, e->data, nk * 4);
    if (values) memcpy(values, e->data + nk, nv * 4);
    c->hits++;
    pthread_mutex_unlock(&c->mu);
    return 1;
}

int eg_cache_put(eg_cache *c, const eg_cache_key *k, const float *keys, size_t nk,
                 const float *values, size_t nv)
{
    size_t need = sizeof(entry) + (nk + nv) * 4;
    if (need > c->cap) return 0;
    entry *e = malloc(need);
    if (!e) return 0;     /* a cache that cannot grow just misses */
    e->key = *k;
    e->nk = nk;
    e->nv = nv;
    e->prev = e->next = e->hnext = NULL;
    memcpy(e->data, keys, nk * 4);
    memcpy(e->data + nk, values, nv * 4);
    pthread_mutex_lock(&c->mu);
    entry **pp = find_slot(c, k);
    if (*pp) remove_entry(c, *pp);
    while (c->bytes + need > c->cap && c->tail) {
        remove_entry(c, c->tail);
        c->evictions++;
    }
    pp = find_slot(c, k);
    e->hnext = *pp;
    *pp = e;
    lru_push(c, e);
    c->bytes += need;
    c->count++;
    if (c->count > c->nbuckets) grow_table(c);
    pthread_mutex_unlock(&c->mu);
    return 0;
}

void eg_cache_counters(eg_cache *c, uint64_t *hits, uint64_t *misses, uint64_t *bytes,
                       uint64_t *entries, uint64_t *evictions)
{
    pthread_mutex_lock(&c->mu);
    *hits = c->hits;
    *misses = c->misses;
    *bytes = c->bytes;
    *entries = c->count;
    *evictions = c->evictions;
    pthread_mutex_unlock(&c->mu);
}
