/* prep.c: eg_router_select_bound split in three steps (index.h), so that a
 * caller with several tables and a few threads can share the scans out in
 * equal parts. With one task per table, a layer of 3 kv-heads on 2 cores
 * ran two heads one after the other on one core while the other waited:
 * the step took two table scans where 1.5 would do.
 *
 * The list is what eg_router_select_bound's bound would refine anyway
 * (bound.c): every group whose coarse term, counted as if none of its
 * segments were selected, is within IX_REFINE_NATS of the largest. A
 * group the selection needs that is not on the list is scored by finish,
 * as select scores it now. */
#include "ix_internal.h"
#include <stdlib.h>
#include <string.h>

struct eg_route_prep {
    ix_ctx c;
    ix_cache k;
    eg_route_opts o;
    uint32_t *items;          /* groups to score, ascending */
    size_t n_items;
};

void eg_route_prep_free(eg_route_prep *p)
{
    if (!p) return;
    ix_ctx_free(&p->c);
    ix_cache_free(&p->k);
    free(p->items);
    free(p);
}

/* The cache of the call, the caller's own memory rather than per-thread
 * scratch: begin, the parts and finish may run on different threads.
 * 0 when it does not fit (finish then works as eg_router_select_bound). */
static int cache_make(eg_route_prep *p)
{
    const ix_ctx *c = &p->c;
    size_t nr = (size_t)c->nr, nv = c->n_vis, ng = (nv + EG_IX_GROUP - 1) / EG_IX_GROUP;
    p->k.want = 1;
    if (!nv || nv * nr > IX_CACHE_MAX) return 0;
    float *sc = malloc(sizeof(float) * nv * nr);
    p->k.done = calloc(ng, 1);
    p->k.gsc = malloc(sizeof(float) * ng * nr);
    if (!sc || !p->k.done || !p->k.gsc) {
        free(sc);
        free(p->k.done);
        free(p->k.gsc);
        p->k.done = NULL;
        p->k.gsc = NULL;
        return 0;
    }
    p->k.sc = sc;
    p->k.scb = (ix_buf){ sc, 1 };   /* ix_cache_free frees it */
    p->k.n_vis = nv;
    return 1;
}

/* The groups to score: group scores, then each group's coarse term (as if
 * none of it were selected, which only lists more) against the largest. */
static int list_groups(eg_route_prep *p)
{
    const ix_ctx *c = &p->c;
    const eg_route_table *t = c->t;
    const eg_route_rows *rows = c->rows;
    size_t nr = (size_t)c->nr, nv = c->n_vis, G = EG_IX_GROUP, ng = (nv + G - 1) / G;
    size_t d = (size_t)t->spec.dim, S = (size_t)t->spec.seg_tokens;
    double *term = malloc(sizeof(double) * ng), *ql1 = calloc(nr, sizeof(double));
    p->items = malloc(sizeof(uint32_t) * ng);
    if (!term || !ql1 || !p->items) {
        free(term);
        free(ql1);
        return ix_fail(EG_IX_ENOMEM, "out of memory");
    }
    ix_group_scores(c, 0, ng, p->k.gsc, ng);
    p->k.gsc_ready = 1;
    for (size_t r = 0; r < nr; r++)
        for (size_t i = 0; i < d; i++) ql1[r] += fabs((double)rows->q[r * d + i]);
    double best = -INFINITY, scale = rows->scale, lgS[EG_IX_GROUP + 1];
    for (size_t u = 1; u <= G; u++) lgS[u] = log((double)(u * S));
    for (size_t g = 0; g < ng; g++) {
        double v = -INFINITY;
        for (size_t r = 0; r < nr; r++) {
            size_t a = g * G, b = a + G < c->row_vis[r] ? a + G : c->row_vis[r];
            if (b <= a) continue;
            double x = ix_coarse_term(lgS[b - a], scale, p->k.gsc[r * ng + g], (int)d, ql1[r], t->gabs[g]);
            v = x > v ? x : v;
        }
        term[g] = v;
        best = v > best ? v : best;
    }
    p->n_items = 0;
    if (best > -INFINITY)
        for (size_t g = 0; g < ng; g++)
            if (term[g] > -INFINITY && !(term[g] < best - IX_REFINE_NATS)) p->items[p->n_items++] = (uint32_t)g;
    free(term);
    free(ql1);
    return 0;
}

