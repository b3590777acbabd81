/* read.c: reading blocks (through the cache tier), the tail, token ids and
 * records; the cold tier's re-encoding. */
#include "internal.h"
#include <stdlib.h>
#include <string.h>

#define TAIL_IDS 0xFFFFFFFFu

/* Copy of the committed header (lineage, counts) for a reader. */
static int snapshot(eg_msession *s, eg_sess_hdr *h, uint64_t *layer_tokens, uint32_t layer)
{
    memset(h, 0, sizeof *h);
    if (!s) return eg_mem_fail(EG_EINVAL, "NULL session");
    pthread_mutex_lock(&s->mu);
    *h = s->state.h;
    if (layer_tokens && layer < h->cfg.n_layers) *layer_tokens = s->state.layer_tokens[layer];
    int dropped = s->dropped;
    pthread_mutex_unlock(&s->mu);
    if (dropped) return eg_mem_fail(EG_ECLOSED, "session '%s' was dropped", s->name);
    return 0;
}

static int check_lh(const eg_sess_hdr *h, uint32_t layer, uint32_t kvh)
{
    if (layer >= h->cfg.n_layers || kvh >= h->cfg.n_kv_heads)
        return eg_mem_fail(EG_ERANGE, "layer %u / kv-head %u out of range (%u layers, %u kv-heads)",
                           layer, kvh, h->cfg.n_layers, h->cfg.n_kv_heads);
    return 0;
}

static int check_seg(eg_msession *s, const eg_sess_hdr *h, uint64_t seg)
{
    if (seg >= h->n_sealed)
        return eg_mem_fail(EG_ERANGE, "session '%s': segment %llu is not sealed (%llu sealed)",
                           s->name, (unsigned long long)seg, (unsigned long long)h->n_sealed);
    return 0;
}

/* Fetch the raw block bytes of (layer, kvh, seg) within txn. */
static int get_block(eg_store *st, MDB_txn *txn, const eg_sess_hdr *h, uint32_t layer, uint32_t kvh,
                     uint64_t seg, unsigned char key[24], MDB_val *v)
{
    eg_block_key(key, eg_lineage_ns(h, seg), layer, kvh, seg);
    MDB_val k = {24, key};
    int rc = mdb_get(txn, st->db_blocks, &k, v);
    if (rc == MDB_NOTFOUND)
        return eg_mem_fail(EG_ECORRUPT, "session %llu: block layer %u kv-head %u segment %llu is "
                           "missing", (unsigned long long)h->id, layer, kvh, (unsigned long long)seg);
    return rc ? eg_mdb_fail(rc, "block read") : 0;
}

int eg_read_block(eg_msession *s, uint32_t layer, uint32_t kvh, uint64_t seg, float *keys, float *values)
{
    eg_sess_hdr h;
    int rc;
    if ((rc = snapshot(s, &h, NULL, 0)) || (rc = check_lh(&h, layer, kvh)) || (rc = check_seg(s, &h, seg)))
        return rc;
    eg_store *st = s->st;
    size_t nk = (size_t)h.cfg.seg_tokens * h.cfg.head_dim_k, nv = (size_t)h.cfg.seg_tokens * h.cfg.head_dim_v;
    MDB_txn *txn;
    if ((rc = eg_rtxn_begin(st, &txn))) return rc;
    unsigned char kb[24];
    MDB_val v;
    eg_block_hdr bh;
    if ((rc = get_block(st, txn, &h, layer, kvh, seg, kb, &v))) goto out;
    if (st->cache && v.mv_size >= sizeof bh) {
        memcpy(&bh, v.mv_data, sizeof bh);
        eg_cache_key ck = {eg_lineage_ns(&h, seg), seg, bh.serial, layer, kvh};
        if (eg_cache_get(st->cache, &ck, keys, nk, values, nv)) goto out;
    }
    if ((rc = eg_block_check(kb, v.mv_data, v.mv_size, &bh))) goto out;
    if (bh.n_tokens != h.cfg.seg_tokens || bh.dim_k != h.cfg.head_dim_k || bh.dim_v != h.cfg.head_dim_v) {
        rc = eg_mem_fail(EG_ECORRUPT, "session '%s': block layer %u kv-head %u segment %llu has the "
                         "wrong shape", s->name, layer, kvh, (unsigned long long)seg);
        goto out;
    }
    if (st->cache) {
        float *kt = keys, *vt = values, *tmp = NULL;
        if (!keys || !values) {
            tmp = malloc((nk + nv) * 4);
            if (!tmp) { rc = eg_mem_fail(EG_ENOMEM, "read: out of memory"); goto out; }
            if (!keys) kt = tmp;
            if (!values) vt = tmp + nk;
        }
        rc = eg_block_decode(v.mv_data, &bh, kt, vt);
        if (!rc) {
            eg_cache_key ck = {eg_lineage_ns(&h, seg), seg, bh.serial, layer, kvh};
            eg_cache_put(st->cache, &ck, kt, nk, vt, nv);
        }
        free(tmp);
    } else {
        rc = eg_block_decode(v.mv_data, &bh, keys, values);
    }
    if (rc) rc = eg_mem_fail(rc, "session '%s' layer %u kv-head %u segment %llu: %s", s->name, layer,
                             kvh, (unsigned long long)seg, eg_mem_last_error());
out:
    eg_rtxn_end(st, txn);
    if (!rc) {
        pthread_mutex_lock(&st->mu);
        st->stats.blocks_read++;
        pthread_mutex_unlock(&st->mu);
    }
    return rc;
}

