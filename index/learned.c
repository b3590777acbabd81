/* learned.c: the learned router's training. Training minimises the mean
 * over calibration queries of KL(dense mass per segment || softmax of
 * segment scores), over the segments a query can route (sealed, visible,
 * neither sink nor recent window), with Adam.
 * PQ and REPS: queries and keys are projected to r dims (wq, wk:
 * [r][dim]); a segment's score is tau * max over its tokens (or
 * representatives) of (wq q).(wk k), the max differentiated through its
 * argmax. OUTLIERS: the score is log(e^(bias + tau q.mean) + sum_o
 * e^(tau_out q.k_o)); tau, tau_out and bias are trained, from the exact
 * mixture (scale, scale, log(S - m)) as the start. Projections run as
 * OpenBLAS sgemm. */
#include "ix_internal.h"
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

void eg_learned_config_init(eg_learned_config *c, int dim, int seg_tokens)
{
    memset(c, 0, sizeof *c);
    c->dim = dim;
    c->rank = 16;
    c->mode = EG_LEARNED_PQ;
    c->n_reps = 1;
    c->seg_tokens = seg_tokens;
    c->steps = 200;
    c->lr = 0.01f;
    c->seed = 1;
    c->n_sink_segments = 1;
    c->recent_tokens = 256;
}

void eg_learned_free(eg_learned *w)
{
    if (!w) return;
    free(w->wq); free(w->wk); free(w->codebook); free(w->step);
    free(w);
}

const eg_learned_config *eg_learned_get_config(const eg_learned *w) { return w ? &w->cfg : NULL; }

size_t eg_learned_summary_bytes(const eg_learned *w)
{
    if (!w) return 0;
    size_t r = (size_t)w->cfg.rank;
    if (w->cfg.mode == EG_LEARNED_PQ) return (size_t)w->cfg.seg_tokens * ix_pq_bytes((int)r);
    if (w->cfg.mode == EG_LEARNED_OUTLIERS)
        return 2 * (size_t)w->cfg.dim + (size_t)w->cfg.n_reps * (4 + (size_t)w->cfg.dim);
    if (w->cfg.mode == EG_LEARNED_MEAN8) return (size_t)w->cfg.dim;
    return (size_t)w->cfg.n_reps * (4 + r);
}

void ix_project(const float *w, int rank, int dim, const float *x, size_t n, float *out)
{
    /* out [n][rank] = x [n][dim] * w^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, rank, dim, 1.0f, x, dim, w, dim,
                0.0f, out, rank);
}

void ix_pq_encode(const eg_learned *w, const float *pk, uint8_t *codes)
{
    int m = w->cfg.rank / IX_PQ_SUB;
    memset(codes, 0, (size_t)m / 2);
    for (int j = 0; j < m; j++) {
        const float *cb = w->codebook + (size_t)j * IX_PQ_K * IX_PQ_SUB, *x = pk + j * IX_PQ_SUB;
        float bd = INFINITY;
        int bi = 0;
        for (int c = 0; c < IX_PQ_K; c++) {
            float dd = 0;
            for (int i = 0; i < IX_PQ_SUB; i++) { float e = x[i] - cb[c * IX_PQ_SUB + i]; dd += e * e; }
            if (dd < bd) { bd = dd; bi = c; }
        }
        codes[j / 2] |= (uint8_t)(bi << (4 * (j & 1)));
    }
}

int ix_learned_check_config(const eg_learned_config *c)
{
    if (!c) return ix_fail(EG_IX_EINVAL, "config is NULL");
    if (c->dim < 1 || c->dim > EG_IX_DIM_MAX) return ix_fail(EG_IX_EDIM, "dim %d outside 1..%d", c->dim, EG_IX_DIM_MAX);
    if (c->mode != EG_LEARNED_PQ && c->mode != EG_LEARNED_REPS && c->mode != EG_LEARNED_OUTLIERS &&
        c->mode != EG_LEARNED_MEAN8)
        return ix_fail(EG_IX_EINVAL, "unknown learned mode %d", (int)c->mode);
    if (c->mode == EG_LEARNED_PQ || c->mode == EG_LEARNED_REPS) {   /* OUTLIERS and MEAN8 project nothing */
        if (c->rank < EG_LEARNED_RANK_MIN || c->rank > EG_LEARNED_RANK_MAX)
            return ix_fail(EG_IX_ERANK, "rank %d outside %d..%d", c->rank, EG_LEARNED_RANK_MIN, EG_LEARNED_RANK_MAX);
        if (c->rank > c->dim) return ix_fail(EG_IX_ERANK, "rank %d exceeds dim %d", c->rank, c->dim);
    }
    if (c->mode == EG_LEARNED_PQ && c->rank % (2 * IX_PQ_SUB))
        return ix_fail(EG_IX_ERANK, "PQ rank %d is not a multiple of %d", c->rank, 2 * IX_PQ_SUB);
    if ((c->mode == EG_LEARNED_REPS || c->mode == EG_LEARNED_OUTLIERS) && (c->n_reps < 1 || c->n_reps > 8))
        return ix_fail(EG_IX_EINVAL, "n_reps %d outside 1..8", c->n_reps);
    int s = c->seg_tokens;
    if (s < 16 || s > 256 || (s & (s - 1)))
        return ix_fail(EG_IX_EDIM, "segment size %d is not a power of two in 16..256", s);
    if (c->steps < 0 || c->steps > 100000 || !(c->lr > 0.0f) || !isfinite(c->lr))
        return ix_fail(EG_IX_EINVAL, "steps %d or lr %g out of range", c->steps, c->lr);
    if (c->n_sink_segments < 0 || c->recent_tokens < 0)
        return ix_fail(EG_IX_EINVAL, "negative sink count or recent window");
    return 0;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float rng_unit(uint64_t *s) { return (float)((rng_next(s) >> 40) * 0x1p-24) * 2.0f - 1.0f; }

