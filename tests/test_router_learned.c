/* test_router_learned.c: the learned router: training lowers its KL on a
 * seeded structured workload, the outliers mode holds more attention mass
 * than centroid on workloads it was not trained on, weights round-trip
 * through bytes and give the same scores, wrong-version and damaged blobs
 * are refused, bad configurations and calibration data are refused. */
#include "index.h"
#include "testutil.h"
#include "workload.h"
#include <cblas.h>
#include <math.h>
#include <xxhash.h>
#include <stdlib.h>
#include <string.h>

typedef struct { wl_workload w; float *q; int64_t *pos; int nq; eg_calibration cal; } fixture;

/* kv-head 1 (a topic head) of a small structured workload; calibration
 * rows are the q heads of that kv-head. */
static int fixture_make(fixture *f, uint64_t seed, int64_t T)
{
    memset(f, 0, sizeof *f);
    wl_spec s;
    wl_spec_init(&s, WL_STRUCTURED);
    s.seed = 7;              /* one "model" */
    s.text_seed = seed;      /* read on different texts */
    s.n_tokens = T;
    s.n_queries = 128;
    if (wl_generate(&s, &f->w) < 0) return -1;
    int d = s.dim, G = s.n_q_heads / s.n_kv_heads, h = 1;
    f->nq = s.n_queries * G;
    f->q = malloc(sizeof(float) * f->nq * d);
    f->pos = malloc(sizeof(int64_t) * f->nq);
    for (int i = 0; i < s.n_queries; i++)
        for (int g = 0; g < G; g++) {
            memcpy(f->q + (i * G + g) * d, f->w.q + ((size_t)i * s.n_q_heads + h * G + g) * d, sizeof(float) * d);
            f->pos[i * G + g] = f->w.q_pos[i];
        }
    f->cal = (eg_calibration){ f->w.k + (size_t)h * T * d, T, f->q, f->pos, f->nq, f->w.scale };
    return 0;
}
static void fixture_free(fixture *f) { wl_free(&f->w); free(f->q); free(f->pos); }

static void test_training_lowers_loss(void)
{
    fixture f, held;
    REQUIRE(fixture_make(&f, 7, tu_slow() ? 4096 : 16384) == 0);
    REQUIRE(fixture_make(&held, 8, tu_slow() ? 4096 : 16384) == 0);
    static const char *names[] = { "", "pq", "reps", "outliers", "mean8" };
    for (int mode = EG_LEARNED_PQ; mode <= EG_LEARNED_MEAN8; mode++) {
        eg_learned_config c;
        eg_learned_config_init(&c, 64, 64);
        c.mode = (eg_learned_mode)mode;
        c.steps = tu_slow() ? 20 : 80;
        /* OUTLIERS starts from the exact mixture and trains 3 scalars: it
         * gains less, and its full calibration loss is asserted to fall,
         * not by how much; MEAN8 only calibrates its steps, and its loss
         * must not rise. Their minibatch losses differ more by batch than
         * by step, so they are printed only. */
        int outl = mode == EG_LEARNED_OUTLIERS || mode == EG_LEARNED_MEAN8;
        double need_full = outl ? 1.0 : 0.8;
        float curve[80];
        eg_learned *w = NULL;
        CHECK_OK(eg_learned_train(&c, &f.cal, &w, curve));
        REQUIRE(w);
        /* The mean of the last 10 steps' minibatch loss under the first 10's. */
        double a = 0, b = 0;
        for (int i = 0; i < 10; i++) { a += curve[i]; b += curve[c.steps - 10 + i]; }
        printf("  %s: minibatch KL %.3f -> %.3f\n", names[mode], a / 10, b / 10);
        if (!outl) CHECK(b < 0.9 * a);
        /* The full calibration loss against the untrained start (the same
         * initialisation, zero steps). On another text of the same model
         * the loss is printed, not asserted: it does not reliably improve
         * yet (see docs/index.md, "learned"). */
        eg_learned_config c0 = c;
        c0.steps = 0;
        eg_learned *w0 = NULL;
        CHECK_OK(eg_learned_train(&c0, &f.cal, &w0, NULL));
        double kl0 = 0, kl1 = 0, h0 = 0, h1 = 0;
        CHECK_OK(eg_learned_loss(w0, &f.cal, &kl0));
        CHECK_OK(eg_learned_loss(w, &f.cal, &kl1));
        CHECK_OK(eg_learned_loss(w0, &held.cal, &h0));
        CHECK_OK(eg_learned_loss(w, &held.cal, &h1));
        printf("  %s: calibration KL %.3f -> %.3f; another text %.3f -> %.3f\n", names[mode], kl0, kl1, h0, h1);
        if (mode == EG_LEARNED_MEAN8) CHECK(kl1 <= kl0);   /* it fits nothing by the KL (learned.c) */
        else CHECK(kl1 < need_full * kl0);
        eg_learned_free(w0);
        eg_learned_free(w);
    }
    fixture_free(&f);
    fixture_free(&held);
}

