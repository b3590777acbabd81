/* bench_net.c: `engram-bench net`: engramd over loopback TCP against the
 * engine called in process on the same session in the same run.
 *
 * The server runs in this process (eg_server on a thread, 8 workers, TCP
 * on 127.0.0.1, port chosen by the OS); clients are threads, one
 * connection each. Figures per operation (attend at the session's end with
 * budget 2048, select, append of 64 tokens to the client's own session)
 * and client count (1, 8, 64): requests per second over all clients,
 * p50 and p99 latency, and for 1 client the ratio of the socket's time to
 * the in-process call's (net_vs_inprocess). Stores run EG_SYNC_NONE in
 * both paths, so append compares the protocol and not the disk. */
#include "bench.h"
#include "net.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { OP_ATTEND, OP_SELECT, OP_APPEND };
static const char *const op_names[] = {"attend", "select", "append"};
enum { QH = 9, KVH = 3, D = 64, APPEND_TOK = 64 };

typedef struct {
    const char *addr;
    int op, n_req, id;
    uint64_t T;
    double *lat;             /* [n_req] seconds */
    int failed;
} client_job;

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void shape_of(eg_session_config *c)
{
    eg_session_config_init(c);
    c->n_layers = 1; c->n_kv_heads = KVH; c->n_q_heads = QH; c->head_dim_k = c->head_dim_v = D;
}

static void *client_main(void *arg)
{
    client_job *j = arg;
    eg_client *c;
    if (eg_client_connect(j->addr, NULL, &c)) { j->failed = 1; return NULL; }
    eg_session_config cfg;
    shape_of(&cfg);
    char name[32];
    snprintf(name, sizeof name, j->op == OP_APPEND ? "a%d" : "b", j->id);
    uint32_t h;
    if (j->op == OP_APPEND && eg_client_create(c, name, &cfg)) j->failed = 1;
    if (!j->failed && eg_client_open(c, name, NULL, &h)) j->failed = 1;
    float q[QH * D], out[QH * D], k[KVH * APPEND_TOK * D], v[KVH * APPEND_TOK * D];
    bench_queries(QH, D, q, 1, j->T + (uint64_t)j->id);
    bench_tokens(KVH, D, 0, APPEND_TOK, k, v);
    int64_t pos = (int64_t)j->T;
    eg_attend_req r;
    eg_attend_req_init(&r);
    r.n_queries = 1; r.q = q; r.pos = &pos;
    for (int i = 0; i < j->n_req && !j->failed; i++) {
        double t0 = bench_now();
        int rc;
        if (j->op == OP_ATTEND) {
            eg_attend_result res = {.out = out};
            rc = eg_client_attend(c, h, &cfg, &r, 0, &res);
        } else if (j->op == OP_SELECT) {
            eg_select_result sel;
            rc = eg_client_select(c, h, &cfg, &r, &sel);
            if (!rc) eg_select_result_free(&sel);
        } else {
            eg_append_req a = {EG_DTYPE_F32, APPEND_TOK, -1, k, v, NULL, 0};
            rc = eg_client_append(c, h, &cfg, &a, NULL);
        }
        if (rc) { fprintf(stderr, "bench net: %s: %s\n", op_names[j->op], eg_client_error(c)); j->failed = 1; }
        j->lat[i] = bench_now() - t0;
    }
    eg_client_close(c);
    return NULL;
}

/* In-process median of the same call. */
static double inprocess_s(eg_engine *e, eg_engine_session *s, int op, uint64_t T, int n)
{
    float q[QH * D], out[QH * D], k[KVH * APPEND_TOK * D], v[KVH * APPEND_TOK * D];
    bench_queries(QH, D, q, 1, T);
    bench_tokens(KVH, D, 0, APPEND_TOK, k, v);
    int64_t pos = (int64_t)T;
    eg_attend_req r;
    eg_attend_req_init(&r);
    r.n_queries = 1; r.q = q; r.pos = &pos;
    eg_engine_session *as = NULL;
    if (op == OP_APPEND && bench_session_fill(e, "inproc", QH, KVH, D, EG_CODEC_Q8, 0, &as)) return -1;
    double *t = malloc((size_t)n * sizeof *t);
    for (int i = 0; i < n; i++) {
        double t0 = bench_now();
        int rc;
        if (op == OP_ATTEND) {
            eg_attend_result res = {.out = out};
            rc = eg_engine_attend(s, &r, &res);
        } else if (op == OP_SELECT) {
            eg_select_result sel;
            rc = eg_engine_select(s, &r, &sel);
            if (!rc) eg_select_result_free(&sel);
        } else {
            eg_append_req a = {EG_DTYPE_F32, APPEND_TOK, -1, k, v, NULL, 0};
            rc = eg_engine_append(as, &a, NULL);
        }
        if (rc) { free(t); return -1; }
        t[i] = bench_now() - t0;
    }
    qsort(t, (size_t)n, sizeof *t, cmp_d);
    double med = t[n / 2];
    free(t);
    if (as) eg_engine_session_close(as);
    return med;
}

