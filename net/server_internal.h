/* server_internal.h: the server's state, shared by server.c (the loop and
 * connections, loop thread only) and server_ops.c (workers). */
#ifndef ENGRAM_SERVER_INTERNAL_H
#define ENGRAM_SERVER_INTERNAL_H
#include "net_internal.h"
#include <event2/event.h>
#include <event2/listener.h>
#include <pthread.h>

/* A connection's open sessions: handle id = index + 1; NULL = free slot. */
typedef struct {
    eg_engine_session **h;
    uint32_t n, cap;
} net_handles;
void net_handles_close_all(net_handles *hs);

typedef struct net_conn net_conn;
typedef struct net_job {
    struct net_job *next;
    net_conn *c;
    eg_frame_header h;
    unsigned char *body;     /* owned; freed by the worker */
    eg_buf ans;              /* the answer frame, built by the worker */
    int teardown;            /* no request: close a dead connection's session handles */
} net_job;

struct eg_server {
    eg_server_options opt;
    char data_dir[1024], tcp[256], unix_path[108], ready_file[1024];
    char *secret;
    size_t secret_len;
    uint32_t frame_max;
    eg_engine *engine;
    struct event_base *base;
    struct evconnlistener *tcp_l, *unix_l;
    struct event *wake, *stop_ev, *sig_term, *sig_int, *retry, *deadline;
    int port;
    pthread_t *workers;
    int n_workers;
    pthread_mutex_t mu;      /* the job queues, quit, draining, stats */
    pthread_cond_t cv;
    net_job *q_head, *q_tail, *done_head, *done_tail;
    int quit, draining;
    net_conn *conns;         /* loop thread only */
    int n_conns, jobs_out, stopping;
    eg_server_stats stats;   /* under mu */
};

/* Run one request (worker thread). Returns 0 or a code with its message in
 * eg_net_last_error(); ans holds the answer body on success. */
int net_execute(eg_server *srv, net_handles *hs, const eg_frame_header *h, unsigned char *body,
                eg_buf *ans);
void net_server_stats(eg_server *srv, eg_server_stats *out);
/* server.c: loop events and worker threads; a listener on sa. */
int net_server_start_workers(eg_server *srv);
struct evconnlistener *net_server_listen(eg_server *srv, const struct sockaddr *sa, int len);
#endif
