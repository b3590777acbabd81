/* session.c: the engine, session handles, the seal hook that stores router
 * summaries with every sealed block, append/truncate, route tables. */
#include "en_internal.h"
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void eg_engine_options_init(eg_engine_options *o)
{
    memset(o, 0, sizeof *o);
}

/* ---- seal hook ------------------------------------------------------------ */
/* Runs on the store's writer thread inside the sealing transaction: finds
 * the session's RoPE settings, rotates the decoded keys as the window will,
 * and stores the quest (with the segment's tag), ball radius, centroid and
 * learned outliers summaries (the last under untrained weights: its bytes
 * do not depend on training, so weights trained later route the same
 * records). The ball's summary is the quest box and the radius: one
 * computation gives both records. */
static int seal_hook(void *user, const eg_seal_view *v, eg_seal_ctx *ctx)
{
    eg_engine *e = user;
    en_sess *s = NULL;
    pthread_mutex_lock(&e->mu);
    for (s = e->sessions; s && s->id != v->session_id; s = s->next) {}
    pthread_mutex_unlock(&e->mu);
    if (!s) return EG_EN_ECLOSED; /* appended outside the engine: refuse, nothing stored */
    eg_summary_spec sq = {EG_ROUTER_BALL, (int)v->head_dim_k, (int)v->n_tokens, NULL, 0};
    eg_summary_spec sc = {EG_ROUTER_CENTROID, (int)v->head_dim_k, (int)v->n_tokens, NULL, 0};
    eg_summary_spec sl = {EG_ROUTER_LEARNED, (int)v->head_dim_k, (int)v->n_tokens, s->seal_w, 0};
    size_t bq, bc, bl;
    int rc = eg_summary_bytes(&sq, &bq);
    if (!rc) rc = eg_summary_bytes(&sc, &bc);
    if (!rc) rc = eg_summary_bytes(&sl, &bl);
    if (rc) return rc;
    size_t nk = (size_t)v->n_tokens * v->head_dim_k;
    float *k = malloc(nk * sizeof(float));
    unsigned char *buf = malloc(4 + bq + bc + bl);
    if (!k || !buf) { free(k); free(buf); return EG_ENOMEM; }
    memcpy(k, v->keys, nk * sizeof(float));
    en_rope_run(&s->rope, k, v->n_tokens, (int64_t)(v->segment * v->n_tokens));
    memcpy(buf, &v->tags[0], 4);
    rc = eg_summary_compute(&sq, k, buf + 4, bq);   /* box [bq - 4], radius [4] */
    if (!rc) rc = eg_seal_put_record(ctx, EN_REC_QUEST, buf, bq);
    if (!rc) rc = eg_seal_put_record(ctx, EN_REC_RADIUS, buf + bq, 4);
    if (!rc) rc = eg_summary_compute(&sc, k, buf + 4 + bq, bc);
    if (!rc) rc = eg_seal_put_record(ctx, EN_REC_CENTROID, buf + 4 + bq, bc);
    if (!rc) rc = eg_summary_compute(&sl, k, buf + 4 + bq + bc, bl);
    if (!rc) rc = eg_seal_put_record(ctx, EN_REC_OUTLIERS, buf + 4 + bq + bc, bl);
    free(k);
    free(buf);
    return rc;
}

