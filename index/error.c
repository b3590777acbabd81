/* error.c: index/ error codes and this thread's last message. */
#include "ix_internal.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_msg[512];

int ix_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_msg, sizeof last_msg, fmt, ap);
    va_end(ap);
    return code;
}

const char *eg_index_last_error(void) { return last_msg[0] ? last_msg : "no error"; }

const char *eg_index_strerror(int code)
{
    switch (code) {
    case 0: return "ok";
    case EG_IX_EINVAL: return "invalid argument";
    case EG_IX_EDIM: return "dimension zero, too large or mismatched";
    case EG_IX_ERANK: return "learned rank out of range";
    case EG_IX_ENONFINITE: return "NaN or Inf in input";
    case EG_IX_EEMPTY: return "nothing to work on";
    case EG_IX_EVERSION: return "serialized format of another version";
    case EG_IX_ECORRUPT: return "serialized bytes corrupt or malformed";
    case EG_IX_ENOMEM: return "out of memory";
    case EG_IX_EBUDGET: return "budget of zero tokens";
    case EG_IX_EKIND: return "unknown router kind or unsupported operation";
    case EG_IX_ERANGE: return "position or segment out of range";
    default: return "unknown error";
    }
}

static const char *const names[] = { NULL, "quest", "centroid", "learned", "indexer", "oracle", "ball" };

const char *eg_router_name(eg_router_kind kind)
{
    return (int)kind >= 1 && (int)kind <= 6 ? names[kind] : NULL;
}

int eg_router_parse(const char *name, eg_router_kind *out)
{
    for (int k = 1; name && out && k <= 6; k++)
        if (strcmp(name, names[k]) == 0) { *out = (eg_router_kind)k; return 0; }
    return ix_fail(EG_IX_EKIND, "unknown router '%s' (quest, ball, centroid, learned, indexer, oracle)",
                   name ? name : "(null)");
}

int ix_all_finite(const float *x, size_t n)
{
    /* Branch-free accumulation so the loop vectorises; x - x is NaN
     * exactly for NaN and Inf. */
    float acc = 0.0f;
    for (size_t i = 0; i < n; i++) acc += x[i] - x[i];
    return acc == 0.0f;
}
