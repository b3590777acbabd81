/* test_cli: the engram command against a real engramd: every command, its
 * output, and the exit codes scripts rely on (0 done, 1 refused, 2 usage,
 * 3 cannot connect, 4 problems found). */
#include "netutil.h"
#include <stdarg.h>

static char engram_bin[1100], bench_bin[1100 + 8], out_path[600];

/* Run argv[0] with argv; stdout+stderr to out_path. Returns the exit code. */
static int run_argv(const char **argv)
{
    pid_t p = fork();
    if (p == 0) {
        FILE *f = fopen(out_path, "w");
        if (f) { dup2(fileno(f), 1); dup2(fileno(f), 2); }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int st = 0;
    waitpid(p, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* Run engram with args (NULL-terminated). */
static int run(const char *addr, ...)
{
    const char *argv[32] = {engram_bin};
    int n = 1;
    if (addr) { argv[n++] = "--addr"; argv[n++] = addr; }
    va_list ap;
    va_start(ap, addr);
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 31) argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    return run_argv(argv);
}

static int output_has(const char *s)
{
    FILE *f = fopen(out_path, "r");
    if (!f) return 0;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    int ok = strstr(buf, s) != NULL;
    if (!ok) fprintf(stderr, "  output lacks '%s':\n%s", s, buf);
    return ok;
}

/* A float32 .npy of shape [a][b][c]. */
static void write_npy(const char *path, int a, int b, int c, uint64_t seed)
{
    FILE *f = fopen(path, "wb");
    char hdr[128];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d, %d), }", a, b, c);
    int total = 10 + n + 1;
    int pad = (64 - total % 64) % 64;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
    uint16_t hl = (uint16_t)(n + pad + 1);
    pre[8] = (unsigned char)(hl & 0xff);
    pre[9] = (unsigned char)(hl >> 8);
    fwrite(pre, 1, 10, f);
    fwrite(hdr, 1, (size_t)n, f);
    for (int i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    for (long i = 0; i < (long)a * b * c; i++) {
        float x = tu_randn(&seed);
        fwrite(&x, 4, 1, f);
    }
    fclose(f);
}

static void test_cli_commands_and_exit_codes(void)
{
    char dir[512];
    tu_tmpdir(dir, sizeof dir, "net-cli");
    snprintf(out_path, sizeof out_path, "%s/out", dir);
    nt_server s;
    REQUIRE(nt_start(&s, dir, NULL) == 0);
    const char *A = s.unix_path;
    CHECK_EQ_INT(run(NULL, "--help", NULL), 0);
    CHECK(output_has("exit codes"));
    const char *cmds[] = {"list", "info", "create", "drop", "fork", "truncate", "load", "stats", "verify", "ping"};
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) {
        CHECK_EQ_INT(run(A, cmds[i], "--help", NULL), 0);
        CHECK(output_has("usage: engram"));
    }
    CHECK_EQ_INT(run(A, "ping", NULL), 0);
    CHECK_EQ_INT(run(A, "frobnicate", NULL), 2);
    CHECK_EQ_INT(run(A, "info", NULL), 2);
    CHECK_EQ_INT(run(A, "create", "x", "--layers", "2", NULL), 2);
    CHECK(output_has("required"));
    CHECK_EQ_INT(run(A, "create", "x", "--layers", "2", "--kv-heads", "2", "--head-dim", "32", "--codec", "q5", NULL), 2);
    CHECK_EQ_INT(run(A, "truncate", "x", "minus", NULL), 2);
    CHECK_EQ_INT(run("127.0.0.1:1", "ping", NULL), 3);
    CHECK(output_has("is engramd running"));
    CHECK_EQ_INT(run(A, "list", NULL), 0);
    CHECK(output_has("no sessions"));
    CHECK_EQ_INT(run(A, "create", "x", "--layers", "2", "--kv-heads", "2", "--q-heads", "4", "--head-dim", "32",
                     "--seg", "16", "--codec", "f16", "--rope", "half", "--fingerprint", "m1", NULL), 0);
    CHECK_EQ_INT(run(A, "create", "x", "--layers", "2", "--kv-heads", "2", "--head-dim", "32", NULL), 1);
    CHECK(output_has("exists"));
    CHECK_EQ_INT(run(A, "create", "y", "--layers", "2", "--kv-heads", "2", "--q-heads", "3", "--head-dim", "32", NULL), 1);
    CHECK_EQ_INT(run(A, "info", "x", NULL), 0);
    CHECK(output_has("rope          half") && output_has("fingerprint   m1"));
    CHECK_EQ_INT(run(A, "info", "nope", NULL), 1);
    CHECK_EQ_INT(run(A, "drop", "nope", NULL), 1);

    /* load: 2 layers of [2 kv][300 tokens][32] from .npy files, created from their shape */
    char npy[700];
    char ld[600];
    snprintf(ld, sizeof ld, "%s/cap", dir);
    mkdir(ld, 0755);
    for (int l = 0; l < 2; l++) {
        snprintf(npy, sizeof npy, "%s/L%d_k.npy", ld, l);
        write_npy(npy, 2, 300, 32, 10 + (uint64_t)l);
        snprintf(npy, sizeof npy, "%s/L%d_v.npy", ld, l);
        write_npy(npy, 2, 300, 16, 20 + (uint64_t)l);
    }
    CHECK_EQ_INT(run(A, "load", "cap", ld, NULL), 1); /* missing without --create */
    CHECK(output_has("--create"));
    CHECK_EQ_INT(run(A, "load", "cap", ld, "--create", "--q-heads", "4", "--seg", "32", "--chunk", "64", "--limit", "200", NULL), 0);
    CHECK(output_has("200/200 tokens"));
    CHECK_EQ_INT(run(A, "load", "cap", ld, "--chunk", "64", NULL), 0); /* resumes at 200 */
    CHECK(output_has("resuming") && output_has("300/300 tokens"));
    CHECK_EQ_INT(run(A, "load", "x", ld, NULL), 2); /* shape mismatch: dims 16 vs 32 */
    CHECK_EQ_INT(run(A, "load", "cap", "/nonexistent", NULL), 2);
    CHECK_EQ_INT(run(A, "fork", "cap", "cap2", "--at", "100", NULL), 0);
    CHECK_EQ_INT(run(A, "fork", "cap", "cap3", NULL), 0);
    CHECK(output_has("at 300 tokens"));
    CHECK_EQ_INT(run(A, "truncate", "cap2", "50", NULL), 0);
    CHECK_EQ_INT(run(A, "truncate", "cap2", "60", NULL), 1);
    CHECK_EQ_INT(run(A, "list", NULL), 0);
    CHECK(output_has("cap2") && output_has("cap3") && output_has("f16"));
    CHECK_EQ_INT(run(A, "verify", NULL), 0);
    CHECK(output_has("0 problems"));
    CHECK_EQ_INT(run(A, "verify", "cap", NULL), 0);
    CHECK_EQ_INT(run(A, "stats", NULL), 0);
    CHECK(output_has("requests"));
    CHECK_EQ_INT(run(A, "drop", "cap3", NULL), 0);
    CHECK_EQ_INT(run(A, "info", "cap3", NULL), 1);
    CHECK_EQ_INT(nt_stop(&s, SIGTERM), 0);

    /* a damaged block: verify names it and exits 4 */
    char data[600];
    snprintf(data, sizeof data, "%s/data", dir);
    eg_store *st;
    REQUIRE(eg_store_open(data, NULL, &st) == 0);
    eg_store_close(st);
    /* flip bytes in the middle of the LMDB file, where blocks live */
    char mdb[700];
    snprintf(mdb, sizeof mdb, "%s/data.mdb", data);
    FILE *f = fopen(mdb, "r+b");
    REQUIRE(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    int flipped = 0;
    unsigned char page[4096];
    for (long off = 4 * 4096; off + 4096 <= size && flipped < 40; off += 4096) {
        fseek(f, off, SEEK_SET);
        if (fread(page, 1, sizeof page, f) != sizeof page) break;
        /* a page of block bytes: overwrite a run in its second half */
        for (int i = 3000; i < 3064; i++) page[i] ^= 0x5a;
        fseek(f, off, SEEK_SET);
        fwrite(page, 1, sizeof page, f);
        flipped++;
    }
    fclose(f);
    REQUIRE(nt_start(&s, dir, NULL) == 0);
    int rc = run(A, "verify", NULL);
    fprintf(stderr, "  verify of the damaged store exited %d\n", rc);
    CHECK_EQ_INT(rc, 4);
    CHECK(output_has("problem:"));
    CHECK(nt_alive(&s));
    nt_stop(&s, SIGTERM);
    tu_rmrf(dir);
}

/* engram-bench refuses what it cannot measure before doing any work. */
static void test_bench_usage(void)
{
    const char *shape[] = {bench_bin, "attend", "--shape", "1/2/3", NULL};
    const char *codec[] = {bench_bin, "attend", "--codec", "f32", NULL};
    const char *tokens[] = {bench_bin, "attend", "--tokens", "12x", NULL};
    const char *suite[] = {bench_bin, "nosuch", NULL};
    const char *help[] = {bench_bin, "--help", NULL};
    char dir[512];
    tu_tmpdir(dir, sizeof dir, "bench-cli");
    snprintf(out_path, sizeof out_path, "%s/out", dir);
    CHECK_EQ_INT(run_argv(shape), 2);
    CHECK(output_has("--shape is 32/8/128 or 9/3/64"));
    CHECK_EQ_INT(run_argv(codec), 2);
    CHECK(output_has("--codec is q8 or q4"));
    CHECK_EQ_INT(run_argv(tokens), 2);
    CHECK(output_has("--tokens wants"));
    CHECK_EQ_INT(run_argv(suite), 2);
    CHECK(output_has("unknown suite"));
    CHECK_EQ_INT(run_argv(help), 0);
    CHECK(output_has("--tokens N"));
    tu_rmrf(dir);
}

int main(int argc, char **argv)
{
    (void)argc;
    nt_init(argv[0]);
    snprintf(engram_bin, sizeof engram_bin, "%s", nt_engramd);
    engram_bin[strlen(engram_bin) - 1] = 0; /* ".../engramd" -> ".../engram" */
    snprintf(bench_bin, sizeof bench_bin, "%s-bench", engram_bin);
    TEST_RUN(test_cli_commands_and_exit_codes);
    TEST_RUN(test_bench_usage);
    TEST_END();
}
