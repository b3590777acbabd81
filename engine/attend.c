/* attend.c: ATTEND and the dense reference.
 *
 * One task per kv-head, run on the pool (quest decode: one pipelined job,
 * see en_run_shared). A task's rows are its q heads at every query position (row
 * r = query i, head g: r = i*G + g). Attention is an online softmax over
 * blocks of keys (attn.c): a segment, the open rows, or for the dense path
 * a run of segments. Keys of RoPE sessions are rotated at their true
 * positions when paged in; remapped positions rotate the queries instead
 * (R(a)q . R(b)k = q . R(b-a)k), so cached keys serve every mapping.
 */
#include "en_task.h"
#include <cblas.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define DENSE_BLOCK_SEGS 16   /* segments per block on the dense path */

void en_task_buf_free(task_buf *b)
{
    free(b->qraw); free(b->sc); free(b->vis); free(b->tk); free(b->sk);
    free(b->st.m); free(b->st.l); free(b->st.acc);
    free(b->tr.m); free(b->tr.l);
    free(b->pinned);
    free(b->pre);
}

int en_task_buf_init(call_ctx *c, task_buf *b, size_t block)
{
    const en_view *v = &c->v;
    int nr = b->nr = (int)(c->req->n_queries * v->G);
    b->qraw = malloc((size_t)nr * v->dk * 3 * sizeof(float));
    b->sc = malloc((size_t)nr * block * sizeof(float));
    b->vis = malloc((size_t)nr * 2 * sizeof(int64_t));
    b->tk = malloc(((size_t)c->n_tail * (v->dk + v->dv) + 1) * sizeof(float));
    b->st.m = malloc(nr * sizeof(float));
    b->st.l = malloc(nr * sizeof(double));
    b->st.acc = malloc((size_t)nr * v->dv * sizeof(float));
    b->tr.m = malloc(nr * sizeof(float));
    b->tr.l = malloc(nr * sizeof(double));
    b->sk = malloc((size_t)v->S * (v->dk + v->dv) * sizeof(float));
    if (!b->qraw || !b->sc || !b->vis || !b->tk || !b->st.m || !b->st.l || !b->st.acc || !b->tr.m ||
        !b->tr.l || !b->sk)
        return en_fail(EG_EN_ENOMEM, "attend: out of memory");
    b->qt = b->qraw + (size_t)nr * v->dk;
    b->qe = b->qt + (size_t)nr * v->dk;
    b->rpos = b->vis + nr;
    b->tv = b->tk + (size_t)c->n_tail * v->dk;
    b->sv = b->sk + (size_t)v->S * v->dk;
    b->st.nr = b->tr.nr = nr;
    b->st.dv = b->tr.dv = v->dv;
    b->tr.acc = NULL;
    return 0;
}

/* Rows of kv-head h: raw queries, queries rotated at true positions, and
 * what each row sees; the open rows of this kv-head, rotated likewise. */
void en_task_rows(call_ctx *c, task_buf *b, uint32_t kvh)
{
    const en_view *v = &c->v;
    const eg_attend_req *q = c->req;
    uint32_t nqh = v->H * v->G;
    for (uint32_t i = 0; i < q->n_queries; i++)
        for (uint32_t g = 0; g < v->G; g++) {
            size_t r = (size_t)i * v->G + g;
            memcpy(b->qraw + r * v->dk, q->q + ((size_t)i * nqh + kvh * v->G + g) * v->dk,
                   v->dk * sizeof(float));
            memcpy(b->qt + r * v->dk, b->qraw + r * v->dk, v->dk * sizeof(float));
            en_rope_one(&c->s->rope, b->qt + r * v->dk, (double)q->pos[i]);
            b->vis[r] = q->pos[i] - 1 + (q->include_self ? 1 : 0);
            b->rpos[r] = b->vis[r] < 0 ? 0 : b->vis[r];
        }
    for (uint32_t t = 0; t < c->n_tail; t++) {
        memcpy(b->tk + (size_t)t * v->dk, c->tail_k + ((size_t)t * v->H + kvh) * v->dk, v->dk * sizeof(float));
        memcpy(b->tv + (size_t)t * v->dv, c->tail_v + ((size_t)t * v->H + kvh) * v->dv, v->dv * sizeof(float));
    }
    en_rope_run(&c->s->rope, b->tk, c->n_tail, (int64_t)(v->n_sealed * v->S));
}

/* The open rows, in blocks of S, folded into st with queries q. */
static int task_tail(call_ctx *c, task_buf *b, en_attn_state *st, const float *q)
{
    const en_view *v = &c->v;
    int64_t t0 = (int64_t)(v->n_sealed * v->S);
    int rc = 0;
    for (uint32_t t = 0; t < c->n_tail && !rc; t += v->S) {
        uint32_t n = c->n_tail - t < v->S ? c->n_tail - t : v->S;
        en_tile K = en_f32_tile(b->tk + (size_t)t * v->dk, n, v->dk), V = en_f32_tile(b->tv + (size_t)t * v->dv, n, v->dv);
        rc = en_attn_block(st, q, v->dk, &K, &V, n, t0 + t, b->vis, c->scale, b->sc, NULL, v->S, 0);
    }
    return rc;
}