/* A route table of kind (weights w for learned) over kv-head h of wl. */
static eg_route_table *table_of(const wl_workload *wl, int h, eg_router_kind kind, const eg_learned *w)
{
    int d = wl->dim;
    size_t nseg = (size_t)(wl->n_tokens / 64), b = 0;
    eg_summary_spec sp = { kind, d, 64, w, 0 };
    eg_route_table *t = NULL;
    if (eg_summary_bytes(&sp, &b) < 0 || eg_route_table_create(&sp, &t) < 0) return NULL;
    uint8_t *sum = malloc(b * nseg);
    int rc = sum ? 0 : -1;
    for (size_t s = 0; s < nseg && rc == 0; s++)
        rc = eg_summary_compute(&sp, wl->k + ((size_t)h * wl->n_tokens + s * 64) * d, sum + s * b, b);
    if (rc == 0) rc = eg_route_table_append(t, sum, nseg, NULL);
    free(sum);
    if (rc < 0) { eg_route_table_free(t); return NULL; }
    return t;
}

/* Mean over rows (queries x q heads of kv-head h) of the dense attention
 * mass inside t's selection at budget tokens, and the planted targets
 * whose segment it selects (*hits of *targets). */
static double mass_recall(const wl_workload *wl, int h, const eg_route_table *t, int64_t budget, int *hits,
                          int *targets)
{
    int d = wl->dim, G = wl->n_q_heads / wl->n_kv_heads;
    int64_t T = wl->n_tokens;
    size_t nseg = (size_t)(T / 64);
    const float *K = wl->k + (size_t)h * T * d;
    float *lg = malloc(sizeof(float) * T);
    double tot = 0;
    uint8_t *in = malloc(nseg);
    int n = 0;
    for (int qi = 0; qi < wl->n_queries; qi++) {
        int64_t p = wl->q_pos[qi], pos[16];
        const float *q = wl->q + ((size_t)qi * wl->n_q_heads + (size_t)h * G) * d;
        for (int g = 0; g < G; g++) pos[g] = p;
        eg_route_rows rows = { .n_rows = G, .q = q, .pos = pos, .scale = wl->scale };
        eg_route_opts o;
        eg_route_opts_init(&o);
        o.budget_tokens = budget;
        eg_route_selection sel;
        if (eg_router_select(t, &rows, &o, &sel) < 0) { tot = NAN; break; }
        memset(in, 0, nseg);
        for (size_t i = 0; i < sel.n; i++) in[sel.segments[i]] = 1;
        eg_route_selection_free(&sel);
        for (int g = 0; g < G; g++) {
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)(p + 1), d, wl->scale, K, d, q + (size_t)g * d, 1, 0.0f,
                        lg, 1);
            double mx = -INFINITY, z = 0, m = 0;
            for (int64_t j = 0; j <= p; j++) mx = lg[j] > mx ? lg[j] : mx;
            for (int64_t j = 0; j <= p; j++) {
                double e = exp(lg[j] - mx);
                z += e;
                if (in[j / 64]) m += e;
            }
            tot += m / z;
            n++;
            for (int k = 0; k < WL_MAX_TARGETS; k++) {
                int64_t tg = wl->target[((size_t)qi * wl->n_q_heads + (size_t)h * G + g) * WL_MAX_TARGETS + k];
                if (tg < 0) continue;
                (*targets)++;
                *hits += in[tg / 64];
            }
        }
    }
    free(lg); free(in);
    return tot / (n ? n : 1);
}

