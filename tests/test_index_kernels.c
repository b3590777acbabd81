/* test_index_kernels.c: the routing kernels against plain reference loops,
 * the AVX2 and portable versions against each other, and the fused
 * select-and-bound against the separate calls and the exact lost mass.
 * Includes index/'s internal header for ix_sum_exp, which has no public
 * entry of its own. */
#include "index.h"
#include "ix_internal.h"
#include "testutil.h"
#include <pthread.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static double half_to_double(const uint8_t *p)
{
    unsigned h = (unsigned)p[0] | ((unsigned)p[1] << 8), e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, (int)e - 25);
    return h & 0x8000 ? -v : v;
}

/* Random keys [n][d]; with huge, a few values beyond f16 (the table holds inf). */
static float *rand_keys(size_t n, int d, uint64_t seed, int huge)
{
    float *k = malloc(sizeof(float) * n * d + 1);
    for (size_t i = 0; i < n * (size_t)d; i++) {
        k[i] = 2.0f * tu_randn(&seed) + (float)((i / (size_t)d / 16) % 5);
        if (huge && i % 211 == 17) k[i] = (i & 1 ? 1 : -1) * 9.0e4f;
    }
    return k;
}

typedef struct { eg_route_table *t; uint8_t *sum; size_t bytes; } built;

static int build_table_f16(eg_router_kind kind, const float *k, size_t nseg, int d, int S, int f16, built *b)
{
    eg_summary_spec sp = { kind, d, S, NULL, f16 };
    memset(b, 0, sizeof *b);
    if (eg_summary_bytes(&sp, &b->bytes) < 0) return -1;
    b->sum = malloc(b->bytes * nseg + 1);
    for (size_t s = 0; s < nseg; s++)
        if (eg_summary_compute(&sp, k + s * S * d, b->sum + s * b->bytes, b->bytes) < 0) return -1;
    if (eg_route_table_create(&sp, &b->t) < 0) return -1;
    /* two appends, so a block of 8 is filled across calls */
    size_t first = nseg / 3;
    if (eg_route_table_append(b->t, b->sum, first, NULL) < 0) return -1;
    return eg_route_table_append(b->t, b->sum + first * b->bytes, nseg - first, NULL);
}

static int build_table(eg_router_kind kind, const float *k, size_t nseg, int d, int S, built *b)
{
    return build_table_f16(kind, k, nseg, d, S, 0, b);
}

static void built_free(built *b)
{
    eg_route_table_free(b->t);
    free(b->sum);
}

/* Integer sums of 2^24 and beyond (keys and query aligned, every code
 * near its limit), where float(J) could round below J and the epilogue
 * adds 64 first: every kernel gives the same bits, on block counts odd
 * and even, and quest's score still bounds the exact dot. */
static void test_q8_big_sums(void)
{
    const int d = 128, S = 16, nr = 3;
    long big = 0, diff = 0, below = 0;
    for (int kind = 0; kind < 2; kind++)
        for (size_t nseg = 36; nseg <= 45; nseg += 9) {
            uint64_t seed = 5 + nseg;
            float *k = malloc(sizeof(float) * nseg * S * d);
            for (size_t i = 0; i < nseg * S * (size_t)d; i++) k[i] = 3.0f + 0.01f * tu_randn(&seed);
            built b;
            REQUIRE(build_table(kind ? EG_ROUTER_BALL : EG_ROUTER_QUEST, k, nseg, d, S, &b) == 0);
            float q[3 * 128];
            for (int i = 0; i < d; i++) { q[i] = 1.0f; q[d + i] = -1.0f; q[2 * d + i] = tu_randn(&seed); }
            eg_route_rows rw = { .n_rows = nr, .q = q, .scale = 0.1f };
            ix_ctx c;
            REQUIRE(ix_ctx_init(&c, b.t, &rw, NULL) == 0);
            size_t w = (size_t)b.t->width, nc = ix_q8_quads(b.t) * 4;
            for (int r = 0; r < nr; r++)
                for (size_t sg = 0; sg < nseg; sg++) {
                    int64_t I = 0;
                    for (size_t ch = 0; ch < w; ch++) I += (int64_t)ix_q8_code(b.t, sg, ch) * c.qq[(size_t)r * nc + ch];
                    int64_t J = 2 * I + b.t->q8l1[sg];
                    big += J >= (1 << 24) || J <= -(1 << 24);
                }
            ix_ctx_free(&c);
            float *out[3];
            CHECK_OK(tu_scores_every_kernel(b.t, &rw, nseg, out));
            diff += memcmp(out[0], out[1], sizeof(float) * nr * nseg) != 0;
            diff += memcmp(out[0], out[2], sizeof(float) * nr * nseg) != 0;
            for (int r = 0; r < nr && !kind; r++)
                for (size_t sg = 0; sg < nseg; sg++) {
                    double tru = -INFINITY;
                    for (int t = 0; t < S; t++) {
                        double dot = 0;
                        for (int ch = 0; ch < d; ch++) dot += (double)q[r * d + ch] * k[(sg * S + t) * d + ch];
                        tru = fmax(tru, dot);
                    }
                    below += !(out[0][(size_t)r * nseg + sg] >= tru);
                }
            for (int v = 0; v < 3; v++) free(out[v]);
            free(k);
            built_free(&b);
        }
    printf("  %ld integer sums of 2^24 or more: %ld kernels differing, %ld quest scores below the exact dot\n",
           big, diff, below);
    CHECK(big > 0);
    CHECK_EQ_INT(diff, 0);
    CHECK_EQ_INT(below, 0);
}

