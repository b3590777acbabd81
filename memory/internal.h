/* internal.h: declarations shared by the .c files of memory/ only.
 * Not a public header: nothing outside memory/ includes it. */
#ifndef ENGRAM_MEMORY_INTERNAL_H
#define ENGRAM_MEMORY_INTERNAL_H
#include "memory.h"
#include <stdarg.h>

/* Record a failure message for this thread and return `code`. */
int eg_mem_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* RAM cache tier: decoded blocks, LRU by bytes. Keys are (namespace, layer,
 * kv-head, segment, serial); serial changes whenever a block is rewritten,
 * so a stale entry can never be served (it just ages out). */
typedef struct eg_cache eg_cache;
typedef struct { uint64_t ns, seg, serial; uint32_t layer, kv_head; } eg_cache_key;
int eg_cache_new(size_t cap_bytes, eg_cache **out);
void eg_cache_free(eg_cache *c);
/* Copy a hit into keys (nk floats) / values (nv floats), either may be NULL.
 * Returns 1 on hit, 0 on miss. */
int eg_cache_get(eg_cache *c, const eg_cache_key *k, float *keys, size_t nk, float *values,
                 size_t nv);
/* Insert (copies). Entries larger than the capacity are not kept. */
int eg_cache_put(eg_cache *c, const eg_cache_key *k, const float *keys, size_t nk,
                 const float *values, size_t nv);
void eg_cache_counters(eg_cache *c, uint64_t *hits, uint64_t *misses, uint64_t *bytes,
                       uint64_t *entries, uint64_t *evictions);

/* Decode loops of the codecs (codec_kernels.c): portable, AVX2 or AVX-512,
 * chosen at run time, all giving the same bits. src is an encoded tile of
 * codec.c's layout whose parameters the caller has checked; x receives
 * n*d floats. eg_kern_f16 returns the index of the first Inf or NaN half
 * (x is then filled only before it), or n. */
void eg_kern_q8(const unsigned char *src, uint32_t n, uint32_t d, float *x);
void eg_kern_q4(int kind, const unsigned char *src, uint32_t n, uint32_t d, float *x);
size_t eg_kern_f16(const unsigned char *src, size_t n, float *x);

/* ---- store internals ---------------------------------------------------- */
#include <lmdb.h>
#include <pthread.h>
#include <sys/types.h>

#define EG_FORMAT_VERSION 1u
#define EG_LINEAGE_OPEN UINT64_MAX   /* end of the session's own, growing namespace */

/* Big-endian key helpers, so a cursor walks a session's keys in order. */
static inline void eg_be64(unsigned char *p, uint64_t v)
{ for (int i = 7; i >= 0; i--) { p[i] = (unsigned char)v; v >>= 8; } }
static inline void eg_be32(unsigned char *p, uint32_t v)
{ for (int i = 3; i >= 0; i--) { p[i] = (unsigned char)v; v >>= 8; } }
static inline uint64_t eg_rd64(const unsigned char *p)
{ uint64_t v = 0; for (int i = 0; i < 8; i++) v = v << 8 | p[i]; return v; }
static inline uint32_t eg_rd32(const unsigned char *p)
{ uint32_t v = 0; for (int i = 0; i < 4; i++) v = v << 8 | p[i]; return v; }

/* Namespaces: sealed blocks, level-0 records and sealed token ids are keyed
 * by a namespace id, not a session id. A session reads segment s from the
 * first lineage entry with s < end. Forks and truncates add entries, so
 * blocks are shared by reference and never rewritten under a reader. */
typedef struct { uint64_t ns, end; } eg_lineage;

/* What a session is, as stored in the catalog (little-endian host layout,
 * versioned) followed by n_layers uint64 per-layer token counts. */
typedef struct {
    uint32_t magic, version;
    uint64_t id;
    eg_session_config cfg;
    uint64_t n_tokens, n_sealed, created;
    uint32_t lineage_len, pad;
    eg_lineage lineage[EG_LINEAGE_MAX];
} eg_sess_hdr;
#define EG_SESS_MAGIC 0x31534745u /* "EGS1" */

/* In-memory state of a session: the committed copy readers use and the
 * working copy of the batch being written. */
typedef struct {
    eg_sess_hdr h;
    uint64_t *layer_tokens;   /* [n_layers] */
} eg_sess_state;

struct eg_msession {
    eg_store *st;
    char name[EG_NAME_MAX + 1];
    int refs;                 /* handles open (store mutex) */
    pthread_mutex_t mu;       /* guards `state` */
    eg_sess_state state;      /* committed */
    eg_sess_state work;       /* batch scratch (writer only) */
    int in_batch;
    int dropped;
    struct eg_msession *next; /* store's open list */
};

