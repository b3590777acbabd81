/* client.c: the C client. Blocking calls are one request and its answer;
 * the pipelined mode keeps a FIFO of requests sent, since the server
 * answers a connection's requests in order. A lost connection fails what
 * is in flight with EG_NET_EDISCONNECT (never a hang: reads wait at most
 * the timeout), and the next call reconnects. */
#include "net_internal.h"
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define PEND_MAX 4096

typedef struct {
    uint64_t id;
    int op;
    eg_attend_result *res;
    uint64_t *n_tokens;
} pending;

struct eg_client {
    char addr[512];
    char *secret;
    int timeout_ms;
    uint32_t frame_max;
    int fd, broken;
    uint64_t next_id;
    pending pend[PEND_MAX];
    int p_head, p_count;
    char err[768];
};

static int cfail(eg_client *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int cfail(eg_client *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    net_fail(code, "%s", c->err);
    return code;
}

const char *eg_client_error(const eg_client *c) { return c && c->err[0] ? c->err : "no error"; }

void eg_client_options_init(eg_client_options *o) { memset(o, 0, sizeof *o); }

static void drop_conn(eg_client *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->broken = 1;
}

static int wait_fd(eg_client *c, short ev)
{
    struct pollfd p = {.fd = c->fd, .events = ev};
    for (;;) {
        int n = poll(&p, 1, c->timeout_ms < 0 ? -1 : c->timeout_ms);
        if (n > 0) return 0;
        if (n == 0) {
            drop_conn(c); /* an answer may still come: the stream cannot be trusted */
            return cfail(c, EG_NET_ETIMEOUT, "no answer from %s within %d ms", c->addr, c->timeout_ms);
        }
        if (errno != EINTR) {
            drop_conn(c);
            return cfail(c, EG_NET_EDISCONNECT, "poll: %s", strerror(errno));
        }
    }
}

static int send_all(eg_client *c, const void *p, size_t n)
{
    const unsigned char *b = p;
    while (n) {
        ssize_t w = send(c->fd, b, n, MSG_NOSIGNAL);
        if (w > 0) { b += w; n -= (size_t)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int rc = wait_fd(c, POLLOUT);
            if (rc) return rc;
            continue;
        }
        int e = errno;
        if (e != EPIPE && e != ECONNRESET) drop_conn(c); /* else the server may have said why: see call() */
        else c->broken = 1;
        return cfail(c, EG_NET_EDISCONNECT, "send to %s: %s", c->addr, strerror(e));
    }
    return 0;
}

static int recv_all(eg_client *c, void *p, size_t n)
{
    unsigned char *b = p;
    while (n) {
        int rc = wait_fd(c, POLLIN);
        if (rc) return rc;
        ssize_t r = recv(c->fd, b, n, 0);
        if (r > 0) { b += r; n -= (size_t)r; continue; }
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        int e = r == 0 ? 0 : errno;
        drop_conn(c);
        return cfail(c, EG_NET_EDISCONNECT, "connection to %s lost%s%s", c->addr, e ? ": " : " (closed by the server)",
                     e ? strerror(e) : "");
    }
    return 0;
}

int eg_client_recv_frame(eg_client *c, eg_frame_header *h, unsigned char **body)
{
    if (!c || !h || !body) return net_fail(EG_NET_EINVAL, "NULL argument");
    *body = NULL;
    if (c->fd < 0) return cfail(c, EG_NET_EDISCONNECT, "not connected to %s", c->addr);
    unsigned char hb[EG_NET_HEADER_BYTES];
    int rc = recv_all(c, hb, sizeof hb);
    if (rc) return rc;
    rc = eg_frame_header_decode(hb, c->frame_max, h);
    if (rc == 0 && !(h->flags & EG_NET_FLAG_ANSWER)) rc = net_fail(EG_NET_EPROTO, "a frame without the answer flag");
    if (rc && !(rc == EG_NET_EOPCODE && h->opcode == 0)) { /* opcode 0: the server's connection-level refusal */
        drop_conn(c);
        return cfail(c, EG_NET_EPROTO, "bad answer frame from %s: %s", c->addr, eg_net_last_error());
    }
    *body = malloc(h->body_len ? h->body_len : 1);
    if (!*body) {
        drop_conn(c);
        return cfail(c, EG_NET_ENOMEM, "answer of %u bytes: out of memory", h->body_len);
    }
    rc = recv_all(c, *body, h->body_len);
    if (rc) { free(*body); *body = NULL; }
    return rc;
}

int eg_client_send_raw(eg_client *c, const void *bytes, size_t n)
{
    if (!c || (!bytes && n)) return net_fail(EG_NET_EINVAL, "NULL argument");
    if (c->fd < 0) return cfail(c, EG_NET_EDISCONNECT, "not connected to %s", c->addr);
    return send_all(c, bytes, n);
}

/* An error answer's body is its message. */
static int answer_status(eg_client *c, const eg_frame_header *h, const unsigned char *body)
{
    if (h->status >= 0) return 0;
    eg_cursor cur;
    eg_cursor_init(&cur, body, h->body_len);
    char m[512];
    eg_cur_str(&cur, m, sizeof m);
    if (cur.bad) snprintf(m, sizeof m, "%s", eg_net_strerror(h->status));
    return cfail(c, h->status, "%s", m);
}

/* ---- connect ------------------------------------------------------------------- */
static int open_socket(eg_client *c)
{
    const char *a = c->addr;
    int unixp = !strncmp(a, "unix:", 5) || strchr(a, '/');
    int fd = -1;
    if (unixp) {
        const char *path = !strncmp(a, "unix:", 5) ? a + 5 : a;
        struct sockaddr_un su = {.sun_family = AF_UNIX};
        if (strlen(path) >= sizeof su.sun_path) return cfail(c, EG_NET_ECONNECT, "socket path too long: %s", path);
        memcpy(su.sun_path, path, strlen(path));
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&su, sizeof su) != 0) {
            int e = errno;
            if (fd >= 0) close(fd);
            return cfail(c, EG_NET_ECONNECT, "cannot connect to unix socket %s: %s", path, strerror(e));
        }
    } else {
        char host[256];
        const char *colon = strrchr(a, ':');
        if (!colon) return cfail(c, EG_NET_ECONNECT, "address '%s' is not HOST:PORT, unix:PATH or a path", a);
        size_t hl = (size_t)(colon - a);
        if (a[0] == '[' && hl >= 2 && a[hl - 1] == ']') { a++; hl -= 2; }
        if (hl >= sizeof host) return cfail(c, EG_NET_ECONNECT, "host too long");
        memcpy(host, a, hl);
        host[hl] = 0;
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai, *p;
        int rc = getaddrinfo(host, colon + 1, &hints, &ai);
        if (rc) return cfail(c, EG_NET_ECONNECT, "%s: %s", c->addr, gai_strerror(rc));
        int e = 0;
        for (p = ai; p; p = p->ai_next) {
            fd = socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC, p->ai_protocol);
            if (fd >= 0 && connect(fd, p->ai_addr, p->ai_addrlen) == 0) break;
            e = errno;
            if (fd >= 0) close(fd);
            fd = -1;
        }
        freeaddrinfo(ai);
        if (fd < 0) return cfail(c, EG_NET_ECONNECT, "cannot connect to %s: %s", c->addr, strerror(e));
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    c->fd = fd;
    c->broken = 0;
    return 0;
}

