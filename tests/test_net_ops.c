/* test_net_ops: every operation end to end against a real engramd, with
 * the answers checked against the same engine called in process on the
 * same appends; errors pass through with their codes; pipelining. */
#include "engineutil.h"
#include "netutil.h"

/* Keys and values of tokens [t0, t0+n) for all layers (layer < 0) or one,
 * in the append layout, from the engine tests' generator. */
static void gen_chunk(tm_model *m, uint64_t t0, uint32_t n, int layer, float **k, float **v)
{
    uint32_t nl = layer < 0 ? m->L : 1;
    *k = malloc((size_t)nl * m->H * n * m->dk * 4);
    *v = malloc((size_t)nl * m->H * n * m->dv * 4);
    for (uint32_t li = 0; li < nl; li++)
        for (uint32_t h = 0; h < m->H; h++)
            for (uint32_t i = 0; i < n; i++) {
                uint32_t l = layer < 0 ? li : (uint32_t)layer;
                tm_gen(m, l, h, t0 + i, *k + (((size_t)li * m->H + h) * n + i) * m->dk,
                       *v + (((size_t)li * m->H + h) * n + i) * m->dv);
            }
}

typedef struct {
    nt_server srv;
    eg_client *c;
    fx local;                 /* the same session in process */
    uint32_t h;               /* handle of "s" on the server */
    eg_session_config cfg;
    tm_model m;
    char dir[512];
} env;

/* Append the same n tokens (f32) to both sides. */
static int both_append(env *e, uint64_t t0, uint32_t n, int layer, uint32_t tag)
{
    float *k, *v;
    gen_chunk(&e->m, t0, n, layer, &k, &v);
    uint32_t *ids = malloc(n * 4);
    for (uint32_t i = 0; i < n; i++) ids[i] = (uint32_t)(t0 + i) * 7u;
    eg_append_req r = {EG_DTYPE_F32, n, layer, k, v, ids, tag};
    uint64_t a = 0, b = 0;
    int rc = eg_client_append(e->c, e->h, &e->cfg, &r, &a);
    int rc2 = eg_engine_append(e->local.s, &r, &b);
    free(k); free(v); free(ids);
    if (rc || rc2 || a != b) {
        fprintf(stderr, "  append: server %d (%s) n=%llu, local %d n=%llu\n", rc, eg_client_error(e->c),
                (unsigned long long)a, rc2, (unsigned long long)b);
        return -1;
    }
    return 0;
}

static int env_open(env *e, const char *tag, int codec)
{
    memset(e, 0, sizeof *e);
    tu_tmpdir(e->dir, sizeof e->dir, tag);
    if (nt_start(&e->srv, e->dir, NULL)) return -1;
    if (nt_client(&e->srv, 1, NULL, &e->c)) return -2;
    tm_config(&e->cfg, 2, 2, 4, 32, 24, 16, codec);
    snprintf(e->cfg.fingerprint, sizeof e->cfg.fingerprint, "test-model-v1");
    tm_init(&e->m, &e->cfg, 1024, 77);
    if (fx_open(&e->local, "net-local", &e->cfg)) return -3;
    if (eg_client_create(e->c, "s", &e->cfg)) return -4;
    if (eg_client_open(e->c, "s", "test-model-v1", &e->h)) return -5;
    return 0;
}

static void env_close(env *e)
{
    eg_client_close(e->c);
    CHECK_EQ_INT(nt_stop(&e->srv, SIGTERM), 0);
    fx_close(&e->local);
    tm_free(&e->m);
    tu_rmrf(e->dir);
}

static void make_req(eg_attend_req *q, float *qv, int64_t *pos, uint32_t nq, uint64_t T, uint64_t seed)
{
    eg_attend_req_init(q);
    q->layer = 1;
    q->n_queries = nq;
    q->q = qv;
    q->pos = pos;
    q->budget_tokens = 48;
    q->recent_tokens = 16;
    tm_queries(qv, (size_t)nq * 4 * 32, seed, 0.4f);
    for (uint32_t i = 0; i < nq; i++) pos[i] = (int64_t)(T - nq + i);
    q->include_self = 1;
}

