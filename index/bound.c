/* bound.c: the lost-mass bound. With quest summaries every key k of a
 * segment satisfies q.k <= ub(q, segment), so the left-out mass of a row is
 * at most sum over left-out segments of n_tokens * exp(scale * ub). Groups
 * of segments give a coarser bound (their min of mins and max of maxes)
 * that is used where it cannot matter and refined where it can. */
#include "ix_internal.h"
#include <stdlib.h>
#include <string.h>

typedef struct { double m, s; } lse_acc;       /* log(s) + m, s in [1, n] */
static void lse_add(lse_acc *a, double x)
{
    if (x == -INFINITY) return;
    if (x == INFINITY) { a->m = INFINITY; a->s = 1; return; }
    if (a->m == -INFINITY) { a->m = x; a->s = 1; return; }
    if (a->m == INFINITY) return;
    if (x <= a->m) a->s += exp(x - a->m);
    else { a->s = a->s * exp(a->m - x) + 1; a->m = x; }
}
static double lse_get(const lse_acc *a) { return a->m == -INFINITY ? -INFINITY : a->m + log(a->s); }

double eg_lost_mass_bound(double log_ub, double lse_sel)
{
    if (log_ub == -INFINITY) return 0.0;
    if (lse_sel == -INFINITY || log_ub == INFINITY || log_ub != log_ub) return 1.0;
    return 1.0 / (1.0 + exp(lse_sel - log_ub));
}

/* Segments per run of the bound's exp-sum when the call keeps no score
 * cache (the scores of a run are made in a buffer of this many). */
#define RUN_SEGS ((size_t)64 * EG_IX_GROUP)

/* Bound of the left-out mass given a selection (see the header), with the
 * scores of the call in k where select left them. Score arrays are
 * row-major: row r of a block of scores at r * ld. Refined groups are summed
 * by one vector exp-sum per row and run of segments (the whole visible range
 * when every score fits in the cache), not group by group. */