static void write_rows(call_ctx *c, task_buf *b, uint32_t kvh, const double *lost)
{
    const en_view *v = &c->v;
    uint32_t nqh = v->H * v->G;
    double worst = 0;
    for (int r = 0; r < b->nr; r++) {
        uint32_t i = (uint32_t)r / v->G, g = (uint32_t)r % v->G;
        size_t o = (size_t)i * nqh + kvh * v->G + g;
        float *out = c->res->out + o * v->dv;
        const float *a = b->st.acc + (size_t)r * v->dv;
        double l = b->st.l[r];
        for (uint32_t d = 0; d < v->dv; d++) out[d] = l > 0 ? (float)(a[d] / l) : 0.0f;
        if (c->res->lse) c->res->lse[o] = (float)en_state_lse(&b->st, r);
        double lo = lost ? lost[r] : 0.0;
        if (c->res->lost) c->res->lost[o] = (float)lo;
        if (lo > worst) worst = lo;
    }
    c->worst[kvh] = worst;
}

/* A run of the dense path: blocks decoded straight from the store's map
 * into K and V (keys rotated at their true positions), or, for a q8 block
 * of a session without RoPE and a few rows, attended in place with the
 * tile kernels (the decode was a sixth of a dense step; the baseline is
 * the engine's best dense path, so it reads q8 as the sparse path does). */
typedef struct {
    const call_ctx *c;
    task_buf *b;               /* the head's rows, scratch and state */
    float *K, *V, *seg_lse;
    uint64_t s0;
    int direct;                /* q8 blocks attended in place */
    uint8_t *decoded;          /* [DENSE_BLOCK_SEGS]: slot holds a decoded segment */
} dense_run;

static int dense_visit(void *arg, uint64_t seg, const eg_encoded_block *b)
{
    dense_run *f = arg;
    size_t j = seg - f->s0, S = b->n_tokens;
    if (f->direct && b->codec == EG_CODEC_Q8) {
        const call_ctx *c = f->c;
        en_tile K = { EG_CODEC_Q8, b->keys, b->klen, NULL, 0 }, V = { EG_CODEC_Q8, b->values, b->vlen, NULL, 0 };
        return en_attn_block(&f->b->st, f->b->qt, b->dim_k, &K, &V, b->n_tokens, (int64_t)(seg * S), f->b->vis,
                             c->scale, f->b->sc, f->seg_lse ? f->seg_lse + seg : NULL, c->v.S, c->v.n_sealed);
    }
    float *kj = f->K + j * S * b->dim_k;
    int rc = eg_codec_decode(b->codec, EG_KIND_K, b->keys, b->klen, b->n_tokens, b->dim_k, kj);
    if (!rc) rc = eg_codec_decode(b->codec, EG_KIND_V, b->values, b->vlen, b->n_tokens, b->dim_v, f->V + j * S * b->dim_v);
    if (!rc) en_rope_run(&f->c->s->rope, kj, b->n_tokens, (int64_t)(seg * S));
    if (!rc) f->decoded[j] = 1;
    return rc;
}

