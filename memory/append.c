/* append.c: appending tokens and sealing full segments into blocks.
 *
 * Rows of the open segment live raw (f32) in the `tail` database, one row per
 * (session, layer, token): [n_kv_heads][head_dim_k] keys then
 * [n_kv_heads][head_dim_v] values. Token ids and tags of tail tokens are rows
 * with layer TAIL_IDS. When every layer holds the S tokens of a segment it is
 * sealed: one block per (layer, kv-head), its token ids in `tokens`, the seal
 * hook's records in `summaries`, and its tail rows deleted, all in the
 * transaction of the append that completed it. Rows that are sealed by the
 * same append never touch the tail. */
#include "internal.h"
#include <stdlib.h>
#include <string.h>

#define TAIL_IDS 0xFFFFFFFFu
#define APPEND_MAX_BYTES ((size_t)1 << 30)  /* f32 bytes of one append call */
#define LAYER_SKEW_MAX ((uint64_t)1 << 20)  /* tokens a layer may run ahead */

typedef struct {
    const eg_append_req *req;
    float *k, *v;          /* converted input, [req layers][H][n][dk] / [..][dv] */
    uint64_t n_after;
} append_arg;

struct eg_seal_ctx {
    eg_store *st;
    MDB_txn *txn;
    uint64_t ns, seg;
    uint32_t layer, kvh;
};

static void tail_key(unsigned char k[20], uint64_t sid, uint32_t layer, uint64_t tok)
{
    eg_be64(k, sid);
    eg_be32(k + 8, layer);
    eg_be64(k + 12, tok);
}

int eg_seal_put_record(eg_seal_ctx *ctx, uint32_t kind, const void *bytes, size_t len)
{
    if (!ctx || (!bytes && len) || kind > 255)
        return eg_mem_fail(EG_EINVAL, "eg_seal_put_record: bad argument");
    if (len > EG_RECORD_MAX) return eg_mem_fail(EG_ELIMIT, "record of %zu bytes over limit", len);
    unsigned char kb[28];
    eg_block_key(kb, ctx->ns, ctx->layer, ctx->kvh, ctx->seg);
    eg_be32(kb + 24, kind);
    /* Records carry a checksum like blocks: 8 bytes XXH3 then the bytes. */
    MDB_val k = {28, kb}, v = {len + 8, NULL};
    int rc = mdb_put(ctx->txn, ctx->st->db_summaries, &k, &v, MDB_RESERVE);
    if (rc) return eg_mdb_fail(rc, "record write");
    uint64_t sum = eg_record_sum(kb, 28, bytes, len);
    memcpy(v.mv_data, &sum, 8);
    if (len) memcpy((char *)v.mv_data + 8, bytes, len);
    return 0;
}

/* Row of (layer, token) for a seal: from the request if it holds it, else
 * from the tail (then deleted). row: [H*(dk+dv)] floats. */
static int seal_row(eg_store *st, MDB_txn *txn, const eg_sess_state *w, const append_arg *a,
                    const uint64_t *start, uint32_t layer, uint64_t tok, float *row)
{
    const eg_session_config *c = &w->h.cfg;
    const eg_append_req *r = a->req;
    uint32_t H = c->n_kv_heads, dk = c->head_dim_k, dv = c->head_dim_v;
    int in_req = (r->layer < 0 || (uint32_t)r->layer == layer) && tok >= start[layer] &&
                 tok < start[layer] + r->n_tokens;
    if (in_req) {
        size_t li = r->layer < 0 ? layer : 0, i = tok - start[layer], n = r->n_tokens;
        for (uint32_t h = 0; h < H; h++) {
            memcpy(row + (size_t)h * dk, a->k + ((li * H + h) * n + i) * dk, dk * 4);
            memcpy(row + (size_t)H * dk + (size_t)h * dv, a->v + ((li * H + h) * n + i) * dv, dv * 4);
        }
        return 0;
    }
    unsigned char kb[20];
    tail_key(kb, w->h.id, layer, tok);
    MDB_val k = {20, kb}, v;
    int rc = mdb_get(txn, st->db_tail, &k, &v);
    if (rc == MDB_NOTFOUND)
        return eg_mem_fail(EG_ECORRUPT, "session %llu: tail row of layer %u token %llu missing",
                           (unsigned long long)w->h.id, layer, (unsigned long long)tok);
    if (rc) return eg_mdb_fail(rc, "tail read");
    size_t want = (size_t)H * (dk + dv) * 4;
    if (v.mv_size != want)
        return eg_mem_fail(EG_ECORRUPT, "session %llu: tail row of layer %u token %llu has %zu bytes",
                           (unsigned long long)w->h.id, layer, (unsigned long long)tok, v.mv_size);
    memcpy(row, v.mv_data, want);
    rc = mdb_del(txn, st->db_tail, &k, NULL);
    return rc ? eg_mdb_fail(rc, "tail delete") : 0;
}

