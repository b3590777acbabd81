/* test_store.c: the store's environment, catalog, append/seal, read, cache,
 * records and cold tier. Fork/truncate/drop/verify: test_store_life.c. */
#include "storeutil.h"
#include <pthread.h>
#include <stdio.h>

static char dir[512];

static eg_store *open_store(size_t map, size_t cache)
{
    eg_store_options o = {map, cache, EG_SYNC_NONE};
    eg_store *st = NULL;
    int rc = eg_store_open(dir, &o, &st);
    if (rc) fprintf(stderr, "  open: %s\n", eg_mem_last_error());
    return st;
}

static void test_open_twice_refused(void)
{
    tu_tmpdir(dir, sizeof dir, "open");
    eg_store *a = open_store(0, 0), *b = NULL;
    REQUIRE(a);
    CHECK_EQ_INT(eg_store_open(dir, NULL, &b), EG_EBUSY);
    CHECK(b == NULL);
    CHECK(strstr(eg_mem_last_error(), "already open") != NULL);
    CHECK_OK(eg_store_close(a));
    CHECK_OK(eg_store_open(dir, NULL, &b));
    CHECK_OK(eg_store_close(b));
    eg_store_options bad = {0, 0, 7};
    CHECK_EQ_INT(eg_store_open(dir, &bad, &b), EG_EOPTION);
    tu_rmrf(dir);
}

static void test_config_errors(void)
{
    tu_tmpdir(dir, sizeof dir, "cfg");
    eg_store *st = open_store(0, 0);
    REQUIRE(st);
    eg_session_config c;
    su_config(&c, 2, 2, 64, 64, 64, EG_CODEC_Q8);
    char longname[300];
    memset(longname, 'a', 256);
    longname[256] = 0;
    CHECK_EQ_INT(eg_session_create(st, "", &c), EG_ENAME_EMPTY);
    CHECK_EQ_INT(eg_session_create(st, longname, &c), EG_ENAME_LONG);
    longname[255] = 0;
    CHECK_OK(eg_session_create(st, longname, &c));      /* 255 bytes is fine */
    CHECK_EQ_INT(eg_session_create(st, "bad\xff", &c), EG_ENAME_UTF8);
    CHECK_EQ_INT(eg_session_create(st, "over\xc0\xaflong", &c), EG_ENAME_UTF8);
    CHECK_EQ_INT(eg_session_create(st, "surrogate\xed\xa0\x80", &c), EG_ENAME_UTF8);
    CHECK_EQ_INT(eg_session_create(st, "cut\xe2\x82", &c), EG_ENAME_UTF8);
    CHECK_EQ_INT(eg_session_create(st, "tab\there", &c), EG_ENAME_UTF8);
    CHECK_OK(eg_session_create(st, "caf\xc3\xa9-\xe2\x82\xac-\xf0\x9f\x98\x80", &c));
    CHECK_OK(eg_session_create(st, "dup", &c));
    CHECK_EQ_INT(eg_session_create(st, "dup", &c), EG_EEXIST);
    eg_session_config z = c;
    z.n_layers = 0;
    CHECK_EQ_INT(eg_session_create(st, "z", &z), EG_ESHAPE_ZERO);
    z = c; z.head_dim_v = 0;
    CHECK_EQ_INT(eg_session_create(st, "z", &z), EG_ESHAPE_ZERO);
    z = c; z.head_dim_k = 1025;
    CHECK_EQ_INT(eg_session_create(st, "z", &z), EG_EHEAD_DIM);
    z = c; z.n_q_heads = 3;
    CHECK_EQ_INT(eg_session_create(st, "z", &z), EG_EGQA);
    uint32_t bad_s[] = {8, 48, 100, 512, 1};
    for (size_t i = 0; i < sizeof bad_s / sizeof *bad_s; i++) {
        z = c; z.seg_tokens = bad_s[i];
        CHECK_EQ_INT(eg_session_create(st, "z", &z), EG_ESEG_SIZE);
    }
    z = c; z.seg_tokens = 16;
    CHECK_OK(eg_session_create(st, "s16", &z));
    z = c; z.seg_tokens = 256;
    CHECK_OK(eg_session_create(st, "s256", &z));
    z = c; z.codec = 9;
    CHECK_EQ_INT(eg_session_create(st, "z", &z), EG_ECODEC);
    z = c; z.cold_codec = EG_CODEC_F16;   /* not smaller than q8 */
    CHECK_EQ_INT(eg_session_create(st, "z", &z), EG_ECODEC);
    z = c; z.rope_mode = EG_ROPE_HALF; z.rope_dims = 65;
    CHECK_EQ_INT(eg_session_create(st, "z", &z), EG_EOPTION);
    /* MLA shape: one kv head, 576/512. */
    z = c; z.n_kv_heads = 1; z.n_q_heads = 16; z.head_dim_k = 576; z.head_dim_v = 512;
    CHECK_OK(eg_session_create(st, "mla", &z));
    eg_session_info info;
    CHECK_EQ_INT(eg_session_info_by_name(st, "z", &info), EG_ENOTFOUND);
    CHECK_OK(eg_session_info_by_name(st, "mla", &info));
    CHECK_EQ_INT(info.config.head_dim_k, 576);
    CHECK_EQ_INT(info.config.head_dim_v, 512);
    CHECK_OK(eg_store_close(st));
    tu_rmrf(dir);
}

