/* engram: the command-line client of engramd. Exit codes scripts can rely
 * on: 0 done, 1 the server refused the operation, 2 bad usage, 3 cannot
 * connect (or the connection was lost), 4 verify found problems. */
#include "net.h"
#include "workload.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { EX_OK = 0, EX_FAIL = 1, EX_USAGE = 2, EX_CONNECT = 3, EX_PROBLEMS = 4 };

static const char *const usage_text =
    "usage: engram [--addr ADDR] [--secret-file FILE] COMMAND [ARGS]\n"
    "Talk to engramd. ADDR is HOST:PORT, unix:PATH or a socket path; default\n"
    "$ENGRAM_ADDR, else ./data/engramd.sock when it exists, else 127.0.0.1:7411.\n\n"
    "commands (engram COMMAND --help for each):\n"
    "  list                   sessions: tokens, segments, shape, codec\n"
    "  info NAME              one session in full\n"
    "  create NAME ...        a new session of a given shape\n"
    "  drop NAME              delete a session and reclaim its space\n"
    "  fork PARENT CHILD      share PARENT's blocks up to --at N tokens\n"
    "  truncate NAME N        cut a session back to N tokens\n"
    "  load NAME DIR          append keys and values from .npy files, with progress\n"
    "  stats                  store and server counters\n"
    "  verify [NAME]          check every block's checksum and the catalog\n"
    "  ping                   is the server there\n\n"
    "exit codes: 0 done, 1 refused by the server, 2 bad usage, 3 cannot connect,\n"
    "4 verify found problems.\n";

static const char *const help_create =
    "usage: engram create NAME --layers L --kv-heads H --head-dim D [options]\n"
    "  --q-heads Q        query heads (a multiple of H; default H)\n"
    "  --head-dim-v DV    value dim (default D)\n"
    "  --seg S            tokens per segment, power of two 16..256 (default 64)\n"
    "  --codec C          f32, f16, q8 (default) or q4\n"
    "  --rope MODE        none (keys stored after RoPE, default), half or interleaved\n"
    "  --rope-theta T     default 10000;  --rope-dims N  rotary dims (default all)\n"
    "  --fingerprint TXT  model identity checked on open\n";
static const char *const help_load =
    "usage: engram load NAME DIR [options]\n"
    "DIR holds L{l}_k.npy and L{l}_v.npy for l = 0.. (shape [kv_heads, T, dim],\n"
    "float16 or float32), the capture format of ../shared/data. Appends tokens in\n"
    "chunks, all layers at once; a session that already holds n tokens resumes at n.\n"
    "  --prerope          read L{l}_k_prerope.npy (the session must apply RoPE)\n"
    "  --chunk N          tokens per append (default 256)\n"
    "  --tag T            document tag of the tokens (default 0)\n"
    "  --limit N          load at most N tokens\n"
    "  --create           create the session when missing, shaped by the files;\n"
    "                     --q-heads, --seg, --codec, --rope, --rope-theta as for create\n";

static int fail(eg_client *c, int rc, const char *what)
{
    fprintf(stderr, "engram: %s: %s (%s)\n", what, c ? eg_client_error(c) : eg_net_last_error(), eg_net_strerror(rc));
    if (rc == EG_NET_ECONNECT || rc == EG_NET_EDISCONNECT || rc == EG_NET_ETIMEOUT) return EX_CONNECT;
    return EX_FAIL;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!s || !*s || *s == '-') return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

/* Options shared by create and load --create. Returns 1 when used, 0 when
 * not this option, -1 on a bad value. */
