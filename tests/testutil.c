/* testutil.c: see testutil.h. */
#include "testutil.h"
#include "memory.h"
#include "index.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

int tu_case_failed, tu_passed, tu_failed;

void tu_run(const char *name, void (*fn)(void))
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    tu_case_failed = 0;
    fn();
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ms = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
    if (tu_case_failed) { tu_failed++; printf("FAIL %s (%.0f ms)\n", name, ms); }
    else { tu_passed++; printf("ok   %s (%.0f ms)\n", name, ms); }
    fflush(stdout);
}

int tu_end(void)
{
    printf("%d passed, %d failed\n", tu_passed, tu_failed);
    return tu_failed ? 1 : 0;
}

const char *tu_last_error(void) { return eg_mem_last_error(); }
const char *tu_error_msg(int rc)
{
    return rc <= -100 && rc > -200 ? eg_index_last_error() : eg_mem_last_error();
}

void tu_tmpdir(char *buf, size_t cap, const char *tag)
{
    const char *t = getenv("TMPDIR");
    static unsigned seq;
    snprintf(buf, cap, "%s/eg-%s-%d-%u", t && *t ? t : "/tmp", tag, (int)getpid(), seq++);
    tu_rmrf(buf);
    mkdir(buf, 0700);
}

void tu_rmrf(const char *path)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0) fprintf(stderr, "  rm -rf %s failed\n", path);
}

uint64_t tu_rand(uint64_t *s)
{
    uint64_t x = *s ? *s : 0x9E3779B97F4A7C15ull;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

float tu_randf(uint64_t *s) { return (float)((tu_rand(s) >> 40) * (2.0 / 16777216.0) - 1.0); }

float tu_randn(uint64_t *s)
{
    double u1 = ((tu_rand(s) >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (tu_rand(s) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

int tu_slow(void)
{
    const char *e = getenv("EG_TEST_SCALE");
    return e && strcmp(e, "asan") == 0;
}

const char *tu_shared_data(void)
{
    static const char *cands[] = {"../shared/data", "../../shared/data", "/work/shared/data"};
    const char *e = getenv("EG_SHARED_DATA");
    struct stat st;
    if (e && stat(e, &st) == 0) return e;
    for (size_t i = 0; i < sizeof cands / sizeof *cands; i++)
        if (stat(cands[i], &st) == 0 && S_ISDIR(st.st_mode)) return cands[i];
    return NULL;
}

int tu_scores_every_kernel(const eg_route_table *t, const eg_route_rows *rows, size_t segments, float *out[3])
{
    int rc = 0;
    for (int w = 0; w < 3; w++) {
        out[w] = calloc((size_t)rows->n_rows * (segments ? segments : 1), sizeof(float));
        if (!out[w]) rc = -1;
    }
    for (int w = 0; w < 3 && !rc; w++) {
        eg_index_kernels(w == 0 ? 1 : w == 1 ? 2 : 0);   /* portable, AVX2, best */
        rc = eg_router_score_all(t, rows, out[w]);
    }
    eg_index_kernels(0);
    return rc;
}
