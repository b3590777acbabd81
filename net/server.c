/* server.c: engramd's event loop. One libevent loop owns every socket;
 * LMDB commits and attention math run on worker threads. A connection
 * runs one request at a time, in arrival order (pipelined requests wait in
 * its bounded input buffer), so answers come back in order and a client's
 * appends to a session apply in the order it sent them.
 *
 * Connection states, memcached style:
 *   reading   parse the next frame from the input buffer
 *   busy      one request is with a worker; input accumulates up to a mark
 *   swallow   a refused body (too big, bad header) is discarded unread so
 *             the stream stays in sync
 *   closing   answer what is owed, flush, close (bad magic, auth, shutdown)
 *   dead      the socket is gone while a worker still runs its request; the
 *             connection is freed when that request returns */
#include "server_internal.h"
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/thread.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_MARK (256u << 10) /* input buffered ahead of the request being run */

struct net_conn {
    eg_server *srv;
    struct bufferevent *bev;
    net_conn *prev, *next;
    int authed, busy, closing, dead, eof;
    uint64_t swallow;
    net_handles hs;
};

void net_server_stats(eg_server *srv, eg_server_stats *out)
{
    pthread_mutex_lock(&srv->mu);
    *out = srv->stats;
    pthread_mutex_unlock(&srv->mu);
}
#define STAT_ADD(srv, field, v)              \
    do {                                     \
        pthread_mutex_lock(&(srv)->mu);      \
        (srv)->stats.field += (v);           \
        pthread_mutex_unlock(&(srv)->mu);    \
    } while (0)

