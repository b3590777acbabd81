/* tile_attn.c: the two products of attention over one tile, straight from
 * the tile as stored (q8) or from f32 rows, so that a decode step need not
 * write a decoded copy of every key and value it attends and read it back
 * (at 1M tokens of 32/8/128 the tile decode and sgemv were a fifth of a
 * step).
 *
 * The order of operations is fixed, so that a q8 tile and its decode give
 * the same bits, on every version (portable, AVX2 with FMA, AVX-512):
 * - a q8 value is its decode, (float)code * scale, one IEEE product;
 * - dot: 16 lanes, lane l accumulating fma(q[c], x[c], .) over the
 *   channels c = l mod 16 in increasing order (channels past d count as
 *   zero), then the lanes summed as l + l+8, then + l+4, + l+2, + l+1;
 *   the sum times alpha;
 * - axpy: acc[r][c] = fma(p[r][t], x_t[c], acc[r][c]) for t in increasing
 *   order.
 * fma is exactly rounded wherever it is computed, so the versions agree
 * (tests/test_tile_attn.c checks them against each other and a plain
 * double loop). */
#include "internal.h"
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TA_X86 1
#define T_AVX2 __attribute__((target("avx2,fma")))
#define T_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#endif

#define GROUP 32                 /* q8: channels per scale (codec.c) */

/* A tile as the kernels read it: f32 rows, or q8 scales and codes. */
typedef struct {
    const float *f;              /* f32: [n][d] */
    const unsigned char *sc;     /* q8: scales f32 [n][ng] (unaligned) */
    const int8_t *codes;         /* q8: [n][d] */
    uint32_t n, d, ng;
    const char *ahead;           /* lines to prefetch meanwhile (or NULL) */
    size_t ahead_lines;
} tile;

/* Prefetch lines [*at, *at + k) of t's ahead range (those that exist). */
static inline void ahead_step(const tile *t, size_t *at, size_t k)
{
    for (size_t e = *at + k < t->ahead_lines ? *at + k : t->ahead_lines; *at < e; ++*at)
        __builtin_prefetch(t->ahead + *at * 64, 0, 3);
}

static inline float scale_at(const unsigned char *sc, size_t i)
{
    float s;
    memcpy(&s, sc + i * 4, 4);
    return s;
}

static inline float scale_of(const tile *t, uint32_t row, uint32_t c)
{
    return scale_at(t->sc, (size_t)row * t->ng + c / GROUP);
}

/* Value c of row `row` (portable reference of the loads below). */
static inline float value_of(const tile *t, uint32_t row, uint32_t c)
{
    if (t->f) return t->f[(size_t)row * t->d + c];
    return (float)t->codes[(size_t)row * t->d + c] * scale_of(t, row, c);
}

/* ---- portable ---------------------------------------------------------------- */
static void dot_portable(const tile *t, const float *q, uint32_t nr, float alpha, float *out)
{
    for (uint32_t row = 0; row < t->n; row++)
        for (uint32_t r = 0; r < nr; r++) {
            float a[16] = {0};
            for (uint32_t c0 = 0; c0 < t->d; c0 += 16)
                for (uint32_t l = 0; l < 16; l++) {
                    uint32_t c = c0 + l;
                    float x = c < t->d ? value_of(t, row, c) : 0.0f, y = c < t->d ? q[(size_t)r * t->d + c] : 0.0f;
                    a[l] = fmaf(y, x, a[l]);
                }
            for (int w = 8; w >= 1; w /= 2)
                for (int l = 0; l < w; l++) a[l] += a[l + w];
            out[(size_t)r * t->n + row] = a[0] * alpha;
        }
}

static void axpy_portable(const tile *t, const float *p, uint32_t nr, float *acc)
{
    for (uint32_t r = 0; r < nr; r++)
        for (uint32_t row = 0; row < t->n; row++) {
            float w = p[(size_t)r * t->n + row];
            for (uint32_t c = 0; c < t->d; c++)
                acc[(size_t)r * t->d + c] = fmaf(w, value_of(t, row, c), acc[(size_t)r * t->d + c]);
        }
}