static int same_floats(const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], 4) != 0) {
            fprintf(stderr, "  differs at %zu: %.9g vs %.9g\n", i, a[i], b[i]);
            return 0;
        }
    return 1;
}

static int list_count(void *ctx, const eg_session_info *info)
{
    int *n = ctx;
    (*n)++;
    return !strcmp(info->name, "never") ? 1 : 0;
}

static void test_every_operation(void)
{
    env e;
    int orc = env_open(&e, "net-ops", EG_CODEC_Q8);
    REQUIRE(orc == 0);
    CHECK_NET(eg_client_ping(e.c));
    REQUIRE(both_append(&e, 0, 100, -1, 1) == 0);
    REQUIRE(both_append(&e, 100, 37, -1, 2) == 0);
    /* layer by layer: layer 0 ahead, then layer 1 catches up */
    REQUIRE(both_append(&e, 137, 20, 0, 3) == 0);
    REQUIRE(both_append(&e, 137, 20, 1, 3) == 0);
    eg_session_info si, li;
    CHECK_NET(eg_client_info(e.c, e.h, &si));
    CHECK_EN(eg_engine_session_info(e.local.s, &li));
    CHECK_EQ_INT(si.n_tokens, 157);
    CHECK_EQ_INT(si.n_tokens, li.n_tokens);
    CHECK_EQ_INT(si.n_sealed, li.n_sealed);
    CHECK_EQ_INT(si.config.codec, EG_CODEC_Q8);
    CHECK(!strcmp(si.config.fingerprint, "test-model-v1"));

    /* attend (sparse and dense), select, fetch: the same as in process, bit for bit */
    float qv[3 * 4 * 32];
    int64_t pos[3];
    eg_attend_req q;
    make_req(&q, qv, pos, 3, si.n_tokens, 5);
    float out_s[3 * 4 * 24], lse_s[12], lost_s[12], out_l[3 * 4 * 24], lse_l[12], lost_l[12];
    for (int dense = 0; dense < 2; dense++) {
        eg_attend_result rs = {.out = out_s, .lse = lse_s, .lost = lost_s};
        eg_attend_result rl = {.out = out_l, .lse = lse_l, .lost = lost_l};
        CHECK_NET(eg_client_attend(e.c, e.h, &e.cfg, &q, dense, &rs));
        CHECK_EN(dense ? eg_engine_attend_dense(e.local.s, &q, &rl, NULL) : eg_engine_attend(e.local.s, &q, &rl));
        CHECK(same_floats(out_s, out_l, sizeof out_s / 4));
        CHECK(same_floats(lse_s, lse_l, 12));
        CHECK(same_floats(lost_s, lost_l, 12));
        CHECK_EQ_INT(rs.segments, rl.segments);
        CHECK_EQ_INT(rs.tokens, rl.tokens);
        CHECK(rs.worst_lost == rl.worst_lost);
        if (!dense) CHECK(rs.worst_lost > 0); /* a budget of 48 of 157 tokens leaves something out */
    }
    eg_select_result ss, sl;
    CHECK_NET(eg_client_select(e.c, e.h, &e.cfg, &q, &ss));
    CHECK_EN(eg_engine_select(e.local.s, &q, &sl));
    CHECK_EQ_INT(ss.n_kv_heads, sl.n_kv_heads);
    CHECK_EQ_INT(ss.n_sealed, sl.n_sealed);
    if (ss.n_kv_heads == sl.n_kv_heads) {
        CHECK_EQ_INT(ss.offsets[ss.n_kv_heads], sl.offsets[sl.n_kv_heads]);
        for (uint32_t h = 0; h < ss.n_kv_heads; h++) CHECK_EQ_INT(ss.n_forced[h], sl.n_forced[h]);
        for (size_t i = 0; i < ss.offsets[ss.n_kv_heads] && i < sl.offsets[sl.n_kv_heads]; i++) {
            CHECK_EQ_INT(ss.segments[i], sl.segments[i]);
            CHECK(ss.scores[i] == sl.scores[i]);
        }
    }
    eg_select_result_free(&ss);
    eg_select_result_free(&sl);
    /* router training: the same losses and then the same learned choice as
     * in process; reset; an engine error passes through */
    {
        float tq[24 * 4 * 32];
        int64_t tp[24];
        tm_queries(tq, sizeof tq / 4, 8, 0.4f);
        for (int i = 0; i < 24; i++) tp[i] = 100 + 2 * i;
        eg_router_train_req t;
        eg_router_train_req_init(&t);
        t.layer = 1; t.n_queries = 24; t.q = tq; t.pos = tp; t.recent_tokens = 16; t.steps = 30;
        double bs[2], as[2], bl[2], al[2];
        CHECK_NET(eg_client_router_train(e.c, e.h, &e.cfg, &t, bs, as));
        CHECK_EN(eg_engine_router_train(e.local.s, &t, bl, al));
        CHECK(bs[0] == bl[0] && bs[1] == bl[1] && as[0] == al[0] && as[1] == al[1]);
        CHECK(as[0] < bs[0] && as[1] < bs[1]);
        /* the learned router, and the ball (router 6) over the wire: the
         * server's answer is the engine's */
        static const eg_router_kind other[2] = {EG_ROUTER_LEARNED, EG_ROUTER_BALL};
        for (int ri = 0; ri < 2; ri++) {
            q.router = other[ri];
            CHECK_NET(eg_client_select(e.c, e.h, &e.cfg, &q, &ss));
            CHECK_EN(eg_engine_select(e.local.s, &q, &sl));
            CHECK_EQ_INT(ss.offsets[ss.n_kv_heads], sl.offsets[sl.n_kv_heads]);
            for (size_t i = 0; i < ss.offsets[ss.n_kv_heads] && i < sl.offsets[sl.n_kv_heads]; i++)
                CHECK(ss.segments[i] == sl.segments[i] && ss.scores[i] == sl.scores[i]);
            eg_select_result_free(&ss);
            eg_select_result_free(&sl);
        }
        q.router = EG_ROUTER_QUEST;
        t.recent_tokens = 1000;
        CHECK_NCODE(eg_client_router_train(e.c, e.h, &e.cfg, &t, bs, as), EG_IX_EEMPTY);
        t.recent_tokens = 16;
        tp[3] = 0;
        CHECK_NCODE(eg_client_router_train(e.c, e.h, &e.cfg, &t, bs, as), EG_EN_EPOS);
        CHECK_NET(eg_client_router_reset(e.c, e.h, 1));
        CHECK_NCODE(eg_client_router_reset(e.c, e.h, 2), EG_EN_ELAYER);
        CHECK_NCODE(eg_client_router_reset(e.c, 99, 0), EG_NET_EHANDLE);
    }
    float ks[16 * 32], vs[16 * 24], kl[16 * 32], vl[16 * 24];
    uint32_t rows_s = 0, rows_l = 0;
    for (uint64_t seg = 0; seg < 10; seg++) { /* 9 sealed and the open one */
        CHECK_NET(eg_client_fetch(e.c, e.h, &e.cfg, 1, 1, seg, ks, vs, &rows_s));
        CHECK_EN(eg_engine_fetch(e.local.s, 1, 1, seg, kl, vl, &rows_l));
        CHECK_EQ_INT(rows_s, rows_l);
        CHECK(same_floats(ks, kl, (size_t)rows_l * 32) && same_floats(vs, vl, (size_t)rows_l * 24));
    }
    CHECK_EQ_INT(rows_s, 157 - 9 * 16);
    CHECK_NCODE(eg_client_fetch(e.c, e.h, &e.cfg, 1, 1, 10, ks, vs, &rows_s), EG_EN_ESEGMENT);

    /* fork, truncate, drop; list and stats see them */
    CHECK_NET(eg_client_fork(e.c, "s", "child", 100));
    uint32_t hc;
    CHECK_NET(eg_client_open(e.c, "child", NULL, &hc));
    eg_session_info ci;
    CHECK_NET(eg_client_info(e.c, hc, &ci));
    CHECK_EQ_INT(ci.n_tokens, 100);
    int n = 0;
    CHECK_NET(eg_client_list(e.c, list_count, &n));
    CHECK_EQ_INT(n, 2);
    CHECK_NCODE(eg_client_drop(e.c, "child"), EG_EBUSY);
    CHECK_NET(eg_client_close_session(e.c, hc));
    CHECK_NCODE(eg_client_info(e.c, hc, &ci), EG_NET_EHANDLE);
    CHECK_NET(eg_client_drop(e.c, "child"));
    n = 0;
    CHECK_NET(eg_client_list(e.c, list_count, &n));
    CHECK_EQ_INT(n, 1);
    CHECK_NET(eg_client_truncate(e.c, e.h, 120));
    CHECK_EN(eg_engine_session_truncate(e.local.s, 120));
    make_req(&q, qv, pos, 3, 120, 9);
    eg_attend_result rs = {.out = out_s, .lse = lse_s, .lost = lost_s};
    eg_attend_result rl = {.out = out_l, .lse = lse_l, .lost = lost_l};
    CHECK_NET(eg_client_attend(e.c, e.h, &e.cfg, &q, 0, &rs));
    CHECK_EN(eg_engine_attend(e.local.s, &q, &rl));
    CHECK(same_floats(out_s, out_l, sizeof out_s / 4));
    REQUIRE(both_append(&e, 120, 30, -1, 4) == 0); /* regrow after truncate */
    eg_store_stats st;
    eg_server_stats sv;
    CHECK_NET(eg_client_stats(e.c, &st, &sv));
    CHECK(st.appends >= 5);
    CHECK(sv.requests >= 20);
    CHECK_EQ_INT(sv.connections, 1);
    CHECK_NET(eg_client_sync(e.c));
    uint64_t problems = 99;
    CHECK_NET(eg_client_verify(e.c, "s", NULL, NULL, &problems));
    CHECK_EQ_INT(problems, 0);
    CHECK_NET(eg_client_verify(e.c, NULL, NULL, NULL, &problems));
    CHECK_EQ_INT(problems, 0);
    env_close(&e);
}