static void log_line(eg_server *srv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_line(eg_server *srv, const char *fmt, ...)
{
    if (srv->opt.quiet) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "engramd: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- answers ---------------------------------------------------------------- */
static void free_cb(const void *data, size_t len, void *extra)
{
    (void)len; (void)extra;
    free((void *)data);
}

/* Queue b's frame on c's output; b's bytes change owner (no copy). */
static void conn_send(net_conn *c, eg_buf *b)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t n = b->len;
    if (evbuffer_add_reference(out, b->data, n, free_cb, NULL) != 0) free(b->data);
    memset(b, 0, sizeof *b);
    STAT_ADD(c->srv, bytes_out, n);
}

static void conn_send_status(net_conn *c, const eg_frame_header *req, int status, const char *msg)
{
    eg_buf b;
    eg_buf_init(&b);
    if (status) eg_buf_str(&b, msg, strlen(msg));
    eg_frame_header h = {.opcode = req->opcode, .flags = EG_NET_FLAG_ANSWER, .status = status,
                         .request_id = req->request_id};
    if (eg_buf_frame(&b, &h) == 0) conn_send(c, &b);
    else eg_buf_free(&b);
    if (status) STAT_ADD(c->srv, errors, 1);
}

/* ---- connection lifetime ------------------------------------------------------- */
static void conn_unlink(net_conn *c)
{
    eg_server *srv = c->srv;
    if (c->prev) c->prev->next = c->next;
    else if (srv->conns == c) srv->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    srv->n_conns--;
    pthread_mutex_lock(&srv->mu);
    srv->stats.connections = (uint64_t)srv->n_conns;
    pthread_mutex_unlock(&srv->mu);
}

static void maybe_finish(eg_server *srv)
{
    if (srv->stopping && srv->n_conns == 0 && srv->jobs_out == 0) event_base_loopbreak(srv->base);
}

/* Hand job j of connection c to the workers (loop thread). */
static void job_queue(net_conn *c, net_job *j)
{
    eg_server *srv = c->srv;
    j->c = c;
    c->busy = 1;
    srv->jobs_out++;
    pthread_mutex_lock(&srv->mu);
    if (srv->q_tail) srv->q_tail->next = j;
    else srv->q_head = j;
    srv->q_tail = j;
    pthread_cond_signal(&srv->cv);
    pthread_mutex_unlock(&srv->mu);
}

/* A dead connection no worker holds: its session handles are closed on a
 * worker (closing a session's last handle writes its quest snapshots to
 * the store, which must not stall the loop), then it is freed. */
static void conn_release(net_conn *c)
{
    net_job *j = c->hs.n ? calloc(1, sizeof *j) : NULL;
    if (!j) {   /* nothing to close, or no memory: close here */
        net_handles_close_all(&c->hs);
        free(c);
        return;
    }
    j->teardown = 1;
    job_queue(c, j);
}

/* The socket goes now; the rest when no worker holds the connection. */
static void conn_close(net_conn *c)
{
    eg_server *srv = c->srv;
    if (c->dead) return;
    c->dead = 1;
    bufferevent_free(c->bev);
    c->bev = NULL;
    conn_unlink(c);
    if (!c->busy) conn_release(c);
    maybe_finish(srv);
}

/* Both return 1 when c was freed (the caller must not touch it). */
static int conn_process(net_conn *c);

static int conn_close_when_flushed(net_conn *c)
{
    c->closing = 1;
    bufferevent_disable(c->bev, EV_READ);
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    if (c->busy || evbuffer_get_length(bufferevent_get_output(c->bev)) != 0) return 0;
    conn_close(c);
    return 1;
}

/* ---- requests --------------------------------------------------------------- */
static int secret_equal(const eg_server *srv, const char *s, size_t n)
{
    unsigned char diff = n != srv->secret_len;
    for (size_t i = 0; i < srv->secret_len; i++) diff |= (unsigned char)(srv->secret[i] ^ (i < n ? s[i] : 0));
    return diff == 0; /* constant time in the secret's length */
}

/* Hello runs on the loop: it is a comparison, and it decides what follows. */
static int conn_hello(net_conn *c, const eg_frame_header *h, unsigned char *body)
{
    eg_server *srv = c->srv;
    eg_request r;
    int rc = eg_wire_decode_request(EG_OP_HELLO, body, h->body_len, &r);
    if (rc) { conn_send_status(c, h, rc, eg_net_last_error()); return 0; }
    if (r.min_version > EG_NET_VERSION || r.max_version < EG_NET_VERSION) {
        char m[128];
        snprintf(m, sizeof m, "client speaks versions %u..%u; this server speaks %d", r.min_version,
                 r.max_version, EG_NET_VERSION);
        conn_send_status(c, h, EG_NET_EVERSION, m);
        return 0;
    }
    if (srv->secret && !secret_equal(srv, r.secret ? r.secret : "", r.secret ? r.secret_len : 0)) {
        conn_send_status(c, h, EG_NET_EAUTH, "wrong secret");
        return -1;
    }
    c->authed = 1;
    eg_buf b;
    eg_buf_init(&b);
    eg_buf_u16(&b, EG_NET_VERSION);
    eg_buf_u16(&b, 0);
    eg_buf_u32(&b, srv->frame_max);
    eg_buf_str(&b, "engramd 0.1", 11);
    eg_frame_header a = {.opcode = EG_OP_HELLO, .flags = EG_NET_FLAG_ANSWER, .request_id = h->request_id};
    if (eg_buf_frame(&b, &a) == 0) conn_send(c, &b);
    else eg_buf_free(&b);
    return 0;
}

static void conn_submit(net_conn *c, const eg_frame_header *h, unsigned char *body)
{
    net_job *j = calloc(1, sizeof *j);
    if (!j) {
        free(body);
        conn_send_status(c, h, EG_NET_ENOMEM, "server out of memory");
        return;
    }
    j->h = *h;
    j->body = body;
    job_queue(c, j);
}

static void set_read_mark(net_conn *c, size_t need)
{
    bufferevent_setwatermark(c->bev, EV_READ, 0, need > READ_MARK ? need : READ_MARK);
}

static int conn_process(net_conn *c)
{
    eg_server *srv = c->srv;
    struct evbuffer *in = bufferevent_get_input(c->bev), *out = bufferevent_get_output(c->bev);
    while (!c->busy && !c->closing) {
        if (c->swallow) {
            size_t n = evbuffer_get_length(in);
            if (n > c->swallow) n = (size_t)c->swallow;
            evbuffer_drain(in, n);
            c->swallow -= n;
            STAT_ADD(srv, bytes_in, n);
            if (c->swallow) { set_read_mark(c, 0); return 0; }
        }
        if (!srv->stopping && evbuffer_get_length(out) > srv->opt.out_high) return 0; /* resumed by write_cb */
        size_t have = evbuffer_get_length(in);
        if (have < EG_NET_HEADER_BYTES) {
            if (srv->stopping) break;
            set_read_mark(c, 0);
            return 0;
        }
        unsigned char hb[EG_NET_HEADER_BYTES];
        evbuffer_copyout(in, hb, sizeof hb);
        eg_frame_header h;
        int rc = eg_frame_header_decode(hb, srv->frame_max, &h);
        if (rc == EG_NET_EMAGIC || rc == EG_NET_EVERSION) {
            /* nothing after this can be trusted to be a frame boundary */
            conn_send_status(c, &h, rc, eg_net_last_error());
            STAT_ADD(srv, closed_bad, 1);
            return conn_close_when_flushed(c);
        }
        if (rc) {
            evbuffer_drain(in, EG_NET_HEADER_BYTES);
            c->swallow = h.body_len;
            conn_send_status(c, &h, rc, eg_net_last_error());
            continue;
        }
        if (have - EG_NET_HEADER_BYTES < h.body_len) {
            if (srv->stopping) break;
            set_read_mark(c, EG_NET_HEADER_BYTES + (size_t)h.body_len);
            return 0;
        }
        evbuffer_drain(in, EG_NET_HEADER_BYTES);
        STAT_ADD(srv, requests, 1);
        STAT_ADD(srv, bytes_in, EG_NET_HEADER_BYTES + (uint64_t)h.body_len);
        if (srv->stopping) {
            evbuffer_drain(in, h.body_len);
            conn_send_status(c, &h, EG_NET_ESHUTDOWN, "the server is stopping: request not run");
            continue;
        }
        unsigned char *body = malloc(h.body_len ? h.body_len : 1); /* within frame_max: checked above */
        if (!body) {
            c->swallow = h.body_len;
            conn_send_status(c, &h, EG_NET_ENOMEM, "server out of memory for the body");
            continue;
        }
        evbuffer_remove(in, body, h.body_len);
        if (h.opcode == EG_OP_HELLO) {
            rc = conn_hello(c, &h, body);
            free(body);
            if (rc) return conn_close_when_flushed(c);
            continue;
        }
        if (srv->secret && !c->authed) {
            free(body);
            conn_send_status(c, &h, EG_NET_EAUTH, "this server needs a hello with its secret first");
            return conn_close_when_flushed(c);
        }
        if (h.opcode == EG_OP_PING) {
            rc = eg_wire_decode_request(EG_OP_PING, body, h.body_len, &(eg_request){0});
            free(body);
            conn_send_status(c, &h, rc, eg_net_last_error());
            continue;
        }
        conn_submit(c, &h, body);
    }
    if (srv->stopping && !c->busy && !c->closing) return conn_close_when_flushed(c);
    return 0;
}

/* ---- libevent callbacks ------------------------------------------------------- */
static void read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    conn_process(arg);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    net_conn *c = arg;
    if (c->closing) {
        if (!c->busy && evbuffer_get_length(bufferevent_get_output(bev)) == 0) conn_close(c);
        return;
    }
    conn_process(c);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    net_conn *c = arg;
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING) && c->busy) {
        bufferevent_enable(bev, EV_READ); /* waiting on our own worker is not idleness */
        return;
    }
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) && !c->closing) {
        /* The client half-closed after its last request: answer what it
         * sent (as `printf ... | nc` expects), then close. */
        c->eof = 1;
        bufferevent_disable(bev, EV_READ);
        if (!conn_process(c) && !c->busy && !c->closing) conn_close_when_flushed(c);
        return;
    }
    if (what & BEV_EVENT_TIMEOUT) STAT_ADD(c->srv, closed_idle, 1);
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_WRITING)) STAT_ADD(c->srv, closed_slow, 1);
    conn_close(c);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
    (void)l; (void)len;
    eg_server *srv = arg;
    if (srv->stopping) { close(fd); return; }
    if (srv->n_conns >= srv->opt.max_connections) {
        /* a clear refusal, written without blocking; the socket is fresh so it fits */
        eg_buf b;
        eg_buf_init(&b);
        char m[96];
        snprintf(m, sizeof m, "connection limit of %d reached: try again later", srv->opt.max_connections);
        eg_buf_str(&b, m, strlen(m));
        eg_frame_header h = {.flags = EG_NET_FLAG_ANSWER, .status = EG_NET_ELIMIT};
        if (eg_buf_frame(&b, &h) == 0) (void)!send(fd, b.data, b.len, MSG_DONTWAIT | MSG_NOSIGNAL);
        eg_buf_free(&b);
        close(fd);
        STAT_ADD(srv, connections_refused, 1);
        return;
    }
    net_conn *c = calloc(1, sizeof *c);
    struct bufferevent *bev = c ? bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE) : NULL;
    if (!bev) {
        free(c);
        close(fd);
        return;
    }
    if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    c->srv = srv;
    c->bev = bev;
    c->authed = srv->secret == NULL;
    c->next = srv->conns;
    if (srv->conns) srv->conns->prev = c;
    srv->conns = c;
    srv->n_conns++;
    pthread_mutex_lock(&srv->mu);
    srv->stats.connections = (uint64_t)srv->n_conns;
    srv->stats.connections_total++;
    pthread_mutex_unlock(&srv->mu);
    bufferevent_setcb(bev, read_cb, write_cb, event_cb, c);
    set_read_mark(c, 0);
    bufferevent_setwatermark(bev, EV_WRITE, srv->opt.out_high / 2, 0);
    struct timeval tv = {.tv_sec = srv->opt.idle_timeout_s};
    bufferevent_set_timeouts(bev, &tv, &tv);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

