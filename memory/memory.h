/* memory.h: Engram's persistent tiered store (the one public header of memory/).
 *
 * A store is one data directory holding one LMDB environment. It keeps, per
 * session, the attention state (keys and values per layer, kv-head and token)
 * of a model: the open (partial) segment raw in f32, every sealed segment of
 * S tokens compressed per (layer, kv-head) into one checksummed block.
 *
 * Conventions
 * - Every function returns 0 (or a count) on success and a negative EG_E*
 *   code on failure; outputs are taken by pointer.
 * - After a failure, eg_mem_last_error() gives a message for this thread that
 *   names what was wrong (the field, the block, the byte). It stays valid until
 *   the next failing call on the same thread.
 * - Ownership is written next to each declaration. "borrowed" means the
 *   pointer stays the caller's; nothing here keeps it after returning.
 * - Thread safety: one eg_store may be used from any number of threads.
 *   A session handle (eg_msession) may also be shared between threads; the
 *   store serialises writes through group commit.
 * - Error codes of memory/ are in -1..-99 so that other modules can use other
 *   ranges and still tell them apart.
 */
#ifndef ENGRAM_MEMORY_H
#define ENGRAM_MEMORY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ------------------------------------------------------------ */
enum {
    EG_OK = 0,
    EG_EINVAL = -1,          /* an argument is NULL or out of range */
    EG_ENOMEM = -2,          /* allocation failed */
    EG_EIO = -3,             /* the operating system refused a read or write */
    EG_ENOSPC = -4,          /* disk full or file-size limit: nothing was written */
    EG_EBUSY = -5,           /* directory already open in this process */
    EG_ENOTFOUND = -6,       /* no session of that name, no such block */
    EG_EEXIST = -7,          /* a session of that name exists */
    EG_ENAME_EMPTY = -8,     /* session name is empty */
    EG_ENAME_LONG = -9,      /* session name over EG_NAME_MAX bytes */
    EG_ENAME_UTF8 = -10,     /* session name is not valid UTF-8 (or holds NUL/control) */
    EG_ESHAPE_ZERO = -11,    /* a dimension of the shape is zero */
    EG_EHEAD_DIM = -12,      /* head_dim_k or head_dim_v over EG_HEAD_DIM_MAX */
    EG_EGQA = -13,           /* n_q_heads not a positive multiple of n_kv_heads */
    EG_ESEG_SIZE = -14,      /* segment size not a power of two in 16..256 */
    EG_ECODEC = -15,         /* unknown codec (or cold codec not smaller) */
    EG_EFINGERPRINT = -16,   /* stored model fingerprint differs from the given one */
    EG_ENONFINITE = -17,     /* NaN or Inf in input values: refused, nothing stored */
    EG_ECORRUPT = -18,       /* a block or record failed its checksum or format check */
    EG_ERANGE = -19,         /* token, layer, head or segment out of range */
    EG_EDTYPE = -20,         /* unknown input dtype */
    EG_ELIMIT = -21,         /* an internal limit (documented where it applies) */
    EG_ECLOSED = -22,        /* the store or session was closed */
    EG_EOPTION = -23,        /* an option value is invalid (rope, cold tier...) */
    EG_EFORMAT = -24,        /* data directory written by an unknown format version */
    EG_ELMDB = -25,          /* LMDB reported an error not mapped above */
    EG_EORDER = -26,         /* layer-by-layer append out of order */
};

/* Message for code `err`; static string, never NULL. */
const char *eg_mem_strerror(int err);
/* Detailed message of this thread's last failure; never NULL. */
const char *eg_mem_last_error(void);

/* ---- limits ------------------------------------------------------------ */
#define EG_NAME_MAX 255          /* session name bytes */
#define EG_HEAD_DIM_MAX 1024
#define EG_FINGERPRINT_MAX 255   /* free-text part of the model fingerprint */
#define EG_SEG_MIN 16
#define EG_SEG_MAX 256
#define EG_LAYERS_MAX 1024
#define EG_KV_HEADS_MAX 1024
#define EG_LINEAGE_MAX 32        /* fork/truncate generations a session can span */
#define EG_RECORD_MAX (64u << 20) /* bytes of one opaque record */

/* ---- dtypes and conversion -------------------------------------------- */
enum { EG_DTYPE_F32 = 0, EG_DTYPE_F16 = 1, EG_DTYPE_BF16 = 2 };

/* Convert n values of `dtype` at src to f32 at dst (borrowed, n floats).
 * Errors: EG_EDTYPE, EG_ENONFINITE (dst content then unspecified). */
