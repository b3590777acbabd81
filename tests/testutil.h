/* testutil.h: the tiny test harness every test program uses.
 * A test program calls TEST_RUN(fn) for each case; CHECK* record a failure
 * with file:line and keep going; the program ends with TEST_END(), which
 * prints "N passed, N failed" (cases) and exits non-zero on failure. */
#ifndef ENGRAM_TESTUTIL_H
#define ENGRAM_TESTUTIL_H
#include <stdint.h>
#include <stdio.h>
#include <stddef.h>
#include "index.h"

extern int tu_case_failed;
extern int tu_passed, tu_failed;

#define CHECK(cond) do { if (!(cond)) { \
    fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    tu_case_failed = 1; } } while (0)
#define CHECK_EQ_INT(a, b) do { long long _a = (long long)(a), _b = (long long)(b); \
    if (_a != _b) { fprintf(stderr, "  %s:%d: %s == %lld, expected %s == %lld\n", \
    __FILE__, __LINE__, #a, _a, #b, _b); tu_case_failed = 1; } } while (0)
/* Check an Engram call returned 0; prints the code and message otherwise. */
#define CHECK_OK(expr) do { int _rc = (expr); if (_rc < 0) { \
    fprintf(stderr, "  %s:%d: %s returned %d (%s)\n", __FILE__, __LINE__, #expr, _rc, \
    tu_error_msg(_rc)); tu_case_failed = 1; } } while (0)
#define REQUIRE(cond) do { if (!(cond)) { \
    fprintf(stderr, "  %s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__, #cond); \
    tu_case_failed = 1; return; } } while (0)

#define TEST_RUN(fn) tu_run(#fn, fn)
#define TEST_END() return tu_end()

void tu_run(const char *name, void (*fn)(void));
int tu_end(void);
const char *tu_last_error(void);
/* The message of the module that owns code rc (memory -1..-99, index -100..-199). */
const char *tu_error_msg(int rc);

/* A fresh empty directory under $TMPDIR (or /tmp); path returned in buf. */
void tu_tmpdir(char *buf, size_t cap, const char *tag);
/* rm -rf path. */
void tu_rmrf(const char *path);
/* Deterministic random numbers (xorshift64*), per-stream state. */
uint64_t tu_rand(uint64_t *state);
float tu_randf(uint64_t *state);      /* uniform in [-1, 1) */
float tu_randn(uint64_t *state);      /* standard normal */
/* 1 when running under make asan (tests may shrink sizes). */
int tu_slow(void);
/* Directory of ../shared/data if present (NULL otherwise). */
const char *tu_shared_data(void);
/* out[w] = eg_router_score_all of t for rows on kernel set w: 0 portable,
 * 1 AVX2, 2 the best here (calloc'd, rows->n_rows * segments floats each,
 * zero where an error stopped the scoring; the caller frees all three, NULL
 * where out of memory); the best set is chosen again after. Returns 0, or
 * the first error. */
int tu_scores_every_kernel(const eg_route_table *t, const eg_route_rows *rows, size_t segments, float *out[3]);
#endif
