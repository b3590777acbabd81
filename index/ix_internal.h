/* ix_internal.h: what the files of index/ share (private to index/). */
#ifndef ENGRAM_IX_INTERNAL_H
#define ENGRAM_IX_INTERNAL_H
#include "index.h"
#include <math.h>

/* Record this thread's message and return code (printf-style). */
int ix_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* f16 with a chosen rounding: dir > 0 rounds up (toward +inf), dir < 0
 * down, 0 to nearest even. Overflow goes to +-inf only in the rounding
 * direction; otherwise to the largest finite half. */
uint16_t ix_f32_to_f16_dir(float f, int dir);
float ix_f16_to_f32(uint16_t h);

/* x rounded up to a float (the float cast rounds to nearest): the bounds
 * built in double stay bounds. NaN stays NaN. */
static inline float ix_f32_up(double x)
{
    float f = (float)x;
    return (double)f < x ? nextafterf(f, INFINITY) : f;
}

/* 1 if all n values are finite. */
int ix_all_finite(const float *x, size_t n);

/* out[s*nr + r] = dot(tab + s*width, qp + r*width) for s < n, r < nr.
 * tab [n][width], qp [nr][width]. Row results depend only on the row and
 * qp (a fixed summation order), so scoring a sub-range gives the same bits
 * as scoring everything: the hierarchy relies on it. */
void ix_score_rows(const float *tab, size_t n, size_t width, const float *qp, int nr,
                   float *out);
/* Scores of rows [s0, s1) of a blocked f16 table (simd.c): tab holds
 * blocks of IX_BLK rows, each block channel-major ([width][IX_BLK]), so a
 * vector load reads one channel of IX_BLK rows. out[r*ld + (s-s0)] =
 * sum over c in order of tab(s, c) * qp[r][c] (FMA), +-inf read as
 * +-FLT_MAX (clamp must be 1 when the table holds an inf); a NaN from
 * overflow (inf - inf) comes out as +inf, still a bound. A row's score
 * depends only on the row and qp, whatever range is scored with it. AVX2
 * or portable, chosen at run time (eg_index_kernels); they differ by
 * rounding only (FMA or not). */
#define IX_BLK 8
static inline size_t ix_hidx(size_t s, size_t c, size_t width)
{
    return (s / IX_BLK) * width * IX_BLK + c * IX_BLK + s % IX_BLK;
}
void ix_score_rows_h(const uint16_t *tab, size_t s0, size_t s1, size_t width, const float *qp, int nr,
                     float *out, size_t ld, int clamp);
/* sum of exp(u[i]) for u[i] <= 0 (-inf allowed), summed in double. Each
 * term's relative error is at most IX_EXP_REL (the vector exp's reduction
 * and degree-6 polynomial: 2.2e-7 measured, test_sum_exp_accuracy; the
 * AVX-512 exp-sum's f32 partial sums of 8 terms a lane: 7 2^-24 more,
 * 4.2e-7); terms below -87 count as 0,
 * which callers make negligible by taking u relative to its max. */
#define IX_EXP_REL 4e-6
double ix_sum_exp(const float *u, size_t n);
/* The terms x_i = fmaf(scale, sc[i], base[i / G]) for i < n with
 * skip[i] == 0 (one base per group of G; G a multiple of 8 takes the
 * vector kernel): *m = their max (-inf if none), returns the sum of
 * exp(x_i - m) (0 if none; 1 if m is +inf). Against exact arithmetic on
 * sc, scale and base, each term's relative error is at most
 * IX_EXP_REL + 2^-24 (2|m| + max|base| + 174) (float rounding of x_i and
 * of x_i - m, which is at most 87 where it counts); terms below m - 87
 * count as 0, at most n e^-87 of the sum. */
double ix_sum_exp_terms(const float *sc, const uint8_t *skip, size_t n, float scale, const float *base,
                        size_t G, float *m);
