/* simd.c: the routing kernels that stream the whole table, in two
 * versions chosen at run time: AVX2 with FMA and F16C when the CPU has
 * them, portable C otherwise. Each states its layout and is checked
 * against a plain loop in tests/test_index_kernels.c.
 *
 * Why f16 in RAM: a quest row is 2*dim values and at a million tokens the
 * table of one kv-head is 16 MB as f32; every decode step streams it, so
 * halving the bytes halves the routing time. f16 -> f32 is exact, so the
 * rounding analysis of the scores (ix_quest_slack) is unchanged. */
#include "ix_internal.h"
#include <float.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define IX_HAVE_AVX2 1
#endif

/* ---- portable versions ------------------------------------------------------------ */
static float f16_lut[65536];   /* every half as f32, +-inf as +-FLT_MAX (see table.c) */

static void lut_init(void)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float v = ix_f16_to_f32((uint16_t)h);
        f16_lut[h] = v > FLT_MAX ? FLT_MAX : v < -FLT_MAX ? -FLT_MAX : v;
    }
}

/* Blocked layout (see ix_internal.h): per block, 8 lanes (one per segment)
 * summed over the channels in order, a loop the compiler vectorises for
 * any x86-64 (SSE2) without FMA; so its bits differ from the AVX2 kernel's
 * by rounding, each within the bound the tests check. */
static void score_h_portable(const uint16_t *tab, size_t s0, size_t s1, size_t width, const float *qp,
                             int nr, float *out, size_t ld, int clamp)
{
    (void)clamp;   /* the table maps inf to FLT_MAX already */
    for (size_t b = s0 / IX_BLK; b * IX_BLK < s1; b++) {
        const uint16_t *blk = tab + b * width * IX_BLK;
        for (int r = 0; r < nr; r++) {
            const float *q = qp + (size_t)r * width;
            float acc[IX_BLK] = { 0 };
            for (size_t c = 0; c < width; c++)
                for (int l = 0; l < IX_BLK; l++) acc[l] += f16_lut[blk[c * IX_BLK + l]] * q[c];
            for (size_t l = 0; l < IX_BLK; l++) {
                size_t s = b * IX_BLK + l;
                if (s >= s0 && s < s1) out[(size_t)r * ld + (s - s0)] = acc[l] != acc[l] ? INFINITY : acc[l];
            }
        }
    }
}

static double sum_exp_portable(const float *u, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += u[i] < -87.0f ? 0.0 : exp((double)u[i]);
    return s;
}

/* One term of ix_sum_exp_lifted: -inf where skipped; the lift is a
 * multiply, then an add, as the int8 kernels' epilogue. The vector kernels' fused
 * multiply-add rounds the same way as fmaf. */
static inline float term(const ix_terms *a, size_t i)
{
    if (a->skip[i]) return -INFINITY;
    float v = a->sc[i];
    if (a->rad) v = v + a->rq * a->rad[i];
    return fmaf(a->scale, v, a->base[i / a->G]);
}

#define TERMS_CHUNK 64   /* terms relative to the max, staged for the exp-sum kernel */
#define TERM_CLAMP 80.0f /* x - m above this (only with a reference below the max): the sum is >= e^80, refused */

static float terms_max_portable(const ix_terms *a)
{
    float m = -INFINITY;
    for (size_t i = 0; i < a->n; i++) {
        float x = term(a, i);
        m = x > m ? x : m;
    }
    return m;
}

static double terms_sum_portable(const ix_terms *a, float m)
{
    float u[TERMS_CHUNK];
    double sum = 0;
    for (size_t i0 = 0; i0 < a->n; i0 += TERMS_CHUNK) {
        size_t len = a->n - i0 < TERMS_CHUNK ? a->n - i0 : TERMS_CHUNK;
        for (size_t j = 0; j < len; j++) u[j] = fminf(term(a, i0 + j) - m, TERM_CLAMP);
        sum += sum_exp_portable(u, len);
    }
    return sum;
}

/* Relative to a->ref in one pass where that serves: its sum within
 * [2^-60, 2^60) (the terms' max not far below ref, none above it by
 * more than TERM_CLAMP, which would give at least e^80); else the max,
 * then the sum relative to it. */
static double terms_drive(const ix_terms *a, float *m_out, float (*mx)(const ix_terms *),
                          double (*sum)(const ix_terms *, float))
{
    if (isfinite(a->ref)) {
        double z = sum(a, a->ref);
        if (z >= 0x1p-60 && z < 0x1p60) { *m_out = a->ref; return z; }
    }
    float m = mx(a);
    *m_out = m;
    if (m == -INFINITY || m == INFINITY) return m == INFINITY;
    return sum(a, m);
}

static double sum_exp_terms_portable(const ix_terms *a, float *m_out)
{
    return terms_drive(a, m_out, terms_max_portable, terms_sum_portable);
}