/* Quest (f16 tables) and centroid scores of every shape: both kernels
 * within the stated rounding of a double loop over the stored halves (and
 * of each other). */
static void test_score_kernel_reference(void)
{
    static const int dims[] = { 1, 5, 33, 64, 128 };
    static const size_t segs[] = { 1, 7, 8, 9, 37, 100 };
    static const int rows[] = { 1, 2, 3, 4, 5, 7, 9 };
    uint64_t seed = 11;
    int cases = 0, bad = 0;
    double worst = 0;
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++)
        for (size_t si = 0; si < sizeof segs / sizeof *segs; si++)
            for (int kind = 0; kind < 2; kind++) {
                int d = dims[di], S = 16, nr = rows[(di + si + (size_t)kind) % 7], huge = si == 4;
                size_t nseg = segs[si];
                float *k = rand_keys(nseg * S, d, seed++, huge);
                built b;
                REQUIRE(build_table_f16(kind ? EG_ROUTER_CENTROID : EG_ROUTER_QUEST, k, nseg, d, S, 1, &b) == 0);
                float *q = malloc(sizeof(float) * nr * d);
                for (int i = 0; i < nr * d; i++) q[i] = tu_randn(&seed);
                eg_route_rows rw = { .n_rows = nr, .q = q, .scale = 0.1f };
                float *fast = malloc(sizeof(float) * nr * nseg), *port = malloc(sizeof(float) * nr * nseg);
                eg_index_kernels(0);
                CHECK_OK(eg_router_score_all(b.t, &rw, fast));
                eg_index_kernels(1);
                CHECK_OK(eg_router_score_all(b.t, &rw, port));
                eg_index_kernels(0);
                double tmax = 0;
                for (size_t i = 0; i < nseg * b.bytes / 2; i++) tmax = fmax(tmax, fabs(half_to_double(b.sum + 2 * i)));
                tmax = tmax > FLT_MAX ? FLT_MAX : tmax;
                for (int r = 0; r < nr; r++)
                    for (size_t s = 0; s < nseg; s++) {
                        const uint8_t *row = b.sum + s * b.bytes;
                        double ql1 = 0;
                        for (int c = 0; c < d; c++) ql1 += fabs(q[r * d + c]);
                        double ref = 0, mag = 0;
                        for (int c = 0; c < d; c++) {
                            double qc = q[r * d + c], v;
                            if (kind) v = half_to_double(row + 2 * c);
                            else v = qc > 0 ? half_to_double(row + 2 * c) : half_to_double(row + 2 * (d + c));
                            v = v > FLT_MAX ? FLT_MAX : v < -FLT_MAX ? -FLT_MAX : v;
                            ref += qc * v;
                            mag += fabs(qc * v);
                        }
                        for (int which = 0; which < 2; which++) {   /* AVX2 (or portable), portable */
                            double got = (which ? port : fast)[(size_t)r * nseg + s], err = fabs(got - ref) / (mag + 1e-30);
                            /* centroid: the raw f32 dot; quest: slack added (scaled by the
                             * largest |bound| of the group, at most tmax), so never below */
                            double allow = kind ? (d + 2) * 0x1p-23 * mag : (4.0 * d + 10) * 0x1p-23 * ql1 * tmax;
                            if (mag > 1e30 && got == INFINITY) err = 0;   /* overflowed f32: +inf, still a bound */
                            else if (fabs(got - ref) > allow || (!kind && got < ref - 1e-300) || got != got) {
                                if (bad < 5)
                                    fprintf(stderr, "  d %d nseg %zu kind %d r %d s %zu: %.9g vs %.9g\n", d, nseg,
                                            kind, r, s, got, ref);
                                bad++;
                            }
                            if (!huge) worst = err > worst ? err : worst;   /* huge: slack of FLT_MAX */
                        }
                    }
                cases++;
                free(q); free(fast); free(port); free(k);
                built_free(&b);
            }
    CHECK(bad == 0);
    printf("  %d tables (%s and portable): worst relative error %.2g\n", cases,
           eg_index_kernels(-1), worst);
}

