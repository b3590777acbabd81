/* test_net_abuse: what a broken or hostile client can send a real engramd.
 * Each malformed input gets an error frame or a closed connection, while a
 * second client keeps being served; limits, timeouts and auth hold. */
#include "netutil.h"

static int served(const nt_server *s)
{
    eg_client *c;
    if (nt_client(s, 0, NULL, &c)) return 0;
    int ok = eg_client_ping(c) == 0;
    eg_client_close(c);
    return ok;
}

/* Send bytes on a fresh raw connection, read one answer: its status (or 1
 * when the connection closed without one). */
static int one_answer(const nt_server *s, const void *bytes, size_t n, uint64_t *id, int *closed_after)
{
    int fd = nt_raw(s);
    if (fd < 0) return 2;
    nt_write(fd, bytes, n);
    eg_frame_header h;
    int st = 1;
    if (nt_read_frame(fd, &h, NULL) == 0) {
        st = h.status;
        if (id) *id = h.request_id;
    }
    if (closed_after) *closed_after = nt_closed_within(fd, 1500);
    close(fd);
    return st;
}

static void test_malformed_frames(void)
{
    char dir[512];
    tu_tmpdir(dir, sizeof dir, "net-bad");
    nt_server s;
    const char *extra[] = {"--frame-mb", "1", NULL};
    REQUIRE(nt_start(&s, dir, extra) == 0);
    unsigned char f[4096];
    uint64_t id = 0;
    int closed = 0;

    /* bad magic: an error, then the connection closes (the stream cannot be trusted) */
    size_t n = nt_frame(f, EG_OP_PING, 5, NULL, 0);
    f[0] = 'X';
    CHECK_EQ_INT(one_answer(&s, f, n, NULL, &closed), EG_NET_EMAGIC);
    CHECK(closed);
    /* unknown version: the same */
    n = nt_frame(f, EG_OP_PING, 6, NULL, 0);
    f[4] = 9;
    CHECK_EQ_INT(one_answer(&s, f, n, &id, &closed), EG_NET_EVERSION);
    CHECK(closed);
    /* unknown opcode: an error for that id, and the connection goes on */
    int fd = nt_raw(&s);
    REQUIRE(fd >= 0);
    n = nt_frame(f, 99, 7, "abc", 3);
    n += nt_frame(f + n, EG_OP_PING, 8, NULL, 0);
    nt_write(fd, f, n);
    eg_frame_header h;
    REQUIRE(nt_read_frame(fd, &h, NULL) == 0);
    CHECK_EQ_INT(h.status, EG_NET_EOPCODE);
    CHECK_EQ_INT(h.request_id, 7);
    REQUIRE(nt_read_frame(fd, &h, NULL) == 0);
    CHECK_EQ_INT(h.status, 0);
    CHECK_EQ_INT(h.request_id, 8);
    /* reserved flags */
    n = nt_frame(f, EG_OP_PING, 9, NULL, 0);
    f[9] = 1;
    nt_write(fd, f, n);
    REQUIRE(nt_read_frame(fd, &h, NULL) == 0);
    CHECK_EQ_INT(h.status, EG_NET_EFLAGS);
    /* a body where none belongs, a body of 0 where one is needed, a body
     * inconsistent with its own fields, a wrong dtype, an unknown handle */
    n = nt_frame(f, EG_OP_PING, 10, "x", 1);
    nt_write(fd, f, n);
    REQUIRE(nt_read_frame(fd, &h, NULL) == 0);
    CHECK_EQ_INT(h.status, EG_NET_EBODY);
    n = nt_frame(f, EG_OP_APPEND, 11, NULL, 0);
    nt_write(fd, f, n);
    REQUIRE(nt_read_frame(fd, &h, NULL) == 0);
    CHECK_EQ_INT(h.status, EG_NET_EBODY);
    unsigned char body[64] = {0};
    body[0] = 1;                  /* handle 1 */
    body[8] = 4;                  /* 4 tokens */
    body[24] = 16;                /* keys 16 bytes, values 16 bytes: but 8 follow */
    body[32] = 16;
    n = nt_frame(f, EG_OP_APPEND, 12, body, 48);
    nt_write(fd, f, n);
    REQUIRE(nt_read_frame(fd, &h, NULL) == 0);
    CHECK_EQ_INT(h.status, EG_NET_EBODY);
    body[4] = 7;                  /* dtype 7 */
    n = nt_frame(f, EG_OP_APPEND, 13, body, 48);
    nt_write(fd, f, n);
    REQUIRE(nt_read_frame(fd, &h, NULL) == 0);
    CHECK_EQ_INT(h.status, EG_EDTYPE);
    memset(body, 0, sizeof body);
    body[0] = 77;                 /* INFO of handle 77 */
    n = nt_frame(f, EG_OP_INFO, 14, body, 8);
    nt_write(fd, f, n);
    unsigned char *msg = NULL;
    REQUIRE(nt_read_frame(fd, &h, &msg) == 0);
    CHECK_EQ_INT(h.status, EG_NET_EHANDLE);
    CHECK(h.body_len > 2 && msg && strstr((char *)msg + 2, "77"));
    free(msg);

    /* larger than the limit: refused before any allocation of that size,
     * its body swallowed, the stream still in sync */
    long rss0 = nt_rss_kb(s.pid);
    eg_frame_header big = {.version = 1, .opcode = EG_OP_APPEND, .request_id = 15, .body_len = 900u << 20};
    eg_frame_header_encode(&big, f);
    nt_write(fd, f, EG_NET_HEADER_BYTES);
    REQUIRE(nt_read_frame(fd, &h, NULL) == 0);
    CHECK_EQ_INT(h.status, EG_NET_ETOOBIG);
    CHECK_EQ_INT(h.request_id, 15);
    static unsigned char junk[1 << 20];
    for (int i = 0; i < 40; i++) nt_write(fd, junk, sizeof junk); /* 40 of the 900 MiB */
    long rss1 = nt_rss_kb(s.pid);
    CHECK(rss1 - rss0 < 16 * 1024);
    fprintf(stderr, "  server RSS %ld -> %ld KiB while a 900 MiB body is refused\n", rss0, rss1);
    CHECK(served(&s));
    close(fd); /* the rest of the body never comes: the server just drops us */

    /* truncated header, then the client goes away */
    fd = nt_raw(&s);
    nt_write(fd, f, 10);
    close(fd);
    /* a stream of junk: an error answer and a closed connection */
    fd = nt_raw(&s);
    uint64_t st = 99;
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)(tu_rand(&st) >> 17);
    nt_write(fd, junk, 65536);
    CHECK(nt_read_frame(fd, &h, NULL) == 0 && h.status == EG_NET_EMAGIC);
    CHECK(nt_closed_within(fd, 2000));
    close(fd);
    CHECK(served(&s));
    CHECK(nt_alive(&s));
    CHECK_EQ_INT(nt_stop(&s, SIGTERM), 0);
    tu_rmrf(dir);
}

