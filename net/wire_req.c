/* wire_req.c: request bodies, encoded by the client and decoded by the
 * server (and the fuzz target), one layout per opcode as docs/protocol.md
 * gives it. Decoding never allocates and never trusts a length before
 * comparing it with the bytes that are actually there. */
#include "net_internal.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

size_t net_dtype_size(int dtype)
{
    return dtype == EG_DTYPE_F32 ? 4 : dtype == EG_DTYPE_F16 || dtype == EG_DTYPE_BF16 ? 2 : 0;
}

/* A session name: memory/'s own codes for the cases it names, so that a
 * client sees the code it would see in process. */
static int cur_name(eg_cursor *c, char *out, const char *what)
{
    size_t n = eg_cur_u16(c);
    const unsigned char *p = eg_cur_bytes(c, n);
    out[0] = 0;
    if (!p) return net_fail(EG_NET_EBODY, "%s: string longer than the body", what);
    if (n > EG_NAME_MAX) return net_fail(EG_ENAME_LONG, "%s: %zu bytes, over %d", what, n, EG_NAME_MAX);
    if (memchr(p, 0, n)) return net_fail(EG_ENAME_UTF8, "%s holds a NUL byte", what);
    memcpy(out, p, n);
    out[n] = 0;
    return 0;
}

static int body_end(eg_cursor *c, int op)
{
    if (c->bad) return net_fail(EG_NET_EBODY, "%s body is shorter than its fields", eg_op_name(op));
    if (c->off != c->len)
        return net_fail(EG_NET_EBODY, "%s body has %zu bytes after its last field", eg_op_name(op),
                        c->len - c->off);
    return 0;
}

int eg_wire_append_bytes(const eg_session_config *shape, int dtype, uint32_t n_tokens,
                         int32_t layer, uint64_t *keys_bytes, uint64_t *values_bytes)
{
    size_t es = net_dtype_size(dtype);
    if (!shape || !es) return -1;
    uint64_t layers = layer < 0 ? shape->n_layers : 1;
    uint64_t rows = layers * shape->n_kv_heads * (uint64_t)n_tokens; /* < 2^52 */
    *keys_bytes = rows * shape->head_dim_k * es;
    *values_bytes = rows * shape->head_dim_v * es;
    return 0;
}

static int decode_append(eg_cursor *c, eg_request *r)
{
    eg_append_req *a = &r->append;
    r->handle = eg_cur_u32(c);
    a->dtype = (int)eg_cur_u32(c);
    a->n_tokens = eg_cur_u32(c);
    a->layer = (int32_t)eg_cur_u32(c);
    a->tag = eg_cur_u32(c);
    uint32_t flags = eg_cur_u32(c);
    uint64_t kb = eg_cur_u64(c), vb = eg_cur_u64(c);
    if (c->bad) return net_fail(EG_NET_EBODY, "append body shorter than its %u fixed bytes", NET_APPEND_FIXED);
    size_t es = net_dtype_size(a->dtype);
    if (!es) return net_fail(EG_EDTYPE, "append dtype %d (0 f32, 1 f16, 2 bf16)", a->dtype);
    if (flags & ~NET_APPEND_IDS) return net_fail(EG_NET_EBODY, "append flags 0x%x: unknown bits", flags);
    if (a->n_tokens == 0) return net_fail(EG_NET_EBODY, "append of 0 tokens");
    if (flags & NET_APPEND_IDS) {
        const unsigned char *ids = eg_cur_bytes(c, (size_t)a->n_tokens * 4);
        if (!ids) return net_fail(EG_NET_EBODY, "append: %u token ids longer than the body", a->n_tokens);
        a->token_ids = (const uint32_t *)(const void *)ids;
        net_cur_pad8(c);
    }
    if (kb == 0 || vb == 0 || kb % es || vb % es)
        return net_fail(EG_NET_EBODY, "append: keys %llu and values %llu bytes are not whole %zu-byte values",
                        (unsigned long long)kb, (unsigned long long)vb, es);
    size_t left = c->len - c->off;
    if (c->bad || kb > left || vb != left - kb)
        return net_fail(EG_NET_EBODY, "append: keys %llu + values %llu bytes, but %zu bytes follow",
                        (unsigned long long)kb, (unsigned long long)vb, c->bad ? 0 : left);
    r->keys_bytes = kb;
    r->values_bytes = vb;
    a->keys = eg_cur_bytes(c, (size_t)kb);
    a->values = eg_cur_bytes(c, (size_t)vb);
    return body_end(c, r->op);
}