static int count_cb(void *ctx, const eg_session_info *info)
{
    (void)info;
    (*(int *)ctx)++;
    return 0;
}

static void test_fingerprint_and_list(void)
{
    tu_tmpdir(dir, sizeof dir, "fp");
    eg_store *st = open_store(0, 0);
    REQUIRE(st);
    eg_session_config c;
    su_config(&c, 1, 1, 16, 16, 16, EG_CODEC_F16);
    CHECK_OK(eg_session_create(st, "a", &c));
    CHECK_OK(eg_session_create(st, "b", &c));
    eg_msession *s = NULL;
    CHECK_EQ_INT(eg_session_open(st, "a", "other-model", &s), EG_EFINGERPRINT);
    CHECK(s == NULL);
    CHECK_EQ_INT(eg_session_open(st, "nope", NULL, &s), EG_ENOTFOUND);
    CHECK_OK(eg_session_open(st, "a", "test-model", &s));
    int n = 0;
    CHECK_OK(eg_session_list(st, count_cb, &n));
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(eg_session_drop(st, "a"), EG_EBUSY);
    CHECK_OK(eg_session_close(s));
    CHECK_OK(eg_session_drop(st, "a"));
    CHECK_EQ_INT(eg_session_drop(st, "a"), EG_ENOTFOUND);
    n = 0;
    CHECK_OK(eg_session_list(st, count_cb, &n));
    CHECK_EQ_INT(n, 1);
    CHECK_OK(eg_store_close(st));
    /* The fingerprint survives a reopen. */
    st = open_store(0, 0);
    REQUIRE(st);
    CHECK_EQ_INT(eg_session_open(st, "b", "x", &s), EG_EFINGERPRINT);
    CHECK_OK(eg_store_close(st));
    tu_rmrf(dir);
}

/* Append in uneven chunks, read back within bounds, reopen, read again. */
static void append_read_codec(int codec, uint32_t S, uint32_t dk, uint32_t dv)
{
    tu_tmpdir(dir, sizeof dir, "ar");
    eg_store *st = open_store(1 << 20, 0);
    REQUIRE(st);
    eg_session_config c;
    su_config(&c, 2, 2, dk, dv, S, codec);
    CHECK_OK(eg_session_create(st, "s", &c));
    eg_msession *s;
    CHECK_OK(eg_session_open(st, "s", NULL, &s));
    uint32_t chunks[] = {1, 7, S - 8, S, 3 * S + 5, 2, S / 2};
    uint64_t n = 0;
    for (size_t i = 0; i < sizeof chunks / sizeof *chunks; i++) {
        CHECK_OK(su_append(s, &c, n, chunks[i]));
        n += chunks[i];
        CHECK_EQ_INT(su_check_all(s, n), 0);
    }
    eg_session_info info;
    CHECK_OK(eg_session_info_get(s, &info));
    CHECK_EQ_INT(info.n_sealed, n / S);
    /* The encoded walk gives the blocks eg_read_block decodes. */
    for (uint32_t l = 0; l < 2; l++)
        for (uint32_t h = 0; h < 2; h++) CHECK_EQ_INT(su_walk_matches(s, l, h, 0, info.n_sealed), 0);
    /* Token ids round trip, across sealed and tail. */
    uint32_t *ids = malloc(n * 4), *tags = malloc(n * 4);
    CHECK_OK(eg_read_tokens(s, 0, (uint32_t)n, ids, tags));
    for (uint64_t t = 0; t < n; t++) if (ids[t] != (uint32_t)(t * 2654435761u)) { CHECK(0); break; }
    CHECK_EQ_INT(eg_read_tokens(s, n - 1, 2, ids, tags), EG_ERANGE);
    free(ids); free(tags);
    CHECK_OK(eg_session_close(s));
    CHECK_OK(eg_store_close(st));
    st = open_store(0, 0);
    REQUIRE(st);
    CHECK_OK(eg_session_open(st, "s", NULL, &s));
    CHECK_EQ_INT(su_check_all(s, n), 0);
    uint64_t problems = 1;
    CHECK_OK(eg_store_verify(st, NULL, NULL, NULL, &problems));
    CHECK_EQ_INT(problems, 0);
    CHECK_OK(eg_session_close(s));
    CHECK_OK(eg_store_close(st));
    tu_rmrf(dir);
}

