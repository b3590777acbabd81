/* test_index.c: the router (index/): quest bounds under every codec, the
 * hierarchy against the flat scan, the lost-mass bound against the true lost
 * mass, the indexer against a plain loop, tags, forced segments, causality,
 * oracle, and bad input. */
#include "index.h"
#include "memory.h"
#include "testutil.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

/* Keys [T][d] of a named pattern. */
enum { PAT_NORMAL, PAT_OUTLIER, PAT_HUGE, PAT_TIES, PAT_DRIFT, PAT_SPIKE, PAT_COUNT };
static const char *pat_name[] = { "normal", "outlier", "huge", "ties", "drift", "spike" };

static float *make_keys(int pat, size_t T, int d, uint64_t seed)
{
    float *k = malloc(sizeof(float) * T * d);
    uint64_t s = seed * 2654435761u + 7;
    for (size_t t = 0; t < T; t++)
        for (int c = 0; c < d; c++) {
            float x = tu_randn(&s);
            switch (pat) {
            case PAT_OUTLIER: if (c == 3) x = 40.0f + x; if (c == 7) x *= 25.0f; break;
            case PAT_HUGE: if (c == 1 && t % 97 == 5) x = 1.0e5f * (x > 0 ? 1 : -1); break;  /* beyond f16 */
            case PAT_TIES: x = (float)((c * 7 + (int)(t / 64)) % 5) - 2.0f; break;
            case PAT_DRIFT: x = 4.0f * cosf((float)t / 3000.0f * (float)(c + 1)) + 0.3f * x; break;
            case PAT_SPIKE: if (t % 1000 == 333) x *= 12.0f; break;
            default: break;
            }
            k[t * d + c] = x;
        }
    return k;
}

static void make_queries(float *q, int nr, int d, uint64_t seed, float amp)
{
    uint64_t s = seed * 97 + 3;
    for (int i = 0; i < nr * d; i++) q[i] = amp * tu_randn(&s);
}

/* Quest tables of the tests: int8 in RAM (0, the default) or f16 (1); the
 * quest tests run with both. */
static int g_quest_f16;
/* The bound table of the tests that take either: quest's box or the ball;
 * the tests run with both. */
static eg_router_kind g_bound = EG_ROUTER_QUEST;

/* A table of kind over nseg segments of keys [nseg*S][d]. */
static eg_route_table *build(eg_router_kind kind, const float *keys, size_t nseg, int d, int S,
                             const uint32_t *tags, const eg_learned *w)
{
    eg_summary_spec sp = { kind, d, S, w, g_quest_f16 };
    size_t b;
    if (eg_summary_bytes(&sp, &b) < 0) return NULL;
    uint8_t *sum = malloc(b * nseg + 1);
    for (size_t s = 0; s < nseg; s++)
        if (eg_summary_compute(&sp, keys + s * S * d, sum + s * b, b) < 0) { free(sum); return NULL; }
    eg_route_table *t = NULL;
    if (eg_route_table_create(&sp, &t) < 0 || eg_route_table_append(t, sum, nseg, tags) < 0) {
        eg_route_table_free(t);
        t = NULL;
    }
    free(sum);
    return t;
}

static double dotd(const float *a, const float *b, int d)
{
    double s = 0;
    for (int i = 0; i < d; i++) s += (double)a[i] * b[i];
    return s;
}

/* Quest's score is never below the true max of q.k in its segment, for keys
 * as every codec decodes them. */
static void test_quest_bound_every_codec(void)
{
    const int d = 64, S = 64;
    const size_t nseg = 24;
    for (int pat = 0; pat < PAT_COUNT; pat++)
        for (int codec = 0; codec < EG_CODEC_COUNT; codec++) {
            float *k = make_keys(pat, nseg * S, d, (uint64_t)pat * 10 + codec);
            /* Keys as attention sees them: decode(encode(k)) per segment. */
            size_t eb;
            if (pat == PAT_HUGE && codec == EG_CODEC_F16) { free(k); continue; }  /* f16 refuses it */
            REQUIRE(eg_codec_size(codec, EG_KIND_K, S, d, &eb) == 0);
            void *enc = malloc(eb);
            for (size_t s = 0; s < nseg; s++) {
                CHECK_OK(eg_codec_encode(codec, EG_KIND_K, k + s * S * d, S, d, enc, eb));
                CHECK_OK(eg_codec_decode(codec, EG_KIND_K, enc, eb, S, d, k + s * S * d));
            }
            free(enc);
            eg_route_table *t = build(EG_ROUTER_QUEST, k, nseg, d, S, NULL, NULL);
            REQUIRE(t);
            float q[8 * 64], sc[8 * 24];
            make_queries(q, 8, d, (uint64_t)pat + 100, pat == PAT_HUGE ? 1e-3f : 1.0f);
            eg_route_rows rows = { .n_rows = 8, .q = q, .scale = 0.125f };
            CHECK_OK(eg_router_score_all(t, &rows, sc));
            int bad = 0;
            for (int r = 0; r < 8; r++)
                for (size_t s = 0; s < nseg; s++) {
                    double mx = -INFINITY;
                    for (int i = 0; i < S; i++) {
                        double v = dotd(q + r * d, k + (s * S + i) * d, d);
                        mx = v > mx ? v : mx;
                    }
                    if ((double)sc[r * nseg + s] < mx) bad++;
                }
            if (bad) fprintf(stderr, "  pattern %s codec %s: %d scores below the max\n", pat_name[pat],
                             eg_codec_name(codec), bad);
            CHECK(bad == 0);
            eg_route_table_free(t);
            free(k);
        }
}

static int same_selection(const eg_route_selection *a, const eg_route_selection *b)
{
    if (a->n != b->n || a->n_forced != b->n_forced) return 0;
    for (size_t i = 0; i < a->n; i++)
        if (a->segments[i] != b->segments[i] || memcmp(&a->scores[i], &b->scores[i], 4) != 0) return 0;
    return 1;
}

/* Saved and loaded int8 quest tables route like the table they came from
 * (scores, selections and bounds bit for bit, also after both grow), and
 * bytes that are not what save wrote are refused. */
