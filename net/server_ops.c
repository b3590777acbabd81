/* server_ops.c: one decoded request run against the engine, on a worker
 * thread, into an answer body. The connection's session handles are only
 * touched here while its one request runs, so they need no lock. */
#include "server_internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Every failure leaves its message in net's last error: the answer's body. */
static int en_err(int rc)
{
    if (rc >= 0) return rc;
    return net_fail(rc, "%s", eg_engine_last_error());
}
static int mem_err(int rc, const char *what)
{
    if (rc >= 0) return rc;
    return net_fail(rc, "%s: %s", what, eg_mem_last_error());
}

static int handle_get(net_handles *hs, uint32_t id, eg_engine_session **out)
{
    if (id == 0 || id > hs->n || !hs->h[id - 1])
        return net_fail(EG_NET_EHANDLE, "session handle %u is not open on this connection", id);
    *out = hs->h[id - 1];
    return 0;
}

static int handle_add(net_handles *hs, int max, eg_engine_session *s, uint32_t *id)
{
    for (uint32_t i = 0; i < hs->n; i++)
        if (!hs->h[i]) { hs->h[i] = s; *id = i + 1; return 0; }
    if ((int)hs->n >= max)
        return net_fail(EG_NET_ELIMIT, "%d sessions open on this connection: close one first", max);
    if (hs->n == hs->cap) {
        uint32_t cap = hs->cap ? hs->cap * 2 : 8;
        eg_engine_session **h = realloc(hs->h, cap * sizeof *h);
        if (!h) return net_fail(EG_NET_ENOMEM, "session handles: out of memory");
        hs->h = h;
        hs->cap = cap;
    }
    hs->h[hs->n++] = s;
    *id = hs->n;
    return 0;
}

void net_handles_close_all(net_handles *hs)
{
    for (uint32_t i = 0; i < hs->n; i++)
        if (hs->h[i]) eg_engine_session_close(hs->h[i]);
    free(hs->h);
    memset(hs, 0, sizeof *hs);
}

typedef struct {
    eg_buf *ans;
    uint32_t n, max;
    int more;
} list_ctx;
static int list_one(void *ctx, const eg_session_info *info)
{
    list_ctx *l = ctx;
    if (l->n == l->max) { l->more = 1; return 1; }
    eg_wire_put_info(l->ans, info);
    l->n++;
    return 0;
}

typedef struct {
    char after[EG_NAME_MAX + 1];
    list_ctx *l;
} list_after_ctx;
static int list_after(void *ctx, const eg_session_info *info)
{
    list_after_ctx *a = ctx;
    if (a->after[0] && strcmp(info->name, a->after) <= 0) return 0;
    return list_one(a->l, info);
}

typedef struct {
    eg_buf *lines;
    uint32_t n;
} verify_ctx;
static void verify_line(void *ctx, const char *line)
{
    verify_ctx *v = ctx;
    if (v->n >= EG_NET_VERIFY_LINES) return;
    eg_buf_str(v->lines, line, strlen(line));
    v->n++;
}

/* The session's info, and its query shape against the one r says it sends. */
static int query_shape(eg_engine_session *s, const eg_request *r, eg_session_info *info)
{
    int rc = en_err(eg_engine_session_info(s, info));
    if (rc) return rc;
    if (r->n_q_heads != info->config.n_q_heads || r->head_dim_k != info->config.head_dim_k)
        return net_fail(EG_EN_ESHAPE, "queries of %u heads x %u dims; the session has %u x %u",
                        r->n_q_heads, r->head_dim_k, info->config.n_q_heads, info->config.head_dim_k);
    return 0;
}

/* r's n_queries queries as sent, converted to f32 (*q_out malloc'd, the
 * caller frees). */
static int query_f32(const eg_request *r, uint32_t n_queries, float **q_out)
{
    size_t n = (size_t)n_queries * r->n_q_heads * r->head_dim_k;
    float *q = malloc(n * sizeof *q);
    if (!q) return net_fail(EG_NET_ENOMEM, "queries: out of memory");
    int rc = eg_convert_to_f32((int)r->q_dtype, r->q_raw, n, q);
    if (rc) {
        free(q);
        return net_fail(rc == EG_ENONFINITE ? EG_EN_ENONFINITE : rc, "queries: %s", eg_mem_last_error());
    }
    *q_out = q;
    return 0;
}

/* The session's shape (into *info) against the request's, and queries
 * converted to f32 (*q_out malloc'd, the caller frees). */
