/* test_index_mass.c: ranking by MASS (eg_route_agg): the rows' log-sum-exp
 * kernel against long double, selections of every router kind and entry
 * point against a plain double loop, a case built so that MAX and MASS
 * must choose differently, and bad input; and the learned PQ and REPS
 * scans against plain loops over their summaries. */
#include "index.h"
#include "ix_internal.h"
#include "testutil.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Gaussian keys [n][d]; every 37th token six times longer, so that
 * segments have outliers and the scores a spread. */
static float *spiky_keys(size_t n, int d, uint64_t seed)
{
    float *k = malloc(sizeof(float) * n * (size_t)d);
    uint64_t s = seed * 6364136223846793005u + 11;
    for (size_t t = 0; t < n; t++)
        for (int c = 0; c < d; c++) k[t * d + c] = tu_randn(&s) * (t % 37 == 5 ? 6.0f : 1.0f);
    return k;
}

static eg_route_table *table_of(eg_router_kind kind, const float *keys, size_t nseg, int d, int S,
                                const uint32_t *tags, const eg_learned *w)
{
    eg_summary_spec sp = { kind, d, S, w, 0 };
    size_t b;
    eg_route_table *t = NULL;
    if (eg_summary_bytes(&sp, &b) < 0 || eg_route_table_create(&sp, &t) < 0) return NULL;
    uint8_t *sum = malloc(b);
    for (size_t s = 0; s < nseg && t; s++)
        if (eg_summary_compute(&sp, keys + s * S * d, sum, b) < 0 || eg_route_table_append(t, sum, 1, tags ? tags + s : NULL) < 0) {
            eg_route_table_free(t);
            t = NULL;
        }
    free(sum);
    return t;
}

/* ix_rows_lse, both kernels, against long double: row counts 1..9, lengths
 * with vector tails, rows that see fewer segments, -inf scores, and the
 * infinite cases (no row; inf against an infinite shift counts as e^0). */
static void test_rows_lse_kernels(void)
{
    uint64_t s = 5;
    double worst = 0;
    int bad = 0, cases = 0;
    for (int port = 1; port >= 0; port--) {
        eg_index_kernels(port);
        for (int nr = 1; nr <= 9; nr++)
            for (size_t n = 1; n <= 41; n += 1 + n / 4) {
                float sc[9 * 48], shift[9], agg[48];
                size_t vis[9], a = tu_rand(&s) % 3, ld = 48;
                float gain = 0.05f + (float)(tu_rand(&s) % 100) / 50.0f;
                for (int r = 0; r < nr; r++) {
                    vis[r] = tu_rand(&s) % 4 == 0 ? a + tu_rand(&s) % (n + 1) : a + n;
                    shift[r] = (float)(tu_rand(&s) % 4000) / 40.0f - 50.0f;
                    for (size_t i = 0; i < n; i++)
                        sc[(size_t)r * ld + i] = tu_rand(&s) % 11 == 0 ? -INFINITY : (float)(tu_rand(&s) % 20001) / 100.0f - 100.0f;
                }
                int special = cases % 7 == 3;
                if (special) { sc[0] = INFINITY; shift[0] = INFINITY; vis[0] = a + n; }
                ix_rows_lse(sc, ld, nr, vis, a, n, gain, shift, agg);
                for (size_t i = 0; i < n; i++) {
                    long double t[9], mx = -INFINITY, z = 0;
                    int m = 0;
                    for (int r = 0; r < nr; r++) {
                        if (vis[r] <= a + i) continue;
                        long double x = (long double)gain * sc[(size_t)r * ld + i] - shift[r];
                        if (x != x) x = 0;   /* inf - inf */
                        t[m++] = x;
                        mx = x > mx ? x : mx;
                    }
                    double ref;
                    if (!m || isinf((double)mx)) ref = m ? (double)mx : -INFINITY;
                    else {
                        for (int j = 0; j < m; j++) z += expl(t[j] - mx);
                        ref = (double)(mx + logl(z));
                    }
                    if (isinf(ref) || isinf(agg[i])) { bad += !(agg[i] == ref); continue; }
                    double e = fabs(agg[i] - ref) / (1 + fabs(ref));
                    worst = e > worst ? e : worst;
                    bad += e > 1e-5;
                }
                cases++;
            }
    }
    eg_index_kernels(0);
    printf("  %d calls, both kernels: worst relative error %.2g\n", cases, worst);
    CHECK(bad == 0);
}

