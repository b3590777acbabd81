/* summary.c: a sealed segment's keys into summary bytes, per router.
 *
 * Layouts (little-endian, per segment; S tokens, d dims):
 *  quest     f16 max[d], then f16 min[d]; max rounded up, min down, so the
 *            f32 values read back bound every key from above and below.
 *  ball      quest's box, then f32 radius: the largest distance of a key
 *            from the box's centre (max + min) / 2 of the stored halves,
 *            in double, rounded up.
 *  centroid  f16 mean[d] (nearest).
 *  indexer   per token: f32 scale, int8 key[d] (symmetric q8).
 *  learned   PQ: per token rank/8 one-byte codes; REPS: per vector f32
 *            scale and int8[rank]; OUTLIERS: f16 mean[d] of the other keys
 *            (nearest), then per outlier f32 scale and int8[d].
 */
#include "ix_internal.h"
#include <stdlib.h>
#include <string.h>

static int spec_check(const eg_summary_spec *sp)
{
    if (!sp) return ix_fail(EG_IX_EINVAL, "summary spec is NULL");
    if (sp->kind < EG_ROUTER_QUEST || sp->kind > EG_ROUTER_BALL)
        return ix_fail(EG_IX_EKIND, "unknown router kind %d", (int)sp->kind);
    int s = sp->seg_tokens;
    if (s < 16 || s > 256 || (s & (s - 1)))
        return ix_fail(EG_IX_EDIM, "segment size %d is not a power of two in 16..256", s);
    if (sp->kind == EG_ROUTER_ORACLE) return 0;
    int maxd = sp->kind == EG_ROUTER_INDEXER ? EG_IX_INDEX_DIM_MAX : EG_IX_DIM_MAX;
    if (sp->dim < 1 || sp->dim > maxd)
        return ix_fail(EG_IX_EDIM, "%s dim %d outside 1..%d", eg_router_name(sp->kind), sp->dim, maxd);
    if (sp->kind == EG_ROUTER_LEARNED) {
        if (!sp->learned) return ix_fail(EG_IX_EINVAL, "learned summaries need weights");
        if (sp->learned->cfg.dim != sp->dim)
            return ix_fail(EG_IX_EDIM, "weights are for dim %d, table for dim %d",
                           sp->learned->cfg.dim, sp->dim);
    }
    return 0;
}

int eg_summary_bytes(const eg_summary_spec *sp, size_t *bytes)
{
    int rc = spec_check(sp);
    if (rc < 0) return rc;
    if (!bytes) return ix_fail(EG_IX_EINVAL, "bytes is NULL");
    size_t d = (size_t)sp->dim, s = (size_t)sp->seg_tokens;
    switch (sp->kind) {
    case EG_ROUTER_QUEST: *bytes = 4 * d; break;
    case EG_ROUTER_BALL: *bytes = 4 * d + 4; break;
    case EG_ROUTER_CENTROID: *bytes = 2 * d; break;
    case EG_ROUTER_INDEXER: *bytes = s * (4 + d); break;
    case EG_ROUTER_LEARNED: *bytes = eg_learned_summary_bytes(sp->learned); break;
    default: *bytes = 0; break;
    }
    return 0;
}

double eg_summary_bytes_per_token(const eg_summary_spec *sp)
{
    size_t b = 0;
    if (eg_summary_bytes(sp, &b) < 0) return 0.0;
    return (double)b / sp->seg_tokens;
}

static void put_f16(uint8_t *p, uint16_t h) { p[0] = (uint8_t)h; p[1] = (uint8_t)(h >> 8); }

static void quest_summary(const float *k, int s, int d, uint8_t *out)
{
    for (int c = 0; c < d; c++) {
        float mx = k[c], mn = k[c];
        for (int t = 1; t < s; t++) {
            float v = k[(size_t)t * d + c];
            mx = v > mx ? v : mx;
            mn = v < mn ? v : mn;
        }
        put_f16(out + 2 * c, ix_f32_to_f16_dir(mx, 1));
        put_f16(out + 2 * ((size_t)d + c), ix_f32_to_f16_dir(mn, -1));
    }
}

/* The radius of the keys around the centre of the box in out (as stored:
 * f16), written after it. */