/* The calibration text of a structured "model" (text_seed 1000, 256
 * queries) in *cs, and weights of mode for its two kv-heads (a local and
 * a topic head) trained on their q heads' rows. */
static int train_structured(eg_learned_mode mode, int steps, wl_spec *cs, eg_learned *w[2])
{
    int64_t T = tu_slow() ? 8192 : 32768;
    wl_spec_init(cs, WL_STRUCTURED);
    cs->text_seed = 1000;
    cs->n_tokens = T;
    cs->n_queries = 256;
    wl_workload cal;
    if (wl_generate(cs, &cal) < 0) return -1;
    int G = cal.n_q_heads / cal.n_kv_heads, d = cal.dim, rc = 0;
    float *q = malloc(sizeof(float) * (size_t)cs->n_queries * G * d);
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)cs->n_queries * G);
    for (int h = 0; h < 2; h++) {
        for (int i = 0; i < cs->n_queries; i++)
            for (int g = 0; g < G; g++) {
                memcpy(q + ((size_t)i * G + g) * d, cal.q + ((size_t)i * cal.n_q_heads + h * G + g) * d,
                       sizeof(float) * d);
                pos[i * G + g] = cal.q_pos[i];
            }
        eg_calibration c = { cal.k + (size_t)h * T * d, T, q, pos, cs->n_queries * G, cal.scale };
        eg_learned_config cfg;
        eg_learned_config_init(&cfg, d, 64);
        cfg.mode = mode;
        cfg.steps = steps;
        w[h] = NULL;
        CHECK_OK(eg_learned_train(&cfg, &c, &w[h], NULL));
        if (!w[h]) rc = -1;
    }
    free(q); free(pos);
    wl_free(&cal);
    return rc;
}

/* On texts 1 and 2 of cs's model (48 queries, both kv-heads): mass recall
 * at 2048 of a table of kind base and of the learned one (weights w), and
 * the planted targets each finds (hits of targets). */
typedef struct { double base, learned; int hb, tb, hl, tl; } text_recall;
static int recall_on_texts(const wl_spec *cs, eg_router_kind base, eg_learned *const w[2], text_recall out[2])
{
    for (int x = 0; x < 2; x++) {
        wl_spec s = *cs;
        s.text_seed = (uint64_t)x + 1;
        s.n_queries = 48;
        wl_workload wl;
        if (wl_generate(&s, &wl) < 0) return -1;
        text_recall *r = &out[x];
        memset(r, 0, sizeof *r);
        for (int h = 0; h < 2; h++) {
            eg_route_table *tb = table_of(&wl, h, base, NULL), *tl = table_of(&wl, h, EG_ROUTER_LEARNED, w[h]);
            if (tb && tl) {
                r->base += mass_recall(&wl, h, tb, 2048, &r->hb, &r->tb) / 2;
                r->learned += mass_recall(&wl, h, tl, 2048, &r->hl, &r->tl) / 2;
            }
            eg_route_table_free(tb);
            eg_route_table_free(tl);
            if (!tb || !tl) { wl_free(&wl); return -1; }
        }
        wl_free(&wl);
    }
    return 0;
}

/* The learned router's outliers mode, trained on one text of a structured
 * "model", selects more of the dense attention mass than centroid on other
 * texts of that model (seeded, both kv-heads: a local and a topic head),
 * and finds more of the planted needles. */
static void test_outliers_beat_centroid(void)
{
    wl_spec cs;
    eg_learned *w[2] = { 0 };
    text_recall r[2];
    REQUIRE(train_structured(EG_LEARNED_OUTLIERS, 100, &cs, w) == 0);
    REQUIRE(recall_on_texts(&cs, EG_ROUTER_CENTROID, w, r) == 0);
    for (int x = 0; x < 2; x++) {
        printf("  text %d: mass recall at 2048 centroid %.4f, learned outliers %.4f; needles %d/%d and %d/%d\n",
               x + 1, r[x].base, r[x].learned, r[x].hb, r[x].tb, r[x].hl, r[x].tl);
        CHECK(r[x].learned > r[x].base + 0.005);
        CHECK(r[x].hl >= r[x].hb);
    }
    eg_learned_free(w[0]);
    eg_learned_free(w[1]);
}