static int shape_option(const char *a, const char *v, eg_session_config *cfg)
{
    uint64_t n = 0;
    int num = !strcmp(a, "--layers") || !strcmp(a, "--kv-heads") || !strcmp(a, "--q-heads") ||
              !strcmp(a, "--head-dim") || !strcmp(a, "--head-dim-v") || !strcmp(a, "--seg") ||
              !strcmp(a, "--rope-dims");
    if (num && (parse_u64(v, &n) || n > 1u << 20)) return -1;
    if (!strcmp(a, "--layers")) cfg->n_layers = (uint32_t)n;
    else if (!strcmp(a, "--kv-heads")) cfg->n_kv_heads = (uint32_t)n;
    else if (!strcmp(a, "--q-heads")) cfg->n_q_heads = (uint32_t)n;
    else if (!strcmp(a, "--head-dim")) cfg->head_dim_k = (uint32_t)n;
    else if (!strcmp(a, "--head-dim-v")) cfg->head_dim_v = (uint32_t)n;
    else if (!strcmp(a, "--seg")) cfg->seg_tokens = (uint32_t)n;
    else if (!strcmp(a, "--rope-dims")) cfg->rope_dims = (uint32_t)n;
    else if (!strcmp(a, "--codec")) {
        int c = eg_codec_parse(v);
        if (c < 0) return -1;
        cfg->codec = c;
    } else if (!strcmp(a, "--rope")) {
        if (!strcmp(v, "none")) cfg->rope_mode = EG_ROPE_NONE;
        else if (!strcmp(v, "half")) cfg->rope_mode = EG_ROPE_HALF;
        else if (!strcmp(v, "interleaved")) cfg->rope_mode = EG_ROPE_INTERLEAVED;
        else return -1;
    } else if (!strcmp(a, "--rope-theta")) {
        char *end;
        cfg->rope_theta = strtof(v, &end);
        if (*end || !(cfg->rope_theta > 0)) return -1;
    } else if (!strcmp(a, "--fingerprint")) {
        if (strlen(v) > EG_FINGERPRINT_MAX) return -1;
        snprintf(cfg->fingerprint, sizeof cfg->fingerprint, "%s", v);
    } else return 0;
    return 1;
}

static const char *rope_name(uint32_t m) { return m == EG_ROPE_HALF ? "half" : m == EG_ROPE_INTERLEAVED ? "interleaved" : "none"; }

static int print_row(void *ctx, const eg_session_info *i)
{
    int *n = ctx;
    if ((*n)++ == 0) printf("%-24s %12s %10s %8s %-18s %s\n", "NAME", "TOKENS", "SEGMENTS", "CODEC", "SHAPE L/KV/Q/DK/DV", "ROPE");
    char shape[64];
    snprintf(shape, sizeof shape, "%u/%u/%u/%u/%u", i->config.n_layers, i->config.n_kv_heads, i->config.n_q_heads,
             i->config.head_dim_k, i->config.head_dim_v);
    printf("%-24s %12llu %10llu %8s %-18s %s\n", i->name, (unsigned long long)i->n_tokens,
           (unsigned long long)i->n_sealed, eg_codec_name(i->config.codec), shape, rope_name(i->config.rope_mode));
    return 0;
}

static void print_info(const eg_session_info *i)
{
    const eg_session_config *c = &i->config;
    printf("name          %s\nid            %llu\ntokens        %llu\nsealed        %llu segments of %u tokens\n",
           i->name, (unsigned long long)i->id, (unsigned long long)i->n_tokens, (unsigned long long)i->n_sealed,
           c->seg_tokens);
    printf("layer tokens  %llu (most any layer holds)\nshape         %u layers, %u kv-heads, %u q-heads, dims %u/%u\n",
           (unsigned long long)i->layer_tokens_max, c->n_layers, c->n_kv_heads, c->n_q_heads, c->head_dim_k,
           c->head_dim_v);
    printf("codec         %s", eg_codec_name(c->codec));
    if (c->cold_codec >= 0) printf(" (cold: %s after %u segments)", eg_codec_name(c->cold_codec), c->cold_age_segments);
    printf("\nrope          %s", rope_name(c->rope_mode));
    if (c->rope_mode) printf(" theta %g dims %u", c->rope_theta, c->rope_dims ? c->rope_dims : c->head_dim_k);
    printf("\nfingerprint   %s\nlineage       %u\ncreated       %llu (unix)\n", c->fingerprint[0] ? c->fingerprint : "-",
           i->lineage_len, (unsigned long long)i->created_unix);
}

static void print_problem(void *ctx, const char *line)
{
    (void)ctx;
    printf("problem: %s\n", line);
}

/* ---- load ----------------------------------------------------------------------- */
typedef struct {
    int L;
    float **k, **v;   /* [L] arrays [kv][T][d] */
    int64_t kv, T, dk, dv;
} npy_set;

static void npy_free(npy_set *s)
{
    for (int l = 0; l < s->L; l++) { free(s->k[l]); free(s->v[l]); }
    free(s->k);
    free(s->v);
}

