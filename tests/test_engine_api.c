/* test_engine_api.c: RoPE against a plain loop (both layouts, true and
 * remapped positions), tag filters, the oracle router, the active window,
 * truncate/fork/drop through the engine, concurrent ATTEND, and every bad
 * input the engine must refuse with a code. */
#include "engineutil.h"
#include <pthread.h>


/* RoPE by the book: pair i turns by p * theta^(-2i/rot). */
static void ref_rope(int mode, uint32_t rot, double theta, float *x, uint32_t dim, double p)
{
    if (!rot) rot = dim;
    for (uint32_t i = 0; i < rot / 2; i++) {
        uint32_t a = mode == EG_ROPE_INTERLEAVED ? 2 * i : i;
        uint32_t b = mode == EG_ROPE_INTERLEAVED ? 2 * i + 1 : i + rot / 2;
        double ang = p * pow(theta, -2.0 * i / rot), x0 = x[a], x1 = x[b];
        x[a] = (float)(x0 * cos(ang) - x1 * sin(ang));
        x[b] = (float)(x0 * sin(ang) + x1 * cos(ang));
    }
}

static void t_rope_kernel(void)
{
    uint64_t s = 3;
    for (int mode = EG_ROPE_HALF; mode <= EG_ROPE_INTERLEAVED; mode++)
        for (int rot = 0; rot <= 24; rot += 24) {
            enum { N = 70, D = 32 };
            float x[N * D], a[N * D], b[N * D];
            for (int i = 0; i < N * D; i++) x[i] = tu_randn(&s);
            int64_t pos[N];
            for (int i = 0; i < N; i++) pos[i] = i % 3 == 0 ? 1000003 + i : i * 37;
            memcpy(a, x, sizeof x);
            memcpy(b, x, sizeof x);
            CHECK_EN(eg_rope_apply(mode, (uint32_t)rot, 10000.0f, a, N, D, pos, 0));
            for (int i = 0; i < N; i++) ref_rope(mode, (uint32_t)rot, 10000.0, b + i * D, D, (double)pos[i]);
            double e = 0;
            for (int i = 0; i < N * D; i++) e = fmax(e, fabs(a[i] - b[i]));
            CHECK(e < 2e-6);
            /* consecutive positions from pos0, the path the window uses */
            memcpy(a, x, sizeof x);
            memcpy(b, x, sizeof x);
            CHECK_EN(eg_rope_apply(mode, (uint32_t)rot, 500000.0f, a, N, D, NULL, 999936));
            for (int i = 0; i < N; i++) ref_rope(mode, (uint32_t)rot, 500000.0, b + i * D, D, 999936.0 + i);
            e = 0;
            for (int i = 0; i < N * D; i++) e = fmax(e, fabs(a[i] - b[i]));
            CHECK(e < 2e-6);
            /* rotary dims beyond rot stay */
            for (int i = 0; rot && mode == EG_ROPE_HALF && i < N; i++)
                for (int d = rot; d < D; d++) CHECK(a[i * D + d] == x[i * D + d]);
        }
    float v[4] = {1, 2, 3, 4};
    CHECK_CODE(eg_rope_apply(EG_ROPE_HALF, 3, 10000.0f, v, 1, 4, NULL, 0), EG_EN_EOPTION);
    CHECK_CODE(eg_rope_apply(EG_ROPE_NONE, 0, 10000.0f, v, 1, 4, NULL, 0), EG_EN_EOPTION);
    CHECK_CODE(eg_rope_apply(EG_ROPE_HALF, 0, 0.5f, v, 1, 4, NULL, 0), EG_EN_EOPTION);
    CHECK_CODE(eg_rope_apply(EG_ROPE_HALF, 0, 10000.0f, NULL, 1, 4, NULL, 0), EG_EN_EINVAL);
}

/* Reference over keys rotated at kpos[j] and the query at qp, tokens in
 * inc (NULL: all) up to vis. */
static void ref_rot_row(int mode, uint32_t rot, const float *q, double qp, tm_model *m, uint32_t h,
                        const int64_t *kpos, const uint8_t *inc, int64_t vis, double *out, double *lse)
{
    uint64_t T = m->T;
    float *K = malloc(T * m->dk * 4), qr[64];
    for (uint64_t j = 0; j < T; j++) {
        memcpy(K + j * m->dk, tm_k(m, 0, h, j), m->dk * 4);
        ref_rope(mode, rot, 10000.0, K + j * m->dk, m->dk, (double)kpos[j]);
    }
    memcpy(qr, q, m->dk * 4);
    ref_rope(mode, rot, 10000.0, qr, m->dk, qp);
    ref_row(qr, K, tm_v(m, 0, h, 0), T, inc, vis, m->dk, m->dv, 1 / sqrt(m->dk), out, lse);
    free(K);
}