/* MEAN8 keeps a quarter of quest's bytes (the int8 mean on trained
 * per-channel steps) and, ranked by MASS, holds at least quest's mass on
 * texts it was not trained on (seeded structured model, both kv-heads). */
static void test_mean8_quarter_of_quest(void)
{
    wl_spec cs;
    eg_learned *w[2] = { 0 };
    text_recall r[2];
    REQUIRE(train_structured(EG_LEARNED_MEAN8, 60, &cs, w) == 0);
    int d = eg_learned_get_config(w[0])->dim;
    eg_summary_spec sq = { EG_ROUTER_QUEST, d, 64, NULL, 0 }, sm = { EG_ROUTER_LEARNED, d, 64, w[0], 0 };
    printf("  bytes per token: quest %.3g, mean8 %.3g\n", eg_summary_bytes_per_token(&sq),
           eg_summary_bytes_per_token(&sm));
    CHECK(eg_summary_bytes_per_token(&sm) * 4 <= eg_summary_bytes_per_token(&sq));
    REQUIRE(recall_on_texts(&cs, EG_ROUTER_QUEST, w, r) == 0);
    for (int x = 0; x < 2; x++) {
        printf("  text %d: mass recall at 2048 quest %.4f, learned mean8 %.4f\n", x + 1, r[x].base, r[x].learned);
        CHECK(r[x].learned >= r[x].base);
    }
    eg_learned_free(w[0]);
    eg_learned_free(w[1]);
}

static float half_to_float(const uint8_t *p)
{
    unsigned h = (unsigned)p[0] | (unsigned)p[1] << 8, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : (e == 31 ? INFINITY : ldexp(1024 + m, (int)e - 25));
    return (float)((h & 0x8000) ? -v : v);
}
static float blob_f32(const uint8_t *p) { float f; memcpy(&f, p, 4); return f; }

/* OUTLIERS scores against a plain double loop over the stored summary
 * bytes and the weights' bytes (layouts of summary.c and learned_io.c):
 * log(e^(bias + tau q.mean) + sum_o e^(tau_out q.k_o)), both kernels. */
