/* test_tile_attn.c: eg_tile_dot and eg_tile_axpy (memory/tile_attn.c):
 * a q8 tile and the f32 rows of its decode give the same bits on every
 * kernel version, both are within float rounding of a plain double loop,
 * and bad tiles are refused; the _ahead versions give the same bits;
 * eg_tile_softmax against exp in double. */
#include "memory.h"
#include "testutil.h"
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Rows [n][d]: normal values, one outlier channel, every scale argument
 * of the encoder exercised (big: magnitudes near FLT_MAX, decoded apart). */
static void make_rows(float *x, uint32_t n, uint32_t d, uint64_t *rs, int big)
{
    for (size_t i = 0; i < (size_t)n * d; i++) x[i] = tu_randn(rs);
    for (uint32_t t = 0; t < n; t++) {
        if (d > 3) x[(size_t)t * d + 3] *= 30.0f;
        if (big && t % 3 == 1) x[(size_t)t * d] = (t % 2 ? 1.0f : -1.0f) * FLT_MAX * 0.9f;
    }
}

static int same_bits(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, n * sizeof(float)) == 0;
}

static void test_tile_kernels_agree(void)
{
    static const uint32_t ns[] = {1, 5, 64}, ds[] = {1, 7, 16, 33, 64, 128, 576}, nrs[] = {1, 3, 8, 11};
    static const int which[] = {0, 1, 2};
    uint64_t rs = 99;
    long cases = 0, differ = 0;
    double worst = 0;
    for (size_t ni = 0; ni < 3; ni++)
        for (size_t di = 0; di < sizeof ds / sizeof *ds; di++)
            for (size_t ri = 0; ri < 4; ri++)
                for (int big = 0; big < 2; big++) {
                    uint32_t n = ns[ni], d = ds[di], nr = nrs[ri];
                    size_t len;
                    REQUIRE(eg_codec_size(EG_CODEC_Q8, EG_KIND_K, n, d, &len) == 0);
                    float *x = malloc(sizeof(float) * n * d), *dec = malloc(sizeof(float) * n * d);
                    float *q = malloc(sizeof(float) * nr * d), *p = malloc(sizeof(float) * nr * n);
                    float *out[2][3], *acc[2][3], *acc0 = malloc(sizeof(float) * nr * d);
                    unsigned char *tile = malloc(len + 1) + 1;   /* an odd address */
                    make_rows(x, n, d, &rs, big);
                    for (size_t i = 0; i < (size_t)nr * d; i++) q[i] = big ? 1e-30f * tu_randn(&rs) : tu_randn(&rs);
                    for (size_t i = 0; i < (size_t)nr * n; i++) p[i] = big ? 1e-30f * tu_randf(&rs) : tu_randf(&rs);
                    for (size_t i = 0; i < (size_t)nr * d; i++) acc0[i] = tu_randn(&rs);
                    CHECK_OK(eg_codec_encode(EG_CODEC_Q8, EG_KIND_K, x, n, d, tile, len));
                    CHECK_OK(eg_codec_decode(EG_CODEC_Q8, EG_KIND_K, tile, len, n, d, dec));
                    for (int k = 0; k < 2; k++)
                        for (int w = 0; w < 3; w++) {
                            eg_tile_kernels(which[w]);
                            out[k][w] = malloc(sizeof(float) * nr * n);
                            acc[k][w] = malloc(sizeof(float) * nr * d);
                            memcpy(acc[k][w], acc0, sizeof(float) * nr * d);
                            const void *src = k ? (const void *)dec : (const void *)tile;
                            size_t sl = k ? sizeof(float) * n * d : len;
                            int codec = k ? EG_CODEC_F32 : EG_CODEC_Q8;
                            CHECK_OK(eg_tile_dot(codec, src, sl, n, d, q, nr, 0.125f, out[k][w]));
                            CHECK_OK(eg_tile_axpy(codec, src, sl, n, d, p, nr, acc[k][w]));
                        }
                    eg_tile_kernels(0);
                    for (int k = 0; k < 2; k++)
                        for (int w = 0; w < 3; w++) {
                            cases++;
                            int ok = same_bits(out[k][w], out[0][0], (size_t)nr * n) &&
                                     same_bits(acc[k][w], acc[0][0], (size_t)nr * d);
                            if (!ok && differ++ < 5)
                                fprintf(stderr, "  n=%u d=%u nr=%u big=%d: %s tile, kernels %d differ\n", n, d, nr,
                                        big, k ? "f32" : "q8", which[w]);
                        }
                    /* against double loops over the decoded rows */
                    for (uint32_t r = 0; r < nr; r++)
                        for (uint32_t t = 0; t < n; t++) {
                            double s = 0, m = 0;
                            for (uint32_t c = 0; c < d; c++) {
                                s += (double)q[r * d + c] * dec[(size_t)t * d + c];
                                m += fabs((double)q[r * d + c] * dec[(size_t)t * d + c]);
                            }
                            double e = fabs(0.125 * s - out[0][0][r * n + t]) / (0.125 * m + 1e-300);
                            worst = e > worst ? e : worst;
                            CHECK(e <= 64 * FLT_EPSILON);
                        }
                    for (uint32_t r = 0; r < nr; r++)
                        for (uint32_t c = 0; c < d; c++) {
                            double s = acc0[r * d + c], m = fabs(acc0[r * d + c]);
                            for (uint32_t t = 0; t < n; t++) {
                                s += (double)p[r * n + t] * dec[(size_t)t * d + c];
                                m += fabs((double)p[r * n + t] * dec[(size_t)t * d + c]);
                            }
                            double e = fabs(s - acc[0][0][r * d + c]) / (m + 1e-300);
                            worst = e > worst ? e : worst;
                            CHECK(e <= 64 * FLT_EPSILON);
                        }
                    for (int k = 0; k < 2; k++)
                        for (int w = 0; w < 3; w++) { free(out[k][w]); free(acc[k][w]); }
                    free(x); free(dec); free(q); free(p); free(acc0); free(tile - 1);
                }
    printf("  %ld products compared (best here: %s), %ld differ; worst error %.2g of the magnitude\n", cases,
           eg_tile_kernels(-1), differ, worst);
    CHECK(differ == 0);
}