static void test_append_read_f32(void) { append_read_codec(EG_CODEC_F32, 16, 32, 16); }
static void test_append_read_f16(void) { append_read_codec(EG_CODEC_F16, 32, 64, 64); }
static void test_append_read_q8(void) { append_read_codec(EG_CODEC_Q8, 64, 64, 64); }
static void test_append_read_q4(void) { append_read_codec(EG_CODEC_Q4, 64, 128, 100); }
static void test_append_read_mla(void) { append_read_codec(EG_CODEC_Q8, 16, 576, 512); }

static void test_append_bad_input(void)
{
    tu_tmpdir(dir, sizeof dir, "bad");
    eg_store *st = open_store(0, 0);
    REQUIRE(st);
    eg_session_config c;
    su_config(&c, 2, 1, 16, 16, 16, EG_CODEC_Q8);
    CHECK_OK(eg_session_create(st, "s", &c));
    eg_msession *s;
    CHECK_OK(eg_session_open(st, "s", NULL, &s));
    CHECK_OK(su_append(s, &c, 0, 5));
    float k[2 * 16 * 4] = {0}, v[2 * 16 * 4] = {0};
    eg_append_req r = {EG_DTYPE_F32, 4, -1, k, v, NULL, 0};
    k[17] = NAN;
    CHECK_EQ_INT(eg_append(s, &r, NULL), EG_ENONFINITE);
    k[17] = 0; v[3] = INFINITY;
    CHECK_EQ_INT(eg_append(s, &r, NULL), EG_ENONFINITE);
    v[3] = 0;
    r.dtype = 5;
    CHECK_EQ_INT(eg_append(s, &r, NULL), EG_EDTYPE);
    r.dtype = EG_DTYPE_F32; r.layer = 2;
    CHECK_EQ_INT(eg_append(s, &r, NULL), EG_ERANGE);
    r.layer = -1; r.n_tokens = 0;
    CHECK_EQ_INT(eg_append(s, &r, NULL), EG_EINVAL);
    r.n_tokens = 4; r.keys = NULL;
    CHECK_EQ_INT(eg_append(s, &r, NULL), EG_EINVAL);
    /* f16 NaN and bf16 Inf. */
    uint16_t hk[2 * 16 * 4] = {0}, hv[2 * 16 * 4] = {0};
    r.keys = hk; r.values = hv; r.dtype = EG_DTYPE_F16;
    hk[5] = 0x7e00;
    CHECK_EQ_INT(eg_append(s, &r, NULL), EG_ENONFINITE);
    hk[5] = 0; hv[9] = 0x7f80; r.dtype = EG_DTYPE_BF16;
    CHECK_EQ_INT(eg_append(s, &r, NULL), EG_ENONFINITE);
    /* Nothing of the refused calls is stored. */
    CHECK_EQ_INT(su_check_all(s, 5), 0);
    /* Reads out of range. */
    float buf[16 * 16];
    CHECK_EQ_INT(eg_read_block(s, 0, 0, 0, buf, buf), EG_ERANGE);
    CHECK_EQ_INT(eg_read_block(s, 2, 0, 0, buf, buf), EG_ERANGE);
    CHECK_EQ_INT(eg_read_block(s, 0, 1, 0, buf, buf), EG_ERANGE);
    CHECK_OK(eg_session_close(s));
    CHECK_OK(eg_store_close(st));
    tu_rmrf(dir);
}