static int npy_load(const char *dir, int prerope, npy_set *s)
{
    memset(s, 0, sizeof *s);
    for (int l = 0;; l++) {
        char kp[1200], vp[1200];
        snprintf(kp, sizeof kp, "%s/L%d_k%s.npy", dir, l, prerope ? "_prerope" : "");
        snprintf(vp, sizeof vp, "%s/L%d_v.npy", dir, l);
        struct stat sb;
        if (stat(kp, &sb) != 0) break;
        float **nk = realloc(s->k, (size_t)(l + 1) * sizeof *nk), **nv;
        if (!nk) return -1;
        s->k = nk;
        if (!(nv = realloc(s->v, (size_t)(l + 1) * sizeof *nv))) return -1;
        s->v = nv;
        s->k[l] = s->v[l] = NULL;
        s->L = l + 1;
        int nd1, nd2;
        int64_t sk[4], sv[4];
        if (wl_npy_read(kp, &s->k[l], &nd1, sk) || wl_npy_read(vp, &s->v[l], &nd2, sv)) {
            fprintf(stderr, "engram: cannot read %s or %s (float16/float32 .npy, C order)\n", kp, vp);
            return -1;
        }
        if (nd1 != 3 || nd2 != 3 || sk[0] != sv[0] || sk[1] != sv[1] ||
            (l && (sk[0] != s->kv || sk[1] != s->T || sk[2] != s->dk || sv[2] != s->dv))) {
            fprintf(stderr, "engram: %s and %s: shapes must be [kv_heads, T, dim] and agree across layers\n", kp, vp);
            return -1;
        }
        s->kv = sk[0]; s->T = sk[1]; s->dk = sk[2]; s->dv = sv[2];
    }
    if (!s->L) {
        fprintf(stderr, "engram: no L0_k%s.npy in %s\n", prerope ? "_prerope" : "", dir);
        return -1;
    }
    return 0;
}

