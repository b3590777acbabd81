/* test_engine.c: the attention core against a plain double loop: sparse
 * equals dense equals the reference when the budget covers everything
 * (also after reopening), every codec within the error its bound allows,
 * the lost-mass bound against the true lost mass, max_lost, merge, causal
 * masks at segment edges and in the open segment, layers appended ahead,
 * GQA and MLA shapes. (RoPE, tags, window, lifecycle, bad input and threads
 * are in test_engine_api.c.) */
#include "engineutil.h"

/* Reference of every row of a call: row (i, qh) reads kv-head qh / G;
 * incl[h] (or NULL) limits the tokens, K[h]/V[h] (or NULL: the model's
 * raw rows) give them. */
static void ref_call(tm_model *m, uint32_t layer, const float *q, const int64_t *pos, uint32_t nq,
                     int self, double scale, uint8_t **incl, float **K, float **V, double *out,
                     double *lse)
{
    uint32_t QH = m->H * m->G;
    for (uint32_t i = 0; i < nq; i++)
        for (uint32_t qh = 0; qh < QH; qh++) {
            uint32_t h = qh / m->G;
            const float *kk = K && K[h] ? K[h] : tm_k(m, layer, h, 0);
            const float *vv = V && V[h] ? V[h] : tm_v(m, layer, h, 0);
            size_t o = (size_t)i * QH + qh;
            ref_row(q + o * m->dk, kk, vv, m->lt[layer], incl ? incl[h] : NULL,
                    pos[i] - 1 + (self ? 1 : 0), m->dk, m->dv, scale, out + o * m->dv, &lse[o]);
        }
}

/* max|a-b| / max|b| */
static double norm_err(const float *a, const double *b, size_t n)
{
    double num = 0, den = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (d > num || isnan(d)) num = isnan(d) ? INFINITY : d;
        if (fabs(b[i]) > den) den = fabs(b[i]);
    }
    return num / den;
}


/* Attend (sparse with req's options, or dense) and check against ref. */
static void check_call(fx *f, tm_model *m, eg_attend_req *r, int dense, double tol, const char *what)
{
    uint32_t QH = m->H * m->G;
    size_t rows = (size_t)r->n_queries * QH;
    float *out = malloc(rows * m->dv * 4), *lse = malloc(rows * 4), *lost = malloc(rows * 4);
    double *ro = malloc(rows * m->dv * 8), *rl = malloc(rows * 8);
    eg_attend_result res = {out, lse, lost, 0, 0, 0, 0};
    int rc = dense ? eg_engine_attend_dense(f->s, r, &res, NULL) : eg_engine_attend(f->s, r, &res);
    CHECK_EN(rc);
    if (!rc) {
        ref_call(m, r->layer, r->q, r->pos, r->n_queries, r->include_self,
                 r->scale ? r->scale : 1.0 / sqrt(m->dk), NULL, NULL, NULL, ro, rl);
        double e = norm_err(out, ro, rows * m->dv), le = 0;
        for (size_t i = 0; i < rows; i++) {
            double d = isinf(rl[i]) ? (isinf(lse[i]) ? 0 : INFINITY) : fabs(lse[i] - rl[i]) / fmax(1, fabs(rl[i]));
            if (d > le) le = d;
        }
        if (e > tol || le > tol)
            fprintf(stderr, "  %s (%s): output error %.3g, lse error %.3g (tolerance %.1g)\n", what,
                    dense ? "dense" : "sparse", e, le, tol);
        CHECK(e <= tol);
        CHECK(le <= tol);
        if (!dense) for (size_t i = 0; i < rows; i++) CHECK(lost[i] >= 0 && lost[i] <= 1e-6f);
    }
    free(out); free(lse); free(lost); free(ro); free(rl);
}