/* Out of descriptors: pause accepting for a moment rather than spin on a
 * listener that stays readable. */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    eg_server *srv = arg;
    int e = EVUTIL_SOCKET_ERROR();
    log_line(srv, "accept failed (%s): pausing accepts for 100 ms", evutil_socket_error_to_string(e));
    evconnlistener_disable(l);
    struct timeval tv = {0, 100000};
    evtimer_add(srv->retry, &tv);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    eg_server *srv = arg;
    if (srv->stopping) return;
    if (srv->tcp_l) evconnlistener_enable(srv->tcp_l);
    if (srv->unix_l) evconnlistener_enable(srv->unix_l);
}

/* Answers from the workers, handed to their connections on the loop. */
static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    eg_server *srv = arg;
    pthread_mutex_lock(&srv->mu);
    net_job *j = srv->done_head;
    srv->done_head = srv->done_tail = NULL;
    pthread_mutex_unlock(&srv->mu);
    while (j) {
        net_job *next = j->next;
        net_conn *c = j->c;
        c->busy = 0;
        srv->jobs_out--;
        if (c->dead) {
            eg_buf_free(&j->ans);
            conn_release(c);   /* after a teardown job its handles are closed: freed here */
        } else {
            conn_send(c, &j->ans);
            if (evbuffer_get_length(bufferevent_get_output(c->bev)) > srv->opt.out_hard) {
                STAT_ADD(srv, closed_slow, 1);
                conn_close(c);
            } else if (c->closing) {
                conn_close_when_flushed(c);
            } else {
                if (!conn_process(c) && c->eof && !c->busy && !c->closing) conn_close_when_flushed(c);
            }
        }
        free(j);
        j = next;
    }
    maybe_finish(srv);
}