int eg_convert_to_f32(int dtype, const void *src, size_t n, float *dst);
float eg_f16_to_f32(uint16_t h);
uint16_t eg_f32_to_f16(float f);   /* round to nearest even; overflow -> inf */
float eg_bf16_to_f32(uint16_t h);
uint16_t eg_f32_to_bf16(float f);

/* ---- codecs ------------------------------------------------------------ */
/* A tile is n_tokens rows of dim values (row-major f32), the keys or the
 * values of one (layer, kv-head, segment).
 *  f32: exact, 4 bytes per element.
 *  f16: IEEE half, round to nearest; 2 bytes.
 *  q8 : int8, symmetric, one f32 scale per group of at most 32 values along
 *       dim (per token); |x - x'| <= scale/2 for every element.
 *  q4 : 4-bit asymmetric (f32 min and step per group of at most 32 values):
 *       keys per channel across tokens, values per token along dim (KIVI);
 *       |x - x'| <= step/2.
 * Encoded tiles are self-contained byte strings of eg_codec_size() bytes. */
enum { EG_CODEC_F32 = 0, EG_CODEC_F16 = 1, EG_CODEC_Q8 = 2, EG_CODEC_Q4 = 3, EG_CODEC_COUNT = 4 };
enum { EG_KIND_K = 0, EG_KIND_V = 1 };

/* Name ("f32","f16","q8","q4") or NULL if unknown. */
const char *eg_codec_name(int codec);
/* Parse a codec name; returns the codec or EG_ECODEC. */
int eg_codec_parse(const char *name);
/* Bytes of an encoded tile. Errors: EG_ECODEC, EG_EINVAL (zero sizes). */
int eg_codec_size(int codec, int kind, uint32_t n_tokens, uint32_t dim, size_t *out_bytes);
/* Encode src (n_tokens*dim f32, borrowed) into dst (dst_cap bytes, borrowed).
 * Errors: EG_ECODEC, EG_EINVAL (dst_cap too small), EG_ENONFINITE. */
int eg_codec_encode(int codec, int kind, const float *src, uint32_t n_tokens, uint32_t dim,
                    void *dst, size_t dst_cap);
/* Decode src (src_len bytes) into dst (n_tokens*dim f32).
 * Errors: EG_ECODEC, EG_ECORRUPT (src_len wrong, scales not finite). */
int eg_codec_decode(int codec, int kind, const void *src, size_t src_len, uint32_t n_tokens,
                    uint32_t dim, float *dst);
/* Decode loops in use: 0 chooses the best this CPU has ("avx512", "avx2"
 * or "portable"), 1 the portable ones, 2 AVX2 where the CPU has it; -1
 * only asks. Every choice decodes to the same bits (tested); switching is
 * for tests and benchmarks, not while other threads decode. Returns the
 * name of the loops in use (static string). */
const char *eg_codec_kernels(int which);
/* Attention straight from a tile (tile_attn.c): tile is n rows of dim d,
 * either f32 rows (codec EG_CODEC_F32, len = 4 n d) or a q8 tile as
 * eg_codec_encode wrote it (EG_CODEC_Q8, keys or values: same layout).
 *   eg_tile_dot:  out[r*n + t] = alpha * (q_r . row_t), q [nr][d];
 *   eg_tile_axpy: acc[r*d + c] += sum_t p[r*n + t] * row_t[c], p [nr][n].
 * The order of operations is fixed (see tile_attn.c): a q8 tile and the
 * f32 rows of its decode give the same bits, on every kernel version. All
 * buffers are the caller's. Errors: EG_EINVAL (NULL, n, d or nr zero),
 * EG_ECODEC (another codec: decode it first), EG_ECORRUPT (len wrong, a
 * scale not finite), EG_ENOMEM (only for a q8 tile with scales near
 * FLT_MAX, which is decoded first). */
int eg_tile_dot(int codec, const void *tile, size_t len, uint32_t n, uint32_t d, const float *q, uint32_t nr,
                float alpha, float *out);
int eg_tile_axpy(int codec, const void *tile, size_t len, uint32_t n, uint32_t d, const float *p, uint32_t nr,
                 float *acc);
