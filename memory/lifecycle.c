/* lifecycle.c: drop, fork, truncate and the cold tier.
 *
 * Blocks belong to namespaces; a session reads its segments through its
 * lineage (namespace, end segment) list. The `refs` database holds, per
 * (namespace, session), how many segments of that namespace the session
 * uses (EG_LINEAGE_OPEN for the namespace it writes). A namespace keeps the
 * segments below the largest of its refs; the rest is reclaimed. */
#include "internal.h"
#include <stdlib.h>
#include <string.h>

#define TAIL_IDS 0xFFFFFFFFu

static int refs_set(eg_store *st, MDB_txn *txn, uint64_t ns, uint64_t sid, uint64_t upto, int del)
{
    unsigned char kb[16];
    eg_be64(kb, ns);
    eg_be64(kb + 8, sid);
    MDB_val k = {16, kb}, v = {8, &upto};
    int rc = del ? mdb_del(txn, st->db_refs, &k, NULL) : mdb_put(txn, st->db_refs, &k, &v, 0);
    if (rc == MDB_NOTFOUND) rc = 0;
    return rc ? eg_mdb_fail(rc, "refs write") : 0;
}

/* Largest ref of namespace ns held by a session other than `except`. */
static int refs_max(eg_store *st, MDB_txn *txn, uint64_t ns, uint64_t except, uint64_t *out)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, st->db_refs, &c);
    if (rc) return eg_mdb_fail(rc, "refs cursor");
    unsigned char kb[16];
    eg_be64(kb, ns);
    eg_be64(kb + 8, 0);
    MDB_val k = {16, kb}, v;
    uint64_t mx = 0;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 16 || eg_rd64(k.mv_data) != ns) break;
        uint64_t u;
        memcpy(&u, v.mv_data, 8);
        if (eg_rd64((unsigned char *)k.mv_data + 8) != except && u > mx) mx = u;
    }
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND) return eg_mdb_fail(rc, "refs walk");
    *out = mx;
    return 0;
}

/* Delete every key of dbi that starts with prefix[plen] and whose big-endian
 * segment at seg_off is >= from (seg_off < 0: every key of the prefix). */
static int del_range(MDB_txn *txn, MDB_dbi dbi, const unsigned char *prefix, size_t plen, int seg_off,
                     uint64_t from)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, dbi, &c);
    if (rc) return eg_mdb_fail(rc, "cursor");
    MDB_val k = {plen, (void *)prefix}, v;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0) break;
        if (seg_off >= 0 && ((size_t)seg_off + 8 > k.mv_size ||
                             eg_rd64((unsigned char *)k.mv_data + seg_off) < from))
            continue;
        if ((rc = mdb_cursor_del(c, 0))) break;
    }
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND) return eg_mdb_fail(rc, "delete range");
    return 0;
}

/* Session records of session sid: with copy_to 0, remove those whose kind
 * lacks EG_RECORD_KEEP (truncate); else copy those with it to session
 * copy_to (fork), checking each one's checksum first. The kind is at key
 * offset 16 (read.c's srec_key). Copies are gathered first and written
 * after the cursor closes, so no put moves a page under it. */
typedef struct srec_copy { unsigned char kb[28]; size_t len; struct srec_copy *next; unsigned char bytes[]; } srec_copy;

