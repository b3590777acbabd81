/* catalog.c: session configs, names, the catalog records and session state. */
#include "internal.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void eg_session_config_init(eg_session_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->seg_tokens = 64;
    cfg->codec = EG_CODEC_Q8;
    cfg->cold_codec = -1;
    cfg->rope_theta = 10000.0f;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF,
 * no control characters (names end up in logs and terminals). */
static int name_check(const char *name)
{
    size_t n = strnlen(name, EG_NAME_MAX + 2);
    if (n == 0) return eg_mem_fail(EG_ENAME_EMPTY, "session name is empty");
    if (n > EG_NAME_MAX)
        return eg_mem_fail(EG_ENAME_LONG, "session name is longer than %d bytes", EG_NAME_MAX);
    const unsigned char *p = (const unsigned char *)name;
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        size_t len;
        uint32_t cp, min;
        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f)
                return eg_mem_fail(EG_ENAME_UTF8, "session name: control character at byte %zu", i);
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) { len = 2; cp = c & 0x1f; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { len = 3; cp = c & 0x0f; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { len = 4; cp = c & 0x07; min = 0x10000; }
        else return eg_mem_fail(EG_ENAME_UTF8, "session name: invalid UTF-8 lead byte at %zu", i);
        if (i + len > n) return eg_mem_fail(EG_ENAME_UTF8, "session name: truncated UTF-8 at %zu", i);
        for (size_t j = 1; j < len; j++) {
            if ((p[i + j] & 0xc0) != 0x80)
                return eg_mem_fail(EG_ENAME_UTF8, "session name: bad continuation byte at %zu", i + j);
            cp = cp << 6 | (p[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return eg_mem_fail(EG_ENAME_UTF8, "session name: invalid code point at byte %zu", i);
        i += len;
    }
    return 0;
}

int eg_session_config_check(const char *name, const eg_session_config *c)
{
    int rc;
    if (!c) return eg_mem_fail(EG_EINVAL, "session config is NULL");
    if (name && (rc = name_check(name))) return rc;
    if (!c->n_layers || !c->n_kv_heads || !c->n_q_heads || !c->head_dim_k || !c->head_dim_v)
        return eg_mem_fail(EG_ESHAPE_ZERO, "shape has a zero dimension (layers %u, kv heads %u, "
                           "q heads %u, head dims %u/%u)", c->n_layers, c->n_kv_heads,
                           c->n_q_heads, c->head_dim_k, c->head_dim_v);
    if (c->head_dim_k > EG_HEAD_DIM_MAX || c->head_dim_v > EG_HEAD_DIM_MAX)
        return eg_mem_fail(EG_EHEAD_DIM, "head dimension %u/%u over %d", c->head_dim_k,
                           c->head_dim_v, EG_HEAD_DIM_MAX);
    if (c->n_layers > EG_LAYERS_MAX || c->n_kv_heads > EG_KV_HEADS_MAX)
        return eg_mem_fail(EG_ELIMIT, "at most %d layers and %d kv heads", EG_LAYERS_MAX,
                           EG_KV_HEADS_MAX);
    if (c->n_q_heads % c->n_kv_heads)
        return eg_mem_fail(EG_EGQA, "n_q_heads %u is not a multiple of n_kv_heads %u",
                           c->n_q_heads, c->n_kv_heads);
    if (c->n_q_heads / c->n_kv_heads > 1024)
        return eg_mem_fail(EG_EGQA, "more than 1024 q heads per kv head");
    uint32_t S = c->seg_tokens;
    if (S < EG_SEG_MIN || S > EG_SEG_MAX || (S & (S - 1)))
        return eg_mem_fail(EG_ESEG_SIZE, "segment size %u is not a power of two in 16..256", S);
    if (!eg_codec_name(c->codec))
        return eg_mem_fail(EG_ECODEC, "unknown codec %d", (int)c->codec);
    if (c->cold_codec != -1) {
        size_t a, b;
        if (!eg_codec_name(c->cold_codec))
            return eg_mem_fail(EG_ECODEC, "unknown cold codec %d", (int)c->cold_codec);
        eg_codec_size(c->codec, EG_KIND_K, S, c->head_dim_k, &a);
        eg_codec_size(c->cold_codec, EG_KIND_K, S, c->head_dim_k, &b);
        if (b >= a)
            return eg_mem_fail(EG_ECODEC, "cold codec %s is not smaller than %s",
                               eg_codec_name(c->cold_codec), eg_codec_name(c->codec));
    }
    if (c->rope_mode > EG_ROPE_INTERLEAVED)
        return eg_mem_fail(EG_EOPTION, "unknown rope mode %u", c->rope_mode);
    if (c->rope_mode != EG_ROPE_NONE) {
        if (c->rope_dims % 2 || c->rope_dims > c->head_dim_k)
            return eg_mem_fail(EG_EOPTION, "rope dims %u must be even and <= head_dim_k %u",
                               c->rope_dims, c->head_dim_k);
        if (!(c->rope_theta > 1.0f) || c->rope_theta > 1e12f)
            return eg_mem_fail(EG_EOPTION, "rope theta must be in (1, 1e12]");
    }
    if (memchr(c->fingerprint, 0, sizeof c->fingerprint) == NULL)
        return eg_mem_fail(EG_EOPTION, "fingerprint is not NUL-terminated");
    return 0;
}

/* ---- state ---------------------------------------------------------------- */
void eg_sess_state_free(eg_sess_state *s)
{
    free(s->layer_tokens);
    s->layer_tokens = NULL;
}

int eg_sess_state_copy(eg_sess_state *dst, const eg_sess_state *src)
{
    uint32_t L = src->h.cfg.n_layers;
    uint64_t *lt = malloc((size_t)L * sizeof *lt);
    if (!lt) return eg_mem_fail(EG_ENOMEM, "session state: out of memory");
    memcpy(lt, src->layer_tokens, (size_t)L * sizeof *lt);
    free(dst->layer_tokens);
    dst->h = src->h;
    dst->layer_tokens = lt;
    return 0;
}

eg_sess_state *eg_sess_work(eg_msession *s)
{
    if (!s->in_batch) {
        pthread_mutex_lock(&s->mu);
        int rc = eg_sess_state_copy(&s->work, &s->state);
        pthread_mutex_unlock(&s->mu);
        if (rc) return NULL;
        s->in_batch = 1;
    }
    return &s->work;
}

uint64_t eg_lineage_ns(const eg_sess_hdr *h, uint64_t seg)
{
    for (uint32_t i = 0; i < h->lineage_len; i++)
        if (seg < h->lineage[i].end) return h->lineage[i].ns;
    return 0;
}

int eg_sess_load(eg_store *st, MDB_txn *txn, const char *name, eg_sess_state *out)
{
    MDB_val k = {strlen(name), (void *)name}, v;
    int rc = mdb_get(txn, st->db_catalog, &k, &v);
    if (rc == MDB_NOTFOUND) return eg_mem_fail(EG_ENOTFOUND, "no session named '%s'", name);
    if (rc) return eg_mdb_fail(rc, "catalog read");
    eg_sess_hdr h;
    if (v.mv_size < sizeof h)
        return eg_mem_fail(EG_ECORRUPT, "catalog record of '%s' is %zu bytes, too short", name,
                           v.mv_size);
    memcpy(&h, v.mv_data, sizeof h);
    if (h.magic != EG_SESS_MAGIC || h.version != EG_FORMAT_VERSION ||
        h.lineage_len == 0 || h.lineage_len > EG_LINEAGE_MAX ||
        h.cfg.n_layers == 0 || h.cfg.n_layers > EG_LAYERS_MAX ||
        v.mv_size != sizeof h + (size_t)h.cfg.n_layers * 8)
        return eg_mem_fail(EG_ECORRUPT, "catalog record of '%s' is damaged", name);
    uint64_t *lt = malloc((size_t)h.cfg.n_layers * 8);
    if (!lt) return eg_mem_fail(EG_ENOMEM, "session state: out of memory");
    memcpy(lt, (const char *)v.mv_data + sizeof h, (size_t)h.cfg.n_layers * 8);
    free(out->layer_tokens);
    out->h = h;
    out->layer_tokens = lt;
    return 0;
}

int eg_sess_save(eg_store *st, MDB_txn *txn, const char *name, const eg_sess_state *s)
{
    size_t n = sizeof s->h + (size_t)s->h.cfg.n_layers * 8;
    MDB_val k = {strlen(name), (void *)name}, v = {n, NULL};
    int rc = mdb_put(txn, st->db_catalog, &k, &v, MDB_RESERVE);
    if (rc) return eg_mdb_fail(rc, "catalog write");
    memcpy(v.mv_data, &s->h, sizeof s->h);
    memcpy((char *)v.mv_data + sizeof s->h, s->layer_tokens, (size_t)s->h.cfg.n_layers * 8);
    return 0;
}

int eg_sess_alive(eg_store *st, MDB_txn *txn, eg_msession *s)
{
    MDB_val k = {strlen(s->name), s->name}, v;
    int rc = mdb_get(txn, st->db_catalog, &k, &v);
    uint64_t id = 0;
    if (rc == 0 && v.mv_size >= sizeof(eg_sess_hdr)) memcpy(&id, (char *)v.mv_data + 8, 8);
    if (rc == MDB_NOTFOUND || (rc == 0 && id != s->work.h.id)) {
        s->dropped = 1;
        return eg_mem_fail(EG_ECLOSED, "session '%s' was dropped", s->name);
    }
    return rc ? eg_mdb_fail(rc, "catalog read") : 0;
}

static void fill_info(const char *name, const eg_sess_state *s, eg_session_info *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", name);
    out->config = s->h.cfg;
    out->id = s->h.id;
    out->n_tokens = s->h.n_tokens;
    out->n_sealed = s->h.n_sealed;
    out->lineage_len = s->h.lineage_len;
    out->created_unix = s->h.created;
    uint64_t mx = s->h.n_tokens;
    for (uint32_t l = 0; l < s->h.cfg.n_layers; l++)
        if (s->layer_tokens[l] > mx) mx = s->layer_tokens[l];
    out->layer_tokens_max = mx;
}

/* ---- create ------------------------------------------------------------- */
typedef struct { const char *name; eg_session_config cfg; } create_arg;

static int refs_put(eg_store *st, MDB_txn *txn, uint64_t ns, uint64_t sid, uint64_t upto)
{
    unsigned char kb[16];
    eg_be64(kb, ns);
    eg_be64(kb + 8, sid);
    MDB_val k = {16, kb}, v = {8, &upto};
    int rc = mdb_put(txn, st->db_refs, &k, &v, 0);
    return rc ? eg_mdb_fail(rc, "refs write") : 0;
}

static int apply_create(eg_store *st, MDB_txn *txn, eg_job *job)
{
    create_arg *a = job->arg;
    MDB_val k = {strlen(a->name), (void *)a->name}, v;
    int rc = mdb_get(txn, st->db_catalog, &k, &v);
    if (rc == 0) return eg_mem_fail(EG_EEXIST, "a session named '%s' exists", a->name);
    if (rc != MDB_NOTFOUND) return eg_mdb_fail(rc, "catalog read");
    eg_sess_state s = {0};
    s.h.magic = EG_SESS_MAGIC;
    s.h.version = EG_FORMAT_VERSION;
    s.h.cfg = a->cfg;
    s.h.created = (uint64_t)time(NULL);
    uint64_t ns;
    if ((rc = eg_meta_next(st, txn, "next_id", &s.h.id)) ||
        (rc = eg_meta_next(st, txn, "next_id", &ns)))
        return eg_mdb_fail(rc, "id counter");
    s.h.lineage_len = 1;
    s.h.lineage[0].ns = ns;
    s.h.lineage[0].end = EG_LINEAGE_OPEN;
    s.layer_tokens = calloc(a->cfg.n_layers, 8);
    if (!s.layer_tokens) return eg_mem_fail(EG_ENOMEM, "create: out of memory");
    rc = eg_sess_save(st, txn, a->name, &s);
    if (!rc) rc = refs_put(st, txn, ns, s.h.id, EG_LINEAGE_OPEN);
    eg_sess_state_free(&s);
    return rc;
}

int eg_session_create(eg_store *st, const char *name, const eg_session_config *cfg)
{
    if (!st || !name || !cfg) return eg_mem_fail(EG_EINVAL, "eg_session_create: NULL argument");
    create_arg a = {name, *cfg};
    if (a.cfg.seg_tokens == 0) a.cfg.seg_tokens = 64;
    if (a.cfg.codec < 0) a.cfg.codec = EG_CODEC_Q8;
    if (a.cfg.rope_theta == 0) a.cfg.rope_theta = 10000.0f;
    if (a.cfg.rope_mode != EG_ROPE_NONE && a.cfg.rope_dims == 0) a.cfg.rope_dims = a.cfg.head_dim_k & ~1u;
    int rc = eg_session_config_check(name, &a.cfg);
    if (rc) return rc;
    eg_job job = {.apply = apply_create, .arg = &a};
    return eg_store_write(st, &job);
}

/* ---- open / close / info / list ------------------------------------------ */
int eg_session_open(eg_store *st, const char *name, const char *fingerprint, eg_msession **out)
{
    if (!st || !name || !out) return eg_mem_fail(EG_EINVAL, "eg_session_open: NULL argument");
    *out = NULL;
    int rc = name_check(name);
    if (rc) return rc;
    pthread_mutex_lock(&st->mu);
    if (st->closing) { pthread_mutex_unlock(&st->mu); return eg_mem_fail(EG_ECLOSED, "store closing"); }
    for (eg_msession *s = st->open_list; s; s = s->next) {
        if (strcmp(s->name, name) == 0 && !s->dropped) {
            if (fingerprint && strcmp(fingerprint, s->state.h.cfg.fingerprint) != 0) {
                pthread_mutex_unlock(&st->mu);
                return eg_mem_fail(EG_EFINGERPRINT, "session '%s' belongs to model '%s', not '%s'",
                                   name, s->state.h.cfg.fingerprint, fingerprint);
            }
            s->refs++;
            pthread_mutex_unlock(&st->mu);
            *out = s;
            return 0;
        }
    }
    pthread_mutex_unlock(&st->mu);

    eg_msession *s = calloc(1, sizeof *s);
    if (!s) return eg_mem_fail(EG_ENOMEM, "open: out of memory");
    MDB_txn *txn;
    if ((rc = eg_rtxn_begin(st, &txn))) { free(s); return rc; }
    rc = eg_sess_load(st, txn, name, &s->state);
    eg_rtxn_end(st, txn);
    if (rc) { free(s); return rc; }
    if (fingerprint && strcmp(fingerprint, s->state.h.cfg.fingerprint) != 0) {
        rc = eg_mem_fail(EG_EFINGERPRINT, "session '%s' belongs to model '%s', not '%s'", name,
                         s->state.h.cfg.fingerprint, fingerprint);
        eg_sess_state_free(&s->state);
        free(s);
        return rc;
    }
    s->st = st;
    snprintf(s->name, sizeof s->name, "%s", name);
    s->refs = 1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_lock(&st->mu);
    /* Another thread may have opened it meanwhile: use that one. */
    for (eg_msession *o = st->open_list; o; o = o->next) {
        if (strcmp(o->name, name) == 0 && !o->dropped) {
            o->refs++;
            pthread_mutex_unlock(&st->mu);
            eg_sess_state_free(&s->state);
            pthread_mutex_destroy(&s->mu);
            free(s);
            *out = o;
            return 0;
        }
    }
    s->next = st->open_list;
    st->open_list = s;
    pthread_mutex_unlock(&st->mu);
    *out = s;
    return 0;
}

int eg_session_close(eg_msession *s)
{
    if (!s) return 0;
    eg_store *st = s->st;
    pthread_mutex_lock(&st->mu);
    /* Wait for a batch that may be using s->work. */
    while (st->writer_active && s->refs == 1) pthread_cond_wait(&st->cv, &st->mu);
    if (--s->refs > 0) { pthread_mutex_unlock(&st->mu); return 0; }
    for (eg_msession **pp = &st->open_list; *pp; pp = &(*pp)->next)
        if (*pp == s) { *pp = s->next; break; }
    pthread_mutex_unlock(&st->mu);
    eg_sess_state_free(&s->state);
    eg_sess_state_free(&s->work);
    pthread_mutex_destroy(&s->mu);
    free(s);
    return 0;
}

int eg_session_info_get(eg_msession *s, eg_session_info *out)
{
    if (!s || !out) return eg_mem_fail(EG_EINVAL, "eg_session_info_get: NULL argument");
    pthread_mutex_lock(&s->mu);
    fill_info(s->name, &s->state, out);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int eg_session_info_by_name(eg_store *st, const char *name, eg_session_info *out)
{
    if (!st || !name || !out) return eg_mem_fail(EG_EINVAL, "eg_session_info_by_name: NULL argument");
    MDB_txn *txn;
    int rc = eg_rtxn_begin(st, &txn);
    if (rc) return rc;
    eg_sess_state s = {0};
    rc = eg_sess_load(st, txn, name, &s);
    eg_rtxn_end(st, txn);
    if (rc) return rc;
    fill_info(name, &s, out);
    eg_sess_state_free(&s);
    return 0;
}

int eg_session_list(eg_store *st, int (*fn)(void *, const eg_session_info *), void *ctx)
{
    if (!st || !fn) return eg_mem_fail(EG_EINVAL, "eg_session_list: NULL argument");
    MDB_txn *txn;
    MDB_cursor *cur;
    int rc = eg_rtxn_begin(st, &txn);
    if (rc) return rc;
    if ((rc = mdb_cursor_open(txn, st->db_catalog, &cur))) {
        eg_rtxn_end(st, txn);
        return eg_mdb_fail(rc, "catalog cursor");
    }
    MDB_val k, v;
    int r = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    int out = 0;
    char name[EG_NAME_MAX + 1];
    eg_sess_state s = {0};
    while (r == 0) {
        if (k.mv_size <= EG_NAME_MAX) {
            memcpy(name, k.mv_data, k.mv_size);
            name[k.mv_size] = 0;
            eg_session_info info;
            if ((out = eg_sess_load(st, txn, name, &s))) break;
            fill_info(name, &s, &info);
            if (fn(ctx, &info)) break;
        }
        r = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (!out && r && r != MDB_NOTFOUND) out = eg_mdb_fail(r, "catalog walk");
    eg_sess_state_free(&s);
    mdb_cursor_close(cur);
    eg_rtxn_end(st, txn);
    return out;
}
