/* bench_recall.c: `engram-bench recall`: how much dense attention mass each
 * router's selection holds, against the oracle at the same budget, on the
 * seeded synthetic workloads (tools/gen) and on real captures where
 * ../shared/data holds them. See docs/bench.md for the figures. */
#include "bench.h"
#include "index.h"
#include "workload.h"
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S 64
#define NB 4
static const int64_t budgets[NB] = { 512, 1024, 2048, 4096 };
#define BOUND_CAP 32768          /* largest budget the max_lost mode may grow to */

/* quest: the int8 table in RAM (the default); quest-f16 the stored halves.
 * Every router ranks as it does by default (eg_route_agg: MAX for quest
 * and ball, MASS for the others); the "-max" rows rank by MAX, for
 * comparison; "ball-mass" ranks the ball by MASS, "ball-centre" by the
 * centre alone (ball_beta 0, MASS). */
typedef struct { const char *name; eg_router_kind kind; eg_learned_mode mode; int f16, agg; float beta; } router_def;
static const router_def routers[] = {
    { "quest", EG_ROUTER_QUEST, 0, 0, 0, 0 },     { "quest-f16", EG_ROUTER_QUEST, 0, 1, 0, 0 },
    { "ball", EG_ROUTER_BALL, 0, 0, 0, EG_BALL_BETA },
    { "ball-mass", EG_ROUTER_BALL, 0, 0, EG_ROUTE_AGG_MASS, EG_BALL_BETA },
    { "ball-centre", EG_ROUTER_BALL, 0, 0, EG_ROUTE_AGG_MASS, 0.0f },
    { "centroid", EG_ROUTER_CENTROID, 0, 0, 0, 0 },
    { "learned", EG_ROUTER_LEARNED, EG_LEARNED_PQ, 0, 0, 0 }, { "learned-reps", EG_ROUTER_LEARNED, EG_LEARNED_REPS, 0, 0, 0 },
    { "learned-outliers", EG_ROUTER_LEARNED, EG_LEARNED_OUTLIERS, 0, 0, 0 },
    { "outliers-max", EG_ROUTER_LEARNED, EG_LEARNED_OUTLIERS, 0, EG_ROUTE_AGG_MAX, 0 },
    { "learned-mean8", EG_ROUTER_LEARNED, EG_LEARNED_MEAN8, 0, 0, 0 },
    { "indexer", EG_ROUTER_INDEXER, 0, 0, 0, 0 }, { "indexer-max", EG_ROUTER_INDEXER, 0, 0, EG_ROUTE_AGG_MAX, 0 },
    { "oracle", EG_ROUTER_ORACLE, 0, 0, 0, 0 },
};
#define NR (int)(sizeof routers / sizeof *routers)

/* Per router and budget: per-row samples. */
typedef struct {
    double *recall, *ratio, *err, *tight;
    size_t n, nt;
    long hits, needles, viol;
    double scan_s, stream_s;
    long scans;
    double bft_sum; long bft_n, bft_miss;   /* budget_for_bound */
} acc;

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static double pct(double *x, size_t n, double p)
{
    if (!n) return NAN;
    qsort(x, n, sizeof(double), cmpd);
    return x[(size_t)(p * (double)(n - 1))];
}

/* log(e^a + e^b), either may be -inf. */
static double lse2(double a, double b)
{
    if (b == -INFINITY) return a;
    if (a == -INFINITY) return b;
    return a > b ? a + log1p(exp(b - a)) : b + log1p(exp(a - b));
}

