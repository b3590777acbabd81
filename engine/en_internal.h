/* en_internal.h: declarations shared by the .c files of engine/ only. */
#ifndef ENGRAM_EN_INTERNAL_H
#define ENGRAM_EN_INTERNAL_H
#include "engine.h"
#include <pthread.h>
#include <sched.h>

/* Record this thread's message and return code. */
int en_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Pass a memory/ or index/ failure on, with that module's message. */
int en_pass(int code, const char *what);
int en_all_finite(const float *x, size_t n);

/* ---- RoPE ---------------------------------------------------------------- */
typedef struct {
    int mode;                 /* EG_ROPE_* */
    uint32_t rot, dim;        /* rotary dims, vector dims */
    double inv_freq[EG_HEAD_DIM_MAX / 2];
} en_rope;
int en_rope_init(en_rope *r, int mode, uint32_t rot_dims, float theta, uint32_t dim);
/* Rotate n consecutive vectors at positions pos0, pos0+1, ... The result
 * depends only on (pos0, n, x): the seal hook and the window use it on the
 * same segments and get the same bits. */
void en_rope_run(const en_rope *r, float *x, size_t n, int64_t pos0);
/* Rotate one vector by the angle of position p (p may be negative). */
void en_rope_one(const en_rope *r, float *x, double p);
/* cs[2*i], cs[2*i+1] = cos, sin of p * inv_freq[i]; then apply to n vectors. */
void en_rope_table(const en_rope *r, double p, double *cs);
void en_rope_apply_table(const en_rope *r, const double *cs, float *x, size_t n);

/* ---- worker pool ----------------------------------------------------------- */
/* One pause of a spin-wait (x86 `pause`; nothing elsewhere). */
static inline void en_cpu_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}
/* Step r (from 1) of a spin-wait for another thread's work: a pause, and
 * from the EN_SPIN_PAUSES-th step on a yield of the CPU instead. When the
 * thread it waits for was preempted (another process on its core), a bare
 * spin burned out its time slice: with a build running beside it, a 1M
 * decode step of 32/8/128 took 12.6-13.2 ms at the 90th percentile, 4.1-
 * 4.4 with the yield. Yielding after 256 pauses cost a quiet machine 3-5 %
 * (waits for a running task's end are often longer), so the spin lasts
 * about a task's time first. */
#define EN_SPIN_PAUSES 4096u
static inline void en_spin(unsigned r)
{
    if (r < EN_SPIN_PAUSES) en_cpu_pause();
    else sched_yield();
}
typedef struct en_pool en_pool;
/* n_threads in all (the callers count as one); idle workers poll every
 * poll_us for poll_ms after their last task (0: sleep until signalled). */
int en_pool_create(int n_threads, int poll_us, int poll_ms, en_pool **out);
void en_pool_destroy(en_pool *p);
/* Run fn(arg, i) for i in 0..n-1 on the workers and the calling thread;
 * returns when all are done. Safe to call from many threads at once. */
void en_pool_run(en_pool *p, int n, void (*fn)(void *arg, int i), void *arg);
/* The same for a leaf job: its tasks submit no jobs and use no per-thread
 * scratch (index/scratch.c), so a caller waiting inside another task may
 * run them. Callers waiting for their last tasks help only with these. */
void en_pool_run_leaf(en_pool *p, int n, void (*fn)(void *arg, int i), void *arg);
/* Threads a job can run on (workers and the caller). */
int en_pool_threads(const en_pool *p);

/* ---- active window ----------------------------------------------------------- */
/* Segments of one session kept in RAM across queries, LRU within a byte
 * budget. An entry keeps the block as stored (q8 or q4: a quarter to a
 * sixth of f32's bytes), decoded into the task's scratch each time it is
 * attended (en_wentry_tiles); keys of sessions that apply RoPE are kept
 * decoded and rotated at their true positions, and the f32 window option
 * keeps both decoded. Entries in use are pinned and never evicted; the
 * budget may be passed while they are. */
typedef struct en_window en_window;
typedef struct en_wentry {
    uint32_t layer, kvh;
    uint64_t seg;
    int codec;                /* of kb and vb */
    const unsigned char *kb, *vb; /* encoded tiles as stored (klen, vlen bytes), or NULL */
    size_t klen, vlen;
    float *k, *v;             /* decoded tiles [S][dk], [S][dv], or NULL */
    size_t bytes;             /* RAM the entry holds */
    int pins;
    struct en_wentry *prev, *next, *hnext;
} en_wentry;
int en_window_create(size_t cap_bytes, en_window **out);
void en_window_free(en_window *w);
/* Pinned entry or NULL. */
en_wentry *en_window_get(en_window *w, uint32_t layer, uint32_t kvh, uint64_t seg);
/* Insert a filled entry (taken over). If another thread inserted the same
 * segment meanwhile, e is freed and that one returned, pinned. */