/* Token id and tag of a token for a seal, same sources as seal_row. */
static int seal_ids(eg_store *st, MDB_txn *txn, const eg_sess_state *w, const append_arg *a,
                    uint64_t old_max, uint64_t req_start, uint64_t tok, uint32_t *id, uint32_t *tag)
{
    const eg_append_req *r = a->req;
    if (tok >= old_max && tok >= req_start && tok < req_start + r->n_tokens) {
        *id = r->token_ids ? r->token_ids[tok - req_start] : 0;
        *tag = r->tag;
        return 0;
    }
    unsigned char kb[20];
    tail_key(kb, w->h.id, TAIL_IDS, tok);
    MDB_val k = {20, kb}, v;
    int rc = mdb_get(txn, st->db_tail, &k, &v);
    if (rc == MDB_NOTFOUND || (!rc && v.mv_size != 8))
        return eg_mem_fail(EG_ECORRUPT, "session %llu: token id row %llu missing or damaged",
                           (unsigned long long)w->h.id, (unsigned long long)tok);
    if (rc) return eg_mdb_fail(rc, "tail read");
    memcpy(id, v.mv_data, 4);
    memcpy(tag, (char *)v.mv_data + 4, 4);
    rc = mdb_del(txn, st->db_tail, &k, NULL);
    return rc ? eg_mdb_fail(rc, "tail delete") : 0;
}

static int seal_segment(eg_store *st, MDB_txn *txn, eg_sess_state *w, const append_arg *a,
                        const uint64_t *start, uint64_t old_max, uint64_t seg)
{
    const eg_session_config *c = &w->h.cfg;
    uint32_t S = c->seg_tokens, H = c->n_kv_heads, dk = c->head_dim_k, dv = c->head_dim_v;
    uint64_t ns = w->h.lineage[w->h.lineage_len - 1].ns, t0 = seg * S;
    uint64_t req_start = a->req->layer < 0 ? start[0] : start[a->req->layer];
    size_t rowf = (size_t)H * (dk + dv);
    float *rows = malloc((size_t)S * rowf * 4);
    float *kt = malloc((size_t)S * dk * 4), *vt = malloc((size_t)S * dv * 4);
    float *kd = malloc((size_t)S * dk * 4), *vd = malloc((size_t)S * dv * 4);
    uint32_t *ids = malloc((size_t)S * 8);
    int rc = 0;
    if (!rows || !kt || !vt || !kd || !vd || !ids) { rc = eg_mem_fail(EG_ENOMEM, "seal: out of memory"); goto out; }
    for (uint32_t i = 0; i < S && !rc; i++)
        rc = seal_ids(st, txn, w, a, old_max, req_start, t0 + i, &ids[2 * i], &ids[2 * i + 1]);
    if (rc) goto out;
    unsigned char tk[16];
    eg_be64(tk, ns);
    eg_be64(tk + 8, seg);
    MDB_val k = {16, tk}, v = {(size_t)S * 8, ids};
    if ((rc = mdb_put(txn, st->db_tokens, &k, &v, 0))) { rc = eg_mdb_fail(rc, "tokens write"); goto out; }
    uint32_t *tags = malloc((size_t)S * 4);
    if (!tags) { rc = eg_mem_fail(EG_ENOMEM, "seal: out of memory"); goto out; }
    for (uint32_t i = 0; i < S; i++) tags[i] = ids[2 * i + 1];
    for (uint32_t l = 0; l < c->n_layers && !rc; l++) {
        for (uint32_t i = 0; i < S && !rc; i++)
            rc = seal_row(st, txn, w, a, start, l, t0 + i, rows + i * rowf);
        for (uint32_t h = 0; h < H && !rc; h++) {
            for (uint32_t i = 0; i < S; i++) {
                memcpy(kt + (size_t)i * dk, rows + i * rowf + (size_t)h * dk, dk * 4);
                memcpy(vt + (size_t)i * dv, rows + i * rowf + (size_t)H * dk + (size_t)h * dv, dv * 4);
            }
            uint64_t serial;
            if ((rc = eg_meta_next(st, txn, "next_serial", &serial))) { rc = eg_mdb_fail(rc, "serial"); break; }
            /* The hook sees the keys as attention will: decoded. */
            rc = eg_block_put(st, txn, ns, l, h, seg, c->codec, S, dk, dv, kt, vt, serial, 0, 0,
                              st->hook ? kd : NULL, st->hook ? vd : NULL);
            if (rc || !st->hook) continue;
            eg_seal_view view = {w->h.id, l, h, seg, S, dk, dv, kd, vd, tags};
            eg_seal_ctx ctx = {st, txn, ns, seg, l, h};
            rc = st->hook(st->hook_user, &view, &ctx);
            if (rc > 0) rc = eg_mem_fail(EG_EINVAL, "seal hook refused segment %llu", (unsigned long long)seg);
        }
    }
    free(tags);
out:
    free(rows); free(kt); free(vt); free(kd); free(vd); free(ids);
    return rc;
}

