/* table.c: route tables, the in-RAM contiguous arrays of summaries that a
 * query is scored against, and the quest hierarchy's group rows. */
#include "ix_internal.h"
#include <float.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static uint16_t get_h(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
/* ix_f16_to_f32, inline for the table-building loops. */
static inline float half_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ffu, x;
    if (e == 0) {
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    x = e == 31 ? (sign | 0x7f800000u | (m << 13)) : (sign | ((e + 112) << 23) | (m << 13));
    float f;
    memcpy(&f, &x, 4);
    return f;
}
static float get_f16(const uint8_t *p) { return ix_f16_to_f32(get_h(p)); }

/* Inf in a stored quest bound means "beyond f16"; FLT_MAX is still a bound
 * for finite keys and keeps 0 * bound = 0 in the scoring dot. The kernels
 * read inf as FLT_MAX. */
static float clamp_inf(float v) { return v > FLT_MAX ? FLT_MAX : (v < -FLT_MAX ? -FLT_MAX : v); }
static float hval(uint16_t h) { return clamp_inf(ix_f16_to_f32(h)); }
/* An integer with the order of the half's value (-0 = +0); not for NaN.
 * Comparing these instead of converting keeps table building cheap. */
static inline uint16_t hkey(uint16_t h)
{
    if ((h & 0x7fffu) == 0) return 0x8000u;
    return (h & 0x8000u) ? (uint16_t)~h : (uint16_t)(h | 0x8000u);
}
static inline int hnan(uint16_t h) { return (h & 0x7fffu) > 0x7c00u; }

int eg_route_table_create(const eg_summary_spec *spec, eg_route_table **out)
{
    size_t rb;
    int rc = eg_summary_bytes(spec, &rb);
    if (rc < 0) return rc;
    if (!out) return ix_fail(EG_IX_EINVAL, "out is NULL");
    eg_route_table *t = calloc(1, sizeof *t);
    if (!t) return ix_fail(EG_IX_ENOMEM, "out of memory");
    t->spec = *spec;
    t->row_bytes = rb;
    switch (spec->kind) {
    case EG_ROUTER_QUEST: t->width = 2 * spec->dim; break;
    case EG_ROUTER_BALL: t->width = spec->dim; break;
    case EG_ROUTER_CENTROID: t->width = spec->dim; break;
    case EG_ROUTER_LEARNED:
        t->width = spec->learned->cfg.mode == EG_LEARNED_OUTLIERS || spec->learned->cfg.mode == EG_LEARNED_MEAN8
                       ? spec->dim : spec->learned->cfg.rank;
        break;
    default: t->width = 0; break;
    }
    *out = t;
    return 0;
}

void eg_route_table_free(eg_route_table *t)
{
    if (!t) return;
    free(t->htab); free(t->otab); free(t->hgtab); free(t->gabs); free(t->tags); free(t->codes); free(t->ikeys); free(t->iscale);
    free(t->q8); free(t->q8s); free(t->q8l1); free(t->q8inf); free(t->gl1); free(t->q8rad); free(t->gR); free(t->q8unk);
    free(t);
}

size_t eg_route_table_segments(const eg_route_table *t) { return t ? t->n : 0; }
size_t eg_route_table_unmeasured(const eg_route_table *t) { return t && ix_ball(t) ? t->n_unk : 0; }
const eg_summary_spec *eg_route_table_spec(const eg_route_table *t) { return t ? &t->spec : NULL; }

/* Rows of htab per segment. */
static size_t htab_rows(const eg_route_table *t)
{
    return (t->spec.kind == EG_ROUTER_QUEST && !ix_quest_q8(t)) || t->spec.kind == EG_ROUTER_CENTROID ||
           ix_learned_outliers(t) || ix_learned_mean8(t);
}

/* Rows of otab per segment (learned OUTLIERS: the outliers; REPS: the
 * representatives). */
static size_t otab_rows(const eg_route_table *t)
{
    if (ix_learned_outliers(t) || (t->spec.kind == EG_ROUTER_LEARNED && t->spec.learned->cfg.mode == EG_LEARNED_REPS))
        return (size_t)t->spec.learned->cfg.n_reps;
    return 0;
}