/* The selection a MASS call must make, from eg_router_score_all's scores
 * in double: each row's log-sum-exp over its visible segments, then per
 * segment the log of its summed shares. Checks count, scores and order
 * (every routed segment at least every eligible one left out). */
static void check_mass(const eg_route_table *t, const eg_route_rows *rows, const eg_route_opts *o,
                       const eg_route_selection *sel, double gain, double *worst, int *bad)
{
    size_t n = eg_route_table_segments(t), nr = (size_t)rows->n_rows, S = (size_t)eg_route_table_spec(t)->seg_tokens;
    float *sc = malloc(sizeof(float) * nr * (n ? n : 1));
    double *L = malloc(sizeof(double) * nr), *agg = malloc(sizeof(double) * (n ? n : 1));
    size_t *vis = malloc(sizeof(size_t) * nr), nv = 0;
    uint8_t *in = calloc(n + 1, 1);
    CHECK_OK(eg_router_score_all(t, rows, sc));
    for (size_t r = 0; r < nr; r++) {
        vis[r] = rows->pos ? (size_t)(rows->pos[r] / (int64_t)S) + 1 : n;
        vis[r] = vis[r] < n ? vis[r] : n;
        nv = vis[r] > nv ? vis[r] : nv;
        long double mx = -INFINITY, z = 0;
        for (size_t s = 0; s < vis[r]; s++) mx = fmaxl(mx, (long double)gain * sc[r * n + s]);
        for (size_t s = 0; s < vis[r]; s++) z += expl((long double)gain * sc[r * n + s] - mx);
        L[r] = (double)(mx + logl(z));
    }
    for (size_t s = 0; s < nv; s++) {
        long double z = 0;
        for (size_t r = 0; r < nr; r++)
            if (s < vis[r]) z += expl((long double)gain * sc[r * n + s] - L[r]);
        agg[s] = (double)logl(z);
    }
    for (size_t i = 0; i < sel->n_forced; i++) in[sel->segments[i]] = 1;
    size_t eligible = 0;
    for (size_t s = 0; s < nv; s++) {
        int tag_ok = !o->n_tags;
        for (int j = 0; j < o->n_tags; j++) tag_ok |= o->tags[j] == (uint32_t)(s % 3);
        if (!in[s] && tag_ok) { eligible++; in[s] = 2; }
    }
    size_t kt = (size_t)(o->budget_tokens / (int64_t)S), want = kt > sel->n_forced ? kt - sel->n_forced : 0;
    want = want < eligible ? want : eligible;
    if (sel->n - sel->n_forced != want) (*bad)++;
    double lo = INFINITY, hi = -INFINITY;
    for (size_t i = sel->n_forced; i < sel->n; i++) {
        size_t s = (size_t)sel->segments[i];
        if (in[s] != 2) { (*bad)++; continue; }
        in[s] = 3;
        double e = fabs(sel->scores[i] - agg[s]) / (1 + fabs(agg[s]));
        *worst = e > *worst ? e : *worst;
        *bad += e > 1e-4;
        lo = agg[s] < lo ? agg[s] : lo;
    }
    for (size_t s = 0; s < nv; s++) if (in[s] == 2) hi = agg[s] > hi ? agg[s] : hi;
    if (lo < hi - 1e-4 * (1 + fabs(hi))) (*bad)++;
    free(sc); free(L); free(agg); free(vis); free(in);
}

/* The true lost mass of each row (its visible tokens, keys [T][d]) is
 * never above the bound of the whole selection. */