/* ---- engine ------------------------------------------------------------------ */
int eg_engine_open(const char *path, const eg_engine_options *opt, eg_engine **out)
{
    if (!path || !out) return en_fail(EG_EN_EINVAL, "eg_engine_open: NULL argument");
    eg_engine *e = calloc(1, sizeof *e);
    if (!e) return en_fail(EG_EN_ENOMEM, "engine: out of memory");
    if (opt) e->opt = *opt;
    if (e->opt.n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        e->opt.n_threads = n > 0 ? (int)n : 1;
    }
    if (e->opt.n_threads > EG_EN_THREADS_MAX) e->opt.n_threads = EG_EN_THREADS_MAX;
    if (!e->opt.window_bytes) e->opt.window_bytes = (size_t)256 << 20;
    if (e->opt.idle_poll_us < -1 || e->opt.idle_poll_us > EG_EN_POLL_US_MAX || e->opt.idle_poll_ms < 0 ||
        e->opt.idle_poll_ms > EG_EN_POLL_MS_MAX) {
        int us = e->opt.idle_poll_us, ms = e->opt.idle_poll_ms;
        free(e);
        return en_fail(EG_EN_EINVAL, "idle_poll_us %d (-1..%d) or idle_poll_ms %d (0..%d) out of range", us,
                       EG_EN_POLL_US_MAX, ms, EG_EN_POLL_MS_MAX);
    }
    if (!e->opt.idle_poll_us) e->opt.idle_poll_us = 100;
    if (!e->opt.idle_poll_ms) e->opt.idle_poll_ms = 20;
    pthread_mutex_init(&e->mu, NULL);
    /* Our pool runs heads in parallel; BLAS threads on top would fight it. */
    openblas_set_num_threads(1);
    int rc = eg_store_open(path, &e->opt.store, &e->st);
    if (rc) { rc = en_pass(rc, "open store"); goto fail; }
    if ((rc = eg_store_set_seal_hook(e->st, seal_hook, e))) { rc = en_pass(rc, "seal hook"); goto fail; }
    if ((rc = en_pool_create(e->opt.n_threads, e->opt.idle_poll_us > 0 ? e->opt.idle_poll_us : 0,
                             e->opt.idle_poll_ms, &e->pool)))
        goto fail;
    *out = e;
    return 0;
fail:
    if (e->st) eg_store_close(e->st);
    pthread_mutex_destroy(&e->mu);
    free(e);
    return rc;
}

eg_store *eg_engine_store(eg_engine *e) { return e ? e->st : NULL; }

static void sess_free(en_sess *s)
{
    if (s->ms && s->layers) en_snap_save_all(s);
    if (s->layers) {
        for (uint32_t l = 0; l < s->cfg.n_layers; l++) {
            for (int k = 0; k < EN_KINDS; k++) {
                if (!s->layers[l].tab[k]) continue;
                for (uint32_t h = 0; h < s->cfg.n_kv_heads; h++) eg_route_table_free(s->layers[l].tab[k][h]);
                free(s->layers[l].tab[k]);
            }
            if (s->layers[l].w)
                for (uint32_t h = 0; h < s->cfg.n_kv_heads; h++) eg_learned_free(s->layers[l].w[h]);
            free(s->layers[l].w);
            for (int slot = 0; slot < EN_SNAP_SLOTS; slot++) free(s->layers[l].snap[slot]);
            pthread_mutex_destroy(&s->layers[l].mu);
        }
        free(s->layers);
    }
    en_window_free(s->win);
    eg_learned_free(s->seal_w);
    if (s->ms) eg_session_close(s->ms);
    pthread_rwlock_destroy(&s->rw);
    pthread_mutex_destroy(&s->st_mu);
    free(s);
}

int eg_engine_close(eg_engine *e)
{
    if (!e) return 0;
    en_pool_destroy(e->pool);
    pthread_mutex_lock(&e->mu);
    en_sess *s = e->sessions;
    e->sessions = NULL;
    eg_engine_session *h = e->handles;
    e->handles = NULL;
    pthread_mutex_unlock(&e->mu);
    while (s) { en_sess *n = s->next; sess_free(s); s = n; }
    while (h) { eg_engine_session *n = h->next_handle; free(h); h = n; }
    int rc = eg_store_close(e->st);
    pthread_mutex_destroy(&e->mu);
    free(e);
    return rc < 0 ? en_pass(rc, "close store") : 0;
}

/* ---- sessions ------------------------------------------------------------------ */
int eg_engine_session_create(eg_engine *e, const char *name, const eg_session_config *cfg)
{
    if (!e || !cfg) return en_fail(EG_EN_EINVAL, "session create: NULL argument");
    eg_session_config c = *cfg;
    return en_pass(eg_session_create(e->st, name, &c), "session create");
}

int en_layer_check(const en_sess *s, uint32_t layer)
{
    if (layer < s->cfg.n_layers) return 0;
    return en_fail(EG_EN_ELAYER, "layer %u out of range (session has %u)", layer, s->cfg.n_layers);
}

int en_handle(eg_engine_session *h, en_sess **out)
{
    if (!h) return en_fail(EG_EN_EINVAL, "NULL session handle");
    en_sess *s = __atomic_load_n(&h->s, __ATOMIC_ACQUIRE);
    if (!s) return en_fail(EG_EN_ECLOSED, "session handle was closed");
    *out = s;
    return 0;
}

