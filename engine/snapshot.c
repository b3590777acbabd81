/* snapshot.c: quest route tables kept as session records, so that resuming
 * a long session loads one record per (layer, kv-head) instead of reading,
 * checking and quantizing every segment's summary. A snapshot is a cache:
 * one that is missing, damaged or of another build is ignored and the
 * table is rebuilt from the summaries, which stay the truth. */
#include "en_internal.h"
#include <stdlib.h>
#include <string.h>

eg_route_table *en_snap_load(en_sess *s, uint32_t layer, uint32_t kvh, const eg_summary_spec *spec,
                             uint64_t n_sealed, uint64_t *n_snap)
{
    void *rec = NULL;
    size_t len = 0;
    *n_snap = 0;
    if (n_sealed < EN_SNAP_MIN || eg_record_get_session(s->ms, layer, kvh, EN_REC_SNAP, 0, &rec, &len)) return NULL;
    uint64_t total = 0;
    if (len >= 8) memcpy(&total, rec, 8);
    unsigned char *blob = len >= 8 && total <= ((uint64_t)1 << 40) ? malloc(total ? total : 1) : NULL;
    size_t have = 0;
    int ok = blob != NULL && len - 8 <= total;
    if (ok) { memcpy(blob, (char *)rec + 8, len - 8); have = len - 8; }
    free(rec);
    for (uint64_t i = 1; ok && have < total; i++) {
        if (eg_record_get_session(s->ms, layer, kvh, EN_REC_SNAP, i, &rec, &len) || len > total - have) ok = 0;
        else { memcpy(blob + have, rec, len); have += len; }
        free(rec);
        rec = NULL;
    }
    eg_route_table *t = NULL;
    if (ok && eg_route_table_load(spec, blob, total, &t) == 0 && eg_route_table_segments(t) > n_sealed) {
        eg_route_table_free(t);   /* cannot happen while truncate removes snapshots; never trusted */
        t = NULL;
    }
    free(blob);
    if (t) *n_snap = eg_route_table_segments(t);
    return t;
}

/* Store table t of (layer, kvh) in chunks; 0 on success. */
static int snap_put(en_sess *s, uint32_t layer, uint32_t kvh, const eg_route_table *t)
{
    void *bytes;
    size_t len;
    int rc = eg_route_table_save(t, &bytes, &len);
    if (rc) return rc;
    unsigned char *c0 = malloc(8 + (len < EN_SNAP_CHUNK ? len : EN_SNAP_CHUNK));
    if (!c0) { free(bytes); return EG_EN_ENOMEM; }
    uint64_t total = len;
    memcpy(c0, &total, 8);
    size_t first = len < EN_SNAP_CHUNK ? len : EN_SNAP_CHUNK;
    memcpy(c0 + 8, bytes, first);
    /* Later chunks first, chunk 0 (which names the total) last: a close cut
     * short leaves chunks that fail the table's checksum, never a table
     * that loads wrong. */
    uint64_t n_chunks = 1 + (len - first + EN_SNAP_CHUNK - 1) / EN_SNAP_CHUNK;
    for (uint64_t i = n_chunks - 1; i >= 1 && !rc; i--) {
        size_t off = first + (size_t)(i - 1) * EN_SNAP_CHUNK, n = len - off < EN_SNAP_CHUNK ? len - off : EN_SNAP_CHUNK;
        rc = eg_record_put_session(s->ms, layer, kvh, EN_REC_SNAP, i, (char *)bytes + off, n);
    }
    if (!rc) rc = eg_record_put_session(s->ms, layer, kvh, EN_REC_SNAP, 0, c0, 8 + first);
    free(c0);
    free(bytes);
    return rc;
}

void en_snap_save_all(en_sess *s)
{
    for (uint32_t l = 0; s->layers && l < s->cfg.n_layers; l++) {
        en_layer_tabs *L = &s->layers[l];
        if (!L->loaded[0] || !L->tab[0] || !L->snap) continue;
        for (uint32_t h = 0; h < s->cfg.n_kv_heads; h++) {
            uint64_t n = eg_route_table_segments(L->tab[0][h]), old = L->snap[h];
            uint64_t step = old / 4 > EN_SNAP_MIN ? old / 4 : EN_SNAP_MIN;
            if (n < EN_SNAP_MIN || n < old + step) continue;   /* a few segments more: synced at load */
            if (snap_put(s, l, h, L->tab[0][h]) == 0) L->snap[h] = n;
        }
    }
}