static eg_route_table *build(eg_router_kind kind, const float *keys, size_t nseg, int d,
                             const eg_learned *w, int f16)
{
    eg_summary_spec sp = { kind, d, S, w, f16 };
    eg_route_table *t = NULL;
    if (eg_route_table_create(&sp, &t) < 0) return NULL;
    if (kind == EG_ROUTER_ORACLE) { eg_route_table_append(t, NULL, nseg, NULL); return t; }
    size_t b;
    eg_summary_bytes(&sp, &b);
    uint8_t *buf = malloc(b * 256);
    for (size_t s0 = 0; s0 < nseg; s0 += 256) {
        size_t n = nseg - s0 < 256 ? nseg - s0 : 256;
        for (size_t i = 0; i < n; i++)
            eg_summary_compute(&sp, keys + (s0 + i) * S * d, buf + i * b, b);
        if (eg_route_table_append(t, buf, n, NULL) < 0) { eg_route_table_free(t); t = NULL; break; }
    }
    free(buf);
    return t;
}

/* Train learned weights for kv-head h on a calibration workload. */
static eg_learned *train(const wl_workload *cal, int h, eg_learned_mode mode, int steps, float *first, float *last)
{
    int d = cal->dim, G = cal->n_q_heads / cal->n_kv_heads;
    int nq = cal->n_queries * G;
    float *q = malloc(sizeof(float) * nq * d);
    int64_t *pos = malloc(sizeof(int64_t) * nq);
    for (int i = 0; i < cal->n_queries; i++)
        for (int g = 0; g < G; g++) {
            memcpy(q + (i * G + g) * d, cal->q + ((size_t)i * cal->n_q_heads + h * G + g) * d, sizeof(float) * d);
            pos[i * G + g] = cal->q_pos[i];
        }
    eg_calibration c = { cal->k + (size_t)h * cal->n_tokens * d, cal->n_tokens, q, pos, nq, cal->scale };
    eg_learned_config cfg;
    eg_learned_config_init(&cfg, d, S);
    cfg.mode = mode;
    cfg.steps = steps;
    float *curve = malloc(sizeof(float) * (steps + 1));
    eg_learned *w = NULL;
    if (eg_learned_train(&cfg, &c, &w, curve) < 0)
        fprintf(stderr, "recall: training failed: %s\n", eg_index_last_error());
    else { *first = curve[0]; *last = curve[steps - 1]; }
    free(curve); free(q); free(pos);
    return w;
}

typedef struct {
    const bench_opts *o;
    const wl_workload *w;
    const char *wname;
    double membw;
    acc a[NR][NB];
    /* Bound geometry (design evidence, not a router): per segment the
     * box of quest (max and min per channel) and a ball (mean and
     * radius); per row, how far each one's bound of the whole visible
     * mass (nothing selected) lies above the true log-mass. */
    const float *gbox, *gmu, *grad;   /* [nseg][2d], [nseg][d], [nseg] of the head being evaluated */
    double box_excess, ball_excess;
    long geo_rows;
    /* and each ranking's top GEO_K segments: per segment the max over a
     * position's rows of the bound (scratch [nseg] each), the summed
     * mass recall of the rows */
    double *agg_box, *agg_ball;
    double *u_box, *u_ball;           /* one row's scaled bounds [nseg] each (scratch) */
    double box_recall, ball_recall;
    long rec_rows;
} run;
#define GEO_K (2048 / S)

/* The box and ball of every segment of one kv-head's keys K [T][d]. */
static void geometry(const float *K, size_t nseg, int d, float *box, float *mu, float *rad)
{
    for (size_t s = 0; s < nseg; s++) {
        const float *k = K + s * S * (size_t)d;
        for (int c = 0; c < d; c++) {
            float a = -INFINITY, b = INFINITY;
            double m = 0;
            for (int t = 0; t < S; t++) {
                float x = k[(size_t)t * d + c];
                a = x > a ? x : a;
                b = x < b ? x : b;
                m += x;
            }
            box[s * 2 * d + c] = a;
            box[s * 2 * d + d + c] = b;
            mu[s * d + c] = (float)(m / S);
        }
        double r = 0;
        for (int t = 0; t < S; t++) {
            double z = 0;
            for (int c = 0; c < d; c++) {
                double e = (double)k[(size_t)t * d + c] - mu[s * d + c];
                z += e * e;
            }
            r = z > r ? z : r;
        }
        rad[s] = (float)sqrt(r);
    }
}