#define IX_BATCH 64           /* calibration queries per training step */

/* The calibration problem, precomputed once. */
typedef struct {
    const eg_calibration *cal;
    int d, S, nq;
    size_t nseg;              /* full segments in the keys */
    size_t *c0, *c1;          /* [nq] routable segments [c0, c1) of each query */
    float *mass;              /* [nq][nseg] target mass over [c0, c1), 0 elsewhere */
    float *mean;              /* REPS: [nseg][d] mean key of each segment */
    int usable;               /* queries with at least 2 routable segments */
} problem;

static void problem_free(problem *p) { free(p->c0); free(p->c1); free(p->mass); free(p->mean); }

static int problem_init(problem *p, const eg_learned_config *c, const eg_calibration *cal)
{
    memset(p, 0, sizeof *p);
    if (!cal || !cal->keys || !cal->queries || !cal->q_pos)
        return ix_fail(EG_IX_EINVAL, "calibration arrays are NULL");
    if (cal->n_queries < 1 || cal->n_tokens < c->seg_tokens)
        return ix_fail(EG_IX_EEMPTY, "calibration needs queries and at least one segment of keys");
    if (!(cal->scale > 0.0f) || !isfinite(cal->scale))
        return ix_fail(EG_IX_EINVAL, "score scale %g", cal->scale);
    if (!ix_all_finite(cal->keys, (size_t)cal->n_tokens * c->dim) ||
        !ix_all_finite(cal->queries, (size_t)cal->n_queries * c->dim))
        return ix_fail(EG_IX_ENONFINITE, "NaN or Inf in calibration keys or queries");
    p->cal = cal;
    p->d = c->dim;
    p->S = c->seg_tokens;
    p->nq = cal->n_queries;
    p->nseg = (size_t)(cal->n_tokens / c->seg_tokens);
    p->c0 = malloc(sizeof(size_t) * p->nq);
    p->c1 = malloc(sizeof(size_t) * p->nq);
    p->mass = calloc((size_t)p->nq * p->nseg, sizeof(float));
    float *sc = malloc(sizeof(float) * (size_t)p->nseg * p->S);   /* one query's scores */
    if (!p->c0 || !p->c1 || !p->mass || !sc) { free(sc); return ix_fail(EG_IX_ENOMEM, "out of memory"); }
    for (int i = 0; i < p->nq; i++) {
        int64_t pos = cal->q_pos[i];
        if (pos < 0 || pos >= cal->n_tokens) {
            free(sc);
            return ix_fail(EG_IX_ERANGE, "calibration query %d at %lld, keys 0..%lld", i,
                           (long long)pos, (long long)cal->n_tokens - 1);
        }
        int64_t first = pos - c->recent_tokens + 1;
        size_t r0 = first <= 0 ? 0 : (size_t)(first / p->S);
        r0 = r0 < p->nseg ? r0 : p->nseg;
        p->c0[i] = (size_t)c->n_sink_segments;
        p->c1[i] = r0;
        if (p->c1[i] < p->c0[i] + 2) { p->c1[i] = p->c0[i]; continue; }
        p->usable++;
        /* Exact mass per routable segment: the scores in one sgemv, then
         * max-shifted exp with double sums. */
        const float *q = cal->queries + (size_t)i * p->d;
        size_t t0 = p->c0[i] * p->S, nt = (p->c1[i] - p->c0[i]) * p->S;
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)nt, p->d, cal->scale, cal->keys + t0 * p->d, p->d,
                    q, 1, 0.0f, sc, 1);
        double mx = -INFINITY, tot = 0;
        for (size_t t = 0; t < nt; t++) mx = sc[t] > mx ? sc[t] : mx;
        float *m = p->mass + (size_t)i * p->nseg;
        for (size_t s = p->c0[i]; s < p->c1[i]; s++) {
            double a = 0;
            for (int t = 0; t < p->S; t++) a += exp(sc[(s - p->c0[i]) * p->S + t] - mx);
            m[s] = (float)a;
            tot += a;
        }
        for (size_t s = p->c0[i]; s < p->c1[i]; s++) m[s] = (float)(m[s] / tot);
    }
    free(sc);
    if (!p->usable) return ix_fail(EG_IX_EEMPTY, "no calibration query can route 2 or more segments");
    if (c->mode == EG_LEARNED_REPS) {
        /* REPS trains on the segment mean: what one representative keeps
         * and a smooth score where the per-token max is mostly noise. */
        p->mean = calloc(p->nseg * (size_t)p->d, sizeof(float));
        if (!p->mean) return ix_fail(EG_IX_ENOMEM, "out of memory");
        for (size_t s = 0; s < p->nseg; s++)
            for (int t = 0; t < p->S; t++)
                for (int j = 0; j < p->d; j++)
                    p->mean[s * p->d + j] += cal->keys[(s * p->S + t) * p->d + j] / (float)p->S;
    }
    return 0;
}

