/* rope.c: rotary position embedding, both layouts, angles in double. */
#include "en_internal.h"
#include <math.h>
#include <string.h>

int en_rope_init(en_rope *r, int mode, uint32_t rot_dims, float theta, uint32_t dim)
{
    memset(r, 0, sizeof *r);
    if (mode == EG_ROPE_NONE) return 0;
    if (mode != EG_ROPE_HALF && mode != EG_ROPE_INTERLEAVED)
        return en_fail(EG_EN_EOPTION, "unknown RoPE mode %d", mode);
    if (rot_dims == 0) rot_dims = dim;
    if (dim == 0 || dim > EG_HEAD_DIM_MAX || rot_dims > dim || rot_dims % 2)
        return en_fail(EG_EN_EOPTION, "RoPE: rotary dims %u must be even and at most dim %u",
                       rot_dims, dim);
    if (!(theta > 1.0f) || !isfinite(theta))
        return en_fail(EG_EN_EOPTION, "RoPE: theta %g must be finite and above 1", (double)theta);
    r->mode = mode;
    r->rot = rot_dims;
    r->dim = dim;
    for (uint32_t i = 0; i < rot_dims / 2; i++)
        r->inv_freq[i] = pow((double)theta, -2.0 * i / (double)rot_dims);
    return 0;
}

/* Index of the two members of pair i. */
static inline void pair_idx(const en_rope *r, uint32_t i, uint32_t *a, uint32_t *b)
{
    if (r->mode == EG_ROPE_INTERLEAVED) { *a = 2 * i; *b = 2 * i + 1; }
    else { *a = i; *b = i + r->rot / 2; }
}

void en_rope_table(const en_rope *r, double p, double *cs)
{
    for (uint32_t i = 0; i < r->rot / 2; i++) {
        double ang = p * r->inv_freq[i];
        cs[2 * i] = cos(ang);
        cs[2 * i + 1] = sin(ang);
    }
}

void en_rope_apply_table(const en_rope *r, const double *cs, float *x, size_t n)
{
    for (size_t t = 0; t < n; t++) {
        float *v = x + t * r->dim;
        for (uint32_t i = 0; i < r->rot / 2; i++) {
            uint32_t a, b;
            pair_idx(r, i, &a, &b);
            double c = cs[2 * i], s = cs[2 * i + 1], x0 = v[a], x1 = v[b];
            v[a] = (float)(x0 * c - x1 * s);
            v[b] = (float)(x0 * s + x1 * c);
        }
    }
}

void en_rope_one(const en_rope *r, float *x, double p)
{
    if (r->mode == EG_ROPE_NONE) return;
    double cs[EG_HEAD_DIM_MAX];
    en_rope_table(r, p, cs);
    en_rope_apply_table(r, cs, x, 1);
}

void en_rope_run(const en_rope *r, float *x, size_t n, int64_t pos0)
{
    if (r->mode == EG_ROPE_NONE || n == 0) return;
    /* The angle of pos0 + t by rotating the angle of pos0 t times by one
     * step: two sincos per pair instead of one per token; in double the
     * drift over a segment stays near 1e-14. */
    for (uint32_t i = 0; i < r->rot / 2; i++) {
        uint32_t a, b;
        pair_idx(r, i, &a, &b);
        double f = r->inv_freq[i], c = cos((double)pos0 * f), s = sin((double)pos0 * f);
        double dc = cos(f), ds = sin(f);
        for (size_t t = 0; t < n; t++) {
            float *v = x + t * r->dim;
            double x0 = v[a], x1 = v[b];
            v[a] = (float)(x0 * c - x1 * s);
            v[b] = (float)(x0 * s + x1 * c);
            double nc = c * dc - s * ds;
            s = s * dc + c * ds;
            c = nc;
        }
    }
}

int eg_rope_apply(int mode, uint32_t rot_dims, float theta, float *x, size_t n, uint32_t dim,
                  const int64_t *pos, int64_t pos0)
{
    if (!x || (n && !dim)) return en_fail(EG_EN_EINVAL, "eg_rope_apply: NULL vectors or zero dim");
    if (mode == EG_ROPE_NONE) return en_fail(EG_EN_EOPTION, "eg_rope_apply: mode none rotates nothing");
    en_rope r;
    int rc = en_rope_init(&r, mode, rot_dims, theta, dim);
    if (rc) return rc;
    if (!pos) { en_rope_run(&r, x, n, pos0); return 0; }
    for (size_t t = 0; t < n; t++) en_rope_one(&r, x + t * dim, (double)pos[t]);
    return 0;
}