static void t_rope_session(void)
{
    for (int mode = EG_ROPE_HALF; mode <= EG_ROPE_INTERLEAVED; mode++) {
        eg_session_config c;
        tm_config(&c, 1, 2, 4, 32, 16, 16, EG_CODEC_F32);
        c.rope_mode = (uint32_t)mode;
        c.rope_dims = 16;
        fx f;
        tm_model m;
        tm_init(&m, &c, 320, 200 + mode);
        REQUIRE(fx_open(&f, "eng-rope", &c) == 0);
        CHECK_EN(tm_append(&m, f.s, 300, -1, 0));
        int64_t *kpos = malloc(300 * sizeof(int64_t));
        float q[4 * 32];
        tm_queries(q, 4 * 32, 9 + mode, 0.5f);
        int64_t p = 300;
        for (int remap = 0; remap < 2; remap++) {
            eg_attend_req r;
            eg_attend_req_init(&r);
            r.n_queries = 1; r.q = q; r.pos = &p; r.remap_positions = remap;
            r.budget_tokens = remap ? 16 * 5 : 4096;
            r.recent_tokens = 32;
            float out[4 * 16], lse[4], lost[4];
            eg_attend_result res = {out, lse, lost, 0, 0, 0, 0};
            eg_select_result sr;
            CHECK_EN(eg_engine_attend(f.s, &r, &res));
            CHECK_EN(eg_engine_select(f.s, &r, &sr));
            int bad = 0;
            for (uint32_t h = 0; h < 2 && sr.offsets; h++) {
                /* Remapped positions as specified: sinks first, routed
                 * segments packed in order, recent window and open rows at
                 * their true distance from the query. */
                uint8_t *inc = calloc(300, 1);
                size_t a = sr.offsets[h], nf = sr.n_forced[h], n = sr.offsets[h + 1] - a, ns = 0;
                int64_t routed[64];
                size_t nr = 0;
                for (size_t i = 0; i < n; i++) {
                    int64_t sg = sr.segments[a + i];
                    for (int t = 0; t < 16; t++) inc[sg * 16 + t] = 1;
                    if (i < nf && sg < 1) ns++;
                    if (i >= nf) routed[nr++] = sg;
                }
                for (int t = (int)sr.n_sealed * 16; t < 300; t++) inc[t] = 1;
                for (size_t i = 0; i < nr; i++)
                    for (size_t j = i + 1; j < nr; j++)
                        if (routed[j] < routed[i]) { int64_t x = routed[i]; routed[i] = routed[j]; routed[j] = x; }
                for (int64_t j = 0; j < 300; j++) kpos[j] = j;
                int64_t d_rec = 0;
                if (remap) {
                    for (size_t k = 0; k < nr; k++)
                        for (int t = 0; t < 16; t++) kpos[routed[k] * 16 + t] = (int64_t)(ns + k) * 16 + t;
                    int64_t r0 = nf > ns ? sr.segments[a + ns] * 16 : (int64_t)sr.n_sealed * 16;
                    d_rec = (int64_t)(ns + nr) * 16 - r0;
                    for (int64_t j = r0; j < 300; j++) kpos[j] = j + d_rec;
                    CHECK(d_rec < 0); /* the budget left segments out */
                }
                for (uint32_t g = 0; g < 2; g++) {
                    double ro[16], rl;
                    size_t o = h * 2 + g;
                    ref_rot_row(mode, 16, q + o * 32, (double)(p + d_rec), &m, h, kpos, remap ? inc : NULL,
                                p - 1, ro, &rl);
                    for (int d = 0; d < 16; d++)
                        if (fabs(out[o * 16 + d] - ro[d]) > 1e-4 * fmax(1, fabs(ro[d]))) bad++;
                    if (fabs(lse[o] - rl) > 1e-4 * fmax(1, fabs(rl))) bad++;
                }
                free(inc);
            }
            if (bad) fprintf(stderr, "  rope mode %d remap %d: %d values off\n", mode, remap, bad);
            CHECK_EQ_INT(bad, 0);
            eg_select_result_free(&sr);
            if (!remap) { /* dense agrees too */
                float o2[4 * 16];
                eg_attend_result rd = {o2, NULL, NULL, 0, 0, 0, 0};
                CHECK_EN(eg_engine_attend_dense(f.s, &r, &rd, NULL));
                double e = 0;
                for (int i = 0; i < 64; i++) e = fmax(e, fabs(o2[i] - out[i]));
                CHECK(e < 1e-5);
            }
        }
        free(kpos);
        fx_close(&f);
        tm_free(&m);
    }
    /* Remapping needs keys stored before RoPE. */
    eg_session_config c;
    tm_config(&c, 1, 1, 1, 16, 16, 16, EG_CODEC_F32);
    fx f;
    tm_model m;
    tm_init(&m, &c, 40, 1);
    REQUIRE(fx_open(&f, "eng-rope2", &c) == 0);
    CHECK_EN(tm_append(&m, f.s, 40, -1, 0));
    float q[16] = {1}, out[16];
    int64_t p = 40;
    eg_attend_req r;
    eg_attend_req_init(&r);
    r.n_queries = 1; r.q = q; r.pos = &p; r.remap_positions = 1;
    eg_attend_result res = {out, NULL, NULL, 0, 0, 0, 0};
    CHECK_CODE(eg_engine_attend(f.s, &r, &res), EG_EN_EOPTION);
    fx_close(&f);
    tm_free(&m);
}

/* Tags: routed segments carry one of the given tags; sinks, recent window
 * and open rows stay. */
static void t_tags(void)
{
    eg_session_config c;
    tm_config(&c, 1, 1, 2, 16, 16, 16, EG_CODEC_Q8);
    fx f;
    tm_model m;
    tm_init(&m, &c, 320, 300);
    REQUIRE(fx_open(&f, "eng-tags", &c) == 0);
    uint32_t docs[5] = {1, 2, 3, 2, 1};
    uint32_t lens[5] = {64, 64, 64, 64, 40};
    for (int i = 0; i < 5; i++) CHECK_EN(tm_append(&m, f.s, lens[i], -1, docs[i]));
    float q[32];
    tm_queries(q, 32, 4, 0.5f);
    int64_t p = 296;
    uint32_t want = 2;
    eg_attend_req r;
    eg_attend_req_init(&r);
    r.n_queries = 1; r.q = q; r.pos = &p; r.recent_tokens = 0; r.budget_tokens = 4096;
    r.tags = &want; r.n_tags = 1;
    eg_select_result sr;
    CHECK_EN(eg_engine_select(f.s, &r, &sr));
    REQUIRE(sr.offsets);
    CHECK_EQ_INT(sr.n_forced[0], 1);
    CHECK_EQ_INT(sr.segments[0], 0);
    CHECK_EQ_INT(sr.offsets[1], 9);
    uint8_t inc[296] = {0};
    for (size_t i = 0; i < sr.offsets[1]; i++) {
        int64_t sg = sr.segments[i];
        if (i >= 1) CHECK((sg >= 4 && sg <= 7) || (sg >= 12 && sg <= 15));
        for (int t = 0; t < 16; t++) inc[sg * 16 + t] = 1;
    }
    for (int t = 288; t < 296; t++) inc[t] = 1;
    /* attention over exactly that set (decoded keys) */
    float K[296 * 16], V[296 * 16], out[32], lse[2];
    for (int sg = 0; sg < 19; sg++) {
        uint32_t rows;
        CHECK_EN(eg_engine_fetch(f.s, 0, 0, (uint64_t)sg, K + sg * 16 * 16, V + sg * 16 * 16, &rows));
    }
    eg_attend_result res = {out, lse, NULL, 0, 0, 0, 0};
    CHECK_EN(eg_engine_attend(f.s, &r, &res));
    for (int g = 0; g < 2; g++) {
        double ro[16], rl;
        ref_row(q + g * 16, K, V, 296, inc, 295, 16, 16, 0.25, ro, &rl);
        for (int d = 0; d < 16; d++) CHECK(fabs(out[g * 16 + d] - ro[d]) < 1e-5 * fmax(1, fabs(ro[d])));
    }
    eg_select_result_free(&sr);
    fx_close(&f);
    tm_free(&m);
}

/* The oracle router (dense's per-segment mass) keeps at least as much mass
 * as quest at the same budget, summed over a kv-head's rows. */