static int sess_new(eg_engine *e, eg_msession *ms, en_sess **out)
{
    en_sess *s = calloc(1, sizeof *s);
    if (!s) return en_fail(EG_EN_ENOMEM, "session: out of memory");
    eg_session_info info;
    int rc = eg_session_info_get(ms, &info);
    if (rc) { free(s); return en_pass(rc, "session info"); }
    s->e = e;
    s->ms = ms;
    s->id = info.id;
    s->cfg = info.config;
    snprintf(s->name, sizeof s->name, "%s", info.name);
    pthread_rwlock_init(&s->rw, NULL);
    pthread_mutex_init(&s->st_mu, NULL);
    rc = en_rope_init(&s->rope, (int)s->cfg.rope_mode, s->cfg.rope_dims,
                      s->cfg.rope_theta ? s->cfg.rope_theta : 10000.0f, s->cfg.head_dim_k);
    if (!rc) {
        eg_learned_config lc;
        en_learned_config(s, &lc);
        rc = en_pass(eg_learned_untrained(&lc, 1.0f / sqrtf((float)s->cfg.head_dim_k), &s->seal_w),
                     "router weights");
    }
    if (!rc) rc = en_window_create(e->opt.window_bytes, &s->win);
    if (!rc) {
        s->layers = calloc(s->cfg.n_layers, sizeof *s->layers);
        if (!s->layers) rc = en_fail(EG_EN_ENOMEM, "session: out of memory");
        else for (uint32_t l = 0; l < s->cfg.n_layers; l++) pthread_mutex_init(&s->layers[l].mu, NULL);
    }
    if (rc) { s->ms = NULL; sess_free(s); return rc; }
    *out = s;
    return 0;
}

int eg_engine_session_open(eg_engine *e, const char *name, const char *fingerprint,
                           eg_engine_session **out)
{
    if (!e || !name || !out) return en_fail(EG_EN_EINVAL, "session open: NULL argument");
    eg_engine_session *h = calloc(1, sizeof *h);
    if (!h) return en_fail(EG_EN_ENOMEM, "session open: out of memory");
    /* Open in the store outside the engine mutex (the seal hook takes it
     * on the writer thread); a racing open of the same name loses below. */
    eg_msession *ms = NULL;
    int rc = eg_session_open(e->st, name, fingerprint, &ms);
    if (rc) { free(h); return en_pass(rc, "session open"); }
    en_sess *fresh = NULL;
    pthread_mutex_lock(&e->mu);
    en_sess *s = NULL;
    for (s = e->sessions; s && strcmp(s->name, name) != 0; s = s->next) {}
    pthread_mutex_unlock(&e->mu);
    if (!s && (rc = sess_new(e, ms, &fresh))) { eg_session_close(ms); free(h); return rc; }
    pthread_mutex_lock(&e->mu);
    for (s = e->sessions; s && strcmp(s->name, name) != 0; s = s->next) {}
    if (!s) { s = fresh; fresh = NULL; s->next = e->sessions; e->sessions = s; ms = NULL; }
    s->refs++;
    h->s = s;
    h->next_handle = e->handles;
    e->handles = h;
    pthread_mutex_unlock(&e->mu);
    if (fresh) { fresh->ms = NULL; sess_free(fresh); }
    if (ms) eg_session_close(ms); /* the session was open already: its handle serves */
    *out = h;
    return 0;
}

int eg_engine_session_close(eg_engine_session *h)
{
    en_sess *s = NULL;
    int rc = en_handle(h, &s);
    if (rc) return rc;
    eg_engine *e = s->e;
    pthread_mutex_lock(&e->mu);
    if (!h->s) { pthread_mutex_unlock(&e->mu); return en_fail(EG_EN_ECLOSED, "session handle was closed"); }
    __atomic_store_n(&h->s, NULL, __ATOMIC_RELEASE);
    int last = --s->refs == 0;
    if (last) {
        en_sess **p = &e->sessions;
        while (*p != s) p = &(*p)->next;
        *p = s->next;
    }
    pthread_mutex_unlock(&e->mu);
    if (last) {
        /* Wait for calls still running on other handles' last moments. */
        pthread_rwlock_wrlock(&s->rw);
        pthread_rwlock_unlock(&s->rw);
        sess_free(s);
    }
    return 0;
}

int eg_engine_session_info(eg_engine_session *h, eg_session_info *out)
{
    en_sess *s = NULL;
    int rc = en_handle(h, &s);
    if (rc) return rc;
    if (!out) return en_fail(EG_EN_EINVAL, "session info: NULL output");
    return en_pass(eg_session_info_get(s->ms, out), "session info");
}