#ifdef TA_X86
/* ---- AVX-512 ------------------------------------------------------------------------ */
/* Lanes c0 .. c0+15 of row t (those outside mask m zero), one version per
 * kind of tile. A chunk wholly past d (axpy's fixed four) reads the row's
 * first scale, times codes masked to zero. */
#define LOAD_F32(t, c0, m) _mm512_maskz_loadu_ps(m, F + (size_t)(t) * d + (c0))
#define LOAD_Q8(t, c0, m)                                                                          \
    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, C + (size_t)(t) * d + (c0)))), \
                  _mm512_set1_ps(scale_at(SC, (size_t)(t) * ng + ((c0) < d ? (c0) / GROUP : 0))))


/* The four lane sums of a0..a3 (keys 0..3), each in the fixed order
 * (l + l+8, + l+4, + l+2, + l+1), by shuffles that pair the lanes of four
 * keys at once instead of one key's at a time. */
T_AVX512 static inline __m128 reduce4_512(__m512 a0, __m512 a1, __m512 a2, __m512 a3)
{
    __m512 t01 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(a0, a1, _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 t23 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(a2, a3, _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 u = _mm512_add_ps(_mm512_shuffle_f32x4(t01, t23, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(t01, t23, _MM_SHUFFLE(3, 1, 3, 1)));
    __m512 v = _mm512_add_ps(u, _mm512_permute_ps(u, _MM_SHUFFLE(1, 0, 3, 2)));
    __m512 w = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), w));
}

/* Mask of the lanes of channels c0 .. c0+15 below d (0 past the end). */
static inline __mmask16 lanes_below(uint32_t d, uint32_t c0)
{
    return c0 >= d ? (__mmask16)0 : d - c0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (d - c0)) - 1);
}

/* The loops below have fixed bounds (R rows, 4 keys, 4 chunks), so that
 * the 16 accumulators stay in registers; keys and chunks past the tile
 * are masked to zero and never stored. */
#define TILE_VARS                                                                                      \
    const uint32_t n = tp->n, d = tp->d, ng = tp->ng;                                                  \
    const float *restrict F = tp->f;                                                                   \
    const int8_t *restrict C = tp->codes;                                                              \
    const unsigned char *restrict SC = tp->sc;                                                         \
    (void)F; (void)C; (void)SC; (void)ng;

/* dot: four keys by R rows (4 R accumulators). */
#define DOT512(NAME, LOADX, R)                                                                         \
    T_AVX512 static void NAME##_##R(const tile *tp, const float *restrict q, float alpha, float *restrict out) \
    {                                                                                                  \
        TILE_VARS                                                                                      \
        size_t pf_at = 0, pf_k = (tp->ahead_lines + (n + 3) / 4 - 1) / ((n + 3) / 4);                  \
        for (uint32_t t0 = 0; t0 < n; t0 += 4) {                                                       \
            uint32_t nk = n - t0 < 4 ? n - t0 : 4;                                                     \
            ahead_step(tp, &pf_at, pf_k);                                                              \
            __m512 a[4][R];                                                                            \
            _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++)                                        \
                _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) a[k][r] = _mm512_setzero_ps();     \
            for (uint32_t c0 = 0; c0 < d; c0 += 16) {                                                  \
                __mmask16 m = lanes_below(d, c0);                                                      \
                __m512 x[4];                                                                           \
                _Pragma("GCC unroll 4") for (uint32_t k = 0; k < 4; k++)                               \
                    x[k] = k < nk ? LOADX(t0 + k, c0, m) : _mm512_setzero_ps();                        \
                _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {                                  \
                    __m512 qv = _mm512_maskz_loadu_ps(m, q + (size_t)r * d + c0);                      \
                    _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) a[k][r] = _mm512_fmadd_ps(qv, x[k], a[k][r]); \
                }                                                                                      \
            }                                                                                          \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {                                      \
                float sums[4];                                                                         \
                _mm_storeu_ps(sums, reduce4_512(a[0][r], a[1][r], a[2][r], a[3][r]));                  \
                for (uint32_t k = 0; k < nk; k++) out[(size_t)r * n + t0 + k] = sums[k] * alpha;       \
            }                                                                                          \
        }                                                                                              \
    }