static void t_oracle(void)
{
    eg_session_config c;
    tm_config(&c, 1, 2, 4, 32, 16, 16, EG_CODEC_Q8);
    fx f;
    tm_model m;
    tm_init(&m, &c, 1100, 400);
    REQUIRE(fx_open(&f, "eng-oracle", &c) == 0);
    CHECK_EN(tm_append(&m, f.s, 1024, -1, 0));
    float q[4 * 32], out[4 * 16], lall[4], lq[4], lo[4], mass[2 * 64];
    tm_queries(q, 4 * 32, 5, 0.6f);
    int64_t p = 1024;
    eg_attend_req r;
    eg_attend_req_init(&r);
    r.n_queries = 1; r.q = q; r.pos = &p; r.budget_tokens = 16 * 6; r.recent_tokens = 0;
    eg_attend_result rd = {out, lall, NULL, 0, 0, 0, 0}, rq = {out, lq, NULL, 0, 0, 0, 0},
                     ro = {out, lo, NULL, 0, 0, 0, 0};
    CHECK_EN(eg_engine_attend_dense(f.s, &r, &rd, mass));
    double tot = 0;
    for (int i = 0; i < 128; i++) tot += mass[i];
    CHECK(fabs(tot - 4.0) < 1e-3); /* four rows, each mass 1 */
    CHECK_EN(eg_engine_attend(f.s, &r, &rq));
    r.router = EG_ROUTER_ORACLE;
    r.oracle_mass = mass;
    CHECK_EN(eg_engine_attend(f.s, &r, &ro));
    for (int h = 0; h < 2; h++) {
        double fq = 0, fo = 0;
        for (int g = 0; g < 2; g++) {
            fq += exp(lq[h * 2 + g] - lall[h * 2 + g]);
            fo += exp(lo[h * 2 + g] - lall[h * 2 + g]);
        }
        CHECK(fo >= fq - 1e-5);
    }
    r.oracle_mass = NULL;
    CHECK_CODE(eg_engine_attend(f.s, &r, &ro), EG_EN_EROUTER);
    r.router = EG_ROUTER_CENTROID;
    CHECK_EN(eg_engine_attend(f.s, &r, &ro));
    r.router = EG_ROUTER_LEARNED;
    CHECK_EN(eg_engine_attend(f.s, &r, &ro));
    r.router = EG_ROUTER_INDEXER;     /* needs index keys the engine does not store */
    CHECK_CODE(eg_engine_attend(f.s, &r, &ro), EG_EN_EROUTER);
    r.router = (eg_router_kind)77;
    CHECK_CODE(eg_engine_attend(f.s, &r, &ro), EG_EN_EROUTER);
    fx_close(&f);
    tm_free(&m);
}

/* Consecutive identical queries page nothing in; a window too small for
 * one step still answers the same. */
static void t_window(void)
{
    eg_session_config c;
    tm_config(&c, 1, 2, 4, 32, 16, 16, EG_CODEC_Q4);
    for (int small = 0; small < 2; small++) {
        fx f;
        tm_model m;
        tm_init(&m, &c, 800, 500);
        REQUIRE(fx_open_window(&f, "eng-win", &c, small ? 4096 : 0) == 0);
        CHECK_EN(tm_append(&m, f.s, 800, -1, 0));
        float q[4 * 32], o1[64], o2[64];
        tm_queries(q, 128, 8, 0.5f);
        int64_t p = 800;
        eg_attend_req r;
        eg_attend_req_init(&r);
        r.n_queries = 1; r.q = q; r.pos = &p; r.budget_tokens = 16 * 8;
        eg_attend_result a = {o1, NULL, NULL, 0, 0, 0, 0}, b = {o2, NULL, NULL, 0, 0, 0, 0};
        CHECK_EN(eg_engine_attend(f.s, &r, &a));
        CHECK_EN(eg_engine_attend(f.s, &r, &b));
        CHECK(a.page_ins > 0);
        CHECK(a.page_ins == a.segments);
        if (small) CHECK(b.page_ins > 0);
        else CHECK_EQ_INT(b.page_ins, 0);
        CHECK(memcmp(o1, o2, sizeof o1) == 0);
        eg_engine_session_stats st;
        CHECK_EN(eg_engine_session_stats_get(f.s, &st));
        CHECK_EQ_INT(st.attends, 2);
        CHECK_EQ_INT(st.page_ins, a.page_ins + b.page_ins);
        if (small) CHECK(st.window_bytes <= 4096 && st.window_evictions > 0);
        else CHECK(st.window_hits >= a.segments);
        fx_close(&f);
        tm_free(&m);
    }
}

/* The window keeps blocks as stored by default and decodes them when
 * attended; window_f32 keeps them decoded. Both give the same bits for
 * every codec, with and without RoPE, decode steps, chunks and remapped
 * positions, and the stored window holds the block's bytes, not f32's. */
static void t_window_stored_vs_f32(void)
{
    int codecs[] = {EG_CODEC_F32, EG_CODEC_F16, EG_CODEC_Q8, EG_CODEC_Q4};
    for (size_t ci = 0; ci < 4; ci++)
        for (int rope = 0; rope < 2; rope++) {
            eg_session_config c;
            tm_config(&c, 2, 2, 6, 64, 32, 16, codecs[ci]);
            c.rope_mode = rope ? EG_ROPE_HALF : EG_ROPE_NONE;
            char dir[512];
            tu_tmpdir(dir, sizeof dir, "eng-wf32");
            tm_model m;
            tm_init(&m, &c, 700, 900 + ci);
            float q[8 * 6 * 64], out[2][8 * 6 * 32], lse[2][8 * 6];
            int64_t pos[8];
            for (int i = 0; i < 8; i++) pos[i] = 600 + 11 * i;
            tm_queries(q, sizeof q / sizeof *q, 77, 0.5f);
            double per_entry[2] = {0, 0};
            for (int f32 = 0; f32 < 2; f32++) {
                eg_engine_options o;
                eg_engine_options_init(&o);
                o.store.sync_mode = EG_SYNC_NONE;
                o.n_threads = 2;
                o.window_f32 = f32;
                eg_engine *e;
                eg_engine_session *s;
                REQUIRE(eg_engine_open(dir, &o, &e) == 0);
                if (!f32) {
                    CHECK_EN(eg_engine_session_create(e, "s", &c));
                    CHECK_EN(eg_engine_session_open(e, "s", NULL, &s));
                    CHECK_EN(tm_append(&m, s, 700, -1, 0));
                } else CHECK_EN(eg_engine_session_open(e, "s", NULL, &s));
                eg_attend_req r;
                eg_attend_req_init(&r);
                r.layer = 1; r.n_queries = 8; r.q = q; r.pos = pos; r.budget_tokens = 16 * 10;
                r.remap_positions = rope;
                eg_attend_result a = {out[f32], lse[f32], NULL, 0, 0, 0, 0};
                CHECK_EN(eg_engine_attend(s, &r, &a));
                eg_engine_session_stats st;
                CHECK_EN(eg_engine_session_stats_get(s, &st));
                CHECK(st.window_entries > 0);
                per_entry[f32] = st.window_entries ? (double)st.window_bytes / st.window_entries : 0;
                eg_engine_close(e);
            }
            CHECK(memcmp(out[0], out[1], sizeof out[0]) == 0);
            CHECK(memcmp(lse[0], lse[1], sizeof lse[0]) == 0);
            size_t kb, vb, f32b = 16 * (64 + 32) * 4;
            eg_codec_size(codecs[ci], EG_KIND_K, 16, 64, &kb);
            eg_codec_size(codecs[ci], EG_KIND_V, 16, 32, &vb);
            size_t want = rope ? 16 * 64 * 4 + vb : kb + vb;   /* RoPE keys are kept rotated in f32 */
            if (codecs[ci] == EG_CODEC_F32) want = f32b;
            CHECK(per_entry[1] >= f32b && per_entry[1] < f32b + 512);
            CHECK(per_entry[0] >= want && per_entry[0] < want + 512);
            tu_rmrf(dir);
            tm_free(&m);
        }
}