/* The same terms with the ball's lift and a reference: x_i =
 * fmaf(scale, v_i, base[i / G]) with v_i = sc[i] + rq * rad[i] (multiply,
 * then add, as the int8 kernels' lift) when rad, else sc[i]. With ref finite (an
 * estimate of the max, at or above it), the sum of exp(x_i - ref) in one
 * pass, *m = ref, when that sum is in [2^-60, 2^60); otherwise, or ref
 * not finite, as ix_sum_exp_terms. Errors as there with m = *m, and terms
 * below m - 87 at most n 2^-125.5 in all. */
typedef struct {
    const float *sc;
    const uint8_t *skip;
    size_t n;
    float scale;
    const float *base;
    size_t G;
    const float *rad;         /* NULL: no lift */
    float rq;
    float ref;                /* NaN: none */
} ix_terms;
double ix_sum_exp_lifted(const ix_terms *a, float *m);
/* agg[i] = max of sc[r * ld + i] over the rows r that see segment a + i
 * (a + i < vis[r]), -inf where none does; i < n. */
void ix_rows_max(const float *sc, size_t ld, int nr, const size_t *vis, size_t a, size_t n, float *agg);
/* agg[i] = log of the sum over the rows r that see segment a + i of
 * e^(gain sc[r*ld + i] - shift[r]) (fused multiply-add), -inf where none
 * does, +inf where a term is; a term inf - inf counts as e^0. Vector exp
 * and log agree with libm's to about 1e-6 relative of the result. */
void ix_rows_lse(const float *sc, size_t ld, int nr, const size_t *vis, size_t a, size_t n, float gain,
                 const float *shift, float *agg);
/* MASS in one exp per row and segment (select.c). ix_exp_row: *m = the
 * max of x[0..n), e[i] = exp(gain x[i] - gain m) (0 below e^-87; a row
 * whose max is +inf: 1 on its infinite scores, 0 elsewhere), returns the
 * sum of e in double. ix_mass_combine: agg[i] = log of the sum over the
 * rows that see segment a + i of e[r*ld + i] w[r], NaN where that sum is
 * below IX_MASS_TINY (the caller computes those exactly). */
#define IX_MASS_TINY 1e-30f
double ix_exp_row(const float *x, size_t n, float gain, float *e, float *m);
void ix_mass_combine(const float *e, size_t ld, int nr, const size_t *vis, size_t a, size_t n, const float *w,
                     float *agg);
/* The i < n with v[i] >= thr and v[i] > -inf, ascending, into idx (room
 * for n); returns how many. */
size_t ix_at_least(const float *v, size_t n, float thr, uint32_t *idx);
/* Learned OUTLIERS: o[i] := log(e^(bias + tau o[i]) + sum_{j<m} e^(tau_out
 * x[i*m + j])) for i < n, 1 <= m <= 8; where the largest term is +-inf or
 * NaN, o[i] is that term. Vector exp and log agree with libm's to about
 * 1e-6 relative of the result. */
void ix_lse_mix(float *o, const float *x, size_t n, size_t m, float tau, float bias, float tau_out);
/* out[r] = dot(a, b[r]) for int8 a (times scale) against f32 rows b. */
float ix_dot_i8(const int8_t *a, const float *b, int n);
/* The same sum of f32 a (int8 widened, say): same order, same bits. */
float ix_dot_f(const float *a, const float *b, int n);

/* Top-k with deterministic ties (higher score first, then lower index):
 * a bounded min-heap. */
typedef struct { float score; int64_t seg; } ix_cand;
typedef struct { ix_cand *h; size_t n, k; } ix_heap;
/* 1 when (a) ranks strictly worse than (b). */
static inline int ix_worse(ix_cand a, ix_cand b)
{ return a.score < b.score || (a.score == b.score && a.seg > b.seg); }
void ix_heap_push(ix_heap *hp, ix_cand c);
/* Sort the heap's content best first (destroys the heap order). */
void ix_heap_sort_desc(ix_heap *hp);