static void ball_radius(const float *k, int s, int d, uint8_t *out)
{
    double m[EG_IX_DIM_MAX], r2 = 0;
    for (int c = 0; c < d; c++) {
        uint16_t hx = (uint16_t)(out[2 * c] | out[2 * c + 1] << 8);
        uint16_t hn = (uint16_t)(out[2 * (d + c)] | out[2 * (d + c) + 1] << 8);
        m[c] = 0.5 * ((double)ix_f16_to_f32(hx) + (double)ix_f16_to_f32(hn));
    }
    for (int t = 0; t < s; t++) {
        double e2 = 0;
        for (int c = 0; c < d; c++) {
            double e = (double)k[(size_t)t * d + c] - m[c];
            e2 += e * e;
        }
        r2 = e2 > r2 ? e2 : r2;
    }
    double r = sqrt(r2) * (1.0 + 0x1p-40);   /* the double roundings, outward */
    float f = ix_f32_up(r);
    if (r != r) f = INFINITY;                /* a box half beyond f16 (inf - inf): no bound */
    memcpy(out + 4 * (size_t)d, &f, 4);
}

static void centroid_summary(const float *k, int s, int d, uint8_t *out)
{
    for (int c = 0; c < d; c++) {
        double sum = 0;
        for (int t = 0; t < s; t++) sum += k[(size_t)t * d + c];
        put_f16(out + 2 * c, ix_f32_to_f16_dir((float)(sum / s), 0));
    }
}

/* Symmetric int8 of n values: f32 scale then n bytes. */
static void q8_row(const float *x, int n, uint8_t *out)
{
    float amax = 0.0f;
    for (int i = 0; i < n; i++) { float a = fabsf(x[i]); amax = a > amax ? a : amax; }
    float scale = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    memcpy(out, &scale, 4);
    int8_t *q = (int8_t *)(out + 4);
    for (int i = 0; i < n; i++) {
        float v = x[i] * inv;
        v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
        q[i] = (int8_t)lrintf(v);
    }
}

/* k-means of s projected keys [s][r] into m vectors (deterministic:
 * farthest-point start, a few Lloyd rounds). */
static void reps_summary(const eg_learned *w, const float *pk, int s, uint8_t *out)
{
    int r = w->cfg.rank, m = w->cfg.n_reps;
    float cen[8][EG_LEARNED_RANK_MAX];
    int asg[256];
    int first = 0;
    float best = -1.0f;
    for (int t = 0; t < s; t++) {
        float n2 = 0;
        for (int j = 0; j < r; j++) n2 += pk[t * r + j] * pk[t * r + j];
        if (n2 > best) { best = n2; first = t; }
    }
    memcpy(cen[0], pk + first * r, sizeof(float) * (size_t)r);
    for (int c = 1; c < m; c++) {
        int far = 0;
        float fd = -1.0f;
        for (int t = 0; t < s; t++) {
            float dmin = INFINITY;
            for (int e = 0; e < c; e++) {
                float dd = 0;
                for (int j = 0; j < r; j++) { float x = pk[t * r + j] - cen[e][j]; dd += x * x; }
                dmin = dd < dmin ? dd : dmin;
            }
            if (dmin > fd) { fd = dmin; far = t; }
        }
        memcpy(cen[c], pk + far * r, sizeof(float) * (size_t)r);
    }
    for (int it = 0; it < 4; it++) {
        for (int t = 0; t < s; t++) {
            float bd = INFINITY;
            for (int c = 0; c < m; c++) {
                float dd = 0;
                for (int j = 0; j < r; j++) { float x = pk[t * r + j] - cen[c][j]; dd += x * x; }
                if (dd < bd) { bd = dd; asg[t] = c; }
            }
        }
        for (int c = 0; c < m; c++) {
            float acc[EG_LEARNED_RANK_MAX] = { 0 };
            int cnt = 0;
            for (int t = 0; t < s; t++)
                if (asg[t] == c) { cnt++; for (int j = 0; j < r; j++) acc[j] += pk[t * r + j]; }
            if (cnt) for (int j = 0; j < r; j++) cen[c][j] = acc[j] / (float)cnt;
        }
    }
    for (int c = 0; c < m; c++) q8_row(cen[c], r, out + (size_t)c * (4 + (size_t)r));
}