static void test_errors_pass_through(void)
{
    env e;
    REQUIRE(env_open(&e, "net-err", EG_CODEC_F32) == 0);
    REQUIRE(both_append(&e, 0, 40, -1, 1) == 0);
    uint32_t hx;
    CHECK_NCODE(eg_client_open(e.c, "nope", NULL, &hx), EG_ENOTFOUND);
    CHECK(strstr(eg_client_error(e.c), "nope") != NULL);
    CHECK_NCODE(eg_client_open(e.c, "s", "another-model", &hx), EG_EFINGERPRINT);
    CHECK_NCODE(eg_client_create(e.c, "s", &e.cfg), EG_EEXIST);
    eg_session_config bad = e.cfg;
    bad.n_q_heads = 3;
    CHECK_NCODE(eg_client_create(e.c, "t", &bad), EG_EGQA);
    bad = e.cfg;
    bad.seg_tokens = 20;
    CHECK_NCODE(eg_client_create(e.c, "t", &bad), EG_ESEG_SIZE);
    CHECK_NCODE(eg_client_create(e.c, "", &e.cfg), EG_ENAME_EMPTY);
    CHECK_NCODE(eg_client_info(e.c, 42, &(eg_session_info){0}), EG_NET_EHANDLE);
    CHECK_NCODE(eg_client_truncate(e.c, e.h, 41), EG_ERANGE);

    float qv[4 * 32];
    int64_t pos[1];
    eg_attend_req q;
    make_req(&q, qv, pos, 1, 40, 3);
    float out[4 * 24];
    eg_attend_result r = {.out = out};
    q.layer = 2;
    CHECK_NCODE(eg_client_attend(e.c, e.h, &e.cfg, &q, 0, &r), EG_EN_ELAYER);
    q.layer = 1;
    pos[0] = 41;
    CHECK_NCODE(eg_client_attend(e.c, e.h, &e.cfg, &q, 0, &r), EG_EN_EPOS);
    pos[0] = 39;
    q.budget_tokens = 0;
    CHECK_NCODE(eg_client_attend(e.c, e.h, &e.cfg, &q, 0, &r), EG_EN_EBUDGET);
    q.budget_tokens = 64;
    qv[5] = NAN;
    CHECK_NCODE(eg_client_attend(e.c, e.h, &e.cfg, &q, 0, &r), EG_EN_ENONFINITE);
    qv[5] = 0;
    eg_session_config wrong = e.cfg;
    wrong.n_q_heads = 2; /* the client sends 2 heads; the session has 4 */
    CHECK_NCODE(eg_client_attend(e.c, e.h, &wrong, &q, 0, &r), EG_EN_ESHAPE);
    q.router = EG_ROUTER_INDEXER;
    CHECK_NCODE(eg_client_attend(e.c, e.h, &e.cfg, &q, 0, &r), EG_EN_EROUTER);
    q.router = EG_ROUTER_LEARNED;
    CHECK_NET(eg_client_attend(e.c, e.h, &e.cfg, &q, 0, &r));
    q.router = EG_ROUTER_QUEST;
    CHECK_NET(eg_client_attend(e.c, e.h, &e.cfg, &q, 0, &r));

    /* a NaN in an append stores nothing; a wrong shape is refused before the engine */
    float *k, *v;
    gen_chunk(&e.m, 40, 8, -1, &k, &v);
    k[100] = INFINITY;
    eg_append_req a = {EG_DTYPE_F32, 8, -1, k, v, NULL, 0};
    CHECK_NCODE(eg_client_append(e.c, e.h, &e.cfg, &a, NULL), EG_ENONFINITE);
    k[100] = 0;
    eg_session_config one_layer = e.cfg; /* the client sends one layer's bytes for all layers */
    one_layer.n_layers = 1;
    CHECK_NCODE(eg_client_append(e.c, e.h, &one_layer, &a, NULL), EG_EN_ESHAPE);
    a.layer = 5;
    CHECK_NCODE(eg_client_append(e.c, e.h, &e.cfg, &a, NULL), EG_ERANGE);
    free(k); free(v);
    eg_session_info si;
    CHECK_NET(eg_client_info(e.c, e.h, &si));
    CHECK_EQ_INT(si.n_tokens, 40);
    /* f16 appends over the wire equal f16 appends in process */
    uint16_t kh[2 * 2 * 4 * 32], vh[2 * 2 * 4 * 24];
    uint64_t s = 5;
    for (size_t i = 0; i < sizeof kh / 2; i++) kh[i] = eg_f32_to_f16(tu_randn(&s));
    for (size_t i = 0; i < sizeof vh / 2; i++) vh[i] = eg_f32_to_f16(tu_randn(&s));
    eg_append_req ah = {EG_DTYPE_F16, 4, -1, kh, vh, NULL, 9};
    uint64_t n1 = 0, n2 = 0;
    CHECK_NET(eg_client_append(e.c, e.h, &e.cfg, &ah, &n1));
    CHECK_EN(eg_engine_append(e.local.s, &ah, &n2));
    CHECK_EQ_INT(n1, 44);
    CHECK_EQ_INT(n1, n2);
    float ks[16 * 32], kl[16 * 32];
    uint32_t rs = 0, rl = 0;
    CHECK_NET(eg_client_fetch(e.c, e.h, &e.cfg, 0, 1, 2, ks, NULL, &rs));
    CHECK_EN(eg_engine_fetch(e.local.s, 0, 1, 2, kl, NULL, &rl));
    CHECK_EQ_INT(rs, 12);
    CHECK(rs == rl && same_floats(ks, kl, (size_t)rs * 32));
    /* and bf16 the same way */
    for (size_t i = 0; i < sizeof kh / 2; i++) kh[i] = eg_f32_to_bf16(tu_randn(&s));
    for (size_t i = 0; i < sizeof vh / 2; i++) vh[i] = eg_f32_to_bf16(tu_randn(&s));
    ah.dtype = EG_DTYPE_BF16;
    CHECK_NET(eg_client_append(e.c, e.h, &e.cfg, &ah, &n1));
    CHECK_EN(eg_engine_append(e.local.s, &ah, &n2));
    CHECK_EQ_INT(n1, 48);
    CHECK_EQ_INT(n1, n2);
    CHECK_NET(eg_client_fetch(e.c, e.h, &e.cfg, 1, 0, 2, ks, NULL, &rs));
    CHECK_EN(eg_engine_fetch(e.local.s, 1, 0, 2, kl, NULL, &rl));
    CHECK_EQ_INT(rs, 16);
    CHECK(rs == rl && same_floats(ks, kl, (size_t)rs * 32));
    env_close(&e);
}

