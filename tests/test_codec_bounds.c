/* test_codec_bounds.c: every codec's error bound on random and adversarial
 * tiles, checked against bounds recomputed here from the input alone (so the
 * test does not trust the codec's own arithmetic), plus conversions and the
 * refusal of NaN, Inf and damaged bytes. */
#include "memory.h"
#include "testutil.h"
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { NPAT = 9 };
static const char *pat_name[NPAT] = {"normal", "outlier-channel", "constant-rows", "zeros", "subnormal",
                                     "f16-edge", "huge-tiny-mix", "near-flt-max", "single-spike"};

static void fill(int pat, float *x, uint32_t n, uint32_t d, uint64_t *rs)
{
    for (uint32_t t = 0; t < n; t++)
        for (uint32_t c = 0; c < d; c++) {
            float v = tu_randn(rs);
            switch (pat) {
            case 1: if (c == 3 || c == d - 1) v *= 1000; break;
            case 2: v = (float)t * 0.25f - 3; break;
            case 3: v = 0; break;
            case 4: v = v * 1e-40f; if (c % 3 == 0) v = 1e-44f; break;
            case 5: v = (c & 1 ? 65504.0f : -60000.0f) * (t % 2 ? 1 : 0.999f); break;
            case 6: v = (c % 2 ? 1e6f : 1e-6f) * v; break;
            case 7: v = v > 0 ? 3.0e38f : -3.0e38f; if (c % 5 == 0) v = 1.0f; break;
            case 8: v = (t == 5 && c == 7) ? 500.0f : 0.001f * v; break;
            }
            x[(size_t)t * d + c] = v;
        }
}

/* The bound a codec promises, recomputed from the input: q8 half of
 * amax/127 per row group of 32; q4 half of (max-min)/15 per group; both with
 * the documented float rounding slack (q8: 127 * 2^-20 of the scale). */
static void reference_bound(int codec, int kind, const float *x, uint32_t n, uint32_t d, double *b)
{
    size_t e = (size_t)n * d;
    if (codec == EG_CODEC_F32) { for (size_t i = 0; i < e; i++) b[i] = 0; return; }
    if (codec == EG_CODEC_F16) {
        for (size_t i = 0; i < e; i++) {
            double a = fabs(x[i]);
            int ex;
            frexp(a, &ex);
            b[i] = a < 0x1p-14 ? 0x1p-25 : ldexp(1.0, ex - 12);  /* half ulp of the binade */
        }
        return;
    }
    if (codec == EG_CODEC_Q8) {
        for (uint32_t t = 0; t < n; t++)
            for (uint32_t g = 0; g * 32 < d; g++) {
                uint32_t c1 = g * 32 + 32 < d ? g * 32 + 32 : d;
                double amax = 0;
                for (uint32_t c = g * 32; c < c1; c++) amax = fmax(amax, fabs(x[(size_t)t * d + c]));
                double s = amax / 127;
                if (s < 1e-45) s = amax;          /* documented: scale below subnormal -> amax */
                for (uint32_t c = g * 32; c < c1; c++) b[(size_t)t * d + c] = s * (0.5 + 127.0 / 1048576) + 1e-45;
            }
        return;
    }
    /* q4 */
    uint32_t outer = kind == EG_KIND_K ? (n + 31) / 32 * d : n * ((d + 31) / 32);
    for (uint32_t gi = 0; gi < outer; gi++) {
        size_t f, st, cnt;
        if (kind == EG_KIND_K) {
            uint32_t j = gi / d, c = gi % d, t1 = j * 32 + 32 < n ? j * 32 + 32 : n;
            f = (size_t)j * 32 * d + c; st = d; cnt = t1 - j * 32;
        } else {
            uint32_t ng = (d + 31) / 32, t = gi / ng, g = gi % ng, c1 = g * 32 + 32 < d ? g * 32 + 32 : d;
            f = (size_t)t * d + g * 32; st = 1; cnt = c1 - g * 32;
        }
        double mn = x[f], mx = x[f];
        for (size_t i = 0; i < cnt; i++) { mn = fmin(mn, x[f + i * st]); mx = fmax(mx, x[f + i * st]); }
        double step = (mx - mn) / 15;
        for (size_t i = 0; i < cnt; i++)
            b[f + i * st] = step * 0.5 * (1 + 1e-5) + (fabs(mn) + 15 * step) * 1e-6 + 1e-45;
    }
}

