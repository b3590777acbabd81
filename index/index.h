/* index.h: Engram's relevance router (the one public header of index/).
 *
 * For each query the router picks, per layer and kv-head, the few sealed
 * segments whose keys will take the attention mass, from small per-segment
 * summaries, and bounds the mass it may have missed. index/ never touches
 * the store: it turns a segment's keys into summary bytes
 * (eg_summary_compute), and scores queries against a route table, an
 * in-RAM contiguous array of those summaries (eg_route_table_*). The engine
 * stores the bytes with memory/ and rebuilds tables from them.
 *
 * Routers (eg_router_kind):
 *  quest     per-channel min and max of the segment's keys, stored as f16
 *            rounded outward; score = sum_c max(q_c min_c, q_c max_c), an
 *            upper bound of q.k for every key of the segment. 4*dim/S bytes
 *            per token.
 *  ball      quest's box and one f32: the radius r of the segment's keys
 *            around the box's centre c, rounded up ((4*dim + 4)/S bytes
 *            per token stored). Held in RAM as the centre's int8 codes and
 *            r: d + 13 bytes a segment against quest's 2d + 9, the bytes
 *            a decode step streams. Score = q.c + beta |q| r (beta
 *            0..1, eg_route_opts.ball_beta), ranked by MAX as quest's;
 *            its bound q.c + |q| r holds for every key
 *            (Cauchy-Schwarz). A negative stored radius means "not
 *            measured": the box's half-diagonal serves, a looser ball.
 *            Quest and ball are the routers whose tables bound the mass:
 *            the lost-mass bound uses one of them.
 *  centroid  the mean key (f16); score = q.mean. 2*dim/S bytes per token.
 *  learned   per (layer, kv-head) trained projections of queries and keys to
 *            r dims (16..32); a segment keeps product-quantised codes of its
 *            projected keys per token (r/8 bytes per token) or a few int8
 *            representative vectors; score = max over what it keeps.
 *            Or (outliers mode) the f16 mean of a segment's keys but its
 *            n_reps farthest from the mean, and those keys q8; score =
 *            log(e^(bias + tau q.mean) + sum_o e^(tau_out q.k_o)), the
 *            segment's log attention mass with most keys replaced by
 *            their mean, tau, tau_out and bias trained.
 *            (2*dim + n_reps*(4+dim))/S bytes per token.
 *  indexer   the model's own indexer (DeepSeek V3.2 style): per token an
 *            index key stored q8; per query index heads with weights; token
 *            score = sum_h w_h relu(q_h.k); segment score = max over tokens.
 *  oracle    exact per-segment attention mass given by the caller
 *            (evaluation only).
 *
 * Conventions
 * - Functions return 0 on success and a negative EG_IX_* code (-100..-199)
 *   on failure; outputs are taken by pointer. After a failure
 *   eg_index_last_error() gives this thread's message naming what was wrong.
 * - Ownership is written next to each declaration; "borrowed" pointers stay
 *   the caller's and are not kept after the call returns.
 * - Thread safety: a route table or learned weights may be read (selected,
 *   bounded, summarised with) from many threads at once; appending to or
 *   truncating a table needs the caller to exclude readers.
 * - Layouts are row-major: q [rows][dim], keys [tokens][dim].
 * - Segments are numbered from 0; segment s holds tokens [s*S, (s+1)*S).
 *   Only sealed (full) segments are routed; the open segment's tokens are
 *   the engine's and always attended.
 */
#ifndef ENGRAM_INDEX_H
#define ENGRAM_INDEX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ------------------------------------------------------------ */
enum {
    EG_IX_EINVAL = -100,     /* an argument is NULL or out of range */
    EG_IX_EDIM = -101,       /* a dimension is zero, too large, or does not match the table */
    EG_IX_ERANK = -102,      /* learned rank r outside EG_LEARNED_RANK_MIN..MAX */
    EG_IX_ENONFINITE = -103, /* NaN or Inf in keys, queries, weights or masses */
    EG_IX_EEMPTY = -104,     /* nothing to work on: zero tokens, zero segments, no calibration */
    EG_IX_EVERSION = -105,   /* serialized bytes of another format version */
    EG_IX_ECORRUPT = -106,   /* serialized bytes fail their checksum or are malformed */
    EG_IX_ENOMEM = -107,     /* allocation failed */
    EG_IX_EBUDGET = -108,    /* a budget of zero tokens */
    EG_IX_EKIND = -109,      /* unknown router kind, or an operation it does not support */
    EG_IX_ERANGE = -110,     /* a position or segment index beyond the table */
};
/* Static description of a code (any module's code gives "unknown" here). */
const char *eg_index_strerror(int code);
/* Message of this thread's last failing call in index/ (never NULL). */
const char *eg_index_last_error(void);

