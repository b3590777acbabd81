/* error.c: net/'s codes, this thread's last message, and the message of
 * whichever module produced a code. */
#include "net_internal.h"
#include <stdarg.h>
#include <stdio.h>

static _Thread_local char last_msg[768];

int net_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_msg, sizeof last_msg, fmt, ap);
    va_end(ap);
    return code;
}

const char *eg_net_last_error(void) { return last_msg[0] ? last_msg : "no error"; }

const char *net_module_message(int code)
{
    if (code <= -300) return eg_net_last_error();
    return eg_engine_last_error();
}

const char *eg_net_strerror(int code)
{
    if (code > -300) return eg_engine_strerror(code);
    switch (code) {
    case EG_NET_EINVAL: return "invalid argument";
    case EG_NET_EMAGIC: return "bad magic: stream out of sync";
    case EG_NET_EVERSION: return "protocol version not supported";
    case EG_NET_EOPCODE: return "unknown opcode";
    case EG_NET_ETOOBIG: return "frame larger than the limit";
    case EG_NET_EBODY: return "malformed body";
    case EG_NET_EFLAGS: return "reserved flags or fields not zero";
    case EG_NET_EAUTH: return "not authenticated";
    case EG_NET_EHANDLE: return "unknown session handle";
    case EG_NET_ELIMIT: return "server limit reached";
    case EG_NET_ESHUTDOWN: return "server shutting down";
    case EG_NET_ECONNECT: return "could not connect";
    case EG_NET_EDISCONNECT: return "connection lost";
    case EG_NET_ETIMEOUT: return "timed out waiting for an answer";
    case EG_NET_EPROTO: return "answer does not match the request";
    case EG_NET_ENOMEM: return "out of memory";
    case EG_NET_EIO: return "socket error";
    case EG_NET_EPENDING: return "pipelined answers still pending";
    case EG_NET_ELISTEN: return "refused to listen";
    default: return "unknown error";
    }
}