static void test_table_save_load(void)
{
    const int d = 48, S = 16;
    const size_t n0 = 300, n1 = 70;
    float *k = make_keys(PAT_OUTLIER, (n0 + n1) * S, d, 77);
    uint32_t tags[370];
    for (size_t i = 0; i < n0 + n1; i++) tags[i] = (uint32_t)(i % 5);
    eg_summary_spec sp = { g_bound, d, S, NULL, 0 };
    size_t sb;
    REQUIRE(eg_summary_bytes(&sp, &sb) == 0);
    uint8_t *sum = malloc(sb * (n0 + n1));
    for (size_t i = 0; i < n0 + n1; i++) CHECK_OK(eg_summary_compute(&sp, k + i * S * d, sum + i * sb, sb));
    eg_route_table *a, *b;
    REQUIRE(eg_route_table_create(&sp, &a) == 0);
    CHECK_OK(eg_route_table_append(a, sum, n0, tags));
    void *bytes;
    size_t len;
    CHECK_OK(eg_route_table_save(a, &bytes, &len));
    REQUIRE(eg_route_table_load(&sp, bytes, len, &b) == 0);
    CHECK_EQ_INT(eg_route_table_segments(b), n0);
    for (int grown = 0; grown < 2; grown++) {
        if (grown) {
            CHECK_OK(eg_route_table_append(a, sum + n0 * sb, n1, tags + n0));
            CHECK_OK(eg_route_table_append(b, sum + n0 * sb, n1, tags + n0));
        }
        size_t n = eg_route_table_segments(a);
        float q[4 * 48], *sa = malloc(4 * n * 4), *sbb = malloc(4 * n * 4);
        make_queries(q, 4, d, 5 + (uint64_t)grown, 1.0f);
        int64_t pos[4] = {(int64_t)(n * S), (int64_t)(n * S) - 3, (int64_t)(n * S / 2), (int64_t)(n * S)};
        eg_route_rows rows = { .n_rows = 4, .q = q, .pos = pos, .scale = 0.14f };
        CHECK_OK(eg_router_score_all(a, &rows, sa));
        CHECK_OK(eg_router_score_all(b, &rows, sbb));
        CHECK(memcmp(sa, sbb, 4 * n * 4) == 0);
        uint32_t want[2] = {1, 3};
        for (int tagged = 0; tagged < 2; tagged++) {
            eg_route_opts o;
            eg_route_opts_init(&o);
            o.budget_tokens = S * 40;
            if (tagged) { o.tags = want; o.n_tags = 2; }
            eg_route_selection x, y;
            double *ux, *uy;
            CHECK_OK(eg_router_select_bound(a, &rows, &o, &x, &ux));
            CHECK_OK(eg_router_select_bound(b, &rows, &o, &y, &uy));
            CHECK(same_selection(&x, &y));
            CHECK(memcmp(ux, uy, sizeof(double) * 4 * (x.n - x.n_forced + 1)) == 0);
            free(ux); free(uy);
            eg_route_selection_free(&x);
            eg_route_selection_free(&y);
        }
        free(sa); free(sbb);
    }
    eg_route_table_free(b);
    /* Refusals: each a copy of the bytes with one thing changed. */
    uint8_t *c = malloc(len);
    eg_route_table *t = NULL;
    memcpy(c, bytes, len); c[4]++;                                   /* version */
    CHECK_EQ_INT(eg_route_table_load(&sp, c, len, &t), EG_IX_EVERSION);
    memcpy(c, bytes, len); c[8] ^= 0xff;                             /* byte order */
    CHECK_EQ_INT(eg_route_table_load(&sp, c, len, &t), EG_IX_EVERSION);
    memcpy(c, bytes, len); c[len / 2] ^= 1;                          /* a flipped bit */
    CHECK_EQ_INT(eg_route_table_load(&sp, c, len, &t), EG_IX_ECORRUPT);
    CHECK_EQ_INT(eg_route_table_load(&sp, bytes, len - 1, &t), EG_IX_ECORRUPT);
    CHECK_EQ_INT(eg_route_table_load(&sp, bytes, 10, &t), EG_IX_ECORRUPT);
    eg_summary_spec other = sp;
    other.dim = 32;
    CHECK_EQ_INT(eg_route_table_load(&other, bytes, len, &t), EG_IX_ECORRUPT);
    other = sp;
    other.quest_f16 = 1;
    CHECK_EQ_INT(eg_route_table_load(&other, bytes, len, &t), EG_IX_ECORRUPT);
    /* Checksum-valid bytes the encoder would not make: an L1 that is not
     * its codes' sum, a scale that is not a power of two. Offsets follow
     * the layout of index/table_io.c. */
    size_t width = g_bound == EG_ROUTER_BALL ? (size_t)d : 2 * (size_t)d;
    size_t nq = (width + 3) / 4, codes = (n0 + 7) / 8 * nq * 8 * 4;
    size_t off_s = 40 + (size_t)d + n0 * 4 + codes, off_l1 = off_s + n0 * 4, off_r = off_l1 + n0 * 4 + n0;
    for (int what = 0; what < (g_bound == EG_ROUTER_BALL ? 4 : 2); what++) {
        memcpy(c, bytes, len);
        if (what == 0) c[off_l1 + 4 * 7]++;
        else if (what == 1) { float v; memcpy(&v, c + off_s + 4 * 9, 4); v *= 1.5f; memcpy(c + off_s + 4 * 9, &v, 4); }
        else { float v = what == 2 ? -1.0f : NAN; memcpy(c + off_r + 4 * 11, &v, 4); }   /* ball: a radius */
        uint64_t hsum = XXH64(c, len - 8, 0);
        memcpy(c + len - 8, &hsum, 8);
        CHECK_EQ_INT(eg_route_table_load(&sp, c, len, &t), EG_IX_ECORRUPT);
        CHECK(strstr(eg_index_last_error(), "encoder") != NULL);
    }
    CHECK(t == NULL);
    CHECK_EQ_INT(eg_route_table_load(NULL, bytes, len, &t), EG_IX_EINVAL);
    /* Only int8 quest tables save. */
    eg_summary_spec f16 = sp;
    f16.kind = EG_ROUTER_QUEST;   /* ball tables are int8 whatever quest_f16 says */
    f16.quest_f16 = 1;
    eg_route_table *h;
    REQUIRE(eg_route_table_create(&f16, &h) == 0);
    void *hb;
    size_t hl;
    CHECK_EQ_INT(eg_route_table_save(h, &hb, &hl), EG_IX_EKIND);
    CHECK_EQ_INT(eg_route_table_save(NULL, &hb, &hl), EG_IX_EINVAL);
    eg_route_table_free(h);
    free(c);
    free(bytes);
    eg_route_table_free(a);
    free(sum);
    free(k);
}

