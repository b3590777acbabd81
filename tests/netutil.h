/* netutil.h: what the service tests share: a real engramd started as a
 * child process (found next to the test binary, in ../bin), raw sockets
 * for malformed input, and the server's memory from /proc. Header-only. */
#ifndef ENGRAM_NETUTIL_H
#define ENGRAM_NETUTIL_H
#include "net.h"
#include "testutil.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHECK_NET(expr) do { int _rc = (expr); if (_rc < 0) { \
    fprintf(stderr, "  %s:%d: %s returned %d (%s)\n", __FILE__, __LINE__, #expr, _rc, \
    eg_net_last_error()); tu_case_failed = 1; } } while (0)
#define CHECK_NCODE(expr, code) do { int _rc = (expr); if (_rc != (code)) { \
    fprintf(stderr, "  %s:%d: %s returned %d (%s), expected %s\n", __FILE__, __LINE__, #expr, \
    _rc, eg_net_last_error(), #code); tu_case_failed = 1; } } while (0)

static char nt_engramd[1024];
static int nt_nofile; /* > 0: the next nt_start runs engramd with this many descriptors */

/* Call first from main: engramd lives in ../bin relative to the test. */
static inline void nt_init(const char *argv0)
{
    snprintf(nt_engramd, sizeof nt_engramd, "%s", argv0);
    char *slash = strrchr(nt_engramd, '/');
    if (slash) *slash = 0;
    else snprintf(nt_engramd, sizeof nt_engramd, ".");
    size_t n = strlen(nt_engramd);
    snprintf(nt_engramd + n, sizeof nt_engramd - n, "/../bin/engramd");
    signal(SIGPIPE, SIG_IGN);
    /* Under AddressSanitizer freed memory sits in a quarantine, which would
     * read as growth in the server-memory checks: keep it small. */
    const char *a = getenv("ASAN_OPTIONS");
    char opts[512];
    snprintf(opts, sizeof opts, "%s%squarantine_size_mb=1", a ? a : "", a && *a ? ":" : "");
    setenv("ASAN_OPTIONS", opts, 1);
}

typedef struct {
    pid_t pid;
    char dir[512], ready[600], unix_path[600], tcp[80];
    int status;              /* exit status after nt_stop */
} nt_server;

static inline double nt_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}
static inline void nt_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Start engramd on dir (data in dir/data, socket dir/s.sock, TCP port
 * chosen by the OS) with extra flags (NULL-terminated, may be NULL).
 * Returns 0 once its ready file is there, -1 if it exited or took 20 s. */
static inline int nt_start(nt_server *s, const char *dir, const char *const *extra)
{
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    snprintf(s->ready, sizeof s->ready, "%s/ready", dir);
    snprintf(s->unix_path, sizeof s->unix_path, "%s/s.sock", dir);
    unlink(s->ready);
    char data[600];
    snprintf(data, sizeof data, "%s/data", dir);
    const char *argv[40] = {nt_engramd, "--data", data, "--listen", "127.0.0.1:0", "--unix", s->unix_path,
                            "--ready-file", s->ready, "--quiet"};
    int n = 10;
    for (int i = 0; extra && extra[i] && n < 38; i++) argv[n++] = extra[i];
    argv[n] = NULL;
    s->pid = fork();
    if (s->pid == 0) {
        int fd = open("/dev/null", O_RDONLY);
        if (fd >= 0) dup2(fd, 0);
        if (nt_nofile > 0) {
            struct rlimit rl = {(rlim_t)nt_nofile, (rlim_t)nt_nofile};
            setrlimit(RLIMIT_NOFILE, &rl);
        }
        execv(nt_engramd, (char *const *)argv);
        _exit(127);
    }
    if (s->pid < 0) return -1;
    double t0 = nt_now();
    while (nt_now() - t0 < 20) {
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) { s->pid = 0; s->status = st; return -1; }
        FILE *f = fopen(s->ready, "r");
        if (f) {
            char line[700];
            while (fgets(line, sizeof line, f)) {
                line[strcspn(line, "\n")] = 0;
                if (!strncmp(line, "tcp ", 4)) snprintf(s->tcp, sizeof s->tcp, "%.79s", line + 4);
            }
            fclose(f);
            return 0;
        }
        nt_sleep_ms(10);
    }
    return -1;
}

