/* codec_kernels.c: the decode loops of the q8, q4 and f16 codecs, as
 * portable C and as AVX2 and AVX-512 versions chosen at run time.
 *
 * Every version gives the same bits: each element is one IEEE operation
 * (q8: code * scale in f32; q4: min + code * step in double, exact for the
 * product since code < 16, then clamped to +-FLT_MAX and rounded to f32;
 * f16: an exact widening). That matters beyond speed: the router's
 * summaries are computed from the decoded keys when a segment is sealed,
 * and stay upper bounds only if every later decode, on any machine, gives
 * those keys again. tests/test_codec_bounds.c checks each version against
 * a plain loop and against the others, bit for bit.
 *
 * Layouts are codec.c's. The callers have checked the parameters (scales
 * finite and >= 0, q4 minimums finite). */
#include "internal.h"
#include <float.h>
#include <pthread.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define EG_HAVE_X86 1
#endif

#define GROUP 32

static inline float rd_f32(const unsigned char *p) { float f; memcpy(&f, p, 4); return f; }

static inline float q4_value(double mn, unsigned q, double step)
{
    double v = mn + q * step;
    return (float)(v > FLT_MAX ? FLT_MAX : v < -FLT_MAX ? -FLT_MAX : v);
}

/* Scales at the top of the range: the product is kept finite. */
static void q8_group_big(const int8_t *q, size_t len, float s, float *o)
{
    for (size_t c = 0; c < len; c++) {
        double v = (double)q[c] * s;
        o[c] = (float)(v > FLT_MAX ? FLT_MAX : v < -FLT_MAX ? -FLT_MAX : v);
    }
}

/* Every q8 group of a tile through grp (a version's loop over one group's
 * len <= 32 codes); groups with scales at the top of the range apart. */
typedef void (*q8_group_fn)(const int8_t *q, size_t len, float s, float *o);
static void q8_tile(const unsigned char *src, uint32_t n, uint32_t d, float *x, q8_group_fn grp)
{
    size_t ng = (d + GROUP - 1) / GROUP;
    const int8_t *codes = (const int8_t *)(src + (size_t)n * ng * 4);
    for (uint32_t t = 0; t < n; t++)
        for (size_t g = 0; g < ng; g++) {
            float s = rd_f32(src + ((size_t)t * ng + g) * 4);
            size_t c0 = g * GROUP, len = c0 + GROUP < d ? GROUP : d - c0;
            const int8_t *q = codes + (size_t)t * d + c0;
            float *o = x + (size_t)t * d + c0;
            if (s > FLT_MAX / 128) q8_group_big(q, len, s, o);
            else grp(q, len, s, o);
        }
}

/* ---- portable ---------------------------------------------------------------- */
static void q8_group_portable(const int8_t *q, size_t len, float s, float *o)
{
    for (size_t c = 0; c < len; c++) o[c] = (float)q[c] * s;
}

static void q8_portable(const unsigned char *src, uint32_t n, uint32_t d, float *x)
{
    q8_tile(src, n, d, x, q8_group_portable);
}

/* Keys: (min, step) per channel per 32 tokens; codes in element order. */
static void q4k_portable(const unsigned char *src, uint32_t n, uint32_t d, float *x)
{
    size_t nb = (n + GROUP - 1) / GROUP;
    const unsigned char *codes = src + nb * d * 8;
    for (size_t j = 0; j < nb; j++) {
        const unsigned char *par = src + j * d * 8;
        size_t t1 = j * GROUP + GROUP < n ? j * GROUP + GROUP : n;
        for (size_t t = j * GROUP; t < t1; t++)
            for (size_t c = 0; c < d; c++) {
                size_t idx = t * d + c;
                unsigned q = (codes[idx / 2] >> ((idx & 1) * 4)) & 15;
                x[idx] = q4_value(rd_f32(par + c * 8), q, rd_f32(par + c * 8 + 4));
            }
    }
}

