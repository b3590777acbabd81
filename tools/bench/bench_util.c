/* bench_util.c: timing, output and the baselines every ratio is taken against. */
#include "bench.h"
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double bench_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

void bench_figure(const bench_opts *o, const char *suite, const char *figure, double value,
                  const char *unit, double baseline, const char *params)
{
    /* A figure that is itself a ratio (unit "ratio") carries its baseline in
     * seconds for reference; dividing again would mean nothing. */
    double ratio = !strcmp(unit, "ratio") ? value : baseline > 0 ? value / baseline : 0;
    if (o->json)
        printf("{\"suite\":\"%s\",\"figure\":\"%s\",\"value\":%.6g,\"unit\":\"%s\",\"baseline\":%.6g,"
               "\"ratio\":%.4g,\"params\":{%s}}\n", suite, figure, value, unit, baseline, ratio, params);
    else
        printf("%-7s %-22s %12.4g %-10s baseline %10.4g  ratio %7.3f  %s\n", suite, figure, value, unit,
               baseline, ratio, params);
    fflush(stdout);
}

double bench_disk_write_mbps(const bench_opts *o, size_t bytes)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/seqwrite.bin", o->dir);
    size_t chunk = 1 << 20;
    char *buf = malloc(chunk);
    memset(buf, 0x5a, chunk);
    double best = 0;
    for (int rep = 0; rep < 2; rep++) {
        int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
        if (fd < 0) break;
        double t0 = bench_now();
        for (size_t done = 0; done < bytes; done += chunk)
            if (write(fd, buf, chunk) != (ssize_t)chunk) break;
        fsync(fd);
        double t = bench_now() - t0;
        close(fd);
        double mbps = bytes / t / 1e6;
        if (mbps > best) best = mbps;
    }
    unlink(path);
    free(buf);
    return best;
}

double bench_mem_gbps(void)
{
    size_t n = 256u << 20;
    char *a = malloc(n), *b = malloc(n);
    memset(a, 1, n);
    memset(b, 2, n);
    double best = 0;
    for (int rep = 0; rep < 4; rep++) {
        double t0 = bench_now();
        memcpy(b, a, n);
        double t = bench_now() - t0;
        /* memcpy reads and writes n bytes each. */
        double g = 2.0 * n / t / 1e9;
        if (g > best) best = g;
        a[rep] = b[n - 1 - rep];
    }
    free(a);
    free(b);
    return best;
}

double bench_mem_once(char *dst, const char *src, size_t n)
{
    double t0 = bench_now();
    memcpy(dst, src, n);
    double t = bench_now() - t0;
    return 2.0 * (double)n / t / 1e9;
}

void bench_randn(float *x, size_t n, uint64_t seed)
{
    uint64_t s = seed | 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
        uint64_t r = s * 0x2545F4914F6CDD1Dull;
        /* Sum of uniforms: close enough to normal for throughput figures. */
        double u = ((r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48)) / 65536.0 - 2.0;
        x[i] = (float)(u * 1.7320508);
    }
}