/* axpy: four chunks of 16 channels by R rows, keys in order (each
 * accumulator one chain of fma over the keys). */
#define AXPY512(NAME, LOADX, R)                                                                        \
    T_AVX512 static void NAME##_##R(const tile *tp, const float *restrict p, float *restrict acc)      \
    {                                                                                                  \
        TILE_VARS                                                                                      \
        size_t steps = (size_t)n * ((d + 63) / 64), pf_at = 0, pf_k = (tp->ahead_lines + steps - 1) / steps; \
        for (uint32_t c0 = 0; c0 < d; c0 += 64) {                                                      \
            __mmask16 m[4];                                                                            \
            _Pragma("GCC unroll 4") for (uint32_t j = 0; j < 4; j++) m[j] = lanes_below(d, c0 + 16 * j); \
            __m512 a[4][R];                                                                            \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)                                        \
                _Pragma("GCC unroll 4") for (uint32_t j = 0; j < 4; j++)                               \
                    a[j][r] = _mm512_maskz_loadu_ps(m[j], acc + (size_t)r * d + c0 + 16 * j);          \
            for (uint32_t t = 0; t < n; t++) {                                                         \
                ahead_step(tp, &pf_at, pf_k);                                                          \
                __m512 x[4];                                                                           \
                _Pragma("GCC unroll 4") for (uint32_t j = 0; j < 4; j++) x[j] = LOADX(t, c0 + 16 * j, m[j]); \
                _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {                                  \
                    __m512 w = _mm512_set1_ps(p[(size_t)r * n + t]);                                   \
                    _Pragma("GCC unroll 4") for (uint32_t j = 0; j < 4; j++) a[j][r] = _mm512_fmadd_ps(w, x[j], a[j][r]); \
                }                                                                                      \
            }                                                                                          \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)                                        \
                _Pragma("GCC unroll 4") for (uint32_t j = 0; j < 4; j++)                               \
                    _mm512_mask_storeu_ps(acc + (size_t)r * d + c0 + 16 * j, m[j], a[j][r]);           \
        }                                                                                              \
    }

#define KERNELS512(SUF, LOADX)                                                                         \
    DOT512(dot512_##SUF, LOADX, 1) DOT512(dot512_##SUF, LOADX, 2)                                      \
    DOT512(dot512_##SUF, LOADX, 3) DOT512(dot512_##SUF, LOADX, 4)                                      \
    AXPY512(axpy512_##SUF, LOADX, 1) AXPY512(axpy512_##SUF, LOADX, 2)                                  \
    AXPY512(axpy512_##SUF, LOADX, 3) AXPY512(axpy512_##SUF, LOADX, 4)
KERNELS512(f32, LOAD_F32)
KERNELS512(q8, LOAD_Q8)

typedef void (*dot512_fn)(const tile *, const float *, float, float *);
typedef void (*axpy512_fn)(const tile *, const float *, float *);
static const dot512_fn dot512[2][4] = {{dot512_f32_1, dot512_f32_2, dot512_f32_3, dot512_f32_4},
                                       {dot512_q8_1, dot512_q8_2, dot512_q8_3, dot512_q8_4}};
static const axpy512_fn axpy512[2][4] = {{axpy512_f32_1, axpy512_f32_2, axpy512_f32_3, axpy512_f32_4},
                                         {axpy512_q8_1, axpy512_q8_2, axpy512_q8_3, axpy512_q8_4}};

/* Rows four at a time. */
static void dot_avx512(const tile *t, const float *q, uint32_t nr, float alpha, float *out)
{
    for (uint32_t r0 = 0; r0 < nr; r0 += 4)
        dot512[!t->f][(nr - r0 < 4 ? nr - r0 : 4) - 1](t, q + (size_t)r0 * t->d, alpha, out + (size_t)r0 * t->n);
}

static void axpy_avx512(const tile *t, const float *p, uint32_t nr, float *acc)
{
    for (uint32_t r0 = 0; r0 < nr; r0 += 4)
        axpy512[!t->f][(nr - r0 < 4 ? nr - r0 : 4) - 1](t, p + (size_t)r0 * t->n, acc + (size_t)r0 * t->d);
}

/* ---- AVX2 with FMA: the 16 lanes in two registers ------------------------------------ */
T_AVX2 static inline void load16_avx2(const tile *t, uint32_t row, uint32_t c0, __m256 *lo, __m256 *hi)
{
    uint32_t len = t->d - c0 < 16 ? t->d - c0 : 16;
    if (t->f) {
        const float *s = t->f + (size_t)row * t->d + c0;
        if (len == 16) { *lo = _mm256_loadu_ps(s); *hi = _mm256_loadu_ps(s + 8); return; }
        float b[16] = {0};
        memcpy(b, s, len * sizeof(float));
        *lo = _mm256_loadu_ps(b);
        *hi = _mm256_loadu_ps(b + 8);
        return;
    }
    const int8_t *s = t->codes + (size_t)row * t->d + c0;
    int8_t b[16] = {0};
    if (len < 16) { memcpy(b, s, len); s = b; }
    __m256 vs = _mm256_set1_ps(scale_of(t, row, c0));
    *lo = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)s))), vs);
    *hi = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(s + 8)))), vs);
}