int eg_read_blocks_encoded(eg_msession *s, uint32_t layer, uint32_t kvh, uint64_t first, uint64_t n,
                           eg_block_visit_fn fn, void *ctx)
{
    eg_sess_hdr h;
    int rc;
    if ((rc = snapshot(s, &h, NULL, 0)) || (rc = check_lh(&h, layer, kvh))) return rc;
    if (!fn) return eg_mem_fail(EG_EINVAL, "eg_read_blocks_encoded: fn required");
    if (first > h.n_sealed || n > h.n_sealed - first)
        return eg_mem_fail(EG_ERANGE, "session '%s': segments %llu..%llu are not all sealed (%llu sealed)",
                           s->name, (unsigned long long)first, (unsigned long long)(first + n),
                           (unsigned long long)h.n_sealed);
    eg_store *st = s->st;
    MDB_txn *txn;
    if ((rc = eg_rtxn_begin(st, &txn))) return rc;
    uint64_t read = 0;
    for (uint64_t i = 0; i < n && !rc; i++) {
        uint64_t seg = first + i;
        unsigned char kb[24];
        MDB_val v;
        eg_block_hdr bh;
        if ((rc = get_block(st, txn, &h, layer, kvh, seg, kb, &v)) ||
            (rc = eg_block_check(kb, v.mv_data, v.mv_size, &bh)))
            break;
        if (bh.n_tokens != h.cfg.seg_tokens || bh.dim_k != h.cfg.head_dim_k || bh.dim_v != h.cfg.head_dim_v) {
            rc = eg_mem_fail(EG_ECORRUPT, "session '%s': block layer %u kv-head %u segment %llu has the "
                             "wrong shape", s->name, layer, kvh, (unsigned long long)seg);
            break;
        }
        const char *p = (const char *)v.mv_data + sizeof bh;
        eg_encoded_block b = {bh.codec, bh.n_tokens, bh.dim_k, bh.dim_v, p, p + bh.klen, bh.klen, bh.vlen};
        read++;
        rc = fn(ctx, seg, &b);
    }
    eg_rtxn_end(st, txn);
    pthread_mutex_lock(&st->mu);
    st->stats.blocks_read += read;
    pthread_mutex_unlock(&st->mu);
    return rc;
}

/* Tail rows [first, first+n) of one layer from the snapshot h: one kv-head
 * (kvh >= 0: keys [n][dk]) or all of them (kvh < 0: keys [n][H][dk]). */
