/* score.c: the raw scores of a range of segments for a call's rows, per
 * router kind (the kernels live in simd.c, qscan.c and iscan.c; select.c
 * ranks what these return). */
#include "ix_internal.h"
#include <string.h>

void ix_quest_scores(const ix_ctx *c, size_t s0, size_t s1, float *out, size_t ld)
{
    const eg_route_table *t = c->t;
    if (s1 <= s0) return;
    if (ix_q8_table(t)) ix_q8_scores(c, s0, s1, out, ld, 1.0f);
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

/* PQ: a segment's score is the max over its tokens of the codes' lookup
 * sums. The tables are bytes on one step per row (select.c), so a token's
 * sum is an integer Q and the score base + step * max Q: the max of the
 * integers is taken first (the grid is monotone), and every kernel gives
 * the same bits. The codes of a segment are kept byte-major ([jb][S],
 * table.c): one load gives byte jb of 32 tokens, its two nibbles the
 * codes of sub-vectors 2 jb and 2 jb + 1, looked up 32 at a time by a
 * byte shuffle of the 16-entry table in a register (fast-scan). The
 * first version (256 centroids of 8 dims, f32 tables in memory) read two
 * table entries per token from L1 or L2: 2.7-4 times the time to stream
 * the codes from DRAM at 1M tokens. */
static uint16_t pq_max_portable(const uint8_t *cd, size_t S, size_t m, const uint8_t *lq)
{
    uint16_t best = 0;
    for (size_t k = 0; k < S; k++) {
        unsigned q = 0;
        for (size_t j = 0; j < m; j++) q += lq[j * IX_PQ_K + ((cd[(j / 2) * S + k] >> (4 * (j & 1))) & 15)];
        best = (uint16_t)(q > best ? q : best);
    }
    return best;
}

#ifdef __x86_64__
#include <immintrin.h>
/* Segments [0, n) of codes cd (S a multiple of 32, m <= 8 sub-vectors:
 * rank <= 32) for one row: out[i] = the segment's largest byte sum. The
 * u8 lookups are widened to u16 (8 of 255 at most: 2040), in-lane order
 * (the max does not care which token is which). */
__attribute__((target("avx2"))) static void pq_max_avx2(const uint8_t *cd, size_t n, size_t S, size_t m,
                                                       const uint8_t *lq, uint16_t *out)
{
    __m256i tab[EG_LEARNED_RANK_MAX / IX_PQ_SUB];
    for (size_t j = 0; j < m; j++) tab[j] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(lq + j * IX_PQ_K)));
    const __m256i nib = _mm256_set1_epi8(15), z = _mm256_setzero_si256();
    size_t mb = m / 2;
    for (size_t i = 0; i < n; i++, cd += S * mb) {
        __m256i mx = z;
        for (size_t k = 0; k < S; k += 32) {
            __m256i a0 = z, a1 = z;
            for (size_t jb = 0; jb < mb; jb++) {
                __m256i x = _mm256_loadu_si256((const __m256i *)(cd + jb * S + k));
                __m256i lo = _mm256_shuffle_epi8(tab[2 * jb], _mm256_and_si256(x, nib));
                __m256i hi = _mm256_shuffle_epi8(tab[2 * jb + 1], _mm256_and_si256(_mm256_srli_epi16(x, 4), nib));
                a0 = _mm256_add_epi16(a0, _mm256_add_epi16(_mm256_unpacklo_epi8(lo, z), _mm256_unpacklo_epi8(hi, z)));
                a1 = _mm256_add_epi16(a1, _mm256_add_epi16(_mm256_unpackhi_epi8(lo, z), _mm256_unpackhi_epi8(hi, z)));
            }
            mx = _mm256_max_epu16(mx, _mm256_max_epu16(a0, a1));
        }
        __m128i h = _mm_max_epu16(_mm256_castsi256_si128(mx), _mm256_extracti128_si256(mx, 1));
        h = _mm_xor_si128(h, _mm_set1_epi16(-1));             /* max = ~min(~x): one minpos */
        out[i] = (uint16_t)~_mm_extract_epi16(_mm_minpos_epu16(h), 0);
    }
}
#endif

/* Blocks of 16 segments (2 KB of codes at S 64, rank 16), each row in turn
 * over a block: the codes come from L1 for every row after the first. */
static void score_pq(const ix_ctx *c, size_t s0, size_t s1, float *out, size_t ld)
{
    const eg_route_table *t = c->t;
    size_t S = (size_t)t->spec.seg_tokens, m = (size_t)t->width / IX_PQ_SUB, mb = m / 2;
    enum { BLK = 16 };
    uint16_t q[BLK];
#ifdef __x86_64__
    int vec = S % 32 == 0 && ix_simd_has_avx2() && ix_simd_cap() > 0;
#endif
    for (size_t a = s0; a < s1; a += BLK) {
        size_t n = s1 - a < BLK ? s1 - a : BLK;
        const uint8_t *cd = t->codes + a * S * mb;
        for (int r = 0; r < c->nr; r++) {
            const uint8_t *lq = c->lutq + (size_t)r * m * IX_PQ_K;
#ifdef __x86_64__
            if (vec) pq_max_avx2(cd, n, S, m, lq, q);
            else
#endif
                for (size_t i = 0; i < n; i++) q[i] = pq_max_portable(cd + i * S * mb, S, m, lq);
            for (size_t i = 0; i < n; i++) out[(size_t)r * ld + (a - s0) + i] = c->lut_base[r] + c->lut_step[r] * (float)q[i];
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
    case EG_ROUTER_BALL:   /* the centre's score, + beta |q| r */
        ix_q8_scores(c, s0, s1, out, ld, c->beta);
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