T_AVX2 static inline void loadq_avx2(const float *q, uint32_t d, uint32_t c0, __m256 *lo, __m256 *hi)
{
    if (d - c0 >= 16) { *lo = _mm256_loadu_ps(q + c0); *hi = _mm256_loadu_ps(q + c0 + 8); return; }
    float b[16] = {0};
    memcpy(b, q + c0, (d - c0) * sizeof(float));
    *lo = _mm256_loadu_ps(b);
    *hi = _mm256_loadu_ps(b + 8);
}

T_AVX2 static void dot_avx2(const tile *t, const float *q, uint32_t nr, float alpha, float *out)
{
    for (uint32_t r0 = 0; r0 < nr; r0 += 4) {
        uint32_t nb = nr - r0 < 4 ? nr - r0 : 4;
        for (uint32_t row = 0; row < t->n; row++) {
            __m256 lo[4], hi[4];
            for (uint32_t r = 0; r < 4; r++) lo[r] = hi[r] = _mm256_setzero_ps();
            for (uint32_t c0 = 0; c0 < t->d; c0 += 16) {
                __m256 xl, xh, ql, qh;
                load16_avx2(t, row, c0, &xl, &xh);
                for (uint32_t r = 0; r < nb; r++) {
                    loadq_avx2(q + (size_t)(r0 + r) * t->d, t->d, c0, &ql, &qh);
                    lo[r] = _mm256_fmadd_ps(ql, xl, lo[r]);
                    hi[r] = _mm256_fmadd_ps(qh, xh, hi[r]);
                }
            }
            for (uint32_t r = 0; r < nb; r++) {
                __m256 v8 = _mm256_add_ps(lo[r], hi[r]);
                __m128 v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps(v8, 1));
                __m128 v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
                __m128 v1 = _mm_add_ss(v2, _mm_shuffle_ps(v2, v2, 1));
                out[(size_t)(r0 + r) * t->n + row] = _mm_cvtss_f32(v1) * alpha;
            }
        }
    }
}