/* One row (query qr, n whole visible segments, true log-mass lt of their
 * tokens): log sum_s S e^(scale U_s) - lt for U the box's bound
 * sum_c max(q_c max_c, q_c min_c) and the ball's q.mu + |q| r. */
static void geometry_row(run *R, const float *qr, size_t n, double scale, double lt)
{
    int d = R->w->dim;
    double qn = 0;
    for (int c = 0; c < d; c++) qn += (double)qr[c] * qr[c];
    qn = sqrt(qn);
    double mb = -INFINITY, ml = -INFINITY, zb = 0, zl = 0;
    for (size_t s = 0; s < n; s++) {
        const float *bx = R->gbox + s * 2 * (size_t)d, *mu = R->gmu + s * (size_t)d;
        double ub = 0, ul = 0;
        for (int c = 0; c < d; c++) {
            ub += qr[c] > 0 ? (double)qr[c] * bx[c] : (double)qr[c] * bx[d + c];
            ul += (double)qr[c] * mu[c];
        }
        ub *= scale;
        ul = scale * (ul + qn * R->grad[s]);
        R->u_box[s] = ub;
        R->u_ball[s] = ul;
        mb = ub > mb ? ub : mb;
        ml = ul > ml ? ul : ml;
        R->agg_box[s] = ub > R->agg_box[s] ? ub : R->agg_box[s];
        R->agg_ball[s] = ul > R->agg_ball[s] ? ul : R->agg_ball[s];
    }
    for (size_t s = 0; s < n; s++) {
        zb += exp(R->u_box[s] - mb);
        zl += exp(R->u_ball[s] - ml);
    }
    R->box_excess += mb + log(zb) + log((double)S) - lt;
    R->ball_excess += ml + log(zl) + log((double)S) - lt;
    R->geo_rows++;
}

/* A segment's bound and index, ordered by bound descending, then index. */
typedef struct { double v; size_t i; } geo_item;
static int geo_cmp(const void *a, const void *b)
{
    const geo_item *x = a, *y = b;
    return x->v != y->v ? (x->v < y->v) - (x->v > y->v) : (x->i > y->i) - (x->i < y->i);
}

/* Mass recall of the rows of one position when the GEO_K segments of
 * the largest box bounds, and of the largest ball bounds, are taken. */
static void geometry_recall(run *R, size_t n, const double *seg_m, size_t nseg, int G)
{
    geo_item *it = malloc(sizeof(geo_item) * (n ? n : 1));
    if (!it) return;
    for (int k = 0; k < 2; k++) {
        const double *agg = k ? R->agg_ball : R->agg_box;
        for (size_t s = 0; s < n; s++) it[s] = (geo_item){ agg[s], s };
        qsort(it, n, sizeof *it, geo_cmp);
        for (int g = 0; g < G; g++) {
            double m = 0;
            for (size_t i = 0; i < n && i < GEO_K; i++) m += seg_m[(size_t)g * nseg + it[i].i];
            *(k ? &R->ball_recall : &R->box_recall) += m;
        }
    }
    R->rec_rows += G;
    free(it);
}

