/* snapshot.c: quest and ball route tables kept as session records, so that resuming
 * a long session loads one record per (layer, kv-head) instead of reading,
 * checking and quantizing every segment's summary. A snapshot is a cache:
 * one that is missing, damaged or of another build is ignored and the
 * table is rebuilt from the summaries, which stay the truth. */
#include "en_internal.h"
#include <stdlib.h>
#include <string.h>

/* The session record kind of a snapshot slot (en_snap_slot). */
static uint32_t snap_kind(int slot) { return slot == 1 ? EN_REC_SNAP_BALL : EN_REC_SNAP; }

eg_route_table *en_snap_load(en_sess *s, uint32_t layer, uint32_t kvh, const eg_summary_spec *spec,
                             uint64_t n_sealed, uint64_t *n_snap)
{
    void *rec = NULL;
    size_t len = 0;
    *n_snap = 0;
    uint32_t kind = snap_kind(spec->kind == EG_ROUTER_BALL ? 1 : 0);
    if (n_sealed < EN_SNAP_MIN || eg_record_get_session(s->ms, layer, kvh, kind, 0, &rec, &len)) return NULL;
    uint64_t total = 0;
    if (len >= 8) memcpy(&total, rec, 8);
    unsigned char *blob = len >= 8 && total <= ((uint64_t)1 << 40) ? malloc(total ? total : 1) : NULL;
    size_t have = 0;
    int ok = blob != NULL && len - 8 <= total;
    if (ok) { memcpy(blob, (char *)rec + 8, len - 8); have = len - 8; }
    free(rec);
    for (uint64_t i = 1; ok && have < total; i++) {
        if (eg_record_get_session(s->ms, layer, kvh, kind, i, &rec, &len) || len > total - have) ok = 0;
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

/* The layer's tables that grew enough since their snapshot, stored in one
 * transaction (one commit for the layer; all or none): each table's bytes
 * in chunks, chunk 0 led by the total. */
static void snap_layer(en_sess *s, uint32_t l, int ki)
{
    en_layer_tabs *L = &s->layers[l];
    uint64_t *snap = L->snap[en_snap_slot(ki)];
    uint32_t kind = snap_kind(en_snap_slot(ki));
    uint32_t H = s->cfg.n_kv_heads;
    void **blob = calloc(H, sizeof *blob);
    unsigned char **head = calloc(H, sizeof *head);
    size_t n_rec = 0, cap = 0;
    eg_session_record *rec = NULL;
    int ok = blob && head;
    for (uint32_t h = 0; ok && h < H; h++) {
        uint64_t n = eg_route_table_segments(L->tab[ki][h]), old = snap[h];
        uint64_t step = old / 4 > EN_SNAP_MIN ? old / 4 : EN_SNAP_MIN;
        if (n < EN_SNAP_MIN || n < old + step) continue;   /* a few segments more: synced at load */
        size_t len;
        if (eg_route_table_save(L->tab[ki][h], &blob[h], &len)) { blob[h] = NULL; continue; }
        size_t first = len < EN_SNAP_CHUNK ? len : EN_SNAP_CHUNK;
        size_t chunks = 1 + (len - first + EN_SNAP_CHUNK - 1) / EN_SNAP_CHUNK;
        if (!(head[h] = malloc(8 + first))) { ok = 0; break; }
        uint64_t total = len;
        memcpy(head[h], &total, 8);
        memcpy(head[h] + 8, blob[h], first);
        if (n_rec + chunks > cap) {
            size_t nc = (n_rec + chunks) * 2;
            eg_session_record *r = realloc(rec, nc * sizeof *r);
            if (!r) { ok = 0; break; }
            rec = r;
            cap = nc;
        }
        rec[n_rec++] = (eg_session_record){l, h, kind, 0, head[h], 8 + first};
        for (size_t i = 1; i < chunks; i++) {
            size_t off = first + (i - 1) * EN_SNAP_CHUNK, m = len - off < EN_SNAP_CHUNK ? len - off : EN_SNAP_CHUNK;
            rec[n_rec++] = (eg_session_record){l, h, kind, i, (char *)blob[h] + off, m};
        }
    }
    if (ok && n_rec && eg_record_put_session_many(s->ms, rec, n_rec) == 0)
        for (uint32_t h = 0; h < H; h++)
            if (head[h]) snap[h] = eg_route_table_segments(L->tab[ki][h]);
    for (uint32_t h = 0; blob && head && h < H; h++) { free(blob[h]); free(head[h]); }
    free(blob); free(head); free(rec);
}

void en_snap_save_all(en_sess *s)
{
    for (uint32_t l = 0; s->layers && l < s->cfg.n_layers; l++) {
        en_layer_tabs *L = &s->layers[l];
        for (int ki = 0; ki < EN_KINDS; ki++)
            if (en_snap_slot(ki) >= 0 && L->loaded[ki] && L->tab[ki] && L->snap[en_snap_slot(ki)]) snap_layer(s, l, ki);
    }
}