int eg_engine_session_drop(eg_engine *e, const char *name)
{
    if (!e || !name) return en_fail(EG_EN_EINVAL, "session drop: NULL argument");
    pthread_mutex_lock(&e->mu);
    en_sess *s = NULL;
    for (s = e->sessions; s && strcmp(s->name, name) != 0; s = s->next) {}
    pthread_mutex_unlock(&e->mu);
    if (s) return en_fail(EG_EBUSY, "session '%s' is open: close every handle before dropping", name);
    return en_pass(eg_session_drop(e->st, name), "session drop");
}

int eg_engine_session_fork(eg_engine *e, const char *parent, const char *child, uint64_t at)
{
    if (!e || !parent || !child) return en_fail(EG_EN_EINVAL, "session fork: NULL argument");
    return en_pass(eg_session_fork(e->st, parent, child, at), "session fork");
}

int eg_engine_session_stats_get(eg_engine_session *h, eg_engine_session_stats *out)
{
    en_sess *s = NULL;
    int rc = en_handle(h, &s);
    if (rc) return rc;
    if (!out) return en_fail(EG_EN_EINVAL, "session stats: NULL output");
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&s->st_mu);
    out->attends = s->attends;
    out->page_ins = s->page_ins;
    out->tables_from_snapshot = s->snap_loads;
    out->tables_rebuilt = s->rebuilds;
    pthread_mutex_unlock(&s->st_mu);
    en_window_counters(s->win, &out->window_hits, &out->window_bytes, &out->window_entries,
                       &out->window_evictions);
    return 0;
}

/* ---- route tables ----------------------------------------------------------------- */
static int kind_index(eg_router_kind k)
{
    return k == EG_ROUTER_CENTROID ? 1 : k == EG_ROUTER_LEARNED ? 2 : k == EG_ROUTER_BALL ? 3 : 0;
}

static const uint32_t rec_kind[EN_KINDS] = {EN_REC_QUEST, EN_REC_CENTROID, EN_REC_OUTLIERS, EN_REC_QUEST};

void en_learned_config(const en_sess *s, eg_learned_config *c)
{
    eg_learned_config_init(c, (int)s->cfg.head_dim_k, (int)s->cfg.seg_tokens);
    c->mode = EG_LEARNED_OUTLIERS;
    c->n_reps = 1;
}

/* Tables of kind ki for every kv-head (learned: with its weights). */
static int tables_create(en_sess *s, en_layer_tabs *L, uint32_t layer, int ki)
{
    static const eg_router_kind kinds[EN_KINDS] = {EG_ROUTER_QUEST, EG_ROUTER_CENTROID, EG_ROUTER_LEARNED,
                                                   EG_ROUTER_BALL};
    uint32_t H = s->cfg.n_kv_heads;
    int rc = 0;
    if (ki == 2 && !L->w && !(L->w = calloc(H, sizeof *L->w)))
        return en_fail(EG_EN_ENOMEM, "tables: out of memory");
    int slot = en_snap_slot(ki);
    if (slot >= 0 && !L->snap[slot] && !(L->snap[slot] = calloc(H, sizeof *L->snap[slot])))
        return en_fail(EG_EN_ENOMEM, "tables: out of memory");
    if (!(L->tab[ki] = calloc(H, sizeof *L->tab[ki]))) return en_fail(EG_EN_ENOMEM, "tables: out of memory");
    for (uint32_t h = 0; h < H && !rc; h++) {
        eg_summary_spec spec = {kinds[ki], (int)s->cfg.head_dim_k, (int)s->cfg.seg_tokens, NULL,
                                s->e->opt.quest_f16};
        if (ki == 2) {
            if (!L->w[h]) rc = en_weights_load(s, layer, h, &L->w[h]);
            spec.learned = L->w[h];
        }
        if (!rc) rc = en_pass(eg_route_table_create(&spec, &L->tab[ki][h]), "route table");
    }
    if (rc) { /* nothing half-made stays */
        for (uint32_t h = 0; h < H; h++) eg_route_table_free(L->tab[ki][h]);
        free(L->tab[ki]);
        L->tab[ki] = NULL;
    }
    return rc;
}

/* Bring table t of (layer, kv-head h) up to n_sealed segments: records
 * read in segment order, appended in batches. */
