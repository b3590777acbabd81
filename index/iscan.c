/* iscan.c: scoring the indexer router's per-token keys.
 *
 * A token's index score is sum_h w_h relu(s_t q_h . k_t) (s_t its q8
 * scale), a segment's the max over its tokens. The table keeps the int8
 * keys in blocks of IX_BLK tokens, channel-major ([d][IX_BLK] per block,
 * table.c), so that a vector holds one channel of 8 tokens: per channel one
 * widening load serves every (row, head) query, broadcast, with no
 * horizontal sums. The first version looped rows outside segments and
 * widened each key once per row and head: 0.4 GB/s of table, 6-10 times
 * the time to stream it. AVX2 with FMA or portable C, chosen with the
 * other kernels (eg_index_kernels); they differ by rounding only. */
#include "ix_internal.h"
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define IS_X86 1
#endif

#define PAIRS 4   /* (row, head) queries per pass over two blocks' channels */

/* dots[p][l] = sum_c q[p][c] * key[c][l] for the np <= PAIRS queries q
 * (rows of d) against one block of IX_BLK tokens. */
static void block_dots_portable(const int8_t *blk, size_t d, const float *const *q, int np, float *dots)
{
    for (int p = 0; p < np; p++) {
        float acc[IX_BLK] = { 0 };
        for (size_t c = 0; c < d; c++)
            for (int l = 0; l < IX_BLK; l++) acc[l] += q[p][c] * (float)blk[c * IX_BLK + l];
        memcpy(dots + p * IX_BLK, acc, sizeof acc);
    }
}

#ifdef IS_X86
/* NP (row, head) queries against two consecutive blocks (16 tokens):
 * accumulators in registers (a fixed count, unrolled; each broadcast query
 * value serves both blocks), then the epilogue in vectors: tok[row of p]
 * += w_p relu(scale * dot). */
#define BLOCK_AVX2(NP)                                                                            \
    __attribute__((target("avx2,fma"))) static void bs_##NP(const int8_t *blk, size_t d, const float *sc,   \
                                                            const float *const *q, const float *w,        \
                                                            const size_t *row, float (*tok)[2 * IX_BLK])  \
    {                                                                                             \
        __m256 a0[NP], a1[NP];                                                                    \
        const int8_t *b1 = blk + d * IX_BLK;                                                      \
        _Pragma("GCC unroll 4") for (int p = 0; p < NP; p++) a0[p] = a1[p] = _mm256_setzero_ps(); \
        for (size_t c = 0; c < d; c++) {                                                          \
            if ((c & 7) == 0) { /* a line of each of the next two blocks */                       \
                _mm_prefetch((const char *)(blk + 2 * d * IX_BLK + c * IX_BLK), _MM_HINT_T0);     \
                _mm_prefetch((const char *)(blk + 3 * d * IX_BLK + c * IX_BLK), _MM_HINT_T0);     \
            }                                                                                     \
            __m256 x0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk + c * IX_BLK)))); \
            __m256 x1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b1 + c * IX_BLK))));  \
            _Pragma("GCC unroll 4") for (int p = 0; p < NP; p++) {                                \
                __m256 qv = _mm256_broadcast_ss(q[p] + c);                                        \
                a0[p] = _mm256_fmadd_ps(x0, qv, a0[p]);                                           \
                a1[p] = _mm256_fmadd_ps(x1, qv, a1[p]);                                           \
            }                                                                                     \
        }                                                                                         \
        __m256 s0 = _mm256_loadu_ps(sc), s1 = _mm256_loadu_ps(sc + IX_BLK), z = _mm256_setzero_ps(); \
        _Pragma("GCC unroll 4") for (int p = 0; p < NP; p++) {                                    \
            __m256 wv = _mm256_set1_ps(w[p]);                                                     \
            __m256 v0 = _mm256_max_ps(_mm256_mul_ps(s0, a0[p]), z), v1 = _mm256_max_ps(_mm256_mul_ps(s1, a1[p]), z); \
            _mm256_storeu_ps(tok[row[p]], _mm256_add_ps(_mm256_loadu_ps(tok[row[p]]), _mm256_mul_ps(wv, v0))); \
            _mm256_storeu_ps(tok[row[p]] + IX_BLK,                                                \
                             _mm256_add_ps(_mm256_loadu_ps(tok[row[p]] + IX_BLK), _mm256_mul_ps(wv, v1))); \
        }                                                                                         \
    }
