/* ball.c: the ball router's group rows and bounds.
 *
 * A ball table keeps per segment its centre c (int8 codes, qscan.c) and a
 * radius r with |k - c| <= r for every key k of the segment, so that
 * q.k <= q.c + |q| r (Cauchy-Schwarz): d + 1 numbers where quest's box
 * keeps 2d, and on most heads a tighter bound (docs/index.md). Selection
 * ranks by q.c (the centre's score, as centroid does); the bound adds
 * |q| r. Groups of EG_IX_GROUP segments get a ball of their own: its
 * centre g (f16, the midpoint of the members' centres per channel) and
 * R = max over members of |c - g| + r, which holds every member's ball,
 * so the group's score bounds every key of the group and every member's
 * centre score. */
#include "ix_internal.h"
#include <float.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define BALL_X86 1
#endif

/* The decoded centre of segment s into x [d]: code times scale times the
 * channel's weight, exact (what ix_q8_value gives, without a call per
 * channel: a resumed 1M-token table regroups 16384 segments a head). */
static void centre_of(const eg_route_table *t, size_t s, float *x)
{
    size_t d = (size_t)t->spec.dim, nq = ix_q8_quads(t);
    const int8_t *blk = t->q8 + (s / IX_BLK) * nq * IX_BLK * 4 + (s % IX_BLK) * 4;
    float sc = t->q8s[s];
    for (size_t c = 0; c < d; c++) x[c] = (float)blk[(c / 4) * IX_BLK * 4 + c % 4] * sc * t->q8wf[c];
}

void ix_ball_regroup(eg_route_table *t, size_t from)
{
    size_t d = (size_t)t->spec.dim, G = EG_IX_GROUP;
    float *ctr = malloc(sizeof(float) * G * d);   /* the group's decoded centres */
    if (!ctr) {   /* no memory: radii of +inf keep every group a (useless) bound */
        for (size_t g = from / G; g * G < t->n; g++) { t->gR[g] = INFINITY; t->gabs[g] = FLT_MAX; t->gl1[g] = INFINITY; }
        return;
    }
    for (size_t g = from / G; g * G < t->n; g++) {
        size_t s0 = g * G, s1 = s0 + G < t->n ? s0 + G : t->n;
        float lo[EG_IX_DIM_MAX], hi[EG_IX_DIM_MAX], l1 = 0.0f;
        int any = 0, inf = 0;
        for (size_t c = 0; c < d; c++) { lo[c] = INFINITY; hi[c] = -INFINITY; }
        for (size_t s = s0; s < s1; s++) {
            /* + 32: the J + 64 of qscan.c's rounding up of large sums */
            float v = t->q8inf[s] ? INFINITY : t->q8s[s] * (float)(t->q8l1[s] + 32);
            l1 = v > l1 ? v : l1;
            if (t->q8inf[s]) { inf = 1; continue; }
            any = 1;
            float *x = ctr + (s - s0) * d;
            centre_of(t, s, x);
            for (size_t c = 0; c < d; c++) {
                lo[c] = x[c] < lo[c] ? x[c] : lo[c];
                hi[c] = x[c] > hi[c] ? x[c] : hi[c];
            }
        }
        double gc[EG_IX_DIM_MAX], gmax = 0;
        for (size_t c = 0; c < d; c++) {
            /* |centres| <= 65504 (decoded from f16 boxes): the half is finite */
            uint16_t h = any ? ix_f32_to_f16_dir(0.5f * lo[c] + 0.5f * hi[c], 0) : 0;
            t->hgtab[ix_hidx(g, c, d)] = h;
            gc[c] = ix_f16_to_f32(h);
            gmax = fabs(gc[c]) > gmax ? fabs(gc[c]) : gmax;
        }
        double R = 0, kmax = gmax;
        for (size_t s = s0; s < s1; s++) {
            if (t->q8inf[s]) continue;
            const float *x = ctr + (s - s0) * d;
            double e2 = 0, cmax = 0;
            for (size_t c = 0; c < d; c++) {
                double e = (double)x[c] - gc[c];
                e2 += e * e;
                cmax = fabs((double)x[c]) > cmax ? fabs((double)x[c]) : cmax;
            }
            double rs = sqrt(e2) + t->q8rad[s];
            R = rs > R ? rs : R;
            kmax = cmax + t->q8rad[s] > kmax ? cmax + t->q8rad[s] : kmax;   /* |k_c| <= |c_c| + r */
        }
        t->gR[g] = inf ? INFINITY : ix_f32_up(R * (1.0 + 0x1p-40));
        float ga = ix_f32_up(kmax * (1.0 + 0x1p-40));
        t->gabs[g] = ga <= FLT_MAX ? ga : FLT_MAX;
        t->gl1[g] = l1;
    }
    free(ctr);
}

