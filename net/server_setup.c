/* server_setup.c: options, binding (loopback unless there is a secret),
 * the ready file, and teardown. */
#include "server_internal.h"
#include <arpa/inet.h>
#include <errno.h>
#include <event2/thread.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

void eg_server_options_init(eg_server_options *o)
{
    memset(o, 0, sizeof *o);
    eg_engine_options_init(&o->engine);
}

static pthread_once_t evthread_once = PTHREAD_ONCE_INIT;
static int evthread_rc;
static void evthread_init(void) { evthread_rc = evthread_use_pthreads(); }

/* "HOST:PORT" or "[V6]:PORT" resolved numerically or by name. */
static int resolve(const char *spec, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    if (!colon || colon == spec || !colon[1])
        return net_fail(EG_NET_ELISTEN, "listen address '%s' is not HOST:PORT", spec);
    size_t hl = (size_t)(colon - spec);
    if (spec[0] == '[' && hl >= 2 && spec[hl - 1] == ']') { spec++; hl -= 2; }
    if (hl >= sizeof host) return net_fail(EG_NET_ELISTEN, "listen host too long");
    memcpy(host, spec, hl);
    host[hl] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535) return net_fail(EG_NET_ELISTEN, "listen port '%s' is not 0..65535", colon + 1);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai;
    int rc = getaddrinfo(host, colon + 1, &hints, &ai);
    if (rc) return net_fail(EG_NET_ELISTEN, "listen host '%s': %s", host, gai_strerror(rc));
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

static int is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a)) return 1;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return 0;
}

/* A socket file left by a server that died is removed; a live one is not. */
static int unix_prepare(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa->sun_path)
        return net_fail(EG_NET_ELISTEN, "unix socket path '%s' longer than %zu bytes", path, sizeof sa->sun_path - 1);
    memcpy(sa->sun_path, path, strlen(path));
    struct stat sb;
    if (lstat(path, &sb) != 0) return 0;
    if (!S_ISSOCK(sb.st_mode)) return net_fail(EG_NET_ELISTEN, "%s exists and is not a socket", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return net_fail(EG_NET_EIO, "socket: %s", strerror(errno));
    int live = connect(fd, (struct sockaddr *)sa, sizeof *sa) == 0;
    close(fd);
    if (live) return net_fail(EG_NET_ELISTEN, "%s: another server is listening there", path);
    unlink(path);
    return 0;
}