/* The query fields attend, select and router_train share: dtype (*es its
 * size), count (1..max) and shape. */
static int query_fields(const eg_request *r, uint32_t n_queries, int max, size_t *es)
{
    *es = net_dtype_size((int)r->q_dtype);
    if (!*es) return net_fail(EG_EDTYPE, "query dtype %u (0 f32, 1 f16, 2 bf16)", r->q_dtype);
    if (n_queries == 0 || n_queries > (uint32_t)max)
        return net_fail(EG_EN_ESHAPE, "%s: %u queries, 1..%d per call", eg_op_name(r->op), n_queries, max);
    if (r->n_q_heads == 0 || r->n_q_heads > EG_KV_HEADS_MAX * 64u || r->head_dim_k == 0 ||
        r->head_dim_k > EG_HEAD_DIM_MAX)
        return net_fail(EG_EN_ESHAPE, "query shape %u heads x %u dims is out of range", r->n_q_heads, r->head_dim_k);
    return 0;
}

static int decode_attend(eg_cursor *c, eg_request *r)
{
    eg_attend_req *q = &r->attend;
    eg_attend_req_init(q);
    r->handle = eg_cur_u32(c);
    q->layer = eg_cur_u32(c);
    q->n_queries = eg_cur_u32(c);
    r->n_q_heads = eg_cur_u32(c);
    r->head_dim_k = eg_cur_u32(c);
    r->q_dtype = eg_cur_u32(c);
    uint32_t flags = eg_cur_u32(c);
    q->scale = eg_cur_f32(c);
    q->budget_tokens = (int64_t)eg_cur_u64(c);
    q->n_sink_segments = (int)(int32_t)eg_cur_u32(c);
    q->router = (eg_router_kind)eg_cur_u32(c);
    q->recent_tokens = (int64_t)eg_cur_u64(c);
    q->max_lost = eg_cur_f64(c);
    uint32_t n_tags = eg_cur_u32(c);
    r->n_oracle = eg_cur_u32(c);
    if (c->bad) return net_fail(EG_NET_EBODY, "%s body shorter than its %u fixed bytes", eg_op_name(r->op), NET_ATTEND_FIXED);
    if (flags & ~NET_AF_ALL) return net_fail(EG_NET_EBODY, "%s flags 0x%x: unknown bits", eg_op_name(r->op), flags);
    if (r->op == EG_OP_SELECT && (flags & NET_AF_DENSE))
        return net_fail(EG_NET_EBODY, "select has no dense mode");
    q->include_self = (flags & NET_AF_INCLUDE_SELF) != 0;
    q->remap_positions = (flags & NET_AF_REMAP) != 0;
    r->dense = (flags & NET_AF_DENSE) != 0;
    if ((flags & NET_AF_RANK_MAX) && (flags & NET_AF_RANK_MASS))
        return net_fail(EG_NET_EBODY, "%s flags: rank_max and rank_mass together", eg_op_name(r->op));
    q->aggregate = (flags & NET_AF_RANK_MAX) ? EG_ROUTE_AGG_MAX : (flags & NET_AF_RANK_MASS) ? EG_ROUTE_AGG_MASS : 0;
    size_t es;
    int rc = query_fields(r, q->n_queries, EG_EN_QUERIES_MAX, &es);
    if (rc) return rc;
    const unsigned char *pos = eg_cur_bytes(c, (size_t)q->n_queries * 8);
    const unsigned char *tags = n_tags ? eg_cur_bytes(c, (size_t)n_tags * 4) : NULL;
    net_cur_pad8(c);
    const unsigned char *oracle = r->n_oracle ? eg_cur_bytes(c, (size_t)r->n_oracle * 4) : NULL;
    net_cur_pad8(c);
    uint64_t qb = (uint64_t)q->n_queries * r->n_q_heads * r->head_dim_k * es;
    if (c->bad || qb != c->len - c->off)
        return net_fail(EG_NET_EBODY, "%s: positions, %u tags, %u oracle masses and %llu query bytes "
                        "do not add up to the body", eg_op_name(r->op), n_tags, r->n_oracle,
                        (unsigned long long)qb);
    if (n_tags > INT32_MAX) return net_fail(EG_NET_EBODY, "%u tags", n_tags);
    q->pos = (const int64_t *)(const void *)pos;
    q->tags = (const uint32_t *)(const void *)tags;
    q->n_tags = (int)n_tags;
    q->oracle_mass = (const float *)(const void *)oracle;
    r->q_raw = eg_cur_bytes(c, (size_t)qb);
    q->q = NULL; /* the server converts q_raw to f32 */
    return body_end(c, r->op);
}