static void *server_main(void *arg)
{
    eg_server_run(arg, 0);
    return NULL;
}

int bench_suite_net(const bench_opts *o)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/net", o->dir);
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) return 1;
    eg_server_options so;
    eg_server_options_init(&so);
    so.data_dir = dir;
    so.tcp = "127.0.0.1:0";
    so.quiet = 1;
    so.engine.store.sync_mode = EG_SYNC_NONE;
    so.engine.window_bytes = (size_t)1 << 30;
    so.max_connections = 256;
    eg_server *srv;
    if (eg_server_create(&so, &srv)) {
        fprintf(stderr, "bench net: %s\n", eg_net_last_error());
        return 1;
    }
    uint64_t T = o->quick ? 65536 : 1048576;
    eg_engine *e = eg_server_engine(srv);
    eg_engine_session *s;
    double t0 = bench_now();
    if (bench_session_fill(e, "b", QH, KVH, D, EG_CODEC_Q8, T, &s)) { eg_server_free(srv); return 1; }
    if (!o->json)
        printf("net: loopback TCP, session of %llu tokens (9/3/64, q8) built in %.1f s; budget 2048\n",
               (unsigned long long)T, bench_now() - t0);
    pthread_t st;
    pthread_create(&st, NULL, server_main, srv);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", eg_server_port(srv));
    int rc = 0;
    static const int clients[3] = {1, 8, 64};
    for (int op = 0; op < 3 && !rc; op++) {
        int per1 = o->quick ? 40 : 200;
        double inproc = inprocess_s(e, s, op, T, per1);
        for (int ci = 0; ci < 3 && !rc; ci++) {
            int nc = clients[ci], per = per1 / nc > 4 ? per1 / nc : 4;
            if (op == OP_ATTEND && !o->quick) per = nc == 1 ? 200 : nc == 8 ? 40 : 8;
            client_job *jobs = calloc((size_t)nc, sizeof *jobs);
            pthread_t *th = calloc((size_t)nc, sizeof *th);
            double *lat = calloc((size_t)nc * per, sizeof *lat);
            double w0 = bench_now();
            for (int i = 0; i < nc; i++) {
                jobs[i] = (client_job){addr, op, per, ci * 100 + i, T, lat + (size_t)i * per, 0};
                pthread_create(&th[i], NULL, client_main, &jobs[i]);
            }
            for (int i = 0; i < nc; i++) {
                pthread_join(th[i], NULL);
                rc |= jobs[i].failed;
            }
            double wall = bench_now() - w0;
            if (!rc) {
                size_t n = (size_t)nc * per;
                qsort(lat, n, sizeof *lat, cmp_d);
                double p50 = lat[n / 2], p99 = lat[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1];
                char p[256];
                snprintf(p, sizeof p, "\"operation\":\"%s\",\"clients\":%d,\"tokens\":%llu,\"shape\":\"9/3/64\","
                         "\"codec\":\"q8\"%s", op_names[op], nc, (unsigned long long)T,
                         op == OP_APPEND ? ",\"append_tokens\":64" : ",\"budget\":2048");
                bench_figure(o, "net", "requests_per_s", (double)n / wall, "1/s", 1.0 / inproc, p); /* baseline: one thread in process */
                bench_figure(o, "net", "p50_ms", p50 * 1e3, "ms", inproc * 1e3, p);
                bench_figure(o, "net", "p99_ms", p99 * 1e3, "ms", inproc * 1e3, p);
                if (nc == 1 && inproc > 0) bench_figure(o, "net", "net_vs_inprocess", p50 / inproc, "ratio", inproc, p);
            }
            free(jobs); free(th); free(lat);
        }
    }
    eg_engine_session_close(s);
    eg_server_stop(srv);
    pthread_join(st, NULL);
    eg_server_free(srv);
    if (system(cmd) != 0) rc = 1;
    return rc;
}