static int cmd_load(eg_client *c, int argc, char **argv)
{
    if (argc < 2) { fputs(help_load, stderr); return EX_USAGE; }
    const char *name = argv[0], *dir = argv[1];
    int prerope = 0, create = 0;
    uint64_t chunk = 256, tag = 0, limit = UINT64_MAX;
    eg_session_config cfg;
    eg_session_config_init(&cfg);
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--prerope")) { prerope = 1; continue; }
        if (!strcmp(a, "--create")) { create = 1; continue; }
        if (!v) { fprintf(stderr, "engram load: %s needs a value\n", a); return EX_USAGE; }
        i++;
        int r;
        if (!strcmp(a, "--chunk")) r = parse_u64(v, &chunk) || !chunk || chunk > 65536 ? -1 : 1;
        else if (!strcmp(a, "--tag")) r = parse_u64(v, &tag) || tag > UINT32_MAX ? -1 : 1;
        else if (!strcmp(a, "--limit")) r = parse_u64(v, &limit) ? -1 : 1;
        else r = shape_option(a, v, &cfg);
        if (r <= 0) { fprintf(stderr, "engram load: bad option %s %s\n", a, v); return EX_USAGE; }
    }
    npy_set s;
    if (npy_load(dir, prerope, &s)) { npy_free(&s); return EX_USAGE; }
    uint32_t h;
    int rc = eg_client_open(c, name, NULL, &h);
    if (rc == EG_ENOTFOUND && create) {
        cfg.n_layers = (uint32_t)s.L;
        cfg.n_kv_heads = (uint32_t)s.kv;
        if (!cfg.n_q_heads) cfg.n_q_heads = cfg.n_kv_heads;
        cfg.head_dim_k = (uint32_t)s.dk;
        cfg.head_dim_v = (uint32_t)s.dv;
        if (prerope && !cfg.rope_mode) cfg.rope_mode = EG_ROPE_HALF;
        if ((rc = eg_client_create(c, name, &cfg))) { npy_free(&s); return fail(c, rc, "create"); }
        rc = eg_client_open(c, name, NULL, &h);
    }
    if (rc) { npy_free(&s); return fail(c, rc, rc == EG_ENOTFOUND ? "open (use --create)" : "open"); }
    eg_session_info info;
    if ((rc = eg_client_info(c, h, &info))) { npy_free(&s); return fail(c, rc, "info"); }
    const eg_session_config *sc = &info.config;
    if (sc->n_layers != (uint32_t)s.L || sc->n_kv_heads != (uint32_t)s.kv || sc->head_dim_k != (uint32_t)s.dk ||
        sc->head_dim_v != (uint32_t)s.dv) {
        fprintf(stderr, "engram load: the files are %d layers x %lld kv-heads x %lld/%lld dims; session %s is %u x %u x %u/%u\n",
                s.L, (long long)s.kv, (long long)s.dk, (long long)s.dv, name, sc->n_layers, sc->n_kv_heads,
                sc->head_dim_k, sc->head_dim_v);
        npy_free(&s);
        return EX_USAGE;
    }
    uint64_t T = (uint64_t)s.T < limit ? (uint64_t)s.T : limit, t = info.n_tokens;
    if (t) fprintf(stderr, "engram load: %s holds %llu tokens: resuming there\n", name, (unsigned long long)t);
    size_t per_tok_k = (size_t)s.L * s.kv * s.dk, per_tok_v = (size_t)s.L * s.kv * s.dv;
    float *kb = malloc(per_tok_k * chunk * 4), *vb = malloc(per_tok_v * chunk * 4);
    if (!kb || !vb) { npy_free(&s); free(kb); free(vb); fprintf(stderr, "engram: out of memory\n"); return EX_FAIL; }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t start = t;
    int tty = isatty(2);
    while (t < T && !rc) {
        uint32_t n = (uint32_t)(T - t < chunk ? T - t : chunk);
        /* the files are [kv][T][d] per layer; an append is [L][kv][n][d] */
        for (int l = 0; l < s.L; l++)
            for (int64_t hh = 0; hh < s.kv; hh++) {
                memcpy(kb + (((size_t)l * s.kv + hh) * n) * s.dk, s.k[l] + ((size_t)hh * s.T + t) * s.dk,
                       (size_t)n * s.dk * 4);
                memcpy(vb + (((size_t)l * s.kv + hh) * n) * s.dv, s.v[l] + ((size_t)hh * s.T + t) * s.dv,
                       (size_t)n * s.dv * 4);
            }
        eg_append_req r = {EG_DTYPE_F32, n, -1, kb, vb, NULL, (uint32_t)tag};
        uint64_t now = 0;
        rc = eg_client_append(c, h, sc, &r, &now);
        if (rc) break;
        t = now;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double sec = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
        double tps = sec > 0 ? (double)(t - start) / sec : 0;
        if (tty || t == T)
            fprintf(stderr, "%sload %s: %llu/%llu tokens (%.0f%%), %.0f tokens/s%s", tty ? "\r" : "", name,
                    (unsigned long long)t, (unsigned long long)T, 100.0 * (double)t / (double)T, tps,
                    tty && t < T ? "" : "\n");
    }
    free(kb);
    free(vb);
    npy_free(&s);
    if (rc) {
        if (tty) fputc('\n', stderr);
        return fail(c, rc, "append");
    }
    if (start == T) fprintf(stderr, "load %s: already holds all %llu tokens\n", name, (unsigned long long)T);
    return EX_OK;
}

/* ---- main ------------------------------------------------------------------------- */
static const char *default_addr(void)
{
    const char *e = getenv("ENGRAM_ADDR");
    if (e && *e) return e;
    struct stat sb;
    if (stat("./data/engramd.sock", &sb) == 0 && S_ISSOCK(sb.st_mode)) return "./data/engramd.sock";
    return "127.0.0.1:7411";
}

static int wants_help(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return 1;
    return 0;
}