static int attend_prepare(eg_engine_session *s, eg_request *r, eg_session_info *info_out, float **q_out)
{
    eg_session_info info;
    int rc = query_shape(s, r, &info);
    if (rc) return rc;
    if (r->attend.router == EG_ROUTER_ORACLE || r->n_oracle) {
        uint64_t want = (uint64_t)info.config.n_kv_heads * info.n_sealed;
        if (r->n_oracle != want)
            return net_fail(EG_EN_ESHAPE, "%u oracle masses; the session needs %llu (kv-heads x sealed segments)",
                            r->n_oracle, (unsigned long long)want);
        if (!r->n_oracle) r->attend.oracle_mass = NULL;
    }
    float *q = NULL;
    if ((rc = query_f32(r, r->attend.n_queries, &q))) return rc;
    r->attend.q = q;
    *q_out = q;
    *info_out = info;
    return 0;
}

static int run_attend(eg_engine_session *s, eg_request *r, eg_buf *ans, uint32_t frame_max)
{
    float *q = NULL;
    eg_session_info info;
    int rc = attend_prepare(s, r, &info, &q);
    if (rc) return rc;
    size_t rows = (size_t)r->attend.n_queries * info.config.n_q_heads;
    size_t nout = rows * info.config.head_dim_v;
    uint64_t bytes = 48 + (uint64_t)(nout + 2 * rows) * 4;
    if (bytes > frame_max) {
        free(q);
        return net_fail(EG_NET_ETOOBIG, "the answer would be %llu bytes, over the frame limit %u: send fewer queries",
                        (unsigned long long)bytes, frame_max);
    }
    size_t need = (nout + 2 * rows) * 4;
    float *tmp = malloc(need ? need : 4);
    if (!tmp) {
        free(tmp);
        free(q);
        return net_fail(EG_NET_ENOMEM, "attend answer: out of memory");
    }
    eg_attend_result res = {.out = tmp, .lse = tmp + nout, .lost = tmp + nout + rows};
    rc = r->dense ? eg_engine_attend_dense(s, &r->attend, &res, NULL) : eg_engine_attend(s, &r->attend, &res);
    free(q);
    if (rc) { free(tmp); return en_err(rc); }
    eg_buf_u64(ans, res.page_ins);
    eg_buf_u64(ans, res.segments);
    eg_buf_u64(ans, res.tokens);
    eg_buf_f64(ans, res.worst_lost);
    eg_buf_u32(ans, r->attend.n_queries);
    eg_buf_u32(ans, info.config.n_q_heads);
    eg_buf_u32(ans, info.config.head_dim_v);
    eg_buf_u32(ans, 0);
    eg_buf_bytes(ans, tmp, need); /* f32 little-endian: this host's layout (checked at build) */
    free(tmp);
    return ans->failed ? net_fail(EG_NET_ENOMEM, "attend answer: out of memory") : 0;
}

static int run_select(eg_engine_session *s, eg_request *r, eg_buf *ans, uint32_t frame_max)
{
    float *q = NULL;
    eg_session_info info;
    int rc = attend_prepare(s, r, &info, &q);
    if (rc) return rc;
    eg_select_result sel;
    rc = eg_engine_select(s, &r->attend, &sel);
    free(q);
    if (rc) return en_err(rc);
    size_t total = sel.offsets[sel.n_kv_heads];
    uint64_t bytes = 16 + (uint64_t)(2 * sel.n_kv_heads + 1) * 8 + (uint64_t)total * 12;
    if (bytes > frame_max) {
        eg_select_result_free(&sel);
        return net_fail(EG_NET_ETOOBIG, "the answer would be %llu bytes, over the frame limit %u",
                        (unsigned long long)bytes, frame_max);
    }
    eg_buf_u32(ans, sel.n_kv_heads);
    eg_buf_u32(ans, 0);
    eg_buf_u64(ans, sel.n_sealed);
    for (uint32_t h = 0; h <= sel.n_kv_heads; h++) eg_buf_u64(ans, sel.offsets[h]);
    for (uint32_t h = 0; h < sel.n_kv_heads; h++) eg_buf_u64(ans, sel.n_forced[h]);
    for (size_t i = 0; i < total; i++) eg_buf_u64(ans, (uint64_t)sel.segments[i]);
    for (size_t i = 0; i < total; i++) eg_buf_f32(ans, sel.scores[i]);
    eg_select_result_free(&sel);
    return ans->failed ? net_fail(EG_NET_ENOMEM, "select answer: out of memory") : 0;
}

/* ROUTER_TRAIN: queries checked against the session's shape and
 * converted; the answer is each kv-head's loss before and after. */