/* Loss and (when gq/gk/gt non-NULL) gradients for wq, wk, log tau. */
static double loss_grad(const problem *p, const eg_learned *w, float *pk, float *tok,
                        float *gq, float *gk, double *gt, int batch0, int batch)
{
    int d = p->d, r = w->cfg.rank, S = p->S;
    const float *src = p->mean ? p->mean : p->cal->keys;
    int per = p->mean ? 1 : S;              /* rows per segment */
    ix_project(w->wk, r, d, src, p->nseg * per, pk);
    double loss = 0, dtau = 0;
    float qp[EG_LEARNED_RANK_MAX], a[EG_IX_DIM_MAX], wa[EG_LEARNED_RANK_MAX];
    if (gq) { memset(gq, 0, sizeof(float) * r * d); memset(gk, 0, sizeof(float) * r * d); }
    double *u = malloc(sizeof(double) * p->nseg * 2);
    size_t *arg = malloc(sizeof(size_t) * p->nseg);
    if (!u || !arg) { free(u); free(arg); return NAN; }
    double *pr = u + p->nseg;
    int used = 0;
    for (int bi = 0; bi < batch; bi++) {
        int i = (batch0 + bi) % p->nq;
        size_t c0 = p->c0[i], c1 = p->c1[i];
        if (c1 <= c0) continue;
        used++;
        const float *q = p->cal->queries + (size_t)i * d;
        ix_project(w->wq, r, d, q, 1, qp);
        size_t span = (c1 - c0) * per;
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)span, r, 1.0f, pk + c0 * per * r, r, qp, 1, 0.0f, tok, 1);
        double mx = -INFINITY;
        for (size_t s = c0; s < c1; s++) {
            const float *ts = tok + (s - c0) * per;
            size_t bi = 0;
            for (int t = 1; t < per; t++) if (ts[t] > ts[bi]) bi = (size_t)t;
            u[s] = ts[bi];
            arg[s] = s * per + bi;
            mx = w->tau * u[s] > mx ? w->tau * u[s] : mx;
        }
        double z = 0;
        for (size_t s = c0; s < c1; s++) { pr[s] = exp(w->tau * u[s] - mx); z += pr[s]; }
        const float *m = p->mass + (size_t)i * p->nseg;
        memset(a, 0, sizeof(float) * d);
        for (size_t s = c0; s < c1; s++) {
            pr[s] /= z;
            double ps = pr[s] > 1e-30 ? pr[s] : 1e-30;
            if (m[s] > 0) loss += m[s] * (log(m[s]) - log(ps));
            double g = pr[s] - m[s];                 /* dL/dlogit */
            dtau += g * u[s];
            if (gq) {
                const float *k = src + arg[s] * d;
                float gg = (float)(g * w->tau);
                for (int j = 0; j < d; j++) a[j] += gg * k[j];
            }
        }
        if (gq) {
            /* d/dwk += outer(qp, a); d/dwq += outer(wk a, q) */
            cblas_sgemv(CblasRowMajor, CblasNoTrans, r, d, 1.0f, w->wk, d, a, 1, 0.0f, wa, 1);
            cblas_sger(CblasRowMajor, r, d, 1.0f, qp, 1, a, 1, gk, d);
            cblas_sger(CblasRowMajor, r, d, 1.0f, wa, 1, q, 1, gq, d);
        }
    }
    free(u); free(arg);
    double n = used ? used : 1;
    if (gq) {
        for (int j = 0; j < r * d; j++) { gq[j] /= (float)n; gk[j] /= (float)n; }
        *gt = dtau / n * w->tau;                     /* d/dlog tau */
    }
    return loss / n;
}

