/* bench_store.c: suites `ingest` (appends with full sync against the disk's
 * sequential write bandwidth) and `read` (block reads against memory
 * bandwidth), both over a real store in the bench directory. */
#include "bench.h"
#include "memory.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { uint32_t L, H, d; } shape;

static void rmdir_all(const char *p)
{
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", p);
    if (system(cmd) != 0) fprintf(stderr, "bench: could not remove %s\n", p);
}

static int fail(const char *what)
{
    fprintf(stderr, "bench: %s: %s\n", what, eg_mem_last_error());
    return 1;
}

typedef struct {
    eg_msession *s;
    const uint16_t *k;
    uint32_t chunk;
    uint64_t tokens;
    int rc;
} ingest_arg;

static void *ingest_thread(void *p)
{
    ingest_arg *a = p;
    eg_append_req r = {EG_DTYPE_F16, a->chunk, -1, a->k, a->k, NULL, 0};
    for (uint64_t n = 0; n < a->tokens && !a->rc; n += a->chunk) a->rc = eg_append(a->s, &r, NULL);
    return NULL;
}

/* Ingest `tokens` tokens per client into fresh sessions; returns tokens/s. */
static int ingest_run(const bench_opts *o, shape sh, int codec, int clients, uint64_t tokens, double *tps)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/ingest", o->dir);
    rmdir_all(dir);
    eg_store_options so = {64u << 20, 0, EG_SYNC_FULL};
    eg_store *st;
    if (eg_store_open(dir, &so, &st)) return fail("open");
    const uint32_t chunk = 64;
    size_t n = (size_t)sh.L * sh.H * chunk * sh.d;
    uint16_t *k = malloc(n * 2);
    float *tmp = malloc(n * 4);
    bench_randn(tmp, n, 7);
    for (size_t i = 0; i < n; i++) k[i] = eg_f32_to_f16(tmp[i]);
    free(tmp);
    ingest_arg a[8];
    pthread_t th[8];
    int rc = 0;
    for (int c = 0; c < clients && !rc; c++) {
        eg_session_config cfg;
        eg_session_config_init(&cfg);
        cfg.n_layers = sh.L; cfg.n_kv_heads = sh.H; cfg.n_q_heads = sh.H;
        cfg.head_dim_k = cfg.head_dim_v = sh.d; cfg.codec = codec;
        char name[32];
        snprintf(name, sizeof name, "s%d", c);
        if (eg_session_create(st, name, &cfg)) rc = fail("create");
        else if (eg_session_open(st, name, NULL, &a[c].s)) rc = fail("open session");
        a[c].k = k; a[c].chunk = chunk; a[c].tokens = tokens; a[c].rc = 0;
    }
    double t0 = bench_now();
    for (int c = 0; c < clients && !rc; c++) pthread_create(&th[c], NULL, ingest_thread, &a[c]);
    for (int c = 0; c < clients && !rc; c++) pthread_join(th[c], NULL);
    double t = bench_now() - t0;
    for (int c = 0; c < clients && !rc; c++) if (a[c].rc) rc = fail("append");
    for (int c = 0; c < clients; c++) eg_session_close(a[c].s);
    eg_store_close(st);
    free(k);
    rmdir_all(dir);
    *tps = (double)tokens * clients / t;
    return rc;
}

int bench_suite_ingest(const bench_opts *o)
{
    struct { shape sh; uint64_t tokens, quick; } cases[] = {
        {{30, 3, 64}, 4096, 512}, {{32, 8, 128}, 1024, 128}};
    int codecs[] = {EG_CODEC_Q8, EG_CODEC_Q4};
    for (size_t ci = 0; ci < 2; ci++)
        for (size_t k = 0; k < 2; k++) {
            shape sh = cases[ci].sh;
            uint64_t tokens = o->quick ? cases[ci].quick : cases[ci].tokens;
            double tps;
            if (ingest_run(o, sh, codecs[k], 1, tokens, &tps)) return 1;
            double token_bytes = (double)sh.L * sh.H * sh.d * 2 * 2;   /* keys + values, f16 in */
            double disk = bench_disk_write_mbps(o, (size_t)(tokens * token_bytes));
            char params[256];
            snprintf(params, sizeof params, "\"layers\":%u,\"kv_heads\":%u,\"dim\":%u,\"codec\":\"%s\","
                     "\"sync\":\"full\",\"tokens\":%llu,\"chunk\":64,\"clients\":1", sh.L, sh.H, sh.d,
                     eg_codec_name(codecs[k]), (unsigned long long)tokens);
            bench_figure(o, "ingest", "ingest_tokens_per_s", tps, "tokens/s", 0, params);
            bench_figure(o, "ingest", "ingest_vs_disk", tps * token_bytes / 1e6, "MB/s", disk, params);
        }
    /* Group commit: several appenders on different sessions. */
    for (int clients = 2; clients <= 4; clients *= 2) {
        shape sh = {30, 3, 64};
        uint64_t tokens = o->quick ? 256 : 1024;
        double tps;
        if (ingest_run(o, sh, EG_CODEC_Q8, clients, tokens, &tps)) return 1;
        double token_bytes = (double)sh.L * sh.H * sh.d * 4;
        double disk = bench_disk_write_mbps(o, (size_t)(tokens * clients * token_bytes));
        char params[256];
        snprintf(params, sizeof params, "\"layers\":30,\"kv_heads\":3,\"dim\":64,\"codec\":\"q8\","
                 "\"sync\":\"full\",\"tokens\":%llu,\"chunk\":64,\"clients\":%d", (unsigned long long)tokens, clients);
        bench_figure(o, "ingest", "ingest_tokens_per_s", tps, "tokens/s", 0, params);
        bench_figure(o, "ingest", "ingest_vs_disk", tps * token_bytes / 1e6, "MB/s", disk, params);
    }
    return 0;
}