/* Dense: every visible sealed segment in runs, then the open rows. */
static int task_dense(call_ctx *c, task_buf *b, uint32_t kvh)
{
    const en_view *v = &c->v;
    int64_t maxvis = -1;
    for (int r = 0; r < b->nr; r++) maxvis = b->vis[r] > maxvis ? b->vis[r] : maxvis;
    uint64_t nseg = maxvis < 0 ? 0 : (uint64_t)maxvis / v->S + 1;
    if (nseg > v->n_sealed) nseg = v->n_sealed;
    size_t bk = (size_t)DENSE_BLOCK_SEGS * v->S;
    float *K = malloc(bk * (v->dk + v->dv) * sizeof(float)), *V = K ? K + bk * v->dk : NULL;
    float *seg_lse = NULL;
    if (c->seg_mass && v->n_sealed) seg_lse = malloc((size_t)b->nr * v->n_sealed * sizeof(float));
    if (!K || (c->seg_mass && v->n_sealed && !seg_lse)) {
        free(K); free(seg_lse);
        return en_fail(EG_EN_ENOMEM, "dense: out of memory");
    }
    for (size_t i = 0; seg_lse && i < (size_t)b->nr * v->n_sealed; i++) seg_lse[i] = -INFINITY;
    en_state_reset(&b->st);
    int rc = 0;
    uint8_t decoded[DENSE_BLOCK_SEGS];
    int direct = c->s->cfg.rope_mode == EG_ROPE_NONE && b->nr <= EN_TILE_ROWS;
    for (uint64_t s0 = 0; s0 < nseg && !rc; s0 += DENSE_BLOCK_SEGS) {
        uint64_t n = nseg - s0 < DENSE_BLOCK_SEGS ? nseg - s0 : DENSE_BLOCK_SEGS;
        memset(decoded, 0, sizeof decoded);
        dense_run f = {c, b, K, V, seg_lse, s0, direct, decoded};
        rc = en_pass(eg_read_blocks_encoded(c->s->ms, c->req->layer, kvh, s0, n, dense_visit, &f), "dense read");
        /* the decoded segments, in runs of adjacent slots */
        for (uint64_t j0 = 0; j0 < n && !rc;) {
            if (!decoded[j0]) { j0++; continue; }
            uint64_t j1 = j0;
            while (j1 < n && decoded[j1]) j1++;
            uint32_t m = (uint32_t)((j1 - j0) * v->S);
            en_tile kt = en_f32_tile(K + j0 * v->S * v->dk, m, v->dk), vt = en_f32_tile(V + j0 * v->S * v->dv, m, v->dv);
            rc = en_attn_block(&b->st, b->qt, v->dk, &kt, &vt, m, (int64_t)((s0 + j0) * v->S), b->vis, c->scale, b->sc,
                               seg_lse ? seg_lse + s0 + j0 : NULL, v->S, v->n_sealed);
            j0 = j1;
        }
    }
    if (!rc) rc = task_tail(c, b, &b->st, b->qt);
    if (!rc) {
        c->toks[kvh] = nseg * v->S + c->n_tail;
        c->segs[kvh] = nseg;
        write_rows(c, b, kvh, NULL);
        if (seg_lse) {
            float *mass = c->seg_mass + (size_t)kvh * v->n_sealed;
            memset(mass, 0, v->n_sealed * sizeof(float));
            for (int r = 0; r < b->nr; r++) {
                double lse = en_state_lse(&b->st, r);
                for (uint64_t sg = 0; sg < v->n_sealed; sg++)
                    if (seg_lse[(size_t)r * v->n_sealed + sg] > -INFINITY)
                        mass[sg] += (float)exp(seg_lse[(size_t)r * v->n_sealed + sg] - lse);
            }
        }
    }
    free(K);
    free(seg_lse);
    return rc;
}

/* ---- routing ------------------------------------------------------------------------ */
void en_task_rows_of(call_ctx *c, task_buf *b, uint32_t kvh, eg_route_rows *rows)
{
    memset(rows, 0, sizeof *rows);
    rows->n_rows = b->nr;
    rows->q = b->qt;
    rows->pos = b->rpos;
    rows->scale = c->scale;
    if (c->req->router == EG_ROUTER_ORACLE)
        rows->oracle_mass = c->req->oracle_mass + (size_t)kvh * c->v.n_sealed;
}

/* The router's parallel_for: a nested leaf job on the pool (its parts
 * only score into the call's cache). Its caller works on it too, so a head
 * whose peers are busy scores alone, and a thread that finished its own
 * head early helps with the rest. */
static void pool_for(void *pool, int n, void (*fn)(void *, int), void *arg) { en_pool_run_leaf(pool, n, fn, arg); }

void en_task_route_opts(const call_ctx *c, eg_route_opts *o)
{
    const eg_attend_req *q = c->req;
    eg_route_opts_init(o);
    o->budget_tokens = q->budget_tokens;
    o->n_sink_segments = q->n_sink_segments;
    o->recent_tokens = q->recent_tokens;
    o->tags = q->tags;
    o->n_tags = q->n_tags;
    o->aggregate = q->aggregate;
    o->parallel_for = pool_for;
    o->parallel_ctx = c->s->e->pool;
    o->parallel_parts = en_pool_threads(c->s->e->pool);
}

/* Route kv-head kvh. With log_ub (sparse attend) also the lost-mass bound
 * of every prefix of the routed order, malloc'd: quest routes and bounds
 * in one scan of the table. */