static int call_read(eg_client *c, eg_request *r, const eg_session_config *shape, unsigned char **body,
                     eg_cursor *cur);

static int hello(eg_client *c)
{
    eg_request r = {.op = EG_OP_HELLO, .min_version = EG_NET_VERSION, .max_version = EG_NET_VERSION,
                    .secret = c->secret, .secret_len = c->secret ? strlen(c->secret) : 0};
    unsigned char *body;
    eg_cursor cur;
    int rc = call_read(c, &r, NULL, &body, &cur);
    if (rc) { drop_conn(c); return rc; }
    uint16_t v = eg_cur_u16(&cur);
    free(body);
    if (v != EG_NET_VERSION) {
        drop_conn(c);
        return cfail(c, EG_NET_EVERSION, "server chose version %u", v);
    }
    return 0;
}

int eg_client_reconnect(eg_client *c)
{
    if (!c) return net_fail(EG_NET_EINVAL, "NULL client");
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->p_head = c->p_count = 0;
    int rc = open_socket(c);
    if (rc) return rc;
    c->broken = 0;
    return hello(c);
}

int eg_client_connect(const char *addr, const eg_client_options *opt, eg_client **out)
{
    if (!addr || !out) return net_fail(EG_NET_EINVAL, "NULL address or output");
    *out = NULL;
    eg_client *c = calloc(1, sizeof *c);
    if (!c) return net_fail(EG_NET_ENOMEM, "client");
    snprintf(c->addr, sizeof c->addr, "%s", addr);
    c->fd = -1;
    c->timeout_ms = opt && opt->timeout_ms ? opt->timeout_ms : 120000;
    c->frame_max = opt && opt->frame_max ? opt->frame_max : EG_NET_FRAME_MAX;
    c->next_id = 1;
    if (opt && opt->secret && !(c->secret = strdup(opt->secret))) {
        free(c);
        return net_fail(EG_NET_ENOMEM, "client");
    }
    int rc = eg_client_reconnect(c);
    if (rc) {
        eg_client_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

void eg_client_close(eg_client *c)
{
    if (!c) return;
    if (c->fd >= 0) close(c->fd);
    free(c->secret);
    free(c);
}

/* ---- one request and its answer ------------------------------------------------ */
static int send_request(eg_client *c, eg_request *r, const eg_session_config *shape, uint64_t *id)
{
    if (c->broken && r->op != EG_OP_HELLO) {
        if (c->p_count) return cfail(c, EG_NET_EPENDING, "receive the failed answers first");
        int rc = eg_client_reconnect(c);
        if (rc) return rc;
    }
    eg_buf b;
    eg_buf_init(&b);
    *id = c->next_id++;
    int rc = eg_wire_encode_request(&b, r, *id, shape);
    if (rc) {
        eg_buf_free(&b);
        return cfail(c, rc, "%s", eg_net_last_error());
    }
    rc = send_all(c, b.data, b.len);
    eg_buf_free(&b);
    return rc;
}

static int call(eg_client *c, eg_request *r, const eg_session_config *shape, eg_frame_header *h,
                unsigned char **body)
{
    *body = NULL;
    if (c->p_count) return cfail(c, EG_NET_EPENDING, "%d pipelined answers not received yet", c->p_count);
    uint64_t id;
    int rc = send_request(c, r, shape, &id);
    if (rc == EG_NET_EDISCONNECT && c->fd >= 0) {
        /* A server that refused the connection (limit) wrote why before closing. */
        char keep[sizeof c->err];
        snprintf(keep, sizeof keep, "%s", c->err);
        int t = c->timeout_ms;
        c->timeout_ms = 1000;
        int r2 = eg_client_recv_frame(c, h, body);
        c->timeout_ms = t;
        if (!r2 && h->status < 0) rc = answer_status(c, h, *body);
        else snprintf(c->err, sizeof c->err, "%s", keep);
        free(*body);
        *body = NULL;
        drop_conn(c);
        return rc;
    }
    if (rc) return rc;
    rc = eg_client_recv_frame(c, h, body);
    if (rc) return rc;
    if (h->opcode == 0 && h->status < 0) { /* refused for the whole connection (limit) */
        rc = answer_status(c, h, *body);
        free(*body);
        *body = NULL;
        drop_conn(c);
        return rc;
    }
    if (h->request_id != id || (h->opcode != r->op && h->status == 0)) {
        free(*body);
        *body = NULL;
        drop_conn(c);
        return cfail(c, EG_NET_EPROTO, "answer for request %llu (opcode %u) while waiting for %llu",
                     (unsigned long long)h->request_id, h->opcode, (unsigned long long)id);
    }
    rc = answer_status(c, h, *body);
    if (rc) { free(*body); *body = NULL; }
    return rc;
}

/* A call whose answer is read with a cursor over *body (the caller frees it). */
static int call_read(eg_client *c, eg_request *r, const eg_session_config *shape, unsigned char **body,
                     eg_cursor *cur)
{
    eg_frame_header h;
    int rc = call(c, r, shape, &h, body);
    if (!rc) eg_cursor_init(cur, *body, h.body_len);
    return rc;
}

/* A call whose answer body is empty or ignored. */
static int call_simple(eg_client *c, eg_request *r)
{
    eg_frame_header h;
    unsigned char *body;
    int rc = call(c, r, NULL, &h, &body);
    free(body);
    return rc;
}

static int copy_name(eg_client *c, char *dst, const char *src, const char *what)
{
    if (!src) return cfail(c, EG_NET_EINVAL, "%s is NULL", what);
    if (strlen(src) > EG_NAME_MAX) return cfail(c, EG_ENAME_LONG, "%s over %d bytes", what, EG_NAME_MAX);
    snprintf(dst, EG_NAME_MAX + 1, "%s", src);
    return 0;
}

int eg_client_ping(eg_client *c)
{
    if (!c) return net_fail(EG_NET_EINVAL, "NULL client");
    eg_request r = {.op = EG_OP_PING};
    return call_simple(c, &r);
}

int eg_client_create(eg_client *c, const char *name, const eg_session_config *cfg)
{
    if (!c || !cfg) return net_fail(EG_NET_EINVAL, "NULL argument");
    eg_request r = {.op = EG_OP_CREATE, .config = *cfg};
    int rc = copy_name(c, r.name, name, "name");
    return rc ? rc : call_simple(c, &r);
}

int eg_client_open(eg_client *c, const char *name, const char *fingerprint, uint32_t *out_handle)
{
    if (!c || !out_handle) return net_fail(EG_NET_EINVAL, "NULL argument");
    eg_request r = {.op = EG_OP_OPEN, .has_fingerprint = fingerprint != NULL};
    int rc = copy_name(c, r.name, name, "name");
    if (rc) return rc;
    if (fingerprint) snprintf(r.fingerprint, sizeof r.fingerprint, "%s", fingerprint);
    unsigned char *body;
    eg_cursor cur;
    if ((rc = call_read(c, &r, NULL, &body, &cur))) return rc;
    *out_handle = eg_cur_u32(&cur);
    free(body);
    return cur.bad ? cfail(c, EG_NET_EPROTO, "open answer truncated") : 0;
}

int eg_client_close_session(eg_client *c, uint32_t handle)
{
    if (!c) return net_fail(EG_NET_EINVAL, "NULL client");
    eg_request r = {.op = EG_OP_CLOSE, .handle = handle};
    return call_simple(c, &r);
}

int eg_client_info(eg_client *c, uint32_t handle, eg_session_info *out)
{
    if (!c || !out) return net_fail(EG_NET_EINVAL, "NULL argument");
    eg_request r = {.op = EG_OP_INFO, .handle = handle};
    unsigned char *body;
    eg_cursor cur;
    int rc = call_read(c, &r, NULL, &body, &cur);
    if (rc) return rc;
    rc = eg_wire_get_info(&cur, out);
    free(body);
    return rc ? cfail(c, EG_NET_EPROTO, "info answer malformed") : 0;
}

int eg_client_list(eg_client *c, int (*fn)(void *ctx, const eg_session_info *info), void *ctx)
{
    if (!c || !fn) return net_fail(EG_NET_EINVAL, "NULL argument");
    char after[EG_NAME_MAX + 1] = "";
    for (;;) {
        eg_request r = {.op = EG_OP_LIST, .count = EG_NET_LIST_MAX};
        snprintf(r.name, sizeof r.name, "%s", after);
        unsigned char *body;
        eg_cursor cur;
        int rc = call_read(c, &r, NULL, &body, &cur);
        if (rc) return rc;
        uint32_t n = eg_cur_u32(&cur), more = eg_cur_u32(&cur);
        int stop = 0;
        for (uint32_t i = 0; i < n && !stop && !rc; i++) {
            eg_session_info info;
            if (eg_wire_get_info(&cur, &info)) rc = cfail(c, EG_NET_EPROTO, "list answer malformed");
            else {
                snprintf(after, sizeof after, "%s", info.name);
                stop = fn(ctx, &info);
            }
        }
        free(body);
        if (rc || stop || !more || !n) return rc;
    }
}

int eg_client_drop(eg_client *c, const char *name)
{
    if (!c) return net_fail(EG_NET_EINVAL, "NULL client");
    eg_request r = {.op = EG_OP_DROP};
    int rc = copy_name(c, r.name, name, "name");
    return rc ? rc : call_simple(c, &r);
}

int eg_client_fork(eg_client *c, const char *parent, const char *child, uint64_t at)
{
    if (!c) return net_fail(EG_NET_EINVAL, "NULL client");
    eg_request r = {.op = EG_OP_FORK, .count = at};
    int rc = copy_name(c, r.name, parent, "parent");
    if (!rc) rc = copy_name(c, r.name2, child, "child");
    return rc ? rc : call_simple(c, &r);
}

int eg_client_truncate(eg_client *c, uint32_t handle, uint64_t n_tokens)
{
    if (!c) return net_fail(EG_NET_EINVAL, "NULL client");
    eg_request r = {.op = EG_OP_TRUNCATE, .handle = handle, .count = n_tokens};
    return call_simple(c, &r);
}

int eg_client_router_train(eg_client *c, uint32_t handle, const eg_session_config *shape,
                           const eg_router_train_req *req, double *loss_before, double *loss_after)
{
    if (!c || !shape || !req) return net_fail(EG_NET_EINVAL, "NULL argument");
    eg_request r = {.op = EG_OP_ROUTER_TRAIN, .handle = handle, .train = *req};
    unsigned char *body;
    eg_cursor cur;
    int rc = call_read(c, &r, shape, &body, &cur);
    if (rc) return rc;
    uint32_t H = eg_cur_u32(&cur);
    eg_cur_u32(&cur);
    if (cur.bad || H != shape->n_kv_heads || cur.len - cur.off != (size_t)H * 16) {
        free(body);
        return cfail(c, EG_NET_EPROTO, "router_train answer malformed");
    }
    for (uint32_t i = 0; i < H; i++) { double v = eg_cur_f64(&cur); if (loss_before) loss_before[i] = v; }
    for (uint32_t i = 0; i < H; i++) { double v = eg_cur_f64(&cur); if (loss_after) loss_after[i] = v; }
    free(body);
    return 0;
}

int eg_client_router_reset(eg_client *c, uint32_t handle, uint32_t layer)
{
    if (!c) return net_fail(EG_NET_EINVAL, "NULL client");
    eg_request r = {.op = EG_OP_ROUTER_RESET, .handle = handle, .layer = layer};
    return call_simple(c, &r);
}

int eg_client_sync(eg_client *c)
{
    if (!c) return net_fail(EG_NET_EINVAL, "NULL client");
    eg_request r = {.op = EG_OP_SYNC};
    return call_simple(c, &r);
}

int eg_client_stats(eg_client *c, eg_store_stats *st, eg_server_stats *sv)
{
    if (!c) return net_fail(EG_NET_EINVAL, "NULL client");
    eg_request r = {.op = EG_OP_STATS};
    unsigned char *body;
    eg_cursor cur;
    int rc = call_read(c, &r, NULL, &body, &cur);
    if (rc) return rc;
    uint32_t na = eg_cur_u32(&cur), nb = eg_cur_u32(&cur);
    uint64_t a[11] = {0}, b[10] = {0};
    for (uint32_t i = 0; i < na; i++) { uint64_t v = eg_cur_u64(&cur); if (i < 11) a[i] = v; }
    for (uint32_t i = 0; i < nb; i++) { uint64_t v = eg_cur_u64(&cur); if (i < 10) b[i] = v; }
    free(body);
    if (cur.bad) return cfail(c, EG_NET_EPROTO, "stats answer truncated");
    if (st) *st = (eg_store_stats){a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10]};
    if (sv) *sv = (eg_server_stats){b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]};
    return 0;
}