/* One query position and kv-head: dense truth, then every router and budget. */
static void eval_group(run *R, int qi, int h, eg_route_table **tab, size_t nseg, double *seg_m,
                       double *seg_lse, float *seg_o, float *lg)
{
    const wl_workload *w = R->w;
    int d = w->dim, G = w->n_q_heads / w->n_kv_heads;
    int64_t p = w->q_pos[qi], T = w->n_tokens;
    const float *K = w->k + (size_t)h * T * d, *V = w->v + (size_t)h * T * d;
    const float *q = w->q + ((size_t)qi * w->n_q_heads + (size_t)h * G) * d;
    size_t nvis = (size_t)(p / S) + 1;
    nvis = nvis < nseg ? nvis : nseg;
    /* Dense truth per row: per-segment mass, lse and weighted value sums. */
    float ofull[64 * 256];
    size_t nfull = (size_t)((p + 1) / S) < nseg ? (size_t)((p + 1) / S) : nseg;
    for (size_t s = 0; R->gbox && s < nfull; s++) R->agg_box[s] = R->agg_ball[s] = -INFINITY;
    for (int g = 0; g < G; g++) {
        const float *qr = q + (size_t)g * d;
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)(p + 1), d, w->scale, K, d, qr, 1, 0.0f, lg, 1);
        double mx = -INFINITY, z = 0;
        for (int64_t j = 0; j <= p; j++) mx = lg[j] > mx ? lg[j] : mx;
        for (int64_t j = 0; j <= p; j++) { double e = exp(lg[j] - mx); lg[j] = (float)e; z += e; }
        if (R->gbox && nfull > 0) {
            double zf = 0;
            for (size_t j = 0; j < nfull * S; j++) zf += lg[j];
            geometry_row(R, qr, nfull, w->scale, mx + log(zf));
        }
        for (size_t s = 0; s < nvis; s++) {
            int64_t a = (int64_t)s * S, b = a + S - 1 < p ? a + S - 1 : p;
            double m = 0;
            for (int64_t j = a; j <= b; j++) m += lg[j];
            seg_m[g * nseg + s] = m / z;
            seg_lse[g * nseg + s] = m > 0 ? mx + log(m) : -INFINITY;
            cblas_sgemv(CblasRowMajor, CblasTrans, (int)(b - a + 1), d, (float)(1.0 / z), V + a * d, d,
                        lg + a, 1, 0.0f, seg_o + ((size_t)g * nseg + s) * d, 1);
        }
        for (int i = 0; i < d; i++) {
            double acc_o = 0;
            for (size_t s = 0; s < nvis; s++) acc_o += seg_o[((size_t)g * nseg + s) * d + i];
            ofull[g * d + i] = (float)acc_o;
        }
    }
    if (R->gbox && nfull > 0) geometry_recall(R, nfull, seg_m, nseg, G);
    float *omass = malloc(sizeof(float) * nseg);
    for (size_t s = 0; s < nseg; s++) {
        double m = 0;
        for (int g = 0; g < G && s < nvis; g++) m += seg_m[g * nseg + s];
        omass[s] = (float)m;
    }
    int64_t pos[64];
    for (int g = 0; g < G; g++) pos[g] = p;
    eg_route_rows rows = { .n_rows = G, .q = q, .pos = pos, .scale = w->scale, .n_index_heads = 1,
                           .index_q = q, .index_w = NULL, .oracle_mass = omass };
    /* each q head its own index head, weighted by the score scale: index
     * scores are then the head's logits (relu'd), as a trained indexer's
     * approximate them */
    float iw[64];
    for (int g = 0; g < G; g++) iw[g] = w->scale;
    rows.index_w = iw;
    uint8_t *in = malloc(nseg);
    double oracle_rec[NB][64];
    for (int ri = NR - 1; ri >= 0; ri--) {           /* oracle first: the others divide by it */
        if (!tab[ri]) continue;
        for (int bi = 0; bi < NB; bi++) {
            eg_route_opts opt;
            eg_route_opts_init(&opt);
            opt.budget_tokens = budgets[bi];
            opt.aggregate = routers[ri].agg;
            opt.ball_beta = routers[ri].beta;
            eg_route_selection sel;
            double t0 = bench_now();
            if (eg_router_select(tab[ri], &rows, &opt, &sel) < 0) {
                fprintf(stderr, "recall: select failed: %s\n", eg_index_last_error());
                continue;
            }
            double el = bench_now() - t0;
            acc *A = &R->a[ri][bi];
            if (budgets[bi] == 2048) {
                A->scan_s += el;
                A->stream_s += (double)eg_route_table_ram_bytes(tab[ri]) / (R->membw * 1e9);
                A->scans++;
            }
            memset(in, 0, nseg);
            for (size_t i = 0; i < sel.n; i++) in[sel.segments[i]] = 1;
            size_t n_order = sel.n - sel.n_forced;
            double *lub = malloc(sizeof(double) * G * (n_order + 1));
            /* the bound of the router's own quest or ball table, else the int8 quest one's */
            const eg_route_table *bt =
                routers[ri].kind == EG_ROUTER_QUEST || routers[ri].kind == EG_ROUTER_BALL ? tab[ri] : tab[0];
            int have_bound = eg_route_unselected_bound(bt, &rows, &sel, lub) == 0;
            for (int g = 0; g < G; g++) {
                double m = 0, lz = -INFINITY, oerr = 0, on = 0, out_m = 0;
                float os[256] = { 0 };
                for (size_t s = 0; s < nvis; s++) {
                    if (!in[s]) { out_m += seg_m[g * nseg + s]; continue; }
                    m += seg_m[g * nseg + s];
                    double l = seg_lse[g * nseg + s];
                    lz = lse2(lz, l);
                    for (int i = 0; i < d; i++) os[i] += seg_o[((size_t)g * nseg + s) * d + i];
                }
                for (int i = 0; i < d; i++) {
                    double e = (m > 0 ? os[i] / m : 0) - ofull[g * d + i];
                    oerr += e * e;
                    on += (double)ofull[g * d + i] * ofull[g * d + i];
                }
                if (A->n % 64 == 0) {
                    size_t cap = A->n + 64;
                    A->recall = realloc(A->recall, sizeof(double) * cap);
                    A->ratio = realloc(A->ratio, sizeof(double) * cap);
                    A->err = realloc(A->err, sizeof(double) * cap);
                    A->tight = realloc(A->tight, sizeof(double) * cap);
                }
                if (ri == NR - 1) oracle_rec[bi][g] = m;
                A->recall[A->n] = m;
                A->ratio[A->n] = oracle_rec[bi][g] > 0 ? m / oracle_rec[bi][g] : 1.0;
                A->err[A->n] = sqrt(oerr / (on > 0 ? on : 1));
                A->n++;
                if (have_bound) {
                    double b = eg_lost_mass_bound(lub[g * (n_order + 1) + n_order], lz);
                    /* the left-out segments' mass itself: 1 - m carries the
                     * rounding of every selected segment's (a selection of
                     * everything would show a false violation) */
                    double lost = out_m;
                    if (b < lost * (1 - 1e-6) - 1e-9) A->viol++;
                    if (lost > 1e-9) A->tight[A->nt++] = b / lost;
                }
                const int64_t *tg = w->target + ((size_t)qi * w->n_q_heads + (size_t)h * G + g) * WL_MAX_TARGETS;
                for (int e = 0; e < WL_MAX_TARGETS; e++)
                    if (tg[e] >= 0) { A->needles++; A->hits += in[tg[e] / S]; }
            }
            free(lub);
            eg_route_selection_free(&sel);
        }
        /* max_lost mode: tokens needed for a bound of 0.05 (grown up to BOUND_CAP). */
        eg_route_opts opt;
        eg_route_opts_init(&opt);
        opt.budget_tokens = BOUND_CAP;
        opt.aggregate = routers[ri].agg;
        opt.ball_beta = routers[ri].beta;
        eg_route_selection sel;
        if (eg_router_select(tab[ri], &rows, &opt, &sel) == 0) {
            size_t n_order = sel.n - sel.n_forced, pre;
            double *lub = malloc(sizeof(double) * G * (n_order + 1));
            double *lse = malloc(sizeof(double) * G * (n_order + 1));
            eg_route_unselected_bound(routers[ri].kind == EG_ROUTER_QUEST || routers[ri].kind == EG_ROUTER_BALL
                                          ? tab[ri] : tab[0], &rows, &sel, lub);
            for (int g = 0; g < G; g++) {
                double lz = -INFINITY;
                for (size_t i = 0; i < sel.n_forced; i++) {
                    double l = seg_lse[g * nseg + sel.segments[i]];
                    lz = lse2(lz, l);
                }
                for (size_t i = 0; i <= n_order; i++) {
                    lse[g * (n_order + 1) + i] = lz;
                    if (i == n_order) break;
                    double l = seg_lse[g * nseg + sel.segments[sel.n_forced + i]];
                    lz = lse2(lz, l);
                }
            }
            double worst;
            eg_route_prefix_for_bound(lub, lse, G, n_order, 0.05, &pre, &worst);
            acc *A = &R->a[ri][2];
            if (worst <= 0.05) { A->bft_sum += (double)(sel.n_forced + pre) * S; A->bft_n++; }
            else A->bft_miss++;
            free(lub); free(lse);
            eg_route_selection_free(&sel);
        }
    }
    free(in);
    free(omass);
}