en_wentry *en_window_put(en_window *w, en_wentry *e);
/* out[i] = segment segs[i]'s entry pinned, or NULL (not in the window, or
 * segs[i] < 0), under one lock: a decode step pins a few dozen segments a
 * head, and a lock each (taken by both cores) was 3 % of a 9/3/64 step. */
void en_window_get_many(en_window *w, uint32_t layer, uint32_t kvh, const int64_t *segs, size_t n, en_wentry **out);
/* Unpin each non-NULL e[i] (pinned by a get or put), under one lock;
 * entries past the budget are evicted once unpinned. */
void en_window_unpin_many(en_window *w, en_wentry *const *e, size_t n);
void en_wentry_free(en_wentry *e);
/* Drop every entry of segments >= first_seg (after truncate). */
void en_window_drop_from(en_window *w, uint64_t first_seg);
void en_window_counters(en_window *w, uint64_t *hits, uint64_t *bytes, uint64_t *entries,
                        uint64_t *evictions);

/* ---- engine and sessions ------------------------------------------------------- */
#define EN_REC_QUEST 1u      /* record: u32 tag of the segment's first token, quest summary */
#define EN_REC_CENTROID 2u   /* record: centroid summary */
#define EN_REC_OUTLIERS 3u   /* record: learned outliers summary (1 outlier key) */
/* record: f32 radius of the segment's keys around the centre of its quest
 * box (the ball router's summary is the quest record's box and this).
 * Segments sealed before radii were stored have none: their balls use the
 * box's half-diagonal. */
#define EN_REC_RADIUS 5u
/* Session record (index 0) per (layer, kv-head): the learned router's
 * weights blob (eg_learned_save); kept by truncate, copied by fork. */
#define EN_REC_WEIGHTS (1u | EG_RECORD_KEEP)
/* Session records (index 0..): the int8 quest table of (layer, kv-head)
 * as eg_route_table_save bytes, in chunks of at most EN_SNAP_CHUNK, chunk
 * 0 led by the u64 total; written when a session closes, loaded instead
 * of rebuilding the table from its summaries. Truncate removes them (not
 * EG_RECORD_KEEP) and a fork does not copy them, so segments [0, n) of a
 * snapshot of n segments are still the session's. */
#define EN_REC_SNAP 4u
#define EN_REC_SNAP_BALL 6u   /* the same for the ball table */
#define EN_SNAP_CHUNK ((size_t)32 << 20)
#define EN_SNAP_MIN 512       /* segments: below this a rebuild is quick */
#define EN_KINDS 4           /* table kinds: 0 quest, 1 centroid, 2 learned, 3 ball */
/* Snapshot slot of table kind ki (quest 0, ball 1), -1 for kinds not snapshotted. */
#define EN_SNAP_SLOTS 2
static inline int en_snap_slot(int ki) { return ki == 0 ? 0 : ki == 3 ? 1 : -1; }

/* Route tables of one layer, loaded on first use. */
typedef struct {
    pthread_mutex_t mu;
    int loaded[EN_KINDS];
    eg_route_table **tab[EN_KINDS];  /* [n_kv_heads] each */
    eg_learned **w;           /* [n_kv_heads]: the learned tables' weights */
    uint64_t *snap[EN_SNAP_SLOTS]; /* [n_kv_heads]: segments of the quest (0) and ball (1) snapshots stored */
} en_layer_tabs;

typedef struct en_sess {
    eg_engine *e;
    eg_msession *ms;
    char name[EG_NAME_MAX + 1];
    uint64_t id;
    eg_session_config cfg;
    en_rope rope;
    int refs;                 /* open handles (engine mutex) */
    pthread_rwlock_t rw;      /* readers: attend/select/fetch; writer: append/truncate */
    en_layer_tabs *layers;    /* [n_layers] */
    en_window *win;
    eg_learned *seal_w;       /* untrained outliers weights: the seal hook's summaries */
    pthread_mutex_t st_mu;
    uint64_t attends, page_ins;
    uint64_t snap_loads, rebuilds;   /* quest tables from snapshots, from summaries */
    struct en_sess *next;
} en_sess;

struct eg_engine_session {
    en_sess *s;               /* NULL once closed */
    struct eg_engine_session *next_handle;
};

struct eg_engine {
    eg_store *st;
    en_pool *pool;
    eg_engine_options opt;
    pthread_mutex_t mu;       /* sessions list, handles */
    en_sess *sessions;
    eg_engine_session *handles;
};