/* ---- limits -------------------------------------------------------------- */
#define EG_IX_DIM_MAX 1024          /* head_dim of keys and queries */
#define EG_IX_INDEX_DIM_MAX 256     /* indexer key dim */
#define EG_IX_INDEX_HEADS_MAX 128   /* indexer heads per query */
#define EG_IX_ROWS_MAX 4096         /* query rows per call */
#define EG_IX_GROUP 32              /* segments per hierarchy group */
#define EG_LEARNED_RANK_MIN 16
#define EG_LEARNED_RANK_MAX 32

typedef enum {
    EG_ROUTER_QUEST = 1,
    EG_ROUTER_CENTROID = 2,
    EG_ROUTER_LEARNED = 3,
    EG_ROUTER_INDEXER = 4,
    EG_ROUTER_ORACLE = 5,
    EG_ROUTER_BALL = 6,
} eg_router_kind;
/* "quest", "centroid", "learned", "indexer", "oracle", "ball"; NULL if unknown. */
const char *eg_router_name(eg_router_kind kind);
/* Returns EG_IX_EKIND for an unknown name. */
int eg_router_parse(const char *name, eg_router_kind *out);

/* ---- learned weights (one per layer and kv-head) ------------------------- */
typedef struct eg_learned eg_learned;

typedef enum {
    EG_LEARNED_PQ = 1,    /* per token: r/4 product-quantised 4-bit codes (4 dims, 16 centroids
                             each), two a byte: r/8 bytes; weights of the 8-bit format of
                             before (256 centroids of 8 dims) are refused as corrupt */
    EG_LEARNED_REPS = 2,  /* per segment: n_reps int8 vectors of r dims (k-means in projected space) */
    EG_LEARNED_OUTLIERS = 3, /* per segment: f16 mean of the keys but the n_reps farthest (L2) from
                                the segment's mean, and those n_reps keys as q8; no projection */
    EG_LEARNED_MEAN8 = 4, /* per segment: the mean key as int8 codes on per-channel steps the
                             training sets from the calibration keys (dim bytes: a quarter of
                             quest's); score q.mean, ranked with the score scale as centroid;
                             no projection, no per-segment scale */
} eg_learned_mode;

typedef struct {
    int dim;              /* key/query head dim, 1..EG_IX_DIM_MAX */
    int rank;             /* PQ, REPS: r, EG_LEARNED_RANK_MIN..MAX, a multiple of 8 for PQ
                             (OUTLIERS and MEAN8 ignore it) */
    eg_learned_mode mode;
    int n_reps;           /* REPS: vectors, OUTLIERS: outlier keys per segment; 1..8 (default 1) */
    int seg_tokens;       /* S the weights are trained for (16..256) */
    int steps;            /* optimisation steps (default 200) */
    float lr;             /* Adam step size (default 0.01) */
    uint64_t seed;        /* initialisation and sampling (default 1) */
    int n_sink_segments;  /* segments excluded from training as always attended (default 1) */
    int64_t recent_tokens;/* likewise the recent window (default 256) */
} eg_learned_config;
void eg_learned_config_init(eg_learned_config *c, int dim, int seg_tokens);

/* Calibration data for training: one kv-head's keys of a session and queries
 * (any q heads of that kv-head) with their absolute positions. The target
 * is the dense attention mass per segment over the segments a query can
 * route (sealed, visible, outside sinks and recent window). */
typedef struct {
    const float *keys;        /* [n_tokens][dim], borrowed, as attention sees them */
    int64_t n_tokens;
    const float *queries;     /* [n_queries][dim], borrowed */
    const int64_t *q_pos;     /* [n_queries] absolute positions, < n_tokens */
    int n_queries;
    float scale;              /* attention score scale, e.g. 1/sqrt(dim) */
} eg_calibration;

