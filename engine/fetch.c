/* fetch.c: FETCH (decoded rows of a segment) and the exact merge of two
 * partial attentions. */
#include "en_internal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

int eg_engine_fetch(eg_engine_session *h, uint32_t layer, uint32_t kvh, uint64_t seg, float *keys,
                    float *values, uint32_t *out_rows)
{
    en_sess *s = NULL;
    int rc = en_handle(h, &s);
    if (rc) return rc;
    if (!out_rows) return en_fail(EG_EN_EINVAL, "fetch: NULL out_rows");
    if ((rc = en_layer_check(s, layer))) return rc;
    if (kvh >= s->cfg.n_kv_heads)
        return en_fail(EG_EN_ESHAPE, "kv-head %u out of range (session has %u)", kvh, s->cfg.n_kv_heads);
    pthread_rwlock_rdlock(&s->rw);
    en_view v;
    rc = en_view_get(s, layer, &v);
    if (!rc && seg < v.n_sealed) {
        rc = en_pass(eg_read_block(s->ms, layer, kvh, seg, keys, values), "fetch");
        if (!rc) *out_rows = v.S;
    } else if (!rc) {
        uint64_t first = seg * v.S;
        if (seg > v.layer_tokens / v.S || first >= v.layer_tokens) {
            rc = en_fail(EG_EN_ESEGMENT, "segment %llu: layer %u holds %llu tokens (segments of %u)",
                         (unsigned long long)seg, layer, (unsigned long long)v.layer_tokens, v.S);
        } else {
            uint32_t n = v.layer_tokens - first < v.S ? (uint32_t)(v.layer_tokens - first) : v.S;
            float *t = malloc((size_t)n * v.H * (v.dk + v.dv) * sizeof(float));
            if (!t) rc = en_fail(EG_EN_ENOMEM, "fetch: out of memory");
            if (!rc) rc = en_pass(eg_read_rows(s->ms, layer, first, n, t, t + (size_t)n * v.H * v.dk), "fetch");
            for (uint32_t i = 0; !rc && i < n; i++) {
                if (keys) memcpy(keys + (size_t)i * v.dk, t + ((size_t)i * v.H + kvh) * v.dk, v.dk * 4);
                if (values)
                    memcpy(values + (size_t)i * v.dv,
                           t + (size_t)n * v.H * v.dk + ((size_t)i * v.H + kvh) * v.dv, v.dv * 4);
            }
            if (!rc) *out_rows = n;
            free(t);
        }
    }
    pthread_rwlock_unlock(&s->rw);
    return rc;
}

int eg_attn_merge(const float *oa, const float *la, const float *ob, const float *lb, size_t n,
                  size_t dim, float *out, float *lse)
{
    if (!oa || !la || !ob || !lb || !out || !lse) return en_fail(EG_EN_EINVAL, "merge: NULL argument");
    for (size_t r = 0; r < n; r++) {
        double a = la[r], b = lb[r], m = a > b ? a : b;
        if (isnan(a) || isnan(b) || a == INFINITY || b == INFINITY)
            return en_fail(EG_EN_ENONFINITE, "merge: row %zu has lse %g and %g", r, a, b);
        if (m == -INFINITY) { /* both empty */
            for (size_t d = 0; d < dim; d++) out[r * dim + d] = 0.0f;
            lse[r] = -INFINITY;
            continue;
        }
        double wa = exp(a - m), wb = exp(b - m), z = wa + wb;
        wa /= z;
        wb /= z;
        for (size_t d = 0; d < dim; d++)
            out[r * dim + d] = (float)(wa * oa[r * dim + d] + wb * ob[r * dim + d]);
        lse[r] = (float)(m + log(z));
    }
    return 0;
}