/* Table internals shared by select/bound/table. */
struct eg_route_table {
    eg_summary_spec spec;
    size_t n, cap;            /* segments */
    int width;                /* values per row of htab, otab or tab */
    uint16_t *htab;           /* f16 as stored, blocked (ix_hidx): quest rows of 2*dim, max then min;
                                 centroid rows of dim; learned OUTLIERS rows of dim (the mean).
                                 Blocks past n are zero or stale. */
    uint16_t *otab;           /* learned OUTLIERS: n*n_reps rows of dim (the outliers); REPS:
                                 n*n_reps rows of rank (the representatives); blocked */
    int has_inf;              /* htab holds +-inf (beyond f16): kernels clamp to +-FLT_MAX */
    uint32_t *tags;           /* [n] */
    /* quest hierarchy: groups of EG_IX_GROUP segments, same layout as htab */
    uint16_t *hgtab;          /* ceil(n/G) rows of 2*dim, blocked */
    float *gabs;              /* [ceil(n/G)] largest |bound| in the group (rounding slack) */
    /* quest as int8 (qscan.c; spec.quest_f16 0): codes blocked by quads,
     * per segment the power-of-two scale, L1 of the codes and an infinite
     * flag; per channel the table's power-of-two weight (from segment 0);
     * per group the largest s (L1 + 32) of its segments (the margin between
     * a segment's score and the exact dot its group row bounds). */
    int8_t *q8;
    float *q8s;
    int32_t *q8l1;
    uint8_t *q8inf;
    float *gl1;
    /* ball (qscan.c): the int8 rows above hold the centre on d channels
     * (nearest codes); per segment the radius around the centre as the
     * codes give it (the stored radius plus the codes' distance from the
     * stored centre, rounded up; 0 where the segment is infinite), per
     * group the radius of a ball around the group row (hgtab, width d)
     * that holds every member's ball (+inf with an infinite member). */
    float *q8rad;
    float *gR;
    uint8_t *q8unk;           /* ball: [n] 1 where the summary's radius was not measured */
    size_t n_unk;             /* how many of segments [0, n) */
    int8_t q8w[EG_IX_DIM_MAX];
    float q8wf[EG_IX_DIM_MAX], q8wi[EG_IX_DIM_MAX];   /* 2^q8w and 2^-q8w */
    int q8w_set;
    /* learned PQ: codes [n*S][m]; indexer: q8 keys in blocks of IX_BLK tokens,
     * channel-major ([n*S/IX_BLK][dim][IX_BLK], iscan.c), and scales [n*S] */
    uint8_t *codes;
    int8_t *ikeys;
    float *iscale;
    size_t row_bytes;         /* summary bytes per segment */
};

/* What select and bound share about one call (select.c). */
typedef struct {
    const eg_route_table *t;
    const eg_route_rows *rows;
    int nr;
    size_t n_vis;             /* segments visible to the latest row */
    size_t n_sink, recent0;   /* forced: s < n_sink or s >= recent0 (within n_vis) */
    size_t *row_vis;          /* [nr] segments visible to each row */
    float *qp;                /* prepared rows: quest [nr][2d] (q+, q-), centroid [nr][d], learned [nr][r] */
    /* PQ: per row its lookup tables as bytes, [nr][m][16] (code c of
     * sub-vector j: lq = round((L_j(c) - min_c L_j) / step)), and per row
     * base = sum_j min_c L_j and step: a token's score is base + step *
     * the sum of its codes' bytes (score.c) */
    uint8_t *lutq;
    float *lut_base, *lut_step;   /* [nr] each; lut_base heads the allocation of all three */
    /* int8 quest (qscan.c): per row the 12-bit query codes [nr][4 nq],
     * (t/2, t), an infinite flag and |q|_1; one allocation, freed by qq */
    int16_t *qq;
    float *qt;
    uint8_t *qinf;
    double *ql1;              /* [nr] |q|_1 of each row (the hierarchy's slack) */
    float *qn;                /* [nr] |q|_2 of each row rounded up (ball tables) */
    float beta;               /* ball: selection score = centre's + beta |q| r (0..1) */
} ix_ctx;

