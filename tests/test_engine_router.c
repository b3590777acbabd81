/* test_engine_router.c: the learned router through the engine: its
 * summaries sealed with every segment, ATTEND and SELECT with it, training
 * on the session's own attention, weights kept across reopen, truncate and
 * fork, reset, damaged weights, bad training input. */
#include "engineutil.h"
#include "workload.h"
#include <lmdb.h>
#include <stdio.h>


/* The untrained learned score of one segment's keys K [16][32] for query
 * qq: log((S-1) e^(scale q.mean') + e^(scale q.k_far)), mean' the mean of
 * all keys but the farthest from the mean. */
static double learned_score_ref(const float *K, const float *qq)
{
    double mean[32] = {0}, far = -1, sc = 1 / sqrt(32.0);
    int fi = 0;
    for (int t = 0; t < 16; t++) for (int d = 0; d < 32; d++) mean[d] += K[t * 32 + d] / 16.0;
    for (int t = 0; t < 16; t++) {
        double dd = 0;
        for (int d = 0; d < 32; d++) dd += (K[t * 32 + d] - mean[d]) * (K[t * 32 + d] - mean[d]);
        if (dd > far) { far = dd; fi = t; }
    }
    double a = 0, b = 0;
    for (int d = 0; d < 32; d++) {
        a += qq[d] * (mean[d] * 16 - K[fi * 32 + d]) / 15;
        b += qq[d] * K[fi * 32 + d];
    }
    double x = log(15.0) + sc * a, y = sc * b, mx = x > y ? x : y;
    return mx + log(exp(x - mx) + exp(y - mx));
}

/* Untrained learned scores from SELECT against a double loop over FETCHed
 * keys (the outlier is q8 then f16, so the comparison allows 2e-3), ranked
 * by MAX (the largest of the kv-head's rows) and by MASS (the default: the
 * summed shares of each row's mass over its visible segments). With a
 * budget over every segment, learned ATTEND equals dense. */