static int sync_head(en_sess *s, eg_route_table **tp, uint32_t layer, uint32_t h, int ki, uint64_t n_sealed)
{
    eg_route_table *t = *tp;
    size_t sb;
    int rc = en_pass(eg_summary_bytes(eg_route_table_spec(t), &sb), "summary size");
    uint64_t have = eg_route_table_segments(t);
    if (!rc && en_snap_slot(ki) >= 0 && have == 0) {   /* resuming: the snapshot, when there is one */
        uint64_t n_snap;
        eg_route_table *snap = en_snap_load(s, layer, h, eg_route_table_spec(t), n_sealed, &n_snap);
        if (snap) {
            eg_route_table_free(t);
            *tp = t = snap;
            have = n_snap;
            s->layers[layer].snap[en_snap_slot(ki)][h] = n_snap;
        }
        pthread_mutex_lock(&s->st_mu);
        if (snap) s->snap_loads++;
        else s->rebuilds++;
        pthread_mutex_unlock(&s->st_mu);
    }
    if (!rc && have > n_sealed) return en_pass(eg_route_table_truncate(t, n_sealed), "table truncate");
    if (rc || have == n_sealed) return rc;
    enum { BATCH = 2048 };
    /* Quest and ball rows come from the tagged quest records (tag, box);
     * ball rows add the radius records. */
    int tagged = ki == 0 || ki == 3, ball = ki == 3;
    size_t box = ball ? sb - 4 : sb, rl = tagged ? box + 4 : sb;
    unsigned char *buf = malloc(BATCH * rl), *sum = tagged ? malloc(BATCH * sb) : NULL;
    uint32_t *tags = tagged ? malloc(BATCH * sizeof *tags) : NULL;
    float *rad = ball ? malloc(BATCH * sizeof *rad) : NULL;
    if (!buf || (tagged && (!sum || !tags)) || (ball && !rad)) rc = en_fail(EG_EN_ENOMEM, "tables: out of memory");
    if (!rc) rc = en_pass(eg_route_table_reserve(t, n_sealed), "table reserve");
    while (!rc && have < n_sealed) {
        size_t n = n_sealed - have < BATCH ? (size_t)(n_sealed - have) : BATCH;
        rc = eg_record_get_range(s->ms, layer, h, have, n, rec_kind[ki], rl, buf);
        if (rc == EG_ENOTFOUND && ki == 2)
            rc = en_fail(EG_EN_EROUTER, "layer %u kv-head %u: segments sealed by an engine before the "
                         "learned router have no learned summaries; use quest or centroid", layer, h);
        else rc = en_pass(rc, "router summaries");
        int rr = !rc && ball ? eg_record_get_range(s->ms, layer, h, have, n, EN_REC_RADIUS, 4, rad) : 0;
        if (rr && rr != EG_ENOTFOUND) rc = en_pass(rr, "ball radii");
        if (rr == EG_ENOTFOUND)
            for (size_t i = 0; !rc && i < n; i++) {   /* sealed before radii were stored: -1, unknown */
                int r1 = eg_record_get_range(s->ms, layer, h, have + i, 1, EN_REC_RADIUS, 4, &rad[i]);
                if (r1 == EG_ENOTFOUND) rad[i] = -1.0f;
                else rc = en_pass(r1, "ball radii");
            }
        for (size_t i = 0; !rc && tagged && i < n; i++) {
            memcpy(&tags[i], buf + i * rl, 4);
            memcpy(sum + i * sb, buf + i * rl + 4, box);
            if (ball) memcpy(sum + i * sb + box, &rad[i], 4);
        }
        if (!rc) rc = en_pass(eg_route_table_append(t, tagged ? sum : buf, n, tags), "table append");
        have += n;
    }
    free(buf);
    free(sum);
    free(tags);
    free(rad);
    return rc;
}

typedef struct {
    en_sess *s;
    uint32_t layer;
    int ki;
    uint64_t n_sealed;
    int *rc;
    char (*msg)[256];
} sync_ctx;

static void sync_task(void *arg, int h)
{
    sync_ctx *c = arg;
    c->rc[h] = sync_head(c->s, &c->s->layers[c->layer].tab[c->ki][h], c->layer, (uint32_t)h, c->ki, c->n_sealed);
    if (c->rc[h]) snprintf(c->msg[h], sizeof c->msg[h], "%s", eg_engine_last_error());
}

/* Bring the layer's tables of one kind up to n_sealed segments (layer mutex
 * held), the kv-heads in parallel on the pool: resuming a long session is
 * mostly reading and checking its summaries. */