static void t_sparse_equals_dense(void)
{
    eg_session_config c;
    tm_config(&c, 2, 2, 6, 32, 24, 16, EG_CODEC_F32);
    fx f;
    tm_model m;
    tm_init(&m, &c, 400, 11);
    REQUIRE(fx_open(&f, "eng-sd", &c) == 0);
    CHECK_EN(tm_append(&m, f.s, 150, -1, 0));
    CHECK_EN(tm_append(&m, f.s, 37, -1, 0));
    CHECK_EN(tm_append(&m, f.s, 1, -1, 0));   /* 188 = 11 sealed + 12 open */
    float q[4 * 6 * 32];
    tm_queries(q, sizeof q / 4, 5, 0.4f);
    int64_t pos[4] = {188, 100, 17, 160};
    eg_attend_req r;
    eg_attend_req_init(&r);
    r.n_queries = 4; r.q = q; r.pos = pos; r.budget_tokens = 100000;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t l = 0; l < 2; l++) {
            r.layer = l;
            r.include_self = 0;
            check_call(&f, &m, &r, 0, 1e-5, "full budget");
            check_call(&f, &m, &r, 1, 1e-5, "dense");
            pos[0] = 187;
            r.include_self = 1;
            check_call(&f, &m, &r, 0, 1e-5, "include_self");
            pos[0] = 188;
            r.include_self = 0;
            r.router = EG_ROUTER_QUEST;   /* the default is the ball */
            check_call(&f, &m, &r, 0, 1e-5, "full budget, quest");
            r.router = EG_ROUTER_BALL;
        }
        /* Again over the reopened store. */
        CHECK_EN(eg_engine_close(f.e));
        eg_engine_options o;
        eg_engine_options_init(&o);
        CHECK_EN(eg_engine_open(f.dir, &o, &f.e));
        CHECK_EN(eg_engine_session_open(f.e, "s", NULL, &f.s));
    }
    fx_close(&f);
    tm_free(&m);
}

/* Every codec: attention over the decoded blocks equals the reference on
 * them (1e-5), and differs from the one on the appended values by no more
 * than the codec's per-element bounds allow. */
static void t_codecs_within_bound(void)
{
    for (int codec = EG_CODEC_F16; codec <= EG_CODEC_Q4; codec++) {
        eg_session_config c;
        tm_config(&c, 1, 2, 4, 32, 32, 16, codec);
        fx f;
        tm_model m;
        tm_init(&m, &c, 300, 20 + codec);
        REQUIRE(fx_open(&f, "eng-codec", &c) == 0);
        CHECK_EN(tm_append(&m, f.s, 200, -1, 0));
        uint32_t S = 16, nseal = 200 / S;
        float *dk = malloc(2 * 200 * 32 * 4), *dvv = malloc(2 * 200 * 32 * 4);
        float *kb = calloc(2 * 200 * 32, 4), *vb = calloc(2 * 200 * 32, 4);
        for (uint32_t h = 0; h < 2; h++) {
            for (uint32_t sg = 0; sg <= nseal; sg++) {
                uint32_t rows = 0;
                CHECK_EN(eg_engine_fetch(f.s, 0, h, sg, dk + (h * 200 + sg * S) * 32,
                                         dvv + (h * 200 + sg * S) * 32, &rows));
                CHECK_EQ_INT(rows, sg < nseal ? S : 200 - nseal * S);
                if (sg == nseal) continue;
                for (int kind = 0; kind < 2; kind++) {
                    size_t nb;
                    CHECK_OK(eg_codec_size(codec, kind, S, 32, &nb));
                    void *enc = malloc(nb);
                    const float *src = kind ? tm_v(&m, 0, h, sg * S) : tm_k(&m, 0, h, sg * S);
                    CHECK_OK(eg_codec_encode(codec, kind, src, S, 32, enc, nb));
                    CHECK_OK(eg_codec_error_bound(codec, kind, enc, nb, S, 32,
                                                  (kind ? vb : kb) + (h * 200 + sg * S) * 32));
                    free(enc);
                }
            }
        }
        float q[2 * 4 * 32];
        tm_queries(q, sizeof q / 4, 40 + codec, 0.3f);
        int64_t pos[2] = {200, 121};
        eg_attend_req r;
        eg_attend_req_init(&r);
        r.n_queries = 2; r.q = q; r.pos = pos; r.budget_tokens = 4096;
        float out[2 * 4 * 32], lse[8];
        eg_attend_result res = {out, lse, NULL, 0, 0, 0, 0};
        CHECK_EN(eg_engine_attend(f.s, &r, &res));
        double ro[2 * 4 * 32], rl[8], raw[2 * 4 * 32], rawl[8];
        float *K[2] = {dk, dk + 200 * 32}, *V[2] = {dvv, dvv + 200 * 32};
        ref_call(&m, 0, q, pos, 2, 0, 1.0 / sqrt(32), NULL, K, V, ro, rl);
        ref_call(&m, 0, q, pos, 2, 0, 1.0 / sqrt(32), NULL, NULL, NULL, raw, rawl);
        double e = norm_err(out, ro, sizeof out / 4);
        if (e > 1e-5) fprintf(stderr, "  codec %s: error %.3g against the decoded reference\n", eg_codec_name(codec), e);
        CHECK(e <= 1e-5);
        int over = 0;
        for (uint32_t i = 0; i < 2; i++)
            for (uint32_t qh = 0; qh < 4; qh++) {
                uint32_t h = qh / 2;
                const float *qq = q + (i * 4 + qh) * 32;
                double delta = 0;
                for (int64_t j = 0; j < pos[i]; j++) {
                    double d = 0;
                    for (int cc = 0; cc < 32; cc++) d += fabs(qq[cc]) * kb[(h * 200 + j) * 32 + cc];
                    if (d > delta) delta = d;
                }
                delta /= sqrt(32);
                for (int d = 0; d < 32; d++) {
                    double vmax = 0, vbm = 0;
                    for (int64_t j = 0; j < pos[i]; j++) {
                        vmax = fmax(vmax, fabs(tm_v(&m, 0, h, j)[d]));
                        vbm = fmax(vbm, vb[(h * 200 + j) * 32 + d]);
                    }
                    double bound = (exp(2 * delta) - 1) * vmax + vbm + 1e-5;
                    size_t o = (i * 4 + qh) * 32 + d;
                    if (fabs(out[o] - raw[o]) > bound) over++;
                }
            }
        if (over) fprintf(stderr, "  codec %s: %d outputs beyond their bound\n", eg_codec_name(codec), over);
        CHECK_EQ_INT(over, 0);
        free(dk); free(dvv); free(kb); free(vb);
        fx_close(&f);
        tm_free(&m);
    }
}