/* Values: (min, step) per token per 32 channels. */
static void q4v_portable(const unsigned char *src, uint32_t n, uint32_t d, float *x)
{
    size_t ng = (d + GROUP - 1) / GROUP;
    const unsigned char *codes = src + (size_t)n * ng * 8;
    for (size_t t = 0; t < n; t++)
        for (size_t g = 0; g < ng; g++) {
            const unsigned char *par = src + (t * ng + g) * 8;
            double mn = rd_f32(par), step = rd_f32(par + 4);
            size_t c1 = g * GROUP + GROUP < d ? g * GROUP + GROUP : d;
            for (size_t c = g * GROUP; c < c1; c++) {
                size_t idx = t * d + c;
                x[idx] = q4_value(mn, (codes[idx / 2] >> ((idx & 1) * 4)) & 15, step);
            }
        }
}

static inline float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 31, m = h & 1023, bits;
    if (e == 0) {
        float f = (float)m * (1.0f / 16777216.0f);
        return sign ? -f : f;
    }
    bits = sign | ((e + 112) << 23) | (m << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Returns the index of the first half that is Inf or NaN, or n. */
static size_t f16_portable(const unsigned char *p, size_t n, float *x)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t h = (uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
        if ((h & 0x7c00) == 0x7c00) return i;
        x[i] = half_to_float(h);
    }
    return n;
}

/* ---- AVX2 (with F16C) ----------------------------------------------------------- */
#ifdef EG_HAVE_X86
#define T_AVX2 __attribute__((target("avx2,f16c")))
#define T_AVX512 __attribute__((target("avx512f,avx512bw,avx2,f16c")))

T_AVX2 static void q8_group_avx2(const int8_t *q, size_t len, float s, float *o)
{
    __m256 vs = _mm256_set1_ps(s);
    size_t c = 0;
    for (; c + 8 <= len; c += 8) {
        __m128i b = _mm_loadl_epi64((const __m128i *)(q + c));
        _mm256_storeu_ps(o + c, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), vs));
    }
    for (; c < len; c++) o[c] = (float)q[c] * s;
}

static void q8_avx2(const unsigned char *src, uint32_t n, uint32_t d, float *x)
{
    q8_tile(src, n, d, x, q8_group_avx2);
}

/* 16 bytes of codes -> 32 codes, one per byte, in element order. */
T_AVX2 static inline void nibbles32(const unsigned char *p, unsigned char out[32])
{
    __m128i b = _mm_loadu_si128((const __m128i *)p), m = _mm_set1_epi8(15);
    __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    _mm_storeu_si128((__m128i *)out, _mm_unpacklo_epi8(lo, hi));
    _mm_storeu_si128((__m128i *)(out + 16), _mm_unpackhi_epi8(lo, hi));
}

/* 4 codes -> 4 floats: min + q * step in double (the product is exact, so
 * no fused multiply-add is needed for the bits to match), clamped, rounded. */
T_AVX2 static inline __m128 q4_4_avx2(const unsigned char *q, __m256d mn, __m256d st)
{
    int32_t w;
    memcpy(&w, q, 4);
    __m256d v = _mm256_add_pd(_mm256_mul_pd(_mm256_cvtepi32_pd(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(w))), st), mn);
    v = _mm256_min_pd(_mm256_max_pd(v, _mm256_set1_pd(-FLT_MAX)), _mm256_set1_pd(FLT_MAX));
    return _mm256_cvtpd_ps(v);
}

/* The two q4 layouts, for a vector width W: values (one min and step per
 * 32 channels of a token, broadcast) and keys (per channel over 32 tokens,
 * loaded). CONV turns W codes into W floats. */