size_t eg_route_table_ram_bytes(const eg_route_table *t)
{
    if (!t) return 0;
    size_t n = t->n, s = (size_t)t->spec.seg_tokens, b = n * (htab_rows(t) + otab_rows(t)) * t->width * sizeof(uint16_t);
    size_t ng = (n + EG_IX_GROUP - 1) / EG_IX_GROUP;
    if (ix_bound_table(t)) b += ng * (t->width * sizeof(uint16_t) + sizeof(float));
    if (ix_q8_table(t)) b += n * (ix_q8_quads(t) * 4 + sizeof(float) + sizeof(int32_t) + 1) + ng * sizeof(float);
    if (ix_ball(t)) b += n * sizeof(float) + ng * sizeof(float);
    if (t->codes) b += n * s * ix_pq_bytes(t->spec.learned->cfg.rank);
    if (t->ikeys) b += n * s * ((size_t)t->spec.dim + sizeof(float));
    return b;
}

static int grow(void **p, size_t elem, size_t n)
{
    void *q = realloc(*p, elem * (n ? n : 1));
    if (!q) return -1;
    *p = q;
    return 0;
}

/* The int8 codes, most of a table's bytes, which a decode step streams
 * whole: from 2 MB up they start on a 2 MB boundary and ask for
 * transparent huge pages over their whole 2 MB spans (a hint: where THP
 * is off they get plain pages). Why: with the caches flushed, a scan of
 * plain pages takes a TLB miss every 4 KB and its page walk goes to
 * memory (1M tokens of 32/8/128, 2 MB of codes a head: the decode step
 * 1.742 -> 1.686 ms, A/B medians, 8 of 8 pairs). Smaller arrays keep realloc: rounding
 * them up would waste what they save. old_bytes of *p are kept. */
#define HUGE_BYTES ((size_t)2 << 20)
static int grow_codes(int8_t **p, size_t old_bytes, size_t new_bytes)
{
    if (new_bytes < HUGE_BYTES) return grow((void **)p, 1, new_bytes);
    void *q = NULL;
    if (posix_memalign(&q, HUGE_BYTES, new_bytes)) return -1;
#ifdef MADV_HUGEPAGE
    (void)madvise(q, new_bytes & ~(HUGE_BYTES - 1), MADV_HUGEPAGE);
#endif
    if (*p) memcpy(q, *p, old_bytes < new_bytes ? old_bytes : new_bytes);
    free(*p);
    *p = (int8_t *)q;
    return 0;
}

/* Blocked f16 rows: old_n -> n rows (capacities), new blocks zeroed so
 * that the kernels never read uninitialised lanes. */
static int grow_blocked(uint16_t **p, size_t width, size_t old_n, size_t n)
{
    size_t ob = (old_n + IX_BLK - 1) / IX_BLK, nb = (n + IX_BLK - 1) / IX_BLK;
    if (grow((void **)p, sizeof(uint16_t) * width * IX_BLK, nb)) return -1;
    if (nb > ob) memset(*p + ob * width * IX_BLK, 0, (nb - ob) * width * IX_BLK * sizeof(uint16_t));
    return 0;
}

/* Grow every array of the table to exactly cap segments (> t->cap). A
 * failure part way leaves the arrays already grown larger, which is
 * harmless: t->cap still says what all of them hold. */