/* The selection of kv-head h as a token mask (forced, routed, open rows). */
static uint8_t *sel_mask(const eg_select_result *sr, uint32_t h, uint64_t T, uint32_t S, size_t n_routed)
{
    uint8_t *inc = calloc(T + 1, 1);
    size_t a = sr->offsets[h], nf = sr->n_forced[h], b = sr->offsets[h + 1];
    if (a + nf + n_routed < b) b = a + nf + n_routed;
    for (size_t i = a; i < b; i++)
        for (uint32_t t = 0; t < S; t++) inc[sr->segments[i] * S + t] = 1;
    for (uint64_t t = sr->n_sealed * S; t < T; t++) inc[t] = 1;
    return inc;
}

/* The bound is never below the true lost mass (decoded keys, double), for
 * random and adversarial keys and every codec; the attended set is exactly
 * SELECT's choice (quest ranking by MAX and by MASS, ball, centroid); max_lost
 * meets its target when the budget allows. */
static void t_lost_bound(void)
{
    int violations = 0, checked = 0;
    for (int codec = EG_CODEC_F32; codec <= EG_CODEC_Q4; codec++) {
        eg_session_config c;
        tm_config(&c, 1, 2, 4, 32, 16, 16, codec);
        fx f;
        tm_model m;
        tm_init(&m, &c, 700, 60 + codec);
        REQUIRE(fx_open(&f, "eng-bound", &c) == 0);
        CHECK_EN(tm_append(&m, f.s, 650, -1, 0));
        uint32_t S = 16;
        float *K[2], *V[2];
        for (uint32_t h = 0; h < 2; h++) {
            K[h] = malloc(650 * 32 * 4);
            V[h] = malloc(650 * 16 * 4);
            for (uint32_t sg = 0; sg * S < 650; sg++) {
                uint32_t rows;
                CHECK_EN(eg_engine_fetch(f.s, 0, h, sg, K[h] + sg * S * 32, V[h] + sg * S * 16, &rows));
            }
        }
        for (int trial = 0; trial < 8; trial++) {
            float q[2 * 4 * 32];
            /* adversarial: queries along the spike channel and the topic mean */
            tm_queries(q, sizeof q / 4, 70 + trial * 5 + codec, trial % 2 ? 1.5f : 0.3f);
            if (trial >= 4 && trial < 7) for (int i = 0; i < 8; i++) q[i * 32 + 1] = 8.0f;
            int64_t pos[2] = {650, 300 + trial * 40};
            eg_attend_req r;
            eg_attend_req_init(&r);
            r.n_queries = 2; r.q = q; r.pos = pos;
            r.budget_tokens = S * (2 + trial);
            r.recent_tokens = trial % 3 ? 32 : 0;
            r.max_lost = trial == 5 || trial == 7 ? 0.02 : 0;
            /* rows ranking by MASS: quest asked for it (the shared decode
             * path, flat), and centroid by default */
            if (trial == 1 || trial == 5) r.aggregate = EG_ROUTE_AGG_MASS;
            r.router = trial >= 6 ? EG_ROUTER_BALL : EG_ROUTER_QUEST;   /* the ball: its own table bounds */
            if (trial == 2) r.router = EG_ROUTER_CENTROID;
            float out[2 * 4 * 16], lse[8], lost[8];
            eg_attend_result res = {out, lse, lost, 0, 0, 0, 0};
            eg_select_result sr;
            CHECK_EN(eg_engine_attend(f.s, &r, &res));
            CHECK_EN(eg_engine_select(f.s, &r, &sr));
            size_t used = res.segments;  /* summed over kv-heads */
            size_t routed_total = 0;
            for (uint32_t h = 0; h < 2; h++) routed_total += sr.offsets[h + 1] - sr.offsets[h];
            CHECK(used <= routed_total);
            for (uint32_t h = 0; h < 2; h++) {
                /* with max_lost the prefix is the engine's; check via lse below */
                size_t nr = sr.offsets[h + 1] - sr.offsets[h] - sr.n_forced[h];
                uint8_t *inc = sel_mask(&sr, h, 650, S, r.max_lost > 0 ? nr : nr);
                for (uint32_t i = 0; i < 2; i++)
                    for (uint32_t g = 0; g < 2; g++) {
                        size_t o = i * 4 + h * 2 + g;
                        double ro[16], la, lall;
                        ref_row(q + o * 32, K[h], V[h], 650, NULL, pos[i] - 1, 32, 16, 1 / sqrt(32), ro, &lall);
                        ref_row(q + o * 32, K[h], V[h], 650, inc, pos[i] - 1, 32, 16, 1 / sqrt(32), ro, &la);
                        /* the engine attended a prefix of the selection: its lse
                         * is at most the whole selection's */
                        CHECK(lse[o] <= la + 1e-4);
                        if (r.max_lost == 0) {
                            CHECK(fabs(lse[o] - la) < 1e-4);
                            CHECK(norm_err(out + o * 16, ro, 16) < 1e-4);
                        }
                        double truth = 1 - exp((double)lse[o] - lall);
                        checked++;
                        if (lost[o] + 1e-6 < truth) {
                            violations++;
                            fprintf(stderr, "  codec %d trial %d row %zu: bound %.4g < true %.4g\n", codec,
                                    trial, o, lost[o], truth);
                        }
                        if (r.max_lost > 0) CHECK(lost[o] <= r.max_lost || res.segments == routed_total);
                    }
                free(inc);
            }
            eg_select_result_free(&sr);
        }
        for (uint32_t h = 0; h < 2; h++) { free(K[h]); free(V[h]); }
        fx_close(&f);
        tm_free(&m);
    }
    CHECK_EQ_INT(violations, 0);
    CHECK(checked >= 4 * 8 * 8);
}