/* A table reserved up front routes as one grown by doubling; bad
 * reservations are refused and change nothing. */
static void test_table_reserve(void)
{
    const int d = 32, S = 16;
    const size_t n = 300;
    float *k = make_keys(PAT_NORMAL, n * S, d, 91);
    for (int f16 = 0; f16 < 2; f16++) {
        g_quest_f16 = f16;
        eg_route_table *a = build(EG_ROUTER_QUEST, k, n, d, S, NULL, NULL);
        eg_summary_spec sp = { EG_ROUTER_QUEST, d, S, NULL, f16 };
        size_t sb;
        REQUIRE(a && eg_summary_bytes(&sp, &sb) == 0);
        uint8_t *sum = malloc(sb * n);
        for (size_t i = 0; i < n; i++) CHECK_OK(eg_summary_compute(&sp, k + i * S * d, sum + i * sb, sb));
        eg_route_table *b;
        REQUIRE(eg_route_table_create(&sp, &b) == 0);
        CHECK_OK(eg_route_table_reserve(b, 1000));
        CHECK_OK(eg_route_table_reserve(b, 10));        /* smaller: nothing to do */
        CHECK_EQ_INT(eg_route_table_reserve(b, (size_t)1 << 41), EG_IX_EINVAL);
        CHECK_EQ_INT(eg_route_table_reserve(NULL, 10), EG_IX_EINVAL);
        for (size_t i = 0; i < n; i += 70) CHECK_OK(eg_route_table_append(b, sum + i * sb, i + 70 < n ? 70 : n - i, NULL));
        CHECK_EQ_INT(eg_route_table_segments(b), n);
        float q[2 * 32], sa[2 * 300], sbb[2 * 300];
        make_queries(q, 2, d, 3, 1.0f);
        eg_route_rows rows = { .n_rows = 2, .q = q, .scale = 0.2f };
        CHECK_OK(eg_router_score_all(a, &rows, sa));
        CHECK_OK(eg_router_score_all(b, &rows, sbb));
        CHECK(memcmp(sa, sbb, sizeof sa) == 0);
        eg_route_table_free(a);
        eg_route_table_free(b);
        free(sum);
    }
    g_quest_f16 = 0;
    free(k);
}

/* Tables whose int8 codes pass 2 MB (where they move to 2 MB-aligned
 * memory asking for huge pages, table.c) keep every segment through each
 * growth: appended in pieces (several moves, each copying what was there)
 * they score as one built at once, on every kernel choice, quest and
 * ball; and the same after a snapshot round trip. */
static void test_table_growth_huge(void)
{
    const int d = 256, S = 16;
    const size_t n = 4700;   /* quest: 512 code bytes a segment, 2 MB at 4096 */
    float *base = make_keys(PAT_NORMAL, 64 * S, d, 93), *k = malloc(sizeof(float) * S * d);
    float q[3 * 256];
    make_queries(q, 3, d, 5, 1.0f);
    eg_route_rows rows = { .n_rows = 3, .q = q, .scale = 0.1f };
    for (int kind = 0; kind < 2; kind++) {
        eg_router_kind rk = kind ? EG_ROUTER_BALL : EG_ROUTER_QUEST;
        size_t m = kind ? 2 * n : n;   /* ball: 256 code bytes a segment */
        eg_summary_spec sp = { rk, d, S, NULL, 0 };
        size_t sb;
        REQUIRE(eg_summary_bytes(&sp, &sb) == 0);
        uint8_t *sum = malloc(sb * m);
        for (size_t i = 0; i < m; i++) {   /* 64 blocks of keys, each segment scaled and shifted its own way */
            const float *b0 = base + (i % 64) * S * d;
            for (int j = 0; j < S * d; j++) k[j] = b0[j] * (1.0f + 0.001f * (float)(i % 997)) + 0.01f * (float)(i / 64 % 50);
            CHECK_OK(eg_summary_compute(&sp, k, sum + i * sb, sb));
        }
        eg_route_table *a, *b, *c = NULL;
        REQUIRE(eg_route_table_create(&sp, &a) == 0 && eg_route_table_create(&sp, &b) == 0);
        CHECK_OK(eg_route_table_append(a, sum, m, NULL));
        for (size_t i = 0; i < m; i += 613) CHECK_OK(eg_route_table_append(b, sum + i * sb, i + 613 < m ? 613 : m - i, NULL));
        void *snap = NULL;
        size_t snap_len = 0;
        CHECK_OK(eg_route_table_save(b, &snap, &snap_len));
        CHECK_OK(eg_route_table_load(&sp, snap, snap_len, &c));
        REQUIRE(c != NULL);
        float *out[3][3];
        int same = 1;
        const eg_route_table *tabs[3] = { a, b, c };
        for (int i = 0; i < 3; i++) CHECK_OK(tu_scores_every_kernel(tabs[i], &rows, m, out[i]));
        for (int i = 1; i < 3; i++)
            for (int w = 0; w < 3; w++) same &= memcmp(out[0][w], out[i][w], sizeof(float) * 3 * m) == 0;
        for (int w = 1; w < 3; w++) same &= memcmp(out[0][0], out[0][w], sizeof(float) * 3 * m) == 0;
        CHECK(same);
        printf("  %s: %zu segments in pieces of 613, past 2 MB of codes, score as built at once: %s\n",
               eg_router_name(rk), m, same ? "yes" : "no");
        for (int i = 0; i < 3; i++)
            for (int w = 0; w < 3; w++) free(out[i][w]);
        eg_route_table_free(a);
        eg_route_table_free(b);
        eg_route_table_free(c);
        free(snap);
        free(sum);
    }
    free(k);
    free(base);
}

/* A quest table over keys of pattern pat (n segments, every segment
 * tagged s % 3): *keys and *tags are malloc'd for the caller. */