static void check_ref(fx *f, tm_model *m, eg_engine_session *s, int64_t p, const char *what)
{
    float q[4 * 32], out[4 * 16];
    tm_queries(q, 128, (uint64_t)p, 0.5f);
    eg_attend_req r;
    eg_attend_req_init(&r);
    r.n_queries = 1; r.q = q; r.pos = &p; r.budget_tokens = 1 << 20;
    eg_attend_result res = {out, NULL, NULL, 0, 0, 0, 0};
    CHECK_EN(eg_engine_attend(s, &r, &res));
    int bad = 0;
    for (int qh = 0; qh < 4; qh++) {
        double ro[16], rl;
        ref_row(q + qh * 32, tm_k(m, 0, qh / 2, 0), tm_v(m, 0, qh / 2, 0), m->T, NULL, p - 1, 32, 16,
                1 / sqrt(32), ro, &rl);
        for (int d = 0; d < 16; d++) if (fabs(out[qh * 16 + d] - ro[d]) > 1e-5 * fmax(1, fabs(ro[d]))) bad++;
    }
    if (bad) fprintf(stderr, "  %s: %d values off\n", what, bad);
    CHECK_EQ_INT(bad, 0);
    (void)f;
}

/* Truncate, re-append other data, fork and drop: attention always follows. */
static void t_lifecycle(void)
{
    eg_session_config c;
    tm_config(&c, 1, 2, 4, 32, 16, 16, EG_CODEC_F32);
    fx f;
    tm_model m;
    tm_init(&m, &c, 400, 600);
    REQUIRE(fx_open(&f, "eng-life", &c) == 0);
    CHECK_EN(tm_append(&m, f.s, 300, -1, 0));
    check_ref(&f, &m, f.s, 300, "before truncate");
    CHECK_EN(eg_engine_session_truncate(f.s, 150));
    m.T = m.lt[0] = 150;
    check_ref(&f, &m, f.s, 150, "after truncate");
    m.seed = 601; /* other data at the same positions: stale summaries or window would show */
    CHECK_EN(tm_append(&m, f.s, 100, -1, 0));
    check_ref(&f, &m, f.s, 250, "re-appended");
    check_ref(&f, &m, f.s, 170, "re-appended, mid");
    CHECK_EN(eg_engine_session_fork(f.e, "s", "child", 200));
    eg_engine_session *ch;
    CHECK_EN(eg_engine_session_open(f.e, "child", NULL, &ch));
    check_ref(&f, &m, ch, 200, "fork");
    CHECK_CODE(eg_engine_session_drop(f.e, "child"), EG_EBUSY);
    CHECK_EN(eg_engine_session_close(ch));
    CHECK_CODE(eg_engine_session_close(ch), EG_EN_ECLOSED);
    CHECK_EN(eg_engine_session_drop(f.e, "child"));
    CHECK_CODE(eg_engine_session_open(f.e, "child", NULL, &ch), EG_ENOTFOUND);
    /* a second handle to the same session shares it; closing one keeps the other */
    eg_engine_session *h2;
    CHECK_EN(eg_engine_session_open(f.e, "s", NULL, &h2));
    CHECK_EN(eg_engine_session_close(h2));
    check_ref(&f, &m, f.s, 250, "other handle closed");
    fx_close(&f);
    tm_free(&m);
}

/* ---- resume: quest and ball snapshots ---------------------------------------------- */
/* The router of the snapshot test and its snapshot record kind (engine's
 * EN_REC_SNAP, EN_REC_SNAP_BALL): the test runs with both. */
static eg_router_kind g_snap_router = EG_ROUTER_QUEST;
static uint32_t g_snap_kind = 4u;

static int reopen(fx *f)
{
    eg_engine_close(f->e);
    eg_engine_options o;
    eg_engine_options_init(&o);
    o.store.sync_mode = EG_SYNC_NONE;
    o.n_threads = 2;
    int rc = eg_engine_open(f->dir, &o, &f->e);
    if (!rc) rc = eg_engine_session_open(f->e, "s", NULL, &f->s);
    return rc;
}

/* Decode queries at the session's end on both layers, outputs and bounds
 * into out / lost (2 layers x 2 queries x 4 q heads). */
static void snap_attend(fx *f, int64_t T, float *out, float *lost)
{
    float q[2 * 4 * 32];
    tm_queries(q, sizeof q / sizeof *q, 4321, 0.5f);
    int64_t pos[2] = {T, T - 7};
    for (uint32_t l = 0; l < 2; l++) {
        eg_attend_req r;
        eg_attend_req_init(&r);
        r.layer = l; r.n_queries = 2; r.q = q; r.pos = pos; r.budget_tokens = 16 * 24;
        r.router = g_snap_router;
        eg_attend_result a = {out + l * 2 * 4 * 16, NULL, lost + l * 8, 0, 0, 0, 0};
        CHECK_EN(eg_engine_attend(f->s, &r, &a));
    }
}

/* Quest tables of the session so far: from snapshots, rebuilt. */
static void snap_stats(fx *f, uint64_t from, uint64_t rebuilt)
{
    eg_engine_session_stats st;
    CHECK_EN(eg_engine_session_stats_get(f->s, &st));
    CHECK_EQ_INT(st.tables_from_snapshot, from);
    CHECK_EQ_INT(st.tables_rebuilt, rebuilt);
}

/* Snapshot records of the session: how many (layer, kv-head) have one. */
static int snap_count(fx *f, const char *name)
{
    eg_msession *ms;
    if (eg_session_open(eg_engine_store(f->e), name, NULL, &ms)) return -1;
    int n = 0;
    for (uint32_t l = 0; l < 2; l++)
        for (uint32_t h = 0; h < 2; h++) {
            void *b = NULL;
            size_t len;
            if (eg_record_get_session(ms, l, h, g_snap_kind, 0, &b, &len) == 0) n++;
            free(b);
        }
    eg_session_close(ms);
    return n;
}

/* A session closed with its quest tables loaded stores them; reopened, it
 * loads them and answers bit for bit as before, also after appending past
 * the snapshot; a damaged snapshot is rebuilt from the summaries (same
 * answers); truncate removes snapshots and a fork has none. */