static int read_pass(eg_msession *s, shape sh, uint64_t segs, int random, float *k, float *v, double *secs)
{
    uint64_t nblocks = segs * sh.L * sh.H, x = 88172645463325252ull;
    double t0 = bench_now();
    for (uint64_t i = 0; i < nblocks; i++) {
        uint64_t b = i;
        if (random) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; b = x % nblocks; }
        uint32_t h = (uint32_t)(b % sh.H), l = (uint32_t)(b / sh.H % sh.L);
        if (eg_read_block(s, l, h, b / sh.H / sh.L, k, v)) return fail("read");
    }
    *secs = bench_now() - t0;
    return 0;
}

int bench_suite_read(const bench_opts *o)
{
    shape sh = {4, 2, 128};
    uint64_t tokens = o->quick ? 8192 : 32768, segs = tokens / 64;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/read", o->dir);
    rmdir_all(dir);
    double mem = bench_mem_gbps();
    int codecs[] = {EG_CODEC_Q8, EG_CODEC_Q4};
    for (int ci = 0; ci < 2; ci++) {
        eg_store_options so = {64u << 20, 0, EG_SYNC_NONE};
        eg_store *st;
        eg_msession *s;
        if (eg_store_open(dir, &so, &st)) return fail("open");
        eg_session_config cfg;
        eg_session_config_init(&cfg);
        cfg.n_layers = sh.L; cfg.n_kv_heads = sh.H; cfg.n_q_heads = sh.H;
        cfg.head_dim_k = cfg.head_dim_v = sh.d; cfg.codec = codecs[ci];
        if (eg_session_create(st, "r", &cfg) || eg_session_open(st, "r", NULL, &s)) return fail("create");
        size_t n = (size_t)sh.L * sh.H * 1024 * sh.d;
        float *kv = malloc(n * 4);
        bench_randn(kv, n, 3);
        eg_append_req r = {EG_DTYPE_F32, 1024, -1, kv, kv, NULL, 0};
        for (uint64_t t = 0; t < tokens; t += 1024) if (eg_append(s, &r, NULL)) return fail("append");
        free(kv);
        eg_session_close(s);
        eg_store_close(st);
        float *k = malloc(64 * sh.d * 4), *v = malloc(64 * sh.d * 4);
        double out_bytes = (double)segs * sh.L * sh.H * 64 * sh.d * 2 * 4;
        char params[256];
        /* Cold: no cache tier, every block read and decoded from LMDB. */
        for (int random = 0; random < 2; random++) {
            so.cache_bytes = 0;
            if (eg_store_open(dir, &so, &st) || eg_session_open(st, "r", NULL, &s)) return fail("reopen");
            double secs;
            if (read_pass(s, sh, segs, random, k, v, &secs)) return 1;
            eg_session_close(s);
            eg_store_close(st);
            snprintf(params, sizeof params, "\"layers\":4,\"kv_heads\":2,\"dim\":128,\"codec\":\"%s\","
                     "\"order\":\"%s\",\"blocks\":%llu", eg_codec_name(codecs[ci]), random ? "random" : "sequential",
                     (unsigned long long)(segs * sh.L * sh.H));
            bench_figure(o, "read", "read_cold_vs_mem", out_bytes / secs / 1e9, "GB/s", mem, params);
            bench_figure(o, "read", "blocks_per_s", segs * sh.L * sh.H / secs, "blocks/s", 0, params);
        }
        /* Warm: everything in the cache tier (second pass). */
        so.cache_bytes = (size_t)(out_bytes * 1.2) + (64u << 20);
        if (eg_store_open(dir, &so, &st) || eg_session_open(st, "r", NULL, &s)) return fail("reopen");
        double secs;
        if (read_pass(s, sh, segs, 1, k, v, &secs) || read_pass(s, sh, segs, 1, k, v, &secs)) return 1;
        eg_store_stats stt;
        eg_store_get_stats(st, &stt);
        eg_session_close(s);
        eg_store_close(st);
        snprintf(params, sizeof params, "\"layers\":4,\"kv_heads\":2,\"dim\":128,\"codec\":\"%s\",\"order\":\"random\","
                 "\"cache_hits\":%llu,\"cache_misses\":%llu", eg_codec_name(codecs[ci]),
                 (unsigned long long)stt.cache_hits, (unsigned long long)stt.cache_misses);
        bench_figure(o, "read", "read_warm_vs_mem", out_bytes / secs / 1e9, "GB/s", mem, params);
        bench_figure(o, "read", "blocks_per_s", segs * sh.L * sh.H / secs, "blocks/s", 0, params);
        free(k);
        free(v);
        rmdir_all(dir);
    }
    return 0;
}