static void test_dtypes_f16_bf16(void)
{
    tu_tmpdir(dir, sizeof dir, "dt");
    eg_store *st = open_store(0, 0);
    REQUIRE(st);
    eg_session_config c;
    su_config(&c, 1, 2, 32, 32, 16, EG_CODEC_F32);
    CHECK_OK(eg_session_create(st, "h", &c));
    eg_msession *s;
    CHECK_OK(eg_session_open(st, "h", NULL, &s));
    enum { N = 20 };
    size_t n = 2 * N * 32;
    float *k = malloc(n * 4), *v = malloc(n * 4);
    uint16_t *hk = malloc(n * 2), *hv = malloc(n * 2);
    uint64_t rs = 5;
    for (size_t i = 0; i < n; i++) {
        hk[i] = eg_f32_to_f16(tu_randn(&rs));
        hv[i] = eg_f32_to_bf16(tu_randn(&rs) * 100);
    }
    eg_append_req r = {EG_DTYPE_F16, N, -1, hk, hk, NULL, 0};
    CHECK_OK(eg_append(s, &r, NULL));
    r.dtype = EG_DTYPE_BF16; r.keys = hv; r.values = hv;
    CHECK_OK(eg_append(s, &r, NULL));
    /* Token 0..19 are f16 values, 20..39 bf16: read exactly (f32 codec). */
    float blk[16 * 32], tail[16 * 32];
    for (uint32_t h = 0; h < 2; h++) {
        for (uint64_t seg = 0; seg < 2; seg++) {
            CHECK_OK(eg_read_block(s, 0, h, seg, blk, NULL));
            for (uint32_t i = 0; i < 16; i++) {
                uint64_t t = seg * 16 + i;
                for (uint32_t d = 0; d < 32; d++) {
                    float want = t < N ? eg_f16_to_f32(hk[((size_t)h * N + t) * 32 + d])
                                       : eg_bf16_to_f32(hv[((size_t)h * N + t - N) * 32 + d]);
                    if (blk[i * 32 + d] != want) { CHECK(0); goto next; }
                }
            }
        next:;
        }
        uint32_t rows;
        CHECK_OK(eg_read_tail(s, 0, h, tail, NULL, &rows));
        CHECK_EQ_INT(rows, 8);
        CHECK(tail[0] == eg_bf16_to_f32(hv[((size_t)h * N + 32 - N) * 32]));
    }
    free(k); free(v); free(hk); free(hv);
    CHECK_OK(eg_session_close(s));
    CHECK_OK(eg_store_close(st));
    tu_rmrf(dir);
}

/* Layer-by-layer appends give the same session as all-layers appends. */
static void test_layer_by_layer(void)
{
    tu_tmpdir(dir, sizeof dir, "lbl");
    eg_store *st = open_store(0, 0);
    REQUIRE(st);
    eg_session_config c;
    su_config(&c, 3, 2, 16, 8, 16, EG_CODEC_Q8);
    CHECK_OK(eg_session_create(st, "s", &c));
    eg_msession *s;
    CHECK_OK(eg_session_open(st, "s", NULL, &s));
    uint64_t n = 0;
    uint32_t chunks[] = {10, 30, 1, 40};
    for (size_t ci = 0; ci < 4; ci++) {
        uint32_t m = chunks[ci];
        size_t nk = (size_t)c.n_layers * c.n_kv_heads * m * c.head_dim_k;
        size_t nv = (size_t)c.n_layers * c.n_kv_heads * m * c.head_dim_v;
        float *k = malloc(nk * 4), *v = malloc(nv * 4);
        su_fill(&c, n, m, k, v);
        size_t lk = (size_t)c.n_kv_heads * m * c.head_dim_k, lv = (size_t)c.n_kv_heads * m * c.head_dim_v;
        uint32_t *ids = malloc(m * 4);
        for (uint32_t i = 0; i < m; i++) ids[i] = (uint32_t)((n + i) * 2654435761u);
        for (uint32_t l = 0; l < c.n_layers; l++) {
            eg_append_req r = {EG_DTYPE_F32, m, (int32_t)l, k + l * lk, v + l * lv, ids, 0};
            uint64_t after = 0;
            CHECK_OK(eg_append(s, &r, &after));
            CHECK_EQ_INT(after, l + 1 < c.n_layers ? n : n + m);
            if (l == 0) {
                /* An all-layers append in the middle is refused. */
                eg_append_req all = {EG_DTYPE_F32, 1, -1, k, v, NULL, 0};
                CHECK_EQ_INT(eg_append(s, &all, NULL), EG_EORDER);
            }
        }
        n += m;
        free(k); free(v); free(ids);
        CHECK_EQ_INT(su_check_all(s, n), 0);
    }
    uint32_t id;
    CHECK_OK(eg_read_tokens(s, 33, 1, &id, NULL));
    CHECK_EQ_INT(id, (uint32_t)(33u * 2654435761u));
    uint64_t problems = 1;
    CHECK_OK(eg_store_verify(st, "s", NULL, NULL, &problems));
    CHECK_EQ_INT(problems, 0);
    CHECK_OK(eg_session_close(s));
    CHECK_OK(eg_store_close(st));
    tu_rmrf(dir);
}