static void t_resume_snapshot(void)
{
    eg_session_config c;
    tm_config(&c, 2, 2, 4, 32, 16, 16, EG_CODEC_Q8);
    fx f;
    tm_model m;
    tm_init(&m, &c, 16 * 800, 700);
    REQUIRE(fx_open(&f, "eng-snap", &c) == 0);
    CHECK_EN(tm_append(&m, f.s, 16 * 600 + 5, -1, 0));
    float o1[2 * 2 * 4 * 16], o2[sizeof o1 / 4], l1[16], l2[16];
    snap_attend(&f, 16 * 600 + 5, o1, l1);
    snap_stats(&f, 0, 4);
    CHECK_EQ_INT(snap_count(&f, "s"), 0);          /* written at close, not before */
    REQUIRE(reopen(&f) == 0);
    CHECK_EQ_INT(snap_count(&f, "s"), 4);
    snap_attend(&f, 16 * 600 + 5, o2, l2);          /* loaded from the snapshots */
    snap_stats(&f, 4, 0);
    CHECK(memcmp(o1, o2, sizeof o1) == 0 && memcmp(l1, l2, sizeof l1) == 0);
    /* Past the snapshot: its segments loaded, the newer synced from records. */
    CHECK_EN(tm_append(&m, f.s, 16 * 100, -1, 0));
    int64_t T = 16 * 700 + 5;
    snap_attend(&f, T, o1, l1);
    REQUIRE(reopen(&f) == 0);                       /* grew by 100 of 600: not rewritten */
    snap_attend(&f, T, o2, l2);
    snap_stats(&f, 4, 0);
    CHECK(memcmp(o1, o2, sizeof o1) == 0 && memcmp(l1, l2, sizeof l1) == 0);
    /* Damage every snapshot record (checksum-valid junk as far as the store
     * is concerned): ignored, the tables rebuilt, the same answers. */
    eg_msession *ms;
    REQUIRE(eg_session_open(eg_engine_store(f.e), "s", NULL, &ms) == 0);
    unsigned char junk[64];
    memset(junk, 0x5a, sizeof junk);
    for (uint32_t l = 0; l < 2; l++)
        for (uint32_t h = 0; h < 2; h++) CHECK_OK(eg_record_put_session(ms, l, h, g_snap_kind, 0, junk, sizeof junk));
    eg_session_close(ms);
    REQUIRE(reopen(&f) == 0);
    snap_attend(&f, T, o2, l2);
    snap_stats(&f, 0, 4);
    CHECK(memcmp(o1, o2, sizeof o1) == 0 && memcmp(l1, l2, sizeof l1) == 0);
    /* A fork has none of its own; truncate removes the session's. */
    CHECK_EN(eg_engine_session_fork(f.e, "s", "child", 16 * 650));
    CHECK_EQ_INT(snap_count(&f, "child"), 0);
    CHECK_EN(eg_engine_session_truncate(f.s, 16 * 650));
    CHECK_EQ_INT(snap_count(&f, "s"), 0);
    m.T = m.lt[0] = m.lt[1] = 16 * 650;
    snap_attend(&f, 16 * 650, o1, l1);
    REQUIRE(reopen(&f) == 0);                       /* stored again at this close: 650 segments */
    CHECK_EQ_INT(snap_count(&f, "s"), 4);
    snap_attend(&f, 16 * 650, o2, l2);
    snap_stats(&f, 4, 0);
    CHECK(memcmp(o1, o2, sizeof o1) == 0 && memcmp(l1, l2, sizeof l1) == 0);
    fx_close(&f);
    tm_free(&m);
}

static void t_resume_snapshot_ball(void)
{
    g_snap_router = EG_ROUTER_BALL;
    g_snap_kind = 6u;
    t_resume_snapshot();
    g_snap_router = EG_ROUTER_QUEST;
    g_snap_kind = 4u;
}

/* A seal hook as engines before the ball router had: the quest record
 * (engine's EN_REC_QUEST, kind 1: u32 tag, then the box) and no radius. */
static int old_seal_hook(void *user, const eg_seal_view *v, eg_seal_ctx *ctx)
{
    (void)user;
    eg_summary_spec sq = {EG_ROUTER_QUEST, (int)v->head_dim_k, (int)v->n_tokens, NULL, 0};
    size_t bq;
    int rc = eg_summary_bytes(&sq, &bq);
    unsigned char *buf = rc ? NULL : malloc(4 + bq);
    if (!buf) return -1;
    memcpy(buf, &v->tags[0], 4);
    rc = eg_summary_compute(&sq, v->keys, buf + 4, bq);
    if (!rc) rc = eg_seal_put_record(ctx, 1u, buf, 4 + bq);
    free(buf);
    return rc;
}

/* As old_seal_hook, and a radius record (engine's EN_REC_RADIUS, kind 5)
 * holding NaN: a damaged record that passed the store's checksum. */
static int nan_radius_hook(void *user, const eg_seal_view *v, eg_seal_ctx *ctx)
{
    int rc = old_seal_hook(user, v, ctx);
    float nan = NAN;
    return rc ? rc : eg_seal_put_record(ctx, 5u, &nan, 4);
}

/* A NaN radius fails the ball's calls with EG_IX_ECORRUPT and a message
 * naming the table, and loses nothing: quest still routes the session. */
static void t_ball_bad_radius(void)
{
    eg_session_config c;
    tm_config(&c, 1, 2, 4, 32, 16, 16, EG_CODEC_Q8);
    fx f;
    tm_model m;
    tm_init(&m, &c, 16 * 20, 77);
    REQUIRE(fx_open(&f, "eng-nanball", &c) == 0);
    CHECK_OK(eg_store_set_seal_hook(eg_engine_store(f.e), nan_radius_hook, NULL));
    CHECK_EN(tm_append(&m, f.s, 16 * 12, -1, 0));
    float q[4 * 32], out[4 * 16], lost[4];
    tm_queries(q, sizeof q / sizeof *q, 5, 0.5f);
    int64_t pos = 16 * 12;
    eg_attend_req r;
    eg_attend_req_init(&r);
    r.n_queries = 1; r.q = q; r.pos = &pos; r.budget_tokens = 16 * 3;
    eg_attend_result a = {out, NULL, lost, 0, 0, 0, 0};
    CHECK_EQ_INT(eg_engine_attend(f.s, &r, &a), EG_IX_ECORRUPT);
    CHECK(strstr(eg_engine_last_error(), "radius") != NULL);
    eg_select_result sr;
    CHECK_EQ_INT(eg_engine_select(f.s, &r, &sr), EG_IX_ECORRUPT);
    r.router = EG_ROUTER_QUEST;
    CHECK_EN(eg_engine_attend(f.s, &r, &a));
    for (int i = 0; i < 4; i++) CHECK(lost[i] >= 0.0f && lost[i] <= 1.0f);
    fx_close(&f);
    tm_free(&m);
}

