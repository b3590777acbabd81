/* bench_engine.c: `engram-bench attend` and `resume`: the attention core
 * against its own dense path over the same stored session, and against
 * the memory-bandwidth floor of the bytes a step must touch, with the
 * bandwidth measured in the same run.
 *
 * Data: keys are a topic vector (one of 64, changing every 256 tokens)
 * plus uniform noise, values uniform; a query leans towards one topic, so
 * routing has something to find. Sessions have one layer (attend is per
 * layer), S = 64, keys stored after RoPE, EG_SYNC_NONE. */
#include "bench.h"
#include "engine.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

typedef struct { uint32_t qh, h, d; const char *name; } shape;

static uint64_t rng = 88172645463325252ull;
static inline float urand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static float topics[64][1024];

static void gen_tokens(const shape *sh, uint64_t t0, uint32_t n, float *k, float *v)
{
    for (uint32_t h = 0; h < sh->h; h++)
        for (uint32_t i = 0; i < n; i++) {
            const float *tp = topics[((t0 + i) / 256 * 7 + h) % 64];
            float *kk = k + ((size_t)h * n + i) * sh->d, *vv = v + ((size_t)h * n + i) * sh->d;
            for (uint32_t c = 0; c < sh->d; c++) { kk[c] = tp[c] + 0.8f * urand(); vv[c] = urand(); }
        }
}

static int append_to(eg_engine_session *s, const shape *sh, uint64_t *have, uint64_t want)
{
    enum { CH = 1024 };
    float *k = malloc((size_t)sh->h * CH * sh->d * 4), *v = malloc((size_t)sh->h * CH * sh->d * 4);
    int rc = k && v ? 0 : -1;
    while (!rc && *have < want) {
        uint32_t n = want - *have < CH ? (uint32_t)(want - *have) : CH;
        gen_tokens(sh, *have, n, k, v);
        eg_append_req r = {EG_DTYPE_F32, n, -1, k, v, NULL, 0};
        rc = eg_engine_append(s, &r, NULL);
        if (!rc) *have += n;
    }
    if (rc) fprintf(stderr, "bench: append failed: %s\n", eg_engine_last_error());
    free(k);
    free(v);
    return rc;
}

static void gen_queries(const shape *sh, float *q, uint32_t nq, uint64_t seed)
{
    rng ^= seed * 0x9E3779B97F4A7C15ull;
    for (uint32_t i = 0; i < nq; i++)
        for (uint32_t hq = 0; hq < sh->qh; hq++) {
            const float *tp = topics[(seed + hq) % 64];
            for (uint32_t c = 0; c < sh->d; c++)
                q[((size_t)i * sh->qh + hq) * sh->d + c] = 1.5f * tp[c] + urand();
        }
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Bandwidth probe buffers (see time_attend). */
#define PROBE_BYTES ((size_t)64 << 20)
static char *probe_src, *probe_dst;

/* Median seconds of n calls (after warm runs); res of the last call. With
 * gbps, each timed call follows a memcpy probe of PROBE_BYTES and *gbps is
 * the probes' median: the floor then sees the same load as the call, on
 * this shared machine whose bandwidth varies by half within minutes, and
 * the call starts with the caches flushed, as a step after other work. */
static double time_attend(eg_engine_session *s, const eg_attend_req *r, eg_attend_result *res, int dense,
                          int warm, int n, double *gbps)
{
    double t[64], g[64];
    if (n > 64) n = 64;
    if (gbps && !probe_src) {
        probe_src = malloc(PROBE_BYTES);
        probe_dst = malloc(PROBE_BYTES);
        if (!probe_src || !probe_dst) {
            free(probe_src); free(probe_dst);
            probe_src = probe_dst = NULL;
            gbps = NULL;       /* keep the suite's own figure */
        } else {
            memset(probe_src, 1, PROBE_BYTES);
            memset(probe_dst, 2, PROBE_BYTES);
        }
    }
    for (int i = 0; i < warm + n; i++) {
        if (gbps && probe_src && i >= warm) g[i - warm] = bench_mem_once(probe_dst, probe_src, PROBE_BYTES);
        double t0 = bench_now();
        int rc = dense ? eg_engine_attend_dense(s, r, res, NULL) : eg_engine_attend(s, r, res);
        if (rc) { fprintf(stderr, "bench: attend failed: %s\n", eg_engine_last_error()); return -1; }
        if (i >= warm) t[i - warm] = bench_now() - t0;
    }
    qsort(t, (size_t)n, sizeof *t, cmp_d);
    if (gbps && probe_src) {
        qsort(g, (size_t)n, sizeof *g, cmp_d);
        *gbps = g[n / 2];
    }
    return t[n / 2];
}

/* variant: 0 the defaults, 1 window_f32, 2 quest_f16. */
static int open_engine_variant(const char *dir, int variant, eg_engine **e)
{
    eg_engine_options o;
    eg_engine_options_init(&o);
    o.store.sync_mode = EG_SYNC_NONE;
    o.window_bytes = (size_t)1 << 30;
    o.window_f32 = variant == 1;
    o.quest_f16 = variant == 2;
    int rc = eg_engine_open(dir, &o, e);
    if (rc) fprintf(stderr, "bench: engine open failed: %s\n", eg_engine_last_error());
    return rc;
}

static double free_bytes(const char *dir)
{
    struct statvfs v;
    return statvfs(dir, &v) ? 0 : (double)v.f_bavail * v.f_frsize;
}

static void rm_store(const char *dir)
{
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "bench: could not remove %s\n", dir);
}