static void test_pipelined(void)
{
    env e;
    REQUIRE(env_open(&e, "net-pipe", EG_CODEC_F16) == 0);
    /* 60 appends of 5 tokens sent before any answer is read */
    enum { N = 60, TOK = 5 };
    float *ks[N], *vs[N];
    uint64_t ids[N], ntok[N];
    for (int i = 0; i < N; i++) {
        gen_chunk(&e.m, (uint64_t)i * TOK, TOK, -1, &ks[i], &vs[i]);
        eg_append_req a = {EG_DTYPE_F32, TOK, -1, ks[i], vs[i], NULL, (uint32_t)i};
        CHECK_NET(eg_client_append_send(e.c, e.h, &e.cfg, &a, &ntok[i], &ids[i]));
    }
    CHECK_EQ_INT(eg_client_pending(e.c), N);
    CHECK_NCODE(eg_client_ping(e.c), EG_NET_EPENDING);
    for (int i = 0; i < N; i++) {
        uint64_t id = 0;
        CHECK_NET(eg_client_recv(e.c, &id));
        CHECK_EQ_INT(id, ids[i]);
        CHECK_EQ_INT(ntok[i], (uint64_t)(i + 1) * TOK);
        eg_append_req a = {EG_DTYPE_F32, TOK, -1, ks[i], vs[i], NULL, (uint32_t)i};
        CHECK_EN(eg_engine_append(e.local.s, &a, NULL));
        free(ks[i]); free(vs[i]);
    }
    CHECK_NCODE(eg_client_recv(e.c, NULL), EG_NET_EINVAL);
    /* attends pipelined with pings equal the in-process answers */
    enum { A = 12 };
    float qv[A][4 * 32], out[A][4 * 24], lse[A][4], ref[4 * 24], rlse[4];
    int64_t pos[A][1];
    eg_attend_result res[A];
    for (int i = 0; i < A; i++) {
        eg_attend_req q;
        make_req(&q, qv[i], pos[i], 1, N * TOK - (uint64_t)i * 7, 100 + (uint64_t)i);
        res[i] = (eg_attend_result){.out = out[i], .lse = lse[i]};
        CHECK_NET(eg_client_attend_send(e.c, e.h, &e.cfg, &q, &res[i], NULL));
        if (i % 3 == 0) CHECK_NET(eg_client_ping_send(e.c, NULL));
    }
    while (eg_client_pending(e.c)) CHECK_NET(eg_client_recv(e.c, NULL));
    for (int i = 0; i < A; i++) {
        eg_attend_req q;
        make_req(&q, qv[i], pos[i], 1, N * TOK - (uint64_t)i * 7, 100 + (uint64_t)i);
        eg_attend_result rl = {.out = ref, .lse = rlse};
        CHECK_EN(eg_engine_attend(e.local.s, &q, &rl));
        CHECK(same_floats(out[i], ref, 4 * 24) && same_floats(lse[i], rlse, 4));
    }
    /* the Unix socket serves the same session */
    eg_client *u;
    CHECK_NET(nt_client(&e.srv, 0, NULL, &u));
    uint32_t hu;
    CHECK_NET(eg_client_open(u, "s", NULL, &hu));
    eg_session_info si;
    CHECK_NET(eg_client_info(u, hu, &si));
    CHECK_EQ_INT(si.n_tokens, N * TOK);
    eg_client_close(u);
    env_close(&e);
}