/* max_lost: the bound holds at the target while attending fewer segments
 * than the budget allows. */
static void t_max_lost(void)
{
    eg_session_config c;
    tm_config(&c, 1, 1, 2, 32, 16, 16, EG_CODEC_Q8);
    fx f;
    tm_model m;
    tm_init(&m, &c, 1100, 90);
    REQUIRE(fx_open(&f, "eng-maxlost", &c) == 0);
    CHECK_EN(tm_append(&m, f.s, 1024, -1, 0));
    float q[2 * 32];
    tm_queries(q, 64, 91, 0.5f);
    q[1] = q[33] = 6.0f; /* peaked on the spike channel */
    int64_t pos = 1024;
    eg_attend_req r;
    eg_attend_req_init(&r);
    r.n_queries = 1; r.q = q; r.pos = &pos; r.budget_tokens = 1024; r.recent_tokens = 0;
    float out[2 * 16], lse[2], lost[2];
    /* On a cold window, a call that stops early pages in only what it
     * attends: no segment is pinned ahead of the bound's decision. */
    r.max_lost = 0.2;
    eg_attend_result cold = {out, lse, lost, 0, 0, 0, 0};
    CHECK_EN(eg_engine_attend(f.s, &r, &cold));
    CHECK(cold.segments < 1024 / 16);
    CHECK_EQ_INT(cold.page_ins, cold.segments);
    r.max_lost = 0;
    eg_attend_result full = {out, lse, lost, 0, 0, 0, 0};
    CHECK_EN(eg_engine_attend(f.s, &r, &full));
    CHECK(full.worst_lost <= 1e-6);
    double targets[3] = {0.2, 0.05, 0.01};
    for (int i = 0; i < 3; i++) {
        r.max_lost = targets[i];
        eg_attend_result res = {out, lse, lost, 0, 0, 0, 0};
        CHECK_EN(eg_engine_attend(f.s, &r, &res));
        CHECK(res.worst_lost <= targets[i]);
        CHECK(lost[0] <= targets[i] && lost[1] <= targets[i]);
        CHECK(res.segments <= full.segments);
        if (i == 0) CHECK(res.segments < full.segments);
    }
    fx_close(&f);
    tm_free(&m);
}

