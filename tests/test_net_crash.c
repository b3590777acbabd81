/* test_net_crash: engramd killed with -9 while several clients append
 * (every acknowledged token survives, exactly), and stopped with SIGTERM
 * while requests are in flight (each gets an answer or an error, and the
 * store reopens clean). */
#include "netutil.h"
#include <pthread.h>
#include <stdatomic.h>

enum { CLIENTS = 3, CHUNK = 6, DK = 16, DV = 8 };

static void fill(float *x, uint32_t n, uint64_t t0, uint32_t d, int who, float kind)
{
    /* value = a function of (client, token, channel): checkable after restart */
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t c = 0; c < d; c++)
            x[(size_t)i * d + c] = kind + (float)who * 1000.0f + (float)((t0 + i) % 997) + (float)c / 64.0f;
}

static void session_cfg(eg_session_config *cfg)
{
    eg_session_config_init(cfg);
    cfg->n_layers = 1; cfg->n_kv_heads = 1; cfg->n_q_heads = 1;
    cfg->head_dim_k = DK; cfg->head_dim_v = DV; cfg->seg_tokens = 16; cfg->codec = EG_CODEC_F32;
}

typedef struct {
    const nt_server *srv;
    int who;
    atomic_int *stop;   /* set by the main thread once the server is killed */
    uint64_t acked;          /* tokens acknowledged by the server */
    int errors_after_kill;
} appender;

static void *append_loop(void *arg)
{
    appender *a = arg;
    eg_client *c;
    if (nt_client(a->srv, a->who % 2, NULL, &c)) return NULL;
    eg_session_config cfg;
    session_cfg(&cfg);
    char name[16];
    snprintf(name, sizeof name, "c%d", a->who);
    uint32_t h;
    if (eg_client_open(c, name, NULL, &h)) { eg_client_close(c); return NULL; }
    float k[CHUNK * DK], v[CHUNK * DV];
    while (!atomic_load(a->stop)) {
        fill(k, CHUNK, a->acked, DK, a->who, 0.0f);
        fill(v, CHUNK, a->acked, DV, a->who, 0.5f);
        eg_append_req r = {EG_DTYPE_F32, CHUNK, -1, k, v, NULL, 0};
        uint64_t n = 0;
        int rc = eg_client_append(c, h, &cfg, &r, &n);
        if (rc) { a->errors_after_kill++; break; } /* the server died: this one is not acknowledged */
        a->acked = n;
    }
    eg_client_close(c);
    return NULL;
}

static void test_kill9_during_appends(void)
{
    char dir[512];
    tu_tmpdir(dir, sizeof dir, "net-kill");
    nt_server s;
    REQUIRE(nt_start(&s, dir, NULL) == 0);
    eg_client *c;
    REQUIRE(nt_client(&s, 0, NULL, &c) == 0);
    eg_session_config cfg;
    session_cfg(&cfg);
    for (int i = 0; i < CLIENTS; i++) {
        char name[16];
        snprintf(name, sizeof name, "c%d", i);
        CHECK_NET(eg_client_create(c, name, &cfg));
    }
    eg_client_close(c);
    eg_client *pre; /* connected before the kill, idle through it */
    REQUIRE(nt_client(&s, 0, NULL, &pre) == 0);
    atomic_int stop = 0;
    appender a[CLIENTS];
    pthread_t th[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        a[i] = (appender){.srv = &s, .who = i, .stop = &stop};
        pthread_create(&th[i], NULL, append_loop, &a[i]);
    }
    nt_sleep_ms(700);
    eg_store_stats st;
    CHECK_NET(eg_client_stats(pre, &st, NULL));
    fprintf(stderr, "  %llu appends from %d connections in %llu commits\n", (unsigned long long)st.appends, CLIENTS,
            (unsigned long long)st.commits);
    CHECK(st.commits < st.appends); /* appends of different connections share group commits */
    kill(s.pid, SIGKILL);
    waitpid(s.pid, NULL, 0);
    s.pid = 0;
    atomic_store(&stop, 1);
    for (int i = 0; i < CLIENTS; i++) pthread_join(th[i], NULL);

    /* restart on the same directory: every acknowledged token is there */
    nt_server r;
    REQUIRE(nt_start(&r, dir, NULL) == 0);
    /* the old connection: an error, not a hang; then the next call reconnects */
    CHECK_NCODE(eg_client_ping(pre), EG_NET_EDISCONNECT);
    CHECK_NET(eg_client_ping(pre));
    eg_client_close(pre);
    for (int i = 0; i < CLIENTS; i++) CHECK_EQ_INT(a[i].errors_after_kill, 1);
    REQUIRE(nt_client(&r, 1, NULL, &c) == 0);
    for (int i = 0; i < CLIENTS; i++) {
        char name[16];
        snprintf(name, sizeof name, "c%d", i);
        uint32_t h;
        CHECK_NET(eg_client_open(c, name, NULL, &h));
        eg_session_info si;
        CHECK_NET(eg_client_info(c, h, &si));
        fprintf(stderr, "  client %d: %llu tokens acknowledged, %llu stored\n", i, (unsigned long long)a[i].acked,
                (unsigned long long)si.n_tokens);
        CHECK(a[i].acked > 0);
        CHECK(si.n_tokens >= a[i].acked);
        CHECK(si.n_tokens <= a[i].acked + CHUNK); /* at most the one in flight */
        CHECK_EQ_INT(si.n_tokens % CHUNK, 0);     /* never part of an append */
        int bad = 0;
        for (uint64_t seg = 0; seg * 16 < si.n_tokens; seg++) {
            float k[16 * DK], v[16 * DV], ek[16 * DK], ev[16 * DV];
            uint32_t rows = 0;
            CHECK_NET(eg_client_fetch(c, h, &cfg, 0, 0, seg, k, v, &rows));
            fill(ek, rows, seg * 16, DK, i, 0.0f);
            fill(ev, rows, seg * 16, DV, i, 0.5f);
            bad += memcmp(k, ek, (size_t)rows * DK * 4) != 0 || memcmp(v, ev, (size_t)rows * DV * 4) != 0;
        }
        CHECK_EQ_INT(bad, 0);
    }
    uint64_t problems = 1;
    CHECK_NET(eg_client_verify(c, NULL, NULL, NULL, &problems));
    CHECK_EQ_INT(problems, 0);
    eg_client_close(c);
    CHECK_EQ_INT(nt_stop(&r, SIGTERM), 0);
    tu_rmrf(dir);
}

