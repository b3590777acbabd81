/* engineutil.h: what the engine tests share: a session whose appended
 * keys and values the test keeps, and attention computed by a plain double
 * loop to check the engine against. Header-only (static functions). */
#ifndef ENGRAM_ENGINEUTIL_H
#define ENGRAM_ENGINEUTIL_H
#include "engine.h"
#include "testutil.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CHECK_EN(expr) do { int _rc = (expr); if (_rc < 0) { \
    fprintf(stderr, "  %s:%d: %s returned %d (%s)\n", __FILE__, __LINE__, #expr, _rc, \
    eg_engine_last_error()); tu_case_failed = 1; } } while (0)
#define CHECK_CODE(expr, code) do { int _rc = (expr); if (_rc != (code)) { \
    fprintf(stderr, "  %s:%d: %s returned %d (%s), expected %s\n", __FILE__, __LINE__, #expr, \
    _rc, eg_engine_last_error(), #code); tu_case_failed = 1; } } while (0)

/* The test's copy of a session: raw keys/values per layer and kv-head. */
typedef struct {
    uint32_t L, H, G, dk, dv, S;
    uint64_t T, cap;
    float *k, *v;        /* [L][H][cap][d] */
    uint32_t *tag;       /* [cap] */
    uint64_t *lt;        /* [L] tokens per layer (T = the least) */
    uint64_t seed;
} tm_model;

static inline float *tm_k(tm_model *m, uint32_t l, uint32_t h, uint64_t t)
{ return m->k + (((size_t)l * m->H + h) * m->cap + t) * m->dk; }
static inline float *tm_v(tm_model *m, uint32_t l, uint32_t h, uint64_t t)
{ return m->v + (((size_t)l * m->H + h) * m->cap + t) * m->dv; }

static inline void tm_init(tm_model *m, const eg_session_config *c, uint64_t cap, uint64_t seed)
{
    memset(m, 0, sizeof *m);
    m->L = c->n_layers; m->H = c->n_kv_heads; m->G = c->n_q_heads / c->n_kv_heads;
    m->dk = c->head_dim_k; m->dv = c->head_dim_v; m->S = c->seg_tokens ? c->seg_tokens : 64;
    m->cap = cap;
    m->k = calloc((size_t)m->L * m->H * cap * m->dk, sizeof(float));
    m->v = calloc((size_t)m->L * m->H * cap * m->dv, sizeof(float));
    m->tag = calloc(cap, sizeof(uint32_t));
    m->lt = calloc(m->L, sizeof(uint64_t));
    m->seed = seed;
}
static inline void tm_free(tm_model *m) { free(m->k); free(m->v); free(m->tag); free(m->lt); }

/* Keys: per-token noise plus a topic direction that changes every 40
 * tokens and a few spikes, so routing has something to find. */
static inline void tm_gen(tm_model *m, uint32_t l, uint32_t h, uint64_t t, float *kk, float *vv)
{
    uint64_t s = m->seed ^ ((t + 1) * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)(l * 131 + h + 1) << 40);
    uint64_t ts = m->seed * 7 + t / 40 + 1;
    for (uint32_t c = 0; c < m->dk; c++) {
        float topic = tu_randf(&ts) * 2.0f;
        kk[c] = 0.6f * tu_randn(&s) + topic + (t % 97 == 13 && c == 1 ? 6.0f : 0.0f);
    }
    for (uint32_t c = 0; c < m->dv; c++) vv[c] = tu_randn(&s);
}

