/* select.c: scoring query rows against a route table and top-k selection
 * (flat, or for quest hierarchical by groups of segments). */
#include "ix_internal.h"
#include <stdlib.h>
#include <string.h>

#define CHUNK 1024            /* segments scored per kernel call (bounds temp memory) */

void eg_route_opts_init(eg_route_opts *o)
{
    memset(o, 0, sizeof *o);
    o->n_sink_segments = 1;
    o->recent_tokens = 256;
    o->hierarchical = 1;
    o->ball_beta = EG_BALL_BETA;
}

void eg_route_selection_free(eg_route_selection *sel)
{
    if (!sel) return;
    free(sel->segments);
    free(sel->scores);
    memset(sel, 0, sizeof *sel);
}

void ix_ctx_free(ix_ctx *c)
{
    free(c->row_vis); free(c->qp); free(c->lut_base);   /* one allocation with lut_step and lutq */
    free(c->qq);   /* one allocation with qt, ql1 and qinf (qscan.c) */
}

static int check_rows(const eg_route_table *t, const eg_route_rows *rw)
{
    if (!rw) return ix_fail(EG_IX_EINVAL, "rows is NULL");
    if (rw->n_rows < 1 || rw->n_rows > EG_IX_ROWS_MAX)
        return ix_fail(EG_IX_EDIM, "%d query rows (1..%d)", rw->n_rows, EG_IX_ROWS_MAX);
    if (!(rw->scale > 0.0f) || !isfinite(rw->scale))
        return ix_fail(EG_IX_EINVAL, "score scale %g must be positive and finite", rw->scale);
    size_t nr = (size_t)rw->n_rows, d = (size_t)t->spec.dim;
    if (rw->pos)
        for (size_t r = 0; r < nr; r++)
            if (rw->pos[r] < 0) return ix_fail(EG_IX_ERANGE, "row %zu: position %lld", r, (long long)rw->pos[r]);
    switch (t->spec.kind) {
    case EG_ROUTER_INDEXER: {
        int h = rw->n_index_heads;
        if (h < 1 || h > EG_IX_INDEX_HEADS_MAX)
            return ix_fail(EG_IX_EDIM, "%d index heads (1..%d)", h, EG_IX_INDEX_HEADS_MAX);
        if (!rw->index_q || !rw->index_w) return ix_fail(EG_IX_EINVAL, "indexer rows need index_q and index_w");
        if (!ix_all_finite(rw->index_q, nr * h * d) || !ix_all_finite(rw->index_w, nr * h))
            return ix_fail(EG_IX_ENONFINITE, "NaN or Inf in index queries or weights");
        break;
    }
    case EG_ROUTER_ORACLE:
        if (!rw->oracle_mass) return ix_fail(EG_IX_EINVAL, "oracle rows need oracle_mass");
        for (size_t s = 0; s < t->n; s++)
            if (!(rw->oracle_mass[s] >= 0.0f) || !isfinite(rw->oracle_mass[s]))
                return ix_fail(EG_IX_ENONFINITE, "oracle mass of segment %zu is %g", s, rw->oracle_mass[s]);
        break;
    default:
        if (!rw->q) return ix_fail(EG_IX_EINVAL, "rows need q");
        if (!ix_all_finite(rw->q, nr * d)) return ix_fail(EG_IX_ENONFINITE, "NaN or Inf in the queries");
        break;
    }
    return 0;
}

/* PQ: per row the lookup tables of its projected query (c->qp) as bytes
 * on one step for all sub-vectors, so that the scan adds bytes (score.c).
 * The byte sums stand for the float sums to within m step / 2, step =
 * the widest sub-vector table's range / 255. */
