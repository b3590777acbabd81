/* net_internal.h: shared inside net/ only. */
#ifndef ENGRAM_NET_INTERNAL_H
#define ENGRAM_NET_INTERNAL_H
#include "net.h"

/* Set this thread's message and return code. */
int net_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The last message of whichever module produced code (engine, memory,
 * index or net) on this thread. */
const char *net_module_message(int code);
void net_cur_pad8(eg_cursor *c);
size_t net_dtype_size(int dtype);

/* Attend/select request flags (docs/protocol.md). */
#define NET_AF_INCLUDE_SELF 1u
#define NET_AF_REMAP 2u
#define NET_AF_DENSE 4u
#define NET_AF_RANK_MAX 8u     /* eg_attend_req.aggregate = EG_ROUTE_AGG_MAX */
#define NET_AF_RANK_MASS 16u   /* ... = EG_ROUTE_AGG_MASS; neither: the router's own */
#define NET_AF_ALL 31u
#define NET_APPEND_IDS 1u
#define NET_ATTEND_FIXED 72u
#define NET_APPEND_FIXED 32u
#define NET_TRAIN_FIXED 48u

/* Answer bodies built by the server's worker (server_ops.c); b holds a
 * frame whose header the caller fills. Returns 0 or a code with the
 * message set. */
typedef struct net_conn_sessions net_conn_sessions;
#endif