int main(int argc, char **argv)
{
    const char *addr = NULL, *secret_file = NULL;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { fputs(usage_text, stdout); return EX_OK; }
        if (i + 1 >= argc) { fprintf(stderr, "engram: %s needs a value\n", argv[i]); return EX_USAGE; }
        if (!strcmp(argv[i], "--addr")) addr = argv[++i];
        else if (!strcmp(argv[i], "--secret-file")) secret_file = argv[++i];
        else { fprintf(stderr, "engram: unknown option %s (see --help)\n", argv[i]); return EX_USAGE; }
    }
    if (i >= argc) { fputs(usage_text, stderr); return EX_USAGE; }
    const char *cmd = argv[i++];
    int n = argc - i;
    char **a = argv + i;
    static const char *const simple[][2] = {
        {"list", "usage: engram list\n"}, {"info", "usage: engram info NAME\n"},
        {"drop", "usage: engram drop NAME\n"}, {"fork", "usage: engram fork PARENT CHILD [--at N] (default: all tokens)\n"},
        {"truncate", "usage: engram truncate NAME N\n"}, {"stats", "usage: engram stats\n"},
        {"verify", "usage: engram verify [NAME]   (exit 4 when problems are found)\n"}, {"ping", "usage: engram ping\n"},
        {"create", NULL}, {"load", NULL}};
    const char *help = NULL;
    int known = 0;
    for (size_t k = 0; k < sizeof simple / sizeof *simple; k++)
        if (!strcmp(cmd, simple[k][0])) { known = 1; help = simple[k][1]; }
    if (!strcmp(cmd, "create")) help = help_create;
    if (!strcmp(cmd, "load")) help = help_load;
    if (!known) { fprintf(stderr, "engram: unknown command '%s' (see --help)\n", cmd); return EX_USAGE; }
    if (wants_help(n, a)) { fputs(help, stdout); return EX_OK; }
    int need = !strcmp(cmd, "info") || !strcmp(cmd, "drop") ? 1 : !strcmp(cmd, "fork") || !strcmp(cmd, "truncate") ? 2 : 0;
    if (n < need || ((!strcmp(cmd, "info") || !strcmp(cmd, "drop") || !strcmp(cmd, "truncate")) && n != need) ||
        ((!strcmp(cmd, "list") || !strcmp(cmd, "stats") || !strcmp(cmd, "ping")) && n) ||
        (!strcmp(cmd, "verify") && n > 1) || (!strcmp(cmd, "create") && n < 1)) {
        fputs(help, stderr);
        return EX_USAGE;
    }
    /* parse what needs no server first, so usage errors never wait on a connection */
    eg_session_config cfg;
    eg_session_config_init(&cfg);
    uint64_t num = 0;
    if (!strcmp(cmd, "create")) {
        for (int k = 1; k < n; k += 2)
            if (k + 1 >= n || shape_option(a[k], a[k + 1], &cfg) <= 0) {
                fprintf(stderr, "engram create: bad option %s %s\n%s", a[k], k + 1 < n ? a[k + 1] : "", help_create);
                return EX_USAGE;
            }
        if (!cfg.n_q_heads) cfg.n_q_heads = cfg.n_kv_heads;
        if (!cfg.head_dim_v) cfg.head_dim_v = cfg.head_dim_k;
        if (!cfg.n_layers || !cfg.n_kv_heads || !cfg.head_dim_k) {
            fprintf(stderr, "engram create: --layers, --kv-heads and --head-dim are required\n");
            return EX_USAGE;
        }
    }
    if (!strcmp(cmd, "truncate") && parse_u64(a[1], &num)) { fprintf(stderr, "engram truncate: N is a token count\n"); return EX_USAGE; }
    num = !strcmp(cmd, "fork") ? UINT64_MAX : num;
    if (!strcmp(cmd, "fork") && n == 4 && !strcmp(a[2], "--at")) {
        if (parse_u64(a[3], &num)) { fprintf(stderr, "engram fork: --at N\n"); return EX_USAGE; }
    } else if (!strcmp(cmd, "fork") && n != 2) { fputs(help, stderr); return EX_USAGE; }

    char secret[4096] = "";
    if (secret_file) {
        FILE *f = fopen(secret_file, "r");
        if (!f || !fgets(secret, sizeof secret, f)) {
            fprintf(stderr, "engram: cannot read secret file %s\n", secret_file);
            if (f) fclose(f);
            return EX_USAGE;
        }
        fclose(f);
        secret[strcspn(secret, "\r\n")] = 0;
    }
    eg_client_options o;
    eg_client_options_init(&o);
    o.secret = secret_file ? secret : NULL;
    eg_client *c;
    int rc = eg_client_connect(addr ? addr : default_addr(), &o, &c);
    if (rc) {
        fprintf(stderr, "engram: %s\n", eg_net_last_error());
        if (rc == EG_NET_EAUTH || rc == EG_NET_ELIMIT) return EX_FAIL;
        fprintf(stderr, "engram: is engramd running? (make run)\n");
        return EX_CONNECT;
    }
    int ex = EX_OK;
    if (!strcmp(cmd, "ping")) {
        if ((rc = eg_client_ping(c))) ex = fail(c, rc, "ping");
        else printf("pong from %s\n", addr ? addr : default_addr());
    } else if (!strcmp(cmd, "list")) {
        int rows = 0;
        if ((rc = eg_client_list(c, print_row, &rows))) ex = fail(c, rc, "list");
        else if (!rows) printf("no sessions\n");
    } else if (!strcmp(cmd, "info")) {
        uint32_t h;
        eg_session_info info;
        if ((rc = eg_client_open(c, a[0], NULL, &h)) || (rc = eg_client_info(c, h, &info))) ex = fail(c, rc, "info");
        else print_info(&info);
    } else if (!strcmp(cmd, "create")) {
        if ((rc = eg_client_create(c, a[0], &cfg))) ex = fail(c, rc, "create");
        else printf("created %s\n", a[0]);
    } else if (!strcmp(cmd, "drop")) {
        if ((rc = eg_client_drop(c, a[0]))) ex = fail(c, rc, "drop");
        else printf("dropped %s\n", a[0]);
    } else if (!strcmp(cmd, "fork")) {
        if (num == UINT64_MAX) {
            uint32_t h;
            eg_session_info info;
            if ((rc = eg_client_open(c, a[0], NULL, &h)) || (rc = eg_client_info(c, h, &info)) ||
                (rc = eg_client_close_session(c, h))) {
                eg_client_close(c);
                return fail(NULL, rc, "fork");
            }
            num = info.n_tokens;
        }
        if ((rc = eg_client_fork(c, a[0], a[1], num))) ex = fail(c, rc, "fork");
        else printf("forked %s at %llu tokens into %s\n", a[0], (unsigned long long)num, a[1]);
    } else if (!strcmp(cmd, "truncate")) {
        uint32_t h;
        if ((rc = eg_client_open(c, a[0], NULL, &h)) || (rc = eg_client_truncate(c, h, num))) ex = fail(c, rc, "truncate");
        else printf("truncated %s to %llu tokens\n", a[0], (unsigned long long)num);
    } else if (!strcmp(cmd, "stats")) {
        eg_store_stats st;
        eg_server_stats sv;
        if ((rc = eg_client_stats(c, &st, &sv))) ex = fail(c, rc, "stats");
        else {
            printf("store   commits %llu, appends %llu, blocks sealed %llu, read %llu, map %llu MiB (%llu grows)\n",
                   (unsigned long long)st.commits, (unsigned long long)st.appends, (unsigned long long)st.blocks_sealed,
                   (unsigned long long)st.blocks_read, (unsigned long long)(st.map_bytes >> 20),
                   (unsigned long long)st.map_grows);
            printf("cache   hits %llu, misses %llu, %llu MiB in %llu entries, %llu evictions\n",
                   (unsigned long long)st.cache_hits, (unsigned long long)st.cache_misses,
                   (unsigned long long)(st.cache_bytes >> 20), (unsigned long long)st.cache_entries,
                   (unsigned long long)st.cache_evictions);
            printf("server  %llu connections (%llu total, %llu refused), %llu requests, %llu errors\n"
                   "        %llu bytes in, %llu out; closed: %llu slow, %llu idle, %llu bad\n",
                   (unsigned long long)sv.connections, (unsigned long long)sv.connections_total,
                   (unsigned long long)sv.connections_refused, (unsigned long long)sv.requests,
                   (unsigned long long)sv.errors, (unsigned long long)sv.bytes_in, (unsigned long long)sv.bytes_out,
                   (unsigned long long)sv.closed_slow, (unsigned long long)sv.closed_idle,
                   (unsigned long long)sv.closed_bad);
        }
    } else if (!strcmp(cmd, "verify")) {
        uint64_t problems = 0;
        if ((rc = eg_client_verify(c, n ? a[0] : NULL, print_problem, NULL, &problems))) ex = fail(c, rc, "verify");
        else {
            printf("%llu problems\n", (unsigned long long)problems);
            if (problems) ex = EX_PROBLEMS;
        }
    } else if (!strcmp(cmd, "load")) {
        ex = cmd_load(c, n, a);
    }
    eg_client_close(c);
    return ex;
}