/* Group commit: threads appending at once share commits. */
typedef struct { eg_msession *s; const eg_session_config *c; uint64_t base; int rc; } gc_arg;

static void *gc_thread(void *p)
{
    gc_arg *a = p;
    for (int i = 0; i < 40 && !a->rc; i++) a->rc = su_append(a->s, a->c, (uint64_t)i * 3, 3);
    return NULL;
}

static void test_group_commit(void)
{
    tu_tmpdir(dir, sizeof dir, "gc");
    eg_store_options o = {0, 0, EG_SYNC_FULL};
    eg_store *st;
    REQUIRE(eg_store_open(dir, &o, &st) == 0);
    eg_session_config c;
    su_config(&c, 2, 1, 32, 32, 16, EG_CODEC_Q8);
    enum { T = 4 };
    eg_msession *s[T];
    gc_arg a[T];
    pthread_t th[T];
    for (int i = 0; i < T; i++) {
        char name[16];
        snprintf(name, sizeof name, "s%d", i);
        CHECK_OK(eg_session_create(st, name, &c));
        CHECK_OK(eg_session_open(st, name, NULL, &s[i]));
        a[i] = (gc_arg){s[i], &c, 0, 0};
    }
    eg_store_stats before, after;
    eg_store_get_stats(st, &before);
    for (int i = 0; i < T; i++) pthread_create(&th[i], NULL, gc_thread, &a[i]);
    for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
    eg_store_get_stats(st, &after);
    for (int i = 0; i < T; i++) {
        CHECK_OK(a[i].rc);
        CHECK_EQ_INT(su_check_all(s[i], 120), 0);
        eg_session_close(s[i]);
    }
    uint64_t commits = after.commits - before.commits, appends = after.appends - before.appends;
    printf("  group commit: %llu appends in %llu commits\n", (unsigned long long)appends,
           (unsigned long long)commits);
    CHECK_EQ_INT(appends, T * 40);
    CHECK(commits < appends);   /* appends waiting on a commit share the next one */
    CHECK_OK(eg_store_close(st));
    tu_rmrf(dir);
}

static void test_cache_tier(void)
{
    tu_tmpdir(dir, sizeof dir, "cache");
    eg_session_config c;
    su_config(&c, 1, 1, 64, 64, 16, EG_CODEC_Q8);
    size_t block_bytes = (size_t)16 * 128 * 4;
    eg_store *st = open_store(0, 3 * block_bytes + 3 * 256);   /* room for 3 blocks */
    REQUIRE(st);
    CHECK_OK(eg_session_create(st, "s", &c));
    eg_msession *s;
    CHECK_OK(eg_session_open(st, "s", NULL, &s));
    CHECK_OK(su_append(s, &c, 0, 16 * 5));
    float k[16 * 64], v[16 * 64], k2[16 * 64];
    eg_store_stats a, b;
    eg_store_get_stats(st, &a);
    CHECK_OK(eg_read_block(s, 0, 0, 0, k, v));     /* miss */
    CHECK_OK(eg_read_block(s, 0, 0, 0, k2, NULL)); /* hit */
    eg_store_get_stats(st, &b);
    CHECK_EQ_INT(b.cache_misses - a.cache_misses, 1);
    CHECK_EQ_INT(b.cache_hits - a.cache_hits, 1);
    CHECK(memcmp(k, k2, sizeof k) == 0);
    for (uint64_t seg = 1; seg < 5; seg++) CHECK_OK(eg_read_block(s, 0, 0, seg, k, v));
    eg_store_get_stats(st, &b);
    CHECK(b.cache_entries <= 3);
    CHECK(b.cache_evictions >= 2);
    CHECK(b.cache_bytes <= 3 * block_bytes + 3 * 256);
    /* Segment 0 was evicted (least recently used): a miss again. */
    eg_store_get_stats(st, &a);
    CHECK_OK(eg_read_block(s, 0, 0, 0, k2, NULL));
    eg_store_get_stats(st, &b);
    CHECK_EQ_INT(b.cache_misses - a.cache_misses, 1);
    CHECK(memcmp(k, k, sizeof k) == 0);
    CHECK_EQ_INT(su_check_all(s, 80), 0);
    CHECK_OK(eg_session_close(s));
    CHECK_OK(eg_store_close(st));
    tu_rmrf(dir);
}