#define Q4_KERNELS(SUF, TGT, W, VD, SETP, LOADP, CONV, STORE)                                  \
    TGT static void q4v_##SUF(const unsigned char *src, uint32_t n, uint32_t d, float *x)        \
    {                                                                                           \
        if (d % GROUP) { q4v_portable(src, n, d, x); return; }                                  \
        size_t ng = d / GROUP;                                                                  \
        const unsigned char *codes = src + (size_t)n * ng * 8;                                  \
        unsigned char e[32];                                                                    \
        for (size_t t = 0; t < n; t++)                                                          \
            for (size_t g = 0; g < ng; g++) {                                                   \
                const unsigned char *par = src + (t * ng + g) * 8;                              \
                VD vm = SETP(rd_f32(par)), vt = SETP(rd_f32(par + 4));                          \
                float *o = x + t * d + g * GROUP;                                               \
                nibbles32(codes + (t * d + g * GROUP) / 2, e);                                  \
                for (int k = 0; k < 32; k += W) STORE(o + k, CONV(e + k, vm, vt));              \
            }                                                                                   \
    }                                                                                           \
    TGT static void q4k_##SUF(const unsigned char *src, uint32_t n, uint32_t d, float *x)        \
    {                                                                                           \
        if (d % GROUP) { q4k_portable(src, n, d, x); return; }                                  \
        size_t nb = (n + GROUP - 1) / GROUP;                                                    \
        const unsigned char *codes = src + nb * d * 8;                                          \
        double mn[EG_HEAD_DIM_MAX], st[EG_HEAD_DIM_MAX];                                        \
        unsigned char e[32];                                                                    \
        for (size_t j = 0; j < nb; j++) {                                                       \
            const unsigned char *par = src + j * d * 8;                                         \
            for (size_t c = 0; c < d; c++) { mn[c] = rd_f32(par + c * 8); st[c] = rd_f32(par + c * 8 + 4); } \
            size_t t1 = j * GROUP + GROUP < n ? j * GROUP + GROUP : n;                          \
            for (size_t t = j * GROUP; t < t1; t++) {                                           \
                const unsigned char *cb = codes + t * d / 2;                                    \
                float *o = x + t * d;                                                           \
                for (size_t c = 0; c < d; c += 32) {                                            \
                    nibbles32(cb + c / 2, e);                                                   \
                    for (size_t k = 0; k < 32; k += W)                                          \
                        STORE(o + c + k, CONV(e + k, LOADP(mn + c + k), LOADP(st + c + k)));    \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
    }
Q4_KERNELS(avx2, T_AVX2, 4, __m256d, _mm256_set1_pd, _mm256_loadu_pd, q4_4_avx2, _mm_storeu_ps)

T_AVX2 static size_t f16_avx2(const unsigned char *p, size_t n, float *x)
{
    size_t i = 0;
    const __m128i em = _mm_set1_epi16(0x7c00);
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(p + 2 * i));
        if (_mm_movemask_epi8(_mm_cmpeq_epi16(_mm_and_si128(h, em), em))) break;
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(h));
    }
    size_t r = f16_portable(p + 2 * i, n - i, x + i);
    return i + r;
}

/* ---- AVX-512 ----------------------------------------------------------------------- */
T_AVX512 static void q8_avx512(const unsigned char *src, uint32_t n, uint32_t d, float *x)
{
    if (d % GROUP) { q8_avx2(src, n, d, x); return; }
    size_t ng = d / GROUP;
    const int8_t *codes = (const int8_t *)(src + (size_t)n * ng * 4);
    for (uint32_t t = 0; t < n; t++)
        for (size_t g = 0; g < ng; g++) {
            float s = rd_f32(src + ((size_t)t * ng + g) * 4);
            const int8_t *q = codes + (size_t)t * d + g * GROUP;
            float *o = x + (size_t)t * d + g * GROUP;
            if (s > FLT_MAX / 128) { q8_group_big(q, GROUP, s, o); continue; }
            __m512 vs = _mm512_set1_ps(s);
            __m128i b0 = _mm_loadu_si128((const __m128i *)q), b1 = _mm_loadu_si128((const __m128i *)(q + 16));
            _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b0)), vs));
            _mm512_storeu_ps(o + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b1)), vs));
        }
}

/* 8 codes -> 8 floats, as q4_4_avx2. */
T_AVX512 static inline __m256 q4_8_avx512(const unsigned char *q, __m512d mn, __m512d st)
{
    __m128i b = _mm_loadl_epi64((const __m128i *)q);
    __m512d v = _mm512_add_pd(_mm512_mul_pd(_mm512_cvtepi32_pd(_mm256_cvtepu8_epi32(b)), st), mn);
    v = _mm512_min_pd(_mm512_max_pd(v, _mm512_set1_pd(-FLT_MAX)), _mm512_set1_pd(FLT_MAX));
    return _mm512_cvtpd_ps(v);
}