static void report(run *R, size_t T, double *bpt, const char *extra)
{
    char params[256];
    if (R->geo_rows) {
        double bx = R->box_excess / (double)R->geo_rows, bl = R->ball_excess / (double)R->geo_rows;
        double rx = R->rec_rows ? R->box_recall / (double)R->rec_rows : NAN;
        double rl = R->rec_rows ? R->ball_recall / (double)R->rec_rows : NAN;
        if (!R->o->json)
            printf("  bound of the whole visible mass over the true mass (mean of %ld rows): box (quest's) "
                   "%.2f nats, ball (mean + radius, d + 1 numbers) %.2f nats; mass recall of the top %d "
                   "segments by each bound alone: box %.4f, ball %.4f\n", R->geo_rows, bx, bl, GEO_K, rx, rl);
        for (int k = 0; k < 2 && R->o->json; k++) {
            snprintf(params, sizeof params, "\"summary\":\"%s\",\"workload\":\"%s\",\"tokens\":%zu%s",
                     k ? "ball" : "box", R->wname, T, extra);
            bench_figure(R->o, "recall", "bound_excess", k ? bl : bx, "nats", 0, params);
            bench_figure(R->o, "recall", "bound_topk_recall", k ? rl : rx, "fraction", 0, params);
        }
    }
    for (int ri = 0; ri < NR; ri++)
        for (int bi = 0; bi < NB; bi++) {
            acc *A = &R->a[ri][bi];
            if (!A->n) continue;
            snprintf(params, sizeof params, "\"router\":\"%s\",\"budget\":%lld,\"workload\":\"%s\",\"tokens\":%zu%s",
                     routers[ri].name, (long long)budgets[bi], R->wname, T, extra);
            double mean = 0, rmean = 0, emean = 0;
            for (size_t i = 0; i < A->n; i++) { mean += A->recall[i]; rmean += A->ratio[i]; emean += A->err[i]; }
            mean /= (double)A->n; rmean /= (double)A->n; emean /= (double)A->n;
            double p5 = pct(A->recall, A->n, 0.05), tight = A->nt ? pct(A->tight, A->nt, 0.5) : NAN;
            double hit = A->needles ? (double)A->hits / (double)A->needles : NAN;
            double sv = A->scans && A->stream_s > 0 ? A->scan_s / A->stream_s : NAN;
            double bft = A->bft_n + A->bft_miss ? (A->bft_miss ? (double)BOUND_CAP : A->bft_sum / (double)A->bft_n) : NAN;
            if (!R->o->json) {
                if (ri == 0 && bi == 0)
                    printf("  %-16s %6s %7s %7s %8s %8s %7s %5s %8s %6s %8s %9s\n", "router", "budget", "recall",
                           "p5", "vs_orcl", "out_err", "needle", "viol", "tight", "B/tok", "scan/str", "bound.05");
                printf("  %-16s %6lld %7.4f %7.4f %8.4f %8.4f %7.3f %5ld %8.3g %6.3g %8.3g %8.0f%s\n",
                       routers[ri].name, (long long)budgets[bi], mean, p5, rmean, emean, hit, A->viol, tight,
                       bpt[ri], bi == 2 ? sv : NAN, bi == 2 ? bft : NAN, bi == 2 && A->bft_miss ? "+" : "");
            } else {
                bench_figure(R->o, "recall", "mass_recall", mean, "fraction", 0, params);
                bench_figure(R->o, "recall", "mass_recall_p5", p5, "fraction", 0, params);
                bench_figure(R->o, "recall", "vs_oracle", rmean, "ratio", 0, params);
                bench_figure(R->o, "recall", "output_rel_error", emean, "relative", 0, params);
                if (A->needles) bench_figure(R->o, "recall", "needle_hit_rate", hit, "fraction", 0, params);
                bench_figure(R->o, "recall", "bound_violations", (double)A->viol, "count", 0, params);
                if (A->nt) bench_figure(R->o, "recall", "bound_tightness", tight, "ratio", 0, params);
                if (bi == 2) {
                    bench_figure(R->o, "recall", "index_bytes_per_token", bpt[ri], "bytes", 0, params);
                    if (A->scans)
                        bench_figure(R->o, "recall", "scan_vs_stream", sv, "ratio", A->stream_s / (double)A->scans, params);
                    if (A->bft_n + A->bft_miss)
                        bench_figure(R->o, "recall", "budget_for_bound", bft,
                                     A->bft_miss ? "tokens (cap: 0.05 not reached for some queries)" : "tokens",
                                     (double)A->bft_miss, params);
                }
            }
            free(A->recall); free(A->ratio); free(A->err); free(A->tight);
        }
}