/* Seal hook records: written with the seal, readable, and a failing hook
 * fails the append with nothing stored. */
static int hook_fail_at = -1;
static int seal_hook(void *user, const eg_seal_view *v, eg_seal_ctx *ctx)
{
    (*(int *)user)++;
    if ((int)v->segment == hook_fail_at) return EG_EINVAL;
    float mean[64] = {0};
    for (uint32_t i = 0; i < v->n_tokens; i++)
        for (uint32_t d = 0; d < v->head_dim_k && d < 64; d++) mean[d] += v->keys[i * v->head_dim_k + d];
    return eg_seal_put_record(ctx, 1, mean, sizeof mean);
}

static void test_seal_hook_records(void)
{
    tu_tmpdir(dir, sizeof dir, "hook");
    eg_store *st = open_store(0, 0);
    REQUIRE(st);
    int calls = 0;
    CHECK_OK(eg_store_set_seal_hook(st, seal_hook, &calls));
    eg_session_config c;
    su_config(&c, 2, 2, 64, 32, 16, EG_CODEC_Q8);
    CHECK_OK(eg_session_create(st, "s", &c));
    eg_msession *s;
    CHECK_OK(eg_session_open(st, "s", NULL, &s));
    CHECK_OK(su_append(s, &c, 0, 40));
    CHECK_EQ_INT(calls, 2 * 2 * 2);
    void *rec = NULL;
    size_t len = 0;
    CHECK_OK(eg_record_get(s, 1, 1, 1, 1, &rec, &len));
    CHECK_EQ_INT(len, 64 * 4);
    float k[16 * 64], mean[64] = {0};
    CHECK_OK(eg_read_block(s, 1, 1, 1, k, NULL));
    for (int i = 0; i < 16; i++) for (int d = 0; d < 64; d++) mean[d] += k[i * 64 + d];
    if (rec) CHECK(memcmp(rec, mean, sizeof mean) == 0);
    free(rec);
    CHECK_EQ_INT(eg_record_get(s, 0, 0, 0, 2, &rec, &len), EG_ENOTFOUND);
    /* A run of records in one read, and each way it can be refused. */
    float run[2][64];
    CHECK_OK(eg_record_get_range(s, 1, 1, 0, 2, 1, sizeof mean, run));
    CHECK(memcmp(run[1], mean, sizeof mean) == 0);
    CHECK_EQ_INT(eg_record_get_range(s, 1, 1, 1, 2, 1, sizeof mean, run), EG_ERANGE);
    CHECK_EQ_INT(eg_record_get_range(s, 1, 1, 0, 2, 1, sizeof mean - 4, run), EG_ECORRUPT);
    CHECK_EQ_INT(eg_record_get_range(s, 1, 1, 0, 1, 2, sizeof mean, run), EG_ENOTFOUND);
    CHECK_EQ_INT(eg_record_get_range(s, 2, 1, 0, 1, 1, sizeof mean, run), EG_ERANGE);
    CHECK_EQ_INT(eg_record_get_range(s, 1, 1, 0, 1, 1, sizeof mean, NULL), EG_EINVAL);
    hook_fail_at = 2;
    float *zk = calloc(2 * 2 * 10 * 64, 4);
    CHECK(eg_append(s, &(eg_append_req){EG_DTYPE_F32, 10, -1, zk, zk, NULL, 0}, NULL) < 0);
    free(zk);
    eg_session_info info;
    CHECK_OK(eg_session_info_get(s, &info));
    CHECK_EQ_INT(info.n_tokens, 40);
    hook_fail_at = -1;
    CHECK_EQ_INT(su_check_all(s, 40), 0);
    /* Session records. */
    CHECK_OK(eg_record_put_session(s, 0, 1, 7, 42, "weights", 7));
    CHECK_OK(eg_record_get_session(s, 0, 1, 7, 42, &rec, &len));
    CHECK(len == 7 && memcmp(rec, "weights", 7) == 0);
    free(rec);
    CHECK_EQ_INT(eg_record_get_session(s, 0, 1, 7, 43, &rec, &len), EG_ENOTFOUND);
    CHECK_OK(eg_store_set_seal_hook(st, NULL, NULL));
    CHECK_OK(eg_session_close(s));
    CHECK_OK(eg_store_close(st));
    tu_rmrf(dir);
}

/* A layer appended ahead: its own token count, and its unsealed rows (more
 * than a segment of them) read for every kv-head; out-of-range rows refused. */