static void check_codec(int codec, int kind, uint32_t n, uint32_t d, int pat)
{
    if (codec == EG_CODEC_F16 && (pat == 6 || pat == 7)) return;   /* beyond f16's range: refused, tested apart */
    uint64_t rs = 1000 + (uint64_t)pat * 77 + n * 3 + d;
    size_t e = (size_t)n * d, sz;
    float *x = malloc(e * 4), *y = malloc(e * 4), *b = malloc(e * 4);
    double *rb = malloc(e * 8);
    fill(pat, x, n, d, &rs);
    CHECK_OK(eg_codec_size(codec, kind, n, d, &sz));
    unsigned char *enc = malloc(sz + 1);
    /* Odd address: blocks read straight out of LMDB pages need not be aligned. */
    unsigned char *p = enc + 1;
    int rc = eg_codec_encode(codec, kind, x, n, d, p, sz);
    CHECK_OK(rc);
    if (rc == 0) {
        CHECK_OK(eg_codec_decode(codec, kind, p, sz, n, d, y));
        CHECK_OK(eg_codec_error_bound(codec, kind, p, sz, n, d, b));
        reference_bound(codec, kind, x, n, d, rb);
        long bad = 0, loose = 0;
        /* f16's own bound uses the binade of the decoded value, which may be
         * the next one up: up to twice the reference. */
        double tight = codec == EG_CODEC_F16 ? 2.01 : 1.01;
        for (size_t i = 0; i < e; i++) {
            double err = fabs((double)x[i] - (double)y[i]);
            if (!(err <= b[i])) bad++;
            if (!(err <= rb[i]) || !(b[i] <= rb[i] * tight + 1e-44)) loose++;
        }
        if (bad || loose)
            fprintf(stderr, "  %s %s %ux%u %s: %ld over own bound, %ld over reference bound\n",
                    eg_codec_name(codec), kind ? "V" : "K", n, d, pat_name[pat], bad, loose);
        CHECK_EQ_INT(bad, 0);
        CHECK_EQ_INT(loose, 0);
    }
    free(x); free(y); free(b); free(rb); free(enc);
}

static void test_bounds_all_codecs(void)
{
    uint32_t dims[] = {1, 33, 64, 100, 128, 512, 576};
    uint32_t toks[] = {16, 64, 256};
    for (int codec = 0; codec < EG_CODEC_COUNT; codec++)
        for (int kind = 0; kind < 2; kind++)
            for (size_t di = 0; di < sizeof dims / sizeof *dims; di++)
                for (size_t ti = 0; ti < sizeof toks / sizeof *toks; ti++)
                    for (int pat = 0; pat < NPAT; pat++) check_codec(codec, kind, toks[ti], dims[di], pat);
}

static void test_sizes(void)
{
    size_t sz;
    /* Bytes per element with scales, S = 64. */
    CHECK_OK(eg_codec_size(EG_CODEC_Q8, EG_KIND_K, 64, 64, &sz));
    CHECK_EQ_INT(sz, 64 * 64 + 64 * 2 * 4);          /* 1.125 B/elem */
    CHECK_OK(eg_codec_size(EG_CODEC_Q4, EG_KIND_K, 64, 128, &sz));
    CHECK_EQ_INT(sz, 64 * 128 / 2 + 2 * 128 * 8);    /* 0.75 B/elem */
    CHECK_OK(eg_codec_size(EG_CODEC_Q4, EG_KIND_V, 64, 128, &sz));
    CHECK_EQ_INT(sz, 64 * 128 / 2 + 64 * 4 * 8);
    CHECK_OK(eg_codec_size(EG_CODEC_F16, EG_KIND_V, 64, 128, &sz));
    CHECK_EQ_INT(sz, 64 * 128 * 2);
    CHECK_EQ_INT(eg_codec_size(7, EG_KIND_K, 64, 64, &sz), EG_ECODEC);
    CHECK_EQ_INT(eg_codec_size(EG_CODEC_Q8, EG_KIND_K, 0, 64, &sz), EG_EINVAL);
    CHECK_EQ_INT(eg_codec_size(EG_CODEC_Q8, EG_KIND_K, 64, 1025, &sz), EG_EINVAL);
    CHECK_EQ_INT(eg_codec_parse("q4"), EG_CODEC_Q4);
    CHECK_EQ_INT(eg_codec_parse("q5"), EG_ECODEC);
    for (int c = 0; c < 4; c++) {
        size_t k, v;
        eg_codec_size(c, EG_KIND_K, 64, 64, &k);
        eg_codec_size(c, EG_KIND_V, 64, 64, &v);
        printf("  %s: keys %.4f, values %.4f bytes per element (S=64, d=64)\n", eg_codec_name(c),
               k / 4096.0, v / 4096.0);
    }
}

