/* net.h: Engram's wire protocol, server and client (the one public header
 * of net/). docs/protocol.md is the normative description of the bytes;
 * this header is the C side of it.
 *
 * Three parts:
 * - wire: pure functions over bytes. Frame headers are encoded and checked
 *   here, and every request and answer body is encoded and decoded here, so
 *   the server, the client, the fuzz target and the tests share one parser.
 * - server: the libevent loop of engramd (listeners, connections, limits,
 *   backpressure, shutdown) with the engine's work on worker threads.
 * - client: a blocking call per operation, plus a pipelined mode for the
 *   operations an inference engine streams (append, attend, ping).
 *
 * Conventions as in engine.h: 0 on success, a negative code on failure,
 * outputs by pointer, ownership next to each declaration. Codes of net/
 * are -300..-399; codes of memory/, index/ and engine/ pass through
 * unchanged (a server's error answer carries the engine's code).
 */
#ifndef ENGRAM_NET_H
#define ENGRAM_NET_H

#include "engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ------------------------------------------------------------- */
enum {
    EG_NET_EINVAL = -300,     /* an argument is NULL or out of range */
    EG_NET_EMAGIC = -301,     /* frame does not start with the magic: stream out of sync */
    EG_NET_EVERSION = -302,   /* frame version or negotiated version not supported */
    EG_NET_EOPCODE = -303,    /* unknown opcode */
    EG_NET_ETOOBIG = -304,    /* body longer than the frame limit (it was skipped unread) */
    EG_NET_EBODY = -305,      /* body malformed: short, long, or fields inconsistent */
    EG_NET_EFLAGS = -306,     /* reserved header flags or field not zero */
    EG_NET_EAUTH = -307,      /* no hello with the right secret on this connection */
    EG_NET_EHANDLE = -308,    /* session handle unknown on this connection */
    EG_NET_ELIMIT = -309,     /* a server limit: connections, handles per connection */
    EG_NET_ESHUTDOWN = -310,  /* the server is stopping: the request was not run */
    EG_NET_ECONNECT = -311,   /* client: could not connect */
    EG_NET_EDISCONNECT = -312,/* client: connection lost; requests in flight are failed */
    EG_NET_ETIMEOUT = -313,   /* client: no answer within the timeout */
    EG_NET_EPROTO = -314,     /* client: the server's answer is not what was asked */
    EG_NET_ENOMEM = -315,     /* allocation failed */
    EG_NET_EIO = -316,        /* socket or listener error (message says which) */
    EG_NET_EPENDING = -317,   /* client: pipelined answers still to receive */
    EG_NET_ELISTEN = -318,    /* refused to listen (non-loopback without a secret...) */
};
/* Static description of any module's code (never NULL). */
const char *eg_net_strerror(int code);
/* This thread's message of the last failing net call (never NULL). */
const char *eg_net_last_error(void);

/* ---- frames ------------------------------------------------------------- */
#define EG_NET_MAGIC 0x4D524745u        /* the bytes "EGRM" read as LE u32 */
#define EG_NET_VERSION 1                /* frame and protocol version */
#define EG_NET_HEADER_BYTES 32
#define EG_NET_FLAG_ANSWER 1u           /* set on every server-to-client frame */
#define EG_NET_FRAME_DEFAULT (64u << 20)/* default body limit, bytes */
#define EG_NET_FRAME_MIN (64u << 10)
#define EG_NET_FRAME_MAX (1u << 30)
#define EG_NET_STR_MAX 65535u           /* wire strings: u16 length */
#define EG_NET_LIST_MAX 4096u           /* sessions per LIST answer */
#define EG_NET_VERIFY_LINES 256u        /* problem lines per VERIFY answer */

typedef enum {
    EG_OP_HELLO = 1, EG_OP_PING = 2,
    EG_OP_CREATE = 3, EG_OP_OPEN = 4, EG_OP_CLOSE = 5, EG_OP_INFO = 6, EG_OP_LIST = 7,
    EG_OP_DROP = 8, EG_OP_FORK = 9, EG_OP_TRUNCATE = 10,
    EG_OP_APPEND = 11, EG_OP_SELECT = 12, EG_OP_FETCH = 13, EG_OP_ATTEND = 14,
    EG_OP_STATS = 15, EG_OP_SYNC = 16, EG_OP_VERIFY = 17,
    EG_OP_ROUTER_TRAIN = 18, EG_OP_ROUTER_RESET = 19,
    EG_OP_COUNT = 20
} eg_opcode;
/* "hello", "ping", ...; NULL if unknown. */
const char *eg_op_name(int op);

typedef struct {
    uint16_t version, opcode;
    uint32_t flags;
    int32_t status;          /* answers: 0 or a negative code; requests: 0 */
    uint64_t request_id;
    uint32_t body_len;
} eg_frame_header;