/* ---- int8 quest tables (qscan.c) ----------------------------------------------- */
static inline int ix_quest_q8(const eg_route_table *t)
{ return t->spec.kind == EG_ROUTER_QUEST && !t->spec.quest_f16; }
static inline int ix_ball(const eg_route_table *t) { return t->spec.kind == EG_ROUTER_BALL; }
/* Tables of int8 rows scored by the kernels below: quest's box, the ball's centre. */
static inline int ix_q8_table(const eg_route_table *t) { return ix_quest_q8(t) || ix_ball(t); }
/* Tables whose scores bound q.k and that carry group rows: quest, ball. */
static inline int ix_bound_table(const eg_route_table *t)
{ return t->spec.kind == EG_ROUTER_QUEST || t->spec.kind == EG_ROUTER_BALL; }
/* Ball: codes of segment s from its box v [2d] (max then min) and the
 * stored radius (negative: unknown, the box's half-diagonal serves). */
void ix_q8_put_ball(eg_route_table *t, size_t s, const float *v, float radius);
/* Group rows and radii of a ball table from segment `from` on. */
void ix_ball_regroup(eg_route_table *t, size_t from);
/* Scores of groups [g0, g1) of a quest or ball table into out[r*ld + g -
 * g0]: each at least the exact q.k of every key of the group, up to the
 * f32 rounding ix_quest_slack covers (ball: q.centre + |q| R rounded up). */
void ix_group_scores(const ix_ctx *c, size_t g0, size_t g1, float *out, size_t ld);
size_t ix_q8_quads(const eg_route_table *t);
/* Codes of segment s from its quest row v [2d] (max then min, as f32 of
 * the stored halves); the first call sets the channel weights. */
void ix_q8_put_row(eg_route_table *t, size_t s, const float *v);
int8_t ix_q8_code(const eg_route_table *t, size_t s, size_t c);
/* Dequantized value of channel c of segment s (exact; quest: +-inf for a
 * segment whose summary holds an inf, ball: NaN for an infinite segment). */
float ix_q8_value(const eg_route_table *t, size_t s, size_t c);
/* Per channel over segments [s0, s1) of one group: mx[c] the largest
 * dequantized value of the max channels (c < d), mn[c] the smallest of
 * the min channels (c >= d); +-inf where a segment is infinite. */
void ix_q8_group(const eg_route_table *t, size_t s0, size_t s1, float *mx, float *mn);
/* Quantize c's prepared rows (c->qp) for the table (and |q|_2 for a ball). */
int ix_q8_rows(ix_ctx *c);
/* Scores of segments [s0, s1): out[r*ld + s - s0], each an upper bound of
 * the exact quest score (+inf for a segment or row out of range); ball:
 * at least q.c' for the decoded centre, plus (f |q|_2) r, multiplied
 * then added in the kernels' epilogue. A ball lift is two f32 roundings,
 * within ix_quest_slack, and a score takes at most two: f = 1 makes
 * bounds, beta the selection's scores, which the bound's exp-sum lifts by
 * 1 - beta (ix_sum_exp_lifted). */
void ix_q8_scores(const ix_ctx *c, size_t s0, size_t s1, float *out, size_t ld, float f);
/* Kernel level up to cap: 0 portable, 1 AVX2, 2 AVX-512 VNNI; its name. */
int ix_q8_level(int cap);
const char *ix_q8_kernel_name(int cap);
/* Recompute the quest group rows from segment `from` on (table.c). */
void ix_table_regroup(eg_route_table *t, size_t from);
/* Indexer scores of segments [s0, s1) into out[r*ld + s - s0] (iscan.c). */
void ix_indexer_scores(const ix_ctx *c, size_t s0, size_t s1, float *out, size_t ld);
/* The CPU has the AVX2 kernels' instructions (simd.c). */
int ix_simd_has_avx2(void);
/* The cap eg_index_kernels set (simd.c). */
int ix_simd_cap(void);
/* Member scores of a quest table, f16 or int8, or a ball table's bounds
 * (centre + |q| r) (score.c). */