static int grow_to(eg_route_table *t, size_t cap)
{
    size_t s = (size_t)t->spec.seg_tokens, d = (size_t)t->spec.dim, w = (size_t)t->width;
    if (grow((void **)&t->tags, sizeof(uint32_t), cap)) return -1;
    size_t G = EG_IX_GROUP;
    if (htab_rows(t) && grow_blocked(&t->htab, w, t->cap, cap)) return -1;
    size_t m = otab_rows(t);
    if (m && grow_blocked(&t->otab, w, t->cap * m, cap * m)) return -1;
    if (ix_bound_table(t) &&
        (grow_blocked(&t->hgtab, w, (t->cap + G - 1) / G, (cap + G - 1) / G) ||
         grow((void **)&t->gabs, sizeof(float), (cap + EG_IX_GROUP - 1) / EG_IX_GROUP))) return -1;
    if (ix_q8_table(t)) {
        /* Per-segment arrays in whole blocks (the kernels read a block's
         * lanes at once), new parts zeroed: no uninitialised lanes. */
        size_t bb = ix_q8_quads(t) * IX_BLK * 4, ob = (t->cap + IX_BLK - 1) / IX_BLK, nb = (cap + IX_BLK - 1) / IX_BLK;
        if (grow_codes(&t->q8, ob * bb, nb * bb) || grow((void **)&t->q8s, sizeof(float) * IX_BLK, nb) ||
            grow((void **)&t->q8l1, sizeof(int32_t) * IX_BLK, nb) || grow((void **)&t->q8inf, IX_BLK, nb) ||
            grow((void **)&t->gl1, sizeof(float), (cap + G - 1) / G))
            return -1;
        if (ix_ball(t) && (grow((void **)&t->q8rad, sizeof(float) * IX_BLK, nb) ||
                           grow((void **)&t->gR, sizeof(float), (cap + G - 1) / G) ||
                           grow((void **)&t->q8unk, 1, cap)))
            return -1;
        if (ix_ball(t) && nb > ob) memset(t->q8rad + ob * IX_BLK, 0, (nb - ob) * IX_BLK * sizeof(float));
        if (nb > ob) {
            memset(t->q8 + ob * bb, 0, (nb - ob) * bb);
            memset(t->q8s + ob * IX_BLK, 0, (nb - ob) * IX_BLK * sizeof(float));
            memset(t->q8l1 + ob * IX_BLK, 0, (nb - ob) * IX_BLK * sizeof(int32_t));
            memset(t->q8inf + ob * IX_BLK, 0, (nb - ob) * IX_BLK);
        }
    }
    if (t->spec.kind == EG_ROUTER_LEARNED && t->spec.learned->cfg.mode == EG_LEARNED_PQ &&
        grow((void **)&t->codes, s * ix_pq_bytes(t->width), cap)) return -1;
    if (t->spec.kind == EG_ROUTER_INDEXER &&
        (grow((void **)&t->ikeys, s * d, cap) || grow((void **)&t->iscale, s * sizeof(float), cap)))
        return -1;
    t->cap = cap;
    return 0;
}

static int reserve(eg_route_table *t, size_t need)
{
    if (need <= t->cap) return 0;
    size_t cap = t->cap ? t->cap : 64;
    while (cap < need) cap *= 2;
    return grow_to(t, cap);
}

/* hkey without branches, so that the lane loops below vectorise. */
static inline uint16_t hkey_lane(uint16_t h)
{
    uint16_t neg = (uint16_t)(0u - (h >> 15));
    uint16_t k = (uint16_t)(h ^ (neg | 0x8000u));
    return (h & 0x7fffu) ? k : 0x8000u;
}

/* The half of an order key (a zero comes back as +0). */
static inline uint16_t key_half(uint16_t k)
{
    return k == 0x8000u ? 0 : (k & 0x8000u) ? (uint16_t)(k & 0x7fffu) : (uint16_t)~k;
}

/* Group rows of an int8 table: per channel the max (min) of its segments'
 * dequantized values rounded up (down) to f16, so that a group's score
 * bounds each segment's exact dot; gl1 the largest s (L1 + 32), +inf when a
 * segment's summary holds an inf. */
