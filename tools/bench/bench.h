/* bench.h: what the suites of engram-bench share (internal to tools/). */
#ifndef ENGRAM_BENCH_H
#define ENGRAM_BENCH_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int quick, json;
    const char *dir;      /* scratch directory for stores and files */
    const char *shape;    /* attend: only this shape ("32/8/128"), or NULL */
    const char *codec;    /* attend: only this codec ("q8"), or NULL */
    uint64_t tokens;      /* attend: only this session size (decode figures only), or 0 */
} bench_opts;

/* Seconds since an arbitrary start (CLOCK_MONOTONIC). */
double bench_now(void);
/* Print one figure: a table row, or with --json one object per line.
 * params: a JSON object body without braces, e.g. "\"codec\":\"q8\"". */
void bench_figure(const bench_opts *o, const char *suite, const char *figure, double value,
                  const char *unit, double baseline, const char *params);
/* Baselines measured in the same run. */
double bench_disk_write_mbps(const bench_opts *o, size_t bytes);  /* write + fsync */
double bench_mem_gbps(void);
/* GB/s (read plus write) of one memcpy of n bytes from src to dst: a probe
 * taken beside each timed call, so that a figure and its baseline see the
 * same machine load. */
double bench_mem_once(char *dst, const char *src, size_t n);                                      /* memcpy, best of runs */
/* Deterministic random normal floats. */
void bench_randn(float *x, size_t n, uint64_t seed);

int bench_suite_ingest(const bench_opts *o);
int bench_suite_read(const bench_opts *o);
int bench_suite_codec(const bench_opts *o);
int bench_suite_recall(const bench_opts *o);
int bench_suite_attend(const bench_opts *o);   /* bench_engine.c */
int bench_suite_resume(const bench_opts *o);
int bench_suite_net(const bench_opts *o);      /* bench_net.c */

/* bench_engine.c's data, for other suites: a one-layer session of the
 * given shape filled with `tokens` topic tokens; tokens and queries of the
 * same kind. */
struct eg_engine;
struct eg_engine_session;
int bench_session_fill(struct eg_engine *e, const char *name, uint32_t qh, uint32_t h, uint32_t d, int codec,
                       uint64_t tokens, struct eg_engine_session **out);
void bench_tokens(uint32_t h, uint32_t d, uint64_t t0, uint32_t n, float *k, float *v);
void bench_queries(uint32_t qh, uint32_t d, float *q, uint32_t nq, uint64_t seed);
#endif