static void test_learned_select_and_attend(void)
{
    eg_session_config c;
    tm_config(&c, 2, 2, 4, 32, 16, 16, EG_CODEC_Q8);
    fx f;
    REQUIRE(fx_open(&f, "elr", &c) == 0);
    tm_model m;
    tm_init(&m, &c, 1024, 5);
    CHECK_EN(tm_append(&m, f.s, 600, -1, 0));
    float q[2 * 4 * 32];
    tm_queries(q, sizeof q / 4, 3, 0.5f);
    int64_t pos[2] = {600, 431};
    eg_attend_req r;
    eg_attend_req_init(&r);
    r.layer = 1;
    r.n_queries = 2;
    r.q = q;
    r.pos = pos;
    r.router = EG_ROUTER_LEARNED;
    r.budget_tokens = 160;
    r.recent_tokens = 0;
    enum { NS = 37 };                                   /* sealed segments of 600 tokens */
    double ref[2][4][NS];                               /* [kv-head][row][segment], -inf: not visible */
    for (uint32_t h = 0; h < 2; h++)
        for (int s = 0; s < NS; s++) {
            float K[16 * 32];
            uint32_t rows = 0;
            CHECK_EN(eg_engine_fetch(f.s, 1, h, (uint64_t)s, K, NULL, &rows));
            for (int row = 0; row < 2; row++)
                for (uint32_t g = 0; g < 2; g++)
                    ref[h][row * 2 + g][s] = (int64_t)s * 16 > pos[row] - 1 ? -INFINITY   /* a segment starting after the row's last token */
                                             : learned_score_ref(K, q + ((size_t)row * 4 + h * 2 + g) * 32);
        }
    for (int mass = 0; mass < 2; mass++) {
        r.aggregate = mass ? 0 : EG_ROUTE_AGG_MAX;      /* 0: the learned router's own, MASS */
        eg_select_result sel;
        CHECK_EN(eg_engine_select(f.s, &r, &sel));
        double worst = 0, order = 0;
        size_t routed = 0;
        for (uint32_t h = 0; h < 2; h++) {
            double agg[NS], L[4];
            for (int x = 0; x < 4; x++) {
                double mx = -INFINITY, z = 0;
                for (int s = 0; s < NS; s++) mx = ref[h][x][s] > mx ? ref[h][x][s] : mx;
                for (int s = 0; s < NS; s++) z += exp(ref[h][x][s] - mx);
                L[x] = mx + log(z);
            }
            for (int s = 0; s < NS; s++) {
                double best = -INFINITY, z = 0;
                for (int x = 0; x < 4; x++) {
                    best = ref[h][x][s] > best ? ref[h][x][s] : best;
                    z += exp(ref[h][x][s] - L[x]);
                }
                agg[s] = mass ? log(z) : best;
            }
            int chosen[NS] = {0};
            for (size_t i = sel.offsets[h]; i < sel.offsets[h + 1]; i++) chosen[sel.segments[i]] = 1;
            double lo = INFINITY, hi = -INFINITY;
            for (size_t i = sel.offsets[h] + sel.n_forced[h]; i < sel.offsets[h + 1]; i++, routed++) {
                double e = fabs(sel.scores[i] - agg[sel.segments[i]]) / (1 + fabs(agg[sel.segments[i]]));
                worst = e > worst ? e : worst;
                lo = agg[sel.segments[i]] < lo ? agg[sel.segments[i]] : lo;
            }
            for (int s = 0; s < NS; s++) if (!chosen[s]) hi = agg[s] > hi ? agg[s] : hi;
            order = hi - lo > order ? hi - lo : order;  /* > 0: a better segment was left out */
        }
        printf("  %s: %zu routed segments, worst relative score error %.2g, order slack %.2g\n",
               mass ? "mass" : "max", routed, worst, order);
        CHECK(routed >= 10);
        CHECK(worst < 2e-3);
        CHECK(order < 2e-3);
        eg_select_result_free(&sel);
    }
    r.aggregate = 3;
    eg_select_result bad;
    CHECK(eg_engine_select(f.s, &r, &bad) == EG_EN_EINVAL);
    r.aggregate = 0;
    /* Budget over every segment: sparse with the learned router = dense. */
    float out[2 * 4 * 16], dout[2 * 4 * 16], lost[8];
    eg_attend_result res = {out, NULL, lost, 0, 0, 0, 0}, dres = {dout, NULL, NULL, 0, 0, 0, 0};
    r.budget_tokens = 1024;
    CHECK_EN(eg_engine_attend(f.s, &r, &res));
    CHECK_EN(eg_engine_attend_dense(f.s, &r, &dres, NULL));
    double de[2 * 4 * 16];
    for (size_t i = 0; i < sizeof de / sizeof *de; i++) de[i] = dout[i];
    /* Sparse folds the forced segments, the open rows and then the routed
     * ones in score order, dense every segment in order; f32 accumulators
     * and outputs near the 1e-3 floor leave 1e-5 of rounding (8e-6 with
     * dense decoding to f32 in runs of 16, 1.5e-5 with it reading q8
     * tiles per segment). */
    CHECK(rel_err(out, de, sizeof de / sizeof *de, 1e-3) < 5e-5);
    for (int i = 0; i < 8; i++) CHECK(lost[i] == 0);
    tm_free(&m);
    fx_close(&f);
}

/* A structured workload as a session (keys stored after RoPE). */
static int wl_session(fx *f, const char *tag, const wl_workload *w)
{
    eg_session_config c;
    tm_config(&c, 1, (uint32_t)w->n_kv_heads, (uint32_t)w->n_q_heads, (uint32_t)w->dim, (uint32_t)w->dim, 64,
              EG_CODEC_F16);
    int rc = fx_open(f, tag, &c);
    const int64_t CH = 1024;
    size_t H = (size_t)w->n_kv_heads, d = (size_t)w->dim;
    float *k = malloc(CH * H * d * 4), *v = malloc(CH * H * d * 4);
    for (int64_t t0 = 0; !rc && t0 < w->n_tokens; t0 += CH) {
        for (int64_t i = 0; i < CH; i++)
            for (size_t h = 0; h < H; h++) {
                memcpy(k + (i * H + h) * d, w->k + (h * w->n_tokens + t0 + i) * d, d * 4);
                memcpy(v + (i * H + h) * d, w->v + (h * w->n_tokens + t0 + i) * d, d * 4);
            }
        eg_append_req r = {EG_DTYPE_F32, (uint32_t)CH, -1, k, v, NULL, 0};
        rc = eg_engine_append(f->s, &r, NULL);
    }
    free(k);
    free(v);
    return rc;
}