/* Segments sealed before radii were stored (their balls the boxes'
 * half-diagonals, counted as unmeasured): a ball call on the layer is
 * served by the quest table, which the engine loads for it, and its bound
 * holds the true lost mass; the selection is quest's. */
static void t_ball_without_radii(void)
{
    eg_session_config c;
    tm_config(&c, 1, 2, 4, 32, 16, 16, EG_CODEC_Q8);
    fx f, g;
    tm_model m, m2;
    tm_init(&m, &c, 16 * 70, 901);
    tm_init(&m2, &c, 16 * 70, 901);
    REQUIRE(fx_open(&f, "eng-oldball", &c) == 0 && fx_open(&g, "eng-newball", &c) == 0);
    CHECK_OK(eg_store_set_seal_hook(eg_engine_store(f.e), old_seal_hook, NULL));
    CHECK_EN(tm_append(&m, f.s, 16 * 40 + 3, -1, 0));   /* 40 segments without radii */
    REQUIRE(reopen(&f) == 0);                             /* the engine's hook again */
    CHECK_EN(tm_append(&m, f.s, 16 * 25, -1, 0));        /* 25 more with them */
    CHECK_EN(tm_append(&m2, g.s, 16 * 65 + 3, -1, 0));   /* the same tokens, every radius stored */
    int64_t T = 16 * 65 + 3;
    float q[2 * 4 * 32];
    tm_queries(q, sizeof q / sizeof *q, 77, 0.6f);
    int64_t pos[2] = {T, 16 * 30};
    float out[2 * 4 * 16], lse[8], lost[8], dout[2 * 4 * 16], dlse[8], lost2[8];
    eg_attend_req r;
    eg_attend_req_init(&r);
    r.n_queries = 2; r.q = q; r.pos = pos; r.budget_tokens = 16 * 4; r.router = EG_ROUTER_BALL;
    eg_attend_result a = {out, lse, lost, 0, 0, 0, 0}, d = {dout, dlse, NULL, 0, 0, 0, 0};
    eg_attend_result b = {dout, NULL, lost2, 0, 0, 0, 0};
    eg_engine_session_stats st0, st1, sg;
    CHECK_EN(eg_engine_session_stats_get(f.s, &st0));
    CHECK_EN(eg_engine_attend(f.s, &r, &a));
    CHECK_EN(eg_engine_session_stats_get(f.s, &st1));
    CHECK_EN(eg_engine_attend_dense(f.s, &r, &d, NULL));
    for (int i = 0; i < 8; i++) {
        double truth = 1 - exp((double)lse[i] - dlse[i]);
        CHECK(lost[i] + 1e-6 >= truth);
        CHECK(lost[i] < 1.0f);
    }
    /* ball and quest tables built for the call, 2 kv-heads each; with
     * every radius measured, the ball's alone */
    CHECK_EQ_INT(st1.tables_rebuilt - st0.tables_rebuilt, 4);
    eg_select_result sb, sq;
    CHECK_EN(eg_engine_select(f.s, &r, &sb));
    r.router = EG_ROUTER_QUEST;
    CHECK_EN(eg_engine_select(f.s, &r, &sq));
    r.router = EG_ROUTER_BALL;
    CHECK_EQ_INT(sb.offsets[2], sq.offsets[2]);
    for (size_t i = 0; i < sb.offsets[2] && i < sq.offsets[2]; i++) CHECK(sb.segments[i] == sq.segments[i]);
    eg_select_result_free(&sb);
    eg_select_result_free(&sq);
    CHECK_EN(eg_engine_session_stats_get(g.s, &st0));
    CHECK_EN(eg_engine_attend(g.s, &r, &b));
    CHECK_EN(eg_engine_session_stats_get(g.s, &sg));
    CHECK_EQ_INT(sg.tables_rebuilt - st0.tables_rebuilt, 2);
    for (int i = 0; i < 8; i++) CHECK(lost2[i] >= 0.0f && lost2[i] <= 1.0f);
    /* A fork carries the radii of the segments it shares: its ball tables
     * are measured (no quest table loaded for the bound). */
    CHECK_EN(eg_engine_session_fork(g.e, "s", "child", 16 * 50));
    eg_engine_session *ch;
    CHECK_EN(eg_engine_session_open(g.e, "child", NULL, &ch));
    int64_t cpos[2] = {16 * 50, 16 * 20};
    r.pos = cpos;
    CHECK_EN(eg_engine_session_stats_get(ch, &st0));
    CHECK_EN(eg_engine_attend(ch, &r, &b));
    CHECK_EN(eg_engine_session_stats_get(ch, &sg));
    CHECK_EQ_INT(sg.tables_rebuilt - st0.tables_rebuilt, 2);
    CHECK_EN(eg_engine_session_close(ch));
    fx_close(&f);
    fx_close(&g);
    tm_free(&m);
    tm_free(&m2);
}

/* ---- threads --------------------------------------------------------------- */
typedef struct {
    eg_engine_session *s[2];
    float *q;
    int64_t *pos;
    float *want;     /* [2][NQ][8 q heads * 16] */
    int mismatches, errors;
    int appender;    /* set for the one thread that appends */
    tm_model *m;
} thr_ctx;
enum { NQ = 12 };

static void one(eg_engine_session *s, const float *q, int64_t *p, float *out, int *err)
{
    eg_attend_req r;
    eg_attend_req_init(&r);
    r.n_queries = 1; r.q = q; r.pos = p; r.budget_tokens = 16 * 6;
    eg_attend_result res = {out, NULL, NULL, 0, 0, 0, 0};
    if (eg_engine_attend(s, &r, &res)) (*err)++;
}

static void *thr(void *arg)
{
    thr_ctx *c = arg;
    if (c->appender) { /* appends race the readers; their positions are all sealed already */
        int err = 0;
        for (int i = 0; i < 40; i++) if (tm_append(c->m, c->s[0], 7, -1, 0)) err++;
        __atomic_add_fetch(&c->errors, err, __ATOMIC_RELAXED);
        c->appender = 0;
        return NULL;
    }
    float out[128];
    int err = 0, mm = 0;
    for (int rep = 0; rep < 3; rep++)
        for (int i = 0; i < NQ; i++)
            for (int k = 0; k < 2; k++) {
                one(c->s[k], c->q + i * 256, &c->pos[i], out, &err);
                if (memcmp(out, c->want + ((size_t)k * NQ + i) * 128, sizeof out)) mm++;
            }
    __atomic_add_fetch(&c->mismatches, mm, __ATOMIC_RELAXED);
    __atomic_add_fetch(&c->errors, err, __ATOMIC_RELAXED);
    return NULL;
}