static int write_ready(eg_server *srv)
{
    if (!srv->ready_file[0]) return 0;
    char tmp[sizeof srv->ready_file + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", srv->ready_file);
    FILE *f = fopen(tmp, "w");
    if (!f) return net_fail(EG_NET_EIO, "ready file %s: %s", tmp, strerror(errno));
    if (srv->tcp_l) {
        char host[256];
        snprintf(host, sizeof host, "%s", srv->tcp);
        char *colon = strrchr(host, ':');
        if (colon) *colon = 0;
        fprintf(f, "tcp %s:%d\n", host, srv->port);
    }
    if (srv->unix_l) fprintf(f, "unix %s\n", srv->unix_path);
    fprintf(f, "pid %d\n", (int)getpid());
    int bad = fclose(f) != 0;
    if (bad || rename(tmp, srv->ready_file) != 0)
        return net_fail(EG_NET_EIO, "ready file %s: %s", srv->ready_file, strerror(errno));
    return 0;
}

static int setup(eg_server *srv, const eg_server_options *o)
{
    srv->opt = *o;
    eg_server_options *p = &srv->opt;
    snprintf(srv->data_dir, sizeof srv->data_dir, "%s", o->data_dir && *o->data_dir ? o->data_dir : "./data");
    snprintf(srv->tcp, sizeof srv->tcp, "%s", o->tcp ? o->tcp : "127.0.0.1:7411");
    if (o->unix_path && strlen(o->unix_path) >= sizeof srv->unix_path)
        return net_fail(EG_NET_ELISTEN, "unix socket path longer than %zu bytes", sizeof srv->unix_path - 1);
    snprintf(srv->unix_path, sizeof srv->unix_path, "%s", o->unix_path ? o->unix_path : "");
    snprintf(srv->ready_file, sizeof srv->ready_file, "%s", o->ready_file ? o->ready_file : "");
    p->data_dir = srv->data_dir;
    p->tcp = srv->tcp;
    p->unix_path = srv->unix_path;
    p->ready_file = srv->ready_file;
    p->secret = NULL;
    if (o->secret && *o->secret) {
        srv->secret_len = strlen(o->secret);
        if (srv->secret_len > EG_NET_STR_MAX) return net_fail(EG_NET_EINVAL, "secret longer than %u bytes", EG_NET_STR_MAX);
        if (!(srv->secret = strdup(o->secret))) return net_fail(EG_NET_ENOMEM, "secret");
    }
    srv->frame_max = o->frame_max ? o->frame_max : EG_NET_FRAME_DEFAULT;
    if (srv->frame_max < EG_NET_FRAME_MIN || srv->frame_max > EG_NET_FRAME_MAX)
        return net_fail(EG_NET_EINVAL, "frame limit %u outside %u..%u", srv->frame_max, EG_NET_FRAME_MIN, EG_NET_FRAME_MAX);
    if (o->max_connections < 0 || o->idle_timeout_s < 0 || o->n_workers < 0 || o->handles_max < 0 ||
        o->n_workers > 256)
        return net_fail(EG_NET_EINVAL, "negative limit, or more than 256 workers");
    if (!p->max_connections) p->max_connections = 1024;
    if (!p->idle_timeout_s) p->idle_timeout_s = 300;
    if (!p->n_workers) p->n_workers = 8;
    if (!p->handles_max) p->handles_max = 1024;
    if (!p->out_high) p->out_high = 4u << 20;
    if (!p->out_hard) p->out_hard = (size_t)srv->frame_max + (64u << 20);
    if (p->out_hard <= p->out_high) return net_fail(EG_NET_EINVAL, "output hard mark must exceed the high mark");
    return 0;
}

int eg_server_create(const eg_server_options *o, eg_server **out)
{
    if (!o || !out) return net_fail(EG_NET_EINVAL, "NULL options or output");
    *out = NULL;
    pthread_once(&evthread_once, evthread_init);
    if (evthread_rc) return net_fail(EG_NET_EIO, "libevent has no pthreads support");
    signal(SIGPIPE, SIG_IGN); /* a client that vanishes must not kill the server */
    eg_server *srv = calloc(1, sizeof *srv);
    if (!srv) return net_fail(EG_NET_ENOMEM, "server");
    pthread_mutex_init(&srv->mu, NULL);
    pthread_cond_init(&srv->cv, NULL);
    int rc = setup(srv, o);
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    if (!rc && srv->tcp[0]) {
        rc = resolve(srv->tcp, &ss, &sl);
        if (!rc && !is_loopback(&ss) && !srv->secret)
            rc = net_fail(EG_NET_ELISTEN, "refusing to listen on %s, beyond loopback, without a secret "
                          "(--secret-file)", srv->tcp);
    }
    struct sockaddr_un su;
    if (!rc && srv->unix_path[0]) rc = unix_prepare(srv->unix_path, &su);
    if (!rc) {
        rc = eg_engine_open(srv->data_dir, &srv->opt.engine, &srv->engine);
        if (rc) rc = net_fail(rc, "%s", eg_engine_last_error());
    }
    if (!rc && !(srv->base = event_base_new())) rc = net_fail(EG_NET_ENOMEM, "event base");
    if (!rc && srv->tcp[0]) {
        srv->tcp_l = net_server_listen(srv, (struct sockaddr *)&ss, (int)sl);
        if (!srv->tcp_l) rc = net_fail(EG_NET_ELISTEN, "cannot listen on %s: %s", srv->tcp, strerror(errno));
        else {
            struct sockaddr_storage b;
            socklen_t bl = sizeof b;
            getsockname(evconnlistener_get_fd(srv->tcp_l), (struct sockaddr *)&b, &bl);
            srv->port = ntohs(b.ss_family == AF_INET ? ((struct sockaddr_in *)&b)->sin_port
                                                     : ((struct sockaddr_in6 *)&b)->sin6_port);
        }
    }
    if (!rc && srv->unix_path[0]) {
        srv->unix_l = net_server_listen(srv, (struct sockaddr *)&su, (int)sizeof su);
        if (!srv->unix_l) rc = net_fail(EG_NET_ELISTEN, "cannot listen on %s: %s", srv->unix_path, strerror(errno));
        else chmod(srv->unix_path, 0660);
    }
    if (!rc && !srv->tcp_l && !srv->unix_l) rc = net_fail(EG_NET_ELISTEN, "no TCP address and no unix socket to listen on");
    if (!rc) rc = net_server_start_workers(srv);
    if (!rc) rc = write_ready(srv);
    if (rc) {
        char keep[768];
        snprintf(keep, sizeof keep, "%s", eg_net_last_error());
        eg_server_free(srv);
        return net_fail(rc, "%s", keep);
    }
    if (!srv->opt.quiet) {
        if (srv->tcp_l) fprintf(stderr, "engramd: listening on tcp %.*s:%d\n",
                                (int)(strrchr(srv->tcp, ':') - srv->tcp), srv->tcp, srv->port);
        if (srv->unix_l) fprintf(stderr, "engramd: listening on unix %s\n", srv->unix_path);
        fprintf(stderr, "engramd: data in %s%s\n", srv->data_dir, srv->secret ? "; clients need the secret" : "");
    }
    *out = srv;
    return 0;
}

void eg_server_free(eg_server *srv)
{
    if (!srv) return;
    if (srv->n_workers) {
        pthread_mutex_lock(&srv->mu);
        srv->quit = 1;
        srv->draining = 1;
        pthread_cond_broadcast(&srv->cv);
        pthread_mutex_unlock(&srv->mu);
        for (int i = 0; i < srv->n_workers; i++) pthread_join(srv->workers[i], NULL);
    }
    /* jobs can only be left when run never ran: their connections never existed */
    if (srv->tcp_l) evconnlistener_free(srv->tcp_l);
    if (srv->unix_l) {
        evconnlistener_free(srv->unix_l);
        unlink(srv->unix_path);
    }
    struct event *evs[] = {srv->wake, srv->stop_ev, srv->sig_term, srv->sig_int, srv->retry, srv->deadline};
    for (size_t i = 0; i < sizeof evs / sizeof *evs; i++)
        if (evs[i]) event_free(evs[i]);
    if (srv->base) event_base_free(srv->base);
    if (srv->engine) eg_engine_close(srv->engine);
    if (srv->ready_file[0]) unlink(srv->ready_file);
    free(srv->workers);
    free(srv->secret);
    pthread_mutex_destroy(&srv->mu);
    pthread_cond_destroy(&srv->cv);
    free(srv);
}
