/* codec.c: dtype conversion (f16, bf16) and the block codecs f32, f16, q8, q4.
 *
 * A tile is n rows (tokens) of d values, row-major f32: x[t*d + c].
 * Encoded layouts (little-endian, no alignment assumed: read with memcpy):
 *  f32: the tile as is.
 *  f16: the tile as IEEE half, round to nearest even.
 *  q8 : scales f32 [n][ceil(d/32)], then codes int8 [n][d];
 *       group g of row t holds x[t][32g .. 32g+31]; x' = q * scale.
 *  q4 : keys (EG_KIND_K): params [ceil(n/32)][d] x (min f32, step f32), the
 *       group of channel c running over tokens 32j .. 32j+31;
 *       values (EG_KIND_V): params [n][ceil(d/32)] x (min, step) along dim;
 *       then codes, 4 bits per element in x's order, element 2i in the low
 *       nibble of byte i; x' = min + q * step, q in 0..15.
 * Bounds: q8 |x - x'| <= scale/2 and q4 <= step/2, each plus float rounding
 * (a relative 2^-20 of the group's range), which eg_codec_error_bound adds. */
#include "internal.h"
#include <float.h>
#include <math.h>
#include <string.h>

#define GROUP 32
#define TILE_TOKENS_MAX 4096
#define SLACK (1.0 / 1048576.0)   /* 2^-20: float rounding of decode */

/* ---- conversions -------------------------------------------------------- */
float eg_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 31, m = h & 1023, bits;
    if (e == 0) {
        float f = (float)m * (1.0f / 16777216.0f);    /* subnormal: m * 2^-24, exact */
        return sign ? -f : f;
    }
    if (e == 31) bits = sign | 0x7f800000u | (m << 13);
    else bits = sign | ((e + 112) << 23) | (m << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t eg_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0);
    if (ax >= 0x477ff000u) return sign | 0x7c00;            /* >= 65520 rounds to inf */
    if (ax < 0x38800000u) {                                 /* below 2^-14: subnormal */
        float a;
        memcpy(&a, &ax, 4);
        /* a * 2^24 in [0, 1024): rintf rounds to nearest even. */
        return sign | (uint16_t)rintf(a * 16777216.0f);
    }
    uint32_t e = (ax >> 23) - 112, m = ax & 0x7fffff;
    uint32_t h = e << 10 | m >> 13, rest = m & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;  /* carries into the exponent correctly */
    return sign | (uint16_t)h;
}

float eg_bf16_to_f32(uint16_t h)
{
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

uint16_t eg_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(x >> 16 | 0x40);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

int eg_convert_to_f32(int dtype, const void *src, size_t n, float *dst)
{
    const unsigned char *p = src;
    if (dtype == EG_DTYPE_F32) memcpy(dst, src, n * 4);
    else if (dtype == EG_DTYPE_F16) {
        size_t bad = eg_kern_f16(src, n, dst);
        if (bad < n)
            return eg_mem_fail(EG_ENONFINITE, "%s at element %zu", (p[2 * bad + 1] & 3) || p[2 * bad] ? "NaN" : "Inf",
                               bad);
        return 0;
    } else if (dtype == EG_DTYPE_BF16)
        for (size_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, p + 2 * i, 2); dst[i] = eg_bf16_to_f32(h); }
    else return eg_mem_fail(EG_EDTYPE, "unknown dtype %d", dtype);
    /* One pass for NaN/Inf: the common case (all finite) stays a tight loop. */
    /* Exponent all ones is NaN or Inf: one integer test per value. */
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &dst[i], 4);
        bad |= (b & 0x7f800000u) == 0x7f800000u;
    }
    if (bad)
        for (size_t i = 0; i < n; i++)
            if (!isfinite(dst[i]))
                return eg_mem_fail(EG_ENONFINITE, "%s at element %zu", isnan(dst[i]) ? "NaN" : "Inf", i);
    return 0;
}

/* ---- sizes -------------------------------------------------------------- */
static const char *const names[EG_CODEC_COUNT] = {"f32", "f16", "q8", "q4"};

const char *eg_codec_name(int codec) { return codec >= 0 && codec < EG_CODEC_COUNT ? names[codec] : NULL; }

int eg_codec_parse(const char *name)
{
    for (int i = 0; name && i < EG_CODEC_COUNT; i++)
        if (strcmp(name, names[i]) == 0) return i;
    return eg_mem_fail(EG_ECODEC, "unknown codec '%s' (f32, f16, q8, q4)", name ? name : "(null)");
}