/* A group's ball score from its centre's score o: o + qn R in double
 * (multiply, then add), rounded up to a float; +inf where the row or the
 * radius is infinite, or the sum is NaN. */
static void group_lift_portable(float *o, const float *gR, size_t n, double qn, int qinf)
{
    for (size_t g = 0; g < n; g++) {
        double v = (double)o[g] + qn * (double)gR[g];
        o[g] = qinf || !(gR[g] <= FLT_MAX) || v != v ? INFINITY : ix_f32_up(v);
    }
}

#ifdef BALL_X86
/* The same in 8 double lanes: the conversion rounding toward +inf is
 * ix_f32_up's answer without its compare and nextafterf, which scalar
 * took a fifth of a 9/3/64 step's begin (a decode step lifts every group
 * of every row). */
__attribute__((target("avx512f,avx512vl"))) static void group_lift_avx512(float *o, const float *gR, size_t n, double qn,
                                                                 int qinf)
{
    if (qinf) {
        for (size_t g = 0; g < n; g++) o[g] = INFINITY;
        return;
    }
    const __m512d q = _mm512_set1_pd(qn);
    const __m256 big = _mm256_set1_ps(FLT_MAX), inf = _mm256_set1_ps(INFINITY);
    size_t g = 0;
    for (; g + 8 <= n; g += 8) {
        __m256 r = _mm256_loadu_ps(gR + g);
        __m512d v = _mm512_add_pd(_mm512_cvtps_pd(_mm256_loadu_ps(o + g)), _mm512_mul_pd(q, _mm512_cvtps_pd(r)));
        __m256 f = _mm512_cvt_roundpd_ps(v, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
        __mmask8 bad = _mm512_cmp_pd_mask(v, v, _CMP_UNORD_Q);
        bad |= _mm256_cmp_ps_mask(r, big, _CMP_NLE_UQ);   /* !(R <= FLT_MAX): +inf or NaN */
        _mm256_storeu_ps(o + g, _mm256_mask_blend_ps(bad, f, inf));
    }
    group_lift_portable(o + g, gR + g, n - g, qn, 0);
}
#endif

void ix_group_scores(const ix_ctx *c, size_t g0, size_t g1, float *out, size_t ld)
{
    const eg_route_table *t = c->t;
    if (g1 <= g0) return;
    ix_score_rows_h(t->hgtab, g0, g1, (size_t)t->width, c->qp, c->nr, out, ld, t->has_inf);
    if (!ix_ball(t)) return;
#ifdef BALL_X86
    int vec = ix_q8_level(ix_simd_cap()) == 2;   /* AVX-512 VNNI implies AVX-512F */
#endif
    for (int r = 0; r < c->nr; r++) {
#ifdef BALL_X86
        if (vec) { group_lift_avx512(out + (size_t)r * ld, t->gR + g0, g1 - g0, c->qn[r], c->qinf[r]); continue; }
#endif
        group_lift_portable(out + (size_t)r * ld, t->gR + g0, g1 - g0, c->qn[r], c->qinf[r]);
    }
}