/* Int8 quest tables: every kernel (portable, AVX2, AVX-512 VNNI where the
 * CPU has it) gives the same bits; each score is at least the exact quest
 * score of the stored halves (a double loop) and at least the true max of
 * q.k over the segment's keys, and at most a few percent of the score's
 * magnitude above the f16 table's. */
static void test_q8_scores(void)
{
    static const int dims[] = { 1, 3, 16, 64, 128, 576 };
    static const size_t segs[] = { 1, 7, 9, 40, 100 };
    uint64_t seed = 77;
    long cases = 0, below = 0, diff = 0, loose = 0, inf_rows = 0;
    double mean_loose = 0;
    long n_loose = 0;
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++)
        for (size_t si = 0; si < sizeof segs / sizeof *segs; si++)
            for (int shape = 0; shape < 3; shape++) {
                int d = dims[di], S = 16, nr = 1 + (int)((di * 3 + si + (size_t)shape) % 9);
                size_t nseg = segs[si];
                int huge = shape == 2 && si == 3;
                float *k = rand_keys(nseg * S, d, seed++, huge);
                if (shape == 1)   /* an outlier channel 40 times the others */
                    for (size_t i = 0; i < nseg * S; i++) k[i * d] *= 40.0f;
                built b;
                REQUIRE(build_table(EG_ROUTER_QUEST, k, nseg, d, S, &b) == 0);
                float *q = malloc(sizeof(float) * nr * d);
                for (int i = 0; i < nr * d; i++) q[i] = tu_randn(&seed) * (shape == 1 && i % d == 0 ? 0.05f : 1.0f);
                if (nr >= 3 && shape == 0) {   /* a zero row and a row beyond the 12-bit codes' range */
                    for (int i = 0; i < d; i++) { q[i] = 0.0f; q[d + i] *= 1e30f; }
                }
                eg_route_rows rw = { .n_rows = nr, .q = q, .scale = 0.1f };
                float *out[3];
                CHECK_OK(tu_scores_every_kernel(b.t, &rw, nseg, out));
                if (memcmp(out[0], out[1], sizeof(float) * nr * nseg) || memcmp(out[0], out[2], sizeof(float) * nr * nseg))
                    diff++;
                for (int r = 0; r < nr; r++)
                    for (size_t s = 0; s < nseg; s++) {
                        const uint8_t *row = b.sum + s * b.bytes;
                        double ref = 0, mag = 0, tru = -INFINITY;
                        for (int c = 0; c < d; c++) {
                            double qc = q[r * d + c], mx = half_to_double(row + 2 * c), mn = half_to_double(row + 2 * (d + c));
                            ref += qc > 0 ? qc * mx : qc * mn;
                            mag += fabs(qc) * fmax(fabs(mx), fabs(mn));
                        }
                        for (int t = 0; t < S; t++) {
                            double dot = 0;
                            for (int c = 0; c < d; c++) dot += (double)q[r * d + c] * k[(s * S + t) * d + c];
                            tru = fmax(tru, dot);
                        }
                        double got = out[0][(size_t)r * nseg + s];
                        if (isinf(ref)) continue;
                        if (!(got >= ref) || !(got >= tru)) {
                            if (below < 5) fprintf(stderr, "  d %d s %zu r %d: %.9g below %.9g (true %.9g)\n", d, s, r, got, ref, tru);
                            below++;
                        }
                        if (huge) continue;   /* a group holding an inf: the slack of FLT_MAX */
                        if (isinf(got)) { inf_rows++; continue; }   /* the 1e30 row: +inf, a bound */
                        if (got > ref + 0.05 * mag + 1e-12) {   /* a zero row: t s L1 / 2 at t = 2^-60 */
                            if (loose < 5) fprintf(stderr, "  loose: d %d shape %d s %zu r %d: %.6g, exact %.6g, magnitude %.6g\n", d, shape, s, r, got, ref, mag);
                            loose++;
                        }
                        if (mag > 0) {   /* the zero row has no magnitude to compare with */
                            mean_loose += (got - ref) / mag;
                            n_loose++;
                        }
                    }
                cases++;
                for (int w = 0; w < 3; w++) free(out[w]);
                free(q); free(k);
                built_free(&b);
            }
    printf("  %ld int8 tables (%s): %ld below the exact score, %ld kernels differing, %ld over 5%% looser "
           "(mean looseness %.4f of the magnitude)\n", cases, eg_index_kernels(-1), below, diff, loose,
           mean_loose / (n_loose ? n_loose : 1));
    CHECK_EQ_INT(below, 0);
    CHECK_EQ_INT(diff, 0);
    CHECK_EQ_INT(loose, 0);
    CHECK(inf_rows > 0);
}