static void test_tile_bad_input(void)
{
    const uint32_t n = 4, d = 32;
    size_t len;
    REQUIRE(eg_codec_size(EG_CODEC_Q8, EG_KIND_K, n, d, &len) == 0);
    float x[4 * 32], q[32] = {1}, out[4], acc[32] = {0}, p[4] = {1, 1, 1, 1};
    uint64_t rs = 5;
    make_rows(x, n, d, &rs, 0);
    unsigned char *tile = malloc(len);
    REQUIRE(eg_codec_encode(EG_CODEC_Q8, EG_KIND_K, x, n, d, tile, len) == 0);
    CHECK(eg_tile_dot(EG_CODEC_Q8, tile, len - 1, n, d, q, 1, 1.0f, out) == EG_ECORRUPT);
    CHECK(eg_tile_dot(EG_CODEC_F32, x, sizeof x - 4, n, d, q, 1, 1.0f, out) == EG_ECORRUPT);
    CHECK(eg_tile_dot(EG_CODEC_F16, tile, len, n, d, q, 1, 1.0f, out) == EG_ECODEC);
    CHECK(eg_tile_axpy(EG_CODEC_Q4, tile, len, n, d, p, 1, acc) == EG_ECODEC);
    CHECK(eg_tile_dot(EG_CODEC_Q8, NULL, len, n, d, q, 1, 1.0f, out) == EG_EINVAL);
    CHECK(eg_tile_dot(EG_CODEC_Q8, tile, len, n, d, q, 0, 1.0f, out) == EG_EINVAL);
    CHECK(eg_tile_axpy(EG_CODEC_Q8, tile, len, 0, d, p, 1, acc) == EG_EINVAL);
    CHECK(eg_tile_axpy(EG_CODEC_Q8, tile, len, n, d, NULL, 1, acc) == EG_EINVAL);
    float nan = NAN;
    memcpy(tile + 4, &nan, 4);   /* row 1's scale */
    CHECK(eg_tile_dot(EG_CODEC_Q8, tile, len, n, d, q, 1, 1.0f, out) == EG_ECORRUPT);
    CHECK(eg_tile_axpy(EG_CODEC_Q8, tile, len, n, d, p, 1, acc) == EG_ECORRUPT);
    for (int i = 0; i < 32; i++) CHECK(acc[i] == 0.0f);   /* refused: untouched */
    free(tile);
    /* a tile long enough for the vector check: an Inf, then a NaN, at
     * scales past the first 16, on every kernel version */
    const uint32_t n2 = 64, d2 = 64;
    REQUIRE(eg_codec_size(EG_CODEC_Q8, EG_KIND_K, n2, d2, &len) == 0);
    float *x2 = malloc(sizeof(float) * n2 * d2), q2[64] = {1}, out2[64];
    make_rows(x2, n2, d2, &rs, 0);
    tile = malloc(len);
    REQUIRE(eg_codec_encode(EG_CODEC_Q8, EG_KIND_K, x2, n2, d2, tile, len) == 0);
    float bad[2] = { INFINITY, NAN };
    for (int w = 0; w < 3; w++) {
        eg_tile_kernels(w == 0 ? 0 : w);
        CHECK_OK(eg_tile_dot(EG_CODEC_Q8, tile, len, n2, d2, q2, 1, 1.0f, out2));
        for (int k = 0; k < 2; k++) {
            float keep;
            memcpy(&keep, tile + 4 * (37 + 50 * k), 4);
            memcpy(tile + 4 * (37 + 50 * k), &bad[k], 4);
            CHECK(eg_tile_dot(EG_CODEC_Q8, tile, len, n2, d2, q2, 1, 1.0f, out2) == EG_ECORRUPT);
            memcpy(tile + 4 * (37 + 50 * k), &keep, 4);
        }
    }
    eg_tile_kernels(0);
    free(tile);
    free(x2);
}