static eg_route_table *tagged_quest(int pat, size_t n, int d, int S, uint64_t seed, float **keys, uint32_t **tags)
{
    *keys = make_keys(pat, n * S, d, seed);
    *tags = malloc(sizeof(uint32_t) * n);
    for (size_t s = 0; s < n; s++) (*tags)[s] = (uint32_t)(s % 3);
    return build(g_bound, *keys, n, d, S, *tags, NULL);
}

/* Options of a random call: budget of 1..40 segments, 0..2 sinks, a
 * recent window of 0..99 tokens. */
static void random_opts(eg_route_opts *o, uint64_t *rs, int S)
{
    eg_route_opts_init(o);
    o->budget_tokens = (int64_t)(S * (1 + tu_rand(rs) % 40));
    o->n_sink_segments = (int)(tu_rand(rs) % 3);
    o->recent_tokens = (int64_t)(tu_rand(rs) % 100);
}

/* Hierarchical top-k equals the flat scan's, over sizes around group edges,
 * ties, tags, positions and budgets; on drifting keys it scores fewer. */
static void test_hierarchy_equals_flat(void)
{
    const int d = 32, S = 16;
    const size_t sizes[] = { 1, 2, 31, 32, 33, 100, 1000, 5000 };
    uint64_t rs = 11;
    int cases = 0, saved = 0;
    for (size_t zi = 0; zi < sizeof sizes / sizeof *sizes; zi++)
        for (int pat = 0; pat < PAT_COUNT; pat++) {
            size_t n = sizes[zi];
            float *k;
            uint32_t *tags;
            eg_route_table *t = tagged_quest(pat, n, d, S, zi * 31 + (size_t)pat, &k, &tags);
            REQUIRE(t);
            for (int trial = 0; trial < 6; trial++) {
                int nr = 1 + (int)(tu_rand(&rs) % 8);
                float q[8 * 32];
                int64_t pos[8];
                make_queries(q, nr, d, rs + (uint64_t)trial, 1.0f);
                for (int r = 0; r < nr; r++) pos[r] = (int64_t)(tu_rand(&rs) % (n * S));
                eg_route_rows rows = { .n_rows = nr, .q = q, .pos = trial % 2 ? pos : NULL, .scale = 0.2f };
                eg_route_opts o;
                random_opts(&o, &rs, S);
                uint32_t want = 1;
                if (trial == 4) { o.tags = &want; o.n_tags = 1; }
                eg_route_selection a, b;
                o.aggregate = EG_ROUTE_AGG_MAX;   /* the hierarchy ranks by MAX (ball's own is MASS) */
                o.hierarchical = 0;
                CHECK_OK(eg_router_select(t, &rows, &o, &a));
                o.hierarchical = 1;
                CHECK_OK(eg_router_select(t, &rows, &o, &b));
                if (!same_selection(&a, &b))
                    fprintf(stderr, "  n=%zu pattern %s trial %d: hierarchical differs from flat\n", n,
                            pat_name[pat], trial);
                CHECK(same_selection(&a, &b));
                cases++;
                if (pat == PAT_DRIFT && n == 5000 && b.scored < n / 2) saved++;
                eg_route_selection_free(&a);
                eg_route_selection_free(&b);
            }
            eg_route_table_free(t);
            free(tags);
            free(k);
        }
    printf("  %d selections compared; %d of 6 drifting 5000-segment cases scored under half\n", cases, saved);
    CHECK(saved >= 3);
}

/* True lost mass of row r (double, log domain) and the selection's bound
 * at every prefix; the bound is never below the truth. */
static int check_bound_given(const eg_route_table *quest, const float *k, size_t nseg, int d, int S,
                             const eg_route_rows *rows, const eg_route_selection *sel, double *tight,
                             const double *given)
{
    size_t n_order = sel->n - sel->n_forced, nr = (size_t)rows->n_rows;
    double *lub = malloc(sizeof(double) * nr * (n_order + 1));
    int viol = 0;
    if (given) memcpy(lub, given, sizeof(double) * nr * (n_order + 1));
    else if (eg_route_unselected_bound(quest, rows, sel, lub) < 0) { free(lub); return -1; }
    uint8_t *in = calloc(nseg, 1);
    for (size_t r = 0; r < nr; r++) {
        int64_t last = rows->pos ? rows->pos[r] : (int64_t)(nseg * S) - 1;
        if (last >= (int64_t)(nseg * S)) last = (int64_t)(nseg * S) - 1;
        memset(in, 0, nseg);
        for (size_t i = 0; i < sel->n_forced; i++) in[sel->segments[i]] = 1;
        for (size_t i = 0; i <= n_order; i++) {
            if (i > 0) in[sel->segments[sel->n_forced + i - 1]] = 1;
            double mx = -INFINITY;
            for (int64_t j = 0; j <= last; j++) {
                double v = rows->scale * dotd(rows->q + r * d, k + j * d, d);
                mx = v > mx ? v : mx;
            }
            double zs = 0, zu = 0;
            for (int64_t j = 0; j <= last; j++) {
                double e = exp(rows->scale * dotd(rows->q + r * d, k + j * d, d) - mx);
                if (in[j / S]) zs += e; else zu += e;
            }
            double lost = zu / (zs + zu);
            double lse_sel = zs > 0 ? mx + log(zs) : -INFINITY;
            double b = eg_lost_mass_bound(lub[r * (n_order + 1) + i], lse_sel);
            if (b < lost * (1 - 1e-9) - 1e-300) {
                viol++;
                fprintf(stderr, "  row %zu prefix %zu: bound %.9g < true lost %.9g\n", r, i, b, lost);
            }
            if (tight && lost > 1e-6 && i == n_order) *tight = fmax(*tight, b / lost);
        }
    }
    free(in);
    free(lub);
    return viol;
}

static int check_bound(const eg_route_table *quest, const float *k, size_t nseg, int d, int S,
                       const eg_route_rows *rows, const eg_route_selection *sel, double *tight)
{
    return check_bound_given(quest, k, nseg, d, S, rows, sel, tight, NULL);
}

/* eg_route_prep_* (the steps a caller shares out over threads) selects
 * what eg_router_select_bound selects, bit for bit, and bounds within the
 * coarse groups' share (< 1e-3 in log) of it, never below the true lost
 * mass, whatever ranges the parts are scored in and in whatever order. */