/* Train weights on cal. loss_curve: NULL or [c->steps] filled with the mean
 * KL (nats) at each step. *out is the caller's: free with eg_learned_free.
 * Errors: EG_IX_EINVAL, EG_IX_EDIM, EG_IX_ERANK, EG_IX_ENONFINITE,
 * EG_IX_EEMPTY (no query can route any segment), EG_IX_ENOMEM. */
int eg_learned_train(const eg_learned_config *c, const eg_calibration *cal,
                     eg_learned **out, float *loss_curve);
/* Weights that need no training: for EG_LEARNED_OUTLIERS the exact
 * mixture (tau = tau_out = scale, bias = log(S - n_reps)), what training
 * starts from; summaries made under them equal those under trained weights
 * of the same config, since only scoring uses the three scalars. *out
 * freed with eg_learned_free. Errors: EG_IX_EINVAL (another mode: PQ and
 * REPS need training; scale not finite and positive), the config's errors
 * as eg_learned_train, EG_IX_ENOMEM. */
int eg_learned_untrained(const eg_learned_config *c, float scale, eg_learned **out);
/* Which segments training and eg_learned_loss leave out of the target as
 * always attended (the config's n_sink_segments and recent_tokens); the
 * scores do not change. Errors: EG_IX_EINVAL (NULL w, negative values). */
int eg_learned_set_window(eg_learned *w, int n_sink_segments, int64_t recent_tokens);
/* Mean KL of the weights on cal (the same loss training reports). */
int eg_learned_loss(const eg_learned *w, const eg_calibration *cal, double *kl);
void eg_learned_free(eg_learned *w);
/* Bytes of the summary of one segment under w. */
size_t eg_learned_summary_bytes(const eg_learned *w);
const eg_learned_config *eg_learned_get_config(const eg_learned *w);

/* Serialize: *bytes is malloc'd, the caller frees it with free(). The blob
 * carries a magic, a format version and a checksum. */
int eg_learned_save(const eg_learned *w, void **bytes, size_t *n);
/* Errors: EG_IX_EVERSION (another version), EG_IX_ECORRUPT (checksum,
 * length, shapes), EG_IX_ENONFINITE, EG_IX_ENOMEM. *out freed with
 * eg_learned_free. */
int eg_learned_load(const void *bytes, size_t n, eg_learned **out);

/* ---- summaries ------------------------------------------------------------- */
/* What a table is built for. dim is the key dim (index key dim for indexer);
 * learned needs w (borrowed; it must outlive every table made with it). */
typedef struct {
    eg_router_kind kind;
    int dim;
    int seg_tokens;           /* S, 16..256 */
    const eg_learned *learned;
    /* Quest tables in RAM: 0 (default) keeps int8 codes with power-of-two
     * scales, rounded outward from the stored halves (2d + 9 bytes a
     * segment instead of 4d; scores a little looser, still upper bounds;
     * integer kernels); 1 keeps the stored f16 halves and scores in f32.
     * The stored summary bytes are the same either way. Ball tables are
     * always int8 (this field is ignored for them). */
    int quest_f16;
} eg_summary_spec;

/* Bytes of one segment's summary (0 for oracle). */
int eg_summary_bytes(const eg_summary_spec *spec, size_t *bytes);
/* Bytes per token of the stored summaries (summary bytes / S). */
double eg_summary_bytes_per_token(const eg_summary_spec *spec);

/* Summary of one sealed segment from its keys [S][dim] (indexer: index keys
 * [S][dim]) as attention sees them, written to out (cap bytes).
 * Errors: EG_IX_EDIM (cap too small or spec invalid), EG_IX_ENONFINITE,
 * EG_IX_EKIND (oracle has no summaries). */
int eg_summary_compute(const eg_summary_spec *spec, const float *keys, void *out, size_t cap);

