/* storeutil.h: helpers shared by the store tests (header-only, static). */
#ifndef ENGRAM_STOREUTIL_H
#define ENGRAM_STOREUTIL_H
#include "memory.h"
#include "testutil.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Deterministic value of (layer, kv-head, token, channel, kind): the test can
 * recompute what it appended without keeping it. Mixed magnitudes with an
 * outlier channel, like real keys. */
static inline float su_value(uint32_t layer, uint32_t kvh, uint64_t tok, uint32_t ch, int kind)
{
    uint64_t s = (tok * 1000003ull + layer * 7919ull + kvh * 104729ull + ch * 31ull + (uint64_t)kind * 17ull) | 1;
    float x = tu_randf(&s) * 2.0f;
    if (ch == 3 && kind == EG_KIND_K) x *= 40.0f;
    return x;
}

/* Fill an all-layers append buffer for tokens [first, first+n). */
static inline void su_fill(const eg_session_config *c, uint64_t first, uint32_t n, float *k, float *v)
{
    for (uint32_t l = 0; l < c->n_layers; l++)
        for (uint32_t h = 0; h < c->n_kv_heads; h++)
            for (uint32_t i = 0; i < n; i++) {
                size_t row = ((size_t)l * c->n_kv_heads + h) * n + i;
                for (uint32_t d = 0; d < c->head_dim_k; d++)
                    k[row * c->head_dim_k + d] = su_value(l, h, first + i, d, EG_KIND_K);
                for (uint32_t d = 0; d < c->head_dim_v; d++)
                    v[row * c->head_dim_v + d] = su_value(l, h, first + i, d, EG_KIND_V);
            }
}

/* Append tokens [first, first+n) of the deterministic data, all layers, f32. */
static inline int su_append(eg_msession *s, const eg_session_config *c, uint64_t first, uint32_t n)
{
    size_t nk = (size_t)c->n_layers * c->n_kv_heads * n * c->head_dim_k;
    size_t nv = (size_t)c->n_layers * c->n_kv_heads * n * c->head_dim_v;
    float *k = malloc(nk * 4), *v = malloc(nv * 4);
    uint32_t *ids = malloc((size_t)n * 4);
    for (uint32_t i = 0; i < n; i++) ids[i] = (uint32_t)((first + i) * 2654435761u);
    su_fill(c, first, n, k, v);
    eg_append_req r = {EG_DTYPE_F32, n, -1, k, v, ids, (uint32_t)(first / 100)};
    int rc = eg_append(s, &r, NULL);
    free(k); free(v); free(ids);
    return rc;
}

/* Original (appended) tile of (layer, kv-head, segment), [S][dim]. */
static inline void su_tile(uint32_t l, uint32_t h, uint64_t seg, uint32_t S, uint32_t dim, int kind, float *out)
{
    for (uint32_t i = 0; i < S; i++)
        for (uint32_t d = 0; d < dim; d++) out[(size_t)i * dim + d] = su_value(l, h, seg * S + i, d, kind);
}

/* The tile as a reader of a sealed block sees it: decode(encode(original)). */
static inline void su_tile_roundtrip(int codec, uint32_t l, uint32_t h, uint64_t seg, uint32_t S, uint32_t dim,
                                     int kind, float *out)
{
    size_t n;
    eg_codec_size(codec, kind, S, dim, &n);
    void *buf = malloc(n);
    su_tile(l, h, seg, S, dim, kind, out);
    eg_codec_encode(codec, kind, out, S, dim, buf, n);
    eg_codec_decode(codec, kind, buf, n, S, dim, out);
    free(buf);
}

/* Check every token of a session against the deterministic data: sealed
 * within the block's error bound, tail bit-exact. Tokens in [mat_lo, mat_hi)
 * were cut out of a sealed block by a fork or truncate: in the tail they must
 * equal the decoded block exactly; sealed again, they carry two quantisation
 * errors (allowed: 3 x the new block's bound). Returns mismatches. */