static void t_threads(void)
{
    eg_session_config c;
    tm_config(&c, 1, 2, 8, 32, 16, 16, EG_CODEC_Q8);
    fx f;
    tm_model m, m2;
    tm_init(&m, &c, 1000, 700);
    tm_init(&m2, &c, 700, 701);
    REQUIRE(fx_open_window(&f, "eng-thr", &c, 64 << 10) == 0); /* small window: evictions race too */
    CHECK_EN(eg_engine_session_create(f.e, "t", &c));
    thr_ctx tc;
    memset(&tc, 0, sizeof tc);
    tc.s[0] = f.s;
    CHECK_EN(eg_engine_session_open(f.e, "t", NULL, &tc.s[1]));
    CHECK_EN(tm_append(&m, tc.s[0], 700, -1, 0));
    CHECK_EN(tm_append(&m2, tc.s[1], 700, -1, 0));
    float q[NQ * 256], want[2 * NQ * 128];
    int64_t pos[NQ];
    tm_queries(q, NQ * 256, 77, 0.6f);
    for (int i = 0; i < NQ; i++) pos[i] = 688 - i * 41; /* all sealed: appends do not change what they see */
    int err = 0;
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < NQ; i++) one(tc.s[k], q + i * 256, &pos[i], want + ((size_t)k * NQ + i) * 128, &err);
    CHECK_EQ_INT(err, 0);
    tc.q = q; tc.pos = pos; tc.want = want;
    pthread_t th[4];
    for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, thr, &tc);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    CHECK_EQ_INT(tc.errors, 0);
    CHECK_EQ_INT(tc.mismatches, 0);
    /* Again while a fifth thread appends to the first session. */
    thr_ctx tc2 = tc;
    tc2.mismatches = tc2.errors = 0;
    thr_ctx ta = tc2;
    ta.appender = 1;
    ta.m = &m;
    pthread_t tap;
    pthread_create(&tap, NULL, thr, &ta);
    for (int i = 0; i < 3; i++) pthread_create(&th[i], NULL, thr, &tc2);
    for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    pthread_join(tap, NULL);
    CHECK_EQ_INT(ta.errors, 0);
    CHECK_EQ_INT(tc2.errors, 0);
    CHECK_EQ_INT(tc2.mismatches, 0);
    eg_session_info info;
    CHECK_EN(eg_engine_session_info(tc.s[0], &info));
    CHECK_EQ_INT(info.n_tokens, 700 + 40 * 7);
    fx_close(&f);
    tm_free(&m);
    tm_free(&m2);
}

/* ---- idle workers: polling, then sleeping ------------------------------------------ */
typedef struct { eg_engine_session *s; const float *q; int64_t *pos; const float *want; int mism, err, seed; } poll_ctx;

static void nap_us(long us)
{
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    nanosleep(&ts, NULL);
}

/* Calls with gaps that cross every idle state of the pool's worker:
 * spinning (none), polling (0.2 ms), and, past a 1 ms poll window,
 * asleep (5 ms), where a call must signal it. */
static void *poll_thr(void *arg)
{
    poll_ctx *c = arg;
    static const long gaps[] = { 0, 200, 5000, 0, 1500, 50 };
    float out[128];
    for (int i = 0; i < 12; i++) {
        nap_us(gaps[(i + c->seed) % 6]);
        int k = (i + c->seed) % NQ;
        one(c->s, c->q + k * 256, &c->pos[k], out, &c->err);
        if (memcmp(out, c->want + (size_t)k * 128, sizeof out)) c->mism++;
    }
    return NULL;
}

static void t_idle_poll(void)
{
    eg_session_config c;
    tm_config(&c, 1, 2, 8, 32, 16, 16, EG_CODEC_Q8);   /* as t_threads: one() and its buffers */
    fx f;
    tm_model m;
    tm_init(&m, &c, 900, 702);
    REQUIRE(fx_open(&f, "eng-poll", &c) == 0);
    CHECK_EN(tm_append(&m, f.s, 900, -1, 0));
    float q[NQ * 256], want[NQ * 128];
    int64_t pos[NQ];
    tm_queries(q, NQ * 256, 78, 0.6f);
    for (int i = 0; i < NQ; i++) pos[i] = 899 - i * 37;
    int err = 0;
    for (int i = 0; i < NQ; i++) one(f.s, q + i * 256, &pos[i], want + (size_t)i * 128, &err);   /* defaults: polling */
    CHECK_EQ_INT(err, 0);
    /* out-of-range settings are refused */
    eg_engine_options o;
    eg_engine *e2 = NULL;
    int bad[4][2] = { { -2, 0 }, { EG_EN_POLL_US_MAX + 1, 0 }, { 0, -1 }, { 0, EG_EN_POLL_MS_MAX + 1 } };
    for (int b = 0; b < 4; b++) {
        eg_engine_options_init(&o);
        o.idle_poll_us = bad[b][0];
        o.idle_poll_ms = bad[b][1];
        CHECK_CODE(eg_engine_open(f.dir, &o, &e2), EG_EN_EINVAL);
    }
    /* never polling, and polling 1 ms: the same answers from 3 threads */
    int settings[2][2] = { { -1, 0 }, { 20, 1 } };
    for (int v = 0; v < 2; v++) {
        eg_engine_close(f.e);
        eg_engine_options_init(&o);
        o.store.sync_mode = EG_SYNC_NONE;
        o.n_threads = 2;
        o.idle_poll_us = settings[v][0];
        o.idle_poll_ms = settings[v][1];
        REQUIRE(eg_engine_open(f.dir, &o, &f.e) == 0);
        REQUIRE(eg_engine_session_open(f.e, "s", NULL, &f.s) == 0);
        poll_ctx pc[3];
        pthread_t th[3];
        for (int t = 0; t < 3; t++) {
            pc[t] = (poll_ctx){ f.s, q, pos, want, 0, 0, t * 2 + v };
            pthread_create(&th[t], NULL, poll_thr, &pc[t]);
        }
        for (int t = 0; t < 3; t++) {
            pthread_join(th[t], NULL);
            CHECK_EQ_INT(pc[t].err, 0);
            CHECK_EQ_INT(pc[t].mism, 0);
        }
        poll_ctx one_thread = { f.s, q, pos, want, 0, 0, v };
        poll_thr(&one_thread);   /* alone: the worker idles between calls */
        CHECK_EQ_INT(one_thread.err + one_thread.mism, 0);
    }
    fx_close(&f);
    tm_free(&m);
}