int eg_client_verify(eg_client *c, const char *name, void (*fn)(void *ctx, const char *line), void *ctx,
                     uint64_t *out_problems)
{
    if (!c) return net_fail(EG_NET_EINVAL, "NULL client");
    eg_request r = {.op = EG_OP_VERIFY};
    int rc = name ? copy_name(c, r.name, name, "name") : 0;
    if (rc) return rc;
    unsigned char *body;
    eg_cursor cur;
    if ((rc = call_read(c, &r, NULL, &body, &cur))) return rc;
    uint64_t problems = eg_cur_u64(&cur);
    uint32_t n = eg_cur_u32(&cur);
    eg_cur_u32(&cur);
    for (uint32_t i = 0; i < n && !cur.bad; i++) {
        char line[1024];
        eg_cur_str(&cur, line, sizeof line);
        if (!cur.bad && fn) fn(ctx, line);
    }
    free(body);
    if (cur.bad) return cfail(c, EG_NET_EPROTO, "verify answer malformed");
    if (out_problems) *out_problems = problems;
    return 0;
}

/* ---- data calls ------------------------------------------------------------------ */
static int decode_attend(eg_client *c, eg_cursor cur, eg_attend_result *res, uint32_t want_q)
{
    res->page_ins = eg_cur_u64(&cur);
    res->segments = eg_cur_u64(&cur);
    res->tokens = eg_cur_u64(&cur);
    res->worst_lost = eg_cur_f64(&cur);
    uint32_t nq = eg_cur_u32(&cur), nh = eg_cur_u32(&cur), dv = eg_cur_u32(&cur);
    eg_cur_u32(&cur);
    size_t rows = (size_t)nq * nh, nout = rows * dv;
    const unsigned char *p = eg_cur_bytes(&cur, (nout + 2 * rows) * 4);
    if (!p || cur.off != cur.len || (want_q && nq != want_q))
        return cfail(c, EG_NET_EPROTO, "attend answer malformed");
    if (res->out) memcpy(res->out, p, nout * 4);
    if (res->lse) memcpy(res->lse, p + nout * 4, rows * 4);
    if (res->lost) memcpy(res->lost, p + (nout + rows) * 4, rows * 4);
    return 0;
}

