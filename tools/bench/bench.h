/* bench.h: what the suites of engram-bench share (internal to tools/). */
#ifndef ENGRAM_BENCH_H
#define ENGRAM_BENCH_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int quick, json;
    const char *dir;      /* scratch directory for stores and files */
} bench_opts;

/* Seconds since an arbitrary start (CLOCK_MONOTONIC). */
double bench_now(void);
/* Print one figure: a table row, or with --json one object per line.
 * params: a JSON object body without braces, e.g. "\"codec\":\"q8\"". */
void bench_figure(const bench_opts *o, const char *suite, const char *figure, double value,
                  const char *unit, double baseline, const char *params);
/* Baselines measured in the same run. */
double bench_disk_write_mbps(const bench_opts *o, size_t bytes);  /* write + fsync */
double bench_mem_gbps(void);                                      /* memcpy, best of runs */
/* Deterministic random normal floats. */
void bench_randn(float *x, size_t n, uint64_t seed);

int bench_suite_ingest(const bench_opts *o);
int bench_suite_read(const bench_opts *o);
int bench_suite_codec(const bench_opts *o);
int bench_suite_recall(const bench_opts *o);
int bench_suite_attend(const bench_opts *o);   /* bench_engine.c */
int bench_suite_resume(const bench_opts *o);
#endif