static void begin_shutdown(eg_server *srv)
{
    if (srv->stopping) return;
    srv->stopping = 1;
    log_line(srv, "stopping: answering what is in flight");
    if (srv->tcp_l) evconnlistener_free(srv->tcp_l);
    if (srv->unix_l) evconnlistener_free(srv->unix_l);
    srv->tcp_l = srv->unix_l = NULL;
    if (srv->unix_path[0]) unlink(srv->unix_path);
    pthread_mutex_lock(&srv->mu);
    srv->draining = 1; /* queued requests are failed with EG_NET_ESHUTDOWN */
    pthread_mutex_unlock(&srv->mu);
    for (net_conn *c = srv->conns, *n; c; c = n) {
        n = c->next;
        bufferevent_disable(c->bev, EV_READ);
        if (!c->busy && !c->closing) conn_process(c);
    }
    struct timeval tv = {5, 0};
    evtimer_add(srv->deadline, &tv);
    maybe_finish(srv);
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    begin_shutdown(arg);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    eg_server *srv = arg;
    log_line(srv, "stop deadline passed with %d requests still running", srv->jobs_out);
    event_base_loopbreak(srv->base);
}

/* ---- workers ---------------------------------------------------------------- */
static void *worker_main(void *arg)
{
    eg_server *srv = arg;
    for (;;) {
        pthread_mutex_lock(&srv->mu);
        while (!srv->q_head && !srv->quit) pthread_cond_wait(&srv->cv, &srv->mu);
        net_job *j = srv->q_head;
        if (!j) { pthread_mutex_unlock(&srv->mu); break; }
        srv->q_head = j->next;
        if (!srv->q_head) srv->q_tail = NULL;
        int drain = srv->draining;
        pthread_mutex_unlock(&srv->mu);
        j->next = NULL;

        eg_buf_init(&j->ans);
        if (j->teardown) {   /* also while draining: the handles must close */
            net_handles_close_all(&j->c->hs);
            pthread_mutex_lock(&srv->mu);
            if (srv->done_tail) srv->done_tail->next = j;
            else srv->done_head = j;
            srv->done_tail = j;
            pthread_mutex_unlock(&srv->mu);
            event_active(srv->wake, EV_READ, 0);
            continue;
        }
        int status = drain ? net_fail(EG_NET_ESHUTDOWN, "the server is stopping: request not run")
                           : net_execute(srv, &j->c->hs, &j->h, j->body, &j->ans);
        if (!status && j->ans.failed) status = net_fail(EG_NET_ENOMEM, "answer: out of memory");
        if (!status && j->ans.len - EG_NET_HEADER_BYTES > srv->frame_max)
            status = net_fail(EG_NET_ETOOBIG, "the answer is over the frame limit of %u bytes", srv->frame_max);
        if (status) {
            eg_buf_free(&j->ans);
            eg_buf_init(&j->ans);
            const char *m = eg_net_last_error();
            eg_buf_str(&j->ans, m, strlen(m));
        }
        free(j->body);
        j->body = NULL;
        eg_frame_header h = {.opcode = j->h.opcode, .flags = EG_NET_FLAG_ANSWER, .status = status,
                             .request_id = j->h.request_id};
        if (eg_buf_frame(&j->ans, &h)) {
            /* not even an error frame fits: the client gets a closed connection */
            eg_buf_free(&j->ans);
        }
        pthread_mutex_lock(&srv->mu);
        if (status) srv->stats.errors++;
        if (srv->done_tail) srv->done_tail->next = j;
        else srv->done_head = j;
        srv->done_tail = j;
        pthread_mutex_unlock(&srv->mu);
        event_active(srv->wake, EV_READ, 0);
    }
    return NULL;
}