/* Whether min + q step (q < 16) is exact in double and far from
 * overflow, so that one fused multiply-add in f32 rounds it once, as the
 * double path does (mn + q step exact, then rounded to f32, no clamp
 * needed): mn and step are 24-bit significands, q step spans at most 28
 * bits, so their sum fits double's 53 when the two units in the last
 * place are at most 2^24 apart. Else the double path decides, and may
 * round twice (the tests hold such a group). */
static inline int q4_fma_exact(float mn, float step)
{
    uint32_t a, b;
    memcpy(&a, &mn, 4);
    memcpy(&b, &step, 4);
    int ea = (int)((a >> 23) & 255), eb = (int)((b >> 23) & 255);
    if (ea >= 253 || eb >= 250) return 0;   /* |mn| + 15 step may near FLT_MAX */
    if (!(a & 0x7fffffffu) || !b) return 1;   /* a zero: the sum is the other term, exact */
    ea = ea ? ea : 1;                         /* subnormals: the smallest unit */
    eb = eb ? eb : 1;
    return ea - eb <= 24 && eb - ea <= 24;
}

/* 16 codes (bytes 0..15 of e) -> 16 floats, fma(q, step, min). */
T_AVX512 static inline __m512 q4_16_fma(const unsigned char *e, __m512 mn, __m512 st)
{
    __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)e)));
    return _mm512_fmadd_ps(q, st, mn);
}

/* The q4 decodes with the f32 path where q4_fma_exact holds (groups of
 * the encoder's own output, in practice every one), in 16 lanes of f32
 * where the double path takes 8 and a clamp: the decode was a quarter of
 * a 9/3/64 q4 decode step. Same bits (tests/test_codec_bounds.c). */
T_AVX512 static void q4v_avx512(const unsigned char *src, uint32_t n, uint32_t d, float *x)
{
    if (d % GROUP) { q4v_portable(src, n, d, x); return; }
    size_t ng = d / GROUP;
    const unsigned char *codes = src + (size_t)n * ng * 8;
    unsigned char e[32];
    for (size_t t = 0; t < n; t++)
        for (size_t g = 0; g < ng; g++) {
            const unsigned char *par = src + (t * ng + g) * 8;
            float mn = rd_f32(par), st = rd_f32(par + 4), *o = x + t * d + g * GROUP;
            nibbles32(codes + (t * d + g * GROUP) / 2, e);
            if (q4_fma_exact(mn, st)) {
                __m512 vm = _mm512_set1_ps(mn), vt = _mm512_set1_ps(st);
                _mm512_storeu_ps(o, q4_16_fma(e, vm, vt));
                _mm512_storeu_ps(o + 16, q4_16_fma(e + 16, vm, vt));
            } else {
                __m512d dm = _mm512_set1_pd(mn), dt = _mm512_set1_pd(st);
                for (int k = 0; k < 32; k += 8) _mm256_storeu_ps(o + k, q4_8_avx512(e + k, dm, dt));
            }
        }
}