static void test_byte_at_a_time_and_batches(void)
{
    char dir[512];
    tu_tmpdir(dir, sizeof dir, "net-bytes");
    nt_server s;
    REQUIRE(nt_start(&s, dir, NULL) == 0);
    int fd = nt_raw(&s);
    REQUIRE(fd >= 0);
    unsigned char f[8192];
    eg_request hello = {.op = EG_OP_HELLO, .min_version = 1, .max_version = 1};
    eg_buf b;
    eg_buf_init(&b);
    CHECK_NET(eg_wire_encode_request(&b, &hello, 41, NULL));
    for (size_t i = 0; i < b.len; i++) {
        nt_write(fd, b.data + i, 1);
        nt_sleep_ms(1);
    }
    eg_buf_free(&b);
    eg_frame_header h;
    unsigned char *body;
    REQUIRE(nt_read_frame(fd, &h, &body) == 0);
    CHECK_EQ_INT(h.status, 0);
    CHECK_EQ_INT(h.request_id, 41);
    CHECK_EQ_INT(h.opcode, EG_OP_HELLO);
    CHECK(h.body_len >= 8 && body[0] == 1);
    free(body);
    /* a hundred requests in one write: a hundred answers, in order, by id */
    size_t n = 0;
    for (int i = 0; i < 100; i++) n += nt_frame(f + n, EG_OP_PING, 1000 + (uint64_t)i * 3, NULL, 0);
    nt_write(fd, f, n);
    for (int i = 0; i < 100; i++) {
        REQUIRE(nt_read_frame(fd, &h, NULL) == 0);
        CHECK_EQ_INT(h.request_id, 1000 + (uint64_t)i * 3);
        CHECK_EQ_INT(h.status, 0);
        CHECK(h.flags & EG_NET_FLAG_ANSWER);
    }
    close(fd);
    /* requests then a half-close (as `printf ... | nc` does): all answered, then closed */
    fd = nt_raw(&s);
    REQUIRE(fd >= 0);
    n = 0;
    for (int i = 0; i < 5; i++) n += nt_frame(f + n, EG_OP_PING, 50 + (uint64_t)i, NULL, 0);
    nt_write(fd, f, n);
    shutdown(fd, SHUT_WR);
    for (int i = 0; i < 5; i++) {
        REQUIRE(nt_read_frame(fd, &h, NULL) == 0);
        CHECK_EQ_INT(h.request_id, 50 + (uint64_t)i);
    }
    CHECK(nt_closed_within(fd, 2000));
    close(fd);
    CHECK_EQ_INT(nt_stop(&s, SIGTERM), 0);
    tu_rmrf(dir);
}