/* ---- bad input -------------------------------------------------------------- */
static void t_bad_input(void)
{
    eg_session_config c;
    tm_config(&c, 2, 2, 4, 16, 16, 16, EG_CODEC_Q8);
    fx f;
    tm_model m;
    tm_init(&m, &c, 100, 800);
    REQUIRE(fx_open(&f, "eng-bad", &c) == 0);
    CHECK_EN(tm_append(&m, f.s, 100, -1, 0));
    float q[5000 * 4 * 16 / 100 + 64] = {0}, out[4 * 16 * 2];
    int64_t p = 100, p2[2] = {50, 60};
    eg_attend_req r;
    eg_attend_result res = {out, NULL, NULL, 0, 0, 0, 0};
#define BAD(field_setup, code) do { eg_attend_req_init(&r); r.n_queries = 1; r.q = q; r.pos = &p; \
        field_setup; CHECK_CODE(eg_engine_attend(f.s, &r, &res), code); } while (0)
    BAD((void)0, 0);
    BAD(r.layer = 2, EG_EN_ELAYER);
    BAD(r.n_queries = 0, EG_EN_ESHAPE);
    BAD(r.n_queries = EG_EN_QUERIES_MAX + 1, EG_EN_ESHAPE);
    BAD(r.n_queries = 3000, EG_EN_ESHAPE);          /* 6000 rows to route */
    BAD(p = 101, EG_EN_EPOS);
    BAD((p = 100, r.include_self = 1), EG_EN_EPOS);
    BAD(p = -1, EG_EN_EPOS);
    p = 100;
    BAD(r.budget_tokens = 0, EG_EN_EBUDGET);
    BAD(r.budget_tokens = -5, EG_EN_EBUDGET);
    BAD(q[3] = NAN, EG_EN_ENONFINITE);
    q[3] = 0;
    BAD(q[17] = INFINITY, EG_EN_ENONFINITE);
    q[17] = 0;
    BAD(r.scale = NAN, EG_EN_ENONFINITE);
    BAD(r.scale = -1, EG_EN_ENONFINITE);
    BAD(r.max_lost = NAN, EG_EN_ENONFINITE);
    BAD(r.max_lost = 2, EG_EN_ENONFINITE);
    BAD(r.n_tags = 1, EG_EN_EINVAL);
    BAD(r.recent_tokens = -1, EG_EN_EINVAL);
    BAD(r.router = EG_ROUTER_INDEXER, EG_EN_EROUTER);
    BAD(r.q = NULL, EG_EN_EINVAL);
    BAD((r.n_queries = 2, r.pos = p2, p2[1] = 1000), EG_EN_EPOS);
    CHECK_CODE(eg_engine_attend(f.s, NULL, &res), EG_EN_EINVAL);
    eg_attend_req_init(&r);
    r.n_queries = 1; r.q = q; r.pos = &p;
    CHECK_CODE(eg_engine_attend(f.s, &r, NULL), EG_EN_EINVAL);
    CHECK_CODE(eg_engine_attend_dense(f.s, &r, NULL, NULL), EG_EN_EINVAL);
    eg_select_result sr;
    r.budget_tokens = 0;
    CHECK_CODE(eg_engine_select(f.s, &r, &sr), EG_EN_EBUDGET);
    CHECK(sr.offsets == NULL);
    /* fetch */
    float kb[16 * 16], vb[16 * 16];
    uint32_t rows;
    CHECK_CODE(eg_engine_fetch(f.s, 2, 0, 0, kb, vb, &rows), EG_EN_ELAYER);
    CHECK_CODE(eg_engine_fetch(f.s, 0, 2, 0, kb, vb, &rows), EG_EN_ESHAPE);
    CHECK_CODE(eg_engine_fetch(f.s, 0, 0, 7, kb, vb, &rows), EG_EN_ESEGMENT);
    CHECK_CODE(eg_engine_fetch(f.s, 0, 0, 0, kb, vb, NULL), EG_EN_EINVAL);
    CHECK_EN(eg_engine_fetch(f.s, 0, 0, 6, kb, vb, &rows));
    CHECK_EQ_INT(rows, 4);
    /* appends with bad input lose nothing */
    eg_append_req ar = {EG_DTYPE_F32, 1, 5, q, q, NULL, 0};
    CHECK(eg_engine_append(f.s, &ar, NULL) < 0);
    float nanrow[2 * 2 * 16];
    for (int i = 0; i < 64; i++) nanrow[i] = i == 9 ? NAN : 0.5f;
    eg_append_req an = {EG_DTYPE_F32, 1, -1, nanrow, nanrow, NULL, 0};
    CHECK_CODE(eg_engine_append(f.s, &an, NULL), EG_ENONFINITE);
    eg_session_info info;
    CHECK_EN(eg_engine_session_info(f.s, &info));
    CHECK_EQ_INT(info.n_tokens, 100);
    /* unknown and closed sessions, bad names */
    eg_engine_session *x;
    CHECK_CODE(eg_engine_session_open(f.e, "nope", NULL, &x), EG_ENOTFOUND);
    CHECK_CODE(eg_engine_session_open(f.e, "s", "other model", &x), EG_EFINGERPRINT);
    CHECK_CODE(eg_engine_session_create(f.e, "s", &c), EG_EEXIST);
    c.n_q_heads = 3;
    CHECK_CODE(eg_engine_session_create(f.e, "g", &c), EG_EGQA);
    CHECK_EN(eg_engine_session_close(f.s));
    CHECK_CODE(eg_engine_attend(f.s, &r, &res), EG_EN_ECLOSED);
    CHECK_CODE(eg_engine_append(f.s, &ar, NULL), EG_EN_ECLOSED);
    CHECK_CODE(eg_engine_fetch(f.s, 0, 0, 0, kb, vb, &rows), EG_EN_ECLOSED);
    CHECK_CODE(eg_engine_session_info(f.s, &info), EG_EN_ECLOSED);
    CHECK_CODE(eg_engine_session_truncate(f.s, 1), EG_EN_ECLOSED);
    CHECK_CODE(eg_engine_attend(NULL, &r, &res), EG_EN_EINVAL);
    CHECK(strcmp(eg_engine_strerror(EG_EN_EPOS), "unknown error") != 0);
    CHECK(strcmp(eg_engine_strerror(EG_ENOTFOUND), "unknown error") != 0);
    CHECK(strcmp(eg_engine_strerror(EG_IX_EBUDGET), "unknown error") != 0);
    fx_close(&f);
    tm_free(&m);
}

int main(void)
{
    TEST_RUN(t_rope_kernel);
    TEST_RUN(t_rope_session);
    TEST_RUN(t_tags);
    TEST_RUN(t_oracle);
    TEST_RUN(t_window);
    TEST_RUN(t_window_stored_vs_f32);
    TEST_RUN(t_resume_snapshot);
    TEST_RUN(t_resume_snapshot_ball);
    TEST_RUN(t_ball_without_radii);
    TEST_RUN(t_ball_bad_radius);
    TEST_RUN(t_lifecycle);
    TEST_RUN(t_threads);
    TEST_RUN(t_idle_poll);
    TEST_RUN(t_bad_input);
    TEST_END();
}
