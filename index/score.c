/* score.c: the raw scores of a range of segments for a call's rows, per
 * router kind (the kernels live in simd.c, qscan.c and iscan.c; select.c
 * ranks what these return). */
#include "ix_internal.h"
#include <string.h>
#ifdef __SSE2__
#include <immintrin.h>
#endif

void ix_quest_scores(const ix_ctx *c, size_t s0, size_t s1, float *out, size_t ld)
{
    const eg_route_table *t = c->t;
    if (s1 <= s0) return;
    if (ix_quest_q8(t)) ix_q8_scores(c, s0, s1, out, ld);
    else ix_score_rows_h(t->htab, s0, s1, (size_t)t->width, c->qp, c->nr, out, ld, t->has_inf);
}

/* The n_reps otab rows of each segment of [s0, s1) (OUTLIERS' outliers,
 * REPS' representatives), scored by the blocked kernel in slices so that
 * their dots fit a stack buffer; fold turns one row's dots of a slice
 * ([n][m]) into the n scores at dst. */
typedef void (*otab_fold)(const ix_ctx *c, float *dst, const float *dots, size_t n, size_t m);
static void otab_slices(const ix_ctx *c, size_t s0, size_t s1, float *out, size_t ld, otab_fold fold)
{
    const eg_route_table *t = c->t;
    size_t w = (size_t)t->width, m = (size_t)t->spec.learned->cfg.n_reps;
    enum { SEGS = 32, ROWS = 16 };
    float tmp[SEGS * 8 * ROWS];
    for (size_t a = s0; a < s1; a += SEGS) {
        size_t b = a + SEGS < s1 ? a + SEGS : s1, lt = (b - a) * m;
        for (int r0 = 0; r0 < c->nr; r0 += ROWS) {
            int nrs = c->nr - r0 < ROWS ? c->nr - r0 : ROWS;
            ix_score_rows_h(t->otab, a * m, b * m, w, c->qp + (size_t)r0 * w, nrs, tmp, lt, t->has_inf);
            for (int r = 0; r < nrs; r++) fold(c, out + (size_t)(r0 + r) * ld + (a - s0), tmp + (size_t)r * lt, b - a, m);
        }
    }
}

/* OUTLIERS: score = log(e^(bias + tau q.mean) + sum_o e^(tau_out q.k_o)),
 * dst holding q.mean already. */
static void fold_outliers(const ix_ctx *c, float *dst, const float *dots, size_t n, size_t m)
{
    const eg_learned *lw = c->t->spec.learned;
    ix_lse_mix(dst, dots, n, m, lw->tau, lw->bias, lw->tau_out);
}

static void score_outliers(const ix_ctx *c, size_t s0, size_t s1, float *out, size_t ld)
{
    const eg_route_table *t = c->t;
    ix_score_rows_h(t->htab, s0, s1, (size_t)t->width, c->qp, c->nr, out, ld, t->has_inf);
    otab_slices(c, s0, s1, out, ld, fold_outliers);
}

static inline __attribute__((always_inline)) void pq_segment(const uint8_t *cd, const float *lut, size_t S,
                                                              size_t m, size_t nr4, float *b)
{
#ifdef __SSE2__
    /* four tokens at a time into four maxima (S is a multiple of 16): no
     * single chain of dependent max through the segment */
    __m128 b0 = _mm_set1_ps(-INFINITY), b1 = b0, b2 = b0, b3 = b0;
    for (size_t k = 0; k < S; k += 4) {
        const uint8_t *p = cd + k * m;
        __m128 v0 = _mm_loadu_ps(lut + p[0] * nr4), v1 = _mm_loadu_ps(lut + p[m] * nr4);
        __m128 v2 = _mm_loadu_ps(lut + p[2 * m] * nr4), v3 = _mm_loadu_ps(lut + p[3 * m] * nr4);
        for (size_t j = 1; j < m; j++) {
            const float *l = lut + j * IX_PQ_K * nr4;
            v0 = _mm_add_ps(v0, _mm_loadu_ps(l + p[j] * nr4));
            v1 = _mm_add_ps(v1, _mm_loadu_ps(l + p[m + j] * nr4));
            v2 = _mm_add_ps(v2, _mm_loadu_ps(l + p[2 * m + j] * nr4));
            v3 = _mm_add_ps(v3, _mm_loadu_ps(l + p[3 * m + j] * nr4));
        }
        b0 = _mm_max_ps(v0, b0);   /* maxps returns the second operand for NaN: never here */
        b1 = _mm_max_ps(v1, b1);
        b2 = _mm_max_ps(v2, b2);
        b3 = _mm_max_ps(v3, b3);
    }
    _mm_storeu_ps(b, _mm_max_ps(_mm_max_ps(b0, b1), _mm_max_ps(b2, b3)));
#else
    for (int x = 0; x < 4; x++) b[x] = -INFINITY;
    for (size_t k = 0; k < S; k++) {
        float v[4];
        for (int x = 0; x < 4; x++) v[x] = lut[cd[k * m] * nr4 + (size_t)x];
        for (size_t j = 1; j < m; j++) {
            const float *l = lut + (j * IX_PQ_K + cd[k * m + j]) * nr4;
            for (int x = 0; x < 4; x++) v[x] += l[x];
        }
        for (int x = 0; x < 4; x++) b[x] = v[x] > b[x] ? v[x] : b[x];
    }
#endif
}