static int srec_sweep(eg_store *st, MDB_txn *txn, uint64_t sid, uint64_t copy_to)
{
    unsigned char p[8];
    eg_be64(p, sid);
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, st->db_router, &c), erc = 0;
    if (rc) return eg_mdb_fail(rc, "cursor");
    srec_copy *list = NULL;
    MDB_val k = {8, p}, v;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 28 || memcmp(k.mv_data, p, 8) != 0) break;
        const unsigned char *kb = k.mv_data;
        int keep = (eg_rd32(kb + 16) & EG_RECORD_KEEP) != 0;
        if (!copy_to) {
            if (!keep && (rc = mdb_cursor_del(c, 0))) break;
            continue;
        }
        if (!keep) continue;
        uint64_t sum;
        if (v.mv_size < 8 || (memcpy(&sum, v.mv_data, 8), eg_record_sum(kb, 28, (char *)v.mv_data + 8,
                                                                        v.mv_size - 8) != sum)) {
            erc = eg_mem_fail(EG_ECORRUPT, "fork: a router-weights record of the parent (layer %u, "
                              "kv-head %u) fails its checksum", eg_rd32(kb + 8), eg_rd32(kb + 12));
            break;
        }
        srec_copy *n = malloc(sizeof *n + v.mv_size - 8);
        if (!n) { erc = eg_mem_fail(EG_ENOMEM, "fork: out of memory"); break; }
        memcpy(n->kb, kb, 28);
        eg_be64(n->kb, copy_to);
        n->len = v.mv_size - 8;
        memcpy(n->bytes, (char *)v.mv_data + 8, n->len);
        n->next = list;
        list = n;
    }
    mdb_cursor_close(c);
    if (!erc && rc && rc != MDB_NOTFOUND) erc = eg_mdb_fail(rc, "session records");
    while (list) {
        srec_copy *n = list;
        list = n->next;
        MDB_val nk = {28, n->kb}, nv = {n->len + 8, NULL};
        int r = erc ? 0 : mdb_put(txn, st->db_router, &nk, &nv, MDB_RESERVE);
        if (r) erc = eg_mdb_fail(r, "fork: session record");
        else if (!erc) {
            uint64_t sum = eg_record_sum(n->kb, 28, n->bytes, n->len);
            memcpy(nv.mv_data, &sum, 8);
            memcpy((char *)nv.mv_data + 8, n->bytes, n->len);
        }
        free(n);
    }
    return erc;
}

/* Remove blocks, records and token ids of namespace ns from segment `from`. */
static int ns_delete_from(eg_store *st, MDB_txn *txn, uint64_t ns, uint64_t from)
{
    unsigned char p[8];
    eg_be64(p, ns);
    int rc;
    if ((rc = del_range(txn, st->db_blocks, p, 8, 16, from)) ||
        (rc = del_range(txn, st->db_summaries, p, 8, 16, from)) ||
        (rc = del_range(txn, st->db_tokens, p, 8, 8, from)))
        return rc;
    return 0;
}

static int reclaim(eg_store *st, MDB_txn *txn, uint64_t ns)
{
    uint64_t keep;
    int rc = refs_max(st, txn, ns, UINT64_MAX, &keep);
    if (rc || keep == EG_LINEAGE_OPEN) return rc;
    return ns_delete_from(st, txn, ns, keep);
}

/* Write raw tail rows for tokens [from, to) (one segment) of `src` into the
 * tail of session dst_sid: decoded from src's sealed block, or copied from
 * src's tail. Token ids come along. */