static void test_outliers_scores_reference(void)
{
    fixture f;
    REQUIRE(fixture_make(&f, 11, 4096) == 0);
    for (int m = 1; m <= 8; m += 7) {
        eg_learned_config c;
        eg_learned_config_init(&c, 64, 64);
        c.mode = EG_LEARNED_OUTLIERS;
        c.n_reps = m;
        c.steps = 20;
        eg_learned *w = NULL;
        CHECK_OK(eg_learned_train(&c, &f.cal, &w, NULL));
        REQUIRE(w);
        void *blob = NULL;
        size_t bn = 0;
        CHECK_OK(eg_learned_save(w, &blob, &bn));
        const uint8_t *b8 = blob;
        double tau = blob_f32(b8 + 40), tau_out = blob_f32(b8 + 44), bias = blob_f32(b8 + 48);
        CHECK(tau > 0 && tau_out > 0 && isfinite(bias));
        eg_summary_spec sp = { EG_ROUTER_LEARNED, 64, 64, w, 0 };
        size_t nb = 0, nseg = 4096 / 64;
        CHECK_OK(eg_summary_bytes(&sp, &nb));
        uint8_t *sum = malloc(nb * nseg);
        for (size_t s = 0; s < nseg; s++) CHECK_OK(eg_summary_compute(&sp, f.cal.keys + s * 64 * 64, sum + s * nb, nb));
        eg_route_table *t = NULL;
        CHECK_OK(eg_route_table_create(&sp, &t));
        CHECK_OK(eg_route_table_append(t, sum, nseg, NULL));
        float *out = malloc(sizeof(float) * 3 * nseg);
        double worst = 0;
        for (int port = 1; port >= 0; port--) {
            eg_index_kernels(port);
            eg_route_rows rows = { .n_rows = 3, .q = f.q + 64 * 5, .scale = 0.125f };
            CHECK_OK(eg_router_score_all(t, &rows, out));
            for (int r = 0; r < 3; r++)
                for (size_t s = 0; s < nseg; s++) {
                    const uint8_t *row = sum + s * nb;
                    const float *q = f.q + 64 * (5 + r);
                    double a = 0;
                    for (int i = 0; i < 64; i++) a += (double)q[i] * half_to_float(row + 2 * i);
                    double terms[9], mx;
                    terms[0] = bias + tau * a;
                    mx = terms[0];
                    for (int o = 0; o < m; o++) {
                        const uint8_t *k8 = row + 128 + (size_t)o * 68;
                        double sc = blob_f32(k8), x = 0;
                        for (int i = 0; i < 64; i++) x += (double)q[i] * sc * (int8_t)k8[4 + i];
                        terms[1 + o] = tau_out * x;
                        mx = terms[1 + o] > mx ? terms[1 + o] : mx;
                    }
                    double z = 0;
                    for (int o = 0; o <= m; o++) z += exp(terms[o] - mx);
                    double ref = mx + log(z), e = fabs(out[r * nseg + s] - ref) / (1 + fabs(ref));
                    worst = e > worst ? e : worst;
                }
        }
        eg_index_kernels(0);
        printf("  %d outliers: worst relative error against the double loop %.2g\n", m, worst);
        CHECK(worst < 2e-3);   /* the table keeps the q8 outliers as f16 (11 bits) */
        free(out); free(sum); free(blob);
        eg_route_table_free(t);
        eg_learned_free(w);
    }
    fixture_free(&f);
}

/* Untrained outliers weights: the mixture training starts from; the same
 * summary bytes as trained ones of the same config (so an engine can seal
 * before training); a higher loss than trained ones; other modes refused. */
static void test_untrained_outliers(void)
{
    fixture f;
    REQUIRE(fixture_make(&f, 5, 4096) == 0);
    eg_learned_config c;
    eg_learned_config_init(&c, 64, 64);
    c.mode = EG_LEARNED_OUTLIERS;
    c.n_reps = 2;
    c.steps = 60;
    eg_learned *u = NULL, *w = NULL;
    CHECK_OK(eg_learned_untrained(&c, 0.125f, &u));
    CHECK_OK(eg_learned_train(&c, &f.cal, &w, NULL));
    REQUIRE(u && w);
    void *blob = NULL;
    size_t bn = 0;
    CHECK_OK(eg_learned_save(u, &blob, &bn));
    const uint8_t *b8 = blob;
    CHECK(blob_f32(b8 + 40) == 0.125f && blob_f32(b8 + 44) == 0.125f);
    CHECK(fabs(blob_f32(b8 + 48) - log(62.0)) < 1e-6);
    free(blob);
    eg_summary_spec su = { EG_ROUTER_LEARNED, 64, 64, u, 0 }, sw = { EG_ROUTER_LEARNED, 64, 64, w, 0 };
    size_t nb = 0;
    CHECK_OK(eg_summary_bytes(&su, &nb));
    uint8_t *a = malloc(nb), *b = malloc(nb);
    int same = 1;
    for (size_t s = 0; s < 4096 / 64; s++) {
        CHECK_OK(eg_summary_compute(&su, f.cal.keys + s * 64 * 64, a, nb));
        CHECK_OK(eg_summary_compute(&sw, f.cal.keys + s * 64 * 64, b, nb));
        same &= memcmp(a, b, nb) == 0;
    }
    CHECK(same);
    double lu = 0, lw = 0;
    CHECK_OK(eg_learned_loss(u, &f.cal, &lu));
    CHECK_OK(eg_learned_loss(w, &f.cal, &lw));
    printf("  calibration loss: untrained %.4f, trained %.4f\n", lu, lw);
    CHECK(lw < lu);
    free(a); free(b);
    eg_learned_free(u);
    eg_learned_free(w);
    eg_learned *x = (eg_learned *)1;
    CHECK_EQ_INT(eg_learned_untrained(&c, 0.0f, &x), EG_IX_EINVAL);
    CHECK(x == NULL);
    CHECK_EQ_INT(eg_learned_untrained(&c, NAN, &x), EG_IX_EINVAL);
    c.mode = EG_LEARNED_PQ;
    CHECK_EQ_INT(eg_learned_untrained(&c, 0.125f, &x), EG_IX_EINVAL);
    c.mode = EG_LEARNED_OUTLIERS;
    c.n_reps = 9;
    CHECK_EQ_INT(eg_learned_untrained(&c, 0.125f, &x), EG_IX_EINVAL);
    CHECK_EQ_INT(eg_learned_untrained(NULL, 0.125f, &x), EG_IX_EINVAL);
    fixture_free(&f);
}