/* Append n tokens (all layers, or one layer when layer >= 0) with tag. */
static inline int tm_append(tm_model *m, eg_engine_session *s, uint32_t n, int layer, uint32_t tag)
{
    uint32_t nl = layer < 0 ? m->L : 1;
    float *k = malloc((size_t)nl * m->H * n * m->dk * 4), *v = malloc((size_t)nl * m->H * n * m->dv * 4);
    uint64_t t0 = layer < 0 ? m->T : m->lt[layer];
    for (uint32_t li = 0; li < nl; li++)
        for (uint32_t h = 0; h < m->H; h++)
            for (uint32_t i = 0; i < n; i++) {
                uint32_t l = layer < 0 ? li : (uint32_t)layer;
                float *kk = k + (((size_t)li * m->H + h) * n + i) * m->dk;
                float *vv = v + (((size_t)li * m->H + h) * n + i) * m->dv;
                tm_gen(m, l, h, t0 + i, kk, vv);
                memcpy(tm_k(m, l, h, t0 + i), kk, m->dk * 4);
                memcpy(tm_v(m, l, h, t0 + i), vv, m->dv * 4);
            }
    for (uint32_t i = 0; i < n; i++) m->tag[t0 + i] = tag;
    eg_append_req r = {EG_DTYPE_F32, n, layer, k, v, NULL, tag};
    uint64_t nt;
    int rc = eg_engine_append(s, &r, &nt);
    if (!rc) {
        uint64_t lo = UINT64_MAX;
        for (uint32_t l = 0; l < m->L; l++) {
            if (layer < 0 || (uint32_t)layer == l) m->lt[l] += n;
            if (m->lt[l] < lo) lo = m->lt[l];
        }
        m->T = lo;
    }
    free(k);
    free(v);
    return rc;
}

/* Plain attention of one row in double: keys K [T][dk] (already rotated if
 * needed), tokens j <= vis with incl[j] (incl NULL: all). */
static inline void ref_row(const float *q, const float *K, const float *V, uint64_t T,
                           const uint8_t *incl, int64_t vis, uint32_t dk, uint32_t dv, double scale,
                           double *out, double *lse)
{
    double mx = -INFINITY;
    double *sc = malloc(sizeof(double) * (T + 1));
    for (uint64_t j = 0; j < T; j++) {
        sc[j] = -INFINITY;
        if ((int64_t)j > vis || (incl && !incl[j])) continue;
        double d = 0;
        for (uint32_t c = 0; c < dk; c++) d += (double)q[c] * K[j * dk + c];
        sc[j] = d * scale;
        if (sc[j] > mx) mx = sc[j];
    }
    double z = 0;
    for (uint32_t c = 0; c < dv; c++) out[c] = 0;
    for (uint64_t j = 0; j < T; j++) {
        if (sc[j] == -INFINITY) continue;
        double p = exp(sc[j] - mx);
        z += p;
        for (uint32_t c = 0; c < dv; c++) out[c] += p * V[j * dv + c];
    }
    for (uint32_t c = 0; c < dv; c++) out[c] = z > 0 ? out[c] / z : 0;
    *lse = z > 0 ? mx + log(z) : -INFINITY;
    free(sc);
}

/* Largest |a-b| / max(|b|, floor) over n values. */
static inline double rel_err(const float *a, const double *b, size_t n, double floor_)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]) / fmax(fabs(b[i]), floor_);
        if (d > worst || isnan(d)) worst = isnan(d) ? INFINITY : d;
    }
    return worst;
}

static inline void tm_queries(float *q, size_t n, uint64_t seed, float amp)
{
    uint64_t s = seed * 977 + 1;
    for (size_t i = 0; i < n; i++) q[i] = amp * tu_randn(&s);
}

static inline void tm_config(eg_session_config *c, uint32_t L, uint32_t H, uint32_t QH, uint32_t dk,
                             uint32_t dv, uint32_t S, int codec)
{
    eg_session_config_init(c);
    c->n_layers = L; c->n_kv_heads = H; c->n_q_heads = QH;
    c->head_dim_k = dk; c->head_dim_v = dv; c->seg_tokens = S; c->codec = codec;
}
/* An engine on a fresh directory with one session "s" of config c. */
typedef struct {
    eg_engine *e;
    eg_engine_session *s;
    char dir[512];
} fx;

static inline int fx_open_window(fx *f, const char *tag, const eg_session_config *c, size_t window)
{
    tu_tmpdir(f->dir, sizeof f->dir, tag);
    eg_engine_options o;
    eg_engine_options_init(&o);
    o.store.sync_mode = EG_SYNC_NONE;
    o.n_threads = 2;
    o.window_bytes = window;
    int rc = eg_engine_open(f->dir, &o, &f->e);
    if (!rc) rc = eg_engine_session_create(f->e, "s", c);
    if (!rc) rc = eg_engine_session_open(f->e, "s", NULL, &f->s);
    return rc;
}
static inline int fx_open(fx *f, const char *tag, const eg_session_config *c)
{ return fx_open_window(f, tag, c, 0); }
static inline void fx_close(fx *f) { eg_engine_close(f->e); tu_rmrf(f->dir); }
#endif
