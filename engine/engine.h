/* engine.h: Engram's attention core (the one public header of engine/).
 *
 * The engine ties the store (memory/) and the router (index/) together:
 * sessions as a user sees them, where sealing a segment also stores its
 * router summaries in the same transaction; ATTEND (sparse attention over
 * the router's choice plus sinks, the recent window and the open segment,
 * with a bound on the attention mass left out); SELECT and FETCH for
 * engines that compute attention themselves; a dense reference; and the
 * exact merge of partial attentions.
 *
 * Conventions
 * - Functions return 0 on success and a negative code on failure; outputs
 *   are taken by pointer. Codes come from the module that failed: memory/
 *   (-1..-99, EG_E*), index/ (-100..-199, EG_IX_*) or the engine
 *   (-200..-299, EG_EN_*). eg_engine_strerror() describes any of them and
 *   eg_engine_last_error() gives this thread's message of the last failing
 *   engine call, naming what was wrong.
 * - Ownership is written next to each declaration; "borrowed" pointers stay
 *   the caller's and are not kept after the call returns.
 * - Thread safety: one engine and its session handles may be used from any
 *   number of threads. Calls on one session that read (attend, select,
 *   fetch, info) run concurrently; appends and truncates wait for them and
 *   exclude each other.
 * - Layouts are row-major. Queries of one call: [n_queries][n_q_heads][dim].
 *   Grouped-query attention: q head h reads kv-head h / (n_q_heads /
 *   n_kv_heads).
 */
#ifndef ENGRAM_ENGINE_H
#define ENGRAM_ENGINE_H

#include "index.h"
#include "memory.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ------------------------------------------------------------- */
enum {
    EG_EN_EINVAL = -200,     /* an argument is NULL or out of range */
    EG_EN_ESHAPE = -201,     /* a count or dimension does not match the session */
    EG_EN_ELAYER = -202,     /* layer out of range */
    EG_EN_EPOS = -203,       /* a query position beyond the session's tokens, or negative */
    EG_EN_EBUDGET = -204,    /* a token budget of zero or less */
    EG_EN_ENONFINITE = -205, /* NaN or Inf in queries, scale or options */
    EG_EN_EROUTER = -206,    /* router not available for attention (or its input missing) */
    EG_EN_EOPTION = -207,    /* option not valid for this session (remap without RoPE...) */
    EG_EN_ECLOSED = -208,    /* the session handle was closed, or the engine is closing */
    EG_EN_ENOMEM = -209,     /* allocation failed */
    EG_EN_ESEGMENT = -210,   /* a segment beyond the session's tokens */
};
/* Static description of any module's code (never NULL). */
const char *eg_engine_strerror(int code);
/* This thread's message of the last failing engine call (never NULL). */
const char *eg_engine_last_error(void);

/* ---- limits ------------------------------------------------------------- */
#define EG_EN_QUERIES_MAX 4096   /* query positions per call */
#define EG_EN_TRAIN_ROWS_MAX 4096 /* router training: queries x q heads per kv-head */
#define EG_EN_THREADS_MAX 64
#define EG_EN_POLL_US_MAX 100000  /* idle_poll_us */
#define EG_EN_POLL_MS_MAX 60000   /* idle_poll_ms */

/* ---- engine ------------------------------------------------------------- */
typedef struct eg_engine eg_engine;
typedef struct eg_engine_session eg_engine_session;

typedef struct {
    eg_store_options store;  /* map size, RAM cache tier, sync mode */
    int n_threads;           /* worker threads for heads; 0 = online cores (max 64) */
    size_t window_bytes;     /* per open session: segments kept in RAM across
                                queries; 0 = 256 MiB */
    int window_f32;          /* 1: keep them decoded to f32 (4 bytes per element;
                                no decode when attended). 0 (default): as stored
                                (q8: 1.125 bytes), decoded into cache-resident
                                scratch each time they are attended; keys of
                                RoPE sessions are kept rotated in f32 either way */
    int quest_f16;           /* 1: quest route tables keep the stored f16 halves
                                (4 bytes a channel of a segment, float scoring);
                                0 (default): int8 codes rounded outward (a little
                                looser, half the bytes, integer kernels). See
                                eg_summary_spec.quest_f16 */
    int idle_poll_us;        /* an idle worker checks for work this often (a timed
                                wait) for idle_poll_ms after its last task, then
                                sleeps until a call signals it. A call finding every
                                worker polling signals none: waking a sleeping
                                thread cost the caller 20-50 us on a VM, a tenth of
                                a 1M-token decode step of 9/3/64. Costs a timer
                                wakeup per interval while polling. 0 = 100;
                                -1 = never poll (sleep at once, as before). */
    int idle_poll_ms;        /* 0 = 20. Errors at open: EG_EN_EINVAL outside
                                -1..EG_EN_POLL_US_MAX or 0..EG_EN_POLL_MS_MAX. */
} eg_engine_options;
void eg_engine_options_init(eg_engine_options *o);