static int pq_tables(ix_ctx *c, const eg_learned *lw)
{
    size_t nr = (size_t)c->nr, w = (size_t)lw->cfg.rank, m = w / IX_PQ_SUB;
    void *mem = malloc(nr * m * IX_PQ_K + 2 * nr * sizeof(float) + sizeof(float));
    if (!mem) return ix_fail(EG_IX_ENOMEM, "out of memory");
    c->lut_base = (float *)mem;
    c->lut_step = c->lut_base + nr;
    c->lutq = (uint8_t *)(c->lut_step + nr);
    for (size_t r = 0; r < nr; r++) {
        float L[(EG_LEARNED_RANK_MAX / IX_PQ_SUB) * IX_PQ_K], lo[EG_LEARNED_RANK_MAX / IX_PQ_SUB], range = 0, base = 0;
        for (size_t j = 0; j < m; j++) {
            ix_score_rows(lw->codebook + j * IX_PQ_K * IX_PQ_SUB, IX_PQ_K, IX_PQ_SUB, c->qp + r * w + j * IX_PQ_SUB,
                          1, L + j * IX_PQ_K);
            float a = L[j * IX_PQ_K], b = a;
            for (size_t k = 1; k < IX_PQ_K; k++) { a = fminf(a, L[j * IX_PQ_K + k]); b = fmaxf(b, L[j * IX_PQ_K + k]); }
            lo[j] = a;
            base += a;
            range = fmaxf(range, b - a);
        }
        float step = range / 255.0f;
        if (!(step > 0.0f) || !isfinite(step)) step = 1.0f;   /* every table flat: all bytes 0 */
        c->lut_base[r] = base;
        c->lut_step[r] = step;
        for (size_t j = 0; j < m; j++)
            for (size_t k = 0; k < IX_PQ_K; k++) {
                float v = nearbyintf((L[j * IX_PQ_K + k] - lo[j]) / step);
                c->lutq[(r * m + j) * IX_PQ_K + k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
    }
    return 0;
}

int ix_ctx_init(ix_ctx *c, const eg_route_table *t, const eg_route_rows *rw, const eg_route_opts *o)
{
    memset(c, 0, sizeof *c);
    if (!t) return ix_fail(EG_IX_EINVAL, "table is NULL");
    int rc = check_rows(t, rw);
    if (rc < 0) return rc;
    c->t = t;
    c->rows = rw;
    c->nr = rw->n_rows;
    size_t S = (size_t)t->spec.seg_tokens, d = (size_t)t->spec.dim, nr = (size_t)c->nr;
    c->row_vis = malloc(sizeof(size_t) * nr);
    if (!c->row_vis) return ix_fail(EG_IX_ENOMEM, "out of memory");
    int64_t pmax = -1;
    for (size_t r = 0; r < nr; r++) {
        size_t v = t->n;
        if (rw->pos) {
            v = (size_t)(rw->pos[r] / (int64_t)S) + 1;
            v = v < t->n ? v : t->n;
            pmax = rw->pos[r] > pmax ? rw->pos[r] : pmax;
        }
        c->row_vis[r] = v;
        c->n_vis = v > c->n_vis ? v : c->n_vis;
    }
    if (!rw->pos) pmax = (int64_t)(t->n * S);   /* as if queried right after the last sealed token */
    if (o && (o->aggregate < EG_ROUTE_AGG_AUTO || o->aggregate > EG_ROUTE_AGG_MASS))
        return ix_fail(EG_IX_EINVAL, "aggregate %d (0 auto, 1 max, 2 mass)", o->aggregate);
    if (o && ix_ball(t) && !(o->ball_beta >= 0.0f && o->ball_beta <= 1.0f))
        return ix_fail(EG_IX_EINVAL, "ball_beta %g outside 0..1", (double)o->ball_beta);
    int ns = o ? o->n_sink_segments : 1;
    int64_t recent = o ? o->recent_tokens : 256;
    if (ns < 0 || recent < 0) return ix_fail(EG_IX_EINVAL, "negative sink count or recent window");
    c->n_sink = (size_t)ns < c->n_vis ? (size_t)ns : c->n_vis;
    c->recent0 = c->n_vis;
    if (recent > 0) {
        int64_t first = pmax - recent + 1;
        size_t s0 = first <= 0 ? 0 : (size_t)(first / (int64_t)S);
        c->recent0 = s0 < c->n_vis ? s0 : c->n_vis;
    }
    /* Prepared query rows. */
    eg_router_kind k = t->spec.kind;
    if (k == EG_ROUTER_QUEST || k == EG_ROUTER_BALL || k == EG_ROUTER_CENTROID || k == EG_ROUTER_LEARNED) {
        size_t w = (size_t)t->width;
        c->qp = malloc(sizeof(float) * nr * w);
        if (!c->qp) return ix_fail(EG_IX_ENOMEM, "out of memory");
        for (size_t r = 0; r < nr; r++) {
            const float *q = rw->q + r * d;
            float *o2 = c->qp + r * w;
            if (k == EG_ROUTER_QUEST)
                for (size_t i = 0; i < d; i++) {
                    o2[i] = q[i] > 0.0f ? q[i] : 0.0f;       /* pairs with max */
                    o2[d + i] = q[i] < 0.0f ? q[i] : 0.0f;   /* pairs with min */
                }
            else if (k == EG_ROUTER_BALL || k == EG_ROUTER_CENTROID || ix_learned_outliers(t) || ix_learned_mean8(t))
                memcpy(o2, q, sizeof(float) * d);
        }
        if (ix_q8_table(t) && (rc = ix_q8_rows(c)) < 0) return rc;
        c->beta = ix_ball(t) ? (o ? o->ball_beta : EG_BALL_BETA) : 0.0f;
        if (k == EG_ROUTER_LEARNED && !ix_learned_outliers(t) && !ix_learned_mean8(t)) {
            const eg_learned *lw = t->spec.learned;
            ix_project(lw->wq, lw->cfg.rank, (int)d, rw->q, nr, c->qp);
            if (lw->cfg.mode == EG_LEARNED_PQ && (rc = pq_tables(c, lw)) < 0) return rc;
        }
    }
    return 0;
}

int ix_forced(const ix_ctx *c, size_t s) { return s < c->n_sink || s >= c->recent0; }

/* Aggregate: max over the rows that see segment s (row r's score at p[r*ld]). */
static float aggregate(const ix_ctx *c, size_t s, const float *p, size_t ld)
{
    float best = -INFINITY;
    for (int r = 0; r < c->nr; r++)
        if (s < c->row_vis[r] && p[(size_t)r * ld] > best) best = p[(size_t)r * ld];
    return best;
}

static int tag_ok(const eg_route_opts *o, uint32_t tag)
{
    if (!o || !o->tags || o->n_tags <= 0) return 1;
    for (int i = 0; i < o->n_tags; i++) if (o->tags[i] == tag) return 1;
    return 0;
}

/* Push the candidates among segments [a, a + n) with aggregated scores
 * agg: only what beats the heap's k-th (idx: room for n). */
static void push_cands(const ix_ctx *c, const eg_route_opts *o, size_t a, const float *agg, size_t n,
                       ix_heap *hp, uint32_t *idx)
{
    float thr = hp->n == hp->k && hp->k ? hp->h[0].score : -INFINITY;
    size_t n_cand = ix_at_least(agg, n, thr, idx);   /* the others cannot enter the heap */
    for (size_t j = 0; j < n_cand; j++) {
        size_t s = a + idx[j];
        float v = agg[idx[j]];
        if (v < thr) continue;                      /* the heap filled meanwhile */
        if (ix_forced(c, s) || !tag_ok(o, c->t->tags[s])) continue;
        ix_heap_push(hp, (ix_cand){ v, (int64_t)s });
        if (hp->n == hp->k && hp->k) thr = hp->h[0].score;
    }
}

/* Score segments [s0, s1) (into the cache when there is one, else buf)
 * and push the candidates among them: the max over rows first, row by
 * row over contiguous scores, then only what beats the heap's k-th. */
static void push_range(const ix_ctx *c, const eg_route_opts *o, size_t s0, size_t s1, ix_heap *hp, float *buf,
                       ix_cache *k, int scored)
{
    float agg[CHUNK];
    uint32_t idx[CHUNK];
    for (size_t a = s0; a < s1; a += CHUNK) {
        size_t b = a + CHUNK < s1 ? a + CHUNK : s1, ld = k && k->sc ? k->n_vis : CHUNK;
        float *out = k && k->sc ? k->sc + a : buf;
        if (!scored) ix_score_range(c, a, b, out, ld);
        ix_rows_max(out, ld, c->nr, c->row_vis, a, b - a, agg);
        push_cands(c, o, a, agg, b - a, hp, idx);
    }
}

void ix_cache_free(ix_cache *k)
{
    if (!k) return;
    ix_buf_put(&k->scb);
    free(k->done);
    free(k->gsc);
    k->sc = k->gsc = NULL;
    k->done = NULL;
}

/* Room for the scores of the call when they fit (quest only). */
static void cache_alloc(const ix_ctx *c, ix_cache *k)
{
    if (!k || k->sc) return;   /* none wanted, or made by the caller (prep.c) */
    k->sc = k->gsc = NULL;
    k->done = NULL;
    size_t nr = (size_t)c->nr, ng = (c->n_vis + EG_IX_GROUP - 1) / EG_IX_GROUP;
    if (!k->want || !ix_bound_table(c->t) || !c->n_vis || c->n_vis * nr > IX_CACHE_MAX) return;
    k->n_vis = c->n_vis;
    k->sc = ix_buf_get(&k->scb, IX_SCR_SC, sizeof(float) * c->n_vis * nr) ? NULL : k->scb.p;
    k->done = calloc(ng, 1);
    k->gsc = malloc(sizeof(float) * ng * nr);
    if (!k->sc || !k->done || !k->gsc) ix_cache_free(k);   /* the bound then scores for itself */
}

/* Sort key of a group: descending bound, then ascending index, as one
 * ascending integer (-0 counts as +0; bounds are never NaN). */
static uint64_t group_key(float bound, size_t g)
{
    bound += 0.0f;
    uint32_t u;
    memcpy(&u, &bound, sizeof u);
    u = (u >> 31) ? ~u : u | 0x80000000u;   /* ascending order of the floats */
    return (uint64_t)~u << 32 | (uint32_t)g;
}

/* LSD radix sort of keys (n of them, tmp room for n), skipping the bytes
 * every key shares: a few passes over a few hundred keys, where qsort's
 * calls through a comparator were 3 % of a decode step. */
static void sort_keys(uint64_t *key, uint64_t *tmp, size_t n)
{
    size_t cnt[256];
    for (int sh = 0; sh < 64; sh += 8) {
        memset(cnt, 0, sizeof cnt);
        for (size_t i = 0; i < n; i++) cnt[(key[i] >> sh) & 255]++;
        if (n == 0 || cnt[(key[0] >> sh) & 255] == n) continue;
        size_t sum = 0;
        for (int b = 0; b < 256; b++) { size_t c = cnt[b]; cnt[b] = sum; sum += c; }
        for (size_t i = 0; i < n; i++) tmp[cnt[(key[i] >> sh) & 255]++] = key[i];
        memcpy(key, tmp, n * sizeof *key);
    }
}

/* Scoring of a set of groups into the cache, split over the caller's
 * parallel_for: ids ascending, so that runs of adjacent groups stream as
 * one range. Each part writes its own columns of the cache. */
typedef struct {
    const ix_ctx *c;
    ix_cache *k;
    const uint32_t *ids;
    size_t n;
    int parts;
} score_job;

static void score_part(void *arg, int p)
{
    const score_job *j = arg;
    size_t a = j->n * (size_t)p / (size_t)j->parts, b = j->n * (size_t)(p + 1) / (size_t)j->parts;
    size_t G = EG_IX_GROUP, nv = j->c->n_vis;
    while (a < b) {
        size_t e = a + 1;
        while (e < b && j->ids[e] == j->ids[e - 1] + 1) e++;
        size_t s0 = (size_t)j->ids[a] * G, s1 = (size_t)j->ids[e - 1] * G + G;
        s1 = s1 < nv ? s1 : nv;
        ix_score_range(j->c, s0, s1, j->k->sc + s0, j->k->n_vis);
        a = e;
    }
}

/* Parts worth splitting n groups into: each at least PAR_MIN_GROUPS. */
#define PAR_MIN_GROUPS 16
static int par_parts(const eg_route_opts *o, size_t n)
{
    if (!o || !o->parallel_for || o->parallel_parts <= 1) return 1;
    size_t p = n / PAR_MIN_GROUPS;
    return p < 1 ? 1 : p < (size_t)o->parallel_parts ? (int)p : o->parallel_parts;
}

static void score_groups(const ix_ctx *c, const eg_route_opts *o, ix_cache *k, const uint32_t *ids, size_t n)
{
    score_job j = { c, k, ids, n, par_parts(o, n) };
    if (j.parts > 1) o->parallel_for(o->parallel_ctx, j.parts, score_part, &j);
    else score_part(&j, 0);
}

/* MASS aggregation: a row's scores times this are its log mass estimates. */
static float mass_gain(const ix_ctx *c)
{
    const eg_route_table *t = c->t;
    switch (t->spec.kind) {
    case EG_ROUTER_QUEST:
    case EG_ROUTER_BALL:
    case EG_ROUTER_CENTROID: return c->rows->scale;
    case EG_ROUTER_LEARNED:   /* OUTLIERS scores are log mass; MEAN8 is a mean as centroid's (learned.c) */
        return ix_learned_outliers(t) ? 1.0f : ix_learned_mean8(t) ? c->rows->scale : t->spec.learned->tau;
    default: return 1.0f;     /* indexer: index scores are the model's logits */
    }
}

int ix_agg_mass(const eg_route_table *t, const eg_route_opts *o)
{
    int a = o ? o->aggregate : EG_ROUTE_AGG_AUTO;
    if (t->spec.kind == EG_ROUTER_ORACLE) return 0;
    if (a == EG_ROUTE_AGG_AUTO) return !ix_bound_table(t);
    return a == EG_ROUTE_AGG_MASS;
}

/* MASS over scores kept for the whole call (all, row r at all + r*ld):
 * per row one exp per segment, relative to the row's max, kept in e
 * (room for nr * n_vis + nr floats; the last nr hold the rows' weights);
 * then per segment the log of the rows' terms over their sums. Where that
 * sum is below IX_MASS_TINY (every row's share tiny), the segment's score
 * is computed as the two-pass way does, from the row shifts. Half the exps
 * of the two passes: a 1M-token selection of 4 rows spent more in them
 * than in scanning a small table. */
static void mass_kept(const ix_ctx *c, const eg_route_opts *o, ix_heap *hp, const float *all, size_t ld,
                      float *e, float *shift, float gain)
{
    size_t nv = c->n_vis, nr = (size_t)c->nr;
    float *w = e + nr * nv;
    for (size_t r = 0; r < nr; r++) {
        size_t lim = c->row_vis[r] < nv ? c->row_vis[r] : nv;
        float m = -INFINITY;
        double z = lim ? ix_exp_row(all + r * ld, lim, gain, e + r * nv, &m) : 0;
        w[r] = z > 0 ? (float)(1.0 / z) : 0.0f;
        shift[r] = m == -INFINITY || z <= 0 ? 0.0f : m == INFINITY ? INFINITY : (float)((double)gain * m + log(z));
    }
    float agg[CHUNK];
    uint32_t idx[CHUNK];
    for (size_t a = 0; a < nv; a += CHUNK) {
        size_t n = a + CHUNK < nv ? CHUNK : nv - a;
        ix_mass_combine(e + a, nv, c->nr, c->row_vis, a, n, w, agg);
        for (size_t i = 0; i < n; i++)
            if (agg[i] != agg[i]) ix_rows_lse(all + a + i, ld, c->nr, c->row_vis, a + i, 1, gain, shift, agg + i);
        push_cands(c, o, a, agg, n, hp, idx);
    }
}

/* Select by MASS (eg_route_agg): every visible segment's scores (in the
 * cache when there is one, in one buffer when they fit, else scored again
 * chunk by chunk), each row's log-sum-exp over its visible segments, then
 * per segment the log of its summed shares, pushed as push_range does.
 * Returns the segments scored, (size_t)-1 when out of memory. */
static size_t push_mass(const ix_ctx *c, const eg_route_opts *o, ix_heap *hp, float *buf, ix_cache *k)
{
    static const uint8_t keep_all[CHUNK];
    const float zero = 0.0f, gain = mass_gain(c);
    size_t nv = c->n_vis, nr = (size_t)c->nr, G = EG_IX_GROUP, scored = nv;
    float *all = NULL, *shift = malloc(sizeof(float) * nr);
    ix_buf own = { NULL, 0 };   /* per-thread scratch: a malloc'd buffer was mapped and faulted in every call */
    if (!shift) return (size_t)-1;
    size_t ld_all = nv;
    if (k && k->sc) {   /* quest with select_bound: every group's scores serve the bound too */
        size_t ng = (nv + G - 1) / G, n_ids = 0;
        uint32_t *ids = malloc(sizeof(uint32_t) * (ng ? ng : 1));
        if (!ids) { free(shift); return (size_t)-1; }
        for (size_t g = 0; g < ng; g++) if (k->done[g] != 1) ids[n_ids++] = (uint32_t)g;
        if (n_ids) score_groups(c, o, k, ids, n_ids);
        free(ids);
        memset(k->done, 1, ng);
        all = k->sc;
        ld_all = k->n_vis;
    } else if (nv * nr <= IX_CACHE_MAX && !ix_buf_get(&own, IX_SCR_SC, sizeof(float) * (nv ? nv : 1) * nr)) {
        all = own.p;
        for (size_t a = 0; a < nv; a += CHUNK) ix_score_range(c, a, a + CHUNK < nv ? a + CHUNK : nv, all + a, nv);
    }
    ix_buf eb = { NULL, 0 };
    if (all && !ix_buf_get(&eb, IX_SCR_TMP, sizeof(float) * (nv ? nv : 1) * (nr + 1))) {
        mass_kept(c, o, hp, all, ld_all, (float *)eb.p, shift, gain);
        ix_buf_put(&eb);
        ix_buf_put(&own);
        free(shift);
        return nv;
    }
    double *M = malloc(sizeof(double) * 2 * nr);   /* the two passes: each row's running lse (M, Z) */
    if (!M) { ix_buf_put(&own); free(shift); return (size_t)-1; }
    double *Z = M + nr;
    for (size_t r = 0; r < nr; r++) { M[r] = -INFINITY; Z[r] = 0; }
    for (int pass = 0; pass < 2; pass++) {
        float agg[CHUNK];
        uint32_t idx[CHUNK];
        for (size_t a = 0; a < nv; a += CHUNK) {
            size_t b = a + CHUNK < nv ? a + CHUNK : nv, ld = all ? ld_all : CHUNK;
            float *out = all ? all + a : buf;
            if (!all) ix_score_range(c, a, b, out, ld);
            if (pass == 1) {
                ix_rows_lse(out, ld, c->nr, c->row_vis, a, b - a, gain, shift, agg);
                push_cands(c, o, a, agg, b - a, hp, idx);
                continue;
            }
            for (size_t r = 0; r < nr; r++) {   /* online log-sum-exp of the row's terms */
                size_t lim = c->row_vis[r] <= a ? 0 : (c->row_vis[r] < b ? c->row_vis[r] : b) - a;
                float m;
                double z = lim ? ix_sum_exp_terms(out + r * ld, keep_all, lim, gain, &zero, CHUNK, &m) : 0;
                if (!lim || m == -INFINITY) continue;
                if (m == INFINITY || M[r] == INFINITY) { M[r] = INFINITY; continue; }
                if (m > M[r]) { Z[r] = Z[r] * exp(M[r] - m) + z; M[r] = m; }
                else Z[r] += z * exp(m - M[r]);
            }
        }
        if (pass == 0)
            for (size_t r = 0; r < nr; r++)   /* a row with no finite estimate adds nothing */
                shift[r] = M[r] == -INFINITY ? 0.0f : M[r] == INFINITY ? INFINITY : (float)(M[r] + log(Z[r]));
        if (!all) scored += nv;
    }
    ix_buf_put(&own);
    free(shift); free(M);
    return all ? nv : scored;
}

/* An int8 table's segment scores exceed the exact dot its group row bounds
 * by up to t s (L1 + 32) (qscan.c): a group's bound adds that, and the f32
 * rounding of its own score, so that it is never below a member's score
 * and the hierarchy picks what the flat scan picks. */
static float group_bound_q8(const ix_ctx *c, size_t g, const float *p, size_t ld)
{
    const eg_route_table *t = c->t;
    float best = -INFINITY;
    int d = t->spec.dim;
    for (int r = 0; r < c->nr; r++) {
        if (g * EG_IX_GROUP >= c->row_vis[r]) continue;
        double v = (double)p[(size_t)r * ld] + ix_quest_slack(d, c->ql1[r], t->gabs[g]) +
                   (double)c->qt[2 * r + 1] * t->gl1[g];
        float f = ix_f32_up(v);
        if (c->qinf[r] || v != v) f = INFINITY;
        best = f > best ? f : best;
    }
    return best;
}

/* Descend groups in bound order; stop once a group's bound cannot beat
 * (or tie) the current k-th score: every segment in it scores at most its
 * bound, so the flat scan would not pick it either. */
static size_t hierarchical(const ix_ctx *c, const eg_route_opts *o, ix_heap *hp, float *buf, ix_cache *k)
{
    const eg_route_table *t = c->t;
    size_t G = EG_IX_GROUP, ng = (c->n_vis + G - 1) / G, nr = (size_t)c->nr, scored = ng;
    uint64_t *gs = malloc(sizeof(uint64_t) * 2 * (ng ? ng : 1));   /* keys, then the sort's room */
    float *bnd = malloc(sizeof(float) * (ng ? ng : 1));
    float *gb = k && k->gsc ? NULL : malloc(sizeof(float) * nr * CHUNK);
    if (!gs || !bnd || (!gb && !(k && k->gsc))) { free(gs); free(bnd); free(gb); return (size_t)-1; }
    for (size_t a = 0; a < ng; a += CHUNK) {
        size_t b = a + CHUNK < ng ? a + CHUNK : ng;
        float *out = gb ? gb : k->gsc + a;
        size_t ld = gb ? CHUNK : ng;
        if (gb || !k->gsc_ready) ix_group_scores(c, a, b, out, ld);
        for (size_t g = a; g < b; g++) {
            bnd[g] = ix_q8_table(t) ? group_bound_q8(c, g, out + (g - a), ld) : aggregate(c, g * G, out + (g - a), ld);
            gs[g] = group_key(bnd[g], g);
        }
    }
    sort_keys(gs, gs + ng, ng);
    /* With a cache, groups are scored in batches (growing, so a peaked head
     * scores few), in parallel where the caller allows, then pushed in
     * bound order as before. A batch may score a group the heap no longer
     * needs: it pushes nothing and its scores serve the bound. */
    uint32_t *ids = k && k->sc ? (uint32_t *)(gs + ng) : NULL;   /* the sort's room, free again */
    size_t batch_end = 0, batch = 2 * PAR_MIN_GROUPS;
    for (size_t i = 0; i < ng; i++) {
        size_t g = (uint32_t)gs[i];
        float bound = bnd[g];
        if (hp->n == hp->k && bound < hp->h[0].score) break;
        if (bound == -INFINITY) break;
        if (ids && i == batch_end) {
            float thr = hp->n == hp->k && hp->k ? hp->h[0].score : -INFINITY;
            size_t e = i;
            while (e < ng && e < i + batch && bnd[(uint32_t)gs[e]] >= thr && bnd[(uint32_t)gs[e]] > -INFINITY) e++;
            size_t n_ids = 0, marked = 0;
            for (size_t x = i; x < e; x++)   /* 2: in this batch (1: scored before, prep.c) */
                if (k->done[(uint32_t)gs[x]] != 1) { k->done[(uint32_t)gs[x]] = 2; marked++; }
            for (size_t x = 0; x < ng && marked; x++) if (k->done[x] == 2) ids[n_ids++] = (uint32_t)x;
            if (n_ids) score_groups(c, o, k, ids, n_ids);
            for (size_t x = 0; x < n_ids; x++) {
                k->done[ids[x]] = 1;
                size_t s0 = (size_t)ids[x] * G;
                scored += (s0 + G < c->n_vis ? s0 + G : c->n_vis) - s0;
            }
            batch_end = e;
            batch *= 2;
        }
        size_t s0 = g * G, s1 = s0 + G < c->n_vis ? s0 + G : c->n_vis;
        push_range(c, o, s0, s1, hp, buf, k, ids != NULL);
        if (!ids) scored += s1 - s0;
        if (k && k->sc) k->done[g] = 1;
    }
    free(gs);
    free(bnd);
    free(gb);
    return scored;
}

int eg_router_select(const eg_route_table *t, const eg_route_rows *rows, const eg_route_opts *o,
                     eg_route_selection *sel)
{
    return ix_select(t, rows, o, sel, NULL, NULL);
}

int ix_select(const eg_route_table *t, const eg_route_rows *rows, const eg_route_opts *o,
              eg_route_selection *sel, ix_cache *kc, ix_ctx *keep)
{
    if (!sel) return ix_fail(EG_IX_EINVAL, "selection is NULL");
    memset(sel, 0, sizeof *sel);
    if (!o) return ix_fail(EG_IX_EINVAL, "options are NULL");
    if (o->budget_tokens <= 0) return ix_fail(EG_IX_EBUDGET, "budget of %lld tokens", (long long)o->budget_tokens);
    if (o->n_tags > 0 && !o->tags) return ix_fail(EG_IX_EINVAL, "n_tags %d with tags NULL", o->n_tags);
    ix_ctx c;
    int rc = ix_ctx_init(&c, t, rows, o);
    if (!rc) rc = ix_select_ctx(&c, o, sel, kc);
    if (keep && !rc) *keep = c;
    else ix_ctx_free(&c);
    return rc;
}

int ix_select_ctx(const ix_ctx *cp, const eg_route_opts *o, eg_route_selection *sel, ix_cache *kc)
{
    ix_ctx c = *cp;   /* a copy: read only here */
    const eg_route_table *t = c.t;
    memset(sel, 0, sizeof *sel);
    size_t S = (size_t)t->spec.seg_tokens;
    size_t n_forced = c.n_sink + (c.n_vis - c.recent0);
    if (c.recent0 < c.n_sink) n_forced = c.n_vis;   /* sinks and recent overlap */
    size_t k_total = (size_t)(o->budget_tokens / (int64_t)S);
    size_t k = k_total > n_forced ? k_total - n_forced : 0;
    size_t cand = c.n_vis - n_forced;
    k = k < cand ? k : cand;
    ix_heap hp = { malloc(sizeof(ix_cand) * (k ? k : 1)), 0, k };
    float *buf = malloc(sizeof(float) * (size_t)c.nr * CHUNK);
    sel->segments = malloc(sizeof(int64_t) * (n_forced + k + 1));
    sel->scores = malloc(sizeof(float) * (n_forced + k + 1));
    if (!hp.h || !buf || !sel->segments || !sel->scores) {
        free(hp.h); free(buf); eg_route_selection_free(sel);
        return ix_fail(EG_IX_ENOMEM, "out of memory");
    }
    size_t scored = 0;
    if (k > 0) {
        cache_alloc(&c, kc);
        /* Every group already scored (prep.c listed them all): one flat push,
         * no groups to order (the hierarchy's sort and per-group pushes were
         * 14 % of a 1M decode step of 9/3/64, A/B). Same top-k either way. */
        size_t ngv = (c.n_vis + EG_IX_GROUP - 1) / EG_IX_GROUP, nd = 0;
        for (size_t g = 0; kc && kc->sc && kc->done && g < ngv; g++) nd += kc->done[g] == 1;
        if (ix_agg_mass(t, o)) {
            scored = push_mass(&c, o, &hp, buf, kc);
            if (scored == (size_t)-1) {
                free(hp.h); free(buf); eg_route_selection_free(sel);
                return ix_fail(EG_IX_ENOMEM, "out of memory");
            }
            if (kc && kc->sc && !kc->gsc_ready) { free(kc->gsc); kc->gsc = NULL; }   /* as the flat scan */
        } else if (kc && kc->sc && nd == ngv) {
            push_range(&c, o, 0, c.n_vis, &hp, buf, kc, 1);
            scored = ngv;
        } else if (o->hierarchical && ix_bound_table(t)) {
            scored = hierarchical(&c, o, &hp, buf, kc);
            if (scored == (size_t)-1) {
                free(hp.h); free(buf); eg_route_selection_free(sel);
                return ix_fail(EG_IX_ENOMEM, "out of memory");
            }
        } else if (kc && kc->sc) {   /* flat, keeping every visible score for the bound */
            size_t ngv = (c.n_vis + EG_IX_GROUP - 1) / EG_IX_GROUP;
            uint32_t *ids = malloc(sizeof(uint32_t) * ngv);
            int pre = ids != NULL;     /* else push_range scores as it goes */
            if (pre) {
                for (size_t g = 0; g < ngv; g++) ids[g] = (uint32_t)g;
                score_groups(&c, o, kc, ids, ngv);
            }
            free(ids);
            push_range(&c, o, 0, c.n_vis, &hp, buf, kc, pre);
            memset(kc->done, 1, (c.n_vis + EG_IX_GROUP - 1) / EG_IX_GROUP);
            free(kc->gsc);                  /* no group scores: the bound makes them */
            kc->gsc = NULL;
            scored = c.n_vis;
        } else {
            push_range(&c, o, c.n_sink, c.recent0, &hp, buf, NULL, 0);
            scored = c.recent0 > c.n_sink ? c.recent0 - c.n_sink : 0;
        }
    }
    /* The forced segments, ascending: the sinks, then the recent window
     * (two ranges, not a test of every visible segment). */
    size_t n = 0, r0 = c.recent0 > c.n_sink ? c.recent0 : c.n_sink;
    for (size_t s = 0; s < c.n_sink; s++) { sel->segments[n] = (int64_t)s; sel->scores[n++] = INFINITY; }
    for (size_t s = r0; s < c.n_vis; s++) { sel->segments[n] = (int64_t)s; sel->scores[n++] = INFINITY; }
    sel->n_forced = n;
    ix_heap_sort_desc(&hp);
    for (size_t i = 0; i < hp.n; i++) { sel->segments[n] = hp.h[i].seg; sel->scores[n++] = hp.h[i].score; }
    sel->n = n;
    sel->n_visible = c.n_vis;
    sel->scored = scored;
    free(hp.h);
    free(buf);
    return 0;
}

int eg_router_score_all(const eg_route_table *t, const eg_route_rows *rows, float *out)
{
    ix_ctx c;
    eg_route_opts o;
    eg_route_opts_init(&o);
    int rc = ix_ctx_init(&c, t, rows, &o);
    if (rc < 0) { ix_ctx_free(&c); return rc; }
    if (!out) { ix_ctx_free(&c); return ix_fail(EG_IX_EINVAL, "out is NULL"); }
    size_t nr = (size_t)c.nr, n = t->n;
    float *buf = malloc(sizeof(float) * nr * CHUNK);
    double *l1 = calloc(nr, sizeof(double));
    if (!buf || !l1) { free(buf); free(l1); ix_ctx_free(&c); return ix_fail(EG_IX_ENOMEM, "out of memory"); }
    size_t d = (size_t)t->spec.dim;
    if (t->spec.kind == EG_ROUTER_QUEST)
        for (size_t r = 0; r < nr; r++)
            for (size_t i = 0; i < d; i++) l1[r] += fabs((double)rows->q[r * d + i]);
    for (size_t a = 0; a < n; a += CHUNK) {
        size_t b = a + CHUNK < n ? a + CHUNK : n;
        ix_score_range(&c, a, b, buf, CHUNK);
        for (size_t s = a; s < b; s++)
            for (size_t r = 0; r < nr; r++) {
                float v = s < c.row_vis[r] ? buf[r * CHUNK + (s - a)] : -INFINITY;
                if (t->spec.kind == EG_ROUTER_QUEST && v > -INFINITY) {
                    /* A true bound: add the rounding slack of the f32 dot. */
                    v = (float)((double)v + ix_quest_slack((int)d, l1[r], t->gabs[s / EG_IX_GROUP]));
                    v = nextafterf(v, INFINITY);   /* the float cast rounds to nearest */
                }
                out[r * n + s] = v;
            }
    }
    free(buf);
    free(l1);
    ix_ctx_free(&c);
    return 0;
}