/* Evaluate every router on w (learned weights trained on cal). */
static void eval_workload(const bench_opts *o, const char *wname, const wl_workload *w, const wl_workload *cal,
                          double membw, const char *extra)
{
    run *R = calloc(1, sizeof *R);
    R->o = o; R->w = w; R->wname = wname; R->membw = membw;
    int d = w->dim, H = w->n_kv_heads, G = w->n_q_heads / H;
    size_t nseg = (size_t)(w->n_tokens / S);
    double bpt[NR] = { 0 };
    double *seg_m = malloc(sizeof(double) * G * nseg), *seg_lse = malloc(sizeof(double) * G * nseg);
    float *seg_o = malloc(sizeof(float) * G * nseg * d), *lg = malloc(sizeof(float) * w->n_tokens);
    for (int h = 0; h < H; h++) {
        const float *K = w->k + (size_t)h * w->n_tokens * d;
        eg_learned *lw[NR] = { 0 };
        eg_route_table *tab[NR] = { 0 };
        int twin[NR];   /* a "-max" row shares the table (and weights) of the row before it */
        for (int ri = 0; ri < NR; ri++) {
            twin[ri] = routers[ri].agg && ri > 0 ? ri - 1 : -1;
            if (twin[ri] >= 0) {
                tab[ri] = tab[twin[ri]];
                bpt[ri] = bpt[twin[ri]];
                continue;
            }
            if (routers[ri].kind == EG_ROUTER_LEARNED) {
                float f0 = 0, f1 = 0;
                lw[ri] = train(cal, h, routers[ri].mode, o->quick ? 60 : 150, &f0, &f1);
                if (!lw[ri]) continue;
                if (!o->json)
                    printf("  %s kv-head %d %s: KL %.3f -> %.3f\n", wname, h, routers[ri].name, f0, f1);
            }
            tab[ri] = build(routers[ri].kind, K, nseg, d, lw[ri], routers[ri].f16);
            eg_summary_spec sp = { routers[ri].kind, d, S, lw[ri], 0 };
            bpt[ri] = eg_summary_bytes_per_token(&sp);
        }
        if (!tab[0]) { fprintf(stderr, "recall: quest table failed: %s\n", eg_index_last_error()); break; }
        float *gbox = malloc(sizeof(float) * nseg * 3 * d + sizeof(float) * nseg + 1);
        double *aggs = malloc(sizeof(double) * 4 * (nseg ? nseg : 1));
        if (!aggs) { free(gbox); gbox = NULL; }
        if (gbox) {
            R->agg_box = aggs;
            R->agg_ball = aggs + nseg;
            R->u_box = aggs + 2 * nseg;
            R->u_ball = aggs + 3 * nseg;
            geometry(K, nseg, d, gbox, gbox + nseg * 2 * d, gbox + nseg * 3 * d);
            R->gbox = gbox;
            R->gmu = gbox + nseg * 2 * d;
            R->grad = gbox + nseg * 3 * d;
        }
        for (int qi = 0; qi < w->n_queries; qi++) eval_group(R, qi, h, tab, nseg, seg_m, seg_lse, seg_o, lg);
        R->gbox = R->gmu = R->grad = NULL;
        free(gbox);
        free(aggs);
        for (int ri = 0; ri < NR; ri++)
            if (twin[ri] < 0) { eg_route_table_free(tab[ri]); eg_learned_free(lw[ri]); }
    }
    report(R, (size_t)w->n_tokens, bpt, extra);
    free(seg_m); free(seg_lse); free(seg_o); free(lg);
    free(R);
}