static int open_engine(const char *dir, eg_engine **e) { return open_engine_variant(dir, 0, e); }

/* A fresh engine on dir with one session "b" of one layer of shape sh. */
static int new_session(const char *dir, const shape *sh, int codec, eg_engine **e, eg_engine_session **s)
{
    rm_store(dir);
    if (open_engine(dir, e)) return 1;
    eg_session_config c;
    eg_session_config_init(&c);
    c.n_layers = 1; c.n_kv_heads = sh->h; c.n_q_heads = sh->qh;
    c.head_dim_k = c.head_dim_v = sh->d; c.codec = codec;
    if (eg_engine_session_create(*e, "b", &c) || eg_engine_session_open(*e, "b", NULL, s)) {
        fprintf(stderr, "bench: session: %s\n", eg_engine_last_error());
        eg_engine_close(*e);
        return 1;
    }
    return 0;
}

/* A decode request: one query at the session's end (pos), default budget. */
static void decode_req(eg_attend_req *r, const float *q, int64_t *pos)
{
    eg_attend_req_init(r);
    r->n_queries = 1;
    r->q = q;
    r->pos = pos;
}

/* One decode step's query at the end of T tokens, its request and result
 * buffers (r and res point into the struct: keep it in place). */
typedef struct {
    float *q, *out;
    int64_t pos;
    eg_attend_req r;
    eg_attend_result res;
} decode_step;

static void decode_step_init(decode_step *d, const shape *sh, uint64_t T)
{
    memset(d, 0, sizeof *d);
    d->q = malloc((size_t)sh->qh * sh->d * 4);
    d->out = malloc((size_t)sh->qh * sh->d * 4);
    gen_queries(sh, d->q, 1, T);
    d->pos = (int64_t)T;
    decode_req(&d->r, d->q, &d->pos);
    d->res.out = d->out;
}

static void decode_step_free(decode_step *d)
{
    free(d->q);
    free(d->out);
}

static void init_topics(void)
{
    for (int t = 0; t < 64; t++) for (int c = 0; c < 1024; c++) topics[t][c] = 0.6f * urand();
}

/* RAM bytes per segment of a quest route table the step streams, as
 * index/ keeps it: int8 codes of 2d channels (padded to 4), scale, L1 and
 * flag (the default), or f16 halves; plus its share of the group rows
 * (f16, one per 32 segments). */
static double quest_bytes(uint32_t d, int f16)
{
    double seg = f16 ? 4.0 * d : (double)((2 * d + 3) / 4 * 4) + 9.0;
    return seg + (4.0 * d + 8.0) / 32.0;
}

/* RAM bytes per segment of a ball route table: int8 codes of d channels
 * (padded to 4), scale, L1, flag and radius; plus its share of the group
 * rows (f16 centre, radius, slack terms: one per 32 segments). */
static double ball_bytes(uint32_t d)
{
    return (double)((d + 3) / 4 * 4) + 13.0 + (2.0 * d + 12.0) / 32.0;
}