/* ROUTER_TRAIN: fixed fields, positions, queries (the server converts). */
static int decode_train(eg_cursor *c, eg_request *r)
{
    eg_router_train_req *t = &r->train;
    eg_router_train_req_init(t);
    r->handle = eg_cur_u32(c);
    t->layer = eg_cur_u32(c);
    t->n_queries = eg_cur_u32(c);
    r->n_q_heads = eg_cur_u32(c);
    r->head_dim_k = eg_cur_u32(c);
    r->q_dtype = eg_cur_u32(c);
    t->steps = (int)(int32_t)eg_cur_u32(c);
    t->lr = eg_cur_f32(c);
    t->scale = eg_cur_f32(c);
    t->n_sink_segments = (int)(int32_t)eg_cur_u32(c);
    t->recent_tokens = (int64_t)eg_cur_u64(c);
    if (c->bad) return net_fail(EG_NET_EBODY, "router_train body shorter than its %u fixed bytes", NET_TRAIN_FIXED);
    size_t es;
    int rc = query_fields(r, t->n_queries, EG_EN_TRAIN_ROWS_MAX, &es);
    if (rc) return rc;
    const unsigned char *pos = eg_cur_bytes(c, (size_t)t->n_queries * 8);
    uint64_t qb = (uint64_t)t->n_queries * r->n_q_heads * r->head_dim_k * es;
    if (c->bad || qb != c->len - c->off)
        return net_fail(EG_NET_EBODY, "router_train: positions and %llu query bytes do not add up to the body",
                        (unsigned long long)qb);
    t->pos = (const int64_t *)(const void *)pos;
    r->q_raw = eg_cur_bytes(c, (size_t)qb);
    t->q = NULL;
    return body_end(c, r->op);
}

