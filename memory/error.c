/* error.c: error codes and per-thread messages of memory/. */
#include "internal.h"
#include <stdio.h>

static _Thread_local char last_msg[512];

int eg_mem_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_msg, sizeof last_msg, fmt, ap);
    va_end(ap);
    return code;
}

const char *eg_mem_last_error(void) { return last_msg[0] ? last_msg : "no error"; }

const char *eg_mem_strerror(int err)
{
    switch (err) {
    case EG_OK: return "ok";
    case EG_EINVAL: return "invalid argument";
    case EG_ENOMEM: return "out of memory";
    case EG_EIO: return "I/O error";
    case EG_ENOSPC: return "no space left (disk full or file size limit)";
    case EG_EBUSY: return "busy: already open";
    case EG_ENOTFOUND: return "not found";
    case EG_EEXIST: return "already exists";
    case EG_ENAME_EMPTY: return "session name is empty";
    case EG_ENAME_LONG: return "session name is longer than 255 bytes";
    case EG_ENAME_UTF8: return "session name is not valid UTF-8";
    case EG_ESHAPE_ZERO: return "a shape dimension is zero";
    case EG_EHEAD_DIM: return "head dimension over 1024";
    case EG_EGQA: return "n_q_heads is not a multiple of n_kv_heads";
    case EG_ESEG_SIZE: return "segment size is not a power of two in 16..256";
    case EG_ECODEC: return "unknown codec";
    case EG_EFINGERPRINT: return "model fingerprint mismatch";
    case EG_ENONFINITE: return "NaN or Inf in input";
    case EG_ECORRUPT: return "corrupt data (checksum or format)";
    case EG_ERANGE: return "out of range";
    case EG_EDTYPE: return "unknown dtype";
    case EG_ELIMIT: return "limit reached";
    case EG_ECLOSED: return "closed";
    case EG_EOPTION: return "invalid option";
    case EG_EFORMAT: return "unknown data format version";
    case EG_ELMDB: return "LMDB error";
    case EG_EORDER: return "layer-by-layer append out of order";
    default: return "unknown error";
    }
}
