/* error.c: engine error codes, this thread's last message, and messages of
 * every module's codes in one place. */
#include "en_internal.h"
#include <stdarg.h>
#include <stdio.h>

static _Thread_local char last_msg[768];

int en_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_msg, sizeof last_msg, fmt, ap);
    va_end(ap);
    return code;
}

int en_pass(int code, const char *what)
{
    if (code >= 0) return code;
    const char *m = code <= -100 && code > -200 ? eg_index_last_error()
                  : code > -100 ? eg_mem_last_error() : NULL;
    if (m) return en_fail(code, "%s: %s", what, m);
    return code; /* an engine code: its message is already set */
}

const char *eg_engine_last_error(void) { return last_msg[0] ? last_msg : "no error"; }

const char *eg_engine_strerror(int code)
{
    if (code > -100) return eg_mem_strerror(code);
    if (code > -200) return eg_index_strerror(code);
    switch (code) {
    case EG_EN_EINVAL: return "invalid argument";
    case EG_EN_ESHAPE: return "count or dimension does not match the session";
    case EG_EN_ELAYER: return "layer out of range";
    case EG_EN_EPOS: return "query position beyond the session or negative";
    case EG_EN_EBUDGET: return "token budget of zero or less";
    case EG_EN_ENONFINITE: return "NaN or Inf in queries or options";
    case EG_EN_EROUTER: return "router not available for attention";
    case EG_EN_EOPTION: return "option not valid for this session";
    case EG_EN_ECLOSED: return "session handle closed";
    case EG_EN_ENOMEM: return "out of memory";
    case EG_EN_ESEGMENT: return "segment beyond the session's tokens";
    default: return "unknown error";
    }
}

int en_all_finite(const float *x, size_t n)
{
    float acc = 0.0f; /* x - x is NaN exactly for NaN and Inf; the loop vectorises */
    for (size_t i = 0; i < n; i++) acc += x[i] - x[i];
    return acc == 0.0f;
}