/* Top-r eigenvectors of a symmetric d x d matrix m by orthogonal iteration
 * (rows of out, [r][d]). */
static void top_eigvecs(const float *m, int d, int r, uint64_t seed, float *out, float *tmp)
{
    for (int i = 0; i < r * d; i++) out[i] = rng_unit(&seed);
    for (int it = 0; it < 60; it++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r, d, d, 1.0f, out, d, m, d, 0.0f, tmp, d);
        for (int i = 0; i < r; i++) {           /* modified Gram-Schmidt */
            float *v = tmp + (size_t)i * d;
            for (int j = 0; j < i; j++) {
                const float *u = tmp + (size_t)j * d;
                float dot = cblas_sdot(d, v, 1, u, 1);
                cblas_saxpy(d, -dot, u, 1, v, 1);
            }
            float nrm = cblas_snrm2(d, v, 1);
            if (nrm > 0) cblas_sscal(d, 1.0f / nrm, v, 1);
            else v[i % d] = 1.0f;
        }
        memcpy(out, tmp, sizeof(float) * r * d);
    }
}

/* k-means of n points of IX_PQ_SUB dims into IX_PQ_K centroids. */
static void kmeans_pq(const float *x, size_t n, size_t stride, float *cb, uint64_t seed)
{
    int *asg = malloc(sizeof(int) * n);
    float *acc = malloc(sizeof(float) * IX_PQ_K * (IX_PQ_SUB + 1));
    if (!asg || !acc) { free(asg); free(acc); memset(cb, 0, sizeof(float) * IX_PQ_K * IX_PQ_SUB); return; }
    for (int c = 0; c < IX_PQ_K; c++)
        memcpy(cb + c * IX_PQ_SUB, x + (rng_next(&seed) % n) * stride, sizeof(float) * IX_PQ_SUB);
    for (int it = 0; it < 12; it++) {
        memset(acc, 0, sizeof(float) * IX_PQ_K * (IX_PQ_SUB + 1));
        for (size_t i = 0; i < n; i++) {
            const float *p = x + i * stride;
            float bd = INFINITY;
            int bi = 0;
            for (int c = 0; c < IX_PQ_K; c++) {
                float dd = 0;
                for (int j = 0; j < IX_PQ_SUB; j++) { float e = p[j] - cb[c * IX_PQ_SUB + j]; dd += e * e; }
                if (dd < bd) { bd = dd; bi = c; }
            }
            asg[i] = bi;
            float *a = acc + bi * (IX_PQ_SUB + 1);
            for (int j = 0; j < IX_PQ_SUB; j++) a[j] += p[j];
            a[IX_PQ_SUB] += 1.0f;
        }
        for (int c = 0; c < IX_PQ_K; c++) {
            float *a = acc + c * (IX_PQ_SUB + 1);
            if (a[IX_PQ_SUB] > 0)
                for (int j = 0; j < IX_PQ_SUB; j++) cb[c * IX_PQ_SUB + j] = a[j] / a[IX_PQ_SUB];
            else   /* empty: restart at a random point */
                memcpy(cb + c * IX_PQ_SUB, x + (rng_next(&seed) % n) * stride, sizeof(float) * IX_PQ_SUB);
        }
    }
    free(asg); free(acc);
}