static int apply_append(eg_store *st, MDB_txn *txn, eg_job *job)
{
    append_arg *a = job->arg;
    const eg_append_req *r = a->req;
    eg_sess_state *w = &job->s->work;
    const eg_session_config *c = &w->h.cfg;
    uint32_t L = c->n_layers, H = c->n_kv_heads, dk = c->head_dim_k, dv = c->head_dim_v;
    uint32_t S = c->seg_tokens, n = r->n_tokens;
    int rc = eg_sess_alive(st, txn, job->s);
    if (rc) return rc;
    uint64_t *start = malloc((size_t)L * 8);
    if (!start) return eg_mem_fail(EG_ENOMEM, "append: out of memory");
    memcpy(start, w->layer_tokens, (size_t)L * 8);
    uint64_t old_max = 0;
    for (uint32_t l = 0; l < L; l++) if (start[l] > old_max) old_max = start[l];
    if (r->layer < 0) {
        for (uint32_t l = 0; l < L; l++)
            if (start[l] != w->h.n_tokens) {
                rc = eg_mem_fail(EG_EORDER, "all-layer append while layer %u holds %llu tokens and "
                                 "the session %llu: finish the layer-by-layer append first", l,
                                 (unsigned long long)start[l], (unsigned long long)w->h.n_tokens);
                goto out;
            }
        for (uint32_t l = 0; l < L; l++) w->layer_tokens[l] += n;
    } else {
        if (start[r->layer] + n - w->h.n_tokens > LAYER_SKEW_MAX) {
            rc = eg_mem_fail(EG_ELIMIT, "layer %d would run more than %llu tokens ahead of the others",
                             r->layer, (unsigned long long)LAYER_SKEW_MAX);
            goto out;
        }
        w->layer_tokens[r->layer] += n;
    }
    uint64_t complete = UINT64_MAX;
    for (uint32_t l = 0; l < L; l++) if (w->layer_tokens[l] < complete) complete = w->layer_tokens[l];
    uint64_t new_sealed = complete / S;
    for (uint64_t seg = w->h.n_sealed; seg < new_sealed && !rc; seg++) {
        rc = seal_segment(st, txn, w, a, start, old_max, seg);
        if (!rc) w->h.n_sealed = seg + 1;
    }
    if (rc) goto out;
    /* Rows not sealed go to the tail. */
    size_t rowf = (size_t)H * (dk + dv);
    float *row = malloc(rowf * 4);
    if (!row) { rc = eg_mem_fail(EG_ENOMEM, "append: out of memory"); goto out; }
    uint32_t l0 = r->layer < 0 ? 0 : (uint32_t)r->layer, l1 = r->layer < 0 ? L : l0 + 1;
    for (uint32_t l = l0; l < l1 && !rc; l++) {
        size_t li = r->layer < 0 ? l : 0;
        for (uint32_t i = 0; i < n && !rc; i++) {
            uint64_t tok = start[l] + i;
            if (tok < new_sealed * S) continue;
            for (uint32_t h = 0; h < H; h++) {
                memcpy(row + (size_t)h * dk, a->k + ((li * H + h) * n + i) * dk, dk * 4);
                memcpy(row + (size_t)H * dk + (size_t)h * dv, a->v + ((li * H + h) * n + i) * dv, dv * 4);
            }
            unsigned char kb[20];
            tail_key(kb, w->h.id, l, tok);
            MDB_val k = {20, kb}, v = {rowf * 4, row};
            int e = mdb_put(txn, st->db_tail, &k, &v, 0);
            if (e) rc = eg_mdb_fail(e, "tail write");
        }
    }
    free(row);
    /* Token ids of tokens new to the session and not sealed. */
    uint64_t rs = start[l0];
    for (uint32_t i = 0; i < n && !rc; i++) {
        uint64_t tok = rs + i;
        if (tok < old_max || tok < new_sealed * S) continue;
        uint32_t idtag[2] = {r->token_ids ? r->token_ids[i] : 0, r->tag};
        unsigned char kb[20];
        tail_key(kb, w->h.id, TAIL_IDS, tok);
        MDB_val k = {20, kb}, v = {8, idtag};
        int e = mdb_put(txn, st->db_tail, &k, &v, 0);
        if (e) rc = eg_mdb_fail(e, "tail write");
    }
    if (rc) goto out;
    w->h.n_tokens = complete;
    rc = eg_sess_save(st, txn, job->s->name, w);
    a->n_after = complete;
out:
    free(start);
    return rc;
}