/* A client that disconnects with sessions open: the server closes its
 * handles (on a worker, since closing a session's last handle writes its
 * quest snapshots), so another client can drop one of them right after;
 * the long one's snapshots are in the store once the server stopped. */
static void test_disconnect_closes_and_snapshots(void)
{
    char dir[512];
    tu_tmpdir(dir, sizeof dir, "net-snap");
    nt_server srv;
    REQUIRE(nt_start(&srv, dir, NULL) == 0);
    eg_client *a, *b;
    REQUIRE(nt_client(&srv, 1, NULL, &a) == 0);
    eg_session_config cfg;
    tm_config(&cfg, 1, 2, 4, 32, 24, 16, EG_CODEC_Q8);
    uint32_t h1, h2;
    CHECK_NET(eg_client_create(a, "long", &cfg));
    CHECK_NET(eg_client_create(a, "short", &cfg));
    CHECK_NET(eg_client_open(a, "long", NULL, &h1));
    CHECK_NET(eg_client_open(a, "short", NULL, &h2));
    enum { CH = 1000, N = 9000 };   /* 562 segments: over the engine's snapshot minimum of 512 */
    float *k = malloc(sizeof(float) * 2 * CH * 32), *v = malloc(sizeof(float) * 2 * CH * 24);
    uint64_t rs = 99;
    for (uint64_t t = 0; t < N; t += CH) {
        for (size_t i = 0; i < 2 * CH * 32; i++) k[i] = tu_randn(&rs);
        for (size_t i = 0; i < 2 * CH * 24; i++) v[i] = tu_randn(&rs);
        eg_append_req r = {EG_DTYPE_F32, CH, -1, k, v, NULL, 0};
        CHECK_NET(eg_client_append(a, h1, &cfg, &r, NULL));
    }
    float qv[4 * 32], out[4 * 24];
    int64_t pos = N;
    for (int i = 0; i < 4 * 32; i++) qv[i] = tu_randn(&rs);
    eg_attend_req q;
    eg_attend_req_init(&q);
    q.n_queries = 1; q.q = qv; q.pos = &pos; q.budget_tokens = 16 * 20;
    eg_attend_result res = {.out = out};
    CHECK_NET(eg_client_attend(a, h1, &cfg, &q, 0, &res));   /* its tables are loaded */
    eg_client_close(a);                                          /* both handles left open */
    REQUIRE(nt_client(&srv, 1, NULL, &b) == 0);
    int rc = -1;
    for (int i = 0; i < 300 && rc; i++) {
        rc = eg_client_drop(b, "short");
        if (rc) nt_sleep_ms(10);
    }
    CHECK_EQ_INT(rc, 0);
    eg_client_close(b);
    CHECK_EQ_INT(nt_stop(&srv, SIGTERM), 0);
    char data[600];
    snprintf(data, sizeof data, "%s/data", dir);
    eg_store *st;
    REQUIRE(eg_store_open(data, NULL, &st) == 0);
    eg_msession *ms;
    REQUIRE(eg_session_open(st, "long", NULL, &ms) == 0);
    int snaps = 0;
    for (uint32_t kvh = 0; kvh < 2; kvh++) {
        void *bytes = NULL;
        size_t len;
        if (eg_record_get_session(ms, 0, kvh, 6u, 0, &bytes, &len) == 0) snaps++;   /* the ball's (default router) */
        free(bytes);
    }
    CHECK_EQ_INT(snaps, 2);
    eg_session_close(ms);
    eg_store_close(st);
    free(k);
    free(v);
    tu_rmrf(dir);
}

int main(int argc, char **argv)
{
    (void)argc;
    nt_init(argv[0]);
    TEST_RUN(test_disconnect_closes_and_snapshots);
    TEST_RUN(test_every_operation);
    TEST_RUN(test_errors_pass_through);
    TEST_RUN(test_pipelined);
    TEST_END();
}