int ix_bound_run(const ix_ctx *c, const eg_route_selection *sel, const ix_cache *k, double *log_ub)
{
    const eg_route_table *t = c->t;
    const eg_route_rows *rows = c->rows;
    size_t n = t->n, nr = (size_t)c->nr, S = (size_t)t->spec.seg_tokens, G = EG_IX_GROUP;
    size_t d = (size_t)t->spec.dim, nv = c->n_vis, ng = (nv + G - 1) / G;
    size_t n_order = sel->n - sel->n_forced;
    int cached = k && k->sc, rc = 0;
    size_t run = cached ? (nv ? nv : 1) : RUN_SEGS, ldr = cached ? k->n_vis : RUN_SEGS;
    ix_buf skb;
    int skb_ok = ix_buf_get(&skb, IX_SCR_MARK, n ? n : 1) == 0;
    uint8_t *skip = skb.p;                               /* 1 = selected, or kept coarse */
    uint32_t *gsel = calloc(ng ? ng : 1, sizeof(uint32_t));   /* selected per group */
    uint8_t *refine = malloc(ng ? ng : 1);
    float *sc = malloc(sizeof(float) * nr * (n_order > 0 ? n_order : 1));
    float *tmp = cached ? NULL : malloc(sizeof(float) * nr * RUN_SEGS);
    float *gsc = k && k->gsc ? NULL : malloc(sizeof(float) * nr * (ng ? ng : 1));
    float *base = malloc(sizeof(float) * (ng ? ng : 1));
    double *coarse = malloc(sizeof(double) * nr * (ng ? ng : 1));
    double *ql1 = malloc(sizeof(double) * nr);
    double *margin = malloc(sizeof(double) * nr);
    lse_acc *acc = malloc(sizeof(lse_acc) * nr);
    size_t *pseg = malloc(sizeof(size_t) * nr);
    double *lpart = malloc(sizeof(double) * nr);
    float *ref = malloc(sizeof(float) * nr), *rq = malloc(sizeof(float) * nr);
    if (!ref || !rq || !skb_ok || !gsel || !refine || !sc || (!cached && !tmp) || (!gsc && !(k && k->gsc)) || !base || !coarse ||
        !ql1 || !margin || !acc || !pseg || !lpart) {
        rc = ix_fail(EG_IX_ENOMEM, "out of memory");
        goto out;
    }
    const float *gs = gsc ? gsc : k->gsc;                /* [nr][ng] */
    memset(skip, 0, n ? n : 1);
    for (size_t i = 0; i < sel->n; i++) {
        size_t s = (size_t)sel->segments[i];
        skip[s] = 1;
        if (s < nv) gsel[s / G]++;
    }
    const double scale = rows->scale, logS = log((double)S);
    for (size_t r = 0; r < nr; r++) {
        double l1 = 0;
        for (size_t i = 0; i < d; i++) l1 += fabs((double)rows->q[r * d + i]);
        ql1[r] = l1;
        margin[r] = 0;
        acc[r] = (lse_acc){ -INFINITY, 0 };
        /* the segment holding pos, when the row sees only part of it */
        pseg[r] = SIZE_MAX;
        lpart[r] = 0;
        ref[r] = -INFINITY;
        rq[r] = ix_ball(t) ? c->qn[r] * (1.0f - c->beta) : 0.0f;   /* (1 - beta) |q|, one f32 rounding */
        if (rows->pos && (size_t)(rows->pos[r] + 1) % S) {
            pseg[r] = (size_t)rows->pos[r] / S;
            lpart[r] = log((double)((size_t)(rows->pos[r] + 1) % S)) - logS;
        }
    }
    /* Term of segment s for row r from its score: log(tokens seen) + scale * (score + slack). */
    /* Select's scores of a ball are centre + beta |q| r; the bound's add
     * (1 - beta) |q| r (multiply, then add, as the kernels' epilogue). */
    const int lift = cached && ix_ball(t);
    #define LIFTED(r, s, v) (lift ? (v) + rq[r] * t->q8rad[s] : (v))
    #define TERM(r, s, score, g) (logS + ((s) == pseg[r] ? lpart[r] : 0.0) + \
        scale * ((double)(score) + ix_quest_slack((int)d, ql1[r], t->gabs[g])))
    /* Coarse terms per group and row, over the row's visible unselected segments. */
    if (gsc) ix_group_scores(c, 0, ng, gsc, ng);
    double best = -INFINITY, lgS[EG_IX_GROUP + 1];   /* log(u S) for u unselected: no log per group and row */
    for (size_t u = 1; u <= G; u++) lgS[u] = log((double)(u * S));
    for (size_t g = 0; g < ng; g++)
        for (size_t r = 0; r < nr; r++) {
            size_t a = g * G, b = a + G < c->row_vis[r] ? a + G : c->row_vis[r];
            double v = -INFINITY;
            size_t unsel = 0;
            if (b == a + G) unsel = G - gsel[g];
            else for (size_t s = a; s < b; s++) unsel += !skip[s];
            if (b > a && unsel > 0)
                v = ix_coarse_term(lgS[unsel], scale, gs[r * ng + g], (int)d, ql1[r], t->gabs[g]);
            coarse[g * nr + r] = v;
            best = v > best ? v : best;
        }
    /* Refine the groups select scored and those that can matter (scored
     * here where select did not); the others keep their coarse term and
     * are skipped by the exp-sum. */
    /* Per group: 0 kept coarse, 1 refined from select's scores, 2 refined
     * and scored here. Then the work in runs of groups of one kind: a call
     * per group was a quarter of the bound's time on a 9/3/64 step. The
     * refined groups' coarse terms give each row's exp-sum a reference at
     * or above its terms (one pass, not a max first). */
    for (size_t g = 0; g < ng; g++) {
        int done = cached && k->done[g];
        refine[g] = (uint8_t)done;
        for (size_t r = 0; r < nr && !refine[g]; r++) refine[g] |= coarse[g * nr + r] >= best - IX_REFINE_NATS;
        if (!refine[g])
            for (size_t r = 0; r < nr; r++) lse_add(&acc[r], coarse[g * nr + r]);
        else {
            if (!done) refine[g] = 2;
            for (size_t r = 0; r < nr; r++)
                ref[r] = coarse[g * nr + r] > ref[r] ? (float)coarse[g * nr + r] : ref[r];
        }
    }
    for (size_t g = 0; g < ng;) {
        size_t e = g + 1;
        while (e < ng && refine[e] == refine[g]) e++;
        size_t a = g * G, b = e * G < nv ? e * G : nv;
        if (!refine[g]) {
            memset(skip + a, 1, b - a);
            if (cached)                       /* defined values where the kernel skips */
                for (size_t r = 0; r < nr; r++)
                    for (size_t s = a; s < b; s++) k->sc[r * k->n_vis + s] = -INFINITY;
        } else if (cached && refine[g] == 2) {   /* as select scores them: the exp-sum lifts */
            if (lift) ix_q8_scores(c, a, b, k->sc + a, k->n_vis, c->beta);
            else ix_quest_scores(c, a, b, k->sc + a, k->n_vis);
        }
        g = e;
    }
    for (size_t a0 = 0; a0 < nv; a0 += run) {
        size_t b0 = a0 + run < nv ? a0 + run : nv;
        const float *src = cached ? k->sc + a0 : tmp;
        if (!cached)
            for (size_t g = a0 / G; g * G < b0; g++)
            {
                size_t a = g * G, b = a + G < nv ? a + G : nv;
                if (refine[g])
                    ix_quest_scores(c, a, b, tmp + (a - a0), RUN_SEGS);   /* ball: bounds already */
                else
                    for (size_t r = 0; r < nr; r++)
                        for (size_t s = a; s < b; s++) tmp[r * RUN_SEGS + (s - a0)] = -INFINITY;
            }
        for (size_t r = 0; r < nr; r++) {
            size_t e = b0 < c->row_vis[r] ? b0 : c->row_vis[r], ps = pseg[r];
            if (e <= a0) continue;
            const float *row = src + r * ldr;
            int part = ps >= a0 && ps < e && !skip[ps];
            if (part) {                       /* exactly, outside the kernel */
                lse_add(&acc[r], TERM(r, ps, LIFTED(r, ps, row[ps - a0]), ps / G));
                skip[ps] = 1;
            }
            float bmax = 0;
            for (size_t g = a0 / G; g * G < e; g++) {
                base[g - a0 / G] = (float)(logS + scale * ix_quest_slack((int)d, ql1[r], t->gabs[g]));
                bmax = fabsf(base[g - a0 / G]) > bmax ? fabsf(base[g - a0 / G]) : bmax;
            }
            float m;
            ix_terms tm = { row, skip + a0, e - a0, (float)scale, base, G, lift ? t->q8rad + a0 : NULL, rq[r],
                            isfinite(ref[r]) ? ref[r] : NAN };
            double sum = ix_sum_exp_lifted(&tm, &m);
            if (part) skip[ps] = 0;
            if (m == INFINITY) { lse_add(&acc[r], INFINITY); continue; }   /* overflowed: no bound */
            if (m == -INFINITY) continue;
            lse_add(&acc[r], (double)m + log(sum));
            /* terms below m - 87 count as 0: n 2^-125.5 at most, against a sum >= 2^-60 */
            double err = IX_EXP_REL + 0x1p-24 * (2.0 * fabs(m) + bmax + 174.0) + (double)(e - a0) * 0x1p-125 / sum + 1e-30;
            margin[r] = err > margin[r] ? err : margin[r];
        }
    }
    /* Routed segments, as suffixes: prefix i leaves out routed[i..n_order). */
    for (size_t i = 0; i < n_order; i++) {
        size_t s = (size_t)sel->segments[sel->n_forced + i];
        if (cached && s < k->n_vis && k->done[s / G])
            for (size_t r = 0; r < nr; r++) sc[r * n_order + i] = LIFTED(r, s, k->sc[r * k->n_vis + s]);
        else ix_quest_scores(c, s, s + 1, sc + i, n_order);
    }
    for (size_t r = 0; r < nr; r++) {
        double *o = log_ub + r * (n_order + 1);
        lse_acc suf = acc[r];
        o[n_order] = lse_get(&suf);
        for (size_t i = n_order; i-- > 0;) {
            size_t s = (size_t)sel->segments[sel->n_forced + i];
            if (s < c->row_vis[r]) lse_add(&suf, TERM(r, s, sc[r * n_order + i], s / G));
            o[i] = lse_get(&suf);
        }
        /* What the kernel's rounding can add, twice over: log(1 + e) <= e. */
        for (size_t i = 0; i <= n_order; i++) if (o[i] > -INFINITY) o[i] += 2.0 * margin[r];
    }
    #undef TERM
    #undef LIFTED