static int bound_holds(const float *k, int d, size_t T, const eg_route_rows *rows, const eg_route_selection *sel,
                       const double *lub, int S)
{
    size_t no = sel->n - sel->n_forced;
    uint8_t *in = calloc(T / (size_t)S + 1, 1);
    for (size_t i = 0; i < sel->n; i++) in[sel->segments[i]] = 1;
    int viol = 0;
    for (int r = 0; r < rows->n_rows; r++) {
        size_t last = rows->pos ? (size_t)rows->pos[r] : T - 1;
        last = last < T - 1 ? last : T - 1;
        double mx = -INFINITY, zs = 0, zu = 0;
        double *v = malloc(sizeof(double) * (last + 1));
        for (size_t j = 0; j <= last; j++) {
            double x = 0;
            for (int c = 0; c < d; c++) x += (double)rows->q[r * d + c] * k[j * d + c];
            v[j] = rows->scale * x;
            mx = v[j] > mx ? v[j] : mx;
        }
        for (size_t j = 0; j <= last; j++) {
            if ((j / (size_t)S + 1) * (size_t)S > last + 1) continue;   /* the open segment: not in the table */
            if (in[j / (size_t)S]) zs += exp(v[j] - mx); else zu += exp(v[j] - mx);
        }
        double b = eg_lost_mass_bound(lub[(size_t)r * (no + 1) + no], zs > 0 ? mx + log(zs) : -INFINITY);
        viol += b < zu / (zs + zu) * (1 - 1e-9) - 1e-300;
        free(v);
    }
    free(in);
    return viol;
}

/* MEAN8 weights for the tests, calibrated on keys of their own. */
static eg_learned *g_mean8;
static void make_mean8(int d, int S)
{
    const int64_t T = 300 * 16;
    float *k = spiky_keys((size_t)T, d, 77), q[64 * 16];
    int64_t pos[64];
    uint64_t rs = 8;
    for (int i = 0; i < 64 * d; i++) q[i] = tu_randn(&rs);
    for (int i = 0; i < 64; i++) pos[i] = T / 2 + (int64_t)(tu_rand(&rs) % (uint64_t)(T / 2));
    eg_calibration cal = { k, T, q, pos, 64, 0.25f };
    eg_learned_config c;
    eg_learned_config_init(&c, d, S);
    c.mode = EG_LEARNED_MEAN8;
    c.steps = 2;
    CHECK_OK(eg_learned_train(&c, &cal, &g_mean8, NULL));
    free(k);
}

/* Every router kind ranks by MASS as the plain loop does, through every
 * entry point (quest: select, select_bound and the prep steps choose the
 * same and bound the mass they leave out), at sizes across the kernels'
 * chunk of 1024 segments, with positions, tags, sinks and recent windows. */