/* sum of exp over [-87, 0] and -inf lanes, against long double, for both
 * kernels: within IX_EXP_REL per term. */
static void test_sum_exp_accuracy(void)
{
    enum { N = 1 << 20 };
    float *u = malloc(sizeof(float) * N);
    double worst[2] = { 0, 0 };
    for (int port = 0; port < 2; port++) {
        eg_index_kernels(port);
        /* one term at a time over a dense sweep */
        for (int i = 0; i < N; i++) u[i] = -87.0f * (float)i / (float)(N - 1);
        for (int i = 0; i < N; i += 1) {
            double got = ix_sum_exp(u + i, 1), ref = (double)expl((long double)u[i]);
            double err = fabs(got - ref) / ref;
            worst[port] = err > worst[port] ? err : worst[port];
        }
        /* lengths 0..40 with -inf, and a long sum (double accumulation) */
        uint64_t s = 5;
        for (int len = 0; len <= 40; len++) {
            float v[40];
            long double ref = 0;
            for (int j = 0; j < len; j++) {
                v[j] = tu_rand(&s) % 4 == 0 ? -INFINITY : -30.0f * (float)(tu_rand(&s) % 1000) / 1000.0f;
                ref += v[j] == -INFINITY ? 0 : expl(v[j]);
            }
            double got = ix_sum_exp(v, (size_t)len);
            CHECK(fabs(got - (double)ref) <= IX_EXP_REL * (double)ref + 1e-300);
        }
        long double ref = 0;
        for (int i = 0; i < N; i++) ref += expl((long double)u[i]);
        double got = ix_sum_exp(u, N);
        CHECK(fabs(got - (double)ref) <= IX_EXP_REL * (double)ref);
    }
    eg_index_kernels(0);
    CHECK(worst[0] <= IX_EXP_REL && worst[1] <= IX_EXP_REL);
    printf("  worst relative error per term: %.2g (%s), %.2g (portable); allowed %.1g\n", worst[0],
           eg_index_kernels(-1), worst[1], IX_EXP_REL);
    free(u);
}

/* The bound's exp-sum of terms scale * score + base (skipped segments
 * -inf): every kernel (portable, AVX2, AVX-512 where the CPU has it) finds
 * the same max, bit for bit, and sums within IX_EXP_REL per term of long
 * double; lengths that leave vector tails, skips, -inf scores, group
 * sizes a base may span (24: not a multiple of 16). */
static void test_sum_exp_terms_kernels(void)
{
    uint64_t s = 29;
    static const size_t lens[] = { 0, 1, 15, 16, 17, 31, 64, 100, 1000, 4099 };
    static const size_t groups[] = { 16, 24, 32 };   /* 24: AVX-512 hands it to AVX2 */
    int cases = 0, bad = 0;
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++)
        for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++) {
            size_t n = lens[li], G = groups[gi], ng = n / G + 1;
            float *sc = malloc(sizeof(float) * (n + 1)), *base = malloc(sizeof(float) * ng);
            uint8_t *skip = malloc(n + 1);
            for (size_t i = 0; i < n; i++) {
                sc[i] = tu_rand(&s) % 50 == 0 ? -INFINITY : 40.0f * tu_randf(&s);
                skip[i] = tu_rand(&s) % 7 == 0;
            }
            for (size_t g = 0; g < ng; g++) base[g] = 4.0f + tu_randf(&s);
            float scale = 0.7f, m[3];
            double sum[3];
            for (int w = 0; w < 3; w++) {
                eg_index_kernels(w == 0 ? 1 : w == 1 ? 2 : 0);
                sum[w] = ix_sum_exp_terms(sc, skip, n, scale, base, G, &m[w]);
            }
            eg_index_kernels(0);
            long double ref = 0;
            float mx = -INFINITY;
            for (size_t i = 0; i < n; i++) {
                float x = skip[i] ? -INFINITY : fmaf(scale, sc[i], base[i / G]);
                mx = x > mx ? x : mx;
            }
            for (size_t i = 0; i < n && mx > -INFINITY; i++) {
                float x = skip[i] ? -INFINITY : fmaf(scale, sc[i], base[i / G]);
                if (x - mx >= -87.0f) ref += expl((long double)(x - mx));
            }
            for (int w = 0; w < 3; w++) {
                int ok = memcmp(&m[w], &mx, sizeof mx) == 0 &&
                         (mx == -INFINITY || fabs(sum[w] - (double)ref) <= IX_EXP_REL * (double)ref + 1e-300);
                if (!ok && bad++ < 5)
                    fprintf(stderr, "  n %zu G %zu kernel %d: max %g (want %g), sum %.17g (want %.17Lg)\n", n, G, w,
                            m[w], mx, sum[w], ref);
            }
            cases++;
            free(sc); free(base); free(skip);
        }
    printf("  %d exp-sums, three kernels (best here %s)\n", cases, eg_index_kernels(-1));
    CHECK(bad == 0);
}