T_AVX2 static void axpy_avx2(const tile *t, const float *p, uint32_t nr, float *acc)
{
    for (uint32_t r0 = 0; r0 < nr; r0 += 4) {
        uint32_t nb = nr - r0 < 4 ? nr - r0 : 4;
        for (uint32_t c0 = 0; c0 < t->d; c0 += 16) {
            uint32_t len = t->d - c0 < 16 ? t->d - c0 : 16;
            __m256 lo[4], hi[4];
            float b[4][16];
            for (uint32_t r = 0; r < nb; r++) {
                memset(b[r], 0, sizeof b[r]);
                memcpy(b[r], acc + (size_t)(r0 + r) * t->d + c0, len * sizeof(float));
                lo[r] = _mm256_loadu_ps(b[r]);
                hi[r] = _mm256_loadu_ps(b[r] + 8);
            }
            for (uint32_t row = 0; row < t->n; row++) {
                __m256 xl, xh;
                load16_avx2(t, row, c0, &xl, &xh);
                for (uint32_t r = 0; r < nb; r++) {
                    __m256 w = _mm256_set1_ps(p[(size_t)(r0 + r) * t->n + row]);
                    lo[r] = _mm256_fmadd_ps(w, xl, lo[r]);
                    hi[r] = _mm256_fmadd_ps(w, xh, hi[r]);
                }
            }
            for (uint32_t r = 0; r < nb; r++) {
                _mm256_storeu_ps(b[r], lo[r]);
                _mm256_storeu_ps(b[r] + 8, hi[r]);
                memcpy(acc + (size_t)(r0 + r) * t->d + c0, b[r], len * sizeof(float));
            }
        }
    }
}
#endif

#ifdef TA_X86
/* ---- softmax weights (AVX-512) ------------------------------------------------------ */
/* exp(x) for 16 lanes of x <= 0: x = k ln2 + r with |r| <= ln2/2 (ln2 in
 * two parts, k ln2hi exact for |k| <= 2^8), e^r by its Taylor series to
 * r^7 (truncation below 6e-9 relative) in Horner's fma, times 2^k by
 * vscalefps; below -87, 0. */
T_AVX512 static inline __m512 exp16_neg(__m512 x)
{
    __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm512_max_ps(_mm512_set1_ps(-88.0f), x);   /* NaN stays NaN (max returns its second operand) */
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.42860682030941723212e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_maskz_mov_ps((__mmask16)~tiny, _mm512_scalef_ps(p, k));
}

/* A decode step took 256 scalar expf a segment and head here (7 % of its
 * CPU at 1M tokens of 32/8/128). Lanes past n load as -inf: weight 0.
 * The max skips NaN as the portable loop does. Returns -1, having written
 * nothing, when the max is not finite. */
T_AVX512 static int softmax_avx512(float *x, uint32_t n, float m_floor, float *m, double *sum)
{
    __m512 vmx = _mm512_set1_ps(m_floor);
    for (uint32_t i = 0; i < n; i += 16) {
        __mmask16 k = lanes_below(n, i);
        vmx = _mm512_max_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), k, x + i), vmx);
    }
    float mx = _mm512_reduce_max_ps(vmx);
    if (!isfinite(mx)) return -1;
    *m = mx;
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    __m512 vm = _mm512_set1_ps(mx);
    for (uint32_t i = 0; i < n; i += 16) {
        __mmask16 k = lanes_below(n, i);
        __m512 e = exp16_neg(_mm512_sub_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), k, x + i), vm));
        _mm512_mask_storeu_ps(x + i, k, e);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    *sum = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    return 0;
}

/* The scale check of tile_open, 16 scales at a time; returns how many it
 * covered (the rest are checked by the caller's loop). */
T_AVX512 static size_t scales_avx512(const unsigned char *sc, size_t n, uint32_t lim, uint32_t *all, uint32_t *top)
{
    const __m512i absm = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000 - 1),
                  vl = _mm512_set1_epi32((int)lim);
    __mmask16 a = 0, b = 0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i u = _mm512_and_si512(_mm512_loadu_si512((const void *)(sc + i * 4)), absm);
        a |= _mm512_cmpgt_epu32_mask(u, inf);
        b |= _mm512_cmpgt_epu32_mask(u, vl);
    }
    *all |= a != 0;
    *top |= b != 0;
    return i;
}
#endif