/* Send sig and wait (up to 30 s, then SIGKILL). Returns the exit code, or
 * 128 + signal when killed. */
static inline int nt_stop(nt_server *s, int sig)
{
    if (s->pid <= 0) return -1;
    kill(s->pid, sig);
    double t0 = nt_now();
    int st = 0;
    while (waitpid(s->pid, &st, WNOHANG) != s->pid) {
        if (nt_now() - t0 > 30) { kill(s->pid, SIGKILL); waitpid(s->pid, &st, 0); break; }
        nt_sleep_ms(5);
    }
    s->pid = 0;
    s->status = st;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* CPU seconds (user + system) a process has used (-1 if unknown). */
static inline double nt_cpu_s(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* fields after the command name */
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static inline int nt_alive(const nt_server *s) { return s->pid > 0 && kill(s->pid, 0) == 0; }

/* Resident memory of a process in KiB (-1 if unknown). */
static inline long nt_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

/* A raw Unix-socket connection, for bytes no client would send. */
static inline int nt_raw(const nt_server *s)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un su = {.sun_family = AF_UNIX};
    snprintf(su.sun_path, sizeof su.sun_path, "%.107s", s->unix_path);
    if (connect(fd, (struct sockaddr *)&su, sizeof su) != 0) { close(fd); return -1; }
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static inline int nt_write(int fd, const void *p, size_t n)
{
    const unsigned char *b = p;
    while (n) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w <= 0) { if (w < 0 && errno == EINTR) continue; return -1; }
        b += w; n -= (size_t)w;
    }
    return 0;
}

/* Read one answer frame: 0, or -1 on EOF/timeout. *body malloc'd (may be NULL). */
static inline int nt_read_frame(int fd, eg_frame_header *h, unsigned char **body)
{
    unsigned char hb[EG_NET_HEADER_BYTES];
    size_t got = 0;
    if (body) *body = NULL;
    while (got < sizeof hb) {
        ssize_t r = recv(fd, hb + got, sizeof hb - got, 0);
        if (r <= 0) { if (r < 0 && errno == EINTR) continue; return -1; }
        got += (size_t)r;
    }
    int rc = eg_frame_header_decode(hb, EG_NET_FRAME_MAX, h);
    if (rc && rc != EG_NET_EOPCODE) return -1;
    unsigned char *b = malloc(h->body_len + 1);
    got = 0;
    while (got < h->body_len) {
        ssize_t r = recv(fd, b + got, h->body_len - got, 0);
        if (r <= 0) { if (r < 0 && errno == EINTR) continue; free(b); return -1; }
        got += (size_t)r;
    }
    if (body) *body = b;
    else free(b);
    return 0;
}

/* 1 when the peer closed the connection within ms (reads and drops data). */
static inline int nt_closed_within(int fd, int ms)
{
    double t0 = nt_now();
    char buf[4096];
    struct timeval tv = {0, 100000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    while ((nt_now() - t0) * 1000 < ms) {
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r == 0) return 1;
        if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return 1;
    }
    return 0;
}

/* A request frame with this header and body. */
static inline size_t nt_frame(unsigned char *out, uint16_t op, uint64_t id, const void *body, uint32_t len)
{
    eg_frame_header h = {.version = EG_NET_VERSION, .opcode = op, .request_id = id, .body_len = len};
    eg_frame_header_encode(&h, out);
    if (len) memcpy(out + EG_NET_HEADER_BYTES, body, len);
    return EG_NET_HEADER_BYTES + len;
}

/* A client over the server's Unix socket (or TCP when tcp = 1). */
static inline int nt_client(const nt_server *s, int tcp, const char *secret, eg_client **out)
{
    eg_client_options o;
    eg_client_options_init(&o);
    o.secret = secret;
    o.timeout_ms = 30000;
    return eg_client_connect(tcp ? s->tcp : s->unix_path, &o, out);
}
#endif