/* The exp-sum with the ball's lift and a reference: every kernel gives the
 * max it used and a sum within the error of long double over the lifted
 * terms. A reference a little above the max (the bound's case) or 20
 * below is used in one pass; one 100 above (the sum under 2^-60) or 95
 * or 150 below (past float's exp: terms clamped, a sum over e^80) falls
 * back to the max. */
static void test_sum_exp_lifted_kernels(void)
{
    uint64_t s = 31;
    static const size_t lens[] = { 0, 1, 17, 32, 100, 1000, 4099 };
    static const size_t groups[] = { 16, 24, 32 };
    static const float offs[] = { NAN, 3.0f, -20.0f, 100.0f, -95.0f, -150.0f };
    int cases = 0, bad = 0, one_pass = 0;
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++)
        for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++) {
            size_t n = lens[li], G = groups[gi], ng = n / G + 1;
            float *sc = malloc(sizeof(float) * (n + 1)), *rad = malloc(sizeof(float) * (n + 1));
            float *base = malloc(sizeof(float) * ng);
            uint8_t *skip = malloc(n + 1);
            for (size_t i = 0; i < n; i++) {
                sc[i] = tu_rand(&s) % 50 == 0 ? -INFINITY : 40.0f * tu_randf(&s);
                rad[i] = 3.0f * fabsf(tu_randf(&s));
                skip[i] = tu_rand(&s) % 7 == 0;
            }
            for (size_t g = 0; g < ng; g++) base[g] = 4.0f + tu_randf(&s);
            const float scale = 0.7f, rq = 0.8f;
            float mx = -INFINITY;
            for (size_t i = 0; i < n; i++) {
                float x = skip[i] ? -INFINITY : fmaf(scale, sc[i] + rq * rad[i], base[i / G]);
                mx = x > mx ? x : mx;
            }
            for (size_t oi = 0; oi < sizeof offs / sizeof *offs; oi++) {
                float ref = isnan(offs[oi]) ? NAN : mx + offs[oi];
                int want_ref = mx > -INFINITY && (offs[oi] == 3.0f || offs[oi] == -20.0f);
                float want_m = want_ref ? ref : mx;
                long double tru = 0;
                for (size_t i = 0; i < n && want_m > -INFINITY; i++) {
                    float x = skip[i] ? -INFINITY : fmaf(scale, sc[i] + rq * rad[i], base[i / G]);
                    if (x - want_m >= -87.0f) tru += expl((long double)(x - want_m));
                }
                for (int w = 0; w < 3; w++) {
                    eg_index_kernels(w == 0 ? 1 : w == 1 ? 2 : 0);
                    ix_terms a = { sc, skip, n, scale, base, G, rad, rq, ref };
                    float m;
                    double sum = ix_sum_exp_lifted(&a, &m);
                    int ok = memcmp(&m, &want_m, sizeof m) == 0 &&
                             (want_m == -INFINITY || fabs(sum - (double)tru) <= 2 * IX_EXP_REL * (double)tru);
                    if (!ok && bad++ < 5)
                        fprintf(stderr, "  n %zu G %zu ref %+g kernel %d: m %g (want %g), sum %.17g (want %.17Lg)\n", n,
                                G, (double)offs[oi], w, m, want_m, sum, tru);
                    one_pass += want_ref && m == ref;
                }
                cases++;
            }
            eg_index_kernels(0);
            free(sc); free(rad); free(base); free(skip);
        }
    printf("  %d lifted exp-sums, three kernels: %d in one pass from the reference\n", cases, one_pass);
    CHECK(bad == 0);
    CHECK(one_pass > 0);
}

/* The learned outliers' mixture, both kernels, against long double: every
 * m of 1..8, lengths that leave vector tails, wide ranges, and the +-inf
 * terms that pass through as themselves. */