static int route_kvh(call_ctx *c, task_buf *b, uint32_t kvh, eg_route_rows *rows,
                     eg_route_selection *sel, double **log_ub)
{
    en_task_rows_of(c, b, kvh, rows);
    eg_route_opts o;
    en_task_route_opts(c, &o);
    eg_route_table *t = c->route ? c->route[kvh] : NULL, *own = NULL;
    int rc = 0;
    if (!t) { /* oracle: a table of counts only */
        eg_summary_spec spec = {EG_ROUTER_ORACLE, (int)c->v.dk, (int)c->v.S, NULL, 0};
        rc = eg_route_table_create(&spec, &own);
        if (!rc) rc = eg_route_table_append(own, NULL, c->v.n_sealed, NULL);
        rc = en_pass(rc, "route");
        t = own;
    }
    if (log_ub) *log_ub = NULL;
    if (!rc && log_ub && t == c->quest[kvh]) {           /* one scan routes and bounds */
        rc = en_pass(eg_router_select_bound(t, rows, &o, sel, log_ub), "route");
    } else if (!rc) {
        rc = en_pass(eg_router_select(t, rows, &o, sel), "route");
        if (!rc && log_ub) {                              /* another router: the quest bound apart */
            size_t n_order = sel->n - sel->n_forced;
            *log_ub = malloc((size_t)b->nr * (n_order + 1) * sizeof(double));
            rc = *log_ub ? en_pass(eg_route_unselected_bound(c->quest[kvh], rows, sel, *log_ub), "bound")
                         : en_fail(EG_EN_ENOMEM, "attend: out of memory");
            if (rc) {
                free(*log_ub);
                *log_ub = NULL;
                eg_route_selection_free(sel);
            }
        }
    }
    eg_route_table_free(own);
    return rc;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Room for n more entries in b->pinned. */
static int pinned_room(task_buf *b, size_t n)
{
    if (b->n_pinned + n <= b->cap_pinned) return 0;
    size_t cap = b->cap_pinned ? 2 * b->cap_pinned : 64;
    while (cap < b->n_pinned + n) cap *= 2;
    en_wentry **p = realloc(b->pinned, cap * sizeof *p);
    if (!p) return en_fail(EG_EN_ENOMEM, "attend: out of memory");
    b->pinned = p;
    b->cap_pinned = cap;
    return 0;
}

static int pin(call_ctx *c, task_buf *b, uint32_t kvh, uint64_t seg, en_wentry **e)
{
    if (b->pre_at < b->n_pre && b->pre_seg[b->pre_at] == (int64_t)seg) {   /* the batch's, in order */
        en_wentry *p = b->pre[b->pre_at++];
        if (p) { *e = p; return 0; }
    }
    if (b->n_pinned == b->cap_pinned) {
        size_t cap = b->cap_pinned ? 2 * b->cap_pinned : 64;
        en_wentry **p = realloc(b->pinned, cap * sizeof *p);
        if (!p) return en_fail(EG_EN_ENOMEM, "attend: out of memory");
        b->pinned = p;
        b->cap_pinned = cap;
    }
    int rc = en_page_in(c->s, c->req->layer, kvh, seg, e, &c->page_ins[kvh]);
    if (!rc) b->pinned[b->n_pinned++] = *e;
    return rc;
}

/* Pin segment seg for the next attend_seg (which has the kernels load its
 * tiles while they compute the current one: a routed segment's tiles are
 * cold, the table scan ran before). */
static int pin_ahead(call_ctx *c, task_buf *b, uint32_t kvh, int64_t seg)
{
    en_wentry *e;
    int rc = pin(c, b, kvh, (uint64_t)seg, &e);
    if (!rc) b->ahead = e;
    return rc;
}

/* The bytes of entry e that the next attend_seg reads first. */
static void entry_bytes(const call_ctx *c, const en_wentry *e, int kind, const void **p, size_t *len)
{
    if (kind == EG_KIND_K) {
        *p = e->kb ? (const void *)e->kb : (const void *)e->k;
        *len = e->kb ? e->klen : (size_t)c->v.S * c->v.dk * sizeof(float);
    } else {
        *p = e->vb ? (const void *)e->vb : (const void *)e->v;
        *len = e->vb ? e->vlen : (size_t)c->v.S * c->v.dv * sizeof(float);
    }
}

/* Attend one sealed segment with queries q into st (values only when st
 * accumulates them): pinned from the window (or by pin_ahead), q8 tiles
 * read as stored by the tile kernels (a few rows), other stored tiles
 * decoded into the task's scratch. next >= 0: pin_ahead that segment
 * first, and load its tiles while this one's are computed. */
static int attend_seg(call_ctx *c, task_buf *b, uint32_t kvh, int64_t seg, en_attn_state *st, const float *q,
                      int64_t next)
{
    en_wentry *e = NULL;
    en_tile K, V = {0};
    int rc = 0;
    if (b->ahead && b->ahead->seg == (uint64_t)seg) e = b->ahead;
    else rc = pin(c, b, kvh, (uint64_t)seg, &e);
    b->ahead = NULL;
    if (!rc && next >= 0) rc = pin_ahead(c, b, kvh, next);
    if (!rc) rc = en_wentry_tiles(c->s, e, b->sk, b->sv, st->nr <= EN_TILE_ROWS, &K, st->acc ? &V : NULL);
    if (!rc && b->ahead) {
        entry_bytes(c, b->ahead, EG_KIND_K, &K.ahead, &K.ahead_len);
        if (st->acc) entry_bytes(c, b->ahead, EG_KIND_V, &V.ahead, &V.ahead_len);
    }
    if (!rc) rc = en_attn_block(st, q, c->v.dk, &K, &V, c->v.S, seg * (int64_t)c->v.S, b->vis, c->scale, b->sc, NULL, c->v.S, 0);
    return rc;
}

/* Second pass with remapped positions: sinks at their places, routed
 * segments packed after them in order, the recent window and open rows at
 * their true distance from the query. */
static int task_remap(call_ctx *c, task_buf *b, uint32_t kvh, const eg_route_selection *sel,
                      size_t n_used)
{
    const en_view *v = &c->v;
    const en_rope *rope = &c->s->rope;
    uint32_t S = v->S;
    size_t nf = sel->n_forced, n_sink = 0;
    while (n_sink < nf && sel->segments[n_sink] < c->req->n_sink_segments) n_sink++;
    int64_t *routed = malloc((n_used + 1) * sizeof *routed);
    if (!routed) return en_fail(EG_EN_ENOMEM, "attend: out of memory");
    memcpy(routed, sel->segments + nf, n_used * sizeof *routed);
    qsort(routed, n_used, sizeof *routed, cmp_i64);
    int64_t p_end = (int64_t)(n_sink + n_used) * S;
    int64_t r0 = nf > n_sink ? sel->segments[n_sink] * (int64_t)S : (int64_t)(v->n_sealed * S);
    int64_t d_rec = p_end - r0;
    /* q_base = R(p + d_rec) q: the query at its remapped position. */
    for (int r = 0; r < b->nr; r++) {
        float *qb = b->qe + (size_t)r * v->dk;
        memcpy(qb, b->qraw + (size_t)r * v->dk, v->dk * sizeof(float));
        en_rope_one(rope, qb, (double)(c->req->pos[r / v->G] + d_rec));
    }
    en_state_reset(&b->st);
    int rc = 0;
    double cs[EG_HEAD_DIM_MAX];
    for (size_t i = 0; i < n_sink + n_used && !rc; i++) {
        int64_t seg = i < n_sink ? sel->segments[i] : routed[i - n_sink];
        const float *q = b->qe;
        if (i >= n_sink) { /* R(-delta) q_base, delta = remapped start - true start */
            int64_t delta = (int64_t)i * S - seg * (int64_t)S;
            memcpy(b->qraw, b->qe, (size_t)b->nr * v->dk * sizeof(float));
            en_rope_table(rope, (double)-delta, cs);
            en_rope_apply_table(rope, cs, b->qraw, (size_t)b->nr);
            q = b->qraw;
        }
        rc = attend_seg(c, b, kvh, seg, &b->st, q, -1);
    }
    for (size_t i = n_sink; i < nf && !rc; i++) rc = attend_seg(c, b, kvh, sel->segments[i], &b->st, b->qt, -1);
    if (!rc) rc = task_tail(c, b, &b->st, b->qt);
    free(routed);
    return rc;
}

/* Attention over kv-head kvh's selection (taken over: sel's arrays and
 * log_ub are freed here), with the bound of every prefix in log_ub. */
int en_task_routed(call_ctx *c, task_buf *b, uint32_t kvh, eg_route_selection sel, double *log_ub)
{
    const en_view *v = &c->v;
    const eg_attend_req *q = c->req;
    uint32_t S = v->S;
    int remap = q->remap_positions, rc = 0;
    en_attn_state *T = remap ? &b->tr : &b->st;
    en_state_reset(T);
    size_t nf = sel.n_forced, n_order = sel.n - nf, n_used = 0;
    double *lost = malloc((size_t)b->nr * sizeof(double));
    if (!lost) rc = en_fail(EG_EN_ENOMEM, "attend: out of memory");
    /* Pin what the window holds of the selection in one batch (with
     * max_lost only the forced part is sure to be attended). */
    size_t n_batch = q->max_lost > 0 ? nf : sel.n;
    free(b->pre);
    b->pre = NULL;
    b->n_pre = b->pre_at = 0;
    if (!rc && n_batch && !pinned_room(b, n_batch) && (b->pre = malloc(n_batch * sizeof *b->pre))) {
        en_window_get_many(c->s->win, q->layer, kvh, sel.segments, n_batch, b->pre);
        for (size_t i = 0; i < n_batch; i++)
            if (b->pre[i]) b->pinned[b->n_pinned++] = b->pre[i];
        b->pre_seg = sel.segments;
        b->n_pre = n_batch;
    }
    /* Pass at true positions: forced segments, open rows, then routed ones
     * in score order (until the bound holds, with max_lost). */
    /* The next segment is pinned ahead where it is sure to be attended:
     * always among the forced ones and, without max_lost (which decides
     * segment by segment), the routed ones. */
    int ahead_routed = !(q->max_lost > 0) && n_order > 0;
    b->ahead = NULL;
    for (size_t i = 0; i < nf && !rc; i++)
        rc = attend_seg(c, b, kvh, sel.segments[i], T, b->qt,
                        i + 1 < nf ? sel.segments[i + 1] : ahead_routed ? sel.segments[nf] : -1);
    if (!rc) rc = task_tail(c, b, T, b->qt);
    while (!rc && n_used < n_order) {
        if (q->max_lost > 0) {
            int ok = 1;
            for (int r = 0; r < b->nr && ok; r++)
                if (b->vis[r] >= 0 &&
                    eg_lost_mass_bound(log_ub[(size_t)r * (n_order + 1) + n_used], en_state_lse(T, r)) > q->max_lost)
                    ok = 0;
            if (ok) break;
        }
        int64_t next = ahead_routed && n_used + 1 < n_order ? sel.segments[nf + n_used + 1] : -1;
        if ((rc = attend_seg(c, b, kvh, sel.segments[nf + n_used], T, b->qt, next))) break;
        n_used++;
    }
    if (!rc && remap) rc = task_remap(c, b, kvh, &sel, n_used);
    if (!rc) {
        for (int r = 0; r < b->nr; r++)
            lost[r] = b->vis[r] < 0 ? 0.0
                    : eg_lost_mass_bound(log_ub[(size_t)r * (n_order + 1) + n_used], en_state_lse(T, r));
        c->segs[kvh] = nf + n_used;
        c->toks[kvh] = (nf + n_used) * S + c->n_tail;
        write_rows(c, b, kvh, lost);
    }
    free(log_ub);
    free(lost);
    b->n_pre = b->pre_at = 0;   /* pre_seg is sel's, freed here */
    eg_route_selection_free(&sel);
    return rc;
}

static int task_sparse(call_ctx *c, task_buf *b, uint32_t kvh)
{
    const en_view *v = &c->v;
    if (v->n_sealed == 0) { /* open rows only: remapping moves nothing, nothing is left out */
        en_state_reset(&b->st);
        int rc = task_tail(c, b, &b->st, b->qt);
        if (rc) return rc;
        c->toks[kvh] = c->n_tail;
        write_rows(c, b, kvh, NULL);
        return 0;
    }
    eg_route_rows rows;
    eg_route_selection sel = {0};
    double *log_ub = NULL;
    int rc = route_kvh(c, b, kvh, &rows, &sel, &log_ub);
    return rc ? rc : en_task_routed(c, b, kvh, sel, log_ub);
}

static void task_fn(void *arg, int kvh)
{
    call_ctx *c = arg;
    task_buf b;
    memset(&b, 0, sizeof b);
    size_t block = c->dense ? (size_t)DENSE_BLOCK_SEGS * c->v.S : c->v.S;
    int rc = en_task_buf_init(c, &b, block);
    if (!rc) {
        en_task_rows(c, &b, (uint32_t)kvh);
        rc = c->dense ? task_dense(c, &b, (uint32_t)kvh) : task_sparse(c, &b, (uint32_t)kvh);
    }
    en_window_unpin_many(c->s->win, b.pinned, b.n_pinned);
    en_task_buf_free(&b);
    c->rc[kvh] = rc;
    if (rc) snprintf(c->msg[kvh], sizeof c->msg[kvh], "%s", eg_engine_last_error());
}

/* ---- calls ------------------------------------------------------------------------------ */
void eg_attend_req_init(eg_attend_req *r)
{
    memset(r, 0, sizeof *r);
    r->budget_tokens = 2048;
    r->n_sink_segments = 1;
    r->recent_tokens = 256;
    r->router = EG_ROUTER_BALL;
}

/* Check req against the session (read lock held) and fill c's view and
 * scale, and with want_tail the open rows the queries see (*tail: the
 * caller frees it). */
static int call_setup(en_sess *s, const eg_attend_req *q, int dense, int want_tail, call_ctx *c,
                      float **tail)
{
    memset(c, 0, sizeof *c);
    *tail = NULL;
    if (!q) return en_fail(EG_EN_EINVAL, "attend: NULL request");
    int rc = en_layer_check(s, q->layer);
    if (!rc) rc = en_view_get(s, q->layer, &c->v);
    if (rc) return rc;
    const en_view *v = &c->v;
    if (q->n_queries == 0 || q->n_queries > EG_EN_QUERIES_MAX)
        return en_fail(EG_EN_ESHAPE, "n_queries %u must be 1..%d", q->n_queries, EG_EN_QUERIES_MAX);
    if ((size_t)q->n_queries * v->G > EG_IX_ROWS_MAX)
        return en_fail(EG_EN_ESHAPE, "%u queries x %u q heads per kv-head = %zu rows, over the %d a "
                       "call may route", q->n_queries, v->G, (size_t)q->n_queries * v->G, EG_IX_ROWS_MAX);
    if (!q->q || !q->pos) return en_fail(EG_EN_EINVAL, "attend: NULL queries or positions");
    if (!en_all_finite(q->q, (size_t)q->n_queries * v->H * v->G * v->dk))
        return en_fail(EG_EN_ENONFINITE, "NaN or Inf in the queries");
    int64_t maxvis = -1;
    for (uint32_t i = 0; i < q->n_queries; i++) {
        int64_t p = q->pos[i], lim = (int64_t)v->layer_tokens - (q->include_self ? 1 : 0);
        if (p < 0 || p > lim)
            return en_fail(EG_EN_EPOS, "query %u at position %lld: the layer holds %llu tokens, so "
                           "positions run 0..%lld%s", i, (long long)p, (unsigned long long)v->layer_tokens,
                           (long long)lim, q->include_self ? " with include_self" : "");
        if (p - 1 + (q->include_self ? 1 : 0) > maxvis) maxvis = p - 1 + (q->include_self ? 1 : 0);
    }
    c->scale = q->scale ? q->scale : 1.0f / sqrtf((float)v->dk);
    if (!isfinite(c->scale) || c->scale <= 0)
        return en_fail(EG_EN_ENONFINITE, "scale %g must be finite and positive", (double)q->scale);
    if (!dense) {
        if (q->budget_tokens <= 0)
            return en_fail(EG_EN_EBUDGET, "budget of %lld tokens: it must be positive", (long long)q->budget_tokens);
        if (q->n_sink_segments < 0 || q->recent_tokens < 0 || q->n_tags < 0 || (q->n_tags && !q->tags))
            return en_fail(EG_EN_EINVAL, "negative sinks, recent window or tag count, or NULL tags");
        if (q->aggregate < EG_ROUTE_AGG_AUTO || q->aggregate > EG_ROUTE_AGG_MASS)
            return en_fail(EG_EN_EINVAL, "aggregate %d: 0 the router's own, 1 max, 2 mass", q->aggregate);
        if (!(q->max_lost >= 0 && q->max_lost <= 1))
            return en_fail(EG_EN_ENONFINITE, "max_lost %g must be in [0, 1]", q->max_lost);
        if (q->remap_positions && s->cfg.rope_mode == EG_ROPE_NONE)
            return en_fail(EG_EN_EOPTION, "remap_positions needs a session that stores keys before "
                           "RoPE (rope_mode half or interleaved)");
        if (q->router != EG_ROUTER_QUEST && q->router != EG_ROUTER_BALL && q->router != EG_ROUTER_CENTROID &&
            q->router != EG_ROUTER_LEARNED && q->router != EG_ROUTER_ORACLE)
            return en_fail(EG_EN_EROUTER, "router %d is not served by ATTEND (quest, ball, centroid, learned, "
                           "oracle)", (int)q->router);
        if (q->router == EG_ROUTER_ORACLE && !q->oracle_mass)
            return en_fail(EG_EN_EROUTER, "the oracle router needs oracle_mass");
        if (v->n_sealed) {
            /* The bound's table: the ball's own when it routes, else quest's.
             * A layer with a segment sealed before radii were stored (its
             * ball, the box's half-diagonal, would bound far more loosely
             * than its box) is served by quest, routing and bounding in one
             * scan as before: a ball selection bounded by quest's table
             * scanned both (5.2 against 2.6 ms at 1M tokens of 32/8/128). */
            eg_router_kind bk = q->router == EG_ROUTER_BALL ? EG_ROUTER_BALL : EG_ROUTER_QUEST;
            if ((rc = en_tables(s, q->layer, bk, &c->quest))) return rc;
            int unmeasured = 0;
            for (uint32_t h = 0; bk == EG_ROUTER_BALL && h < v->H; h++)
                unmeasured |= eg_route_table_unmeasured(c->quest[h]) > 0;
            if (unmeasured && (rc = en_tables(s, q->layer, EG_ROUTER_QUEST, &c->quest))) return rc;
            c->route = c->quest;
            if ((q->router == EG_ROUTER_CENTROID || q->router == EG_ROUTER_LEARNED) &&
                (rc = en_tables(s, q->layer, q->router, &c->route)))
                return rc;
            if (q->router == EG_ROUTER_ORACLE) c->route = NULL;
        }
    }
    /* Open rows the queries can see: one read for every kv-head. */
    int64_t t0 = (int64_t)(v->n_sealed * v->S), t1 = maxvis + 1;
    if (t1 > (int64_t)v->layer_tokens) t1 = (int64_t)v->layer_tokens;
    c->n_tail = want_tail && t1 > t0 ? (uint32_t)(t1 - t0) : 0;
    if (c->n_tail) {
        float *t = malloc((size_t)c->n_tail * v->H * (v->dk + v->dv) * sizeof(float));
        if (!t) return en_fail(EG_EN_ENOMEM, "attend: out of memory");
        float *tv = t + (size_t)c->n_tail * v->H * v->dk;
        if ((rc = eg_read_rows(s->ms, q->layer, (uint64_t)t0, c->n_tail, t, tv))) {
            free(t);
            return en_pass(rc, "open rows");
        }
        c->tail_k = t;
        c->tail_v = tv;
        *tail = t;
    }
    return 0;
}

static int run_call(eg_engine_session *h, const eg_attend_req *q, eg_attend_result *res, int dense,
                    float *seg_mass)
{
    en_sess *s = NULL;
    int rc = en_handle(h, &s);
    if (rc) return rc;
    if (!res || !res->out) return en_fail(EG_EN_EINVAL, "attend: NULL result or output buffer");
    pthread_rwlock_rdlock(&s->rw);
    call_ctx c;
    float *tail;
    rc = call_setup(s, q, dense, 1, &c, &tail);
    uint32_t H = c.v.H;
    if (!rc) {
        c.s = s;
        c.req = q;
        c.res = res;
        c.dense = dense;
        c.seg_mass = seg_mass;
        c.rc = calloc(H, sizeof *c.rc);
        c.msg = calloc(H, sizeof *c.msg);
        c.page_ins = calloc(H * 3, sizeof *c.page_ins);
        c.worst = calloc(H, sizeof *c.worst);
        if (!c.rc || !c.msg || !c.page_ins || !c.worst) rc = en_fail(EG_EN_ENOMEM, "attend: out of memory");
    }
    if (!rc) {
        c.segs = c.page_ins + H;
        c.toks = c.segs + H;
        /* Quest routing over sealed segments: one pipelined job; else (dense,
         * other routers, nothing sealed) one task per kv-head. */
        if (!dense && c.v.n_sealed && (q->router == EG_ROUTER_QUEST || q->router == EG_ROUTER_BALL) &&
            c.route == c.quest)
            rc = en_run_shared(&c);
        else
            en_pool_run(s->e->pool, (int)H, task_fn, &c);
        res->page_ins = res->segments = res->tokens = 0;
        res->worst_lost = 0;
        for (uint32_t k = 0; k < H; k++) {
            if (c.rc[k] && !rc) rc = en_fail(c.rc[k], "kv-head %u: %s", k, c.msg[k]);
            res->page_ins += c.page_ins[k];
            res->segments += c.segs[k];
            res->tokens += c.toks[k];
            if (c.worst[k] > res->worst_lost) res->worst_lost = c.worst[k];
        }
        pthread_mutex_lock(&s->st_mu);
        s->attends++;
        s->page_ins += res->page_ins;
        pthread_mutex_unlock(&s->st_mu);
    }
    pthread_rwlock_unlock(&s->rw);
    free(tail);
    free(c.rc);
    free(c.msg);
    free(c.page_ins);
    free(c.worst);
    return rc;
}

int eg_engine_attend(eg_engine_session *h, const eg_attend_req *q, eg_attend_result *res)
{
    return run_call(h, q, res, 0, NULL);
}

int eg_engine_attend_dense(eg_engine_session *h, const eg_attend_req *q, eg_attend_result *res,
                           float *seg_mass)
{
    return run_call(h, q, res, 1, seg_mass);
}

/* ---- select ------------------------------------------------------------------------------ */
int eg_engine_select(eg_engine_session *h, const eg_attend_req *q, eg_select_result *out)
{
    en_sess *s = NULL;
    int rc = en_handle(h, &s);
    if (rc) return rc;
    if (!out) return en_fail(EG_EN_EINVAL, "select: NULL result");
    memset(out, 0, sizeof *out);
    pthread_rwlock_rdlock(&s->rw);
    call_ctx c;
    float *tail;
    rc = call_setup(s, q, 0, 0, &c, &tail); /* routing needs no open rows */
    uint32_t H = c.v.H;
    eg_route_selection *sel = NULL;
    if (!rc) {
        c.s = s;
        c.req = q;
        sel = calloc(H, sizeof *sel);
        out->offsets = calloc(H + 1, sizeof *out->offsets);
        out->n_forced = calloc(H, sizeof *out->n_forced);
        if (!sel || !out->offsets || !out->n_forced) rc = en_fail(EG_EN_ENOMEM, "select: out of memory");
    }
    /* Routing is cheap next to attention: kv-heads one after another. */
    for (uint32_t k = 0; k < H && !rc && c.v.n_sealed; k++) {
        task_buf b;
        memset(&b, 0, sizeof b);
        rc = en_task_buf_init(&c, &b, c.v.S);
        if (!rc) {
            eg_route_rows rows;
            en_task_rows(&c, &b, k);
            rc = route_kvh(&c, &b, k, &rows, &sel[k], NULL);
        }
        en_task_buf_free(&b);
    }
    if (!rc) {
        out->n_kv_heads = H;
        out->n_sealed = c.v.n_sealed;
        for (uint32_t k = 0; k < H; k++) out->offsets[k + 1] = out->offsets[k] + sel[k].n;
        size_t n = out->offsets[H];
        out->segments = malloc((n + 1) * sizeof *out->segments);
        out->scores = malloc((n + 1) * sizeof *out->scores);
        if (!out->segments || !out->scores) rc = en_fail(EG_EN_ENOMEM, "select: out of memory");
        for (uint32_t k = 0; k < H && !rc; k++) {
            if (!sel[k].n) continue;
            memcpy(out->segments + out->offsets[k], sel[k].segments, sel[k].n * sizeof(int64_t));
            memcpy(out->scores + out->offsets[k], sel[k].scores, sel[k].n * sizeof(float));
            out->n_forced[k] = sel[k].n_forced;
        }
    }
    for (uint32_t k = 0; sel && k < H; k++) eg_route_selection_free(&sel[k]);
    free(sel);
    pthread_rwlock_unlock(&s->rw);
    if (rc) eg_select_result_free(out);
    return rc;
}

void eg_select_result_free(eg_select_result *r)
{
    if (!r) return;
    free(r->offsets);
    free(r->n_forced);
    free(r->segments);
    free(r->scores);
    memset(r, 0, sizeof *r);
}