static size_t cdiv(size_t a, size_t b) { return (a + b - 1) / b; }

/* Number of (min, step) pairs or scales of a tile. */
static size_t n_params(int codec, int kind, uint32_t n, uint32_t d)
{
    if (codec == EG_CODEC_Q8) return (size_t)n * cdiv(d, GROUP);
    if (kind == EG_KIND_K) return cdiv(n, GROUP) * d;
    return (size_t)n * cdiv(d, GROUP);
}

int eg_codec_size(int codec, int kind, uint32_t n, uint32_t d, size_t *out)
{
    if (!eg_codec_name(codec)) return eg_mem_fail(EG_ECODEC, "unknown codec %d", codec);
    if (kind != EG_KIND_K && kind != EG_KIND_V) return eg_mem_fail(EG_EINVAL, "unknown kind %d", kind);
    if (!n || !d || n > TILE_TOKENS_MAX || d > EG_HEAD_DIM_MAX)
        return eg_mem_fail(EG_EINVAL, "tile of %u x %u out of range", n, d);
    size_t e = (size_t)n * d;
    switch (codec) {
    case EG_CODEC_F32: *out = e * 4; break;
    case EG_CODEC_F16: *out = e * 2; break;
    case EG_CODEC_Q8: *out = n_params(codec, kind, n, d) * 4 + e; break;
    default: *out = n_params(codec, kind, n, d) * 8 + cdiv(e, 2); break;
    }
    return 0;
}

/* ---- q8 ----------------------------------------------------------------- */
static float q8_scale(float amax)
{
    if (amax == 0) return 0;
    float s = amax / 127.0f;
    /* Rounded up so that |x|/s <= 127 holds and no code clamps; below the
     * subnormal range the scale is amax itself (codes -1, 0, 1). */
    if (s == 0) return amax;
    while ((double)s * 127.0 < (double)amax) s = nextafterf(s, INFINITY);
    return s;
}

/* Round to nearest even for |v| < 2^22 with plain adds, so that the loop
 * vectorises without SSE4.1 (rintf would be a library call). */
#define ROUND_MAGIC 12582912.0f   /* 1.5 * 2^23 */

static void q8_encode(const float *x, uint32_t n, uint32_t d, unsigned char *dst)
{
    size_t ng = cdiv(d, GROUP);
    unsigned char *scales = dst;
    int8_t *codes = (int8_t *)(dst + (size_t)n * ng * 4);
    for (uint32_t t = 0; t < n; t++)
        for (size_t g = 0; g < ng; g++) {
            size_t c0 = g * GROUP, len = c0 + GROUP < d ? GROUP : d - c0;
            const float *r = x + (size_t)t * d + c0;
            int8_t *q = codes + (size_t)t * d + c0;
            float amax = 0;
            for (size_t c = 0; c < len; c++) {   /* finite input: no fmaxf call */
                float a = fabsf(r[c]);
                amax = a > amax ? a : amax;
            }
            float s = q8_scale(amax);
            memcpy(scales + ((size_t)t * ng + g) * 4, &s, 4);
            if (s == 0) { memset(q, 0, len); continue; }
            /* |r/s| <= 127; r*inv is within 127 * 2^-23 of the exact quotient,
             * inside the documented slack of 127 * 2^-20 steps. */
            if (s < 0x1p-100f) {
                /* Tiny scales: 1/s would overflow or lose bits; divide. */
                for (size_t c = 0; c < len; c++) {
                    float v = (r[c] / s + ROUND_MAGIC) - ROUND_MAGIC;
                    q[c] = (int8_t)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
                }
                continue;
            }
            float inv = 1.0f / s;
            for (size_t c = 0; c < len; c++) {
                float v = (r[c] * inv + ROUND_MAGIC) - ROUND_MAGIC;
                v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
                q[c] = (int8_t)v;
            }
        }
}

static int q8_decode(const unsigned char *src, uint32_t n, uint32_t d, float *x)
{
    size_t ng = cdiv(d, GROUP);
    for (size_t i = 0; i < (size_t)n * ng; i++) {
        float s;
        memcpy(&s, src + i * 4, 4);
        if (!(s >= 0 && s <= FLT_MAX))
            return eg_mem_fail(EG_ECORRUPT, "q8 tile: scale of row %zu group %zu is not finite", i / ng, i % ng);
    }
    eg_kern_q8(src, n, d, x);
    return 0;
}