/* Merge of attention over A and over B equals attention over A and B. */
static void t_merge(void)
{
    uint64_t s = 5;
    int bad = 0;
    for (int trial = 0; trial < 40; trial++) {
        uint32_t T = 20 + trial * 7, dk = 16, dv = 12;
        float *K = malloc(T * dk * 4), *V = malloc(T * dv * 4), q[16];
        for (uint32_t i = 0; i < T * dk; i++) K[i] = tu_randn(&s) * (1 + trial % 3);
        for (uint32_t i = 0; i < T * dv; i++) V[i] = tu_randn(&s);
        for (int i = 0; i < 16; i++) q[i] = tu_randn(&s);
        uint8_t *a = malloc(T), *b = malloc(T);
        for (uint32_t j = 0; j < T; j++) { a[j] = (tu_rand(&s) % 3) == 0; b[j] = !a[j]; }
        if (trial == 0) for (uint32_t j = 0; j < T; j++) { a[j] = 0; b[j] = 1; } /* A empty */
        double oa[12], ob[12], oall[12], la, lb, lall;
        ref_row(q, K, V, T, a, T, dk, dv, 0.25, oa, &la);
        ref_row(q, K, V, T, b, T, dk, dv, 0.25, ob, &lb);
        ref_row(q, K, V, T, NULL, T, dk, dv, 0.25, oall, &lall);
        float fa[12], fb[12], fo[12], fla = (float)la, flb = (float)lb, flo;
        for (int i = 0; i < 12; i++) { fa[i] = (float)oa[i]; fb[i] = (float)ob[i]; }
        CHECK_EN(eg_attn_merge(fa, &fla, fb, &flb, 1, dv, fo, &flo));
        if (norm_err(fo, oall, 12) > 1e-6 || fabs(flo - lall) > 1e-5 * fmax(1, fabs(lall))) bad++;
        /* aliasing: out over a */
        CHECK_EN(eg_attn_merge(fa, &fla, fb, &flb, 1, dv, fa, &fla));
        if (norm_err(fa, oall, 12) > 1e-6) bad++;
        free(K); free(V); free(a); free(b);
    }
    CHECK_EQ_INT(bad, 0);
    float o1[2] = {1, 2}, o2[2] = {3, 4}, out[2], l1 = -INFINITY, l2 = -INFINITY, lo;
    CHECK_EN(eg_attn_merge(o1, &l1, o2, &l2, 1, 2, out, &lo));
    CHECK(isinf(lo) && lo < 0 && out[0] == 0);
    float ln = NAN;
    CHECK_CODE(eg_attn_merge(o1, &ln, o2, &l2, 1, 2, out, &lo), EG_EN_ENONFINITE);
    CHECK_CODE(eg_attn_merge(NULL, &l1, o2, &l2, 1, 2, out, &lo), EG_EN_EINVAL);
}

/* Causal masks at segment edges and inside the open segment; a layer
 * appended ahead of the others is attended up to its own count. */