static int attend_request(eg_client *c, uint32_t handle, const eg_session_config *shape, const eg_attend_req *req,
                          int op, int dense, eg_request *r)
{
    if (!c || !shape || !req) return net_fail(EG_NET_EINVAL, "NULL argument");
    memset(r, 0, sizeof *r);
    r->op = op;
    r->handle = handle;
    r->attend = *req;
    r->dense = dense;
    if (req->oracle_mass) { /* the mass array is [n_kv_heads][n_sealed] of the session now */
        eg_session_info info;
        int rc = eg_client_info(c, handle, &info);
        if (rc) return rc;
        uint64_t n = (uint64_t)info.config.n_kv_heads * info.n_sealed;
        if (n > UINT32_MAX) return cfail(c, EG_NET_EINVAL, "oracle mass of %llu floats", (unsigned long long)n);
        r->n_oracle = (uint32_t)n;
    }
    return 0;
}

int eg_client_attend(eg_client *c, uint32_t handle, const eg_session_config *shape, const eg_attend_req *req,
                     int dense, eg_attend_result *res)
{
    eg_request r;
    int rc = attend_request(c, handle, shape, req, EG_OP_ATTEND, dense, &r);
    if (rc || !res) return rc ? rc : net_fail(EG_NET_EINVAL, "NULL result");
    unsigned char *body;
    eg_cursor cur;
    if ((rc = call_read(c, &r, shape, &body, &cur))) return rc;
    rc = decode_attend(c, cur, res, req->n_queries);
    free(body);
    return rc;
}