void ix_quest_scores(const ix_ctx *c, size_t s0, size_t s1, float *out, size_t ld);
/* Per-row raw scores of segments [s0, s1) of c's table into out (row r at
 * out + r*ld), for every router kind (score.c); thread-safe on one ctx. */
void ix_score_range(const ix_ctx *c, size_t s0, size_t s1, float *out, size_t ld);
/* Per-thread scratch (scratch.c): a buffer of at least `bytes` for slot,
 * reused by the next get of the same slot on the same thread, so a caller
 * holds at most one buffer per slot at a time. Larger than IX_SCR_KEEP it
 * is malloc'd for the call alone. ix_buf_put releases it (frees what is
 * not kept). Returns 0, or -1 with b->p NULL when out of memory. */
#define IX_SCR_SLOTS 4
#define IX_SCR_KEEP ((size_t)4 << 20)
enum { IX_SCR_SC, IX_SCR_MARK, IX_SCR_TMP };
typedef struct { void *p; int owned; } ix_buf;
int ix_buf_get(ix_buf *b, int slot, size_t bytes);
void ix_buf_put(ix_buf *b);

/* Scores kept through one call so that select and bound score each
 * summary once (quest tables). Filled by ix_select when `want` is set and
 * n_vis * rows fits IX_CACHE_MAX floats; otherwise sc stays NULL and the
 * bound scores what it needs itself. */
#define IX_CACHE_MAX ((size_t)8 << 20)
typedef struct {
    int want;
    size_t n_vis;
    ix_buf scb;               /* holds sc (per-thread scratch) */
    float *sc;                /* [nr][n_vis] raw scores of segments in groups marked done */
    uint8_t *done;            /* [ceil(n_vis/G)] */
    float *gsc;               /* [nr][ceil(n_vis/G)] group scores, or NULL */
    int gsc_ready;            /* gsc already holds them (prep.c) */
} ix_cache;
void ix_cache_free(ix_cache *k);
/* eg_router_select, filling k when k && k->want. With keep, the call's
 * context is handed over on success (free it with ix_ctx_free). */
int ix_select(const eg_route_table *t, const eg_route_rows *rows, const eg_route_opts *o,
              eg_route_selection *sel, ix_cache *k, ix_ctx *keep);
/* ix_select on a context made by ix_ctx_init (kept; the caller frees it),
 * with a cache already allocated when k->sc is set (its done groups are
 * not scored again). */
int ix_select_ctx(const ix_ctx *c, const eg_route_opts *o, eg_route_selection *sel, ix_cache *k);
/* The bound of eg_router_select_bound from select's context and cache
 * (bound.c): log_ub [nr][n_order + 1]. */
int ix_bound_run(const ix_ctx *c, const eg_route_selection *sel, const ix_cache *k, double *log_ub);
/* Groups whose coarse term is this many nats below the largest coarse term
 * keep the coarse bound: refining them would change the total by < e^-12. */
#define IX_REFINE_NATS 12.0
/* Validates rows (and o, which may be NULL for defaults) against t. */
int ix_ctx_init(ix_ctx *c, const eg_route_table *t, const eg_route_rows *rw, const eg_route_opts *o);
void ix_ctx_free(ix_ctx *c);
int ix_forced(const ix_ctx *c, size_t s);
/* 1 when a call on t with options o ranks segments by MASS (eg_route_agg). */
int ix_agg_mass(const eg_route_table *t, const eg_route_opts *o);

/* Largest rounding error of a computed quest score against exact
 * arithmetic, plus that of a caller's own f32 q.k (bound.c). A ball's
 * bound score is exact int8 arithmetic plus at most two lifts of three
 * f32 roundings each (f |q|, times r, added), each at most 2^-24 |q|_1
 * gabs: 6 of the (4d + 8) 2^-24 |q|_1 gabs this allows, of which the
 * caller's d-term dot takes d and the group's f16 dot d more. gabs: the
 * largest |key channel| the group's rows allow. */