/* Write the 32 header bytes. */
void eg_frame_header_encode(const eg_frame_header *h, unsigned char out[EG_NET_HEADER_BYTES]);
/* Read and check 32 header bytes (`in` need not be aligned). Fields are
 * filled as far as they could be read, so that an error answer can carry
 * the request id. Errors, in this order: EG_NET_EMAGIC, EG_NET_EVERSION,
 * EG_NET_EFLAGS (reserved bits or field), EG_NET_ETOOBIG (body_len over
 * frame_max), EG_NET_EOPCODE (requests only: answer flag clear). */
int eg_frame_header_decode(const unsigned char in[EG_NET_HEADER_BYTES], uint32_t frame_max,
                           eg_frame_header *out);

/* ---- bodies ------------------------------------------------------------- */
/* A growable byte buffer for encoding (data malloc'd; eg_buf_free). The
 * first EG_NET_HEADER_BYTES are kept for the frame header, so that a frame
 * is sent in one write. */
typedef struct {
    unsigned char *data;
    size_t len, cap;
    int failed;              /* an allocation failed: the buffer is unusable */
} eg_buf;
void eg_buf_init(eg_buf *b);
void eg_buf_free(eg_buf *b);
/* Finish a frame in b: fills its header (body_len from b->len). */
int eg_buf_frame(eg_buf *b, const eg_frame_header *h);

/* Session config and info as they travel (docs/protocol.md, "session"). */
int eg_wire_put_config(eg_buf *b, const eg_session_config *cfg);
int eg_wire_put_info(eg_buf *b, const eg_session_info *info);

/* A decoded request. Pointers point into the body it was decoded from
 * (borrowed: valid while that body is). Arrays are naturally aligned when
 * the body starts at an 8-byte boundary, which the decoder checks. */
typedef struct {
    int op;
    /* HELLO */
    uint16_t min_version, max_version;
    const char *secret; size_t secret_len;
    /* names: CREATE, OPEN, DROP, FORK (parent), LIST (after), VERIFY (empty = all) */
    char name[EG_NAME_MAX + 1];
    char name2[EG_NAME_MAX + 1];      /* FORK child */
    char fingerprint[EG_FINGERPRINT_MAX + 1]; /* OPEN; empty = no check */
    int has_fingerprint;
    eg_session_config config;         /* CREATE */
    uint32_t handle;                  /* session ops */
    uint64_t count;                   /* TRUNCATE n_tokens, FORK at, LIST max */
    /* APPEND */
    eg_append_req append;
    uint64_t keys_bytes, values_bytes; /* as the body gives them */
    /* SELECT, ATTEND (ATTEND: dense = 1 for the exact reference) */
    eg_attend_req attend;
    uint32_t q_dtype;                 /* queries' dtype as sent */
    const void *q_raw;                /* queries as sent (converted by the server) */
    uint32_t n_q_heads, head_dim_k;   /* the shape the client says it sends */
    uint32_t n_oracle;                /* floats in attend.oracle_mass */
    int dense, want_lost;
    /* ROUTER_TRAIN (train.q: NULL, queries in q_raw), ROUTER_RESET (layer) */
    eg_router_train_req train;
    /* FETCH */
    uint32_t layer, kv_head, want;    /* want: 1 keys, 2 values, 3 both */
    uint64_t segment;
} eg_request;

/* Encode request r as a complete frame (header with op and id) into b.
 * For APPEND the append's shape must be given (layers, kv-heads, dims),
 * since the body carries raw arrays: see eg_wire_append_bytes. */
int eg_wire_encode_request(eg_buf *b, const eg_request *r, uint64_t id,
                           const eg_session_config *shape);
/* Decode the body of a request frame with opcode op. No allocation.
 * Errors: EG_NET_EOPCODE, EG_NET_EBODY (the message names the field). The
 * shape checks that need the session (dims, layers) are the server's. */
int eg_wire_decode_request(int op, const unsigned char *body, size_t len, eg_request *out);
/* Bytes of APPEND keys and values for n_tokens of a session shape, or -1
 * on overflow. */
int eg_wire_append_bytes(const eg_session_config *shape, int dtype, uint32_t n_tokens,
                         int32_t layer, uint64_t *keys_bytes, uint64_t *values_bytes);

/* Fuzz entry: treat data as a stream of request frames the way the server
 * does (header, then body decode) and return the number of frames parsed.
 * Pure; never crashes on any input (tests replay its corpus). */
int eg_wire_fuzz_stream(const unsigned char *data, size_t len);