int eg_client_select(eg_client *c, uint32_t handle, const eg_session_config *shape, const eg_attend_req *req,
                     eg_select_result *out)
{
    eg_request r;
    int rc = attend_request(c, handle, shape, req, EG_OP_SELECT, 0, &r);
    if (rc || !out) return rc ? rc : net_fail(EG_NET_EINVAL, "NULL result");
    memset(out, 0, sizeof *out);
    unsigned char *body;
    eg_cursor cur;
    if ((rc = call_read(c, &r, shape, &body, &cur))) return rc;
    uint32_t nk = eg_cur_u32(&cur);
    eg_cur_u32(&cur);
    out->n_sealed = eg_cur_u64(&cur);
    if (cur.bad || nk == 0 || nk > EG_KV_HEADS_MAX) { free(body); return cfail(c, EG_NET_EPROTO, "select answer malformed"); }
    out->n_kv_heads = nk;
    out->offsets = calloc(nk + 1, sizeof *out->offsets);
    out->n_forced = calloc(nk, sizeof *out->n_forced);
    for (uint32_t i = 0; out->offsets && i <= nk; i++) out->offsets[i] = (size_t)eg_cur_u64(&cur);
    for (uint32_t i = 0; out->n_forced && i < nk; i++) out->n_forced[i] = (size_t)eg_cur_u64(&cur);
    size_t total = out->offsets ? out->offsets[nk] : 0;
    if (cur.bad || total > (cur.len - cur.off) / 12) rc = cfail(c, EG_NET_EPROTO, "select answer malformed");
    out->segments = malloc((total ? total : 1) * sizeof *out->segments);
    out->scores = malloc((total ? total : 1) * sizeof *out->scores);
    if (!rc && (!out->offsets || !out->n_forced || !out->segments || !out->scores))
        rc = cfail(c, EG_NET_ENOMEM, "select answer: out of memory");
    for (size_t i = 0; !rc && i < total; i++) out->segments[i] = (int64_t)eg_cur_u64(&cur);
    for (size_t i = 0; !rc && i < total; i++) out->scores[i] = eg_cur_f32(&cur);
    free(body);
    if (rc) eg_select_result_free(out);
    return rc;
}