static void regroup_q8(eg_route_table *t, size_t from)
{
    size_t w = (size_t)t->width, d = w / 2;
    for (size_t g = from / EG_IX_GROUP; g * EG_IX_GROUP < t->n; g++) {
        size_t s0 = g * EG_IX_GROUP, s1 = s0 + EG_IX_GROUP < t->n ? s0 + EG_IX_GROUP : t->n;
        float a = 0.0f, l1 = 0.0f;
        for (size_t s = s0; s < s1; s++) {
            /* + 32: the J + 64 of qscan.c's rounding up of large sums */
            float v = t->q8inf[s] ? INFINITY : t->q8s[s] * (float)(t->q8l1[s] + 32);
            l1 = v > l1 ? v : l1;
        }
        float mx[2 * EG_IX_DIM_MAX], mn[2 * EG_IX_DIM_MAX];
        ix_q8_group(t, s0, s1, mx, mn);
        for (size_t c = 0; c < w; c++) {
            float best = c < d ? mx[c] : mn[c];
            uint16_t h = ix_f32_to_f16_dir(best, c < d ? 1 : -1);
            if ((h & 0x7fffu) == 0x7c00u) t->has_inf = 1;
            t->hgtab[ix_hidx(g, c, w)] = h;
            a = fabsf(hval(h)) > a ? fabsf(hval(h)) : a;
        }
        t->gabs[g] = a;
        t->gl1[g] = l1;
    }
}

/* Recompute group rows for groups covering segments [from, n): per
 * channel the max of the maxes (the first d of a row) and the min of the
 * mins, lane by lane over the group's blocks of IX_BLK segments. */
static void regroup(eg_route_table *t, size_t from)
{
    if (ix_ball(t)) { ix_ball_regroup(t, from); return; }
    if (ix_quest_q8(t)) { regroup_q8(t, from); return; }
    size_t w = (size_t)t->width, d = w / 2;
    for (size_t g = from / EG_IX_GROUP; g * EG_IX_GROUP < t->n; g++) {
        size_t s0 = g * EG_IX_GROUP, s1 = s0 + EG_IX_GROUP < t->n ? s0 + EG_IX_GROUP : t->n;
        size_t b0 = s0 / IX_BLK, b1 = (s1 + IX_BLK - 1) / IX_BLK, tail = s1 - (b1 - 1) * IX_BLK;
        float a = 0.0f;
        for (size_t c = 0; c < w; c++) {
            uint16_t hi[IX_BLK], lo[IX_BLK];
            for (int l = 0; l < IX_BLK; l++) { hi[l] = 0; lo[l] = 0xffffu; }
            for (size_t b = b0; b < b1; b++) {
                const uint16_t *p = t->htab + b * w * IX_BLK + c * IX_BLK;
                int lanes = b + 1 < b1 ? IX_BLK : (int)tail;
                if (lanes == IX_BLK)
                    for (int l = 0; l < IX_BLK; l++) {
                        uint16_t k = hkey_lane(p[l]);
                        hi[l] = k > hi[l] ? k : hi[l];
                        lo[l] = k < lo[l] ? k : lo[l];
                    }
                else
                    for (int l = 0; l < lanes; l++) {
                        uint16_t k = hkey_lane(p[l]);
                        hi[l] = k > hi[l] ? k : hi[l];
                        lo[l] = k < lo[l] ? k : lo[l];
                    }
            }
            uint16_t best = c < d ? hi[0] : lo[0];
            for (int l = 1; l < IX_BLK; l++) best = c < d ? (hi[l] > best ? hi[l] : best) : (lo[l] < best ? lo[l] : best);
            uint16_t h = key_half(best);
            t->hgtab[ix_hidx(g, c, w)] = h;
            a = fabsf(hval(h)) > a ? fabsf(hval(h)) : a;
        }
        t->gabs[g] = a;
    }
}

void ix_table_regroup(eg_route_table *t, size_t from) { regroup(t, from); }

static int check_q8_rows(const uint8_t *p, size_t rows, size_t stride)
{
    for (size_t i = 0; i < rows; i++) {
        float sc;
        memcpy(&sc, p + i * stride, 4);
        if (!(sc >= 0.0f && sc <= FLT_MAX)) return -1;
    }
    return 0;
}