/* ---- kernels --------------------------------------------------------------- */
/* The routing kernels that stream the table: "avx2" (AVX2, FMA and F16C)
 * when the CPU has them, "avx512" when it also has AVX-512F (the bound's
 * exp-sum), else "portable"; int8 quest tables also "avx512-vnni".
 * force_portable 1 selects the portable ones, 0 the CPU's
 * best again, 2 at most AVX2, -1 leaves the choice as it is. Every choice
 * gives int8 quest tables the same bits (integer arithmetic); the f16
 * kernels differ by rounding only. Returns the names in use ("f16
 * kernels/int8 kernels"). For tests and benchmarks; do not call it while
 * other threads route. */
const char *eg_index_kernels(int force_portable);

/* ---- route tables ---------------------------------------------------------- */
typedef struct eg_route_table eg_route_table;

/* *out freed with eg_route_table_free. Errors: EG_IX_EKIND, EG_IX_EDIM,
 * EG_IX_EINVAL (learned without weights, dim differing from theirs). */
int eg_route_table_create(const eg_summary_spec *spec, eg_route_table **out);
void eg_route_table_free(eg_route_table *t);
/* Append n segments' summaries (n * eg_summary_bytes bytes, in segment
 * order) and their document tags (NULL: tag 0). Oracle tables take only a
 * count (summaries NULL). Errors: EG_IX_ECORRUPT (a summary that is not
 * finite or not min <= max), EG_IX_ENOMEM; on error nothing is appended. */
int eg_route_table_append(eg_route_table *t, const void *summaries, size_t n,
                          const uint32_t *tags);
/* Room for n segments in all, allocated now: a table about to be filled
 * with a known count (a session resumed) grows once instead of doubling.
 * Errors: EG_IX_EINVAL, EG_IX_ENOMEM (the table is unchanged). */
int eg_route_table_reserve(eg_route_table *t, size_t n);
/* An int8 quest table (the default quest table) or a ball table as bytes,
 * to be stored and loaded instead of rebuilding it from the summaries:
 * magic, version, byte order, spec, the codes, scales, L1 sums, flags,
 * tags and channel weights (ball: and radii), and a checksum. *bytes malloc'd: the caller frees it.
 * Errors: EG_IX_EINVAL, EG_IX_EKIND (another kind of table), EG_IX_ENOMEM. */
int eg_route_table_save(const eg_route_table *t, void **bytes, size_t *len);
/* The table saved in bytes, for spec (borrowed; it must equal the saved
 * one). The group rows are recomputed from the codes, and the L1 sums,
 * scales, weights (and radii: finite, not negative) are checked against
 * what the encoder makes, so a table loaded stays a bound. *out freed with eg_route_table_free.
 * Errors: EG_IX_EINVAL, EG_IX_EVERSION (another version or byte order),
 * EG_IX_ECORRUPT (checksum, length, another spec, codes or scales the
 * encoder does not make), EG_IX_EKIND, EG_IX_ENOMEM. */
int eg_route_table_load(const eg_summary_spec *spec, const void *bytes, size_t len, eg_route_table **out);
/* Keep the first n segments (n <= count). */
int eg_route_table_truncate(eg_route_table *t, size_t n);
size_t eg_route_table_segments(const eg_route_table *t);
/* Ball tables: how many segments' summaries carried no measured radius
 * (negative: sealed before radii were stored), whose balls are their
 * boxes' half-diagonals, much looser; 0 for other tables. */
size_t eg_route_table_unmeasured(const eg_route_table *t);
/* Bytes the table holds in RAM (what one scan streams). */
size_t eg_route_table_ram_bytes(const eg_route_table *t);
const eg_summary_spec *eg_route_table_spec(const eg_route_table *t);

/* ---- selection --------------------------------------------------------------- */
/* The query rows of one call: all q heads of one kv-head, one or many
 * positions. Row r sees sealed segment s when s*S <= pos[r]. */
typedef struct {
    int n_rows;               /* 1..EG_IX_ROWS_MAX */
    const float *q;           /* [n_rows][dim], borrowed (quest, centroid, learned) */
    const int64_t *pos;       /* [n_rows] absolute positions, or NULL: all sealed segments visible */
    float scale;              /* attention score scale (the bound uses it), > 0 */
    /* indexer: per row n_index_heads index queries and weights */
    int n_index_heads;
    const float *index_q;     /* [n_rows][n_index_heads][dim] */
    const float *index_w;     /* [n_rows][n_index_heads] */
    /* oracle: exact attention mass per segment (summed over rows) */
    const float *oracle_mass; /* [segments] */
} eg_route_rows;