BLOCK_AVX2(1) BLOCK_AVX2(2) BLOCK_AVX2(3) BLOCK_AVX2(4)
typedef void (*bs_fn)(const int8_t *, size_t, const float *, const float *const *, const float *, const size_t *,
                      float (*)[2 * IX_BLK]);
static const bs_fn bs_table[PAIRS] = {bs_1, bs_2, bs_3, bs_4};
#endif

/* The same in portable C for two blocks: dots, then tok[row of p] +=
 * w_p relu(scale * dot). */
static void bs_portable(const int8_t *blk, size_t d, const float *sc, const float *const *q, const float *w,
                        const size_t *row, float (*tok)[2 * IX_BLK], int np)
{
    float dots[PAIRS * IX_BLK];
    for (int half = 0; half < 2; half++) {
        block_dots_portable(blk + (size_t)half * d * IX_BLK, d, q, np, dots);
        for (int p = 0; p < np; p++)
            for (int l = 0; l < IX_BLK; l++) {
                float v = sc[half * IX_BLK + l] * dots[p * IX_BLK + l];
                tok[row[p]][half * IX_BLK + l] += w[p] * (v > 0.0f ? v : 0.0f);
            }
    }
}

#define RCH 64    /* rows whose token scores are summed at once */

void ix_indexer_scores(const ix_ctx *c, size_t s0, size_t s1, float *out, size_t ld)
{
    const eg_route_table *t = c->t;
    size_t d = (size_t)t->spec.dim, S = (size_t)t->spec.seg_tokens, nr = (size_t)c->nr;
    size_t h = (size_t)c->rows->n_index_heads;
    int avx2 = 0;
#ifdef IS_X86
    avx2 = ix_simd_cap() >= 1 && ix_simd_has_avx2();
#endif
    const float *qs[PAIRS];
    float wp[PAIRS], tok[RCH][2 * IX_BLK];
    size_t rowp[PAIRS];
    for (size_t i = s0; i < s1; i++) {
        float *o = out + (i - s0);
        for (size_t r = 0; r < nr; r++) o[r * ld] = -INFINITY;
        for (size_t tb = i * S / IX_BLK; tb < (i + 1) * S / IX_BLK; tb += 2) {   /* S is a multiple of 16 */
            const int8_t *blk = t->ikeys + tb * d * IX_BLK;   /* two blocks: in L1 for every pass */
            const float *sc = t->iscale + tb * IX_BLK;
            for (size_t r0 = 0; r0 < nr; r0 += RCH) {
                size_t rn = nr - r0 < RCH ? nr - r0 : RCH, ng = rn * h;
                memset(tok, 0, sizeof(float) * 2 * IX_BLK * rn);
                /* (row, head) queries in order, PAIRS at a time: each row's
                 * heads are summed in head order whatever the kernel. */
                for (size_t g0 = 0; g0 < ng; g0 += PAIRS) {
                    int np = (int)(ng - g0 < PAIRS ? ng - g0 : PAIRS);
                    for (int p = 0; p < np; p++) {
                        size_t g = g0 + (size_t)p;
                        qs[p] = c->rows->index_q + (r0 * h + g) * d;
                        wp[p] = c->rows->index_w[r0 * h + g];
                        rowp[p] = g / h;
                    }
#ifdef IS_X86
                    if (avx2) { bs_table[np - 1](blk, d, sc, qs, wp, rowp, tok); continue; }
#endif
                    bs_portable(blk, d, sc, qs, wp, rowp, tok, np);
                }
                for (size_t r = 0; r < rn; r++) {
                    float best = o[(r0 + r) * ld];
                    for (int l = 0; l < 2 * IX_BLK; l++) best = tok[r][l] > best ? tok[r][l] : best;
                    o[(r0 + r) * ld] = best;
                }
            }
        }
    }
}