/* ---- run and stop --------------------------------------------------------------- */
int eg_server_run(eg_server *srv, int install_signals)
{
    if (!srv || !srv->base) return net_fail(EG_NET_EINVAL, "server not created");
    if (install_signals) {
        srv->sig_term = evsignal_new(srv->base, SIGTERM, stop_cb, srv);
        srv->sig_int = evsignal_new(srv->base, SIGINT, stop_cb, srv);
        if (!srv->sig_term || !srv->sig_int) return net_fail(EG_NET_ENOMEM, "signal events");
        evsignal_add(srv->sig_term, NULL);
        evsignal_add(srv->sig_int, NULL);
    }
    event_base_dispatch(srv->base);
    begin_shutdown(srv); /* a loop that ended on its own still stops cleanly */
    pthread_mutex_lock(&srv->mu);
    srv->quit = 1;
    pthread_cond_broadcast(&srv->cv);
    pthread_mutex_unlock(&srv->mu);
    for (int i = 0; i < srv->n_workers; i++) pthread_join(srv->workers[i], NULL);
    srv->n_workers = 0;
    wake_cb(-1, 0, srv); /* answers of requests that finished after the deadline */
    while (srv->conns) conn_close(srv->conns);
    int rc = eg_engine_close(srv->engine);
    srv->engine = NULL;
    if (rc) return net_fail(rc, "closing the store: %s", eg_engine_last_error());
    log_line(srv, "stopped; store closed");
    return 0;
}

void eg_server_stop(eg_server *srv)
{
    if (srv && srv->stop_ev) event_active(srv->stop_ev, EV_READ, 0);
}

int eg_server_port(const eg_server *srv) { return srv ? srv->port : 0; }
eg_engine *eg_server_engine(eg_server *srv) { return srv ? srv->engine : NULL; }

int net_server_start_workers(eg_server *srv)
{
    srv->wake = event_new(srv->base, -1, 0, wake_cb, srv);
    srv->stop_ev = event_new(srv->base, -1, 0, stop_cb, srv);
    srv->retry = evtimer_new(srv->base, retry_cb, srv);
    srv->deadline = evtimer_new(srv->base, deadline_cb, srv);
    srv->workers = calloc((size_t)srv->opt.n_workers, sizeof *srv->workers);
    if (!srv->wake || !srv->stop_ev || !srv->retry || !srv->deadline || !srv->workers)
        return net_fail(EG_NET_ENOMEM, "server events");
    for (int i = 0; i < srv->opt.n_workers; i++) {
        if (pthread_create(&srv->workers[i], NULL, worker_main, srv) != 0)
            return net_fail(EG_NET_EIO, "cannot start worker thread %d", i);
        srv->n_workers++;
    }
    return 0;
}

struct evconnlistener *net_server_listen(eg_server *srv, const struct sockaddr *sa, int len)
{
    struct evconnlistener *l = evconnlistener_new_bind(
        srv->base, accept_cb, srv, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, 128, sa, len);
    if (l) evconnlistener_set_error_cb(l, accept_error_cb);
    return l;
}