typedef struct eg_job eg_job;
struct eg_job {
    int (*apply)(eg_store *st, MDB_txn *txn, eg_job *job);
    void (*done)(eg_store *st, eg_job *job); /* after commit, under no lock; may be NULL */
    eg_msession *s;          /* session whose work state the job changes, or NULL */
    void *arg;
    int rc;
    int finished;
    char msg[256];           /* message of a failed job, handed to its thread */
    eg_job *next;
};

struct eg_store {
    MDB_env *env;
    MDB_dbi db_catalog, db_blocks, db_summaries, db_tail, db_tokens, db_router, db_refs, db_meta;
    pthread_rwlock_t grow_lock;  /* every txn holds it shared; map growth exclusive */
    pthread_mutex_t mu;          /* queue, open sessions, counters */
    pthread_cond_t cv;
    int writer_active, closing;
    eg_job *q_head, *q_tail;
    eg_msession *open_list;
    eg_cache *cache;
    eg_store_options opt;
    size_t map_bytes;
    dev_t dev; ino_t ino;
    int lock_fd;             /* flock'd engram.lock: one process per directory */
    eg_seal_fn hook; void *hook_user;
    eg_store_stats stats;
    char path[4096];
};

/* Internal only: the map is full; the batch is retried after growing it. */
#define EG_IMAPFULL (-98)

/* Map an LMDB or errno code to an EG_E* code with a message naming `what`. */
int eg_mdb_fail(int rc, const char *what);
/* Run a write job through group commit; returns the job's rc. */
int eg_store_write(eg_store *st, eg_job *job);
/* Begin/end a read-only transaction (holds grow_lock shared). */
int eg_rtxn_begin(eg_store *st, MDB_txn **out);
void eg_rtxn_end(eg_store *st, MDB_txn *txn);
/* Serial numbers for blocks and ids for sessions/namespaces, in txn. */
int eg_meta_next(eg_store *st, MDB_txn *txn, const char *counter, uint64_t *out);

/* Session state helpers (catalog.c). */
int eg_sess_state_copy(eg_sess_state *dst, const eg_sess_state *src);
void eg_sess_state_free(eg_sess_state *s);
int eg_sess_load(eg_store *st, MDB_txn *txn, const char *name, eg_sess_state *out);
int eg_sess_save(eg_store *st, MDB_txn *txn, const char *name, const eg_sess_state *s);
/* EG_ECLOSED (and s->dropped set) if s's catalog record is gone or was
 * replaced by another session of the same name: the job must not write. */
int eg_sess_alive(eg_store *st, MDB_txn *txn, eg_msession *s);
/* Namespace owning segment `seg` in lineage, or 0 if none. */
uint64_t eg_lineage_ns(const eg_sess_hdr *h, uint64_t seg);
/* Working state of s for the current batch (copied from committed lazily). */
eg_sess_state *eg_sess_work(eg_msession *s);

/* Blocks (block.c). */
typedef struct {
    uint32_t magic;
    uint8_t codec, version;
    uint16_t n_tokens;
    uint16_t dim_k, dim_v;
    uint32_t klen, vlen;
    uint32_t pad;         /* zero: the struct has no implicit padding to hash */
    uint64_t serial;
    float prior_k, prior_v; /* error carried from an earlier encoding (cold tier) */
    uint64_t checksum;    /* XXH3-64 of key bytes, header (checksum 0) and payload */
} eg_block_hdr;
#define EG_BLOCK_MAGIC 0x31424745u /* "EGB1" */
void eg_block_key(unsigned char k[24], uint64_t ns, uint32_t layer, uint32_t kvh, uint64_t seg);
/* Encode keys/values tiles into a block written at `key` in txn. */
int eg_block_put(eg_store *st, MDB_txn *txn, uint64_t ns, uint32_t layer, uint32_t kvh,
                 uint64_t seg, int codec, uint32_t n_tokens, uint32_t dk, uint32_t dv,
                 const float *keys, const float *values, uint64_t serial,
                 float prior_k, float prior_v, float *kd, float *vd);
/* (kd, vd: when not NULL, receive the decoded tiles, as readers will see them.) */
/* Checksum of an opaque record at key kb. */
uint64_t eg_record_sum(const void *kb, size_t klen, const void *bytes, size_t len);
/* Check a block's header and checksum; on success *hdr is filled.
 * Errors: EG_ECORRUPT with a message naming the block. */
int eg_block_check(const unsigned char key[24], const void *data, size_t len, eg_block_hdr *hdr);
/* Decode a checked block (either output may be NULL). */
int eg_block_decode(const void *data, const eg_block_hdr *hdr, float *keys, float *values);
#endif