static int read_tail_rows(eg_msession *s, const eg_sess_hdr *h, uint32_t layer, int64_t kvh,
                          uint64_t first, uint64_t n, float *keys, float *values)
{
    uint32_t H = h->cfg.n_kv_heads, dk = h->cfg.head_dim_k, dv = h->cfg.head_dim_v;
    size_t kw = kvh < 0 ? (size_t)H * dk : dk, vw = kvh < 0 ? (size_t)H * dv : dv;
    size_t koff = kvh < 0 ? 0 : (size_t)kvh * dk, voff = (size_t)H * dk + (kvh < 0 ? 0 : (size_t)kvh * dv);
    MDB_txn *txn;
    int rc = eg_rtxn_begin(s->st, &txn);
    if (rc) return rc;
    size_t want = (size_t)H * (dk + dv) * 4;
    for (uint64_t i = 0; i < n && !rc; i++) {
        unsigned char kb[20];
        eg_be64(kb, h->id);
        eg_be32(kb + 8, layer);
        eg_be64(kb + 12, first + i);
        MDB_val k = {20, kb}, v;
        int r = mdb_get(txn, s->st->db_tail, &k, &v);
        if (r == 0 && v.mv_size != want) r = MDB_CORRUPTED;
        if (r) {
            rc = eg_mem_fail(EG_ECORRUPT, "session '%s': tail row layer %u token %llu missing or "
                             "damaged", s->name, layer, (unsigned long long)(first + i));
            break;
        }
        const char *p = v.mv_data; /* LMDB data need not be float-aligned */
        if (keys) memcpy(keys + i * kw, p + koff * 4, kw * 4);
        if (values) memcpy(values + i * vw, p + voff * 4, vw * 4);
    }
    eg_rtxn_end(s->st, txn);
    return rc;
}

int eg_read_tail(eg_msession *s, uint32_t layer, uint32_t kvh, float *keys, float *values, uint32_t *out_rows)
{
    eg_sess_hdr h;
    int rc;
    if ((rc = snapshot(s, &h, NULL, 0)) || (rc = check_lh(&h, layer, kvh))) return rc;
    if (!out_rows) return eg_mem_fail(EG_EINVAL, "eg_read_tail: out_rows required");
    uint64_t t0 = h.n_sealed * h.cfg.seg_tokens, n = h.n_tokens - t0;
    rc = read_tail_rows(s, &h, layer, kvh, t0, n, keys, values);
    if (!rc) *out_rows = (uint32_t)n;
    return rc;
}

int eg_session_layer_tokens(eg_msession *s, uint32_t layer, uint64_t *out)
{
    eg_sess_hdr h;
    uint64_t n = 0;
    int rc;
    if ((rc = snapshot(s, &h, &n, layer)) || (rc = check_lh(&h, layer, 0))) return rc;
    if (!out) return eg_mem_fail(EG_EINVAL, "eg_session_layer_tokens: NULL output");
    *out = n;
    return 0;
}

int eg_read_rows(eg_msession *s, uint32_t layer, uint64_t first, uint32_t n, float *keys,
                 float *values)
{
    eg_sess_hdr h;
    uint64_t lt = 0;
    int rc;
    if ((rc = snapshot(s, &h, &lt, layer)) || (rc = check_lh(&h, layer, 0))) return rc;
    uint64_t t0 = h.n_sealed * h.cfg.seg_tokens;
    if (first < t0 || first > lt || n > lt - first)
        return eg_mem_fail(EG_ERANGE, "session '%s' layer %u: rows %llu..%llu are not unsealed rows "
                           "(unsealed: %llu..%llu)", s->name, layer, (unsigned long long)first,
                           (unsigned long long)(first + n), (unsigned long long)t0,
                           (unsigned long long)lt);
    return read_tail_rows(s, &h, layer, -1, first, n, keys, values);
}

int eg_read_tokens(eg_msession *s, uint64_t first, uint32_t n, uint32_t *ids, uint32_t *tags)
{
    eg_sess_hdr h;
    int rc;
    if ((rc = snapshot(s, &h, NULL, 0))) return rc;
    if (first > h.n_tokens || n > h.n_tokens - first)
        return eg_mem_fail(EG_ERANGE, "tokens %llu..%llu beyond the session's %llu",
                           (unsigned long long)first, (unsigned long long)(first + n),
                           (unsigned long long)h.n_tokens);
    uint32_t S = h.cfg.seg_tokens;
    MDB_txn *txn;
    if ((rc = eg_rtxn_begin(s->st, &txn))) return rc;
    for (uint32_t i = 0; i < n && !rc;) {
        uint64_t t = first + i, seg = t / S;
        MDB_val v;
        unsigned char kb[20];
        if (seg < h.n_sealed) {
            eg_be64(kb, eg_lineage_ns(&h, seg));
            eg_be64(kb + 8, seg);
            MDB_val k = {16, kb};
            int r = mdb_get(txn, s->st->db_tokens, &k, &v);
            if (r || v.mv_size != (size_t)S * 8) {
                rc = eg_mem_fail(EG_ECORRUPT, "session '%s': token ids of segment %llu missing",
                                 s->name, (unsigned long long)seg);
                break;
            }
            for (; i < n && (first + i) / S == seg; i++) {
                size_t o = ((first + i) % S) * 8;
                if (ids) memcpy(&ids[i], (char *)v.mv_data + o, 4);
                if (tags) memcpy(&tags[i], (char *)v.mv_data + o + 4, 4);
            }
        } else {
            eg_be64(kb, h.id);
            eg_be32(kb + 8, TAIL_IDS);
            eg_be64(kb + 12, t);
            MDB_val k = {20, kb};
            int r = mdb_get(txn, s->st->db_tail, &k, &v);
            if (r || v.mv_size != 8) {
                rc = eg_mem_fail(EG_ECORRUPT, "session '%s': token id of token %llu missing",
                                 s->name, (unsigned long long)t);
                break;
            }
            if (ids) memcpy(&ids[i], v.mv_data, 4);
            if (tags) memcpy(&tags[i], (char *)v.mv_data + 4, 4);
            i++;
        }
    }
    eg_rtxn_end(s->st, txn);
    return rc;
}

