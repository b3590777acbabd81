/* test_router_learned.c: the learned router: training lowers its KL on a
 * seeded structured workload, weights round-trip through bytes and give
 * the same scores, wrong-version and damaged blobs are refused, bad
 * configurations and calibration data are refused. */
#include "index.h"
#include "testutil.h"
#include "workload.h"
#include <math.h>
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
    for (int mode = EG_LEARNED_PQ; mode <= EG_LEARNED_REPS; mode++) {
        eg_learned_config c;
        eg_learned_config_init(&c, 64, 64);
        c.mode = (eg_learned_mode)mode;
        c.steps = tu_slow() ? 20 : 80;
        float curve[80];
        eg_learned *w = NULL;
        CHECK_OK(eg_learned_train(&c, &f.cal, &w, curve));
        REQUIRE(w);
        /* The mean of the last 10 steps' minibatch loss under the first 10's. */
        double a = 0, b = 0;
        for (int i = 0; i < 10; i++) { a += curve[i]; b += curve[c.steps - 10 + i]; }
        printf("  %s: minibatch KL %.3f -> %.3f\n", mode == EG_LEARNED_PQ ? "pq" : "reps", a / 10, b / 10);
        CHECK(b < 0.9 * a);
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
        printf("  %s: calibration KL %.3f -> %.3f; another text %.3f -> %.3f\n",
               mode == EG_LEARNED_PQ ? "pq" : "reps", kl0, kl1, h0, h1);
        CHECK(kl1 < 0.8 * kl0);
        eg_learned_free(w0);
        eg_learned_free(w);
    }
    fixture_free(&f);
    fixture_free(&held);
}

/* Scores of every segment with weights w over keys [nseg*64][64]. */
static int scores(const eg_learned *w, const float *keys, size_t nseg, const float *q, float *out)
{
    eg_summary_spec sp = { EG_ROUTER_LEARNED, 64, 64, w };
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
    for (int mode = EG_LEARNED_PQ; mode <= EG_LEARNED_REPS; mode++) {
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
    eg_summary_spec sp = { EG_ROUTER_LEARNED, 32, 64, w };
    eg_route_table *t = NULL;
    CHECK_EQ_INT(eg_route_table_create(&sp, &t), EG_IX_EDIM);
    eg_learned_free(w);
    fixture_free(&f);
}

int main(void)
{
    TEST_RUN(test_training_lowers_loss);
    TEST_RUN(test_weights_bytes);
    TEST_RUN(test_bad_config_and_data);
    TEST_END();
}