/* The same products, which meanwhile load ahead[0 .. ahead_len) (the
 * caller's next tile, borrowed) into the cache: the AVX-512 kernels a few
 * lines at every step of their loop, so that the next tile arrives while
 * this one computes; the others all of it before they start. A burst of
 * prefetches waits on the core's fill buffers instead of computing (a
 * 1M-token decode step of 32/8/128 spent 5 % of its CPU in one). The
 * results are eg_tile_dot's and eg_tile_axpy's bits; ahead NULL or
 * ahead_len 0: none. Errors as theirs. */
int eg_tile_dot_ahead(int codec, const void *tile, size_t len, uint32_t n, uint32_t d, const float *q, uint32_t nr,
                      float alpha, float *out, const void *ahead, size_t ahead_len);
int eg_tile_axpy_ahead(int codec, const void *tile, size_t len, uint32_t n, uint32_t d, const float *p, uint32_t nr,
                       float *acc, const void *ahead, size_t ahead_len);
/* The softmax weights between the two products, one row in place:
 * *m = the larger of m_floor and max x[0..n), x[t] := exp(x[t] - *m),
 * *sum = their sum in double. The AVX-512 kernel's exp is within 2e-7
 * relative of libm's expf (the portable and AVX2 kernels call expf), and
 * gives 0 below e^-87 (expf a subnormal): at most n e^-87 of a sum that
 * holds e^0. x finite (an infinite *m takes the portable loop, libm's
 * NaN and all). Errors: EG_EINVAL (x, m or sum NULL, n zero). */
int eg_tile_softmax(float *x, uint32_t n, float m_floor, float *m, double *sum);
/* The tile kernels in use, as eg_codec_kernels: 0 the best ("avx512",
 * "avx2-fma" or "portable"), 1 portable, 2 AVX2 at most; -1 only asks. */
const char *eg_tile_kernels(int which);
/* Per-element error bound of an encoded tile: bound[i] >= |x_i - decode(x)_i|
 * (n_tokens*dim floats, caller's buffer). Errors as eg_codec_decode. */
int eg_codec_error_bound(int codec, int kind, const void *src, size_t src_len, uint32_t n_tokens,
                         uint32_t dim, float *bound);

/* ---- store ------------------------------------------------------------- */
typedef struct eg_store eg_store;
typedef struct eg_msession eg_msession;

enum { EG_SYNC_FULL = 0, EG_SYNC_NONE = 1 };

typedef struct {
    size_t map_bytes;    /* initial LMDB map size; 0 = 8 MiB. Grows on demand. */
    size_t cache_bytes;  /* RAM cache tier of decoded blocks; 0 = no cache */
    int sync_mode;       /* EG_SYNC_FULL (default) or EG_SYNC_NONE */
} eg_store_options;

/* Open (creating if needed) the data directory `path`.
 * opt may be NULL for defaults. *out owned by caller: eg_store_close().
 * Errors: EG_EBUSY (same directory already open in this process), EG_EIO,
 * EG_EFORMAT, EG_ENOMEM, EG_ELMDB. Stale reader slots are cleared. */
int eg_store_open(const char *path, const eg_store_options *opt, eg_store **out);
/* Close: waits for in-flight appends, syncs, frees. Session handles still
 * open are closed too (using them afterwards is undefined). NULL is a no-op. */
int eg_store_close(eg_store *st);
/* Force the data to disk (meaningful with EG_SYNC_NONE). */
int eg_store_sync(eg_store *st);

typedef struct {
    uint64_t cache_hits, cache_misses, cache_bytes, cache_entries, cache_evictions;
    uint64_t commits, appends, map_grows, map_bytes;
    uint64_t blocks_read, blocks_sealed;
} eg_store_stats;
int eg_store_get_stats(eg_store *st, eg_store_stats *out);

/* ---- sessions ---------------------------------------------------------- */
enum { EG_ROPE_NONE = 0,        /* keys stored after RoPE (engine applied it) */
       EG_ROPE_HALF = 1,        /* keys before RoPE; half-split layout */
       EG_ROPE_INTERLEAVED = 2  /* keys before RoPE; interleaved pairs */ };

typedef struct {
    uint32_t n_layers, n_kv_heads, n_q_heads;
    uint32_t head_dim_k, head_dim_v;
    uint32_t seg_tokens;         /* S; 0 = 64 */
    int32_t codec;               /* sealed codec; -1 = q8 */
    int32_t cold_codec;          /* codec of the cold tier, -1 = none */
    uint32_t cold_age_segments;  /* segments this far behind the newest go cold */
    uint32_t rope_mode;          /* EG_ROPE_* */
    uint32_t rope_dims;          /* rotary dims (even, <= head_dim_k); 0 = all */
    float rope_theta;            /* 0 = 10000 */
    char fingerprint[EG_FINGERPRINT_MAX + 1]; /* model identity, free text */
} eg_session_config;