/* Checked block bytes of a sealed segment, for codec and bound queries. */
static int with_block(eg_msession *s, uint32_t layer, uint32_t kvh, uint64_t seg,
                      int (*fn)(const MDB_val *v, const eg_block_hdr *bh, void *ctx), void *ctx)
{
    eg_sess_hdr h;
    int rc;
    if ((rc = snapshot(s, &h, NULL, 0)) || (rc = check_lh(&h, layer, kvh)) || (rc = check_seg(s, &h, seg)))
        return rc;
    MDB_txn *txn;
    if ((rc = eg_rtxn_begin(s->st, &txn))) return rc;
    unsigned char kb[24];
    MDB_val v;
    eg_block_hdr bh;
    if (!(rc = get_block(s->st, txn, &h, layer, kvh, seg, kb, &v)) &&
        !(rc = eg_block_check(kb, v.mv_data, v.mv_size, &bh)))
        rc = fn(&v, &bh, ctx);
    eg_rtxn_end(s->st, txn);
    return rc;
}

static int codec_of(const MDB_val *v, const eg_block_hdr *bh, void *ctx)
{
    (void)v;
    *(int *)ctx = bh->codec;
    return 0;
}

int eg_block_codec(eg_msession *s, uint32_t layer, uint32_t kvh, uint64_t seg, int *out)
{
    if (!out) return eg_mem_fail(EG_EINVAL, "eg_block_codec: out required");
    return with_block(s, layer, kvh, seg, codec_of, out);
}

static int bound_of(const MDB_val *v, const eg_block_hdr *bh, void *ctx)
{
    float **b = ctx;
    const char *p = (const char *)v->mv_data + sizeof *bh;
    int rc = 0;
    size_t nk = (size_t)bh->n_tokens * bh->dim_k, nv = (size_t)bh->n_tokens * bh->dim_v;
    if (b[0] && !(rc = eg_codec_error_bound(bh->codec, EG_KIND_K, p, bh->klen, bh->n_tokens, bh->dim_k, b[0])))
        for (size_t i = 0; i < nk; i++) b[0][i] += bh->prior_k;
    if (!rc && b[1] &&
        !(rc = eg_codec_error_bound(bh->codec, EG_KIND_V, p + bh->klen, bh->vlen, bh->n_tokens, bh->dim_v, b[1])))
        for (size_t i = 0; i < nv; i++) b[1][i] += bh->prior_v;
    return rc;
}

int eg_read_block_bound(eg_msession *s, uint32_t layer, uint32_t kvh, uint64_t seg, float *kb, float *vb)
{
    float *b[2] = {kb, vb};
    return with_block(s, layer, kvh, seg, bound_of, b);
}

/* ---- records ---------------------------------------------------------- */
static int copy_record(const void *kb, size_t klen, const MDB_val *v, void **out, size_t *out_len,
                       const char *what)
{
    if (v->mv_size < 8) return eg_mem_fail(EG_ECORRUPT, "%s: record shorter than its checksum", what);
    uint64_t sum;
    memcpy(&sum, v->mv_data, 8);
    size_t n = v->mv_size - 8;
    const char *p = (const char *)v->mv_data + 8;
    if (eg_record_sum(kb, klen, p, n) != sum)
        return eg_mem_fail(EG_ECORRUPT, "%s: record checksum mismatch", what);
    void *b = malloc(n ? n : 1);
    if (!b) return eg_mem_fail(EG_ENOMEM, "%s: out of memory", what);
    memcpy(b, p, n);
    *out = b;
    *out_len = n;
    return 0;
}