/* The decode step at the end of T tokens routed by router: its time
 * against the dense time de and its floor (seg_bytes of table a
 * segment), as figures with "router" in their params. */
static int router_figures(const bench_opts *o, eg_engine_session *s, const shape *sh, int codec, uint64_t T,
                          eg_router_kind router, const char *name, double seg_bytes, double de, double gbps,
                          int calls)
{
    decode_step ds;
    decode_step_init(&ds, sh, T);
    eg_attend_req r = ds.r;
    eg_attend_result res = ds.res;
    r.router = router;
    double g = gbps, t = time_attend(s, &r, &res, 0, 3, calls, &g);
    if (t >= 0) {
        size_t kb, vb;
        eg_codec_size(codec, EG_KIND_K, 64, sh->d, &kb);
        eg_codec_size(codec, EG_KIND_V, 64, sh->d, &vb);
        double bytes = (double)(T / 64) * sh->h * seg_bytes + (double)res.segments * (kb + vb)
                     + (double)(T % 64) * sh->h * sh->d * 8.0;         /* open rows, f32 */
        char p[256];
        snprintf(p, sizeof p, "\"tokens\":%llu,\"shape\":\"%s\",\"codec\":\"%s\",\"budget\":2048,"
                 "\"router\":\"%s\"", (unsigned long long)T, sh->name, eg_codec_name(codec), name);
        bench_figure(o, "attend", "attend_ms", t * 1e3, "ms", de * 1e3, p);
        bench_figure(o, "attend", "attend_vs_dense", de / t, "ratio", de, p);
        bench_figure(o, "attend", "attend_vs_floor", t / (bytes / (g * 1e9)), "ratio", bytes / (g * 1e9), p);
    }
    decode_step_free(&ds);
    return t < 0;
}

/* One decode step at the session's end: sparse, dense, floor. */
static int decode_figures(const bench_opts *o, eg_engine_session *s, const shape *sh, int codec,
                          uint64_t T, double gbps)
{
    decode_step ds;
    decode_step_init(&ds, sh, T);
    eg_attend_req r = ds.r;
    eg_attend_result res = ds.res;
    int big = T >= (1u << 20);
    /* The sparse calls, then three dense ones (a median, not one call at
     * 1M), back to back so that both see the load of the same minutes.
     * Dense calls are not interleaved with the sparse ones: a dense call
     * walks the whole map, which no decode step follows in service, and
     * interleaved (stop 20) the 1M step of 32/8/128 q8 measured 2.87-2.92
     * ms in two runs against 2.54 without, the same day. */
    double sp = time_attend(s, &r, &res, 0, 3, big ? 21 : 31, &gbps);
    uint64_t segs = res.segments, toks = res.tokens;
    double de = sp < 0 ? -1 : time_attend(s, &r, &res, 1, 0, 3, NULL);
    int rc = sp < 0 || de < 0;
    if (!rc) {
        size_t kb, vb;
        eg_codec_size(codec, EG_KIND_K, 64, sh->d, &kb);
        eg_codec_size(codec, EG_KIND_V, 64, sh->d, &vb);
        uint64_t sealed_toks = toks - (T % 64) * sh->h;
        double bytes = (double)(T / 64) * sh->h * ball_bytes(sh->d)        /* the ball's table (default router) */
                     + (double)segs * (kb + vb)                     /* stored blocks attended */
                     + (double)(toks - sealed_toks) * sh->d * 8.0;  /* open rows, f32 */
        double floor_s = bytes / (gbps * 1e9);
        char p[256];
        snprintf(p, sizeof p, "\"tokens\":%llu,\"shape\":\"%s\",\"codec\":\"%s\",\"budget\":2048",
                 (unsigned long long)T, sh->name, eg_codec_name(codec));
        bench_figure(o, "attend", "attend_ms", sp * 1e3, "ms", de * 1e3, p);
        bench_figure(o, "attend", "attend_vs_dense", de / sp, "ratio", de, p);
        bench_figure(o, "attend", "attend_vs_floor", sp / floor_s, "ratio", floor_s, p);
    }
    /* Other routers on the same step: quest (the default before stop 22)
     * scans its own table; learned its own (2d + 4 + d bytes a segment)
     * and the quest table for the bound. */
    if (!rc) rc = router_figures(o, s, sh, codec, T, EG_ROUTER_QUEST, "quest", quest_bytes(sh->d, 0), de, gbps, big ? 21 : 31);
    if (!rc) rc = router_figures(o, s, sh, codec, T, EG_ROUTER_LEARNED, "learned", quest_bytes(sh->d, 0) + 3.0 * sh->d + 4,
                                 de, gbps, big ? 15 : 31);
    decode_step_free(&ds);
    return rc;
}

