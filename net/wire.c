/* wire.c: frame headers, the encode buffer, the decode cursor, and the
 * session config and info as they travel. Everything little-endian and
 * read byte by byte, so no input is ever accessed unaligned. */
#include "net_internal.h"
#include <stdlib.h>
#include <string.h>

/* Arrays of f32 and i64 travel as this host lays them out in memory. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the wire format assumes a little-endian host");

static void put_le(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint64_t get_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static const char *const op_names[EG_OP_COUNT] = {
    NULL, "hello", "ping", "create", "open", "close", "info", "list", "drop", "fork",
    "truncate", "append", "select", "fetch", "attend", "stats", "sync", "verify",
    "router_train", "router_reset",
};
const char *eg_op_name(int op) { return op > 0 && op < EG_OP_COUNT ? op_names[op] : NULL; }

void eg_frame_header_encode(const eg_frame_header *h, unsigned char out[EG_NET_HEADER_BYTES])
{
    put_le(out, EG_NET_MAGIC, 4);
    put_le(out + 4, h->version, 2);
    put_le(out + 6, h->opcode, 2);
    put_le(out + 8, h->flags, 4);
    put_le(out + 12, (uint32_t)h->status, 4);
    put_le(out + 16, h->request_id, 8);
    put_le(out + 24, h->body_len, 4);
    put_le(out + 28, 0, 4);
}

int eg_frame_header_decode(const unsigned char in[EG_NET_HEADER_BYTES], uint32_t frame_max,
                           eg_frame_header *out)
{
    if (!in || !out) return net_fail(EG_NET_EINVAL, "NULL header");
    memset(out, 0, sizeof *out);
    out->version = (uint16_t)get_le(in + 4, 2);
    out->opcode = (uint16_t)get_le(in + 6, 2);
    out->flags = (uint32_t)get_le(in + 8, 4);
    out->status = (int32_t)(uint32_t)get_le(in + 12, 4);
    out->request_id = get_le(in + 16, 8);
    out->body_len = (uint32_t)get_le(in + 24, 4);
    uint32_t magic = (uint32_t)get_le(in, 4);
    if (magic != EG_NET_MAGIC)
        return net_fail(EG_NET_EMAGIC, "frame starts with 0x%08x, not the magic \"EGRM\"", magic);
    if (out->version != EG_NET_VERSION)
        return net_fail(EG_NET_EVERSION, "frame version %u; this side speaks version %d",
                        out->version, EG_NET_VERSION);
    int answer = (out->flags & EG_NET_FLAG_ANSWER) != 0;
    if (out->flags & ~EG_NET_FLAG_ANSWER)
        return net_fail(EG_NET_EFLAGS, "reserved flag bits 0x%x set", out->flags & ~EG_NET_FLAG_ANSWER);
    if (get_le(in + 28, 4) != 0) return net_fail(EG_NET_EFLAGS, "reserved header field is not zero");
    if (!answer && out->status != 0)
        return net_fail(EG_NET_EFLAGS, "a request's status field must be 0 (it is %d)", out->status);
    if (frame_max && out->body_len > frame_max)
        return net_fail(EG_NET_ETOOBIG, "body of %u bytes is over the frame limit of %u",
                        out->body_len, frame_max);
    if (out->opcode == 0 || out->opcode >= EG_OP_COUNT)
        return net_fail(EG_NET_EOPCODE, "unknown opcode %u", out->opcode);
    return 0;
}

/* ---- encode buffer ------------------------------------------------------ */
void eg_buf_init(eg_buf *b)
{
    memset(b, 0, sizeof *b);
    b->len = EG_NET_HEADER_BYTES;
}
void eg_buf_free(eg_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

static unsigned char *buf_grow(eg_buf *b, size_t n)
{
    if (b->failed) return NULL;
    if (n > SIZE_MAX / 2 - b->len) { b->failed = 1; return NULL; }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        unsigned char *d = realloc(b->data, cap);
        if (!d) { b->failed = 1; return NULL; }
        if (!b->data) memset(d, 0, EG_NET_HEADER_BYTES);
        b->data = d;
        b->cap = cap;
    }
    unsigned char *p = b->data + b->len;
    b->len += n;
    return p;
}
static void buf_le(eg_buf *b, uint64_t v, int n)
{
    unsigned char *p = buf_grow(b, (size_t)n);
    if (p) put_le(p, v, n);
}
void eg_buf_u8(eg_buf *b, uint8_t v) { buf_le(b, v, 1); }
void eg_buf_u16(eg_buf *b, uint16_t v) { buf_le(b, v, 2); }
void eg_buf_u32(eg_buf *b, uint32_t v) { buf_le(b, v, 4); }
void eg_buf_u64(eg_buf *b, uint64_t v) { buf_le(b, v, 8); }
void eg_buf_f32(eg_buf *b, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    buf_le(b, u, 4);
}
void eg_buf_f64(eg_buf *b, double v)
{
    uint64_t u;
    memcpy(&u, &v, 8);
    buf_le(b, u, 8);
}
void eg_buf_str(eg_buf *b, const char *s, size_t n)
{
    if (n > EG_NET_STR_MAX) n = EG_NET_STR_MAX;
    eg_buf_u16(b, (uint16_t)n);
    eg_buf_bytes(b, s, n);
}
void eg_buf_bytes(eg_buf *b, const void *p, size_t n)
{
    if (!n) return;
    unsigned char *d = buf_grow(b, n);
    if (d) memcpy(d, p, n);
}
void eg_buf_pad8(eg_buf *b)
{
    while (!b->failed && (b->len - EG_NET_HEADER_BYTES) % 8) eg_buf_u8(b, 0);
}