/* ---- dispatch ------------------------------------------------------------------------ */
typedef struct {
    const char *name;
    void (*dot)(const tile *, const float *, uint32_t, float, float *);
    void (*axpy)(const tile *, const float *, uint32_t, float *);
} tset;
static const tset t_portable = {"portable", dot_portable, axpy_portable};
#ifdef TA_X86
static const tset t_avx2 = {"avx2-fma", dot_avx2, axpy_avx2};
static const tset t_avx512 = {"avx512", dot_avx512, axpy_avx512};
#endif
static const tset *t_cur = &t_portable;
static int t_level;              /* 0 portable, 1 AVX2 + FMA, 2 AVX-512 F, BW, VL */
static pthread_once_t t_once = PTHREAD_ONCE_INIT;

static void t_choose(int level)
{
    t_cur = &t_portable;
#ifdef TA_X86
    if (level >= 2) t_cur = &t_avx512;
    else if (level == 1) t_cur = &t_avx2;
#else
    (void)level;
#endif
}

static void t_init(void)
{
#ifdef TA_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) t_level = 1;
    if (t_level == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        t_level = 2;
#endif
    t_choose(t_level);
}

const char *eg_tile_kernels(int which)
{
    pthread_once(&t_once, t_init);
    if (which == 0) t_choose(t_level);
    else if (which == 1) t_choose(0);
    else if (which == 2) t_choose(t_level < 1 ? t_level : 1);
    return t_cur->name;
}

/* The tile's view, its length and scales checked. A q8 tile with a scale
 * at the top of the range (where decode computes in double and clamps) is
 * decoded into *own (the caller frees it) and read as f32. */
static int tile_open(int codec, const void *src, size_t len, uint32_t n, uint32_t d, tile *t, float **own)
{
    *own = NULL;
    memset(t, 0, sizeof *t);
    t->n = n;
    t->d = d;
    if (!src || n == 0 || d == 0) return eg_mem_fail(EG_EINVAL, "tile: NULL or empty (%u x %u)", n, d);
    if (codec == EG_CODEC_F32) {
        if (len != (size_t)n * d * sizeof(float))
            return eg_mem_fail(EG_ECORRUPT, "f32 tile of %zu bytes, %u x %u needs %zu", len, n, d,
                               (size_t)n * d * sizeof(float));
        t->f = src;
        return 0;
    }
    if (codec != EG_CODEC_Q8) return eg_mem_fail(EG_ECODEC, "tile kernels read f32 or q8 tiles, not codec %d", codec);
    size_t need;
    int rc = eg_codec_size(EG_CODEC_Q8, EG_KIND_K, n, d, &need);
    if (rc < 0) return rc;
    if (len != need) return eg_mem_fail(EG_ECORRUPT, "q8 tile of %zu bytes, %u x %u needs %zu", len, n, d, need);
    t->ng = (d + GROUP - 1) / GROUP;
    t->sc = src;
    t->codes = (const int8_t *)((const unsigned char *)src + (size_t)n * t->ng * 4);
    /* Scales by their bits, without a branch per scale (this ran for every
     * tile of a decode step): the exponent all ones is Inf or NaN; above
     * FLT_MAX / 128 (bits of a positive float order like the float). */
    uint32_t all = 0, top = 0, lim;
    float fl = FLT_MAX / 128;
    memcpy(&lim, &fl, 4);
    size_t i0 = 0;
#ifdef TA_X86
    if (t_level >= 2 && t_cur == &t_avx512) i0 = scales_avx512(t->sc, (size_t)n * t->ng, lim, &all, &top);
#endif
    for (size_t i = i0; i < (size_t)n * t->ng; i++) {
        uint32_t u;
        memcpy(&u, t->sc + i * 4, 4);
        u &= 0x7fffffffu;
        all |= (u >= 0x7f800000u);
        top |= (u > lim);
    }
    if (all)
        for (size_t i = 0; i < (size_t)n * t->ng; i++)
            if (!isfinite(scale_at(t->sc, i))) return eg_mem_fail(EG_ECORRUPT, "q8 tile: scale %zu is not finite", i);
    if (!top) return 0;
    float *x = malloc((size_t)n * d * sizeof(float));
    if (!x) return eg_mem_fail(EG_ENOMEM, "tile: out of memory");
    if ((rc = eg_codec_decode(EG_CODEC_Q8, EG_KIND_K, src, len, n, d, x)) < 0) { free(x); return rc; }
    *own = x;
    t->f = x;
    t->sc = NULL;
    t->codes = NULL;
    return 0;
}

/* Give t the ahead range; kernels other than AVX-512's take it all now. */
static void ahead_set(tile *t, const void *ahead, size_t ahead_len)
{
    uintptr_t a = (uintptr_t)ahead;
    t->ahead = ahead && ahead_len ? (const char *)(a & ~(uintptr_t)63) : NULL;   /* whole lines */
    t->ahead_lines = t->ahead ? (a + ahead_len + 63) / 64 - a / 64 : 0;
#ifdef TA_X86
    if (t_cur == &t_avx512) return;
#endif
    size_t at = 0;
    ahead_step(t, &at, t->ahead_lines);
}

int eg_tile_dot(int codec, const void *src, size_t len, uint32_t n, uint32_t d, const float *q, uint32_t nr,
                float alpha, float *out)
{
    return eg_tile_dot_ahead(codec, src, len, n, d, q, nr, alpha, out, NULL, 0);
}

int eg_tile_axpy(int codec, const void *src, size_t len, uint32_t n, uint32_t d, const float *p, uint32_t nr,
                 float *acc)
{
    return eg_tile_axpy_ahead(codec, src, len, n, d, p, nr, acc, NULL, 0);
}

int eg_tile_dot_ahead(int codec, const void *src, size_t len, uint32_t n, uint32_t d, const float *q, uint32_t nr,
                      float alpha, float *out, const void *ahead, size_t ahead_len)
{
    if (!q || !out || nr == 0) return eg_mem_fail(EG_EINVAL, "tile dot: NULL queries or output, or no rows");
    tile t;
    float *own;
    pthread_once(&t_once, t_init);   /* before tile_open, which reads the level (a race ThreadSanitizer found) */
    int rc = tile_open(codec, src, len, n, d, &t, &own);
    if (rc < 0) return rc;
    ahead_set(&t, ahead, ahead_len);
    t_cur->dot(&t, q, nr, alpha, out);
    free(own);
    return 0;
}

static void softmax_portable(float *x, uint32_t n, float m_floor, float *m, double *sum)
{
    float mx = m_floor;
    for (uint32_t j = 0; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    double s = 0;
    for (uint32_t j = 0; j < n; j++) {
        float p = expf(x[j] - mx);
        x[j] = p;
        s += p;
    }
    *m = mx;
    *sum = s;
}

int eg_tile_softmax(float *x, uint32_t n, float m_floor, float *m, double *sum)
{
    if (!x || !m || !sum || n == 0) return eg_mem_fail(EG_EINVAL, "tile softmax: NULL row or result, or n zero");
    pthread_once(&t_once, t_init);
#ifdef TA_X86
    if (t_cur == &t_avx512 && softmax_avx512(x, n, m_floor, m, sum) == 0) return 0;
#endif
    softmax_portable(x, n, m_floor, m, sum);
    return 0;
}

int eg_tile_axpy_ahead(int codec, const void *src, size_t len, uint32_t n, uint32_t d, const float *p, uint32_t nr,
                       float *acc, const void *ahead, size_t ahead_len)
{
    if (!p || !acc || nr == 0) return eg_mem_fail(EG_EINVAL, "tile axpy: NULL weights or accumulator, or no rows");
    tile t;
    float *own;
    pthread_once(&t_once, t_init);
    int rc = tile_open(codec, src, len, n, d, &t, &own);
    if (rc < 0) return rc;
    ahead_set(&t, ahead, ahead_len);
    t_cur->axpy(&t, p, nr, acc);
    free(own);
    return 0;
}
