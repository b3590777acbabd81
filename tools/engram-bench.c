/* engram-bench: Engram's benchmarks. Every figure is printed with the
 * baseline measured in the same run and their ratio. */
#include "bench/bench.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const struct { const char *name; int (*fn)(const bench_opts *); const char *later; } suites[] = {
    {"ingest", bench_suite_ingest, NULL},
    {"read", bench_suite_read, NULL},
    {"codec", bench_suite_codec, NULL},
    {"recall", bench_suite_recall, NULL},
    {"attend", bench_suite_attend, NULL},
    {"resume", bench_suite_resume, NULL},
    {"net", bench_suite_net, NULL},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: engram-bench SUITE [--quick] [--json] [--dir PATH]\n"
               "  SUITE: ingest, read, codec, recall, attend, resume, net, or all\n"
               "  --quick  smaller sizes (about a minute for all)\n"
               "  --json   one JSON object per figure per line\n"
               "  --dir    scratch directory (default: a new one under /tmp, removed after)\n"
               "  attend only, to measure one configuration:\n"
               "  --shape Q/KV/DIM   32/8/128 or 9/3/64\n"
               "  --codec q8|q4\n"
               "  --tokens N         one session size, decode figures only\n");
}

int main(int argc, char **argv)
{
    bench_opts o = {0, 0, NULL, NULL, NULL, 0};
    const char *suite = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { usage(stdout); return 0; }
        else if (!strcmp(argv[i], "--quick")) o.quick = 1;
        else if (!strcmp(argv[i], "--json")) o.json = 1;
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc) o.dir = argv[++i];
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc) o.shape = argv[++i];
        else if (!strcmp(argv[i], "--codec") && i + 1 < argc) o.codec = argv[++i];
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) {
            char *end;
            unsigned long long t = strtoull(argv[++i], &end, 10);
            if (*end || t < 64 || t > (1ull << 32)) {
                fprintf(stderr, "engram-bench: --tokens wants 64..2^32, not '%s'\n", argv[i]);
                return 2;
            }
            o.tokens = t;
        }
        else if (argv[i][0] != '-' && !suite) suite = argv[i];
        else { fprintf(stderr, "engram-bench: unknown argument '%s'\n", argv[i]); usage(stderr); return 2; }
    }
    if (!suite) { usage(stderr); return 2; }
    if (o.shape && strcmp(o.shape, "32/8/128") && strcmp(o.shape, "9/3/64")) {
        fprintf(stderr, "engram-bench: --shape is 32/8/128 or 9/3/64, not '%s'\n", o.shape);
        return 2;
    }
    if (o.codec && strcmp(o.codec, "q8") && strcmp(o.codec, "q4")) {
        fprintf(stderr, "engram-bench: --codec is q8 or q4, not '%s'\n", o.codec);
        return 2;
    }
    int all = !strcmp(suite, "all"), found = all, rc = 0;
    char tmp[] = "/tmp/engram-bench-XXXXXX";
    if (!o.dir) {
        if (!mkdtemp(tmp)) { perror("engram-bench: mkdtemp"); return 1; }
        o.dir = tmp;
    }
    for (size_t i = 0; i < sizeof suites / sizeof *suites; i++) {
        if (!all && strcmp(suite, suites[i].name)) continue;
        found = 1;
        if (!suites[i].fn) {
            fprintf(stderr, "suite %s: not built yet (%s)\n", suites[i].name, suites[i].later);
            continue;
        }
        if (suites[i].fn(&o)) rc = 1;
    }
    if (o.dir == tmp) rmdir(tmp);
    if (!found) { fprintf(stderr, "engram-bench: unknown suite '%s'\n", suite); usage(stderr); return 2; }
    return rc;
}