static void t_causal(void)
{
    eg_session_config c;
    tm_config(&c, 2, 1, 3, 16, 16, 16, EG_CODEC_F32);
    fx f;
    tm_model m;
    tm_init(&m, &c, 200, 31);
    REQUIRE(fx_open(&f, "eng-causal", &c) == 0);
    CHECK_EN(tm_append(&m, f.s, 5 * 16 + 7, -1, 0));
    int64_t cases[] = {1, 15, 16, 17, 31, 32, 33, 64, 79, 80, 81, 84, 86, 87};
    float q[3 * 16];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        for (int self = 0; self < 2; self++) {
            if (self && cases[i] >= 87) continue;
            tm_queries(q, 48, 100 + i, 0.7f);
            eg_attend_req r;
            eg_attend_req_init(&r);
            r.n_queries = 1; r.q = q; r.pos = &cases[i]; r.include_self = self;
            r.budget_tokens = 16 * 100;
            check_call(&f, &m, &r, 0, 1e-5, "causal");
            check_call(&f, &m, &r, 1, 1e-5, "causal");
            r.budget_tokens = 16; r.recent_tokens = 0; /* sink only: still causal */
            float out[48], lse[3];
            eg_attend_result res = {out, lse, NULL, 0, 0, 0, 0};
            CHECK_EN(eg_engine_attend(f.s, &r, &res));
        }
    /* Query at 0 without self sees nothing. */
    int64_t p0 = 0;
    eg_attend_req r;
    eg_attend_req_init(&r);
    r.n_queries = 1; r.q = q; r.pos = &p0;
    float out[48], lse[3], lost[3];
    eg_attend_result res = {out, lse, lost, 0, 0, 0, 0};
    CHECK_EN(eg_engine_attend(f.s, &r, &res));
    CHECK(isinf(lse[0]) && lse[0] < 0 && out[0] == 0 && lost[0] == 0);
    /* Layer 0 ahead by 40 tokens (more than a segment): attended to its count. */
    CHECK_EN(tm_append(&m, f.s, 40, 0, 0));
    int64_t pos[2] = {127, 90};
    tm_queries(q, 48, 7, 0.7f);
    float q2[2 * 48];
    memcpy(q2, q, sizeof q);
    memcpy(q2 + 48, q, sizeof q);
    r.n_queries = 2; r.q = q2; r.pos = pos; r.budget_tokens = 4096;
    check_call(&f, &m, &r, 0, 1e-5, "layer ahead");
    check_call(&f, &m, &r, 1, 1e-5, "layer ahead");
    r.layer = 1;
    float o2[2 * 48], l2[6];
    eg_attend_result res2 = {o2, l2, NULL, 0, 0, 0, 0};
    CHECK_CODE(eg_engine_attend(f.s, &r, &res2), EG_EN_EPOS);
    CHECK_EN(tm_append(&m, f.s, 40, 1, 0)); /* now complete: segments seal */
    eg_session_info info;
    CHECK_EN(eg_engine_session_info(f.s, &info));
    CHECK_EQ_INT(info.n_tokens, 127);
    CHECK_EQ_INT(info.n_sealed, 7);
    for (uint32_t l = 0; l < 2; l++) {
        r.layer = l;
        check_call(&f, &m, &r, 0, 1e-5, "after catching up");
    }
    fx_close(&f);
    tm_free(&m);
}

/* MLA shape: one kv-head of 576 key and 512 value dims. */
static void t_mla(void)
{
    eg_session_config c;
    tm_config(&c, 1, 1, 4, 576, 512, 16, EG_CODEC_F32);
    fx f;
    tm_model m;
    tm_init(&m, &c, 80, 41);
    REQUIRE(fx_open(&f, "eng-mla", &c) == 0);
    CHECK_EN(tm_append(&m, f.s, 70, -1, 0));
    float *q = malloc(2 * 4 * 576 * 4);
    tm_queries(q, 2 * 4 * 576, 42, 0.05f);
    int64_t pos[2] = {70, 33};
    eg_attend_req r;
    eg_attend_req_init(&r);
    r.n_queries = 2; r.q = q; r.pos = pos; r.budget_tokens = 1024;
    check_call(&f, &m, &r, 0, 1e-5, "mla");
    check_call(&f, &m, &r, 1, 1e-5, "mla");
    free(q);
    fx_close(&f);
    tm_free(&m);
}

int main(void)
{
    TEST_RUN(t_sparse_equals_dense);
    TEST_RUN(t_codecs_within_bound);
    TEST_RUN(t_lost_bound);
    TEST_RUN(t_max_lost);
    TEST_RUN(t_merge);
    TEST_RUN(t_causal);
    TEST_RUN(t_mla);
    TEST_END();
}