typedef struct {
    int64_t budget_tokens;    /* sealed tokens selected in all (forced included), > 0 */
    int n_sink_segments;      /* first segments always selected (default 1) */
    int64_t recent_tokens;    /* sealed segments overlapping the last recent_tokens
                                 before max(pos) are always selected (default 256) */
    const uint32_t *tags;     /* borrowed; NULL = no filter */
    int n_tags;               /* routed segments must carry one of these tags */
    int hierarchical;         /* quest: 1 = descend groups (same top-k as flat, default),
                                 0 = flat; other routers always scan flat */
    /* Optional helpers for long scans (quest, with eg_router_select_bound):
     * parallel_for(parallel_ctx, n, fn, arg) must run fn(arg, i) for every
     * i < n, on any threads, and return when all have returned; the call
     * then splits its scoring into up to parallel_parts parts. The parts
     * call no router entry and use no per-thread scratch. The answer is
     * the same bits with or without. NULL or parts <= 1: one thread. */
    void (*parallel_for)(void *parallel_ctx, int n, void (*fn)(void *arg, int i), void *arg);
    void *parallel_ctx;
    int parallel_parts;
    int aggregate;            /* eg_route_agg: how the rows' scores of a segment combine */
    /* ball: a segment ranks by q.c + ball_beta |q| r, between its centre's
     * score (0) and its bound (1); 0..1, eg_route_opts_init sets
     * EG_BALL_BETA. The centre alone misses needles (one strong key moves
     * the mean by 1/S of it), the bound alone favours wide segments; the
     * default is the value the recall bench measured best (docs/index.md). */
    float ball_beta;
} eg_route_opts;
#define EG_BALL_BETA 0.5f
/* How a call's rows (q heads, positions) rank a segment together.
 * MAX ranks by the largest raw score any row gives it. MASS reads each
 * row's scores as log attention mass (times the router's scale: the score
 * scale for quest, centroid and learned MEAN8, the trained tau for PQ and REPS;
 * OUTLIERS scores and index scores are log mass already) and ranks by the
 * segment's share of each row's estimated mass over the row's visible
 * segments, summed over rows: the criterion of the oracle, which sums the
 * rows' true shares. MAX lets the row with the largest logits choose for
 * all (docs/index.md has the recall both give). MASS scans flat (quest's
 * hierarchy bounds MAX only); the oracle always ranks by its given mass. */
typedef enum {
    EG_ROUTE_AGG_AUTO = 0,    /* default: MAX for quest and ball (the hierarchy), MASS for centroid, learned,
                                 indexer */
    EG_ROUTE_AGG_MAX = 1,
    EG_ROUTE_AGG_MASS = 2,
} eg_route_agg;
void eg_route_opts_init(eg_route_opts *o);

typedef struct {
    int64_t *segments;        /* [n]: n_forced forced (ascending), then routed by score */
    float *scores;            /* [n] aggregated router score (+inf forced): MAX the max over
                                 rows; MASS the log of the summed estimated shares (<= log rows) */
    size_t n, n_forced;
    size_t n_visible;         /* sealed segments visible to the latest row */
    size_t scored;            /* segment summaries scored (hierarchy: groups too) */
} eg_route_selection;

/* Select segments: forced ones, then the highest-scoring visible segments
 * that pass the tag filter, until budget_tokens (ties: lower segment
 * first), ranked as o->aggregate says. sel's arrays are malloc'd: release
 * with eg_route_selection_free. Forced segments are kept even when they
 * alone exceed the budget. Errors: EG_IX_EINVAL (also an aggregate out of
 * range), EG_IX_EDIM, EG_IX_EBUDGET, EG_IX_ENONFINITE (rows), EG_IX_ERANGE
 * (negative position), EG_IX_ENOMEM. */
int eg_router_select(const eg_route_table *t, const eg_route_rows *rows,
                     const eg_route_opts *o, eg_route_selection *sel);
void eg_route_selection_free(eg_route_selection *sel);