static int materialize(eg_store *st, MDB_txn *txn, const eg_sess_state *src, uint64_t dst_sid,
                       uint64_t from, uint64_t to)
{
    if (from >= to) return 0;
    const eg_session_config *c = &src->h.cfg;
    uint32_t S = c->seg_tokens, H = c->n_kv_heads, dk = c->head_dim_k, dv = c->head_dim_v;
    uint64_t seg = from / S;
    size_t rowf = (size_t)H * (dk + dv);
    int sealed = seg < src->h.n_sealed, rc = 0;
    if (!sealed && src->h.id == dst_sid) return 0;
    float *blk = sealed ? malloc((size_t)H * S * (dk + dv) * 4) : NULL;
    float *row = malloc(rowf * 4);
    if ((sealed && !blk) || !row) { rc = eg_mem_fail(EG_ENOMEM, "out of memory"); goto out; }
    uint64_t ns = eg_lineage_ns(&src->h, seg);
    for (uint32_t l = 0; l < c->n_layers && !rc; l++) {
        for (uint32_t h = 0; sealed && h < H && !rc; h++) {
            unsigned char kb[24];
            eg_block_key(kb, ns, l, h, seg);
            MDB_val k = {24, kb}, v;
            eg_block_hdr bh;
            int r = mdb_get(txn, st->db_blocks, &k, &v);
            if (r) { rc = r == MDB_NOTFOUND ? eg_mem_fail(EG_ECORRUPT, "block of segment %llu missing",
                                                         (unsigned long long)seg) : eg_mdb_fail(r, "block read"); break; }
            if ((rc = eg_block_check(kb, v.mv_data, v.mv_size, &bh))) break;
            float *bk = blk + (size_t)h * S * (dk + dv);
            rc = eg_block_decode(v.mv_data, &bh, bk, bk + (size_t)S * dk);
        }
        for (uint64_t t = from; t < to && !rc; t++) {
            unsigned char kb[20];
            MDB_val k = {20, kb}, v;
            if (sealed) {
                uint64_t i = t - seg * S;
                for (uint32_t h = 0; h < H; h++) {
                    float *bk = blk + (size_t)h * S * (dk + dv);
                    memcpy(row + (size_t)h * dk, bk + i * dk, (size_t)dk * 4);
                    memcpy(row + (size_t)H * dk + (size_t)h * dv, bk + (size_t)S * dk + i * dv, (size_t)dv * 4);
                }
            } else {
                eg_be64(kb, src->h.id);
                eg_be32(kb + 8, l);
                eg_be64(kb + 12, t);
                int r = mdb_get(txn, st->db_tail, &k, &v);
                if (r || v.mv_size != rowf * 4) { rc = eg_mem_fail(EG_ECORRUPT, "tail row %llu missing", (unsigned long long)t); break; }
                memcpy(row, v.mv_data, rowf * 4);
            }
            eg_be64(kb, dst_sid);
            eg_be32(kb + 8, l);
            eg_be64(kb + 12, t);
            v.mv_size = rowf * 4;
            v.mv_data = row;
            int r = mdb_put(txn, st->db_tail, &k, &v, 0);
            if (r) rc = eg_mdb_fail(r, "tail write");
        }
    }
    /* Token ids. */
    for (uint64_t t = from; t < to && !rc; t++) {
        unsigned char kb[20];
        uint32_t idtag[2];
        MDB_val k, v;
        int r;
        if (sealed) {
            eg_be64(kb, ns);
            eg_be64(kb + 8, seg);
            k.mv_size = 16; k.mv_data = kb;
            r = mdb_get(txn, st->db_tokens, &k, &v);
            if (r || v.mv_size != (size_t)S * 8) { rc = eg_mem_fail(EG_ECORRUPT, "token ids of segment %llu missing", (unsigned long long)seg); break; }
            memcpy(idtag, (char *)v.mv_data + (t - seg * S) * 8, 8);
        } else {
            eg_be64(kb, src->h.id);
            eg_be32(kb + 8, TAIL_IDS);
            eg_be64(kb + 12, t);
            k.mv_size = 20; k.mv_data = kb;
            r = mdb_get(txn, st->db_tail, &k, &v);
            if (r || v.mv_size != 8) { rc = eg_mem_fail(EG_ECORRUPT, "token id %llu missing", (unsigned long long)t); break; }
            memcpy(idtag, v.mv_data, 8);
        }
        eg_be64(kb, dst_sid);
        eg_be32(kb + 8, TAIL_IDS);
        eg_be64(kb + 12, t);
        k.mv_size = 20; k.mv_data = kb;
        v.mv_size = 8; v.mv_data = idtag;
        if ((r = mdb_put(txn, st->db_tail, &k, &v, 0))) rc = eg_mdb_fail(r, "tail write");
    }
out:
    free(blk);
    free(row);
    return rc;
}

/* Delete the session's tail rows of tokens >= from (every layer and ids). */
static int tail_cut(eg_store *st, MDB_txn *txn, const eg_sess_state *s, uint64_t from)
{
    unsigned char p[12];
    eg_be64(p, s->h.id);
    int rc = 0;
    for (uint32_t l = 0; l < s->h.cfg.n_layers && !rc; l++) {
        eg_be32(p + 8, l);
        rc = del_range(txn, st->db_tail, p, 12, 12, from);
    }
    eg_be32(p + 8, TAIL_IDS);
    return rc ? rc : del_range(txn, st->db_tail, p, 12, 12, from);
}

static int is_open(eg_store *st, const char *name)
{
    int open = 0;
    pthread_mutex_lock(&st->mu);
    for (eg_msession *s = st->open_list; s; s = s->next)
        if (!s->dropped && strcmp(s->name, name) == 0) open = 1;
    pthread_mutex_unlock(&st->mu);
    return open;
}