/* The same decode step on the engine reopened with another choice than
 * the defaults, the choice the default was made against: variant 1 keeps
 * the window decoded to f32 (the default keeps blocks as stored, decoded
 * into scratch when attended), variant 2 keeps quest tables as f16 (the
 * default: int8 codes, integer kernels). Figure: the variant's time over
 * the default's (above 1: the default is faster). *e and *s are reopened
 * with the defaults after. */
static int variant_figure(const bench_opts *o, const char *dir, const shape *sh, int codec, uint64_t T,
                          int variant, eg_engine **e, eg_engine_session **s)
{
    decode_step ds;
    decode_step_init(&ds, sh, T);
    eg_attend_req r = ds.r;
    eg_attend_result res = ds.res;
    if (variant == 2) r.router = EG_ROUTER_QUEST;   /* f16 or int8 quest tables: quest routing */
    int big = T >= (1u << 20), rc = 0;
    /* Rounds alternate the two engines, so that both see the machine's
     * load of the same minutes; each one's figure is its median round. */
    enum { ROUNDS = 3 };
    double rt[2][ROUNDS], t[2];
    for (int round = 0; round < ROUNDS && !rc; round++)
        for (int m = 1; m >= 0 && !rc; m--) {   /* the variant first: the defaults are left open */
            eg_engine_close(*e);
            *e = NULL;
            rc = open_engine_variant(dir, m ? variant : 0, e) || eg_engine_session_open(*e, "b", NULL, s);
            double g;   /* probed like the decode figures: caches flushed before each call */
            if (!rc) rt[m][round] = time_attend(*s, &r, &res, 0, 3, big ? 9 : 15, &g);
            if (!rc && rt[m][round] < 0) rc = 1;
        }
    for (int m = 0; m < 2 && !rc; m++) {
        qsort(rt[m], ROUNDS, sizeof(double), cmp_d);
        t[m] = rt[m][ROUNDS / 2];
    }
    if (!rc) {
        char p[256];
        snprintf(p, sizeof p, "\"tokens\":%llu,\"shape\":\"%s\",\"codec\":\"%s\",\"budget\":2048,%s",
                 (unsigned long long)T, sh->name, eg_codec_name(codec),
                 variant == 1 ? "\"window\":\"f32\"" : "\"router\":\"quest\",\"quest\":\"f16\"");
        bench_figure(o, "attend", "attend_ms", t[1] * 1e3, "ms", t[0] * 1e3, p);
        bench_figure(o, "attend", variant == 1 ? "window_f32_vs_stored" : "quest_f16_vs_int8", t[1] / t[0],
                     "ratio", t[0], p);
    } else fprintf(stderr, "bench: variant figure: %s\n", eg_engine_last_error());
    decode_step_free(&ds);
    return rc;
}

/* A chunk of 512 queries at the end of the session, each seeing itself. */
static int prefill_figure(const bench_opts *o, eg_engine_session *s, const shape *sh, int codec, uint64_t T)
{
    uint32_t nq = 512;
    float *q = malloc((size_t)nq * sh->qh * sh->d * 4), *out = malloc((size_t)nq * sh->qh * sh->d * 4);
    int64_t *pos = malloc(nq * sizeof *pos);
    gen_queries(sh, q, nq, T + 1);
    for (uint32_t i = 0; i < nq; i++) pos[i] = (int64_t)(T - nq + i);
    eg_attend_req r;
    eg_attend_req_init(&r);
    r.n_queries = nq; r.q = q; r.pos = pos; r.include_self = 1;
    eg_attend_result res = {out, NULL, NULL, 0, 0, 0, 0};
    double sp = time_attend(s, &r, &res, 0, 1, 3, NULL), de = sp < 0 ? -1 : time_attend(s, &r, &res, 1, 0, 1, NULL);
    if (sp >= 0 && de >= 0) {
        char p[256];
        snprintf(p, sizeof p, "\"tokens\":%llu,\"shape\":\"%s\",\"codec\":\"%s\",\"budget\":2048,\"queries\":512",
                 (unsigned long long)T, sh->name, eg_codec_name(codec));
        bench_figure(o, "attend", "prefill_vs_dense", de / sp, "ratio", de, p);
    }
    free(q); free(out); free(pos);
    return sp < 0 || de < 0;
}