static void rows_max_portable(const float *sc, size_t ld, int nr, const size_t *vis, size_t a, size_t n,
                              float *agg)
{
    for (size_t i = 0; i < n; i++) agg[i] = -INFINITY;
    for (int r = 0; r < nr; r++) {
        size_t lim = vis[r] <= a ? 0 : vis[r] - a < n ? vis[r] - a : n;
        const float *p = sc + (size_t)r * ld;
        for (size_t i = 0; i < lim; i++) agg[i] = p[i] > agg[i] ? p[i] : agg[i];
    }
}

static size_t at_least_portable(const float *v, size_t n, float thr, uint32_t *idx)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i] >= thr && v[i] > -INFINITY) idx[k++] = (uint32_t)i;
    return k;
}

/* One term of ix_rows_lse: inf - inf (an infinite score against a row's
 * infinite estimate) counts as e^0, so that such a row's mass sits on its
 * infinite segments. */
static inline float mass_term(float sc, float gain, float shift)
{
    float x = fmaf(gain, sc, -shift);
    return x == x ? x : 0.0f;
}

static void rows_lse_portable(const float *sc, size_t ld, int nr, const size_t *vis, size_t a, size_t n,
                              float gain, const float *shift, float *agg)
{
    for (size_t i = 0; i < n; i++) {
        float m = -INFINITY, z = 0.0f;
        for (int r = 0; r < nr; r++) {
            if (vis[r] <= a + i) continue;
            float x = mass_term(sc[(size_t)r * ld + i], gain, shift[r]);
            m = x > m ? x : m;
        }
        if (!(m - m == 0.0f)) { agg[i] = m; continue; }   /* -inf (no row) or +inf */
        for (int r = 0; r < nr; r++)
            if (vis[r] > a + i) z += expf(mass_term(sc[(size_t)r * ld + i], gain, shift[r]) - m);
        agg[i] = m + logf(z);
    }
}

static double exp_row_portable(const float *x, size_t n, float gain, float *e, float *m_out)
{
    float m = -INFINITY;
    for (size_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    *m_out = m;
    double z = 0;
    if (m == INFINITY) {   /* the row's mass on its infinite scores */
        for (size_t i = 0; i < n; i++) { e[i] = x[i] == INFINITY ? 1.0f : 0.0f; z += e[i]; }
        return z;
    }
    float gm = gain * m;
    for (size_t i = 0; i < n; i++) {
        float u = m == -INFINITY ? -INFINITY : fmaf(gain, x[i], -gm);
        e[i] = u < -87.0f ? 0.0f : expf(u);
        z += e[i];
    }
    return z;
}

static void mass_combine_portable(const float *e, size_t ld, int nr, const size_t *vis, size_t a, size_t n,
                                  const float *w, float *agg)
{
    for (size_t i = 0; i < n; i++) {
        float acc = 0.0f;
        for (int r = 0; r < nr; r++)
            if (vis[r] > a + i) acc = fmaf(e[(size_t)r * ld + i], w[r], acc);
        agg[i] = acc >= IX_MASS_TINY ? logf(acc) : NAN;
    }
}

/* ---- AVX2, FMA, F16C -------------------------------------------------------------------- */
static void lse_mix_portable(float *o, const float *x, size_t n, size_t m, float tau, float bias,
                             float tau_out)
{
    for (size_t i = 0; i < n; i++) {
        float v[9], mx = fmaf(tau, o[i], bias);
        v[0] = mx;
        for (size_t j = 0; j < m; j++) {
            v[1 + j] = tau_out * x[i * m + j];
            mx = v[1 + j] > mx ? v[1 + j] : mx;
        }
        if (!(mx - mx == 0.0f)) { o[i] = mx; continue; }   /* +-inf or NaN */
        float z = 0.0f;
        for (size_t j = 0; j <= m; j++) z += expf(v[j] - mx);
        o[i] = mx + logf(z);
    }
}

#ifdef IX_HAVE_AVX2
#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static inline __m256 load_h(const uint16_t *p, int clamp)
{
    __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    if (clamp) x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-FLT_MAX)), _mm256_set1_ps(FLT_MAX));
    return x;
}

/* NB blocks of 8 segments against R rows: lane l of acc[b][r] is segment
 * l of block b, summed over the channels in order with FMA. Each table load serves
 * R rows and each broadcast query value NB blocks. res: [NB][R][8]. */
#define KT(R, NB, CL)                                                                        \
    AVX2 static void kt_##R##_##NB##_##CL(const uint16_t *blk, size_t width, const float *q,    \
                                          float *res)                                        \
    {                                                                                        \
        __m256 acc[NB * R];                                                                  \
        _Pragma("GCC unroll 8") for (int i = 0; i < NB * R; i++) acc[i] = _mm256_setzero_ps(); \
        for (size_t c = 0; c < width; c++) {                                                 \
            if ((c & 3) == 0) /* the next blocks: a block is one page, where the              \
                                 hardware prefetcher starts cold */                            \
                _Pragma("GCC unroll 2") for (int b = 0; b < NB; b++)                         \
                    _mm_prefetch((const char *)(blk + ((size_t)(NB + b) * width + c) * IX_BLK), _MM_HINT_T0); \
            __m256 x[NB];                                                                    \
            _Pragma("GCC unroll 2") for (int b = 0; b < NB; b++)                             \
                x[b] = load_h(blk + ((size_t)b * width + c) * IX_BLK, CL);                   \
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {                            \
                __m256 qr = _mm256_broadcast_ss(q + (size_t)r * width + c);                  \
                _Pragma("GCC unroll 2") for (int b = 0; b < NB; b++)                         \
                    acc[b * R + r] = _mm256_fmadd_ps(x[b], qr, acc[b * R + r]);              \
            }                                                                                \
        }                                                                                    \
        /* NaN (inf - inf, after overflow) -> +inf: still an upper bound */                \
        _Pragma("GCC unroll 8") for (int i = 0; i < NB * R; i++)                              \
            _mm256_storeu_ps(res + 8 * i, _mm256_blendv_ps(acc[i], _mm256_set1_ps(INFINITY),    \
                                                           _mm256_cmp_ps(acc[i], acc[i], _CMP_UNORD_Q))); \
    }