int eg_buf_frame(eg_buf *b, const eg_frame_header *h)
{
    if (!b->data) buf_grow(b, 0); /* an empty body still needs the header's bytes */
    if (b->failed || !b->data) return net_fail(EG_NET_ENOMEM, "frame buffer allocation failed");
    size_t body = b->len - EG_NET_HEADER_BYTES;
    if (body > UINT32_MAX) return net_fail(EG_NET_ETOOBIG, "body of %zu bytes does not fit a frame", body);
    eg_frame_header hh = *h;
    hh.version = EG_NET_VERSION;
    hh.body_len = (uint32_t)body;
    eg_frame_header_encode(&hh, b->data);
    return 0;
}

/* ---- decode cursor ------------------------------------------------------ */
void eg_cursor_init(eg_cursor *c, const void *p, size_t len)
{
    c->p = p;
    c->len = len;
    c->off = 0;
    c->bad = 0;
}
const unsigned char *eg_cur_bytes(eg_cursor *c, size_t n)
{
    if (c->bad || n > c->len - c->off) { c->bad = 1; return NULL; }
    const unsigned char *p = c->p + c->off;
    c->off += n;
    return p;
}
static uint64_t cur_le(eg_cursor *c, int n)
{
    const unsigned char *p = eg_cur_bytes(c, (size_t)n);
    return p ? get_le(p, n) : 0;
}
uint8_t eg_cur_u8(eg_cursor *c) { return (uint8_t)cur_le(c, 1); }
uint16_t eg_cur_u16(eg_cursor *c) { return (uint16_t)cur_le(c, 2); }
uint32_t eg_cur_u32(eg_cursor *c) { return (uint32_t)cur_le(c, 4); }
uint64_t eg_cur_u64(eg_cursor *c) { return cur_le(c, 8); }
float eg_cur_f32(eg_cursor *c)
{
    uint32_t u = (uint32_t)cur_le(c, 4);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
double eg_cur_f64(eg_cursor *c)
{
    uint64_t u = cur_le(c, 8);
    double d;
    memcpy(&d, &u, 8);
    return d;
}
void eg_cur_str(eg_cursor *c, char *out, size_t cap)
{
    size_t n = eg_cur_u16(c);
    const unsigned char *p = eg_cur_bytes(c, n);
    if (!p || n >= cap || memchr(p, 0, n)) {
        c->bad = 1;
        if (cap) out[0] = 0;
        return;
    }
    memcpy(out, p, n);
    out[n] = 0;
}
/* Skip zero padding up to a multiple of 8 from the start; non-zero padding is bad. */
void net_cur_pad8(eg_cursor *c)
{
    while (!c->bad && c->off % 8) {
        if (eg_cur_u8(c) != 0) c->bad = 1;
    }
}

/* ---- session config and info -------------------------------------------- */
int eg_wire_put_config(eg_buf *b, const eg_session_config *cfg)
{
    eg_buf_u32(b, cfg->n_layers);
    eg_buf_u32(b, cfg->n_kv_heads);
    eg_buf_u32(b, cfg->n_q_heads);
    eg_buf_u32(b, cfg->head_dim_k);
    eg_buf_u32(b, cfg->head_dim_v);
    eg_buf_u32(b, cfg->seg_tokens);
    eg_buf_u32(b, (uint32_t)cfg->codec);
    eg_buf_u32(b, (uint32_t)cfg->cold_codec);
    eg_buf_u32(b, cfg->cold_age_segments);
    eg_buf_u32(b, cfg->rope_mode);
    eg_buf_u32(b, cfg->rope_dims);
    eg_buf_f32(b, cfg->rope_theta);
    eg_buf_str(b, cfg->fingerprint, strnlen(cfg->fingerprint, EG_FINGERPRINT_MAX));
    return b->failed ? EG_NET_ENOMEM : 0;
}

int eg_wire_get_config(eg_cursor *c, eg_session_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->n_layers = eg_cur_u32(c);
    cfg->n_kv_heads = eg_cur_u32(c);
    cfg->n_q_heads = eg_cur_u32(c);
    cfg->head_dim_k = eg_cur_u32(c);
    cfg->head_dim_v = eg_cur_u32(c);
    cfg->seg_tokens = eg_cur_u32(c);
    cfg->codec = (int32_t)eg_cur_u32(c);
    cfg->cold_codec = (int32_t)eg_cur_u32(c);
    cfg->cold_age_segments = eg_cur_u32(c);
    cfg->rope_mode = eg_cur_u32(c);
    cfg->rope_dims = eg_cur_u32(c);
    cfg->rope_theta = eg_cur_f32(c);
    eg_cur_str(c, cfg->fingerprint, sizeof cfg->fingerprint);
    return c->bad ? net_fail(EG_NET_EBODY, "session config truncated or fingerprint too long") : 0;
}

int eg_wire_put_info(eg_buf *b, const eg_session_info *in)
{
    eg_buf_str(b, in->name, strnlen(in->name, EG_NAME_MAX));
    eg_wire_put_config(b, &in->config);
    eg_buf_u64(b, in->id);
    eg_buf_u64(b, in->n_tokens);
    eg_buf_u64(b, in->n_sealed);
    eg_buf_u64(b, in->layer_tokens_max);
    eg_buf_u32(b, in->lineage_len);
    eg_buf_u64(b, in->created_unix);
    return b->failed ? EG_NET_ENOMEM : 0;
}

int eg_wire_get_info(eg_cursor *c, eg_session_info *in)
{
    memset(in, 0, sizeof *in);
    eg_cur_str(c, in->name, sizeof in->name);
    int rc = eg_wire_get_config(c, &in->config);
    if (rc) return rc;
    in->id = eg_cur_u64(c);
    in->n_tokens = eg_cur_u64(c);
    in->n_sealed = eg_cur_u64(c);
    in->layer_tokens_max = eg_cur_u64(c);
    in->lineage_len = eg_cur_u32(c);
    in->created_unix = eg_cur_u64(c);
    return c->bad ? net_fail(EG_NET_EBODY, "session info truncated") : 0;
}