static void test_prep_equals_select_bound(void)
{
    const int d = 32, S = 16;
    const size_t sizes[] = { 1, 33, 300, 3000 };
    uint64_t rs = 23;
    int cases = 0, listed = 0;
    double worst = 0;
    for (size_t zi = 0; zi < sizeof sizes / sizeof *sizes; zi++)
        for (int pat = 0; pat < PAT_COUNT; pat++) {
            size_t n = sizes[zi];
            float *k;
            uint32_t *tags;
            eg_route_table *t = tagged_quest(pat, n, d, S, zi * 17 + (size_t)pat, &k, &tags);
            REQUIRE(t);
            for (int trial = 0; trial < 4; trial++) {
                int nr = 1 + (int)(tu_rand(&rs) % 6);
                float q[6 * 32];
                int64_t pos[6];
                make_queries(q, nr, d, rs + (uint64_t)trial, trial == 3 ? 3.0f : 1.0f);
                for (int r = 0; r < nr; r++) pos[r] = (int64_t)(tu_rand(&rs) % (n * S));
                eg_route_rows rows = { .n_rows = nr, .q = q, .pos = trial % 2 ? pos : NULL, .scale = 0.2f };
                eg_route_opts o;
                random_opts(&o, &rs, S);
                uint32_t want = 1;
                if (trial == 2) { o.tags = &want; o.n_tags = 1; }
                eg_route_selection a, b;
                double *ua = NULL, *ub = NULL;
                eg_route_prep *p = NULL;
                CHECK_OK(eg_router_select_bound(t, &rows, &o, &a, &ua));
                CHECK_OK(eg_route_prep_begin(t, &rows, &o, &p));
                REQUIRE(p);
                size_t ni = eg_route_prep_items(p), cut[4] = { 0, 0, 0, ni };
                cut[1] = ni ? tu_rand(&rs) % (ni + 1) : 0;
                cut[2] = cut[1] + (ni > cut[1] ? tu_rand(&rs) % (ni - cut[1] + 1) : 0);
                for (int part = 2; part >= 0; part--) eg_route_prep_score(p, cut[part], cut[part + 1]);
                listed += ni > 0;
                CHECK_OK(eg_route_prep_finish(p, &b, &ub));
                eg_route_prep_free(p);
                CHECK(same_selection(&a, &b));
                size_t no = b.n - b.n_forced;
                for (size_t i = 0; i < (size_t)nr * (no + 1) && same_selection(&a, &b); i++) {
                    if (ua[i] == ub[i]) continue;
                    double diff = fabs(ua[i] - ub[i]);
                    worst = diff > worst ? diff : worst;
                    CHECK(diff <= 1e-3);
                }
                if (n <= 300) CHECK(check_bound_given(t, k, n, d, S, &rows, &b, NULL, ub) == 0);
                cases++;
                eg_route_selection_free(&a);
                eg_route_selection_free(&b);
                free(ua);
                free(ub);
            }
            eg_route_table_free(t);
            free(tags);
            free(k);
        }
    printf("  %d calls compared (%d with groups listed); largest log-bound difference %.2g\n", cases, listed, worst);
    CHECK(listed > cases / 2);
    /* bad input */
    eg_route_prep *p = (eg_route_prep *)1;
    eg_route_opts o;
    eg_route_opts_init(&o);
    o.budget_tokens = 64;
    float q[32] = { 0 };
    eg_route_rows rows = { .n_rows = 1, .q = q, .scale = 0.2f };
    CHECK(eg_route_prep_begin(NULL, &rows, &o, &p) == EG_IX_EINVAL && p == NULL);
    float *k = make_keys(PAT_NORMAL, 4 * S, d, 1);
    eg_route_table *c = build(EG_ROUTER_CENTROID, k, 4, d, S, NULL, NULL);
    REQUIRE(c);
    CHECK(eg_route_prep_begin(c, &rows, &o, &p) == EG_IX_EKIND);
    eg_route_table_free(c);
    eg_route_table *t = build(EG_ROUTER_QUEST, k, 4, d, S, NULL, NULL);
    REQUIRE(t);
    o.budget_tokens = 0;
    CHECK(eg_route_prep_begin(t, &rows, &o, &p) == EG_IX_EBUDGET);
    o.budget_tokens = 64;
    q[5] = NAN;
    CHECK(eg_route_prep_begin(t, &rows, &o, &p) == EG_IX_ENONFINITE && p == NULL);
    q[5] = 0;
    CHECK(eg_route_prep_finish(NULL, NULL, NULL) == EG_IX_EINVAL);
    eg_route_prep_free(NULL);
    eg_route_table_free(t);
    free(k);
}