static void test_layer_rows(void)
{
    tu_tmpdir(dir, sizeof dir, "rows");
    eg_store *st = open_store(0, 0);
    REQUIRE(st);
    eg_session_config c;
    su_config(&c, 2, 2, 8, 4, 16, EG_CODEC_Q8);
    CHECK_OK(eg_session_create(st, "s", &c));
    eg_msession *s;
    CHECK_OK(eg_session_open(st, "s", NULL, &s));
    CHECK_OK(su_append(s, &c, 0, 40));            /* 2 sealed, 8 open */
    float k[2 * 30 * 8], v[2 * 30 * 4];
    for (uint32_t h = 0; h < 2; h++)              /* layer 0 alone: tokens 40..69 */
        for (uint32_t i = 0; i < 30; i++) {
            for (uint32_t d = 0; d < 8; d++) k[(h * 30 + i) * 8 + d] = su_value(0, h, 40 + i, d, EG_KIND_K);
            for (uint32_t d = 0; d < 4; d++) v[(h * 30 + i) * 4 + d] = su_value(0, h, 40 + i, d, EG_KIND_V);
        }
    CHECK_OK(eg_append(s, &(eg_append_req){EG_DTYPE_F32, 30, 0, k, v, NULL, 0}, NULL));
    uint64_t n0 = 0, n1 = 0;
    CHECK_OK(eg_session_layer_tokens(s, 0, &n0));
    CHECK_OK(eg_session_layer_tokens(s, 1, &n1));
    CHECK_EQ_INT(n0, 70);
    CHECK_EQ_INT(n1, 40);
    CHECK_EQ_INT(eg_session_layer_tokens(s, 2, &n0), EG_ERANGE);
    float rk[38 * 2 * 8], rv[38 * 2 * 4];
    CHECK_OK(eg_read_rows(s, 0, 32, 38, rk, rv));
    int bad = 0;
    for (uint32_t i = 0; i < 38; i++)
        for (uint32_t h = 0; h < 2; h++) {
            for (uint32_t d = 0; d < 8; d++) bad += rk[(i * 2 + h) * 8 + d] != su_value(0, h, 32 + i, d, EG_KIND_K);
            for (uint32_t d = 0; d < 4; d++) bad += rv[(i * 2 + h) * 4 + d] != su_value(0, h, 32 + i, d, EG_KIND_V);
        }
    CHECK_EQ_INT(bad, 0);
    CHECK_OK(eg_read_rows(s, 1, 32, 8, rk, NULL));
    CHECK_EQ_INT(eg_read_rows(s, 1, 32, 9, rk, rv), EG_ERANGE);   /* layer 1 holds 40 */
    CHECK_EQ_INT(eg_read_rows(s, 0, 31, 2, rk, rv), EG_ERANGE);   /* token 31 is sealed */
    CHECK_EQ_INT(eg_read_rows(s, 0, 71, 0, rk, rv), EG_ERANGE);
    CHECK_EQ_INT(eg_read_rows(s, 2, 32, 1, rk, rv), EG_ERANGE);
    CHECK_OK(eg_session_close(s));
    CHECK_OK(eg_store_close(st));
    tu_rmrf(dir);
}

/* Walking encoded blocks: the visitor's code stops the walk, bad ranges and
 * arguments are refused before any call, reads are counted. */
typedef struct { uint64_t calls, stop_at; } stop_ctx;
static int stop_cb(void *ctx, uint64_t seg, const eg_encoded_block *b)
{
    stop_ctx *c = ctx;
    (void)b;
    c->calls++;
    return seg == c->stop_at ? EG_EIO : 0;
}