/* One Adam step (0.9, 0.999, 1e-8, bias-corrected) on n double
 * parameters th with moments m, v and gradient g; step counts from 0. */
static void adam_step_d(double *th, double *m, double *v, const double *g, int n, double lr, int step)
{
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    double bc1 = 1 - pow(b1, step + 1), bc2 = 1 - pow(b2, step + 1);
    for (int k = 0; k < n; k++) {
        m[k] = b1 * m[k] + (1 - b1) * g[k];
        v[k] = b2 * v[k] + (1 - b2) * g[k] * g[k];
        th[k] -= lr * (m[k] / bc1) / (sqrt(v[k] / bc2) + eps);
    }
}

/* OUTLIERS: every calibration segment's mean and outliers as a table
 * would hold them. */
typedef struct { float *mean, *ok; } outlier_set;

/* MEAN8: per channel, the step that makes the largest |mean| of the
 * calibration segments code 85, so that later segments up to 1.5 times
 * beyond it keep their codes (further ones saturate at 127: the score is
 * an estimate, not a bound); a channel whose means are all 0 gets step 1. */
static int mean8_steps(const problem *p, eg_learned *w)
{
    size_t d = (size_t)p->d, S = (size_t)p->S;
    double *mx = calloc(d, sizeof(double));
    w->step = malloc(sizeof(float) * d);
    if (!mx || !w->step) { free(mx); return ix_fail(EG_IX_ENOMEM, "out of memory"); }
    for (size_t s = 0; s < p->nseg; s++)
        for (size_t c = 0; c < d; c++) {
            double a = 0;
            for (size_t t = 0; t < S; t++) a += p->cal->keys[(s * S + t) * d + c];
            mx[c] = fmax(mx[c], fabs(a / (double)S));
        }
    for (size_t c = 0; c < d; c++) {
        float st = (float)(mx[c] * 1.5 / 127.0);
        w->step[c] = st > 1e-30f && isfinite(st) ? st : 1.0f;
    }
    free(mx);
    return 0;
}

static int outliers_of(const problem *p, int m, outlier_set *o)
{
    size_t d = (size_t)p->d;
    o->mean = malloc(sizeof(float) * p->nseg * d);
    o->ok = malloc(sizeof(float) * p->nseg * m * d);
    if (!o->mean || !o->ok) return ix_fail(EG_IX_ENOMEM, "out of memory");
    for (size_t s = 0; s < p->nseg; s++)
        ix_outliers_summary(p->cal->keys + s * p->S * d, p->S, p->d, m, NULL, o->mean + s * d,
                            o->ok + s * m * d);
    return 0;
}

/* The mixture's fixed parts for the calibration segments: OUTLIERS the
 * mean of the others and the outliers, MEAN8 the int8 mean (no outliers). */
static int mixture_set(const problem *p, const eg_learned *w, outlier_set *o)
{
    if (w->cfg.mode != EG_LEARNED_MEAN8) return outliers_of(p, w->cfg.n_reps, o);
    size_t d = (size_t)p->d;
    o->mean = malloc(sizeof(float) * p->nseg * d);
    if (!o->mean) return ix_fail(EG_IX_ENOMEM, "out of memory");
    for (size_t s = 0; s < p->nseg; s++)
        ix_mean8_summary(p->cal->keys + s * p->S * d, p->S, p->d, w->step, NULL, o->mean + s * d);
    return 0;
}

/* OUTLIERS loss over queries [batch0, batch0 + batch) (mod nq) and, when
 * g is non-NULL, its gradient in (log tau, log tau_out, bias). A
 * segment's score z = log(e^v0 + sum_o e^vo) with v0 = bias + tau q.mean
 * and vo = tau_out q.k_o; with the responsibilities e^(v - z) and
 * gs = softmax(z)_s - mass_s, dL/dtau = sum_s gs r0 q.mean, and so on. */