out:
    ix_buf_put(&skb);
    free(gsel); free(refine); free(sc); free(tmp); free(gsc); free(base); free(coarse); free(ql1); free(margin);
    free(acc); free(pseg); free(lpart); free(ref); free(rq);
    return rc;
}

static int check_selection(const eg_route_table *t, const eg_route_selection *sel)
{
    for (size_t i = 0; i < sel->n; i++)
        if (sel->segments[i] < 0 || (size_t)sel->segments[i] >= t->n)
            return ix_fail(EG_IX_ERANGE, "selected segment %lld beyond the table's %zu",
                           (long long)sel->segments[i], t->n);
    return 0;
}

int eg_route_unselected_bound(const eg_route_table *t, const eg_route_rows *rows,
                              const eg_route_selection *sel, double *log_ub)
{
    if (!t || !sel || !log_ub) return ix_fail(EG_IX_EINVAL, "table, selection or output is NULL");
    if (!ix_bound_table(t))
        return ix_fail(EG_IX_EKIND, "the bound needs a quest or ball table, not %s", eg_router_name(t->spec.kind));
    int rc = check_selection(t, sel);
    if (rc < 0) return rc;
    ix_ctx c;
    rc = ix_ctx_init(&c, t, rows, NULL);
    if (!rc) rc = ix_bound_run(&c, sel, NULL, log_ub);
    ix_ctx_free(&c);
    return rc;
}