/* ---- drop ---------------------------------------------------------------- */
static int apply_drop(eg_store *st, MDB_txn *txn, eg_job *job)
{
    const char *name = job->arg;
    eg_sess_state s = {0};
    int rc = eg_sess_load(st, txn, name, &s);
    if (rc) return rc;
    if (is_open(st, name)) {
        eg_sess_state_free(&s);
        return eg_mem_fail(EG_EBUSY, "session '%s' is open: close it before dropping", name);
    }
    for (uint32_t i = 0; i < s.h.lineage_len && !rc; i++) {
        if (!(rc = refs_set(st, txn, s.h.lineage[i].ns, s.h.id, 0, 1)))
            rc = reclaim(st, txn, s.h.lineage[i].ns);
    }
    unsigned char p[8];
    eg_be64(p, s.h.id);
    if (!rc) rc = del_range(txn, st->db_tail, p, 8, -1, 0);
    if (!rc) rc = del_range(txn, st->db_router, p, 8, -1, 0);
    if (!rc) {
        MDB_val k = {strlen(name), (void *)name};
        int r = mdb_del(txn, st->db_catalog, &k, NULL);
        if (r) rc = eg_mdb_fail(r, "catalog delete");
    }
    eg_sess_state_free(&s);
    return rc;
}

int eg_session_drop(eg_store *st, const char *name)
{
    if (!st || !name) return eg_mem_fail(EG_EINVAL, "eg_session_drop: NULL argument");
    eg_job job = {.apply = apply_drop, .arg = (void *)name};
    return eg_store_write(st, &job);
}

/* ---- fork ---------------------------------------------------------------- */
typedef struct { const char *parent, *child; uint64_t at; } fork_arg;

/* Lineage of h cut at segment `upto`: entries below it, ends clipped. */
static uint32_t lineage_clip(const eg_sess_hdr *h, uint64_t upto, eg_lineage *out)
{
    uint32_t n = 0;
    uint64_t start = 0;
    for (uint32_t i = 0; i < h->lineage_len && start < upto; i++) {
        uint64_t end = h->lineage[i].end < upto ? h->lineage[i].end : upto;
        if (end > start) { out[n].ns = h->lineage[i].ns; out[n].end = end; n++; }
        start = h->lineage[i].end;
    }
    return n;
}

static int apply_fork(eg_store *st, MDB_txn *txn, eg_job *job)
{
    fork_arg *a = job->arg;
    eg_sess_state p = {0}, c = {0};
    int rc = eg_sess_load(st, txn, a->parent, &p);
    if (rc) return rc;
    MDB_val k = {strlen(a->child), (void *)a->child}, v;
    int r = mdb_get(txn, st->db_catalog, &k, &v);
    if (r == 0) { rc = eg_mem_fail(EG_EEXIST, "a session named '%s' exists", a->child); goto out; }
    if (a->at > p.h.n_tokens) {
        rc = eg_mem_fail(EG_ERANGE, "fork at token %llu beyond '%s' (%llu tokens)",
                         (unsigned long long)a->at, a->parent, (unsigned long long)p.h.n_tokens);
        goto out;
    }
    uint32_t S = p.h.cfg.seg_tokens;
    uint64_t full = a->at / S;
    c.h = p.h;
    c.h.lineage_len = lineage_clip(&p.h, full, c.h.lineage);
    if (c.h.lineage_len + 1 > EG_LINEAGE_MAX) {
        rc = eg_mem_fail(EG_ELIMIT, "fork: lineage deeper than %d generations", EG_LINEAGE_MAX);
        goto out;
    }
    uint64_t ns;
    if ((r = eg_meta_next(st, txn, "next_id", &c.h.id)) || (r = eg_meta_next(st, txn, "next_id", &ns))) {
        rc = eg_mdb_fail(r, "id counter");
        goto out;
    }
    for (uint32_t i = 0; i < c.h.lineage_len && !rc; i++)
        rc = refs_set(st, txn, c.h.lineage[i].ns, c.h.id, c.h.lineage[i].end, 0);
    c.h.lineage[c.h.lineage_len].ns = ns;
    c.h.lineage[c.h.lineage_len].end = EG_LINEAGE_OPEN;
    c.h.lineage_len++;
    if (!rc) rc = refs_set(st, txn, ns, c.h.id, EG_LINEAGE_OPEN, 0);
    c.h.n_tokens = a->at;
    c.h.n_sealed = full;
    c.layer_tokens = malloc((size_t)p.h.cfg.n_layers * 8);
    if (!c.layer_tokens) { rc = eg_mem_fail(EG_ENOMEM, "fork: out of memory"); goto out; }
    for (uint32_t l = 0; l < p.h.cfg.n_layers; l++) c.layer_tokens[l] = a->at;
    if (!rc) rc = materialize(st, txn, &p, c.h.id, full * S, a->at);
    if (!rc) rc = srec_sweep(st, txn, p.h.id, c.h.id);
    if (!rc) rc = eg_sess_save(st, txn, a->child, &c);
out:
    eg_sess_state_free(&p);
    eg_sess_state_free(&c);
    return rc;
}