#define KTS(R) KT(R, 1, 0) KT(R, 1, 1) KT(R, 2, 0) KT(R, 2, 1)
KTS(1)
KTS(2)
KTS(3)
KTS(4)

typedef void (*kt_fn)(const uint16_t *, size_t, const float *, float *);
static const kt_fn kt_table[4][2][2] = {   /* [R-1][NB-1][clamp] */
    {{kt_1_1_0, kt_1_1_1}, {kt_1_2_0, kt_1_2_1}},
    {{kt_2_1_0, kt_2_1_1}, {kt_2_2_0, kt_2_2_1}},
    {{kt_3_1_0, kt_3_1_1}, {kt_3_2_0, kt_3_2_1}},
    {{kt_4_1_0, kt_4_1_1}, {kt_4_2_0, kt_4_2_1}},
};

/* Blocks covering [s0, s1), two at a time; rows four at a time while the
 * blocks are in L1, so the table streams from memory once for any nr. */
AVX2 static void score_h_avx2(const uint16_t *tab, size_t s0, size_t s1, size_t width, const float *qp,
                              int nr, float *out, size_t ld, int clamp)
{
    size_t b0 = s0 / IX_BLK, b1 = (s1 + IX_BLK - 1) / IX_BLK, unr = (size_t)nr;
    float res[2 * 4 * IX_BLK];
    for (size_t b = b0; b < b1;) {
        size_t nb = b + 2 <= b1 ? 2 : 1;
        const uint16_t *blk = tab + b * width * IX_BLK;
        for (size_t r = 0; r < unr;) {
            size_t R = unr - r < 4 ? unr - r : 4;
            kt_table[R - 1][nb - 1][clamp != 0](blk, width, qp + r * width, res);
            for (size_t bb = 0; bb < nb; bb++) {
                size_t first = (b + bb) * IX_BLK;
                for (size_t i = 0; i < R; i++) {
                    const float *src = res + (bb * R + i) * IX_BLK;
                    float *dst = out + (r + i) * ld;
                    if (first >= s0 && first + IX_BLK <= s1)
                        _mm256_storeu_ps(dst + (first - s0), _mm256_loadu_ps(src));
                    else
                        for (size_t l = 0; l < IX_BLK; l++)
                            if (first + l >= s0 && first + l < s1) dst[first + l - s0] = src[l];
                }
            }
            r += R;
        }
        b += nb;
    }
}

/* exp(x) for 8 lanes, x <= 0: x = k ln2 + f with |f| <= ln2/2 (Cody-Waite
 * split of ln2, exact for |k| <= 126), e^f by its Taylor series to f^6
 * (truncation < 1.3e-7 relative: degree 8 was 3e-9, far below the 4e-6
 * the bound allows, and 2 of the exp-sum's 32 instructions a vector),
 * times 2^k. Lanes below -87 give 0 (e^-87 is near the smallest normal
 * float). */
/* exp's reduction and polynomial for k = round(x / ln 2) in x's vector
 * type V: f = x - k ln 2 in two steps, then the degree-6 Taylor series of
 * e^f in Horner form, into p. One text for every width, so that the
 * AVX2 and AVX-512 exponentials are the same operations lane for lane. */
#define EXP_POLY(V, SET, FMA, FNMA)                                           \
    V f = FNMA(k, SET(0.693359375f), x);                                      \
    f = FNMA(k, SET(-2.12194440e-4f), f);                                     \
    V p = SET(1.0f / 720.0f);                                                 \
    p = FMA(p, f, SET(1.0f / 120.0f));                                        \
    p = FMA(p, f, SET(1.0f / 24.0f));                                         \
    p = FMA(p, f, SET(1.0f / 6.0f));                                          \
    p = FMA(p, f, SET(0.5f));                                                 \
    p = FMA(p, f, SET(1.0f));                                                 \
    p = FMA(p, f, SET(1.0f))

AVX2 static inline __m256 exp8(__m256 x)
{
    const __m256 lo = _mm256_set1_ps(-87.0f);
    __m256 keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
    x = _mm256_max_ps(x, lo);
    __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    EXP_POLY(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_fnmadd_ps);
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}