/* Open the data directory `path` (created if needed). opt may be NULL.
 * Sets OpenBLAS to one thread: the engine's own pool runs heads in parallel.
 * *out owned by the caller: eg_engine_close(). Errors: as eg_store_open,
 * EG_EN_ENOMEM. */
int eg_engine_open(const char *path, const eg_engine_options *opt, eg_engine **out);
/* Close sessions still open, the pool and the store. NULL is a no-op. */
int eg_engine_close(eg_engine *e);
/* The store underneath (borrowed; valid until eg_engine_close): for stats,
 * list, info by name, verify and sync. Append, truncate and age only
 * through the engine, or router summaries stop following their blocks. */
eg_store *eg_engine_store(eg_engine *e);

/* ---- sessions ----------------------------------------------------------- */
/* Create a session (shape, codec, RoPE, fingerprint: see memory.h).
 * Errors: as eg_session_create. */
int eg_engine_session_create(eg_engine *e, const char *name, const eg_session_config *cfg);
/* Open by name; fingerprint NULL skips the check. Opening a name already
 * open returns another handle to the same session. *out: close with
 * eg_engine_session_close. A handle's few bytes stay allocated until the
 * engine closes, so that using a closed handle gets EG_EN_ECLOSED, not a
 * crash. Errors: EG_ENOTFOUND, EG_EFINGERPRINT, EG_EN_ENOMEM. */
int eg_engine_session_open(eg_engine *e, const char *name, const char *fingerprint,
                           eg_engine_session **out);
/* Close a handle; the session's window and tables go with its last handle.
 * Errors: EG_EN_ECLOSED (already closed). */
int eg_engine_session_close(eg_engine_session *s);
int eg_engine_session_info(eg_engine_session *s, eg_session_info *out);
/* Drop (EG_EBUSY while any handle is open), fork: as memory.h. */
int eg_engine_session_drop(eg_engine *e, const char *name);
int eg_engine_session_fork(eg_engine *e, const char *parent, const char *child, uint64_t at);
/* Truncate to n_tokens; the router's tables and the window follow. */
int eg_engine_session_truncate(eg_engine_session *s, uint64_t n_tokens);
/* Append (req as eg_append in memory.h). Every segment this seals gets its
 * router summaries (quest, the ball's radius, centroid and the learned
 * router's outliers summary, computed from the keys as attention sees
 * them: decoded, and rotated when the session applies RoPE) in the same
 * transaction as its blocks. */
int eg_engine_append(eg_engine_session *s, const eg_append_req *req, uint64_t *out_n_tokens);

typedef struct {
    uint64_t attends, page_ins, window_hits, window_bytes, window_entries, window_evictions;
    /* quest and ball tables (one per layer and kv-head each) loaded from
     * the snapshot a close stored, and built from the summaries (a first
     * open, or a snapshot missing or refused) */
    uint64_t tables_from_snapshot, tables_rebuilt;
} eg_engine_session_stats;
int eg_engine_session_stats_get(eg_engine_session *s, eg_engine_session_stats *out);