/* Answer bodies are decoded by the client with these cursor helpers. */
typedef struct {
    const unsigned char *p;
    size_t len, off;
    int bad;                 /* a read went past the end */
} eg_cursor;
void eg_cursor_init(eg_cursor *c, const void *p, size_t len);
uint8_t eg_cur_u8(eg_cursor *c);
uint16_t eg_cur_u16(eg_cursor *c);
uint32_t eg_cur_u32(eg_cursor *c);
uint64_t eg_cur_u64(eg_cursor *c);
float eg_cur_f32(eg_cursor *c);
double eg_cur_f64(eg_cursor *c);
/* A u16-length string into out (cap bytes incl. NUL); bad if longer. */
void eg_cur_str(eg_cursor *c, char *out, size_t cap);
/* n bytes in place (NULL and bad if short). */
const unsigned char *eg_cur_bytes(eg_cursor *c, size_t n);
int eg_wire_get_config(eg_cursor *c, eg_session_config *cfg);
int eg_wire_get_info(eg_cursor *c, eg_session_info *info);

void eg_buf_u8(eg_buf *b, uint8_t v);
void eg_buf_u16(eg_buf *b, uint16_t v);
void eg_buf_u32(eg_buf *b, uint32_t v);
void eg_buf_u64(eg_buf *b, uint64_t v);
void eg_buf_f32(eg_buf *b, float v);
void eg_buf_f64(eg_buf *b, double v);
void eg_buf_str(eg_buf *b, const char *s, size_t n);
void eg_buf_bytes(eg_buf *b, const void *p, size_t n);
/* Zero bytes up to a multiple of 8 of the body (arrays stay aligned). */
void eg_buf_pad8(eg_buf *b);

/* ---- server ------------------------------------------------------------- */
typedef struct eg_server eg_server;

typedef struct {
    const char *data_dir;        /* default "./data" */
    const char *tcp;             /* "HOST:PORT" (port 0 = any); NULL = 127.0.0.1:7411;
                                    "" = no TCP listener */
    const char *unix_path;       /* Unix socket path; NULL or "" = none */
    const char *secret;          /* shared secret; NULL = no auth (loopback only) */
    uint32_t frame_max;          /* body limit; 0 = EG_NET_FRAME_DEFAULT */
    int max_connections;         /* 0 = 1024 */
    int idle_timeout_s;          /* 0 = 300; connections idle this long close */
    int n_workers;               /* worker threads; 0 = 8 */
    size_t out_high;             /* stop running a connection's requests while its
                                    unsent answers pass this; 0 = 4 MiB */
    size_t out_hard;             /* close the connection past this; 0 = frame_max + 64 MiB */
    int handles_max;             /* open sessions per connection; 0 = 1024 */
    eg_engine_options engine;    /* store and engine options */
    const char *ready_file;      /* written once listening: "tcp HOST:PORT" and
                                    "unix PATH" lines (tests, scripts) */
    int quiet;                   /* no log lines on stderr */
} eg_server_options;
void eg_server_options_init(eg_server_options *o);

/* Open the engine on data_dir, bind and listen. Refuses (EG_NET_ELISTEN) a
 * TCP address that is not loopback unless a secret is set. *out freed by
 * eg_server_free. Errors: EG_NET_ELISTEN, EG_NET_EIO, EG_NET_ENOMEM, engine
 * and memory codes (EG_EBUSY: data_dir open in this process). */
int eg_server_create(const eg_server_options *opt, eg_server **out);
/* Run the loop until SIGTERM/SIGINT (when install_signals) or
 * eg_server_stop: stop accepting, fail queued requests with
 * EG_NET_ESHUTDOWN, finish running ones and send their answers (5 s at
 * most), then commit and close the store. */
int eg_server_run(eg_server *s, int install_signals);
/* Ask a running loop to stop, from any thread or a signal handler-free context. */
void eg_server_stop(eg_server *s);
/* The TCP port actually bound (after create), 0 if none. */
int eg_server_port(const eg_server *s);
/* The engine the server serves (borrowed). */
eg_engine *eg_server_engine(eg_server *s);
void eg_server_free(eg_server *s);

typedef struct {
    uint64_t connections, connections_total, connections_refused;
    uint64_t requests, errors, bytes_in, bytes_out, closed_slow, closed_idle, closed_bad;
} eg_server_stats;

/* ---- client ------------------------------------------------------------- */
typedef struct eg_client eg_client;

typedef struct {
    const char *secret;          /* sent by hello; NULL = none */
    int timeout_ms;              /* per answer; 0 = 120000, <0 = wait forever */
    uint32_t frame_max;          /* largest answer accepted; 0 = EG_NET_FRAME_MAX */
} eg_client_options;
void eg_client_options_init(eg_client_options *o);

/* Connect to "HOST:PORT", "unix:PATH", or a path containing '/', and say
 * hello (version 1, the secret). *out freed with eg_client_close.
 * Errors: EG_NET_ECONNECT, EG_NET_EAUTH, EG_NET_EVERSION, EG_NET_ENOMEM. */