void ix_outliers_summary(const float *k, int s, int d, int m, uint8_t *out, float *mean, float *ok)
{
    double acc[EG_IX_DIM_MAX];
    float mu[EG_IX_DIM_MAX];
    uint8_t pick[256] = { 0 };
    for (int c = 0; c < d; c++) acc[c] = 0;
    for (int t = 0; t < s; t++)
        for (int c = 0; c < d; c++) acc[c] += k[(size_t)t * d + c];
    for (int c = 0; c < d; c++) mu[c] = (float)(acc[c] / s);
    uint8_t row[4 + EG_IX_DIM_MAX];
    for (int o = 0; o < m; o++) {
        int far = -1;
        double fd = -1;
        for (int t = 0; t < s; t++) {
            if (pick[t]) continue;
            double dd = 0;
            for (int c = 0; c < d; c++) { double e = (double)k[(size_t)t * d + c] - mu[c]; dd += e * e; }
            if (dd > fd) { fd = dd; far = t; }
        }
        pick[far] = 1;
        const float *ko = k + (size_t)far * d;
        for (int c = 0; c < d; c++) acc[c] -= ko[c];
        q8_row(ko, d, row);
        if (out) memcpy(out + 2 * (size_t)d + (size_t)o * (4 + d), row, 4 + (size_t)d);
        if (ok) {
            float sc;
            memcpy(&sc, row, 4);
            for (int c = 0; c < d; c++)   /* as the table keeps it: f16 */
                ok[(size_t)o * d + c] = ix_f16_to_f32(ix_f32_to_f16_dir(sc * (float)(int8_t)row[4 + c], 0));
        }
    }
    for (int c = 0; c < d; c++) {
        uint16_t h = ix_f32_to_f16_dir((float)(acc[c] / (s - m)), 0);
        if (out) put_f16(out + 2 * c, h);
        if (mean) mean[c] = ix_f16_to_f32(h);
    }
}

void ix_mean8_summary(const float *k, int s, int d, const float *st, int8_t *out, float *mean)
{
    for (int c = 0; c < d; c++) {
        double a = 0;
        for (int t = 0; t < s; t++) a += k[(size_t)t * d + c];
        double v = nearbyint(a / s / st[c]);
        int8_t code = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
        if (out) out[c] = code;
        if (mean) mean[c] = ix_mean8_value(st[c], code);
    }
}

int eg_summary_compute(const eg_summary_spec *sp, const float *keys, void *out, size_t cap)
{
    size_t need;
    int rc = eg_summary_bytes(sp, &need);
    if (rc < 0) return rc;
    if (sp->kind == EG_ROUTER_ORACLE)
        return ix_fail(EG_IX_EKIND, "the oracle router has no summaries");
    if (!keys || !out) return ix_fail(EG_IX_EINVAL, "keys or out is NULL");
    if (cap < need) return ix_fail(EG_IX_EDIM, "summary needs %zu bytes, buffer has %zu", need, cap);
    int s = sp->seg_tokens, d = sp->dim;
    if (!ix_all_finite(keys, (size_t)s * d))
        return ix_fail(EG_IX_ENONFINITE, "NaN or Inf in the segment's keys");
    uint8_t *o = out;
    switch (sp->kind) {
    case EG_ROUTER_QUEST: quest_summary(keys, s, d, o); break;
    case EG_ROUTER_BALL:
        quest_summary(keys, s, d, o);
        ball_radius(keys, s, d, o);
        break;
    case EG_ROUTER_CENTROID: centroid_summary(keys, s, d, o); break;
    case EG_ROUTER_INDEXER:
        for (int t = 0; t < s; t++) q8_row(keys + (size_t)t * d, d, o + (size_t)t * (4 + d));
        break;
    case EG_ROUTER_LEARNED: {
        const eg_learned *w = sp->learned;
        int r = w->cfg.rank;
        if (w->cfg.mode == EG_LEARNED_OUTLIERS) {
            ix_outliers_summary(keys, s, d, w->cfg.n_reps, o, NULL, NULL);
            break;
        }
        if (w->cfg.mode == EG_LEARNED_MEAN8) {
            ix_mean8_summary(keys, s, d, w->step, (int8_t *)o, NULL);
            break;
        }
        float *pk = malloc(sizeof(float) * (size_t)s * r);
        if (!pk) return ix_fail(EG_IX_ENOMEM, "out of memory projecting keys");
        ix_project(w->wk, r, d, keys, (size_t)s, pk);
        if (w->cfg.mode == EG_LEARNED_PQ)
            for (int t = 0; t < s; t++) ix_pq_encode(w, pk + (size_t)t * r, o + (size_t)t * ix_pq_bytes(r));
        else
            reps_summary(w, pk, s, o);
        free(pk);
        break;
    }
    default: break;
    }
    return 0;
}