int eg_client_fetch(eg_client *c, uint32_t handle, const eg_session_config *shape, uint32_t layer, uint32_t kv_head,
                    uint64_t segment, float *keys, float *values, uint32_t *out_rows)
{
    if (!c || !shape || !out_rows) return net_fail(EG_NET_EINVAL, "NULL argument");
    eg_request r = {.op = EG_OP_FETCH, .handle = handle, .layer = layer, .kv_head = kv_head, .segment = segment,
                    .want = (keys ? 1u : 0u) | (values ? 2u : 0u)};
    if (!r.want) r.want = 1;
    unsigned char *body;
    eg_cursor cur;
    int rc = call_read(c, &r, NULL, &body, &cur);
    if (rc) return rc;
    uint32_t rows = eg_cur_u32(&cur), want = eg_cur_u32(&cur), dk = eg_cur_u32(&cur), dv = eg_cur_u32(&cur);
    const unsigned char *k = (want & 1) ? eg_cur_bytes(&cur, (size_t)rows * dk * 4) : NULL;
    const unsigned char *v = (want & 2) ? eg_cur_bytes(&cur, (size_t)rows * dv * 4) : NULL;
    if (cur.bad || want != r.want || rows > shape->seg_tokens * 64u || dk != shape->head_dim_k ||
        dv != shape->head_dim_v) {
        free(body);
        return cfail(c, EG_NET_EPROTO, "fetch answer malformed");
    }
    if (keys && k) memcpy(keys, k, (size_t)rows * dk * 4);
    if (values && v) memcpy(values, v, (size_t)rows * dv * 4);
    *out_rows = rows;
    free(body);
    return 0;
}