/* log(s) for 8 lanes of finite s >= 1: s = 2^e f with f in [sqrt(1/2),
 * sqrt(2)), log f = 2 atanh(r), r = (f-1)/(f+1), |r| < 0.172, by its
 * series to r^9 (truncation < 1e-9). */
AVX2 static inline __m256 log8(__m256 s)
{
    __m256i bits = _mm256_castps_si256(s);
    __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127));
    __m256 f = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x7fffff)),
                                                   _mm256_set1_epi32(0x3f800000)));
    __m256 big = _mm256_cmp_ps(f, _mm256_set1_ps(1.41421356f), _CMP_GT_OQ);
    f = _mm256_blendv_ps(f, _mm256_mul_ps(f, _mm256_set1_ps(0.5f)), big);
    __m256 ef = _mm256_add_ps(_mm256_cvtepi32_ps(e), _mm256_and_ps(big, _mm256_set1_ps(1.0f)));
    __m256 r = _mm256_div_ps(_mm256_sub_ps(f, _mm256_set1_ps(1.0f)), _mm256_add_ps(f, _mm256_set1_ps(1.0f)));
    __m256 r2 = _mm256_mul_ps(r, r);
    __m256 p = _mm256_set1_ps(1.0f / 9.0f);
    p = _mm256_fmadd_ps(p, r2, _mm256_set1_ps(1.0f / 7.0f));
    p = _mm256_fmadd_ps(p, r2, _mm256_set1_ps(1.0f / 5.0f));
    p = _mm256_fmadd_ps(p, r2, _mm256_set1_ps(1.0f / 3.0f));
    p = _mm256_fmadd_ps(p, r2, _mm256_set1_ps(1.0f));
    __m256 lf = _mm256_mul_ps(_mm256_add_ps(r, r), p);
    return _mm256_fmadd_ps(ef, _mm256_set1_ps(0.693147181f), lf);
}

AVX2 static void lse_mix_avx2(float *o, const float *x, size_t n, size_t m, float tau, float bias, float tau_out)
{
    const __m256 vt = _mm256_set1_ps(tau), vb = _mm256_set1_ps(bias), vo = _mm256_set1_ps(tau_out);
    const __m256i stride = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                              _mm256_set1_epi32((int)m));
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v[9];
        v[0] = _mm256_fmadd_ps(vt, _mm256_loadu_ps(o + i), vb);
        __m256 mx = v[0];
        for (size_t j = 0; j < m; j++) {
            __m256 xj = m == 1 ? _mm256_loadu_ps(x + i) : _mm256_i32gather_ps(x + i * m + j, stride, 4);
            v[1 + j] = _mm256_mul_ps(vo, xj);
            mx = _mm256_max_ps(mx, v[1 + j]);
        }
        __m256 z = _mm256_setzero_ps();
        for (size_t j = 0; j <= m; j++) z = _mm256_add_ps(z, exp8(_mm256_sub_ps(v[j], mx)));
        __m256 fin = _mm256_cmp_ps(_mm256_sub_ps(mx, mx), _mm256_setzero_ps(), _CMP_EQ_OQ);
        __m256 r = _mm256_add_ps(mx, log8(_mm256_max_ps(z, _mm256_set1_ps(1.0f))));
        _mm256_storeu_ps(o + i, _mm256_blendv_ps(mx, r, fin));
    }
    if (i < n) lse_mix_portable(o + i, x + i * m, n - i, m, tau, bias, tau_out);
}

AVX2 static double sum_exp_avx2(const float *u, size_t n)
{
    __m256d a = _mm256_setzero_pd(), b = _mm256_setzero_pd();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_loadu_ps(u + i));
        a = _mm256_add_pd(a, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        b = _mm256_add_pd(b, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    if (i < n) {
        float tmp[8];
        for (int l = 0; l < 8; l++) tmp[l] = i + (size_t)l < n ? u[i + l] : -INFINITY;
        __m256 e = exp8(_mm256_loadu_ps(tmp));
        a = _mm256_add_pd(a, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        b = _mm256_add_pd(b, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double t[4];
    _mm256_storeu_pd(t, _mm256_add_pd(a, b));
    return (t[0] + t[1]) + (t[2] + t[3]);
}

/* Lanes i..i+7 of the terms, -inf where skipped. */
AVX2 static inline __m256 terms8(const ix_terms *a, size_t i, __m256 scale, __m256 rq, __m256 base)
{
    __m256 v = _mm256_loadu_ps(a->sc + i);
    if (a->rad) v = _mm256_add_ps(v, _mm256_mul_ps(rq, _mm256_loadu_ps(a->rad + i)));
    __m256 x = _mm256_fmadd_ps(scale, v, base);
    __m256i sk = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(a->skip + i)));
    __m256 keep = _mm256_castsi256_ps(_mm256_cmpeq_epi32(sk, _mm256_setzero_si256()));
    return _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), x, keep);
}

/* G is a multiple of 8 (checked by the dispatcher): lanes i..i+7 share a
 * base, found by a counter (base[i / G] divided once a vector, G not a
 * constant: a quarter of the exp-sum's time). */