/* Fill cfg with defaults (everything zero but S=64, q8, no cold tier). */
void eg_session_config_init(eg_session_config *cfg);
/* Check a config (after defaults) and the name. Returns the first error code
 * (see enum: EG_ENAME_*, EG_ESHAPE_ZERO, EG_EHEAD_DIM, EG_EGQA, EG_ESEG_SIZE,
 * EG_ECODEC, EG_EOPTION) with a message; name may be NULL to skip it. */
int eg_session_config_check(const char *name, const eg_session_config *cfg);

typedef struct {
    char name[EG_NAME_MAX + 1];
    eg_session_config config;
    uint64_t id;
    uint64_t n_tokens;        /* complete tokens (all layers) */
    uint64_t n_sealed;        /* sealed segments */
    uint64_t layer_tokens_max;/* most tokens any layer holds (>= n_tokens) */
    uint32_t lineage_len;     /* namespaces its blocks come from */
    uint64_t created_unix;
} eg_session_info;

/* Create a session. name: UTF-8, 1..255 bytes. cfg borrowed (defaults filled).
 * Errors: as eg_session_config_check, EG_EEXIST, I/O errors. */
int eg_session_create(eg_store *st, const char *name, const eg_session_config *cfg);
/* Open a session by name; fingerprint (may be NULL to skip the check) must
 * equal the stored one, and so must the shape when `expect` is non-NULL.
 * *out owned by caller: eg_session_close(). Errors: EG_ENOTFOUND,
 * EG_EFINGERPRINT. */
int eg_session_open(eg_store *st, const char *name, const char *fingerprint,
                    eg_msession **out);
int eg_session_close(eg_msession *s);
/* Info of an open session, or by name (eg_session_info_by_name). */
int eg_session_info_get(eg_msession *s, eg_session_info *out);
int eg_session_info_by_name(eg_store *st, const char *name, eg_session_info *out);
/* List names: calls fn for each session in name order; stops early if fn
 * returns non-zero. */
int eg_session_list(eg_store *st, int (*fn)(void *ctx, const eg_session_info *info), void *ctx);
/* Drop a session and reclaim its space; blocks a fork still uses are kept.
 * Fails with EG_EBUSY while the session is open in this store. */
int eg_session_drop(eg_store *st, const char *name);
/* Fork `parent` at token `at` (0..n_tokens) into a new session `child` that
 * shares the parent's sealed blocks below the fork point by reference and
 * copies only the partial segment. Errors: EG_ENOTFOUND, EG_EEXIST, EG_ERANGE,
 * EG_ELIMIT (lineage deeper than EG_LINEAGE_MAX), EG_EBUSY (layer-by-layer
 * append in progress on the parent). */
int eg_session_fork(eg_store *st, const char *parent, const char *child, uint64_t at);
/* Truncate an open session back to `n_tokens` tokens (<= current). */
int eg_session_truncate(eg_msession *s, uint64_t n_tokens);

/* ---- append ------------------------------------------------------------ */
/* Seal hook: called inside the sealing write transaction, once per sealed
 * segment and (layer, kv-head), with the keys as attention will see them
 * (decoded from the stored block). It may emit opaque records through
 * eg_seal_put_record(); they commit with the block or not at all. A non-zero
 * return aborts the whole append with that code. The hook runs on the
 * writer thread inside the transaction: it must not call other store
 * functions (only eg_seal_put_record), or it deadlocks. */
typedef struct eg_seal_ctx eg_seal_ctx;
typedef struct {
    uint64_t session_id;
    uint32_t layer, kv_head;
    uint64_t segment;
    uint32_t n_tokens, head_dim_k, head_dim_v;
    const float *keys;      /* [n_tokens][head_dim_k], decoded (borrowed, call only) */
    const float *values;    /* [n_tokens][head_dim_v], decoded */
    const uint32_t *tags;   /* [n_tokens] document tag per token */
} eg_seal_view;
typedef int (*eg_seal_fn)(void *user, const eg_seal_view *v, eg_seal_ctx *ctx);
/* Install the hook (NULL to remove); applies to all sessions of the store. */
int eg_store_set_seal_hook(eg_store *st, eg_seal_fn fn, void *user);
/* Within a seal hook: store a level-0 record (kind 0..255) for the segment
 * being sealed. bytes copied. */
