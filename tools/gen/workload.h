/* workload.h: seeded synthetic attention workloads and the reader of real
 * captured attention (../shared/data), for the recall benchmark and tests.
 *
 * Every array is f32 and row-major; the same spec gives the same bytes on
 * every machine (own PRNG: splitmix64, Box-Muller normals).
 *
 * WL_STRUCTURED ("structured"): what trained heads do, mixed per kv-head.
 *  - Keys are built before RoPE as a sum of parts, then rotated by RoPE
 *    (half-split layout over all dims, theta from the spec) at their
 *    position; queries likewise at their own position.
 *  - Sinks: tokens 0..3 carry a large component on a fixed "sink"
 *    direction, and every query a moderate one.
 *  - Recency: a fixed "local" vector in every key and query; after RoPE its
 *    part of q.k is largest at distance 0 and falls off and oscillates with
 *    distance. Even kv-heads weigh it strongly (local heads).
 *  - Topics that recur far apart: the text is a run of passages of 100 to
 *    2000 tokens, each on one of 32 topics drawn at random, so every topic
 *    recurs across the whole sequence. Keys carry their passage's topic
 *    centre. On odd kv-heads (topic heads) a query carries the centre of the
 *    topic of a random earlier passage, and so attends to every passage of
 *    that topic.
 *  - Outlier channels: the lowest-frequency RoPE pair (dims d/2-1 and d-1)
 *    and the next one hold a large offset in every key (massive
 *    activations); queries weigh them little.
 *  - Needles: 16 tokens at random depths in [4, T/2) get a fresh random key
 *    of large norm. Every 4th query, on the first q head of each group,
 *    seeks one: its scaled logit on the needle is set 10 to 20 above the
 *    median scaled logit of the keys it sees.
 *  - Background noise in keys and queries gives scaled logits a spread of a
 *    trained head (std about 1 to 3), neither flat nor one-hot.
 * WL_RETRIEVAL ("retrieval"): content-addressed retrieval, as induction and
 *  retrieval heads do. Keys are i.i.d. normal vectors (unclustered, high
 *  dimensional) plus the same outlier channels, with RoPE. Each query (each
 *  q head independently) seeks 1 to 3 earlier tokens at random depths: it is
 *  isotropic noise (background logit std about 1.5) plus, per target, a
 *  multiple of the target's key chosen so that the target's scaled logit is
 *  10 to 20 above the median. No sinks, no recency. Per-segment min/max and
 *  mean summaries cannot see such a target; an exact q.k scan can.
 */
#ifndef ENGRAM_WORKLOAD_H
#define ENGRAM_WORKLOAD_H
#include <stdint.h>

typedef enum { WL_STRUCTURED = 0, WL_RETRIEVAL = 1 } wl_kind;
#define WL_MAX_TARGETS 4

typedef struct {
    wl_kind kind;
    uint64_t seed;                 /* the "model": sink, local and topic directions */
    uint64_t text_seed;            /* the "text": passages, noise, needles, queries
                                      (a calibration set: same seed, other text_seed) */
    int64_t n_tokens;              /* T, 1024 .. 2^24 */
    int n_q_heads, n_kv_heads, dim;/* dim even, 16..256 */
    double rope_theta;
    int n_queries;
} wl_spec;

typedef struct {
    wl_spec spec;
    float scale;                   /* score scale, 1/sqrt(dim) or the capture's */
    int64_t n_tokens;
    int n_q_heads, n_kv_heads, dim, n_queries;
    float *k;                      /* [n_kv_heads][T][dim] (after RoPE) */
    float *v;                      /* [n_kv_heads][T][dim] */
    float *q;                      /* [n_queries][n_q_heads][dim] (after RoPE) */
    int64_t *q_pos;                /* [n_queries] ascending; query sees keys j <= q_pos */
    int64_t *target;               /* [n_queries][n_q_heads][WL_MAX_TARGETS], -1 = none */
    int n_sinks;
} wl_workload;

/* Defaults: seed 1, text_seed 0, T 32768, 4 q heads, 2 kv heads, dim 64, theta 1e4, 64 queries. */
void wl_spec_init(wl_spec *s, wl_kind kind);
/* -EINVAL on a bad spec, -ENOMEM; free out with wl_free. */
int wl_generate(const wl_spec *s, wl_workload *out);
void wl_free(wl_workload *w);
const char *wl_kind_name(wl_kind k);

/* Real captures (format of ../shared/data/README.md): model.json plus one
 * folder of .npy files per sequence. */
typedef struct {
    int n_layers, n_q_heads, n_kv_heads, head_dim_k, head_dim_v;
    float score_scale;
    int n_sequences;
    char seq_dir[16][256];
    int64_t seq_tokens[16];
    char dir[512];
} wl_capture;
/* -ENOENT (no model.json), -EINVAL (malformed). */
int wl_capture_open(const char *model_dir, wl_capture *out);
/* Layer l of sequence seq as a workload: keys, values, and n_queries query
 * positions evenly spaced over [T/2, T-1]. Free with wl_free. */
int wl_capture_layer(const wl_capture *c, int seq, int layer, int n_queries, wl_workload *out);
/* Read a .npy (v1/v2, '<f2', '<f4' or '|u1', C order) into f32; *data is
 * malloc'd (caller frees). -ENOENT, -EINVAL, -ENOMEM. */
int wl_npy_read(const char *path, float **data, int *ndim, int64_t shape[4]);
#endif