/* ---- attention ---------------------------------------------------------- */
typedef struct {
    uint32_t layer;
    uint32_t n_queries;       /* positions in this call, 1..EG_EN_QUERIES_MAX */
    const float *q;           /* [n_queries][n_q_heads][head_dim_k], borrowed; before
                                 RoPE when the session applies RoPE, else as the
                                 keys were stored */
    const int64_t *pos;       /* [n_queries] absolute positions, borrowed */
    int include_self;         /* 1: a query at p also sees token p (it must exist) */
    float scale;              /* score scale; 0 = 1/sqrt(head_dim_k) */
    int64_t budget_tokens;    /* sealed tokens per kv-head, sinks and recent
                                 segments included (>0; default 2048) */
    int n_sink_segments;      /* default 1 */
    int64_t recent_tokens;    /* sealed segments overlapping the last recent_tokens
                                 are always attended (default 256); the open
                                 segment always is */
    double max_lost;          /* >0: add routed segments in score order only until
                                 every row's bound is <= max_lost (or the budget
                                 ends); 0 = attend the whole budget */
    int remap_positions;      /* RoPE sessions: sinks first, routed segments packed
                                 in order, the recent window at its true distance */
    eg_router_kind router;    /* EG_ROUTER_BALL (default since stop 22), _QUEST, _CENTROID, _LEARNED
                                 (outliers mode: see eg_engine_router_train) or
                                 _ORACLE; the bound comes from the ball's table
                                 when the ball routes, else from quest's */
    const float *oracle_mass; /* ORACLE: [n_kv_heads][n_sealed] mass per segment
                                 (eg_engine_attend_dense's seg_mass) */
    const uint32_t *tags;     /* routed segments restricted to these document tags */
    int n_tags;
    int aggregate;            /* eg_route_agg (index.h): how a kv-head's query rows rank a
                                 segment together; 0 = the router's own (MAX for quest
                                 and ball, MASS for centroid and learned) */
} eg_attend_req;
void eg_attend_req_init(eg_attend_req *r);

typedef struct {
    float *out;     /* [n_queries][n_q_heads][head_dim_v], caller's buffer */
    float *lse;     /* [n_queries][n_q_heads] log-sum-exp of the attended scaled
                       scores (-inf when the query sees no token); may be NULL */
    float *lost;    /* [n_queries][n_q_heads] upper bound on the fraction of the
                       attention mass left out; may be NULL */
    /* filled by the call: */
    uint64_t page_ins;        /* segments decoded into the window by this call */
    uint64_t segments;        /* sealed segments attended, summed over kv-heads */
    uint64_t tokens;          /* tokens attended (sealed and open), summed over kv-heads */
    double worst_lost;        /* the largest bound of any row */
} eg_attend_result;

/* Sparse attention for one layer. For each kv-head: the router's top
 * segments within budget_tokens, plus the sink segments, the recent window
 * and the open segment; causal per query (and per row inside segments and
 * the open segment). With remap_positions the bound refers to the
 * attention at true positions. Errors: EG_EN_ECLOSED, EG_EN_ELAYER,
 * EG_EN_ESHAPE (n_queries), EG_EN_EPOS, EG_EN_EBUDGET, EG_EN_ENONFINITE,
 * EG_EN_EROUTER, EG_EN_EOPTION, memory and index codes (a damaged block:
 * EG_ECORRUPT). On error the outputs are unspecified. */
int eg_engine_attend(eg_engine_session *s, const eg_attend_req *req, eg_attend_result *res);

/* Dense reference: exact attention over every token each query sees
 * (budget, router and remap are ignored; lost is 0). seg_mass, when not
 * NULL, receives [n_kv_heads][n_sealed] the attention mass of each sealed
 * segment summed over that kv-head's rows (the oracle router's input);
 * it needs n_rows * n_sealed floats of scratch. */
int eg_engine_attend_dense(eg_engine_session *s, const eg_attend_req *req, eg_attend_result *res,
                           float *seg_mass);

/* ---- select and fetch --------------------------------------------------- */
typedef struct {
    uint32_t n_kv_heads;
    uint64_t n_sealed;        /* sealed segments when the choice was made */
    size_t *offsets;          /* [n_kv_heads + 1]: kv-head h's choice is
                                 segments[offsets[h] .. offsets[h+1]) */
    size_t *n_forced;         /* [n_kv_heads]: the first n_forced of each are
                                 sinks and recent segments (ascending) */
    int64_t *segments;        /* then routed segments in score order */
    float *scores;            /* router score of each (+inf for forced ones) */
} eg_select_result;
/* The router's choice for the queries of req (max_lost ignored). Arrays
 * malloc'd: release with eg_select_result_free. Errors as eg_engine_attend. */
int eg_engine_select(eg_engine_session *s, const eg_attend_req *req, eg_select_result *out);
void eg_select_result_free(eg_select_result *r);