/* Mass the router's choice holds over the dense mass of the sealed
 * segments, mean over queries and kv-heads, for queries i with i % 8 >= 4
 * (first 1; every 4th query seeks a needle) or < 4 (first 0, the ones that
 * train the router). */
static double engine_recall(eg_engine_session *s, const wl_workload *w, eg_router_kind router, int first)
{
    int H = w->n_kv_heads, nqh = w->n_q_heads;
    double sum = 0;
    int n = 0;
    for (int i = 0; i < w->n_queries; i++) {
        if ((i % 8 >= 4) != first) continue;
        eg_attend_req r;
        eg_attend_req_init(&r);
        int64_t pos = w->q_pos[i] + 1;
        r.n_queries = 1;
        r.q = w->q + (size_t)i * nqh * w->dim;
        r.pos = &pos;
        r.router = router;
        r.budget_tokens = 2048;
        eg_select_result sel;
        eg_session_info info;
        if (eg_engine_select(s, &r, &sel) || eg_engine_session_info(s, &info)) return -1;
        float *mass = malloc(sizeof(float) * (size_t)H * sel.n_sealed * (nqh / H + 1));
        float *out = malloc(sizeof(float) * (size_t)nqh * w->dim);
        eg_attend_result res = {out, NULL, NULL, 0, 0, 0, 0};
        int rc = eg_engine_attend_dense(s, &r, &res, mass);
        for (int h = 0; !rc && h < H; h++) {
            double all = 0, in = 0;
            for (uint64_t g = 0; g < sel.n_sealed; g++) all += mass[(size_t)h * sel.n_sealed + g];
            for (size_t j = sel.offsets[h]; j < sel.offsets[h + 1]; j++)
                in += mass[(size_t)h * sel.n_sealed + (size_t)sel.segments[j]];
            sum += all > 0 ? in / all : 1;
            n++;
        }
        free(mass);
        free(out);
        eg_select_result_free(&sel);
        if (rc) return -1;
    }
    return n ? sum / n : -1;
}

static void train_req(eg_router_train_req *t, const wl_workload *w, int64_t *pos, float *q)
{
    eg_router_train_req_init(t);
    int n = 0;
    for (int i = 0; i < w->n_queries; i++) {  /* queries 0-3, 8-11, ... train */
        if (i % 8 >= 4) continue;
        pos[n] = w->q_pos[i] + 1;
        memcpy(q + (size_t)n * w->n_q_heads * w->dim, w->q + (size_t)i * w->n_q_heads * w->dim,
               sizeof(float) * w->n_q_heads * w->dim);
        n++;
    }
    t->n_queries = (uint32_t)n;
    t->q = q;
    t->pos = pos;
}

/* Scores SELECT gives one query with the learned router, kv-head 0's. */
static int learned_scores(eg_engine_session *s, const wl_workload *w, int i, float *sc, size_t *n)
{
    eg_attend_req r;
    eg_attend_req_init(&r);
    int64_t pos = w->q_pos[i] + 1;
    r.n_queries = 1;
    r.q = w->q + (size_t)i * w->n_q_heads * w->dim;
    r.pos = &pos;
    r.router = EG_ROUTER_LEARNED;
    eg_select_result sel;
    int rc = eg_engine_select(s, &r, &sel);
    if (rc) return rc;
    *n = sel.offsets[1];
    memcpy(sc, sel.scores, *n * sizeof(float));
    eg_select_result_free(&sel);
    return 0;
}