static void test_mass_reference(void)
{
    const int d = 16, S = 16;
    const size_t sizes[] = { 1, 7, 40, 300, 1100 };
    make_mean8(d, S);
    REQUIRE(g_mean8);
    uint64_t rs = 41;
    double worst = 0;
    int bad = 0, cases = 0;
    for (size_t zz = 0; zz < 2 * sizeof sizes / sizeof *sizes; zz++) {
        size_t zi = zz / 2, n = sizes[zi], T = n * S;
        eg_index_kernels(zz % 2 == 0);   /* every size with the portable kernels, then the best */
        float *k = spiky_keys(T, d, zi + 1);
        uint32_t *tags = malloc(sizeof(uint32_t) * n);
        for (size_t s = 0; s < n; s++) tags[s] = (uint32_t)(s % 3);
        eg_learned_config lc;
        eg_learned_config_init(&lc, d, S);
        lc.mode = EG_LEARNED_OUTLIERS;
        eg_learned *lw = NULL;
        CHECK_OK(eg_learned_untrained(&lc, 0.25f, &lw));
        eg_router_kind kinds[5] = { EG_ROUTER_CENTROID, EG_ROUTER_LEARNED, EG_ROUTER_INDEXER, EG_ROUTER_QUEST,
                                    EG_ROUTER_LEARNED };
        for (int ki = 0; ki < 5; ki++) {
            eg_route_table *t = table_of(kinds[ki], k, n, d, S, tags, ki == 1 ? lw : ki == 4 ? g_mean8 : NULL);
            REQUIRE(t);
            for (int trial = 0; trial < 4; trial++) {
                int nr = 1 + (int)(tu_rand(&rs) % 6), H = 2;
                float q[6 * 16], iq[6 * 2 * 16], iw[6 * 2];
                int64_t pos[6];
                for (int i = 0; i < nr * d; i++) q[i] = tu_randn(&rs) * (trial == 3 ? 2.5f : 1.0f);
                for (int i = 0; i < nr * H * d; i++) iq[i] = tu_randn(&rs);
                for (int i = 0; i < nr * H; i++) iw[i] = 0.05f + tu_randf(&rs) * 0.3f;
                for (int r = 0; r < nr; r++) pos[r] = (int64_t)(tu_rand(&rs) % T);
                eg_route_rows rows = { .n_rows = nr, .q = q, .pos = trial % 2 ? pos : NULL, .scale = 0.25f,
                                       .n_index_heads = H, .index_q = iq, .index_w = iw };
                eg_route_opts o;
                eg_route_opts_init(&o);
                o.budget_tokens = (int64_t)S * (int64_t)(1 + tu_rand(&rs) % 40);
                o.n_sink_segments = (int)(tu_rand(&rs) % 3);
                o.recent_tokens = (int64_t)(tu_rand(&rs) % 30);
                uint32_t want = 1;
                if (trial == 2) { o.tags = &want; o.n_tags = 1; }
                if (kinds[ki] == EG_ROUTER_QUEST) o.aggregate = EG_ROUTE_AGG_MASS;   /* else AUTO is MASS */
                double gain = ki == 0 || ki >= 3 ? rows.scale : 1.0;   /* MEAN8 ranks as centroid */
                eg_route_selection a;
                CHECK_OK(eg_router_select(t, &rows, &o, &a));
                check_mass(t, &rows, &o, &a, gain, &worst, &bad);
                if (kinds[ki] == EG_ROUTER_QUEST) {
                    eg_route_selection b, c;
                    double *ub = NULL, *uc = NULL;
                    eg_route_prep *p = NULL;
                    CHECK_OK(eg_router_select_bound(t, &rows, &o, &b, &ub));
                    CHECK_OK(eg_route_prep_begin(t, &rows, &o, &p));
                    size_t ni = eg_route_prep_items(p);
                    eg_route_prep_score(p, ni / 2, ni);
                    eg_route_prep_score(p, 0, ni / 2);
                    CHECK_OK(eg_route_prep_finish(p, &c, &uc));
                    eg_route_prep_free(p);
                    for (size_t i = 0; i < a.n; i++)
                        bad += b.n != a.n || c.n != a.n || b.segments[i] != a.segments[i] || c.segments[i] != a.segments[i];
                    if (n <= 300) {
                        bad += bound_holds(k, d, T, &rows, &b, ub, S);
                        bad += bound_holds(k, d, T, &rows, &c, uc, S);
                    }
                    eg_route_selection_free(&b);
                    eg_route_selection_free(&c);
                    free(ub);
                    free(uc);
                }
                eg_route_selection_free(&a);
                cases++;
            }
            eg_route_table_free(t);
        }
        eg_learned_free(lw);
        free(tags);
        free(k);
    }
    eg_index_kernels(0);
    eg_learned_free(g_mean8);
    g_mean8 = NULL;
    printf("  %d calls (centroid, outliers, indexer, quest, mean8): worst score error %.2g, %d problems\n", cases,
           worst, bad);
    CHECK(bad == 0);
}

/* More rows times segments than one call keeps (IX_CACHE_MAX floats): the
 * scores are computed again in a second pass, and the answer is the same. */
static void test_mass_rescored(void)
{
    const int d = 4, S = 16, nr = 4096;
    size_t n = IX_CACHE_MAX / (size_t)nr + 40;
    float *k = spiky_keys(n * S, d, 9);
    eg_route_table *t = table_of(EG_ROUTER_CENTROID, k, n, d, S, NULL, NULL);
    REQUIRE(t);
    float *q = malloc(sizeof(float) * nr * d);
    uint64_t rs = 3;
    for (int i = 0; i < nr * d; i++) q[i] = tu_randn(&rs);
    eg_route_rows rows = { .n_rows = nr, .q = q, .scale = 0.5f };
    eg_route_opts o;
    eg_route_opts_init(&o);
    o.budget_tokens = 64 * S;
    eg_route_selection sel;
    CHECK_OK(eg_router_select(t, &rows, &o, &sel));
    double worst = 0;
    int bad = 0;
    check_mass(t, &rows, &o, &sel, rows.scale, &worst, &bad);
    printf("  %d rows x %zu segments: %zu routed, worst score error %.2g\n", nr, n, sel.n - sel.n_forced, worst);
    CHECK(bad == 0);
    eg_route_selection_free(&sel);
    eg_route_table_free(t);
    free(q);
    free(k);
}