int eg_route_prep_begin(const eg_route_table *t, const eg_route_rows *rows, const eg_route_opts *o,
                        eg_route_prep **out)
{
    if (!out) return ix_fail(EG_IX_EINVAL, "prep is NULL");
    *out = NULL;
    if (!t) return ix_fail(EG_IX_EINVAL, "table is NULL");
    if (!ix_bound_table(t))
        return ix_fail(EG_IX_EKIND, "prep needs a quest or ball table, not %s", eg_router_name(t->spec.kind));
    if (!o) return ix_fail(EG_IX_EINVAL, "options are NULL");
    if (o->budget_tokens <= 0) return ix_fail(EG_IX_EBUDGET, "budget of %lld tokens", (long long)o->budget_tokens);
    if (o->n_tags > 0 && !o->tags) return ix_fail(EG_IX_EINVAL, "n_tags %d with tags NULL", o->n_tags);
    eg_route_prep *p = calloc(1, sizeof *p);
    if (!p) return ix_fail(EG_IX_ENOMEM, "out of memory");
    p->o = *o;
    int rc = ix_ctx_init(&p->c, t, rows, o);
    if (!rc && cache_make(p)) rc = list_groups(p);
    if (rc) {
        eg_route_prep_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

size_t eg_route_prep_items(const eg_route_prep *p) { return p ? p->n_items : 0; }

void eg_route_prep_score(eg_route_prep *p, size_t i0, size_t i1)
{
    if (!p || !p->k.sc) return;
    i1 = i1 < p->n_items ? i1 : p->n_items;
    size_t G = EG_IX_GROUP, nv = p->c.n_vis;
    const uint32_t *ids = p->items;
    while (i0 < i1) {   /* runs of adjacent groups as one range */
        size_t e = i0 + 1;
        while (e < i1 && ids[e] == ids[e - 1] + 1) e++;
        size_t s0 = (size_t)ids[i0] * G, s1 = (size_t)ids[e - 1] * G + G;
        s1 = s1 < nv ? s1 : nv;
        ix_score_range(&p->c, s0, s1, p->k.sc + s0, p->k.n_vis);   /* select's scores, as select makes them */
        for (size_t x = i0; x < e; x++) p->k.done[ids[x]] = 1;   /* a byte per group: parts never share one */
        i0 = e;
    }
}

int eg_route_prep_finish(eg_route_prep *p, eg_route_selection *sel, double **log_ub)
{
    if (!p || !sel || !log_ub) return ix_fail(EG_IX_EINVAL, "prep, selection or log_ub is NULL");
    *log_ub = NULL;
    size_t pre = 0;   /* segments the parts scored, which select does not count */
    for (size_t i = 0; i < p->n_items && p->k.sc; i++) {
        size_t s0 = (size_t)p->items[i] * EG_IX_GROUP;
        if (p->k.done[p->items[i]] == 1) pre += (s0 + EG_IX_GROUP < p->c.n_vis ? s0 + EG_IX_GROUP : p->c.n_vis) - s0;
    }
    int rc = ix_select_ctx(&p->c, &p->o, sel, &p->k);
    if (rc) return rc;
    size_t n_order = sel->n - sel->n_forced;
    sel->scored += pre;
    double *ub = malloc(sizeof(double) * (size_t)p->c.nr * (n_order + 1));
    rc = ub ? ix_bound_run(&p->c, sel, &p->k, ub) : ix_fail(EG_IX_ENOMEM, "out of memory");
    if (rc) {
        free(ub);
        eg_route_selection_free(sel);
        return rc;
    }
    *log_ub = ub;
    return 0;
}