static inline long su_check_range(eg_msession *s, uint64_t n_tokens, uint64_t mat_lo, uint64_t mat_hi)
{
    eg_session_info info;
    if (eg_session_info_get(s, &info)) return -1;
    const eg_session_config *c = &info.config;
    uint32_t S = c->seg_tokens, dk = c->head_dim_k, dv = c->head_dim_v;
    float *k = malloc((size_t)S * dk * 4), *v = malloc((size_t)S * dv * 4);
    float *kb = malloc((size_t)S * dk * 4), *vb = malloc((size_t)S * dv * 4);
    float *rk = malloc((size_t)S * dk * 4), *rv = malloc((size_t)S * dv * 4);
    long bad = 0;
    if (info.n_tokens != n_tokens) bad++;
    for (uint32_t l = 0; l < c->n_layers; l++)
        for (uint32_t h = 0; h < c->n_kv_heads; h++) {
            for (uint64_t seg = 0; seg < info.n_sealed; seg++) {
                if (eg_read_block(s, l, h, seg, k, v) || eg_read_block_bound(s, l, h, seg, kb, vb)) {
                    bad++;
                    continue;
                }
                for (uint32_t i = 0; i < S; i++) {
                    uint64_t t = seg * S + i;
                    float m = t >= mat_lo && t < mat_hi ? 3.0f : 1.0f;
                    for (uint32_t d = 0; d < dk; d++)
                        if (!(fabsf(k[i * dk + d] - su_value(l, h, t, d, EG_KIND_K)) <= m * kb[i * dk + d])) bad++;
                    for (uint32_t d = 0; d < dv; d++)
                        if (!(fabsf(v[i * dv + d] - su_value(l, h, t, d, EG_KIND_V)) <= m * vb[i * dv + d])) bad++;
                }
            }
            uint32_t rows = 0;
            if (eg_read_tail(s, l, h, k, v, &rows)) { bad++; continue; }
            if (info.n_sealed * S + rows != info.n_tokens) bad++;
            uint64_t tseg = info.n_sealed;
            su_tile_roundtrip(c->codec, l, h, tseg, S, dk, EG_KIND_K, rk);
            su_tile_roundtrip(c->codec, l, h, tseg, S, dv, EG_KIND_V, rv);
            for (uint32_t i = 0; i < rows; i++) {
                uint64_t t = tseg * S + i;
                int mat = t >= mat_lo && t < mat_hi;
                for (uint32_t d = 0; d < dk; d++)
                    if (k[i * dk + d] != (mat ? rk[i * dk + d] : su_value(l, h, t, d, EG_KIND_K))) bad++;
                for (uint32_t d = 0; d < dv; d++)
                    if (v[i * dv + d] != (mat ? rv[i * dv + d] : su_value(l, h, t, d, EG_KIND_V))) bad++;
            }
        }
    free(k); free(v); free(kb); free(vb); free(rk); free(rv);
    return bad;
}

static inline long su_check_all(eg_msession *s, uint64_t n_tokens) { return su_check_range(s, n_tokens, 0, 0); }

static inline void su_config(eg_session_config *c, uint32_t L, uint32_t H, uint32_t dk, uint32_t dv,
                             uint32_t S, int codec)
{
    eg_session_config_init(c);
    c->n_layers = L;
    c->n_kv_heads = H;
    c->n_q_heads = H * 2;
    c->head_dim_k = dk;
    c->head_dim_v = dv;
    c->seg_tokens = S;
    c->codec = codec;
    strcpy(c->fingerprint, "test-model");
}

/* eg_read_blocks_encoded over [first, first+n) of (layer, kvh), each block
 * decoded and compared bit for bit with eg_read_block: returns mismatches
 * (wrong order, shape or bits), or the walk's negative code. */
typedef struct {
    eg_msession *s;
    uint32_t layer, kvh, S, dk, dv;
    uint64_t next;
    long bad;
} su_walk;

static inline int su_walk_cb(void *ctx, uint64_t seg, const eg_encoded_block *b)
{
    su_walk *w = ctx;
    if (seg != w->next++ || b->n_tokens != w->S || b->dim_k != w->dk || b->dim_v != w->dv) { w->bad++; return 0; }
    size_t nk = (size_t)w->S * w->dk, nv = (size_t)w->S * w->dv;
    float *k = malloc((nk + nv) * 8), *v = k + nk, *k2 = v + nv, *v2 = k2 + nk;
    if (eg_codec_decode(b->codec, EG_KIND_K, b->keys, b->klen, b->n_tokens, b->dim_k, k) ||
        eg_codec_decode(b->codec, EG_KIND_V, b->values, b->vlen, b->n_tokens, b->dim_v, v) ||
        eg_read_block(w->s, w->layer, w->kvh, seg, k2, v2) || memcmp(k, k2, nk * 4) || memcmp(v, v2, nv * 4))
        w->bad++;
    free(k);
    return 0;
}

static inline long su_walk_matches(eg_msession *s, uint32_t layer, uint32_t kvh, uint64_t first, uint64_t n)
{
    eg_session_info info;
    int rc = eg_session_info_get(s, &info);
    if (rc) return rc;
    su_walk w = {s, layer, kvh, info.config.seg_tokens, info.config.head_dim_k, info.config.head_dim_v, first, 0};
    rc = eg_read_blocks_encoded(s, layer, kvh, first, n, su_walk_cb, &w);
    if (rc) return rc;
    return w.bad + (w.next != first + n);
}

#endif
