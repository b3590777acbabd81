/* test_index_ball.c: the ball router (index/ball.c, qscan.c): its stored
 * radius against the keys, its int8 centre against the stored box, every
 * kernel giving the same bits, and each segment's bound against the true
 * mass of its keys under every codec and on hostile keys (outlier
 * channels, values beyond f16, a radius not measured, an infinite one).
 * Includes index/'s internal header to read decoded centres. */
#include "index.h"
#include "ix_internal.h"
#include "memory.h"
#include "testutil.h"
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static double half_at(const uint8_t *p) { return ix_f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

/* Keys [T][d]: 0 normal around a drifting mean, 1 an outlier channel, 2
 * clustered (a few directions, retrieval-like), 3 a few values beyond f16. */
static float *keys_of(int pat, size_t T, int d, uint64_t seed)
{
    float *k = malloc(sizeof(float) * T * d + 4);
    for (size_t t = 0; t < T; t++)
        for (int c = 0; c < d; c++) {
            float x = tu_randn(&seed) + (float)((t / 64 + (size_t)c) % 5) - 2.0f;
            if (pat == 1 && c == 2) x = 30.0f + 20.0f * x;
            if (pat == 2) x = (float)(((t / 8) * 7 + (size_t)c * 3) % 11) - 5.0f + 0.05f * tu_randn(&seed);
            if (pat == 3 && (t * d + (size_t)c) % 233 == 19) x = (c & 1 ? 1 : -1) * 9.0e4f;
            k[t * d + c] = x;
        }
    return k;
}

static eg_route_table *ball_table(const float *k, size_t nseg, int d, int S, uint8_t **sum_out, size_t *sb)
{
    eg_summary_spec sp = { EG_ROUTER_BALL, d, S, NULL, 0 };
    if (eg_summary_bytes(&sp, sb) < 0) return NULL;
    uint8_t *sum = malloc(*sb * nseg + 1);
    for (size_t s = 0; s < nseg; s++)
        if (eg_summary_compute(&sp, k + s * S * d, sum + s * *sb, *sb) < 0) { free(sum); return NULL; }
    eg_route_table *t = NULL;
    size_t first = nseg / 3;   /* two appends: a block of 8 filled across calls */
    if (eg_route_table_create(&sp, &t) < 0 || eg_route_table_append(t, sum, first, NULL) < 0 ||
        eg_route_table_append(t, sum + first * *sb, nseg - first, NULL) < 0) {
        eg_route_table_free(t);
        free(sum);
        return NULL;
    }
    if (sum_out) *sum_out = sum;
    else free(sum);
    return t;
}

/* The stored radius is the keys' largest distance from the stored box's
 * centre, rounded up by no more than float rounding; the box is quest's. */
static void test_ball_summary(void)
{
    const int S = 32;
    static const int dims[] = { 1, 7, 64, 128 };
    int cases = 0;
    for (size_t di = 0; di < 4; di++)
        for (int pat = 0; pat < 3; pat++) {
            int d = dims[di];
            float *k = keys_of(pat, (size_t)S, d, 5 + di * 3 + (uint64_t)pat);
            eg_summary_spec sb = { EG_ROUTER_BALL, d, S, NULL, 0 }, sq = { EG_ROUTER_QUEST, d, S, NULL, 0 };
            size_t nb, nq;
            REQUIRE(eg_summary_bytes(&sb, &nb) == 0 && eg_summary_bytes(&sq, &nq) == 0);
            CHECK_EQ_INT(nb, nq + 4);
            uint8_t *b = malloc(nb), *q = malloc(nq);
            CHECK_OK(eg_summary_compute(&sb, k, b, nb));
            CHECK_OK(eg_summary_compute(&sq, k, q, nq));
            CHECK(memcmp(b, q, nq) == 0);
            double r2 = 0;
            for (int t = 0; t < S; t++) {
                double e2 = 0;
                for (int c = 0; c < d; c++) {
                    double m = 0.5 * (half_at(b + 2 * c) + half_at(b + 2 * (d + c)));
                    e2 += (k[t * d + c] - m) * (k[t * d + c] - m);
                }
                r2 = fmax(r2, e2);
            }
            float r;
            memcpy(&r, b + nq, 4);
            CHECK((double)r >= sqrt(r2) && (double)r <= sqrt(r2) * (1 + 1e-6) + 1e-30);
            cases++;
            free(b); free(q); free(k);
        }
    CHECK_EQ_INT(cases, 12);
    /* Spec errors as the other kinds. */
    eg_summary_spec bad = { EG_ROUTER_BALL, 0, S, NULL, 0 };
    size_t n;
    CHECK_EQ_INT(eg_summary_bytes(&bad, &n), EG_IX_EDIM);
    eg_router_kind kind;
    CHECK_OK(eg_router_parse("ball", &kind));
    CHECK(kind == EG_ROUTER_BALL && strcmp(eg_router_name(EG_ROUTER_BALL), "ball") == 0);
}

/* Every kernel gives a ball table's centre scores the same bits, and each
 * is at least the exact dot with the decoded centre and within the query
 * codes' rounding of it. */
static void test_ball_kernels(void)
{
    static const int dims[] = { 1, 3, 16, 64, 128, 576 };
    static const size_t segs[] = { 1, 9, 40, 100 };
    uint64_t seed = 91;
    long cases = 0, diff = 0, below = 0, loose = 0;
    for (size_t di = 0; di < 6; di++)
        for (size_t si = 0; si < 4; si++)
            for (int pat = 0; pat < 4; pat++) {
                int d = dims[di], S = 16, nr = 1 + (int)((di + si + (size_t)pat) % 7);
                size_t nseg = segs[si], sb;
                float *k = keys_of(pat, nseg * S, d, seed++);
                eg_route_table *t = ball_table(k, nseg, d, S, NULL, &sb);
                REQUIRE(t);
                float *q = malloc(sizeof(float) * nr * d);
                for (int i = 0; i < nr * d; i++) q[i] = tu_randn(&seed);
                if (nr >= 3 && pat == 0)   /* a zero row and one beyond the 12-bit codes' range */
                    for (int i = 0; i < d; i++) { q[i] = 0.0f; q[d + i] *= 1e30f; }
                eg_route_rows rw = { .n_rows = nr, .q = q, .scale = 0.1f };
                float *out[3];
                CHECK_OK(tu_scores_every_kernel(t, &rw, nseg, out));
                diff += memcmp(out[0], out[1], sizeof(float) * nr * nseg) != 0 ||
                        memcmp(out[0], out[2], sizeof(float) * nr * nseg) != 0;
                for (int r = 0; r < nr; r++)
                    for (size_t s = 0; s < nseg; s++) {
                        if (t->q8inf[s]) continue;
                        double ref = 0, mag = 0, qn = 0;
                        for (int c = 0; c < d; c++) {
                            double x = ix_q8_value(t, s, (size_t)c);
                            ref += (double)q[r * d + c] * x;
                            mag += fabs((double)q[r * d + c]) * fabs(x);
                            qn += (double)q[r * d + c] * q[r * d + c];
                        }
                        /* the default ranking: the centre's score + beta |q| r */
                        double lift = EG_BALL_BETA * sqrt(qn) * t->q8rad[s];
                        ref += lift * (1 - 1e-6);
                        mag += lift;
                        double got = out[0][(size_t)r * nseg + s];
                        if (!(got >= ref)) below++;
                        /* As quest's: the query's 12-bit step follows its largest channel times
                         * the table's weight, so an outlier channel (1) or values beyond f16 (3)
                         * coarsen every other channel's share; bounds still, not checked here. */
                        if (pat != 1 && pat != 3 && isfinite(got) && got > ref + 0.05 * mag + 1e-12) loose++;
                    }
                cases++;
                for (int w = 0; w < 3; w++) free(out[w]);
                free(q); free(k);
                eg_route_table_free(t);
            }
    printf("  %ld ball tables (%s): %ld kernels differing, %ld below the decoded centre's dot, %ld over 5%% "
           "looser\n", cases, eg_index_kernels(-1), diff, below, loose);
    CHECK_EQ_INT(diff, 0);
    CHECK_EQ_INT(below, 0);
    CHECK_EQ_INT(loose, 0);
}

/* Group scores (the centre's f16 score plus |q| R, rounded up) give the
 * same bits on every kernel, over ranges around the vector width, with
 * an infinite radius, a NaN one, and a query row too large to code. */
static void test_ball_group_kernels(void)
{
    const int d = 40, S = 16;
    const size_t nseg = 11 * EG_IX_GROUP + 5, ng = (nseg + EG_IX_GROUP - 1) / EG_IX_GROUP;
    float *k = keys_of(0, nseg * S, d, 56);
    size_t sb;
    eg_route_table *t = ball_table(k, nseg, d, S, NULL, &sb);
    REQUIRE(t);
    t->gR[3] = INFINITY;
    t->gR[9] = NAN;
    uint64_t rs = 9;
    float q[3 * 40];
    for (int i = 0; i < 3 * d; i++) q[i] = tu_randn(&rs);
    int diff = 0, cases = 0, inf_ok = 1;
    for (int big = 0; big < 2; big++) {
        if (big) q[d + 5] = 1e30f;   /* row 1 too large to code: every group +inf */
        eg_route_rows rows = { .n_rows = 3, .q = q, .scale = 0.2f };
        ix_ctx c;
        REQUIRE(ix_ctx_init(&c, t, &rows, NULL) == 0);
        float a[3 * 12], b[3 * 12];
        for (size_t g0 = 0; g0 < ng; g0 += 2)
            for (size_t g1 = g0; g1 <= ng; g1++) {
                memset(a, 0, sizeof a);
                memset(b, 0, sizeof b);
                eg_index_kernels(1);
                ix_group_scores(&c, g0, g1, a, 12);
                eg_index_kernels(0);
                ix_group_scores(&c, g0, g1, b, 12);
                diff += memcmp(a, b, sizeof a) != 0;
                cases++;
                for (size_t g = g0; g < g1; g++)
                    for (int r = 0; r < 3; r++)
                        if ((g == 3 || g == 9 || (big && r == 1)) && b[r * 12 + (g - g0)] != INFINITY) inf_ok = 0;
            }
        ix_ctx_free(&c);
    }
    printf("  %d ranges of group scores: %d differing between the portable and the best kernel\n", cases, diff);
    CHECK_EQ_INT(diff, 0);
    CHECK(inf_ok);
    eg_route_table_free(t);
    free(k);
}

/* log of an upper bound of the mass of segment s alone for each row: the
 * selection forces every other segment. */
static int seg_bound(const eg_route_table *t, const eg_route_rows *rows, size_t nseg, size_t s, double *lub)
{
    eg_route_selection sel = { 0 };
    sel.segments = malloc(sizeof(int64_t) * (nseg ? nseg : 1));
    for (size_t i = 0; i < nseg; i++) if (i != s) sel.segments[sel.n++] = (int64_t)i;
    sel.n_forced = sel.n;
    int rc = eg_route_unselected_bound(t, rows, &sel, lub);
    free(sel.segments);
    return rc;
}

/* Each segment's bound holds its true mass, for keys as every codec
 * decodes them and on every pattern, on every kernel. The ball is tighter
 * than the box on keys spread around their mean (pattern 0), looser where
 * a segment's keys are a few points (pattern 2: for two points the box is
 * never looser, by Cauchy-Schwarz). */
static void test_ball_bound_every_codec(void)
{
    const int d = 32, S = 16, nr = 3;
    const size_t nseg = 12;
    long checked = 0, viol = 0;
    double gain[4] = { 0 };
    for (int pat = 0; pat < 4; pat++)
        for (int codec = 0; codec < EG_CODEC_COUNT; codec++) {
            if (pat == 3 && codec == EG_CODEC_F16) continue;   /* f16 refuses values beyond it */
            float *k = keys_of(pat, nseg * S, d, 300 + (uint64_t)pat * 10 + (uint64_t)codec);
            size_t eb, sb;
            REQUIRE(eg_codec_size(codec, EG_KIND_K, S, d, &eb) == 0);
            void *enc = malloc(eb);
            for (size_t s = 0; s < nseg; s++) {
                CHECK_OK(eg_codec_encode(codec, EG_KIND_K, k + s * S * d, S, d, enc, eb));
                CHECK_OK(eg_codec_decode(codec, EG_KIND_K, enc, eb, S, d, k + s * S * d));
            }
            free(enc);
            eg_route_table *t = ball_table(k, nseg, d, S, NULL, &sb);
            eg_summary_spec sq = { EG_ROUTER_QUEST, d, S, NULL, 0 };
            size_t qb;
            REQUIRE(t && eg_summary_bytes(&sq, &qb) == 0);
            uint8_t *qs = malloc(qb * nseg);
            for (size_t s = 0; s < nseg; s++) CHECK_OK(eg_summary_compute(&sq, k + s * S * d, qs + s * qb, qb));
            eg_route_table *box;
            REQUIRE(eg_route_table_create(&sq, &box) == 0);
            CHECK_OK(eg_route_table_append(box, qs, nseg, NULL));
            free(qs);
            uint64_t rs = 17 + (uint64_t)pat;
            float q[3 * 32];
            for (int i = 0; i < nr * d; i++) q[i] = (pat == 3 ? 1e-3f : 1.0f) * tu_randn(&rs);
            eg_route_rows rows = { .n_rows = nr, .q = q, .scale = 0.3f };
            for (int lvl = 0; lvl < 3; lvl++) {
                eg_index_kernels(lvl == 0 ? 1 : lvl == 1 ? 2 : 0);
                for (size_t s = 0; s < nseg; s++) {
                    double lub[3], lbox[3];
                    CHECK_OK(seg_bound(t, &rows, nseg, s, lub));
                    CHECK_OK(seg_bound(box, &rows, nseg, s, lbox));
                    for (int r = 0; r < nr; r++) {
                        double mx = -INFINITY, z = 0;
                        for (int i = 0; i < S; i++) {
                            double v = 0;
                            for (int c = 0; c < d; c++) v += (double)q[r * d + c] * k[(s * S + i) * d + c];
                            v *= 0.3;
                            if (v > mx) { z = z * exp(mx - v) + 1; mx = v; } else z += exp(v - mx);
                        }
                        double tru = mx + log(z);
                        checked++;
                        if (!(lub[r] >= tru)) {
                            if (viol < 5) fprintf(stderr, "  pattern %d codec %s seg %zu row %d: %.12g < %.12g\n",
                                                  pat, eg_codec_name(codec), s, r, lub[r], tru);
                            viol++;
                        }
                        if (lvl == 2) gain[pat] += (lbox[r] - lub[r]) / (double)(EG_CODEC_COUNT * nseg * nr);
                    }
                }
            }
            eg_index_kernels(0);
            eg_route_table_free(t);
            eg_route_table_free(box);
            free(k);
        }
    printf("  %ld segment bounds, %ld below the true mass; ball under box by %.2f (spread), %.2f (outlier "
           "channel), %.2f (a few points) nats on average\n", checked, viol, gain[0], gain[1], gain[2]);
    CHECK_EQ_INT(viol, 0);
    CHECK(gain[0] > 0);
}

/* A radius not measured (negative) falls back to the box's half-diagonal,
 * still a bound; an infinite radius makes the segment's bound +inf; a NaN
 * radius is refused and nothing is appended. */
static void test_ball_radius_edges(void)
{
    const int d = 16, S = 16;
    const size_t nseg = 10;
    float *k = keys_of(0, nseg * S, d, 44);
    uint8_t *sum;
    size_t sb;
    eg_route_table *t = ball_table(k, nseg, d, S, &sum, &sb);
    REQUIRE(t);
    float q[16];
    uint64_t rs = 3;
    for (int i = 0; i < d; i++) q[i] = tu_randn(&rs);
    eg_route_rows rows = { .n_rows = 1, .q = q, .scale = 0.25f };
    double measured[10], unknown[10];
    for (size_t s = 0; s < nseg; s++) CHECK_OK(seg_bound(t, &rows, nseg, s, &measured[s]));
    eg_route_table_free(t);
    float neg = -1.0f, inf = INFINITY, nan = NAN;
    for (size_t s = 0; s < nseg; s++) memcpy(sum + s * sb + 4 * (size_t)d, &neg, 4);
    eg_summary_spec sp = { EG_ROUTER_BALL, d, S, NULL, 0 };
    REQUIRE(eg_route_table_create(&sp, &t) == 0);
    CHECK_OK(eg_route_table_append(t, sum, nseg, NULL));
    int looser = 0, viol = 0;
    for (size_t s = 0; s < nseg; s++) {
        CHECK_OK(seg_bound(t, &rows, nseg, s, &unknown[s]));
        looser += unknown[s] > measured[s];
        double mx = -INFINITY, z = 0;
        for (int i = 0; i < S; i++) {
            double v = 0;
            for (int c = 0; c < d; c++) v += (double)q[c] * k[(s * S + i) * d + c];
            v *= 0.25;
            if (v > mx) { z = z * exp(mx - v) + 1; mx = v; } else z += exp(v - mx);
        }
        viol += !(unknown[s] >= mx + log(z));
    }
    CHECK_EQ_INT(viol, 0);
    CHECK_EQ_INT(looser, (int)nseg);
    /* counted as unmeasured, through a truncate and a save and load */
    CHECK_EQ_INT(eg_route_table_unmeasured(t), nseg);
    CHECK_OK(eg_route_table_truncate(t, 3));
    CHECK_EQ_INT(eg_route_table_unmeasured(t), 3);
    void *blob;
    size_t blen;
    eg_route_table *u = NULL;
    CHECK_OK(eg_route_table_save(t, &blob, &blen));
    CHECK_OK(eg_route_table_load(&sp, blob, blen, &u));
    CHECK(u && eg_route_table_unmeasured(u) == 3);
    free(blob);
    eg_route_table_free(u);
    eg_route_table_free(t);
    memcpy(sum + 4 * sb + 4 * (size_t)d, &inf, 4);
    REQUIRE(eg_route_table_create(&sp, &t) == 0);
    CHECK_OK(eg_route_table_append(t, sum, nseg, NULL));
    CHECK_EQ_INT(eg_route_table_unmeasured(t), nseg - 1);   /* segment 4 measured: +inf */
    double lub;
    CHECK_OK(seg_bound(t, &rows, nseg, 4, &lub));
    CHECK(lub == INFINITY);
    CHECK_OK(seg_bound(t, &rows, nseg, 5, &lub));
    CHECK(isfinite(lub));
    memcpy(sum + 7 * sb + 4 * (size_t)d, &nan, 4);
    CHECK_EQ_INT(eg_route_table_append(t, sum, nseg, NULL), EG_IX_ECORRUPT);
    CHECK_EQ_INT(eg_route_table_segments(t), nseg);
    eg_route_table_free(t);
    free(sum);
    free(k);
}

/* The ranking q.c' + beta |q| r (MAX, one row) selects what a double loop
 * over the decoded centres and radii ranks first, for beta 0, the default
 * and 1, and beta changes the choice; beta outside 0..1 is refused. */
static void test_ball_beta(void)
{
    const int d = 24, S = 16;
    const size_t nseg = 200;
    float *k = keys_of(0, nseg * S, d, 812);
    for (size_t s = 0; s < nseg; s += 7)   /* wider segments: one key pushed out */
        for (int c = 0; c < d; c++) k[(s * S + 3) * d + c] *= 1.0f + (float)(s % 5);
    size_t sb;
    eg_route_table *t = ball_table(k, nseg, d, S, NULL, &sb);
    REQUIRE(t);
    uint64_t rs = 99;
    float q[24];
    int mism = 0, changed = 0;
    for (int trial = 0; trial < 8; trial++) {
        for (int i = 0; i < d; i++) q[i] = tu_randn(&rs);
        double qn = 0;
        for (int i = 0; i < d; i++) qn += (double)q[i] * q[i];
        qn = sqrt(qn);
        eg_route_rows rows = { .n_rows = 1, .q = q, .scale = 0.2f };
        int64_t first[3] = { -1, -1, -1 };
        for (int bi = 0; bi < 3; bi++) {
            float beta = bi == 0 ? 0.0f : bi == 1 ? EG_BALL_BETA : 1.0f;
            eg_route_opts o;
            eg_route_opts_init(&o);
            o.ball_beta = beta;
            o.aggregate = EG_ROUTE_AGG_MAX;
            o.budget_tokens = 8 * S;
            o.recent_tokens = 0;
            o.n_sink_segments = 0;
            eg_route_selection sel;
            CHECK_OK(eg_router_select(t, &rows, &o, &sel));
            double want[200];
            for (size_t s = 0; s < nseg; s++) {
                double v = 0;
                for (int c = 0; c < d; c++) v += (double)q[c] * ix_q8_value(t, s, (size_t)c);
                want[s] = v + beta * qn * t->q8rad[s];
            }
            for (size_t i = 0; i < sel.n; i++) {   /* each selected beats every one left out */
                uint8_t in[200] = { 0 };
                for (size_t j = 0; j < sel.n; j++) in[sel.segments[j]] = 1;
                for (size_t s = 0; s < nseg; s++)
                    if (!in[s] && want[s] > want[sel.segments[i]] + 1e-4 * (fabs(want[s]) + 1)) mism++;
            }
            first[bi] = sel.n ? sel.segments[0] : -1;
            eg_route_selection_free(&sel);
        }
        changed += first[0] != first[2];
    }
    printf("  8 queries x 3 betas: %d selections out of order, the first choice changed by beta in %d\n", mism, changed);
    CHECK_EQ_INT(mism, 0);
    CHECK(changed > 0);
    eg_route_opts o;
    eg_route_opts_init(&o);
    o.budget_tokens = 4 * S;
    eg_route_rows rows = { .n_rows = 1, .q = q, .scale = 0.2f };
    eg_route_selection sel;
    o.ball_beta = 1.5f;
    CHECK_EQ_INT(eg_router_select(t, &rows, &o, &sel), EG_IX_EINVAL);
    o.ball_beta = NAN;
    CHECK_EQ_INT(eg_router_select(t, &rows, &o, &sel), EG_IX_EINVAL);
    eg_route_table_free(t);
    free(k);
}

int main(void)
{
    TEST_RUN(test_ball_summary);
    TEST_RUN(test_ball_kernels);
    TEST_RUN(test_ball_bound_every_codec);
    TEST_RUN(test_ball_radius_edges);
    TEST_RUN(test_ball_beta);
    TEST_RUN(test_ball_group_kernels);
    TEST_END();
}