int bench_suite_recall(const bench_opts *o)
{
    double membw = bench_mem_gbps() / 2;     /* memcpy figure counts read+write; a scan only reads */
    if (!o->json) printf("recall: memory read bandwidth %.1f GB/s (same run)\n", membw);
    struct { wl_kind kind; double theta; int64_t T; } cases[] = {
        { WL_STRUCTURED, 1e4, 32768 }, { WL_RETRIEVAL, 1e4, 32768 },
        { WL_STRUCTURED, 5e5, 131072 }, { WL_RETRIEVAL, 1e4, 131072 },
        { WL_STRUCTURED, 1e4, 1048576 }, { WL_RETRIEVAL, 1e4, 1048576 },
    };
    int ncase = o->quick ? 2 : (int)(sizeof cases / sizeof *cases);
    for (int c = 0; c < ncase; c++) {
        wl_spec s;
        wl_spec_init(&s, cases[c].kind);
        s.rope_theta = cases[c].theta;
        s.n_tokens = cases[c].T;
        s.n_queries = o->quick ? 16 : (cases[c].T > 200000 ? 24 : 48);
        wl_spec cs = s;
        cs.text_seed = 1000;           /* calibration: the same "model" on another text */
        cs.n_tokens = 32768;
        cs.n_queries = 512;
        wl_workload w, cal;
        if (wl_generate(&s, &w) < 0 || wl_generate(&cs, &cal) < 0) { fprintf(stderr, "recall: generator failed\n"); return 1; }
        char name[64], extra[64];
        snprintf(name, sizeof name, "%s", wl_kind_name(s.kind));
        snprintf(extra, sizeof extra, ",\"theta\":%g", s.rope_theta);
        if (!o->json) printf("workload %s theta %g, %lld tokens, %d queries x %d heads\n", name, s.rope_theta,
                             (long long)s.n_tokens, s.n_queries, s.n_q_heads);
        eval_workload(o, name, &w, &cal, membw, extra);
        wl_free(&w);
        wl_free(&cal);
    }
    const char *data = getenv("EG_SHARED_DATA") ? getenv("EG_SHARED_DATA") : "../shared/data";
    char dir[600];
    snprintf(dir, sizeof dir, "%s/codebyte", data);
    wl_capture cap;
    if (wl_capture_open(dir, &cap) < 0) {
        printf("recall: real captures skipped: %s/model.json not found\n", dir);
        return 0;
    }
    for (int l = 0; l < cap.n_layers; l++) {
        wl_workload w, cal;
        if (wl_capture_layer(&cap, 0, l, o->quick ? 16 : 48, &w) < 0 ||
            wl_capture_layer(&cap, 0, l, 61, &cal) < 0) {
            fprintf(stderr, "recall: cannot read layer %d of %s\n", l, dir);
            return 1;
        }
        /* Calibration: the session's own queries at 61 other positions. */
        char name[300];
        snprintf(name, sizeof name, "real-%.200s-L%d", cap.seq_dir[0], l);
        if (!o->json) printf("workload %s, %lld tokens\n", name, (long long)w.n_tokens);
        eval_workload(o, name, &w, &cal, membw, "");
        wl_free(&w);
        wl_free(&cal);
    }
    return 0;
}