/* eg_tile_dot_ahead and eg_tile_axpy_ahead give eg_tile_dot's and
 * eg_tile_axpy's bits on every kernel version, whatever they load meanwhile:
 * the next tile, a range not on a line boundary and of odd length, one
 * longer than the products' steps (so several lines a step), none; and
 * refuse bad tiles as they do. */
static void test_tile_ahead(void)
{
    static const uint32_t ns[] = {1, 7, 64}, ds[] = {5, 64, 128, 200}, nrs[] = {1, 4, 6};
    uint64_t rs = 17;
    long cases = 0, differ = 0;
    for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++)
        for (size_t di = 0; di < sizeof ds / sizeof *ds; di++)
            for (size_t ri = 0; ri < sizeof nrs / sizeof *nrs; ri++) {
                uint32_t n = ns[ni], d = ds[di], nr = nrs[ri];
                size_t len;
                REQUIRE(eg_codec_size(EG_CODEC_Q8, EG_KIND_K, n, d, &len) == 0);
                float *x = malloc(sizeof(float) * n * d), *q = malloc(sizeof(float) * nr * d);
                float *p = malloc(sizeof(float) * nr * n), *o[2], *a[2];
                unsigned char *tile = malloc(len), *next = malloc(3 * len + 100);
                make_rows(x, n, d, &rs, 0);
                for (size_t i = 0; i < (size_t)nr * d; i++) q[i] = tu_randn(&rs);
                for (size_t i = 0; i < (size_t)nr * n; i++) p[i] = tu_randf(&rs);
                memset(next, 7, 3 * len + 100);
                REQUIRE(eg_codec_encode(EG_CODEC_Q8, EG_KIND_K, x, n, d, tile, len) == 0);
                for (int k = 0; k < 2; k++) {
                    o[k] = malloc(sizeof(float) * nr * n);
                    a[k] = calloc((size_t)nr * d, sizeof(float));
                }
                const void *ah[4] = { next, next + 3, next, NULL };
                const size_t al[4] = { len, len + 37, 3 * len + 99, 64 };
                for (int w = 0; w < 3; w++) {
                    eg_tile_kernels(w == 0 ? 0 : w);
                    CHECK_OK(eg_tile_dot(EG_CODEC_Q8, tile, len, n, d, q, nr, 0.3f, o[0]));
                    memset(a[0], 0, sizeof(float) * nr * d);
                    CHECK_OK(eg_tile_axpy(EG_CODEC_Q8, tile, len, n, d, p, nr, a[0]));
                    for (int h = 0; h < 4; h++) {
                        CHECK_OK(eg_tile_dot_ahead(EG_CODEC_Q8, tile, len, n, d, q, nr, 0.3f, o[1], ah[h], al[h]));
                        memset(a[1], 0, sizeof(float) * nr * d);
                        CHECK_OK(eg_tile_axpy_ahead(EG_CODEC_Q8, tile, len, n, d, p, nr, a[1], ah[h], al[h]));
                        differ += !same_bits(o[0], o[1], (size_t)nr * n) + !same_bits(a[0], a[1], (size_t)nr * d);
                        cases += 2;
                    }
                    CHECK(eg_tile_dot_ahead(EG_CODEC_Q8, tile, len - 1, n, d, q, nr, 0.3f, o[1], next, len) == EG_ECORRUPT);
                    CHECK(eg_tile_axpy_ahead(EG_CODEC_Q4, tile, len, n, d, p, nr, a[1], next, len) == EG_ECODEC);
                }
                eg_tile_kernels(0);
                for (int k = 0; k < 2; k++) { free(o[k]); free(a[k]); }
                free(x); free(q); free(p); free(tile); free(next);
            }
    printf("  %ld products with a range loaded meanwhile, %ld differ from the plain ones\n", cases, differ);
    CHECK(differ == 0);
}