/* A client that sends requests with large answers and never reads them:
 * the server stops running its requests past the output mark, so its
 * memory stays bounded, and other clients are served meanwhile. */
static void test_client_that_never_reads(void)
{
    char dir[512];
    tu_tmpdir(dir, sizeof dir, "net-slow");
    nt_server s;
    REQUIRE(nt_start(&s, dir, NULL) == 0);
    eg_client *c;
    REQUIRE(nt_client(&s, 0, NULL, &c) == 0);
    eg_session_config cfg;
    eg_session_config_init(&cfg);
    cfg.n_layers = 1; cfg.n_kv_heads = 1; cfg.n_q_heads = 1;
    cfg.head_dim_k = cfg.head_dim_v = 1024; cfg.seg_tokens = 256; cfg.codec = EG_CODEC_F32;
    CHECK_NET(eg_client_create(c, "big", &cfg));
    uint32_t hd;
    CHECK_NET(eg_client_open(c, "big", NULL, &hd));
    float *kv = calloc(256 * 1024, 4);
    for (size_t i = 0; i < 256 * 1024; i++) kv[i] = (float)(i % 13) * 0.5f;
    eg_append_req a = {EG_DTYPE_F32, 256, -1, kv, kv, NULL, 0};
    CHECK_NET(eg_client_append(c, hd, &cfg, &a, NULL));
    free(kv);
    /* each FETCH of the sealed segment answers 2 MiB; ask for 300 (600 MiB) */
    int fd = nt_raw(&s);
    REQUIRE(fd >= 0);
    int bufsz = 64 << 10;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof bufsz);
    unsigned char f[64 * 1024];
    size_t n = 0;
    eg_request op = {.op = EG_OP_OPEN};
    snprintf(op.name, sizeof op.name, "big");
    eg_buf b;
    eg_buf_init(&b);
    CHECK_NET(eg_wire_encode_request(&b, &op, 1, NULL));
    memcpy(f, b.data, b.len);
    n = b.len;
    eg_buf_free(&b);
    for (int i = 0; i < 300; i++) {
        eg_request fr = {.op = EG_OP_FETCH, .handle = 1, .layer = 0, .kv_head = 0, .segment = 0, .want = 3};
        eg_buf_init(&b);
        eg_wire_encode_request(&b, &fr, 2 + (uint64_t)i, NULL);
        memcpy(f + n, b.data, b.len);
        n += b.len;
        eg_buf_free(&b);
    }
    long rss0 = nt_rss_kb(s.pid);
    nt_write(fd, f, n);
    nt_sleep_ms(1500);
    long rss1 = nt_rss_kb(s.pid);
    fprintf(stderr, "  server RSS %ld -> %ld KiB with 600 MiB of answers unread\n", rss0, rss1);
    CHECK(rss1 - rss0 < 48 * 1024);
    double t0 = nt_now();
    CHECK_NET(eg_client_ping(c)); /* the other client is served at once */
    eg_session_info si;
    CHECK_NET(eg_client_info(c, hd, &si));
    CHECK_EQ_INT(si.n_tokens, 256);
    CHECK(nt_now() - t0 < 5);
    /* when the reader finally reads, every answer is there, in order */
    eg_frame_header h;
    REQUIRE(nt_read_frame(fd, &h, NULL) == 0);
    CHECK_EQ_INT(h.request_id, 1);
    int got = 0;
    for (int i = 0; i < 300; i++) {
        unsigned char *body;
        if (nt_read_frame(fd, &h, &body)) break;
        got += h.status == 0 && h.request_id == 2 + (uint64_t)i && h.body_len == 16 + 2 * 256 * 1024 * 4;
        free(body);
    }
    CHECK_EQ_INT(got, 300);
    close(fd);
    eg_client_close(c);
    CHECK_EQ_INT(nt_stop(&s, SIGTERM), 0);
    tu_rmrf(dir);
}