int eg_router_select_bound(const eg_route_table *t, const eg_route_rows *rows, const eg_route_opts *o,
                           eg_route_selection *sel, double **log_ub)
{
    if (!log_ub) return ix_fail(EG_IX_EINVAL, "log_ub is NULL");
    *log_ub = NULL;
    if (t && !ix_bound_table(t))
        return ix_fail(EG_IX_EKIND, "select_bound needs a quest or ball table, not %s",
                       eg_router_name(t->spec.kind));
    ix_cache k = { 1, 0, { NULL, 0 }, NULL, NULL, NULL, 0 };
    ix_ctx c;
    int rc = ix_select(t, rows, o, sel, &k, &c);
    if (rc < 0) { ix_cache_free(&k); return rc; }
    size_t n_order = sel->n - sel->n_forced;
    double *ub = malloc(sizeof(double) * (size_t)rows->n_rows * (n_order + 1));
    rc = ub ? ix_bound_run(&c, sel, &k, ub) : ix_fail(EG_IX_ENOMEM, "out of memory");
    ix_ctx_free(&c);
    ix_cache_free(&k);
    if (rc) { free(ub); eg_route_selection_free(sel); return rc; }
    *log_ub = ub;
    return 0;
}

int eg_route_prefix_for_bound(const double *log_ub, const double *lse_sel, int n_rows,
                              size_t n_order, double max_lost, size_t *n_prefix, double *worst_bound)
{
    if (!log_ub || !lse_sel || !n_prefix || n_rows < 1)
        return ix_fail(EG_IX_EINVAL, "prefix_for_bound: NULL array or no rows");
    if (!(max_lost >= 0.0 && max_lost <= 1.0))
        return ix_fail(EG_IX_EINVAL, "max_lost %g outside [0, 1]", max_lost);
    double worst = 1.0;
    size_t i;
    for (i = 0; i <= n_order; i++) {
        worst = 0.0;
        for (int r = 0; r < n_rows; r++) {
            size_t k = (size_t)r * (n_order + 1) + i;
            double b = eg_lost_mass_bound(log_ub[k], lse_sel[k]);
            worst = b > worst ? b : worst;
        }
        if (worst <= max_lost) break;
    }
    *n_prefix = i <= n_order ? i : n_order;
    if (worst_bound) *worst_bound = worst;
    return 0;
}