/* Shares far below f32's range (scores 12 nats apart, 300 segments): the
 * segments every row gives a share under 1e-30 are ranked exactly all the
 * same (by their log shares, from the rows' shifts), in the order and with
 * the scores of the plain loop; with +inf scores in a row too (quest keys
 * beyond f16), whose mass then sits on those segments. */
static void test_mass_tiny_shares(void)
{
    const int d = 4, S = 16;
    const size_t n = 300;
    float *k = calloc(n * S * d, sizeof(float));
    for (size_t s = 0; s < n; s++)
        for (int t = 0; t < S; t++) {
            k[(s * S + t) * d + 0] = 12.0f * (float)(s % 50);         /* row 0: 0, 12, 24 ... nats */
            k[(s * S + t) * d + 1] = (float)((s * 37) % 300) * 0.5f;  /* row 1: another order */
        }
    double worst = 0;
    int bad = 0;
    for (int kind = 0; kind < 4; kind++) {
        eg_index_kernels(kind & 1);                                  /* portable kernels, then the best */
        if (kind >= 2) k[(7 * S + 3) * d + 2] = 1.0e6f;              /* beyond f16: quest reads +inf */
        eg_route_table *t = table_of(kind >= 2 ? EG_ROUTER_QUEST : EG_ROUTER_CENTROID, k, n, d, S, NULL, NULL);
        REQUIRE(t);
        float q[2 * 4] = { 1, 0, 0, 0, 0, 1, kind >= 2 ? 1.0f : 0, 0 };
        eg_route_rows rows = { .n_rows = 2, .q = q, .scale = 1.0f };
        eg_route_opts o;
        eg_route_opts_init(&o);
        o.budget_tokens = (int64_t)(n * S);
        o.aggregate = EG_ROUTE_AGG_MASS;
        eg_route_selection sel;
        CHECK_OK(eg_router_select(t, &rows, &o, &sel));
        if (kind < 2) check_mass(t, &rows, &o, &sel, 1.0, &worst, &bad);
        else CHECK(sel.n > sel.n_forced && sel.segments[sel.n_forced] == 7);   /* the infinite share first */
        eg_route_selection_free(&sel);
        eg_route_table_free(t);
    }
    eg_index_kernels(0);
    printf("  %zu segments, shares down to e^-588, both kernels: worst score error %.2g, %d problems\n", n, worst,
           bad);
    CHECK(bad == 0);
    free(k);
}

/* Two rows of very different logits: MAX lets the loud row take both
 * routed places; MASS gives the quiet row its one clear favourite. */