static int run_train(eg_engine_session *s, eg_request *r, eg_buf *ans)
{
    eg_session_info info;
    float *q = NULL;
    int rc = query_shape(s, r, &info);
    if (rc || (rc = query_f32(r, r->train.n_queries, &q))) return rc;
    uint32_t H = info.config.n_kv_heads;
    double *loss = malloc(2 * (size_t)H * sizeof *loss);
    if (!loss) rc = net_fail(EG_NET_ENOMEM, "router_train: out of memory");
    r->train.q = q;
    if (!rc) rc = en_err(eg_engine_router_train(s, &r->train, loss, loss + H));
    if (!rc) {
        eg_buf_u32(ans, H);
        eg_buf_u32(ans, 0);
        for (uint32_t i = 0; i < 2 * H; i++) eg_buf_f64(ans, loss[i]);
        if (ans->failed) rc = net_fail(EG_NET_ENOMEM, "router_train answer: out of memory");
    }
    free(q);
    free(loss);
    return rc;
}

static int run_fetch(eg_engine_session *s, eg_request *r, eg_buf *ans)
{
    eg_session_info info;
    int rc = en_err(eg_engine_session_info(s, &info));
    if (rc) return rc;
    uint32_t S = info.config.seg_tokens, dk = info.config.head_dim_k, dv = info.config.head_dim_v;
    float *k = (r->want & 1) ? malloc((size_t)S * dk * 4) : NULL;
    float *v = (r->want & 2) ? malloc((size_t)S * dv * 4) : NULL;
    if (((r->want & 1) && !k) || ((r->want & 2) && !v)) {
        free(k); free(v);
        return net_fail(EG_NET_ENOMEM, "fetch: out of memory");
    }
    uint32_t rows = 0;
    rc = eg_engine_fetch(s, r->layer, r->kv_head, r->segment, k, v, &rows);
    if (!rc) {
        eg_buf_u32(ans, rows);
        eg_buf_u32(ans, r->want);
        eg_buf_u32(ans, dk);
        eg_buf_u32(ans, dv);
        if (k) eg_buf_bytes(ans, k, (size_t)rows * dk * 4);
        if (v) eg_buf_bytes(ans, v, (size_t)rows * dv * 4);
    }
    free(k);
    free(v);
    return en_err(rc);
}

static int run_append(eg_engine_session *s, eg_request *r, eg_buf *ans)
{
    eg_session_info info;
    int rc = en_err(eg_engine_session_info(s, &info));
    if (rc) return rc;
    const eg_append_req *a = &r->append;
    if (a->layer < -1 || (a->layer >= 0 && (uint32_t)a->layer >= info.config.n_layers))
        return net_fail(EG_ERANGE, "append: layer %d of %u", a->layer, info.config.n_layers);
    uint64_t kb, vb, got_k = r->keys_bytes, got_v = r->values_bytes;
    eg_wire_append_bytes(&info.config, a->dtype, a->n_tokens, a->layer, &kb, &vb);
    if (kb != got_k || vb != got_v)
        return net_fail(EG_EN_ESHAPE, "append of %u tokens: the session needs %llu key and %llu value bytes, "
                        "the body has %llu and %llu", a->n_tokens, (unsigned long long)kb,
                        (unsigned long long)vb, (unsigned long long)got_k, (unsigned long long)got_v);
    uint64_t n = 0;
    rc = en_err(eg_engine_append(s, a, &n));
    if (rc) return rc;
    eg_buf_u64(ans, n);
    return 0;
}

