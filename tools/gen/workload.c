/* workload.c: the seeded synthetic generator (see workload.h for what each
 * kind is made of and why). */
#include "workload.h"
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct { uint64_t s; int have; float spare; } rng;
static uint64_t next64(rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double unit(rng *r) { return ((next64(r) >> 11) + 0.5) * 0x1p-53; }   /* (0, 1) */
static float normal(rng *r)
{
    if (r->have) { r->have = 0; return r->spare; }
    double u = unit(r), v = unit(r), m = sqrt(-2.0 * log(u));
    r->spare = (float)(m * sin(2 * M_PI * v));
    r->have = 1;
    return (float)(m * cos(2 * M_PI * v));
}
static void fill_normal(rng *r, float *x, size_t n, float sd) { for (size_t i = 0; i < n; i++) x[i] = sd * normal(r); }

const char *wl_kind_name(wl_kind k) { return k == WL_STRUCTURED ? "structured" : k == WL_RETRIEVAL ? "retrieval" : "?"; }

void wl_spec_init(wl_spec *s, wl_kind kind)
{
    memset(s, 0, sizeof *s);
    s->kind = kind;
    s->seed = 1;
    s->n_tokens = 32768;
    s->n_q_heads = 4;
    s->n_kv_heads = 2;
    s->dim = 64;
    s->rope_theta = 1e4;
    s->n_queries = 64;
}

void wl_free(wl_workload *w)
{
    if (!w) return;
    free(w->k); free(w->v); free(w->q); free(w->q_pos); free(w->target);
    memset(w, 0, sizeof *w);
}

/* RoPE, half-split layout, in place on one row at position p. */
static void rope(float *x, int d, double p, const double *freq)
{
    int h = d / 2;
    for (int i = 0; i < h; i++) {
        double a = p * freq[i], c = cos(a), s = sin(a);
        float x0 = x[i], x1 = x[i + h];
        x[i] = (float)(x0 * c - x1 * s);
        x[i + h] = (float)(x1 * c + x0 * s);
    }
}

static double dot(const float *a, const float *b, int d)
{
    double s = 0;
    for (int i = 0; i < d; i++) s += (double)a[i] * b[i];
    return s;
}

static int cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Median scaled logit of q over a sample of the keys [0, p]. */
static double median_logit(rng *r, const float *q, const float *k, int64_t p, int d, float scale)
{
    enum { NS = 1025 };
    static _Thread_local float v[NS];
    for (int i = 0; i < NS; i++) {
        int64_t j = (int64_t)(next64(r) % (uint64_t)(p + 1));
        v[i] = (float)(scale * dot(q, k + j * d, d));
    }
    qsort(v, NS, sizeof(float), cmp_f);
    return v[NS / 2];
}

/* Add to q a multiple of target key kt so that its scaled logit becomes the
 * median plus off. The outlier channels of kt are left out of the direction:
 * they carry no content. */
static void seek(float *q, const float *kt, int d, const int *outl, float scale, double med, double off)
{
    float dir[256];
    memcpy(dir, kt, sizeof(float) * d);
    for (int i = 0; i < 4; i++) dir[outl[i]] = 0;
    double now = scale * dot(q, kt, d), per = scale * dot(dir, kt, d);
    double beta = per > 1e-6 ? (med + off - now) / per : 0;
    for (int i = 0; i < d; i++) q[i] += (float)(beta * dir[i]);
}

int wl_generate(const wl_spec *s, wl_workload *w)
{
    memset(w, 0, sizeof *w);
    if (!s || s->n_tokens < 1024 || s->n_tokens > (1 << 24) || s->dim < 16 || s->dim > 256 || s->dim % 2 ||
        s->n_kv_heads < 1 || s->n_q_heads < s->n_kv_heads || s->n_q_heads % s->n_kv_heads ||
        s->n_queries < 1 || s->n_queries > 4096 || !(s->rope_theta > 1) ||
        (s->kind != WL_STRUCTURED && s->kind != WL_RETRIEVAL))
        return -EINVAL;
    const int d = s->dim, H = s->n_kv_heads, QH = s->n_q_heads, G = QH / H, NQ = s->n_queries;
    const int64_t T = s->n_tokens;
    w->spec = *s;
    w->n_tokens = T; w->dim = d; w->n_kv_heads = H; w->n_q_heads = QH; w->n_queries = NQ;
    w->scale = 1.0f / sqrtf((float)d);
    w->k = malloc(sizeof(float) * (size_t)H * T * d);
    w->v = malloc(sizeof(float) * (size_t)H * T * d);
    w->q = malloc(sizeof(float) * (size_t)NQ * QH * d);
    w->q_pos = malloc(sizeof(int64_t) * NQ);
    w->target = malloc(sizeof(int64_t) * NQ * QH * WL_MAX_TARGETS);
    float *topic = malloc(sizeof(float) * 32 * d);
    uint8_t *tok_topic = malloc((size_t)T);
    if (!w->k || !w->v || !w->q || !w->q_pos || !w->target || !topic || !tok_topic) {
        free(topic); free(tok_topic); wl_free(w);
        return -ENOMEM;
    }
    for (int i = 0; i < NQ * QH * WL_MAX_TARGETS; i++) w->target[i] = -1;
    rng rm = { s->seed * 0x2545f4914f6cdd1dull + (uint64_t)s->kind, 0, 0 };
    rng r = { (s->seed ^ (s->text_seed * 0x9e3779b97f4a7c15ull)) * 0xd1342543de82ef95ull + 11, 0, 0 };
    double freq[128];
    for (int i = 0; i < d / 2; i++) freq[i] = pow(s->rope_theta, -2.0 * i / d);
    /* Outlier channels: the two lowest-frequency RoPE pairs. */
    int outl[4] = { d / 2 - 1, d - 1, d / 2 - 2, d - 2 };
    float sink[256], local[256];
    fill_normal(&rm, sink, (size_t)d, 1.0f);
    fill_normal(&rm, local, (size_t)d, 1.0f);
    fill_normal(&rm, topic, (size_t)32 * d, 1.0f);
    /* Passages and their topics. */
    for (int64_t t = 0; t < T;) {
        int64_t len = 100 + (int64_t)(next64(&r) % 1901);
        uint8_t z = (uint8_t)(next64(&r) % 32);
        for (int64_t e = t + len < T ? t + len : T; t < e; t++) tok_topic[t] = z;
    }
    int64_t needle[16];
    for (int i = 0; i < 16; i++) needle[i] = 4 + (int64_t)(next64(&r) % (uint64_t)(T / 2 - 4));
    int structured = s->kind == WL_STRUCTURED;
    w->n_sinks = structured ? 4 : 0;
    for (int h = 0; h < H; h++) {
        for (int64_t t = 0; t < T; t++) {
            float *k = w->k + ((size_t)h * T + t) * d, *v = w->v + ((size_t)h * T + t) * d;
            fill_normal(&r, k, (size_t)d, 1.0f);
            fill_normal(&r, v, (size_t)d, 1.0f);
            if (structured) {
                int is_needle = 0;
                for (int i = 0; i < 16; i++) is_needle |= needle[i] == t;
                if (is_needle) for (int i = 0; i < d; i++) k[i] *= 2.0f;
                else for (int i = 0; i < d; i++) k[i] = 0.8f * k[i] + local[i];
            }
            rope(k, d, (double)t, freq);
            if (structured) {
                /* Position-free parts (after RoPE): topic, sink. */
                const float *c = topic + (size_t)tok_topic[t] * d;
                for (int i = 0; i < d; i++) { k[i] += c[i]; v[i] += 0.5f * c[i]; }
                if (t < 4) for (int i = 0; i < d; i++) k[i] += 1.5f * sink[i];
            }
            for (int i = 0; i < 4; i++) k[outl[i]] += (i < 2 ? 8.0f : 5.0f) + 0.5f * normal(&r);
        }
    }
    for (int i = 0; i < NQ; i++) {
        int64_t lo = T / 2, span = T - 1 - lo;
        w->q_pos[i] = lo + (int64_t)((double)span * (i + 0.5) / NQ);
    }
    for (int i = 0; i < NQ; i++) {
        int64_t p = w->q_pos[i];
        for (int hq = 0; hq < QH; hq++) {
            int h = hq / G;
            const float *K = w->k + (size_t)h * T * d;
            float *q = w->q + ((size_t)i * QH + hq) * d;
            int64_t *tg = w->target + ((size_t)i * QH + hq) * WL_MAX_TARGETS;
            if (structured) {
                int local_head = h % 2 == 0;
                fill_normal(&r, q, (size_t)d, 0.8f);
                for (int j = 0; j < d; j++) q[j] += (local_head ? 1.6f : 0.3f) * local[j];
                rope(q, d, (double)p, freq);
                for (int j = 0; j < d; j++) q[j] += 0.5f * sink[j];
                if (!local_head) {
                    int64_t src = (int64_t)(next64(&r) % (uint64_t)(p > 1 ? p - 1 : 1));
                    const float *c = topic + (size_t)tok_topic[src] * d;
                    for (int j = 0; j < d; j++) q[j] += 0.35f * c[j];
                }
                for (int j = 0; j < 4; j++) q[outl[j]] = 0.2f * normal(&r);
                if (i % 4 == 0 && hq % G == 0) {
                    int n = (int)(next64(&r) % 16);
                    if (needle[n] < p) {
                        double med = median_logit(&r, q, K, p, d, w->scale);
                        seek(q, K + needle[n] * d, d, outl, w->scale, med, 10.0 + 10.0 * unit(&r));
                        tg[0] = needle[n];
                    }
                }
            } else {
                fill_normal(&r, q, (size_t)d, 1.5f);
                for (int j = 0; j < 4; j++) q[outl[j]] = 0.2f * normal(&r);
                int nt = 1 + (int)(next64(&r) % 3);
                int64_t pick[3];
                for (int e = 0; e < nt; e++) pick[e] = (int64_t)(next64(&r) % (uint64_t)p);
                double med = median_logit(&r, q, K, p, d, w->scale);
                for (int e = 0; e < nt; e++) {
                    seek(q, K + pick[e] * d, d, outl, w->scale, med, 10.0 + 10.0 * unit(&r));
                    tg[e] = pick[e];
                }
            }
        }
    }
    free(topic);
    free(tok_topic);
    return 0;
}