int eg_append(eg_msession *s, const eg_append_req *r, uint64_t *out_n_tokens)
{
    if (!s || !r || !r->keys || !r->values)
        return eg_mem_fail(EG_EINVAL, "eg_append: session, request, keys and values required");
    const eg_session_config *c = &s->state.h.cfg;
    if (r->n_tokens == 0) return eg_mem_fail(EG_EINVAL, "eg_append: zero tokens");
    if (r->layer < -1 || r->layer >= (int32_t)c->n_layers)
        return eg_mem_fail(EG_ERANGE, "eg_append: layer %d out of range 0..%u (or -1 for all)",
                           r->layer, c->n_layers - 1);
    if (r->dtype != EG_DTYPE_F32 && r->dtype != EG_DTYPE_F16 && r->dtype != EG_DTYPE_BF16)
        return eg_mem_fail(EG_EDTYPE, "eg_append: unknown dtype %d", r->dtype);
    size_t layers = r->layer < 0 ? c->n_layers : 1;
    size_t nk = layers * c->n_kv_heads * r->n_tokens * c->head_dim_k;
    size_t nv = layers * c->n_kv_heads * r->n_tokens * c->head_dim_v;
    if ((nk + nv) * 4 > APPEND_MAX_BYTES)
        return eg_mem_fail(EG_ELIMIT, "eg_append: %zu bytes in one call, limit %zu: split it",
                           (nk + nv) * 4, APPEND_MAX_BYTES);
    append_arg a = {r, malloc(nk * 4), malloc(nv * 4), 0};
    int rc;
    if (!a.k || !a.v) { rc = eg_mem_fail(EG_ENOMEM, "eg_append: out of memory"); goto out; }
    if ((rc = eg_convert_to_f32(r->dtype, r->keys, nk, a.k))) {
        rc = eg_mem_fail(rc, "eg_append: keys: %s", eg_mem_last_error());
        goto out;
    }
    if ((rc = eg_convert_to_f32(r->dtype, r->values, nv, a.v))) {
        rc = eg_mem_fail(rc, "eg_append: values: %s", eg_mem_last_error());
        goto out;
    }
    eg_job job = {.apply = apply_append, .s = s, .arg = &a};
    rc = eg_store_write(s->st, &job);
    if (!rc) {
        if (out_n_tokens) *out_n_tokens = a.n_after;
        pthread_mutex_lock(&s->st->mu);
        s->st->stats.appends++;
        pthread_mutex_unlock(&s->st->mu);
    }
out:
    free(a.k);
    free(a.v);
    return rc;
}