AVX2 static float terms_max_avx2(const ix_terms *a)
{
    size_t n8 = a->n & ~(size_t)7, G = a->G;
    __m256 vs = _mm256_set1_ps(a->scale), vq = _mm256_set1_ps(a->rq), mx = _mm256_set1_ps(-INFINITY);
    for (size_t i = 0, g = 0, gi = 0; i < n8; i += 8) {
        mx = _mm256_max_ps(mx, terms8(a, i, vs, vq, _mm256_set1_ps(a->base[g])));
        if ((gi += 8) == G) { gi = 0; g++; }
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    float m = _mm_cvtss_f32(h);
    for (size_t i = n8; i < a->n; i++) {
        float x = term(a, i);
        m = x > m ? x : m;
    }
    return m;
}

AVX2 static double terms_sum_avx2(const ix_terms *a, float m)
{
    size_t G = a->G;
    __m256 vs = _mm256_set1_ps(a->scale), vq = _mm256_set1_ps(a->rq), vm = _mm256_set1_ps(m);
    __m256 cl = _mm256_set1_ps(TERM_CLAMP);
    float u[TERMS_CHUNK];
    double sum = 0;
    for (size_t i0 = 0; i0 < a->n; i0 += TERMS_CHUNK) {
        size_t len = a->n - i0 < TERMS_CHUNK ? a->n - i0 : TERMS_CHUNK, j = 0, g = i0 / G, gi = i0 % G;
        for (; j + 8 <= len; j += 8) {
            _mm256_storeu_ps(u + j, _mm256_min_ps(_mm256_sub_ps(terms8(a, i0 + j, vs, vq, _mm256_set1_ps(a->base[g])), vm), cl));
            if ((gi += 8) == G) { gi = 0; g++; }
        }
        for (; j < len; j++) u[j] = fminf(term(a, i0 + j) - m, TERM_CLAMP);
        sum += sum_exp_avx2(u, len);
    }
    return sum;
}

AVX2 static double sum_exp_terms_avx2(const ix_terms *a, float *m_out)
{
    return terms_drive(a, m_out, terms_max_avx2, terms_sum_avx2);
}

AVX2 static void rows_max_avx2(const float *sc, size_t ld, int nr, const size_t *vis, size_t a, size_t n,
                               float *agg)
{
    size_t n8 = n & ~(size_t)7, seen = n;   /* segments every row sees */
    for (int r = 0; r < nr; r++) {
        size_t v = vis[r] <= a ? 0 : vis[r] - a;
        seen = v < seen ? v : seen;
    }
    if (nr == 0 || seen < n8) { rows_max_portable(sc, ld, nr, vis, a, n, agg); return; }
    for (size_t i = 0; i < n8; i += 8) {
        __m256 m = _mm256_loadu_ps(sc + i);
        for (int r = 1; r < nr; r++) m = _mm256_max_ps(m, _mm256_loadu_ps(sc + (size_t)r * ld + i));
        _mm256_storeu_ps(agg + i, m);
    }
    for (size_t i = n8; i < n; i++) {
        float m = -INFINITY;
        for (int r = 0; r < nr; r++) {
            float x = sc[(size_t)r * ld + i];
            m = vis[r] > a + i && x > m ? x : m;
        }
        agg[i] = m;
    }
}

AVX2 static inline __m256 mass_term8(const float *p, __m256 gain, float shift)
{
    __m256 x = _mm256_fmsub_ps(gain, _mm256_loadu_ps(p), _mm256_set1_ps(shift));
    return _mm256_blendv_ps(x, _mm256_setzero_ps(), _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

AVX2 static void rows_lse_avx2(const float *sc, size_t ld, int nr, const size_t *vis, size_t a, size_t n,
                               float gain, const float *shift, float *agg)
{
    size_t n8 = n & ~(size_t)7, seen = n;   /* segments every row sees */
    for (int r = 0; r < nr; r++) {
        size_t v = vis[r] <= a ? 0 : vis[r] - a;
        seen = v < seen ? v : seen;
    }
    if (nr == 0 || seen < n8) { rows_lse_portable(sc, ld, nr, vis, a, n, gain, shift, agg); return; }
    const __m256 g = _mm256_set1_ps(gain), one = _mm256_set1_ps(1.0f);
    for (size_t i = 0; i < n8; i += 8) {
        __m256 m = _mm256_set1_ps(-INFINITY), z = _mm256_setzero_ps();
        for (int r = 0; r < nr; r++) m = _mm256_max_ps(m, mass_term8(sc + (size_t)r * ld + i, g, shift[r]));
        for (int r = 0; r < nr; r++)
            z = _mm256_add_ps(z, exp8(_mm256_sub_ps(mass_term8(sc + (size_t)r * ld + i, g, shift[r]), m)));
        __m256 fin = _mm256_cmp_ps(_mm256_sub_ps(m, m), _mm256_setzero_ps(), _CMP_EQ_OQ);
        __m256 l = _mm256_add_ps(m, log8(_mm256_max_ps(z, one)));   /* z >= 1: the max's own term */
        _mm256_storeu_ps(agg + i, _mm256_blendv_ps(m, l, fin));
    }
    if (n8 < n) rows_lse_portable(sc + n8, ld, nr, vis, a + n8, n - n8, gain, shift, agg + n8);
}

AVX2 static double exp_row_avx2(const float *x, size_t n, float gain, float *e, float *m_out)
{
    size_t n8 = n & ~(size_t)7;
    __m256 mv = _mm256_set1_ps(-INFINITY);
    for (size_t i = 0; i < n8; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
    float t[8], m = -INFINITY;
    _mm256_storeu_ps(t, mv);
    for (int l = 0; l < 8; l++) m = t[l] > m ? t[l] : m;
    for (size_t i = n8; i < n; i++) m = x[i] > m ? x[i] : m;
    if (!(m - m == 0.0f)) return exp_row_portable(x, n, gain, e, m_out);   /* +-inf: the plain loop */
    *m_out = m;
    const __m256 g = _mm256_set1_ps(gain), ngm = _mm256_set1_ps(-gain * m);
    __m256d za = _mm256_setzero_pd(), zb = za;
    for (size_t i = 0; i < n8; i += 8) {
        __m256 v = exp8(_mm256_fmadd_ps(g, _mm256_loadu_ps(x + i), ngm));
        _mm256_storeu_ps(e + i, v);
        za = _mm256_add_pd(za, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
        zb = _mm256_add_pd(zb, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    }
    double d[4], z;
    _mm256_storeu_pd(d, _mm256_add_pd(za, zb));
    z = (d[0] + d[1]) + (d[2] + d[3]);
    for (size_t i = n8; i < n; i++) {
        float u = fmaf(gain, x[i], -gain * m);
        e[i] = u < -87.0f ? 0.0f : expf(u);
        z += e[i];
    }
    return z;
}

AVX2 static void mass_combine_avx2(const float *e, size_t ld, int nr, const size_t *vis, size_t a, size_t n,
                                   const float *w, float *agg)
{
    size_t n8 = n & ~(size_t)7, seen = n;
    for (int r = 0; r < nr; r++) {
        size_t v = vis[r] <= a ? 0 : vis[r] - a;
        seen = v < seen ? v : seen;
    }
    if (nr == 0 || seen < n8) { mass_combine_portable(e, ld, nr, vis, a, n, w, agg); return; }
    const __m256 tiny = _mm256_set1_ps(IX_MASS_TINY), nan = _mm256_set1_ps(NAN);
    for (size_t i = 0; i < n8; i += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int r = 0; r < nr; r++) acc = _mm256_fmadd_ps(_mm256_loadu_ps(e + (size_t)r * ld + i), _mm256_set1_ps(w[r]), acc);
        __m256 ok = _mm256_cmp_ps(acc, tiny, _CMP_GE_OQ);
        _mm256_storeu_ps(agg + i, _mm256_blendv_ps(nan, log8(_mm256_max_ps(acc, tiny)), ok));
    }
    if (n8 < n) mass_combine_portable(e + n8, ld, nr, vis, a + n8, n - n8, w, agg + n8);
}

AVX2 static size_t at_least_avx2(const float *v, size_t n, float thr, uint32_t *idx)
{
    size_t k = 0, n8 = n & ~(size_t)7;
    __m256 t = _mm256_set1_ps(thr), ninf = _mm256_set1_ps(-INFINITY);
    for (size_t i = 0; i < n8; i += 8) {
        __m256 x = _mm256_loadu_ps(v + i);
        unsigned m = (unsigned)_mm256_movemask_ps(
            _mm256_and_ps(_mm256_cmp_ps(x, t, _CMP_GE_OQ), _mm256_cmp_ps(x, ninf, _CMP_GT_OQ)));
        while (m) {
            idx[k++] = (uint32_t)(i + (size_t)__builtin_ctz(m));
            m &= m - 1;
        }
    }
    for (size_t i = n8; i < n; i++)
        if (v[i] >= thr && v[i] > -INFINITY) idx[k++] = (uint32_t)i;
    return k;
}
#endif

#ifdef IX_HAVE_AVX2
/* ---- AVX-512: the exp-sum of the bound ----------------------------------------------------- */
#define AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))

/* exp8 in 16 lanes: the same reduction and polynomial (EXP_POLY); 2^k
 * applied by vscalefps, the same product (exact but where it rounds to a
 * subnormal, as the multiply does). Lanes outside live give 0. */
AVX512 static inline __m512 exp16(__m512 x, __mmask16 live)
{
    const __m512 lo = _mm512_set1_ps(-87.0f);
    __mmask16 keep = _mm512_mask_cmp_ps_mask(live, x, lo, _CMP_GE_OQ);
    x = _mm512_max_ps(x, lo);
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    EXP_POLY(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_fnmadd_ps);
    return _mm512_maskz_scalef_ps(keep, p, k);
}

/* Lanes i..i+15 of the terms before the skips (one base: the caller
 * checked G is a multiple of 16); *live the lanes not skipped. */
AVX512 static inline __m512 lifted16(const ix_terms *a, size_t i, __m512 scale, __m512 rq, __m512 base,
                                     __mmask16 *live)
{
    __m512 v = _mm512_loadu_ps(a->sc + i);
    if (a->rad) v = _mm512_add_ps(v, _mm512_mul_ps(rq, _mm512_loadu_ps(a->rad + i)));
    __m512i sk = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(a->skip + i)));
    *live = _mm512_cmpeq_epi32_mask(sk, _mm512_setzero_si512());
    return _mm512_fmadd_ps(scale, v, base);
}

/* The same, -inf where skipped (the max). */
AVX512 static inline __m512 terms16(const ix_terms *a, size_t i, __m512 scale, __m512 rq, __m512 base)
{
    __mmask16 live;
    __m512 x = lifted16(a, i, scale, rq, base, &live);
    return _mm512_mask_blend_ps(live, _mm512_set1_ps(-INFINITY), x);
}

/* As the AVX2 kernel (the same terms, max and exponentials; the double
 * sum in another order, within the bound's rounding margin), without
 * staging the terms: twice the lanes per instruction. */
AVX512 static float terms_max_avx512(const ix_terms *a)
{
    size_t n16 = a->n & ~(size_t)15, G = a->G;
    __m512 vs = _mm512_set1_ps(a->scale), vq = _mm512_set1_ps(a->rq), mx = _mm512_set1_ps(-INFINITY);
    for (size_t i = 0, g = 0, gi = 0; i < n16; i += 16) {   /* base by a counter, as in the AVX2 kernel */
        mx = _mm512_max_ps(mx, terms16(a, i, vs, vq, _mm512_set1_ps(a->base[g])));
        if ((gi += 16) == G) { gi = 0; g++; }
    }
    float m = _mm512_reduce_max_ps(mx);
    for (size_t i = n16; i < a->n; i++) {
        float x = term(a, i);
        m = x > m ? x : m;
    }
    return m;
}

/* The exponentials summed in f32, 8 vectors at a time (each lane at most
 * 8 terms of at most e^80: relative error at most 7 2^-24 of their sum,
 * inside IX_EXP_REL), then in double: the conversions and double adds of
 * every vector were 5 of its instructions. */
#define SUM_F32_RUN 8
AVX512 static double terms_sum_avx512(const ix_terms *a, float m)
{
    size_t n16 = a->n & ~(size_t)15, G = a->G;
    __m512 vs = _mm512_set1_ps(a->scale), vq = _mm512_set1_ps(a->rq), vm = _mm512_set1_ps(m);
    __m512 cl = _mm512_set1_ps(TERM_CLAMP), fs = _mm512_setzero_ps();
    __m512d x = _mm512_setzero_pd(), y = _mm512_setzero_pd();
    int run = 0;
    for (size_t i = 0, g = 0, gi = 0; i < n16; i += 16) {
        __mmask16 live;
        __m512 t = lifted16(a, i, vs, vq, _mm512_set1_ps(a->base[g]), &live);
        if ((gi += 16) == G) { gi = 0; g++; }
        fs = _mm512_add_ps(fs, exp16(_mm512_min_ps(_mm512_sub_ps(t, vm), cl), live));
        if (++run == SUM_F32_RUN) {
            x = _mm512_add_pd(x, _mm512_cvtps_pd(_mm512_castps512_ps256(fs)));
            y = _mm512_add_pd(y, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(fs), 1))));
            fs = _mm512_setzero_ps();
            run = 0;
        }
    }
    x = _mm512_add_pd(x, _mm512_cvtps_pd(_mm512_castps512_ps256(fs)));
    y = _mm512_add_pd(y, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(fs), 1))));
    double sum = _mm512_reduce_add_pd(_mm512_add_pd(x, y));
    if (n16 < a->n) {
        float u[16];
        size_t len = a->n - n16;
        for (size_t j = 0; j < len; j++) u[j] = fminf(term(a, n16 + j) - m, TERM_CLAMP);
        sum += sum_exp_avx2(u, len);
    }
    return sum;
}