/* Training on half of a structured workload's queries lowers each kv-head's
 * loss and lifts the other half's mass recall above centroid's; the
 * weights stay through reopen and truncate, a fork copies them, reset
 * returns the untrained scores. */
static void test_learned_training(void)
{
    wl_spec sp;
    wl_spec_init(&sp, WL_STRUCTURED);
    sp.n_tokens = tu_slow() ? 8192 : 32768;   /* smaller under ASan */
    sp.text_seed = 1;
    sp.n_queries = 96;
    wl_workload w;
    REQUIRE(wl_generate(&sp, &w) == 0);
    fx f;
    REQUIRE(wl_session(&f, "elt", &w) == 0);
    double rc_cent = engine_recall(f.s, &w, EG_ROUTER_CENTROID, 1);
    double rc_unt = engine_recall(f.s, &w, EG_ROUTER_LEARNED, 1);
    float sc0[256], sc1[256], sc2[256];
    size_t n0 = 0, n1 = 0, n2 = 0;
    CHECK_EN(learned_scores(f.s, &w, 9, sc0, &n0));
    int64_t pos[48];
    float *q = malloc(sizeof(float) * 48 * w.n_q_heads * w.dim);
    eg_router_train_req t;
    train_req(&t, &w, pos, q);
    double lb[2], la[2];
    CHECK_EN(eg_engine_router_train(f.s, &t, lb, la));
    double rc_tr = engine_recall(f.s, &w, EG_ROUTER_LEARNED, 1);
    printf("  loss by kv-head %.4f -> %.4f, %.4f -> %.4f\n", lb[0], la[0], lb[1], la[1]);
    printf("  held-out mass recall at 2048: centroid %.4f, learned untrained %.4f, trained %.4f\n",
           rc_cent, rc_unt, rc_tr);
    CHECK(la[0] < lb[0] && la[1] < lb[1]);
    CHECK(rc_cent > 0 && rc_tr > rc_cent + 0.005);
    CHECK(rc_unt > rc_cent);
    CHECK_EN(learned_scores(f.s, &w, 9, sc1, &n1));
    CHECK(n1 == n0 && memcmp(sc0, sc1, n0 * 4) != 0);          /* new weights in use */
    /* Reopen: the stored weights, the same scores. */
    eg_engine_close(f.e);
    eg_engine_options o;
    eg_engine_options_init(&o);
    o.store.sync_mode = EG_SYNC_NONE;
    REQUIRE(eg_engine_open(f.dir, &o, &f.e) == 0);
    REQUIRE(eg_engine_session_open(f.e, "s", NULL, &f.s) == 0);
    CHECK_EN(learned_scores(f.s, &w, 9, sc2, &n2));
    CHECK(n2 == n1 && memcmp(sc1, sc2, n1 * 4) == 0);
    /* A fork copies the weights; truncate keeps them (query 9 sees only
     * what stays). */
    int64_t cut = (w.q_pos[9] + 1 + 63) / 64 * 64 + 64;
    CHECK_EN(eg_engine_session_fork(f.e, "s", "child", (uint64_t)cut));
    CHECK_EN(eg_engine_session_truncate(f.s, (uint64_t)cut));
    CHECK_EN(learned_scores(f.s, &w, 9, sc2, &n2));
    CHECK(n2 == n1 && memcmp(sc1, sc2, n1 * 4) == 0);
    eg_engine_session *ch;
    CHECK_EN(eg_engine_session_open(f.e, "child", NULL, &ch));
    CHECK_EN(learned_scores(ch, &w, 9, sc2, &n2));
    CHECK(n2 == n1 && memcmp(sc1, sc2, n1 * 4) == 0);
    /* Reset: untrained again, in this session only. */
    CHECK_EN(eg_engine_router_reset(f.s, 0));
    CHECK_EN(learned_scores(f.s, &w, 9, sc2, &n2));
    CHECK(n2 == n0 && memcmp(sc0, sc2, n0 * 4) == 0);
    CHECK_EN(learned_scores(ch, &w, 9, sc2, &n2));
    CHECK(n2 == n1 && memcmp(sc1, sc2, n1 * 4) == 0);
    CHECK_EN(eg_engine_session_close(ch));
    free(q);
    wl_free(&w);
    fx_close(&f);
}