int eg_record_get(eg_msession *s, uint32_t layer, uint32_t kvh, uint64_t seg, uint32_t kind,
                  void **out, size_t *out_len)
{
    eg_sess_hdr h;
    int rc;
    if (!out || !out_len) return eg_mem_fail(EG_EINVAL, "eg_record_get: outputs required");
    if ((rc = snapshot(s, &h, NULL, 0)) || (rc = check_lh(&h, layer, kvh)) || (rc = check_seg(s, &h, seg)))
        return rc;
    unsigned char kb[28];
    eg_block_key(kb, eg_lineage_ns(&h, seg), layer, kvh, seg);
    eg_be32(kb + 24, kind);
    MDB_txn *txn;
    if ((rc = eg_rtxn_begin(s->st, &txn))) return rc;
    MDB_val k = {28, kb}, v;
    int r = mdb_get(txn, s->st->db_summaries, &k, &v);
    if (r == MDB_NOTFOUND)
        rc = eg_mem_fail(EG_ENOTFOUND, "no record kind %u for layer %u kv-head %u segment %llu", kind,
                         layer, kvh, (unsigned long long)seg);
    else if (r) rc = eg_mdb_fail(r, "record read");
    else rc = copy_record(kb, 28, &v, out, out_len, "segment record");
    eg_rtxn_end(s->st, txn);
    return rc;
}

int eg_record_get_range(eg_msession *s, uint32_t layer, uint32_t kvh, uint64_t first, uint64_t n,
                        uint32_t kind, size_t rec_len, void *out)
{
    eg_sess_hdr h;
    int rc;
    if (!out && n) return eg_mem_fail(EG_EINVAL, "eg_record_get_range: output required");
    if ((rc = snapshot(s, &h, NULL, 0)) || (rc = check_lh(&h, layer, kvh))) return rc;
    if (first > h.n_sealed || n > h.n_sealed - first)
        return eg_mem_fail(EG_ERANGE, "session '%s': segments %llu..%llu are not all sealed (%llu sealed)",
                           s->name, (unsigned long long)first, (unsigned long long)(first + n),
                           (unsigned long long)h.n_sealed);
    MDB_txn *txn;
    MDB_cursor *cur = NULL;
    if ((rc = eg_rtxn_begin(s->st, &txn))) return rc;
    if ((rc = mdb_cursor_open(txn, s->st->db_summaries, &cur))) {
        eg_rtxn_end(s->st, txn);
        return eg_mdb_fail(rc, "record cursor");
    }
    int placed = 0;   /* the cursor is on the previous segment's record */
    for (uint64_t i = 0; i < n && !rc; i++) {
        uint64_t seg = first + i;
        unsigned char kb[28];
        eg_block_key(kb, eg_lineage_ns(&h, seg), layer, kvh, seg);
        eg_be32(kb + 24, kind);
        MDB_val k = {28, kb}, v;
        int r = MDB_NOTFOUND;
        /* Records of one (layer, kv-head) are adjacent in key order, the
         * kinds of a segment between them: a few steps forward find the
         * next one without a search from the root. */
        for (int step = 0; placed && step < 8; step++) {
            MDB_val ck;
            if (mdb_cursor_get(cur, &ck, &v, MDB_NEXT)) break;
            int c = ck.mv_size == 28 ? memcmp(ck.mv_data, kb, 28) : 1;
            if (c == 0) { r = 0; break; }
            if (c > 0) break;
        }
        if (r) r = mdb_cursor_get(cur, &k, &v, MDB_SET_KEY);
        placed = r == 0;
        uint64_t sum;
        if (r == MDB_NOTFOUND)
            rc = eg_mem_fail(EG_ENOTFOUND, "no record kind %u for layer %u kv-head %u segment %llu", kind,
                             layer, kvh, (unsigned long long)seg);
        else if (r) rc = eg_mdb_fail(r, "record read");
        else if (v.mv_size != rec_len + 8)
            rc = eg_mem_fail(EG_ECORRUPT, "record kind %u layer %u kv-head %u segment %llu: %zu bytes, "
                             "expected %zu", kind, layer, kvh, (unsigned long long)seg,
                             v.mv_size < 8 ? 0 : v.mv_size - 8, rec_len);
        else if (memcpy(&sum, v.mv_data, 8), eg_record_sum(kb, 28, (char *)v.mv_data + 8, rec_len) != sum)
            rc = eg_mem_fail(EG_ECORRUPT, "record kind %u layer %u kv-head %u segment %llu: checksum "
                             "mismatch", kind, layer, kvh, (unsigned long long)seg);
        else memcpy((char *)out + i * rec_len, (char *)v.mv_data + 8, rec_len);
    }
    mdb_cursor_close(cur);
    eg_rtxn_end(s->st, txn);
    return rc;
}