static int tables_sync(en_sess *s, uint32_t layer, int ki, uint64_t n_sealed)
{
    en_layer_tabs *L = &s->layers[layer];
    uint32_t H = s->cfg.n_kv_heads;
    int rc = 0;
    if (!L->tab[ki] && (rc = tables_create(s, L, layer, ki))) return rc;
    sync_ctx c = {s, layer, ki, n_sealed, calloc(H, sizeof(int)), calloc(H, sizeof(char[256]))};
    if (!c.rc || !c.msg) rc = en_fail(EG_EN_ENOMEM, "tables: out of memory");
    else if (H == 1) sync_task(&c, 0);
    else en_pool_run(s->e->pool, (int)H, sync_task, &c);
    for (uint32_t h = 0; !rc && h < H; h++)
        if (c.rc[h]) rc = en_fail(c.rc[h], "%s", c.msg[h]);
    free(c.rc);
    free(c.msg);
    return rc;
}

int en_tables(en_sess *s, uint32_t layer, eg_router_kind kind, eg_route_table ***out)
{
    en_layer_tabs *L = &s->layers[layer];
    int ki = kind_index(kind), rc = 0;
    pthread_mutex_lock(&L->mu);
    if (!L->loaded[ki]) {
        eg_session_info info;
        rc = en_pass(eg_session_info_get(s->ms, &info), "session info");
        if (!rc) rc = tables_sync(s, layer, ki, info.n_sealed);
        if (!rc) L->loaded[ki] = 1;
    }
    pthread_mutex_unlock(&L->mu);
    if (!rc) *out = L->tab[ki];
    return rc;
}

/* After an append or truncate (write lock held): loaded tables follow the
 * session's sealed count; one that cannot is unloaded and reloads later. */
static void tables_follow(en_sess *s, uint64_t n_sealed)
{
    for (uint32_t l = 0; l < s->cfg.n_layers; l++) {
        en_layer_tabs *L = &s->layers[l];
        pthread_mutex_lock(&L->mu);
        for (int k = 0; k < EN_KINDS; k++) {
            /* Heads move together: one count says whether there is work. */
            if (!L->loaded[k] || eg_route_table_segments(L->tab[k][0]) == n_sealed) continue;
            if (tables_sync(s, l, k, n_sealed)) {
                for (uint32_t h = 0; h < s->cfg.n_kv_heads; h++) eg_route_table_truncate(L->tab[k][h], 0);
                L->loaded[k] = 0;
            }
        }
        pthread_mutex_unlock(&L->mu);
    }
}

int en_view_get(en_sess *s, uint32_t layer, en_view *v)
{
    eg_session_info info;
    int rc = eg_session_info_get(s->ms, &info);
    if (!rc) rc = eg_session_layer_tokens(s->ms, layer, &v->layer_tokens);
    if (rc) return en_pass(rc, "session state");
    v->n_sealed = info.n_sealed;
    v->S = s->cfg.seg_tokens;
    v->H = s->cfg.n_kv_heads;
    v->G = s->cfg.n_q_heads / s->cfg.n_kv_heads;
    v->dk = s->cfg.head_dim_k;
    v->dv = s->cfg.head_dim_v;
    return 0;
}

int eg_engine_append(eg_engine_session *h, const eg_append_req *req, uint64_t *out_n)
{
    en_sess *s = NULL;
    int rc = en_handle(h, &s);
    if (rc) return rc;
    pthread_rwlock_wrlock(&s->rw);
    rc = en_pass(eg_append(s->ms, req, out_n), "append");
    eg_session_info info;
    if (!eg_session_info_get(s->ms, &info)) tables_follow(s, info.n_sealed);
    pthread_rwlock_unlock(&s->rw);
    return rc;
}

int eg_engine_session_truncate(eg_engine_session *h, uint64_t n_tokens)
{
    en_sess *s = NULL;
    int rc = en_handle(h, &s);
    if (rc) return rc;
    pthread_rwlock_wrlock(&s->rw);
    rc = en_pass(eg_session_truncate(s->ms, n_tokens), "truncate");
    eg_session_info info;
    if (!eg_session_info_get(s->ms, &info)) {
        tables_follow(s, info.n_sealed);
        en_window_drop_from(s->win, info.n_sealed);
    }
    /* The truncate removed the quest snapshots with the session's other
     * token records: none is stored now. */
    for (uint32_t l = 0; !rc && l < s->cfg.n_layers; l++)
        for (int slot = 0; slot < EN_SNAP_SLOTS; slot++)
            if (s->layers[l].snap[slot])
                memset(s->layers[l].snap[slot], 0, s->cfg.n_kv_heads * sizeof *s->layers[l].snap[slot]);
    pthread_rwlock_unlock(&s->rw);
    return rc;
}