static void test_refusals(void)
{
    float x[16 * 32] = {0}, y[16 * 32];
    unsigned char buf[4096];
    size_t sz;
    for (int c = 0; c < EG_CODEC_COUNT; c++) {
        x[40] = NAN;
        CHECK_EQ_INT(eg_codec_encode(c, EG_KIND_K, x, 16, 32, buf, sizeof buf), EG_ENONFINITE);
        x[40] = -INFINITY;
        CHECK_EQ_INT(eg_codec_encode(c, EG_KIND_V, x, 16, 32, buf, sizeof buf), EG_ENONFINITE);
        x[40] = 1;
        eg_codec_size(c, EG_KIND_K, 16, 32, &sz);
        CHECK_EQ_INT(eg_codec_encode(c, EG_KIND_K, x, 16, 32, buf, sz - 1), EG_EINVAL);
        CHECK_OK(eg_codec_encode(c, EG_KIND_K, x, 16, 32, buf, sz));
        CHECK_EQ_INT(eg_codec_decode(c, EG_KIND_K, buf, sz - 1, 16, 32, y), EG_ECORRUPT);
        CHECK_EQ_INT(eg_codec_decode(c, EG_KIND_K, buf, sz + 1, 16, 32, y), EG_ECORRUPT);
    }
    /* Damaged scale bytes: a NaN scale is refused, not decoded. */
    eg_codec_size(EG_CODEC_Q8, EG_KIND_K, 16, 32, &sz);
    CHECK_OK(eg_codec_encode(EG_CODEC_Q8, EG_KIND_K, x, 16, 32, buf, sz));
    memset(buf + 4, 0xff, 4);
    CHECK_EQ_INT(eg_codec_decode(EG_CODEC_Q8, EG_KIND_K, buf, sz, 16, 32, y), EG_ECORRUPT);
    eg_codec_size(EG_CODEC_Q4, EG_KIND_K, 16, 32, &sz);
    CHECK_OK(eg_codec_encode(EG_CODEC_Q4, EG_KIND_K, x, 16, 32, buf, sz));
    memset(buf + 4, 0xff, 4);
    CHECK_EQ_INT(eg_codec_decode(EG_CODEC_Q4, EG_KIND_K, buf, sz, 16, 32, y), EG_ECORRUPT);
    /* Each kind of bad q4 parameter, in a later group, is named; a step of
     * -0 decodes (it is >= 0). */
    {
        const float bad_min[] = { NAN, INFINITY, -INFINITY }, bad_step[] = { -1.0f, INFINITY, NAN, -0x1p-149f };
        for (int kind = 0; kind < 2; kind++) {
            eg_codec_size(EG_CODEC_Q4, kind, 16, 32, &sz);
            for (int w = 0; w < 7; w++) {
                CHECK_OK(eg_codec_encode(EG_CODEC_Q4, kind, x, 16, 32, buf, sz));
                size_t gi = kind == EG_KIND_K ? 21 : 13;   /* K: 32 groups (channels); V: 16 (tokens) */
                if (w < 3) memcpy(buf + gi * 8, &bad_min[w], 4);
                else memcpy(buf + gi * 8 + 4, &bad_step[w - 3], 4);
                CHECK_EQ_INT(eg_codec_decode(EG_CODEC_Q4, kind, buf, sz, 16, 32, y), EG_ECORRUPT);
                char want[64];
                snprintf(want, sizeof want, "parameters of group %zu are not finite", gi);
                CHECK(strstr(eg_mem_last_error(), want) != NULL);
            }
            CHECK_OK(eg_codec_encode(EG_CODEC_Q4, kind, x, 16, 32, buf, sz));
            const float nz = -0.0f;
            memcpy(buf + 5 * 8 + 4, &nz, 4);
            CHECK_OK(eg_codec_decode(EG_CODEC_Q4, kind, buf, sz, 16, 32, y));
        }
    }
    /* f16 cannot hold 1e6: refused rather than clamped. */
    x[3] = 1e6f;
    eg_codec_size(EG_CODEC_F16, EG_KIND_K, 16, 32, &sz);
    CHECK_EQ_INT(eg_codec_encode(EG_CODEC_F16, EG_KIND_K, x, 16, 32, buf, sz), EG_ERANGE);
}