int eg_session_fork(eg_store *st, const char *parent, const char *child, uint64_t at)
{
    if (!st || !parent || !child) return eg_mem_fail(EG_EINVAL, "eg_session_fork: NULL argument");
    int rc = eg_session_config_check(child, &(eg_session_config){.n_layers = 1, .n_kv_heads = 1,
        .n_q_heads = 1, .head_dim_k = 1, .head_dim_v = 1, .seg_tokens = 16, .cold_codec = -1});
    if (rc) return rc;
    fork_arg a = {parent, child, at};
    eg_job job = {.apply = apply_fork, .arg = &a};
    return eg_store_write(st, &job);
}

/* ---- truncate ------------------------------------------------------------ */
static int apply_truncate(eg_store *st, MDB_txn *txn, eg_job *job)
{
    uint64_t t = *(uint64_t *)job->arg;
    eg_sess_state *w = &job->s->work;
    uint64_t sid = w->h.id;
    int rc = eg_sess_alive(st, txn, job->s);
    if (rc) return rc;
    if (t > w->h.n_tokens)
        return eg_mem_fail(EG_ERANGE, "truncate to %llu tokens: the session holds %llu",
                           (unsigned long long)t, (unsigned long long)w->h.n_tokens);
    uint32_t S = w->h.cfg.seg_tokens;
    uint64_t full = t / S;
    rc = tail_cut(st, txn, w, t);
    if (!rc && full < w->h.n_sealed) rc = materialize(st, txn, w, sid, full * S, t);
    if (rc) return rc;
    /* Older namespaces: clip or let go. */
    eg_sess_hdr *h = &w->h;
    eg_lineage kept[EG_LINEAGE_MAX];
    uint32_t n = 0;
    uint64_t start = 0;
    uint32_t last = h->lineage_len - 1;
    for (uint32_t i = 0; i < last && !rc; i++) {
        uint64_t ns = h->lineage[i].ns, end = h->lineage[i].end;
        if (start < full) {
            kept[n].ns = ns;
            kept[n].end = end < full ? end : full;
            rc = refs_set(st, txn, ns, sid, kept[n].end, 0);
            n++;
        } else {
            rc = refs_set(st, txn, ns, sid, 0, 1);
        }
        if (!rc) rc = reclaim(st, txn, ns);
        start = end;
    }
    if (rc) return rc;
    uint64_t own = h->lineage[last].ns, others;
    if ((rc = refs_max(st, txn, own, sid, &others))) return rc;
    if (others > full) {
        /* A fork still reads our segments past the cut: keep them under the
         * old namespace and write new segments to a fresh one. */
        if (n + 2 > EG_LINEAGE_MAX)
            return eg_mem_fail(EG_ELIMIT, "truncate: lineage deeper than %d generations", EG_LINEAGE_MAX);
        uint64_t ns;
        int r = eg_meta_next(st, txn, "next_id", &ns);
        if (r) return eg_mdb_fail(r, "id counter");
        uint64_t own_start = n ? kept[n - 1].end : 0;
        if (own_start < full) {
            kept[n].ns = own;
            kept[n].end = full;
            n++;
            rc = refs_set(st, txn, own, sid, full, 0);
        } else {
            rc = refs_set(st, txn, own, sid, 0, 1);
        }
        if (!rc) rc = reclaim(st, txn, own);
        if (!rc) rc = refs_set(st, txn, ns, sid, EG_LINEAGE_OPEN, 0);
        kept[n].ns = ns;
    } else {
        rc = ns_delete_from(st, txn, own, full);
        kept[n].ns = own;
    }
    if (rc) return rc;
    kept[n].end = EG_LINEAGE_OPEN;
    n++;
    memcpy(h->lineage, kept, n * sizeof *kept);
    h->lineage_len = n;
    unsigned char p[8];
    eg_be64(p, sid);
    if ((rc = srec_sweep(st, txn, sid, 0))) return rc;
    h->n_tokens = t;
    h->n_sealed = full;
    for (uint32_t l = 0; l < h->cfg.n_layers; l++) w->layer_tokens[l] = t;
    return eg_sess_save(st, txn, job->s->name, w);
}