int eg_seal_put_record(eg_seal_ctx *ctx, uint32_t kind, const void *bytes, size_t len);

typedef struct {
    int dtype;                /* EG_DTYPE_* of keys and values */
    uint32_t n_tokens;        /* tokens in this call (>= 1) */
    int32_t layer;            /* -1: all layers; else one layer */
    /* keys: [layers][n_kv_heads][n_tokens][head_dim_k], layers = n_layers or 1
     * values: same with head_dim_v. Borrowed. */
    const void *keys;
    const void *values;
    const uint32_t *token_ids;/* [n_tokens] or NULL (stored as 0); with layer-by-
                               * layer appends, taken from the call that brings
                               * a token to the session first */
    uint32_t tag;             /* document tag of these tokens (same rule) */
} eg_append_req;

/* Append tokens. Returns after the transaction holding them committed
 * (durably with EG_SYNC_FULL), grouped with other threads' appends.
 * Layer-by-layer: each layer's tokens must start at that layer's count; a
 * token is complete when every layer has it. *out_n_tokens (may be NULL):
 * complete tokens after the append.
 * Errors: EG_EINVAL, EG_ERANGE (layer), EG_EDTYPE, EG_ENONFINITE, EG_ENOSPC,
 * EG_EIO, EG_ECLOSED; on error nothing of this request is stored. */
int eg_append(eg_msession *s, const eg_append_req *req, uint64_t *out_n_tokens);

/* ---- read -------------------------------------------------------------- */
/* Decode a sealed segment's block into keys [S][head_dim_k] and values
 * [S][head_dim_v] (either may be NULL), through the cache tier.
 * Errors: EG_ERANGE (segment not sealed), EG_ECORRUPT (checksum; the message
 * names session, layer, kv-head and segment). */
int eg_read_block(eg_msession *s, uint32_t layer, uint32_t kv_head, uint64_t segment,
                  float *keys, float *values);
/* A sealed block as stored: its keys and values tiles, encoded in `codec`
 * (which may differ from the session's once the cold tier re-encoded it),
 * in the layouts of the codecs above. */
typedef struct {
    int codec;
    uint32_t n_tokens, dim_k, dim_v;
    const void *keys, *values;    /* klen and vlen bytes; not aligned */
    size_t klen, vlen;
} eg_encoded_block;
/* Called for each block of a walk; a non-zero return (a negative code)
 * stops the walk and becomes its result. */
typedef int (*eg_block_visit_fn)(void *ctx, uint64_t segment, const eg_encoded_block *b);
/* Walk the stored blocks of segments [first, first+n) of (layer, kv_head)
 * in one read transaction, without decoding them and without the cache
 * tier: fn gets each block after its checksum, header and shape were
 * checked, with pointers into the store's map that are valid during that
 * call only (copy what is kept; eg_codec_decode decodes it). Hold no lock
 * another store call needs while walking long runs: the transaction
 * delays map growth. Errors: EG_EINVAL (fn NULL), EG_ERANGE (a segment
 * not sealed), EG_ECORRUPT (the message names the block), EG_ECLOSED, or
 * fn's code. */
int eg_read_blocks_encoded(eg_msession *s, uint32_t layer, uint32_t kv_head, uint64_t first, uint64_t n,
                           eg_block_visit_fn fn, void *ctx);
/* Read the open segment's raw rows of one (layer, kv-head): the complete
 * tokens [n_sealed*S, n_tokens) into keys/values (caller sizes them for S
 * rows); *out_rows = rows written. */
int eg_read_tail(eg_msession *s, uint32_t layer, uint32_t kv_head, float *keys, float *values,
                 uint32_t *out_rows);
/* Tokens one layer holds (>= n_tokens while a layer-by-layer append is
 * under way). Errors: EG_ERANGE (layer), EG_ECLOSED. */
int eg_session_layer_tokens(eg_msession *s, uint32_t layer, uint64_t *out);
/* Unsealed rows [first, first+n) of one layer, every kv-head, raw f32:
 * keys [n][n_kv_heads][head_dim_k], values [n][n_kv_heads][head_dim_v]
 * (either may be NULL; caller's buffers). The rows must lie in
 * [n_sealed*S, layer tokens): a layer appended ahead of the others has
 * more than S of them. Errors: EG_ERANGE, EG_ECORRUPT, EG_ECLOSED. */
int eg_read_rows(eg_msession *s, uint32_t layer, uint64_t first, uint32_t n, float *keys,
                 float *values);