static void test_mass_versus_max(void)
{
    const int d = 4, S = 16;
    const size_t n = 12;
    float k[12 * 16 * 4] = { 0 };
    for (int t = 0; t < S; t++) {
        k[(1 * S + t) * d + 0] = 10.0f;   /* row A: 100 */
        k[(2 * S + t) * d + 0] = 9.875f;  /* row A: 98.75 */
        k[(3 * S + t) * d + 1] = 5.0f;    /* row B: 5, every other segment 0 */
    }
    eg_route_table *t = table_of(EG_ROUTER_CENTROID, k, n, d, S, NULL, NULL);
    REQUIRE(t);
    float q[2 * 4] = { 10, 0, 0, 0, 0, 1, 0, 0 };
    eg_route_rows rows = { .n_rows = 2, .q = q, .scale = 1.0f };
    eg_route_opts o;
    eg_route_opts_init(&o);
    o.budget_tokens = 2 * S;
    o.n_sink_segments = 0;
    o.recent_tokens = 0;
    int64_t want[3][2] = { { 3, 1 }, { 1, 2 }, { 3, 1 } };   /* AUTO (MASS for centroid), MAX, MASS */
    for (int a = 0; a < 3; a++) {
        o.aggregate = a;
        eg_route_selection sel;
        CHECK_OK(eg_router_select(t, &rows, &o, &sel));
        CHECK_EQ_INT(sel.n, 2);
        if (sel.n == 2) { CHECK_EQ_INT(sel.segments[0], want[a][0]); CHECK_EQ_INT(sel.segments[1], want[a][1]); }
        if (a == EG_ROUTE_AGG_MASS) CHECK(sel.scores[0] < logf(2.0f) && sel.scores[0] > logf(0.9f));
        eg_route_selection_free(&sel);
    }
    /* Bad values are refused by every entry; the oracle ranks by its mass. */
    double *ub = NULL;
    eg_route_selection sel;
    eg_route_prep *p = NULL;
    o.aggregate = 3;
    CHECK(eg_router_select(t, &rows, &o, &sel) == EG_IX_EINVAL);
    o.aggregate = -1;
    CHECK(eg_router_select(t, &rows, &o, &sel) == EG_IX_EINVAL);
    eg_route_table *qt = table_of(EG_ROUTER_QUEST, k, n, d, S, NULL, NULL);
    REQUIRE(qt);
    CHECK(eg_router_select_bound(qt, &rows, &o, &sel, &ub) == EG_IX_EINVAL && ub == NULL);
    CHECK(eg_route_prep_begin(qt, &rows, &o, &p) == EG_IX_EINVAL && p == NULL);
    eg_summary_spec osp = { EG_ROUTER_ORACLE, d, S, NULL, 0 };
    eg_route_table *ot = NULL;
    CHECK_OK(eg_route_table_create(&osp, &ot));
    CHECK_OK(eg_route_table_append(ot, NULL, n, NULL));
    float mass[12] = { 0, .1f, .2f, .05f, .3f, 0, 0, .15f, 0, 0, .2f, 0 };
    rows.oracle_mass = mass;
    for (int a = 0; a < 3; a++) {
        o.aggregate = a;
        CHECK_OK(eg_router_select(ot, &rows, &o, &sel));
        CHECK(sel.n == 2 && sel.segments[0] == 4 && (sel.segments[1] == 2 || sel.segments[1] == 10));
        CHECK(sel.n == 2 && sel.scores[0] == .3f);
        eg_route_selection_free(&sel);
    }
    eg_route_table_free(ot);
    eg_route_table_free(qt);
    eg_route_table_free(t);
}

/* PQ and REPS scores from eg_router_score_all against a double loop over
 * the stored summaries and the weights' own projection and codebooks:
 * ranks 16 and 32, 1..9 rows, segments of 16 and 64 tokens (the vector
 * PQ scan takes 32 tokens at a time), 1 and 3 representatives. PQ sums
 * byte tables on one step per row: within m step / 2 of the float sum
 * (step = the widest sub-vector table's range / 255), and the portable
 * and vector kernels give the same bits. REPS reads its representatives
 * as f16: the tolerance is their rounding. */
