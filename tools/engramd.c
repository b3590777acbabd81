/* engramd: the Engram service. Flags map onto eg_server_options; the logic
 * is in net/. Exit codes: 0 stopped cleanly, 1 failed, 2 bad usage. */
#include "net.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
        "usage: engramd [options]\n"
        "Serve Engram sessions (the wire protocol of docs/protocol.md).\n\n"
        "  --data DIR            data directory (created if needed; default ./data)\n"
        "  --listen HOST:PORT    TCP address (default 127.0.0.1:7411; port 0 = any;\n"
        "                        'none' = no TCP). Beyond loopback needs --secret-file\n"
        "  --unix PATH           also listen on a Unix socket at PATH\n"
        "  --secret-file FILE    clients must send this secret in hello (first line)\n"
        "  --cache-mb N          RAM cache tier of decoded blocks for FETCH and router\n"
        "                        training (default 0; attention keeps its own window)\n"
        "  --window-mb N         active window per open session (default 256)\n"
        "  --window-f32          keep the window's segments decoded to f32 (4 bytes an\n"
        "                        element) instead of as stored (q8: 1.125), decoded when\n"
        "                        attended\n"
        "  --quest-f16           keep quest route tables as the stored f16 halves (twice\n"
        "                        the RAM) instead of int8 codes\n"
        "  --frame-mb N          largest frame body accepted (default 64; 1..1024)\n"
        "  --max-connections N   default 1024; more are refused with an error frame\n"
        "  --idle-timeout S      close connections idle this long (default 300)\n"
        "  --workers N           threads running requests (default 8)\n"
        "  --threads N           engine threads for heads (default: online cores)\n"
        "  --idle-poll-us N      idle engine threads check for work every N us for\n"
        "                        20 ms after their last task, so that a call need not\n"
        "                        wake them (default 100; -1: sleep at once, no polling)\n"
        "  --sync full|none      commit durability (default full: acknowledged = on disk)\n"
        "  --ready-file FILE     write the bound addresses there once listening\n"
        "  --quiet               no log lines\n"
        "  --help                this text\n\n"
        "SIGTERM or SIGINT: stop accepting, answer or fail what is in flight, commit,\n"
        "close the store.\n");
}

static int num(const char *flag, const char *v, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long n = v ? strtol(v, &end, 10) : 0;
    if (!v || errno || *end || n < lo || n > hi) {
        fprintf(stderr, "engramd: %s wants a number in %ld..%ld, got '%s'\n", flag, lo, hi, v ? v : "");
        return -1;
    }
    *out = n;
    return 0;
}

static int read_secret(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "engramd: secret file %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (!fgets(out, (int)cap, f)) out[0] = 0;
    fclose(f);
    out[strcspn(out, "\r\n")] = 0;
    if (strlen(out) < 8) {
        fprintf(stderr, "engramd: secret in %s is shorter than 8 bytes\n", path);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    eg_server_options o;
    eg_server_options_init(&o);
    static char secret[4096];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--quiet")) { o.quiet = 1; continue; }
        else if (!strcmp(a, "--window-f32")) { o.engine.window_f32 = 1; continue; }
        else if (!strcmp(a, "--quest-f16")) { o.engine.quest_f16 = 1; continue; }
        if (!v) { fprintf(stderr, "engramd: %s needs a value (see --help)\n", a); return 2; }
        i++;
        if (!strcmp(a, "--data")) o.data_dir = v;
        else if (!strcmp(a, "--listen")) o.tcp = strcmp(v, "none") ? v : "";
        else if (!strcmp(a, "--unix")) o.unix_path = v;
        else if (!strcmp(a, "--ready-file")) o.ready_file = v;
        else if (!strcmp(a, "--secret-file")) {
            if (read_secret(v, secret, sizeof secret)) return 2;
            o.secret = secret;
        } else if (!strcmp(a, "--sync")) {
            if (!strcmp(v, "full")) o.engine.store.sync_mode = EG_SYNC_FULL;
            else if (!strcmp(v, "none")) o.engine.store.sync_mode = EG_SYNC_NONE;
            else { fprintf(stderr, "engramd: --sync is full or none\n"); return 2; }
        } else if (!strcmp(a, "--cache-mb")) {
            if (num(a, v, 0, 1 << 20, &n)) return 2;
            o.engine.store.cache_bytes = (size_t)n << 20;
        } else if (!strcmp(a, "--window-mb")) {
            if (num(a, v, 1, 1 << 20, &n)) return 2;
            o.engine.window_bytes = (size_t)n << 20;
        } else if (!strcmp(a, "--frame-mb")) {
            if (num(a, v, 1, 1024, &n)) return 2;
            o.frame_max = (uint32_t)((uint64_t)n << 20 > EG_NET_FRAME_MAX ? EG_NET_FRAME_MAX : (uint64_t)n << 20);
        } else if (!strcmp(a, "--max-connections")) {
            if (num(a, v, 1, 1 << 20, &n)) return 2;
            o.max_connections = (int)n;
        } else if (!strcmp(a, "--idle-timeout")) {
            if (num(a, v, 1, 1 << 24, &n)) return 2;
            o.idle_timeout_s = (int)n;
        } else if (!strcmp(a, "--workers")) {
            if (num(a, v, 1, 256, &n)) return 2;
            o.n_workers = (int)n;
        } else if (!strcmp(a, "--threads")) {
            if (num(a, v, 1, EG_EN_THREADS_MAX, &n)) return 2;
            o.engine.n_threads = (int)n;
        } else if (!strcmp(a, "--idle-poll-us")) {
            if (num(a, v, -1, EG_EN_POLL_US_MAX, &n)) return 2;
            o.engine.idle_poll_us = n ? (int)n : -1;   /* 0 would mean the default: none asked for */
        } else {
            fprintf(stderr, "engramd: unknown option %s (see --help)\n", a);
            return 2;
        }
    }
    eg_server *srv;
    int rc = eg_server_create(&o, &srv);
    if (rc) {
        fprintf(stderr, "engramd: %s (%s)\n", eg_net_last_error(), eg_net_strerror(rc));
        return 1;
    }
    rc = eg_server_run(srv, 1);
    if (rc) fprintf(stderr, "engramd: %s\n", eg_net_last_error());
    eg_server_free(srv);
    return rc ? 1 : 0;
}