int eg_client_append(eg_client *c, uint32_t handle, const eg_session_config *shape, const eg_append_req *req,
                     uint64_t *out_n_tokens)
{
    if (!c || !shape || !req) return net_fail(EG_NET_EINVAL, "NULL argument");
    eg_request r = {.op = EG_OP_APPEND, .handle = handle, .append = *req};
    unsigned char *body;
    eg_cursor cur;
    int rc = call_read(c, &r, shape, &body, &cur);
    if (rc) return rc;
    uint64_t n = eg_cur_u64(&cur);
    free(body);
    if (cur.bad) return cfail(c, EG_NET_EPROTO, "append answer truncated");
    if (out_n_tokens) *out_n_tokens = n;
    return 0;
}

/* ---- pipelined mode --------------------------------------------------------------- */
static int pend_push(eg_client *c, eg_request *r, const eg_session_config *shape, eg_attend_result *res,
                     uint64_t *n_tokens, uint64_t *out_id)
{
    if (c->p_count == PEND_MAX) return cfail(c, EG_NET_ELIMIT, "%d requests in flight: receive some first", PEND_MAX);
    uint64_t id;
    int rc = send_request(c, r, shape, &id);
    if (rc) return rc;
    pending *p = &c->pend[(c->p_head + c->p_count) % PEND_MAX];
    *p = (pending){.id = id, .op = r->op, .res = res, .n_tokens = n_tokens};
    c->p_count++;
    if (out_id) *out_id = id;
    return 0;
}