static void test_pq_reps_reference(void)
{
    const int d = 32;
    const size_t n = 37;
    float q[64 * 32];
    int64_t pos[64];
    uint64_t rs = 12;
    for (int i = 0; i < 64 * d; i++) q[i] = tu_randn(&rs);
    for (int i = 0; i < 64; i++) pos[i] = 2048 + (int64_t)(tu_rand(&rs) % 2048);
    double worst[2] = { 0, 0 };
    int cases = 0, bad = 0;
    for (int S = 16; S <= 64; S += 48) {
        float *k = spiky_keys(n * S + 4096, d, 21 + (uint64_t)S);
        eg_calibration cal = { k + n * S * d, 4096, q, pos, 64, 0.2f };
        for (int mode = EG_LEARNED_PQ; mode <= EG_LEARNED_REPS; mode++)
            for (int rank = 16; rank <= 32; rank += 16)
                for (int reps = 1; reps <= (mode == EG_LEARNED_REPS ? 3 : 1); reps += 2) {
                    eg_learned_config c;
                    eg_learned_config_init(&c, d, S);
                    c.mode = (eg_learned_mode)mode;
                    c.rank = rank;
                    c.n_reps = reps;
                    c.steps = 3;
                    eg_learned *w = NULL;
                    CHECK_OK(eg_learned_train(&c, &cal, &w, NULL));
                    REQUIRE(w);
                    eg_route_table *t = table_of(EG_ROUTER_LEARNED, k, n, d, S, NULL, w);
                    REQUIRE(t);
                    eg_summary_spec sp = { EG_ROUTER_LEARNED, d, S, w, 0 };
                    size_t b;
                    CHECK_OK(eg_summary_bytes(&sp, &b));
                    uint8_t *sum = malloc(b * n);
                    for (size_t s = 0; s < n; s++) CHECK_OK(eg_summary_compute(&sp, k + s * S * d, sum + s * b, b));
                    for (int nr = 1; nr <= 9; nr += 2) {
                        float sc[9 * 37], sp2[9 * 37], pq[32];
                        eg_route_rows rows = { .n_rows = nr, .q = q, .scale = 0.2f };
                        eg_index_kernels(1);
                        CHECK_OK(eg_router_score_all(t, &rows, sp2));
                        eg_index_kernels(0);
                        CHECK_OK(eg_router_score_all(t, &rows, sc));
                        if (mode == EG_LEARNED_PQ) bad += memcmp(sc, sp2, sizeof(float) * (size_t)nr * n) != 0;
                        for (int r = 0; r < nr; r++) {
                            for (int i = 0; i < rank; i++) {
                                double a = 0;
                                for (int x = 0; x < d; x++) a += (double)w->wq[i * d + x] * q[r * d + x];
                                pq[i] = (float)a;
                            }
                            int m = rank / 4;
                            double L[8][16], range = 0;
                            for (int j = 0; j < m && mode == EG_LEARNED_PQ; j++) {
                                double lo = INFINITY, hi = -INFINITY;
                                for (int cc = 0; cc < 16; cc++) {
                                    L[j][cc] = 0;
                                    for (int x = 0; x < 4; x++) L[j][cc] += (double)w->codebook[((size_t)j * 16 + cc) * 4 + x] * pq[j * 4 + x];
                                    lo = fmin(lo, L[j][cc]);
                                    hi = fmax(hi, L[j][cc]);
                                }
                                range = fmax(range, hi - lo);
                            }
                            for (size_t s = 0; s < n; s++) {
                                const uint8_t *row = sum + s * b;
                                double best = -INFINITY, mag = 0, tol;
                                if (mode == EG_LEARNED_PQ) {
                                    for (int tk = 0; tk < S; tk++) {
                                        double v = 0;
                                        for (int j = 0; j < m; j++) {
                                            double e = L[j][(row[tk * (m / 2) + j / 2] >> (4 * (j & 1))) & 15];
                                            v += e;
                                            mag += fabs(e);
                                        }
                                        best = v > best ? v : best;
                                    }
                                    mag /= S;
                                    tol = m * range / 255.0 / 2 * 1.01 + 1e-5 * (1 + mag);
                                } else {
                                    for (int o = 0; o < reps; o++) {
                                        const uint8_t *v = row + (size_t)o * (4 + rank);
                                        float scl;
                                        memcpy(&scl, v, 4);
                                        double a = 0;
                                        for (int x = 0; x < rank; x++) {
                                            double e = (double)scl * (int8_t)v[4 + x] * pq[x];
                                            a += e;
                                            mag = fmax(mag, 0) + fabs(e);
                                        }
                                        best = a > best ? a : best;
                                    }
                                    tol = 2e-3 * (1 + mag);
                                }
                                double e = fabs(sc[(size_t)r * n + s] - best);
                                worst[mode - 1] = fmax(worst[mode - 1], e / (1 + mag));
                                bad += e > tol;
                            }
                        }
                        cases++;
                    }
                    free(sum);
                    eg_route_table_free(t);
                    eg_learned_free(w);
                }
        free(k);
    }
    printf("  %d tables x rows: PQ within %.2g, REPS within %.2g of the plain loops (relative to the terms); %d "
           "problems\n", cases, worst[0], worst[1], bad);
    CHECK(bad == 0);
}

int main(void)
{
    TEST_RUN(test_rows_lse_kernels);
    TEST_RUN(test_mass_versus_max);
    TEST_RUN(test_mass_tiny_shares);
    TEST_RUN(test_mass_reference);
    TEST_RUN(test_mass_rescored);
    TEST_RUN(test_pq_reps_reference);
    TEST_END();
}
