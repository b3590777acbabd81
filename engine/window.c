/* window.c: the active window, segments kept in RAM across queries.
 * A chained hash on (layer, kv-head, segment) and an LRU list, one mutex;
 * reading and decoding happen outside it (en_page_in reads, then puts).
 *
 * Why entries keep blocks as stored: f32 keys and values are 3.5 times
 * the bytes of q8 blocks, so the same budget holds 3.5 times the
 * segments; each 64-token tile is decoded into scratch that stays in
 * L1/L2. The step costs about the same either way (engram-bench attend
 * measures both windows on the same step, window_f32_vs_stored). */
#include "en_internal.h"
#include <stdlib.h>
#include <string.h>

#define NBUCKETS 4096u

struct en_window {
    pthread_mutex_t mu;
    size_t cap, bytes;
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

int en_window_create(size_t cap, en_window **out)
{
    en_window *w = calloc(1, sizeof *w);
    if (!w) return en_fail(EG_EN_ENOMEM, "window: out of memory");
    pthread_mutex_init(&w->mu, NULL);
    w->cap = cap;
    *out = w;
    return 0;
}

/* An entry and its arrays in one allocation: the header, then each array
 * at a 64-byte boundary. */
#define ALIGN64(x) (((x) + 63) & ~(size_t)63)

static en_wentry *entry_alloc(size_t kbytes, size_t vbytes)
{
    size_t head = ALIGN64(sizeof(en_wentry)), total = head + ALIGN64(kbytes) + ALIGN64(vbytes);
    en_wentry *e = aligned_alloc(64, total);
    if (!e) return NULL;
    memset(e, 0, sizeof *e);
    e->bytes = total;
    return e;
}

static void *entry_array(en_wentry *e, int which, size_t kbytes)
{
    return (char *)e + ALIGN64(sizeof(en_wentry)) + (which ? ALIGN64(kbytes) : 0);
}

void en_wentry_free(en_wentry *e) { free(e); }

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
    w->bytes -= e->bytes;
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

/* A hit, lock held: pinned, counted, moved to the front. */
static en_wentry *hit(en_window *w, en_wentry *e)
{
    if (e) {
        e->pins++;
        w->hits++;
        lru_unlink(w, e);
        lru_front(w, e);
    }
    return e;
}

en_wentry *en_window_get(en_window *w, uint32_t layer, uint32_t kvh, uint64_t seg)
{
    pthread_mutex_lock(&w->mu);
    en_wentry *e = hit(w, find(w, layer, kvh, seg));
    pthread_mutex_unlock(&w->mu);
    return e;
}

void en_window_get_many(en_window *w, uint32_t layer, uint32_t kvh, const int64_t *segs, size_t n, en_wentry **out)
{
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < n; i++) out[i] = segs[i] < 0 ? NULL : hit(w, find(w, layer, kvh, (uint64_t)segs[i]));
    pthread_mutex_unlock(&w->mu);
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
    w->bytes += e->bytes;
    w->entries++;
    evict(w);
    pthread_mutex_unlock(&w->mu);
    return e;
}

void en_window_unpin_many(en_window *w, en_wentry *const *e, size_t n)
{
    if (!n) return;
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < n; i++)
        if (e[i]) e[i]->pins--;
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

/* ---- page-in ---------------------------------------------------------------------- */
typedef struct {
    const en_sess *s;
    en_wentry *e;
} fill_ctx;

/* Visitor of eg_read_blocks_encoded: the entry of one checked block. */
static int fill_entry(void *arg, uint64_t seg, const eg_encoded_block *b)
{
    fill_ctx *c = arg;
    const en_sess *s = c->s;
    (void)seg;
    size_t S = s->cfg.seg_tokens, nk = S * s->cfg.head_dim_k, nv = S * s->cfg.head_dim_v;
    int f32 = s->e->opt.window_f32 || b->codec == EG_CODEC_F32;
    int dec_k = f32 || s->cfg.rope_mode != EG_ROPE_NONE, dec_v = f32;
    size_t kbytes = dec_k ? nk * sizeof(float) : b->klen, vbytes = dec_v ? nv * sizeof(float) : b->vlen;
    en_wentry *e = entry_alloc(kbytes, vbytes);
    if (!e) return en_fail(EG_EN_ENOMEM, "window: out of memory");
    void *ka = entry_array(e, 0, kbytes), *va = entry_array(e, 1, kbytes);
    e->codec = b->codec;
    int rc = 0;
    if (dec_k) {
        e->k = ka;
        rc = eg_codec_decode(b->codec, EG_KIND_K, b->keys, b->klen, b->n_tokens, b->dim_k, e->k);
    } else {
        memcpy(ka, b->keys, b->klen);
        e->kb = ka;
        e->klen = b->klen;
    }
    if (!rc && dec_v) {
        e->v = va;
        rc = eg_codec_decode(b->codec, EG_KIND_V, b->values, b->vlen, b->n_tokens, b->dim_v, e->v);
    } else if (!rc) {
        memcpy(va, b->values, b->vlen);
        e->vb = va;
        e->vlen = b->vlen;
    }
    if (rc) { free(e); return rc; }
    c->e = e;
    return 0;
}

int en_page_in(en_sess *s, uint32_t layer, uint32_t kvh, uint64_t seg, en_wentry **out, uint64_t *n_in)
{
    en_wentry *e = en_window_get(s->win, layer, kvh, seg);
    if (!e) {
        fill_ctx c = {s, NULL};
        int rc = eg_read_blocks_encoded(s->ms, layer, kvh, seg, 1, fill_entry, &c);
        if (rc) return en_pass(rc, "page-in");
        e = c.e;
        e->layer = layer;
        e->kvh = kvh;
        e->seg = seg;
        if (e->k) en_rope_run(&s->rope, e->k, s->cfg.seg_tokens, (int64_t)(seg * s->cfg.seg_tokens));
        e = en_window_put(s->win, e);
        (*n_in)++;
    }
    *out = e;
    return 0;
}

/* One tile of e: f32 kept, q8 as stored (raw_q8), or decoded into dst. */
static int one_tile(const en_wentry *e, int kind, uint32_t S, uint32_t d, const float *f32, const unsigned char *enc,
                    size_t len, float *dst, int raw_q8, en_tile *t)
{
    if (f32) {
        *t = (en_tile){ EG_CODEC_F32, f32, (size_t)S * d * sizeof(float), NULL, 0 };
        return 0;
    }
    if (raw_q8 && e->codec == EG_CODEC_Q8) {
        *t = (en_tile){ EG_CODEC_Q8, enc, len, NULL, 0 };
        return 0;
    }
    int rc = eg_codec_decode(e->codec, kind, enc, len, S, d, dst);
    if (!rc) *t = (en_tile){ EG_CODEC_F32, dst, (size_t)S * d * sizeof(float), NULL, 0 };
    return rc;
}

int en_wentry_tiles(const en_sess *s, const en_wentry *e, float *sk, float *sv, int raw_q8, en_tile *K, en_tile *V)
{
    uint32_t S = s->cfg.seg_tokens;
    int rc = one_tile(e, EG_KIND_K, S, s->cfg.head_dim_k, e->k, e->kb, e->klen, sk, raw_q8, K);
    if (!rc && V) rc = one_tile(e, EG_KIND_V, S, s->cfg.head_dim_v, e->v, e->vb, e->vlen, sv, raw_q8, V);
    return rc ? en_pass(rc, "window entry") : 0;
}
