/* learned_io.c: learned weights to and from bytes.
 *
 * Layout (little-endian): "EGLW", u32 version (1), u32 dim, rank, mode,
 * n_reps, seg_tokens, n_sink_segments, u64 recent_tokens, f32 tau, then
 * f32 wq [rank][dim], wk [rank][dim], for PQ the codebook
 * [rank/4][16][4] (OUTLIERS: f32 tau_out and bias instead of all three;
 * MEAN8: tau_out, bias and the steps [dim]),
 * and last a u64 XXH64 of everything before it. The
 * training knobs (steps, lr, seed) are not kept: they do not change what
 * the weights mean. */
#include "ix_internal.h"
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define MAGIC "EGLW"
#define VERSION 1u
#define HEAD 44

static size_t float_count(const eg_learned_config *c)
{
    if (c->mode == EG_LEARNED_OUTLIERS) return 2;
    if (c->mode == EG_LEARNED_MEAN8) return 2 + (size_t)c->dim;
    size_t rd = (size_t)c->rank * c->dim;
    return 2 * rd + (c->mode == EG_LEARNED_PQ ? (size_t)(c->rank / IX_PQ_SUB) * IX_PQ_K * IX_PQ_SUB : 0);
}

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t get32(const uint8_t *p) { uint32_t v = 0; for (int i = 3; i >= 0; i--) v = v << 8 | p[i]; return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = v << 8 | p[i]; return v; }

int eg_learned_save(const eg_learned *w, void **bytes, size_t *n)
{
    if (!w || !bytes || !n) return ix_fail(EG_IX_EINVAL, "weights or outputs are NULL");
    const eg_learned_config *c = &w->cfg;
    size_t nf = float_count(c), total = HEAD + 4 * nf + 8;
    uint8_t *b = malloc(total);
    if (!b) return ix_fail(EG_IX_ENOMEM, "out of memory");
    memcpy(b, MAGIC, 4);
    put32(b + 4, VERSION);
    put32(b + 8, (uint32_t)c->dim);
    put32(b + 12, (uint32_t)c->rank);
    put32(b + 16, (uint32_t)c->mode);
    put32(b + 20, (uint32_t)c->n_reps);
    put32(b + 24, (uint32_t)c->seg_tokens);
    put32(b + 28, (uint32_t)c->n_sink_segments);
    put64(b + 32, (uint64_t)c->recent_tokens);
    uint32_t tb;
    memcpy(&tb, &w->tau, 4);
    put32(b + 40, tb);
    uint8_t *p = b + HEAD;
    size_t rd = (size_t)c->rank * c->dim;
    float tb2[2] = { w->tau_out, w->bias };
    const float *parts[3] = { w->wq, w->wk, w->codebook };
    size_t lens[3] = { rd, rd, nf - 2 * rd };
    if (c->mode == EG_LEARNED_OUTLIERS || c->mode == EG_LEARNED_MEAN8) {
        parts[0] = tb2;
        lens[0] = 2;
        parts[1] = w->step;
        lens[1] = c->mode == EG_LEARNED_MEAN8 ? (size_t)c->dim : 0;
        lens[2] = 0;
    }
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < lens[k]; i++) {
            uint32_t u;
            memcpy(&u, &parts[k][i], 4);
            put32(p, u);
            p += 4;
        }
    put64(p, XXH64(b, total - 8, 0));
    *bytes = b;
    *n = total;
    return 0;
}

int eg_learned_load(const void *bytes, size_t n, eg_learned **out)
{
    if (!bytes || !out) return ix_fail(EG_IX_EINVAL, "bytes or out is NULL");
    *out = NULL;
    const uint8_t *b = bytes;
    if (n < HEAD + 8 || memcmp(b, MAGIC, 4) != 0)
        return ix_fail(EG_IX_ECORRUPT, "not learned weights (%zu bytes, bad magic or too short)", n);
    uint32_t ver = get32(b + 4);
    if (ver != VERSION)
        return ix_fail(EG_IX_EVERSION, "learned weights of format version %u; this build reads %u", ver, VERSION);
    if (get64(b + n - 8) != XXH64(b, n - 8, 0))
        return ix_fail(EG_IX_ECORRUPT, "learned weights fail their checksum");
    eg_learned_config c;
    eg_learned_config_init(&c, (int)get32(b + 8), (int)get32(b + 24));
    c.rank = (int)get32(b + 12);
    c.mode = (eg_learned_mode)get32(b + 16);
    c.n_reps = (int)get32(b + 20);
    c.n_sink_segments = (int)get32(b + 28);
    c.recent_tokens = (int64_t)get64(b + 32);
    int rc = ix_learned_check_config(&c);
    if (rc < 0) return ix_fail(EG_IX_ECORRUPT, "learned weights hold a bad shape: %s", eg_index_last_error());
    size_t nf = float_count(&c);
    if (n != HEAD + 4 * nf + 8)
        return ix_fail(EG_IX_ECORRUPT, "learned weights are %zu bytes, their shape needs %zu", n, HEAD + 4 * nf + 8);
    eg_learned *w = calloc(1, sizeof *w);
    float *all = malloc(sizeof(float) * nf);
    if (!w || !all) { free(w); free(all); return ix_fail(EG_IX_ENOMEM, "out of memory"); }
    uint32_t tb = get32(b + 40);
    memcpy(&w->tau, &tb, 4);
    for (size_t i = 0; i < nf; i++) { uint32_t u = get32(b + HEAD + 4 * i); memcpy(&all[i], &u, 4); }
    if (!ix_all_finite(all, nf) || !isfinite(w->tau)) {
        free(w); free(all);
        return ix_fail(EG_IX_ENONFINITE, "learned weights hold NaN or Inf");
    }
    w->cfg = c;
    if (c.mode == EG_LEARNED_OUTLIERS || c.mode == EG_LEARNED_MEAN8) {
        w->tau_out = all[0];
        w->bias = all[1];
        int bad = !(w->tau > 0.0f) || !(w->tau_out > 0.0f);
        if (c.mode == EG_LEARNED_MEAN8) {   /* the steps follow: kept in their own array */
            memmove(all, all + 2, sizeof(float) * (size_t)c.dim);
            w->step = all;
            for (int i = 0; i < c.dim; i++) bad |= !(all[i] > 0.0f);
        } else free(all);
        if (bad) {
            eg_learned_free(w);
            return ix_fail(EG_IX_ECORRUPT, "learned weights hold a temperature or step <= 0");
        }
        *out = w;
        return 0;
    }
    size_t rd = (size_t)c.rank * c.dim;
    w->wq = all;   /* wq is the head of the array; wk and the codebook are copied out */
    w->wk = malloc(sizeof(float) * rd);
    w->codebook = c.mode == EG_LEARNED_PQ ? malloc(sizeof(float) * (nf - 2 * rd)) : NULL;
    if (!w->wk || (c.mode == EG_LEARNED_PQ && !w->codebook)) {
        eg_learned_free(w);
        return ix_fail(EG_IX_ENOMEM, "out of memory");
    }
    memcpy(w->wk, all + rd, sizeof(float) * rd);
    if (w->codebook) memcpy(w->codebook, all + 2 * rd, sizeof(float) * (nf - 2 * rd));
    *out = w;
    return 0;
}