int eg_client_append_send(eg_client *c, uint32_t handle, const eg_session_config *shape, const eg_append_req *req,
                          uint64_t *out_n_tokens, uint64_t *out_id)
{
    if (!c || !shape || !req) return net_fail(EG_NET_EINVAL, "NULL argument");
    eg_request r = {.op = EG_OP_APPEND, .handle = handle, .append = *req};
    return pend_push(c, &r, shape, NULL, out_n_tokens, out_id);
}

int eg_client_attend_send(eg_client *c, uint32_t handle, const eg_session_config *shape, const eg_attend_req *req,
                          eg_attend_result *res, uint64_t *out_id)
{
    eg_request r;
    int rc = attend_request(c, handle, shape, req, EG_OP_ATTEND, 0, &r);
    if (rc || !res) return rc ? rc : net_fail(EG_NET_EINVAL, "NULL result");
    return pend_push(c, &r, shape, res, NULL, out_id);
}

int eg_client_ping_send(eg_client *c, uint64_t *out_id)
{
    if (!c) return net_fail(EG_NET_EINVAL, "NULL client");
    eg_request r = {.op = EG_OP_PING};
    return pend_push(c, &r, NULL, NULL, NULL, out_id);
}

int eg_client_pending(const eg_client *c) { return c ? c->p_count : 0; }

int eg_client_recv(eg_client *c, uint64_t *out_id)
{
    if (!c) return net_fail(EG_NET_EINVAL, "NULL client");
    if (!c->p_count) return cfail(c, EG_NET_EINVAL, "no request in flight");
    pending p = c->pend[c->p_head];
    c->p_head = (c->p_head + 1) % PEND_MAX;
    c->p_count--;
    if (out_id) *out_id = p.id;
    if (c->broken) return cfail(c, EG_NET_EDISCONNECT, "request %llu failed: the connection was lost",
                                (unsigned long long)p.id);
    eg_frame_header h;
    unsigned char *body;
    int rc = eg_client_recv_frame(c, &h, &body);
    if (rc) return rc;
    if (h.request_id != p.id) {
        free(body);
        drop_conn(c);
        return cfail(c, EG_NET_EPROTO, "answer for %llu while %llu was next", (unsigned long long)h.request_id,
                     (unsigned long long)p.id);
    }
    rc = answer_status(c, &h, body);
    eg_cursor cur;
    eg_cursor_init(&cur, body, h.body_len);
    if (!rc && p.op == EG_OP_ATTEND) rc = decode_attend(c, cur, p.res, 0);
    if (!rc && p.op == EG_OP_APPEND && p.n_tokens) {
        *p.n_tokens = eg_cur_u64(&cur);
        if (cur.bad) rc = cfail(c, EG_NET_EPROTO, "append answer truncated");
    }
    free(body);
    return rc;
}