static double outliers_loss_grad(const problem *p, const eg_learned *w, const outlier_set *os, int batch0,
                                 int batch, double *g)
{
    size_t d = (size_t)p->d, m = w->cfg.mode == EG_LEARNED_MEAN8 ? 0 : (size_t)w->cfg.n_reps;
    double *z = malloc(sizeof(double) * p->nseg * 2), *r0 = z ? z + p->nseg : NULL;
    float *a = malloc(sizeof(float) * p->nseg * (1 + m)), *b = a ? a + p->nseg : NULL;
    if (!z || !a) { free(z); free(a); return NAN; }
    double loss = 0, gt = 0, go = 0, gb = 0;
    int used = 0;
    for (int bi = 0; bi < batch; bi++) {
        int i = (batch0 + bi) % p->nq;
        size_t c0 = p->c0[i], c1 = p->c1[i], n = c1 - c0;
        if (c1 <= c0) continue;
        used++;
        const float *q = p->cal->queries + (size_t)i * d;
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)n, (int)d, 1.0f, os->mean + c0 * d, (int)d, q, 1, 0.0f, a, 1);
        if (m)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)(n * m), (int)d, 1.0f, os->ok + c0 * m * d, (int)d, q, 1,
                        0.0f, b, 1);
        double mx = -INFINITY;
        for (size_t s = 0; s < n; s++) {
            double v0 = w->bias + (double)w->tau * a[s], vm = v0, sum = 0;
            for (size_t o = 0; o < m; o++) vm = fmax(vm, (double)w->tau_out * b[s * m + o]);
            sum = exp(v0 - vm);
            for (size_t o = 0; o < m; o++) sum += exp((double)w->tau_out * b[s * m + o] - vm);
            z[s] = vm + log(sum);
            r0[s] = exp(v0 - z[s]);
            mx = z[s] > mx ? z[s] : mx;
        }
        double zs = 0;
        for (size_t s = 0; s < n; s++) zs += exp(z[s] - mx);
        const float *ms = p->mass + (size_t)i * p->nseg + c0;
        for (size_t s = 0; s < n; s++) {
            double ps = exp(z[s] - mx) / zs, gs = ps - ms[s];
            if (ms[s] > 0) loss += ms[s] * (log(ms[s]) - log(ps > 1e-30 ? ps : 1e-30));
            gt += gs * r0[s] * a[s];
            gb += gs * r0[s];
            for (size_t o = 0; o < m; o++)
                go += gs * exp((double)w->tau_out * b[s * m + o] - z[s]) * b[s * m + o];
        }
    }
    free(z); free(a);
    double nu = used ? used : 1;
    if (g) { g[0] = gt / nu * w->tau; g[1] = go / nu * w->tau_out; g[2] = gb / nu; }
    return loss / nu;
}

int eg_learned_set_window(eg_learned *w, int n_sink_segments, int64_t recent_tokens)
{
    if (!w || n_sink_segments < 0 || recent_tokens < 0)
        return ix_fail(EG_IX_EINVAL, "set window: NULL weights or negative sinks %d / recent %lld",
                       n_sink_segments, (long long)recent_tokens);
    w->cfg.n_sink_segments = n_sink_segments;
    w->cfg.recent_tokens = recent_tokens;
    return 0;
}

/* The mixture's start: tau = tau_out = scale, bias the log count of the
 * tokens the mean stands for. MEAN8 keeps it: its training only sets the
 * steps. Fitting tau to the KL made it rank worse where the mean says
 * little (retrieval heads, 1M tokens: recall 0.0044 against 0.0133),
 * because ranking by MASS compares rows through the gain, and scale times
 * q.mean plus log S is what Jensen's inequality makes a lower bound of a
 * segment's log mass; so MASS ranks MEAN8 with the score scale. */
static eg_learned *mixture_start(const eg_learned_config *c, float scale)
{
    eg_learned *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->cfg = *c;
    w->tau = w->tau_out = scale;
    w->bias = (float)log((double)(c->seg_tokens - (c->mode == EG_LEARNED_MEAN8 ? 0 : c->n_reps)));
    return w;
}

int eg_learned_untrained(const eg_learned_config *c, float scale, eg_learned **out)
{
    int rc = ix_learned_check_config(c);
    if (rc < 0) return rc;
    if (!out) return ix_fail(EG_IX_EINVAL, "out is NULL");
    *out = NULL;
    if (c->mode != EG_LEARNED_OUTLIERS)
        return ix_fail(EG_IX_EINVAL, "learned mode %d needs training (only outliers has untrained weights)",
                       (int)c->mode);
    if (!(scale > 0.0f) || !isfinite(scale)) return ix_fail(EG_IX_EINVAL, "score scale %g", scale);
    if (!(*out = mixture_start(c, scale))) return ix_fail(EG_IX_ENOMEM, "out of memory");
    return 0;
}