/* Decoded rows of one segment of (layer, kv_head), keys as stored (before
 * RoPE when the session applies it): a sealed segment gives S rows; the
 * open one the rows it has (a layer appended ahead may have more segments
 * open). keys [S][head_dim_k], values [S][head_dim_v], caller's buffers
 * (either may be NULL). Errors: EG_EN_ELAYER, EG_EN_ESHAPE (kv_head),
 * EG_EN_ESEGMENT (no token of that segment yet), EG_ECORRUPT. */
int eg_engine_fetch(eg_engine_session *s, uint32_t layer, uint32_t kv_head, uint64_t segment,
                    float *keys, float *values, uint32_t *out_rows);

/* ---- the learned router ---------------------------------------------------- */
/* EG_ROUTER_LEARNED routes with index/'s outliers mode (one outlier key per
 * segment, 3 bytes per token at dim 64 and S 64), whose summaries every
 * sealed segment gets. Its three scalars per (layer, kv-head) start
 * untrained (the exact mixture) and may be trained on the session's own
 * attention: the weights are stored in the session (kept by truncate,
 * copied by fork) and used by every later call on that layer. */
typedef struct {
    uint32_t layer;
    uint32_t n_queries;       /* calibration positions; n_queries * (n_q_heads /
                                 n_kv_heads) <= EG_EN_TRAIN_ROWS_MAX */
    const float *q;           /* [n_queries][n_q_heads][head_dim_k], borrowed, as
                                 eg_attend_req.q (before RoPE when the session
                                 applies it) */
    const int64_t *pos;       /* [n_queries], 1..layer tokens: a query at p sees
                                 the tokens before p */
    float scale;              /* 0 = 1/sqrt(head_dim_k) */
    int steps;                /* Adam steps, 0 = 200 (at most 100000) */
    float lr;                 /* 0 = 0.01 */
    int n_sink_segments;      /* excluded from the target as always attended (1) */
    int64_t recent_tokens;    /* likewise (256) */
} eg_router_train_req;
void eg_router_train_req_init(eg_router_train_req *r);

/* Train the learned router of one layer, each kv-head on its q heads' rows
 * (KL between the dense attention mass per segment and the softmax of the
 * router's scores), store the weights and use them from the next call.
 * loss_before and loss_after: NULL or [n_kv_heads], the mean KL on these
 * queries of the weights in use before and of the new ones. Memory: the
 * layer's keys of one kv-head at a time (tokens x head_dim_k floats) and
 * rows x sealed segments floats. Appends wait while it runs.
 * Errors: EG_EN_ECLOSED, EG_EN_ELAYER, EG_EN_ESHAPE (n_queries, rows),
 * EG_EN_EPOS, EG_EN_ENONFINITE, EG_EN_EINVAL (steps, lr, sinks, window),
 * EG_IX_EEMPTY (no query can route 2 or more segments), EG_EN_EROUTER
 * (segments without learned summaries), memory codes (EG_ECORRUPT,
 * EG_ENOSPC...); on error the weights in use do not change. */
int eg_engine_router_train(eg_engine_session *s, const eg_router_train_req *req, double *loss_before,
                           double *loss_after);
/* Back to untrained weights for every kv-head of a layer (stored).
 * Errors: EG_EN_ECLOSED, EG_EN_ELAYER, memory codes. */
int eg_engine_router_reset(eg_engine_session *s, uint32_t layer);

/* ---- pure functions ------------------------------------------------------- */
/* Merge two partial attentions over disjoint token sets A and B into the
 * attention over A and B: n rows of dim values. out/lse may alias a or b.
 * A side with lse -inf is empty. Errors: EG_EN_EINVAL. */
int eg_attn_merge(const float *out_a, const float *lse_a, const float *out_b, const float *lse_b,
                  size_t n, size_t dim, float *out, float *lse);

/* Rotate n vectors [n][dim] in place by RoPE at positions pos[n] (or
 * pos0 + i when pos is NULL): mode EG_ROPE_HALF (pair i with i + rot/2) or
 * EG_ROPE_INTERLEAVED (pair 2i with 2i+1); the first rot_dims dims rotate
 * (0 = all; even), frequency of pair i theta^(-2i/rot_dims). Angles are
 * computed in double. Errors: EG_EN_EINVAL, EG_EN_EOPTION. */
int eg_rope_apply(int mode, uint32_t rot_dims, float theta, float *x, size_t n, uint32_t dim,
                  const int64_t *pos, int64_t pos0);

#ifdef __cplusplus
}
#endif
#endif
