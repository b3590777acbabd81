/* router.c: the learned router's weights per (layer, kv-head): loaded from
 * the session's records (untrained when none is stored), trained on the
 * session's own attention, stored, and swapped in for the next calls. */
#include "en_internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

void eg_router_train_req_init(eg_router_train_req *r)
{
    memset(r, 0, sizeof *r);
    r->steps = 200;
    r->lr = 0.01f;
    r->n_sink_segments = 1;
    r->recent_tokens = 256;
}

int en_weights_load(en_sess *s, uint32_t layer, uint32_t kvh, eg_learned **out)
{
    eg_learned_config want;
    en_learned_config(s, &want);
    void *blob = NULL;
    size_t n = 0;
    int rc = eg_record_get_session(s->ms, layer, kvh, EN_REC_WEIGHTS, 0, &blob, &n);
    if (rc == EG_ENOTFOUND)
        return en_pass(eg_learned_untrained(&want, 1.0f / sqrtf((float)want.dim), out), "router weights");
    if (rc) return en_pass(rc, "router weights");
    eg_learned *w = NULL;
    rc = eg_learned_load(blob, n, &w);
    free(blob);
    if (rc) return en_fail(rc, "layer %u kv-head %u: stored router weights refused: %s", layer, kvh,
                           eg_index_last_error());
    const eg_learned_config *c = eg_learned_get_config(w);
    if (c->mode != want.mode || c->dim != want.dim || c->seg_tokens != want.seg_tokens ||
        c->n_reps != want.n_reps) {
        rc = en_fail(EG_ECORRUPT, "layer %u kv-head %u: stored router weights are for mode %d, dim %d, "
                     "S %d, %d outliers; the session routes mode %d, dim %d, S %d, %d outliers", layer, kvh,
                     (int)c->mode, c->dim, c->seg_tokens, c->n_reps, (int)want.mode, want.dim,
                     want.seg_tokens, want.n_reps);
        eg_learned_free(w);
        return rc;
    }
    *out = w;
    return 0;
}

void en_tables_drop_learned(en_sess *s, uint32_t layer)
{
    en_layer_tabs *L = &s->layers[layer];
    pthread_mutex_lock(&L->mu);
    for (uint32_t h = 0; h < s->cfg.n_kv_heads; h++) {
        if (L->tab[2]) eg_route_table_free(L->tab[2][h]);
        if (L->w) { eg_learned_free(L->w[h]); L->w[h] = NULL; }
    }
    free(L->tab[2]);
    L->tab[2] = NULL;
    L->loaded[2] = 0;
    pthread_mutex_unlock(&L->mu);
}

/* Keys of (layer, kvh) as attention sees them, [layer tokens][dk]: sealed
 * blocks decoded and rotated at their positions, then the open rows
 * (tail: [n_tail][H][dk] raw, read once for every kv-head). */
static int layer_keys(en_sess *s, uint32_t layer, uint32_t kvh, const en_view *v, const float *tail,
                      uint64_t n_tail, float *K)
{
    size_t seg_floats = (size_t)v->S * v->dk;
    for (uint64_t g = 0; g < v->n_sealed; g++) {
        float *k = K + g * seg_floats;
        int rc = eg_read_block(s->ms, layer, kvh, g, k, NULL);
        if (rc) return en_pass(rc, "router training: keys");
        en_rope_run(&s->rope, k, v->S, (int64_t)(g * v->S));
    }
    float *k = K + v->n_sealed * seg_floats;
    for (uint64_t t = 0; t < n_tail; t++)
        memcpy(k + t * v->dk, tail + ((size_t)t * v->H + kvh) * v->dk, v->dk * sizeof(float));
    en_rope_run(&s->rope, k, n_tail, (int64_t)(v->n_sealed * v->S));
    return 0;
}

/* Store w as the weights of (layer, kvh). */
static int weights_store(en_sess *s, uint32_t layer, uint32_t kvh, const eg_learned *w)
{
    void *blob = NULL;
    size_t n = 0;
    int rc = en_pass(eg_learned_save(w, &blob, &n), "router weights");
    if (!rc) rc = en_pass(eg_record_put_session(s->ms, layer, kvh, EN_REC_WEIGHTS, 0, blob, n), "router weights");
    free(blob);
    return rc;
}

static int train_check(const eg_router_train_req *q, const en_view *v)
{
    if (q->n_queries == 0 || (size_t)q->n_queries * v->G > EG_EN_TRAIN_ROWS_MAX)
        return en_fail(EG_EN_ESHAPE, "router training: %u queries x %u q heads per kv-head: 1..%d rows",
                       q->n_queries, v->G, EG_EN_TRAIN_ROWS_MAX);
    if (!q->q || !q->pos) return en_fail(EG_EN_EINVAL, "router training: NULL queries or positions");
    if (!en_all_finite(q->q, (size_t)q->n_queries * v->H * v->G * v->dk))
        return en_fail(EG_EN_ENONFINITE, "router training: NaN or Inf in the queries");
    for (uint32_t i = 0; i < q->n_queries; i++)
        if (q->pos[i] < 1 || q->pos[i] > (int64_t)v->layer_tokens)
            return en_fail(EG_EN_EPOS, "router training: query %u at %lld: positions run 1..%llu (a query "
                           "at p sees the tokens before p)", i, (long long)q->pos[i],
                           (unsigned long long)v->layer_tokens);
    if (q->scale != 0 && !(isfinite(q->scale) && q->scale > 0))
        return en_fail(EG_EN_ENONFINITE, "router training: scale %g must be finite and positive", q->scale);
    if (q->steps < 0 || q->steps > 100000 || (q->lr != 0 && !(isfinite(q->lr) && q->lr > 0)) ||
        q->n_sink_segments < 0 || q->recent_tokens < 0)
        return en_fail(EG_EN_EINVAL, "router training: steps %d (0..100000), lr %g (> 0), sinks %d and "
                       "recent window %lld (>= 0)", q->steps, q->lr, q->n_sink_segments,
                       (long long)q->recent_tokens);
    return 0;
}