/* OUTLIERS and MEAN8: the mixture's scalars (MEAN8 first sets its steps). */
static int train_mixture(const eg_learned_config *c, const eg_calibration *cal, eg_learned **out,
                         float *loss_curve)
{
    problem p;
    outlier_set os = { 0 };
    eg_learned *w = NULL;
    int rc = problem_init(&p, c, cal);
    if (rc < 0) goto done;
    if (!(w = mixture_start(c, cal->scale))) { rc = ix_fail(EG_IX_ENOMEM, "out of memory"); goto done; }
    if (c->mode == EG_LEARNED_MEAN8 && (rc = mean8_steps(&p, w)) < 0) goto done;
    if ((rc = mixture_set(&p, w, &os)) < 0) goto done;
    double th[3] = { log(w->tau), log(w->tau_out), w->bias }, m1[3] = { 0 }, v1[3] = { 0 };
    int batch = p.nq < IX_BATCH ? p.nq : IX_BATCH;
    for (int step = 0; step < c->steps; step++) {
        double g[3];
        double loss = outliers_loss_grad(&p, w, &os, (int)(((int64_t)step * batch) % p.nq), batch, g);
        if (loss != loss) { rc = ix_fail(EG_IX_ENOMEM, "out of memory in training"); goto done; }
        if (loss_curve) loss_curve[step] = (float)loss;
        if (c->mode == EG_LEARNED_MEAN8) continue;   /* nothing to fit: see mixture_start */
        adam_step_d(th, m1, v1, g, 3, c->lr, step);
        w->tau = (float)exp(th[0]);
        w->tau_out = (float)exp(th[1]);
        w->bias = (float)th[2];
    }
    if (!isfinite(w->tau) || !isfinite(w->tau_out) || !isfinite(w->bias) || !(w->tau > 0) || !(w->tau_out > 0)) {
        rc = ix_fail(EG_IX_ENONFINITE, "training diverged (lr %g too large?)", c->lr);
        goto done;
    }
    *out = w;
    w = NULL;
done:
    eg_learned_free(w);
    free(os.mean); free(os.ok);
    problem_free(&p);
    return rc;
}