int eg_client_connect(const char *addr, const eg_client_options *opt, eg_client **out);
void eg_client_close(eg_client *c);
/* Message of the client's last failure: the server's message for error
 * answers, else what went wrong locally (never NULL; valid until the next call). */
const char *eg_client_error(const eg_client *c);
/* After EG_NET_EDISCONNECT every call first reconnects (and says hello
 * again). Session handles of the old connection are gone: reopen. */
int eg_client_reconnect(eg_client *c);

/* Blocking calls. Each returns 0, a server's code (engine, memory, index
 * or net), or a local EG_NET_* code. Handles are per connection. */
int eg_client_ping(eg_client *c);
int eg_client_create(eg_client *c, const char *name, const eg_session_config *cfg);
/* fingerprint NULL = no check. *out_handle for the calls below. */
int eg_client_open(eg_client *c, const char *name, const char *fingerprint, uint32_t *out_handle);
int eg_client_close_session(eg_client *c, uint32_t handle);
int eg_client_info(eg_client *c, uint32_t handle, eg_session_info *out);
/* fn is called for every session in name order (paged under the hood). */
int eg_client_list(eg_client *c, int (*fn)(void *ctx, const eg_session_info *info), void *ctx);
int eg_client_drop(eg_client *c, const char *name);
int eg_client_fork(eg_client *c, const char *parent, const char *child, uint64_t at);
int eg_client_truncate(eg_client *c, uint32_t handle, uint64_t n_tokens);
/* req as eg_engine_append; shape is the session's config (from info): the
 * body carries raw arrays of that shape. */
int eg_client_append(eg_client *c, uint32_t handle, const eg_session_config *shape,
                     const eg_append_req *req, uint64_t *out_n_tokens);
/* req and res as eg_engine_attend (res buffers are the caller's); dense = 1
 * asks for the exact reference. shape gives n_q_heads and head dims. */
int eg_client_attend(eg_client *c, uint32_t handle, const eg_session_config *shape,
                     const eg_attend_req *req, int dense, eg_attend_result *res);
/* As eg_engine_select; out freed with eg_select_result_free. */
int eg_client_select(eg_client *c, uint32_t handle, const eg_session_config *shape,
                     const eg_attend_req *req, eg_select_result *out);
/* As eg_engine_fetch: keys [S][dk], values [S][dv] (either NULL). */
int eg_client_fetch(eg_client *c, uint32_t handle, const eg_session_config *shape,
                    uint32_t layer, uint32_t kv_head, uint64_t segment, float *keys,
                    float *values, uint32_t *out_rows);
/* As eg_engine_router_train (req.q f32 [n_queries][n_q_heads][dk]);
 * loss_before/after: NULL or [n_kv_heads]. Training runs on a worker and
 * may take seconds: give the client a timeout that allows it. */
int eg_client_router_train(eg_client *c, uint32_t handle, const eg_session_config *shape,
                           const eg_router_train_req *req, double *loss_before, double *loss_after);
/* As eg_engine_router_reset. */
int eg_client_router_reset(eg_client *c, uint32_t handle, uint32_t layer);
int eg_client_stats(eg_client *c, eg_store_stats *store, eg_server_stats *server);
int eg_client_sync(eg_client *c);
/* Verify one session (name) or all (NULL): fn gets each problem line (the
 * server sends at most EG_NET_VERIFY_LINES); *out_problems counts all. */
int eg_client_verify(eg_client *c, const char *name, void (*fn)(void *ctx, const char *line),
                     void *ctx, uint64_t *out_problems);

/* Pipelined mode: send now, receive later, in order. The buffers given at
 * send (res's arrays, out_n_tokens) must stay valid until that request's
 * answer is received. At most 4096 requests in flight. */
int eg_client_append_send(eg_client *c, uint32_t handle, const eg_session_config *shape,
                          const eg_append_req *req, uint64_t *out_n_tokens, uint64_t *out_id);
int eg_client_attend_send(eg_client *c, uint32_t handle, const eg_session_config *shape,
                          const eg_attend_req *req, eg_attend_result *res, uint64_t *out_id);
int eg_client_ping_send(eg_client *c, uint64_t *out_id);
/* Receive the oldest outstanding answer: *out_id its request id, the
 * return value its status (0 or a code; EG_NET_EDISCONNECT fails every
 * outstanding request, one per call). EG_NET_EINVAL when none is pending. */
int eg_client_recv(eg_client *c, uint64_t *out_id);
/* Requests sent and not yet received. */
int eg_client_pending(const eg_client *c);

/* Raw frames, for tests and other tools: send bytes as they are, read one
 * frame (*body malloc'd, caller frees). */
int eg_client_send_raw(eg_client *c, const void *bytes, size_t n);
int eg_client_recv_frame(eg_client *c, eg_frame_header *h, unsigned char **body);

#ifdef __cplusplus
}
#endif
#endif