static void test_read_blocks_encoded(void)
{
    tu_tmpdir(dir, sizeof dir, "walk");
    eg_store *st = open_store(0, 0);
    REQUIRE(st);
    eg_session_config c;
    su_config(&c, 2, 2, 64, 32, 16, EG_CODEC_Q4);
    CHECK_OK(eg_session_create(st, "s", &c));
    eg_msession *s;
    CHECK_OK(eg_session_open(st, "s", NULL, &s));
    CHECK_OK(su_append(s, &c, 0, 16 * 5 + 7));
    CHECK_EQ_INT(su_walk_matches(s, 1, 1, 2, 3), 0);
    eg_store_stats a, b;
    CHECK_OK(eg_store_get_stats(st, &a));
    stop_ctx sc = {0, 2};
    CHECK_EQ_INT(eg_read_blocks_encoded(s, 0, 1, 0, 5, stop_cb, &sc), EG_EIO);
    CHECK_EQ_INT(sc.calls, 3);
    CHECK_OK(eg_store_get_stats(st, &b));
    CHECK_EQ_INT(b.blocks_read - a.blocks_read, 3);
    sc.calls = 0;
    CHECK_OK(eg_read_blocks_encoded(s, 0, 1, 5, 0, stop_cb, &sc));     /* empty run at the end */
    CHECK_EQ_INT(eg_read_blocks_encoded(s, 0, 1, 3, 3, stop_cb, &sc), EG_ERANGE);
    CHECK(strstr(eg_mem_last_error(), "not all sealed") != NULL);
    CHECK_EQ_INT(eg_read_blocks_encoded(s, 2, 0, 0, 1, stop_cb, &sc), EG_ERANGE);
    CHECK_EQ_INT(eg_read_blocks_encoded(s, 0, 2, 0, 1, stop_cb, &sc), EG_ERANGE);
    CHECK_EQ_INT(eg_read_blocks_encoded(s, 0, 0, 0, 1, NULL, NULL), EG_EINVAL);
    CHECK_EQ_INT(sc.calls, 0);
    CHECK_OK(eg_session_close(s));
    CHECK_OK(eg_store_close(st));
    tu_rmrf(dir);
}

static void test_cold_tier(void)
{
    tu_tmpdir(dir, sizeof dir, "cold");
    eg_store *st = open_store(0, 1 << 20);
    REQUIRE(st);
    eg_session_config c;
    su_config(&c, 2, 1, 64, 64, 16, EG_CODEC_Q8);
    c.cold_codec = EG_CODEC_Q4;
    c.cold_age_segments = 2;
    CHECK_OK(eg_session_create(st, "s", &c));
    eg_msession *s;
    CHECK_OK(eg_session_open(st, "s", NULL, &s));
    CHECK_OK(su_append(s, &c, 0, 16 * 6 + 3));
    float k[16 * 64];
    CHECK_OK(eg_read_block(s, 0, 0, 0, k, NULL));   /* q8 copy now in the cache */
    uint64_t moved = 0;
    CHECK_OK(eg_session_age(s, 3, &moved));
    CHECK_EQ_INT(moved, 3);
    CHECK_OK(eg_session_age(s, 0, &moved));
    CHECK_EQ_INT(moved, 5);   /* 4 segments x 2 layers in all */
    int codec = -1;
    CHECK_OK(eg_block_codec(s, 1, 0, 3, &codec));
    CHECK_EQ_INT(codec, EG_CODEC_Q4);
    CHECK_OK(eg_block_codec(s, 1, 0, 4, &codec));
    CHECK_EQ_INT(codec, EG_CODEC_Q8);
    CHECK_EQ_INT(su_walk_matches(s, 1, 0, 0, 6), 0);   /* blocks of two codecs in one walk */
    /* Reads see the new block (never the cached q8 decode) within q4's bound. */
    CHECK_EQ_INT(su_check_all(s, 99), 0);
    float k2[16 * 64];
    CHECK_OK(eg_read_block(s, 0, 0, 0, k2, NULL));
    CHECK(memcmp(k, k2, sizeof k) != 0);
    CHECK_OK(eg_session_age(s, 0, &moved));
    CHECK_EQ_INT(moved, 0);
    uint64_t problems = 1;
    CHECK_OK(eg_store_verify(st, NULL, NULL, NULL, &problems));
    CHECK_EQ_INT(problems, 0);
    CHECK_OK(eg_session_close(s));
    CHECK_OK(eg_store_close(st));
    tu_rmrf(dir);
}

int main(void)
{
    TEST_RUN(test_open_twice_refused);
    TEST_RUN(test_config_errors);
    TEST_RUN(test_fingerprint_and_list);
    TEST_RUN(test_append_read_f32);
    TEST_RUN(test_append_read_f16);
    TEST_RUN(test_append_read_q8);
    TEST_RUN(test_append_read_q4);
    TEST_RUN(test_append_read_mla);
    TEST_RUN(test_append_bad_input);
    TEST_RUN(test_dtypes_f16_bf16);
    TEST_RUN(test_layer_by_layer);
    TEST_RUN(test_group_commit);
    TEST_RUN(test_cache_tier);
    TEST_RUN(test_seal_hook_records);
    TEST_RUN(test_layer_rows);
    TEST_RUN(test_read_blocks_encoded);
    TEST_RUN(test_cold_tier);
    TEST_END();
}