int eg_wire_decode_request(int op, const unsigned char *body, size_t len, eg_request *r)
{
    if (!r || (!body && len)) return net_fail(EG_NET_EINVAL, "NULL request or body");
    memset(r, 0, sizeof *r);
    r->op = op;
    eg_cursor c;
    eg_cursor_init(&c, body, len);
    int rc;
    switch (op) {
    case EG_OP_HELLO:
        r->min_version = eg_cur_u16(&c);
        r->max_version = eg_cur_u16(&c);
        if (eg_cur_u32(&c) != 0 && !c.bad) return net_fail(EG_NET_EBODY, "hello: reserved field not 0");
        r->secret_len = eg_cur_u16(&c);
        r->secret = (const char *)eg_cur_bytes(&c, r->secret_len);
        return body_end(&c, op);
    case EG_OP_PING: case EG_OP_STATS: case EG_OP_SYNC:
        return body_end(&c, op);
    case EG_OP_CREATE:
        if ((rc = cur_name(&c, r->name, "session name"))) return rc;
        if ((rc = eg_wire_get_config(&c, &r->config))) return rc;
        return body_end(&c, op);
    case EG_OP_OPEN:
        if ((rc = cur_name(&c, r->name, "session name"))) return rc;
        r->has_fingerprint = eg_cur_u8(&c);
        eg_cur_str(&c, r->fingerprint, sizeof r->fingerprint);
        if (r->has_fingerprint > 1) return net_fail(EG_NET_EBODY, "open: has_fingerprint is %d", r->has_fingerprint);
        return body_end(&c, op);
    case EG_OP_CLOSE: case EG_OP_INFO:
        r->handle = eg_cur_u32(&c);
        if (eg_cur_u32(&c) != 0 && !c.bad) return net_fail(EG_NET_EBODY, "%s: reserved field not 0", eg_op_name(op));
        return body_end(&c, op);
    case EG_OP_LIST:
        eg_cur_str(&c, r->name, sizeof r->name);
        r->count = eg_cur_u32(&c);
        return body_end(&c, op);
    case EG_OP_DROP: case EG_OP_VERIFY:
        if ((rc = cur_name(&c, r->name, "session name"))) return rc;
        return body_end(&c, op);
    case EG_OP_FORK:
        if ((rc = cur_name(&c, r->name, "parent name"))) return rc;
        if ((rc = cur_name(&c, r->name2, "child name"))) return rc;
        r->count = eg_cur_u64(&c);
        return body_end(&c, op);
    case EG_OP_TRUNCATE:
        r->handle = eg_cur_u32(&c);
        if (eg_cur_u32(&c) != 0 && !c.bad) return net_fail(EG_NET_EBODY, "truncate: reserved field not 0");
        r->count = eg_cur_u64(&c);
        return body_end(&c, op);
    case EG_OP_FETCH:
        r->handle = eg_cur_u32(&c);
        r->layer = eg_cur_u32(&c);
        r->kv_head = eg_cur_u32(&c);
        r->want = eg_cur_u32(&c);
        r->segment = eg_cur_u64(&c);
        if (!c.bad && (r->want == 0 || r->want > 3))
            return net_fail(EG_NET_EBODY, "fetch: want is %u (1 keys, 2 values, 3 both)", r->want);
        return body_end(&c, op);
    case EG_OP_ROUTER_RESET:
        r->handle = eg_cur_u32(&c);
        r->layer = eg_cur_u32(&c);
        return body_end(&c, op);
    case EG_OP_APPEND: case EG_OP_SELECT: case EG_OP_ATTEND: case EG_OP_ROUTER_TRAIN:
        if ((uintptr_t)body % 8)
            return net_fail(EG_NET_EINVAL, "%s body not 8-byte aligned in memory", eg_op_name(op));
        return op == EG_OP_APPEND ? decode_append(&c, r) : op == EG_OP_ROUTER_TRAIN ? decode_train(&c, r)
                                                                                    : decode_attend(&c, r);
    default:
        return net_fail(EG_NET_EOPCODE, "unknown opcode %d", op);
    }
}

/* ---- encode --------------------------------------------------------------- */
static void put_name(eg_buf *b, const char *s) { eg_buf_str(b, s, strnlen(s, EG_NAME_MAX + 1)); }