AVX512 static double sum_exp_terms_avx512(const ix_terms *a, float *m_out)
{
    if (a->G % 16) return sum_exp_terms_avx2(a, m_out);   /* 16 lanes need one base */
    return terms_drive(a, m_out, terms_max_avx512, terms_sum_avx512);
}
#endif

/* ---- dispatch ------------------------------------------------------------------------------ */
/* One version of every kernel. */
typedef struct {
    void (*score)(const uint16_t *, size_t, size_t, size_t, const float *, int, float *, size_t, int);
    double (*sumexp)(const float *, size_t);
    double (*terms)(const ix_terms *, float *);
    void (*rowsmax)(const float *, size_t, int, const size_t *, size_t, size_t, float *);
    size_t (*atleast)(const float *, size_t, float, uint32_t *);
    void (*lsemix)(float *, const float *, size_t, size_t, float, float, float);
    void (*rowslse)(const float *, size_t, int, const size_t *, size_t, size_t, float, const float *, float *);
    double (*exprow)(const float *, size_t, float, float *, float *);
    void (*combine)(const float *, size_t, int, const size_t *, size_t, size_t, const float *, float *);
    const char *name;
} kernel_set;

static const kernel_set k_portable = { score_h_portable, sum_exp_portable, sum_exp_terms_portable,
                                       rows_max_portable, at_least_portable, lse_mix_portable,
                                       rows_lse_portable, exp_row_portable, mass_combine_portable, "portable" };
