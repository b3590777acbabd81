/* attn.c: the online softmax of one block of keys (en_attn_block), the
 * running state it folds into, and the exact merge of two such states.
 * A few rows (a decode step) use the tile kernels of memory/ (q8 read as
 * stored); more rows sgemm, which packs the block first and then wins. */
#include "en_internal.h"
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int en_attn_block(en_attn_state *st, const float *q, uint32_t dk, const en_tile *K, const en_tile *V,
                  uint32_t n, int64_t tok0, const int64_t *vis, float scale, float *sc,
                  float *seg_lse, uint32_t S, size_t seg_stride)
{
    int nr = st->nr, rc = 0;
    /* A few rows (a decode step): the tile kernels, which read the block in
     * place (q8 as stored, no decoded copy); sgemm would first copy it into
     * its packed layout. */
    if (nr <= EN_TILE_ROWS)
        rc = eg_tile_dot_ahead(K->codec, K->p, K->len, n, dk, q, (uint32_t)nr, scale, sc, K->ahead, K->ahead_len);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, (int)n, (int)dk, scale, q, (int)dk, K->p,
                    (int)dk, 0.0f, sc, (int)n);
    if (rc) return en_pass(rc, "attend");
    int any = 0;
    for (int r = 0; r < nr; r++) {
        float *row = sc + (size_t)r * n;
        int64_t lim64 = vis[r] - tok0 + 1;
        uint32_t lim = lim64 <= 0 ? 0 : lim64 >= n ? n : (uint32_t)lim64;
        if (seg_lse) {
            for (uint32_t s0 = 0; s0 < n; s0 += S) {
                float mx = -INFINITY;
                double sum = 0;
                for (uint32_t j = s0; j < s0 + S && j < lim; j++) mx = row[j] > mx ? row[j] : mx;
                for (uint32_t j = s0; j < s0 + S && j < lim; j++) sum += exp((double)row[j] - mx);
                seg_lse[(size_t)r * seg_stride + s0 / S] = sum > 0 ? (float)(mx + log(sum)) : -INFINITY;
            }
        }
        if (lim == 0) { memset(row, 0, n * sizeof(float)); continue; }
        any = 1;
        float m_new;
        double sum;
        eg_tile_softmax(row, lim, st->m[r], &m_new, &sum);   /* row, lim and outputs valid: cannot fail */
        double corr = st->m[r] == -INFINITY ? 0.0 : exp((double)st->m[r] - m_new);
        if (lim < n) memset(row + lim, 0, (n - lim) * sizeof(float));
        st->l[r] = st->l[r] * corr + sum;
        st->m[r] = m_new;
        if (st->acc && corr != 1.0) {
            float c = (float)corr, *a = st->acc + (size_t)r * st->dv;
            for (uint32_t d = 0; d < st->dv; d++) a[d] *= c;
        }
    }
    if (st->acc && any && nr <= EN_TILE_ROWS)
        rc = eg_tile_axpy_ahead(V->codec, V->p, V->len, n, st->dv, sc, (uint32_t)nr, st->acc, V->ahead, V->ahead_len);
    else if (st->acc && any)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, (int)st->dv, (int)n, 1.0f, sc,
                    (int)n, V->p, (int)st->dv, 1.0f, st->acc, (int)st->dv);
    return rc ? en_pass(rc, "attend") : 0;
}

en_tile en_f32_tile(const float *p, uint32_t n, uint32_t d)
{
    return (en_tile){ EG_CODEC_F32, p, (size_t)n * d * sizeof(float), NULL, 0 };
}

double en_state_lse(const en_attn_state *st, int r)
{
    return st->l[r] > 0 ? st->m[r] + log(st->l[r]) : -INFINITY;
}

void en_state_reset(en_attn_state *st)
{
    for (int r = 0; r < st->nr; r++) { st->m[r] = -INFINITY; st->l[r] = 0; }
    if (st->acc) memset(st->acc, 0, (size_t)st->nr * st->dv * sizeof(float));
}