static void srec_key(unsigned char kb[28], uint64_t sid, uint32_t layer, uint32_t kvh, uint32_t kind,
                     uint64_t index)
{
    eg_be64(kb, sid);
    eg_be32(kb + 8, layer);
    eg_be32(kb + 12, kvh);
    eg_be32(kb + 16, kind);
    eg_be64(kb + 20, index);
}

typedef struct { const eg_session_record *r; size_t n; } srec_arg;

static int apply_srec(eg_store *st, MDB_txn *txn, eg_job *job)
{
    srec_arg *a = job->arg;
    int rc = eg_sess_alive(st, txn, job->s);
    for (size_t i = 0; i < a->n && !rc; i++) {
        const eg_session_record *r = &a->r[i];
        unsigned char kb[28];
        srec_key(kb, job->s->work.h.id, r->layer, r->kv_head, r->kind, r->index);
        MDB_val k = {28, kb}, v = {r->len + 8, NULL};
        rc = mdb_put(txn, st->db_router, &k, &v, MDB_RESERVE);
        if (rc) return eg_mdb_fail(rc, "record write");
        uint64_t sum = eg_record_sum(kb, 28, r->bytes, r->len);
        memcpy(v.mv_data, &sum, 8);
        if (r->len) memcpy((char *)v.mv_data + 8, r->bytes, r->len);
    }
    return rc;
}

int eg_record_put_session_many(eg_msession *s, const eg_session_record *recs, size_t n)
{
    eg_sess_hdr h;
    int rc;
    if ((rc = snapshot(s, &h, NULL, 0))) return rc;
    if (!recs && n) return eg_mem_fail(EG_EINVAL, "eg_record_put_session_many: NULL records");
    for (size_t i = 0; i < n; i++) {
        if ((rc = check_lh(&h, recs[i].layer, recs[i].kv_head))) return rc;
        if (!recs[i].bytes && recs[i].len) return eg_mem_fail(EG_EINVAL, "session record %zu: NULL bytes", i);
        if (recs[i].len > EG_RECORD_MAX)
            return eg_mem_fail(EG_ELIMIT, "session record %zu: %zu bytes over the limit", i, recs[i].len);
    }
    if (!n) return 0;
    srec_arg a = {recs, n};
    eg_job job = {.apply = apply_srec, .s = s, .arg = &a};
    return eg_store_write(s->st, &job);
}

int eg_record_put_session(eg_msession *s, uint32_t layer, uint32_t kvh, uint32_t kind, uint64_t index,
                          const void *bytes, size_t len)
{
    eg_session_record r = {layer, kvh, kind, index, bytes, len};
    return eg_record_put_session_many(s, &r, 1);
}

int eg_record_get_session(eg_msession *s, uint32_t layer, uint32_t kvh, uint32_t kind, uint64_t index,
                          void **out, size_t *out_len)
{
    eg_sess_hdr h;
    int rc;
    if (!out || !out_len) return eg_mem_fail(EG_EINVAL, "eg_record_get_session: outputs required");
    if ((rc = snapshot(s, &h, NULL, 0)) || (rc = check_lh(&h, layer, kvh))) return rc;
    unsigned char kb[28];
    srec_key(kb, h.id, layer, kvh, kind, index);
    MDB_txn *txn;
    if ((rc = eg_rtxn_begin(s->st, &txn))) return rc;
    MDB_val k = {28, kb}, v;
    int r = mdb_get(txn, s->st->db_router, &k, &v);
    if (r == MDB_NOTFOUND) rc = eg_mem_fail(EG_ENOTFOUND, "no session record kind %u index %llu", kind,
                                            (unsigned long long)index);
    else if (r) rc = eg_mdb_fail(r, "record read");
    else rc = copy_record(kb, 28, &v, out, out_len, "session record");
    eg_rtxn_end(s->st, txn);
    return rc;
}