static int validate(const eg_route_table *t, const uint8_t *p, size_t n)
{
    size_t d = (size_t)t->spec.dim, s = (size_t)t->spec.seg_tokens;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *row = p + i * t->row_bytes;
        switch (t->spec.kind) {
        case EG_ROUTER_BALL:
        case EG_ROUTER_QUEST:
            if (t->spec.kind == EG_ROUTER_BALL) {   /* its radius, then the box as quest's */
                float r;
                memcpy(&r, row + 4 * d, 4);
                if (r != r) return ix_fail(EG_IX_ECORRUPT, "ball summary %zu: radius is NaN", i);
            }
            for (size_t c = 0; c < d; c++) {
                uint16_t hx = get_h(row + 2 * c), hn = get_h(row + 2 * (d + c));
                if (hnan(hx) || hnan(hn) || hkey(hn) > hkey(hx))
                    return ix_fail(EG_IX_ECORRUPT, "quest summary %zu channel %zu: min %g > max %g or NaN", i, c,
                                   ix_f16_to_f32(hn), ix_f16_to_f32(hx));
            }
            break;
        case EG_ROUTER_CENTROID:
            for (size_t c = 0; c < d; c++)
                if (!isfinite(get_f16(row + 2 * c)))
                    return ix_fail(EG_IX_ECORRUPT, "centroid summary %zu channel %zu not finite", i, c);
            break;
        case EG_ROUTER_INDEXER:
            if (check_q8_rows(row, s, 4 + d))
                return ix_fail(EG_IX_ECORRUPT, "indexer summary %zu has a bad scale", i);
            break;
        case EG_ROUTER_LEARNED:
            if (ix_learned_outliers(t)) {
                for (size_t c = 0; c < d; c++)
                    if (!isfinite(get_f16(row + 2 * c)))
                        return ix_fail(EG_IX_ECORRUPT, "learned summary %zu mean channel %zu not finite", i, c);
                if (check_q8_rows(row + 2 * d, otab_rows(t), 4 + d))
                    return ix_fail(EG_IX_ECORRUPT, "learned summary %zu has a bad outlier scale", i);
                break;
            }
            if (t->spec.learned->cfg.mode == EG_LEARNED_REPS &&
                check_q8_rows(row, (size_t)t->spec.learned->cfg.n_reps, 4 + (size_t)t->width))
                return ix_fail(EG_IX_ECORRUPT, "learned summary %zu has a bad scale", i);
            break;
        default: break;
        }
    }
    return 0;
}

static void decode_row(eg_route_table *t, size_t seg, const uint8_t *row)
{
    size_t d = (size_t)t->spec.dim, s = (size_t)t->spec.seg_tokens, w = (size_t)t->width;
    if (ix_q8_table(t)) {   /* the stored halves (inf kept) into codes */
        float v[2 * EG_IX_DIM_MAX], r;
        for (size_t c = 0; c < 2 * d; c++) v[c] = half_f32(get_h(row + 2 * c));
        if (ix_ball(t)) {
            memcpy(&r, row + 4 * d, 4);
            ix_q8_put_ball(t, seg, v, r);
            t->q8unk[seg] = r < 0;
            t->n_unk += r < 0;
        } else {
            ix_q8_put_row(t, seg, v);
        }
        return;
    }
    if (ix_learned_mean8(t)) {   /* int8 codes on the weights' steps, read as f16 (finite: |code| <= 127) */
        for (size_t c = 0; c < w; c++)
            t->htab[ix_hidx(seg, c, w)] = ix_f32_to_f16_dir(ix_mean8_value(t->spec.learned->step[c], (int8_t)row[c]), 0);
        return;
    }
    if (htab_rows(t)) {   /* quest, centroid, the mean of learned OUTLIERS: f16 as stored */
        for (size_t c = 0; c < w; c++) {
            uint16_t h = get_h(row + 2 * c);
            t->htab[ix_hidx(seg, c, w)] = h;
            if ((h & 0x7fffu) == 0x7c00u) t->has_inf = 1;
        }
    }
    size_t m = ix_learned_outliers(t) ? otab_rows(t) : 0;
    for (size_t o = 0; o < m; o++) {   /* OUTLIERS: q8 to f16 (7 bits fit in 11; beyond f16 is inf) */
        const uint8_t *v = row + 2 * d + o * (4 + d);
        float sc;
        memcpy(&sc, v, 4);
        for (size_t c = 0; c < d; c++) {
            uint16_t h = ix_f32_to_f16_dir(sc * (float)(int8_t)v[4 + c], 0);
            t->otab[ix_hidx(seg * m + o, c, w)] = h;
            if ((h & 0x7fffu) == 0x7c00u) t->has_inf = 1;
        }
    }
    if (htab_rows(t)) return;
    switch (t->spec.kind) {
    case EG_ROUTER_INDEXER:
        for (size_t k = 0; k < s; k++) {
            size_t tok = seg * s + k;   /* blocked channel-major (iscan.c) */
            memcpy(&t->iscale[tok], row + k * (4 + d), 4);
            int8_t *blk = t->ikeys + tok / IX_BLK * d * IX_BLK + tok % IX_BLK;
            for (size_t c = 0; c < d; c++) blk[c * IX_BLK] = (int8_t)row[k * (4 + d) + 4 + c];
        }
        break;
    case EG_ROUTER_LEARNED:
        if (t->codes) {   /* PQ: byte jb of every token of the segment together, [jb][S] (score.c) */
            size_t mb = ix_pq_bytes((int)w);
            for (size_t k = 0; k < s; k++)
                for (size_t jb = 0; jb < mb; jb++) t->codes[(seg * mb + jb) * s + k] = row[k * mb + jb];
        } else {
            size_t nr = otab_rows(t);   /* REPS: q8 representatives to blocked f16 rows */
            for (size_t k = 0; k < nr; k++) {
                const uint8_t *v = row + k * (4 + w);
                float sc;
                memcpy(&sc, v, 4);
                for (size_t j = 0; j < w; j++) {
                    uint16_t h = ix_f32_to_f16_dir(sc * (float)(int8_t)v[4 + j], 0);
                    t->otab[ix_hidx(seg * nr + k, j, w)] = h;
                    if ((h & 0x7fffu) == 0x7c00u) t->has_inf = 1;
                }
            }
        }
        break;
    default: break;
    }
}