/* ---- q4 ----------------------------------------------------------------- */
/* Element index list of group (a, b): keys run a channel over tokens. */
static void q4_group(int kind, uint32_t n, uint32_t d, size_t gi, size_t *first, size_t *stride,
                     size_t *count)
{
    if (kind == EG_KIND_K) {
        size_t j = gi / d, c = gi % d;
        size_t t0 = j * GROUP, t1 = t0 + GROUP < n ? t0 + GROUP : n;
        *first = t0 * d + c; *stride = d; *count = t1 - t0;
    } else {
        size_t ng = cdiv(d, GROUP), t = gi / ng, g = gi % ng;
        size_t c0 = g * GROUP, c1 = c0 + GROUP < d ? c0 + GROUP : d;
        *first = t * d + c0; *stride = 1; *count = c1 - c0;
    }
}

static void q4_encode(int kind, const float *x, uint32_t n, uint32_t d, unsigned char *dst)
{
    size_t np = n_params(EG_CODEC_Q4, kind, n, d), e = (size_t)n * d;
    unsigned char *codes = dst + np * 8;
    memset(codes, 0, cdiv(e, 2));
    for (size_t gi = 0; gi < np; gi++) {
        size_t f, st, cnt;
        q4_group(kind, n, d, gi, &f, &st, &cnt);
        float mn = x[f], mx = x[f];
        for (size_t i = 1; i < cnt; i++) {
            float v = x[f + i * st];
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        }
        double range = (double)mx - (double)mn;
        float step = (float)(range / 15.0);
        while ((double)step * 15.0 < range) step = nextafterf(step, INFINITY);
        memcpy(dst + gi * 8, &mn, 4);
        memcpy(dst + gi * 8 + 4, &step, 4);
        double inv = step > 0 ? 1.0 / step : 0;
        for (size_t i = 0; i < cnt; i++) {
            size_t idx = f + i * st;
            double q = nearbyint(((double)x[idx] - mn) * inv);
            unsigned v = (unsigned)(q > 15 ? 15 : q < 0 ? 0 : q);
            codes[idx / 2] |= (unsigned char)(v << ((idx & 1) * 4));
        }
    }
}

/* 1 if q4 group parameters p (min, step) are bad: min not finite, or step
 * not in [0, FLT_MAX] (-0 passes, as step >= 0 does). On the bits and
 * branch-free, so that the loop over every group vectorises. */
static inline uint32_t q4_params_bad(const unsigned char *p)
{
    uint32_t a, b;
    memcpy(&a, p, 4);
    memcpy(&b, p + 4, 4);
    return ((a & 0x7f800000u) == 0x7f800000u) | ((b > 0x7f7fffffu) & (b != 0x80000000u));
}

static int q4_decode(int kind, const unsigned char *src, uint32_t n, uint32_t d, float *x)
{
    size_t np = n_params(EG_CODEC_Q4, kind, n, d);
    /* Every decode checks (a loop of compares per group was 4 % of a
     * 9/3/64 q4 decode step), then finds the first bad group for the
     * message. */
    uint32_t bad = 0;
    for (size_t gi = 0; gi < np; gi++) bad |= q4_params_bad(src + gi * 8);
    for (size_t gi = 0; bad && gi < np; gi++)
        if (q4_params_bad(src + gi * 8))
            return eg_mem_fail(EG_ECORRUPT, "q4 tile: parameters of group %zu are not finite", gi);
    eg_kern_q4(kind, src, n, d, x);
    return 0;
}