/* Scores of every segment with weights w over keys [nseg*64][64]. */
static int scores(const eg_learned *w, const float *keys, size_t nseg, const float *q, float *out)
{
    eg_summary_spec sp = { EG_ROUTER_LEARNED, 64, 64, w, 0 };
    size_t b;
    int rc = eg_summary_bytes(&sp, &b);
    if (rc < 0) return rc;
    uint8_t *sum = malloc(b * nseg);
    for (size_t s = 0; s < nseg && rc == 0; s++) rc = eg_summary_compute(&sp, keys + s * 64 * 64, sum + s * b, b);
    eg_route_table *t = NULL;
    if (rc == 0) rc = eg_route_table_create(&sp, &t);
    if (rc == 0) rc = eg_route_table_append(t, sum, nseg, NULL);
    eg_route_rows rows = { .n_rows = 2, .q = q, .scale = 0.125f };
    if (rc == 0) rc = eg_router_score_all(t, &rows, out);
    eg_route_table_free(t);
    free(sum);
    return rc;
}

static void test_weights_bytes(void)
{
    fixture f;
    REQUIRE(fixture_make(&f, 3, 4096) == 0);
    for (int mode = EG_LEARNED_PQ; mode <= EG_LEARNED_MEAN8; mode++) {
        eg_learned_config c;
        eg_learned_config_init(&c, 64, 64);
        c.mode = (eg_learned_mode)mode;
        c.rank = 24;
        c.steps = 5;
        eg_learned *w = NULL, *w2 = NULL;
        CHECK_OK(eg_learned_train(&c, &f.cal, &w, NULL));
        REQUIRE(w);
        void *bytes = NULL, *bytes2 = NULL;
        size_t n = 0, n2 = 0;
        CHECK_OK(eg_learned_save(w, &bytes, &n));
        CHECK_OK(eg_learned_load(bytes, n, &w2));
        REQUIRE(w2);
        CHECK_OK(eg_learned_save(w2, &bytes2, &n2));
        CHECK(n == n2 && memcmp(bytes, bytes2, n) == 0);
        CHECK_EQ_INT(eg_learned_get_config(w2)->rank, 24);
        size_t nseg = 4096 / 64;
        float *s1 = malloc(sizeof(float) * 2 * nseg), *s2 = malloc(sizeof(float) * 2 * nseg);
        CHECK_OK(scores(w, f.cal.keys, nseg, f.q, s1));
        CHECK_OK(scores(w2, f.cal.keys, nseg, f.q, s2));
        CHECK(memcmp(s1, s2, sizeof(float) * 2 * nseg) == 0);
        /* Another version is refused as such. */
        uint8_t *bad = malloc(n);
        memcpy(bad, bytes, n);
        bad[4] = 2;
        eg_learned *w3 = NULL;
        CHECK_EQ_INT(eg_learned_load(bad, n, &w3), EG_IX_EVERSION);
        CHECK(w3 == NULL);
        /* Every single flipped byte (sampled), truncation and junk are corrupt. */
        int refused = 0, tried = 0;
        for (size_t i = 0; i < n; i += 1 + n / 97) {
            memcpy(bad, bytes, n);
            bad[i] ^= 0x40;
            int rc = eg_learned_load(bad, n, &w3);
            tried++;
            refused += rc == EG_IX_ECORRUPT || rc == EG_IX_EVERSION;
            eg_learned_free(w3);
            w3 = NULL;
        }
        CHECK_EQ_INT(refused, tried);
        if (mode == EG_LEARNED_MEAN8) {   /* a step of 0, checksum made good: refused all the same */
            memcpy(bad, bytes, n);
            memset(bad + n - 8 - 4, 0, 4);  /* the last channel's step */
            uint64_t h = XXH64(bad, n - 8, 0);
            for (int i = 0; i < 8; i++) bad[n - 8 + i] = (uint8_t)(h >> (8 * i));
            CHECK_EQ_INT(eg_learned_load(bad, n, &w3), EG_IX_ECORRUPT);
            CHECK(w3 == NULL);
        }
        CHECK_EQ_INT(eg_learned_load(bytes, n - 1, &w3), EG_IX_ECORRUPT);
        CHECK_EQ_INT(eg_learned_load(bytes, 10, &w3), EG_IX_ECORRUPT);
        memset(bad, 0, n);
        CHECK_EQ_INT(eg_learned_load(bad, n, &w3), EG_IX_ECORRUPT);
        free(bad); free(s1); free(s2); free(bytes); free(bytes2);
        eg_learned_free(w);
        eg_learned_free(w2);
    }
    fixture_free(&f);
}