/* eg_tile_softmax on every kernel version against a double loop: the max
 * (the floor's when it is larger), each weight within 2e-7 of exp (0 or
 * a subnormal below e^-87), the sum within 1e-6; a row with an infinite
 * score as libm's loop does it; bad arguments refused. */
static void test_tile_softmax(void)
{
    static const uint32_t ns[] = {1, 5, 15, 16, 17, 64, 200};
    uint64_t rs = 2024;
    double worst = 0;
    long cases = 0;
    for (int w = 0; w < 3; w++) {
        eg_tile_kernels(w == 0 ? 0 : w);
        for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++)
            for (int kind = 0; kind < 4; kind++) {
                uint32_t n = ns[ni];
                float *x = malloc(sizeof(float) * n), *x0 = malloc(sizeof(float) * n);
                for (uint32_t i = 0; i < n; i++) {
                    x0[i] = (kind == 2 ? 40.0f : 8.0f) * tu_randn(&rs);   /* kind 2: many below e^-87 */
                    if (kind == 3) x0[i] = x0[i] * 1e-3f + 1e4f;           /* large, close together */
                }
                float floor_m = kind == 1 ? 30.0f : -INFINITY, m = NAN;
                memcpy(x, x0, sizeof(float) * n);
                double sum = -1, ref = 0, mx = floor_m;
                CHECK_OK(eg_tile_softmax(x, n, floor_m, &m, &sum));
                for (uint32_t i = 0; i < n; i++) mx = x0[i] > mx ? x0[i] : mx;
                CHECK(m == (float)mx);
                int bad = 0;
                for (uint32_t i = 0; i < n; i++) {
                    double e = exp((double)(x0[i] - m));   /* of the difference in float, as both kernels take it */
                    ref += e;
                    double err = fabs((double)x[i] - e);
                    if (e < 1e-37) bad += !(err < 2e-38);   /* flushed, or expf's subnormal */
                    else {
                        bad += !(err <= 2e-7 * e);
                        worst = err / e > worst ? err / e : worst;
                    }
                    cases++;
                }
                CHECK(bad == 0);
                CHECK(fabs(sum - ref) <= 1e-6 * ref);
                free(x);
                free(x0);
            }
        float inf_row[20];
        for (int i = 0; i < 20; i++) inf_row[i] = (float)i;
        inf_row[17] = INFINITY;
        float m;
        double sum;
        CHECK_OK(eg_tile_softmax(inf_row, 20, -INFINITY, &m, &sum));
        CHECK(m == INFINITY && inf_row[3] == 0.0f && isnan(inf_row[17]));
    }
    float one = 1, m;
    double sum;
    CHECK(eg_tile_softmax(NULL, 1, 0, &m, &sum) == EG_EINVAL);
    CHECK(eg_tile_softmax(&one, 0, 0, &m, &sum) == EG_EINVAL);
    CHECK(eg_tile_softmax(&one, 1, 0, NULL, &sum) == EG_EINVAL);
    CHECK(eg_tile_softmax(&one, 1, 0, &m, NULL) == EG_EINVAL);
    eg_tile_kernels(0);
    printf("  %ld weights on 3 kernel choices (best here: %s); worst relative error %.2g\n", cases,
           eg_tile_kernels(-1), worst);
}

int main(void)
{
    TEST_RUN(test_tile_kernels_agree);
    TEST_RUN(test_tile_bad_input);
    TEST_RUN(test_tile_ahead);
    TEST_RUN(test_tile_softmax);
    TEST_END();
}