static void test_lse_mix(void)
{
    uint64_t s = 17;
    double worst[2] = { 0, 0 };
    for (int port = 0; port < 2; port++) {
        eg_index_kernels(port);
        for (size_t m = 1; m <= 8; m++)
            for (size_t n = 0; n <= 37; n += 1 + n / 3) {
                float o[40], x[40 * 8], got[40];
                for (size_t i = 0; i < n; i++) {
                    o[i] = (float)((double)(tu_rand(&s) % 20001) / 100.0 - 100.0);
                    for (size_t j = 0; j < m; j++) x[i * m + j] = (float)((double)(tu_rand(&s) % 20001) / 100.0 - 100.0);
                }
                memcpy(got, o, sizeof(float) * n);
                ix_lse_mix(got, x, n, m, 0.125f, 3.5f, 0.2f);
                for (size_t i = 0; i < n; i++) {
                    long double t[9], mx, z = 0;
                    t[0] = 3.5L + 0.125L * o[i];
                    mx = t[0];
                    for (size_t j = 0; j < m; j++) { t[1 + j] = 0.2L * x[i * m + j]; mx = t[1 + j] > mx ? t[1 + j] : mx; }
                    for (size_t j = 0; j <= m; j++) z += expl(t[j] - mx);
                    double ref = (double)(mx + logl(z)), e = fabs(got[i] - ref) / (1 + fabs(ref));
                    worst[port] = e > worst[port] ? e : worst[port];
                }
            }
        float o[9] = { 1, 2, INFINITY, -INFINITY, 0, 0, 0, 0, 5 }, x[9] = { 0, 0, 0, 0, INFINITY, -INFINITY, 0, 0, 1 };
        ix_lse_mix(o, x, 9, 1, 1.0f, 0.0f, 1.0f);
        CHECK(o[2] == INFINITY && o[4] == INFINITY);
        CHECK(isfinite(o[0]) && isfinite(o[3]) && isfinite(o[5]) && isfinite(o[8]));
        CHECK(fabsf(o[3] - 0.0f) < 1e-6f && fabsf(o[5] - 0.0f) < 1e-6f);   /* log(0 + e^0), log(e^0 + 0) */
        float o2[8] = { -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY };
        float x2[8] = { -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY };
        ix_lse_mix(o2, x2, 8, 1, 1.0f, 0.0f, 1.0f);
        for (int i = 0; i < 8; i++) CHECK(o2[i] == -INFINITY);
    }
    eg_index_kernels(0);
    printf("  worst relative error: %.2g (%s), %.2g (portable)\n", worst[0], eg_index_kernels(-1), worst[1]);
    CHECK(worst[0] < 1e-6 && worst[1] < 1e-6);
}

/* log of the exact sum of exp(scale q.k) over visible unselected tokens of row r. */
static double exact_lse_unselected(const float *k, size_t nseg, int d, int S, const float *q, float scale,
                                   int64_t pos, const uint8_t *sel)
{
    double m = -INFINITY, z = 0;
    for (size_t t = 0; t < nseg * (size_t)S && (int64_t)t <= pos; t++) {
        if (sel[t / (size_t)S]) continue;
        double v = 0;
        for (int c = 0; c < d; c++) v += (double)q[c] * k[t * d + c];
        v *= scale;
        if (v > m) { z = z * exp(m - v) + 1; m = v; } else z += exp(v - m);
    }
    return z > 0 ? m + log(z) : -INFINITY;
}

/* select_bound = select + unselected_bound: the same selection, a bound
 * no looser, and never below the exact left-out mass; flat and
 * hierarchical, both kernels. */
static void test_select_bound_fused(void)
{
    const int d = 32, S = 16;
    uint64_t seed = 99;
    int checked = 0;
    for (int trial = 0; trial < 12; trial++) {
        size_t nseg = 20 + (size_t)trial * 23;
        float *k = rand_keys(nseg * S, d, seed++, trial == 5);
        built b;
        REQUIRE(build_table(EG_ROUTER_QUEST, k, nseg, d, S, &b) == 0);
        int nr = 1 + trial % 5;
        float q[5 * 32];
        int64_t pos[5];
        for (int i = 0; i < nr * d; i++) q[i] = (trial % 3 + 1) * tu_randn(&seed);
        for (int r = 0; r < nr; r++) pos[r] = (int64_t)(tu_rand(&seed) % (nseg * S));
        eg_route_rows rw = { .n_rows = nr, .q = q, .pos = trial % 2 ? pos : NULL, .scale = 0.2f };
        eg_route_opts o;
        eg_route_opts_init(&o);
        o.budget_tokens = S * (3 + trial);
        o.hierarchical = trial % 4 != 3;
        for (int port = 0; port < 2; port++) {
            eg_index_kernels(port);
            eg_route_selection a, f;
            double *ub = NULL;
            CHECK_OK(eg_router_select(b.t, &rw, &o, &a));
            CHECK_OK(eg_router_select_bound(b.t, &rw, &o, &f, &ub));
            REQUIRE(ub);
            REQUIRE(a.n == f.n && a.n_forced == f.n_forced);
            CHECK(!memcmp(a.segments, f.segments, a.n * sizeof *a.segments));
            CHECK(!memcmp(a.scores, f.scores, a.n * sizeof *a.scores));
            size_t no = a.n - a.n_forced;
            double *sep = malloc(sizeof(double) * nr * (no + 1));
            CHECK_OK(eg_route_unselected_bound(b.t, &rw, &a, sep));
            uint8_t *mark = calloc(nseg, 1);
            for (size_t i = 0; i < a.n_forced; i++) mark[a.segments[i]] = 1;
            for (size_t i = 0; i <= no; i++) {
                if (i) mark[a.segments[a.n_forced + i - 1]] = 1;
                for (int r = 0; r < nr; r++) {
                    double fu = ub[(size_t)r * (no + 1) + i], su = sep[(size_t)r * (no + 1) + i];
                    int64_t p = rw.pos ? pos[r] : (int64_t)(nseg * S) - 1;
                    double ex = exact_lse_unselected(k, nseg, d, S, q + r * d, rw.scale, p, mark);
                    if (!(fu <= su + 1e-12) || !(fu >= ex - 1e-9 * fabs(ex) || ex == -INFINITY))
                        fprintf(stderr, "  trial %d port %d prefix %zu/%zu row %d: fused %.9g sep %.9g exact %.9g\n",
                                trial, port, i, no, r, fu, su, ex);
                    CHECK(fu <= su + 1e-12);
                    CHECK(fu >= ex - 1e-9 * fabs(ex) || ex == -INFINITY);
                    if (ex == -INFINITY) CHECK(fu == -INFINITY);
                    checked++;
                }
            }
            free(mark);
            free(sep);
            free(ub);
            eg_route_selection_free(&a);
            eg_route_selection_free(&f);
        }
        eg_index_kernels(0);
        built_free(&b);
        free(k);
    }
    printf("  %d (row, prefix) bounds: fused <= separate, and >= the exact left-out mass\n", checked);
}