static void test_f16_bf16_conversion(void)
{
    /* Every f16 value survives f16 -> f32 -> f16 (NaNs stay NaN). */
    long bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = eg_f16_to_f32((uint16_t)h);
        uint16_t back = eg_f32_to_f16(f);
        if (isnan(f) ? (back & 0x7c00) != 0x7c00 || !(back & 0x3ff) : back != h) bad++;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(eg_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(eg_f16_to_f32(0x0001) == 0x1p-24f);
    CHECK(eg_f32_to_f16(65520.0f) == 0x7c00);            /* rounds to inf */
    CHECK(eg_f32_to_f16(65519.0f) == 0x7bff);
    CHECK(eg_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00);     /* tie to even: down */
    CHECK(eg_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02); /* tie to even: up */
    CHECK(eg_f32_to_f16(0x1p-25f) == 0);                 /* tie to even at zero */
    CHECK(eg_f32_to_f16(0x1.8p-25f) == 1);
    CHECK(eg_f32_to_f16(-0.0f) == 0x8000);
    CHECK(eg_bf16_to_f32(eg_f32_to_bf16(3.140625f)) == 3.140625f);
    CHECK(eg_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80);     /* tie to even */
    /* Conversion refuses NaN and Inf in every dtype. */
    float f[4] = {1, 2, NAN, 4}, out[4];
    uint16_t h[4] = {0x3c00, 0x7c00, 0, 0}, bh[4] = {0x3f80, 0, 0x7fc0, 0};
    CHECK_EQ_INT(eg_convert_to_f32(EG_DTYPE_F32, f, 4, out), EG_ENONFINITE);
    CHECK_EQ_INT(eg_convert_to_f32(EG_DTYPE_F16, h, 4, out), EG_ENONFINITE);
    CHECK_EQ_INT(eg_convert_to_f32(EG_DTYPE_BF16, bh, 4, out), EG_ENONFINITE);
    CHECK_EQ_INT(eg_convert_to_f32(9, bh, 4, out), EG_EDTYPE);
    CHECK_OK(eg_convert_to_f32(EG_DTYPE_F16, h, 1, out));
    CHECK(out[0] == 1.0f);
}

/* Plain decode from the layouts of memory.h, independent of codec.c. */
static void reference_decode(int codec, int kind, const unsigned char *p, uint32_t n, uint32_t d, float *x)
{
    size_t e = (size_t)n * d, ng = (d + 31) / 32;
    if (codec == EG_CODEC_F16) {
        for (size_t i = 0; i < e; i++) x[i] = eg_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        return;
    }
    if (codec == EG_CODEC_Q8) {
        for (size_t i = 0; i < e; i++) {
            float s;
            memcpy(&s, p + (i / d * ng + i % d / 32) * 4, 4);
            int8_t q = (int8_t)p[(size_t)n * ng * 4 + i];
            x[i] = s > FLT_MAX / 128 ? (float)fmin(fmax((double)q * s, -FLT_MAX), FLT_MAX) : (float)q * s;
        }
        return;
    }
    size_t np = kind == EG_KIND_K ? (n + 31) / 32 * d : n * ng;
    for (size_t i = 0; i < e; i++) {
        size_t t = i / d, c = i % d, gi = kind == EG_KIND_K ? t / 32 * d + c : t * ng + c / 32;
        float mn, st;
        memcpy(&mn, p + gi * 8, 4);
        memcpy(&st, p + gi * 8 + 4, 4);
        unsigned q = (p[np * 8 + i / 2] >> ((i & 1) * 4)) & 15;
        double v = (double)mn + q * (double)st;
        x[i] = (float)(v > FLT_MAX ? FLT_MAX : v < -FLT_MAX ? -FLT_MAX : v);
    }
}

/* Random bytes that decode: any codes, parameters over the whole finite
 * range (huge scales take q8's clamped path, tiny ones are subnormal). */
static void junk_tile(int codec, int kind, unsigned char *p, size_t sz, uint32_t n, uint32_t d, uint64_t *rs)
{
    for (size_t i = 0; i < sz; i++) p[i] = (unsigned char)(tu_rand(rs) >> 24);
    size_t ng = (d + 31) / 32, np = codec == EG_CODEC_Q8 ? (size_t)n * ng
                                   : kind == EG_KIND_K ? (n + 31) / 32 * d : (size_t)n * ng;
    if (codec == EG_CODEC_F16) {
        for (size_t i = 0; i < (size_t)n * d; i++)
            if ((p[2 * i + 1] & 0x7c) == 0x7c) p[2 * i + 1] &= 0xbf;   /* no Inf or NaN */
        return;
    }
    for (size_t g = 0; g < np; g++) {
        uint64_t r = tu_rand(rs);
        float v = r % 4 == 0 ? FLT_MAX / (float)(1 + r % 7) : r % 4 == 1 ? 1e-42f * (float)(r % 9)
                : (float)ldexp((double)(r % 1000) / 1000, (int)(r >> 20) % 200 - 100);
        float mn = (r >> 8) % 2 ? -v : v;
        if (codec == EG_CODEC_Q4 && g % 5 == 2) {
            /* min 2^-60, step 5592407 2^-24: code 3 gives 1 + 5 2^-24 + 2^-60,
             * which rounds twice in double (to the halfway 1 + 5 2^-24, then
             * to even) and once in a fused f32 multiply-add (up): the
             * kernels must not take their f32 path here */
            mn = 0x1p-60f;
            v = 5592407.0f * 0x1p-24f;
            size_t e0, step, cnt;   /* the group's elements: e0 + i step, i < cnt */
            if (kind == EG_KIND_K) {
                size_t j = g / d;
                e0 = j * 32 * d + g % d;
                step = d;
                cnt = n - j * 32 < 32 ? n - j * 32 : 32;
            } else {
                size_t cg = g % ng;
                e0 = (g / ng) * d + cg * 32;
                step = 1;
                cnt = d - cg * 32 < 32 ? d - cg * 32 : 32;
            }
            for (size_t i = 0; i < cnt; i++) {   /* every code of the group 3 */
                size_t idx = e0 + i * step, byte = np * 8 + idx / 2;
                p[byte] = (unsigned char)(idx & 1 ? (p[byte] & 0x0f) | 0x30 : (p[byte] & 0xf0) | 0x03);
            }
        }
        if (codec == EG_CODEC_Q8) memcpy(p + g * 4, &v, 4);
        else { memcpy(p + g * 8, &mn, 4); memcpy(p + g * 8 + 4, &v, 4); }
    }
}

/* Every set of decode loops (AVX-512, AVX2, portable) gives the bits of the
 * plain loop above, on encoder output and on junk, at odd addresses. */
static void test_decode_kernels_agree(void)
{
    uint32_t dims[] = {1, 2, 17, 32, 64, 96, 128, 576, 1024}, toks[] = {1, 16, 33, 64, 256};
    int which[3] = {1, 2, 0};
    long cases = 0, diff = 0;
    uint64_t rs = 4242;
    for (int codec = EG_CODEC_F16; codec <= EG_CODEC_Q4; codec++)
        for (int kind = 0; kind < 2; kind++)
            for (size_t di = 0; di < sizeof dims / sizeof *dims; di++)
                for (size_t ti = 0; ti < sizeof toks / sizeof *toks; ti++)
                    for (int src = 0; src < 3; src++) {
                        uint32_t n = toks[ti], d = dims[di];
                        size_t e = (size_t)n * d, sz;
                        CHECK_OK(eg_codec_size(codec, kind, n, d, &sz));
                        float *x = malloc(e * 4), *ref = malloc(e * 4), *y = malloc(e * 4 + 4);
                        unsigned char *enc = malloc(sz + 1), *p = enc + 1;
                        if (src < 2) {
                            fill(src ? 1 : 6, x, n, d, &rs);
                            if (codec == EG_CODEC_F16) for (size_t i = 0; i < e; i++) x[i] = fminf(fmaxf(x[i], -6e4f), 6e4f);
                            CHECK_OK(eg_codec_encode(codec, kind, x, n, d, p, sz));
                        } else junk_tile(codec, kind, p, sz, n, d, &rs);
                        reference_decode(codec, kind, p, n, d, ref);
                        for (int w = 0; w < 3; w++) {
                            eg_codec_kernels(which[w]);
                            float *out = y + 1;   /* unaligned output too */
                            CHECK_OK(eg_codec_decode(codec, kind, p, sz, n, d, out));
                            if (memcmp(out, ref, e * 4)) {
                                if (!diff++) fprintf(stderr, "  %s %s %ux%u source %d: %s differs\n", eg_codec_name(codec),
                                                     kind ? "V" : "K", n, d, src, eg_codec_kernels(-1));
                            }
                            cases++;
                        }
                        free(x); free(ref); free(y); free(enc);
                    }
    /* f16: the first Inf or NaN is found wherever it sits, by every version. */
    uint16_t h[100];
    float out[100];
    for (int w = 0; w < 3; w++) {
        eg_codec_kernels(which[w]);
        for (int at = 0; at < 100; at += 7) {
            for (int i = 0; i < 100; i++) h[i] = (uint16_t)(0x3c00 + i);
            h[at] = at % 2 ? 0x7e00 : 0xfc00;
            CHECK_EQ_INT(eg_codec_decode(EG_CODEC_F16, EG_KIND_K, h, sizeof h, 1, 100, out), EG_ECORRUPT);
            char want[64];
            snprintf(want, sizeof want, "element %d is not finite", at);
            CHECK(strstr(eg_mem_last_error(), want) != NULL);
            CHECK_EQ_INT(eg_convert_to_f32(EG_DTYPE_F16, h, 100, out), EG_ENONFINITE);
            snprintf(want, sizeof want, "%s at element %d", at % 2 ? "NaN" : "Inf", at);
            CHECK(strstr(eg_mem_last_error(), want) != NULL);
        }
    }
    printf("  %ld decodes compared (best here: %s), %ld differ\n", cases, eg_codec_kernels(0), diff);
    CHECK_EQ_INT(diff, 0);
}

/* Mean decode error on normal data, printed for the record. */
static void test_error_figures(void)
{
    uint32_t n = 64, d = 128;
    float *x = malloc(n * d * 4), *y = malloc(n * d * 4);
    unsigned char *buf = malloc(n * d * 4);
    uint64_t rs = 9;
    fill(1, x, n, d, &rs);
    for (int c = 1; c < EG_CODEC_COUNT; c++) {
        size_t sz;
        eg_codec_size(c, EG_KIND_K, n, d, &sz);
        CHECK_OK(eg_codec_encode(c, EG_KIND_K, x, n, d, buf, sz));
        CHECK_OK(eg_codec_decode(c, EG_KIND_K, buf, sz, n, d, y));
        double num = 0, den = 0;
        for (uint32_t i = 0; i < n * d; i++) { num += (x[i] - y[i]) * (x[i] - y[i]); den += x[i] * x[i]; }
        printf("  %s keys with outlier channels: relative L2 error %.2e\n", eg_codec_name(c), sqrt(num / den));
        CHECK(sqrt(num / den) < (c == EG_CODEC_Q4 ? 0.2 : 0.01));
    }
    free(x); free(y); free(buf);
}

int main(void)
{
    TEST_RUN(test_sizes);
    TEST_RUN(test_refusals);
    TEST_RUN(test_f16_bf16_conversion);
    TEST_RUN(test_bounds_all_codecs);
    TEST_RUN(test_error_figures);
    TEST_RUN(test_decode_kernels_agree);
    TEST_END();
}