static void test_bad_config_and_data(void)
{
    fixture f;
    REQUIRE(fixture_make(&f, 5, 4096) == 0);
    eg_learned_config c;
    eg_learned *w = NULL;
    eg_learned_config_init(&c, 64, 64);
    c.rank = 8;
    CHECK_EQ_INT(eg_learned_train(&c, &f.cal, &w, NULL), EG_IX_ERANK);
    c.rank = 40;
    CHECK_EQ_INT(eg_learned_train(&c, &f.cal, &w, NULL), EG_IX_ERANK);
    c.rank = 20;   /* PQ needs a multiple of 8 */
    CHECK_EQ_INT(eg_learned_train(&c, &f.cal, &w, NULL), EG_IX_ERANK);
    c.mode = EG_LEARNED_REPS;
    c.n_reps = 9;
    CHECK_EQ_INT(eg_learned_train(&c, &f.cal, &w, NULL), EG_IX_EINVAL);
    c.mode = EG_LEARNED_OUTLIERS;
    CHECK_EQ_INT(eg_learned_train(&c, &f.cal, &w, NULL), EG_IX_EINVAL);
    c.n_reps = 0;
    CHECK_EQ_INT(eg_learned_train(&c, &f.cal, &w, NULL), EG_IX_EINVAL);
    c.mode = (eg_learned_mode)5;
    c.n_reps = 1;
    CHECK_EQ_INT(eg_learned_train(&c, &f.cal, &w, NULL), EG_IX_EINVAL);
    eg_learned_config_init(&c, 64, 64);
    c.seg_tokens = 100;
    CHECK_EQ_INT(eg_learned_train(&c, &f.cal, &w, NULL), EG_IX_EDIM);
    eg_learned_config_init(&c, 64, 64);
    c.lr = NAN;
    CHECK_EQ_INT(eg_learned_train(&c, &f.cal, &w, NULL), EG_IX_EINVAL);
    eg_learned_config_init(&c, 64, 64);
    c.steps = 3;
    eg_calibration bad = f.cal;
    bad.n_queries = 0;
    CHECK_EQ_INT(eg_learned_train(&c, &bad, &w, NULL), EG_IX_EEMPTY);
    bad = f.cal;
    bad.n_tokens = 10;
    CHECK_EQ_INT(eg_learned_train(&c, &bad, &w, NULL), EG_IX_EEMPTY);
    /* queries too early to route anything */
    int64_t early[512];
    for (int i = 0; i < f.nq; i++) early[i] = 100;
    bad = f.cal;
    bad.q_pos = early;
    CHECK_EQ_INT(eg_learned_train(&c, &bad, &w, NULL), EG_IX_EEMPTY);
    for (int i = 0; i < f.nq; i++) early[i] = 1 << 20;
    CHECK_EQ_INT(eg_learned_train(&c, &bad, &w, NULL), EG_IX_ERANGE);
    float keep = f.q[7];
    f.q[7] = INFINITY;
    CHECK_EQ_INT(eg_learned_train(&c, &f.cal, &w, NULL), EG_IX_ENONFINITE);
    f.q[7] = keep;
    CHECK(w == NULL);
    /* A learned table needs weights of its dim. */
    CHECK_OK(eg_learned_train(&c, &f.cal, &w, NULL));
    eg_summary_spec sp = { EG_ROUTER_LEARNED, 32, 64, w, 0 };
    eg_route_table *t = NULL;
    CHECK_EQ_INT(eg_route_table_create(&sp, &t), EG_IX_EDIM);
    eg_learned_free(w);
    w = NULL;
    /* OUTLIERS: its rank is not used (no projection); damaged summaries
     * and weights with a temperature <= 0 are refused. */
    eg_learned_config_init(&c, 64, 64);
    c.mode = EG_LEARNED_OUTLIERS;
    c.rank = 8;
    c.n_reps = 2;
    c.steps = 3;
    CHECK_OK(eg_learned_train(&c, &f.cal, &w, NULL));
    REQUIRE(w);
    sp = (eg_summary_spec){ EG_ROUTER_LEARNED, 64, 64, w, 0 };
    size_t nb = 0;
    CHECK_OK(eg_summary_bytes(&sp, &nb));
    CHECK_EQ_INT((int)nb, 2 * 64 + 2 * (4 + 64));
    uint8_t *row = malloc(nb);
    CHECK_OK(eg_summary_compute(&sp, f.cal.keys, row, nb));
    CHECK_EQ_INT(eg_summary_compute(&sp, f.cal.keys, row, nb - 1), EG_IX_EDIM);
    CHECK_OK(eg_route_table_create(&sp, &t));
    uint8_t *brow = malloc(nb);
    memcpy(brow, row, nb);
    float neg = -1.0f;
    memcpy(brow + 2 * 64 + (4 + 64), &neg, 4);            /* second outlier's scale */
    CHECK_EQ_INT(eg_route_table_append(t, brow, 1, NULL), EG_IX_ECORRUPT);
    memcpy(brow, row, nb);
    brow[2 * 5 + 1] = 0x7c;                               /* mean channel 5 := inf */
    brow[2 * 5] = 0;
    CHECK_EQ_INT(eg_route_table_append(t, brow, 1, NULL), EG_IX_ECORRUPT);
    CHECK_EQ_INT((int)eg_route_table_segments(t), 0);
    CHECK_OK(eg_route_table_append(t, row, 1, NULL));
    CHECK_EQ_INT((int)eg_route_table_segments(t), 1);
    eg_route_table_free(t);
    void *blob = NULL;
    size_t bn = 0;
    CHECK_OK(eg_learned_save(w, &blob, &bn));
    uint8_t *b8 = blob;
    float zero = 0.0f;
    memcpy(b8 + bn - 8 - 8, &zero, 4);                   /* tau_out := 0, checksum redone */
    uint64_t hsum = XXH64(b8, bn - 8, 0);
    for (int i = 0; i < 8; i++) b8[bn - 8 + i] = (uint8_t)(hsum >> (8 * i));
    eg_learned *w4 = NULL;
    CHECK_EQ_INT(eg_learned_load(blob, bn, &w4), EG_IX_ECORRUPT);
    CHECK(w4 == NULL);
    free(blob); free(brow); free(row);
    eg_learned_free(w);
    fixture_free(&f);
}

int main(void)
{
    TEST_RUN(test_training_lowers_loss);
    TEST_RUN(test_outliers_beat_centroid);
    TEST_RUN(test_mean8_quarter_of_quest);
    TEST_RUN(test_outliers_scores_reference);
    TEST_RUN(test_weights_bytes);
    TEST_RUN(test_untrained_outliers);
    TEST_RUN(test_bad_config_and_data);
    TEST_END();
}