/* Raw scores of every segment for every row into out [n_rows][segments]
 * (segments invisible to a row get -inf). For tests and tools. Quest
 * scores include the rounding slack of f32 arithmetic, so each is at least
 * the exact max of q.k over the segment's keys; ball scores are its
 * ranking scores under the default EG_BALL_BETA (q.c + beta |q| r, at
 * least that of the decoded centre), not bounds. */
int eg_router_score_all(const eg_route_table *t, const eg_route_rows *rows, float *out);

/* ---- lost-mass bound ---------------------------------------------------------- */
/* For each row r and prefix length i = 0..n_order of sel's routed part,
 * log_ub[r*(n_order+1) + i] = log of an upper bound on sum exp(scale q_r.k)
 * over the row's visible sealed tokens outside the forced segments and
 * routed[0..i). n_order = sel->n - sel->n_forced. quest must be a quest
 * or ball table over the same segments (the selection may come from any
 * router); a ball table bounds each segment by q.c + |q| r.
 * -inf when nothing is left out. Cost: one group scan plus the groups that
 * can matter. */
int eg_route_unselected_bound(const eg_route_table *quest, const eg_route_rows *rows,
                              const eg_route_selection *sel, double *log_ub);
/* eg_router_select and eg_route_unselected_bound in one call on a quest
 * or ball table: each summary is scored once and serves both, so a decode step
 * streams the table once. The selection equals eg_router_select's; *log_ub
 * ([n_rows][sel->n - sel->n_forced + 1], malloc'd: the caller frees it with
 * free()) is a bound like eg_route_unselected_bound's. On error nothing is
 * left allocated. Errors: those of both, and EG_IX_EKIND for another table. */
int eg_router_select_bound(const eg_route_table *quest, const eg_route_rows *rows,
                           const eg_route_opts *o, eg_route_selection *sel, double **log_ub);
/* eg_router_select_bound in three steps, so that the scans of several
 * tables (a layer's kv-heads) can be shared out over threads in equal
 * parts instead of a table per thread:
 *   eg_route_prep_begin   validates, scores the table's group rows and
 *                         lists the groups whose segments the answer will
 *                         need (for the bound: every group that can matter);
 *   eg_route_prep_score   scores items [i0, i1) of that list (n_items of
 *                         them), on any thread, concurrently with other
 *                         ranges; it uses no per-thread scratch and cannot
 *                         fail;
 *   eg_route_prep_finish  selects and bounds as eg_router_select_bound
 *                         (same selection; a bound as valid), scoring what
 *                         the list did not cover.
 * rows and o's arrays are borrowed until finish; the table must not change
 * in between. eg_route_prep_free releases p (NULL is a no-op), finished or
 * not. Errors of begin and finish: those of eg_router_select_bound (on
 * error begin leaves *p NULL). */
typedef struct eg_route_prep eg_route_prep;
int eg_route_prep_begin(const eg_route_table *quest, const eg_route_rows *rows, const eg_route_opts *o,
                        eg_route_prep **p);
size_t eg_route_prep_items(const eg_route_prep *p);
void eg_route_prep_score(eg_route_prep *p, size_t i0, size_t i1);
int eg_route_prep_finish(eg_route_prep *p, eg_route_selection *sel, double **log_ub);
void eg_route_prep_free(eg_route_prep *p);

/* Fraction of mass outside the selection, bounded: given the log upper
 * bound of what was left out and the exact log-sum-exp of the scaled scores
 * of what was attended, returns 1 / (1 + exp(lse_selected - log_ub)). */
double eg_lost_mass_bound(double log_ub_unselected, double lse_selected);
/* The max_lost mode: the shortest prefix i of the routed order (0..n_order)
 * whose bound is at most max_lost for every row; n_order if none is (the
 * budget ended first). log_ub as above; lse_sel in the same layout: the
 * log-sum-exp of each row's attended scaled scores with forced segments,
 * routed[0..i) and whatever else the caller attends (the open segment).
 * *worst_bound: the largest row bound at the chosen prefix. */
int eg_route_prefix_for_bound(const double *log_ub, const double *lse_sel, int n_rows,
                              size_t n_order, double max_lost, size_t *n_prefix,
                              double *worst_bound);

#ifdef __cplusplus
}
#endif
#endif
