/* capture.c: real attention captures (model.json + .npy files). */
#include "workload.h"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float f16(uint16_t h)
{
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(m | 0x400), e - 25);
    return (h & 0x8000) ? -v : v;
}

int wl_npy_read(const char *path, float **data, int *ndim, int64_t shape[4])
{
    *data = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return -ENOENT;
    uint8_t pre[12];
    char hdr[4096];
    int rc = -EINVAL;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) goto out;
    size_t hl;
    if (pre[6] == 1) hl = pre[8] | (size_t)pre[9] << 8;
    else if (pre[6] == 2 || pre[6] == 3) {
        if (fread(pre + 10, 1, 2, f) != 2) goto out;
        hl = pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    } else goto out;
    if (hl >= sizeof hdr || fread(hdr, 1, hl, f) != hl) goto out;
    hdr[hl] = 0;
    const char *ds = strstr(hdr, "'descr':"), *fo = strstr(hdr, "'fortran_order':"), *sh = strstr(hdr, "'shape':");
    if (!ds || !fo || !sh || strstr(fo, "True") == fo + 17) goto out;
    int esz;
    char kind;
    if (strstr(ds, "'<f2'") == ds + 9) { esz = 2; kind = 'h'; }
    else if (strstr(ds, "'<f4'") == ds + 9) { esz = 4; kind = 'f'; }
    else if (strstr(ds, "'|u1'") == ds + 9) { esz = 1; kind = 'u'; }
    else goto out;
    const char *p = strchr(sh, '(');
    if (!p) goto out;
    p++;
    int nd = 0;
    size_t count = 1;
    while (*p && *p != ')') {
        while (*p == ' ' || *p == ',') p++;
        if (*p == ')') break;
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p || v < 0 || nd == 4 || v > (1ll << 32)) goto out;
        shape[nd++] = v;
        count *= (size_t)v;
        if (count > ((size_t)1 << 34)) goto out;
        p = end;
    }
    *ndim = nd;
    float *out = malloc(sizeof(float) * (count ? count : 1));
    uint8_t *raw = malloc((size_t)esz * (count ? count : 1));
    if (!out || !raw) { free(out); free(raw); rc = -ENOMEM; goto out; }
    if (fread(raw, (size_t)esz, count, f) != count) { free(out); free(raw); goto out; }   /* truncated */
    for (size_t i = 0; i < count; i++) {
        if (kind == 'h') out[i] = f16((uint16_t)(raw[2 * i] | raw[2 * i + 1] << 8));
        else if (kind == 'u') out[i] = raw[i];
        else memcpy(&out[i], raw + 4 * i, 4);
    }
    free(raw);
    *data = out;
    rc = 0;
out:
    fclose(f);
    return rc;
}

/* The number after "key": in a small JSON text (NAN if absent). */
static double json_num(const char *js, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(js, pat);
    if (!p) return NAN;
    p = strchr(p + strlen(pat), ':');
    return p ? strtod(p + 1, NULL) : NAN;
}

int wl_capture_open(const char *dir, wl_capture *c)
{
    memset(c, 0, sizeof *c);
    char path[700];
    snprintf(path, sizeof path, "%s/model.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) return -ENOENT;
    char js[65536];
    size_t n = fread(js, 1, sizeof js - 1, f);
    fclose(f);
    js[n] = 0;
    c->n_layers = (int)json_num(js, "n_layers");
    c->n_q_heads = (int)json_num(js, "n_q_heads");
    c->n_kv_heads = (int)json_num(js, "n_kv_heads");
    c->head_dim_k = (int)json_num(js, "head_dim_k");
    c->head_dim_v = (int)json_num(js, "head_dim_v");
    c->score_scale = (float)json_num(js, "score_scale");
    snprintf(c->dir, sizeof c->dir, "%s", dir);
    const char *p = strstr(js, "\"sequences\"");
    while (p && c->n_sequences < 16 && (p = strstr(p, "\"dir\"")) != NULL) {
        const char *q = strchr(p + 5, '"');
        if (!q) break;
        const char *e = strchr(q + 1, '"');
        if (!e || e - q - 1 >= 255) break;
        memcpy(c->seq_dir[c->n_sequences], q + 1, (size_t)(e - q - 1));
        c->seq_dir[c->n_sequences][e - q - 1] = 0;
        c->seq_tokens[c->n_sequences] = (int64_t)json_num(e, "tokens");
        c->n_sequences++;
        p = e;
    }
    if (c->n_layers < 1 || c->n_kv_heads < 1 || c->n_q_heads < c->n_kv_heads || c->head_dim_k < 1 ||
        !(c->score_scale > 0) || c->n_sequences < 1)
        return -EINVAL;
    return 0;
}

int wl_capture_layer(const wl_capture *c, int seq, int layer, int nq, wl_workload *w)
{
    memset(w, 0, sizeof *w);
    if (seq < 0 || seq >= c->n_sequences || layer < 0 || layer >= c->n_layers || nq < 1) return -EINVAL;
    char path[1100];
    int nd;
    int64_t sk[4], sv[4], sq[4];
    float *q = NULL;
    snprintf(path, sizeof path, "%s/%s/L%d_k.npy", c->dir, c->seq_dir[seq], layer);
    int rc = wl_npy_read(path, &w->k, &nd, sk);
    if (rc == 0 && (nd != 3 || sk[0] != c->n_kv_heads || sk[2] != c->head_dim_k)) rc = -EINVAL;
    if (rc == 0) {
        snprintf(path, sizeof path, "%s/%s/L%d_v.npy", c->dir, c->seq_dir[seq], layer);
        rc = wl_npy_read(path, &w->v, &nd, sv);
        if (rc == 0 && (nd != 3 || sv[0] != sk[0] || sv[1] != sk[1])) rc = -EINVAL;
    }
    if (rc == 0) {
        snprintf(path, sizeof path, "%s/%s/L%d_q.npy", c->dir, c->seq_dir[seq], layer);
        rc = wl_npy_read(path, &q, &nd, sq);
        if (rc == 0 && (nd != 3 || sq[0] != c->n_q_heads || sq[1] != sk[1] || sq[2] != sk[2])) rc = -EINVAL;
    }
    int64_t T = sk[1];
    int d = (int)sk[2], QH = c->n_q_heads;
    if (rc == 0) {
        w->q = malloc(sizeof(float) * (size_t)nq * QH * d);
        w->q_pos = malloc(sizeof(int64_t) * nq);
        w->target = malloc(sizeof(int64_t) * nq * QH * WL_MAX_TARGETS);
        if (!w->q || !w->q_pos || !w->target) rc = -ENOMEM;
    }
    if (rc < 0) { free(q); wl_free(w); return rc; }
    for (int i = 0; i < nq; i++) {
        int64_t p = T / 2 + (int64_t)((double)(T - 1 - T / 2) * (i + 0.5) / nq);
        w->q_pos[i] = p;
        for (int h = 0; h < QH; h++)
            memcpy(w->q + ((size_t)i * QH + h) * d, q + ((size_t)h * T + p) * d, sizeof(float) * d);
    }
    for (int i = 0; i < nq * QH * WL_MAX_TARGETS; i++) w->target[i] = -1;
    free(q);
    w->n_tokens = T;
    w->dim = d;
    w->n_kv_heads = c->n_kv_heads;
    w->n_q_heads = QH;
    w->n_queries = nq;
    w->scale = c->score_scale;
    w->spec.n_tokens = T;
    w->spec.dim = d;
    w->spec.n_kv_heads = c->n_kv_heads;
    w->spec.n_q_heads = QH;
    w->spec.n_queries = nq;
    return 0;
}