/* Flip the last byte of every session record of the weights kind (the
 * engine closed): its checksum fails. */
static int damage_weights(const char *dir)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_cursor *c;
    MDB_val k, v;
    int n = 0;
    if (mdb_env_create(&env)) return -1;
    mdb_env_set_maxdbs(env, 16);
    if (mdb_env_open(env, dir, 0, 0644) || mdb_txn_begin(env, NULL, 0, &txn)) { mdb_env_close(env); return -1; }
    if (!mdb_dbi_open(txn, "router", 0, &dbi) && !mdb_cursor_open(txn, dbi, &c)) {
        for (int r = mdb_cursor_get(c, &k, &v, MDB_FIRST); !r; r = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
            const unsigned char *kb = k.mv_data;
            uint32_t kind = (uint32_t)kb[16] << 24 | (uint32_t)kb[17] << 16 | (uint32_t)kb[18] << 8 | kb[19];
            if (k.mv_size != 28 || kind != (1u | EG_RECORD_KEEP)) continue;
            unsigned char *b = malloc(v.mv_size);
            memcpy(b, v.mv_data, v.mv_size);
            b[v.mv_size - 1] ^= 0x40;
            MDB_val nv = {v.mv_size, b};
            if (!mdb_cursor_put(c, &k, &nv, MDB_CURRENT)) n++;
            free(b);
        }
        mdb_cursor_close(c);
    }
    mdb_txn_commit(txn);
    mdb_env_close(env);
    return n;
}

/* Bad training input gets its code and changes nothing; damaged stored
 * weights make the learned router refuse (ECORRUPT) while quest serves. */