/* Decode steps: append one token, attend at the new end with a query that
 * drifts slowly; page-ins per step. */
static int steps_figure(const bench_opts *o, eg_engine_session *s, const shape *sh, int codec,
                        uint64_t *T, int steps)
{
    size_t nqv = (size_t)sh->qh * sh->d;
    float *q = malloc(nqv * 4), *out = malloc(nqv * 4), *noise = malloc(nqv * 4);
    gen_queries(sh, q, 1, *T);
    uint64_t pins = 0, segs = 0;
    int rc = 0;
    for (int i = 0; i < steps && !rc; i++) {
        rc = append_to(s, sh, T, *T + 1);
        gen_queries(sh, noise, 1, *T + i);
        for (size_t j = 0; j < nqv; j++) q[j] = 0.95f * q[j] + 0.05f * noise[j];
        int64_t pos = (int64_t)*T;
        eg_attend_req r;
        decode_req(&r, q, &pos);
        eg_attend_result res = {out, NULL, NULL, 0, 0, 0, 0};
        if (!rc && (rc = eg_engine_attend(s, &r, &res)))
            fprintf(stderr, "bench: attend failed: %s\n", eg_engine_last_error());
        if (i > 0) { pins += res.page_ins; segs += res.segments; } /* the first step fills the window */
    }
    if (!rc) {
        char p[256];
        snprintf(p, sizeof p, "\"tokens\":%llu,\"shape\":\"%s\",\"codec\":\"%s\",\"budget\":2048,\"steps\":%d",
                 (unsigned long long)*T, sh->name, eg_codec_name(codec), steps);
        bench_figure(o, "attend", "page_ins_per_step", (double)pins / (steps - 1), "segments",
                     (double)segs / (steps - 1), p);
    }
    free(q); free(out); free(noise);
    return rc;
}

int bench_suite_attend(const bench_opts *o)
{
    init_topics();
    static const shape shapes[2] = {{32, 8, 128, "32/8/128"}, {9, 3, 64, "9/3/64"}};
    uint64_t sizes_full[3] = {8192, 131072, 1048576}, sizes_quick[2] = {8192, 65536};
    const uint64_t *sizes = o->tokens ? &o->tokens : o->quick ? sizes_quick : sizes_full;
    int n_sizes = o->tokens ? 1 : o->quick ? 2 : 3, n_shapes = o->quick ? 1 : 2, n_codecs = o->quick ? 1 : 2, rc = 0;
    uint64_t mid = o->quick ? 65536 : 131072;
    double gbps = bench_mem_gbps();
    if (!o->json) printf("attend: one decode query per layer, budget 2048, warm window; memory %.1f GB/s\n", gbps);
    for (int si = 0; si < n_shapes && !rc; si++)
        for (int ci = 0; ci < n_codecs && !rc; ci++) {
            const shape *sh = &shapes[o->quick ? 1 : si];
            int codec = ci ? EG_CODEC_Q4 : EG_CODEC_Q8;
            if ((o->shape && strcmp(o->shape, sh->name)) || (o->codec && strcmp(o->codec, eg_codec_name(codec))))
                continue;
            char dir[4200];
            snprintf(dir, sizeof dir, "%s/attend", o->dir);
            eg_engine *e;
            eg_engine_session *s;
            if (new_session(dir, sh, codec, &e, &s)) return 1;
            uint64_t T = 0;
            for (int zi = 0; zi < n_sizes && !rc; zi++) {
                size_t kb, vb;
                eg_codec_size(codec, EG_KIND_K, 64, sh->d, &kb);
                eg_codec_size(codec, EG_KIND_V, 64, sh->d, &vb);
                double need = (double)sizes[zi] / 64 * sh->h * (kb + vb) * 1.6;
                if (need > free_bytes(o->dir) / 2) {
                    fprintf(stderr, "attend: skipping %llu tokens of %s: needs %.1f GB, disk too small\n",
                            (unsigned long long)sizes[zi], sh->name, need / 1e9);
                    break;
                }
                if ((rc = append_to(s, sh, &T, sizes[zi]))) break;
                rc = decode_figures(o, s, sh, codec, T, gbps);
                for (int v = 1; v <= 2 && !rc && (o->tokens || sizes[zi] >= mid); v++)
                    rc = variant_figure(o, dir, sh, codec, T, v, &e, &s);
                if (o->tokens) continue;
                if (!rc && sizes[zi] == mid) rc = prefill_figure(o, s, sh, codec, T);
                if (!rc && sizes[zi] == mid && ci == 0) rc = steps_figure(o, s, sh, codec, &T, o->quick ? 200 : 1000);
            }
            eg_engine_close(e);
            rm_store(dir);
        }
    free(probe_src);
    free(probe_dst);
    probe_src = probe_dst = NULL;
    return rc ? 1 : 0;
}