static void test_limits_timeout_auth(void)
{
    char dir[512];
    tu_tmpdir(dir, sizeof dir, "net-limits");
    char secret_path[600];
    snprintf(secret_path, sizeof secret_path, "%s/secret", dir);
    FILE *sf = fopen(secret_path, "w");
    REQUIRE(sf);
    fputs("correct horse battery\n", sf);
    fclose(sf);
    nt_server s;
    const char *extra[] = {"--max-connections", "3", "--idle-timeout", "1", "--secret-file", secret_path, NULL};
    REQUIRE(nt_start(&s, dir, extra) == 0);
    /* auth: refused without the secret or with a wrong one; accepted with it */
    eg_client *c[4] = {0};
    CHECK_NCODE(nt_client(&s, 0, NULL, &c[0]), EG_NET_EAUTH);
    CHECK_NCODE(nt_client(&s, 0, "wrong horse", &c[0]), EG_NET_EAUTH);
    int fd = nt_raw(&s);
    unsigned char f[64];
    size_t n = nt_frame(f, EG_OP_PING, 3, NULL, 0);
    nt_write(fd, f, n);
    eg_frame_header h;
    CHECK(nt_read_frame(fd, &h, NULL) == 0 && h.status == EG_NET_EAUTH);
    CHECK(nt_closed_within(fd, 2000));
    close(fd);
    /* the connection limit: the fourth gets a clear error */
    for (int i = 0; i < 3; i++) CHECK_NET(nt_client(&s, i % 2, "correct horse battery", &c[i]));
    eg_client *x = NULL;
    CHECK_NCODE(nt_client(&s, 0, "correct horse battery", &x), EG_NET_ELIMIT);
    CHECK(strstr(eg_net_last_error(), "limit") != NULL);
    eg_client_close(c[2]);
    c[2] = NULL;
    nt_sleep_ms(100);
    CHECK_NET(nt_client(&s, 1, "correct horse battery", &c[2]));
    CHECK_NET(eg_client_ping(c[2]));
    /* idle timeout: an idle connection is closed; the client reconnects */
    nt_sleep_ms(2500);
    CHECK_NCODE(eg_client_ping(c[0]), EG_NET_EDISCONNECT);
    CHECK_NET(eg_client_ping(c[0])); /* reconnected, with hello and secret */
    for (int i = 0; i < 3; i++) eg_client_close(c[i]);
    CHECK_EQ_INT(nt_stop(&s, SIGTERM), 0);

    /* beyond loopback needs a secret */
    const char *open_world[] = {"--listen", "0.0.0.0:0", NULL};
    nt_server t;
    CHECK(nt_start(&t, dir, open_world) != 0);
    CHECK(WIFEXITED(t.status) && WEXITSTATUS(t.status) == 1);
    const char *open_secret[] = {"--listen", "0.0.0.0:0", "--secret-file", secret_path, NULL};
    CHECK(nt_start(&t, dir, open_secret) == 0);
    CHECK_EQ_INT(nt_stop(&t, SIGTERM), 0);
    /* the engine's idle polling: -1 (off) and a value serve; out of range is a bad flag */
    const char *poll_off[] = {"--idle-poll-us", "-1", NULL}, *poll_200[] = {"--idle-poll-us", "200", NULL};
    const char *poll_bad[] = {"--idle-poll-us", "-5", NULL};
    for (int k = 0; k < 2; k++) {
        CHECK(nt_start(&t, dir, k ? poll_200 : poll_off) == 0);
        eg_client *pc = NULL;
        CHECK_NET(nt_client(&t, 0, NULL, &pc));
        if (pc) CHECK_NET(eg_client_ping(pc));
        eg_client_close(pc);
        CHECK_EQ_INT(nt_stop(&t, SIGTERM), 0);
    }
    CHECK(nt_start(&t, dir, poll_bad) != 0);
    CHECK(WIFEXITED(t.status) && WEXITSTATUS(t.status) == 2);
    /* a second server on the same data directory is refused */
    CHECK(nt_start(&t, dir, NULL) == 0);
    char dir2[512];
    tu_tmpdir(dir2, sizeof dir2, "net-second");
    char data[600], rf[600];
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(rf, sizeof rf, "%s/r2", dir2);
    pid_t p = fork();
    if (p == 0) {
        execl(nt_engramd, nt_engramd, "--data", data, "--listen", "127.0.0.1:0", "--quiet", "--ready-file", rf,
              (char *)NULL);
        _exit(127);
    }
    int st = 0;
    waitpid(p, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    CHECK_EQ_INT(nt_stop(&t, SIGTERM), 0);
    tu_rmrf(dir2);
    tu_rmrf(dir);
}

/* Out of descriptors: accept fails, and the loop must neither spin on the
 * still-readable listener nor stop serving; when descriptors free up,
 * accepting resumes. */
static void test_out_of_descriptors(void)
{
    char dir[512];
    tu_tmpdir(dir, sizeof dir, "net-fds");
    nt_server s;
    nt_nofile = 40;
    int started = nt_start(&s, dir, NULL);
    nt_nofile = 0;
    REQUIRE(started == 0);
    eg_client *c;
    REQUIRE(nt_client(&s, 0, NULL, &c) == 0);
    int fds[80], n = 0;
    for (int i = 0; i < 80; i++) {
        fds[n] = nt_raw(&s);
        if (fds[n] >= 0) n++;
    }
    nt_sleep_ms(300);
    double cpu0 = nt_cpu_s(s.pid);
    nt_sleep_ms(1500);
    double cpu1 = nt_cpu_s(s.pid);
    fprintf(stderr, "  %d connections pending past the descriptor limit: server used %.2f s CPU in 1.5 s\n", n,
            cpu1 - cpu0);
    CHECK(cpu1 - cpu0 < 0.5);
    CHECK_NET(eg_client_ping(c)); /* the connection it has is still served */
    for (int i = 0; i < n; i++) close(fds[i]);
    nt_sleep_ms(400);
    eg_client *d = NULL;
    CHECK_NET(nt_client(&s, 1, NULL, &d));
    if (d) CHECK_NET(eg_client_ping(d));
    eg_client_close(d);
    eg_client_close(c);
    CHECK_EQ_INT(nt_stop(&s, SIGTERM), 0);
    tu_rmrf(dir);
}

int main(int argc, char **argv)
{
    (void)argc;
    nt_init(argv[0]);
    TEST_RUN(test_malformed_frames);
    TEST_RUN(test_byte_at_a_time_and_batches);
    TEST_RUN(test_client_that_never_reads);
    TEST_RUN(test_limits_timeout_auth);
    TEST_RUN(test_out_of_descriptors);
    TEST_END();
}