#ifdef IX_HAVE_AVX2
static const kernel_set k_avx2 = { score_h_avx2, sum_exp_avx2, sum_exp_terms_avx2, rows_max_avx2, at_least_avx2,
                                   lse_mix_avx2, rows_lse_avx2, exp_row_avx2, mass_combine_avx2, "avx2" };
#endif
static kernel_set k = { score_h_portable, sum_exp_portable, sum_exp_terms_portable, rows_max_portable,
                        at_least_portable, lse_mix_portable, rows_lse_portable, exp_row_portable,
                        mass_combine_portable, "portable" };
static int k_cpu_avx2, k_cpu_avx512;
static pthread_once_t k_once = PTHREAD_ONCE_INIT;

/* portable: 1 portable, 2 AVX2 at most, 0 the best. */
static void choose(int portable)
{
    k = k_portable;
#ifdef IX_HAVE_AVX2
    if (portable != 1 && k_cpu_avx2) k = k_avx2;
    if (!portable && k_cpu_avx512) {
        k.terms = sum_exp_terms_avx512;
        k.name = "avx512";
    }
#else
    (void)portable;
#endif
}

static void kernels_init(void)
{
    lut_init();
#ifdef IX_HAVE_AVX2
    __builtin_cpu_init();
    unsigned eax, ebx, ecx = 0, edx;
    int f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29));   /* not every compiler names it */
    k_cpu_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
    k_cpu_avx512 = k_cpu_avx2 && __builtin_cpu_supports("avx512f");