int eg_route_table_append(eg_route_table *t, const void *summaries, size_t n, const uint32_t *tags)
{
    if (!t) return ix_fail(EG_IX_EINVAL, "table is NULL");
    if (n == 0) return 0;
    if (t->spec.kind != EG_ROUTER_ORACLE && !summaries)
        return ix_fail(EG_IX_EINVAL, "summaries are NULL");
    if (n > ((size_t)1 << 40)) return ix_fail(EG_IX_EINVAL, "%zu segments is beyond any session", n);
    int rc = validate(t, summaries, n);
    if (rc < 0) return rc;
    if (reserve(t, t->n + n)) return ix_fail(EG_IX_ENOMEM, "out of memory growing the table");
    const uint8_t *p = summaries;
    for (size_t i = 0; i < n; i++) {
        t->tags[t->n + i] = tags ? tags[i] : 0;
        if (p) decode_row(t, t->n + i, p + i * t->row_bytes);
    }
    size_t from = t->n;
    t->n += n;
    if (ix_bound_table(t)) regroup(t, from);
    return 0;
}

int eg_route_table_reserve(eg_route_table *t, size_t n)
{
    if (!t) return ix_fail(EG_IX_EINVAL, "table is NULL");
    if (n > ((size_t)1 << 40)) return ix_fail(EG_IX_EINVAL, "%zu segments is beyond any session", n);
    if (n <= t->cap) return 0;
    return grow_to(t, n) ? ix_fail(EG_IX_ENOMEM, "out of memory growing the table") : 0;
}

int eg_route_table_truncate(eg_route_table *t, size_t n)
{
    if (!t) return ix_fail(EG_IX_EINVAL, "table is NULL");
    if (n > t->n) return ix_fail(EG_IX_ERANGE, "truncate to %zu segments of %zu", n, t->n);
    if (ix_ball(t)) {   /* the unmeasured among the segments kept */
        t->n_unk = 0;
        for (size_t s = 0; s < n; s++) t->n_unk += t->q8unk[s];
    }
    t->n = n;
    if (ix_bound_table(t) && n) regroup(t, n - 1);
    if (!n) t->q8w_set = 0;   /* the next segment 0 sets the weights again */
    return 0;
}