static inline double ix_quest_slack(int d, double q_l1, float gabs)
{
    /* largest rounding error of a computed quest score against the exact
     * one, plus that of the caller's own q.k (see the dot's summation): a
     * few ulps of |q|_1 * max|bound|. Inline: the bound makes one per
     * group and row. */
    return (2.0 * d + 4.0) * 0x1p-23 * q_l1 * (double)gabs;
}
/* A group's coarse term for one row: log(u S) for its u unselected
 * segments' tokens, plus the scaled group score and its slack. The bound
 * keeps it or refines the group (bound.c); prep lists the groups it would
 * refine (prep.c): one formula for both. */
static inline double ix_coarse_term(double log_uS, double scale, float gscore, int d, double q_l1, float gabs)
{
    return log_uS + scale * ((double)gscore + ix_quest_slack(d, q_l1, gabs));
}

/* Learned weights internals (learned.c, learned_io.c, summary.c). */
#define IX_PQ_SUB 4           /* dims per PQ sub-vector */
#define IX_PQ_K 16            /* centroids per sub-vector: 4-bit codes, two a byte */
static inline size_t ix_pq_bytes(int rank) { return (size_t)rank / (2 * IX_PQ_SUB); }   /* per token */
struct eg_learned {
    eg_learned_config cfg;
    float *wq;                /* [rank][dim] */
    float *wk;                /* [rank][dim] */
    float *codebook;          /* PQ: [rank/4][16][4] */
    float tau;                /* softmax temperature of segment scores (OUTLIERS: of the mean's) */
    float tau_out, bias;      /* OUTLIERS: the outliers' temperature; log weight of the mean */
    float *step;              /* MEAN8: [dim] per-channel step of the int8 mean (> 0) */
};
int ix_learned_check_config(const eg_learned_config *c);
/* 1 for a learned table in OUTLIERS mode. */
static inline int ix_learned_outliers(const eg_route_table *t)
{ return t->spec.kind == EG_ROUTER_LEARNED && t->spec.learned->cfg.mode == EG_LEARNED_OUTLIERS; }
/* 1 for a learned table in MEAN8 mode. */
static inline int ix_learned_mean8(const eg_route_table *t)
{ return t->spec.kind == EG_ROUTER_LEARNED && t->spec.learned->cfg.mode == EG_LEARNED_MEAN8; }
/* MEAN8: the value a table reads for code c on channel step st: f16 of
 * st * c, rounded to nearest (what training scores too). */
static inline float ix_mean8_value(float st, int8_t c) { return ix_f16_to_f32(ix_f32_to_f16_dir(st * (float)c, 0)); }
/* MEAN8 summary of one segment's keys k [s][d] on steps st [d]: codes
 * round(mean / step) clamped to +-127 into out (d bytes) when non-NULL,
 * and the values a table reads into mean [d] when non-NULL. */
void ix_mean8_summary(const float *k, int s, int d, const float *st, int8_t *out, float *mean);
/* OUTLIERS summary of one segment's keys k [s][d]: the m keys farthest
 * (L2) from the segment's mean (ties: lower token) and the mean of the
 * others. Writes the summary bytes to out when non-NULL, and when mean /
 * ok are non-NULL the values as a table decodes them: mean [d], ok [m][d]. */
void ix_outliers_summary(const float *k, int s, int d, int m, uint8_t *out, float *mean, float *ok);
/* Project rows x [n][dim] to out [n][rank] with w ([rank][dim]). */
void ix_project(const float *w, int rank, int dim, const float *x, size_t n, float *out);
/* Nearest PQ code of each sub-vector of a projected key, packed two a
 * byte (sub-vector 2i in the low nibble of byte i, 2i + 1 in the high). */
void ix_pq_encode(const eg_learned *w, const float *pk, uint8_t *codes);
#endif