T_AVX512 static void q4k_avx512(const unsigned char *src, uint32_t n, uint32_t d, float *x)
{
    if (d % GROUP) { q4k_portable(src, n, d, x); return; }
    size_t nb = (n + GROUP - 1) / GROUP;
    const unsigned char *codes = src + nb * d * 8;
    float mn[EG_HEAD_DIM_MAX], st[EG_HEAD_DIM_MAX];
    unsigned char e[32];
    for (size_t j = 0; j < nb; j++) {
        const unsigned char *par = src + j * d * 8;
        int fast = 1;
        for (size_t c = 0; c < d; c++) {
            mn[c] = rd_f32(par + c * 8);
            st[c] = rd_f32(par + c * 8 + 4);
            fast &= q4_fma_exact(mn[c], st[c]);
        }
        if (!fast) {   /* this block of 32 tokens by the double path */
            size_t t0 = j * GROUP, t1 = t0 + GROUP < n ? t0 + GROUP : n;
            for (size_t t = t0; t < t1; t++) {
                const unsigned char *cb = codes + t * d / 2;
                float *o = x + t * d;
                for (size_t c = 0; c < d; c += 32) {
                    nibbles32(cb + c / 2, e);
                    for (size_t k = 0; k < 32; k += 8) {
                        __m512d dm = _mm512_cvtps_pd(_mm256_loadu_ps(mn + c + k));
                        __m512d dt = _mm512_cvtps_pd(_mm256_loadu_ps(st + c + k));
                        _mm256_storeu_ps(o + c + k, q4_8_avx512(e + k, dm, dt));
                    }
                }
            }
            continue;
        }
        size_t t1 = j * GROUP + GROUP < n ? j * GROUP + GROUP : n;
        for (size_t t = j * GROUP; t < t1; t++) {
            const unsigned char *cb = codes + t * d / 2;
            float *o = x + t * d;
            for (size_t c = 0; c < d; c += 32) {
                nibbles32(cb + c / 2, e);
                _mm512_storeu_ps(o + c, q4_16_fma(e, _mm512_loadu_ps(mn + c), _mm512_loadu_ps(st + c)));
                _mm512_storeu_ps(o + c + 16, q4_16_fma(e + 16, _mm512_loadu_ps(mn + c + 16), _mm512_loadu_ps(st + c + 16)));
            }
        }
    }
}
#endif

/* ---- dispatch ------------------------------------------------------------------------ */
typedef struct {
    const char *name;
    void (*q8)(const unsigned char *, uint32_t, uint32_t, float *);
    void (*q4k)(const unsigned char *, uint32_t, uint32_t, float *);
    void (*q4v)(const unsigned char *, uint32_t, uint32_t, float *);
    size_t (*f16)(const unsigned char *, size_t, float *);
} kset;

static const kset k_portable = {"portable", q8_portable, q4k_portable, q4v_portable, f16_portable};
#ifdef EG_HAVE_X86
static const kset k_avx2 = {"avx2", q8_avx2, q4k_avx2, q4v_avx2, f16_avx2};
static const kset k_avx512 = {"avx512", q8_avx512, q4k_avx512, q4v_avx512, f16_avx2};
#endif
static const kset *k_cur = &k_portable;
static int cpu_level;   /* 0 portable, 1 avx2, 2 avx512 */
static pthread_once_t k_once = PTHREAD_ONCE_INIT;

static void choose(int level)
{
    k_cur = &k_portable;
#ifdef EG_HAVE_X86
    if (level >= 2) k_cur = &k_avx512;
    else if (level == 1) k_cur = &k_avx2;
#else
    (void)level;
#endif
}

static void kernels_init(void)
{
#ifdef EG_HAVE_X86
    __builtin_cpu_init();
    unsigned eax, ebx, ecx = 0, edx;
    int f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29));
    if (f16c && __builtin_cpu_supports("avx2")) cpu_level = 1;
    if (cpu_level == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) cpu_level = 2;
#endif
    choose(cpu_level);
}

const char *eg_codec_kernels(int which)
{
    pthread_once(&k_once, kernels_init);
    if (which == 0) choose(cpu_level);
    else if (which == 1) choose(0);
    else if (which == 2) choose(cpu_level < 1 ? cpu_level : 1);
    return k_cur->name;
}

void eg_kern_q8(const unsigned char *src, uint32_t n, uint32_t d, float *x)
{
    pthread_once(&k_once, kernels_init);
    k_cur->q8(src, n, d, x);
}

void eg_kern_q4(int kind, const unsigned char *src, uint32_t n, uint32_t d, float *x)
{
    pthread_once(&k_once, kernels_init);
    if (kind == EG_KIND_K) k_cur->q4k(src, n, d, x);
    else k_cur->q4v(src, n, d, x);
}

size_t eg_kern_f16(const unsigned char *src, size_t n, float *x)
{
    pthread_once(&k_once, kernels_init);
    return k_cur->f16(src, n, x);
}