/* Read every byte of the file once; seconds, *bytes. */
static double read_file_once(const char *path, double *bytes)
{
    double t0 = bench_now();
    *bytes = 0;
    FILE *f = fopen(path, "rb");
    char *buf = malloc(1 << 20);
    size_t got;
    while (f && buf && (got = fread(buf, 1, 1 << 20, f)) > 0) *bytes += got;
    if (f) fclose(f);
    free(buf);
    return bench_now() - t0;
}

/* Drop the file's pages from the OS page cache (clean after the store's
 * close synced it), so that the next read comes from the disk. */
static int drop_cache(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    return rc;
}

/* Seconds from opening an engine on dir to the first attend's answer. */
static double time_resume(const char *dir, const eg_attend_req *r, eg_attend_result *res, eg_engine **e)
{
    eg_engine_session *s;
    double t0 = bench_now();
    int rc = open_engine(dir, e);
    if (!rc) rc = eg_engine_session_open(*e, "b", NULL, &s) || eg_engine_attend(s, r, res);
    double t = bench_now() - t0;
    if (rc) fprintf(stderr, "bench: resume failed: %s\n", eg_engine_last_error());
    return rc ? -1 : t;
}

/* Invalidate the quest and ball snapshots (session record kinds 4 and 6)
 * of session "b" (layer 0), so that the next open rebuilds its tables
 * from the summaries. */
static void spoil_snapshots(eg_engine *e, uint32_t H)
{
    eg_msession *ms;
    if (eg_session_open(eg_engine_store(e), "b", NULL, &ms)) return;
    unsigned char junk[16] = {0};
    for (uint32_t h = 0; h < H; h++) {
        eg_record_put_session(ms, 0, h, 4u, 0, junk, sizeof junk);
        eg_record_put_session(ms, 0, h, 6u, 0, junk, sizeof junk);
    }
    eg_session_close(ms);
}

/* Resume: open a fresh engine on a stored session and answer the first
 * attend, against reading the store's data file once. The session was
 * attended before it closed (as a served session is), so its route tables
 * (the default router's: the ball's) were stored as snapshots: the main figure loads them. Also: the same
 * with the snapshots spoiled (tables rebuilt from the summaries), and both
 * the read and the resume with the file's pages dropped from the OS page
 * cache first (cold: the disk's figure). */