static int encode_attend(eg_buf *b, const eg_request *r, const eg_session_config *shape)
{
    const eg_attend_req *q = &r->attend;
    uint32_t flags = (q->include_self ? NET_AF_INCLUDE_SELF : 0) | (q->remap_positions ? NET_AF_REMAP : 0) |
                     (r->dense ? NET_AF_DENSE : 0) | (q->aggregate == EG_ROUTE_AGG_MAX ? NET_AF_RANK_MAX : 0) |
                     (q->aggregate == EG_ROUTE_AGG_MASS ? NET_AF_RANK_MASS : 0);
    if (q->aggregate < EG_ROUTE_AGG_AUTO || q->aggregate > EG_ROUTE_AGG_MASS)
        return net_fail(EG_NET_EINVAL, "%s: aggregate %d (0, 1 max, 2 mass)", eg_op_name(r->op), q->aggregate);
    if (!q->q || !q->pos || q->n_queries == 0 || q->n_queries > EG_EN_QUERIES_MAX || q->n_tags < 0 ||
        (q->n_tags && !q->tags))
        return net_fail(EG_NET_EINVAL, "%s: NULL queries or positions, or %u queries", eg_op_name(r->op), q->n_queries);
    uint32_t n_oracle = 0;
    if (q->oracle_mass) n_oracle = r->n_oracle;
    eg_buf_u32(b, r->handle);
    eg_buf_u32(b, q->layer);
    eg_buf_u32(b, q->n_queries);
    eg_buf_u32(b, shape->n_q_heads);
    eg_buf_u32(b, shape->head_dim_k);
    eg_buf_u32(b, EG_DTYPE_F32);
    eg_buf_u32(b, flags);
    eg_buf_f32(b, q->scale);
    eg_buf_u64(b, (uint64_t)q->budget_tokens);
    eg_buf_u32(b, (uint32_t)q->n_sink_segments);
    eg_buf_u32(b, (uint32_t)q->router);
    eg_buf_u64(b, (uint64_t)q->recent_tokens);
    eg_buf_f64(b, q->max_lost);
    eg_buf_u32(b, (uint32_t)q->n_tags);
    eg_buf_u32(b, n_oracle);
    eg_buf_bytes(b, q->pos, (size_t)q->n_queries * 8);
    eg_buf_bytes(b, q->tags, (size_t)q->n_tags * 4);
    eg_buf_pad8(b);
    eg_buf_bytes(b, q->oracle_mass, (size_t)n_oracle * 4);
    eg_buf_pad8(b);
    eg_buf_bytes(b, q->q, (size_t)q->n_queries * shape->n_q_heads * shape->head_dim_k * 4);
    return 0;
}