int eg_learned_train(const eg_learned_config *c, const eg_calibration *cal, eg_learned **out,
                     float *loss_curve)
{
    int rc = ix_learned_check_config(c);
    if (rc < 0) return rc;
    if (!out) return ix_fail(EG_IX_EINVAL, "out is NULL");
    *out = NULL;
    if (c->mode == EG_LEARNED_OUTLIERS || c->mode == EG_LEARNED_MEAN8) return train_mixture(c, cal, out, loss_curve);
    problem p;
    rc = problem_init(&p, c, cal);
    if (rc < 0) { problem_free(&p); return rc; }
    int d = c->dim, r = c->rank;
    size_t T = p.nseg * p.S, rd = (size_t)r * d;
    eg_learned *w = calloc(1, sizeof *w);
    float *buf = malloc(sizeof(float) * (rd * 8 + (size_t)d * d * 3 + T * r + T));
    if (w) {
        w->cfg = *c;
        w->wq = malloc(sizeof(float) * rd);
        w->wk = malloc(sizeof(float) * rd);
        if (c->mode == EG_LEARNED_PQ) w->codebook = malloc(sizeof(float) * (r / IX_PQ_SUB) * IX_PQ_K * IX_PQ_SUB);
    }
    if (!w || !buf || !w->wq || !w->wk || (c->mode == EG_LEARNED_PQ && !w->codebook)) {
        free(buf); eg_learned_free(w); problem_free(&p);
        return ix_fail(EG_IX_ENOMEM, "out of memory for training");
    }
    float *gq = buf, *gk = gq + rd, *m1 = gk + rd, *v1 = m1 + 2 * rd, *cov = v1 + 2 * rd;
    float *tmp = cov + (size_t)d * d, *pk = tmp + (size_t)d * d * 2, *tok = pk + T * r;
    /* Init: both projections on the top eigenvectors of the sum of the
     * trace-normalised query and key covariances. */
    float *ck = tmp;
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, d, p.nq, 1.0f, cal->queries, d, 0.0f, cov, d);
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, d, (int)T, 1.0f, cal->keys, d, 0.0f, ck, d);
    double trq = 0, trk = 0;
    for (int i = 0; i < d; i++) { trq += cov[i * d + i]; trk += ck[i * d + i]; }
    for (int i = 0; i < d; i++)
        for (int j = i; j < d; j++) {
            float v = (float)(cov[i * d + j] / (trq > 0 ? trq : 1) + ck[i * d + j] / (trk > 0 ? trk : 1));
            cov[i * d + j] = cov[j * d + i] = v;
        }
    top_eigvecs(cov, d, r, c->seed, w->wq, tmp);
    memcpy(w->wk, w->wq, sizeof(float) * rd);
    w->tau = cal->scale;
    /* Adam over (wq, wk) packed as 2*rd floats, and log tau. */
    memset(m1, 0, sizeof(float) * 4 * rd);
    double mt = 0, vt = 0, logtau = log(w->tau);
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    for (int step = 0; step < c->steps; step++) {
        double gt = 0;
        /* Minibatches of IX_BATCH queries in turn: many calibration queries
         * at the cost of a few per step, and less overfitting. */
        int batch = p.nq < IX_BATCH ? p.nq : IX_BATCH;
        double loss = loss_grad(&p, w, pk, tok, gq, gk, &gt, (int)(((int64_t)step * batch) % p.nq), batch);
        if (loss != loss) { rc = ix_fail(EG_IX_ENOMEM, "out of memory in training"); goto fail; }
        if (loss_curve) loss_curve[step] = (float)loss;
        double bc1 = 1 - pow(b1, step + 1), bc2 = 1 - pow(b2, step + 1);
        float *wp[2] = { w->wq, w->wk }, *gp[2] = { gq, gk };
        for (int k = 0; k < 2; k++)
            for (size_t j = 0; j < rd; j++) {
                float g = gp[k][j];
                float *mm = &m1[k * rd + j], *vv = &v1[k * rd + j];
                *mm = (float)(b1 * *mm + (1 - b1) * g);
                *vv = (float)(b2 * *vv + (1 - b2) * g * g);
                wp[k][j] -= (float)(c->lr * (*mm / bc1) / (sqrt(*vv / bc2) + eps));
            }
        adam_step_d(&logtau, &mt, &vt, &gt, 1, c->lr, step);
        w->tau = (float)exp(logtau);
    }
    if (!ix_all_finite(w->wq, rd) || !ix_all_finite(w->wk, rd) || !isfinite(w->tau)) {
        rc = ix_fail(EG_IX_ENONFINITE, "training diverged (lr %g too large?)", c->lr);
        goto fail;
    }
    if (c->mode == EG_LEARNED_PQ) {
        ix_project(w->wk, r, d, cal->keys, T, pk);
        for (int j = 0; j < r / IX_PQ_SUB; j++)
            kmeans_pq(pk + j * IX_PQ_SUB, T, (size_t)r,
                      w->codebook + (size_t)j * IX_PQ_K * IX_PQ_SUB, c->seed + (uint64_t)j);
    }
    free(buf);
    problem_free(&p);
    *out = w;
    return 0;
fail:
    free(buf);
    eg_learned_free(w);
    problem_free(&p);
    return rc;
}

int eg_learned_loss(const eg_learned *w, const eg_calibration *cal, double *kl)
{
    if (!w || !kl) return ix_fail(EG_IX_EINVAL, "weights or output is NULL");
    problem p;
    int rc = problem_init(&p, &w->cfg, cal);
    if (rc < 0) { problem_free(&p); return rc; }
    if (w->cfg.mode == EG_LEARNED_OUTLIERS || w->cfg.mode == EG_LEARNED_MEAN8) {
        outlier_set os = { 0 };
        rc = mixture_set(&p, w, &os);
        if (rc == 0) *kl = outliers_loss_grad(&p, w, &os, 0, p.nq, NULL);
        if (rc == 0 && *kl != *kl) rc = ix_fail(EG_IX_ENOMEM, "out of memory");
        free(os.mean); free(os.ok);
        problem_free(&p);
        return rc;
    }
    size_t T = p.nseg * p.S;
    float *pk = malloc(sizeof(float) * T * (w->cfg.rank + 1));
    if (!pk) { problem_free(&p); return ix_fail(EG_IX_ENOMEM, "out of memory"); }
    *kl = loss_grad(&p, w, pk, pk + T * w->cfg.rank, NULL, NULL, NULL, 0, p.nq);
    free(pk);
    problem_free(&p);
    return 0;
}