static void score_pq(const ix_ctx *c, size_t s0, size_t s1, float *out, size_t ld)
{
    const eg_route_table *t = c->t;
    size_t S = (size_t)t->spec.seg_tokens, m = (size_t)t->width / IX_PQ_SUB, nr = (size_t)c->nr;
    size_t nr4 = (nr + 3) & ~(size_t)3;
    for (size_t i = 0; i < s1 - s0; i++) {
        const uint8_t *cd = t->codes + (s0 + i) * S * m;
        for (size_t r0 = 0; r0 < nr; r0 += 4) {
            float b[4];
            /* the common shapes with constant strides (r 16 or 32, 4 rows) */
            if (m == 2 && nr4 == 4) pq_segment(cd, c->lut, S, 2, 4, b);
            else if (m == 4 && nr4 == 4) pq_segment(cd, c->lut, S, 4, 4, b);
            else pq_segment(cd, c->lut + r0, S, m, nr4, b);
            for (size_t x = 0; x < 4 && r0 + x < nr; x++) out[(r0 + x) * ld + i] = b[x];
        }
    }
}

/* REPS: the max over each segment's representatives, scored by the
 * blocked f16 kernel (one call per segment and an f32 dot per row was 3-4
 * times the stream). */
static void fold_reps(const ix_ctx *c, float *dst, const float *dots, size_t n, size_t m)
{
    (void)c;
    for (size_t i = 0; i < n; i++) {
        const float *x = dots + i * m;
        float best = x[0];
        for (size_t j = 1; j < m; j++) best = x[j] > best ? x[j] : best;
        dst[i] = best;
    }
}

static void score_reps(const ix_ctx *c, size_t s0, size_t s1, float *out, size_t ld)
{
    const eg_route_table *t = c->t;
    if (t->spec.learned->cfg.n_reps == 1)   /* one representative a segment: its dot is the score */
        ix_score_rows_h(t->otab, s0, s1, (size_t)t->width, c->qp, c->nr, out, ld, t->has_inf);
    else
        otab_slices(c, s0, s1, out, ld, fold_reps);
}

/* Per-row raw scores of segments [s0, s1): row r at out + r*ld. */
void ix_score_range(const ix_ctx *c, size_t s0, size_t s1, float *out, size_t ld)
{
    const eg_route_table *t = c->t;
    size_t n = s1 - s0, nr = (size_t)c->nr, w = (size_t)t->width;
    switch (t->spec.kind) {
    case EG_ROUTER_QUEST:
        ix_quest_scores(c, s0, s1, out, ld);
        break;
    case EG_ROUTER_CENTROID:
        ix_score_rows_h(t->htab, s0, s1, w, c->qp, c->nr, out, ld, t->has_inf);
        break;
    case EG_ROUTER_ORACLE:
        for (size_t i = 0; i < n; i++)
            for (size_t r = 0; r < nr; r++) out[r * ld + i] = c->rows->oracle_mass[s0 + i];
        break;
    case EG_ROUTER_LEARNED:
        if (ix_learned_outliers(t))
            score_outliers(c, s0, s1, out, ld);
        else if (ix_learned_mean8(t))   /* q.mean; tau comes in as MASS's gain */
            ix_score_rows_h(t->htab, s0, s1, w, c->qp, c->nr, out, ld, 0);
        else if (t->codes)
            score_pq(c, s0, s1, out, ld);
        else
            score_reps(c, s0, s1, out, ld);
        break;
    case EG_ROUTER_INDEXER:
        ix_indexer_scores(c, s0, s1, out, ld);
        break;
    default: break;
    }
}