int bench_suite_resume(const bench_opts *o)
{
    init_topics();
    static const shape shapes[2] = {{9, 3, 64, "9/3/64"}, {32, 8, 128, "32/8/128"}};
    uint64_t T_want = o->quick ? 262144 : 1048576;
    int rc = 0;
    for (int si = 0; si < (o->quick ? 1 : 2) && !rc; si++) {
        const shape *sh = &shapes[si];
        char dir[4200], data[4300];
        snprintf(dir, sizeof dir, "%s/resume", o->dir);
        snprintf(data, sizeof data, "%s/data.mdb", dir);
        rm_store(dir);
        size_t kb, vb;
        eg_codec_size(EG_CODEC_Q8, EG_KIND_K, 64, sh->d, &kb);
        eg_codec_size(EG_CODEC_Q8, EG_KIND_V, 64, sh->d, &vb);
        if ((double)T_want / 64 * sh->h * (kb + vb) * 1.6 > free_bytes(o->dir) / 2) {
            fprintf(stderr, "resume: skipping %s: disk too small\n", sh->name);
            continue;
        }
        eg_engine *e;
        eg_engine_session *s;
        if ((rc = new_session(dir, sh, EG_CODEC_Q8, &e, &s))) break;
        uint64_t T = 0;
        rc = append_to(s, sh, &T, T_want);
        decode_step ds;
        decode_step_init(&ds, sh, T);
        eg_attend_req r = ds.r;
        eg_attend_result res = ds.res;
        if (!rc && eg_engine_attend(s, &r, &res)) rc = 1;   /* served once: its tables are loaded */
        eg_engine_close(e);                                  /* ... and stored at the close */
        double bytes = 0, full = read_file_once(data, &bytes);
        double first = rc ? -1 : time_resume(dir, &r, &res, &e);
        double rebuild = -1, full_cold = -1, first_cold = -1;
        if (first >= 0) {
            spoil_snapshots(e, sh->h);
            eg_engine_close(e);
            rebuild = time_resume(dir, &r, &res, &e);   /* rebuilds, and stores them again at the close */
            if (rebuild >= 0) eg_engine_close(e);
            if (rebuild >= 0 && drop_cache(data) == 0) {
                full_cold = read_file_once(data, &bytes);
                drop_cache(data);
                first_cold = time_resume(dir, &r, &res, &e);
                if (first_cold >= 0) eg_engine_close(e);
            }
        }
        rc = first < 0 || rebuild < 0;
        if (!rc) {
            char p[256];
            snprintf(p, sizeof p, "\"tokens\":%llu,\"shape\":\"%s\",\"codec\":\"q8\",\"budget\":2048,"
                     "\"store_bytes\":%.0f", (unsigned long long)T, sh->name, bytes);
            bench_figure(o, "resume", "resume_ms", first * 1e3, "ms", full * 1e3, p);
            bench_figure(o, "resume", "resume_vs_full_read", full / first, "ratio", full, p);
            char pr[300];
            snprintf(pr, sizeof pr, "%s,\"tables\":\"rebuilt\"", p);
            bench_figure(o, "resume", "resume_ms", rebuild * 1e3, "ms", full * 1e3, pr);
            bench_figure(o, "resume", "resume_rebuild_vs_full_read", full / rebuild, "ratio", full, pr);
            if (first_cold >= 0) {
                char pc[300];
                snprintf(pc, sizeof pc, "%s,\"page_cache\":\"cold\"", p);
                bench_figure(o, "resume", "resume_ms", first_cold * 1e3, "ms", full_cold * 1e3, pc);
                bench_figure(o, "resume", "resume_cold_vs_full_read", full_cold / first_cold, "ratio", full_cold, pc);
            } else fprintf(stderr, "resume: no cold figure (the page cache could not be dropped)\n");
        }
        decode_step_free(&ds);
        rm_store(dir);
    }
    return rc ? 1 : 0;
}

/* ---- shared with bench_net.c ------------------------------------------------ */
int bench_session_fill(eg_engine *e, const char *name, uint32_t qh, uint32_t h, uint32_t d, int codec,
                       uint64_t tokens, eg_engine_session **out)
{
    static int topics_ready;
    if (!topics_ready) { init_topics(); topics_ready = 1; }
    shape sh = {qh, h, d, ""};
    eg_session_config c;
    eg_session_config_init(&c);
    c.n_layers = 1; c.n_kv_heads = h; c.n_q_heads = qh;
    c.head_dim_k = c.head_dim_v = d; c.codec = codec;
    if (eg_engine_session_create(e, name, &c) || eg_engine_session_open(e, name, NULL, out)) {
        fprintf(stderr, "bench: session: %s\n", eg_engine_last_error());
        return 1;
    }
    uint64_t have = 0;
    return tokens ? append_to(*out, &sh, &have, tokens) : 0;
}

void bench_tokens(uint32_t h, uint32_t d, uint64_t t0, uint32_t n, float *k, float *v)
{
    shape sh = {h, h, d, ""};
    gen_tokens(&sh, t0, n, k, v);
}

void bench_queries(uint32_t qh, uint32_t d, float *q, uint32_t nq, uint64_t seed)
{
    shape sh = {qh, 1, d, ""};
    gen_queries(&sh, q, nq, seed);
}
