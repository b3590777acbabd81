/* bench_codec.c: suite `codec`: bytes per element, the error each codec
 * costs, and encode/decode speed against memory bandwidth. */
#include "bench.h"
#include "memory.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

int bench_suite_codec(const bench_opts *o)
{
    double mem = bench_mem_gbps();
    uint32_t dims[] = {64, 128}, S = 64;
    int reps = o->quick ? 200 : 2000;
    for (int di = 0; di < 2; di++)
        for (int codec = EG_CODEC_F16; codec < EG_CODEC_COUNT; codec++)
            for (int kind = 0; kind < 2; kind++) {
                uint32_t d = dims[di];
                size_t e = (size_t)S * d, sz;
                float *x = malloc(e * 4), *y = malloc(e * 4);
                bench_randn(x, e, 11 + d);
                for (uint32_t t = 0; t < S; t++) x[t * d + 5] *= 20;   /* an outlier channel */
                eg_codec_size(codec, kind, S, d, &sz);
                unsigned char *buf = malloc(sz);
                if (eg_codec_encode(codec, kind, x, S, d, buf, sz) ||
                    eg_codec_decode(codec, kind, buf, sz, S, d, y)) {
                    fprintf(stderr, "bench: codec: %s\n", eg_mem_last_error());
                    return 1;
                }
                double num = 0, den = 0;
                for (size_t i = 0; i < e; i++) { num += (x[i] - y[i]) * (x[i] - y[i]); den += x[i] * x[i]; }
                double t0 = bench_now();
                for (int r = 0; r < reps; r++) eg_codec_encode(codec, kind, x, S, d, buf, sz);
                double te = bench_now() - t0;
                t0 = bench_now();
                for (int r = 0; r < reps; r++) eg_codec_decode(codec, kind, buf, sz, S, d, y);
                double td = bench_now() - t0;
                char params[160];
                snprintf(params, sizeof params, "\"codec\":\"%s\",\"kind\":\"%s\",\"dim\":%u,\"seg_tokens\":%u",
                         eg_codec_name(codec), kind ? "v" : "k", d, S);
                bench_figure(o, "codec", "bytes_per_element", (double)sz / e, "bytes", 4, params);
                bench_figure(o, "codec", "codec_rel_error", sqrt(num / den), "rel_l2", 0, params);
                bench_figure(o, "codec", "encode_vs_mem", e * 4.0 * reps / te / 1e9, "GB/s", mem, params);
                bench_figure(o, "codec", "decode_vs_mem", e * 4.0 * reps / td / 1e9, "GB/s", mem, params);
                free(x); free(y); free(buf);
            }
    return 0;
}