int eg_session_truncate(eg_msession *s, uint64_t n_tokens)
{
    if (!s) return eg_mem_fail(EG_EINVAL, "eg_session_truncate: NULL session");
    eg_job job = {.apply = apply_truncate, .s = s, .arg = &n_tokens};
    return eg_store_write(s->st, &job);
}

/* ---- cold tier ----------------------------------------------------------- */
typedef struct { uint64_t max, moved; } age_arg;

static int apply_age(eg_store *st, MDB_txn *txn, eg_job *job)
{
    age_arg *a = job->arg;
    eg_sess_state *w = &job->s->work;
    const eg_session_config *c = &w->h.cfg;
    a->moved = 0;
    int rc = eg_sess_alive(st, txn, job->s);
    if (rc) return rc;
    if (c->cold_codec < 0 || w->h.n_sealed <= c->cold_age_segments) return 0;
    uint64_t upto = w->h.n_sealed - c->cold_age_segments;
    uint32_t S = c->seg_tokens, dk = c->head_dim_k, dv = c->head_dim_v;
    float *k = malloc((size_t)S * dk * 4), *v = malloc((size_t)S * dv * 4);
    float *bk = malloc((size_t)S * dk * 4), *bv = malloc((size_t)S * dv * 4);
    if (!k || !v || !bk || !bv) { rc = eg_mem_fail(EG_ENOMEM, "age: out of memory"); goto out; }
    for (uint64_t seg = 0; seg < upto && !rc; seg++) {
        uint64_t ns = eg_lineage_ns(&w->h, seg);
        for (uint32_t l = 0; l < c->n_layers && !rc; l++)
            for (uint32_t h = 0; h < c->n_kv_heads && !rc; h++) {
                if (a->max && a->moved >= a->max) goto out;
                unsigned char kb[24];
                eg_block_key(kb, ns, l, h, seg);
                MDB_val key = {24, kb}, val;
                eg_block_hdr bh;
                int r = mdb_get(txn, st->db_blocks, &key, &val);
                if (r) { rc = eg_mdb_fail(r, "age: block read"); break; }
                if ((rc = eg_block_check(kb, val.mv_data, val.mv_size, &bh))) break;
                if (bh.codec == (uint8_t)c->cold_codec) continue;
                if ((rc = eg_block_decode(val.mv_data, &bh, k, v))) break;
                /* The new block carries the old one's worst error with it. */
                const char *pl = (const char *)val.mv_data + sizeof bh;
                if ((rc = eg_codec_error_bound(bh.codec, EG_KIND_K, pl, bh.klen, S, dk, bk)) ||
                    (rc = eg_codec_error_bound(bh.codec, EG_KIND_V, pl + bh.klen, bh.vlen, S, dv, bv)))
                    break;
                float pk = 0, pv = 0;
                for (size_t i = 0; i < (size_t)S * dk; i++) pk = bk[i] > pk ? bk[i] : pk;
                for (size_t i = 0; i < (size_t)S * dv; i++) pv = bv[i] > pv ? bv[i] : pv;
                pk = (pk + bh.prior_k) * (1 + 1e-6f);
                pv = (pv + bh.prior_v) * (1 + 1e-6f);
                uint64_t serial;
                if ((r = eg_meta_next(st, txn, "next_serial", &serial))) { rc = eg_mdb_fail(r, "serial"); break; }
                rc = eg_block_put(st, txn, ns, l, h, seg, c->cold_codec, S, dk, dv, k, v, serial, pk, pv, NULL, NULL);
                a->moved++;
            }
    }
out:
    free(k); free(v); free(bk); free(bv);
    return rc;
}

int eg_session_age(eg_msession *s, uint64_t max_blocks, uint64_t *out_moved)
{
    if (!s) return eg_mem_fail(EG_EINVAL, "eg_session_age: NULL session");
    age_arg a = {max_blocks, 0};
    eg_job job = {.apply = apply_age, .s = s, .arg = &a};
    int rc = eg_store_write(s->st, &job);
    if (!rc && out_moved) *out_moved = a.moved;
    return rc;
}