/* parallel_for helpers: one runs the parts on threads of its own, the
 * other in reverse order on the caller's; both must give the same bits
 * as one thread. */
typedef struct { void (*fn)(void *, int); void *arg; int i; } par_task;
static void *par_thread(void *a)
{
    par_task *t = a;
    t->fn(t->arg, t->i);
    return NULL;
}
static int par_calls;
static void par_threads(void *ctx, int n, void (*fn)(void *, int), void *arg)
{
    (void)ctx;
    par_task t[16];
    pthread_t th[16];
    REQUIRE(n >= 1 && n <= 16);
    for (int i = 0; i < n; i++) {
        t[i] = (par_task){ fn, arg, i };
        REQUIRE(pthread_create(&th[i], NULL, par_thread, &t[i]) == 0);
    }
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
    par_calls++;
}
static void par_reverse(void *ctx, int n, void (*fn)(void *, int), void *arg)
{
    (void)ctx;
    for (int i = n; i-- > 0;) fn(arg, i);
    par_calls++;
}

/* A scan split over parallel_for selects and bounds exactly as one thread,
 * flat and hierarchical, peaked and flat heads, both kernels. */
static void test_select_bound_parallel(void)
{
    const int d = 16, S = 16;
    uint64_t seed = 7;
    int split = 0;
    for (int trial = 0; trial < 8; trial++) {
        size_t nseg = 1500 + (size_t)trial * 701;
        float *k = rand_keys(nseg * S, d, seed++, 0);
        built b;
        REQUIRE(build_table(EG_ROUTER_QUEST, k, nseg, d, S, &b) == 0);
        int nr = 1 + trial % 4;
        float q[4 * 16];
        for (int i = 0; i < nr * d; i++) q[i] = (trial % 2 ? 3.0f : 0.3f) * tu_randn(&seed);
        eg_route_rows rw = { .n_rows = nr, .q = q, .pos = NULL, .scale = 0.25f };
        eg_route_opts o;
        eg_route_opts_init(&o);
        o.budget_tokens = S * (8 + 40 * trial);
        o.hierarchical = trial % 3 != 2;
        eg_index_kernels(trial % 2);
        eg_route_selection a, f;
        double *ua = NULL, *uf = NULL;
        CHECK_OK(eg_router_select_bound(b.t, &rw, &o, &a, &ua));
        o.parallel_for = trial % 4 < 2 ? par_threads : par_reverse;
        o.parallel_parts = 2 + trial % 3;
        int calls = par_calls;
        CHECK_OK(eg_router_select_bound(b.t, &rw, &o, &f, &uf));
        split += par_calls > calls;   /* a peaked head may descend too few groups to split */
        REQUIRE(ua && uf && a.n == f.n && a.n_forced == f.n_forced);
        CHECK(!memcmp(a.segments, f.segments, a.n * sizeof *a.segments));
        CHECK(!memcmp(a.scores, f.scores, a.n * sizeof *a.scores));
        CHECK(!memcmp(ua, uf, (size_t)nr * (a.n - a.n_forced + 1) * sizeof *ua));
        CHECK_EQ_INT((long long)a.scored, (long long)f.scored);
        free(ua);
        free(uf);
        eg_route_selection_free(&a);
        eg_route_selection_free(&f);
        built_free(&b);
        free(k);
    }
    eg_index_kernels(0);
    CHECK(split >= 6);
    printf("  %d of 8 calls split (%d parallel_for calls): same selection and bound bits as one thread\n", split,
           par_calls);
}