static void test_lost_mass_bound(void)
{
    const int d = 32, S = 16;
    const size_t nseg = 60;
    uint64_t rs = 5;
    int total = 0;
    double tight = 0;
    for (int pat = 0; pat < PAT_COUNT; pat++)
        for (int trial = 0; trial < 4; trial++) {
            float *k = make_keys(pat, nseg * S, d, (uint64_t)pat * 7 + (uint64_t)trial);
            eg_route_table *quest = build(g_bound, k, nseg, d, S, NULL, NULL);
            eg_route_table *cent = build(EG_ROUTER_CENTROID, k, nseg, d, S, NULL, NULL);
            REQUIRE(quest && cent);
            int nr = 4;
            float q[4 * 32];
            int64_t pos[4];
            make_queries(q, nr, d, rs++, pat == PAT_HUGE ? 1e-4f : (trial == 3 ? 3.0f : 1.0f));
            for (int r = 0; r < nr; r++) pos[r] = (int64_t)(tu_rand(&rs) % (nseg * S));
            eg_route_rows rows = { .n_rows = nr, .q = q, .pos = trial % 2 ? pos : NULL, .scale = 0.18f };
            eg_route_opts o;
            eg_route_opts_init(&o);
            o.budget_tokens = S * (2 + trial * 5);
            o.recent_tokens = 3 * S;
            eg_route_selection sel;
            CHECK_OK(eg_router_select(trial == 2 ? cent : quest, &rows, &o, &sel));
            int v = check_bound(quest, k, nseg, d, S, &rows, &sel, &tight);
            CHECK(v == 0);
            total += v;
            /* max_lost: the prefix found meets the target when the full order does. */
            size_t n_order = sel.n - sel.n_forced, pre = 0;
            double *lub = malloc(sizeof(double) * nr * (n_order + 1));
            double *lse = malloc(sizeof(double) * nr * (n_order + 1));
            CHECK_OK(eg_route_unselected_bound(quest, &rows, &sel, lub));
            for (int r = 0; r < nr; r++)
                for (size_t i = 0; i <= n_order; i++) {
                    /* exact lse of forced + routed[0..i) for the row */
                    int64_t last = rows.pos ? pos[r] : (int64_t)(nseg * S) - 1;
                    double mx = -INFINITY, z = 0;
                    for (size_t j = 0; j < sel.n_forced + i; j++)
                        for (int t = 0; t < S; t++) {
                            int64_t tok = sel.segments[j] * S + t;
                            if (tok > last) continue;
                            double val = 0.18 * dotd(q + r * d, k + tok * d, d);
                            if (val > mx) { z = z * exp(mx - val) + 1; mx = val; } else z += exp(val - mx);
                        }
                    lse[r * (n_order + 1) + i] = z > 0 ? mx + log(z) : -INFINITY;
                }
            double worst;
            CHECK_OK(eg_route_prefix_for_bound(lub, lse, nr, n_order, 0.05, &pre, &worst));
            double full_worst = 0;
            for (int r = 0; r < nr; r++) {
                size_t kk = (size_t)r * (n_order + 1) + n_order;
                full_worst = fmax(full_worst, eg_lost_mass_bound(lub[kk], lse[kk]));
            }
            if (full_worst <= 0.05) CHECK(worst <= 0.05 && pre <= n_order);
            else CHECK(pre == n_order);
            free(lub); free(lse);
            eg_route_selection_free(&sel);
            eg_route_table_free(quest);
            eg_route_table_free(cent);
            free(k);
        }
    printf("  24 selections, every prefix: %d violations; worst bound/true at full budget %.3g\n", total, tight);
}

/* A needle far from the query's top-k stays inside the bound: spike keys
 * that a tight budget leaves out are still counted. */
static void test_bound_needle_left_out(void)
{
    const int d = 16, S = 16;
    const size_t nseg = 40;
    float *k = make_keys(PAT_NORMAL, nseg * S, d, 3);
    float q[16];
    make_queries(q, 1, d, 9, 1.0f);
    for (int c = 0; c < d; c++) k[(17 * S + 5) * d + c] = 6.0f * q[c];   /* needle in segment 17 */
    eg_route_table *quest = build(g_bound, k, nseg, d, S, NULL, NULL);
    eg_route_table *cent = build(EG_ROUTER_CENTROID, k, nseg, d, S, NULL, NULL);
    REQUIRE(quest && cent);
    eg_route_rows rows = { .n_rows = 1, .q = q, .scale = 0.25f };
    eg_route_opts o;
    eg_route_opts_init(&o);
    o.budget_tokens = 3 * S;
    o.recent_tokens = S;
    eg_route_selection sel;
    CHECK_OK(eg_router_select(quest, &rows, &o, &sel));
    int found = 0;
    for (size_t i = 0; i < sel.n; i++) found |= sel.segments[i] == 17;
    CHECK(found);   /* quest ranks the needle's segment first */
    eg_route_selection_free(&sel);
    o.budget_tokens = S;   /* only forced: the needle is out, the bound must say so */
    CHECK_OK(eg_router_select(cent, &rows, &o, &sel));
    double tight = 0;
    CHECK(check_bound(quest, k, nseg, d, S, &rows, &sel, &tight) == 0);
    double lub;
    CHECK_OK(eg_route_unselected_bound(quest, &rows, &sel, &lub));
    CHECK(lub > 0.25 * dotd(q, k + (17 * S + 5) * d, d) - 1e-3);
    eg_route_selection_free(&sel);
    eg_route_table_free(quest);
    eg_route_table_free(cent);
    free(k);
}

/* Indexer scores against a plain loop over the stored q8 keys. */
/* Indexer scores of both kernels (portable, AVX2) against a plain loop
 * over the stored q8 keys, for shapes whose (row, head) queries span
 * several of the kernel's passes. */
static void indexer_case(int d, int S, int H, int nr, size_t nseg, double *worst, double *qerr)
{
    float *ik = make_keys(PAT_OUTLIER, nseg * S, d, 44 + (uint64_t)d);
    eg_summary_spec sp = { EG_ROUTER_INDEXER, d, S, NULL, 0 };
    size_t b;
    CHECK_OK(eg_summary_bytes(&sp, &b));
    CHECK_EQ_INT(b, (size_t)S * (4 + d));
    uint8_t *sum = malloc(b * nseg);
    for (size_t s = 0; s < nseg; s++) CHECK_OK(eg_summary_compute(&sp, ik + s * S * d, sum + s * b, b));
    eg_route_table *t;
    CHECK_OK(eg_route_table_create(&sp, &t));
    CHECK_OK(eg_route_table_append(t, sum, nseg / 2, NULL));   /* in two appends */
    CHECK_OK(eg_route_table_append(t, sum + nseg / 2 * b, nseg - nseg / 2, NULL));
    float *iq = malloc(sizeof(float) * nr * H * d), *iw = malloc(sizeof(float) * nr * H), *sc = malloc(sizeof(float) * nr * nseg);
    make_queries(iq, nr * H, d, 5, 1.0f);
    uint64_t s0 = 77;
    for (int i = 0; i < nr * H; i++) iw[i] = tu_randf(&s0);
    eg_route_rows rows = { .n_rows = nr, .scale = 1.0f, .n_index_heads = H, .index_q = iq, .index_w = iw };
    for (int port = 1; port >= 0; port--) {
        eg_index_kernels(port);
        CHECK_OK(eg_router_score_all(t, &rows, sc));
        for (int r = 0; r < nr; r++)
            for (size_t s = 0; s < nseg; s++) {
                double best = -INFINITY, best_f = -INFINITY;
                for (int i = 0; i < S; i++) {
                    const uint8_t *row = sum + s * b + (size_t)i * (4 + d);
                    float scale;
                    memcpy(&scale, row, 4);
                    double v = 0, vf = 0;
                    for (int h = 0; h < H; h++) {
                        double dot = 0, dotf = 0;
                        for (int c = 0; c < d; c++) {
                            dot += (double)iq[(r * H + h) * d + c] * scale * (int8_t)row[4 + c];
                            dotf += (double)iq[(r * H + h) * d + c] * ik[((s * S) + i) * d + c];
                        }
                        v += iw[r * H + h] * (dot > 0 ? dot : 0);
                        vf += iw[r * H + h] * (dotf > 0 ? dotf : 0);
                    }
                    best = v > best ? v : best;
                    best_f = vf > best_f ? vf : best_f;
                }
                *worst = fmax(*worst, fabs(best - sc[r * nseg + s]) / (1 + fabs(best)));
                *qerr = fmax(*qerr, fabs(best_f - sc[r * nseg + s]) / (1 + fabs(best_f)));
            }
    }
    eg_index_kernels(0);
    eg_route_table_free(t);
    free(sum); free(ik); free(iq); free(iw); free(sc);
}

