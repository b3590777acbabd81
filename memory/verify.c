/* verify.c: walk sessions or the whole store and report damage: checksums,
 * block shapes, lineage references, token ids, tail rows, catalog counts,
 * and (whole store) references and blocks that no session accounts for. */
#include "internal.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TAIL_IDS 0xFFFFFFFFu

typedef struct {
    eg_store *st;
    MDB_txn *txn;
    void (*fn)(void *, const char *);
    void *ctx;
    uint64_t problems;
    uint64_t *sids;          /* sessions seen (whole-store walk) */
    size_t n_sids, cap_sids;
} vctx;

static void report(vctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(vctx *v, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    v->problems++;
    if (v->fn) v->fn(v->ctx, buf);
}

static int get(vctx *v, MDB_dbi dbi, const void *kb, size_t kl, MDB_val *out)
{
    MDB_val k = {kl, (void *)kb};
    return mdb_get(v->txn, dbi, &k, out);
}

static void verify_session(vctx *v, const char *name)
{
    eg_store *st = v->st;
    eg_sess_state s = {0};
    if (eg_sess_load(st, v->txn, name, &s)) {
        report(v, "session '%s': %s", name, eg_mem_last_error());
        return;
    }
    const eg_sess_hdr *h = &s.h;
    const eg_session_config *c = &h->cfg;
    if (v->n_sids == v->cap_sids) {
        size_t nc = v->cap_sids ? v->cap_sids * 2 : 64;
        uint64_t *p = realloc(v->sids, nc * 8);
        if (p) { v->sids = p; v->cap_sids = nc; }
    }
    if (v->n_sids < v->cap_sids) v->sids[v->n_sids++] = h->id;
    if (eg_session_config_check(NULL, c))
        report(v, "session '%s': stored config is invalid: %s", name, eg_mem_last_error());
    uint32_t S = c->seg_tokens, L = c->n_layers, H = c->n_kv_heads;
    uint64_t mx = h->n_tokens, mn = UINT64_MAX;
    for (uint32_t l = 0; l < L; l++) {
        if (s.layer_tokens[l] > mx) mx = s.layer_tokens[l];
        if (s.layer_tokens[l] < mn) mn = s.layer_tokens[l];
    }
    if (mn != h->n_tokens || h->n_sealed != h->n_tokens / S)
        report(v, "session '%s': counts disagree (tokens %llu, sealed %llu, least layer %llu)", name,
               (unsigned long long)h->n_tokens, (unsigned long long)h->n_sealed, (unsigned long long)mn);
    /* Lineage: increasing ends, the last one open, each with its ref. */
    uint64_t prev = 0;
    for (uint32_t i = 0; i < h->lineage_len; i++) {
        const eg_lineage *e = &h->lineage[i];
        int last = i + 1 == h->lineage_len;
        if ((last && e->end != EG_LINEAGE_OPEN) || (!last && (e->end <= prev || e->end == EG_LINEAGE_OPEN)))
            report(v, "session '%s': lineage entry %u (ns %llu, end %llu) out of order", name, i,
                   (unsigned long long)e->ns, (unsigned long long)e->end);
        unsigned char kb[16];
        eg_be64(kb, e->ns);
        eg_be64(kb + 8, h->id);
        MDB_val val;
        uint64_t upto = 0;
        if (get(v, st->db_refs, kb, 16, &val) || val.mv_size != 8)
            report(v, "session '%s': no reference to namespace %llu", name, (unsigned long long)e->ns);
        else if (memcpy(&upto, val.mv_data, 8), upto != e->end)
            report(v, "session '%s': reference to namespace %llu covers %llu segments, lineage says %llu",
                   name, (unsigned long long)e->ns, (unsigned long long)upto, (unsigned long long)e->end);
        prev = e->end;
    }
    /* Every sealed block and its token ids. */
    for (uint64_t seg = 0; seg < h->n_sealed; seg++) {
        uint64_t ns = eg_lineage_ns(h, seg);
        for (uint32_t l = 0; l < L; l++)
            for (uint32_t k = 0; k < H; k++) {
                unsigned char kb[24];
                eg_block_key(kb, ns, l, k, seg);
                MDB_val val;
                eg_block_hdr bh;
                if (get(v, st->db_blocks, kb, 24, &val))
                    report(v, "session '%s': block layer %u kv-head %u segment %llu missing", name, l, k,
                           (unsigned long long)seg);
                else if (eg_block_check(kb, val.mv_data, val.mv_size, &bh))
                    report(v, "session '%s': %s", name, eg_mem_last_error());
                else if (bh.n_tokens != S || bh.dim_k != c->head_dim_k || bh.dim_v != c->head_dim_v)
                    report(v, "session '%s': block layer %u kv-head %u segment %llu has the wrong shape",
                           name, l, k, (unsigned long long)seg);
            }
        unsigned char tk[16];
        eg_be64(tk, ns);
        eg_be64(tk + 8, seg);
        MDB_val val;
        if (get(v, st->db_tokens, tk, 16, &val) || val.mv_size != (size_t)S * 8)
            report(v, "session '%s': token ids of segment %llu missing or damaged", name, (unsigned long long)seg);
    }
    /* Tail: exactly the rows the counts call for. */
    uint64_t t0 = h->n_sealed * S;
    size_t rowb = (size_t)H * (c->head_dim_k + c->head_dim_v) * 4;
    for (uint32_t l = 0; l <= L; l++) {
        uint32_t layer = l == L ? TAIL_IDS : l;
        uint64_t want = l == L ? mx : s.layer_tokens[l];
        size_t size = l == L ? 8 : rowb;
        unsigned char kb[20];
        eg_be64(kb, h->id);
        eg_be32(kb + 8, layer);
        eg_be64(kb + 12, 0);
        MDB_cursor *cur;
        if (mdb_cursor_open(v->txn, st->db_tail, &cur)) { report(v, "tail cursor failed"); continue; }
        MDB_val k = {20, kb}, val;
        uint64_t expect = t0, extra = 0;
        for (int r = mdb_cursor_get(cur, &k, &val, MDB_SET_RANGE); r == 0; r = mdb_cursor_get(cur, &k, &val, MDB_NEXT)) {
            if (k.mv_size != 20 || memcmp(k.mv_data, kb, 12) != 0) break;
            uint64_t t = eg_rd64((unsigned char *)k.mv_data + 12);
            if (t == expect && t < want && val.mv_size == size) expect++;
            else extra++;
        }
        mdb_cursor_close(cur);
        if (expect != (want > t0 ? want : t0) || extra)
            report(v, "session '%s': tail of %s %u: rows up to %llu of %llu found, %llu unexpected", name,
                   l == L ? "token ids" : "layer", l, (unsigned long long)expect, (unsigned long long)want,
                   (unsigned long long)extra);
    }
    eg_sess_state_free(&s);
}

static int has_sid(const vctx *v, uint64_t sid)
{
    for (size_t i = 0; i < v->n_sids; i++) if (v->sids[i] == sid) return 1;
    return 0;
}

/* Whole store: refs of vanished sessions, blocks of namespaces nobody refers to. */
static void verify_refs(vctx *v)
{
    MDB_cursor *cur;
    MDB_val k, val;
    if (mdb_cursor_open(v->txn, v->st->db_refs, &cur)) { report(v, "refs cursor failed"); return; }
    for (int r = mdb_cursor_get(cur, &k, &val, MDB_FIRST); r == 0; r = mdb_cursor_get(cur, &k, &val, MDB_NEXT)) {
        if (k.mv_size != 16 || val.mv_size != 8) { report(v, "refs: damaged entry"); continue; }
        uint64_t sid = eg_rd64((unsigned char *)k.mv_data + 8);
        if (!has_sid(v, sid))
            report(v, "refs: namespace %llu referenced by session id %llu, which does not exist",
                   (unsigned long long)eg_rd64(k.mv_data), (unsigned long long)sid);
    }
    mdb_cursor_close(cur);
    if (mdb_cursor_open(v->txn, v->st->db_blocks, &cur)) { report(v, "blocks cursor failed"); return; }
    uint64_t last_ns = 0, orphans = 0;
    int last_has = 1;
    for (int r = mdb_cursor_get(cur, &k, &val, MDB_FIRST); r == 0; r = mdb_cursor_get(cur, &k, &val, MDB_NEXT)) {
        if (k.mv_size != 24) { report(v, "blocks: key of %zu bytes", k.mv_size); continue; }
        uint64_t ns = eg_rd64(k.mv_data);
        if (ns != last_ns) {
            unsigned char kb[16];
            eg_be64(kb, ns);
            eg_be64(kb + 8, 0);
            MDB_cursor *rc;
            MDB_val rk = {16, kb}, rv;
            last_has = 0;
            if (!mdb_cursor_open(v->txn, v->st->db_refs, &rc)) {
                if (!mdb_cursor_get(rc, &rk, &rv, MDB_SET_RANGE) && rk.mv_size == 16 && eg_rd64(rk.mv_data) == ns)
                    last_has = 1;
                mdb_cursor_close(rc);
            }
            last_ns = ns;
        }
        if (!last_has) orphans++;
    }
    mdb_cursor_close(cur);
    if (orphans) report(v, "blocks: %llu blocks belong to no session (space not reclaimed)",
                        (unsigned long long)orphans);
}

int eg_store_verify(eg_store *st, const char *name, void (*fn)(void *, const char *), void *ctx,
                    uint64_t *out_problems)
{
    if (!st) return eg_mem_fail(EG_EINVAL, "eg_store_verify: NULL store");
    vctx v = {.st = st, .fn = fn, .ctx = ctx};
    int rc = eg_rtxn_begin(st, &v.txn);
    if (rc) return rc;
    if (name) {
        verify_session(&v, name);
    } else {
        MDB_cursor *cur;
        MDB_val k, val;
        if ((rc = mdb_cursor_open(v.txn, st->db_catalog, &cur))) {
            eg_rtxn_end(st, v.txn);
            return eg_mdb_fail(rc, "catalog cursor");
        }
        char nm[EG_NAME_MAX + 1];
        for (int r = mdb_cursor_get(cur, &k, &val, MDB_FIRST); r == 0; r = mdb_cursor_get(cur, &k, &val, MDB_NEXT)) {
            if (k.mv_size == 0 || k.mv_size > EG_NAME_MAX) { report(&v, "catalog: key of %zu bytes", k.mv_size); continue; }
            memcpy(nm, k.mv_data, k.mv_size);
            nm[k.mv_size] = 0;
            verify_session(&v, nm);
        }
        mdb_cursor_close(cur);
        verify_refs(&v);
    }
    eg_rtxn_end(st, v.txn);
    free(v.sids);
    if (out_problems) *out_problems = v.problems;
    return 0;
}