/* Bad input to the fused call loses nothing and allocates nothing. */
static void test_select_bound_errors(void)
{
    const int d = 8, S = 16;
    float *k = rand_keys(10 * S, d, 3, 0);
    built qb, cb;
    REQUIRE(build_table(EG_ROUTER_QUEST, k, 10, d, S, &qb) == 0);
    REQUIRE(build_table(EG_ROUTER_CENTROID, k, 10, d, S, &cb) == 0);
    float q[8] = { 1, 0, 0, 0, 0, 0, 0, NAN };
    eg_route_rows rw = { .n_rows = 1, .q = q, .scale = 0.3f };
    eg_route_opts o;
    eg_route_opts_init(&o);
    o.budget_tokens = 64;
    eg_route_selection sel;
    double *ub = (double *)&o;
    CHECK_EQ_INT(eg_router_select_bound(qb.t, &rw, &o, &sel, &ub), EG_IX_ENONFINITE);
    CHECK(ub == NULL && sel.segments == NULL);
    q[7] = 0;
    CHECK_EQ_INT(eg_router_select_bound(cb.t, &rw, &o, &sel, &ub), EG_IX_EKIND);
    CHECK_EQ_INT(eg_router_select_bound(qb.t, &rw, &o, &sel, NULL), EG_IX_EINVAL);
    o.budget_tokens = 0;
    CHECK_EQ_INT(eg_router_select_bound(qb.t, &rw, &o, &sel, &ub), EG_IX_EBUDGET);
    CHECK(ub == NULL);
    built_free(&qb);
    built_free(&cb);
    free(k);
}

/* Table building compares halves as integers: -0 and +0 are equal, NaN and
 * min > max are refused, and group rows hold the max of maxes. */
static void test_half_order(void)
{
  for (int f16 = 1; f16 >= 0; f16--) {
    enum { D = 2, S = 16 };
    eg_summary_spec sp = { EG_ROUTER_QUEST, D, S, NULL, f16 };
    eg_route_table *t;
    REQUIRE(eg_route_table_create(&sp, &t) == 0);
    /* rows: max[2] then min[2], little-endian halves */
    uint16_t ok[2][4] = { { 0x8000, 0x3c00, 0x0000, 0xbc00 },    /* max -0, 1; min +0, -1 */
                          { 0x4000, 0xc000, 0xc200, 0xc400 } };  /* max 2, -2; min -3, -4 */
    uint8_t b[2][8];
    for (int i = 0; i < 2; i++)
        for (int c = 0; c < 4; c++) { b[i][2 * c] = (uint8_t)ok[i][c]; b[i][2 * c + 1] = (uint8_t)(ok[i][c] >> 8); }
    CHECK_OK(eg_route_table_append(t, b, 2, NULL));
    uint8_t bad[8];
    memcpy(bad, b[1], 8);
    bad[4] = 0x00; bad[5] = 0x44;                                  /* min 4 > max 2 */
    CHECK_EQ_INT(eg_route_table_append(t, bad, 1, NULL), EG_IX_ECORRUPT);
    memcpy(bad, b[1], 8);
    bad[0] = 0x01; bad[1] = 0x7e;                                  /* NaN max */
    CHECK_EQ_INT(eg_route_table_append(t, bad, 1, NULL), EG_IX_ECORRUPT);
    CHECK_EQ_INT(eg_route_table_segments(t), 2);
    /* with q = (1, 1) a quest score is the sum of the maxes */
    float q[2] = { 1.0f, 1.0f }, out[2];
    eg_route_rows rw = { .n_rows = 1, .q = q, .scale = 1.0f };
    CHECK_OK(eg_router_score_all(t, &rw, out));
    /* f16: exactly, up to the slack; int8: the query's rounding margin */
    CHECK(out[0] >= 1.0f && out[0] < (f16 ? 1.0001f : 1.02f));    /* max(-0, 1) summed: 0 + 1 */
    CHECK(out[1] >= 0.0f && out[1] < (f16 ? 0.0001f : 0.1f));     /* 2 + -2 */
    eg_route_table_free(t);
  }
}

int main(void)
{
    TEST_RUN(test_half_order);
    TEST_RUN(test_score_kernel_reference);
    TEST_RUN(test_q8_scores);
    TEST_RUN(test_q8_big_sums);
    TEST_RUN(test_sum_exp_accuracy);
    TEST_RUN(test_sum_exp_terms_kernels);
    TEST_RUN(test_sum_exp_lifted_kernels);
    TEST_RUN(test_lse_mix);
    TEST_RUN(test_select_bound_fused);
    TEST_RUN(test_select_bound_parallel);
    TEST_RUN(test_select_bound_errors);
    TEST_END();
}