static void test_indexer_reference(void)
{
    double worst = 0, qerr = 0;
    indexer_case(24, 16, 5, 3, 20, &worst, &qerr);
    indexer_case(100, 32, 1, 4, 9, &worst, &qerr);
    indexer_case(64, 64, 7, 2, 5, &worst, &qerr);
    printf("  indexer vs plain loop (both kernels): %.2g relative; vs unquantised keys %.2g\n", worst, qerr);
    CHECK(worst < 1e-5);
    CHECK(qerr < 0.2);   /* q8 of an outlier-channel key: what storing it q8 costs */
}

/* Tags, sinks, recent window, causality, oracle. */
static void test_forced_tags_causal_oracle(void)
{
    const int d = 16, S = 16;
    const size_t nseg = 50;
    float *k = make_keys(PAT_NORMAL, nseg * S, d, 8);
    uint32_t tags[50];
    for (size_t s = 0; s < nseg; s++) tags[s] = (uint32_t)(s % 4);
    eg_route_table *t = build(EG_ROUTER_QUEST, k, nseg, d, S, tags, NULL);
    REQUIRE(t);
    float q[2 * 16];
    make_queries(q, 2, d, 1, 1.0f);
    int64_t pos[2] = { 30 * S + 3, 25 * S };
    eg_route_rows rows = { .n_rows = 2, .q = q, .pos = pos, .scale = 0.25f };
    eg_route_opts o;
    eg_route_opts_init(&o);
    o.budget_tokens = 12 * S;
    o.n_sink_segments = 2;
    o.recent_tokens = 2 * S;
    uint32_t want[2] = { 1, 2 };
    o.tags = want;
    o.n_tags = 2;
    eg_route_selection sel;
    CHECK_OK(eg_router_select(t, &rows, &o, &sel));
    CHECK_EQ_INT(sel.n_visible, 31);
    /* forced: sinks 0, 1 and the segments overlapping tokens 452..483: 28, 29, 30 */
    CHECK_EQ_INT(sel.n_forced, 5);
    CHECK(sel.segments[0] == 0 && sel.segments[1] == 1 && sel.segments[2] == 28 &&
          sel.segments[3] == 29 && sel.segments[4] == 30);
    CHECK_EQ_INT(sel.n, 12);
    for (size_t i = sel.n_forced; i < sel.n; i++) {
        CHECK(sel.segments[i] <= 30);
        CHECK(tags[sel.segments[i]] == 1 || tags[sel.segments[i]] == 2);
        if (i > sel.n_forced) CHECK(sel.scores[i] <= sel.scores[i - 1]);
    }
    eg_route_selection_free(&sel);
    eg_route_table_free(t);
    /* Oracle: the top masses win. */
    eg_summary_spec osp = { EG_ROUTER_ORACLE, 0, S, NULL, 0 };
    CHECK_OK(eg_route_table_create(&osp, &t));
    CHECK_OK(eg_route_table_append(t, NULL, nseg, NULL));
    float mass[50];
    for (size_t s = 0; s < nseg; s++) mass[s] = (float)((s * 37) % 50);
    eg_route_rows orow = { .n_rows = 1, .scale = 1.0f, .oracle_mass = mass };
    o.tags = NULL; o.n_tags = 0; o.n_sink_segments = 0; o.recent_tokens = 0; o.budget_tokens = 3 * S;
    CHECK_OK(eg_router_select(t, &orow, &o, &sel));
    CHECK_EQ_INT(sel.n, 3);
    for (size_t i = 0; i < sel.n; i++) CHECK(mass[sel.segments[i]] == 49.0f - (float)i);
    eg_route_selection_free(&sel);
    eg_route_table_free(t);
    free(k);
}