/* Session snapshot for one call, taken under the session's read lock. */
typedef struct {
    uint64_t n_sealed, layer_tokens;
    uint32_t S, H, G, dk, dv;
} en_view;
int en_view_get(en_sess *s, uint32_t layer, en_view *v);
/* The layer's tables of `kind` (quest, centroid or learned), loading them
 * first (learned: with the weights stored for each kv-head, else untrained). */
int en_tables(en_sess *s, uint32_t layer, eg_router_kind kind, eg_route_table ***out);
/* The learned config the engine seals and routes with (outliers, 1 key). */
void en_learned_config(const en_sess *s, eg_learned_config *c);
/* Weights of (layer, kvh): the stored blob, checked against the session's
 * shape, or untrained ones when none is stored. *out: eg_learned_free. */
int en_weights_load(en_sess *s, uint32_t layer, uint32_t kvh, eg_learned **out);
/* Quest snapshots (snapshot.c). Load: the stored table of (layer, kvh)
 * for spec when there is one of at most n_sealed segments, else NULL (a
 * damaged, stale or missing snapshot just means a rebuild); *n_snap its
 * segments. Save: the session's loaded quest tables that grew enough since
 * their snapshot, best effort (the session is closing). */
eg_route_table *en_snap_load(en_sess *s, uint32_t layer, uint32_t kvh, const eg_summary_spec *spec,
                             uint64_t n_sealed, uint64_t *n_snap);
void en_snap_save_all(en_sess *s);
/* Unload the learned tables of a layer (write lock held): they reload with
 * the weights stored now. */
void en_tables_drop_learned(en_sess *s, uint32_t layer);
/* 0, or EG_EN_ELAYER with the message naming the session's layer count. */
int en_layer_check(const en_sess *s, uint32_t layer);
/* Handle -> session, or EG_EN_ECLOSED. */
int en_handle(eg_engine_session *h, en_sess **out);

/* The window entry of (layer, kvh, seg), pinned: from the window, or read
 * from the store (one block, its checksum checked), its keys rotated when
 * the session applies RoPE, and put in the window; *n_in counts reads.
 * Errors: memory codes (EG_ECORRUPT...), EG_EN_ENOMEM. */
int en_page_in(en_sess *s, uint32_t layer, uint32_t kvh, uint64_t seg, en_wentry **out, uint64_t *n_in);
/* Keys (and values, when V is not NULL) of an entry as f32 [S][d]: the
 * entry's own decoded arrays, else decoded into sk / sv (S*dk, S*dv
 * floats of the caller's scratch, which stay in cache). */
/* One block's rows as the attention kernels read them: f32 (EG_CODEC_F32,
 * len = 4 S d) or a q8 tile as stored (eg_tile_dot, eg_tile_axpy); ahead:
 * bytes to load into the cache while the kernels read this tile (the next
 * segment's, eg_tile_dot_ahead), or NULL. */
typedef struct { int codec; const void *p; size_t len; const void *ahead; size_t ahead_len; } en_tile;
/* The entry's key and value tiles (V may be NULL): f32 where the entry
 * keeps them so, the q8 bytes as stored when raw_q8, else decoded into
 * sk [S][dk] / sv [S][dv]. */
int en_wentry_tiles(const en_sess *s, const en_wentry *e, float *sk, float *sv, int raw_q8, en_tile *K, en_tile *V);

/* ---- attention math (attn.c) ---------------------------------------------------- */
#define EN_TILE_ROWS 8        /* up to this many rows: the tile kernels (q8 as stored), not sgemm */
/* Running softmax state of nr rows: acc holds sum exp(s - m) v, unscaled. */
typedef struct {
    int nr;
    uint32_t dv;
    float *m;        /* [nr] running max of scaled scores */
    double *l;       /* [nr] running sum of exp(score - m) */
    float *acc;      /* [nr][dv] or NULL: lse only */
} en_attn_state;
/* Scores of one block of n keys starting at token tok0, folded into st.
 * q [nr][dk] (already rotated for this block), vis[r] the last token row r
 * sees; sc scratch [nr][n]. K and V are f32 tiles, or (nr <= EN_TILE_ROWS)
 * q8 tiles as stored. seg_lse (dense oracle input), when not NULL,
 * receives per row and per S keys the log-sum-exp of that segment.
 * Errors: a damaged tile (EG_ECORRUPT). */
int en_attn_block(en_attn_state *st, const float *q, uint32_t dk, const en_tile *K, const en_tile *V,
                  uint32_t n, int64_t tok0, const int64_t *vis, float scale, float *sc,
                  float *seg_lse, uint32_t S, size_t seg_stride);
/* An f32 tile of n rows of dim d. */
en_tile en_f32_tile(const float *p, uint32_t n, uint32_t d);
double en_state_lse(const en_attn_state *st, int r);
void en_state_reset(en_attn_state *st);
#endif