static void test_learned_bad_input(void)
{
    eg_session_config c;
    tm_config(&c, 2, 2, 4, 32, 16, 16, EG_CODEC_Q8);
    fx f;
    REQUIRE(fx_open(&f, "elb", &c) == 0);
    tm_model m;
    tm_init(&m, &c, 1024, 7);
    CHECK_EN(tm_append(&m, f.s, 700, -1, 0));
    enum { NQ = 40 };
    float *q = malloc(sizeof(float) * 1100 * 4 * 32);
    int64_t pos[1100];
    tm_queries(q, (size_t)1100 * 4 * 32, 9, 0.5f);
    for (int i = 0; i < 1100; i++) pos[i] = 300 + (i * 37) % 400;
    eg_router_train_req t;
    eg_router_train_req_init(&t);
    t.layer = 1;
    t.n_queries = NQ;
    t.q = q;
    t.pos = pos;
    t.recent_tokens = 32;
    t.steps = 20;
    float sc[64];
    eg_attend_req r;
    eg_attend_req_init(&r);
    r.layer = 1;
    r.n_queries = 1;
    r.q = q;
    r.pos = pos;
    r.router = EG_ROUTER_LEARNED;
    r.budget_tokens = 96;
    eg_select_result sel;
    CHECK_EN(eg_engine_select(f.s, &r, &sel));
    size_t n0 = sel.offsets[sel.n_kv_heads];
    memcpy(sc, sel.scores, n0 * 4);
    eg_select_result_free(&sel);
    eg_router_train_req b = t;
    b.layer = 2;
    CHECK_CODE(eg_engine_router_train(f.s, &b, NULL, NULL), EG_EN_ELAYER);
    b = t;
    b.n_queries = 0;
    CHECK_CODE(eg_engine_router_train(f.s, &b, NULL, NULL), EG_EN_ESHAPE);
    b.n_queries = EG_EN_TRAIN_ROWS_MAX / 2 + 1;               /* x 2 q heads per kv-head */
    CHECK_CODE(eg_engine_router_train(f.s, &b, NULL, NULL), EG_EN_ESHAPE);
    b = t;
    int64_t p0 = pos[3];
    pos[3] = 0;                                              /* sees nothing */
    CHECK_CODE(eg_engine_router_train(f.s, &b, NULL, NULL), EG_EN_EPOS);
    pos[3] = 701;
    CHECK_CODE(eg_engine_router_train(f.s, &b, NULL, NULL), EG_EN_EPOS);
    pos[3] = p0;
    float q0 = q[5];
    q[5] = NAN;
    CHECK_CODE(eg_engine_router_train(f.s, &b, NULL, NULL), EG_EN_ENONFINITE);
    q[5] = q0;
    b.steps = -1;
    CHECK_CODE(eg_engine_router_train(f.s, &b, NULL, NULL), EG_EN_EINVAL);
    b = t;
    b.lr = -0.5f;
    CHECK_CODE(eg_engine_router_train(f.s, &b, NULL, NULL), EG_EN_EINVAL);
    b = t;
    b.scale = INFINITY;
    CHECK_CODE(eg_engine_router_train(f.s, &b, NULL, NULL), EG_EN_ENONFINITE);
    b = t;
    b.q = NULL;
    CHECK_CODE(eg_engine_router_train(f.s, &b, NULL, NULL), EG_EN_EINVAL);
    CHECK_CODE(eg_engine_router_train(f.s, NULL, NULL, NULL), EG_EN_EINVAL);
    b = t;
    b.recent_tokens = 100000;                                /* no query can route 2 segments */
    CHECK_CODE(eg_engine_router_train(f.s, &b, NULL, NULL), EG_IX_EEMPTY);
    CHECK_CODE(eg_engine_router_reset(f.s, 9), EG_EN_ELAYER);
    /* None of it changed the weights. */
    CHECK_EN(eg_engine_select(f.s, &r, &sel));
    CHECK(sel.offsets[sel.n_kv_heads] == n0 && memcmp(sc, sel.scores, n0 * 4) == 0);
    eg_select_result_free(&sel);
    /* Trained weights, then damaged on disk. */
    CHECK_EN(eg_engine_router_train(f.s, &t, NULL, NULL));
    eg_engine_close(f.e);
    CHECK(damage_weights(f.dir) == 2);
    eg_engine_options o;
    eg_engine_options_init(&o);
    o.store.sync_mode = EG_SYNC_NONE;
    REQUIRE(eg_engine_open(f.dir, &o, &f.e) == 0);
    REQUIRE(eg_engine_session_open(f.e, "s", NULL, &f.s) == 0);
    CHECK_CODE(eg_engine_select(f.s, &r, &sel), EG_ECORRUPT);
    CHECK(strstr(eg_engine_last_error(), "router weights") != NULL);
    r.router = EG_ROUTER_QUEST;
    CHECK_EN(eg_engine_select(f.s, &r, &sel));
    eg_select_result_free(&sel);
    r.router = EG_ROUTER_LEARNED;
    r.layer = 0;                                             /* layer 0 was never trained */
    CHECK_EN(eg_engine_select(f.s, &r, &sel));
    eg_select_result_free(&sel);
    /* A reset stores good weights over the damaged ones. */
    r.layer = 1;
    CHECK_EN(eg_engine_router_reset(f.s, 1));
    CHECK_EN(eg_engine_select(f.s, &r, &sel));
    CHECK(sel.offsets[sel.n_kv_heads] == n0 && memcmp(sc, sel.scores, n0 * 4) == 0);
    eg_select_result_free(&sel);
    /* A closed handle. */
    eg_engine_session *h2;
    CHECK_EN(eg_engine_session_open(f.e, "s", NULL, &h2));
    CHECK_EN(eg_engine_session_close(h2));
    CHECK_CODE(eg_engine_router_train(h2, &t, NULL, NULL), EG_EN_ECLOSED);
    CHECK_CODE(eg_engine_router_reset(h2, 0), EG_EN_ECLOSED);
    free(q);
    tm_free(&m);
    fx_close(&f);
}

int main(void)
{
    TEST_RUN(test_learned_select_and_attend);
    TEST_RUN(test_learned_training);
    TEST_RUN(test_learned_bad_input);
    TEST_END();
}