/* Token ids and tags of tokens [first, first+n) (either array may be NULL). */
int eg_read_tokens(eg_msession *s, uint64_t first, uint32_t n, uint32_t *token_ids,
                   uint32_t *tags);
/* Codec a sealed segment is stored in now (it changes when it goes cold). */
int eg_block_codec(eg_msession *s, uint32_t layer, uint32_t kv_head, uint64_t segment,
                   int *out_codec);
/* Per-element error bound of a sealed block against the appended values,
 * keys and values like eg_read_block (either may be NULL). A block re-encoded
 * by the cold tier adds the worst error of its earlier encoding. Rows that a
 * fork or truncate cut out of a sealed segment are kept decoded: their error
 * against the original append is that segment's codec error (not tracked). */
int eg_read_block_bound(eg_msession *s, uint32_t layer, uint32_t kv_head, uint64_t segment,
                        float *key_bound, float *value_bound);

/* ---- opaque records ---------------------------------------------------- */
/* Level-0 record (written by a seal hook) of a sealed segment.
 * *out_bytes malloc'd, caller frees. Errors: EG_ENOTFOUND, EG_ECORRUPT. */
int eg_record_get(eg_msession *s, uint32_t layer, uint32_t kv_head, uint64_t segment,
                  uint32_t kind, void **out_bytes, size_t *out_len);
/* Level-0 records of kind `kind` of segments [first, first+n), each of
 * exactly rec_len bytes, into out (n * rec_len bytes, caller's buffer), in
 * one read transaction. Errors: EG_ERANGE (not all sealed), EG_ENOTFOUND,
 * EG_ECORRUPT (a record of another length, or its checksum). */
int eg_record_get_range(eg_msession *s, uint32_t layer, uint32_t kv_head, uint64_t first, uint64_t n,
                        uint32_t kind, size_t rec_len, void *out);
/* Session-wide records (router weights, group summaries): key (layer,
 * kv_head, kind, index). Records of a kind without EG_RECORD_KEEP describe
 * the session's tokens: truncate removes them and a fork does not copy
 * them. Records of a kind with EG_RECORD_KEEP describe the model (trained
 * router weights): truncate keeps them and a fork copies them to the child
 * (in the same transaction; a parent's record that fails its checksum
 * fails the fork with EG_ECORRUPT). A put replaces the record of the same
 * key. Errors: EG_ERANGE (layer or kv_head), EG_ELIMIT (over
 * EG_RECORD_MAX), EG_ENOTFOUND (get: no such record), EG_ECORRUPT (get:
 * checksum), store write errors (EG_ENOSPC, EG_EIO). */
#define EG_RECORD_KEEP 0x80000000u
int eg_record_put_session(eg_msession *s, uint32_t layer, uint32_t kv_head, uint32_t kind,
                          uint64_t index, const void *bytes, size_t len);
int eg_record_get_session(eg_msession *s, uint32_t layer, uint32_t kv_head, uint32_t kind,
                          uint64_t index, void **out_bytes, size_t *out_len);
/* Several session records in one transaction (one commit): all are stored
 * or none. recs and their bytes borrowed. Errors as eg_record_put_session,
 * checked for every record before anything is written; EG_EINVAL (recs
 * NULL with n > 0). Keep a call's bytes well below the map: LMDB holds a
 * transaction's pages in RAM. */
typedef struct {
    uint32_t layer, kv_head, kind;
    uint64_t index;
    const void *bytes;
    size_t len;
} eg_session_record;
int eg_record_put_session_many(eg_msession *s, const eg_session_record *recs, size_t n);

/* ---- cold tier --------------------------------------------------------- */
/* Re-encode sealed segments older than cfg.cold_age_segments (counted back
 * from the newest sealed one) to cfg.cold_codec, at most max_blocks blocks
 * per call (0 = no limit). Readers see the old block or the new one, never
 * a mix. *out_moved: blocks re-encoded (may be NULL). */
int eg_session_age(eg_msession *s, uint64_t max_blocks, uint64_t *out_moved);

/* ---- verify ------------------------------------------------------------ */
/* Walk one session (name) or the whole store (name NULL): every block's
 * checksum and format, every lineage reference, the catalog's counts, the
 * tail rows. fn (may be NULL) gets one line per problem.
 * *out_problems = problems found. Returns 0 when the walk itself succeeded. */
int eg_store_verify(eg_store *st, const char *name,
                    void (*fn)(void *ctx, const char *problem), void *ctx,
                    uint64_t *out_problems);

#ifdef __cplusplus
}
#endif
#endif