/* Bad input: an error code and a message, never a crash. */
static void test_bad_input(void)
{
    const int d = 16, S = 16;
    eg_route_table *t = NULL;
    eg_summary_spec sp = { EG_ROUTER_QUEST, 0, S, NULL, 0 };
    CHECK_EQ_INT(eg_route_table_create(&sp, &t), EG_IX_EDIM);
    sp.dim = 2000;
    CHECK_EQ_INT(eg_route_table_create(&sp, &t), EG_IX_EDIM);
    sp.dim = d; sp.seg_tokens = 48;
    CHECK_EQ_INT(eg_route_table_create(&sp, &t), EG_IX_EDIM);
    sp.seg_tokens = S; sp.kind = (eg_router_kind)42;
    CHECK_EQ_INT(eg_route_table_create(&sp, &t), EG_IX_EKIND);
    sp.kind = EG_ROUTER_LEARNED;
    CHECK_EQ_INT(eg_route_table_create(&sp, &t), EG_IX_EINVAL);   /* no weights */
    eg_router_kind kk;
    CHECK_EQ_INT(eg_router_parse("lsh", &kk), EG_IX_EKIND);
    CHECK_OK(eg_router_parse("indexer", &kk));
    CHECK(kk == EG_ROUTER_INDEXER);
    sp.kind = EG_ROUTER_QUEST;
    float *k = make_keys(PAT_NORMAL, 4 * S, d, 1);
    uint8_t sum[4 * 64 * 4];
    CHECK_EQ_INT(eg_summary_compute(&sp, k, sum, 10), EG_IX_EDIM);       /* buffer too small */
    k[5] = NAN;
    CHECK_EQ_INT(eg_summary_compute(&sp, k, sum, sizeof sum), EG_IX_ENONFINITE);
    k[5] = INFINITY;
    CHECK_EQ_INT(eg_summary_compute(&sp, k, sum, sizeof sum), EG_IX_ENONFINITE);
    k[5] = 0.5f;
    for (int s = 0; s < 4; s++) CHECK_OK(eg_summary_compute(&sp, k + s * S * d, sum + s * 4 * d, 4 * d));
    CHECK_OK(eg_route_table_create(&sp, &t));
    /* a summary with min > max is corrupt; nothing of the batch is kept */
    uint8_t bad[4 * 64 * 4];
    memcpy(bad, sum, sizeof bad);
    memcpy(bad + 3 * 4 * d, sum + 3 * 4 * d + 2 * d, 2);    /* segment 3: max[0] := min[0] */
    memcpy(bad + 3 * 4 * d + 2 * d, sum + 3 * 4 * d, 2);    /* min[0] := max[0] */
    CHECK_EQ_INT(eg_route_table_append(t, bad, 4, NULL), EG_IX_ECORRUPT);
    CHECK_EQ_INT(eg_route_table_segments(t), 0);
    CHECK_OK(eg_route_table_append(t, sum, 4, NULL));
    CHECK_EQ_INT(eg_route_table_truncate(t, 9), EG_IX_ERANGE);
    float q[16] = { 1 };
    eg_route_rows rows = { .n_rows = 1, .q = q, .scale = 0.25f };
    eg_route_opts o;
    eg_route_opts_init(&o);
    eg_route_selection sel;
    o.budget_tokens = 0;
    CHECK_EQ_INT(eg_router_select(t, &rows, &o, &sel), EG_IX_EBUDGET);
    o.budget_tokens = 64;
    rows.n_rows = 0;
    CHECK_EQ_INT(eg_router_select(t, &rows, &o, &sel), EG_IX_EDIM);
    rows.n_rows = 1; rows.scale = NAN;
    CHECK_EQ_INT(eg_router_select(t, &rows, &o, &sel), EG_IX_EINVAL);
    rows.scale = 0.25f; q[3] = NAN;
    CHECK_EQ_INT(eg_router_select(t, &rows, &o, &sel), EG_IX_ENONFINITE);
    q[3] = 0; rows.q = NULL;
    CHECK_EQ_INT(eg_router_select(t, &rows, &o, &sel), EG_IX_EINVAL);
    rows.q = q;
    int64_t neg = -5;
    rows.pos = &neg;
    CHECK_EQ_INT(eg_router_select(t, &rows, &o, &sel), EG_IX_ERANGE);
    rows.pos = NULL;
    o.n_tags = 2;
    CHECK_EQ_INT(eg_router_select(t, &rows, &o, &sel), EG_IX_EINVAL);
    o.n_tags = 0;
    CHECK_OK(eg_router_select(t, &rows, &o, &sel));
    /* a selection naming segments beyond the bound's table */
    sel.segments[0] = 99;
    double lub[8];
    CHECK_EQ_INT(eg_route_unselected_bound(t, &rows, &sel, lub), EG_IX_ERANGE);
    eg_route_selection_free(&sel);
    CHECK(strlen(eg_index_last_error()) > 10);
    /* the bound needs a quest table */
    eg_summary_spec cs = { EG_ROUTER_CENTROID, d, S, NULL, 0 };
    eg_route_table *c = NULL;
    CHECK_OK(eg_route_table_create(&cs, &c));
    eg_route_selection empty = { 0 };
    CHECK_EQ_INT(eg_route_unselected_bound(c, &rows, &empty, lub), EG_IX_EKIND);
    eg_route_table_free(c);
    eg_route_table_free(t);
    free(k);
    /* Empty things: a table with no segments routes nothing and bounds nothing. */
    CHECK_OK(eg_route_table_create(&sp, &t));
    CHECK_EQ_INT(eg_route_table_append(t, NULL, 2, NULL), EG_IX_EINVAL);
    CHECK_EQ_INT(eg_summary_compute(&sp, NULL, sum, sizeof sum), EG_IX_EINVAL);
    eg_route_selection none;
    o.budget_tokens = 1024;
    CHECK_OK(eg_router_select(t, &rows, &o, &none));
    CHECK_EQ_INT(none.n, 0);
    double lub0 = 0;
    CHECK_OK(eg_route_unselected_bound(t, &rows, &none, &lub0));
    CHECK(lub0 == -INFINITY);
    eg_route_selection_free(&none);
    eg_route_table_free(t);
    eg_summary_spec osp = { EG_ROUTER_ORACLE, 0, S, NULL, 0 };
    CHECK_EQ_INT(eg_summary_compute(&osp, q, sum, sizeof sum), EG_IX_EKIND);
    CHECK(eg_lost_mass_bound(-INFINITY, 3.0) == 0.0);
    CHECK(eg_lost_mass_bound(1.0, -INFINITY) == 1.0);
    CHECK(fabs(eg_lost_mass_bound(0.0, 0.0) - 0.5) < 1e-12);
}

int main(void)
{
    TEST_RUN(test_quest_bound_every_codec);
    TEST_RUN(test_hierarchy_equals_flat);
    TEST_RUN(test_lost_mass_bound);
    TEST_RUN(test_bound_needle_left_out);
    TEST_RUN(test_prep_equals_select_bound);
    g_quest_f16 = 1;   /* the same with f16 quest tables */
    TEST_RUN(test_quest_bound_every_codec);
    TEST_RUN(test_hierarchy_equals_flat);
    TEST_RUN(test_lost_mass_bound);
    TEST_RUN(test_bound_needle_left_out);
    TEST_RUN(test_prep_equals_select_bound);
    g_quest_f16 = 0;
    g_bound = EG_ROUTER_BALL;   /* the same with ball tables */
    TEST_RUN(test_hierarchy_equals_flat);
    TEST_RUN(test_lost_mass_bound);
    TEST_RUN(test_bound_needle_left_out);
    TEST_RUN(test_prep_equals_select_bound);
    TEST_RUN(test_table_save_load);
    g_bound = EG_ROUTER_QUEST;
    TEST_RUN(test_table_save_load);
    TEST_RUN(test_table_reserve);
    TEST_RUN(test_table_growth_huge);
    TEST_RUN(test_indexer_reference);
    TEST_RUN(test_forced_tags_causal_oracle);
    TEST_RUN(test_bad_input);
    TEST_END();
}