int net_execute(eg_server *srv, net_handles *hs, const eg_frame_header *h, unsigned char *body,
                eg_buf *ans)
{
    eg_request r;
    int rc = eg_wire_decode_request(h->opcode, body, h->body_len, &r);
    if (rc) return rc;
    eg_engine *e = srv->engine;
    eg_engine_session *s = NULL;
    switch (r.op) {
    case EG_OP_CREATE:
        return en_err(eg_engine_session_create(e, r.name, &r.config));
    case EG_OP_OPEN: {
        rc = en_err(eg_engine_session_open(e, r.name, r.has_fingerprint ? r.fingerprint : NULL, &s));
        if (rc) return rc;
        uint32_t id = 0;
        eg_session_info info;
        if ((rc = handle_add(hs, srv->opt.handles_max, s, &id)) ||
            (rc = en_err(eg_engine_session_info(s, &info)))) {
            if (id) hs->h[id - 1] = NULL;
            eg_engine_session_close(s);
            return rc;
        }
        eg_buf_u32(ans, id);
        eg_buf_u32(ans, 0);
        return eg_wire_put_info(ans, &info);
    }
    case EG_OP_DROP:
        return en_err(eg_engine_session_drop(e, r.name));
    case EG_OP_FORK:
        return en_err(eg_engine_session_fork(e, r.name, r.name2, r.count));
    case EG_OP_LIST: {
        list_ctx l = {.ans = ans, .max = r.count && r.count < EG_NET_LIST_MAX ? (uint32_t)r.count : EG_NET_LIST_MAX};
        list_after_ctx a = {.l = &l};
        snprintf(a.after, sizeof a.after, "%s", r.name);
        eg_buf_u32(ans, 0);
        eg_buf_u32(ans, 0);
        rc = mem_err(eg_session_list(eg_engine_store(e), list_after, &a), "list");
        if (rc) return rc;
        for (int i = 0; i < 4; i++) ans->data[EG_NET_HEADER_BYTES + i] = (unsigned char)(l.n >> (8 * i));
        ans->data[EG_NET_HEADER_BYTES + 4] = (unsigned char)l.more;
        return ans->failed ? net_fail(EG_NET_ENOMEM, "list: out of memory") : 0;
    }
    case EG_OP_STATS: {
        eg_store_stats st;
        rc = mem_err(eg_store_get_stats(eg_engine_store(e), &st), "stats");
        if (rc) return rc;
        eg_server_stats sv;
        net_server_stats(srv, &sv);
        const uint64_t a[] = {st.cache_hits, st.cache_misses, st.cache_bytes, st.cache_entries,
                              st.cache_evictions, st.commits, st.appends, st.map_grows, st.map_bytes,
                              st.blocks_read, st.blocks_sealed};
        const uint64_t b[] = {sv.connections, sv.connections_total, sv.connections_refused, sv.requests,
                              sv.errors, sv.bytes_in, sv.bytes_out, sv.closed_slow, sv.closed_idle,
                              sv.closed_bad};
        eg_buf_u32(ans, 11);
        eg_buf_u32(ans, 10);
        for (int i = 0; i < 11; i++) eg_buf_u64(ans, a[i]);
        for (int i = 0; i < 10; i++) eg_buf_u64(ans, b[i]);
        return 0;
    }
    case EG_OP_SYNC:
        return mem_err(eg_store_sync(eg_engine_store(e)), "sync");
    case EG_OP_VERIFY: {
        eg_buf lines;
        eg_buf_init(&lines);
        verify_ctx v = {.lines = &lines};
        uint64_t problems = 0;
        rc = mem_err(eg_store_verify(eg_engine_store(e), r.name[0] ? r.name : NULL, verify_line, &v, &problems),
                     "verify");
        if (!rc) {
            eg_buf_u64(ans, problems);
            eg_buf_u32(ans, v.n);
            eg_buf_u32(ans, 0);
            if (lines.data) eg_buf_bytes(ans, lines.data + EG_NET_HEADER_BYTES, lines.len - EG_NET_HEADER_BYTES);
        }
        eg_buf_free(&lines);
        return rc;
    }
    default:
        break;
    }
    /* the rest act on an open session */
    if ((rc = handle_get(hs, r.handle, &s))) return rc;
    switch (r.op) {
    case EG_OP_CLOSE:
        hs->h[r.handle - 1] = NULL;
        return en_err(eg_engine_session_close(s));
    case EG_OP_INFO: {
        eg_session_info info;
        if ((rc = en_err(eg_engine_session_info(s, &info)))) return rc;
        return eg_wire_put_info(ans, &info);
    }
    case EG_OP_TRUNCATE: {
        if ((rc = en_err(eg_engine_session_truncate(s, r.count)))) return rc;
        eg_session_info info;
        if ((rc = en_err(eg_engine_session_info(s, &info)))) return rc;
        eg_buf_u64(ans, info.n_tokens);
        return 0;
    }
    case EG_OP_APPEND: return run_append(s, &r, ans);
    case EG_OP_ATTEND: return run_attend(s, &r, ans, srv->frame_max);
    case EG_OP_SELECT: return run_select(s, &r, ans, srv->frame_max);
    case EG_OP_FETCH: return run_fetch(s, &r, ans);
    case EG_OP_ROUTER_TRAIN: return run_train(s, &r, ans);
    case EG_OP_ROUTER_RESET: return en_err(eg_engine_router_reset(s, r.layer));
    default:
        return net_fail(EG_NET_EOPCODE, "opcode %d is not run by a worker", r.op);
    }
}