int eg_engine_router_train(eg_engine_session *h, const eg_router_train_req *q, double *loss_before,
                           double *loss_after)
{
    en_sess *s = NULL;
    int rc = en_handle(h, &s);
    if (rc) return rc;
    if (!q) return en_fail(EG_EN_EINVAL, "router training: NULL request");
    if ((rc = en_layer_check(s, q->layer))) return rc;
    pthread_rwlock_rdlock(&s->rw);
    en_view v = {0};
    float *K = NULL, *Q = NULL, *tail = NULL;
    int64_t *qpos = NULL;
    eg_learned **nw = calloc(s->cfg.n_kv_heads, sizeof *nw);
    if (!nw) rc = en_fail(EG_EN_ENOMEM, "router training: out of memory");
    if (!rc) rc = en_view_get(s, q->layer, &v);
    if (!rc) rc = train_check(q, &v);
    uint64_t n_tail = rc ? 0 : v.layer_tokens - v.n_sealed * v.S;
    size_t rows = rc ? 0 : (size_t)q->n_queries * v.G;
    if (!rc) {
        K = malloc((size_t)v.layer_tokens * v.dk * sizeof(float));
        Q = malloc(rows * v.dk * sizeof(float));
        qpos = malloc(rows * sizeof *qpos);
        tail = malloc((n_tail ? n_tail : 1) * v.H * (v.dk + v.dv) * sizeof(float));
        if (!K || !Q || !qpos || !tail) rc = en_fail(EG_EN_ENOMEM, "router training: out of memory for %llu "
                                                     "tokens", (unsigned long long)v.layer_tokens);
    }
    if (!rc && n_tail)
        rc = en_pass(eg_read_rows(s->ms, q->layer, v.n_sealed * v.S, (uint32_t)n_tail, tail,
                                  tail + n_tail * v.H * v.dk), "router training: open rows");
    eg_learned_config cfg;
    en_learned_config(s, &cfg);
    cfg.steps = q->steps ? q->steps : 200;
    cfg.lr = q->lr ? q->lr : 0.01f;
    cfg.n_sink_segments = q->n_sink_segments;
    cfg.recent_tokens = q->recent_tokens;
    float scale = q->scale ? q->scale : 1.0f / sqrtf((float)s->cfg.head_dim_k);
    for (uint32_t kvh = 0; !rc && kvh < v.H; kvh++) {
        if ((rc = layer_keys(s, q->layer, kvh, &v, tail, n_tail, K))) break;
        uint32_t nqh = v.H * v.G;
        for (uint32_t i = 0; i < q->n_queries; i++)
            for (uint32_t g = 0; g < v.G; g++) {
                size_t r = (size_t)i * v.G + g;
                memcpy(Q + r * v.dk, q->q + ((size_t)i * nqh + kvh * v.G + g) * v.dk, v.dk * sizeof(float));
                en_rope_one(&s->rope, Q + r * v.dk, (double)q->pos[i]);
                qpos[r] = q->pos[i] - 1;   /* routing sees the last visible token, as ATTEND */
            }
        eg_calibration cal = {K, (int64_t)v.layer_tokens, Q, qpos, (int)rows, scale};
        eg_learned *cur = NULL;
        double lb = 0, la = 0;
        rc = en_weights_load(s, q->layer, kvh, &cur);
        /* The weights in use, judged on this call's target. */
        if (!rc) rc = en_pass(eg_learned_set_window(cur, cfg.n_sink_segments, cfg.recent_tokens), "router training");
        if (!rc) rc = en_pass(eg_learned_loss(cur, &cal, &lb), "router training");
        eg_learned_free(cur);
        if (!rc) rc = en_pass(eg_learned_train(&cfg, &cal, &nw[kvh], NULL), "router training");
        if (!rc) rc = en_pass(eg_learned_loss(nw[kvh], &cal, &la), "router training");
        if (!rc && loss_before) loss_before[kvh] = lb;
        if (!rc && loss_after) loss_after[kvh] = la;
    }
    free(K);
    free(Q);
    free(qpos);
    free(tail);
    /* Store only when every kv-head trained; a store failure (disk full)
     * may leave earlier kv-heads with their new weights, each whole. */
    int stored = !rc;
    for (uint32_t kvh = 0; !rc && kvh < v.H; kvh++) rc = weights_store(s, q->layer, kvh, nw[kvh]);
    pthread_rwlock_unlock(&s->rw);
    for (uint32_t kvh = 0; nw && kvh < s->cfg.n_kv_heads; kvh++) eg_learned_free(nw[kvh]);
    free(nw);
    if (stored) {
        pthread_rwlock_wrlock(&s->rw);
        en_tables_drop_learned(s, q->layer);
        pthread_rwlock_unlock(&s->rw);
    }
    return rc;
}

int eg_engine_router_reset(eg_engine_session *h, uint32_t layer)
{
    en_sess *s = NULL;
    int rc = en_handle(h, &s);
    if (rc || (rc = en_layer_check(s, layer))) return rc;
    pthread_rwlock_wrlock(&s->rw);
    for (uint32_t kvh = 0; !rc && kvh < s->cfg.n_kv_heads; kvh++) rc = weights_store(s, layer, kvh, s->seal_w);
    en_tables_drop_learned(s, layer);
    pthread_rwlock_unlock(&s->rw);
    return rc;
}