/* ---- public ------------------------------------------------------------- */
int eg_codec_encode(int codec, int kind, const float *src, uint32_t n, uint32_t d, void *dst, size_t cap)
{
    size_t need;
    int rc = eg_codec_size(codec, kind, n, d, &need);
    if (rc) return rc;
    if (!src || !dst || cap < need) return eg_mem_fail(EG_EINVAL, "encode: buffer of %zu bytes, %zu needed", cap, need);
    size_t e = (size_t)n * d;
    uint32_t bad = 0;
    for (size_t i = 0; i < e; i++) {
        uint32_t b;
        memcpy(&b, &src[i], 4);
        bad |= (b & 0x7f800000u) == 0x7f800000u;
    }
    if (bad)
        for (size_t i = 0; i < e; i++)
            if (!isfinite(src[i]))
                return eg_mem_fail(EG_ENONFINITE, "encode: %s at row %zu column %zu",
                                   isnan(src[i]) ? "NaN" : "Inf", i / d, i % d);
    switch (codec) {
    case EG_CODEC_F32: memcpy(dst, src, e * 4); break;
    case EG_CODEC_F16: {
        unsigned char *p = dst;
        for (size_t i = 0; i < e; i++) {
            uint16_t h = eg_f32_to_f16(src[i]);
            if ((h & 0x7c00) == 0x7c00)
                return eg_mem_fail(EG_ERANGE, "encode f16: %g at row %zu column %zu is beyond the f16 range",
                                   (double)src[i], i / d, i % d);
            memcpy(p + 2 * i, &h, 2);
        }
        break;
    }
    case EG_CODEC_Q8: q8_encode(src, n, d, dst); break;
    default: q4_encode(kind, src, n, d, dst); break;
    }
    return 0;
}

int eg_codec_decode(int codec, int kind, const void *src, size_t len, uint32_t n, uint32_t d, float *dst)
{
    size_t need;
    int rc = eg_codec_size(codec, kind, n, d, &need);
    if (rc) return rc;
    if (!src || !dst) return eg_mem_fail(EG_EINVAL, "decode: NULL buffer");
    if (len != need) return eg_mem_fail(EG_ECORRUPT, "decode %s: %zu bytes, %zu expected", names[codec], len, need);
    size_t e = (size_t)n * d;
    switch (codec) {
    case EG_CODEC_F32:
        memcpy(dst, src, e * 4);
        for (size_t i = 0; i < e; i++)
            if (!isfinite(dst[i])) return eg_mem_fail(EG_ECORRUPT, "decode f32: element %zu is not finite", i);
        return 0;
    case EG_CODEC_F16: {
        size_t bad = eg_kern_f16(src, e, dst);
        if (bad < e) return eg_mem_fail(EG_ECORRUPT, "decode f16: element %zu is not finite", bad);
        return 0;
    }
    case EG_CODEC_Q8: return q8_decode(src, n, d, dst);
    default: return q4_decode(kind, src, n, d, dst);
    }
}

int eg_codec_error_bound(int codec, int kind, const void *src, size_t len, uint32_t n, uint32_t d, float *bound)
{
    size_t need;
    int rc = eg_codec_size(codec, kind, n, d, &need);
    if (rc) return rc;
    if (len != need) return eg_mem_fail(EG_ECORRUPT, "bound %s: %zu bytes, %zu expected", names[codec], len, need);
    size_t e = (size_t)n * d;
    const unsigned char *p = src;
    switch (codec) {
    case EG_CODEC_F32:
        memset(bound, 0, e * 4);
        return 0;
    case EG_CODEC_F16:
        for (size_t i = 0; i < e; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            int ex = (h >> 10) & 31;
            /* Half the spacing of the f16 binade (subnormals: 2^-24). */
            bound[i] = ex <= 1 ? 0x1p-25f : ldexpf(1.0f, ex - 26);
        }
        return 0;
    case EG_CODEC_Q8: {
        size_t ng = cdiv(d, GROUP);
        for (uint32_t t = 0; t < n; t++)
            for (size_t g = 0; g < ng; g++) {
                float s;
                memcpy(&s, p + ((size_t)t * ng + g) * 4, 4);
                float b = (float)(s * (0.5 + 127.0 * SLACK));
                size_t c0 = g * GROUP, c1 = c0 + GROUP < d ? c0 + GROUP : d;
                for (size_t c = c0; c < c1; c++) bound[(size_t)t * d + c] = b;
            }
        return 0;
    }
    default: {
        size_t np = n_params(EG_CODEC_Q4, kind, n, d);
        for (size_t gi = 0; gi < np; gi++) {
            float mn, step;
            memcpy(&mn, p + gi * 8, 4);
            memcpy(&step, p + gi * 8 + 4, 4);
            float b = (float)(step * 0.5 + (fabs(mn) + 15.0 * step) * SLACK);
            size_t f, st, cnt;
            q4_group(kind, n, d, gi, &f, &st, &cnt);
            for (size_t i = 0; i < cnt; i++) bound[f + i * st] = b;
        }
        return 0;
    }
    }
}