#endif
    choose(0);
}

static int simd_cap = 2;   /* int8 quest kernels: up to AVX-512 VNNI */

int ix_simd_cap(void) { return simd_cap; }

int ix_simd_has_avx2(void)
{
    pthread_once(&k_once, kernels_init);
#ifdef IX_HAVE_AVX2
    return k_cpu_avx2;
#else
    return 0;
#endif
}

const char *eg_index_kernels(int force_portable)
{
    static char name[64];
    pthread_once(&k_once, kernels_init);
    if (force_portable >= 0) {
        choose(force_portable);
        simd_cap = force_portable == 1 ? 0 : force_portable == 2 ? 1 : 2;
    }
    snprintf(name, sizeof name, "%s/%s", k.name, ix_q8_kernel_name(simd_cap));
    return name;
}

void ix_score_rows_h(const uint16_t *tab, size_t s0, size_t s1, size_t width, const float *qp, int nr,
                     float *out, size_t ld, int clamp)
{
    pthread_once(&k_once, kernels_init);
    if (s1 > s0) k.score(tab, s0, s1, width, qp, nr, out, ld, clamp);
}

double ix_sum_exp(const float *u, size_t n)
{
    pthread_once(&k_once, kernels_init);
    return k.sumexp(u, n);
}

double ix_sum_exp_lifted(const ix_terms *a, float *m)
{
    pthread_once(&k_once, kernels_init);
    if (a->G == 0 || a->G % 8) {
        ix_terms b = *a;
        b.G = a->G ? a->G : 1;
        return sum_exp_terms_portable(&b, m);
    }
    return k.terms(a, m);
}

double ix_sum_exp_terms(const float *sc, const uint8_t *skip, size_t n, float scale, const float *base,
                        size_t G, float *m)
{
    ix_terms a = { sc, skip, n, scale, base, G, NULL, 0.0f, NAN };
    return ix_sum_exp_lifted(&a, m);
}

void ix_rows_max(const float *sc, size_t ld, int nr, const size_t *vis, size_t a, size_t n, float *agg)
{
    pthread_once(&k_once, kernels_init);
    k.rowsmax(sc, ld, nr, vis, a, n, agg);
}

size_t ix_at_least(const float *v, size_t n, float thr, uint32_t *idx)
{
    pthread_once(&k_once, kernels_init);
    return k.atleast(v, n, thr, idx);
}

void ix_lse_mix(float *o, const float *x, size_t n, size_t m, float tau, float bias, float tau_out)
{
    pthread_once(&k_once, kernels_init);
    k.lsemix(o, x, n, m, tau, bias, tau_out);
}

void ix_rows_lse(const float *sc, size_t ld, int nr, const size_t *vis, size_t a, size_t n, float gain,
                 const float *shift, float *agg)
{
    pthread_once(&k_once, kernels_init);
    k.rowslse(sc, ld, nr, vis, a, n, gain, shift, agg);
}

double ix_exp_row(const float *x, size_t n, float gain, float *e, float *m)
{
    pthread_once(&k_once, kernels_init);
    return k.exprow(x, n, gain, e, m);
}

void ix_mass_combine(const float *e, size_t ld, int nr, const size_t *vis, size_t a, size_t n, const float *w,
                     float *agg)
{
    pthread_once(&k_once, kernels_init);
    k.combine(e, ld, nr, vis, a, n, w, agg);
}