int eg_wire_encode_request(eg_buf *b, const eg_request *r, uint64_t id, const eg_session_config *shape)
{
    if (!b || !r) return net_fail(EG_NET_EINVAL, "NULL buffer or request");
    int rc = 0;
    switch (r->op) {
    case EG_OP_HELLO:
        eg_buf_u16(b, r->min_version);
        eg_buf_u16(b, r->max_version);
        eg_buf_u32(b, 0);
        eg_buf_str(b, r->secret ? r->secret : "", r->secret ? r->secret_len : 0);
        break;
    case EG_OP_PING: case EG_OP_STATS: case EG_OP_SYNC:
        break;
    case EG_OP_CREATE:
        put_name(b, r->name);
        eg_wire_put_config(b, &r->config);
        break;
    case EG_OP_OPEN:
        put_name(b, r->name);
        eg_buf_u8(b, r->has_fingerprint ? 1 : 0);
        eg_buf_str(b, r->fingerprint, strnlen(r->fingerprint, EG_FINGERPRINT_MAX));
        break;
    case EG_OP_CLOSE: case EG_OP_INFO:
        eg_buf_u32(b, r->handle);
        eg_buf_u32(b, 0);
        break;
    case EG_OP_LIST:
        put_name(b, r->name);
        eg_buf_u32(b, (uint32_t)r->count);
        break;
    case EG_OP_DROP: case EG_OP_VERIFY:
        put_name(b, r->name);
        break;
    case EG_OP_FORK:
        put_name(b, r->name);
        put_name(b, r->name2);
        eg_buf_u64(b, r->count);
        break;
    case EG_OP_TRUNCATE:
        eg_buf_u32(b, r->handle);
        eg_buf_u32(b, 0);
        eg_buf_u64(b, r->count);
        break;
    case EG_OP_ROUTER_RESET:
        eg_buf_u32(b, r->handle);
        eg_buf_u32(b, r->layer);
        break;
    case EG_OP_ROUTER_TRAIN: {
        const eg_router_train_req *t = &r->train;
        if (!shape || !t->q || !t->pos || t->n_queries == 0 || t->n_queries > EG_EN_TRAIN_ROWS_MAX)
            return net_fail(EG_NET_EINVAL, "router_train: NULL queries, positions or shape, or %u queries",
                            t->n_queries);
        eg_buf_u32(b, r->handle);
        eg_buf_u32(b, t->layer);
        eg_buf_u32(b, t->n_queries);
        eg_buf_u32(b, shape->n_q_heads);
        eg_buf_u32(b, shape->head_dim_k);
        eg_buf_u32(b, EG_DTYPE_F32);
        eg_buf_u32(b, (uint32_t)t->steps);
        eg_buf_f32(b, t->lr);
        eg_buf_f32(b, t->scale);
        eg_buf_u32(b, (uint32_t)t->n_sink_segments);
        eg_buf_u64(b, (uint64_t)t->recent_tokens);
        eg_buf_bytes(b, t->pos, (size_t)t->n_queries * 8);
        eg_buf_bytes(b, t->q, (size_t)t->n_queries * shape->n_q_heads * shape->head_dim_k * 4);
        break;
    }
    case EG_OP_FETCH:
        eg_buf_u32(b, r->handle);
        eg_buf_u32(b, r->layer);
        eg_buf_u32(b, r->kv_head);
        eg_buf_u32(b, r->want);
        eg_buf_u64(b, r->segment);
        break;
    case EG_OP_APPEND: {
        const eg_append_req *a = &r->append;
        uint64_t kb, vb;
        if (!shape || !a->keys || !a->values || a->n_tokens == 0 ||
            eg_wire_append_bytes(shape, a->dtype, a->n_tokens, a->layer, &kb, &vb))
            return net_fail(EG_NET_EINVAL, "append: NULL arrays or shape, 0 tokens, or dtype %d", a->dtype);
        eg_buf_u32(b, r->handle);
        eg_buf_u32(b, (uint32_t)a->dtype);
        eg_buf_u32(b, a->n_tokens);
        eg_buf_u32(b, (uint32_t)a->layer);
        eg_buf_u32(b, a->tag);
        eg_buf_u32(b, a->token_ids ? NET_APPEND_IDS : 0);
        eg_buf_u64(b, kb);
        eg_buf_u64(b, vb);
        if (a->token_ids) {
            eg_buf_bytes(b, a->token_ids, (size_t)a->n_tokens * 4);
            eg_buf_pad8(b);
        }
        eg_buf_bytes(b, a->keys, (size_t)kb);
        eg_buf_bytes(b, a->values, (size_t)vb);
        break;
    }
    case EG_OP_SELECT: case EG_OP_ATTEND:
        if (!shape) return net_fail(EG_NET_EINVAL, "%s needs the session shape", eg_op_name(r->op));
        rc = encode_attend(b, r, shape);
        break;
    default:
        return net_fail(EG_NET_EOPCODE, "unknown opcode %d", r->op);
    }
    if (rc) return rc;
    eg_frame_header h = {.opcode = (uint16_t)r->op, .request_id = id};
    return eg_buf_frame(b, &h);
}

/* ---- fuzz entry ------------------------------------------------------------- */
int eg_wire_fuzz_stream(const unsigned char *data, size_t len)
{
    int frames = 0;
    size_t off = 0;
    void *aligned = NULL;
    while (len - off >= EG_NET_HEADER_BYTES) {
        eg_frame_header h;
        int rc = eg_frame_header_decode(data + off, EG_NET_FRAME_MIN, &h);
        if (rc == EG_NET_EMAGIC || rc == EG_NET_EVERSION) break; /* the server closes here */
        off += EG_NET_HEADER_BYTES;
        if (h.body_len > len - off) break;                       /* waits for more bytes */
        if (rc == 0) {
            /* the server's bodies sit at 8-byte aligned addresses: copy like it does */
            free(aligned);
            aligned = malloc(h.body_len ? h.body_len : 1);
            if (!aligned) break;
            memcpy(aligned, data + off, h.body_len);
            eg_request r;
            (void)eg_wire_decode_request(h.opcode, aligned, h.body_len, &r);
        }
        off += h.body_len; /* refused bodies are skipped: the stream stays in sync */
        frames++;
    }
    free(aligned);
    return frames;
}