/* SIGTERM while pipelined appends and attends are in flight on several
 * connections: every request gets its answer or an error, nothing hangs,
 * the server exits 0, and the store reopens clean with exactly the
 * acknowledged appends. */
static void test_sigterm_in_flight(void)
{
    char dir[512];
    tu_tmpdir(dir, sizeof dir, "net-term");
    nt_server s;
    REQUIRE(nt_start(&s, dir, NULL) == 0);
    eg_session_config cfg;
    session_cfg(&cfg);
    eg_client *c[CLIENTS];
    uint32_t h[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        REQUIRE(nt_client(&s, i % 2, NULL, &c[i]) == 0);
        char name[16];
        snprintf(name, sizeof name, "t%d", i);
        CHECK_NET(eg_client_create(c[i], name, &cfg));
        CHECK_NET(eg_client_open(c[i], name, NULL, &h[i]));
    }
    enum { N = 200 };
    static float k[CLIENTS][N][CHUNK * DK], v[CLIENTS][N][CHUNK * DV];
    static uint64_t ntok[CLIENTS][N];
    for (int i = 0; i < CLIENTS; i++)
        for (int j = 0; j < N; j++) {
            fill(k[i][j], CHUNK, (uint64_t)j * CHUNK, DK, i, 0.0f);
            fill(v[i][j], CHUNK, (uint64_t)j * CHUNK, DV, i, 0.5f);
            eg_append_req r = {EG_DTYPE_F32, CHUNK, -1, k[i][j], v[i][j], NULL, 0};
            CHECK_NET(eg_client_append_send(c[i], h[i], &cfg, &r, &ntok[i][j], NULL));
        }
    kill(s.pid, SIGTERM);
    int answered = 0, failed = 0, other = 0;
    uint64_t acked[CLIENTS] = {0};
    for (int i = 0; i < CLIENTS; i++) {
        for (int j = 0; j < N; j++) {
            int rc = eg_client_recv(c[i], NULL);
            if (rc == 0) {
                answered++;
                if (ntok[i][j] != (uint64_t)(j + 1) * CHUNK) other++;
                acked[i] = ntok[i][j];
            } else if (rc == EG_NET_ESHUTDOWN || rc == EG_NET_EDISCONNECT) {
                failed++;
            } else {
                other++;
                fprintf(stderr, "  unexpected %d: %s\n", rc, eg_client_error(c[i]));
            }
        }
        eg_client_close(c[i]);
    }
    fprintf(stderr, "  %d answered, %d failed with shutdown or disconnect\n", answered, failed);
    CHECK_EQ_INT(answered + failed, CLIENTS * N);
    CHECK_EQ_INT(other, 0);
    double t0 = nt_now();
    CHECK_EQ_INT(nt_stop(&s, 0), 0); /* signal 0: only wait for the exit the first SIGTERM began */
    CHECK(nt_now() - t0 < 10);
    /* the store reopens clean, in process, with what was acknowledged */
    char data[600];
    snprintf(data, sizeof data, "%s/data", dir);
    eg_engine *e;
    REQUIRE(eg_engine_open(data, NULL, &e) == 0);
    uint64_t problems = 1;
    CHECK_OK(eg_store_verify(eg_engine_store(e), NULL, NULL, NULL, &problems));
    CHECK_EQ_INT(problems, 0);
    for (int i = 0; i < CLIENTS; i++) {
        char name[16];
        snprintf(name, sizeof name, "t%d", i);
        eg_session_info si;
        CHECK_OK(eg_session_info_by_name(eg_engine_store(e), name, &si));
        CHECK(si.n_tokens >= acked[i]);
        CHECK_EQ_INT(si.n_tokens % CHUNK, 0);
    }
    eg_engine_close(e);
    tu_rmrf(dir);
}

int main(int argc, char **argv)
{
    (void)argc;
    nt_init(argv[0]);
    TEST_RUN(test_kill9_during_appends);
    TEST_RUN(test_sigterm_in_flight);
    TEST_END();
}
